//! The lead aggregate every peer runs: stages, commands, events, and the
//! `decide`/`evolve` pair. It is pure and shared, so the peers differ only in
//! how their crate loads a lead, runs `decide` and appends the event, never
//! in the rules.
//!
//! A reduced model of leadger's lead: no SLA, working time or sealing of
//! personal data, but the events carry the fields leadger's persisted events
//! carry, so a row is about the same size.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    Captured,
    Mql,
    Sql,
    Rejected,
    Won,
    Lost,
}

/// A lead as its events left it; the default is a lead not captured yet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lead {
    pub stage: Option<Stage>,
}

/// Who the lead is and where marketing found them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    pub email: String,
    pub name: String,
    pub company: String,
    pub phone: String,
    pub source: String,
    pub campaign: String,
    pub persona: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Won { amount_minor: i64, currency: String },
    Lost { reason: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeadCommand {
    Capture(Contact),
    Qualify { assignee: String, score: i32 },
    Accept,
    Reject { reason: String },
    Close(Outcome),
    RecordFeedback { rating: i32 },
}

impl LeadCommand {
    /// The command's name as leadger's API spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Capture(_) => "CaptureLead",
            Self::Qualify { .. } => "QualifyLead",
            Self::Accept => "AcceptLead",
            Self::Reject { .. } => "RejectLead",
            Self::Close(_) => "CloseLead",
            Self::RecordFeedback { .. } => "RecordFeedback",
        }
    }
}

/// What happened to a lead; each command that is allowed produces one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeadEvent {
    Captured(Contact),
    Qualified { assignee: String, score: i32 },
    Accepted,
    Rejected { reason: String },
    Closed(Outcome),
    FeedbackRecorded { rating: i32 },
}

impl LeadEvent {
    /// The event's type name, for the stores that keep one per row.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Captured(_) => "LeadCaptured",
            Self::Qualified { .. } => "LeadQualified",
            Self::Accepted => "LeadAccepted",
            Self::Rejected { .. } => "LeadRejected",
            Self::Closed(_) => "LeadClosed",
            Self::FeedbackRecorded { .. } => "FeedbackRecorded",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeadError {
    #[error("{command} refused: the lead was never captured")]
    NotCaptured { command: &'static str },
    #[error("{command} refused: the lead is in stage {stage:?}")]
    NotAllowed { command: &'static str, stage: Stage },
}

/// The lifecycle: Captured → Mql → Sql or Rejected; Sql → Won or Lost;
/// feedback once the lead reached MQL.
pub fn decide(lead: &Lead, command: LeadCommand) -> Result<LeadEvent, LeadError> {
    use LeadCommand as C;
    let Some(stage) = lead.stage else {
        return match command {
            C::Capture(contact) => Ok(LeadEvent::Captured(contact)),
            other => Err(LeadError::NotCaptured { command: other.name() }),
        };
    };
    match (stage, command) {
        (Stage::Captured, C::Qualify { assignee, score }) => Ok(LeadEvent::Qualified { assignee, score }),
        (Stage::Mql, C::Accept) => Ok(LeadEvent::Accepted),
        (Stage::Mql, C::Reject { reason }) => Ok(LeadEvent::Rejected { reason }),
        (Stage::Sql, C::Close(outcome)) => Ok(LeadEvent::Closed(outcome)),
        (stage, C::RecordFeedback { rating }) if stage != Stage::Captured => Ok(LeadEvent::FeedbackRecorded { rating }),
        (stage, command) => Err(LeadError::NotAllowed { command: command.name(), stage }),
    }
}

/// Folds one event into the lead. Events come from the log, so they were
/// allowed when decided; `evolve` does not judge them again.
pub fn evolve(lead: &mut Lead, event: &LeadEvent) {
    let stage = match event {
        LeadEvent::Captured(_) => Stage::Captured,
        LeadEvent::Qualified { .. } => Stage::Mql,
        LeadEvent::Accepted => Stage::Sql,
        LeadEvent::Rejected { .. } => Stage::Rejected,
        LeadEvent::Closed(Outcome::Won { .. }) => Stage::Won,
        LeadEvent::Closed(Outcome::Lost { .. }) => Stage::Lost,
        LeadEvent::FeedbackRecorded { .. } => return,
    };
    lead.stage = Some(stage);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact() -> Contact {
        Contact {
            email: "lead-1@bench.example".into(),
            name: "Bench Lead 1".into(),
            company: "Bench Example GmbH".into(),
            phone: "+49 30 1234567".into(),
            source: "web".into(),
            campaign: "load-test".into(),
            persona: "cfo-enterprise".into(),
        }
    }

    fn commands() -> [LeadCommand; 7] {
        [
            LeadCommand::Capture(contact()),
            LeadCommand::Qualify { assignee: "rep-3".into(), score: 70 },
            LeadCommand::Accept,
            LeadCommand::Reject { reason: "no-budget".into() },
            LeadCommand::Close(Outcome::Won { amount_minor: 100_000, currency: "EUR".into() }),
            LeadCommand::Close(Outcome::Lost { reason: "chose-competitor".into() }),
            LeadCommand::RecordFeedback { rating: 4 },
        ]
    }

    /// Every stage (and no stage) × every command, in the order of
    /// [`commands`]: the stage the command leads to, or `None` if refused.
    #[test]
    fn the_lifecycle_table() {
        use Stage::*;
        let table: [(Option<Stage>, [Option<Stage>; 7]); 7] = [
            (None, [Some(Captured), None, None, None, None, None, None]),
            (Some(Captured), [None, Some(Mql), None, None, None, None, None]),
            (Some(Mql), [None, None, Some(Sql), Some(Rejected), None, None, Some(Mql)]),
            (Some(Sql), [None, None, None, None, Some(Won), Some(Lost), Some(Sql)]),
            (Some(Rejected), [None, None, None, None, None, None, Some(Rejected)]),
            (Some(Won), [None, None, None, None, None, None, Some(Won)]),
            (Some(Lost), [None, None, None, None, None, None, Some(Lost)]),
        ];
        for (stage, expected) in table {
            for (command, expected) in commands().into_iter().zip(expected) {
                let name = command.name();
                let mut lead = Lead { stage };
                let after = decide(&lead, command).map(|event| {
                    evolve(&mut lead, &event);
                    lead.stage
                });
                match expected {
                    Some(next) => assert_eq!(after, Ok(Some(next)), "{name} in {stage:?}"),
                    None => assert!(after.is_err(), "{name} in {stage:?} gave {after:?}"),
                }
            }
        }
    }

    #[test]
    fn an_event_carries_the_command_fields() {
        let lead = Lead { stage: Some(Stage::Sql) };
        let close = LeadCommand::Close(Outcome::Won { amount_minor: 123_400, currency: "EUR".into() });
        assert_eq!(
            decide(&lead, close),
            Ok(LeadEvent::Closed(Outcome::Won { amount_minor: 123_400, currency: "EUR".into() }))
        );
        assert_eq!(decide(&Lead::default(), LeadCommand::Capture(contact())), Ok(LeadEvent::Captured(contact())));
    }

    #[test]
    fn refusals_name_the_command_and_stage() {
        let error = decide(&Lead { stage: Some(Stage::Won) }, LeadCommand::Accept).expect_err("accept is refused");
        assert_eq!(error.to_string(), "AcceptLead refused: the lead is in stage Won");
        let error = decide(&Lead::default(), LeadCommand::Accept).expect_err("accept is refused");
        assert_eq!(error.to_string(), "AcceptLead refused: the lead was never captured");
    }
}
