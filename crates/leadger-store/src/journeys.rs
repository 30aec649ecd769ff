//! The journey read model in SQL: one row per lead, derived from the log by
//! the projector, read by the analytics queries.
//!
//! Exactly-once effect: the rows a batch of events changes and the cursor
//! (the last position applied) commit in one transaction, and the cursor
//! only moves from the position the projector started the batch at; a second
//! writer, a replay or a rebuild that swapped in meanwhile makes the batch
//! fail as a whole and the projector re-reads the cursor. A rebuild writes a
//! new generation of rows beside the live one and swaps the cursor to it in
//! one transaction, so queries answer from the old rows until the swap.

use std::future::Future;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use leadger_domain::journey::{Journey, Window};
use leadger_domain::{LeadId, Stage};
use serde_json::{Value, json};
use sqlx::Row;
use uuid::Uuid;

use crate::codec::{decode_journey, encode_journey};
use crate::{PostgresLog, SqliteLog, StoreError, as_i64, unsigned};

/// Where the live journey model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JourneyCursor {
    /// The generation of rows queries read.
    pub generation: i64,
    /// The last log position applied to it.
    pub position: u64,
}

/// Which journeys a query needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JourneyScope {
    All,
    /// Leads captured inside the window (a cohort).
    CapturedIn(Window),
    /// Leads in MQL or SQL now: the only ones with an open hand-off.
    AwaitingSales,
}

/// Journeys as of one position, read in one snapshot.
#[derive(Debug, Clone)]
pub struct JourneySnapshot {
    pub journeys: Vec<Journey>,
    pub position: u64,
}

/// Rows written per statement by a rebuild.
const REBUILD_CHUNK: usize = 2000;
/// Chunks a PostgreSQL rebuild writes at a time.
const REBUILD_WRITERS: usize = 4;

pub trait JourneyStore: Send + Sync + 'static {
    fn journey_cursor(&self) -> impl Future<Output = Result<JourneyCursor, StoreError>> + Send;

    /// The stored journeys of `leads` in `generation` (missing ones are left out).
    fn load_journeys(
        &self,
        generation: i64,
        leads: &[LeadId],
    ) -> impl Future<Output = Result<Vec<Journey>, StoreError>> + Send;

    /// Writes `journeys` and moves the cursor from `from` to `position`, in
    /// one transaction. `false`: the cursor was no longer at `from`, and
    /// nothing was written.
    fn save_journeys(
        &self,
        from: JourneyCursor,
        position: u64,
        journeys: &[Journey],
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    fn read_journeys(&self, scope: JourneyScope) -> impl Future<Output = Result<JourneySnapshot, StoreError>> + Send;

    /// Rebuild: writes `journeys` as a new generation, then swaps the cursor
    /// to it (at `position`) in one transaction and deletes older rows.
    fn replace_journeys(
        &self,
        journeys: &[Journey],
        position: u64,
    ) -> impl Future<Output = Result<JourneyCursor, StoreError>> + Send;
}

fn rows_json(journeys: &[Journey]) -> String {
    let rows: Vec<Value> = journeys
        .iter()
        .map(|j| {
            json!([
                j.lead_id.as_uuid().hyphenated().to_string(),
                j.captured_at().as_micros(),
                awaiting_sales(j),
                encode_journey(j)
            ])
        })
        .collect();
    Value::Array(rows).to_string()
}

/// The capture window and whether only leads awaiting sales are wanted.
fn scope_bounds(scope: JourneyScope) -> (i64, i64, bool) {
    match scope {
        JourneyScope::All => (i64::MIN, i64::MAX, false),
        JourneyScope::CapturedIn(window) => (window.from.as_micros(), window.to.as_micros(), false),
        JourneyScope::AwaitingSales => (i64::MIN, i64::MAX, true),
    }
}

fn awaiting_sales(journey: &Journey) -> bool {
    matches!(journey.stage(), Stage::Mql | Stage::Sql)
}

fn cursor_from((generation, position): (i64, i64)) -> Result<JourneyCursor, StoreError> {
    Ok(JourneyCursor { generation, position: unsigned(position, "journeys cursor")? })
}

fn journey_row(lead_id: Uuid, text: &str) -> Result<Journey, StoreError> {
    decode_journey(LeadId::from_uuid(lead_id), text).map_err(StoreError::Corrupt)
}

const CURSOR_SQL: &str = "SELECT generation, position FROM projections WHERE name = 'journeys'";

impl JourneyStore for SqliteLog {
    async fn journey_cursor(&self) -> Result<JourneyCursor, StoreError> {
        cursor_from(sqlx::query_as(CURSOR_SQL).fetch_one(self.pool()).await?)
    }

    async fn load_journeys(&self, generation: i64, leads: &[LeadId]) -> Result<Vec<Journey>, StoreError> {
        let ids = Value::Array(leads.iter().map(|id| Value::from(id.as_uuid().hyphenated().to_string())).collect());
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT lead_id, journey FROM journeys
             WHERE generation = ?1 AND lead_id IN (SELECT value FROM json_each(?2))",
        )
        .bind(generation)
        .bind(ids.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(|(id, text)| journey_row(parse_uuid(id)?, text)).collect()
    }

    async fn save_journeys(
        &self,
        from: JourneyCursor,
        position: u64,
        journeys: &[Journey],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        let moved = sqlx::query(
            "UPDATE projections SET position = ?1 WHERE name = 'journeys' AND generation = ?2 AND position = ?3",
        )
        .bind(as_i64(position))
        .bind(from.generation)
        .bind(as_i64(from.position))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlite_upsert(&mut tx, from.generation, journeys).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn read_journeys(&self, scope: JourneyScope) -> Result<JourneySnapshot, StoreError> {
        // One read transaction: the rows and the cursor are of one snapshot.
        let mut tx = self.pool().begin().await?;
        let cursor = cursor_from(sqlx::query_as(CURSOR_SQL).fetch_one(&mut *tx).await?)?;
        let (from, to, only_awaiting) = scope_bounds(scope);
        let rows = sqlx::query(
            "SELECT lead_id, journey FROM journeys
             WHERE generation = ?1 AND captured_at_us >= ?2 AND captured_at_us < ?3 AND (?4 = 0 OR awaiting_sales = 1)",
        )
        .bind(cursor.generation)
        .bind(from)
        .bind(to)
        .bind(only_awaiting)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let journeys = rows
            .iter()
            .map(|row| journey_row(parse_uuid(row.try_get::<&str, _>(0)?)?, row.try_get::<&str, _>(1)?))
            .collect::<Result<_, _>>()?;
        Ok(JourneySnapshot { journeys, position: cursor.position })
    }

    async fn replace_journeys(&self, journeys: &[Journey], position: u64) -> Result<JourneyCursor, StoreError> {
        let (generation,): (i64,) = sqlx::query_as(
            "SELECT MAX(g) + 1 FROM (SELECT MAX(generation) AS g FROM journeys UNION ALL SELECT generation FROM projections WHERE name = 'journeys')",
        )
        .fetch_one(self.pool())
        .await?;
        for chunk in journeys.chunks(REBUILD_CHUNK) {
            let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
            sqlite_upsert(&mut tx, generation, chunk).await?;
            tx.commit().await?;
        }
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        sqlx::query("UPDATE projections SET generation = ?1, position = ?2 WHERE name = 'journeys'")
            .bind(generation)
            .bind(as_i64(position))
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM journeys WHERE generation <> ?1").bind(generation).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(JourneyCursor { generation, position })
    }
}

fn parse_uuid(text: &str) -> Result<Uuid, StoreError> {
    Uuid::try_parse(text).map_err(|_| StoreError::Corrupt(format!("journeys.lead_id {text:?} is not a UUID")))
}

async fn sqlite_upsert(
    tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
    generation: i64,
    journeys: &[Journey],
) -> Result<(), StoreError> {
    if journeys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO journeys (generation, lead_id, captured_at_us, awaiting_sales, journey)
         SELECT ?1, json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'),
                json_extract(value, '$[3]')
         FROM json_each(?2) WHERE true
         ON CONFLICT (generation, lead_id) DO UPDATE SET
             captured_at_us = excluded.captured_at_us, awaiting_sales = excluded.awaiting_sales,
             journey = excluded.journey",
    )
    .bind(generation)
    .bind(rows_json(journeys))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl JourneyStore for PostgresLog {
    async fn journey_cursor(&self) -> Result<JourneyCursor, StoreError> {
        cursor_from(sqlx::query_as(CURSOR_SQL).fetch_one(self.pool()).await?)
    }

    async fn load_journeys(&self, generation: i64, leads: &[LeadId]) -> Result<Vec<Journey>, StoreError> {
        let ids: Vec<Uuid> = leads.iter().map(LeadId::as_uuid).collect();
        let rows: Vec<(Uuid, String)> =
            // One primary-key probe per lead. `lead_id = ANY($2)` let the
            // planner, without statistics on a young table, scan every row
            // of the generation for each batch (docs/benchmark-analysis.md).
            sqlx::query_as(
                "SELECT j.lead_id, j.journey FROM UNNEST($2::uuid[]) AS k(id)
                 CROSS JOIN LATERAL (SELECT lead_id, journey FROM journeys
                                     WHERE generation = $1 AND lead_id = k.id LIMIT 1) j",
            )
                .bind(generation)
                .bind(&ids)
                .fetch_all(self.pool())
                .await?;
        rows.iter().map(|(id, text)| journey_row(*id, text)).collect()
    }

    async fn save_journeys(
        &self,
        from: JourneyCursor,
        position: u64,
        journeys: &[Journey],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool().begin().await?;
        // Rows and cursor commit together, so a crash that loses this
        // commit only moves the cursor back: the projector applies the
        // events again. No need to wait for the WAL flush.
        sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
        let moved = sqlx::query(
            "UPDATE projections SET position = $1 WHERE name = 'journeys' AND generation = $2 AND position = $3",
        )
        .bind(as_i64(position))
        .bind(from.generation)
        .bind(as_i64(from.position))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        postgres_upsert(&mut tx, from.generation, journeys).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn read_journeys(&self, scope: JourneyScope) -> Result<JourneySnapshot, StoreError> {
        let mut tx = self.pool().begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await?;
        let cursor = cursor_from(sqlx::query_as(CURSOR_SQL).fetch_one(&mut *tx).await?)?;
        let (from, to, only_awaiting) = scope_bounds(scope);
        let rows: Vec<(Uuid, String)> = sqlx::query_as(
            "SELECT lead_id, journey FROM journeys
             WHERE generation = $1 AND captured_at_us >= $2 AND captured_at_us < $3 AND (NOT $4 OR awaiting_sales)",
        )
        .bind(cursor.generation)
        .bind(from)
        .bind(to)
        .bind(only_awaiting)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let journeys = rows.iter().map(|(id, text)| journey_row(*id, text)).collect::<Result<_, _>>()?;
        Ok(JourneySnapshot { journeys, position: cursor.position })
    }

    async fn replace_journeys(&self, journeys: &[Journey], position: u64) -> Result<JourneyCursor, StoreError> {
        let (generation,): (i64,) = sqlx::query_as(
            "SELECT GREATEST((SELECT COALESCE(MAX(generation), 0) FROM journeys),
                             (SELECT generation FROM projections WHERE name = 'journeys')) + 1",
        )
        .fetch_one(self.pool())
        .await?;
        // Several chunks at a time: the new generation is invisible until
        // the swap below, so their order does not matter, and the database
        // writes on every core while this process encodes the next chunk.
        let mut chunks = journeys.chunks(REBUILD_CHUNK);
        let mut writing = FuturesUnordered::new();
        loop {
            while writing.len() < REBUILD_WRITERS {
                let Some(chunk) = chunks.next() else { break };
                writing.push(write_chunk(self.pool(), generation, chunk));
            }
            match writing.next().await {
                Some(written) => written?,
                None => break,
            }
        }
        let mut tx = self.pool().begin().await?;
        sqlx::query("UPDATE projections SET generation = $1, position = $2 WHERE name = 'journeys'")
            .bind(generation)
            .bind(as_i64(position))
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM journeys WHERE generation <> $1").bind(generation).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(JourneyCursor { generation, position })
    }
}

/// One chunk of a rebuild's rows in a transaction of its own.
async fn write_chunk(pool: &sqlx::PgPool, generation: i64, chunk: &[Journey]) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    postgres_upsert(&mut tx, generation, chunk).await?;
    tx.commit().await?;
    Ok(())
}

async fn postgres_upsert(
    tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
    generation: i64,
    journeys: &[Journey],
) -> Result<(), StoreError> {
    if journeys.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = journeys.iter().map(|j| j.lead_id.as_uuid()).collect();
    let captured: Vec<i64> = journeys.iter().map(|j| j.captured_at().as_micros()).collect();
    let awaiting: Vec<bool> = journeys.iter().map(awaiting_sales).collect();
    let texts: Vec<String> = journeys.iter().map(encode_journey).collect();
    sqlx::query(
        "INSERT INTO journeys (generation, lead_id, captured_at_us, awaiting_sales, journey)
         SELECT $1, * FROM UNNEST($2::uuid[], $3::bigint[], $4::boolean[], $5::text[])
         ON CONFLICT (generation, lead_id) DO UPDATE SET
             captured_at_us = excluded.captured_at_us, awaiting_sales = excluded.awaiting_sales,
             journey = excluded.journey",
    )
    .bind(generation)
    .bind(&ids)
    .bind(&captured)
    .bind(&awaiting)
    .bind(&texts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
