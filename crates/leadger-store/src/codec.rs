//! Persisted event format, version 1: the JSON payload stored in the log.
//!
//! These types are kept apart from the domain's and converted by hand, so the
//! domain can change without rewriting history. Personal fields (email, name,
//! phone, note, comment) are stored sealed under the lead's [`DataKey`].
//! A new payload shape gets a new `schema_version`; decoding keeps every old one.

use leadger_domain::calendar::WorkingCalendar;
use leadger_domain::journey::{Journey, JourneyStep, StageEntry};
use leadger_domain::sla::{BasisPoints, SlaPolicy};
use leadger_domain::{
    CloseOutcome, Closing, Email, Feedback, Label, LeadDetails, LeadEvent, LeadEventKind, LeadId, Money, Note,
    Qualification, Rating, ReasonCode, Rejection, Score, Stage, Timestamp, ValidationError,
};
use serde::{Deserialize, Serialize};

use crate::vault::{DataKey, VaultError};

pub const SCHEMA_VERSION: i32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    #[error("unsupported schema_version {version} of {event_type}")]
    UnknownSchema { event_type: String, version: i32 },
    #[error("payload of {event_type} is not valid JSON for its schema: {source}")]
    Json { event_type: String, source: serde_json::Error },
    #[error("payload of {event_type} holds an invalid value: {source}")]
    Invalid { event_type: String, source: ValidationError },
    #[error(transparent)]
    Sealed(#[from] VaultError),
    #[error("{event_type} carries personal data but no data key was given to seal it")]
    MissingKey { event_type: String },
}

/// The log's `event_type` for a lead event, e.g. `lead.captured`.
pub fn event_type(kind: &LeadEventKind) -> String {
    format!("lead.{}", kind.name())
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CapturedV1 {
    email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    company: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    phone: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    campaign: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    persona: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    external_ref: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct QualifiedV1 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    score: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    assignee: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignedV1 {
    assignee: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AcceptedV1 {
    owner: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectedV1 {
    reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OutcomeV1 {
    Won,
    Lost,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClosedV1 {
    outcome: OutcomeV1,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    amount_minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lost_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedbackRecordedV1 {
    rating: u8,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    reason_codes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    comment: Option<String>,
}

/// The lead's data key was destroyed. `reason` is an operator's reference
/// (a ticket id), not personal data, so it is stored in clear.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ErasedV1 {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

fn text(label: &Option<Label>) -> Option<String> {
    label.as_ref().map(|l| l.as_str().to_string())
}

/// Encodes an event's payload as v1 JSON, sealing its personal fields with
/// the lead's key (needed only when the event carries personal data).
pub fn encode(kind: &LeadEventKind, key: Option<&DataKey>) -> Result<String, CodecError> {
    let missing_key = || CodecError::MissingKey { event_type: event_type(kind) };
    let seal = |field: &'static str, value: Option<&str>| -> Result<Option<String>, CodecError> {
        value.map(|v| key.map(|k| k.seal(field, v)).ok_or_else(missing_key)).transpose()
    };
    let note = |note: &Option<Note>| seal("note", note.as_ref().map(Note::as_str));
    let json = match kind {
        LeadEventKind::Captured(d) => serde_json::to_string(&CapturedV1 {
            email: seal("email", Some(d.email.as_str()))?.ok_or_else(missing_key)?,
            name: seal("name", d.name.as_ref().map(Label::as_str))?,
            company: text(&d.company),
            phone: seal("phone", d.phone.as_ref().map(Label::as_str))?,
            source: text(&d.source),
            campaign: text(&d.campaign),
            persona: text(&d.persona),
            external_ref: text(&d.external_ref),
        }),
        LeadEventKind::Qualified(q) => serde_json::to_string(&QualifiedV1 {
            score: q.score.map(|s| s.value()),
            note: note(&q.note)?,
            assignee: text(&q.assignee),
        }),
        LeadEventKind::Assigned { assignee } => {
            serde_json::to_string(&AssignedV1 { assignee: assignee.as_str().to_string() })
        }
        LeadEventKind::Accepted { owner } => serde_json::to_string(&AcceptedV1 { owner: owner.as_str().to_string() }),
        LeadEventKind::Rejected(r) => {
            serde_json::to_string(&RejectedV1 { reason: r.reason.as_str().to_string(), note: note(&r.note)? })
        }
        LeadEventKind::Closed(c) => serde_json::to_string(&match &c.outcome {
            CloseOutcome::Won { amount } => ClosedV1 {
                outcome: OutcomeV1::Won,
                amount_minor: amount.as_ref().map(|m| m.amount_minor),
                currency: amount.as_ref().map(|m| m.currency.as_str().to_string()),
                lost_reason: None,
                note: note(&c.note)?,
            },
            CloseOutcome::Lost { reason } => ClosedV1 {
                outcome: OutcomeV1::Lost,
                amount_minor: None,
                currency: None,
                lost_reason: Some(reason.as_str().to_string()),
                note: note(&c.note)?,
            },
        }),
        LeadEventKind::FeedbackRecorded(f) => serde_json::to_string(&FeedbackRecordedV1 {
            rating: f.rating.value(),
            reason_codes: f.reason_codes.iter().map(|c| c.as_str().to_string()).collect(),
            comment: seal("comment", f.comment.as_ref().map(Note::as_str))?,
        }),
        LeadEventKind::Erased { reason } => serde_json::to_string(&ErasedV1 { reason: text(reason) }),
    };
    Ok(json.expect("payload structs always serialize"))
}

/// Decodes a stored payload back into the domain event, opening its sealed
/// fields with the lead's key.
pub fn decode(
    event_type: &str,
    schema_version: i32,
    payload: &str,
    occurred_at: Timestamp,
    key: &DataKey,
) -> Result<LeadEvent, CodecError> {
    if schema_version != SCHEMA_VERSION {
        return Err(CodecError::UnknownSchema { event_type: event_type.to_string(), version: schema_version });
    }
    let json_error = |source| CodecError::Json { event_type: event_type.to_string(), source };
    let invalid = |source| CodecError::Invalid { event_type: event_type.to_string(), source };
    let open = |field: &'static str, sealed: Option<String>| -> Result<Option<String>, CodecError> {
        sealed.map(|s| key.open(field, &s)).transpose().map_err(CodecError::from)
    };
    let label = |field: &str, value: Option<String>| Label::parse_optional(field, value.as_deref().unwrap_or(""));
    let note = |sealed: Option<String>, field: &'static str| -> Result<Option<Note>, CodecError> {
        let text = open(field, sealed)?;
        Note::parse_optional(field, text.as_deref().unwrap_or("")).map_err(invalid)
    };
    let kind = match event_type {
        "lead.captured" => {
            let v: CapturedV1 = serde_json::from_str(payload).map_err(json_error)?;
            let email = key.open("email", &v.email)?;
            LeadEventKind::Captured(LeadDetails {
                email: Email::parse("email", &email).map_err(invalid)?,
                name: label("name", open("name", v.name)?).map_err(invalid)?,
                company: label("company", v.company).map_err(invalid)?,
                phone: label("phone", open("phone", v.phone)?).map_err(invalid)?,
                source: label("source", v.source).map_err(invalid)?,
                campaign: label("campaign", v.campaign).map_err(invalid)?,
                persona: label("persona", v.persona).map_err(invalid)?,
                external_ref: label("external_ref", v.external_ref).map_err(invalid)?,
            })
        }
        "lead.qualified" => {
            let v: QualifiedV1 = serde_json::from_str(payload).map_err(json_error)?;
            LeadEventKind::Qualified(Qualification {
                score: v.score.map(|s| Score::parse("score", i64::from(s))).transpose().map_err(invalid)?,
                note: note(v.note, "note")?,
                assignee: label("assignee", v.assignee).map_err(invalid)?,
            })
        }
        "lead.assigned" => {
            let v: AssignedV1 = serde_json::from_str(payload).map_err(json_error)?;
            LeadEventKind::Assigned { assignee: Label::parse_required("assignee", &v.assignee).map_err(invalid)? }
        }
        "lead.accepted" => {
            let v: AcceptedV1 = serde_json::from_str(payload).map_err(json_error)?;
            LeadEventKind::Accepted { owner: Label::parse_required("owner", &v.owner).map_err(invalid)? }
        }
        "lead.rejected" => {
            let v: RejectedV1 = serde_json::from_str(payload).map_err(json_error)?;
            LeadEventKind::Rejected(Rejection {
                reason: ReasonCode::parse("reason", &v.reason).map_err(invalid)?,
                note: note(v.note, "note")?,
            })
        }
        "lead.closed" => {
            let v: ClosedV1 = serde_json::from_str(payload).map_err(json_error)?;
            let outcome = match v.outcome {
                OutcomeV1::Won => CloseOutcome::Won {
                    amount: match (v.amount_minor, v.currency) {
                        (Some(amount), Some(currency)) => {
                            Some(Money::parse("amount_minor", amount, "currency", &currency).map_err(invalid)?)
                        }
                        _ => None,
                    },
                },
                OutcomeV1::Lost => CloseOutcome::Lost {
                    reason: ReasonCode::parse("lost_reason", v.lost_reason.as_deref().unwrap_or(""))
                        .map_err(invalid)?,
                },
            };
            LeadEventKind::Closed(Closing { outcome, note: note(v.note, "note")? })
        }
        "lead.feedback_recorded" => {
            let v: FeedbackRecordedV1 = serde_json::from_str(payload).map_err(json_error)?;
            LeadEventKind::FeedbackRecorded(Feedback {
                rating: Rating::parse("rating", i64::from(v.rating)).map_err(invalid)?,
                reason_codes: v
                    .reason_codes
                    .iter()
                    .map(|c| ReasonCode::parse("reason_codes", c))
                    .collect::<Result<_, _>>()
                    .map_err(invalid)?,
                comment: note(v.comment, "comment")?,
            })
        }
        "lead.erased" => {
            let v: ErasedV1 = serde_json::from_str(payload).map_err(json_error)?;
            LeadEventKind::Erased { reason: label("reason", v.reason).map_err(invalid)? }
        }
        other => return Err(CodecError::UnknownType(other.to_string())),
    };
    Ok(LeadEvent { occurred_at, kind })
}

/// Reads a stored payload as a [`JourneyStep`] for the read models, without
/// the lead's key: personal fields are never opened.
pub fn journey_step(event_type: &str, schema_version: i32, payload: &str) -> Result<JourneyStep, CodecError> {
    if schema_version != SCHEMA_VERSION {
        return Err(CodecError::UnknownSchema { event_type: event_type.to_string(), version: schema_version });
    }
    let json_error = |source| CodecError::Json { event_type: event_type.to_string(), source };
    let invalid = |source| CodecError::Invalid { event_type: event_type.to_string(), source };
    Ok(match event_type {
        "lead.captured" => {
            let v: CapturedV1 = serde_json::from_str(payload).map_err(json_error)?;
            JourneyStep::Captured {
                source: v.source.unwrap_or_default(),
                campaign: v.campaign.unwrap_or_default(),
                persona: v.persona.unwrap_or_default(),
            }
        }
        "lead.qualified" => {
            let v: QualifiedV1 = serde_json::from_str(payload).map_err(json_error)?;
            JourneyStep::Qualified { assignee: v.assignee.unwrap_or_default() }
        }
        "lead.assigned" => {
            let v: AssignedV1 = serde_json::from_str(payload).map_err(json_error)?;
            JourneyStep::Assigned { assignee: v.assignee }
        }
        "lead.accepted" => {
            let v: AcceptedV1 = serde_json::from_str(payload).map_err(json_error)?;
            JourneyStep::Accepted { owner: v.owner }
        }
        "lead.rejected" => {
            let v: RejectedV1 = serde_json::from_str(payload).map_err(json_error)?;
            JourneyStep::Rejected { reason: v.reason }
        }
        "lead.closed" => {
            let v: ClosedV1 = serde_json::from_str(payload).map_err(json_error)?;
            match v.outcome {
                OutcomeV1::Won => JourneyStep::Won {
                    amount: match (v.amount_minor, v.currency) {
                        (Some(amount), Some(currency)) => {
                            Some(Money::parse("amount_minor", amount, "currency", &currency).map_err(invalid)?)
                        }
                        _ => None,
                    },
                },
                OutcomeV1::Lost => JourneyStep::Lost { reason: v.lost_reason.unwrap_or_default() },
            }
        }
        "lead.feedback_recorded" => {
            let v: FeedbackRecordedV1 = serde_json::from_str(payload).map_err(json_error)?;
            JourneyStep::FeedbackRecorded { rating: v.rating }
        }
        "lead.erased" => {
            let _: ErasedV1 = serde_json::from_str(payload).map_err(json_error)?;
            JourneyStep::Erased
        }
        other => return Err(CodecError::UnknownType(other.to_string())),
    })
}

/// A journey as the read-model table stores it (rebuildable from the log,
/// so not versioned like events).
#[derive(Serialize, Deserialize)]
struct JourneyRow {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    source: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    campaign: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    persona: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    owner: String,
    /// `[stage, occurred_at_us, recorded_at_us]` per entry.
    entries: Vec<(String, i64, i64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    won_amount: Option<(i64, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    rejection_reasons: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lost_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ratings: Vec<u8>,
    /// `[occurred_at_us, assignee]` per routing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    assignments: Vec<(i64, String)>,
}

pub fn encode_journey(journey: &Journey) -> String {
    let row = JourneyRow {
        source: journey.source.clone(),
        campaign: journey.campaign.clone(),
        persona: journey.persona.clone(),
        owner: journey.owner.clone(),
        entries: journey
            .entries
            .iter()
            .map(|e| (e.stage.as_str().to_string(), e.at.as_micros(), e.recorded_at.as_micros()))
            .collect(),
        won_amount: journey.won_amount.as_ref().map(|m| (m.amount_minor, m.currency.as_str().to_string())),
        rejection_reasons: journey.rejection_reasons.clone(),
        lost_reason: journey.lost_reason.clone(),
        ratings: journey.ratings.clone(),
        assignments: journey.assignments.iter().map(|(at, who)| (at.as_micros(), who.clone())).collect(),
    };
    serde_json::to_string(&row).expect("journey rows always serialize")
}

pub fn decode_journey(lead_id: LeadId, text: &str) -> Result<Journey, String> {
    let row: JourneyRow = serde_json::from_str(text).map_err(|e| format!("journey of lead {lead_id}: {e}"))?;
    let entries = row
        .entries
        .iter()
        .map(|(stage, at, recorded_at)| {
            let stage = Stage::parse(stage).ok_or_else(|| format!("journey of lead {lead_id}: stage {stage:?}"))?;
            let time =
                |us: i64| Timestamp::from_micros(us).ok_or_else(|| format!("journey of lead {lead_id}: time {us}"));
            Ok(StageEntry { stage, at: time(*at)?, recorded_at: time(*recorded_at)? })
        })
        .collect::<Result<Vec<_>, String>>()?;
    if entries.is_empty() {
        return Err(format!("journey of lead {lead_id} has no stage entry"));
    }
    let won_amount = row
        .won_amount
        .map(|(amount, currency)| Money::parse("amount_minor", amount, "currency", &currency))
        .transpose()
        .map_err(|e| format!("journey of lead {lead_id}: {e}"))?;
    Ok(Journey {
        lead_id,
        source: row.source,
        campaign: row.campaign,
        persona: row.persona,
        owner: row.owner,
        entries,
        won_amount,
        rejection_reasons: row.rejection_reasons,
        lost_reason: row.lost_reason,
        ratings: row.ratings,
        assignments: row
            .assignments
            .into_iter()
            .map(|(at, who)| {
                Timestamp::from_micros(at)
                    .map(|at| (at, who))
                    .ok_or_else(|| format!("journey of lead {lead_id}: assignment time {at}"))
            })
            .collect::<Result<_, _>>()?,
    })
}

/// The log's `event_type` of an SLA policy version.
pub const SLA_POLICY_DEFINED: &str = "sla.policy_defined";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CalendarV1 {
    time_zone: String,
    working_days: Vec<i32>,
    opens: String,
    closes: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    holidays: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlaPolicyDefinedV1 {
    accept_within_us: i64,
    close_within_us: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mql_target: Option<u64>,
    /// Basis points (1/10,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mql_to_sql_rate_target_bp: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    won_amount_target_minor: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    won_amount_target_currency: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    review_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    calendar: Option<CalendarV1>,
    effective_from_us: i64,
}

/// Encodes an SLA policy version as v1 JSON (no personal data).
pub fn encode_sla_policy(policy: &SlaPolicy) -> String {
    let v = SlaPolicyDefinedV1 {
        accept_within_us: policy.accept_within_us,
        close_within_us: policy.close_within_us,
        mql_target: policy.mql_target,
        mql_to_sql_rate_target_bp: policy.mql_to_sql_rate_target.map(|r| r.value()),
        won_amount_target_minor: policy.won_amount_target.as_ref().map(|m| m.amount_minor),
        won_amount_target_currency: policy.won_amount_target.as_ref().map(|m| m.currency.as_str().to_string()),
        review_by: policy.review_by.map(|d| d.to_string()),
        calendar: policy.calendar.as_ref().map(|c| CalendarV1 {
            time_zone: c.zone_name().to_string(),
            working_days: c.working_days(),
            opens: c.opens(),
            closes: c.closes(),
            holidays: c.holidays(),
        }),
        effective_from_us: policy.effective_from.as_micros(),
    };
    serde_json::to_string(&v).expect("policy payloads always serialize")
}

/// Decodes a stored SLA policy version.
pub fn decode_sla_policy(schema_version: i32, payload: &str) -> Result<SlaPolicy, CodecError> {
    let event_type = SLA_POLICY_DEFINED;
    if schema_version != SCHEMA_VERSION {
        return Err(CodecError::UnknownSchema { event_type: event_type.to_string(), version: schema_version });
    }
    let invalid = |source| CodecError::Invalid { event_type: event_type.to_string(), source };
    let v: SlaPolicyDefinedV1 = serde_json::from_str(payload)
        .map_err(|source| CodecError::Json { event_type: event_type.to_string(), source })?;
    let won_amount_target = match (v.won_amount_target_minor, v.won_amount_target_currency) {
        (Some(amount), Some(currency)) => {
            Some(Money::parse("won_amount_target", amount, "won_amount_target", &currency).map_err(invalid)?)
        }
        _ => None,
    };
    let calendar = v
        .calendar
        .map(|c| WorkingCalendar::parse("calendar", &c.time_zone, &c.working_days, &c.opens, &c.closes, &c.holidays))
        .transpose()
        .map_err(invalid)?;
    Ok(SlaPolicy {
        accept_within_us: SlaPolicy::limit("accept_within", v.accept_within_us).map_err(invalid)?,
        close_within_us: SlaPolicy::limit("close_within", v.close_within_us).map_err(invalid)?,
        mql_target: v.mql_target,
        mql_to_sql_rate_target: v
            .mql_to_sql_rate_target_bp
            .map(|bp| {
                BasisPoints::from_basis_points(bp)
                    .ok_or_else(|| ValidationError::new("mql_to_sql_rate_target", "above 10,000 basis points"))
            })
            .transpose()
            .map_err(invalid)?,
        won_amount_target,
        review_by: SlaPolicy::parse_review_by("review_by", v.review_by.as_deref().unwrap_or("")).map_err(invalid)?,
        calendar,
        effective_from: Timestamp::from_micros(v.effective_from_us)
            .ok_or_else(|| invalid(ValidationError::new("effective_from", "out of range")))?,
    })
}

/// An event as analytics consumers see it: its public type name (e.g.
/// `LeadQualified`) and its business attributes, without any personal field.
#[derive(Debug, Clone, PartialEq)]
pub struct PublicEvent {
    pub type_name: &'static str,
    /// The stage the lead is in after this event, for events that move it.
    pub stage: Option<&'static str>,
    /// Business attributes by name; absent values are left out.
    pub attributes: serde_json::Map<String, serde_json::Value>,
}

/// Reads a stored payload into its [`PublicEvent`] without the lead's key:
/// sealed personal fields are never opened, only left out.
pub fn public_event(event_type: &str, schema_version: i32, payload: &str) -> Result<PublicEvent, CodecError> {
    use serde_json::{Map, Value};

    if schema_version != SCHEMA_VERSION {
        return Err(CodecError::UnknownSchema { event_type: event_type.to_string(), version: schema_version });
    }
    let json_error = |source| CodecError::Json { event_type: event_type.to_string(), source };
    let mut attributes = Map::new();
    let mut put = |name: &str, value: Option<Value>| {
        if let Some(value) = value {
            attributes.insert(name.to_string(), value);
        }
    };
    if event_type == SLA_POLICY_DEFINED {
        let Value::Object(attributes) = serde_json::from_str::<Value>(payload).map_err(json_error)? else {
            return Err(CodecError::UnknownType(format!("{event_type} payload is not a JSON object")));
        };
        return Ok(PublicEvent { type_name: "SlaPolicyDefined", stage: None, attributes });
    }
    let (type_name, stage) = match event_type {
        "lead.captured" => {
            let v: CapturedV1 = serde_json::from_str(payload).map_err(json_error)?;
            put("company", v.company.map(Value::from));
            put("source", v.source.map(Value::from));
            put("campaign", v.campaign.map(Value::from));
            put("persona", v.persona.map(Value::from));
            put("external_ref", v.external_ref.map(Value::from));
            ("LeadCaptured", Some("CAPTURED"))
        }
        "lead.qualified" => {
            let v: QualifiedV1 = serde_json::from_str(payload).map_err(json_error)?;
            put("score", v.score.map(Value::from));
            put("assignee", v.assignee.map(Value::from));
            ("LeadQualified", Some("MQL"))
        }
        "lead.assigned" => {
            let v: AssignedV1 = serde_json::from_str(payload).map_err(json_error)?;
            put("assignee", Some(Value::from(v.assignee)));
            ("LeadAssigned", None)
        }
        "lead.accepted" => {
            let v: AcceptedV1 = serde_json::from_str(payload).map_err(json_error)?;
            put("owner", Some(Value::from(v.owner)));
            ("LeadAccepted", Some("SQL"))
        }
        "lead.rejected" => {
            let v: RejectedV1 = serde_json::from_str(payload).map_err(json_error)?;
            put("reason", Some(Value::from(v.reason)));
            ("LeadRejected", Some("REJECTED"))
        }
        "lead.closed" => {
            let v: ClosedV1 = serde_json::from_str(payload).map_err(json_error)?;
            let amount = match (v.amount_minor, v.currency) {
                (Some(amount_minor), Some(currency)) => {
                    let mut amount = Map::new();
                    amount.insert("amount_minor".to_string(), Value::from(amount_minor));
                    amount.insert("currency".to_string(), Value::from(currency));
                    Some(Value::Object(amount))
                }
                _ => None,
            };
            put("amount", amount);
            put("lost_reason", v.lost_reason.map(Value::from));
            let stage = match v.outcome {
                OutcomeV1::Won => "WON",
                OutcomeV1::Lost => "LOST",
            };
            ("LeadClosed", Some(stage))
        }
        "lead.feedback_recorded" => {
            let v: FeedbackRecordedV1 = serde_json::from_str(payload).map_err(json_error)?;
            put("rating", Some(Value::from(v.rating)));
            if !v.reason_codes.is_empty() {
                put("reason_codes", Some(Value::from(v.reason_codes)));
            }
            ("LeadFeedbackRecorded", None)
        }
        // Downstream stores purge what they hold of the lead; the reason is
        // an operator's reference, not personal data.
        "lead.erased" => {
            let v: ErasedV1 = serde_json::from_str(payload).map_err(json_error)?;
            put("reason", v.reason.map(Value::from));
            ("LeadErased", None)
        }
        other => return Err(CodecError::UnknownType(other.to_string())),
    };
    Ok(PublicEvent { type_name, stage, attributes })
}

#[cfg(test)]
mod tests {
    use leadger_domain::{Email, LeadId};

    use super::*;
    use crate::Vault;

    fn label(text: &str) -> Option<Label> {
        Label::parse_optional("test", text).expect("valid label")
    }

    #[test]
    fn the_public_view_carries_business_attributes_and_no_personal_field() {
        let vault = Vault::from_key([3; 32]);
        let (key, _) = vault.new_data_key(LeadId::from_uuid(uuid::Uuid::from_u128(9)));
        let captured = LeadEventKind::Captured(LeadDetails {
            email: Email::parse("email", "ada@example.com").expect("valid"),
            name: label("Ada Lovelace"),
            company: label("Analytical Engines"),
            phone: label("+44 20 7946 0000"),
            source: label("webinar"),
            campaign: None,
            persona: label("cto"),
            external_ref: None,
        });
        let payload = encode(&captured, Some(&key)).expect("encodes");
        let public = public_event("lead.captured", SCHEMA_VERSION, &payload).expect("reads");
        assert_eq!(public.type_name, "LeadCaptured");
        assert_eq!(public.stage, Some("CAPTURED"));
        let json = serde_json::Value::Object(public.attributes).to_string();
        assert_eq!(json, r#"{"company":"Analytical Engines","persona":"cto","source":"webinar"}"#);

        let feedback = LeadEventKind::FeedbackRecorded(Feedback {
            rating: Rating::parse("rating", 2).expect("valid"),
            reason_codes: vec![ReasonCode::parse("reason_codes", "no-budget").expect("valid")],
            comment: Note::parse_optional("comment", "call was rude").expect("valid"),
        });
        let payload = encode(&feedback, Some(&key)).expect("encodes");
        let public = public_event("lead.feedback_recorded", SCHEMA_VERSION, &payload).expect("reads");
        let json = serde_json::Value::Object(public.attributes).to_string();
        assert_eq!(json, r#"{"rating":2,"reason_codes":["no-budget"]}"#);
    }

    #[test]
    fn unknown_types_and_schema_versions_are_errors() {
        assert!(matches!(public_event("lead.teleported", 1, "{}"), Err(CodecError::UnknownType(_))));
        assert!(matches!(public_event("lead.assigned", 7, "{}"), Err(CodecError::UnknownSchema { .. })));
        assert!(matches!(public_event("lead.assigned", 1, "{}"), Err(CodecError::Json { .. })));
    }
}
