//! Validated values: once parsed, a value is known to satisfy its rules, so
//! nothing past the edge re-checks a bare string or integer.

use std::fmt;

use uuid::Uuid;

use crate::ValidationError;

/// A lead's id: its stream id in the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeadId(Uuid);

impl LeadId {
    /// The nil UUID: the stream of the SLA policy, never a lead.
    pub const NIL: Self = Self(Uuid::nil());

    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn parse(field: &str, text: &str) -> Result<Self, ValidationError> {
        let id = Uuid::try_parse(text)
            .map_err(|_| ValidationError::new(field, "must be a UUID (e.g. 0190f3c4-8a4e-7d2b-9c1e-2f6a1b3c4d5e)"))?;
        if id.is_nil() {
            return Err(ValidationError::new(field, "must not be the nil UUID (it is reserved for the SLA policy)"));
        }
        Ok(Self(id))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for LeadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// An instant in microseconds since the Unix epoch (UTC). Event times are
/// truncated to microseconds so they survive every store and format exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z, the range of
    /// `google.protobuf.Timestamp`.
    pub const MIN: Self = Self(-62_135_596_800_000_000);
    pub const MAX: Self = Self(253_402_300_799_999_999);

    pub fn from_micros(micros: i64) -> Option<Self> {
        (Self::MIN.0..=Self::MAX.0).contains(&micros).then_some(Self(micros))
    }

    /// Seconds and nanoseconds as in `google.protobuf.Timestamp`, truncated to
    /// microseconds.
    pub fn from_unix(field: &str, seconds: i64, nanos: i32) -> Result<Self, ValidationError> {
        if !(0..1_000_000_000).contains(&nanos) {
            return Err(ValidationError::new(field, "nanos must be in 0..999999999"));
        }
        seconds
            .checked_mul(1_000_000)
            .and_then(|micros| micros.checked_add(i64::from(nanos / 1_000)))
            .and_then(Self::from_micros)
            .ok_or_else(|| ValidationError::new(field, "must be between 0001-01-01 and 9999-12-31"))
    }

    pub fn as_micros(&self) -> i64 {
        self.0
    }

    pub fn unix_seconds(&self) -> i64 {
        self.0.div_euclid(1_000_000)
    }

    pub fn subsec_nanos(&self) -> i32 {
        // In 0..1_000_000_000 by construction of rem_euclid.
        (self.0.rem_euclid(1_000_000) * 1_000) as i32
    }

    pub fn saturating_add_micros(&self, micros: i64) -> Self {
        Self(self.0.saturating_add(micros))
    }

    /// RFC 3339 in UTC with microseconds, e.g. `2026-11-24T09:15:00.123456Z`.
    pub fn to_rfc3339(&self) -> String {
        let days = self.0.div_euclid(86_400_000_000);
        let of_day = self.0.rem_euclid(86_400_000_000);
        let (year, month, day) = civil_from_days(days);
        let seconds = of_day / 1_000_000;
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
            seconds / 3600,
            seconds / 60 % 60,
            seconds % 60,
            of_day % 1_000_000
        )
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 { shifted_month + 3 } else { shifted_month - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06}s", self.unix_seconds(), self.0.rem_euclid(1_000_000))
    }
}

/// An email address that passed a practical syntax check. Compared
/// case-insensitively through [`Email::normalized`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub const MAX_BYTES: usize = 254;

    pub fn parse(field: &str, text: &str) -> Result<Self, ValidationError> {
        let email = text.trim();
        let invalid = |why: &str| Err(ValidationError::new(field, why.to_string()));
        if email.is_empty() {
            return invalid("is required");
        }
        if email.len() > Self::MAX_BYTES {
            return invalid("must be at most 254 bytes");
        }
        let Some((local, domain)) = email.rsplit_once('@') else {
            return invalid("must be an email address like name@example.com");
        };
        if local.is_empty() || local.len() > 64 {
            return invalid("must have 1 to 64 bytes before the @");
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return invalid("must not contain spaces or control characters");
        }
        let labels_ok = domain.split('.').count() >= 2
            && domain.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_alphanumeric() || c == '-')
            });
        if !labels_ok {
            return invalid("must have a domain like example.com after the @");
        }
        Ok(Self(email.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form used to match one person across leads.
    pub fn normalized(&self) -> String {
        self.0.to_lowercase()
    }
}

/// Short single-line text: names, companies, rep ids, sources. At most 200
/// characters, no control characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Label(String);

impl Label {
    pub const MAX_CHARS: usize = 200;

    /// `None` for empty (after trimming) input: the field was not given.
    pub fn parse_optional(field: &str, text: &str) -> Result<Option<Self>, ValidationError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(None);
        }
        if text.chars().count() > Self::MAX_CHARS {
            return Err(ValidationError::new(field, "must be at most 200 characters"));
        }
        if text.chars().any(char::is_control) {
            return Err(ValidationError::new(field, "must not contain control characters"));
        }
        Ok(Some(Self(text.to_string())))
    }

    pub fn parse_required(field: &str, text: &str) -> Result<Self, ValidationError> {
        Self::parse_optional(field, text)?.ok_or_else(|| ValidationError::new(field, "is required"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A reason that read models count: lower-case letters, digits and `-`, 1 to
/// 64 characters (e.g. `no-budget`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReasonCode(String);

impl ReasonCode {
    pub fn parse(field: &str, text: &str) -> Result<Self, ValidationError> {
        if text.is_empty() {
            return Err(ValidationError::new(field, "is required (a code such as no-budget)"));
        }
        if text.len() > 64 || !text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
            return Err(ValidationError::new(
                field,
                "must be a code of at most 64 lower-case letters, digits and '-' (e.g. no-budget); free text goes in note",
            ));
        }
        Ok(Self(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free text: notes and comments, at most 4 KiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note(String);

impl Note {
    pub const MAX_BYTES: usize = 4096;

    pub fn parse_optional(field: &str, text: &str) -> Result<Option<Self>, ValidationError> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        if text.len() > Self::MAX_BYTES {
            return Err(ValidationError::new(field, "must be at most 4096 bytes"));
        }
        Ok(Some(Self(text.to_string())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Sales' rating of a lead's quality, 1 (poor) to 5 (excellent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rating(u8);

impl Rating {
    pub fn parse(field: &str, value: i64) -> Result<Self, ValidationError> {
        u8::try_from(value)
            .ok()
            .filter(|r| (1..=5).contains(r))
            .map(Self)
            .ok_or_else(|| ValidationError::new(field, "must be between 1 and 5"))
    }

    pub fn value(&self) -> u8 {
        self.0
    }
}

/// Marketing's lead score at qualification, 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Score(u8);

impl Score {
    pub fn parse(field: &str, value: i64) -> Result<Self, ValidationError> {
        u8::try_from(value)
            .ok()
            .filter(|s| *s <= 100)
            .map(Self)
            .ok_or_else(|| ValidationError::new(field, "must be between 0 and 100"))
    }

    pub fn value(&self) -> u8 {
        self.0
    }
}

/// An ISO 4217 alphabetic currency code such as `EUR`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CurrencyCode(String);

impl CurrencyCode {
    pub fn parse(field: &str, text: &str) -> Result<Self, ValidationError> {
        if text.len() == 3 && text.bytes().all(|b| b.is_ascii_uppercase()) {
            Ok(Self(text.to_string()))
        } else {
            Err(ValidationError::new(field, "must be an ISO 4217 code of three upper-case letters (e.g. EUR)"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An amount in the currency's minor unit (cents), never negative.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Money {
    pub amount_minor: i64,
    pub currency: CurrencyCode,
}

impl Money {
    pub fn parse(
        amount_field: &str,
        amount_minor: i64,
        currency_field: &str,
        currency: &str,
    ) -> Result<Self, ValidationError> {
        if amount_minor < 0 {
            return Err(ValidationError::new(amount_field, "must be zero or more"));
        }
        Ok(Self { amount_minor, currency: CurrencyCode::parse(currency_field, currency)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_print_as_rfc3339_utc_with_microseconds() {
        let at = |micros| Timestamp::from_micros(micros).expect("in range").to_rfc3339();
        assert_eq!(at(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(1_795_511_700_123_456), "2026-11-24T09:15:00.123456Z");
        assert_eq!(at(951_782_400_000_000), "2000-02-29T00:00:00.000000Z");
        assert_eq!(at(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(Timestamp::MIN.to_rfc3339(), "0001-01-01T00:00:00.000000Z");
        assert_eq!(Timestamp::MAX.to_rfc3339(), "9999-12-31T23:59:59.999999Z");
    }

    #[test]
    fn emails_are_checked_and_normalized() {
        let email = Email::parse("email", "  Ada.Lovelace@Example.COM ").expect("valid");
        assert_eq!(email.as_str(), "Ada.Lovelace@Example.COM");
        assert_eq!(email.normalized(), "ada.lovelace@example.com");
        for bad in
            ["", "ada", "@example.com", "ada@", "ada@example", "ada @example.com", "ada@-x.com", "ada@exa_mple.com"]
        {
            let err = Email::parse("email", bad).expect_err(bad);
            assert_eq!(err.field, "email");
        }
        let long = format!("{}@{}.com", "a".repeat(64), "b".repeat(200));
        assert!(Email::parse("email", &long).expect_err("too long").description.contains("254"));
    }

    #[test]
    fn reason_codes_are_short_lowercase_codes() {
        assert!(ReasonCode::parse("reason", "no-budget").is_ok());
        assert!(ReasonCode::parse("reason", &"a".repeat(64)).is_ok());
        for bad in ["", "No-Budget", "no budget", "no_budget", &"a".repeat(65)] {
            assert_eq!(ReasonCode::parse("reason", bad).expect_err(bad).field, "reason");
        }
    }

    #[test]
    fn labels_count_characters_not_bytes() {
        assert!(Label::parse_optional("name", &"é".repeat(200)).is_ok());
        assert!(Label::parse_optional("name", &"é".repeat(201)).is_err());
        assert_eq!(Label::parse_optional("name", "   ").expect("blank is absent"), None);
        assert!(Label::parse_optional("name", "a\u{0}b").is_err());
    }

    #[test]
    fn timestamps_keep_microseconds_and_reject_out_of_range() {
        let t = Timestamp::from_unix("occurred_at", 1_700_000_000, 123_456_789).expect("in range");
        assert_eq!(t.as_micros(), 1_700_000_000_123_456);
        assert_eq!(t.subsec_nanos(), 123_456_000);
        let before_epoch = Timestamp::from_unix("occurred_at", -1, 500_000_000).expect("in range");
        assert_eq!((before_epoch.unix_seconds(), before_epoch.subsec_nanos()), (-1, 500_000_000));
        assert!(Timestamp::from_unix("occurred_at", i64::MAX, 0).is_err());
        assert!(Timestamp::from_unix("occurred_at", 0, -1).is_err());
        assert!(Timestamp::from_unix("occurred_at", 253_402_300_800, 0).is_err());
    }

    #[test]
    fn ratings_scores_and_money_have_ranges() {
        assert!(Rating::parse("rating", 0).is_err() && Rating::parse("rating", 6).is_err());
        assert_eq!(Rating::parse("rating", 5).map(|r| r.value()), Ok(5));
        assert!(Score::parse("score", 101).is_err() && Score::parse("score", -1).is_err());
        assert_eq!(Money::parse("amount_minor", -1, "currency", "EUR").expect_err("negative").field, "amount_minor");
        assert_eq!(Money::parse("amount_minor", 1, "currency", "eur").expect_err("lower case").field, "currency");
    }
}
