//! The one mapping from refusals to gRPC statuses, with `google.rpc` details:
//! `BadRequest` field violations for invalid input and `ErrorInfo` with an
//! UPPER_SNAKE reason (and the lead id, where one is involved) for the rest.

use std::collections::HashMap;

use leadger_domain::{DomainError, ValidationError};
use leadger_store::{CommandError, StoreError};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

/// Domain of `ErrorInfo` details.
pub const ERROR_DOMAIN: &str = "leadger.leads.v1";

/// Invalid input: `INVALID_ARGUMENT` naming every offending field.
pub fn invalid_argument(violations: Vec<ValidationError>) -> Status {
    let message = violations.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
    let details = ErrorDetails::with_bad_request(
        violations.into_iter().map(|v| FieldViolation::new(v.field, v.description)).collect::<Vec<_>>(),
    );
    Status::with_error_details(Code::InvalidArgument, format!("invalid request: {message}"), details)
}

fn with_info(code: Code, message: String, reason: &str, metadata: &[(&str, String)]) -> Status {
    let metadata: HashMap<String, String> = metadata.iter().map(|(k, v)| ((*k).to_string(), v.clone())).collect();
    Status::with_error_details(code, message, ErrorDetails::with_error_info(reason, ERROR_DOMAIN, metadata))
}

/// A command's refusal as the status its client receives.
pub fn status(error: &CommandError) -> Status {
    let message = error.to_string();
    match error {
        CommandError::Domain(domain) => domain_status(domain),
        CommandError::EmailTaken { existing } => {
            with_info(Code::AlreadyExists, message, "OPEN_LEAD_WITH_EMAIL_EXISTS", &[("lead_id", existing.to_string())])
        }
        CommandError::ExternalRefTaken { existing } => {
            with_info(Code::AlreadyExists, message, "EXTERNAL_REF_EXISTS", &[("lead_id", existing.to_string())])
        }
        CommandError::RequestIdReused { .. } => with_info(Code::AlreadyExists, message, "REQUEST_ID_REUSED", &[]),
        CommandError::Overloaded { .. } => with_info(Code::ResourceExhausted, message, "OVERLOADED", &[]),
        CommandError::ShuttingDown => with_info(Code::Unavailable, message, "SHUTTING_DOWN", &[]),
        CommandError::Unavailable(_) => with_info(Code::Unavailable, message, "LOG_UNAVAILABLE", &[]),
        CommandError::Internal(_) => Status::internal(message),
    }
}

fn domain_status(error: &DomainError) -> Status {
    let message = error.to_string();
    match error {
        DomainError::LeadNotFound(lead) => {
            with_info(Code::NotFound, message, "LEAD_NOT_FOUND", &[("lead_id", lead.to_string())])
        }
        DomainError::LeadErased(lead) => {
            with_info(Code::FailedPrecondition, message, "LEAD_ERASED", &[("lead_id", lead.to_string())])
        }
        DomainError::LeadAlreadyExists(lead) => {
            with_info(Code::AlreadyExists, message, "LEAD_EXISTS", &[("lead_id", lead.to_string())])
        }
        DomainError::NotAllowed { stage, command } | DomainError::NotSeenBySales { stage, command } => with_info(
            Code::FailedPrecondition,
            message,
            if matches!(error, DomainError::NotAllowed { .. }) { "STAGE_DOES_NOT_ALLOW" } else { "NOT_SEEN_BY_SALES" },
            &[("stage", stage.to_string()), ("command", command.to_string())],
        ),
        DomainError::VersionMismatch { expected, actual } => with_info(
            Code::Aborted,
            message,
            "VERSION_MISMATCH",
            &[("expected_version", expected.to_string()), ("actual_version", actual.to_string())],
        ),
        DomainError::NotPermitted { roles, .. } => {
            with_info(Code::PermissionDenied, message, "ROLE_NOT_PERMITTED", &[("roles", roles.to_string())])
        }
        DomainError::OccurredBeforePrevious { .. } => {
            with_info(Code::FailedPrecondition, message, "OCCURRED_BEFORE_PREVIOUS_EVENT", &[])
        }
        DomainError::OccurredInFuture { .. } | DomainError::OwnerRequired => {
            let field = error.field().unwrap_or("request");
            invalid_argument(vec![ValidationError::new(field, message)])
        }
    }
}

/// A failed read.
pub fn read_status(error: &StoreError) -> Status {
    if error.is_unavailable() {
        tracing::warn!(%error, "read from the event log");
        with_info(Code::Unavailable, format!("the event log is unavailable: {error}"), "LOG_UNAVAILABLE", &[])
    } else {
        tracing::error!(%error, "read from the event log");
        Status::internal(format!("the event log failed: {error}"))
    }
}
