//! `LeadAnalyticsService`: the funnel, conversion rates and lead quality
//! (`leadger_domain::journey`), and the SLA's policy, breaches and report
//! (`leadger_domain::handoff`), computed from the journey read model.
//!
//! Each answer says how fresh it is (`as_of_position`, `as_of_time`); with
//! `min_position` a client waits for its own writes to show (read-your-writes).

use std::sync::Arc;
use std::time::Duration;

use leadger_domain::handoff::{self, HandoffKind, HandoffState, JudgedHandoff, KindReport, ResponseSummary};
use leadger_domain::journey::{self, GroupBy, Window};
use leadger_domain::sla::SlaPolicy;
use leadger_domain::{Stage, Timestamp, ValidationError};
use leadger_proto::leads::v1 as pb;
use leadger_proto::leads::v1::lead_analytics_service_server::LeadAnalyticsService;
use leadger_store::committer::Clock;
use leadger_store::{Agreements, JourneyScope, JourneySnapshot, JourneyStore};
use tonic::{Request, Response, Status};

use crate::error::read_status;
use crate::present;
use crate::request::{self, Violations};

/// How long a `min_position` wait lasts when the request has no deadline.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// How often the read model's position is re-read while waiting.
const WAIT_POLL: Duration = Duration::from_millis(5);

pub(crate) struct AnalyticsService<L> {
    log: Arc<L>,
    clock: Clock,
}

impl<L: JourneyStore> AnalyticsService<L> {
    pub fn new(log: Arc<L>, clock: Clock) -> Self {
        Self { log, clock }
    }

    /// The journeys `scope` needs, once the model applied `min_position`.
    async fn snapshot(
        &self,
        scope: JourneyScope,
        min_position: u64,
        deadline: Option<Duration>,
    ) -> Result<JourneySnapshot, Status> {
        // Answer a little before the client's deadline, so it gets this
        // DEADLINE_EXCEEDED with its message rather than cancelling blind.
        let wait = deadline.map_or(DEFAULT_WAIT, |d| d.saturating_sub((d / 10).min(Duration::from_millis(50))));
        let give_up = tokio::time::Instant::now() + wait;
        loop {
            let position = self.log.journey_cursor().await.map_err(|e| read_status(&e))?.position;
            if position >= min_position {
                break;
            }
            if tokio::time::Instant::now() + WAIT_POLL >= give_up {
                return Err(Status::deadline_exceeded(format!(
                    "the read model is at position {position}, short of min_position {min_position}, at the deadline"
                )));
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
        let snapshot = self.log.read_journeys(scope).await.map_err(|e| read_status(&e))?;
        Ok(snapshot)
    }
}

impl<L: Agreements> AnalyticsService<L> {
    /// The SLA policy versions, oldest first.
    async fn policies(&self) -> Result<Vec<SlaPolicy>, Status> {
        let recorded = self.log.sla_policies().await.map_err(|e| read_status(&e))?;
        Ok(recorded.into_iter().map(|r| r.policy).collect())
    }
}

/// A validated `AnalyticsFilter`.
struct Filter {
    window: Window,
    group_by: Option<GroupBy>,
    min_position: u64,
}

/// A `[from, to)` window from optional request times; field names are
/// `{prefix}from` and `{prefix}to`.
fn window(
    violations: &mut Violations,
    prefix: &str,
    from: Option<&prost_types::Timestamp>,
    to: Option<&prost_types::Timestamp>,
) -> Option<Window> {
    let from_field = format!("{prefix}from");
    let to_field = format!("{prefix}to");
    let from = from.map(|t| violations.check(request::timestamp(&from_field, t))).unwrap_or(Some(Timestamp::MIN));
    let to = to.map(|t| violations.check(request::timestamp(&to_field, t))).unwrap_or(Some(Timestamp::MAX));
    let (from, to) = (from?, to?);
    if from > to {
        violations.check::<()>(Err(ValidationError::new(to_field, format!("must not be before {from_field}"))));
        return None;
    }
    Some(Window { from, to })
}

fn filter(filter: Option<&pb::AnalyticsFilter>, owner_allowed: bool) -> Result<Filter, Status> {
    let default = pb::AnalyticsFilter::default();
    let f = filter.unwrap_or(&default);
    let mut violations = Violations::default();
    let window = window(&mut violations, "filter.", f.from.as_ref(), f.to.as_ref());
    let group_by = match pb::GroupBy::try_from(f.group_by) {
        Ok(pb::GroupBy::Unspecified) => Some(None),
        Ok(pb::GroupBy::Source) => Some(Some(GroupBy::Source)),
        Ok(pb::GroupBy::Campaign) => Some(Some(GroupBy::Campaign)),
        Ok(pb::GroupBy::Persona) => Some(Some(GroupBy::Persona)),
        Ok(pb::GroupBy::Owner) if owner_allowed => Some(Some(GroupBy::Owner)),
        Ok(pb::GroupBy::Owner) => {
            violations.check::<()>(Err(ValidationError::new(
                "filter.group_by",
                "lead quality groups by source, campaign or persona",
            )));
            None
        }
        Err(_) => {
            violations
                .check::<()>(Err(ValidationError::new("filter.group_by", format!("unknown value {}", f.group_by))));
            None
        }
    };
    violations.finish()?;
    match (window, group_by) {
        (Some(window), Some(group_by)) => Ok(Filter { window, group_by, min_position: f.min_position }),
        _ => Err(Status::internal("validation passed with a missing value")),
    }
}

const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: usize = 1000;

/// Where a page of breaches ends: the sort key of its last row.
fn page_key(j: &JudgedHandoff) -> String {
    let kind = match j.handoff.kind {
        HandoffKind::Acceptance => 0,
        HandoffKind::Close => 1,
    };
    format!("{}:{}:{kind}:{}", j.handoff.started_at.as_micros(), j.handoff.lead_id, j.handoff.ordinal)
}

fn sort_key(j: &JudgedHandoff) -> (i64, uuid::Uuid, HandoffKind, u32) {
    (j.handoff.started_at.as_micros(), j.handoff.lead_id.as_uuid(), j.handoff.kind, j.handoff.ordinal)
}

fn parse_page_key(token: &str) -> Option<(i64, uuid::Uuid, HandoffKind, u32)> {
    let mut parts = token.split(':');
    let started = parts.next()?.parse().ok()?;
    let lead = uuid::Uuid::try_parse(parts.next()?).ok()?;
    let kind = match parts.next()? {
        "0" => HandoffKind::Acceptance,
        "1" => HandoffKind::Close,
        _ => return None,
    };
    let ordinal = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((started, lead, kind, ordinal))
}

fn handoff_kind(kind: HandoffKind) -> pb::HandoffKind {
    match kind {
        HandoffKind::Acceptance => pb::HandoffKind::Acceptance,
        HandoffKind::Close => pb::HandoffKind::Close,
    }
}

fn response_times(summary: &ResponseSummary) -> pb::ResponseTimes {
    pb::ResponseTimes {
        samples: summary.samples,
        median_seconds: summary.median_seconds,
        p95_seconds: summary.p95_seconds,
    }
}

fn handoff_report(report: &KindReport) -> pb::HandoffReport {
    pb::HandoffReport {
        started: report.started,
        within_sla: report.within_sla,
        resolved_late: report.resolved_late,
        open_breached: report.open_breached,
        pending: report.pending,
        share_within_sla: report.share_within,
        response_working: Some(response_times(&report.response_working)),
        response_wall: Some(response_times(&report.response_wall)),
    }
}

fn seconds(micros: Option<i64>) -> f64 {
    micros.map_or(0.0, |us| us as f64 / 1_000_000.0)
}

/// The request's deadline (the `grpc-timeout` header), if it set one.
fn deadline<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

fn stage_counts(counts: &journey::StageCounts) -> Vec<pb::StageCount> {
    Stage::ALL
        .iter()
        .map(|&stage| pb::StageCount { stage: present::stage(stage) as i32, leads: counts.get(stage) })
        .collect()
}

fn duration(summary: &journey::DurationSummary) -> pb::DurationSummary {
    pb::DurationSummary {
        samples: summary.samples,
        median_seconds: summary.median_seconds,
        p90_seconds: summary.p90_seconds,
    }
}

fn reason_counts(counts: &std::collections::BTreeMap<String, u64>) -> Vec<pb::ReasonCount> {
    counts.iter().map(|(reason, count)| pb::ReasonCount { reason: reason.clone(), count: *count }).collect()
}

#[tonic::async_trait]
impl<L: JourneyStore + Agreements> LeadAnalyticsService for AnalyticsService<L> {
    async fn get_sla_policy(
        &self,
        _request: Request<pb::GetSlaPolicyRequest>,
    ) -> Result<Response<pb::GetSlaPolicyResponse>, Status> {
        let versions = self.log.sla_policies().await.map_err(|e| read_status(&e))?;
        Ok(Response::new(pb::GetSlaPolicyResponse {
            versions: versions
                .iter()
                .map(|v| pb::SlaPolicyVersion {
                    version: v.version,
                    position: v.position,
                    policy: Some(present::sla_policy(&v.policy)),
                })
                .collect(),
        }))
    }

    async fn list_sla_breaches(
        &self,
        request: Request<pb::ListSlaBreachesRequest>,
    ) -> Result<Response<pb::ListSlaBreachesResponse>, Status> {
        let wait = deadline(&request);
        let r = request.get_ref();
        let mut violations = Violations::default();
        let window = window(&mut violations, "", r.from.as_ref(), r.to.as_ref());
        let kind = match pb::HandoffKind::try_from(r.kind) {
            Ok(pb::HandoffKind::Unspecified) => None,
            Ok(pb::HandoffKind::Acceptance) => Some(HandoffKind::Acceptance),
            Ok(pb::HandoffKind::Close) => Some(HandoffKind::Close),
            Err(_) => {
                violations.check::<()>(Err(ValidationError::new("kind", format!("unknown value {}", r.kind))));
                None
            }
        };
        let states: &[HandoffState] = match pb::BreachState::try_from(r.state) {
            Ok(pb::BreachState::Unspecified) => &[HandoffState::Open, HandoffState::ResolvedLate],
            Ok(pb::BreachState::Open) => &[HandoffState::Open],
            Ok(pb::BreachState::ResolvedLate) => &[HandoffState::ResolvedLate],
            Err(_) => {
                violations.check::<()>(Err(ValidationError::new("state", format!("unknown value {}", r.state))));
                &[]
            }
        };
        let page_size = match r.page_size {
            0 => Some(DEFAULT_PAGE_SIZE),
            n if (1..=MAX_PAGE_SIZE as i32).contains(&n) => Some(n as usize),
            _ => violations.check(Err(ValidationError::new("page_size", "must be 1 to 1000"))),
        };
        let after = if r.page_token.is_empty() {
            None
        } else {
            violations.check(
                parse_page_key(&r.page_token)
                    .ok_or_else(|| ValidationError::new("page_token", "is not a token this service returned")),
            )
        };
        violations.finish()?;
        let (window, page_size) =
            window.zip(page_size).ok_or_else(|| Status::internal("validation passed with a missing value"))?;
        let snapshot = self.snapshot(JourneyScope::All, r.min_position, wait).await?;
        let policies = self.policies().await?;
        let now = (self.clock)();
        let mut matching = handoff::judged_handoffs(&snapshot.journeys, &policies, window, now)
            .into_iter()
            .filter(|j| states.contains(&j.state))
            .filter(|j| kind.is_none_or(|kind| j.handoff.kind == kind))
            .filter(|j| r.owner.is_empty() || j.owner == r.owner)
            .filter(|j| r.source.is_empty() || j.source == r.source)
            .filter(|j| r.campaign.is_empty() || j.campaign == r.campaign)
            .filter(|j| after.is_none_or(|after| sort_key(j) > after))
            .take(page_size + 1)
            .collect::<Vec<_>>();
        let next_page_token = if matching.len() > page_size {
            matching.truncate(page_size);
            matching.last().map(page_key).unwrap_or_default()
        } else {
            String::new()
        };
        let breaches = matching
            .iter()
            .map(|j| pb::SlaBreach {
                lead_id: j.handoff.lead_id.to_string(),
                kind: handoff_kind(j.handoff.kind) as i32,
                state: if j.state == HandoffState::Open { pb::BreachState::Open } else { pb::BreachState::ResolvedLate }
                    as i32,
                started_at: Some(present::timestamp(j.handoff.started_at)),
                deadline: Some(present::timestamp(j.deadline)),
                resolved_at: j.handoff.ended_at.map(present::timestamp),
                overdue_working_seconds: seconds(j.overdue_working_us),
                overdue_wall_seconds: seconds(j.overdue_wall_us),
                owner: j.owner.clone(),
                source: j.source.clone(),
                campaign: j.campaign.clone(),
                handoff_id: j.handoff.id(),
            })
            .collect();
        Ok(Response::new(pb::ListSlaBreachesResponse {
            as_of_position: snapshot.position,
            as_of_time: Some(present::timestamp(now)),
            breaches,
            next_page_token,
        }))
    }

    async fn get_sla_report(
        &self,
        request: Request<pb::GetSlaReportRequest>,
    ) -> Result<Response<pb::GetSlaReportResponse>, Status> {
        let wait = deadline(&request);
        let r = request.get_ref();
        let mut violations = Violations::default();
        let window = window(&mut violations, "", r.from.as_ref(), r.to.as_ref());
        violations.finish()?;
        let window = window.ok_or_else(|| Status::internal("validation passed with a missing value"))?;
        let snapshot = self.snapshot(JourneyScope::All, r.min_position, wait).await?;
        let policies = self.policies().await?;
        let now = (self.clock)();
        let report = handoff::sla_report(&snapshot.journeys, &policies, window, now);
        let amount =
            |currency: &String, amount_minor: i64| pb::CurrencyAmount { currency: currency.clone(), amount_minor };
        Ok(Response::new(pb::GetSlaReportResponse {
            as_of_position: snapshot.position,
            as_of_time: Some(present::timestamp(now)),
            acceptance: Some(handoff_report(&report.acceptance)),
            close: Some(handoff_report(&report.close)),
            months: report
                .months
                .iter()
                .map(|m| pb::MonthlyGoals {
                    month: m.month.clone(),
                    mql_count: m.mql_count,
                    mql_target: m.mql_target,
                    accepted: m.accepted,
                    ended_acceptance: m.ended_acceptance,
                    acceptance_rate: m.acceptance_rate,
                    acceptance_rate_target: m.acceptance_rate_target,
                    won_amount: m.won_amount.iter().map(|(c, a)| amount(c, *a)).collect(),
                    won_amount_target: m.won_amount_target.as_ref().map(|(c, a)| amount(c, *a)),
                    provisional: m.provisional,
                })
                .collect(),
            review_overdue: report.review_overdue,
            review_by: report.review_by.map(|d| d.to_string()).unwrap_or_default(),
        }))
    }

    async fn get_funnel(
        &self,
        request: Request<pb::GetFunnelRequest>,
    ) -> Result<Response<pb::GetFunnelResponse>, Status> {
        let wait = deadline(&request);
        let f = filter(request.get_ref().filter.as_ref(), true)?;
        // `current` counts every lead, so the funnel reads them all.
        let snapshot = self.snapshot(JourneyScope::All, f.min_position, wait).await?;
        let as_of_time = (self.clock)();
        let groups = journey::funnel(&snapshot.journeys, f.window, f.group_by)
            .iter()
            .map(|g| pb::FunnelGroup {
                key: g.key.clone(),
                current: stage_counts(&g.current),
                period: stage_counts(&g.period),
                cohort: stage_counts(&g.cohort),
            })
            .collect();
        Ok(Response::new(pb::GetFunnelResponse {
            as_of_position: snapshot.position,
            as_of_time: Some(present::timestamp(as_of_time)),
            groups,
        }))
    }

    async fn get_conversion_rates(
        &self,
        request: Request<pb::GetConversionRatesRequest>,
    ) -> Result<Response<pb::GetConversionRatesResponse>, Status> {
        let wait = deadline(&request);
        let f = filter(request.get_ref().filter.as_ref(), true)?;
        let snapshot = self.snapshot(JourneyScope::CapturedIn(f.window), f.min_position, wait).await?;
        let as_of_time = (self.clock)();
        let groups = journey::conversion(&snapshot.journeys, f.window, f.group_by)
            .iter()
            .map(|g| pb::ConversionGroup {
                key: g.key.clone(),
                captured: g.counts.captured,
                reached_mql: g.counts.reached_mql,
                reached_sql: g.counts.reached_sql,
                reached_sql_after_mql: g.counts.reached_sql_after_mql,
                won: g.counts.won,
                lost: g.counts.lost,
                lead_to_mql_rate: g.rates.lead_to_mql,
                mql_to_sql_rate: g.rates.mql_to_sql,
                sql_to_won_rate: g.rates.sql_to_won,
                lead_to_won_rate: g.rates.lead_to_won,
                won_amount: g
                    .won_amount
                    .iter()
                    .map(|(currency, amount)| pb::CurrencyAmount { currency: currency.clone(), amount_minor: *amount })
                    .collect(),
                captured_to_mql: Some(duration(&g.velocity.captured_to_mql)),
                mql_to_sql: Some(duration(&g.velocity.mql_to_sql)),
                sql_to_won: Some(duration(&g.velocity.sql_to_won)),
                captured_to_won: Some(duration(&g.velocity.captured_to_won)),
                time_in_stage: g
                    .time_in_stage
                    .iter()
                    .map(|(stage, summary)| pb::StageDuration {
                        stage: present::stage(*stage) as i32,
                        duration: Some(duration(summary)),
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::GetConversionRatesResponse {
            as_of_position: snapshot.position,
            as_of_time: Some(present::timestamp(as_of_time)),
            groups,
        }))
    }

    async fn get_lead_quality(
        &self,
        request: Request<pb::GetLeadQualityRequest>,
    ) -> Result<Response<pb::GetLeadQualityResponse>, Status> {
        let wait = deadline(&request);
        let f = filter(request.get_ref().filter.as_ref(), false)?;
        let snapshot = self.snapshot(JourneyScope::CapturedIn(f.window), f.min_position, wait).await?;
        let as_of_time = (self.clock)();
        let groups = journey::quality(&snapshot.journeys, f.window, f.group_by)
            .iter()
            .map(|g| pb::QualityGroup {
                key: g.key.clone(),
                leads: g.leads,
                feedback_count: g.feedback_count,
                mean_rating: g.mean_rating,
                rating_histogram: g.rating_histogram.to_vec(),
                rejection_reasons: reason_counts(&g.rejection_reasons),
                lost_reasons: reason_counts(&g.lost_reasons),
                accepted_won: g.accepted_won,
                accepted_lost: g.accepted_lost,
                win_rate: g.win_rate,
            })
            .collect();
        Ok(Response::new(pb::GetLeadQualityResponse {
            as_of_position: snapshot.position,
            as_of_time: Some(present::timestamp(as_of_time)),
            groups,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_are_read_in_every_unit() {
        let with = |value: &str| {
            let mut request = Request::new(());
            request.metadata_mut().insert("grpc-timeout", value.parse().expect("ascii"));
            deadline(&request)
        };
        assert_eq!(with("250m"), Some(Duration::from_millis(250)));
        assert_eq!(with("3S"), Some(Duration::from_secs(3)));
        assert_eq!(with("2M"), Some(Duration::from_secs(120)));
        assert_eq!(with("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(with("10u"), Some(Duration::from_micros(10)));
        assert_eq!(with("x"), None);
        assert_eq!(deadline(&Request::new(())), None);
    }
}
