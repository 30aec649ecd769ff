//! The two ways a command can be refused: its input is invalid, or the lead's
//! lifecycle does not allow it.

use crate::{CommandKind, LeadId, Roles, Stage, Timestamp};

/// A field of a command broke a rule; `field` is the request field's name
/// (e.g. `email`, `reason_codes[2]`) so a client can point at it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {description}")]
pub struct ValidationError {
    pub field: String,
    pub description: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self { field: field.into(), description: description.into() }
    }
}

/// Why the lifecycle refused a valid command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("lead {0} does not exist")]
    LeadNotFound(LeadId),
    #[error("lead {0} already exists")]
    LeadAlreadyExists(LeadId),
    #[error("{command} is not allowed in stage {stage}")]
    NotAllowed { stage: Stage, command: CommandKind },
    #[error("{command} needs a lead that sales has seen (MQL or SQL at least once); it is still {stage}")]
    NotSeenBySales { stage: Stage, command: CommandKind },
    #[error("expected_version {expected} does not match the lead's version {actual}")]
    VersionMismatch { expected: u64, actual: u64 },
    #[error("occurred_at {occurred_at} is more than 5 minutes after the server time {now}")]
    OccurredInFuture { occurred_at: Timestamp, now: Timestamp },
    #[error(
        "occurred_at {occurred_at} is before the lead's previous event at {previous}; a lead's business time never goes backwards"
    )]
    OccurredBeforePrevious { occurred_at: Timestamp, previous: Timestamp },
    #[error("the personal data of lead {0} was erased; an erased lead takes no further command")]
    LeadErased(LeadId),
    #[error("owner is required: the lead has no assignee to default to")]
    OwnerRequired,
    #[error("{command} is not permitted to a caller with roles {roles}{}", in_stage(.stage))]
    NotPermitted { command: CommandKind, stage: Option<Stage>, roles: Roles },
}

fn in_stage(stage: &Option<Stage>) -> String {
    stage.map(|stage| format!(" on a lead in stage {stage}")).unwrap_or_default()
}

impl DomainError {
    /// The request field a client should fix, where one is to blame.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Self::VersionMismatch { .. } => Some("expected_version"),
            Self::OccurredInFuture { .. } | Self::OccurredBeforePrevious { .. } => Some("occurred_at"),
            Self::OwnerRequired => Some("owner"),
            _ => None,
        }
    }
}
