//! Writes the seed corpora of fuzz/corpus/ from the fixtures, through the real
//! code: every request of the fixtures (tagged as `command_request` reads
//! them), and the stored rows their events, SLA policies and journeys become
//! (as `event_decoder` reads them, sealed under the seed data key).
//!
//! `cargo run --example write_seeds` from fuzz/. Rewrites the `seed-*` files
//! only; found regressions (`regression-*`) stay.

use std::fs;
use std::path::Path;

use leadger_domain::journey::Journey;
use leadger_fuzz::codec::{self, SCHEMA_VERSION, SLA_POLICY_DEFINED};
use leadger_fuzz::vault::Vault;
use leadger_fuzz::{SEED_KEK, SEED_LEAD, SEED_WRAPPED_KEY, ServiceRequest, fixtures, seed_data_key, validate_sla_policy};

fn write_all(dir: &Path, seeds: &[(String, Vec<u8>)]) {
    fs::create_dir_all(dir).expect("create the corpus directory");
    for entry in fs::read_dir(dir).expect("list the corpus directory") {
        let path = entry.expect("corpus entry").path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("seed-")) {
            fs::remove_file(&path).expect("remove an old seed");
        }
    }
    for (name, bytes) in seeds {
        fs::write(dir.join(format!("seed-{name}")), bytes).expect("write a seed");
    }
}

fn main() {
    if SEED_WRAPPED_KEY.is_empty() {
        let (_, wrapped) = Vault::from_key(SEED_KEK).new_data_key(SEED_LEAD);
        println!("set SEED_WRAPPED_KEY in src/lib.rs to {wrapped:?} and run again");
        return;
    }
    let key = seed_data_key();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");

    let mut requests = Vec::new();
    let mut rows = Vec::new();
    for (h, history) in fixtures::histories().iter().enumerate() {
        let (_, events) = fixtures::replay(history);
        let mut journey: Option<Journey> = None;
        for (i, (request, event)) in history.iter().zip(&events).enumerate() {
            requests.push((format!("h{h}-{i}"), ServiceRequest::Lead(request.clone()).to_fuzz_input()));
            let event_type = codec::event_type(&event.kind);
            let payload = codec::encode(&event.kind, Some(&key)).expect("a fixture event encodes");
            rows.push((format!("h{h}-{i}"), format!("{event_type} {SCHEMA_VERSION}\n{payload}").into_bytes()));
            let step = codec::journey_step(&event_type, SCHEMA_VERSION, &payload).expect("a fixture event reads");
            match &mut journey {
                None => journey = Journey::start(SEED_LEAD, event.occurred_at, event.occurred_at, &step),
                Some(journey) => journey.apply(event.occurred_at, event.occurred_at, &step),
            }
        }
        let journey = journey.expect("a fixture history starts with a capture");
        rows.push((format!("h{h}-journey"), codec::encode_journey(&journey).into_bytes()));
    }
    // Rows of schema versions this codec does not (or no longer) read.
    rows.push(("v0-assigned".into(), b"lead.assigned 0\n{\"assignee\":\"grace\"}".to_vec()));
    rows.push(("v2-assigned".into(), b"lead.assigned 2\n{\"assignee\":\"grace\"}".to_vec()));
    for (p, request) in fixtures::sla_policy_requests().into_iter().enumerate() {
        let policy = validate_sla_policy(&request, fixtures::now()).expect("a fixture policy is valid");
        let payload = codec::encode_sla_policy(&policy);
        rows.push((format!("sla-{p}"), format!("{SLA_POLICY_DEFINED} {SCHEMA_VERSION}\n{payload}").into_bytes()));
        requests.push((format!("sla-{p}"), ServiceRequest::DefineSlaPolicy(request).to_fuzz_input()));
    }
    write_all(&corpus.join("command_request"), &requests);
    write_all(&corpus.join("event_decoder"), &rows);
    println!("wrote {} command_request and {} event_decoder seeds", requests.len(), rows.len());
}
