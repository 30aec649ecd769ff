//! SLA-breach notifications: when an MQL or SQL hand-off is still open at
//! its deadline, one message on the `LEADS_V1_SLA` stream
//! (`leads.v1.sla.breached.<kind>.<lead_id>`), for alerting.
//!
//! Breaches are derived, not log events, so they have their own stream and
//! the event stream stays one message per log position. The notifier
//! announces a breach only once every event recorded before its deadline is
//! in the read model (an answer in time must prevent the alert), never for a
//! hand-off recorded after its deadline had passed (an import must not flood
//! the subject), in deadline order, once: `Nats-Msg-Id` is
//! `<handoff id>.breach`, each publish expects the stream's previous
//! sequence, and the stream's last message is the notifier's checkpoint. At
//! its very first start (an empty stream) it announces only deadlines that
//! pass from then on. One notifier works at a time, by the
//! `nats-sla-breaches` lease.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{Config, LastRawMessageErrorKind, StorageType};
use async_nats::jetstream::{self, Context};
use leadger_domain::Timestamp;
use leadger_domain::handoff::{BreachMark, HandoffKind, JudgedHandoff, breaches_to_announce};
use leadger_store::committer::Clock;
use leadger_store::{Agreements, EventLog, JourneyScope, JourneyStore, Leases};
use tokio::sync::watch;

use crate::cloudevent::percent_encode;

pub const LEASE_NAME: &str = "nats-sla-breaches";
pub const BREACH_SUBJECT_PREFIX: &str = "leads.v1.sla";
/// How long a commit may take between its recorded time and its visibility:
/// deadlines this close to "now" wait for the next round.
const COMMIT_MARGIN_US: i64 = 1_000_000;
/// How many times a round re-reads the read model waiting for the projector.
const CATCH_UP_ATTEMPTS: usize = 40;

#[derive(Clone)]
pub struct BreachConfig {
    /// The stream of breach notifications (created or updated at start).
    pub stream: String,
    pub replicas: usize,
    /// `ce-source` of every notification.
    pub source: String,
    pub holder: String,
    pub lease_ttl: Duration,
    /// How often open hand-offs are checked.
    pub interval: Duration,
    pub clock: Clock,
}

impl BreachConfig {
    pub fn new(source: String, replicas: usize, clock: Clock) -> Self {
        Self {
            stream: "LEADS_V1_SLA".to_string(),
            replicas,
            source,
            holder: format!("breaches-{}", uuid::Uuid::now_v7()),
            lease_ttl: Duration::from_secs(10),
            interval: Duration::from_secs(1),
            clock,
        }
    }

    fn stream_config(&self) -> Config {
        Config {
            name: self.stream.clone(),
            description: Some("leadger's SLA-breach notifications, derived from the read model".to_string()),
            subjects: vec![format!("{BREACH_SUBJECT_PREFIX}.>")],
            storage: StorageType::File,
            num_replicas: self.replicas,
            duplicate_window: Duration::from_secs(600),
            allow_direct: true,
            ..Config::default()
        }
    }
}

/// One notification ready to publish.
pub struct BreachMessage {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: String,
}

fn kind_name(kind: HandoffKind) -> &'static str {
    match kind {
        HandoffKind::Acceptance => "acceptance",
        HandoffKind::Close => "close",
    }
}

/// The CloudEvent (binary mode) announcing `breach`.
pub fn breach_message(breach: &JudgedHandoff, source: &str) -> BreachMessage {
    let handoff_id = breach.handoff.id();
    let id = format!("{handoff_id}.breach");
    let lead_id = breach.handoff.lead_id.to_string();
    let kind = kind_name(breach.handoff.kind);
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Msg-Id", id.as_str());
    headers.insert("ce-specversion", "1.0");
    headers.insert("ce-id", id.as_str());
    headers.insert("ce-source", percent_encode(source).as_str());
    headers.insert("ce-type", "leads.v1.SlaBreached");
    headers.insert("ce-subject", lead_id.as_str());
    headers.insert("ce-time", breach.deadline.to_rfc3339().as_str());
    headers.insert("ce-datacontenttype", "application/json");
    headers.insert("ce-dataschema", "urn:leadger:schema:leads.v1.SlaBreached:1");
    let payload = serde_json::json!({
        "handoff_id": handoff_id,
        "lead_id": lead_id,
        "kind": kind.to_uppercase(),
        "started_at": breach.handoff.started_at.to_rfc3339(),
        "deadline": breach.deadline.to_rfc3339(),
        "deadline_us": breach.deadline.as_micros(),
        "owner": breach.owner,
        "source": breach.source,
        "campaign": breach.campaign,
    });
    BreachMessage {
        subject: format!("{BREACH_SUBJECT_PREFIX}.breached.{kind}.{lead_id}"),
        headers,
        payload: payload.to_string(),
    }
}

/// Runs the notifier until `stopping` turns true.
pub async fn run_breach_notifier<L: EventLog + JourneyStore + Agreements + Leases>(
    log: Arc<L>,
    client: async_nats::Client,
    config: BreachConfig,
    mut stopping: watch::Receiver<bool>,
) {
    let js = jetstream::new(client);
    // Where an empty stream starts: deadlines passing from now on.
    let first_start = BreachMark { deadline: (config.clock)(), handoff_id: String::new() };
    let mut failing = false;
    while !*stopping.borrow() {
        let pause = match log.acquire_lease(LEASE_NAME, &config.holder, config.lease_ttl, 0).await {
            Ok(Some(_)) => match announce_due(&*log, &js, &config, &first_start).await {
                Ok(()) => {
                    if failing {
                        tracing::info!("SLA-breach notifier publishing again");
                    }
                    failing = false;
                    config.interval
                }
                Err(reason) => {
                    if !failing {
                        tracing::warn!(reason, "SLA-breach notifier cannot publish; retrying");
                    }
                    failing = true;
                    config.interval.max(Duration::from_secs(2))
                }
            },
            Ok(None) => config.lease_ttl / 3,
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "SLA-breach notifier cannot take its lease; retrying");
                }
                failing = true;
                Duration::from_secs(2)
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stopping.wait_for(|stop| *stop) => {}
        }
    }
    let _ = log.release_lease(LEASE_NAME, &config.holder, 0).await;
}

/// One round: publishes every breach due since the stream's last message.
async fn announce_due<L: EventLog + JourneyStore + Agreements>(
    log: &L,
    js: &Context,
    config: &BreachConfig,
    first_start: &BreachMark,
) -> Result<(), String> {
    js.create_or_update_stream(config.stream_config())
        .await
        .map_err(|e| format!("provision stream {}: {e}", config.stream))?;
    let mut stream = js.get_stream(&config.stream).await.map_err(|e| format!("open stream {}: {e}", config.stream))?;
    let last_sequence =
        stream.info().await.map_err(|e| format!("read stream {}: {e}", config.stream))?.state.last_sequence;
    let since = if last_sequence == 0 {
        first_start.clone()
    } else {
        match stream.get_raw_message(last_sequence).await {
            Ok(message) => mark_of(&message.payload)
                .ok_or_else(|| format!("the last message of stream {} is not a breach notification", config.stream))?,
            Err(error) if matches!(error.kind(), LastRawMessageErrorKind::NoMessageFound) => first_start.clone(),
            Err(error) => return Err(format!("read the last breach notification: {error}")),
        }
    };
    // The horizon: an instant by which everything recorded is in the read model.
    let now = (config.clock)();
    let head = log.head_position().await.map_err(|e| format!("read the log head: {e}"))?;
    // Wait (a little) for the projector to reach that head: under steady
    // load it is always a batch or so behind the newest commit, but it
    // reaches a fixed position quickly.
    for _ in 0..CATCH_UP_ATTEMPTS {
        let cursor = log.journey_cursor().await.map_err(|e| format!("read the read model's position: {e}"))?;
        if cursor.position >= head {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Only leads in MQL or SQL can have an open hand-off.
    let snapshot =
        log.read_journeys(JourneyScope::AwaitingSales).await.map_err(|e| format!("read the journeys: {e}"))?;
    if snapshot.position < head {
        return Ok(()); // the projector is far behind; next round
    }
    let horizon = Timestamp::from_micros(now.as_micros() - COMMIT_MARGIN_US).unwrap_or(now);
    let policies: Vec<_> = log
        .sla_policies()
        .await
        .map_err(|e| format!("read the SLA policy: {e}"))?
        .into_iter()
        .map(|recorded| recorded.policy)
        .collect();
    let mut expected = last_sequence;
    for breach in breaches_to_announce(&snapshot.journeys, &policies, &since, horizon) {
        let message = breach_message(&breach, &config.source);
        let publish = PublishMessage::build()
            .headers(message.headers)
            .payload(message.payload.into())
            .expected_last_sequence(expected);
        let ack = js.send_publish(message.subject, publish).await.map_err(|e| format!("publish a breach: {e}"))?.await;
        match ack {
            Ok(ack) if !ack.duplicate => expected = ack.sequence,
            Ok(_) => return Ok(()),
            Err(error) if matches!(error.kind(), PublishErrorKind::WrongLastSequence) => return Ok(()),
            Err(error) => return Err(format!("publish a breach: {error}")),
        }
    }
    Ok(())
}

/// The deadline and hand-off of a published notification.
fn mark_of(payload: &[u8]) -> Option<BreachMark> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let deadline = Timestamp::from_micros(value.get("deadline_us")?.as_i64()?)?;
    let handoff_id = value.get("handoff_id")?.as_str()?.to_string();
    Some(BreachMark { deadline, handoff_id })
}
