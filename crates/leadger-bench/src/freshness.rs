//! Projection freshness: how long after a command's acknowledgement its
//! effect is visible in each read model, under a sustained open-loop load
//! ([`paced`]).
//!
//! A prober waits for the next acknowledged command and at once asks one
//! read model (in turn: funnel, conversion rates, lead quality, SLA
//! breaches, SLA report) for its figures with `min_position` set to that
//! command's position: the server answers once the read model has applied
//! it (it checks every 5 ms). The delay is from the acknowledgement to that
//! answer, so it includes the query itself; the query's own time (sent to
//! answered) is kept beside it. Only commands acknowledged inside the
//! measured window count.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use hdrhistogram::Histogram;
use leadger_proto::leads::v1 as pb;
use leadger_proto::leads::v1::lead_analytics_service_client::LeadAnalyticsServiceClient;
use serde::Serialize;
use tokio::sync::watch;
use tonic::transport::Channel;

use crate::load::{self, RunNaming};
use crate::measure::{Latency, micros_histogram, record_micros};
use crate::paced::{self, Acknowledged, PacedPlan};

/// The read models, in the order the prober asks them.
const READ_MODELS: [&str; 5] = ["funnel", "conversion rates", "lead quality", "SLA breaches", "SLA report"];

/// The figures of one read model.
#[derive(Debug, Clone, Serialize)]
pub struct ReadModelFreshness {
    pub read_model: &'static str,
    pub probes: u64,
    /// Acknowledgement to the answer that shows the command.
    pub delay_ms: Latency,
    /// The query alone, sent to answered.
    pub query_ms: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct FreshnessResult {
    pub rate: u32,
    pub seconds: f64,
    /// Commands acknowledged inside the window.
    pub commands: u64,
    pub commands_per_second: f64,
    /// Send to answer of those commands: the latency at this load.
    pub command_latency_ms: Latency,
    pub errors: u64,
    pub read_models: Vec<ReadModelFreshness>,
}

/// Drives `plan` against `endpoint` while probing the read models.
pub async fn measure(endpoint: &str, plan: &PacedPlan, naming: &Arc<RunNaming>) -> anyhow::Result<FreshnessResult> {
    let (acks, latest) = watch::channel(None::<Acknowledged>);
    let channel = load::connect(endpoint, 1).await?.remove(0);
    let measured_from = Instant::now() + plan.warmup;
    let until = measured_from + plan.measured;
    let prober = tokio::spawn(probe(channel, latest, measured_from, until));
    let run = paced::drive_observed(endpoint, plan, naming, Some(Arc::new(acks))).await?;
    let probes = prober.await.context("the prober panicked")??;
    let mut latency = micros_histogram();
    for ack in &run.acknowledged {
        record_micros(&mut latency, ack.latency);
    }
    let seconds = run.window.as_secs_f64();
    Ok(FreshnessResult {
        rate: plan.rate,
        seconds,
        commands: run.acknowledged.len() as u64,
        commands_per_second: run.acknowledged.len() as f64 / seconds,
        command_latency_ms: Latency::from_micros(&latency),
        errors: run.failed(),
        read_models: probes,
    })
}

/// Probes until the window ends (or the load stops); then summarizes.
async fn probe(
    channel: Channel,
    mut latest: watch::Receiver<Option<Acknowledged>>,
    from: Instant,
    until: Instant,
) -> anyhow::Result<Vec<ReadModelFreshness>> {
    let mut client = LeadAnalyticsServiceClient::new(channel);
    let mut histograms: BTreeMap<usize, (Histogram<u64>, Histogram<u64>)> = BTreeMap::new();
    let mut turn = 0;
    while Instant::now() < until {
        let changed = tokio::time::timeout_at(until.into(), latest.changed()).await;
        if !matches!(changed, Ok(Ok(()))) {
            break;
        }
        let Some(ack) = *latest.borrow_and_update() else { continue };
        if ack.at < from || ack.at > until {
            continue;
        }
        let model = turn % READ_MODELS.len();
        turn += 1;
        let sent = Instant::now();
        ask(&mut client, model, ack.position).await.with_context(|| format!("ask the {}", READ_MODELS[model]))?;
        let answered = Instant::now();
        let (delay, query) = histograms.entry(model).or_insert_with(|| (micros_histogram(), micros_histogram()));
        record_micros(delay, answered - ack.at);
        record_micros(query, answered - sent);
    }
    Ok(histograms
        .into_iter()
        .map(|(model, (delay, query))| ReadModelFreshness {
            read_model: READ_MODELS[model],
            probes: delay.len(),
            delay_ms: Latency::from_micros(&delay),
            query_ms: Latency::from_micros(&query),
        })
        .collect())
}

/// Asks read model `model` for its figures once it has applied `position`:
/// the window is the hour around now, ungrouped.
async fn ask(client: &mut LeadAnalyticsServiceClient<Channel>, model: usize, position: u64) -> anyhow::Result<()> {
    let now = SystemTime::now();
    let from = Some(prost_types::Timestamp::from(now - Duration::from_secs(3600)));
    let to = Some(prost_types::Timestamp::from(now + Duration::from_secs(3600)));
    let filter = Some(pb::AnalyticsFilter { from, to, group_by: 0, min_position: position });
    let as_of = match model {
        0 => client.get_funnel(pb::GetFunnelRequest { filter }).await?.into_inner().as_of_position,
        1 => client.get_conversion_rates(pb::GetConversionRatesRequest { filter }).await?.into_inner().as_of_position,
        2 => client.get_lead_quality(pb::GetLeadQualityRequest { filter }).await?.into_inner().as_of_position,
        3 => {
            let request = pb::ListSlaBreachesRequest { from, to, min_position: position, ..Default::default() };
            client.list_sla_breaches(request).await?.into_inner().as_of_position
        }
        _ => {
            let request = pb::GetSlaReportRequest { from, to, min_position: position };
            client.get_sla_report(request).await?.into_inner().as_of_position
        }
    };
    anyhow::ensure!(as_of >= position, "answered at position {as_of}, short of {position}");
    Ok(())
}
