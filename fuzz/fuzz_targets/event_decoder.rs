//! A stored log row as the persisted event codec of leadger-store reads it:
//! `decode` (with the lead's data key), `journey_step`, `public_event`,
//! `decode_sla_policy` and the journey read model's `decode_journey`, for
//! arbitrary event types, schema versions and payloads. What decodes must
//! encode back to the same value, and what `decode` accepts the key-less
//! readers accept too.
//!
//! Input: a header line `<event_type> <schema_version>`, then the payload
//! (e.g. `lead.assigned 1\n{"assignee":"grace"}`); not UTF-8 is skipped, as
//! the log's payload column is text.

#![no_main]

use std::sync::LazyLock;

use leadger_domain::Timestamp;
use leadger_fuzz::codec::{self, SCHEMA_VERSION};
use leadger_fuzz::vault::DataKey;
use leadger_fuzz::{SEED_LEAD, seed_data_key};
use libfuzzer_sys::fuzz_target;

static KEY: LazyLock<DataKey> = LazyLock::new(seed_data_key);

fn occurred_at() -> Timestamp {
    Timestamp::from_micros(1_767_225_600_000_000).expect("in range")
}

/// Splits a fuzz input into `(event_type, schema_version, payload)`.
fn row(text: &str) -> Option<(&str, i32, &str)> {
    let (header, payload) = text.split_once('\n')?;
    let (event_type, version) = header.rsplit_once(' ')?;
    Some((event_type, version.parse().ok()?, payload))
}

fn lead_event(event_type: &str, schema_version: i32, payload: &str) {
    let step = codec::journey_step(event_type, schema_version, payload);
    let public = codec::public_event(event_type, schema_version, payload);
    let Ok(event) = codec::decode(event_type, schema_version, payload, occurred_at(), &KEY) else { return };
    assert!(step.is_ok(), "decode read {event_type} but journey_step did not: {step:?}");
    assert!(public.is_ok(), "decode read {event_type} but public_event did not: {public:?}");
    assert_eq!(codec::event_type(&event.kind), event_type);
    let again = codec::encode(&event.kind, Some(&KEY)).expect("a decoded event encodes");
    let decoded = codec::decode(event_type, SCHEMA_VERSION, &again, occurred_at(), &KEY).expect("an encoded event decodes");
    assert_eq!(decoded, event, "decode(encode(event)) is the event");
}

fn sla_policy(schema_version: i32, payload: &str) {
    let Ok(policy) = codec::decode_sla_policy(schema_version, payload) else { return };
    let again = codec::encode_sla_policy(&policy);
    let decoded = codec::decode_sla_policy(SCHEMA_VERSION, &again).expect("an encoded policy decodes");
    assert_eq!(decoded, policy, "decode(encode(policy)) is the policy");
    // A stored policy's calendar drives every SLA deadline computed from it.
    let deadline = policy.deadline(policy.effective_from, policy.accept_within_us);
    let _ = policy.working_micros(policy.effective_from, deadline);
}

fn journey(payload: &str) {
    let Ok(journey) = codec::decode_journey(SEED_LEAD, payload) else { return };
    let again = codec::encode_journey(&journey);
    let decoded = codec::decode_journey(SEED_LEAD, &again).expect("an encoded journey decodes");
    assert_eq!(decoded, journey, "decode(encode(journey)) is the journey");
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Some((event_type, schema_version, payload)) = row(text) {
        lead_event(event_type, schema_version, payload);
        sla_policy(schema_version, payload);
    }
    // The journey table has no type or version: the whole input is the row,
    // or (for seeds shared with the events) what follows the header.
    journey(text);
    if let Some((_, payload)) = text.split_once('\n') {
        journey(payload);
    }
});
