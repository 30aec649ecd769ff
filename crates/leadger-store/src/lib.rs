//! The event log: leadger's source of truth.
//!
//! Every accepted command appends one event to an append-only log in SQL,
//! with a global `position` that is contiguous (1, 2, 3… with no holes) and
//! increases in commit order, and a per-lead `version` without gaps. Two
//! backends implement [`EventLog`]: [`SqliteLog`] (the embedded default) and
//! [`PostgresLog`] (production, several servers on one database).
//!
//! Writes go through the [`committer`]: concurrent commands are batched into
//! one transaction (group commit) that holds the database-wide append lock,
//! decides each command on the lead's current state with the pure domain, and
//! refuses a bad command alone without disturbing the rest of its batch
//! ([`planner`]). Personal fields are sealed under per-lead keys ([`vault`])
//! before they reach the log ([`codec`]). The journey read model that the
//! projector derives from the log lives beside it ([`journeys`]).

mod agreement;
pub mod codec;
pub mod committer;
pub mod journeys;
mod lease;
mod planner;
mod postgres;
mod sqlite;
mod trace_context;
pub mod vault;

use std::collections::HashMap;
use std::future::Future;

use leadger_domain::{Command, DomainError, Lead, LeadEvent, LeadId, Roles, Stage, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use uuid::Uuid;

use crate::planner::LeadHead;

pub use agreement::{AgreementOutcome, Agreements, RecordedPolicy};
pub use committer::{CommandGateway, CommitterConfig, spawn_committer};
pub use journeys::{JourneyCursor, JourneyScope, JourneySnapshot, JourneyStore};
pub use lease::{Lease, Leases};
pub use postgres::PostgresLog;
pub use sqlite::SqliteLog;
pub use trace_context::TraceContext;
pub use vault::{DataKey, MissingKek, Vault, VaultError};

/// Who sent a command, and the keys that make a retry safe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The calling client; idempotency keys are scoped to it.
    pub client_id: String,
    /// AIP-155 idempotency key; `None` when the client sent none.
    pub request_id: Option<String>,
    /// SHA-256 (hex) of the request as sent, before server defaults.
    pub request_hash: String,
    pub correlation_id: Option<String>,
    /// What the caller may do; checked against the lead's stage when the
    /// command is decided.
    pub roles: Roles,
    /// The trace the command belongs to, stored with its event.
    pub trace: Option<TraceContext>,
}

/// A validated command on its way into the log.
#[derive(Debug, Clone)]
pub struct PendingCommand {
    pub command: Command,
    pub origin: Origin,
}

/// The result of an appended (or replayed) command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandOutcome {
    pub lead_id: LeadId,
    pub version: u64,
    pub position: u64,
    pub stage: Stage,
    /// The same request was already applied; this is its original result.
    pub replayed: bool,
}

/// Why a command was not appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error("an open lead with this email already exists: {existing}")]
    EmailTaken { existing: LeadId },
    #[error("external_ref is already used by lead {existing}")]
    ExternalRefTaken { existing: LeadId },
    #[error("request_id {request_id:?} was already used for a different request")]
    RequestIdReused { request_id: String },
    #[error("the server is at capacity: {queued} commands are waiting; retry with backoff")]
    Overloaded { queued: usize },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the event log is unavailable: {0}")]
    Unavailable(String),
    #[error("the event log failed: {0}")]
    Internal(String),
}

impl From<&StoreError> for CommandError {
    fn from(error: &StoreError) -> Self {
        if error.is_unavailable() { Self::Unavailable(error.to_string()) } else { Self::Internal(error.to_string()) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrate schema: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Codec(#[from] codec::CodecError),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// A transient failure (the database is down, unreachable, busy or
    /// restarting) rather than a bug: the client may retry.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(error)) => {
                let code = error.code().unwrap_or_default();
                // PostgreSQL classes 08 connection, 40 rollback, 53 resources,
                // 57 operator intervention (e.g. shutdown); SQLite BUSY (5) and LOCKED (6).
                ["08", "40", "53", "57"].iter().any(|class| code.starts_with(class)) || code == "5" || code == "6"
            }
            Self::Database(error) => matches!(
                error,
                sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
                    | sqlx::Error::Protocol(_)
            ),
            _ => false,
        }
    }
}

/// Request and tracing context stored with each event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// W3C `traceparent` of the command that appended the event (its server
    /// span when traces are exported): a reader continues the trace from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracestate: Option<String>,
}

impl EventMetadata {
    /// The metadata of an event `origin`'s command appends.
    fn of(origin: &Origin) -> Self {
        Self {
            request_id: origin.request_id.clone(),
            client_id: origin.client_id.clone(),
            correlation_id: origin.correlation_id.clone(),
            traceparent: origin.trace.as_ref().map(|trace| trace.traceparent().to_string()),
            tracestate: origin.trace.as_ref().and_then(|trace| trace.tracestate()).map(str::to_string),
        }
    }

    /// The JSON of the `metadata` column.
    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("metadata always serializes")
    }
}

/// One event as stored in the log: the persisted form, personal fields sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub position: u64,
    pub event_id: Uuid,
    pub lead_id: LeadId,
    pub version: u64,
    pub event_type: String,
    pub schema_version: i32,
    pub payload: String,
    pub metadata: EventMetadata,
    pub occurred_at: Timestamp,
    pub recorded_at: Timestamp,
}

impl RecordedEvent {
    pub fn decode(&self, key: &DataKey) -> Result<LeadEvent, codec::CodecError> {
        codec::decode(&self.event_type, self.schema_version, &self.payload, self.occurred_at, key)
    }
}

/// FindLeads filters; all given filters must match. Newest lead ids first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeadQuery {
    /// [`Vault::email_index`] of the email searched for.
    pub email_index: Option<String>,
    pub external_ref: Option<String>,
    pub stage: Option<Stage>,
    pub assignee: Option<String>,
    pub owner: Option<String>,
    /// Page token: only leads ordered after this one.
    pub after: Option<LeadId>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadSummary {
    pub lead_id: LeadId,
    pub lead: Lead,
    pub external_ref: Option<String>,
}

/// The event log, as each SQL backend implements it.
pub trait EventLog: Send + Sync + 'static {
    /// Appends a batch in one transaction under the append lock. Each command
    /// gets its own result; `Err` means the whole transaction failed and
    /// nothing was appended. `more_waiting` tells whether further commands
    /// are queued, so a backend may prepare the next batch's transaction
    /// while this one commits.
    fn append_batch(
        &self,
        batch: &[&PendingCommand],
        now: Timestamp,
        vault: &Vault,
        more_waiting: &(dyn Fn() -> bool + Send + Sync),
    ) -> impl Future<Output = Result<Vec<Result<CommandOutcome, CommandError>>, StoreError>> + Send;

    /// The committer has nothing to append: let go of anything prepared for
    /// a next batch (on PostgreSQL, the append lock other servers wait for).
    fn idle(&self) {}

    /// Up to `limit` events with `position >= from`, in position order.
    fn read_log(&self, from: u64, limit: u32) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// A lead's events in version order (empty for an unknown lead).
    fn lead_stream(&self, lead: LeadId) -> impl Future<Output = Result<Vec<RecordedEvent>, StoreError>> + Send;

    /// Wrapped data keys of these leads (erased leads are missing).
    fn wrapped_keys(
        &self,
        leads: &[LeadId],
    ) -> impl Future<Output = Result<HashMap<LeadId, String>, StoreError>> + Send;

    fn find_leads(&self, query: &LeadQuery) -> impl Future<Output = Result<Vec<LeadSummary>, StoreError>> + Send;

    /// The position of the last committed event (0 for an empty log).
    fn head_position(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Drops idempotency receipts recorded before `cutoff`.
    fn purge_receipts(&self, cutoff: Timestamp) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Forwards appends made by other processes to `appended` (a wake-up only:
    /// readers re-read from their position). The default does nothing.
    fn forward_foreign_appends(&self, appended: watch::Sender<u64>) {
        drop(appended);
    }

    /// The connections of the database pool, for metrics.
    fn pool_usage(&self) -> PoolUsage;
}

/// Connections of a database pool: open ones, of which idle, and the most allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    pub open: u32,
    pub idle: u32,
    pub max: u32,
}

/// The log a `--database-url` names.
#[derive(Debug, Clone)]
pub enum DatabaseUrl {
    Sqlite(String),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite(url.to_string()))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres(url.to_string()))
        } else {
            None
        }
    }
}

/// Moves a watched log position forward (never back), waking watchers only
/// when it advanced.
fn advance(watched: &watch::Sender<u64>, position: u64) {
    watched.send_if_modified(|seen| {
        let advanced = position > *seen;
        *seen = (*seen).max(position);
        advanced
    });
}

fn timestamp(micros: i64, what: &str) -> Result<Timestamp, StoreError> {
    Timestamp::from_micros(micros).ok_or_else(|| StoreError::Corrupt(format!("{what} {micros} is out of range")))
}

fn stage(text: &str) -> Result<Stage, StoreError> {
    Stage::parse(text).ok_or_else(|| StoreError::Corrupt(format!("unknown stage {text:?}")))
}

fn unsigned(value: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("{what} {value} is negative")))
}

/// The columns of an `events` row, as both backends read them.
#[allow(clippy::too_many_arguments)]
fn recorded_event(
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
) -> Result<RecordedEvent, StoreError> {
    Ok(RecordedEvent {
        position: unsigned(position, "position")?,
        event_id,
        lead_id: LeadId::from_uuid(stream_id),
        version: unsigned(version, "version")?,
        metadata: serde_json::from_str(&metadata)
            .map_err(|e| StoreError::Corrupt(format!("metadata of event at position {position}: {e}")))?,
        event_type,
        schema_version,
        payload,
        occurred_at: timestamp(occurred_at_us, "occurred_at")?,
        recorded_at: timestamp(recorded_at_us, "recorded_at")?,
    })
}

/// The columns of a `leads` row, as both backends read them.
#[allow(clippy::too_many_arguments)]
fn lead_head(
    stage_text: &str,
    version: i64,
    seen_by_sales: bool,
    last_occurred_at_us: i64,
    assignee: Option<String>,
    owner: Option<String>,
    email_index: String,
    external_ref: Option<String>,
    erased: bool,
) -> Result<LeadHead, StoreError> {
    let label = |field: &str, text: Option<String>| {
        leadger_domain::Label::parse_optional(field, text.as_deref().unwrap_or(""))
            .map_err(|e| StoreError::Corrupt(format!("leads.{e}")))
    };
    Ok(LeadHead {
        lead: Lead {
            stage: stage(stage_text)?,
            version: unsigned(version, "version")?,
            seen_by_sales,
            last_occurred_at: timestamp(last_occurred_at_us, "last_occurred_at")?,
            assignee: label("assignee", assignee)?,
            owner: label("owner", owner)?,
            erased,
        },
        email_index,
        external_ref,
    })
}

fn as_i64(value: u64) -> i64 {
    // Positions and versions count events; they never reach 2^63.
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_from_before_tracing_still_decodes_and_an_untraced_event_stores_no_trace_keys() {
        let old: EventMetadata = serde_json::from_str(r#"{"request_id":"r-1","client_id":"crm"}"#).expect("decodes");
        assert_eq!(old.traceparent, None);
        assert_eq!(old.to_json(), r#"{"request_id":"r-1","client_id":"crm"}"#);
    }

    #[test]
    fn metadata_carries_the_trace_of_its_command() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let origin = Origin {
            client_id: "crm".into(),
            request_id: None,
            request_hash: String::new(),
            correlation_id: None,
            roles: Roles::ALL,
            trace: TraceContext::parse(traceparent, Some("congo=t61rcWkgMzE")),
        };
        let json = EventMetadata::of(&origin).to_json();
        assert_eq!(
            json,
            format!(r#"{{"client_id":"crm","traceparent":"{traceparent}","tracestate":"congo=t61rcWkgMzE"}}"#)
        );
        let back: EventMetadata = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back.traceparent.as_deref(), Some(traceparent));
    }
}
