//! Peer 1: `cqrs-es` with `postgres-es`.
//!
//! The lead is a cqrs-es [`Aggregate`]; each command goes through
//! [`PostgresCqrs::execute`], which loads the lead's events from the `events`
//! table, runs `handle`, and inserts the new event in its own transaction,
//! the `(aggregate_type, aggregate_id, sequence)` primary key guarding against
//! concurrent writers. Snapshots are off (`postgres_cqrs`, not
//! `postgres_snapshot_cqrs`) and no query processors are attached.
//!
//! A rejected insert (any unique violation, as postgres-es maps it) comes
//! back as `AggregateConflict`, which the driver retries; with one writer per
//! lead it is not expected to happen.

use anyhow::Context;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, AggregateError, DomainEvent};
use postgres_es::PostgresCqrs;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use uuid::Uuid;

use crate::drive::Peer;
use crate::lead::{self, Lead, LeadCommand, LeadError, LeadEvent};
use crate::retry::Failure;

/// The `events` table as postgres-es documents it in its `db/init.sql`;
/// the `snapshots` table there is only needed with snapshots.
const EVENTS_TABLE: &str = "
CREATE TABLE events
(
    aggregate_type text                         NOT NULL,
    aggregate_id   text                         NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text                         NOT NULL,
    event_version  text                         NOT NULL,
    payload        json                         NOT NULL,
    metadata       json                         NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
)";

pub struct CqrsEsPeer {
    cqrs: PostgresCqrs<LeadAggregate>,
}

impl CqrsEsPeer {
    /// Creates the `events` table (the database must be empty) and the framework.
    pub async fn start(pool: PgPool) -> anyhow::Result<Self> {
        sqlx::query(EVENTS_TABLE).execute(&pool).await.context("create the events table")?;
        Ok(Self { cqrs: postgres_es::postgres_cqrs(pool, Vec::new(), ()) })
    }
}

impl Peer for CqrsEsPeer {
    async fn execute(&self, lead: Uuid, command: LeadCommand) -> Result<(), Failure> {
        self.cqrs.execute(&lead.to_string(), command).await.map_err(|error| match error {
            AggregateError::AggregateConflict => Failure::Conflict(error.into()),
            AggregateError::UserError(_) => Failure::Refused(error.into()),
            _ => Failure::other(error),
        })
    }
}

/// cqrs-es keeps the aggregate itself as its state, hence the wrapper.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LeadAggregate(Lead);

impl Aggregate for LeadAggregate {
    const TYPE: &'static str = "lead";
    type Command = LeadCommand;
    type Event = LeadEvent;
    type Error = LeadError;
    type Services = ();

    async fn handle(&mut self, command: LeadCommand, _: &(), sink: &EventSink<Self>) -> Result<(), LeadError> {
        let event = lead::decide(&self.0, command)?;
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: LeadEvent) {
        lead::evolve(&mut self.0, &event);
    }
}

impl DomainEvent for LeadEvent {
    fn event_type(&self) -> String {
        self.name().to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}
