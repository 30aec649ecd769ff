//! What happened to a lead. Events are facts in the past tense; their payloads
//! are the same domain values the commands carried, resolved (an accepted lead
//! always has an owner).

use crate::{Email, Label, Money, Note, Rating, ReasonCode, Score, Timestamp};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadEvent {
    /// Business time: when it happened, not when it was recorded.
    pub occurred_at: Timestamp,
    pub kind: LeadEventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadEventKind {
    Captured(LeadDetails),
    Qualified(Qualification),
    Assigned {
        assignee: Label,
    },
    Accepted {
        owner: Label,
    },
    Rejected(Rejection),
    Closed(Closing),
    FeedbackRecorded(Feedback),
    /// The lead's personal data was erased (its data key destroyed); its
    /// stage and history stay. `reason` is an operator's reference.
    Erased {
        reason: Option<Label>,
    },
}

impl LeadEventKind {
    /// Stable lower-case name, used for log types and NATS subjects.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Captured(_) => "captured",
            Self::Qualified(_) => "qualified",
            Self::Assigned { .. } => "assigned",
            Self::Accepted { .. } => "accepted",
            Self::Rejected(_) => "rejected",
            Self::Closed(_) => "closed",
            Self::FeedbackRecorded(_) => "feedback_recorded",
            Self::Erased { .. } => "erased",
        }
    }
}

/// Who the lead is and where it came from. `email`, `name` and `phone` are
/// personal data: adapters must never store or publish them in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadDetails {
    pub email: Email,
    pub name: Option<Label>,
    pub company: Option<Label>,
    pub phone: Option<Label>,
    pub source: Option<Label>,
    pub campaign: Option<Label>,
    /// The buyer persona marketing and sales defined together.
    pub persona: Option<Label>,
    /// The lead's id in the system it came from; unique across leads.
    pub external_ref: Option<Label>,
}

/// Marketing hands the lead to sales as an MQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qualification {
    pub score: Option<Score>,
    pub note: Option<Note>,
    /// The sales rep who must answer the hand-off, when routed at once.
    pub assignee: Option<Label>,
}

/// Sales sends the lead back to marketing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: ReasonCode,
    pub note: Option<Note>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closing {
    pub outcome: CloseOutcome,
    pub note: Option<Note>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseOutcome {
    Won { amount: Option<Money> },
    Lost { reason: ReasonCode },
}

impl CloseOutcome {
    pub fn is_won(&self) -> bool {
        matches!(self, Self::Won { .. })
    }
}

/// Sales' verdict on the lead's quality, for marketing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feedback {
    pub rating: Rating,
    pub reason_codes: Vec<ReasonCode>,
    pub comment: Option<Note>,
}
