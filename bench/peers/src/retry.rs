//! The retry policy the driver applies to every peer alike.
//!
//! All three crates guard a lead's stream optimistically: a command loads the
//! lead, decides, and the append is turned away if another transaction got
//! in between. The documented way to use them is to run such a command
//! again, so the driver does, as a user of the crate would:
//!
//! - after a **concurrency conflict**: the crate's own optimistic check
//!   (cqrs-es's `AggregateConflict`, disintegrate's "concurrent modification
//!   error"), a serialization failure or deadlock (SQLSTATE 40001, 40P01), or
//!   a unique violation on the stream's version (esrs). Nothing was written,
//!   so running the command again on a fresh load is safe;
//! - after a **stale refusal**: the lead's rules refused a command that the
//!   writer knows is allowed, because the writer itself committed the lead's
//!   earlier commands (each lead has one writer). The peer can only have
//!   decided on a load that missed them; disintegrate's loads do, while an
//!   append older than the writer's is still in flight.
//!
//! Anything else fails the command at once. A command gets at most
//! [`MAX_ATTEMPTS`] attempts; between them the writer yields after the first
//! failure, then sleeps 1 ms, doubling up to 20 ms, each pause jittered to
//! between half and all of it so writers that collided do not collide again
//! in step.

use std::time::Duration;

use crate::lead::{self, Lead, LeadCommand};

/// Attempts a command gets before its last failure counts as an error.
pub const MAX_ATTEMPTS: u32 = 50;
/// The pause after the second failed attempt; it doubles from there.
const FIRST_SLEEP: Duration = Duration::from_millis(1);
/// The longest pause between two attempts.
const MAX_SLEEP: Duration = Duration::from_millis(20);

/// Why a peer's command failed, as far as retrying is concerned. Each peer
/// sorts its crate's errors; the error itself is kept for the report.
#[derive(Debug)]
pub enum Failure {
    /// The crate's concurrency guard turned the command away before anything
    /// was written.
    Conflict(anyhow::Error),
    /// The lead's rules refused the command on the state the crate loaded.
    Refused(anyhow::Error),
    /// Anything else; never retried.
    Other(anyhow::Error),
}

impl Failure {
    pub fn other(error: impl Into<anyhow::Error>) -> Self {
        Self::Other(error.into())
    }

    pub fn error(&self) -> &anyhow::Error {
        match self {
            Self::Conflict(error) | Self::Refused(error) | Self::Other(error) => error,
        }
    }

    /// Whether the command may succeed when run again. `known` is the lead as
    /// the writer's own commits left it and `history` whether there were any:
    /// a refusal is stale only if the writer committed something the peer
    /// must have missed, and its rules allow the command on what it knows.
    pub fn is_retryable(&self, known: &Lead, history: bool, command: &LeadCommand) -> bool {
        match self {
            Self::Conflict(_) => true,
            Self::Refused(_) => history && lead::decide(known, command.clone()).is_ok(),
            Self::Other(_) => false,
        }
    }
}

/// Whether a database error is a serialization failure or a deadlock: the
/// transaction was rolled back and PostgreSQL's documentation says to retry.
pub fn is_serialization_failure(error: &sqlx::Error) -> bool {
    sqlstate(error).is_some_and(|code| code == "40001" || code == "40P01")
}

/// Whether a database error is a unique violation of `constraint`.
pub fn is_unique_violation_of(error: &sqlx::Error, constraint: &str) -> bool {
    let sqlx::Error::Database(database) = error else { return false };
    database.code().as_deref() == Some("23505") && database.constraint() == Some(constraint)
}

fn sqlstate(error: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(database) = error else { return None };
    database.code().map(|code| code.into_owned())
}

/// What the retries of a run were, merged over the writers, warm-up included.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Retries {
    /// Attempts run again after a concurrency conflict.
    pub after_conflicts: u64,
    /// Attempts run again after a stale refusal.
    pub after_stale_refusals: u64,
    /// Commands that needed more than one attempt.
    pub commands: u64,
    /// Commands whose last allowed attempt still failed retryably.
    pub exhausted: u64,
    /// The most attempts one command took, succeeding or not.
    pub most_attempts: u32,
}

impl Retries {
    /// Retried attempts in all: the report's `retries`.
    pub fn total(&self) -> u64 {
        self.after_conflicts + self.after_stale_refusals
    }

    pub fn count_retry(&mut self, failure: &Failure) {
        match failure {
            Failure::Conflict(_) => self.after_conflicts += 1,
            Failure::Refused(_) => self.after_stale_refusals += 1,
            Failure::Other(_) => {}
        }
    }

    /// A command is done (succeeded, or failed for good) after `attempts`.
    pub fn count_command(&mut self, attempts: u32) {
        if attempts > 1 {
            self.commands += 1;
        }
        self.most_attempts = self.most_attempts.max(attempts);
    }

    pub fn merge(&mut self, other: &Retries) {
        self.after_conflicts += other.after_conflicts;
        self.after_stale_refusals += other.after_stale_refusals;
        self.commands += other.commands;
        self.exhausted += other.exhausted;
        self.most_attempts = self.most_attempts.max(other.most_attempts);
    }

    /// The report's note on the retries, with the peer's account of where
    /// they come from; `None` if there were none.
    pub fn note(&self, cause: Option<&str>) -> Option<String> {
        if self.total() == 0 {
            return None;
        }
        let mut note = format!(
            "{total} attempts were retried (warm-up included) for {commands} commands, at most {most} attempts \
             for one: {conflicts} after a concurrency conflict, {stale} after a refusal contradicted by the \
             writer's own earlier commit; latency counts from a command's first attempt",
            total = self.total(),
            commands = self.commands,
            most = self.most_attempts,
            conflicts = self.after_conflicts,
            stale = self.after_stale_refusals,
        );
        if self.exhausted > 0 {
            note += &format!("; {} commands still failed after {MAX_ATTEMPTS} attempts (in errors)", self.exhausted);
        }
        if let Some(cause) = cause {
            note += &format!(". {cause}");
        }
        Some(note)
    }
}

/// The pause after failed attempt `attempt` (from 1): none after the first
/// (the writer only yields), then [`FIRST_SLEEP`] doubling up to
/// [`MAX_SLEEP`], drawn from between half and all of that by `entropy`.
pub fn backoff(attempt: u32, entropy: u64) -> Duration {
    let full = ceiling(attempt);
    let half = full / 2;
    let spread = u64::try_from((full - half).as_micros()).unwrap_or(u64::MAX);
    half + Duration::from_micros(mix(entropy) % (spread + 1))
}

/// The longest [`backoff`] after failed attempt `attempt`.
fn ceiling(attempt: u32) -> Duration {
    match attempt {
        0 | 1 => Duration::ZERO,
        _ => FIRST_SLEEP.saturating_mul(1 << (attempt - 2).min(16)).min(MAX_SLEEP),
    }
}

/// Waits out [`backoff`]: a yield to the scheduler when it is zero.
pub async fn pause(attempt: u32, entropy: u64) {
    let pause = backoff(attempt, entropy);
    if pause.is_zero() {
        tokio::task::yield_now().await;
    } else {
        tokio::time::sleep(pause).await;
    }
}

/// SplitMix64's finalizer: spreads any input over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lead::{LeadError, Stage};

    fn refused() -> Failure {
        Failure::Refused(LeadError::NotCaptured { command: "QualifyLead" }.into())
    }

    #[test]
    fn the_backoff_yields_then_doubles_to_its_cap() {
        assert_eq!(backoff(1, 7), Duration::ZERO);
        let ceilings = [(2, 1), (3, 2), (4, 4), (5, 8), (6, 16), (7, 20), (8, 20), (49, 20), (u32::MAX, 20)];
        for (attempt, millis) in ceilings {
            let full = Duration::from_millis(millis);
            for entropy in 0..200 {
                let pause = backoff(attempt, entropy);
                assert!(
                    pause >= full / 2 && pause <= full,
                    "attempt {attempt}: {pause:?} outside {full:?}/2..={full:?}"
                );
            }
        }
        let drawn: std::collections::BTreeSet<_> = (0..200).map(|entropy| backoff(7, entropy)).collect();
        assert!(drawn.len() > 100, "only {} different pauses", drawn.len());
    }

    /// A command that never succeeds waits under a second in all: the
    /// pauses after its first 49 attempts.
    #[test]
    fn the_worst_case_waits_under_a_second() {
        let longest: Duration = (1..MAX_ATTEMPTS).map(ceiling).sum();
        assert_eq!(longest, Duration::from_millis(1 + 2 + 4 + 8 + 16 + 20 * 43));
        for entropy in [0, 1, u64::MAX] {
            let drawn: Duration = (1..MAX_ATTEMPTS).map(|attempt| backoff(attempt, entropy)).sum();
            assert!(drawn <= longest && drawn >= longest / 2, "{drawn:?}");
        }
    }

    #[test]
    fn conflicts_are_retried_and_other_errors_not() {
        let qualify = LeadCommand::Qualify { assignee: "rep-1".into(), score: 70 };
        let captured = Lead { stage: Some(Stage::Captured) };
        assert!(Failure::Conflict(anyhow::anyhow!("x")).is_retryable(&Lead::default(), false, &qualify));
        assert!(!Failure::other(anyhow::anyhow!("x")).is_retryable(&captured, true, &qualify));
    }

    #[test]
    fn a_refusal_is_retried_only_when_the_writers_commits_contradict_it() {
        let qualify = LeadCommand::Qualify { assignee: "rep-1".into(), score: 70 };
        let captured = Lead { stage: Some(Stage::Captured) };
        assert!(refused().is_retryable(&captured, true, &qualify), "the writer captured the lead: a stale read");
        assert!(!refused().is_retryable(&Lead::default(), false, &qualify), "nothing was committed before");
        let rejected = Lead { stage: Some(Stage::Rejected) };
        assert!(!refused().is_retryable(&rejected, true, &qualify), "the rules refuse it on what the writer knows");
    }

    #[test]
    fn retries_merge_and_note() {
        let mut one = Retries::default();
        assert_eq!(one.note(Some("why")), None);
        one.count_retry(&Failure::Conflict(anyhow::anyhow!("x")));
        one.count_retry(&refused());
        one.count_retry(&Failure::other(anyhow::anyhow!("x")));
        one.count_command(3);
        one.count_command(1);
        let mut two = Retries { exhausted: 1, ..Retries::default() };
        two.count_retry(&refused());
        two.count_command(2);
        one.merge(&two);
        assert_eq!(
            one,
            Retries { after_conflicts: 1, after_stale_refusals: 2, commands: 2, exhausted: 1, most_attempts: 3 }
        );
        assert_eq!(one.total(), 3);
        let note = one.note(Some("Why.")).expect("there were retries");
        assert!(note.starts_with("3 attempts were retried (warm-up included) for 2 commands, at most 3"), "{note}");
        assert!(note.contains("1 commands still failed after 50 attempts"), "{note}");
        assert!(note.ends_with(". Why."), "{note}");
    }
}
