//! The lead aggregate: its stage machine, [`decide`] and [`evolve`].

use std::fmt;

use crate::{
    Action, Closing, Command, CommandKind, DomainError, Label, LeadDetails, LeadEvent, LeadEventKind,
    MAX_FUTURE_SKEW_MICROS, Score, Timestamp,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Stage {
    Captured,
    Mql,
    Sql,
    /// Sales sent it back to marketing; it may be qualified again.
    Rejected,
    Won,
    Lost,
}

impl Stage {
    pub const ALL: [Self; 6] = [Self::Captured, Self::Mql, Self::Sql, Self::Rejected, Self::Won, Self::Lost];

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Captured => "CAPTURED",
            Self::Mql => "MQL",
            Self::Sql => "SQL",
            Self::Rejected => "REJECTED",
            Self::Won => "WON",
            Self::Lost => "LOST",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|stage| stage.as_str() == text)
    }

    /// WON and LOST end the lifecycle; only feedback may follow.
    pub fn is_terminal(&self) -> bool {
        matches!(self, Self::Won | Self::Lost)
    }

    /// The lifecycle table: may `command` run on a lead in this stage?
    pub fn allows(&self, command: CommandKind) -> bool {
        use CommandKind as C;
        use Stage as S;
        match command {
            C::CaptureLead => false,
            C::QualifyLead => matches!(self, S::Captured | S::Rejected),
            C::AssignLead | C::RejectLead => matches!(self, S::Mql),
            C::AcceptLead => matches!(self, S::Mql | S::Captured),
            C::CloseLeadWon => matches!(self, S::Sql),
            C::CloseLeadLost => !self.is_terminal(),
            // Further gated on the lead having been seen by sales.
            C::RecordFeedback => true,
            // Erasure is a right of the person, whatever the lead's stage.
            C::EraseLead => true,
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`decide`] needs to know about an existing lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lead {
    pub stage: Stage,
    /// Number of events in the lead's stream.
    pub version: u64,
    /// Has been MQL or SQL at least once, so sales can give feedback.
    pub seen_by_sales: bool,
    pub last_occurred_at: Timestamp,
    pub assignee: Option<Label>,
    pub owner: Option<Label>,
    /// Its personal data was erased: it takes no further command.
    pub erased: bool,
}

/// Decides the event a command produces on a lead (`None`: no such lead yet),
/// or why it is refused. `now` is the server time a missing `occurred_at`
/// defaults to.
pub fn decide(lead: Option<&Lead>, command: &Command, now: Timestamp) -> Result<LeadEvent, DomainError> {
    let occurred_at = command.occurred_at.unwrap_or(now);
    if occurred_at > now.saturating_add_micros(MAX_FUTURE_SKEW_MICROS) {
        return Err(DomainError::OccurredInFuture { occurred_at, now });
    }
    let actual_version = lead.map_or(0, |lead| lead.version);
    if let Some(expected) = command.expected_version
        && expected != actual_version
    {
        return Err(DomainError::VersionMismatch { expected, actual: actual_version });
    }
    let Some(lead) = lead else {
        return match &command.action {
            Action::Capture(details) => Ok(LeadEvent { occurred_at, kind: LeadEventKind::Captured(details.clone()) }),
            _ => Err(DomainError::LeadNotFound(command.lead_id)),
        };
    };
    let kind = command.action.kind();
    if kind == CommandKind::CaptureLead {
        return Err(DomainError::LeadAlreadyExists(command.lead_id));
    }
    // Whatever would be said about an erased lead (a note, a comment, its
    // next stage) would concern a person who asked to be forgotten.
    if lead.erased {
        return Err(DomainError::LeadErased(command.lead_id));
    }
    if !lead.stage.allows(kind) {
        return Err(DomainError::NotAllowed { stage: lead.stage, command: kind });
    }
    if kind == CommandKind::RecordFeedback && !lead.seen_by_sales {
        return Err(DomainError::NotSeenBySales { stage: lead.stage, command: kind });
    }
    if occurred_at < lead.last_occurred_at {
        return Err(DomainError::OccurredBeforePrevious { occurred_at, previous: lead.last_occurred_at });
    }
    let kind = match &command.action {
        Action::Capture(_) => unreachable!("capture of an existing lead was refused above"),
        Action::Qualify(qualification) => LeadEventKind::Qualified(qualification.clone()),
        Action::Assign { assignee } => LeadEventKind::Assigned { assignee: assignee.clone() },
        Action::Accept { owner } => LeadEventKind::Accepted {
            owner: owner.clone().or_else(|| lead.assignee.clone()).ok_or(DomainError::OwnerRequired)?,
        },
        Action::Reject(rejection) => LeadEventKind::Rejected(rejection.clone()),
        Action::Close(closing) => LeadEventKind::Closed(closing.clone()),
        Action::RecordFeedback(feedback) => LeadEventKind::FeedbackRecorded(feedback.clone()),
        Action::Erase { reason } => LeadEventKind::Erased { reason: reason.clone() },
    };
    Ok(LeadEvent { occurred_at, kind })
}

/// Folds one event into the lead's state. Events come from the log, so they
/// were allowed when decided; `evolve` does not judge them again.
pub fn evolve(lead: Option<Lead>, event: &LeadEvent) -> Lead {
    let mut lead = lead.unwrap_or(Lead {
        stage: Stage::Captured,
        version: 0,
        seen_by_sales: false,
        last_occurred_at: event.occurred_at,
        assignee: None,
        owner: None,
        erased: false,
    });
    lead.version += 1;
    lead.last_occurred_at = lead.last_occurred_at.max(event.occurred_at);
    match &event.kind {
        LeadEventKind::Captured(_) => lead.stage = Stage::Captured,
        LeadEventKind::Qualified(qualification) => {
            lead.stage = Stage::Mql;
            lead.seen_by_sales = true;
            lead.assignee = qualification.assignee.clone();
        }
        LeadEventKind::Assigned { assignee } => lead.assignee = Some(assignee.clone()),
        LeadEventKind::Accepted { owner } => {
            lead.stage = Stage::Sql;
            lead.seen_by_sales = true;
            lead.owner = Some(owner.clone());
        }
        LeadEventKind::Rejected(_) => lead.stage = Stage::Rejected,
        LeadEventKind::Closed(closing) => {
            lead.stage = if closing.outcome.is_won() { Stage::Won } else { Stage::Lost };
        }
        LeadEventKind::FeedbackRecorded(_) => {}
        LeadEventKind::Erased { .. } => lead.erased = true,
    }
    lead
}

/// A lead's attributes as its events left them, for reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeadProfile {
    pub lead: Lead,
    pub details: LeadDetails,
    pub score: Option<Score>,
    pub closing: Option<Closing>,
}

impl LeadProfile {
    /// Replays a lead's stream; `None` when it does not start with a capture.
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a LeadEvent>) -> Option<Self> {
        let mut profile: Option<Self> = None;
        for event in events {
            let mut current = match (profile, &event.kind) {
                (None, LeadEventKind::Captured(details)) => {
                    Self { lead: evolve(None, event), details: details.clone(), score: None, closing: None }
                }
                (None, _) => return None,
                (Some(mut profile), _) => {
                    profile.lead = evolve(Some(profile.lead), event);
                    profile
                }
            };
            match &event.kind {
                LeadEventKind::Qualified(qualification) => current.score = qualification.score.or(current.score),
                LeadEventKind::Closed(closing) => current.closing = Some(closing.clone()),
                _ => {}
            }
            profile = Some(current);
        }
        profile
    }
}
