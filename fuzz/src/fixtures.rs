//! Valid requests shared by the targets and the seed writer: lead histories
//! that reach every stage, and SLA policies with and without a calendar.

use leadger_domain::{Lead, LeadEvent, Timestamp, decide, evolve};
use leadger_proto::leads::v1 as pb;

use crate::{CommandRequest, validate_command};

/// The server's clock for every decision: 2026-01-01T00:00:00Z.
pub const NOW_US: i64 = 1_767_225_600_000_000;
const HOUR_US: i64 = 3_600_000_000;

pub fn now() -> Timestamp {
    Timestamp::from_micros(NOW_US).expect("in range")
}

fn hours_ago(hours: i64) -> Option<prost_types::Timestamp> {
    let us = NOW_US - hours * HOUR_US;
    Some(prost_types::Timestamp { seconds: us / 1_000_000, nanos: 0 })
}

/// Lead histories as requests, each step valid and allowed where it stands:
/// CAPTURED, MQL (assigned or not), SQL, REJECTED, WON after feedback, LOST
/// by marketing, erased, and LOST by sales after feedback.
pub fn histories() -> Vec<Vec<CommandRequest>> {
    let lead_id = "0190a5e4-7c1e-7000-8000-000000000001".to_string();
    let capture = CommandRequest::Capture(pb::CaptureLeadRequest {
        request_id: "0190a5e4-7c1e-7000-8000-00000000000a".into(),
        lead_id: lead_id.clone(),
        occurred_at: hours_ago(100),
        email: "ada@example.com".into(),
        name: "Ada Lovelace".into(),
        company: "Analytical Engines".into(),
        phone: "+44 20 7946 0000".into(),
        source: "webinar".into(),
        campaign: "spring-launch".into(),
        persona: "cto".into(),
        external_ref: "crm-42".into(),
        ..Default::default()
    });
    let qualify = |assignee: &str| {
        CommandRequest::Qualify(pb::QualifyLeadRequest {
            lead_id: lead_id.clone(),
            expected_version: Some(1),
            occurred_at: hours_ago(90),
            score: Some(70),
            note: "asked for a demo".into(),
            assignee: assignee.into(),
            ..Default::default()
        })
    };
    let assign = CommandRequest::Assign(pb::AssignLeadRequest {
        lead_id: lead_id.clone(),
        occurred_at: hours_ago(85),
        assignee: "grace".into(),
        ..Default::default()
    });
    let accept =
        CommandRequest::Accept(pb::AcceptLeadRequest { lead_id: lead_id.clone(), occurred_at: hours_ago(80), ..Default::default() });
    let reject = CommandRequest::Reject(pb::RejectLeadRequest {
        lead_id: lead_id.clone(),
        occurred_at: hours_ago(80),
        reason: "no-budget".into(),
        note: "next fiscal year".into(),
        ..Default::default()
    });
    let won = CommandRequest::Close(pb::CloseLeadRequest {
        lead_id: lead_id.clone(),
        occurred_at: hours_ago(62),
        outcome: pb::Outcome::Won as i32,
        amount_minor: 120_000,
        currency: "EUR".into(),
        note: "signed".into(),
        ..Default::default()
    });
    let lost = CommandRequest::Close(pb::CloseLeadRequest {
        lead_id: lead_id.clone(),
        occurred_at: hours_ago(60),
        outcome: pb::Outcome::Lost as i32,
        lost_reason: "chose-competitor".into(),
        ..Default::default()
    });
    let feedback = CommandRequest::RecordFeedback(pb::RecordFeedbackRequest {
        lead_id: lead_id.clone(),
        occurred_at: hours_ago(65),
        rating: 4,
        reason_codes: vec!["good-fit".into(), "fast-reply".into()],
        comment: "well prepared".into(),
        ..Default::default()
    });
    let erase = CommandRequest::Erase(pb::EraseLeadRequest {
        lead_id: lead_id.clone(),
        occurred_at: hours_ago(50),
        reason: "ticket-4711".into(),
        ..Default::default()
    });
    vec![
        vec![capture.clone()],
        vec![capture.clone(), qualify("")],
        vec![capture.clone(), qualify("grace")],
        vec![capture.clone(), qualify(""), assign, accept.clone()],
        vec![capture.clone(), qualify("grace"), reject],
        vec![capture.clone(), qualify("grace"), accept.clone(), feedback.clone(), won],
        vec![capture.clone(), lost.clone()],
        vec![capture.clone(), qualify("grace"), erase],
        vec![capture, qualify("grace"), accept, feedback, lost],
    ]
}

/// A history through validation, `decide` and `evolve`: the lead it leaves
/// and its events. Panics when a step is refused (the fixtures are wrong).
pub fn replay(steps: &[CommandRequest]) -> (Lead, Vec<LeadEvent>) {
    let mut lead: Option<Lead> = None;
    let mut events = Vec::new();
    for step in steps {
        let command = validate_command(step).unwrap_or_else(|status| panic!("fixture {step:?}: {status}"));
        let event = decide(lead.as_ref(), &command, now()).unwrap_or_else(|e| panic!("fixture {step:?}: {e}"));
        lead = Some(evolve(lead, &event));
        events.push(event);
    }
    (lead.expect("a history has at least one step"), events)
}

/// Valid DefineSlaPolicy requests: the defaults, and a full one with a
/// working calendar.
pub fn sla_policy_requests() -> Vec<pb::DefineSlaPolicyRequest> {
    let full = pb::SlaPolicy {
        accept_within: Some(prost_types::Duration { seconds: 8 * 3600, nanos: 0 }),
        close_within: Some(prost_types::Duration { seconds: 30 * 24 * 3600, nanos: 0 }),
        mql_target: Some(400),
        mql_to_sql_rate_target: Some(0.35),
        won_amount_target: Some(pb::CurrencyAmount { amount_minor: 5_000_000, currency: "EUR".into() }),
        review_by: "2026-06-30".into(),
        calendar: Some(pb::WorkingCalendar {
            time_zone: "Europe/Berlin".into(),
            working_days: vec![1, 2, 3, 4, 5],
            opens: "09:00".into(),
            closes: "17:00".into(),
            holidays: vec!["2026-05-01".into(), "2026-12-25".into()],
        }),
        effective_from: hours_ago(24),
    };
    vec![
        pb::DefineSlaPolicyRequest { request_id: String::new(), policy: None },
        pb::DefineSlaPolicyRequest { request_id: "policy-2026".into(), policy: Some(full) },
    ]
}
