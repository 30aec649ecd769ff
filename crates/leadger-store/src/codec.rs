//! Persisted event format, version 1: the JSON payload stored in the log.
//!
//! These types are kept apart from the domain's and converted by hand, so the
//! domain can change without rewriting history. Personal fields (email, name,
//! phone, note, comment) are stored sealed under the lead's [`DataKey`].
//! A new payload shape gets a new `schema_version`; decoding keeps every old one.

use leadger_domain::{
    CloseOutcome, Closing, Email, Feedback, Label, LeadDetails, LeadEvent, LeadEventKind, Money, Note, Qualification,
    Rating, ReasonCode, Rejection, Score, Timestamp, ValidationError,
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
        other => return Err(CodecError::UnknownType(other.to_string())),
    };
    Ok(LeadEvent { occurred_at, kind })
}
