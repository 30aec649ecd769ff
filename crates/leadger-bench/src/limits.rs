//! The PostgreSQL limit beside leadger: the rows leadger writes per command,
//! inserted raw, with no decision, no encryption and no lock, as fast as
//! the database takes them, on the same cluster in the same run.
//!
//! The rows are leadger's own: after the in-process store run, every
//! command's event row, its lead's row and its idempotency receipt are read
//! back from that database ([`CommandRows::read`]) and written into a fresh
//! database with leadger's schema (migrations, constraints, triggers). Each
//! transaction writes `batch` commands in one statement of `UNNEST` inserts
//! as data-modifying CTEs, the shape leadger's committer uses (the lead rows
//! as upserts, one per lead of the batch); `writers` transactions run at a
//! time. When the source rows run out they are replayed with fresh ids and
//! positions, so a window of any length has rows.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Postgres, Row};
use uuid::Uuid;

use crate::measure::{Latency, micros_histogram, record_micros};

/// One command's rows, as leadger committed them.
#[derive(Debug, Clone)]
struct CommandRows {
    position: i64,
    event_id: Uuid,
    stream_id: Uuid,
    version: i64,
    event_type: String,
    schema_version: i32,
    payload: String,
    metadata: String,
    occurred_at_us: i64,
    recorded_at_us: i64,
    stage: String,
    seen_by_sales: bool,
    assignee: Option<String>,
    owner: Option<String>,
    email_index: String,
    wrapped_key: Option<String>,
    client_id: String,
    request_id: String,
    request_hash: String,
}

impl CommandRows {
    /// Every command of the leadger database at `pool`, in log order.
    async fn read(pool: &PgPool) -> anyhow::Result<Vec<Self>> {
        let rows = sqlx::query(
            "SELECT e.position, e.event_id, e.stream_id, e.version, e.event_type, e.schema_version,
                    e.payload::text, e.metadata::text, e.occurred_at_us, e.recorded_at_us,
                    l.stage, l.seen_by_sales, l.assignee, l.owner, l.email_index, k.wrapped_key,
                    r.client_id, r.request_id, r.request_hash
             FROM events e
             JOIN leads l ON l.lead_id = e.stream_id
             LEFT JOIN lead_keys k ON k.lead_id = e.stream_id
             JOIN receipts r ON r.position = e.position
             ORDER BY e.position",
        )
        .fetch_all(pool)
        .await
        .context("read leadger's rows")?;
        rows.iter()
            .map(|row| {
                Ok(Self {
                    position: row.try_get(0)?,
                    event_id: row.try_get(1)?,
                    stream_id: row.try_get(2)?,
                    version: row.try_get(3)?,
                    event_type: row.try_get(4)?,
                    schema_version: row.try_get(5)?,
                    payload: row.try_get(6)?,
                    metadata: row.try_get(7)?,
                    occurred_at_us: row.try_get(8)?,
                    recorded_at_us: row.try_get(9)?,
                    stage: row.try_get(10)?,
                    seen_by_sales: row.try_get(11)?,
                    assignee: row.try_get(12)?,
                    owner: row.try_get(13)?,
                    email_index: row.try_get(14)?,
                    wrapped_key: row.try_get(15)?,
                    client_id: row.try_get(16)?,
                    request_id: row.try_get(17)?,
                    request_hash: row.try_get(18)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("decode leadger's rows")
    }

    /// The `index`-th command of an endless replay of `source`: a replay
    /// after the first gets new ids and positions, so nothing collides.
    fn replayed(source: &[Self], index: u64) -> Self {
        let len = source.len() as u64;
        let (round, at) = (index / len, (index % len) as usize);
        let mut rows = source[at].clone();
        rows.position = i64::try_from(index + 1).unwrap_or(i64::MAX);
        if round > 0 {
            let salt = round.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let salted = |id: Uuid| {
                let (high, low) = id.as_u64_pair();
                Uuid::from_u64_pair(high, low ^ salt)
            };
            rows.event_id = salted(rows.event_id);
            rows.stream_id = salted(rows.stream_id);
            rows.request_id = format!("{}-{round}", rows.request_id);
        }
        rows
    }
}

/// Rows leadger writes per command: its event, its lead's row, its receipt.
pub const ROWS_PER_COMMAND: u64 = 3;

#[derive(Debug, Clone, Serialize)]
pub struct InsertPlan {
    /// Commands per transaction.
    pub batch: usize,
    /// Transactions in flight at once.
    pub writers: usize,
    pub warmup_secs: f64,
    pub measured_secs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct InsertResult {
    pub plan: InsertPlan,
    /// Distinct commands in the source (replayed as needed).
    pub source_commands: usize,
    pub seconds: f64,
    pub commands: u64,
    pub commands_per_second: f64,
    pub rows_per_second: f64,
    /// Per transaction, send to commit.
    pub transaction_latency_ms: Latency,
}

/// The rows of the leadger database at `source_url`, for [`insert`].
pub struct SourceRows(Arc<Vec<CommandRows>>);

impl SourceRows {
    pub async fn read(source_url: &str) -> anyhow::Result<Self> {
        let pool =
            PgPoolOptions::new().max_connections(1).connect(source_url).await.context("connect to the source")?;
        let rows = CommandRows::read(&pool).await?;
        pool.close().await;
        if rows.is_empty() {
            bail!("the source database holds no commands");
        }
        Ok(Self(Arc::new(rows)))
    }

    /// The median number of commands per commit batch in the source: the
    /// events of one batch share their `recorded_at_us` (the batch's clock
    /// reading).
    pub fn median_batch(&self) -> usize {
        let mut sizes: HashMap<i64, usize> = HashMap::new();
        for rows in self.0.iter() {
            *sizes.entry(rows.recorded_at_us).or_default() += 1;
        }
        let mut sizes: Vec<usize> = sizes.into_values().collect();
        sizes.sort_unstable();
        sizes.get(sizes.len() / 2).copied().unwrap_or(1)
    }
}

/// Inserts `source`'s rows into the empty, migrated leadger database at
/// `target_url` as `plan` says, for its warm-up and measured window.
pub async fn insert(target_url: &str, source: &SourceRows, plan: &InsertPlan) -> anyhow::Result<InsertResult> {
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(plan.writers).unwrap_or(u32::MAX))
        .connect(target_url)
        .await
        .context("connect to the target database")?;
    let start = Instant::now();
    let from = start + Duration::from_secs_f64(plan.warmup_secs);
    let until = from + Duration::from_secs_f64(plan.measured_secs);
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..plan.writers)
        .map(|_| {
            let (pool, rows, next, batch) = (pool.clone(), source.0.clone(), next.clone(), plan.batch);
            tokio::spawn(async move {
                let mut latency = micros_histogram();
                let mut committed = 0u64;
                while Instant::now() < until {
                    let first = next.fetch_add(batch as u64, Ordering::Relaxed);
                    let commands: Vec<CommandRows> =
                        (first..first + batch as u64).map(|index| CommandRows::replayed(&rows, index)).collect();
                    let sent = Instant::now();
                    write_batch(&pool, &commands).await?;
                    let done = Instant::now();
                    if done >= from && done <= until {
                        record_micros(&mut latency, done - sent);
                        committed += commands.len() as u64;
                    }
                }
                anyhow::Ok((committed, latency))
            })
        })
        .collect();
    let mut commands = 0;
    let mut latency = micros_histogram();
    for task in tasks {
        let (committed, histogram) = task.await.context("a writer task panicked")??;
        commands += committed;
        let _ = latency.add(&histogram);
    }
    pool.close().await;
    let seconds = plan.measured_secs;
    Ok(InsertResult {
        plan: plan.clone(),
        source_commands: source.0.len(),
        seconds,
        commands,
        commands_per_second: commands as f64 / seconds,
        rows_per_second: (commands * ROWS_PER_COMMAND) as f64 / seconds,
        transaction_latency_ms: Latency::from_micros(&latency),
    })
}

/// One transaction (the statement's own) with every row of `commands`.
async fn write_batch(pool: &PgPool, commands: &[CommandRows]) -> anyhow::Result<()> {
    // One row per lead, its latest, as leadger's committer writes them.
    let mut heads: HashMap<Uuid, &CommandRows> = HashMap::new();
    for rows in commands {
        heads.insert(rows.stream_id, rows);
    }
    // In one order in every transaction, so concurrent batches that share
    // leads wait for each other instead of deadlocking.
    let mut heads: Vec<&CommandRows> = heads.into_values().collect();
    heads.sort_unstable_by_key(|rows| rows.stream_id);
    let column = |f: fn(&CommandRows) -> String| commands.iter().map(f).collect::<Vec<_>>();
    sqlx::query::<Postgres>(
        "WITH appended AS (
             INSERT INTO events (position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred_at_us, recorded_at_us)
             SELECT p, e, s, v, t, sv, pl::json, md::json, oa, ra
             FROM UNNEST($1::bigint[], $2::uuid[], $3::uuid[], $4::bigint[], $5::text[], $6::int[], $7::text[], $8::text[], $9::bigint[], $10::bigint[])
                 AS r(p, e, s, v, t, sv, pl, md, oa, ra)
         ), heads AS (
             INSERT INTO leads (lead_id, stage, version, seen_by_sales, last_occurred_at_us, assignee, owner, email_index, external_ref)
             SELECT l, st, v, sb, oa, a, o, ei, NULL
             FROM UNNEST($11::uuid[], $12::text[], $13::bigint[], $14::boolean[], $15::bigint[], $16::text[], $17::text[], $18::text[], $19::text[])
                 AS h(l, st, v, sb, oa, a, o, ei, wk)
             ON CONFLICT (lead_id) DO UPDATE SET stage = excluded.stage, version = excluded.version,
                 seen_by_sales = excluded.seen_by_sales, last_occurred_at_us = excluded.last_occurred_at_us,
                 assignee = excluded.assignee, owner = excluded.owner
         ), new_keys AS (
             INSERT INTO lead_keys (lead_id, wrapped_key)
             SELECT l, wk FROM UNNEST($11::uuid[], $19::text[]) AS k(l, wk) WHERE wk IS NOT NULL
             ON CONFLICT (lead_id) DO NOTHING
         )
         INSERT INTO receipts (client_id, request_id, request_hash, lead_id, version, position, stage, created_at_us)
         SELECT * FROM UNNEST($20::text[], $21::text[], $22::text[], $3::uuid[], $4::bigint[], $1::bigint[], $23::text[], $10::bigint[])",
    )
    .bind(commands.iter().map(|r| r.position).collect::<Vec<_>>())
    .bind(commands.iter().map(|r| r.event_id).collect::<Vec<_>>())
    .bind(commands.iter().map(|r| r.stream_id).collect::<Vec<_>>())
    .bind(commands.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(column(|r| r.event_type.clone()))
    .bind(commands.iter().map(|r| r.schema_version).collect::<Vec<_>>())
    .bind(column(|r| r.payload.clone()))
    .bind(column(|r| r.metadata.clone()))
    .bind(commands.iter().map(|r| r.occurred_at_us).collect::<Vec<_>>())
    .bind(commands.iter().map(|r| r.recorded_at_us).collect::<Vec<_>>())
    .bind(heads.iter().map(|r| r.stream_id).collect::<Vec<_>>())
    .bind(heads.iter().map(|r| r.stage.clone()).collect::<Vec<_>>())
    .bind(heads.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(heads.iter().map(|r| r.seen_by_sales).collect::<Vec<_>>())
    .bind(heads.iter().map(|r| r.occurred_at_us).collect::<Vec<_>>())
    .bind(heads.iter().map(|r| r.assignee.clone()).collect::<Vec<_>>())
    .bind(heads.iter().map(|r| r.owner.clone()).collect::<Vec<_>>())
    .bind(heads.iter().map(|r| r.email_index.clone()).collect::<Vec<_>>())
    .bind(heads.iter().map(|r| r.wrapped_key.clone()).collect::<Vec<_>>())
    .bind(column(|r| r.client_id.clone()))
    .bind(column(|r| r.request_id.clone()))
    .bind(column(|r| r.request_hash.clone()))
    .bind(column(|r| r.stage.clone()))
    .execute(pool)
    .await
    .context("insert a batch")?;
    Ok(())
}
