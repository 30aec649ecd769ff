//! What a client asks for. A [`Command`] is built only from validated values,
//! so [`crate::decide`] checks the lifecycle, not the syntax.

use std::fmt;

use crate::{Closing, Feedback, Label, LeadDetails, LeadId, Qualification, Rejection, Timestamp};

/// One request to change one lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub lead_id: LeadId,
    /// Optimistic concurrency: the version the client last saw (0 for a new lead).
    pub expected_version: Option<u64>,
    /// Business time, when the client imports history; server time otherwise.
    pub occurred_at: Option<Timestamp>,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Capture(LeadDetails),
    Qualify(Qualification),
    Assign {
        assignee: Label,
    },
    /// `owner` defaults to the lead's assignee.
    Accept {
        owner: Option<Label>,
    },
    Reject(Rejection),
    Close(Closing),
    RecordFeedback(Feedback),
    /// GDPR erasure: the lead's personal data becomes unreadable for good.
    /// `reason` is an operator's reference (a ticket id), never personal data.
    Erase {
        reason: Option<Label>,
    },
}

impl Action {
    pub fn kind(&self) -> CommandKind {
        match self {
            Self::Capture(_) => CommandKind::CaptureLead,
            Self::Qualify(_) => CommandKind::QualifyLead,
            Self::Assign { .. } => CommandKind::AssignLead,
            Self::Accept { .. } => CommandKind::AcceptLead,
            Self::Reject(_) => CommandKind::RejectLead,
            Self::Close(closing) if closing.outcome.is_won() => CommandKind::CloseLeadWon,
            Self::Close(_) => CommandKind::CloseLeadLost,
            Self::RecordFeedback(_) => CommandKind::RecordFeedback,
            Self::Erase { .. } => CommandKind::EraseLead,
        }
    }
}

/// The rows of the lifecycle table; closing won and lost are allowed from
/// different stages, so they are two kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CommandKind {
    CaptureLead,
    QualifyLead,
    AssignLead,
    AcceptLead,
    RejectLead,
    CloseLeadWon,
    CloseLeadLost,
    RecordFeedback,
    EraseLead,
}

impl CommandKind {
    pub const ALL: [Self; 9] = [
        Self::CaptureLead,
        Self::QualifyLead,
        Self::AssignLead,
        Self::AcceptLead,
        Self::RejectLead,
        Self::CloseLeadWon,
        Self::CloseLeadLost,
        Self::RecordFeedback,
        Self::EraseLead,
    ];
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CaptureLead => "CaptureLead",
            Self::QualifyLead => "QualifyLead",
            Self::AssignLead => "AssignLead",
            Self::AcceptLead => "AcceptLead",
            Self::RejectLead => "RejectLead",
            Self::CloseLeadWon => "CloseLead (outcome WON)",
            Self::CloseLeadLost => "CloseLead (outcome LOST)",
            Self::RecordFeedback => "RecordFeedback",
            Self::EraseLead => "EraseLead",
        })
    }
}
