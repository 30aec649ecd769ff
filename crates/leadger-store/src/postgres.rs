//! The production backend: the event log in PostgreSQL, shared by several
//! leadger processes.
//!
//! Each batch takes one transaction-scoped advisory lock (the append lock)
//! before it reads the last position, so batches from every process assign
//! positions one after the other and commit in that order: a reader tailing by
//! position never sees position n+1 before n. (A sequence would leave holes and
//! commit out of order.) Rows are written with one `UNNEST` insert per table.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use leadger_domain::{LeadId, Timestamp};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::planner::{self, BatchKeys, Plan, Receipt, Snapshot};
use crate::vault::Vault;
use crate::{
    CommandError, CommandOutcome, EventLog, LeadQuery, LeadSummary, PendingCommand, RecordedEvent, StoreError, as_i64,
    lead_head, recorded_event, stage, unsigned,
};

/// Opens a batch's transaction and takes the append lock in one round trip.
/// The lock's key is arbitrary and fixed: 0x6c_6564_6765_72, "ledger" in ASCII.
pub(crate) const BEGIN_AND_LOCK: &str = "BEGIN; SELECT pg_advisory_xact_lock(119182731994482)";
/// Channel notified with the last position after each committed batch.
pub(crate) const APPENDED_CHANNEL: &str = "leadger_appended";

#[derive(Clone)]
pub struct PostgresLog {
    pool: PgPool,
    /// The next batch's transaction, queued for the append lock while the
    /// current batch commits, so it holds the lock as soon as that commit
    /// ends, without a round trip in between.
    next_batch: Arc<Mutex<Option<Locking>>>,
}

type Locking = JoinHandle<Result<Transaction<'static, Postgres>, sqlx::Error>>;

impl std::fmt::Debug for PostgresLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresLog").field("pool", &self.pool).finish_non_exhaustive()
    }
}

type EventColumns = (i64, Uuid, Uuid, i64, String, i32, String, String, i64, i64);
type HeadColumns = (Uuid, String, i64, bool, i64, Option<String>, Option<String>, String, Option<String>, bool);
type HeadAndKeyColumns =
    (Uuid, String, i64, bool, i64, Option<String>, Option<String>, String, Option<String>, Option<String>, bool);

const EVENT_COLUMNS: &str = "position, event_id, stream_id, version, event_type, schema_version, payload::text, metadata::text, occurred_at_us, recorded_at_us";

impl PostgresLog {
    /// Connects to `url` and migrates the schema. Fails fast (1 s) when the
    /// database is unreachable rather than hanging a command.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, 16).await
    }

    pub async fn connect_with(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        // Every query of leadger looks rows up by key or range. Without this,
        // the generic plans cached while the tables were small (a new
        // database, before autovacuum's first ANALYZE) scan them sequentially
        // as they grow.
        let options = PgConnectOptions::from_str(url)?.application_name("leadger").options([("enable_seqscan", "off")]);
        // No ping before each acquire: a broken connection fails its batch
        // (UNAVAILABLE) and is replaced; a ping would cost a round trip per batch.
        let pool = PgPoolOptions::new()
            .test_before_acquire(false)
            .max_connections(max_connections)
            // While PostgreSQL is down, sqlx retries a refused connect until
            // this timeout, and the committer's batches fail one after the
            // other: commands queued behind a batch wait for it and then for
            // their own. At 5 s that outlasted clients' deadlines (commands
            // got DEADLINE_EXCEEDED, not UNAVAILABLE); tests/tests/faults.rs
            // checks that one fails within 2.5 s, under a 3 s deadline.
            .acquire_timeout(Duration::from_secs(1))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(Self { pool, next_batch: Arc::default() })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Removes the bytes of erased leads' data keys from the database files
    /// and the WAL: rewrites `lead_keys` (a deleted tuple stays in its heap
    /// page until then), prunes `leads`, switches to a new WAL segment and
    /// checkpoints, so the segments that logged the keys are removed (deleted,
    /// not recycled, when the server runs with `wal_recycle = off`). Needs a
    /// role allowed to `CHECKPOINT` and `pg_switch_wal()` (a superuser, or
    /// `pg_checkpoint` and an explicit grant). `VACUUM FULL` locks
    /// `lead_keys`, so appends wait while it runs: an operator's clean-up
    /// after erasures, see docs/personal-data.md.
    pub async fn purge_erased_keys(&self) -> Result<(), StoreError> {
        for statement in ["VACUUM FULL lead_keys", "VACUUM leads", "SELECT pg_switch_wal()", "CHECKPOINT"] {
            sqlx::raw_sql(statement).execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Reads everything the batch decides on in one round trip, after the
    /// append lock is held (so in a snapshot that sees every earlier batch).
    async fn snapshot(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        keys: &BatchKeys,
    ) -> Result<Snapshot, StoreError> {
        let ids: Vec<Uuid> = keys.lead_ids.iter().map(LeadId::as_uuid).collect();
        let key_ids: Vec<Uuid> = keys.key_leads.iter().map(LeadId::as_uuid).collect();
        let (clients, requests): (Vec<String>, Vec<String>) = keys.receipt_keys.iter().cloned().unzip();
        let (last, heads, open_emails, external_refs, receipts): (i64, String, String, String, String) = sqlx::query_as(
            "SELECT
                 (SELECT COALESCE(MAX(position), 0) FROM events),
                 (SELECT COALESCE(json_agg(json_build_array(l.lead_id, stage, version, seen_by_sales, last_occurred_at_us,
                                                            assignee, owner, email_index, external_ref, k.wrapped_key, erased)), '[]')::text
                  FROM leads l
                  -- Only the keys of leads whose commands carry personal text.
                  LEFT JOIN lead_keys k ON k.lead_id = l.lead_id AND l.lead_id = ANY($6)
                  WHERE l.lead_id = ANY($1)),
                 (SELECT COALESCE(json_agg(json_build_array(email_index, lead_id)), '[]')::text
                  FROM leads WHERE email_index = ANY($2) AND stage NOT IN ('WON', 'LOST')),
                 (SELECT COALESCE(json_agg(json_build_array(external_ref, lead_id)), '[]')::text
                  FROM leads WHERE external_ref = ANY($3)),
                 (SELECT COALESCE(json_agg(json_build_array(r.client_id, r.request_id, r.request_hash, r.lead_id, r.version,
                                                            r.position, r.stage)), '[]')::text
                  FROM UNNEST($4::text[], $5::text[]) AS k(client_id, request_id)
                  -- One primary-key probe per request (LIMIT keeps the planner
                  -- from turning it into a join that reads the whole index).
                  CROSS JOIN LATERAL (SELECT * FROM receipts
                                      WHERE client_id = k.client_id AND request_id = k.request_id LIMIT 1) r)",
        )
        .bind(&ids)
        .bind(keys.email_indexes())
        .bind(&keys.external_refs)
        .bind(&clients)
        .bind(&requests)
        .bind(&key_ids)
        .fetch_one(&mut **tx)
        .await?;
        let mut snapshot = Snapshot { last_position: unsigned(last, "position")?, ..Snapshot::default() };
        for (id, stage, version, seen, last, assignee, owner, email_index, external_ref, wrapped_key, erased) in
            parse_rows::<HeadAndKeyColumns>(&heads, "lead heads")?
        {
            let head = lead_head(&stage, version, seen, last, assignee, owner, email_index, external_ref, erased)?;
            let lead_id = LeadId::from_uuid(id);
            if let Some(wrapped) = wrapped_key.filter(|_| keys.key_leads.contains(&lead_id)) {
                snapshot.wrapped_keys.insert(lead_id, wrapped);
            }
            snapshot.heads.insert(lead_id, head);
        }
        for (email_index, id) in parse_rows::<(String, Uuid)>(&open_emails, "open emails")? {
            snapshot.open_emails.insert(email_index, LeadId::from_uuid(id));
        }
        for (external_ref, id) in parse_rows::<(String, Uuid)>(&external_refs, "external refs")? {
            snapshot.external_refs.insert(external_ref, LeadId::from_uuid(id));
        }
        for (client_id, request_id, request_hash, id, version, position, stage_text) in
            parse_rows::<(String, String, String, Uuid, i64, i64, String)>(&receipts, "receipts")?
        {
            let outcome = CommandOutcome {
                lead_id: LeadId::from_uuid(id),
                version: unsigned(version, "version")?,
                position: unsigned(position, "position")?,
                stage: stage(&stage_text)?,
                replayed: false,
            };
            snapshot.receipts.insert((client_id, request_id), Receipt { request_hash, outcome });
        }
        Ok(snapshot)
    }

    /// Writes the whole plan in one round trip: one `UNNEST` insert per table
    /// as data-modifying CTEs (and the deletion of erased leads' keys), and
    /// the wake-up for other processes' followers.
    async fn write(tx: &mut Transaction<'static, Postgres>, plan: &Plan) -> Result<(), StoreError> {
        let (events, heads, receipts) = (&plan.events, &plan.heads, &plan.receipts);
        let label = |l: &Option<leadger_domain::Label>| l.as_ref().map(|l| l.as_str().to_string());
        let recorded_at = events.first().map_or(0, |e| e.recorded_at.as_micros());
        sqlx::query(
            "WITH appended AS (
                 INSERT INTO events (position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred_at_us, recorded_at_us)
                 SELECT p, e, s, v, t, $6, pl::json, md::json, oa, ra
                 FROM UNNEST($1::bigint[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[], $7::text[], $8::text[], $9::bigint[], $10::bigint[])
                     AS r(p, e, s, v, t, pl, md, oa, ra)
             ), heads AS (
                 INSERT INTO leads (lead_id, stage, version, seen_by_sales, last_occurred_at_us, assignee, owner, email_index, external_ref, erased)
                 SELECT * FROM UNNEST($11::uuid[], $12::text[], $13::bigint[], $14::boolean[], $15::bigint[], $16::text[], $17::text[], $18::text[], $19::text[], $20::boolean[])
                 -- email_index changes only on erasure; an unchanged value keeps the update HOT.
                 ON CONFLICT (lead_id) DO UPDATE SET stage = excluded.stage, version = excluded.version,
                     seen_by_sales = excluded.seen_by_sales, last_occurred_at_us = excluded.last_occurred_at_us,
                     assignee = excluded.assignee, owner = excluded.owner,
                     email_index = excluded.email_index, erased = excluded.erased
             ), new_keys AS (
                 INSERT INTO lead_keys (lead_id, wrapped_key) SELECT * FROM UNNEST($31::uuid[], $32::text[])
             ), shredded AS (
                 DELETE FROM lead_keys WHERE lead_id = ANY($33)
             ), receipts AS (
                 INSERT INTO receipts (client_id, request_id, request_hash, lead_id, version, position, stage, created_at_us)
                 SELECT c, r, h, l, v, p, s, $28
                 FROM UNNEST($21::text[], $22::text[], $23::text[], $24::uuid[], $25::bigint[], $26::bigint[], $27::text[])
                     AS k(c, r, h, l, v, p, s)
             )
             SELECT pg_notify($29, $30)",
        )
        .bind(events.iter().map(|e| as_i64(e.position)).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.lead_id.as_uuid()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| as_i64(e.version)).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.event_type.clone()).collect::<Vec<_>>())
        .bind(crate::codec::SCHEMA_VERSION)
        .bind(events.iter().map(|e| e.payload.clone()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.metadata.clone()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.occurred_at.as_micros()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.recorded_at.as_micros()).collect::<Vec<_>>())
        .bind(heads.iter().map(|(id, _)| id.as_uuid()).collect::<Vec<_>>())
        .bind(heads.iter().map(|(_, h)| h.lead.stage.as_str().to_string()).collect::<Vec<_>>())
        .bind(heads.iter().map(|(_, h)| as_i64(h.lead.version)).collect::<Vec<_>>())
        .bind(heads.iter().map(|(_, h)| h.lead.seen_by_sales).collect::<Vec<_>>())
        .bind(heads.iter().map(|(_, h)| h.lead.last_occurred_at.as_micros()).collect::<Vec<_>>())
        .bind(heads.iter().map(|(_, h)| label(&h.lead.assignee)).collect::<Vec<_>>())
        .bind(heads.iter().map(|(_, h)| label(&h.lead.owner)).collect::<Vec<_>>())
        .bind(heads.iter().map(|(_, h)| h.email_index.clone()).collect::<Vec<_>>())
        .bind(heads.iter().map(|(_, h)| h.external_ref.clone()).collect::<Vec<_>>())
        .bind(heads.iter().map(|(_, h)| h.lead.erased).collect::<Vec<_>>())
        .bind(receipts.iter().map(|r| r.client_id.clone()).collect::<Vec<_>>())
        .bind(receipts.iter().map(|r| r.request_id.clone()).collect::<Vec<_>>())
        .bind(receipts.iter().map(|r| r.receipt.request_hash.clone()).collect::<Vec<_>>())
        .bind(receipts.iter().map(|r| r.receipt.outcome.lead_id.as_uuid()).collect::<Vec<_>>())
        .bind(receipts.iter().map(|r| as_i64(r.receipt.outcome.version)).collect::<Vec<_>>())
        .bind(receipts.iter().map(|r| as_i64(r.receipt.outcome.position)).collect::<Vec<_>>())
        .bind(receipts.iter().map(|r| r.receipt.outcome.stage.as_str().to_string()).collect::<Vec<_>>())
        .bind(recorded_at)
        .bind(APPENDED_CHANNEL)
        .bind(plan.last_position().unwrap_or(0).to_string())
        .bind(plan.new_keys.iter().map(|(id, _)| id.as_uuid()).collect::<Vec<_>>())
        .bind(plan.new_keys.iter().map(|(_, wrapped)| wrapped.clone()).collect::<Vec<_>>())
        .bind(plan.erased_keys.iter().map(LeadId::as_uuid).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

impl PostgresLog {
    fn take_next_batch(&self) -> Option<Locking> {
        self.next_batch.lock().ok().and_then(|mut slot| slot.take())
    }

    /// A transaction holding the append lock: the one prepared while the
    /// previous batch committed, or a new one.
    async fn locked_transaction(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        if let Some(locking) = self.take_next_batch() {
            match locking.await {
                Ok(Ok(tx)) => return Ok(tx),
                Ok(Err(error)) => tracing::warn!(%error, "prepare the next batch's transaction; beginning a new one"),
                Err(error) => tracing::warn!(%error, "prepare the next batch's transaction; beginning a new one"),
            }
        }
        self.pool.begin_with(BEGIN_AND_LOCK).await
    }
}

/// Lets a prepared transaction finish taking the lock, then rolls it back.
/// It is never cancelled half-way: a `BEGIN; SELECT pg_advisory_xact_lock`
/// abandoned while waiting would take the lock later in a session nobody
/// owns any more, and keep it.
fn roll_back_when_locked(locking: Locking) {
    tokio::spawn(async move {
        if let Ok(Ok(tx)) = locking.await
            && let Err(error) = tx.rollback().await
        {
            tracing::warn!(%error, "roll back an unused prepared transaction");
        }
    });
}

/// Rows that the snapshot query aggregated as a JSON array of arrays.
fn parse_rows<T: serde::de::DeserializeOwned>(json: &str, what: &str) -> Result<Vec<T>, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("{what} from the snapshot query: {e}")))
}

fn event_from(columns: EventColumns) -> Result<RecordedEvent, StoreError> {
    let (position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred, recorded) =
        columns;
    recorded_event(
        position,
        event_id,
        stream_id,
        version,
        event_type,
        schema_version,
        payload,
        metadata,
        occurred,
        recorded,
    )
}

impl EventLog for PostgresLog {
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
        more_waiting: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<Vec<Result<CommandOutcome, CommandError>>, StoreError> {
        let started = std::time::Instant::now();
        let keys = BatchKeys::of(batch, vault);
        let mut tx = self.locked_transaction().await?;
        let locked = started.elapsed();
        let snapshot = self.snapshot(&mut tx, &keys).await?;
        let read = started.elapsed();
        let plan = planner::plan(batch, &keys, snapshot, now, vault)?;
        let planned = started.elapsed();
        if !plan.events.is_empty() {
            Self::write(&mut tx, &plan).await?;
            let written = started.elapsed();
            if more_waiting() {
                // Queued behind this transaction, the next one gets the lock
                // the moment this COMMIT releases it.
                let pool = self.pool.clone();
                let locking = tokio::spawn(async move { pool.begin_with(BEGIN_AND_LOCK).await });
                if let Some(stale) = self.next_batch.lock().ok().and_then(|mut slot| slot.replace(locking)) {
                    roll_back_when_locked(stale);
                }
            }
            tx.commit().await?;
            tracing::debug!(
                commands = batch.len(),
                events = plan.events.len(),
                lock_us = locked.as_micros() as u64,
                read_us = (read - locked).as_micros() as u64,
                plan_us = (planned - read).as_micros() as u64,
                write_us = (written - planned).as_micros() as u64,
                commit_us = (started.elapsed() - written).as_micros() as u64,
                "append batch"
            );
        }
        Ok(plan.outcomes)
    }

    /// Rolls a prepared transaction back, so an idle server does not keep the
    /// append lock from the others.
    fn idle(&self) {
        if let Some(locking) = self.take_next_batch() {
            roll_back_when_locked(locking);
        }
    }

    async fn read_log(&self, from: u64, limit: u32) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows: Vec<EventColumns> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE position >= $1 ORDER BY position LIMIT $2"
        )))
        .bind(as_i64(from))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(event_from).collect()
    }

    async fn lead_stream(&self, lead: LeadId) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows: Vec<EventColumns> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_id = $1 ORDER BY version"
        )))
        .bind(lead.as_uuid())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(event_from).collect()
    }

    async fn wrapped_keys(&self, leads: &[LeadId]) -> Result<HashMap<LeadId, String>, StoreError> {
        let ids: Vec<Uuid> = leads.iter().map(LeadId::as_uuid).collect();
        let rows: Vec<(Uuid, String)> =
            sqlx::query_as("SELECT lead_id, wrapped_key FROM lead_keys WHERE lead_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(id, wrapped)| (LeadId::from_uuid(id), wrapped)).collect())
    }

    async fn find_leads(&self, query: &LeadQuery) -> Result<Vec<LeadSummary>, StoreError> {
        let rows: Vec<HeadColumns> = sqlx::query_as(
            "SELECT lead_id, stage, version, seen_by_sales, last_occurred_at_us, assignee, owner, email_index, external_ref, erased
             FROM leads
             WHERE ($1::text IS NULL OR email_index = $1) AND ($2::text IS NULL OR external_ref = $2)
               AND ($3::text IS NULL OR stage = $3) AND ($4::text IS NULL OR assignee = $4)
               AND ($5::text IS NULL OR owner = $5) AND ($6::uuid IS NULL OR lead_id < $6)
             ORDER BY lead_id DESC LIMIT $7",
        )
        .bind(&query.email_index)
        .bind(&query.external_ref)
        .bind(query.stage.map(|s| s.as_str()))
        .bind(&query.assignee)
        .bind(&query.owner)
        .bind(query.after.map(|id| id.as_uuid()))
        .bind(i64::from(query.limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(id, stage, version, seen, last, assignee, owner, email_index, external_ref, erased)| {
                let head = lead_head(&stage, version, seen, last, assignee, owner, email_index, external_ref, erased)?;
                Ok(LeadSummary { lead_id: LeadId::from_uuid(id), lead: head.lead, external_ref: head.external_ref })
            })
            .collect()
    }

    async fn head_position(&self) -> Result<u64, StoreError> {
        let (last,): (i64,) =
            sqlx::query_as("SELECT COALESCE(MAX(position), 0) FROM events").fetch_one(&self.pool).await?;
        unsigned(last, "position")
    }

    async fn purge_receipts(&self, cutoff: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM receipts WHERE created_at_us < $1")
            .bind(cutoff.as_micros())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// LISTENs for batches other processes commit. Notifications are lost
    /// while the listener reconnects, so they only wake readers, which then
    /// re-read from their own position.
    fn forward_foreign_appends(&self, appended: watch::Sender<u64>) {
        let pool = self.pool.clone();
        tokio::spawn(async move {
            loop {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::warn!(%error, "listen for appends: connect");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if let Err(error) = listener.listen(APPENDED_CHANNEL).await {
                    tracing::warn!(%error, "listen for appends: subscribe");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                loop {
                    tokio::select! {
                        _ = appended.closed() => return,
                        notification = listener.recv() => match notification {
                            Ok(notification) => {
                                if let Ok(position) = notification.payload().parse::<u64>() {
                                    crate::advance(&appended, position);
                                }
                            }
                            Err(error) => {
                                tracing::warn!(%error, "listen for appends: receive");
                                break;
                            }
                        }
                    }
                }
            }
        });
    }
}
