//! Domain values → protobuf messages.

use leadger_domain::sla::SlaPolicy;
use leadger_domain::{CloseOutcome, Label, LeadEvent, LeadEventKind, LeadId, LeadProfile, Note, Stage, Timestamp};
use leadger_proto::leads::v1 as pb;
use leadger_store::codec::PublicEvent;
use leadger_store::{CommandOutcome, LeadSummary, RecordedEvent};

/// Whether personal fields (email, name, phone, note, comment) are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PersonalData {
    Include,
    Redact,
}

pub(crate) fn stage(stage: Stage) -> pb::Stage {
    match stage {
        Stage::Captured => pb::Stage::Captured,
        Stage::Mql => pb::Stage::Mql,
        Stage::Sql => pb::Stage::Sql,
        Stage::Rejected => pb::Stage::Rejected,
        Stage::Won => pb::Stage::Won,
        Stage::Lost => pb::Stage::Lost,
    }
}

pub(crate) fn timestamp(t: Timestamp) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: t.unix_seconds(), nanos: t.subsec_nanos() }
}

pub(crate) fn command_result(outcome: &CommandOutcome) -> pb::CommandResult {
    pb::CommandResult {
        lead_id: outcome.lead_id.to_string(),
        version: outcome.version,
        position: outcome.position,
        stage: stage(outcome.stage) as i32,
        replayed: outcome.replayed,
    }
}

fn text(label: &Option<Label>) -> String {
    label.as_ref().map(|l| l.as_str().to_string()).unwrap_or_default()
}

/// An event of the log; `decoded` is `None` when its payload cannot be read
/// (its lead was erased), and then only the envelope is served.
pub(crate) fn event(recorded: &RecordedEvent, decoded: Option<&LeadEvent>, personal: PersonalData) -> pb::LeadEvent {
    let keep = |value: String| if personal == PersonalData::Include { value } else { String::new() };
    let note = |note: &Option<Note>| keep(note.as_ref().map(|n| n.as_str().to_string()).unwrap_or_default());
    let payload = decoded.map(|event| match &event.kind {
        LeadEventKind::Captured(d) => pb::lead_event::Payload::Captured(pb::LeadCaptured {
            email: keep(d.email.as_str().to_string()),
            name: keep(text(&d.name)),
            company: text(&d.company),
            phone: keep(text(&d.phone)),
            source: text(&d.source),
            campaign: text(&d.campaign),
            persona: text(&d.persona),
            external_ref: text(&d.external_ref),
        }),
        LeadEventKind::Qualified(q) => pb::lead_event::Payload::Qualified(pb::LeadQualified {
            score: q.score.map(|s| i32::from(s.value())),
            note: note(&q.note),
            assignee: text(&q.assignee),
        }),
        LeadEventKind::Assigned { assignee } => {
            pb::lead_event::Payload::Assigned(pb::LeadAssigned { assignee: assignee.as_str().to_string() })
        }
        LeadEventKind::Accepted { owner } => {
            pb::lead_event::Payload::Accepted(pb::LeadAccepted { owner: owner.as_str().to_string() })
        }
        LeadEventKind::Rejected(r) => pb::lead_event::Payload::Rejected(pb::LeadRejected {
            reason: r.reason.as_str().to_string(),
            note: note(&r.note),
        }),
        LeadEventKind::Closed(c) => pb::lead_event::Payload::Closed(match &c.outcome {
            CloseOutcome::Won { amount } => pb::LeadClosed {
                outcome: pb::Outcome::Won as i32,
                amount_minor: amount.as_ref().map_or(0, |m| m.amount_minor),
                currency: amount.as_ref().map(|m| m.currency.as_str().to_string()).unwrap_or_default(),
                lost_reason: String::new(),
                note: note(&c.note),
            },
            CloseOutcome::Lost { reason } => pb::LeadClosed {
                outcome: pb::Outcome::Lost as i32,
                amount_minor: 0,
                currency: String::new(),
                lost_reason: reason.as_str().to_string(),
                note: note(&c.note),
            },
        }),
        LeadEventKind::FeedbackRecorded(f) => pb::lead_event::Payload::FeedbackRecorded(pb::FeedbackRecorded {
            rating: i32::from(f.rating.value()),
            reason_codes: f.reason_codes.iter().map(|c| c.as_str().to_string()).collect(),
            comment: keep(f.comment.as_ref().map(|n| n.as_str().to_string()).unwrap_or_default()),
        }),
        LeadEventKind::Erased { reason } => pb::lead_event::Payload::Erased(pb::LeadErased { reason: text(reason) }),
    });
    envelope(recorded, payload)
}

/// An event of an erased lead: its business attributes as the public view
/// reads them without the (destroyed) data key; personal fields stay empty.
pub(crate) fn erased_event(recorded: &RecordedEvent, public: &PublicEvent) -> pb::LeadEvent {
    let a = &public.attributes;
    let text = |name: &str| a.get(name).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    let number = |name: &str| a.get(name).and_then(|v| v.as_i64());
    use pb::lead_event::Payload;
    let payload = match public.type_name {
        "LeadCaptured" => Some(Payload::Captured(pb::LeadCaptured {
            company: text("company"),
            source: text("source"),
            campaign: text("campaign"),
            persona: text("persona"),
            external_ref: text("external_ref"),
            ..Default::default()
        })),
        "LeadQualified" => Some(Payload::Qualified(pb::LeadQualified {
            score: number("score").and_then(|s| i32::try_from(s).ok()),
            note: String::new(),
            assignee: text("assignee"),
        })),
        "LeadAssigned" => Some(Payload::Assigned(pb::LeadAssigned { assignee: text("assignee") })),
        "LeadAccepted" => Some(Payload::Accepted(pb::LeadAccepted { owner: text("owner") })),
        "LeadRejected" => Some(Payload::Rejected(pb::LeadRejected { reason: text("reason"), note: String::new() })),
        "LeadClosed" => {
            let amount = a.get("amount");
            Some(Payload::Closed(pb::LeadClosed {
                outcome: if public.stage == Some("WON") { pb::Outcome::Won } else { pb::Outcome::Lost } as i32,
                amount_minor: amount.and_then(|m| m.get("amount_minor")).and_then(|v| v.as_i64()).unwrap_or(0),
                currency: amount
                    .and_then(|m| m.get("currency"))
                    .and_then(|c| c.as_str())
                    .unwrap_or_default()
                    .to_string(),
                lost_reason: text("lost_reason"),
                note: String::new(),
            }))
        }
        "LeadFeedbackRecorded" => Some(Payload::FeedbackRecorded(pb::FeedbackRecorded {
            rating: number("rating").and_then(|r| i32::try_from(r).ok()).unwrap_or(0),
            reason_codes: a
                .get("reason_codes")
                .and_then(|c| c.as_array())
                .map(|codes| codes.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
                .unwrap_or_default(),
            comment: String::new(),
        })),
        "LeadErased" => Some(Payload::Erased(pb::LeadErased { reason: text("reason") })),
        _ => None,
    };
    envelope(recorded, payload)
}

fn envelope(recorded: &RecordedEvent, payload: Option<pb::lead_event::Payload>) -> pb::LeadEvent {
    pb::LeadEvent {
        position: recorded.position,
        event_id: recorded.event_id.to_string(),
        lead_id: recorded.lead_id.to_string(),
        version: recorded.version,
        r#type: recorded.event_type.trim_start_matches("lead.").to_string(),
        occurred_at: Some(timestamp(recorded.occurred_at)),
        recorded_at: Some(timestamp(recorded.recorded_at)),
        request_id: recorded.metadata.request_id.clone().unwrap_or_default(),
        correlation_id: recorded.metadata.correlation_id.clone().unwrap_or_default(),
        client_id: recorded.metadata.client_id.clone(),
        traceparent: recorded.metadata.traceparent.clone().unwrap_or_default(),
        payload,
    }
}

pub(crate) fn lead(lead_id: LeadId, profile: &LeadProfile, captured_at: Timestamp) -> pb::Lead {
    let d = &profile.details;
    pb::Lead {
        lead_id: lead_id.to_string(),
        stage: stage(profile.lead.stage) as i32,
        version: profile.lead.version,
        email: d.email.as_str().to_string(),
        name: text(&d.name),
        company: text(&d.company),
        phone: text(&d.phone),
        source: text(&d.source),
        campaign: text(&d.campaign),
        persona: text(&d.persona),
        external_ref: text(&d.external_ref),
        score: profile.score.map(|s| i32::from(s.value())),
        assignee: text(&profile.lead.assignee),
        owner: text(&profile.lead.owner),
        captured_at: Some(timestamp(captured_at)),
        last_event_at: Some(timestamp(profile.lead.last_occurred_at)),
        erased: false,
        erased_at: None,
    }
}

pub(crate) fn summary(found: &LeadSummary) -> pb::LeadSummary {
    pb::LeadSummary {
        lead_id: found.lead_id.to_string(),
        stage: stage(found.lead.stage) as i32,
        version: found.lead.version,
        assignee: text(&found.lead.assignee),
        owner: text(&found.lead.owner),
        external_ref: found.external_ref.clone().unwrap_or_default(),
        last_event_at: Some(timestamp(found.lead.last_occurred_at)),
    }
}

pub(crate) fn sla_policy(policy: &SlaPolicy) -> pb::SlaPolicy {
    let duration = |us: i64| prost_types::Duration { seconds: us / 1_000_000, nanos: ((us % 1_000_000) * 1000) as i32 };
    pb::SlaPolicy {
        accept_within: Some(duration(policy.accept_within_us)),
        close_within: Some(duration(policy.close_within_us)),
        mql_target: policy.mql_target,
        mql_to_sql_rate_target: policy.mql_to_sql_rate_target.map(|r| r.share()),
        won_amount_target: policy
            .won_amount_target
            .as_ref()
            .map(|m| pb::CurrencyAmount { currency: m.currency.as_str().to_string(), amount_minor: m.amount_minor }),
        review_by: policy.review_by.map(|d| d.to_string()).unwrap_or_default(),
        calendar: policy.calendar.as_ref().map(|c| pb::WorkingCalendar {
            time_zone: c.zone_name().to_string(),
            working_days: c.working_days(),
            opens: c.opens(),
            closes: c.closes(),
            holidays: c.holidays(),
        }),
        effective_from: Some(timestamp(policy.effective_from)),
    }
}
