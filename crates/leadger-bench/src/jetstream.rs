//! What the NATS publication benchmark does on the JetStream side: watching
//! a stream fill up, timing when each event reaches a consumer, copying the
//! relay's messages, and publishing them again the way the relay does, with
//! nothing but the client in the way.
//!
//! Fill times come from JetStream itself: the stream's state carries the
//! timestamps the server gave its first and last messages, so a rate does not
//! depend on how often the harness polls.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use async_nats::HeaderMap;
use async_nats::header::NATS_EXPECTED_LAST_SEQUENCE;
use async_nats::jetstream::Context;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::context::PublishAckFuture;
use async_nats::jetstream::message::PublishMessage;
use bytes::Bytes;
use futures_util::StreamExt;
use leadger_nats::cloudevent::POSITION_HEADER;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How often a stream's length is read while waiting for it to fill.
const FILL_POLL: Duration = Duration::from_millis(20);
/// Longest wait for one message while copying a stream.
const COPY_MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

/// A stream's messages as JetStream timestamped them.
#[derive(Debug, Clone, Copy)]
pub struct StreamFill {
    pub messages: u64,
    /// When the server stored the first message, in nanoseconds since the
    /// Unix epoch (the server's clock, which is this machine's).
    pub first_stored_unix_nanos: i128,
    pub last_stored_unix_nanos: i128,
}

impl StreamFill {
    /// Seconds from the first message stored to the last.
    pub fn publishing_seconds(&self) -> f64 {
        (self.last_stored_unix_nanos - self.first_stored_unix_nanos) as f64 / 1e9
    }

    /// Messages per second from the first stored to the last: the `n - 1`
    /// messages after the first, over the time they took.
    pub fn messages_per_second(&self) -> f64 {
        let seconds = self.publishing_seconds();
        if seconds > 0.0 { self.messages.saturating_sub(1) as f64 / seconds } else { 0.0 }
    }

    /// Seconds from `instant` (nanoseconds since the Unix epoch, see
    /// [`unix_nanos_now`]) to the first message stored.
    pub fn seconds_to_first_since(&self, instant: i128) -> f64 {
        (self.first_stored_unix_nanos - instant) as f64 / 1e9
    }

    /// Seconds from `instant` to the last message stored.
    pub fn seconds_to_last_since(&self, instant: i128) -> f64 {
        (self.last_stored_unix_nanos - instant) as f64 / 1e9
    }
}

/// Now, in nanoseconds since the Unix epoch, comparable with [`StreamFill`].
pub fn unix_nanos_now() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_nanos() as i128)
}

/// Waits until stream `name` holds at least `count` messages (it need not
/// exist yet), calling `check` between polls so that a publisher that died
/// fails the wait instead of running into `timeout`.
pub async fn wait_for_messages(
    js: &Context,
    name: &str,
    count: u64,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<StreamFill> {
    let deadline = Instant::now() + timeout;
    let mut seen = 0;
    loop {
        check()?;
        // A missing stream only means the relay has not provisioned it yet.
        if let Ok(mut stream) = js.get_stream(name).await {
            let state = &stream.info().await.with_context(|| format!("read the state of stream {name}"))?.state;
            seen = state.messages;
            if state.messages >= count {
                return Ok(StreamFill {
                    messages: state.messages,
                    first_stored_unix_nanos: state.first_timestamp.unix_timestamp_nanos(),
                    last_stored_unix_nanos: state.last_timestamp.unix_timestamp_nanos(),
                });
            }
        }
        if Instant::now() >= deadline {
            bail!("stream {name} held {seen} of {count} messages after {timeout:?}");
        }
        tokio::time::sleep(FILL_POLL).await;
    }
}

/// When each new message of a stream reached a consumer of it: an ephemeral
/// pull consumer of everything published after [`Arrivals::start`]
/// (`DeliverPolicy::New`, no acks), read by a task that notes the instant
/// each message arrives and its `ce-leadposition`.
pub struct Arrivals {
    received: mpsc::UnboundedReceiver<Result<(u64, Instant), String>>,
    reader: JoinHandle<()>,
}

impl Arrivals {
    pub async fn start(js: &Context, name: &str) -> anyhow::Result<Self> {
        let stream = js.get_stream(name).await.with_context(|| format!("open stream {name}"))?;
        let config =
            pull::Config { deliver_policy: DeliverPolicy::New, ack_policy: AckPolicy::None, ..Default::default() };
        let consumer = stream.create_consumer(config).await.with_context(|| format!("create a consumer of {name}"))?;
        let mut messages = consumer.messages().await.with_context(|| format!("consume stream {name}"))?;
        let (sender, received) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(message) = messages.next().await {
                let at = Instant::now();
                let arrival = match message {
                    Ok(message) => position_of(message.headers.as_ref())
                        .map(|position| (position, at))
                        .ok_or_else(|| format!("a message on {} has no {POSITION_HEADER}", message.subject)),
                    Err(error) => Err(format!("consume: {error}")),
                };
                if sender.send(arrival).is_err() {
                    break;
                }
            }
        });
        Ok(Self { received, reader })
    }

    /// The arrival instants of `positions`, waiting until all of them have
    /// arrived or until `timeout` has passed since the call; positions that
    /// did not arrive are missing from the result.
    pub async fn collect(mut self, positions: &[u64], timeout: Duration) -> anyhow::Result<HashMap<u64, Instant>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut arrived: HashMap<u64, Instant> = HashMap::with_capacity(positions.len());
        let mut wanted = positions.iter().copied().collect::<std::collections::HashSet<u64>>();
        while !wanted.is_empty() {
            match tokio::time::timeout_at(deadline, self.received.recv()).await {
                Ok(Some(Ok((position, at)))) => {
                    wanted.remove(&position);
                    // A redelivered message keeps its first arrival.
                    arrived.entry(position).or_insert(at);
                }
                Ok(Some(Err(error))) => bail!("{error}"),
                Ok(None) => bail!("the consumer stopped"),
                Err(_) => break,
            }
        }
        Ok(arrived)
    }
}

impl Drop for Arrivals {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn position_of(headers: Option<&HeaderMap>) -> Option<u64> {
    headers?.get(POSITION_HEADER)?.as_str().parse().ok()
}

/// One message as the relay published it: subject, headers (without the
/// expected-sequence header, which depends on the stream it goes to) and
/// payload.
#[derive(Debug, Clone)]
pub struct EventMessage {
    pub subject: String,
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// The first `count` messages of stream `name`, in order; fails unless they
/// are positions 1 to `count`.
pub async fn copy_messages(js: &Context, name: &str, count: u64) -> anyhow::Result<Vec<EventMessage>> {
    let stream = js.get_stream(name).await.with_context(|| format!("open stream {name}"))?;
    let config = pull::Config { deliver_policy: DeliverPolicy::All, ack_policy: AckPolicy::None, ..Default::default() };
    let consumer = stream.create_consumer(config).await.with_context(|| format!("create a consumer of {name}"))?;
    let mut messages = consumer.messages().await.with_context(|| format!("consume stream {name}"))?;
    let mut copied = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    for expected in 1..=count {
        let message = match tokio::time::timeout(COPY_MESSAGE_TIMEOUT, messages.next()).await {
            Ok(Some(message)) => message.with_context(|| format!("read message {expected} of {name}"))?,
            Ok(None) => bail!("stream {name} ended after {} messages", expected - 1),
            Err(_) => bail!("message {expected} of {name} did not arrive within {COPY_MESSAGE_TIMEOUT:?}"),
        };
        let stored = message.headers.as_ref();
        let position = position_of(stored);
        if position != Some(expected) {
            bail!("message {expected} of {name} carries position {position:?}");
        }
        let headers: HeaderMap = stored
            .into_iter()
            .flat_map(HeaderMap::iter)
            .filter(|(name, _)| {
                !AsRef::<str>::as_ref(*name).eq_ignore_ascii_case(AsRef::<str>::as_ref(&NATS_EXPECTED_LAST_SEQUENCE))
            })
            .flat_map(|(name, values)| values.iter().map(move |value| (name.clone(), value.clone())))
            .collect();
        copied.push(EventMessage { subject: message.subject.to_string(), headers, payload: message.payload.clone() });
    }
    Ok(copied)
}

/// Publishes `messages` to an empty stream as the relay does: one after the
/// other, each with `Nats-Expected-Last-Sequence` of the one before, up to
/// `window` acknowledgements in flight, every acknowledgement checked for
/// the sequence it should have. Returns the seconds from the first publish
/// to the last acknowledgement.
pub async fn publish_like_the_relay(js: &Context, messages: Vec<EventMessage>, window: usize) -> anyhow::Result<f64> {
    let window = window.max(1);
    let mut in_flight: VecDeque<(u64, PublishAckFuture)> = VecDeque::with_capacity(window);
    let mut last_sequence = 0;
    let started = Instant::now();
    for message in messages {
        if in_flight.len() >= window
            && let Some((sequence, ack)) = in_flight.pop_front()
        {
            confirm(sequence, ack).await?;
        }
        let publish = PublishMessage::build()
            .headers(message.headers)
            .payload(message.payload)
            .expected_last_sequence(last_sequence);
        let ack = js
            .send_publish(message.subject, publish)
            .await
            .with_context(|| format!("publish sequence {}", last_sequence + 1))?;
        last_sequence += 1;
        in_flight.push_back((last_sequence, ack));
    }
    while let Some((sequence, ack)) = in_flight.pop_front() {
        confirm(sequence, ack).await?;
    }
    Ok(started.elapsed().as_secs_f64())
}

async fn confirm(sequence: u64, ack: PublishAckFuture) -> anyhow::Result<()> {
    let ack = ack.await.with_context(|| format!("acknowledgement of sequence {sequence}"))?;
    if ack.duplicate || ack.sequence != sequence {
        bail!("the message meant for sequence {sequence} got {} (duplicate: {})", ack.sequence, ack.duplicate);
    }
    Ok(())
}
