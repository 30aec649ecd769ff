//! One log event as a CloudEvent 1.0 in NATS binary mode: the attributes as
//! `ce-*` headers, the business attributes as the JSON body, on a subject
//! `leads.v1.events.<event>.<lead_id>`. Consumers' reference:
//! `docs/consuming-events.md` and `docs/asyncapi.yaml`.

use async_nats::HeaderMap;
use bytes::Bytes;
use leadger_store::RecordedEvent;
use leadger_store::codec::{self, CodecError};

/// Subject prefix of the event stream; the stream captures `<prefix>.>`.
pub const EVENT_SUBJECT_PREFIX: &str = "leads.v1.events";
/// Version of the bus payload schemas (`docs/schemas/leads.v1/*.1.schema.json`).
pub const PAYLOAD_SCHEMA_VERSION: u32 = 1;
/// `ce-subject` (and the last subject token) of SLA policy events: the
/// agreement's stream.
pub const SLA_POLICY_SUBJECT: &str = "sla-policy";
/// The header holding the event's global log position.
pub const POSITION_HEADER: &str = "ce-leadposition";

/// A message ready to publish.
#[derive(Debug, Clone)]
pub struct OutboundEvent {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// Builds the CloudEvent for a recorded event; `source` becomes `ce-source`.
pub fn to_cloud_event(event: &RecordedEvent, source: &str) -> Result<OutboundEvent, CodecError> {
    let public = codec::public_event(&event.event_type, event.schema_version, &event.payload)?;
    // Lead events: `lead.qualified` → `qualified`, about the lead. Agreement
    // events: `sla.policy_defined` → `sla_policy_defined`, about their stream.
    let (event_name, ce_subject, is_lead_event) = match event.event_type.strip_prefix("lead.") {
        Some(name) => (name.to_string(), event.lead_id.to_string(), true),
        None => (event.event_type.replace('.', "_"), SLA_POLICY_SUBJECT.to_string(), false),
    };
    let ce_type = format!("leads.v1.{}", public.type_name);

    let mut data = serde_json::Map::new();
    if is_lead_event {
        data.insert("lead_id".to_string(), ce_subject.clone().into());
    }
    if let Some(stage) = public.stage {
        data.insert("stage".to_string(), stage.into());
    }
    data.extend(public.attributes);

    let mut headers = HeaderMap::new();
    let event_id = event.event_id.to_string();
    headers.insert("Nats-Msg-Id", event_id.as_str());
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", event_id.as_str());
    headers.insert("ce-source", percent_encode(source).as_str());
    headers.insert("ce-type", ce_type.as_str());
    headers.insert("ce-subject", ce_subject.as_str());
    headers.insert("ce-time", event.occurred_at.to_rfc3339().as_str());
    headers.insert("ce-datacontenttype", "application/json");
    headers.insert("ce-dataschema", format!("urn:leadger:schema:{ce_type}:{PAYLOAD_SCHEMA_VERSION}").as_str());
    headers.insert(POSITION_HEADER, event.position.to_string().as_str());
    headers.insert("ce-leadversion", event.version.to_string().as_str());
    // The trace of the command that appended the event, so a consumer
    // continues it: under the W3C names that tracing libraries read, and as
    // the CloudEvents distributed-tracing extension's attributes.
    if let Some(traceparent) = &event.metadata.traceparent {
        headers.insert("traceparent", traceparent.as_str());
        headers.insert("ce-traceparent", traceparent.as_str());
    }
    if let Some(tracestate) = &event.metadata.tracestate {
        headers.insert("tracestate", tracestate.as_str());
        headers.insert("ce-tracestate", tracestate.as_str());
    }
    Ok(OutboundEvent {
        subject: format!("{EVENT_SUBJECT_PREFIX}.{event_name}.{ce_subject}"),
        headers,
        payload: Bytes::from(serde_json::Value::Object(data).to_string()),
    })
}

/// Percent-encodes what the CloudEvents HTTP binding says must be: space,
/// `"`, `%` and everything outside printable ASCII (as UTF-8 bytes).
pub fn percent_encode(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if (0x21..=0x7e).contains(&byte) && byte != b'"' && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use leadger_domain::{LeadId, Timestamp};
    use leadger_store::EventMetadata;

    use super::*;

    fn recorded(event_type: &str, payload: &str) -> RecordedEvent {
        RecordedEvent {
            position: 42,
            event_id: uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
            lead_id: LeadId::from_uuid(uuid::Uuid::from_u128(7)),
            version: 3,
            event_type: event_type.to_string(),
            schema_version: 1,
            payload: payload.to_string(),
            metadata: EventMetadata {
                request_id: None,
                client_id: "crm".to_string(),
                correlation_id: None,
                traceparent: None,
                tracestate: None,
            },
            occurred_at: Timestamp::from_micros(1_795_511_700_123_456).expect("in range"),
            recorded_at: Timestamp::from_micros(1_795_511_701_000_000).expect("in range"),
        }
    }

    fn header(event: &OutboundEvent, name: &str) -> String {
        event.headers.get(name).map(|v| v.as_str().to_string()).unwrap_or_default()
    }

    #[test]
    fn a_closed_event_becomes_a_binary_mode_cloud_event() {
        let stored = r#"{"outcome":"won","amount_minor":125000,"currency":"EUR","note":"c2VhbGVk"}"#;
        let event = to_cloud_event(&recorded("lead.closed", stored), "urn:leadger:leads").expect("converts");
        let lead = "00000000-0000-0000-0000-000000000007";
        assert_eq!(event.subject, format!("leads.v1.events.closed.{lead}"));
        assert_eq!(header(&event, "ce-specversion"), "1.0");
        assert_eq!(header(&event, "ce-id"), "01900000-0000-7000-8000-000000000001");
        assert_eq!(header(&event, "Nats-Msg-Id"), header(&event, "ce-id"));
        assert_eq!(header(&event, "ce-type"), "leads.v1.LeadClosed");
        assert_eq!(header(&event, "ce-subject"), lead);
        assert_eq!(header(&event, "ce-time"), "2026-11-24T09:15:00.123456Z");
        assert_eq!(header(&event, "ce-dataschema"), "urn:leadger:schema:leads.v1.LeadClosed:1");
        assert_eq!(header(&event, "ce-leadposition"), "42");
        assert_eq!(header(&event, "ce-leadversion"), "3");
        assert_eq!(
            std::str::from_utf8(&event.payload).expect("utf-8"),
            format!(r#"{{"amount":{{"amount_minor":125000,"currency":"EUR"}},"lead_id":"{lead}","stage":"WON"}}"#)
        );
    }

    #[test]
    fn the_commands_trace_context_rides_in_w3c_and_cloud_events_headers() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut traced = recorded("lead.assigned", r#"{"assignee":"rep-7"}"#);
        traced.metadata.traceparent = Some(traceparent.to_string());
        traced.metadata.tracestate = Some("congo=t61rcWkgMzE".to_string());
        let event = to_cloud_event(&traced, "urn:leadger:leads").expect("converts");
        for name in ["traceparent", "ce-traceparent"] {
            assert_eq!(header(&event, name), traceparent, "{name}");
        }
        for name in ["tracestate", "ce-tracestate"] {
            assert_eq!(header(&event, name), "congo=t61rcWkgMzE", "{name}");
        }

        let untraced = to_cloud_event(&recorded("lead.assigned", r#"{"assignee":"rep-7"}"#), "urn:leadger:leads")
            .expect("converts");
        assert!(untraced.headers.get("traceparent").is_none() && untraced.headers.get("ce-traceparent").is_none());
    }

    #[test]
    fn header_values_are_percent_encoded_where_needed() {
        assert_eq!(percent_encode("urn:leadger:leads"), "urn:leadger:leads");
        assert_eq!(percent_encode("/crm eu \"west\" 100%"), "/crm%20eu%20%22west%22%20100%25");
        assert_eq!(percent_encode("köln"), "k%C3%B6ln");
    }
}
