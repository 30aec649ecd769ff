//! `--metrics-listen ADDR`: Prometheus metrics on `http://ADDR/metrics`.
//!
//! Counters and histograms are recorded where things happen, through the
//! `metrics` facade (the gRPC layer, the committer). Gauges are sampled when
//! Prometheus scrapes: the log head and the database pool in every process,
//! relay lag and NATS state where a relay runs, projector lag, the funnel
//! and open SLA breaches where a projector runs. A gauge whose read fails
//! keeps its last value (the failure is logged). A standby relay reports a
//! lag of 0, since it is not the one behind; the read-model gauges come from
//! the shared database, so every projector instance reports the same.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use leadger_domain::Stage;
use leadger_domain::handoff::{self, HandoffKind, HandoffState};
use leadger_domain::journey::{self, Window};
use leadger_nats::{RelayState, RelayStatus};
use leadger_store::committer::Clock;
use leadger_store::{Agreements, EventLog, JourneyScope, JourneyStore};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Refreshes some gauges; run before each scrape.
pub type Sampler = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// How long one sampler may take before the scrape goes on without it.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Installs the Prometheus recorder for this process; metrics recorded
/// before are lost, so call it first.
fn install() -> anyhow::Result<PrometheusHandle> {
    const SECONDS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
    const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .set_buckets_for_metric(Matcher::Full("leadger_commit_batch_commands".into()), BATCH)?
        .install_recorder()
        .context("install the Prometheus recorder")?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!("leadger_commands_total", "Commands answered, by RPC and gRPC status code.");
    describe_histogram!("leadger_command_duration_seconds", "Time from request to answer of commands, by RPC.");
    describe_counter!("leadger_queries_total", "Query and analytics calls answered, by RPC and gRPC status code.");
    describe_histogram!("leadger_query_duration_seconds", "Time from request to answer of queries, by RPC.");
    describe_histogram!("leadger_commit_batch_commands", "Commands per group-commit transaction.");
    describe_counter!("leadger_events_appended_total", "Lead events this process appended (replays not counted).");
    describe_gauge!("leadger_log_head_position", "Position of the last event in the log.");
    describe_gauge!("leadger_db_pool_connections", "Database pool connections, by state (idle, in_use).");
    describe_gauge!("leadger_db_pool_max_connections", "Most connections the database pool opens.");
    describe_gauge!("leadger_relay_publishing", "1 while this relay holds the lease and publishes, else 0.");
    describe_gauge!("leadger_relay_lag_events", "Events in the log not yet acknowledged by JetStream.");
    describe_gauge!("leadger_relay_lag_seconds", "Age of the oldest event not yet acknowledged by JetStream.");
    describe_gauge!("leadger_nats_connected", "1 while the NATS connection is up, else 0.");
    describe_gauge!("leadger_projector_lag_events", "Events in the log not yet applied to a read model, by model.");
    describe_gauge!("leadger_funnel_leads", "Leads in each stage now, by stage.");
    describe_gauge!("leadger_sla_breaches_open", "Hand-offs past their SLA deadline and not ended, by kind.");
}

/// Serves `/metrics` on `address` until `stopping` turns true.
pub async fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    samplers: Vec<Sampler>,
    mut stopping: watch::Receiver<bool>,
) {
    let samplers = Arc::new(samplers);
    let scrape = move || {
        let (handle, samplers) = (handle.clone(), samplers.clone());
        async move {
            let samples = samplers.iter().map(|sample| tokio::time::timeout(SAMPLE_TIMEOUT, sample()));
            if futures_util::future::join_all(samples).await.iter().any(Result::is_err) {
                tracing::warn!("a metrics sampler took over {SAMPLE_TIMEOUT:?}; its gauges keep their last values");
            }
            ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
        }
    };
    let router = axum::Router::new().route("/metrics", axum::routing::get(scrape));
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let _ = stopping.wait_for(|stop| *stop).await;
        })
        .await;
    if let Err(error) = served {
        tracing::error!(%error, "serve /metrics");
    }
}

/// Binds `--metrics-listen` and installs the recorder: call before anything records.
pub async fn open(address: SocketAddr) -> anyhow::Result<(TcpListener, PrometheusHandle)> {
    let listener = TcpListener::bind(address).await.with_context(|| format!("--metrics-listen {address}"))?;
    let handle = install()?;
    tracing::info!("metrics on http://{}/metrics", listener.local_addr()?);
    Ok((listener, handle))
}

/// Log head and database pool.
pub fn log_sampler<L: EventLog>(log: Arc<L>) -> Sampler {
    Arc::new(move || {
        let log = log.clone();
        Box::pin(async move {
            if let Ok(head) = log.head_position().await {
                metrics::gauge!("leadger_log_head_position").set(head as f64);
            }
            let pool = log.pool_usage();
            metrics::gauge!("leadger_db_pool_connections", "state" => "idle").set(f64::from(pool.idle));
            metrics::gauge!("leadger_db_pool_connections", "state" => "in_use")
                .set(f64::from(pool.open.saturating_sub(pool.idle)));
            metrics::gauge!("leadger_db_pool_max_connections").set(f64::from(pool.max));
        })
    })
}

/// Relay lag (events and seconds) and the NATS connection.
pub fn relay_sampler<L: EventLog>(
    log: Arc<L>,
    status: watch::Receiver<RelayStatus>,
    client: async_nats::Client,
    clock: Clock,
) -> Sampler {
    Arc::new(move || {
        let (log, status, client, clock) = (log.clone(), status.clone(), client.clone(), clock.clone());
        Box::pin(async move {
            let connected = client.connection_state() == async_nats::connection::State::Connected;
            metrics::gauge!("leadger_nats_connected").set(if connected { 1.0 } else { 0.0 });
            let (publishing, unavailable, published) = {
                let status = status.borrow();
                let unavailable = matches!(status.state, RelayState::Unavailable(_));
                (status.state == RelayState::Publishing, unavailable, status.published)
            };
            metrics::gauge!("leadger_relay_publishing").set(if publishing { 1.0 } else { 0.0 });
            // A relay that cannot reach NATS still owes its events: its lag grows.
            let (mut events, mut seconds) = (0.0, 0.0);
            if (publishing || unavailable)
                && let Ok(head) = log.head_position().await
            {
                events = head.saturating_sub(published) as f64;
                if head > published
                    && let Ok(oldest) = log.read_log(published + 1, 1).await
                    && let Some(oldest) = oldest.first()
                {
                    let age = clock().as_micros().saturating_sub(oldest.recorded_at.as_micros());
                    seconds = age.max(0) as f64 / 1e6;
                }
            }
            metrics::gauge!("leadger_relay_lag_events").set(events);
            metrics::gauge!("leadger_relay_lag_seconds").set(seconds);
        })
    })
}

/// Projector lag and what the journeys read model says now: leads by stage
/// and open SLA breaches by kind.
pub fn projector_sampler<L: EventLog + JourneyStore + Agreements>(log: Arc<L>, clock: Clock) -> Sampler {
    Arc::new(move || {
        let (log, clock) = (log.clone(), clock.clone());
        Box::pin(async move {
            let (Ok(head), Ok(cursor)) = (log.head_position().await, log.journey_cursor().await) else {
                return;
            };
            metrics::gauge!("leadger_projector_lag_events", "model" => "journeys")
                .set(head.saturating_sub(cursor.position) as f64);
            let (Ok(snapshot), Ok(policies)) = (log.read_journeys(JourneyScope::All).await, log.sla_policies().await)
            else {
                return;
            };
            let mut stages = [0u64; 6];
            for group in journey::funnel(&snapshot.journeys, Window::ALL_TIME, None) {
                for (count, stage) in stages.iter_mut().zip(Stage::ALL) {
                    *count += group.current.get(stage);
                }
            }
            for (count, stage) in stages.into_iter().zip(Stage::ALL) {
                metrics::gauge!("leadger_funnel_leads", "stage" => stage.as_str()).set(count as f64);
            }
            let policies: Vec<_> = policies.into_iter().map(|recorded| recorded.policy).collect();
            let (mut acceptance, mut close) = (0u64, 0u64);
            for judged in handoff::judged_handoffs(&snapshot.journeys, &policies, Window::ALL_TIME, clock()) {
                if judged.state == HandoffState::Open {
                    match judged.handoff.kind {
                        HandoffKind::Acceptance => acceptance += 1,
                        HandoffKind::Close => close += 1,
                    }
                }
            }
            metrics::gauge!("leadger_sla_breaches_open", "kind" => "acceptance").set(acceptance as f64);
            metrics::gauge!("leadger_sla_breaches_open", "kind" => "close").set(close as f64);
        })
    })
}
