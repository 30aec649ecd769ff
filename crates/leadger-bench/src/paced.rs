//! Commands at a fixed rate, for measuring how long an event takes from its
//! commit to a consumer: unlike [`load`](crate::load), whose clients each
//! wait for their previous answer, this load is open loop, so the rate stays
//! what was asked however fast the server answers.
//!
//! Every tick sends one command: the next step of a lead whose previous
//! command has been answered, or else the capture of a new lead. Leads follow
//! their [`funnel::journey`] as in the closed-loop load, so the mix of events
//! is the same. Each answered command yields its log position (every command
//! result carries it) and the instant the answer arrived.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;
use tokio::task::{JoinError, JoinSet};
use tonic::Status;

use crate::funnel::{self, Step};
use crate::load::{self, Client, LeadCursor, RunNaming};
use crate::measure::{ErrorCount, count_error};

/// How fast and for how long.
#[derive(Debug, Clone)]
pub struct PacedPlan {
    /// Commands sent per second.
    pub rate: u32,
    /// Answers before this much time are not measured.
    pub warmup: Duration,
    /// The measured window after the warm-up; no command is sent after it.
    pub measured: Duration,
    pub connections: usize,
    pub seed: u64,
    /// Failed commands after which no more are sent.
    pub max_errors: u64,
}

/// A command answered inside the measured window.
#[derive(Debug, Clone, Copy)]
pub struct Acknowledged {
    /// The log position of the command's event.
    pub position: u64,
    /// When the answer arrived.
    pub at: Instant,
    /// Send to answer.
    pub latency: Duration,
}

/// What a paced run did.
#[derive(Debug)]
pub struct PacedRun {
    /// Commands answered inside the measured window, in no particular order.
    pub acknowledged: Vec<Acknowledged>,
    /// Commands sent, warm-up included.
    pub sent: u64,
    /// Commands answered successfully, warm-up included: the events they
    /// appended.
    pub answered: u64,
    /// Failed commands by gRPC code, warm-up included.
    pub errors: BTreeMap<String, ErrorCount>,
    /// Sending stopped early after `max_errors` failures.
    pub stopped_by_errors: bool,
    /// Length of the measured window.
    pub window: Duration,
}

/// A lead between two of its commands.
struct LeadInProgress {
    cursor: LeadCursor,
    journey: Vec<Step>,
    /// Index in `journey` of the command to send next.
    next_step: usize,
}

/// Leads whose last command was answered and that have steps left.
type ReadyLeads = Arc<Mutex<VecDeque<LeadInProgress>>>;

/// Sends commands to `endpoint` at `plan.rate` for the warm-up and the
/// measured window, then waits for the last answers.
pub async fn drive(endpoint: &str, plan: &PacedPlan, naming: &Arc<RunNaming>) -> anyhow::Result<PacedRun> {
    drive_observed(endpoint, plan, naming, None).await
}

/// Latest acknowledged command, as the answers arrive.
pub type AckWatch = Arc<watch::Sender<Option<Acknowledged>>>;

/// [`drive`], publishing each acknowledgement to `acks` (when given) as it
/// arrives, for a prober that reacts to them.
pub async fn drive_observed(
    endpoint: &str,
    plan: &PacedPlan,
    naming: &Arc<RunNaming>,
    acks: Option<AckWatch>,
) -> anyhow::Result<PacedRun> {
    let channels = load::connect(endpoint, plan.connections).await?;
    let ready: ReadyLeads = Arc::default();
    let measured_from = Instant::now() + plan.warmup;
    let until = measured_from + plan.measured;
    // The default missed-tick behaviour (burst) catches up after a stall, so
    // the rate holds on average.
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(plan.rate.max(1))));
    let mut tasks = JoinSet::new();
    let mut run = PacedRun {
        acknowledged: Vec::new(),
        sent: 0,
        answered: 0,
        errors: BTreeMap::new(),
        stopped_by_errors: false,
        window: plan.measured,
    };
    loop {
        ticks.tick().await;
        if Instant::now() >= until {
            break;
        }
        while let Some(outcome) = tasks.try_join_next() {
            run.take(outcome, measured_from, until)?;
        }
        if run.failed() >= plan.max_errors {
            run.stopped_by_errors = true;
            break;
        }
        let lead = ready.lock().unwrap_or_else(PoisonError::into_inner).pop_front();
        let lead = lead.unwrap_or_else(|| {
            let number = naming.next_lead();
            LeadInProgress {
                cursor: LeadCursor::new(number),
                journey: funnel::journey(plan.seed, number),
                next_step: 0,
            }
        });
        let client = Client::new(channels[run.sent as usize % channels.len()].clone());
        tasks.spawn(send_next_step(client, naming.clone(), lead, ready.clone(), acks.clone()));
        run.sent += 1;
    }
    while let Some(outcome) = tasks.join_next().await {
        run.take(outcome, measured_from, until)?;
    }
    Ok(run)
}

impl PacedRun {
    /// Takes in one command's outcome; an answer counts if it arrived
    /// between `from` and `until`.
    fn take(
        &mut self,
        outcome: Result<Result<Acknowledged, Status>, JoinError>,
        from: Instant,
        until: Instant,
    ) -> anyhow::Result<()> {
        match outcome.context("a command task panicked")? {
            Ok(acknowledged) => {
                self.answered += 1;
                if acknowledged.at >= from && acknowledged.at <= until {
                    self.acknowledged.push(acknowledged);
                }
            }
            Err(status) => count_error(&mut self.errors, &status),
        }
        Ok(())
    }

    pub fn failed(&self) -> u64 {
        self.errors.values().map(|errors| errors.count).sum()
    }
}

/// Sends the lead's next command; once it is answered the lead is ready for
/// the one after, if any.
async fn send_next_step(
    mut client: Client,
    naming: Arc<RunNaming>,
    mut lead: LeadInProgress,
    ready: ReadyLeads,
    acks: Option<AckWatch>,
) -> Result<Acknowledged, Status> {
    let step = &lead.journey[lead.next_step];
    let request_id = naming.request_id(lead.cursor.number, lead.next_step);
    let sent = Instant::now();
    let result = load::send(&mut client, &naming, &lead.cursor, step, request_id).await?;
    let at = Instant::now();
    lead.cursor.advance(&result);
    lead.next_step += 1;
    if lead.next_step < lead.journey.len() {
        ready.lock().unwrap_or_else(PoisonError::into_inner).push_back(lead);
    }
    let acknowledged = Acknowledged { position: result.position, at, latency: at - sent };
    if let Some(acks) = acks {
        acks.send_replace(Some(acknowledged));
    }
    Ok(acknowledged)
}
