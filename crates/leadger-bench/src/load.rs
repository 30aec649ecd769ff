//! The load itself: `clients` tokio tasks share a few HTTP/2 connections;
//! each drives one lead at a time through its [`funnel::journey`], sending
//! the lead's commands one after the other (each waits for the previous
//! answer), so concurrency comes from different leads, as with real users.
//!
//! A level either runs for a warm-up plus a measured window (commands
//! answered outside the window are not counted) or drives a fixed number of
//! leads, all measured.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use leadger_proto::leads::v1 as pb;
use leadger_proto::leads::v1::lead_command_service_client::LeadCommandServiceClient;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::cpu::WatchedProcesses;
use crate::funnel::{self, Step};
use crate::measure::{LevelResult, Tally};

/// Metadata naming the calling client; the server scopes request ids to it.
const CLIENT_ID_HEADER: &str = "x-client-id";
const CLIENT_ID: &str = "leadger-bench";

pub type Client = LeadCommandServiceClient<Channel>;

/// How one concurrency level runs.
#[derive(Debug, Clone)]
pub struct LevelPlan {
    pub clients: usize,
    pub connections: usize,
    pub length: LevelLength,
    pub seed: u64,
    /// Failed commands after which every client stops.
    pub max_errors: u64,
}

#[derive(Debug, Clone, Copy)]
pub enum LevelLength {
    Timed { warmup: Duration, measured: Duration },
    Leads(u64),
}

/// Shared by every level of a run so that emails (one open lead per email)
/// and request ids never repeat, even against a server that outlives the run.
#[derive(Debug)]
pub struct RunNaming {
    run_id: String,
    next_lead: AtomicU64,
}

impl RunNaming {
    /// A run id from the current time, in base 36 to keep ids short.
    pub fn new() -> Self {
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Self { run_id: base36(millis), next_lead: AtomicU64::new(0) }
    }

    /// A lead number no level of this run has used.
    pub fn next_lead(&self) -> u64 {
        self.next_lead.fetch_add(1, Ordering::Relaxed)
    }

    pub fn email(&self, lead: u64) -> String {
        format!("lead-{}-{lead}@bench.example", self.run_id)
    }

    pub fn request_id(&self, lead: u64, step: usize) -> String {
        format!("{}-{lead}-{step}", self.run_id)
    }
}

/// Runs one level against `endpoint` and measures it; CPU use is read for
/// the `watched` processes over the measured window.
pub async fn run_level(
    endpoint: &str,
    plan: &LevelPlan,
    naming: &Arc<RunNaming>,
    watched: &WatchedProcesses,
) -> anyhow::Result<LevelResult> {
    let channels = connect(endpoint, plan.connections).await?;
    let level = Arc::new(Level::new(plan, naming.clone(), Instant::now()));
    let tasks: Vec<_> = (0..plan.clients)
        .map(|index| tokio::spawn(drive_leads(Client::new(channels[index % channels.len()].clone()), level.clone())))
        .collect();
    tokio::time::sleep_until(level.window.from.into()).await;
    let first = watched.sample();
    if let Some(until) = level.window.until {
        tokio::time::sleep_until(until.into()).await;
    }
    let last_timed = level.window.until.map(|_| watched.sample());
    let mut tally = Tally::new();
    for task in tasks {
        tally.merge(task.await.context("a client task panicked")?);
    }
    let last = last_timed.unwrap_or_else(|| watched.sample());
    let window = level.window.until.unwrap_or_else(Instant::now).duration_since(level.window.from);
    Ok(tally.summarize(plan.clients, window, first.until(&last), level.stopped_by_errors()))
}

/// `connections` separate HTTP/2 connections; client tasks take turns.
pub async fn connect(endpoint: &str, connections: usize) -> anyhow::Result<Vec<Channel>> {
    let endpoint =
        Channel::from_shared(endpoint.to_string()).with_context(|| format!("parse endpoint {endpoint:?}"))?;
    let mut channels = Vec::with_capacity(connections.max(1));
    for _ in 0..connections.max(1) {
        channels.push(endpoint.connect().await.with_context(|| format!("connect to {}", endpoint.uri()))?);
    }
    Ok(channels)
}

/// When commands count: answered at or after `from` and, for a timed level,
/// no later than `until`, after which no command is sent.
#[derive(Debug, Clone, Copy)]
struct Window {
    from: Instant,
    until: Option<Instant>,
}

/// The state the client tasks of one level share.
struct Level {
    naming: Arc<RunNaming>,
    seed: u64,
    window: Window,
    /// How many leads the level drives, when it drives a fixed number.
    lead_budget: Option<u64>,
    leads_started: AtomicU64,
    max_errors: u64,
    errors: AtomicU64,
}

impl Level {
    fn new(plan: &LevelPlan, naming: Arc<RunNaming>, start: Instant) -> Self {
        let (window, lead_budget) = match plan.length {
            LevelLength::Timed { warmup, measured } => {
                (Window { from: start + warmup, until: Some(start + warmup + measured) }, None)
            }
            LevelLength::Leads(leads) => (Window { from: start, until: None }, Some(leads)),
        };
        Self {
            naming,
            seed: plan.seed,
            window,
            lead_budget,
            leads_started: AtomicU64::new(0),
            max_errors: plan.max_errors,
            errors: AtomicU64::new(0),
        }
    }

    /// The next lead's number, or `None` once the level is over.
    fn next_lead(&self) -> Option<u64> {
        if self.is_over() {
            return None;
        }
        if let Some(budget) = self.lead_budget
            && self.leads_started.fetch_add(1, Ordering::Relaxed) >= budget
        {
            return None;
        }
        Some(self.naming.next_lead())
    }

    fn is_over(&self) -> bool {
        self.stopped_by_errors() || self.window.until.is_some_and(|until| Instant::now() >= until)
    }

    fn stopped_by_errors(&self) -> bool {
        self.errors.load(Ordering::Relaxed) >= self.max_errors
    }

    fn measures(&self, answered: Instant) -> bool {
        answered >= self.window.from && self.window.until.is_none_or(|until| answered <= until)
    }
}

/// One client: leads one after the other until the level is over.
async fn drive_leads(mut client: Client, level: Arc<Level>) -> Tally {
    let mut tally = Tally::new();
    while let Some(number) = level.next_lead() {
        drive_lead(&mut client, &level, number, &mut tally).await;
    }
    tally
}

/// The lead as the client knows it from the answers so far.
pub struct LeadCursor {
    pub number: u64,
    /// Empty until the capture is answered (the server makes the id).
    id: String,
    version: u64,
}

impl LeadCursor {
    /// A lead not captured yet.
    pub fn new(number: u64) -> Self {
        Self { number, id: String::new(), version: 0 }
    }

    /// Takes in the answer to the lead's last command.
    pub fn advance(&mut self, result: &pb::CommandResult) {
        self.id.clone_from(&result.lead_id);
        self.version = result.version;
    }
}

/// Sends one lead's commands in order; stops at the first failure (the rest
/// of the journey would be refused) or when the level ends.
async fn drive_lead(client: &mut Client, level: &Level, number: u64, tally: &mut Tally) {
    let mut lead = LeadCursor::new(number);
    for (index, step) in funnel::journey(level.seed, number).iter().enumerate() {
        if level.is_over() {
            return;
        }
        let request_id = level.naming.request_id(number, index);
        let sent = Instant::now();
        let answer = send(client, &level.naming, &lead, step, request_id).await;
        let answered = Instant::now();
        match answer {
            Ok(result) => {
                if level.measures(answered) {
                    tally.record_command(step.rpc(), answered - sent);
                    if matches!(step, Step::Capture { .. }) {
                        tally.record_lead();
                    }
                }
                lead.advance(&result);
            }
            Err(status) => {
                tally.record_error(&status);
                level.errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

/// Sends the command for `step`, expecting the lead at the version last seen.
pub async fn send(
    client: &mut Client,
    naming: &RunNaming,
    lead: &LeadCursor,
    step: &Step,
    request_id: String,
) -> Result<pb::CommandResult, Status> {
    let lead_id = lead.id.clone();
    let expected_version = Some(lead.version);
    let result = match step {
        Step::Capture { source, persona } => {
            let request = pb::CaptureLeadRequest {
                request_id,
                email: naming.email(lead.number),
                name: format!("Bench Lead {}", lead.number),
                company: "Bench Example GmbH".to_string(),
                phone: "+49 30 1234567".to_string(),
                source: source.to_string(),
                campaign: "load-test".to_string(),
                persona: persona.to_string(),
                ..Default::default()
            };
            client.capture_lead(tagged(request)).await?.into_inner().result
        }
        Step::Qualify { assignee, score } => {
            let request = pb::QualifyLeadRequest {
                request_id,
                lead_id,
                expected_version,
                score: Some(*score),
                assignee: assignee.clone(),
                ..Default::default()
            };
            client.qualify_lead(tagged(request)).await?.into_inner().result
        }
        Step::Accept => {
            let request = pb::AcceptLeadRequest { request_id, lead_id, expected_version, ..Default::default() };
            client.accept_lead(tagged(request)).await?.into_inner().result
        }
        Step::Reject => {
            let request = pb::RejectLeadRequest {
                request_id,
                lead_id,
                expected_version,
                reason: "no-budget".to_string(),
                ..Default::default()
            };
            client.reject_lead(tagged(request)).await?.into_inner().result
        }
        Step::CloseWon { amount_minor } => {
            let request = pb::CloseLeadRequest {
                request_id,
                lead_id,
                expected_version,
                outcome: pb::Outcome::Won.into(),
                amount_minor: *amount_minor,
                currency: "EUR".to_string(),
                ..Default::default()
            };
            client.close_lead(tagged(request)).await?.into_inner().result
        }
        Step::CloseLost => {
            let request = pb::CloseLeadRequest {
                request_id,
                lead_id,
                expected_version,
                outcome: pb::Outcome::Lost.into(),
                lost_reason: "chose-competitor".to_string(),
                ..Default::default()
            };
            client.close_lead(tagged(request)).await?.into_inner().result
        }
        Step::RecordFeedback { rating } => {
            let request = pb::RecordFeedbackRequest {
                request_id,
                lead_id,
                expected_version,
                rating: *rating,
                ..Default::default()
            };
            client.record_feedback(tagged(request)).await?.into_inner().result
        }
    };
    result.ok_or_else(|| Status::internal("the response carries no command result"))
}

/// Wraps a message in a request that names this client.
fn tagged<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(CLIENT_ID_HEADER, MetadataValue::from_static(CLIENT_ID));
    request
}

fn base36(mut value: u128) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut text = Vec::new();
    loop {
        text.push(DIGITS[(value % 36) as usize]);
        value /= 36;
        if value == 0 {
            break;
        }
    }
    text.reverse();
    String::from_utf8_lossy(&text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_is_short_and_exact() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(1_700_000_000_000), "loyw3v28");
    }

    #[test]
    fn names_are_unique_per_lead_and_step() {
        let naming = RunNaming::new();
        assert_ne!(naming.request_id(1, 0), naming.request_id(1, 1));
        assert_ne!(naming.request_id(1, 2), naming.request_id(12, 0));
        assert_ne!(naming.email(1), naming.email(2));
    }
}
