//! The agreement's events in the log: SLA policy versions on their own
//! stream (`sla-policy`, the nil UUID), appended under the same append lock
//! as lead batches so positions stay contiguous and in commit order.
//!
//! Policy changes are rare and are not group-committed. A retried request
//! (same client and `request_id`) returns the version it appended first.

use std::future::Future;

use leadger_domain::Timestamp;
use leadger_domain::sla::{SLA_POLICY_STREAM, SlaPolicy};
use uuid::Uuid;

use crate::codec::{SCHEMA_VERSION, SLA_POLICY_DEFINED, decode_sla_policy, encode_sla_policy};
use crate::{EventMetadata, Origin, PostgresLog, SqliteLog, StoreError, unsigned};

/// Where an agreement event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgreementOutcome {
    pub version: u64,
    pub position: u64,
}

/// A policy version as recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedPolicy {
    pub version: u64,
    pub position: u64,
    pub policy: SlaPolicy,
}

pub trait Agreements: Send + Sync + 'static {
    /// Appends a new SLA policy version at `now` (recorded and business time).
    fn define_sla_policy(
        &self,
        policy: &SlaPolicy,
        origin: &Origin,
        now: Timestamp,
    ) -> impl Future<Output = Result<AgreementOutcome, StoreError>> + Send;

    /// Every policy version, oldest first.
    fn sla_policies(&self) -> impl Future<Output = Result<Vec<RecordedPolicy>, StoreError>> + Send;
}

fn outcome((version, position): (i64, i64)) -> Result<AgreementOutcome, StoreError> {
    Ok(AgreementOutcome { version: unsigned(version, "version")?, position: unsigned(position, "position")? })
}

fn recorded(
    (version, position, schema_version, payload): (i64, i64, i32, String),
) -> Result<RecordedPolicy, StoreError> {
    let policy = decode_sla_policy(schema_version, &payload)
        .map_err(|e| StoreError::Corrupt(format!("SLA policy version {version}: {e}")))?;
    Ok(RecordedPolicy { version: unsigned(version, "version")?, position: unsigned(position, "position")?, policy })
}

impl Agreements for PostgresLog {
    async fn define_sla_policy(
        &self,
        policy: &SlaPolicy,
        origin: &Origin,
        now: Timestamp,
    ) -> Result<AgreementOutcome, StoreError> {
        let stream = SLA_POLICY_STREAM.as_uuid();
        let mut tx = self.pool().begin_with(crate::postgres::BEGIN_AND_LOCK).await?;
        if let Some(request_id) = &origin.request_id {
            let earlier: Option<(i64, i64)> = sqlx::query_as(
                "SELECT version, position FROM events
                 WHERE stream_id = $1 AND metadata->>'client_id' = $2 AND metadata->>'request_id' = $3",
            )
            .bind(stream)
            .bind(&origin.client_id)
            .bind(request_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(earlier) = earlier {
                tx.rollback().await?;
                return outcome(earlier);
            }
        }
        let (position, version): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(position), 0) + 1 FROM events),
                    (SELECT COALESCE(MAX(version), 0) + 1 FROM events WHERE stream_id = $1)",
        )
        .bind(stream)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO events (position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred_at_us, recorded_at_us)
             VALUES ($1, $2, $3, $4, $5, $6, $7::json, $8::json, $9, $9)",
        )
        .bind(position)
        .bind(Uuid::now_v7())
        .bind(stream)
        .bind(version)
        .bind(SLA_POLICY_DEFINED)
        .bind(SCHEMA_VERSION)
        .bind(encode_sla_policy(policy))
        .bind(EventMetadata::of(origin).to_json())
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(crate::postgres::APPENDED_CHANNEL)
            .bind(position.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        outcome((version, position))
    }

    async fn sla_policies(&self) -> Result<Vec<RecordedPolicy>, StoreError> {
        let rows: Vec<(i64, i64, i32, String)> = sqlx::query_as(
            "SELECT version, position, schema_version, payload::text FROM events WHERE stream_id = $1 ORDER BY version",
        )
        .bind(SLA_POLICY_STREAM.as_uuid())
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(recorded).collect()
    }
}

impl Agreements for SqliteLog {
    async fn define_sla_policy(
        &self,
        policy: &SlaPolicy,
        origin: &Origin,
        now: Timestamp,
    ) -> Result<AgreementOutcome, StoreError> {
        let stream = SLA_POLICY_STREAM.as_uuid().hyphenated().to_string();
        let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
        if let Some(request_id) = &origin.request_id {
            let earlier: Option<(i64, i64)> = sqlx::query_as(
                "SELECT version, position FROM events
                 WHERE stream_id = ?1 AND json_extract(metadata, '$.client_id') = ?2
                   AND json_extract(metadata, '$.request_id') = ?3",
            )
            .bind(&stream)
            .bind(&origin.client_id)
            .bind(request_id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(earlier) = earlier {
                tx.rollback().await?;
                return outcome(earlier);
            }
        }
        let (position, version): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT COALESCE(MAX(position), 0) + 1 FROM events),
                    (SELECT COALESCE(MAX(version), 0) + 1 FROM events WHERE stream_id = ?1)",
        )
        .bind(&stream)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO events (position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred_at_us, recorded_at_us)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9)",
        )
        .bind(position)
        .bind(Uuid::now_v7().hyphenated().to_string())
        .bind(&stream)
        .bind(version)
        .bind(SLA_POLICY_DEFINED)
        .bind(SCHEMA_VERSION)
        .bind(encode_sla_policy(policy))
        .bind(EventMetadata::of(origin).to_json())
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        outcome((version, position))
    }

    async fn sla_policies(&self) -> Result<Vec<RecordedPolicy>, StoreError> {
        let rows: Vec<(i64, i64, i32, String)> = sqlx::query_as(
            "SELECT version, position, schema_version, payload FROM events WHERE stream_id = ?1 ORDER BY version",
        )
        .bind(SLA_POLICY_STREAM.as_uuid().hyphenated().to_string())
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(recorded).collect()
    }
}
