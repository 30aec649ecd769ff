//! `LeadAnalyticsService`: the funnel, conversion rates and lead quality,
//! computed by `leadger_domain::journey` from the journey read model.
//!
//! Each answer says how fresh it is (`as_of_position`, `as_of_time`); with
//! `min_position` a client waits for its own writes to show (read-your-writes).

use std::sync::Arc;
use std::time::Duration;

use leadger_domain::journey::{self, GroupBy, Window};
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

/// A validated `AnalyticsFilter`.
struct Filter {
    window: Window,
    group_by: Option<GroupBy>,
    min_position: u64,
}

fn filter(filter: Option<&pb::AnalyticsFilter>, owner_allowed: bool) -> Result<Filter, Status> {
    let default = pb::AnalyticsFilter::default();
    let f = filter.unwrap_or(&default);
    let mut violations = Violations::default();
    let from =
        f.from.as_ref().map(|t| violations.check(request::timestamp("filter.from", t))).unwrap_or(Some(Timestamp::MIN));
    let to =
        f.to.as_ref().map(|t| violations.check(request::timestamp("filter.to", t))).unwrap_or(Some(Timestamp::MAX));
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
    if let (Some(from), Some(to)) = (from, to)
        && from > to
    {
        violations.check::<()>(Err(ValidationError::new("filter.to", "must not be before filter.from")));
    }
    violations.finish()?;
    match (from, to, group_by) {
        (Some(from), Some(to), Some(group_by)) => {
            Ok(Filter { window: Window { from, to }, group_by, min_position: f.min_position })
        }
        _ => Err(Status::internal("validation passed with a missing value")),
    }
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
