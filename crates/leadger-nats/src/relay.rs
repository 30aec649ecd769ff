//! The relay: publishes the SQL event log to JetStream, each event exactly
//! once and in position order (the log is the outbox).
//!
//! One relay per deployment works at a time: it holds the `nats-relay` lease
//! in the log's database and renews it while it publishes; others stand by
//! and take over when it expires. The lease is not what keeps the stream
//! exact, though. Every publish carries `Nats-Msg-Id` (the event id) and
//! `Nats-Expected-Last-Sequence` (the stream sequence of the previous event),
//! so JetStream itself refuses a publish that is repeated or out of order —
//! also one from a relay that lost its lease with messages still in flight.
//! After any refusal, failure or start, the relay reads the stream's last
//! message and resumes right after the log position it carries: the stream is
//! its own checkpoint, so events a restarted NATS lost from its tail are
//! published again.

use std::collections::VecDeque;
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::publish::PublishAck;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};
use async_nats::jetstream::{self, Context};
use leadger_store::{EventLog, Leases, RecordedEvent};
use tokio::sync::watch;
use tokio::time::{Instant, sleep};

use crate::cloudevent::{POSITION_HEADER, to_cloud_event};
use crate::stream::StreamSettings;

/// The lease relays compete for.
pub const LEASE_NAME: &str = "nats-relay";

#[derive(Debug, Clone)]
pub struct RelayConfig {
    pub stream: StreamSettings,
    /// `ce-source` of every event.
    pub source: String,
    /// This relay's name in the lease table; unique per process.
    pub holder: String,
    /// How long the lease lasts unless renewed (renewed every third of it).
    pub lease_ttl: Duration,
    /// Most publishes awaiting their acknowledgement at once.
    pub window: usize,
    /// How often the log is re-read when no append was announced.
    pub poll_interval: Duration,
    /// Longest pause between attempts while NATS or the database is down.
    pub max_backoff: Duration,
}

impl RelayConfig {
    pub fn new(stream: StreamSettings, source: String) -> Self {
        Self {
            stream,
            source,
            holder: format!("relay-{}", uuid::Uuid::now_v7()),
            lease_ttl: Duration::from_secs(10),
            window: 512,
            poll_interval: Duration::from_millis(500),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// What the relay is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayState {
    Starting,
    /// Another relay holds the lease.
    Standby,
    /// Holding the lease and publishing (or caught up).
    Publishing,
    /// NATS or the database failed; retrying with backoff.
    Unavailable(String),
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayStatus {
    pub state: RelayState,
    /// The last log position this relay saw acknowledged in the stream.
    pub published: u64,
}

impl RelayStatus {
    pub fn is_healthy(&self) -> bool {
        matches!(self.state, RelayState::Standby | RelayState::Publishing)
    }
}

/// Runs the relay until `stopping` turns true, then lets its lease go.
pub async fn run_relay<L: EventLog + Leases>(
    log: Arc<L>,
    client: async_nats::Client,
    config: RelayConfig,
    appended: watch::Receiver<u64>,
    status: watch::Sender<RelayStatus>,
    mut stopping: watch::Receiver<bool>,
) {
    let mut relay = Relay {
        js: jetstream::new(client),
        log,
        config,
        appended,
        status,
        published: 0,
        backoff: Duration::ZERO,
        stopping: stopping.clone(),
    };
    while !*stopping.borrow() {
        let lease = relay.log.acquire_lease(LEASE_NAME, &relay.config.holder, relay.config.lease_ttl, 0).await;
        let pause = match lease {
            Ok(Some(lease)) => match relay.publish_while_leased(lease.progress).await {
                SessionEnd::Stopped => break,
                SessionEnd::LeaseLost => relay.stand_by(),
                SessionEnd::Failed(reason) => relay.fail(reason),
            },
            Ok(None) => relay.stand_by(),
            Err(error) => relay.fail(format!("take the relay lease: {error}")),
        };
        tokio::select! {
            _ = sleep(pause) => {}
            _ = stopped(&mut stopping) => {}
        }
    }
    if let Err(error) = relay.log.release_lease(LEASE_NAME, &relay.config.holder, relay.published).await {
        tracing::warn!(%error, "release the relay lease");
    }
    relay.set_state(RelayState::Stopped);
}

enum SessionEnd {
    Stopped,
    LeaseLost,
    Failed(String),
}

/// A publish awaiting JetStream's acknowledgement.
struct InFlight {
    position: u64,
    sequence: u64,
    ack: Pin<Box<dyn Future<Output = Result<PublishAck, PublishError>> + Send>>,
}

/// Why a session's lease ended.
#[derive(Debug, Clone)]
enum LeaseEnd {
    Lost,
    Failed(String),
}

/// Aborts the task when dropped: the lease keeper lives as long as its session.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why the stream and the relay disagree; the relay re-reads its checkpoint.
struct Refused(String);

struct Relay<L> {
    js: Context,
    log: Arc<L>,
    config: RelayConfig,
    appended: watch::Receiver<u64>,
    status: watch::Sender<RelayStatus>,
    published: u64,
    /// Pause before the next attempt after a failure; doubles up to
    /// `max_backoff` while failures repeat.
    backoff: Duration,
    stopping: watch::Receiver<bool>,
}

impl<L: EventLog + Leases> Relay<L> {
    /// Publishes while this relay holds the lease; returns why it stopped.
    async fn publish_while_leased(&mut self, lease_progress: u64) -> SessionEnd {
        let mut stream = match self.js.create_or_update_stream(self.config.stream.to_config()).await {
            Ok(_) => match self.js.get_stream(&self.config.stream.name).await {
                Ok(stream) => stream,
                Err(error) => return SessionEnd::Failed(format!("open stream {}: {error}", self.config.stream.name)),
            },
            Err(error) => return SessionEnd::Failed(format!("provision stream {}: {error}", self.config.stream.name)),
        };
        let (keeper, mut lease_end) = self.keep_lease();
        let _keeper = AbortOnDrop(keeper);
        loop {
            let (next, last_sequence) = match self.checkpoint(&mut stream, lease_progress).await {
                Ok(checkpoint) => checkpoint,
                Err(reason) => return SessionEnd::Failed(reason),
            };
            self.published = next - 1;
            self.set_state(RelayState::Publishing);
            match self.publish_from(next, last_sequence, &mut lease_end).await {
                Ok(end) => return end,
                Err(Refused(reason)) => {
                    tracing::warn!(reason, "stream refused a publish; resuming after the stream's last message");
                }
            }
        }
    }

    /// The position to publish next and the stream's last sequence, read
    /// from the stream's last message.
    async fn checkpoint(&self, stream: &mut Stream, lease_progress: u64) -> Result<(u64, u64), String> {
        let name = &self.config.stream.name;
        let last_sequence = stream.info().await.map_err(|e| format!("read stream {name}: {e}"))?.state.last_sequence;
        if last_sequence == 0 {
            return Ok((1, 0));
        }
        match stream.get_raw_message(last_sequence).await {
            Ok(message) => {
                let position = message
                    .headers
                    .get(POSITION_HEADER)
                    .and_then(|value| value.as_str().parse::<u64>().ok())
                    .ok_or_else(|| {
                        format!(
                            "the last message of stream {name} (sequence {last_sequence}, subject {}) has no \
                             {POSITION_HEADER} header: only the relay may publish to its subjects",
                            message.subject
                        )
                    })?;
                Ok((position + 1, last_sequence))
            }
            // Aged out (max_age) or deleted: the lease remembers how far the
            // relays got.
            Err(error) if matches!(error.kind(), LastRawMessageErrorKind::NoMessageFound) => {
                Ok((lease_progress + 1, last_sequence))
            }
            Err(error) => Err(format!("read the last message of stream {name}: {error}")),
        }
    }

    /// Publishes from log position `next` on, keeping up to `window`
    /// publishes in flight, until stopped, the lease is lost or a failure.
    async fn publish_from(
        &mut self,
        mut next: u64,
        mut last_sequence: u64,
        lease_end: &mut watch::Receiver<Option<LeaseEnd>>,
    ) -> Result<SessionEnd, Refused> {
        let window = self.config.window.max(1);
        let mut buffer: VecDeque<RecordedEvent> = VecDeque::new();
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut poll_due = true;
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stopping = self.stopping.clone();
        loop {
            if let Some(end) = lease_end.borrow().clone() {
                return Ok(match end {
                    LeaseEnd::Lost => {
                        tracing::warn!("the relay lease passed to another relay; standing by");
                        SessionEnd::LeaseLost
                    }
                    LeaseEnd::Failed(reason) => SessionEnd::Failed(reason),
                });
            }
            let announced = *self.appended.borrow_and_update();
            // Refill once half the window is free, so each read fetches at
            // least half a window instead of one event per acknowledgement.
            if buffer.is_empty() && in_flight.len() <= window / 2 && (announced >= next || poll_due) {
                poll_due = false;
                let room = u32::try_from(window - in_flight.len()).unwrap_or(u32::MAX);
                match self.log.read_log(next, room).await {
                    Ok(events) => buffer.extend(events),
                    Err(error) => return Ok(SessionEnd::Failed(format!("read the log from position {next}: {error}"))),
                }
            }
            while in_flight.len() < window
                && let Some(event) = buffer.pop_front()
            {
                if event.position != next {
                    return Ok(SessionEnd::Failed(format!(
                        "the log returned position {} where {next} was expected",
                        event.position
                    )));
                }
                let message = match to_cloud_event(&event, &self.config.source) {
                    Ok(message) => message,
                    Err(error) => {
                        return Ok(SessionEnd::Failed(format!("encode the event at position {next}: {error}")));
                    }
                };
                let publish = PublishMessage::build()
                    .headers(message.headers)
                    .payload(message.payload)
                    .expected_last_sequence(last_sequence);
                let ack = match self.js.send_publish(message.subject, publish).await {
                    Ok(ack) => ack,
                    Err(error) => return Ok(SessionEnd::Failed(format!("publish position {next}: {error}"))),
                };
                last_sequence += 1;
                in_flight.push_back(InFlight { position: next, sequence: last_sequence, ack: ack.into_future() });
                next += 1;
            }
            if let Some(front) = in_flight.front_mut() {
                tokio::select! {
                    ack = &mut front.ack => {
                        let (position, sequence) = (front.position, front.sequence);
                        in_flight.pop_front();
                        match ack {
                            Ok(ack) if ack.duplicate => {
                                return Err(Refused(format!("position {position} was already in the stream")));
                            }
                            Ok(ack) if ack.sequence != sequence => {
                                return Err(Refused(format!(
                                    "position {position} got sequence {} instead of {sequence}", ack.sequence
                                )));
                            }
                            Ok(_) => self.confirm(position),
                            Err(error) if matches!(error.kind(), PublishErrorKind::WrongLastSequence) => {
                                return Err(Refused(format!("position {position}: {error}")));
                            }
                            Err(error) => {
                                return Ok(SessionEnd::Failed(format!("publish position {position}: {error}")));
                            }
                        }
                    }
                    _ = stopped(&mut stopping) => {
                        self.drain(in_flight).await;
                        return Ok(SessionEnd::Stopped);
                    }
                    _ = lease_end.changed() => {}
                }
            } else {
                tokio::select! {
                    _ = self.appended.changed() => {}
                    _ = poll.tick() => poll_due = true,
                    _ = lease_end.changed() => {}
                    _ = stopped(&mut stopping) => return Ok(SessionEnd::Stopped),
                }
            }
        }
    }

    /// Renews the lease every third of its term in a task of its own, so a
    /// slow renewal (on SQLite it waits for the write lock) never stalls
    /// publishing. The receiver turns to `Some` when the lease is lost or a
    /// renewal failed; the session then ends.
    fn keep_lease(&self) -> (tokio::task::JoinHandle<()>, watch::Receiver<Option<LeaseEnd>>) {
        let (end_tx, end) = watch::channel(None);
        let (log, holder, ttl) = (self.log.clone(), self.config.holder.clone(), self.config.lease_ttl);
        let status = self.status.subscribe();
        let keeper = tokio::spawn(async move {
            loop {
                sleep(ttl / 3).await;
                let published = status.borrow().published;
                let outcome = match log.acquire_lease(LEASE_NAME, &holder, ttl, published).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => LeaseEnd::Lost,
                    Err(error) => LeaseEnd::Failed(format!("renew the relay lease: {error}")),
                };
                let _ = end_tx.send(Some(outcome));
                return;
            }
        });
        (keeper, end)
    }

    /// At shutdown, waits briefly for the acknowledgements already due, so
    /// the status and lease progress are exact; unacknowledged publishes are
    /// found in (or missing from) the stream by the next relay's checkpoint.
    async fn drain(&mut self, in_flight: VecDeque<InFlight>) {
        let deadline = Instant::now() + Duration::from_secs(2);
        for flight in in_flight {
            match tokio::time::timeout_at(deadline, flight.ack).await {
                Ok(Ok(ack)) if !ack.duplicate && ack.sequence == flight.sequence => self.confirm(flight.position),
                _ => break,
            }
        }
    }

    /// Another relay holds the lease: check again in a third of its term.
    fn stand_by(&mut self) -> Duration {
        self.set_state(RelayState::Standby);
        self.config.lease_ttl / 3
    }

    /// A failure: the pause before the next attempt.
    fn fail(&mut self, reason: String) -> Duration {
        self.set_state(RelayState::Unavailable(reason));
        self.backoff = (self.backoff * 2).clamp(Duration::from_millis(100), self.config.max_backoff);
        self.backoff
    }

    fn confirm(&mut self, position: u64) {
        self.published = position;
        self.status.send_modify(|status| status.published = position);
    }

    /// Records a new state, logging only changes of kind: a failure that
    /// repeats, even with another reason, is not logged again per retry.
    fn set_state(&mut self, state: RelayState) {
        if matches!(state, RelayState::Publishing | RelayState::Standby) {
            self.backoff = Duration::ZERO;
        }
        let published = self.published;
        // Events committed but not yet in the stream, as far as this relay knows.
        let behind = self.appended.borrow().saturating_sub(published);
        self.status.send_if_modified(|status| {
            status.published = published;
            if status.state == state {
                return false;
            }
            if std::mem::discriminant(&status.state) != std::mem::discriminant(&state) {
                match &state {
                    RelayState::Publishing => tracing::info!(published, behind, "relay publishing to NATS"),
                    RelayState::Standby => tracing::info!("relay on standby: another relay holds the lease"),
                    RelayState::Unavailable(reason) => {
                        tracing::warn!(reason, published, behind, "relay cannot publish; retrying with backoff")
                    }
                    RelayState::Starting | RelayState::Stopped => {}
                }
            }
            status.state = state;
            true
        });
    }
}

/// Resolves once `stopping` turns true (or its sender is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stop| *stop).await;
}
