//! A real `nats-server` (JetStream on) per test: a free port, a temp store
//! dir, killed on drop. The binary is the pinned one `tests/run.sh` installs
//! and exports as `LEADGER_TEST_NATS_SERVER`; a test can stop the server and
//! start it again on the same port and store, as an outage would.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::{self, stream::Stream};
use tempfile::TempDir;

/// Environment variable holding the path of the pinned `nats-server`.
pub const NATS_SERVER_ENV: &str = "LEADGER_TEST_NATS_SERVER";

/// The stream leadger publishes to by default.
pub const EVENT_STREAM: &str = "LEADS_V1_EVENTS";

pub struct NatsServer {
    pub port: u16,
    /// The HTTP monitoring port (`/connz`, `/jsz`).
    pub monitor_port: u16,
    store: TempDir,
    child: Option<tokio::process::Child>,
}

fn binary() -> PathBuf {
    std::env::var_os(NATS_SERVER_ENV).map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "{NATS_SERVER_ENV} is not set: run the test suite with `bash tests/run.sh`, which installs the pinned \
             nats-server"
        )
    })
}

impl NatsServer {
    pub async fn start() -> Self {
        let store = tempfile::tempdir().expect("temp dir for the JetStream store");
        let mut server = Self { port: crate::free_port(), monitor_port: crate::free_port(), store, child: None };
        server.restart().await.expect("start nats-server");
        server
    }

    /// The JetStream store directory, where published messages are kept.
    pub fn store_dir(&self) -> &std::path::Path {
        self.store.path()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on its port with its store dir, and waits
    /// until JetStream answers.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "nats-server is already running");
        let child = tokio::process::Command::new(binary())
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-m", &self.monitor_port.to_string()])
            .arg("--store_dir")
            .arg(self.store.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawn nats-server")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let ready = async {
                let client = async_nats::connect(self.url()).await?;
                jetstream::new(client).query_account().await?;
                anyhow::Ok(())
            };
            match tokio::time::timeout(Duration::from_secs(2), ready).await {
                Ok(Ok(())) => return Ok(()),
                _ if Instant::now() > deadline => bail!("nats-server on port {} did not become ready", self.port),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill nats-server");
        }
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.expect("connect to nats-server")
    }

    pub async fn jetstream(&self) -> jetstream::Context {
        jetstream::new(self.client().await)
    }

    /// The HTTP monitoring endpoint's JSON at `path` (e.g. `connz`).
    pub async fn monitor(&self, path: &str) -> serde_json::Value {
        let mut stream =
            tokio::net::TcpStream::connect(("127.0.0.1", self.monitor_port)).await.expect("connect to monitoring");
        let request = format!("GET /{path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.expect("send request");
        let mut response = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut response).await.expect("read response");
        let response = String::from_utf8(response).expect("utf-8 response");
        let (_, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        serde_json::from_str(body).expect("monitoring JSON")
    }
}

/// One message of the event stream, as stored.
#[derive(Debug, Clone)]
pub struct StreamedEvent {
    pub sequence: u64,
    pub subject: String,
    pub headers: Vec<(String, String)>,
    pub payload: String,
}

impl StreamedEvent {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }

    /// `ce-leadposition`, which every relay publish carries.
    pub fn position(&self) -> u64 {
        self.header("ce-leadposition").and_then(|p| p.parse().ok()).expect("a ce-leadposition header")
    }
}

/// The stream of SLA-breach notifications.
pub const BREACH_STREAM: &str = "LEADS_V1_SLA";

/// The event stream, or None while it does not exist yet.
pub async fn event_stream(js: &jetstream::Context) -> Option<Stream> {
    js.get_stream(EVENT_STREAM).await.ok()
}

/// Number of messages in the event stream (0 when it does not exist yet).
pub async fn stream_length(js: &jetstream::Context) -> u64 {
    length_of(js, EVENT_STREAM).await
}

/// Number of messages in stream `name` (0 when it does not exist yet).
pub async fn length_of(js: &jetstream::Context, name: &str) -> u64 {
    match js.get_stream(name).await {
        Ok(mut stream) => stream.info().await.map(|info| info.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Every message of the event stream, in sequence order, read by an
/// ephemeral pull consumer from the start (as a consumer would read them).
pub async fn stream_messages(js: &jetstream::Context) -> Vec<StreamedEvent> {
    messages_of(js, EVENT_STREAM).await
}

/// Every message of stream `name`, in sequence order.
pub async fn messages_of(js: &jetstream::Context, name: &str) -> Vec<StreamedEvent> {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, pull};
    use futures_util::StreamExt;

    let Ok(mut stream) = js.get_stream(name).await else { return Vec::new() };
    let total = stream.info().await.expect("stream info").state.messages;
    let config = pull::Config { deliver_policy: DeliverPolicy::All, ack_policy: AckPolicy::None, ..Default::default() };
    let consumer = stream.create_consumer(config).await.expect("create a consumer");
    let mut messages = Vec::new();
    while (messages.len() as u64) < total {
        let mut batch = consumer
            .fetch()
            .max_messages(1000)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .expect("fetch messages");
        let before = messages.len();
        while let Some(message) = batch.next().await {
            let message = message.expect("a stream message");
            let sequence = message.info().expect("JetStream metadata").stream_sequence;
            let headers = message
                .headers
                .iter()
                .flat_map(|headers| headers.iter())
                .flat_map(|(name, values)| values.iter().map(move |v| (name.to_string(), v.as_str().to_string())))
                .collect();
            messages.push(StreamedEvent {
                sequence,
                subject: message.subject.to_string(),
                headers,
                payload: String::from_utf8(message.payload.to_vec()).expect("utf-8 payload"),
            });
        }
        assert!(messages.len() > before, "the consumer got no more messages at {} of {total}", messages.len());
    }
    messages
}

/// Waits until the event stream holds `count` messages (`deadline` from now).
pub async fn wait_for_stream_length(js: &jetstream::Context, count: u64, deadline: Duration) -> anyhow::Result<()> {
    let until = Instant::now() + deadline;
    loop {
        let length = stream_length(js).await;
        if length >= count {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("the event stream holds {length} messages after {deadline:?}, expected {count}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Checks that the stream holds log positions 1..=`count` exactly once, in
/// order, with contiguous stream sequences and unique event ids.
pub fn assert_exactly_once_in_order(messages: &[StreamedEvent], count: u64) {
    let positions: Vec<u64> = messages.iter().map(StreamedEvent::position).collect();
    let expected: Vec<u64> = (1..=count).collect();
    if positions != expected {
        let first_wrong = positions.iter().zip(&expected).position(|(got, want)| got != want);
        panic!(
            "the stream holds {} messages, expected positions 1..={count} once each in order; first difference at \
             index {first_wrong:?}",
            positions.len()
        );
    }
    let mut ids = std::collections::HashSet::new();
    for message in messages {
        let id = message.header("ce-id").expect("ce-id");
        assert!(ids.insert(id.to_string()), "ce-id {id} appears twice");
    }
}
