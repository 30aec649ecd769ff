//! SLA read-model math: the hand-offs between marketing and sales, judged
//! by the policy in force when each started, and the SLA report.
//!
//! An **acceptance hand-off** starts each time a lead enters MQL and ends at
//! the next acceptance, rejection or close. A **close hand-off** starts at
//! acceptance and ends at the close. Both are derived from a lead's
//! [`Journey`], so they need no table of their own. Whether a hand-off is
//! breached depends on "now" (`as_of_time`): an open hand-off becomes a
//! breach the moment its deadline passes, with no new event.

use std::collections::BTreeMap;

use jiff::civil::Date;
use jiff::tz::TimeZone;

use crate::journey::{Journey, Window, nearest_rank};
use crate::sla::SlaPolicy;
use crate::{LeadId, Stage, Timestamp};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HandoffKind {
    /// Sales must accept or reject an MQL.
    Acceptance,
    /// Sales must close an SQL.
    Close,
}

/// One hand-off of a lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    pub lead_id: LeadId,
    pub kind: HandoffKind,
    /// 1 for the lead's first hand-off of this kind, 2 for the next…
    pub ordinal: u32,
    pub started_at: Timestamp,
    /// When the log recorded the start (an import records it late).
    pub recorded_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    /// The stage whose entry ended it (SQL: accepted; REJECTED; WON, LOST).
    pub ended_by: Option<Stage>,
}

impl Handoff {
    /// A stable id, e.g. for a breach notification's message id.
    pub fn id(&self) -> String {
        let kind = match self.kind {
            HandoffKind::Acceptance => "acceptance",
            HandoffKind::Close => "close",
        };
        format!("{}.{kind}.{}", self.lead_id, self.ordinal)
    }
}

/// The hand-offs of a lead, in the order they started.
pub fn handoffs(journey: &Journey) -> Vec<Handoff> {
    let mut all = Vec::new();
    let mut acceptance: Option<usize> = None;
    let mut close: Option<usize> = None;
    let mut ordinals = [0u32; 2];
    let mut start = |all: &mut Vec<Handoff>, kind: HandoffKind, at: Timestamp, recorded_at: Timestamp| {
        let ordinal = &mut ordinals[kind as usize];
        *ordinal += 1;
        all.push(Handoff {
            lead_id: journey.lead_id,
            kind,
            ordinal: *ordinal,
            started_at: at,
            recorded_at,
            ended_at: None,
            ended_by: None,
        });
        all.len() - 1
    };
    let end = |all: &mut Vec<Handoff>, open: &mut Option<usize>, at: Timestamp, by: Stage| {
        if let Some(index) = open.take() {
            all[index].ended_at = Some(at);
            all[index].ended_by = Some(by);
        }
    };
    for entry in &journey.entries {
        match entry.stage {
            Stage::Captured => {}
            Stage::Mql => {
                if acceptance.is_none() {
                    acceptance = Some(start(&mut all, HandoffKind::Acceptance, entry.at, entry.recorded_at));
                }
            }
            Stage::Sql => {
                end(&mut all, &mut acceptance, entry.at, Stage::Sql);
                if close.is_none() {
                    close = Some(start(&mut all, HandoffKind::Close, entry.at, entry.recorded_at));
                }
            }
            Stage::Rejected => end(&mut all, &mut acceptance, entry.at, Stage::Rejected),
            Stage::Won | Stage::Lost => {
                end(&mut all, &mut acceptance, entry.at, entry.stage);
                end(&mut all, &mut close, entry.at, entry.stage);
            }
        }
    }
    all
}

/// The policy in force at `at`: of the versions (oldest first) effective at
/// or before `at`, the one effective latest; among equal ones the later
/// version. The default policy when none is.
pub fn policy_in_force(policies: &[SlaPolicy], at: Timestamp) -> SlaPolicy {
    policies
        .iter()
        .enumerate()
        .filter(|(_, p)| p.effective_from <= at)
        .max_by_key(|(version, p)| (p.effective_from, *version))
        .map(|(_, p)| p.clone())
        .unwrap_or_else(SlaPolicy::default_agreement)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HandoffState {
    /// Ended at or before its deadline.
    WithinSla,
    /// Ended after its deadline.
    ResolvedLate,
    /// Not ended, deadline passed: a breach now.
    Open,
    /// Not ended, deadline still ahead.
    Pending,
}

/// A hand-off judged at `as_of_time`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JudgedHandoff {
    pub handoff: Handoff,
    pub deadline: Timestamp,
    pub state: HandoffState,
    /// Acceptance: the assignee at the deadline (or at the end, when it
    /// ended earlier); close: the owner. Empty when nobody.
    pub owner: String,
    pub source: String,
    pub campaign: String,
    /// Ended hand-offs: start to end, in working and in wall microseconds.
    pub response_working_us: Option<i64>,
    pub response_wall_us: Option<i64>,
    /// Breaches: deadline to end (or to `as_of_time` while open).
    pub overdue_working_us: Option<i64>,
    pub overdue_wall_us: Option<i64>,
}

pub fn judge(journey: &Journey, handoff: Handoff, policies: &[SlaPolicy], as_of_time: Timestamp) -> JudgedHandoff {
    let policy = policy_in_force(policies, handoff.started_at);
    let limit = match handoff.kind {
        HandoffKind::Acceptance => policy.accept_within_us,
        HandoffKind::Close => policy.close_within_us,
    };
    let deadline = policy.deadline(handoff.started_at, limit);
    let state = match handoff.ended_at {
        Some(end) if end <= deadline => HandoffState::WithinSla,
        Some(_) => HandoffState::ResolvedLate,
        None if as_of_time > deadline => HandoffState::Open,
        None => HandoffState::Pending,
    };
    let owner = match handoff.kind {
        HandoffKind::Close => journey.owner.clone(),
        HandoffKind::Acceptance => {
            let at = handoff.ended_at.map_or(deadline, |end| end.min(deadline));
            journey
                .assignments
                .iter()
                .rev()
                .find(|(when, _)| *when <= at)
                .map(|(_, who)| who.clone())
                .unwrap_or_default()
        }
    };
    let response =
        handoff.ended_at.map(|end| (policy.working_micros(handoff.started_at, end), wall(handoff.started_at, end)));
    let overdue_until = match state {
        HandoffState::ResolvedLate => handoff.ended_at,
        HandoffState::Open => Some(as_of_time),
        HandoffState::WithinSla | HandoffState::Pending => None,
    };
    let overdue = overdue_until.map(|until| (policy.working_micros(deadline, until), wall(deadline, until)));
    JudgedHandoff {
        handoff,
        deadline,
        state,
        owner,
        source: journey.source.clone(),
        campaign: journey.campaign.clone(),
        response_working_us: response.map(|r| r.0),
        response_wall_us: response.map(|r| r.1),
        overdue_working_us: overdue.map(|o| o.0),
        overdue_wall_us: overdue.map(|o| o.1),
    }
}

fn wall(from: Timestamp, to: Timestamp) -> i64 {
    (to.as_micros() - from.as_micros()).max(0)
}

/// Every hand-off of `journeys` that started inside `window`, judged.
pub fn judged_handoffs<'a>(
    journeys: impl IntoIterator<Item = &'a Journey>,
    policies: &[SlaPolicy],
    window: Window,
    as_of_time: Timestamp,
) -> Vec<JudgedHandoff> {
    let mut judged: Vec<JudgedHandoff> = journeys
        .into_iter()
        .flat_map(|journey| {
            handoffs(journey)
                .into_iter()
                .filter(|h| window.contains(h.started_at))
                .map(|h| judge(journey, h, policies, as_of_time))
                .collect::<Vec<_>>()
        })
        .collect();
    judged.sort_by_key(|j| (j.handoff.started_at, j.handoff.lead_id, j.handoff.kind, j.handoff.ordinal));
    judged
}

/// A point in the sequence of breach notifications: ordered by deadline,
/// then hand-off id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BreachMark {
    pub deadline: Timestamp,
    pub handoff_id: String,
}

/// The breaches to announce after `since` up to `horizon`, in order: the
/// hand-offs still open at `horizon` whose deadline passed after `since`.
/// `horizon` must be an instant by which every event recorded has been
/// applied to `journeys`, so an answer given in time is never announced as
/// a breach. A hand-off recorded after its deadline had passed (an import)
/// is never announced.
pub fn breaches_to_announce<'a>(
    journeys: impl IntoIterator<Item = &'a Journey>,
    policies: &[SlaPolicy],
    since: &BreachMark,
    horizon: Timestamp,
) -> Vec<JudgedHandoff> {
    let mut due: Vec<JudgedHandoff> = judged_handoffs(journeys, policies, Window::ALL_TIME, horizon)
        .into_iter()
        .filter(|j| j.state == HandoffState::Open && j.deadline <= horizon)
        .filter(|j| j.handoff.recorded_at <= j.deadline)
        .filter(|j| BreachMark { deadline: j.deadline, handoff_id: j.handoff.id() } > *since)
        .collect();
    due.sort_by_key(|j| (j.deadline, j.handoff.id()));
    due
}

/// Median and p95 of durations, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ResponseSummary {
    pub samples: u64,
    pub median_seconds: Option<f64>,
    pub p95_seconds: Option<f64>,
}

impl ResponseSummary {
    fn of(mut micros: Vec<i64>) -> Self {
        micros.sort_unstable();
        let seconds = |v: Option<i64>| v.map(|v| v as f64 / 1_000_000.0);
        Self {
            samples: micros.len() as u64,
            median_seconds: seconds(nearest_rank(&micros, 50)),
            p95_seconds: seconds(nearest_rank(&micros, 95)),
        }
    }
}

/// One kind of hand-off in the report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindReport {
    pub started: u64,
    pub within_sla: u64,
    pub resolved_late: u64,
    pub open_breached: u64,
    pub pending: u64,
    /// within / (ended + open past deadline); absent when neither.
    pub share_within: Option<f64>,
    pub response_working: ResponseSummary,
    pub response_wall: ResponseSummary,
}

/// A calendar month's shared goals, actual against target.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MonthReport {
    /// `YYYY-MM` in the policy calendar's time zone.
    pub month: String,
    /// LeadQualified events in the month, re-qualifications included.
    pub mql_count: u64,
    pub mql_target: Option<u64>,
    /// Of the acceptance hand-offs started in the month: accepted, ended.
    pub accepted: u64,
    pub ended_acceptance: u64,
    pub acceptance_rate: Option<f64>,
    pub acceptance_rate_target: Option<f64>,
    /// WON amounts closed in the month, per currency.
    pub won_amount: BTreeMap<String, i64>,
    pub won_amount_target: Option<(String, i64)>,
    /// Acceptance hand-offs started in the month are still pending.
    pub provisional: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlaReport {
    pub acceptance: KindReport,
    pub close: KindReport,
    pub months: Vec<MonthReport>,
    /// The policy in force now is past its `review_by` date.
    pub review_overdue: bool,
    pub review_by: Option<Date>,
}

fn kind_report(judged: &[&JudgedHandoff]) -> KindReport {
    let mut report = KindReport { started: judged.len() as u64, ..KindReport::default() };
    let (mut working, mut wall) = (Vec::new(), Vec::new());
    for j in judged {
        match j.state {
            HandoffState::WithinSla => report.within_sla += 1,
            HandoffState::ResolvedLate => report.resolved_late += 1,
            HandoffState::Open => report.open_breached += 1,
            HandoffState::Pending => report.pending += 1,
        }
        working.extend(j.response_working_us);
        wall.extend(j.response_wall_us);
    }
    let judged_count = report.within_sla + report.resolved_late + report.open_breached;
    report.share_within = (judged_count > 0).then(|| report.within_sla as f64 / judged_count as f64);
    report.response_working = ResponseSummary::of(working);
    report.response_wall = ResponseSummary::of(wall);
    report
}

/// The first instant of each calendar month (in `zone`) from the month of
/// `from` to the month of `to`; at most 240 months.
fn month_starts(zone: &TimeZone, from: Timestamp, to: Timestamp) -> Vec<(String, Timestamp)> {
    let local = |at: Timestamp| {
        jiff::Timestamp::from_microsecond(at.as_micros()).map(|ts| ts.to_zoned(zone.clone()).date()).ok()
    };
    let (Some(first), Some(last)) = (local(from), local(to)) else { return Vec::new() };
    let mut month = first.first_of_month();
    let mut starts = Vec::new();
    while month <= last && starts.len() < 240 {
        let instant = zone
            .to_ambiguous_timestamp(month.to_datetime(jiff::civil::Time::midnight()))
            .compatible()
            .ok()
            .and_then(|ts| Timestamp::from_micros(ts.as_microsecond()));
        if let Some(instant) = instant {
            starts.push((format!("{:04}-{:02}", month.year(), month.month()), instant));
        }
        match month.checked_add(jiff::Span::new().months(1)) {
            Ok(next) => month = next,
            Err(_) => break,
        }
    }
    starts
}

/// The SLA report for the hand-offs started inside `window`, as of `now`.
pub fn sla_report<'a>(
    journeys: impl IntoIterator<Item = &'a Journey> + Clone,
    policies: &[SlaPolicy],
    window: Window,
    now: Timestamp,
) -> SlaReport {
    let judged = judged_handoffs(journeys.clone(), policies, window, now);
    let of_kind = |kind| judged.iter().filter(|j| j.handoff.kind == kind).collect::<Vec<_>>();
    let current = policy_in_force(policies, now);
    let zone = current.calendar.as_ref().map_or(TimeZone::UTC, |c| c.time_zone().clone());
    let today = jiff::Timestamp::from_microsecond(now.as_micros()).ok().map(|ts| ts.to_zoned(zone.clone()).date());

    // Months from the window's start (or the first hand-off) to its end (or now).
    let first =
        if window.from == Timestamp::MIN { judged.first().map_or(now, |j| j.handoff.started_at) } else { window.from };
    let last = if window.to == Timestamp::MAX {
        now
    } else {
        Timestamp::from_micros(window.to.as_micros() - 1).unwrap_or(now)
    };
    let starts = month_starts(&zone, first, last);
    // Every acceptance hand-off, whatever the window: the goals are monthly.
    let acceptance_handoffs: Vec<Handoff> =
        journeys.clone().into_iter().flat_map(handoffs).filter(|h| h.kind == HandoffKind::Acceptance).collect();
    let mut months = Vec::new();
    for (i, (label, start)) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(Timestamp::MAX, |(_, next)| *next);
        let month = Window { from: *start, to: end };
        let target = policy_in_force(policies, *start);
        let mut report = MonthReport {
            month: label.clone(),
            mql_target: target.mql_target,
            acceptance_rate_target: target.mql_to_sql_rate_target.map(|r| r.share()),
            won_amount_target: target.won_amount_target.map(|m| (m.currency.as_str().to_string(), m.amount_minor)),
            ..MonthReport::default()
        };
        for journey in journeys.clone() {
            report.mql_count +=
                journey.entries.iter().filter(|e| e.stage == Stage::Mql && month.contains(e.at)).count() as u64;
            if let (Some(won), Some(amount)) =
                (journey.entries.iter().find(|e| e.stage == Stage::Won), journey.won_amount.as_ref())
                && month.contains(won.at)
            {
                let sum = report.won_amount.entry(amount.currency.as_str().to_string()).or_default();
                *sum = sum.saturating_add(amount.amount_minor);
            }
        }
        for handoff in acceptance_handoffs.iter().filter(|h| month.contains(h.started_at)) {
            match handoff.ended_by {
                Some(by) => {
                    report.ended_acceptance += 1;
                    report.accepted += u64::from(by == Stage::Sql);
                }
                None => report.provisional = true,
            }
        }
        report.acceptance_rate =
            (report.ended_acceptance > 0).then(|| report.accepted as f64 / report.ended_acceptance as f64);
        months.push(report);
    }
    SlaReport {
        acceptance: kind_report(&of_kind(HandoffKind::Acceptance)),
        close: kind_report(&of_kind(HandoffKind::Close)),
        months,
        review_overdue: matches!((current.review_by, today), (Some(review_by), Some(today)) if today > review_by),
        review_by: current.review_by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::WorkingCalendar;
    use crate::journey::JourneyStep;

    const HOUR: i64 = 3_600_000_000;

    /// Hours after Monday 2026-11-30 00:00 UTC.
    fn at(hours: i64) -> Timestamp {
        Timestamp::from_micros(1_795_996_800_000_000 + hours * HOUR).expect("in range")
    }

    fn journey(steps: &[(i64, JourneyStep)]) -> Journey {
        let capture = JourneyStep::Captured { source: "web".into(), campaign: String::new(), persona: String::new() };
        let mut journey =
            Journey::start(LeadId::from_uuid(uuid::Uuid::from_u128(1)), at(0), at(0), &capture).expect("capture");
        for (hours, step) in steps {
            journey.apply(at(*hours), at(*hours), step);
        }
        journey
    }

    fn qualify(assignee: &str) -> JourneyStep {
        JourneyStep::Qualified { assignee: assignee.into() }
    }

    fn policy(accept_hours: i64, effective_hours: i64, calendar: Option<WorkingCalendar>) -> SlaPolicy {
        SlaPolicy {
            accept_within_us: accept_hours * HOUR,
            effective_from: at(effective_hours),
            calendar,
            ..SlaPolicy::default_agreement()
        }
    }

    #[test]
    fn hand_offs_follow_the_stage_entries() {
        let j = journey(&[
            (1, qualify("sdr")),
            (2, JourneyStep::Rejected { reason: "not-ready".into() }),
            (5, qualify("")),
            (6, JourneyStep::Accepted { owner: "ae".into() }),
            (9, JourneyStep::Won { amount: None }),
        ]);
        let h = handoffs(&j);
        let summary: Vec<_> = h.iter().map(|h| (h.kind, h.ordinal, h.started_at, h.ended_at, h.ended_by)).collect();
        assert_eq!(
            summary,
            vec![
                (HandoffKind::Acceptance, 1, at(1), Some(at(2)), Some(Stage::Rejected)),
                (HandoffKind::Acceptance, 2, at(5), Some(at(6)), Some(Stage::Sql)),
                (HandoffKind::Close, 1, at(6), Some(at(9)), Some(Stage::Won)),
            ]
        );
        assert_eq!(h[1].id(), "00000000-0000-0000-0000-000000000001.acceptance.2");
    }

    #[test]
    fn an_answer_exactly_at_the_deadline_is_in_time() {
        let policies = [policy(2, -100, None)];
        let in_time = journey(&[(1, qualify("")), (3, JourneyStep::Accepted { owner: "ae".into() })]);
        let late = journey(&[(1, qualify("")), (4, JourneyStep::Accepted { owner: "ae".into() })]);
        let judge_first = |j: &Journey| judge(j, handoffs(j)[0].clone(), &policies, at(100));
        assert_eq!(judge_first(&in_time).state, HandoffState::WithinSla);
        let late = judge_first(&late);
        assert_eq!(late.state, HandoffState::ResolvedLate);
        assert_eq!(late.overdue_wall_us, Some(HOUR));
    }

    #[test]
    fn an_open_hand_off_becomes_a_breach_when_its_deadline_passes() {
        let policies = [policy(2, -100, None)];
        let j = journey(&[(1, qualify("sdr-1")), (2, JourneyStep::Assigned { assignee: "sdr-2".into() })]);
        let h = handoffs(&j)[0].clone();
        assert_eq!(judge(&j, h.clone(), &policies, at(3)).state, HandoffState::Pending);
        let breached = judge(&j, h, &policies, at(4));
        assert_eq!(breached.state, HandoffState::Open);
        assert_eq!(breached.owner, "sdr-2", "attributed to the assignee at the deadline");
        assert_eq!(breached.overdue_wall_us, Some(HOUR));
    }

    #[test]
    fn each_hand_off_is_judged_by_the_policy_in_force_when_it_started() {
        let calendar =
            WorkingCalendar::parse("calendar", "UTC", &[1, 2, 3, 4, 5], "09:00", "17:00", &[]).expect("valid");
        // 1 h, 24×7, from the start; 1 working hour from hour 24 (Tuesday 00:00).
        let policies = [policy(1, -100, None), policy(1, 24, Some(calendar))];
        let monday = journey(&[(20, qualify(""))]);
        let tuesday = journey(&[(30, qualify(""))]);
        let deadline = |j: &Journey| judge(j, handoffs(j)[0].clone(), &policies, at(0)).deadline;
        assert_eq!(deadline(&monday), at(21));
        assert_eq!(deadline(&tuesday), at(24 + 10), "Tuesday 06:00 waits for the 09:00 opening, +1 h");
    }

    #[test]
    fn breaches_are_announced_once_in_deadline_order_and_never_for_imports() {
        let policies = [policy(2, -100, None)];
        let mut imported = journey(&[]);
        // Qualified at hour 1 (deadline 3) but recorded only at hour 5.
        imported.apply(at(1), at(5), &qualify(""));
        let leads = [journey(&[(1, qualify(""))]), journey(&[(2, qualify(""))]), imported];
        let start = BreachMark { deadline: at(0), handoff_id: String::new() };
        let due = breaches_to_announce(&leads, &policies, &start, at(10));
        assert_eq!(due.iter().map(|j| j.deadline).collect::<Vec<_>>(), [at(3), at(4)], "not the import");
        let after_first = BreachMark { deadline: due[0].deadline, handoff_id: due[0].handoff.id() };
        assert_eq!(breaches_to_announce(&leads, &policies, &after_first, at(10)).len(), 1);
        assert!(breaches_to_announce(&leads, &policies, &start, at(3)).is_empty(), "due at 3, open only after it");
    }

    #[test]
    fn the_report_counts_states_and_monthly_goals() {
        let policies = [SlaPolicy { mql_target: Some(2), ..policy(2, -1000, None) }];
        let leads = [
            journey(&[(1, qualify("")), (2, JourneyStep::Accepted { owner: "ae".into() })]),
            journey(&[(1, qualify("")), (5, JourneyStep::Rejected { reason: "bad-fit".into() }), (6, qualify(""))]),
        ];
        let report = sla_report(&leads, &policies, Window::ALL_TIME, at(7));
        let a = &report.acceptance;
        assert_eq!((a.started, a.within_sla, a.resolved_late, a.open_breached, a.pending), (3, 1, 1, 0, 1));
        assert_eq!(a.share_within, Some(0.5));
        assert_eq!(a.response_wall.median_seconds, Some(3600.0), "samples 1 h and 4 h");
        assert_eq!(report.months.len(), 1);
        let november = &report.months[0];
        assert_eq!(november.month, "2026-11");
        assert_eq!((november.mql_count, november.mql_target), (3, Some(2)));
        assert_eq!((november.accepted, november.ended_acceptance, november.provisional), (1, 2, true));
    }
}
