//! The code under fuzzing, included from its real source files rather than
//! depended on, so the targets build without the gRPC and store crates
//! (tonic's server, sqlx): the request validation of leadger-grpc
//! (`request.rs`) and the persisted event codec of leadger-store (`codec.rs`,
//! with the `vault.rs` it seals personal fields with). These are the very
//! files those crates compile; nothing here copies their logic.
//!
//! The included files name their siblings as `crate::error` and
//! `crate::vault`, so they are mounted at this crate's root, and `error` is a
//! shim with the one function `request.rs` takes from the gRPC crate's error
//! module. The included items are `pub(crate)`, so the targets reach them
//! through [`validate_command`] and [`validate_sla_policy`].

use leadger_domain::sla::SlaPolicy;
use leadger_domain::{Command, LeadId, Timestamp};
use leadger_proto::leads::v1 as pb;
use prost::Message;
use tonic::Status;

use crate::vault::{DataKey, Vault};

pub mod fixtures;

#[allow(dead_code)]
#[path = "../../crates/leadger-grpc/src/request.rs"]
mod request;

#[allow(dead_code)]
#[path = "../../crates/leadger-store/src/vault.rs"]
pub mod vault;

#[allow(dead_code)]
#[path = "../../crates/leadger-store/src/codec.rs"]
pub mod codec;

/// Stands in for leadger-grpc's `error` module: the included `request.rs`
/// turns violations into a status with `invalid_argument`; the fuzz targets
/// care only that validation refused, not how the status reads.
mod error {
    use leadger_domain::ValidationError;
    use tonic::Status;

    pub fn invalid_argument(violations: Vec<ValidationError>) -> Status {
        assert!(!violations.is_empty(), "a refusal must name at least one violation");
        let message = violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
        Status::invalid_argument(message)
    }
}

/// Every lead command request of `LeadCommandService` (DefineSlaPolicy is
/// not a lead command: see [`validate_sla_policy`]).
#[derive(Debug, Clone)]
pub enum CommandRequest {
    Capture(pb::CaptureLeadRequest),
    Qualify(pb::QualifyLeadRequest),
    Assign(pb::AssignLeadRequest),
    Accept(pb::AcceptLeadRequest),
    Reject(pb::RejectLeadRequest),
    Close(pb::CloseLeadRequest),
    RecordFeedback(pb::RecordFeedbackRequest),
    Erase(pb::EraseLeadRequest),
}

/// A request through the gRPC layer's validation into a domain command.
pub fn validate_command(request: &CommandRequest) -> Result<Command, Status> {
    let valid = match request {
        CommandRequest::Capture(r) => request::capture(r),
        CommandRequest::Qualify(r) => request::qualify(r),
        CommandRequest::Assign(r) => request::assign(r),
        CommandRequest::Accept(r) => request::accept(r),
        CommandRequest::Reject(r) => request::reject(r),
        CommandRequest::Close(r) => request::close(r),
        CommandRequest::RecordFeedback(r) => request::record_feedback(r),
        CommandRequest::Erase(r) => request::erase(r),
    }?;
    Ok(valid.command)
}

/// A `DefineSlaPolicy` request through the gRPC layer's validation.
pub fn validate_sla_policy(request: &pb::DefineSlaPolicyRequest, now: Timestamp) -> Result<SlaPolicy, Status> {
    request::sla_policy(request, now).map(|(policy, _request_id)| policy)
}


/// The lead whose data key seals the personal fields of the seed payloads.
pub const SEED_LEAD: LeadId = LeadId::NIL;
/// The key-encryption key of the seeds (a test key, nothing real is under it).
pub const SEED_KEK: [u8; 32] = [0x5a; 32];
/// [`SEED_LEAD`]'s data key wrapped under [`SEED_KEK`], as the log's key table
/// stores it; written once by `examples/write_seeds.rs` so the seed payloads'
/// sealed fields open and the fuzzer reaches the validation behind them.
pub const SEED_WRAPPED_KEY: &str = "ohaVkzoIKBzD9VYzpN0elCLmHlOYlLWmIXjvMoBjtMhmF6mvooMnd0gInogmoTRmyDLtBw2+xpgeG9ztzW9b4QP9cL5WQ9iD";

/// The data key the seed payloads were sealed with.
pub fn seed_data_key() -> DataKey {
    Vault::from_key(SEED_KEK).unwrap_key(SEED_LEAD, SEED_WRAPPED_KEY).expect("the seed key unwraps under the seed KEK")
}

/// Every request of `LeadCommandService`, as the `command_request` target
/// reads it: one tag byte (modulo [`ServiceRequest::TAGS`]), then the
/// protobuf message.
#[derive(Debug, Clone)]
pub enum ServiceRequest {
    Lead(CommandRequest),
    DefineSlaPolicy(pb::DefineSlaPolicyRequest),
}

impl ServiceRequest {
    pub const TAGS: u8 = 9;

    pub fn from_fuzz_input(data: &[u8]) -> Option<Self> {
        fn lead<M: Message + Default>(bytes: &[u8], wrap: fn(M) -> CommandRequest) -> Option<ServiceRequest> {
            M::decode(bytes).ok().map(|m| ServiceRequest::Lead(wrap(m)))
        }
        let (&tag, message) = data.split_first()?;
        match tag % Self::TAGS {
            0 => lead(message, CommandRequest::Capture),
            1 => lead(message, CommandRequest::Qualify),
            2 => lead(message, CommandRequest::Assign),
            3 => lead(message, CommandRequest::Accept),
            4 => lead(message, CommandRequest::Reject),
            5 => lead(message, CommandRequest::Close),
            6 => lead(message, CommandRequest::RecordFeedback),
            7 => lead(message, CommandRequest::Erase),
            _ => pb::DefineSlaPolicyRequest::decode(message).ok().map(Self::DefineSlaPolicy),
        }
    }

    pub fn to_fuzz_input(&self) -> Vec<u8> {
        let (tag, message) = match self {
            Self::Lead(CommandRequest::Capture(m)) => (0, m.encode_to_vec()),
            Self::Lead(CommandRequest::Qualify(m)) => (1, m.encode_to_vec()),
            Self::Lead(CommandRequest::Assign(m)) => (2, m.encode_to_vec()),
            Self::Lead(CommandRequest::Accept(m)) => (3, m.encode_to_vec()),
            Self::Lead(CommandRequest::Reject(m)) => (4, m.encode_to_vec()),
            Self::Lead(CommandRequest::Close(m)) => (5, m.encode_to_vec()),
            Self::Lead(CommandRequest::RecordFeedback(m)) => (6, m.encode_to_vec()),
            Self::Lead(CommandRequest::Erase(m)) => (7, m.encode_to_vec()),
            Self::DefineSlaPolicy(m) => (8, m.encode_to_vec()),
        };
        std::iter::once(tag).chain(message).collect()
    }
}
