//! The service-level agreement between marketing and sales, as a versioned
//! policy: how fast sales must answer an MQL hand-off and close an SQL (in
//! working time, by the policy's [`WorkingCalendar`]), the monthly goals both
//! teams signed up to, and when they agreed to review it.
//!
//! Policies are events of their own stream in the log (`sla-policy`), each
//! effective from an instant; a hand-off is judged by the policy in force
//! when it started.

use jiff::civil::Date;

use crate::calendar::WorkingCalendar;
use crate::{LeadId, Money, Timestamp, ValidationError};

/// The log stream of the SLA policy (the nil UUID, which no lead may use).
pub const SLA_POLICY_STREAM: LeadId = LeadId::NIL;

const HOUR_US: i64 = 3_600_000_000;
/// Default time for sales to answer an MQL hand-off: 24 working hours.
pub const DEFAULT_ACCEPT_WITHIN_US: i64 = 24 * HOUR_US;
/// Default time to close an SQL: 30 days of working time.
pub const DEFAULT_CLOSE_WITHIN_US: i64 = 30 * 24 * HOUR_US;
/// The longest limit a policy may set (about ten years).
const MAX_LIMIT_US: i64 = 3650 * 24 * HOUR_US;

/// A share from 0 to 1 in basis points (1/10,000), so it compares exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BasisPoints(u16);

impl BasisPoints {
    pub fn parse(field: &str, share: f64) -> Result<Self, ValidationError> {
        if !(0.0..=1.0).contains(&share) {
            return Err(ValidationError::new(field, "must be a share from 0 to 1, e.g. 0.6"));
        }
        Ok(Self((share * 10_000.0).round() as u16))
    }

    pub fn from_basis_points(value: u16) -> Option<Self> {
        (value <= 10_000).then_some(Self(value))
    }

    pub fn value(&self) -> u16 {
        self.0
    }

    pub fn share(&self) -> f64 {
        f64::from(self.0) / 10_000.0
    }
}

/// One version of the agreement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaPolicy {
    /// Working time sales has to accept or reject an MQL hand-off.
    pub accept_within_us: i64,
    /// Working time from acceptance to close.
    pub close_within_us: i64,
    /// Marketing's MQL quota per calendar month.
    pub mql_target: Option<u64>,
    /// The share of a month's MQL hand-offs that sales accepts.
    pub mql_to_sql_rate_target: Option<BasisPoints>,
    /// Won revenue per calendar month.
    pub won_amount_target: Option<Money>,
    /// The date by which the teams agreed to re-evaluate the agreement.
    pub review_by: Option<Date>,
    /// Working hours; `None` is 24×7 (plain elapsed time).
    pub calendar: Option<WorkingCalendar>,
    /// From when this version holds (a past instant re-judges the hand-offs
    /// started since).
    pub effective_from: Timestamp,
}

impl SlaPolicy {
    /// The agreement that holds while none is defined: 24 working hours to
    /// answer, 30 days to close, 24×7, no goals, in force since always.
    pub fn default_agreement() -> Self {
        Self {
            accept_within_us: DEFAULT_ACCEPT_WITHIN_US,
            close_within_us: DEFAULT_CLOSE_WITHIN_US,
            mql_target: None,
            mql_to_sql_rate_target: None,
            won_amount_target: None,
            review_by: None,
            calendar: None,
            effective_from: Timestamp::MIN,
        }
    }

    /// Checks a limit given in microseconds (`field` names it in errors).
    pub fn limit(field: &str, micros: i64) -> Result<i64, ValidationError> {
        if micros <= 0 || micros > MAX_LIMIT_US {
            return Err(ValidationError::new(field, "must be more than 0 and at most 3650 days"));
        }
        Ok(micros)
    }

    pub fn parse_review_by(field: &str, text: &str) -> Result<Option<Date>, ValidationError> {
        if text.is_empty() {
            return Ok(None);
        }
        text.parse::<Date>().map(Some).map_err(|_| ValidationError::new(field, "must be a date YYYY-MM-DD"))
    }

    /// When a clock of `limit_us` working time started at `start` runs out.
    pub fn deadline(&self, start: Timestamp, limit_us: i64) -> Timestamp {
        match &self.calendar {
            Some(calendar) => calendar.deadline(start, limit_us),
            None => start.saturating_add_micros(limit_us),
        }
    }

    /// Working time in `[from, to)` under this policy's calendar.
    pub fn working_micros(&self, from: Timestamp, to: Timestamp) -> i64 {
        match &self.calendar {
            Some(calendar) => calendar.working_micros(from, to),
            None => (to.as_micros() - from.as_micros()).max(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_calendar_working_time_is_elapsed_time() {
        let policy = SlaPolicy::default_agreement();
        let start = Timestamp::from_micros(1_800_000_000_000_000).expect("in range");
        assert_eq!(policy.deadline(start, HOUR_US).as_micros() - start.as_micros(), HOUR_US);
        assert_eq!(policy.working_micros(start, policy.deadline(start, HOUR_US)), HOUR_US);
    }

    #[test]
    fn shares_and_limits_are_checked() {
        assert_eq!(BasisPoints::parse("rate", 0.6).map(|b| b.value()), Ok(6000));
        assert!(BasisPoints::parse("rate", 1.5).is_err());
        assert!(BasisPoints::parse("rate", f64::NAN).is_err());
        assert!(SlaPolicy::limit("accept_within", 0).is_err());
        assert!(SlaPolicy::limit("accept_within", HOUR_US).is_ok());
        assert!(SlaPolicy::parse_review_by("review_by", "2027-02-30").is_err());
    }
}
