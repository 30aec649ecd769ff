//! Peer 2: `esrs` (Prima's event_sourcing.rs) with its `postgres` feature.
//!
//! The lead is an esrs [`Aggregate`] stored by a [`PgStore`], which creates
//! its `lead_events` table on start. Each command loads the lead with
//! [`AggregateManager::load`] and runs [`AggregateManager::handle_command`],
//! which inserts the event in one transaction; the unique
//! `(aggregate_id, sequence_number)` index guards against concurrent writers.
//! No event handlers or buses are attached, and the optional advisory lock
//! (`lock_and_load`) is not taken: each lead has a single writer.
//!
//! A violation of that index is the crate's concurrency conflict, which the
//! driver retries; with one writer per lead it is not expected to happen.

use anyhow::Context;
use esrs::manager::AggregateManager;
use esrs::store::postgres::{PgStore, PgStoreBuilder, PgStoreError};
use esrs::{Aggregate, AggregateState};
use sqlx::PgPool;
use uuid::Uuid;

use crate::drive::Peer;
use crate::lead::{self, Lead, LeadCommand, LeadError, LeadEvent};
use crate::retry::{self, Failure};

pub struct EsrsPeer {
    manager: AggregateManager<PgStore<LeadAggregate>>,
}

impl EsrsPeer {
    /// Builds the store, running esrs's migrations (they create `lead_events`).
    pub async fn start(pool: PgPool) -> anyhow::Result<Self> {
        let store = PgStoreBuilder::new(pool).try_build().await.context("build the esrs PgStore")?;
        Ok(Self { manager: AggregateManager::new(store) })
    }
}

impl Peer for EsrsPeer {
    async fn execute(&self, lead: Uuid, command: LeadCommand) -> Result<(), Failure> {
        let state = self.manager.load(lead).await.map_err(sort)?.unwrap_or_else(|| AggregateState::with_id(lead));
        match self.manager.handle_command(state, command).await.map_err(sort)? {
            Ok(_) => Ok(()),
            Err(refusal) => Err(Failure::Refused(refusal.into())),
        }
    }
}

/// The unique index esrs's migrations put on `lead_events`' version.
const VERSION_INDEX: &str = "lead_events_aggregate_id_sequence_number";

/// A store error as the retry policy sees it.
fn sort(error: PgStoreError) -> Failure {
    match &error {
        PgStoreError::Sqlx(database)
            if retry::is_unique_violation_of(database, VERSION_INDEX) || retry::is_serialization_failure(database) =>
        {
            Failure::Conflict(error.into())
        }
        _ => Failure::other(error),
    }
}

pub struct LeadAggregate;

impl Aggregate for LeadAggregate {
    /// The table is named after it: `lead_events`.
    const NAME: &'static str = "lead";
    type State = Lead;
    type Command = LeadCommand;
    type Event = LeadEvent;
    type Error = LeadError;

    fn handle_command(state: &Lead, command: LeadCommand) -> Result<Vec<LeadEvent>, LeadError> {
        Ok(vec![lead::decide(state, command)?])
    }

    fn apply_event(mut state: Lead, event: LeadEvent) -> Lead {
        lead::evolve(&mut state, &event);
        state
    }
}
