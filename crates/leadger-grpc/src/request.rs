//! Requests → domain commands. Every field is validated here and every
//! violation is reported at once, named by its request field.

use leadger_domain::calendar::WorkingCalendar;
use leadger_domain::sla::{self, BasisPoints, SlaPolicy};
use leadger_domain::{
    Action, CloseOutcome, Closing, Command, Email, Feedback, Label, LeadDetails, LeadId, Money, Note, Qualification,
    Rating, ReasonCode, Rejection, Score, Timestamp, ValidationError,
};
use leadger_proto::leads::v1 as pb;
use tonic::Status;

use crate::error::invalid_argument;

/// The most reason codes one feedback may carry.
const MAX_REASON_CODES: usize = 32;
const MAX_REQUEST_ID_CHARS: usize = 128;

/// Collects violations so a client learns about every bad field at once.
#[derive(Default)]
pub(crate) struct Violations(Vec<ValidationError>);

impl Violations {
    pub fn check<T>(&mut self, result: Result<T, ValidationError>) -> Option<T> {
        result.map_err(|violation| self.0.push(violation)).ok()
    }

    pub fn finish(self) -> Result<(), Status> {
        if self.0.is_empty() { Ok(()) } else { Err(invalid_argument(self.0)) }
    }
}

/// A validated command and the request id it came with.
pub(crate) struct ValidCommand {
    pub command: Command,
    pub request_id: Option<String>,
}

pub(crate) fn request_id(field: &str, text: &str) -> Result<Option<String>, ValidationError> {
    if text.is_empty() {
        return Ok(None);
    }
    if text.chars().count() > MAX_REQUEST_ID_CHARS || text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ValidationError::new(field, "must be at most 128 characters without spaces (a UUID is best)"));
    }
    Ok(Some(text.to_string()))
}

pub(crate) fn timestamp(field: &str, value: &prost_types::Timestamp) -> Result<Timestamp, ValidationError> {
    Timestamp::from_unix(field, value.seconds, value.nanos)
}

/// The fields every command has.
struct Envelope<'a> {
    request_id: &'a str,
    lead_id: &'a str,
    expected_version: Option<u64>,
    occurred_at: Option<&'a prost_types::Timestamp>,
}

/// The envelope of every command request: the fields they all share.
trait CommandRequest {
    fn envelope(&self) -> Envelope<'_>;
}

macro_rules! command_requests {
    ($($request:ty),* $(,)?) => {$(
        impl CommandRequest for $request {
            fn envelope(&self) -> Envelope<'_> {
                Envelope {
                    request_id: &self.request_id,
                    lead_id: &self.lead_id,
                    expected_version: self.expected_version,
                    occurred_at: self.occurred_at.as_ref(),
                }
            }
        }
    )*};
}

command_requests!(
    pb::CaptureLeadRequest,
    pb::QualifyLeadRequest,
    pb::AssignLeadRequest,
    pb::AcceptLeadRequest,
    pb::RejectLeadRequest,
    pb::CloseLeadRequest,
    pb::RecordFeedbackRequest,
    pb::EraseLeadRequest,
);

/// Builds the command once the action's own fields validated; `new_lead` lets
/// an empty `lead_id` mean "make one" (CaptureLead).
fn command(
    envelope: Envelope<'_>,
    new_lead: bool,
    action: impl FnOnce(&mut Violations) -> Option<Action>,
) -> Result<ValidCommand, Status> {
    let mut violations = Violations::default();
    let request_id = violations.check(request_id("request_id", envelope.request_id));
    let lead_id = if new_lead && envelope.lead_id.is_empty() {
        Some(LeadId::from_uuid(uuid::Uuid::now_v7()))
    } else if envelope.lead_id.is_empty() {
        violations.check(Err(ValidationError::new("lead_id", "is required")))
    } else {
        violations.check(LeadId::parse("lead_id", envelope.lead_id))
    };
    if envelope.expected_version.is_some_and(|v| v > i64::MAX as u64) {
        violations.check::<()>(Err(ValidationError::new("expected_version", "is out of range")));
    }
    let occurred_at = envelope.occurred_at.and_then(|t| violations.check(timestamp("occurred_at", t)));
    let action = action(&mut violations);
    violations.finish()?;
    match (lead_id, action) {
        (Some(lead_id), Some(action)) => Ok(ValidCommand {
            command: Command { lead_id, expected_version: envelope.expected_version, occurred_at, action },
            request_id: request_id.flatten(),
        }),
        _ => Err(Status::internal("validation passed without a lead id or action")),
    }
}

fn label(v: &mut Violations, field: &str, text: &str) -> Option<Option<Label>> {
    v.check(Label::parse_optional(field, text))
}

fn note(v: &mut Violations, field: &str, text: &str) -> Option<Option<Note>> {
    v.check(Note::parse_optional(field, text))
}

pub(crate) fn capture(r: &pb::CaptureLeadRequest) -> Result<ValidCommand, Status> {
    command(r.envelope(), true, |v| {
        let email = v.check(Email::parse("email", &r.email));
        let name = label(v, "name", &r.name);
        let company = label(v, "company", &r.company);
        let phone = v.check(phone(&r.phone));
        let source = label(v, "source", &r.source);
        let campaign = label(v, "campaign", &r.campaign);
        let persona = label(v, "persona", &r.persona);
        let external_ref = label(v, "external_ref", &r.external_ref);
        Some(Action::Capture(LeadDetails {
            email: email?,
            name: name?,
            company: company?,
            phone: phone?,
            source: source?,
            campaign: campaign?,
            persona: persona?,
            external_ref: external_ref?,
        }))
    })
}

fn phone(text: &str) -> Result<Option<Label>, ValidationError> {
    let phone = Label::parse_optional("phone", text)?;
    if let Some(p) = &phone
        && (p.as_str().chars().count() > 32 || !p.as_str().chars().all(|c| c.is_ascii_digit() || " +-().".contains(c)))
    {
        return Err(ValidationError::new("phone", "must be at most 32 digits, spaces and + - ( ) ."));
    }
    Ok(phone)
}

pub(crate) fn qualify(r: &pb::QualifyLeadRequest) -> Result<ValidCommand, Status> {
    command(r.envelope(), false, |v| {
        let score = r.score.map(|s| v.check(Score::parse("score", i64::from(s))));
        let note = note(v, "note", &r.note);
        let assignee = label(v, "assignee", &r.assignee);
        Some(Action::Qualify(Qualification {
            score: score.map_or(Some(None), |s| s.map(Some))?,
            note: note?,
            assignee: assignee?,
        }))
    })
}

pub(crate) fn assign(r: &pb::AssignLeadRequest) -> Result<ValidCommand, Status> {
    command(r.envelope(), false, |v| {
        Some(Action::Assign { assignee: v.check(Label::parse_required("assignee", &r.assignee))? })
    })
}

pub(crate) fn accept(r: &pb::AcceptLeadRequest) -> Result<ValidCommand, Status> {
    command(r.envelope(), false, |v| Some(Action::Accept { owner: label(v, "owner", &r.owner)? }))
}

pub(crate) fn reject(r: &pb::RejectLeadRequest) -> Result<ValidCommand, Status> {
    command(r.envelope(), false, |v| {
        let reason = v.check(ReasonCode::parse("reason", &r.reason));
        let note = note(v, "note", &r.note);
        Some(Action::Reject(Rejection { reason: reason?, note: note? }))
    })
}

pub(crate) fn erase(r: &pb::EraseLeadRequest) -> Result<ValidCommand, Status> {
    command(r.envelope(), false, |v| Some(Action::Erase { reason: label(v, "reason", &r.reason)? }))
}

pub(crate) fn close(r: &pb::CloseLeadRequest) -> Result<ValidCommand, Status> {
    command(r.envelope(), false, |v| {
        let note = note(v, "note", &r.note);
        let outcome = match pb::Outcome::try_from(r.outcome) {
            Ok(pb::Outcome::Won) => {
                if !r.lost_reason.is_empty() {
                    v.check::<()>(Err(ValidationError::new("lost_reason", "is only for OUTCOME_LOST")));
                }
                let amount = if r.amount_minor == 0 && r.currency.is_empty() {
                    Some(None)
                } else {
                    v.check(Money::parse("amount_minor", r.amount_minor, "currency", &r.currency)).map(Some)
                };
                amount.map(|amount| CloseOutcome::Won { amount })
            }
            Ok(pb::Outcome::Lost) => {
                if r.amount_minor != 0 || !r.currency.is_empty() {
                    v.check::<()>(Err(ValidationError::new(
                        "amount_minor",
                        "amount_minor and currency are only for OUTCOME_WON",
                    )));
                }
                v.check(ReasonCode::parse("lost_reason", &r.lost_reason)).map(|reason| CloseOutcome::Lost { reason })
            }
            Ok(pb::Outcome::Unspecified) => {
                v.check(Err(ValidationError::new("outcome", "is required: OUTCOME_WON or OUTCOME_LOST")))
            }
            Err(_) => v.check(Err(ValidationError::new("outcome", format!("unknown value {}", r.outcome)))),
        };
        Some(Action::Close(Closing { outcome: outcome?, note: note? }))
    })
}

pub(crate) fn record_feedback(r: &pb::RecordFeedbackRequest) -> Result<ValidCommand, Status> {
    command(r.envelope(), false, |v| {
        let rating = v.check(Rating::parse("rating", i64::from(r.rating)));
        if r.reason_codes.len() > MAX_REASON_CODES {
            v.check::<()>(Err(ValidationError::new("reason_codes", "must hold at most 32 codes")));
        }
        let codes: Vec<Option<ReasonCode>> = r
            .reason_codes
            .iter()
            .enumerate()
            .map(|(i, code)| v.check(ReasonCode::parse(&format!("reason_codes[{i}]"), code)))
            .collect();
        let comment = note(v, "comment", &r.comment);
        Some(Action::RecordFeedback(Feedback {
            rating: rating?,
            reason_codes: codes.into_iter().collect::<Option<Vec<_>>>()?,
            comment: comment?,
        }))
    })
}

/// A duration in microseconds; `None` when unset.
fn duration_micros(field: &str, value: Option<&prost_types::Duration>) -> Result<Option<i64>, ValidationError> {
    let Some(d) = value else { return Ok(None) };
    if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) {
        return Err(ValidationError::new(field, "must be a positive duration"));
    }
    d.seconds
        .checked_mul(1_000_000)
        .and_then(|us| us.checked_add(i64::from(d.nanos / 1000)))
        .map(Some)
        .ok_or_else(|| ValidationError::new(field, "is too long"))
}

/// A `DefineSlaPolicy` request's policy; `now` is the default `effective_from`.
pub(crate) fn sla_policy(
    r: &pb::DefineSlaPolicyRequest,
    now: Timestamp,
) -> Result<(SlaPolicy, Option<String>), Status> {
    let mut v = Violations::default();
    let request_id = v.check(request_id("request_id", &r.request_id));
    let default = pb::SlaPolicy::default();
    let p = r.policy.as_ref().unwrap_or(&default);
    let limit = |v: &mut Violations, field: &str, value: Option<&prost_types::Duration>, default: i64| {
        v.check(duration_micros(field, value)).and_then(|us| v.check(SlaPolicy::limit(field, us.unwrap_or(default))))
    };
    let accept_within = limit(&mut v, "policy.accept_within", p.accept_within.as_ref(), sla::DEFAULT_ACCEPT_WITHIN_US);
    let close_within = limit(&mut v, "policy.close_within", p.close_within.as_ref(), sla::DEFAULT_CLOSE_WITHIN_US);
    let rate =
        p.mql_to_sql_rate_target.map(|share| v.check(BasisPoints::parse("policy.mql_to_sql_rate_target", share)));
    let won = p.won_amount_target.as_ref().map(|amount| {
        v.check(Money::parse(
            "policy.won_amount_target.amount_minor",
            amount.amount_minor,
            "policy.won_amount_target.currency",
            &amount.currency,
        ))
    });
    let review_by = v.check(SlaPolicy::parse_review_by("policy.review_by", &p.review_by));
    let calendar = p.calendar.as_ref().map(|c| {
        v.check(WorkingCalendar::parse(
            "policy.calendar",
            &c.time_zone,
            &c.working_days,
            &c.opens,
            &c.closes,
            &c.holidays,
        ))
    });
    let effective_from = p.effective_from.as_ref().map(|t| v.check(timestamp("policy.effective_from", t)));
    v.finish()?;
    let missing = || Status::internal("validation passed with a missing value");
    let policy = SlaPolicy {
        accept_within_us: accept_within.ok_or_else(missing)?,
        close_within_us: close_within.ok_or_else(missing)?,
        mql_target: p.mql_target,
        mql_to_sql_rate_target: rate.map(|r| r.ok_or_else(missing)).transpose()?,
        won_amount_target: won.map(|w| w.ok_or_else(missing)).transpose()?,
        review_by: review_by.ok_or_else(missing)?,
        calendar: calendar.map(|c| c.ok_or_else(missing)).transpose()?,
        effective_from: effective_from.map(|t| t.ok_or_else(missing)).transpose()?.unwrap_or(now),
    };
    Ok((policy, request_id.ok_or_else(missing)?))
}
