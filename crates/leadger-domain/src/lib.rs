//! The lead lifecycle, as a pure state machine.
//!
//! Marketing captures a lead and qualifies it as an MQL; sales accepts it as an
//! SQL or rejects it back with a reason; sales closes it won or lost and rates
//! its quality. This crate owns those rules and nothing else: it knows nothing
//! about tokio, SQL, gRPC or NATS, and it cannot fail except by returning a
//! [`DomainError`] or a [`ValidationError`].
//!
//! The core is two functions: [`decide`] turns a [`Command`] and the lead's
//! current state into the one [`LeadEvent`] it produces, and [`evolve`] folds an
//! event into the state. Time is a parameter (`now`), never read from a clock.
//!
//! [`journey`] holds the read-model math: each lead's path through the funnel
//! and the funnel, conversion and lead-quality figures computed from it;
//! [`sla`] the service-level agreement, [`calendar`] its working time and
//! [`handoff`] the hand-offs it judges and the SLA report. [`Role`]s say who
//! in smarketing may issue which command.

pub mod calendar;
mod command;
mod error;
mod event;
pub mod handoff;
pub mod journey;
mod lead;
mod roles;
pub mod sla;
mod values;

pub use command::{Action, Command, CommandKind};
pub use error::{DomainError, ValidationError};
pub use event::{CloseOutcome, Closing, Feedback, LeadDetails, LeadEvent, LeadEventKind, Qualification, Rejection};
pub use lead::{Lead, LeadProfile, Stage, decide, evolve};
pub use roles::{Role, Roles};
pub use values::{CurrencyCode, Email, Label, LeadId, Money, Note, Rating, ReasonCode, Score, Timestamp};

/// How far in the future a client may date an event (clock skew between systems).
pub const MAX_FUTURE_SKEW_MICROS: i64 = 5 * 60 * 1_000_000;
