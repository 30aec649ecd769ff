//! The SLA read model against an oracle: random lead histories over 90 days
//! that cross the end of summer time in Berlin (2026-10-25), three policy
//! versions (one back-dated, so it re-judges), a working calendar with a
//! holiday. The test computes every hand-off, deadline, state and the
//! report naively — minute by minute in local wall time, with its own
//! stage table and policy choice — and requires `ListSlaBreaches` and
//! `GetSlaReport` to agree exactly. Business times are whole minutes, so
//! counting minutes is exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use jiff::tz::TimeZone;
use leadger_tests::{Backend, Rng, TestServer, pb};

const MINUTE: i64 = 60;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

/// A number of `0..n`, as the signed seconds and minutes this test counts in.
fn below(rng: &mut Rng, n: u64) -> i64 {
    rng.below(n) as i64
}

/// What the test sent for one lead: (unix seconds, step).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Qualify,
    Assign,
    Accept,
    Reject,
    Won,
    Lost,
}

struct Lead {
    id: String,
    source: &'static str,
    steps: Vec<(i64, Step, &'static str)>,
}

/// A policy as the test defines it.
#[derive(Clone)]
struct Policy {
    accept_within: i64,
    close_within: i64,
    calendar: bool,
    effective_from: i64,
    mql_target: Option<u64>,
}

const HOLIDAY: &str = "2026-10-26";

fn berlin() -> TimeZone {
    TimeZone::get("Europe/Berlin").expect("tz")
}

/// Is the minute starting at `t` inside Mon-Fri 09:00-17:00 Berlin, not the holiday?
fn working_minute(zone: &TimeZone, t: i64) -> bool {
    let local = jiff::Timestamp::from_second(t).expect("ts").to_zoned(zone.clone());
    let weekday = local.weekday().to_monday_one_offset();
    let minutes = i32::from(local.hour()) * 60 + i32::from(local.minute());
    weekday <= 5 && local.date().to_string() != HOLIDAY && (9 * 60..17 * 60).contains(&minutes)
}

fn deadline(zone: &TimeZone, policy: &Policy, start: i64, limit: i64) -> i64 {
    if !policy.calendar {
        return start + limit;
    }
    let (mut t, mut left) = (start, limit / MINUTE);
    loop {
        if working_minute(zone, t) {
            left -= 1;
            if left == 0 {
                return t + MINUTE;
            }
        }
        t += MINUTE;
    }
}

fn working_seconds(zone: &TimeZone, policy: &Policy, from: i64, to: i64) -> i64 {
    if !policy.calendar {
        return (to - from).max(0);
    }
    (0..((to - from) / MINUTE).max(0)).filter(|m| working_minute(zone, from + m * MINUTE)).count() as i64 * MINUTE
}

fn in_force(policies: &[Policy], at: i64) -> Policy {
    let mut chosen: Option<&Policy> = None;
    for p in policies {
        if p.effective_from <= at && chosen.is_none_or(|c| p.effective_from >= c.effective_from) {
            chosen = Some(p);
        }
    }
    chosen.cloned().unwrap_or(Policy {
        accept_within: 24 * HOUR,
        close_within: 30 * DAY,
        calendar: false,
        effective_from: i64::MIN,
        mql_target: None,
    })
}

/// A hand-off as the oracle sees it.
#[derive(Debug, Clone, PartialEq)]
struct Expected {
    lead: String,
    kind: i32,
    started: i64,
    deadline: i64,
    ended: Option<(i64, Step)>,
    owner: String,
    source: String,
}

fn expected_handoffs(zone: &TimeZone, leads: &[Lead], policies: &[Policy]) -> Vec<Expected> {
    let mut all = Vec::new();
    for lead in leads {
        let mut acceptance: Option<usize> = None;
        let mut close: Option<usize> = None;
        let mut assignments: Vec<(i64, &str)> = Vec::new();
        for &(at, step, who) in &lead.steps {
            let end = |slot: &mut Option<usize>, all: &mut Vec<Expected>| {
                if let Some(i) = slot.take() {
                    all[i].ended = Some((at, step));
                }
            };
            match step {
                Step::Qualify => {
                    if !who.is_empty() {
                        assignments.push((at, who));
                    }
                    if acceptance.is_none() {
                        let p = in_force(policies, at);
                        all.push(Expected {
                            lead: lead.id.clone(),
                            kind: pb::HandoffKind::Acceptance as i32,
                            started: at,
                            deadline: deadline(zone, &p, at, p.accept_within),
                            ended: None,
                            owner: String::new(),
                            source: lead.source.to_string(),
                        });
                        acceptance = Some(all.len() - 1);
                    }
                }
                Step::Assign => assignments.push((at, who)),
                Step::Accept => {
                    end(&mut acceptance, &mut all);
                    let p = in_force(policies, at);
                    all.push(Expected {
                        lead: lead.id.clone(),
                        kind: pb::HandoffKind::Close as i32,
                        started: at,
                        deadline: deadline(zone, &p, at, p.close_within),
                        ended: None,
                        owner: who.to_string(),
                        source: lead.source.to_string(),
                    });
                    close = Some(all.len() - 1);
                }
                Step::Reject => end(&mut acceptance, &mut all),
                Step::Won | Step::Lost => {
                    end(&mut acceptance, &mut all);
                    end(&mut close, &mut all);
                }
            }
        }
        // Acceptance hand-offs belong to the assignee at the deadline (or end).
        for handoff in all.iter_mut().filter(|h| h.lead == lead.id && h.kind == pb::HandoffKind::Acceptance as i32) {
            let at = handoff.ended.map_or(handoff.deadline, |(end, _)| end.min(handoff.deadline));
            handoff.owner = assignments.iter().rfind(|(t, _)| *t <= at).map(|(_, w)| w.to_string()).unwrap_or_default();
        }
    }
    all
}

fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

fn nearest_rank(mut values: Vec<i64>, percent: usize) -> Option<f64> {
    values.sort();
    if values.is_empty() {
        return None;
    }
    let rank = (percent * values.len()).div_ceil(100).max(1);
    Some(values[rank - 1] as f64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sla_breaches_and_report_equal_the_oracle() {
    let zone = berlin();
    // A fixed calendar, whatever day the test runs: the server's clock is
    // the test's, 100 days after 2026-08-20.
    let base: i64 = 1_787_184_000;
    let now = base + 100 * DAY;
    let clock = Arc::new(AtomicI64::new(now * 1_000_000));
    let server_clock: leadger_store::committer::Clock = {
        let clock = clock.clone();
        Arc::new(move || leadger_domain::Timestamp::from_micros(clock.load(Ordering::SeqCst)).expect("in range"))
    };
    let config = leadger_grpc::ServerConfig { clock: server_clock, ..Default::default() };
    let server = TestServer::start_with(Backend::Postgres, config).await;
    let mut commands = server.commands().await;

    // Leads captured over 90 days from 2026-08-20, across 2026-10-25
    // (summer time ends) and the holiday 2026-10-26.
    let policies = vec![
        Policy {
            accept_within: 8 * HOUR,
            close_within: 10 * 8 * HOUR,
            calendar: true,
            effective_from: base,
            mql_target: Some(40),
        },
        Policy {
            accept_within: 4 * HOUR,
            close_within: 5 * DAY,
            calendar: false,
            effective_from: base + 30 * DAY,
            mql_target: Some(50),
        },
        // Defined last but effective earlier: re-judges from day 55, before
        // the end of summer time and the holiday.
        Policy {
            accept_within: 16 * HOUR,
            close_within: 15 * 8 * HOUR,
            calendar: true,
            effective_from: base + 55 * DAY,
            mql_target: None,
        },
    ];
    for (n, p) in policies.iter().enumerate() {
        let duration = |s: i64| Some(prost_types::Duration { seconds: s, nanos: 0 });
        let calendar = p.calendar.then(|| pb::WorkingCalendar {
            time_zone: "Europe/Berlin".into(),
            working_days: vec![1, 2, 3, 4, 5],
            opens: "09:00".into(),
            closes: "17:00".into(),
            holidays: vec![HOLIDAY.into()],
        });
        let policy = pb::SlaPolicy {
            accept_within: duration(p.accept_within),
            close_within: duration(p.close_within),
            mql_target: p.mql_target,
            calendar,
            effective_from: ts(p.effective_from),
            ..Default::default()
        };
        commands
            .define_sla_policy(pb::DefineSlaPolicyRequest { request_id: format!("policy-{n}"), policy: Some(policy) })
            .await
            .expect("define");
    }

    let mut rng = Rng(21);
    let mut leads = Vec::new();
    let mut last_position = 0;
    for n in 0..250 {
        let captured = base + below(&mut rng, 90 * 24 * 60) * MINUTE;
        let source = ["web", "partner", ""][n % 3];
        let lead_id = commands
            .capture_lead(pb::CaptureLeadRequest {
                email: format!("sla-oracle{n}@example.org"),
                source: source.into(),
                occurred_at: ts(captured),
                ..Default::default()
            })
            .await
            .expect("capture")
            .into_inner()
            .result
            .expect("result")
            .lead_id;
        let mut lead = Lead { id: lead_id.clone(), source, steps: Vec::new() };
        let mut at = captured;
        let mut in_mql = false;
        let mut in_sql = false;
        let mut qualifiable = true;
        loop {
            at += (1 + below(&mut rng, 3 * 24 * 60)) * MINUTE;
            if at >= now - 5 * DAY {
                break;
            }
            let roll = below(&mut rng, 10);
            let (step, who) = if qualifiable && !in_mql && !in_sql {
                if roll < 7 { (Step::Qualify, ["sdr-a", "sdr-b", ""][below(&mut rng, 3) as usize]) } else { break }
            } else if in_mql {
                match roll {
                    0 => (Step::Assign, ["sdr-c", "sdr-d"][below(&mut rng, 2) as usize]),
                    1..=4 => (Step::Accept, ["ae-1", "ae-2"][below(&mut rng, 2) as usize]),
                    5..=6 => (Step::Reject, ""),
                    7 => (Step::Lost, ""),
                    _ => break,
                }
            } else if in_sql {
                match roll {
                    0..=3 => (Step::Won, ""),
                    4..=6 => (Step::Lost, ""),
                    _ => break,
                }
            } else {
                break;
            };
            let lead_ref = lead_id.clone();
            let result = match step {
                Step::Qualify => commands
                    .qualify_lead(pb::QualifyLeadRequest {
                        lead_id: lead_ref,
                        assignee: who.into(),
                        occurred_at: ts(at),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().result),
                Step::Assign => commands
                    .assign_lead(pb::AssignLeadRequest {
                        lead_id: lead_ref,
                        assignee: who.into(),
                        occurred_at: ts(at),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().result),
                Step::Accept => commands
                    .accept_lead(pb::AcceptLeadRequest {
                        lead_id: lead_ref,
                        owner: who.into(),
                        occurred_at: ts(at),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().result),
                Step::Reject => commands
                    .reject_lead(pb::RejectLeadRequest {
                        lead_id: lead_ref,
                        reason: "not-ready".into(),
                        occurred_at: ts(at),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().result),
                Step::Won => commands
                    .close_lead(pb::CloseLeadRequest {
                        lead_id: lead_ref,
                        outcome: pb::Outcome::Won as i32,
                        occurred_at: ts(at),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().result),
                Step::Lost => commands
                    .close_lead(pb::CloseLeadRequest {
                        lead_id: lead_ref,
                        outcome: pb::Outcome::Lost as i32,
                        lost_reason: "no-budget".into(),
                        occurred_at: ts(at),
                        ..Default::default()
                    })
                    .await
                    .map(|r| r.into_inner().result),
            };
            last_position = result.unwrap_or_else(|s| panic!("lead {n} {step:?}: {s:?}")).expect("result").position;
            lead.steps.push((at, step, who));
            match step {
                Step::Qualify => in_mql = true,
                Step::Assign => {}
                Step::Accept => (in_mql, in_sql) = (false, true),
                Step::Reject => in_mql = false,
                Step::Won | Step::Lost => {
                    qualifiable = false;
                    in_mql = false;
                    in_sql = false;
                }
            }
        }
        leads.push(lead);
    }

    let expected = expected_handoffs(&zone, &leads, &policies);
    let state = |h: &Expected| match h.ended {
        Some((end, _)) if end <= h.deadline => "within",
        Some(_) => "late",
        None if now > h.deadline => "open",
        None => "pending",
    };
    let mut breaches: Vec<&Expected> = expected.iter().filter(|h| matches!(state(h), "late" | "open")).collect();
    breaches.sort_by_key(|h| (h.started, h.lead.clone(), h.kind));
    assert!(breaches.len() > 20 && expected.iter().any(|h| state(h) == "within"), "a varied sample");

    let mut analytics = server.analytics().await;
    let got = analytics
        .list_sla_breaches(pb::ListSlaBreachesRequest {
            page_size: 1000,
            min_position: last_position,
            ..Default::default()
        })
        .await
        .expect("breaches")
        .into_inner()
        .breaches;
    assert_eq!(got.len(), breaches.len(), "breach count");
    for (g, want) in got.iter().zip(&breaches) {
        let case = format!("lead {} kind {} started {}", want.lead, want.kind, want.started);
        assert_eq!((g.lead_id.as_str(), g.kind), (want.lead.as_str(), want.kind), "{case}");
        assert_eq!(g.started_at, ts(want.started), "{case}");
        assert_eq!(g.deadline, ts(want.deadline), "deadline of {case}");
        assert_eq!(g.owner, want.owner, "owner of {case}");
        assert_eq!(g.source, want.source, "{case}");
        let until = want.ended.map_or(now, |(end, _)| end);
        assert_eq!(g.overdue_wall_seconds, (until - want.deadline) as f64, "overdue of {case}");
        if let Some((end, _)) = want.ended {
            let policy = in_force(&policies, want.started);
            assert_eq!(g.resolved_at, ts(end));
            assert_eq!(
                g.overdue_working_seconds,
                working_seconds(&zone, &policy, want.deadline, end) as f64,
                "working overdue of {case}"
            );
        }
    }

    let report = analytics
        .get_sla_report(pb::GetSlaReportRequest { min_position: last_position, ..Default::default() })
        .await
        .expect("report")
        .into_inner();
    for (kind, got) in [(pb::HandoffKind::Acceptance, report.acceptance), (pb::HandoffKind::Close, report.close)] {
        let got = got.expect("kind report");
        let of_kind: Vec<&Expected> = expected.iter().filter(|h| h.kind == kind as i32).collect();
        let count = |s: &str| of_kind.iter().filter(|h| state(h) == s).count() as u64;
        assert_eq!(
            (got.started, got.within_sla, got.resolved_late, got.open_breached, got.pending),
            (of_kind.len() as u64, count("within"), count("late"), count("open"), count("pending")),
            "{kind:?}"
        );
        let wall: Vec<i64> = of_kind.iter().filter_map(|h| h.ended.map(|(end, _)| end - h.started)).collect();
        let working: Vec<i64> = of_kind
            .iter()
            .filter_map(|h| {
                h.ended.map(|(end, _)| working_seconds(&zone, &in_force(&policies, h.started), h.started, end))
            })
            .collect();
        let wall_times = got.response_wall.expect("wall");
        assert_eq!(wall_times.median_seconds, nearest_rank(wall.clone(), 50), "{kind:?} wall median");
        assert_eq!(wall_times.p95_seconds, nearest_rank(wall, 95), "{kind:?} wall p95");
        let working_times = got.response_working.expect("working");
        assert_eq!(working_times.median_seconds, nearest_rank(working.clone(), 50), "{kind:?} working median");
        assert_eq!(working_times.p95_seconds, nearest_rank(working, 95), "{kind:?} working p95");
    }
    // Monthly MQL counts in Berlin months, against the target in force at each month's start.
    for month in &report.months {
        let (year, number): (i16, i8) =
            (month.month[..4].parse().expect("year"), month.month[5..].parse().expect("month"));
        let start = jiff::civil::date(year, number, 1).at(0, 0, 0, 0).to_zoned(zone.clone()).expect("zoned");
        let end = start.checked_add(jiff::Span::new().months(1)).expect("next month");
        let (from, to) = (start.timestamp().as_second(), end.timestamp().as_second());
        let mqls = leads
            .iter()
            .flat_map(|l| &l.steps)
            .filter(|(at, s, _)| *s == Step::Qualify && (from..to).contains(at))
            .count();
        assert_eq!(month.mql_count, mqls as u64, "MQLs in {}", month.month);
        assert_eq!(month.mql_target, in_force(&policies, from).mql_target, "target of {}", month.month);
        let started: Vec<&Expected> = expected
            .iter()
            .filter(|h| h.kind == pb::HandoffKind::Acceptance as i32 && (from..to).contains(&h.started))
            .collect();
        let ended = started.iter().filter(|h| h.ended.is_some()).count() as u64;
        let accepted = started.iter().filter(|h| matches!(h.ended, Some((_, Step::Accept)))).count() as u64;
        assert_eq!((month.accepted, month.ended_acceptance), (accepted, ended), "acceptance in {}", month.month);
    }
    assert!(report.months.len() >= 3, "the report covers the months: {:?}", report.months.len());
    server.stop().await;
}
