//! Who does what in smarketing: the roles a calling system holds and the
//! commands each role may issue.
//!
//! Marketing captures, qualifies and assigns leads, and may disqualify junk
//! (close it LOST) while the lead is still its own (CAPTURED or REJECTED);
//! sales accepts, rejects, closes and rates leads and assigns them; analytics
//! only reads; admin sets the SLA policy, erases people and rebuilds read
//! models. Every role may read.

use std::fmt;

use crate::{CommandKind, DomainError, Stage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Marketing,
    Sales,
    Analytics,
    Admin,
}

impl Role {
    pub const ALL: [Self; 4] = [Self::Marketing, Self::Sales, Self::Analytics, Self::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Self::Marketing => "marketing",
            Self::Sales => "sales",
            Self::Analytics => "analytics",
            Self::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.name() == text)
    }

    /// Whether this role may issue `command` on a lead in `stage` (`None`:
    /// the lead does not exist yet).
    pub fn may(self, command: CommandKind, stage: Option<Stage>) -> bool {
        use CommandKind as C;
        match self {
            Self::Marketing => match command {
                C::CaptureLead | C::QualifyLead | C::AssignLead => true,
                C::CloseLeadLost => matches!(stage, Some(Stage::Captured | Stage::Rejected)),
                C::AcceptLead | C::RejectLead | C::CloseLeadWon | C::RecordFeedback | C::EraseLead => false,
            },
            Self::Sales => match command {
                C::AcceptLead | C::RejectLead | C::CloseLeadWon | C::CloseLeadLost | C::RecordFeedback => true,
                C::AssignLead => true,
                C::CaptureLead | C::QualifyLead | C::EraseLead => false,
            },
            Self::Admin => command == C::EraseLead,
            Self::Analytics => false,
        }
    }

    /// Whether this role may issue `command` in some stage: what the gRPC
    /// layer checks before the lead's stage is known.
    pub fn may_ever(self, command: CommandKind) -> bool {
        std::iter::once(None).chain(Stage::ALL.into_iter().map(Some)).any(|stage| self.may(command, stage))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The roles of one caller, a small set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Roles(u8);

impl Roles {
    /// Every role: a caller when authentication is off.
    pub const ALL: Self = Self(0b1111);
    pub const NONE: Self = Self(0);

    pub fn of(roles: impl IntoIterator<Item = Role>) -> Self {
        Self(roles.into_iter().fold(0, |bits, role| bits | Self::bit(role)))
    }

    fn bit(role: Role) -> u8 {
        1 << (role as u8)
    }

    pub fn contains(self, role: Role) -> bool {
        self.0 & Self::bit(role) != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |role| self.contains(*role))
    }

    /// Refuses `command` on a lead in `stage` unless one of the roles may issue it.
    pub fn permit(self, command: CommandKind, stage: Option<Stage>) -> Result<(), DomainError> {
        if self.iter().any(|role| role.may(command, stage)) {
            Ok(())
        } else {
            Err(DomainError::NotPermitted { command, stage, roles: self })
        }
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Role::name).collect();
        if names.is_empty() { f.write_str("no role") } else { f.write_str(&names.join(",")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules as the issue states them, written out separately.
    fn expected(role: Role, command: CommandKind, stage: Option<Stage>) -> bool {
        use CommandKind as C;
        match (role, command) {
            (Role::Marketing, C::CaptureLead | C::QualifyLead | C::AssignLead) => true,
            (Role::Marketing, C::CloseLeadLost) => stage == Some(Stage::Captured) || stage == Some(Stage::Rejected),
            (Role::Sales, C::AcceptLead | C::RejectLead | C::CloseLeadWon | C::CloseLeadLost) => true,
            (Role::Sales, C::RecordFeedback | C::AssignLead) => true,
            (Role::Admin, C::EraseLead) => true,
            _ => false,
        }
    }

    #[test]
    fn every_role_command_and_stage() {
        let stages = std::iter::once(None).chain(Stage::ALL.into_iter().map(Some));
        for stage in stages {
            for command in CommandKind::ALL {
                for role in Role::ALL {
                    assert_eq!(role.may(command, stage), expected(role, command, stage), "{role} {command} {stage:?}");
                    let single = Roles::of([role]);
                    assert_eq!(single.permit(command, stage).is_ok(), expected(role, command, stage));
                }
                assert!(Roles::NONE.permit(command, stage).is_err());
            }
        }
    }

    #[test]
    fn role_sets_print_and_parse() {
        let roles = Roles::of([Role::Sales, Role::Analytics]);
        assert_eq!(roles.to_string(), "sales,analytics");
        assert!(roles.contains(Role::Sales) && !roles.contains(Role::Admin));
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
    }
}
