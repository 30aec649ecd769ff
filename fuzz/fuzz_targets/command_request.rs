//! Arbitrary bytes as a LeadCommandService request, through the whole command
//! path short of I/O: protobuf decoding, the gRPC layer's validation into a
//! domain command, and `decide` on leads in every stage (reached by folding
//! valid events with `evolve`), then `evolve` of what was decided. For
//! DefineSlaPolicy: validation, then the SLA deadline and working-time
//! arithmetic of the policy.
//!
//! Input: see [`ServiceRequest::from_fuzz_input`]: a tag byte picks the
//! request type, the rest is the protobuf message.

#![no_main]

use std::sync::LazyLock;

use leadger_domain::{Lead, LeadEvent, decide, evolve};
use leadger_fuzz::fixtures::{self, now};
use leadger_fuzz::{CommandRequest, ServiceRequest, validate_command, validate_sla_policy};
use leadger_proto::leads::v1 as pb;
use libfuzzer_sys::fuzz_target;

/// No lead yet, then a lead in each stage (see [`fixtures::histories`]).
static LEADS: LazyLock<Vec<Option<Lead>>> = LazyLock::new(|| {
    std::iter::once(None).chain(fixtures::histories().iter().map(|steps| Some(fixtures::replay(steps).0))).collect()
});

fn decide_everywhere(request: &CommandRequest) {
    let Ok(command) = validate_command(request) else { return };
    for lead in LEADS.iter() {
        match decide(lead.as_ref(), &command, now()) {
            Ok(event) => check_decided(lead.as_ref(), &event),
            Err(error) => {
                // Every refusal must render: the gRPC layer turns it into a message.
                let _ = error.to_string();
            }
        }
    }
}

fn check_decided(before: Option<&Lead>, event: &LeadEvent) {
    let after = evolve(before.cloned(), event);
    assert_eq!(after.version, before.map_or(0, |lead| lead.version) + 1, "a decided event adds one version");
    assert!(event.occurred_at <= now().saturating_add_micros(leadger_domain::MAX_FUTURE_SKEW_MICROS));
    if let Some(before) = before {
        assert!(after.last_occurred_at >= before.last_occurred_at, "time does not run backwards in a lead");
    }
}

fn define_sla_policy(request: &pb::DefineSlaPolicyRequest) {
    let Ok(policy) = validate_sla_policy(request, now()) else { return };
    // What the SLA report computes for a hand-off started at the policy's
    // start and at the server's clock.
    for start in [policy.effective_from, now()] {
        for limit in [policy.accept_within_us, policy.close_within_us] {
            let deadline = policy.deadline(start, limit);
            assert!(deadline >= start, "a deadline is not before its start");
            let _ = policy.working_micros(start, deadline);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    match ServiceRequest::from_fuzz_input(data) {
        Some(ServiceRequest::Lead(request)) => decide_everywhere(&request),
        Some(ServiceRequest::DefineSlaPolicy(request)) => define_sla_policy(&request),
        None => {}
    }
});
