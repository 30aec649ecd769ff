//! Peer 3: `disintegrate` with `disintegrate-postgres`.
//!
//! Disintegrate has no aggregate: a [`Decision`] names the state it needs
//! (here the lead's view, built from every event with its `lead_id`), and the
//! [`DecisionMaker`](disintegrate::DecisionMaker) loads that state, runs
//! `process` and appends the events. The append runs in a SERIALIZABLE
//! transaction (set by the crate) that first checks no event matching the
//! state's query was added since it was loaded. No snapshots.
//!
//! The schema is the crate's own (`event` table, sequence, epoch functions,
//! one column and partial index per domain id), made by
//! [`PgEventStore::try_new`]. On PostgreSQL 15 and older that fails: the
//! epoch function is written with a hexadecimal literal (`0xFFFFFFFF`), which
//! PostgreSQL parses only from version 16 on. There [`pg15_schema`] replays
//! the crate's migration with the literal in decimal, nothing else changed.
//!
//! Disintegrate finds a lead's events by identifier fields inside each event,
//! so its events carry the lead id and are converted by hand from and to the
//! shared [`LeadEvent`].
//!
//! Under many concurrent writers commands fail in two ways, both from the
//! crate's design: appends abort on serialization conflicts (SQLSTATE 40001,
//! surfacing as "concurrent modification error" or "could not serialize
//! access"), and a load sees only events older than the oldest append still
//! in flight (the crate's "epoch"), so a lead's next command may not yet see
//! the event its previous command committed and is refused by the rules.
//! [`execute`](Peer::execute) reports the first as a conflict and the second
//! as a refusal, and the driver's retry policy runs both again, as a user of
//! the crate would: without that, a run at 64 writers reaches its error
//! limit within seconds.

use anyhow::Context;
use disintegrate::serde::json::Json;
use disintegrate::{Decision, DecisionError, Event, IdentifierType, NoSnapshot, StateMutate, StateQuery};
use disintegrate_postgres::{PgDecisionMaker, PgEventStore};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::drive::Peer;
use crate::lead::{self, Contact, Lead, LeadCommand, LeadError, LeadEvent, Outcome};
use crate::retry::{self, Failure};

/// The first PostgreSQL version (as `server_version_num`) that parses
/// hexadecimal integer literals.
const HEX_LITERALS_SINCE: i32 = 160_000;
/// The disintegrate-postgres release whose migration [`pg15_schema`] replays.
const PG15_SCHEMA_OF: &str = "4.0.1";

pub struct DisintegratePeer {
    decisions: PgDecisionMaker<StoredLeadEvent, Json<StoredLeadEvent>, NoSnapshot>,
    /// Set when the schema came from [`pg15_schema`], not from the crate.
    schema_note: Option<String>,
}

impl DisintegratePeer {
    /// Creates disintegrate's schema and the decision maker.
    pub async fn start(pool: PgPool) -> anyhow::Result<Self> {
        let server: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
            .fetch_one(&pool)
            .await
            .context("read the server version")?;
        let serde = Json::<StoredLeadEvent>::default();
        let (store, schema_note) = if server >= HEX_LITERALS_SINCE {
            let store = PgEventStore::try_new(pool, serde).await.context("create the disintegrate event store")?;
            (store, None)
        } else {
            pg15_schema(&pool).await?;
            let note = format!(
                "PostgreSQL {} cannot parse disintegrate-postgres's migration (hex literal, needs 16+); \
                 its schema was created by a copy with the literal in decimal",
                server / 10_000
            );
            (PgEventStore::new_uninitialized(pool, serde), Some(note))
        };
        Ok(Self { decisions: disintegrate_postgres::decision_maker(store, NoSnapshot), schema_note })
    }
}

impl Peer for DisintegratePeer {
    async fn execute(&self, lead: Uuid, command: LeadCommand) -> Result<(), Failure> {
        self.decisions.make(RunCommand { lead, command }).await.map(drop).map_err(sort)
    }

    fn notes(&self) -> Vec<String> {
        self.schema_note.iter().cloned().collect()
    }

    fn retry_cause(&self) -> Option<&'static str> {
        Some(
            "disintegrate appends in a SERIALIZABLE transaction that first checks nothing matching the lead's \
             query was appended since the load, so concurrent appends abort (\"concurrent modification error\", \
             \"could not serialize access\"); and a load sees only events older than the oldest append still in \
             flight, so a lead's next command can miss the event its previous command committed and be refused \
             by the rules. Both are retried, as a user of the crate would",
        )
    }
}

/// A decision's error as the retry policy sees it: the event store's
/// concurrency error and serialization failures are conflicts.
fn sort(error: DecisionError<LeadError>) -> Failure {
    let conflict = match &error {
        DecisionError::Domain(_) => return Failure::Refused(error.into()),
        DecisionError::EventStore(source) | DecisionError::StateStore(source) => {
            match source.downcast_ref::<disintegrate_postgres::Error>() {
                Some(disintegrate_postgres::Error::Concurrency) => true,
                Some(disintegrate_postgres::Error::Database(database)) => retry::is_serialization_failure(database),
                _ => false,
            }
        }
    };
    if conflict { Failure::Conflict(error.into()) } else { Failure::other(error) }
}

/// What `Migrator::init_event_store` of disintegrate-postgres 4.0.1 runs
/// (its `event_store/sql/*.sql`, in its order), with `4294967295` for
/// `0xFFFFFFFF` in `event_store_begin_epoch`, then the columns and indexes
/// of the event's domain ids, built as the migrator builds them.
async fn pg15_schema(pool: &PgPool) -> anyhow::Result<()> {
    let locked = env!("LOCKED_VERSION_DISINTEGRATE_POSTGRES");
    anyhow::ensure!(
        locked == PG15_SCHEMA_OF,
        "the PostgreSQL 15 copy of the schema is of disintegrate-postgres {PG15_SCHEMA_OF}, this build has {locked}: \
         compare the crate's event_store/sql and migrator.rs, then update the copy"
    );
    const STATEMENTS: [&str; 5] = [
        "CREATE SEQUENCE IF NOT EXISTS seq_event_event_id;",
        "CREATE TABLE IF NOT EXISTS event (
    event_id BIGINT PRIMARY KEY DEFAULT nextval('seq_event_event_id'),
    event_type VARCHAR(255),
    payload BYTEA,
    inserted_at TIMESTAMP DEFAULT now()
);",
        "CREATE INDEX IF NOT EXISTS idx_event_type_btree ON event(event_type);",
        "CREATE OR REPLACE FUNCTION event_store_current_epoch()
RETURNS BIGINT AS $$
DECLARE
    persisted_event_id BIGINT;
    pending_event_id BIGINT;
    db_id INT;
BEGIN
    SELECT COALESCE(MAX(event_id), 0) INTO persisted_event_id FROM event;
    SELECT oid INTO db_id FROM pg_database WHERE datname = current_database();

    SELECT MIN((l3.objid::bigint << 32) + l2.objid::bigint)
    INTO pending_event_id
    FROM pg_locks l1
    INNER JOIN pg_locks l2 ON l1.pid = l2.pid
    INNER JOIN pg_locks l3 ON l1.pid = l3.pid
    WHERE
        l1.classid = db_id
        AND l2.classid = 1
        AND l3.classid = 2
        AND l1.locktype = 'advisory';

    RETURN LEAST(COALESCE(pending_event_id, persisted_event_id), persisted_event_id);
END;
$$ LANGUAGE plpgsql;",
        "CREATE OR REPLACE FUNCTION event_store_begin_epoch()
RETURNS void AS $$
DECLARE
    id BIGINT;
    db_id INT;
BEGIN
    SELECT last_value INTO id FROM seq_event_event_id;
    SELECT oid INTO db_id FROM pg_database WHERE datname = current_database();

    PERFORM pg_try_advisory_xact_lock_shared(db_id, 0);
    PERFORM pg_try_advisory_xact_lock_shared(1, (id & 4294967295)::bit(32)::integer);
    PERFORM pg_try_advisory_xact_lock_shared(2, (id >> 32)::bit(32)::integer);
END;
$$ LANGUAGE plpgsql;",
    ];
    for statement in STATEMENTS {
        sqlx::query(statement).execute(pool).await.context("create the disintegrate schema")?;
    }
    for domain_id in StoredLeadEvent::SCHEMA.domain_ids {
        let column = domain_id.ident;
        let sql_type = match domain_id.type_info {
            IdentifierType::String => "TEXT",
            IdentifierType::i64 => "BIGINT",
            IdentifierType::Uuid => "UUID",
        };
        for statement in [
            format!("ALTER TABLE event ADD COLUMN IF NOT EXISTS {column} {sql_type}"),
            format!("CREATE INDEX IF NOT EXISTS idx_event_{column} ON event ({column}) WHERE {column} IS NOT NULL"),
        ] {
            sqlx::query(&statement).execute(pool).await.with_context(|| format!("add the {column} domain id"))?;
        }
    }
    Ok(())
}

/// A [`LeadEvent`] as disintegrate stores it, with the lead id it is found by.
#[derive(Debug, Clone, PartialEq, Eq, Event, Serialize, Deserialize)]
pub enum StoredLeadEvent {
    LeadCaptured {
        #[id]
        lead_id: Uuid,
        contact: Contact,
    },
    LeadQualified {
        #[id]
        lead_id: Uuid,
        assignee: String,
        score: i32,
    },
    LeadAccepted {
        #[id]
        lead_id: Uuid,
    },
    LeadRejected {
        #[id]
        lead_id: Uuid,
        reason: String,
    },
    LeadClosed {
        #[id]
        lead_id: Uuid,
        outcome: Outcome,
    },
    FeedbackRecorded {
        #[id]
        lead_id: Uuid,
        rating: i32,
    },
}

impl StoredLeadEvent {
    fn new(lead_id: Uuid, event: LeadEvent) -> Self {
        match event {
            LeadEvent::Captured(contact) => Self::LeadCaptured { lead_id, contact },
            LeadEvent::Qualified { assignee, score } => Self::LeadQualified { lead_id, assignee, score },
            LeadEvent::Accepted => Self::LeadAccepted { lead_id },
            LeadEvent::Rejected { reason } => Self::LeadRejected { lead_id, reason },
            LeadEvent::Closed(outcome) => Self::LeadClosed { lead_id, outcome },
            LeadEvent::FeedbackRecorded { rating } => Self::FeedbackRecorded { lead_id, rating },
        }
    }

    fn into_lead_event(self) -> LeadEvent {
        match self {
            Self::LeadCaptured { contact, .. } => LeadEvent::Captured(contact),
            Self::LeadQualified { assignee, score, .. } => LeadEvent::Qualified { assignee, score },
            Self::LeadAccepted { .. } => LeadEvent::Accepted,
            Self::LeadRejected { reason, .. } => LeadEvent::Rejected { reason },
            Self::LeadClosed { outcome, .. } => LeadEvent::Closed(outcome),
            Self::FeedbackRecorded { rating, .. } => LeadEvent::FeedbackRecorded { rating },
        }
    }
}

/// The state a command decides on: one lead, from the events with its id.
#[derive(Debug, Clone, Default, StateQuery, Serialize, Deserialize)]
#[state_query(StoredLeadEvent)]
pub struct LeadView {
    #[id]
    lead_id: Uuid,
    lead: Lead,
}

impl StateMutate for LeadView {
    fn mutate(&mut self, event: StoredLeadEvent) {
        lead::evolve(&mut self.lead, &event.into_lead_event());
    }
}

/// Any lead command, as a disintegrate decision.
struct RunCommand {
    lead: Uuid,
    command: LeadCommand,
}

impl Decision for RunCommand {
    type Event = StoredLeadEvent;
    type StateQuery = LeadView;
    type Error = LeadError;

    fn state_query(&self) -> LeadView {
        LeadView { lead_id: self.lead, lead: Lead::default() }
    }

    fn process(&self, view: &LeadView) -> Result<Vec<StoredLeadEvent>, LeadError> {
        // `process` borrows the decision, so the command's fields are cloned.
        let event = lead::decide(&view.lead, self.command.clone())?;
        Ok(vec![StoredLeadEvent::new(self.lead, event)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_events_convert_back_unchanged() {
        let lead_id = Uuid::new_v4();
        let events = [
            LeadEvent::Qualified { assignee: "rep-1".into(), score: 80 },
            LeadEvent::Accepted,
            LeadEvent::Rejected { reason: "no-budget".into() },
            LeadEvent::Closed(Outcome::Lost { reason: "chose-competitor".into() }),
            LeadEvent::FeedbackRecorded { rating: 2 },
        ];
        for event in events {
            let stored = StoredLeadEvent::new(lead_id, event.clone());
            assert_eq!(stored.name(), event.name(), "disintegrate's event type is the shared name");
            assert_eq!(stored.into_lead_event(), event);
        }
    }

    /// Fails when Cargo.lock moves to another disintegrate-postgres: its
    /// migration may have changed, so the PostgreSQL 15 copy must be checked.
    #[test]
    fn the_pg15_schema_is_of_the_locked_release() {
        assert_eq!(env!("LOCKED_VERSION_DISINTEGRATE_POSTGRES"), PG15_SCHEMA_OF);
    }
}
