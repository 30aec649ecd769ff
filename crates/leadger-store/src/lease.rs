//! Named leases in the log's database: one holder at a time for work that
//! must have a single active writer (the NATS relay), with standbys that take
//! over when the holder stops renewing. A lease only decides who works; what
//! the work may do is guarded where it lands (the relay's publishes are
//! fenced by JetStream's expected sequence), so a holder that was paused past
//! its expiry cannot do harm.

use std::future::Future;
use std::time::Duration;

use leadger_domain::Timestamp;

use crate::{PostgresLog, SqliteLog, StoreError, as_i64, timestamp, unsigned};

/// A lease held by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Grows each time the lease changes hands.
    pub token: u64,
    pub expires_at: Timestamp,
    /// The highest progress any holder reported (e.g. a published position).
    pub progress: u64,
}

pub trait Leases: Send + Sync + 'static {
    /// Takes the lease `name` for `holder` for `ttl` if it is free, expired or
    /// already held by `holder` (a renewal), recording `progress` if it is
    /// higher than the recorded one. `None`: another holder has it.
    fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        progress: u64,
    ) -> impl Future<Output = Result<Option<Lease>, StoreError>> + Send;

    /// Lets the lease go at once, if `holder` has it, so a standby need not
    /// wait for it to expire; records `progress` as [`Leases::acquire_lease`] does.
    fn release_lease(
        &self,
        name: &str,
        holder: &str,
        progress: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The upsert both backends run; `{now}` is the backend's clock in
/// microseconds and `{max}` its two-argument maximum.
fn acquire_sql(now: &str, max: &str, placeholders: [&str; 4]) -> String {
    let [name, holder, ttl, progress] = placeholders;
    format!(
        "INSERT INTO leases (name, holder, token, expires_at_us, progress)
         VALUES ({name}, {holder}, 1, {now} + {ttl}, {progress})
         ON CONFLICT (name) DO UPDATE SET
             token = CASE WHEN leases.holder = excluded.holder THEN leases.token ELSE leases.token + 1 END,
             holder = excluded.holder,
             expires_at_us = excluded.expires_at_us,
             progress = {max}(leases.progress, excluded.progress)
         WHERE leases.holder = excluded.holder OR leases.expires_at_us <= {now}
         RETURNING token, expires_at_us, progress"
    )
}

fn lease_from((token, expires_at_us, progress): (i64, i64, i64)) -> Result<Lease, StoreError> {
    Ok(Lease {
        token: unsigned(token, "lease token")?,
        expires_at: timestamp(expires_at_us, "lease expiry")?,
        progress: unsigned(progress, "lease progress")?,
    })
}

fn micros(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX / 2)
}

const PG_NOW_US: &str = "(extract(epoch from clock_timestamp()) * 1000000)::bigint";
const SQLITE_NOW_US: &str = "CAST((julianday('now') - 2440587.5) * 86400000000.0 AS INTEGER)";

impl Leases for PostgresLog {
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        progress: u64,
    ) -> Result<Option<Lease>, StoreError> {
        let row: Option<(i64, i64, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(acquire_sql(PG_NOW_US, "GREATEST", ["$1", "$2", "$3", "$4"])))
                .bind(name)
                .bind(holder)
                .bind(micros(ttl))
                .bind(as_i64(progress))
                .fetch_optional(self.pool())
                .await?;
        row.map(lease_from).transpose()
    }

    async fn release_lease(&self, name: &str, holder: &str, progress: u64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE leases SET expires_at_us = 0, progress = GREATEST(progress, $3) WHERE name = $1 AND holder = $2",
        )
        .bind(name)
        .bind(holder)
        .bind(as_i64(progress))
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

impl Leases for SqliteLog {
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        progress: u64,
    ) -> Result<Option<Lease>, StoreError> {
        let row: Option<(i64, i64, i64)> =
            sqlx::query_as(sqlx::AssertSqlSafe(acquire_sql(SQLITE_NOW_US, "MAX", ["?1", "?2", "?3", "?4"])))
                .bind(name)
                .bind(holder)
                .bind(micros(ttl))
                .bind(as_i64(progress))
                .fetch_optional(self.pool())
                .await?;
        row.map(lease_from).transpose()
    }

    async fn release_lease(&self, name: &str, holder: &str, progress: u64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE leases SET expires_at_us = 0, progress = MAX(progress, ?3) WHERE name = ?1 AND holder = ?2",
        )
        .bind(name)
        .bind(holder)
        .bind(as_i64(progress))
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
