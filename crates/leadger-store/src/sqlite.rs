//! The embedded default: the event log in one SQLite file (WAL,
//! `synchronous=FULL`, so a committed batch survives a power loss).
//!
//! `BEGIN IMMEDIATE` takes SQLite's database-wide write lock before the batch
//! reads anything, which makes it the append lock: positions are assigned
//! under it and commit in order, also with several processes on one file.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use leadger_domain::{LeadId, Timestamp};
use serde_json::{Value, json};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, Transaction};
use uuid::Uuid;

use crate::planner::{self, BatchKeys, Plan, Receipt, Snapshot};
use crate::vault::Vault;
use crate::{
    CommandError, CommandOutcome, EventLog, LeadQuery, LeadSummary, PendingCommand, RecordedEvent, StoreError, as_i64,
    lead_head, recorded_event, stage, unsigned,
};

#[derive(Debug, Clone)]
pub struct SqliteLog {
    pool: SqlitePool,
}

type EventColumns = (i64, String, String, i64, String, i32, String, String, i64, i64);
type HeadColumns = (String, String, i64, bool, i64, Option<String>, Option<String>, String, Option<String>, bool);
type HeadAndKeyColumns =
    (String, String, i64, bool, i64, Option<String>, Option<String>, String, Option<String>, Option<String>, bool);

const EVENT_COLUMNS: &str = "position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred_at_us, recorded_at_us";

impl SqliteLog {
    /// Opens (creating if missing) the database at `url` and migrates it.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            // Deleted rows (an erased lead's data key) are overwritten with
            // zeros, not left in free pages.
            .pragma("secure_delete", "ON");
        let pool = SqlitePoolOptions::new().max_connections(8).test_before_acquire(false).connect_with(options).await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Removes the bytes of erased leads' data keys from the WAL: the
    /// deletion already zeroed them in the database pages (`secure_delete`),
    /// and a truncating checkpoint copies those pages into the database file
    /// and empties the WAL, where older versions of the pages were. Fails
    /// when a reader keeps the checkpoint from completing.
    pub async fn purge_erased_keys(&self) -> Result<(), StoreError> {
        let (busy, _, _): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)").fetch_one(&self.pool).await?;
        if busy != 0 {
            return Err(StoreError::Corrupt("wal_checkpoint(TRUNCATE) was blocked by a reader; retry".into()));
        }
        Ok(())
    }

    async fn snapshot(&self, tx: &mut Transaction<'static, Sqlite>, keys: &BatchKeys) -> Result<Snapshot, StoreError> {
        let mut snapshot = Snapshot::default();
        let (last,): (i64,) =
            sqlx::query_as("SELECT COALESCE(MAX(position), 0) FROM events").fetch_one(&mut **tx).await?;
        snapshot.last_position = unsigned(last, "position")?;
        let ids = json_list(keys.lead_ids.iter().map(ToString::to_string));
        let heads: Vec<HeadAndKeyColumns> = sqlx::query_as(
            "SELECT l.lead_id, stage, version, seen_by_sales, last_occurred_at_us, assignee, owner, email_index, external_ref,
                    k.wrapped_key, erased
             FROM leads l
             -- Only the keys of leads whose commands carry personal text.
             LEFT JOIN lead_keys k ON k.lead_id = l.lead_id AND l.lead_id IN (SELECT value FROM json_each(?2))
             WHERE l.lead_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(&ids)
        .bind(json_list(keys.key_leads.iter().map(ToString::to_string)))
        .fetch_all(&mut **tx)
        .await?;
        for (id, stage, version, seen, last, assignee, owner, email_index, external_ref, wrapped_key, erased) in heads {
            let head = lead_head(&stage, version, seen, last, assignee, owner, email_index, external_ref, erased)?;
            let lead_id = parse_lead_id(&id)?;
            if let Some(wrapped) = wrapped_key.filter(|_| keys.key_leads.contains(&lead_id)) {
                snapshot.wrapped_keys.insert(lead_id, wrapped);
            }
            snapshot.heads.insert(lead_id, head);
        }
        let email_indexes = keys.email_indexes();
        if !email_indexes.is_empty() {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT email_index, lead_id FROM leads
                 WHERE email_index IN (SELECT value FROM json_each(?1)) AND stage NOT IN ('WON', 'LOST')",
            )
            .bind(json_list(email_indexes.into_iter()))
            .fetch_all(&mut **tx)
            .await?;
            for (email_index, id) in rows {
                snapshot.open_emails.insert(email_index, parse_lead_id(&id)?);
            }
        }
        if !keys.external_refs.is_empty() {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT external_ref, lead_id FROM leads WHERE external_ref IN (SELECT value FROM json_each(?1))",
            )
            .bind(json_list(keys.external_refs.iter().cloned()))
            .fetch_all(&mut **tx)
            .await?;
            for (external_ref, id) in rows {
                snapshot.external_refs.insert(external_ref, parse_lead_id(&id)?);
            }
        }
        if !keys.receipt_keys.is_empty() {
            let pairs = serde_json::to_string(&keys.receipt_keys).expect("strings serialize");
            let rows: Vec<(String, String, String, String, i64, i64, String)> = sqlx::query_as(
                "SELECT client_id, request_id, request_hash, lead_id, version, position, stage FROM receipts
                 WHERE (client_id, request_id) IN
                     (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?1))",
            )
            .bind(pairs)
            .fetch_all(&mut **tx)
            .await?;
            for (client_id, request_id, request_hash, id, version, position, stage_text) in rows {
                let outcome = CommandOutcome {
                    lead_id: parse_lead_id(&id)?,
                    version: unsigned(version, "version")?,
                    position: unsigned(position, "position")?,
                    stage: stage(&stage_text)?,
                    replayed: false,
                };
                snapshot.receipts.insert((client_id, request_id), Receipt { request_hash, outcome });
            }
        }
        Ok(snapshot)
    }

    /// Writes each table with one statement: the rows travel as one JSON
    /// array that `json_each` unpacks (SQLite's counterpart of `UNNEST`).
    async fn write(tx: &mut Transaction<'static, Sqlite>, plan: &Plan) -> Result<(), StoreError> {
        let events: Vec<Value> = plan
            .events
            .iter()
            .map(|e| {
                json!([
                    as_i64(e.position),
                    e.event_id.hyphenated().to_string(),
                    e.lead_id.to_string(),
                    as_i64(e.version),
                    e.event_type,
                    e.payload,
                    e.metadata,
                    e.occurred_at.as_micros(),
                    e.recorded_at.as_micros()
                ])
            })
            .collect();
        sqlx::query(
            "INSERT INTO events (position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred_at_us, recorded_at_us)
             SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), json_extract(value, '$[3]'),
                    json_extract(value, '$[4]'), ?2, json_extract(value, '$[5]'), json_extract(value, '$[6]'),
                    json_extract(value, '$[7]'), json_extract(value, '$[8]')
             FROM json_each(?1)",
        )
        .bind(Value::Array(events).to_string())
        .bind(crate::codec::SCHEMA_VERSION)
        .execute(&mut **tx)
        .await?;
        let label = |l: &Option<leadger_domain::Label>| l.as_ref().map(|l| l.as_str().to_string());
        let heads: Vec<Value> = plan
            .heads
            .iter()
            .map(|(id, h)| {
                json!([
                    id.to_string(),
                    h.lead.stage.as_str(),
                    as_i64(h.lead.version),
                    h.lead.seen_by_sales,
                    h.lead.last_occurred_at.as_micros(),
                    label(&h.lead.assignee),
                    label(&h.lead.owner),
                    h.email_index,
                    h.external_ref,
                    h.lead.erased
                ])
            })
            .collect();
        sqlx::query(
            "INSERT INTO leads (lead_id, stage, version, seen_by_sales, last_occurred_at_us, assignee, owner, email_index, external_ref, erased)
             SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), json_extract(value, '$[3]'),
                    json_extract(value, '$[4]'), json_extract(value, '$[5]'), json_extract(value, '$[6]'), json_extract(value, '$[7]'),
                    json_extract(value, '$[8]'), json_extract(value, '$[9]')
             FROM json_each(?1) WHERE true
             ON CONFLICT (lead_id) DO UPDATE SET stage = excluded.stage, version = excluded.version,
                 seen_by_sales = excluded.seen_by_sales, last_occurred_at_us = excluded.last_occurred_at_us,
                 assignee = excluded.assignee, owner = excluded.owner,
                 email_index = excluded.email_index, erased = excluded.erased",
        )
        .bind(Value::Array(heads).to_string())
        .execute(&mut **tx)
        .await?;
        if !plan.new_keys.is_empty() {
            let keys: Vec<Value> = plan.new_keys.iter().map(|(id, wrapped)| json!([id.to_string(), wrapped])).collect();
            sqlx::query(
                "INSERT INTO lead_keys (lead_id, wrapped_key)
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?1)",
            )
            .bind(Value::Array(keys).to_string())
            .execute(&mut **tx)
            .await?;
        }
        if !plan.erased_keys.is_empty() {
            sqlx::query("DELETE FROM lead_keys WHERE lead_id IN (SELECT value FROM json_each(?1))")
                .bind(json_list(plan.erased_keys.iter().map(ToString::to_string)))
                .execute(&mut **tx)
                .await?;
        }
        if !plan.receipts.is_empty() {
            let receipts: Vec<Value> = plan
                .receipts
                .iter()
                .map(|r| {
                    let outcome = &r.receipt.outcome;
                    json!([
                        r.client_id,
                        r.request_id,
                        r.receipt.request_hash,
                        outcome.lead_id.to_string(),
                        as_i64(outcome.version),
                        as_i64(outcome.position),
                        outcome.stage.as_str()
                    ])
                })
                .collect();
            sqlx::query(
                "INSERT INTO receipts (client_id, request_id, request_hash, lead_id, version, position, stage, created_at_us)
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), json_extract(value, '$[3]'),
                        json_extract(value, '$[4]'), json_extract(value, '$[5]'), json_extract(value, '$[6]'), ?2
                 FROM json_each(?1)",
            )
            .bind(Value::Array(receipts).to_string())
            .bind(plan.events.first().map_or(0, |e| e.recorded_at.as_micros()))
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

fn json_list(items: impl Iterator<Item = String>) -> String {
    serde_json::to_string(&items.collect::<Vec<_>>()).expect("strings serialize")
}

fn parse_lead_id(text: &str) -> Result<LeadId, StoreError> {
    Uuid::try_parse(text)
        .map(LeadId::from_uuid)
        .map_err(|_| StoreError::Corrupt(format!("lead id {text:?} is not a UUID")))
}

fn event_from(columns: EventColumns) -> Result<RecordedEvent, StoreError> {
    let (position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred, recorded) =
        columns;
    let uuid = |text: &str| Uuid::try_parse(text).map_err(|_| StoreError::Corrupt(format!("{text:?} is not a UUID")));
    recorded_event(
        position,
        uuid(&event_id)?,
        uuid(&stream_id)?,
        version,
        event_type,
        schema_version,
        payload,
        metadata,
        occurred,
        recorded,
    )
}

impl EventLog for SqliteLog {
    fn pool_usage(&self) -> crate::PoolUsage {
        crate::PoolUsage {
            open: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.pool.options().get_max_connections(),
        }
    }

    async fn append_batch(
        &self,
        batch: &[&PendingCommand],
        now: Timestamp,
        vault: &Vault,
        _more_waiting: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Vec<Result<CommandOutcome, CommandError>>, StoreError> {
        let started = std::time::Instant::now();
        let keys = BatchKeys::of(batch, vault);
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let snapshot = self.snapshot(&mut tx, &keys).await?;
        let read = started.elapsed();
        let plan = planner::plan(batch, &keys, snapshot, now, vault)?;
        let planned = started.elapsed();
        if !plan.events.is_empty() {
            Self::write(&mut tx, &plan).await?;
            let written = started.elapsed();
            tx.commit().await?;
            tracing::debug!(
                commands = batch.len(),
                events = plan.events.len(),
                lock_and_read_us = read.as_micros() as u64,
                plan_us = (planned - read).as_micros() as u64,
                write_us = (written - planned).as_micros() as u64,
                commit_us = (started.elapsed() - written).as_micros() as u64,
                "append batch"
            );
        }
        Ok(plan.outcomes)
    }

    async fn read_log(&self, from: u64, limit: u32) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows: Vec<EventColumns> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position >= ?1 ORDER BY position LIMIT ?2"
        )))
        .bind(as_i64(from))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(event_from).collect()
    }

    async fn lead_stream(&self, lead: LeadId) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows: Vec<EventColumns> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = ?1 ORDER BY version"
        )))
        .bind(lead.to_string())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(event_from).collect()
    }

    async fn wrapped_keys(&self, leads: &[LeadId]) -> Result<HashMap<LeadId, String>, StoreError> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT lead_id, wrapped_key FROM lead_keys WHERE lead_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(leads.iter().map(ToString::to_string)))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|(id, wrapped)| Ok((parse_lead_id(&id)?, wrapped))).collect()
    }

    async fn find_leads(&self, query: &LeadQuery) -> Result<Vec<LeadSummary>, StoreError> {
        let rows: Vec<HeadColumns> = sqlx::query_as(
            "SELECT lead_id, stage, version, seen_by_sales, last_occurred_at_us, assignee, owner, email_index, external_ref, erased
             FROM leads
             WHERE (?1 IS NULL OR email_index = ?1) AND (?2 IS NULL OR external_ref = ?2) AND (?3 IS NULL OR stage = ?3)
               AND (?4 IS NULL OR assignee = ?4) AND (?5 IS NULL OR owner = ?5) AND (?6 IS NULL OR lead_id < ?6)
             ORDER BY lead_id DESC LIMIT ?7",
        )
        .bind(&query.email_index)
        .bind(&query.external_ref)
        .bind(query.stage.map(|s| s.as_str()))
        .bind(&query.assignee)
        .bind(&query.owner)
        .bind(query.after.map(|id| id.to_string()))
        .bind(i64::from(query.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, stage, version, seen, last, assignee, owner, email_index, external_ref, erased)| {
                let head = lead_head(&stage, version, seen, last, assignee, owner, email_index, external_ref, erased)?;
                Ok(LeadSummary { lead_id: parse_lead_id(&id)?, lead: head.lead, external_ref: head.external_ref })
            })
            .collect()
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        let (last,): (i64,) =
            sqlx::query_as("SELECT COALESCE(MAX(position), 0) FROM events").fetch_one(&self.pool).await?;
        unsigned(last, "position")
    }

    async fn purge_receipts(&self, cutoff: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM receipts WHERE created_at_us < ?1")
            .bind(cutoff.as_micros())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
