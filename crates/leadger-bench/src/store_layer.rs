//! leadger's store layer driven in process, the way the peers' drivers
//! (`bench/peers`) drive theirs: `writers` tokio tasks each play one lead's
//! [`funnel::journey`] at a time, one command after the other, through the
//! public API of `leadger-store` — a [`CommandGateway`] in front of the
//! group committer on a [`PostgresLog`]. No gRPC, no network but the
//! database's; the same personal-data encryption and durable commit as
//! `leadger serve`.
//!
//! Commands are built from the domain's validated values with the same
//! field values the gRPC load sends. The request hash that the gRPC layer
//! computes from the wire bytes is a 64-digit hex string derived from the
//! request id here: the store only compares it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use leadger_domain::{
    Action, CloseOutcome, Closing, Command, Email, Feedback, Label, LeadDetails, LeadId, Money, Qualification, Rating,
    ReasonCode, Rejection, Score, ValidationError,
};
use leadger_store::{
    CommandGateway, CommitterConfig, EventLog, MissingKek, Origin, PendingCommand, PostgresLog, Vault, spawn_committer,
};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cpu::{CpuUse, WatchedProcesses};
use crate::funnel::{self, Step};
use crate::load::RunNaming;
use crate::measure::{Latency, Tally};

/// The client id the driver's commands carry.
const CLIENT_ID: &str = "leadger-bench-in-process";

#[derive(Debug, Clone, Serialize)]
pub struct StorePlan {
    pub writers: usize,
    pub warmup_secs: f64,
    pub measured_secs: f64,
    pub seed: u64,
    /// Connections of the log's pool (the committer uses one at a time).
    pub pool_size: u32,
}

/// What the run measured.
#[derive(Debug, Clone, Serialize)]
pub struct StoreResult {
    pub writers: usize,
    pub seconds: f64,
    /// Commands committed inside the window: one event each.
    pub events: u64,
    pub events_per_second: f64,
    pub latency_ms: Latency,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Over the window; the driver runs in the bench process.
    pub cpu: CpuUse,
}

/// Connects to the (empty, migrated on connect) database at `url` with
/// the KEK in `kek_file` and drives it for the plan's warm-up and window.
/// CPU use is read for the `watched` processes over the window.
pub async fn run(
    url: &str,
    kek_file: &Path,
    plan: &StorePlan,
    watched: &WatchedProcesses,
) -> anyhow::Result<StoreResult> {
    let log = PostgresLog::connect_with(url, plan.pool_size).await.with_context(|| format!("connect to {url}"))?;
    let (vault, _) = Vault::open(kek_file, MissingKek::Fail).context("open the KEK")?;
    let head = log.head_position().await.context("read the log head")?;
    let (gateway, committer) = spawn_committer(
        Arc::new(log),
        Arc::new(vault),
        leadger_store::committer::system_clock(),
        CommitterConfig::default(),
        head,
    );
    let start = Instant::now();
    let window = (
        start + Duration::from_secs_f64(plan.warmup_secs),
        start + Duration::from_secs_f64(plan.warmup_secs + plan.measured_secs),
    );
    let shared = Arc::new(Shared { naming: RunNaming::new(), seed: plan.seed, window, errors: AtomicU64::new(0) });
    let tasks: Vec<_> = (0..plan.writers).map(|_| tokio::spawn(writer(gateway.clone(), shared.clone()))).collect();
    drop(gateway);
    tokio::time::sleep_until(window.0.into()).await;
    let first = watched.sample();
    tokio::time::sleep_until(window.1.into()).await;
    let cpu = first.until(&watched.sample());
    let mut tally = Tally::new();
    let mut first_error = None;
    for task in tasks {
        let (writer_tally, error) = task.await.context("a writer task panicked")?;
        tally.merge(writer_tally);
        first_error = first_error.or(error);
    }
    committer.await.context("the committer panicked")?;
    let summary = tally.summarize(plan.writers, window.1 - window.0, cpu.clone(), false);
    Ok(StoreResult {
        writers: plan.writers,
        seconds: summary.seconds,
        events: summary.commands,
        events_per_second: summary.commands_per_second,
        latency_ms: summary.latency_ms,
        errors: shared.errors.load(Ordering::Relaxed),
        first_error,
        cpu,
    })
}

struct Shared {
    naming: RunNaming,
    seed: u64,
    /// Commands committed in `[from, until]` count; none is sent after `until`.
    window: (Instant, Instant),
    errors: AtomicU64,
}

/// One writer: leads one after the other until the window closes.
async fn writer(gateway: CommandGateway, shared: Arc<Shared>) -> (Tally, Option<String>) {
    let mut tally = Tally::new();
    let mut first_error = None;
    'leads: while Instant::now() < shared.window.1 {
        let number = shared.naming.next_lead();
        let lead_id = LeadId::from_uuid(uuid::Uuid::now_v7());
        let mut version = 0;
        for (index, step) in funnel::journey(shared.seed, number).iter().enumerate() {
            if Instant::now() >= shared.window.1 {
                break 'leads;
            }
            let pending = match pending_command(&shared.naming, number, index, lead_id, version, step) {
                Ok(pending) => pending,
                Err(error) => {
                    first_error.get_or_insert_with(|| error.to_string());
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    continue 'leads;
                }
            };
            let sent = Instant::now();
            match gateway.submit(pending).await {
                Ok(outcome) => {
                    let answered = Instant::now();
                    if answered >= shared.window.0 && answered <= shared.window.1 {
                        tally.record_command(step.rpc(), answered - sent);
                    }
                    version = outcome.version;
                }
                Err(error) => {
                    first_error.get_or_insert_with(|| error.to_string());
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    continue 'leads;
                }
            }
        }
    }
    (tally, first_error)
}

/// The command for `step` of lead `number`, with the values the gRPC load sends.
fn pending_command(
    naming: &RunNaming,
    number: u64,
    index: usize,
    lead_id: LeadId,
    version: u64,
    step: &Step,
) -> Result<PendingCommand, ValidationError> {
    let action = match step {
        Step::Capture { source, persona } => Action::Capture(LeadDetails {
            email: Email::parse("email", &naming.email(number))?,
            name: Label::parse_optional("name", &format!("Bench Lead {number}"))?,
            company: Label::parse_optional("company", "Bench Example GmbH")?,
            phone: Label::parse_optional("phone", "+49 30 1234567")?,
            source: Label::parse_optional("source", source)?,
            campaign: Label::parse_optional("campaign", "load-test")?,
            persona: Label::parse_optional("persona", persona)?,
            external_ref: None,
        }),
        Step::Qualify { assignee, score } => Action::Qualify(Qualification {
            score: Some(Score::parse("score", i64::from(*score))?),
            note: None,
            assignee: Label::parse_optional("assignee", assignee)?,
        }),
        Step::Accept => Action::Accept { owner: None },
        Step::Reject => Action::Reject(Rejection { reason: ReasonCode::parse("reason", "no-budget")?, note: None }),
        Step::CloseWon { amount_minor } => Action::Close(Closing {
            outcome: CloseOutcome::Won {
                amount: Some(Money::parse("amount_minor", *amount_minor, "currency", "EUR")?),
            },
            note: None,
        }),
        Step::CloseLost => Action::Close(Closing {
            outcome: CloseOutcome::Lost { reason: ReasonCode::parse("lost_reason", "chose-competitor")? },
            note: None,
        }),
        Step::RecordFeedback { rating } => Action::RecordFeedback(Feedback {
            rating: Rating::parse("rating", i64::from(*rating))?,
            reason_codes: Vec::new(),
            comment: None,
        }),
    };
    let request_id = naming.request_id(number, index);
    let request_hash = hex_sha256(&request_id);
    Ok(PendingCommand {
        command: Command { lead_id, expected_version: Some(version), occurred_at: None, action },
        origin: Origin {
            client_id: CLIENT_ID.to_string(),
            request_id: Some(request_id),
            request_hash,
            correlation_id: None,
            roles: leadger_domain::Roles::ALL,
            trace: None,
        },
    })
}

fn hex_sha256(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|byte| format!("{byte:02x}")).collect()
}
