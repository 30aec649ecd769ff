//! The lifecycle table, checked pair by pair, and properties of random
//! command sequences.

use leadger_domain::{
    Action, CloseOutcome, Closing, Command, CommandKind, DomainError, Email, Feedback, Label, Lead, LeadDetails,
    LeadEventKind, LeadId, Money, Qualification, Rating, ReasonCode, Rejection, Stage, Timestamp, decide, evolve,
};
use proptest::prelude::*;

const NOW: i64 = 1_750_000_000_000_000;

fn lead_id() -> LeadId {
    LeadId::parse("lead_id", "0190f3c4-8a4e-7d2b-9c1e-2f6a1b3c4d5e").expect("valid uuid")
}

fn label(text: &str) -> Label {
    Label::parse_required("test", text).expect("valid label")
}

fn code(text: &str) -> ReasonCode {
    ReasonCode::parse("test", text).expect("valid code")
}

fn details() -> LeadDetails {
    LeadDetails {
        email: Email::parse("email", "ada@example.com").expect("valid email"),
        name: Some(label("Ada")),
        company: None,
        phone: None,
        source: Some(label("web")),
        campaign: None,
        persona: None,
        external_ref: None,
    }
}

fn action(kind: CommandKind) -> Action {
    match kind {
        CommandKind::CaptureLead => Action::Capture(details()),
        CommandKind::QualifyLead => {
            Action::Qualify(Qualification { score: None, note: None, assignee: Some(label("rep-1")) })
        }
        CommandKind::AssignLead => Action::Assign { assignee: label("rep-2") },
        CommandKind::AcceptLead => Action::Accept { owner: Some(label("rep-3")) },
        CommandKind::RejectLead => Action::Reject(Rejection { reason: code("no-budget"), note: None }),
        CommandKind::CloseLeadWon => Action::Close(Closing {
            outcome: CloseOutcome::Won { amount: Some(Money::parse("a", 100, "c", "EUR").expect("valid")) },
            note: None,
        }),
        CommandKind::CloseLeadLost => {
            Action::Close(Closing { outcome: CloseOutcome::Lost { reason: code("went-dark") }, note: None })
        }
        CommandKind::RecordFeedback => Action::RecordFeedback(Feedback {
            rating: Rating::parse("rating", 4).expect("valid"),
            reason_codes: vec![code("good-fit")],
            comment: None,
        }),
        CommandKind::EraseLead => Action::Erase { reason: Some(label("GDPR-1234")) },
    }
}

fn command(kind: CommandKind) -> Command {
    Command { lead_id: lead_id(), expected_version: None, occurred_at: None, action: action(kind) }
}

fn now() -> Timestamp {
    Timestamp::from_micros(NOW).expect("in range")
}

fn lead(stage: Stage, seen_by_sales: bool) -> Lead {
    Lead { stage, version: 3, seen_by_sales, last_occurred_at: now(), assignee: None, owner: None, erased: false }
}

/// The lifecycle table of the issue, written out independently of
/// `Stage::allows`: (command, stages it is allowed from).
fn allowed_from(kind: CommandKind) -> &'static [Stage] {
    use Stage::*;
    match kind {
        CommandKind::CaptureLead => &[],
        CommandKind::QualifyLead => &[Captured, Rejected],
        CommandKind::AssignLead => &[Mql],
        CommandKind::AcceptLead => &[Mql, Captured],
        CommandKind::RejectLead => &[Mql],
        CommandKind::CloseLeadWon => &[Sql],
        CommandKind::CloseLeadLost => &[Captured, Mql, Sql, Rejected],
        CommandKind::RecordFeedback | CommandKind::EraseLead => &[Captured, Mql, Sql, Rejected, Won, Lost],
    }
}

fn expected_stage(kind: CommandKind, from: Stage) -> Stage {
    match kind {
        CommandKind::QualifyLead | CommandKind::AssignLead => Stage::Mql,
        CommandKind::AcceptLead => Stage::Sql,
        CommandKind::RejectLead => Stage::Rejected,
        CommandKind::CloseLeadWon => Stage::Won,
        CommandKind::CloseLeadLost => Stage::Lost,
        CommandKind::CaptureLead | CommandKind::RecordFeedback | CommandKind::EraseLead => from,
    }
}

#[test]
fn every_stage_and_command_pair_follows_the_lifecycle_table() {
    for stage in Stage::ALL {
        for kind in CommandKind::ALL {
            // Feedback after sales saw the lead; capture always hits an existing lead here.
            let current = lead(stage, true);
            let result = decide(Some(&current), &command(kind), now());
            if allowed_from(kind).contains(&stage) {
                let event = result.unwrap_or_else(|e| panic!("{kind} from {stage} must be allowed: {e}"));
                let next = evolve(Some(current.clone()), &event);
                assert_eq!(next.stage, expected_stage(kind, stage), "{kind} from {stage}");
                assert_eq!(next.version, current.version + 1);
            } else if kind == CommandKind::CaptureLead {
                assert_eq!(result, Err(DomainError::LeadAlreadyExists(lead_id())));
            } else {
                assert_eq!(result, Err(DomainError::NotAllowed { stage, command: kind }), "{kind} from {stage}");
            }
        }
    }
}

#[test]
fn a_new_lead_can_only_be_captured() {
    for kind in CommandKind::ALL {
        let result = decide(None, &command(kind), now());
        if kind == CommandKind::CaptureLead {
            let event = result.expect("capture of a new lead");
            assert!(matches!(event.kind, LeadEventKind::Captured(_)));
            assert_eq!(event.occurred_at, now(), "occurred_at defaults to server time");
            assert_eq!(evolve(None, &event).stage, Stage::Captured);
        } else {
            assert_eq!(result, Err(DomainError::LeadNotFound(lead_id())), "{kind}");
        }
    }
}

#[test]
fn feedback_needs_a_lead_sales_has_seen() {
    for stage in [Stage::Captured, Stage::Lost] {
        let result = decide(Some(&lead(stage, false)), &command(CommandKind::RecordFeedback), now());
        assert_eq!(result, Err(DomainError::NotSeenBySales { stage, command: CommandKind::RecordFeedback }));
    }
}

#[test]
fn accept_defaults_the_owner_to_the_assignee_and_needs_one() {
    let unassigned = lead(Stage::Mql, true);
    let accept = Command { action: Action::Accept { owner: None }, ..command(CommandKind::AcceptLead) };
    assert_eq!(decide(Some(&unassigned), &accept, now()), Err(DomainError::OwnerRequired));
    let assigned = Lead { assignee: Some(label("rep-1")), ..unassigned };
    let event = decide(Some(&assigned), &accept, now()).expect("owner from assignee");
    assert_eq!(event.kind, LeadEventKind::Accepted { owner: label("rep-1") });
}

#[test]
fn expected_version_must_match() {
    let current = lead(Stage::Captured, false);
    let stale = Command { expected_version: Some(2), ..command(CommandKind::QualifyLead) };
    assert_eq!(decide(Some(&current), &stale, now()), Err(DomainError::VersionMismatch { expected: 2, actual: 3 }));
    let fresh = Command { expected_version: Some(3), ..command(CommandKind::QualifyLead) };
    assert!(decide(Some(&current), &fresh, now()).is_ok());
    let capture_existing_zero = Command { expected_version: Some(1), ..command(CommandKind::CaptureLead) };
    assert_eq!(
        decide(None, &capture_existing_zero, now()),
        Err(DomainError::VersionMismatch { expected: 1, actual: 0 })
    );
}

#[test]
fn business_time_is_bounded_and_never_goes_backwards() {
    let current = lead(Stage::Captured, false);
    let at = |micros: i64| Command {
        occurred_at: Some(Timestamp::from_micros(micros).expect("in range")),
        ..command(CommandKind::QualifyLead)
    };
    let five_minutes = 5 * 60 * 1_000_000;
    assert!(decide(Some(&current), &at(NOW + five_minutes), now()).is_ok());
    assert!(matches!(
        decide(Some(&current), &at(NOW + five_minutes + 1), now()),
        Err(DomainError::OccurredInFuture { .. })
    ));
    assert!(matches!(decide(Some(&current), &at(NOW - 1), now()), Err(DomainError::OccurredBeforePrevious { .. })));
    assert!(decide(Some(&current), &at(NOW), now()).is_ok(), "a tie is fine: log order breaks it");
}

#[test]
fn erasure_keeps_the_stage_and_an_erased_lead_takes_no_further_command() {
    for stage in Stage::ALL {
        let current = lead(stage, true);
        let event = decide(Some(&current), &command(CommandKind::EraseLead), now()).expect("erasure in every stage");
        assert_eq!(event.kind, LeadEventKind::Erased { reason: Some(label("GDPR-1234")) });
        let erased = evolve(Some(current.clone()), &event);
        assert_eq!((erased.stage, erased.version, erased.erased), (stage, current.version + 1, true));
        for kind in CommandKind::ALL {
            let result = decide(Some(&erased), &command(kind), now());
            let expected = if kind == CommandKind::CaptureLead {
                DomainError::LeadAlreadyExists(lead_id())
            } else {
                DomainError::LeadErased(lead_id())
            };
            assert_eq!(result, Err(expected), "{kind} on an erased {stage} lead");
        }
    }
}

fn any_kind() -> impl Strategy<Value = CommandKind> {
    prop::sample::select(CommandKind::ALL.to_vec())
}

proptest! {
    /// Whatever is asked, accepted commands grow the version by exactly one and
    /// refused ones change nothing; terminal stages stay terminal.
    #[test]
    fn random_command_sequences_keep_versions_contiguous(kinds in prop::collection::vec((any_kind(), 0i64..1_000_000), 1..60)) {
        let mut state: Option<Lead> = None;
        let mut clock = NOW;
        for (kind, step) in kinds {
            clock += step;
            let now = Timestamp::from_micros(clock).expect("in range");
            let before = state.clone();
            match decide(state.as_ref(), &command(kind), now) {
                Ok(event) => {
                    let next = evolve(state.take(), &event);
                    prop_assert_eq!(next.version, before.as_ref().map_or(0, |l| l.version) + 1);
                    if let Some(before) = &before {
                        prop_assert!(!before.stage.is_terminal() || next.stage == before.stage);
                    }
                    state = Some(next);
                }
                Err(_) => prop_assert_eq!(&state, &before),
            }
        }
    }
}
