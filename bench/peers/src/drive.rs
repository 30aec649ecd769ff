//! The load: `writers` tokio tasks, each taking the next lead number from a
//! shared counter and running that lead's [`funnel::journey`] through the
//! peer one command at a time, waiting for each before sending the next, so
//! concurrency comes from different leads, as in leadger's benchmark.
//!
//! The run is a warm-up followed by a measured window: only commands that
//! finish inside the window are counted, and none is started after it.
//!
//! A command that fails on a concurrency conflict, or is refused by the rules
//! although the writer's own commits allow it (a stale read), is run again
//! under the [`retry`] policy, the same for every peer; its latency runs from
//! its first attempt to its success, and only a command that still fails, or
//! fails otherwise, counts as an error. A command retrying when the window
//! closes finishes its attempts (and commits, if it can) without being counted.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hdrhistogram::Histogram;
use uuid::Uuid;

use crate::funnel::{self, Step};
use crate::lead::{self, Contact, Lead, LeadCommand, Outcome};
use crate::retry::{self, Failure, MAX_ATTEMPTS, Retries};

/// Errors printed to stderr as they happen; the rest are only counted.
const ERRORS_PRINTED: u64 = 5;
/// Latencies above this (in microseconds) are recorded as this.
const LATENCY_CEILING_MICROS: u64 = 600_000_000;

/// One peer crate wired to the database. `execute` runs one command as one
/// transaction through the crate's own API: load the lead, decide, append;
/// on failure it tells a conflict or a refusal from other errors, for the
/// [`retry`] policy.
pub trait Peer: Send + Sync + 'static {
    fn execute(&self, lead: Uuid, command: LeadCommand) -> impl Future<Output = Result<(), Failure>> + Send;

    /// Anything about how the peer was set up that a reader of its figures
    /// should know.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// Where this crate's retries come from, for the report's note on them.
    fn retry_cause(&self) -> Option<&'static str> {
        None
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub writers: usize,
    pub warmup: Duration,
    pub measured: Duration,
    pub seed: u64,
    /// Failed commands after which every writer stops.
    pub max_errors: u64,
}

/// What the writers saw, merged.
pub struct Tally {
    /// Commands that succeeded inside the measured window (one event each).
    pub events: u64,
    /// Commands that succeeded at any time, warm-up included: what the store
    /// should hold at the end.
    pub committed: u64,
    /// Latency of the counted commands, in microseconds.
    pub latency: Histogram<u64>,
    /// Failed commands by message, over the whole run: failed for good, or
    /// after [`MAX_ATTEMPTS`] retryable failures.
    pub errors: BTreeMap<String, u64>,
    /// Attempts run again, over the whole run.
    pub retries: Retries,
    /// The measured window as it was: shorter than planned, or empty, when
    /// the run stopped on errors.
    pub window: Duration,
    pub stopped_by_errors: bool,
}

impl Tally {
    fn new() -> Self {
        let latency = Histogram::new_with_bounds(1, LATENCY_CEILING_MICROS, 3).expect("the bounds are valid");
        Self {
            events: 0,
            committed: 0,
            latency,
            errors: BTreeMap::new(),
            retries: Retries::default(),
            window: Duration::ZERO,
            stopped_by_errors: false,
        }
    }

    fn merge(&mut self, other: Tally) -> anyhow::Result<()> {
        self.events += other.events;
        self.committed += other.committed;
        self.latency.add(&other.latency).context("merge latency histograms")?;
        for (message, count) in other.errors {
            *self.errors.entry(message).or_default() += count;
        }
        self.retries.merge(&other.retries);
        Ok(())
    }
}

/// Runs the plan against `peer` and returns what the writers counted.
pub async fn run<P: Peer>(peer: Arc<P>, plan: &Plan) -> anyhow::Result<Tally> {
    let run = Arc::new(Run::new(plan, Instant::now()));
    let writers: Vec<_> = (0..plan.writers).map(|_| tokio::spawn(drive_leads(peer.clone(), run.clone()))).collect();
    let mut tally = Tally::new();
    for writer in writers {
        tally.merge(writer.await.context("a writer task panicked")?)?;
    }
    tally.stopped_by_errors = run.stopped_by_errors();
    tally.window = run.window_end().saturating_duration_since(run.measured_from);
    Ok(tally)
}

/// The state the writers share.
struct Run {
    /// Makes emails unique across runs against the same database.
    run_id: String,
    seed: u64,
    /// Commands finishing in `[measured_from, until]` count (up to the stop,
    /// if errors stop the run first); none starts after `until`.
    measured_from: Instant,
    until: Instant,
    next_lead: AtomicU64,
    max_errors: u64,
    errors: AtomicU64,
    /// When the errors reached `max_errors`.
    stopped_at: OnceLock<Instant>,
}

impl Run {
    fn new(plan: &Plan, start: Instant) -> Self {
        let millis = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        Self {
            run_id: base36(millis),
            seed: plan.seed,
            measured_from: start + plan.warmup,
            until: start + plan.warmup + plan.measured,
            next_lead: AtomicU64::new(0),
            max_errors: plan.max_errors,
            errors: AtomicU64::new(0),
            stopped_at: OnceLock::new(),
        }
    }

    fn is_over(&self) -> bool {
        self.stopped_by_errors() || Instant::now() >= self.until
    }

    fn stopped_by_errors(&self) -> bool {
        self.errors.load(Ordering::Relaxed) >= self.max_errors
    }

    /// The end of the measured window: `until`, or when the errors stopped the run.
    fn window_end(&self) -> Instant {
        self.stopped_at.get().map_or(self.until, |&stopped| stopped.min(self.until))
    }

    fn measures(&self, finished: Instant) -> bool {
        (self.measured_from..=self.window_end()).contains(&finished)
    }
}

/// One writer: leads one after the other until the run is over.
async fn drive_leads<P: Peer>(peer: Arc<P>, run: Arc<Run>) -> Tally {
    let mut tally = Tally::new();
    while !run.is_over() {
        let number = run.next_lead.fetch_add(1, Ordering::Relaxed);
        drive_lead(&*peer, &run, number, &mut tally).await;
    }
    tally
}

/// Runs one lead's commands in order; stops at the first failure (the rest
/// of the journey would be refused) or when the run is over.
async fn drive_lead<P: Peer>(peer: &P, run: &Run, number: u64, tally: &mut Tally) {
    let lead = Uuid::new_v4();
    // The lead as this writer's commits left it: each lead has one writer.
    let mut known = Lead::default();
    let mut history = false;
    for step in funnel::journey(run.seed, number) {
        if run.is_over() {
            return;
        }
        let command = command(&step, &run.run_id, number);
        let started = Instant::now();
        let result = execute(peer, lead, &command, &known, history, &mut tally.retries).await;
        let finished = Instant::now();
        match result {
            Ok(()) => {
                tally.committed += 1;
                if run.measures(finished) {
                    tally.events += 1;
                    let micros = u64::try_from((finished - started).as_micros()).unwrap_or(u64::MAX);
                    tally.latency.saturating_record(micros.max(1));
                }
                if let Ok(event) = lead::decide(&known, command) {
                    lead::evolve(&mut known, &event);
                }
                history = true;
            }
            Err((failure, attempts)) => {
                let error = describe(failure.error());
                let message = if attempts > 1 {
                    format!("{}, {attempts} attempts: {error}", step.rpc())
                } else {
                    format!("{}: {error}", step.rpc())
                };
                let earlier = run.errors.fetch_add(1, Ordering::Relaxed);
                if earlier < ERRORS_PRINTED {
                    eprintln!("lead {number} ({lead}): {message}");
                }
                if earlier + 1 == run.max_errors {
                    let _ = run.stopped_at.set(finished);
                }
                *tally.errors.entry(message).or_default() += 1;
                return;
            }
        }
    }
}

/// Runs `command` under the [`retry`] policy; on failure, the last one and
/// the attempts made. `known` and `history` are what the writer committed.
async fn execute<P: Peer>(
    peer: &P,
    lead: Uuid,
    command: &LeadCommand,
    known: &Lead,
    history: bool,
    retries: &mut Retries,
) -> Result<(), (Failure, u32)> {
    let entropy = lead.as_u64_pair().0;
    let mut attempt = 1;
    loop {
        let failure = match peer.execute(lead, command.clone()).await {
            Ok(()) => {
                retries.count_command(attempt);
                return Ok(());
            }
            Err(failure) => failure,
        };
        let retryable = failure.is_retryable(known, history, command);
        if !retryable || attempt >= MAX_ATTEMPTS {
            retries.count_command(attempt);
            if retryable {
                retries.exhausted += 1;
            }
            return Err((failure, attempt));
        }
        retries.count_retry(&failure);
        retry::pause(attempt, entropy ^ u64::from(attempt)).await;
        attempt += 1;
    }
}

/// The command for one step of lead `number`'s journey, with the values
/// leadger's benchmark sends.
fn command(step: &Step, run_id: &str, number: u64) -> LeadCommand {
    match step {
        Step::Capture { source, persona } => LeadCommand::Capture(Contact {
            email: format!("lead-{run_id}-{number}@bench.example"),
            name: format!("Bench Lead {number}"),
            company: "Bench Example GmbH".to_string(),
            phone: "+49 30 1234567".to_string(),
            source: source.to_string(),
            campaign: "load-test".to_string(),
            persona: persona.to_string(),
        }),
        Step::Qualify { assignee, score } => LeadCommand::Qualify { assignee: assignee.clone(), score: *score },
        Step::Accept => LeadCommand::Accept,
        Step::Reject => LeadCommand::Reject { reason: "no-budget".to_string() },
        Step::CloseWon { amount_minor } => {
            LeadCommand::Close(Outcome::Won { amount_minor: *amount_minor, currency: "EUR".to_string() })
        }
        Step::CloseLost => LeadCommand::Close(Outcome::Lost { reason: "chose-competitor".to_string() }),
        Step::RecordFeedback { rating } => LeadCommand::RecordFeedback { rating: *rating },
    }
}

/// The error and its causes, each cause left out when an outer message
/// already quotes it (several peers' errors print their source inline).
fn describe(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1).map(ToString::to_string) {
        if !message.contains(&cause) {
            message = format!("{message}: {cause}");
        }
    }
    message
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
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::lead::{LeadError, LeadEvent};

    /// A peer in memory whose loads miss the lead's last event on a
    /// command's first attempt, and whose appends then conflict once, as
    /// disintegrate's can under load.
    #[derive(Default)]
    struct Lagging {
        leads: Mutex<HashMap<Uuid, Lead>>,
        /// Attempts seen per lead and command, to fail the first two.
        attempts: Mutex<HashMap<(Uuid, &'static str), u32>>,
    }

    impl Peer for Lagging {
        async fn execute(&self, lead: Uuid, command: LeadCommand) -> Result<(), Failure> {
            let attempt = {
                let mut attempts = self.attempts.lock().expect("not poisoned");
                let attempt = attempts.entry((lead, command.name())).or_default();
                *attempt += 1;
                *attempt
            };
            let mut leads = self.leads.lock().expect("not poisoned");
            let state = leads.entry(lead).or_default();
            if attempt == 1 && state.stage.is_some() {
                let error = LeadError::NotCaptured { command: command.name() };
                return Err(Failure::Refused(error.into()));
            }
            if attempt <= 2 && state.stage.is_some() {
                return Err(Failure::Conflict(anyhow::anyhow!("concurrent modification error")));
            }
            let event = lead::decide(state, command).map_err(|error| Failure::Refused(error.into()))?;
            lead::evolve(state, &event);
            Ok(())
        }
    }

    /// A peer whose every command fails the same way.
    struct Failing(fn() -> Failure);

    impl Peer for Failing {
        async fn execute(&self, _: Uuid, _: LeadCommand) -> Result<(), Failure> {
            Err((self.0)())
        }
    }

    fn plan(max_errors: u64) -> Plan {
        Plan { writers: 1, warmup: Duration::ZERO, measured: Duration::from_secs(600), seed: 1, max_errors }
    }

    #[tokio::test]
    async fn stale_refusals_and_conflicts_are_retried_until_the_command_succeeds() {
        let peer = Lagging::default();
        let run = Run::new(&plan(1), Instant::now());
        let mut tally = Tally::new();
        let leads = 300;
        for number in 0..leads {
            drive_lead(&peer, &run, number, &mut tally).await;
        }
        let steps: u64 = (0..leads).map(|number| funnel::journey(1, number).len() as u64).sum();
        assert!(tally.errors.is_empty(), "{:?}", tally.errors);
        assert_eq!((tally.committed, tally.events), (steps, steps));
        assert_eq!(tally.latency.len(), steps);
        let later = steps - leads;
        assert!(later > 50, "only {later} commands after a capture");
        let expected = Retries {
            after_conflicts: later,
            after_stale_refusals: later,
            commands: later,
            exhausted: 0,
            most_attempts: 3,
        };
        assert_eq!(tally.retries, expected);
    }

    #[tokio::test]
    async fn a_refused_capture_and_other_errors_fail_at_once() {
        let refusing = Failing(|| Failure::Refused(anyhow::anyhow!("CaptureLead refused: the lead is in stage Won")));
        let broken = Failing(|| Failure::other(anyhow::anyhow!("connection reset")));
        for (peer, message) in [
            (refusing, "CaptureLead: CaptureLead refused: the lead is in stage Won"),
            (broken, "CaptureLead: connection reset"),
        ] {
            let run = Run::new(&plan(3), Instant::now());
            let mut tally = Tally::new();
            for number in 0..3 {
                drive_lead(&peer, &run, number, &mut tally).await;
            }
            assert_eq!(tally.errors, BTreeMap::from([(message.to_string(), 3)]));
            assert_eq!(tally.retries.total(), 0);
            assert!(run.stopped_by_errors());
        }
    }

    #[tokio::test]
    async fn a_conflict_that_persists_fails_after_every_attempt() {
        let peer = Failing(|| Failure::Conflict(anyhow::anyhow!("concurrent modification error")));
        let run = Run::new(&plan(1), Instant::now());
        let mut tally = Tally::new();
        let started = Instant::now();
        drive_lead(&peer, &run, 0, &mut tally).await;
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(400) && waited < Duration::from_secs(5), "{waited:?}");
        let message = format!("CaptureLead, {MAX_ATTEMPTS} attempts: concurrent modification error");
        assert_eq!(tally.errors, BTreeMap::from([(message, 1)]));
        let expected = Retries {
            after_conflicts: u64::from(MAX_ATTEMPTS - 1),
            after_stale_refusals: 0,
            commands: 1,
            exhausted: 1,
            most_attempts: MAX_ATTEMPTS,
        };
        assert_eq!(tally.retries, expected);
        assert_eq!(tally.committed, 0);
    }

    /// Every journey the funnel draws is accepted by the lead's rules, one
    /// event per command, so a run fails only for a peer's own reasons.
    #[test]
    fn every_journey_plays_through_the_rules() {
        let mut events = 0;
        for number in 0..20_000 {
            let mut state = Lead::default();
            for step in funnel::journey(1, number) {
                let event = lead::decide(&state, command(&step, "run", number))
                    .unwrap_or_else(|error| panic!("lead {number}, {step:?}: {error}"));
                lead::evolve(&mut state, &event);
                events += 1;
            }
        }
        let per_lead = events as f64 / 20_000.0;
        assert!((1.3..1.5).contains(&per_lead), "{per_lead} commands per lead");
    }

    #[test]
    fn commands_carry_leadgers_values() {
        let capture = command(&Step::Capture { source: "web", persona: "cfo-enterprise" }, "abc", 7);
        let LeadCommand::Capture(contact) = capture else { panic!("expected a capture, got {capture:?}") };
        assert_eq!(contact.email, "lead-abc-7@bench.example");
        assert_eq!(contact.name, "Bench Lead 7");
        let event = lead::decide(&Lead::default(), LeadCommand::Capture(contact)).expect("a new lead is captured");
        let payload = serde_json::to_string(&event).expect("events serialize");
        assert!((150..300).contains(&payload.len()), "capture payload of {} bytes: {payload}", payload.len());
        assert!(matches!(event, LeadEvent::Captured(_)));
    }

    #[test]
    fn causes_are_named_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("state store error: {0}")]
        struct Quoting(#[source] std::io::Error);
        let quoting = anyhow::Error::new(Quoting(std::io::Error::other("could not serialize access")));
        assert_eq!(describe(&quoting), "state store error: could not serialize access");
        let wrapped = anyhow::Error::new(std::io::Error::other("connection reset")).context("load the lead");
        assert_eq!(describe(&wrapped), "load the lead: connection reset");
    }

    #[test]
    fn base36_is_short_and_exact() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(36), "10");
        assert_eq!(base36(1_700_000_000_000), "loyw3v28");
    }
}
