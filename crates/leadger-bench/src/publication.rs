//! `leadger-bench nats`: how fast and how soon leadger's log reaches NATS
//! JetStream, beside what JetStream itself takes on the same machine.
//!
//! It starts a throwaway database (PostgreSQL or SQLite, as `run` does), its
//! own `nats-server` with JetStream, and the real `leadger` binary, then:
//!
//! 1. **Backlog**: `leadger serve` without NATS takes a funnel load until the
//!    log holds `--backlog-events` events.
//! 2. **Relay throughput**: a relay starts on that log (on PostgreSQL the
//!    `leadger relay` process, on SQLite `leadger serve --nats-url`, which
//!    relays in process) and publishes the backlog to an empty
//!    `LEADS_V1_EVENTS`. The rate is taken from the first message JetStream
//!    stored to the last, so the relay's start-up is excluded (and reported
//!    separately).
//! 3. **Raw JetStream**, right after: the same messages, copied from the
//!    relay's stream (same subjects, headers and payloads), published again to
//!    an empty stream of the same configuration by the same client crate, the
//!    way the relay publishes (expected last sequence, the relay's window of
//!    acknowledgements in flight), with nothing else in the way.
//!
//!    Steps 2 and 3 alternate for `--rounds` rounds (the relay's stream is
//!    deleted after each, so the next relay publishes the whole log again),
//!    and relay / raw is the ratio of their medians: one run of a few seconds
//!    each varies too much on a shared machine.
//! 4. **Commit to consumer**: with a relay running and caught up, commands
//!    at a fixed rate (open loop, [`paced`]); each answer's position is
//!    matched with the instant its message reached a consumer of the stream.
//!    On PostgreSQL twice: with the `leadger relay` process (woken by
//!    `NOTIFY`) and with `leadger serve --nats-url` (woken by its own
//!    committer).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, Context};
use clap::Args;
use hdrhistogram::Histogram;
use leadger_nats::{NatsConnection, RelayConfig, StreamSettings};
use serde::Serialize;
use tempfile::TempDir;

use crate::backlog::{self, Backlog, BacklogPlan};
use crate::cpu::{CpuUse, WatchedProcesses};
use crate::jetstream::{self as js_bench, Arrivals, EventMessage, StreamFill};
use crate::load::RunNaming;
use crate::machine::{Machine, Revision};
use crate::measure::{ErrorCount, Latency, median, micros_histogram, record_micros};
use crate::nats_server::{self, NatsServer};
use crate::paced::{self, PacedPlan};
use crate::postgres::PostgresCluster;
use crate::report::PublicationReport;
use crate::scenario::{self, Backend, Database, Workspace};
use crate::server::{LeadgerRelay, LeadgerServer, RelayLaunch, ServerLaunch};

/// The stream the raw publisher fills: the relay's configuration under
/// another name (the relay's stream is deleted first, as the subjects of two
/// streams may not overlap).
const RAW_STREAM: &str = "LEADGER_BENCH_RAW";
/// How long after the last command its message may take to arrive before it
/// counts as missing.
const ARRIVAL_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Args, Serialize)]
pub struct NatsCommand {
    /// The event log the relay reads.
    #[arg(long, value_enum)]
    backend: Backend,
    /// The nats-server executable [default: target/test-tools/venv/bin/nats-server
    /// of this workspace, which `bash tests/run.sh` installs].
    #[arg(long, env = "LEADGER_BENCH_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// The leadger executable [default: `leadger` next to this executable].
    #[arg(long)]
    leadger_bin: Option<PathBuf>,
    /// Directory with initdb, pg_ctl and postgres [default: `pg_config
    /// --bindir`, else the newest /usr/lib/postgresql/*/bin].
    #[arg(long)]
    pg_bindir: Option<PathBuf>,
    /// Where the temporary database and JetStream store go [default: the
    /// system temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the logs of leadger and nats-server in DIR instead of deleting
    /// them with the temp dir.
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// An argument for every `leadger serve` the benchmark starts, e.g.
    /// `--server-arg=--max-batch=256`; repeat for more.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// Events in the log before the relay starts (the funnel's leads, about
    /// 1.4 commands each, until at least this many).
    #[arg(long, default_value_t = 100_000)]
    backlog_events: u64,
    /// Concurrent clients that load the backlog.
    #[arg(long, default_value_t = 64)]
    backlog_clients: usize,
    /// Commands per second while the commit-to-consumer delay is measured.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Measured seconds of the delay, after the warm-up.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Seconds at the start of a delay measurement whose commands are not measured.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// HTTP/2 connections the commands share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seed of the funnel.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop a load after this many failed commands.
    #[arg(long, default_value_t = 1000)]
    max_errors: u64,
    /// Rounds of relay throughput and raw publishing, alternated.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Longest wait for a relay to publish the backlog.
    #[arg(long, default_value_t = 600)]
    relay_timeout_secs: u64,
    /// Also write the results, machine and parameters as JSON to PATH.
    #[arg(long)]
    output_json: Option<PathBuf>,
}

impl NatsCommand {
    fn check(&self) -> anyhow::Result<()> {
        if self.backlog_events < 2 {
            bail!("--backlog-events must be at least 2: a rate needs a first and a last message");
        }
        if self.backlog_clients == 0 || self.connections == 0 {
            bail!("--backlog-clients and --connections must be at least 1");
        }
        if self.rate == 0 || self.duration_secs == 0 || self.rounds == 0 {
            bail!("--rate, --duration-secs and --rounds must be above 0");
        }
        Ok(())
    }

    fn paced_plan(&self) -> PacedPlan {
        PacedPlan {
            rate: self.rate,
            warmup: Duration::from_secs(self.warmup_secs),
            measured: Duration::from_secs(self.duration_secs),
            connections: self.connections,
            seed: self.seed,
            max_errors: self.max_errors,
        }
    }
}

/// A relay publishing the backlog.
#[derive(Debug, Clone, Serialize)]
pub struct RelayThroughput {
    /// Which process relayed.
    pub relay: String,
    pub messages: u64,
    /// From the first message JetStream stored to the last.
    pub publishing_seconds: f64,
    /// `messages - 1` over `publishing_seconds`.
    pub messages_per_second: f64,
    /// From the relay's process start to its first message stored.
    pub startup_seconds: f64,
    /// `messages` over the time from the process start to the last message.
    pub messages_per_second_with_startup: f64,
    /// CPU use from the first message seen in the stream to the last (as
    /// polled, see [`js_bench::wait_for_messages`]).
    pub cpu: CpuUse,
}

/// The backlog published again without leadger.
#[derive(Debug, Clone, Serialize)]
pub struct RawPublication {
    pub publisher: String,
    pub messages: u64,
    /// Acknowledgements in flight at most, as the relay keeps.
    pub window: usize,
    /// From the first message JetStream stored to the last.
    pub publishing_seconds: f64,
    pub messages_per_second: f64,
    /// Client side: from the first publish to the last acknowledgement.
    pub client_seconds: f64,
    pub messages_per_second_client: f64,
    pub cpu: CpuUse,
}

/// Commit-to-consumer delay with one kind of relay.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerDelay {
    pub relay: String,
    /// The rate asked for.
    pub target_rate: u32,
    /// Commands answered inside the measured window, per second.
    pub commands_per_second: f64,
    /// Commands answered inside the measured window.
    pub commands: u64,
    /// Events the paced load appended, warm-up included.
    pub events: u64,
    /// Their messages that reached the consumer.
    pub received: u64,
    /// Their messages that had not arrived [`ARRIVAL_TIMEOUT`] after the
    /// last answer.
    pub missing: u64,
    /// Messages that arrived before the command's answer did; counted as 0 ms.
    pub arrived_before_answer: u64,
    /// Answer to arrival, in milliseconds.
    pub delay_ms: Latency,
    /// Send to answer of the same commands, in milliseconds.
    pub command_latency_ms: Latency,
    /// Send to arrival, in milliseconds: never negative, and an upper bound
    /// of commit to arrival.
    pub send_to_arrival_ms: Latency,
    /// Failed commands by gRPC code, warm-up included.
    pub errors: std::collections::BTreeMap<String, ErrorCount>,
    pub stopped_by_errors: bool,
    /// Over the warm-up and the measured window.
    pub cpu: CpuUse,
}

/// One round of step 2 and step 3.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRound {
    pub round: u32,
    pub relay: RelayThroughput,
    pub raw: RawPublication,
    /// `relay.messages_per_second / raw.messages_per_second`.
    pub relay_to_raw: f64,
}

/// Everything the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct PublicationResults {
    pub backlog: Backlog,
    pub rounds: Vec<ThroughputRound>,
    /// Medians over the rounds, messages/s from first to last message stored.
    pub relay_messages_per_second: f64,
    pub raw_messages_per_second: f64,
    /// `relay_messages_per_second / raw_messages_per_second`.
    pub relay_to_raw: f64,
    pub delays: Vec<ConsumerDelay>,
}

impl PublicationResults {
    fn new(backlog: Backlog, rounds: Vec<ThroughputRound>, delays: Vec<ConsumerDelay>) -> Self {
        let relay_messages_per_second = median(rounds.iter().map(|round| round.relay.messages_per_second));
        let raw_messages_per_second = median(rounds.iter().map(|round| round.raw.messages_per_second));
        Self {
            backlog,
            rounds,
            relay_messages_per_second,
            raw_messages_per_second,
            relay_to_raw: relay_messages_per_second / raw_messages_per_second,
            delays,
        }
    }
}

/// What the scenario starts and shares between its steps.
struct Bench<'a> {
    command: &'a NatsCommand,
    leadger: PathBuf,
    kek_file: PathBuf,
    logs: PathBuf,
    database: &'a Database,
    nats: &'a NatsServer,
    js: Context,
    naming: Arc<RunNaming>,
}

pub async fn run(command: NatsCommand) -> anyhow::Result<PublicationResults> {
    command.check()?;
    let revision = Revision::probe();
    let leadger = scenario::leadger_binary(command.leadger_bin.as_deref())?;
    let nats_binary = nats_server::binary(command.nats_server.as_deref())?;
    let workspace = Workspace::prepare(&leadger, command.work_dir.as_deref(), command.log_dir.as_deref())?;
    let (parent, logs, kek_file) = (workspace.parent.clone(), workspace.logs.clone(), workspace.kek_file.clone());
    let database = scenario::start_database(command.backend, command.pg_bindir.as_deref(), workspace.path(), &parent)?;
    let nats = NatsServer::start(&nats_binary, &parent, scenario::free_port()?, &logs.join("nats-server.log")).await?;
    let client = async_nats::connect(nats.url()).await.with_context(|| format!("connect to {}", nats.url()))?;
    let bench = Bench {
        command: &command,
        leadger,
        kek_file,
        logs,
        database: &database,
        nats: &nats,
        js: jetstream::new(client),
        naming: Arc::new(RunNaming::new()),
    };
    let results = bench.measure().await?;
    let machine = Machine::probe(database.postgres_version.clone(), Some(&parent));
    drop(bench);
    drop(nats);
    drop(database);
    drop_workspace(workspace.dir);
    let nats_version = NatsServer::version(&nats_binary);
    PublicationReport::new(revision, &machine, nats_version, command.backend.name(), &command, &results)
        .publish(command.output_json.as_deref())?;
    Ok(results)
}

/// Deletes the temp dir; the database and NATS server in it have stopped.
fn drop_workspace(workspace: TempDir) {
    let path = workspace.path().to_path_buf();
    if let Err(error) = workspace.close() {
        eprintln!("warning: delete {}: {error}", path.display());
    }
}

/// The relay `leadger relay`, as its own process (PostgreSQL).
const RELAY_PROCESS: &str = "leadger relay";
/// The server relaying in process.
const RELAYING_SERVER: &str = "leadger serve --nats-url";

impl Bench<'_> {
    async fn measure(&self) -> anyhow::Result<PublicationResults> {
        let server = self.start_server(None, "leadger-backlog.log").await?;
        let backlog = self.load_backlog(&server).await?;
        // PostgreSQL: the server stays, idle, for the relay process to relay
        // its commands later. SQLite: one server at a time on the file, so the
        // relaying one replaces it.
        let server = match self.command.backend {
            Backend::Postgres => Some(server),
            Backend::Sqlite => None,
        };
        let rounds = self.throughput_rounds(&backlog, server.as_ref()).await?;
        let mut logged = backlog.events;
        let mut delays = Vec::new();
        if let Some(server) = server {
            delays.push(self.delay_with_relay_process(server, &mut logged).await?);
        }
        delays.push(self.delay_with_relaying_server(&mut logged).await?);
        Ok(PublicationResults::new(backlog, rounds, delays))
    }

    /// Steps 2 and 3, `--rounds` times; each ends with an empty server.
    async fn throughput_rounds(
        &self,
        backlog: &Backlog,
        server: Option<&LeadgerServer>,
    ) -> anyhow::Result<Vec<ThroughputRound>> {
        let events = StreamSettings::default().name;
        let mut messages = None;
        let mut rounds = Vec::new();
        for round in 1..=self.command.rounds {
            let relay = self.relay_throughput(backlog, server).await?;
            let messages = match &mut messages {
                Some(messages) => messages,
                None => messages.insert(js_bench::copy_messages(&self.js, &events, backlog.events).await?),
            };
            self.js.delete_stream(&events).await.with_context(|| format!("delete stream {events}"))?;
            let raw = self.raw_publication(messages.clone()).await?;
            eprintln!(
                "round {round}: {} {:.0} messages/s, raw {:.0} messages/s",
                relay.relay, relay.messages_per_second, raw.messages_per_second
            );
            let relay_to_raw = relay.messages_per_second / raw.messages_per_second;
            rounds.push(ThroughputRound { round, relay, raw, relay_to_raw });
        }
        Ok(rounds)
    }

    /// Starts a relay on the log (beside `server` on PostgreSQL), waits until
    /// it has published the backlog to the empty stream, and stops it.
    async fn relay_throughput(
        &self,
        backlog: &Backlog,
        server: Option<&LeadgerServer>,
    ) -> anyhow::Result<RelayThroughput> {
        let started = js_bench::unix_nanos_now();
        match self.command.backend {
            Backend::Postgres => {
                let mut relay = self.spawn_relay()?;
                let watched = self.watched(server.map(LeadgerServer::pid), Some(relay.pid()));
                self.publishing(RELAY_PROCESS, backlog.events, started, &watched, || relay.check_running()).await
            }
            Backend::Sqlite => {
                let mut server = self.spawn_relaying_server()?;
                let watched = self.watched(Some(server.pid()), None);
                self.publishing(RELAYING_SERVER, backlog.events, started, &watched, || server.check_running()).await
            }
        }
    }

    /// PostgreSQL: `leadger relay`, once it has caught up with the log,
    /// relays the paced commands that `server` (without NATS) commits.
    async fn delay_with_relay_process(&self, server: LeadgerServer, logged: &mut u64) -> anyhow::Result<ConsumerDelay> {
        let mut relay = self.spawn_relay()?;
        self.wait_until_published(*logged, || relay.check_running()).await?;
        let watched = self.watched(Some(server.pid()), Some(relay.pid()));
        let delay = self.consumer_delay(RELAY_PROCESS, &server, &watched).await?;
        *logged += delay.events;
        // The relay stops first (releasing its lease for the next relay), then the server.
        drop(relay);
        Ok(delay)
    }

    /// `leadger serve --nats-url`, once its relay has caught up with the
    /// log, relays the paced commands it commits itself.
    async fn delay_with_relaying_server(&self, logged: &mut u64) -> anyhow::Result<ConsumerDelay> {
        let mut server = self.spawn_relaying_server()?;
        self.wait_until_published(*logged, || server.check_running()).await?;
        server.wait_until_serving().await?;
        let watched = self.watched(Some(server.pid()), None);
        let delay = self.consumer_delay(RELAYING_SERVER, &server, &watched).await?;
        *logged += delay.events;
        Ok(delay)
    }

    fn spawn_relay(&self) -> anyhow::Result<LeadgerRelay> {
        LeadgerRelay::spawn(RelayLaunch {
            binary: &self.leadger,
            database_url: &self.database.url,
            nats_url: &self.nats.url(),
            log: &self.logs.join("leadger-relay.log"),
        })
    }

    /// `leadger serve --nats-url`, not waited for.
    fn spawn_relaying_server(&self) -> anyhow::Result<LeadgerServer> {
        let log = self.logs.join("leadger-relaying.log");
        LeadgerServer::spawn(self.server_launch(Some(&self.nats.url()), &log)?)
    }

    /// Waits until the event stream holds all `events` of the log.
    async fn wait_until_published(&self, events: u64, check: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<()> {
        let timeout = Duration::from_secs(self.command.relay_timeout_secs);
        js_bench::wait_for_messages(&self.js, &StreamSettings::default().name, events, timeout, check).await.map(drop)
    }

    fn server_launch<'a>(&'a self, nats_url: Option<&'a str>, log: &'a Path) -> anyhow::Result<ServerLaunch<'a>> {
        Ok(ServerLaunch {
            binary: &self.leadger,
            listen: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, scenario::free_port()?)),
            database_url: &self.database.url,
            kek_file: &self.kek_file,
            log,
            nats_url,
            extra_args: &self.command.server_arg,
        })
    }

    async fn start_server(&self, nats_url: Option<&str>, log_name: &str) -> anyhow::Result<LeadgerServer> {
        let log = self.logs.join(log_name);
        LeadgerServer::start(self.server_launch(nats_url, &log)?).await
    }

    fn watched(&self, server: Option<u32>, relay: Option<u32>) -> WatchedProcesses {
        WatchedProcesses {
            server,
            postmaster: self.database.cluster.as_ref().and_then(PostgresCluster::postmaster_pid),
            relay,
            nats_server: Some(self.nats.pid()),
            projector: None,
        }
    }

    /// Funnel leads, `--backlog-clients` at a time, until the log holds at
    /// least `--backlog-events` events.
    async fn load_backlog(&self, server: &LeadgerServer) -> anyhow::Result<Backlog> {
        let command = self.command;
        let plan = BacklogPlan {
            events: command.backlog_events,
            clients: command.backlog_clients,
            connections: command.connections,
            seed: command.seed,
            max_errors: command.max_errors,
        };
        let watched = self.watched(Some(server.pid()), None);
        backlog::load(server, &plan, command.backend.name(), &self.naming, &watched).await
    }

    /// Times a relay started at `started` publishing the `events` of the
    /// log to the empty event stream; `check` fails if the relay died.
    async fn publishing(
        &self,
        relay: &str,
        events: u64,
        started: i128,
        watched: &WatchedProcesses,
        mut check: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<RelayThroughput> {
        let name = StreamSettings::default().name;
        let timeout = Duration::from_secs(self.command.relay_timeout_secs);
        js_bench::wait_for_messages(&self.js, &name, 1, timeout, &mut check).await?;
        let first_seen = watched.sample();
        let fill = js_bench::wait_for_messages(&self.js, &name, events, timeout, &mut check).await?;
        let cpu = first_seen.until(&watched.sample());
        if fill.messages != events {
            bail!("stream {name} holds {} messages for a log of {events} events", fill.messages);
        }
        cpu.warn_if_disturbed(relay);
        Ok(throughput(relay, &fill, started, cpu))
    }

    /// Commands at `--rate` through `server` while a consumer of the event
    /// stream notes when each one's message arrives.
    async fn consumer_delay(
        &self,
        relay: &str,
        server: &LeadgerServer,
        watched: &WatchedProcesses,
    ) -> anyhow::Result<ConsumerDelay> {
        let arrivals = Arrivals::start(&self.js, &StreamSettings::default().name).await?;
        let plan = self.command.paced_plan();
        let before = watched.sample();
        let run = paced::drive(&server.endpoint(), &plan, &self.naming).await?;
        let cpu = before.until(&watched.sample());
        cpu.warn_if_disturbed(relay);
        let positions: Vec<u64> = run.acknowledged.iter().map(|answer| answer.position).collect();
        let arrived = arrivals.collect(&positions, ARRIVAL_TIMEOUT).await?;
        let mut delay = micros_histogram();
        let mut command_latency = micros_histogram();
        let mut send_to_arrival = micros_histogram();
        let mut arrived_before_answer = 0;
        for answer in &run.acknowledged {
            record_micros(&mut command_latency, answer.latency);
            let Some(&at) = arrived.get(&answer.position) else { continue };
            record_micros(&mut send_to_arrival, at.saturating_duration_since(answer.at - answer.latency));
            match at.checked_duration_since(answer.at) {
                Some(after) => record_micros(&mut delay, after),
                None => {
                    arrived_before_answer += 1;
                    record_micros(&mut delay, Duration::ZERO);
                }
            }
        }
        let result = ConsumerDelay {
            relay: relay.to_string(),
            target_rate: plan.rate,
            commands_per_second: run.acknowledged.len() as f64 / run.window.as_secs_f64(),
            commands: run.acknowledged.len() as u64,
            events: run.answered,
            received: delay.len(),
            missing: run.acknowledged.len() as u64 - delay.len(),
            arrived_before_answer,
            delay_ms: latency_or_nothing(&delay),
            command_latency_ms: latency_or_nothing(&command_latency),
            send_to_arrival_ms: latency_or_nothing(&send_to_arrival),
            stopped_by_errors: run.stopped_by_errors,
            errors: run.errors,
            cpu,
        };
        eprintln!(
            "{relay}: delay p50 {:.2} ms, p99 {:.2} ms, {} missing",
            result.delay_ms.p50, result.delay_ms.p99, result.missing
        );
        Ok(result)
    }

    /// Publishes the relay's `messages` to an empty stream of the same
    /// configuration, with the relay's window and connection options, and
    /// deletes the stream again.
    async fn raw_publication(&self, messages: Vec<EventMessage>) -> anyhow::Result<RawPublication> {
        let count = messages.len() as u64;
        let settings = StreamSettings { name: RAW_STREAM.to_string(), ..StreamSettings::default() };
        self.js.create_stream(settings.to_config()).await.with_context(|| format!("create stream {RAW_STREAM}"))?;
        let window = RelayConfig::new(settings, String::new()).window;
        let connection = NatsConnection {
            url: self.nats.url(),
            name: "leadger-bench raw publisher".to_string(),
            ..NatsConnection::default()
        };
        let publisher = jetstream::new(connection.connect().await?);
        let watched = self.watched(None, None);
        let before = watched.sample();
        let client_seconds = js_bench::publish_like_the_relay(&publisher, messages, window).await?;
        let cpu = before.until(&watched.sample());
        cpu.warn_if_disturbed("raw publishing");
        let fill = js_bench::wait_for_messages(&self.js, RAW_STREAM, count, Duration::ZERO, || Ok(())).await?;
        self.js.delete_stream(RAW_STREAM).await.with_context(|| format!("delete stream {RAW_STREAM}"))?;
        Ok(RawPublication {
            publisher: "async-nats send_publish".to_string(),
            messages: fill.messages,
            window,
            publishing_seconds: fill.publishing_seconds(),
            messages_per_second: fill.messages_per_second(),
            client_seconds,
            messages_per_second_client: count as f64 / client_seconds,
            cpu,
        })
    }
}

fn throughput(relay: &str, fill: &StreamFill, started: i128, cpu: CpuUse) -> RelayThroughput {
    let with_startup = fill.seconds_to_last_since(started);
    RelayThroughput {
        relay: relay.to_string(),
        messages: fill.messages,
        publishing_seconds: fill.publishing_seconds(),
        messages_per_second: fill.messages_per_second(),
        startup_seconds: fill.seconds_to_first_since(started),
        messages_per_second_with_startup: fill.messages as f64 / with_startup,
        cpu,
    }
}

/// Quantiles of `histogram`, or zeros when it is empty (nothing arrived).
fn latency_or_nothing(histogram: &Histogram<u64>) -> Latency {
    if histogram.is_empty() {
        Latency { p50: 0.0, p99: 0.0, p99_9: 0.0, max: 0.0, mean: 0.0 }
    } else {
        Latency::from_micros(histogram)
    }
}
