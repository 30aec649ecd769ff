//! Property test of each event log against a reference model: random command
//! sequences, in random commit batches, go through the real store (SQLite
//! file, PostgreSQL database); each result, and each lead's state rebuilt from
//! the persisted JSON, must equal what an independent state machine written
//! here predicts. Versions and positions must stay contiguous. Commands come
//! from several clients with different roles (every role, marketing, sales),
//! some with request ids that repeat, so idempotent replay, request-id reuse
//! and role refusals are checked against the model too.

use std::collections::HashMap;

use leadger_domain::{
    Action, CloseOutcome, Closing, Command, DomainError, Email, Feedback, Label, LeadDetails, LeadId, LeadProfile,
    Money, Note, Qualification, Rating, ReasonCode, Rejection, Timestamp,
};
use leadger_store::{CommandError, CommandOutcome, EventLog, Origin, PendingCommand, PostgresLog, SqliteLog, Vault};
use leadger_tests::{Backend, TestDatabase};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

const LEADS: usize = 3;
const NOW: i64 = 1_760_000_000_000_000;

/// One random command: which lead, which command, and its arguments.
#[derive(Debug, Clone)]
struct Op {
    lead: usize,
    kind: u8,
    email: usize,
    rep: Option<usize>,
    note: bool,
    /// 0: every role, 1: marketing, 2: sales.
    client: usize,
    /// An idempotency key from a small pool, so keys repeat.
    request: Option<u8>,
}

const CLIENTS: usize = 3;

fn roles_of(client: usize) -> leadger_domain::Roles {
    use leadger_domain::{Role, Roles};
    match client {
        0 => Roles::ALL,
        1 => Roles::of([Role::Marketing]),
        _ => Roles::of([Role::Sales]),
    }
}

/// What the request hash covers: the request as the client sent it.
fn request_hash(op: &Op) -> String {
    format!("{}/{}/{}/{:?}/{}", op.lead, op.kind, op.email, op.rep, op.note)
}

fn op() -> impl Strategy<Value = Op> {
    (
        (0..LEADS, 0u8..8, 0usize..2, proptest::option::of(0usize..2), any::<bool>()),
        (0..CLIENTS, proptest::option::of(0u8..4)),
    )
        .prop_map(|((lead, kind, email, rep, note), (client, request))| Op {
            lead,
            kind,
            email,
            rep,
            note,
            client,
            request,
        })
}

fn batches() -> impl Strategy<Value = Vec<Vec<Op>>> {
    prop::collection::vec(prop::collection::vec(op(), 1..8), 1..8)
}

fn label(text: String) -> Label {
    Label::parse_required("test", &text).expect("valid label")
}

fn code(text: &str) -> ReasonCode {
    ReasonCode::parse("test", text).expect("valid code")
}

fn note(op: &Op) -> Option<Note> {
    op.note.then(|| Note::parse_optional("note", &format!("private note {}", op.lead)).expect("valid").expect("some"))
}

fn command(op: &Op, lead_id: LeadId) -> Command {
    let rep = op.rep.map(|r| label(format!("rep-{r}")));
    let action = match op.kind {
        0 => Action::Capture(LeadDetails {
            email: Email::parse("email", &format!("person{}@model.example", op.email)).expect("valid"),
            name: Some(label(format!("Person {}", op.email))),
            company: None,
            phone: op.note.then(|| label("+1 555 0100".into())),
            source: Some(label("web".into())),
            campaign: None,
            persona: None,
            external_ref: None,
        }),
        1 => Action::Qualify(Qualification { score: None, note: note(op), assignee: rep }),
        2 => Action::Assign { assignee: rep.unwrap_or_else(|| label("rep-0".into())) },
        3 => Action::Accept { owner: rep },
        4 => Action::Reject(Rejection { reason: code("no-fit"), note: note(op) }),
        5 => Action::Close(Closing {
            outcome: CloseOutcome::Won { amount: Some(Money::parse("a", 100, "c", "EUR").expect("valid")) },
            note: note(op),
        }),
        6 => Action::Close(Closing { outcome: CloseOutcome::Lost { reason: code("went-dark") }, note: note(op) }),
        _ => Action::RecordFeedback(Feedback {
            rating: Rating::parse("rating", 3).expect("valid"),
            reason_codes: vec![code("good-fit")],
            comment: note(op),
        }),
    };
    Command { lead_id, expected_version: None, occurred_at: None, action }
}

/// The reference: the lifecycle table of the issue, written out again.
#[derive(Debug, Clone, PartialEq)]
struct ModelLead {
    stage: &'static str,
    version: u64,
    seen_by_sales: bool,
    assignee: Option<String>,
    owner: Option<String>,
    email: String,
    event_types: Vec<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    NotFound,
    Exists,
    Stage,
    NotSeen,
    OwnerRequired,
    EmailTaken,
    NotPermitted,
    RequestIdReused,
}

/// The answer to a command: stage, version and whether it was a replay.
type Answer = (&'static str, u64, bool);

#[derive(Default)]
struct Model {
    leads: HashMap<usize, ModelLead>,
    /// Successful requests by (client, request id): their hash and answer.
    receipts: HashMap<(usize, u8), (String, &'static str, u64)>,
}

impl Model {
    fn apply(&mut self, op: &Op) -> Result<Answer, Refusal> {
        let key = op.request.map(|request| (op.client, request));
        if let Some((hash, stage, version)) = key.and_then(|key| self.receipts.get(&key)) {
            return if *hash == request_hash(op) { Ok((stage, *version, true)) } else { Err(Refusal::RequestIdReused) };
        }
        let stage = self.leads.get(&op.lead).map(|lead| lead.stage);
        if !Self::permitted(op.client, op.kind, stage) {
            return Err(Refusal::NotPermitted);
        }
        let (stage, version) = self.decide(op)?;
        if let Some(key) = key {
            self.receipts.insert(key, (request_hash(op), stage, version));
        }
        Ok((stage, version, false))
    }

    /// Marketing captures, qualifies, assigns and closes LOST its own leads
    /// (CAPTURED, REJECTED); sales does the rest but capture and qualify.
    fn permitted(client: usize, kind: u8, stage: Option<&str>) -> bool {
        match client {
            0 => true,
            1 => matches!(kind, 0..=2) || (kind == 6 && matches!(stage, Some("CAPTURED" | "REJECTED"))),
            _ => !matches!(kind, 0 | 1),
        }
    }

    fn decide(&mut self, op: &Op) -> Result<(&'static str, u64), Refusal> {
        let rep = op.rep.map(|r| format!("rep-{r}"));
        if op.kind == 0 {
            if self.leads.contains_key(&op.lead) {
                return Err(Refusal::Exists);
            }
            let email = format!("person{}@model.example", op.email);
            if self.leads.values().any(|l| l.email == email && !matches!(l.stage, "WON" | "LOST")) {
                return Err(Refusal::EmailTaken);
            }
            let lead = ModelLead {
                stage: "CAPTURED",
                version: 1,
                seen_by_sales: false,
                assignee: None,
                owner: None,
                email,
                event_types: vec!["lead.captured"],
            };
            self.leads.insert(op.lead, lead);
            return Ok(("CAPTURED", 1));
        }
        let lead = self.leads.get_mut(&op.lead).ok_or(Refusal::NotFound)?;
        let (stage, event) = match (op.kind, lead.stage) {
            (1, "CAPTURED" | "REJECTED") => {
                lead.seen_by_sales = true;
                lead.assignee = rep;
                ("MQL", "lead.qualified")
            }
            (2, "MQL") => {
                lead.assignee = Some(rep.unwrap_or_else(|| "rep-0".into()));
                ("MQL", "lead.assigned")
            }
            (3, "MQL" | "CAPTURED") => {
                lead.owner = Some(rep.or_else(|| lead.assignee.clone()).ok_or(Refusal::OwnerRequired)?);
                lead.seen_by_sales = true;
                ("SQL", "lead.accepted")
            }
            (4, "MQL") => ("REJECTED", "lead.rejected"),
            (5, "SQL") => ("WON", "lead.closed"),
            (6, "CAPTURED" | "MQL" | "SQL" | "REJECTED") => ("LOST", "lead.closed"),
            (7, _) if lead.seen_by_sales => (lead.stage, "lead.feedback_recorded"),
            (7, _) => return Err(Refusal::NotSeen),
            _ => return Err(Refusal::Stage),
        };
        lead.stage = stage;
        lead.version += 1;
        lead.event_types.push(event);
        Ok((stage, lead.version))
    }
}

fn refusal_of(error: &CommandError) -> Option<Refusal> {
    Some(match error {
        CommandError::Domain(DomainError::LeadNotFound(_)) => Refusal::NotFound,
        CommandError::Domain(DomainError::LeadAlreadyExists(_)) => Refusal::Exists,
        CommandError::Domain(DomainError::NotAllowed { .. }) => Refusal::Stage,
        CommandError::Domain(DomainError::NotSeenBySales { .. }) => Refusal::NotSeen,
        CommandError::Domain(DomainError::OwnerRequired) => Refusal::OwnerRequired,
        CommandError::EmailTaken { .. } => Refusal::EmailTaken,
        CommandError::Domain(DomainError::NotPermitted { .. }) => Refusal::NotPermitted,
        CommandError::RequestIdReused { .. } => Refusal::RequestIdReused,
        _ => return None,
    })
}

async fn check<L: EventLog>(log: &L, vault: &Vault, batches: &[Vec<Op>]) -> Result<(), TestCaseError> {
    let lead_ids: Vec<LeadId> = (0..LEADS).map(|_| LeadId::from_uuid(uuid::Uuid::now_v7())).collect();
    let now = Timestamp::from_micros(NOW).expect("in range");
    let mut model = Model::default();
    let mut appended = 0u64;
    for batch in batches {
        let pending: Vec<PendingCommand> = batch
            .iter()
            .map(|op| PendingCommand {
                command: command(op, lead_ids[op.lead]),
                origin: Origin {
                    client_id: format!("client-{}", op.client),
                    request_id: op.request.map(|request| format!("request-{request}")),
                    request_hash: request_hash(op),
                    correlation_id: None,
                    roles: roles_of(op.client),
                    trace: None,
                },
            })
            .collect();
        let refs: Vec<&PendingCommand> = pending.iter().collect();
        let outcomes =
            log.append_batch(&refs, now, vault, &|| false).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(outcomes.len(), batch.len());
        for (op, outcome) in batch.iter().zip(outcomes) {
            match (model.apply(op), outcome) {
                (Ok((stage, version, replay)), Ok(outcome)) => {
                    let CommandOutcome { stage: got, version: got_version, position, replayed, .. } = outcome;
                    prop_assert_eq!(got.as_str(), stage, "{:?}", op);
                    prop_assert_eq!(got_version, version);
                    prop_assert_eq!(replayed, replay, "{:?}", op);
                    if !replay {
                        appended += 1;
                        prop_assert_eq!(position, appended, "positions are contiguous");
                    }
                }
                (Err(expected), Err(error)) => {
                    prop_assert_eq!(refusal_of(&error), Some(expected), "{:?}: {}", op, error)
                }
                (expected, got) => prop_assert!(false, "{:?}: the model says {:?}, the store {:?}", op, expected, got),
            }
        }
    }
    let keys = log.wrapped_keys(&lead_ids).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
    for (index, lead_id) in lead_ids.iter().enumerate() {
        let stream = log.lead_stream(*lead_id).await.map_err(|e| TestCaseError::fail(e.to_string()))?;
        let Some(expected) = model.leads.get(&index) else {
            prop_assert!(stream.is_empty());
            continue;
        };
        let key = vault.unwrap_key(*lead_id, &keys[lead_id]).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let events: Vec<_> = stream
            .iter()
            .map(|e| e.decode(&key))
            .collect::<Result<_, _>>()
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(
            stream.iter().map(|e| e.version).collect::<Vec<_>>(),
            (1..=expected.version).collect::<Vec<_>>()
        );
        prop_assert_eq!(stream.iter().map(|e| e.event_type.as_str()).collect::<Vec<_>>(), expected.event_types.clone());
        let profile = LeadProfile::replay(&events).expect("starts with a capture");
        prop_assert_eq!(profile.lead.stage.as_str(), expected.stage);
        prop_assert_eq!(profile.lead.version, expected.version);
        prop_assert_eq!(profile.lead.seen_by_sales, expected.seen_by_sales);
        prop_assert_eq!(profile.lead.assignee.map(|l| l.as_str().to_string()), expected.assignee.clone());
        prop_assert_eq!(profile.lead.owner.map(|l| l.as_str().to_string()), expected.owner.clone());
        prop_assert_eq!(profile.details.email.as_str(), expected.email.as_str());
    }
    let log_positions: Vec<u64> = log
        .read_log(1, 10_000)
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .iter()
        .map(|e| e.position)
        .collect();
    prop_assert_eq!(log_positions, (1..=appended).collect::<Vec<_>>());
    Ok(())
}

fn run_model(backend: Backend, cases: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut runner = TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() });
    runner
        .run(&batches(), |batches| {
            runtime.block_on(async {
                let database = TestDatabase::new(backend).await;
                let vault = database.vault();
                match backend {
                    Backend::Sqlite => {
                        check(&SqliteLog::connect(&database.url).await.expect("open"), &vault, &batches).await
                    }
                    Backend::Postgres => {
                        check(&PostgresLog::connect_with(&database.url, 2).await.expect("connect"), &vault, &batches)
                            .await
                    }
                }
            })
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
}

#[test]
fn sqlite_log_matches_the_reference_model() {
    run_model(Backend::Sqlite, 48);
}

#[test]
fn postgres_log_matches_the_reference_model() {
    run_model(Backend::Postgres, 32);
}
