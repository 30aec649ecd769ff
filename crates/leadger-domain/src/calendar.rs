//! Working time: the hours in which a service-level clock runs.
//!
//! A [`WorkingCalendar`] is a time zone (IANA name), the working days, one
//! daily opening in local wall time (e.g. 09:00-17:00) and holidays (whole
//! local dates). Working time accrues only inside openings, in local wall
//! time, so a day of a DST change still has its 8 working hours; a clock that
//! starts outside working hours starts at the next opening; a deadline is the
//! first instant at which the accrued working time reaches the limit.

use std::collections::BTreeSet;

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;

use crate::{Timestamp, ValidationError};

/// How far ahead a deadline is searched (a calendar with no working day
/// left gives [`Timestamp::MAX`]).
const MAX_DAYS: usize = 3700;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkingCalendar {
    zone_name: String,
    time_zone: TimeZone,
    /// Monday first.
    working_days: [bool; 7],
    opens: Time,
    closes: Time,
    holidays: BTreeSet<Date>,
}

fn parse_time(field: &str, text: &str) -> Result<Time, ValidationError> {
    let invalid = || ValidationError::new(field, "must be a local time HH:MM, e.g. 09:00");
    let (hours, minutes) = text.split_once(':').ok_or_else(invalid)?;
    if hours.len() != 2 || minutes.len() != 2 {
        return Err(invalid());
    }
    let hours: i8 = hours.parse().map_err(|_| invalid())?;
    let minutes: i8 = minutes.parse().map_err(|_| invalid())?;
    Time::new(hours, minutes, 0, 0).map_err(|_| invalid())
}

impl WorkingCalendar {
    /// `days` are ISO weekday numbers (1 = Monday … 7 = Sunday); `opens` and
    /// `closes` are `HH:MM` with `opens` before `closes`; `holidays` are
    /// `YYYY-MM-DD`. Field names in errors start with `field`.
    pub fn parse(
        field: &str,
        zone: &str,
        days: &[i32],
        opens: &str,
        closes: &str,
        holidays: &[String],
    ) -> Result<Self, ValidationError> {
        let time_zone = TimeZone::get(zone).map_err(|_| {
            ValidationError::new(format!("{field}.time_zone"), "must be an IANA time zone name, e.g. Europe/Berlin")
        })?;
        let mut working_days = [false; 7];
        for &day in days {
            let index = usize::try_from(day - 1).ok().filter(|i| *i < 7).ok_or_else(|| {
                ValidationError::new(
                    format!("{field}.working_days"),
                    "must be weekday numbers 1 (Monday) to 7 (Sunday)",
                )
            })?;
            working_days[index] = true;
        }
        if !working_days.contains(&true) {
            return Err(ValidationError::new(format!("{field}.working_days"), "must name at least one working day"));
        }
        let opens = parse_time(&format!("{field}.opens"), opens)?;
        let closes = parse_time(&format!("{field}.closes"), closes)?;
        if opens >= closes {
            return Err(ValidationError::new(format!("{field}.closes"), "must be after opens (on the same day)"));
        }
        let holidays = holidays
            .iter()
            .map(|text| {
                text.parse::<Date>().map_err(|_| {
                    ValidationError::new(format!("{field}.holidays"), format!("{text:?} is not a date YYYY-MM-DD"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { zone_name: zone.to_string(), time_zone, working_days, opens, closes, holidays })
    }

    pub fn zone_name(&self) -> &str {
        &self.zone_name
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.time_zone
    }

    /// ISO weekday numbers of the working days.
    pub fn working_days(&self) -> Vec<i32> {
        (1..=7).filter(|day| self.working_days[(*day - 1) as usize]).collect()
    }

    pub fn opens(&self) -> String {
        format!("{:02}:{:02}", self.opens.hour(), self.opens.minute())
    }

    pub fn closes(&self) -> String {
        format!("{:02}:{:02}", self.closes.hour(), self.closes.minute())
    }

    pub fn holidays(&self) -> Vec<String> {
        self.holidays.iter().map(Date::to_string).collect()
    }

    /// The local date of an instant in this calendar's zone.
    pub fn local_date(&self, at: Timestamp) -> Date {
        to_jiff(at).to_zoned(self.time_zone.clone()).date()
    }

    /// The instant a local date and time names (a time in a DST gap is read
    /// as after the gap, one in a fold as its first occurrence).
    fn instant(&self, date: Date, time: Time) -> i64 {
        self.time_zone
            .to_ambiguous_timestamp(date.to_datetime(time))
            .compatible()
            .map_or(i64::MAX, |ts| ts.as_microsecond())
    }

    /// The day's opening as `[open, close)` in microseconds, if it is a working day.
    fn opening(&self, date: Date) -> Option<(i64, i64)> {
        let weekday = usize::try_from(date.weekday().to_monday_one_offset() - 1).ok()?;
        if !self.working_days[weekday] || self.holidays.contains(&date) {
            return None;
        }
        Some((self.instant(date, self.opens), self.instant(date, self.closes)))
    }

    /// The first instant at which `limit_micros` of working time have
    /// accrued since `start`.
    pub fn deadline(&self, start: Timestamp, limit_micros: i64) -> Timestamp {
        let start_us = start.as_micros();
        let mut remaining = limit_micros.max(0);
        let mut date = self.local_date(start);
        for _ in 0..MAX_DAYS {
            if let Some((open, close)) = self.opening(date) {
                let begin = open.max(start_us);
                if begin < close {
                    if remaining <= close - begin {
                        return Timestamp::from_micros(begin + remaining).unwrap_or(Timestamp::MAX);
                    }
                    remaining -= close - begin;
                }
            }
            match date.tomorrow() {
                Ok(next) => date = next,
                Err(_) => break,
            }
        }
        Timestamp::MAX
    }

    /// Working time inside `[from, to)`, in microseconds.
    pub fn working_micros(&self, from: Timestamp, to: Timestamp) -> i64 {
        let (from_us, to_us) = (from.as_micros(), to.as_micros());
        let mut total = 0;
        let mut date = self.local_date(from);
        for _ in 0..MAX_DAYS {
            if let Some((open, close)) = self.opening(date) {
                if open >= to_us {
                    break;
                }
                total += (close.min(to_us) - open.max(from_us)).max(0);
            } else if self.instant(date, Time::midnight()) >= to_us {
                break;
            }
            match date.tomorrow() {
                Ok(next) => date = next,
                Err(_) => break,
            }
        }
        total
    }
}

fn to_jiff(at: Timestamp) -> jiff::Timestamp {
    jiff::Timestamp::from_microsecond(at.as_micros()).unwrap_or(jiff::Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000_000;
    const MINUTE: i64 = 60_000_000;

    fn berlin(days: &[i32], holidays: &[&str]) -> WorkingCalendar {
        let holidays: Vec<String> = holidays.iter().map(|d| d.to_string()).collect();
        WorkingCalendar::parse("calendar", "Europe/Berlin", days, "09:00", "17:00", &holidays).expect("valid")
    }

    /// An instant given as local Berlin wall time.
    fn local(text: &str) -> Timestamp {
        let zoned = text.parse::<jiff::civil::DateTime>().expect("datetime").in_tz("Europe/Berlin").expect("zoned");
        Timestamp::from_micros(zoned.timestamp().as_microsecond()).expect("in range")
    }

    const WEEKDAYS: [i32; 5] = [1, 2, 3, 4, 5];

    #[test]
    fn an_hour_from_friday_afternoon_ends_monday_morning() {
        let calendar = berlin(&WEEKDAYS, &[]);
        // 2026-11-27 is a Friday.
        assert_eq!(calendar.deadline(local("2026-11-27T16:30"), HOUR), local("2026-11-30T09:30"));
        assert_eq!(calendar.working_micros(local("2026-11-27T16:30"), local("2026-11-30T09:30")), HOUR);
    }

    #[test]
    fn twenty_four_working_hours_are_three_working_days() {
        let calendar = berlin(&WEEKDAYS, &[]);
        assert_eq!(calendar.deadline(local("2026-11-30T09:00"), 24 * HOUR), local("2026-12-02T17:00"));
    }

    #[test]
    fn holidays_and_weekends_do_not_count() {
        let calendar = berlin(&WEEKDAYS, &["2026-11-30"]);
        assert_eq!(calendar.deadline(local("2026-11-27T16:30"), HOUR), local("2026-12-01T09:30"));
        assert_eq!(calendar.working_micros(local("2026-11-28T10:00"), local("2026-11-30T18:00")), 0);
    }

    #[test]
    fn a_clock_started_outside_working_hours_starts_at_the_next_opening() {
        let calendar = berlin(&WEEKDAYS, &[]);
        assert_eq!(calendar.deadline(local("2026-12-01T07:00"), HOUR), local("2026-12-01T10:00"));
        assert_eq!(calendar.deadline(local("2026-12-01T20:00"), 30 * MINUTE), local("2026-12-02T09:30"));
        assert_eq!(calendar.deadline(local("2026-12-01T10:00"), 0), local("2026-12-01T10:00"));
    }

    #[test]
    fn a_day_of_a_dst_change_keeps_its_working_hours() {
        // Every day works; 2026-03-29 (Sunday) Berlin goes from CET to CEST.
        let calendar = berlin(&[1, 2, 3, 4, 5, 6, 7], &[]);
        let saturday_close = local("2026-03-28T17:00");
        let sunday_open = local("2026-03-29T09:00");
        assert_eq!(sunday_open.as_micros() - saturday_close.as_micros(), 15 * HOUR, "the night is an hour short");
        assert_eq!(calendar.deadline(local("2026-03-28T16:00"), 2 * HOUR), local("2026-03-29T10:00"));
        assert_eq!(calendar.deadline(sunday_open, 8 * HOUR), local("2026-03-29T17:00"));
        assert_eq!(calendar.working_micros(local("2026-03-29T00:00"), local("2026-03-30T00:00")), 8 * HOUR);
        // And back to CET on 2026-10-25.
        assert_eq!(calendar.working_micros(local("2026-10-25T00:00"), local("2026-10-26T00:00")), 8 * HOUR);
    }

    #[test]
    fn calendars_are_checked() {
        let parse = |zone: &str, days: &[i32], opens: &str, closes: &str| {
            WorkingCalendar::parse("calendar", zone, days, opens, closes, &[]).map_err(|e| e.to_string())
        };
        assert!(
            parse("Mars/Olympus", &WEEKDAYS, "09:00", "17:00").expect_err("refused").contains("calendar.time_zone")
        );
        assert!(parse("UTC", &[0], "09:00", "17:00").expect_err("refused").contains("calendar.working_days"));
        assert!(parse("UTC", &[], "09:00", "17:00").expect_err("refused").contains("calendar.working_days"));
        assert!(parse("UTC", &WEEKDAYS, "9", "17:00").expect_err("refused").contains("calendar.opens"));
        assert!(parse("UTC", &WEEKDAYS, "17:00", "09:00").expect_err("refused").contains("calendar.closes"));
        let bad_holiday = WorkingCalendar::parse("calendar", "UTC", &WEEKDAYS, "09:00", "17:00", &["31.12.".into()]);
        assert!(bad_holiday.expect_err("refused").to_string().contains("calendar.holidays"));
    }
}
