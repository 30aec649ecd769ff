//! The projector: keeps the journey read model (funnel, conversion, lead
//! quality) up to date with the event log, and rebuilds it from scratch.
//!
//! The source is always the SQL log, read by position in order; a commit
//! notification only wakes the projector early, a poll is the fallback, and
//! NATS plays no part. Each batch of events and the cursor move commit in one
//! transaction that only succeeds from the position the batch started at
//! ([`JourneyStore::save_journeys`]), so a replayed or concurrent batch
//! changes nothing. One projector per deployment writes at a time: it holds
//! the `projector-journeys` lease, and a standby takes over when it expires.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use leadger_domain::LeadId;
use leadger_domain::journey::Journey;
use leadger_store::codec::journey_step;
use leadger_store::{EventLog, JourneyStore, Leases, RecordedEvent, StoreError};
use tokio::sync::watch;

/// The lease projectors compete for.
pub const LEASE_NAME: &str = "projector-journeys";

#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// This projector's name in the lease table; unique per process.
    pub holder: String,
    /// How long the lease lasts unless renewed (renewed every third of it).
    pub lease_ttl: Duration,
    /// Most events applied per transaction.
    pub batch: u32,
    /// How often the log is re-read when no append was announced.
    pub poll_interval: Duration,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        Self {
            holder: format!("projector-{}", uuid::Uuid::now_v7()),
            lease_ttl: Duration::from_secs(10),
            batch: 2000,
            poll_interval: Duration::from_millis(200),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectorError {
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Folds `events` (in position order) into `journeys`. An event that cannot
/// be read, or of a lead whose capture is unknown, is logged and skipped: the
/// read model must not stall behind one bad row.
pub fn fold(journeys: &mut HashMap<LeadId, Journey>, events: &[RecordedEvent]) {
    for event in events {
        // Agreement events (the SLA policy) are not part of any journey.
        if !event.event_type.starts_with("lead.") {
            continue;
        }
        let step = match journey_step(&event.event_type, event.schema_version, &event.payload) {
            Ok(step) => step,
            Err(error) => {
                tracing::error!(position = event.position, %error, "skip an unreadable event in the journey model");
                continue;
            }
        };
        match journeys.get_mut(&event.lead_id) {
            Some(journey) => journey.apply(event.occurred_at, event.recorded_at, &step),
            None => match Journey::start(event.lead_id, event.occurred_at, event.recorded_at, &step) {
                Some(journey) => {
                    journeys.insert(event.lead_id, journey);
                }
                None => tracing::error!(
                    position = event.position,
                    lead_id = %event.lead_id,
                    "skip an event of a lead without a capture in the journey model"
                ),
            },
        }
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildReport {
    pub events: u64,
    pub leads: u64,
    pub position: u64,
    pub elapsed: Duration,
}

/// Replays the whole log into a new generation of the journey model and
/// swaps it in atomically; queries answer from the old rows until then.
pub async fn rebuild<L: EventLog + JourneyStore>(log: &L) -> Result<RebuildReport, ProjectorError> {
    let started = Instant::now();
    let mut journeys = HashMap::new();
    let mut position = 0;
    let mut events = 0u64;
    loop {
        let batch = log.read_log(position + 1, 10_000).await?;
        let Some(last) = batch.last() else { break };
        position = last.position;
        events += batch.len() as u64;
        fold(&mut journeys, &batch);
    }
    let mut rows: Vec<Journey> = journeys.into_values().collect();
    rows.sort_by_key(|journey| journey.lead_id.as_uuid());
    log.replace_journeys(&rows, position).await?;
    Ok(RebuildReport { events, leads: rows.len() as u64, position, elapsed: started.elapsed() })
}

/// Runs the projector until `stopping` turns true; `appended` announces
/// commits (the last committed position), `applied` reports the model's
/// position after each batch.
pub async fn run_projector<L: EventLog + JourneyStore + Leases>(
    log: Arc<L>,
    config: ProjectorConfig,
    mut appended: watch::Receiver<u64>,
    applied: watch::Sender<u64>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut failing = false;
    let mut progress = 0;
    while !*stopping.borrow() {
        let pause = match log.acquire_lease(LEASE_NAME, &config.holder, config.lease_ttl, progress).await {
            Ok(Some(_)) => {
                let session = project_while_leased(&*log, &config, &mut appended, &applied, &mut stopping).await;
                progress = *applied.borrow();
                match session {
                    Ok(()) => {
                        failing = false;
                        config.lease_ttl / 3
                    }
                    Err(error) => {
                        if !failing {
                            tracing::warn!(%error, "projector cannot apply events; retrying");
                        }
                        failing = true;
                        Duration::from_secs(1)
                    }
                }
            }
            Ok(None) => config.lease_ttl / 3,
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "projector cannot take its lease; retrying");
                }
                failing = true;
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopping.wait_for(|stop| *stop) => {}
        }
    }
    let progress = *applied.borrow();
    if let Err(error) = log.release_lease(LEASE_NAME, &config.holder, progress).await {
        tracing::warn!(%error, "release the projector lease");
    }
}

/// Applies batches while the lease is held; returns when it is lost, at
/// shutdown, or on a store failure.
async fn project_while_leased<L: EventLog + JourneyStore + Leases>(
    log: &L,
    config: &ProjectorConfig,
    appended: &mut watch::Receiver<u64>,
    applied: &watch::Sender<u64>,
    stopping: &mut watch::Receiver<bool>,
) -> Result<(), StoreError> {
    let mut renew_at = tokio::time::Instant::now() + config.lease_ttl / 3;
    let mut cursor = log.journey_cursor().await?;
    applied.send_replace(cursor.position);
    loop {
        if *stopping.borrow() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= renew_at {
            if log.acquire_lease(LEASE_NAME, &config.holder, config.lease_ttl, cursor.position).await?.is_none() {
                tracing::warn!("the projector lease passed to another projector; standing by");
                return Ok(());
            }
            renew_at = tokio::time::Instant::now() + config.lease_ttl / 3;
        }
        // Seen: a commit announced from here on wakes the wait below.
        let _ = *appended.borrow_and_update();
        let events = log.read_log(cursor.position + 1, config.batch).await?;
        let Some(last) = events.last().map(|event| event.position) else {
            tokio::select! {
                _ = appended.changed() => {}
                _ = tokio::time::sleep(config.poll_interval) => {}
                _ = tokio::time::sleep_until(renew_at) => {}
                _ = stopping.wait_for(|stop| *stop) => {}
            }
            continue;
        };
        let mut leads: Vec<LeadId> = events.iter().map(|event| event.lead_id).collect();
        leads.sort_by_key(LeadId::as_uuid);
        leads.dedup();
        let mut journeys: HashMap<LeadId, Journey> = log
            .load_journeys(cursor.generation, &leads)
            .await?
            .into_iter()
            .map(|journey| (journey.lead_id, journey))
            .collect();
        fold(&mut journeys, &events);
        let changed: Vec<Journey> = journeys.into_values().collect();
        if log.save_journeys(cursor, last, &changed).await? {
            cursor.position = last;
            applied.send_replace(last);
        } else {
            // A rebuild swapped in, or another writer moved the cursor:
            // start again from where the model now is.
            cursor = log.journey_cursor().await?;
            applied.send_replace(cursor.position);
        }
    }
}
