//! `leadger-bench`: the load generator. It plays a realistic sales funnel
//! against leadger's command API at several concurrency levels and prints
//! throughput and latency figures; it is a measuring tool, not a test.
//!
//! - `leadger-bench load --addr URL` drives a server that is already running.
//! - `leadger-bench run --backend postgres|sqlite` starts everything itself:
//!   a throwaway PostgreSQL cluster or SQLite file, a key-encryption key and
//!   the real `leadger serve` binary (build it first with `cargo build
//!   --release -p leadger`), drives the load, and stops and deletes it all.
//! - `leadger-bench nats --backend postgres|sqlite` measures the relay to
//!   NATS JetStream: how fast it publishes a backlog, how long an event takes
//!   from its commit to a consumer, and what raw JetStream publishing does on
//!   the same machine; it starts its own `nats-server` too.
//! - `leadger-bench rebuild --backend postgres|sqlite` loads a log of a
//!   million events and times `leadger project --rebuild` on it: events/s
//!   and the rebuilding process's peak RSS.
//!
//! - `leadger-bench all` runs every scenario in one go, with the limits
//!   (a gRPC echo service, raw inserts of leadger's rows) and the peer
//!   event stores (`bench/peers`) beside leadger, and writes
//!   docs/benchmarks.md, its charts and target/bench/results.json.
//!
//! Modules: [`all`] runs everything and [`summary`] and [`svg`] write the
//! report; [`echo`], [`limits`], [`store_layer`], [`peers`] and
//! [`freshness`] are the scenarios only `all` runs; [`funnel`] decides
//! what each lead goes through, [`load`] sends it (and [`paced`] at a fixed
//! rate) and [`measure`] keeps the figures;
//! [`postgres`], [`server`] and [`nats_server`] own the child processes of
//! `run` ([`scenario`]), `nats` ([`publication`], with [`jetstream`] for
//! the JetStream side) and `rebuild` ([`rebuild`]), the last two on a log
//! filled by [`backlog`]; [`cpu`] and [`machine`] describe where the figures
//! came from and [`report`] prints them.

mod all;
mod backlog;
mod cpu;
mod echo;
mod freshness;
mod funnel;
mod jetstream;
mod limits;
mod load;
mod machine;
mod measure;
mod nats_server;
mod paced;
mod peers;
mod postgres;
mod process;
mod publication;
mod rebuild;
mod report;
mod scenario;
mod server;
mod store_layer;
mod summary;
mod svg;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::cpu::WatchedProcesses;
use crate::load::{LevelLength, LevelPlan, RunNaming};
use crate::machine::{Machine, Revision};
use crate::measure::LevelResult;
use crate::report::Report;

/// CPU use by processes outside the benchmark above which a level's figures
/// are flagged as disturbed (kernel threads and idle daemons stay well below).
pub const DISTURBING_CPU_CORES: f64 = 0.2;

#[derive(Debug, Parser)]
#[command(name = "leadger-bench", version, about = "Load generator and benchmark harness for leadger")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Debug, Subcommand)]
enum Mode {
    /// Drive a leadger server that is already running.
    Load(LoadCommand),
    /// Start a throwaway database and a leadger server, drive them, stop everything.
    Run(scenario::RunCommand),
    /// Measure publication to NATS JetStream: relay throughput, commit-to-consumer
    /// delay, and raw JetStream publishing beside them.
    Nats(publication::NatsCommand),
    /// Measure `leadger project --rebuild` on a log of a million events:
    /// events/s and peak RSS.
    Rebuild(rebuild::RebuildCommand),
    /// Run every scenario, with the limits and the peers beside leadger, and
    /// write docs/benchmarks.md, its charts and target/bench/results.json.
    All(all::AllCommand),
    /// The gRPC echo service `all` measures as the limit (started by it).
    #[command(hide = true)]
    EchoServer {
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

#[derive(Debug, Args, Serialize)]
struct LoadCommand {
    /// The server's gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    #[command(flatten)]
    load: LoadArgs,
}

/// How to drive the load; shared by both modes.
#[derive(Debug, Clone, Args, Serialize)]
pub struct LoadArgs {
    /// Concurrent clients; a comma-separated list runs one level per value.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Measured seconds per level, after the warm-up.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Seconds at the start of each level whose commands are not measured.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Drive this many leads per level instead of running for a duration;
    /// the whole level is measured (no warm-up).
    #[arg(long)]
    leads: Option<u64>,
    /// HTTP/2 connections the clients of a level share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seed of the funnel: which leads qualify, win, get feedback.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop a level after this many failed commands.
    #[arg(long, default_value_t = 1000)]
    max_errors: u64,
    /// Also write the results, machine and parameters as JSON to PATH.
    #[arg(long)]
    output_json: Option<PathBuf>,
}

impl LoadArgs {
    fn check(&self) -> anyhow::Result<()> {
        if self.clients.is_empty() || self.clients.contains(&0) {
            bail!("--clients needs one or more counts above 0");
        }
        if self.connections == 0 {
            bail!("--connections must be at least 1");
        }
        if self.leads == Some(0) || (self.leads.is_none() && self.duration_secs == 0) {
            bail!("a level needs --duration-secs or --leads above 0");
        }
        Ok(())
    }

    fn level_plan(&self, clients: usize) -> LevelPlan {
        let length = match self.leads {
            Some(leads) => LevelLength::Leads(leads),
            None => LevelLength::Timed {
                warmup: Duration::from_secs(self.warmup_secs),
                measured: Duration::from_secs(self.duration_secs),
            },
        };
        LevelPlan { clients, connections: self.connections, length, seed: self.seed, max_errors: self.max_errors }
    }

    /// Runs every level in turn against `endpoint`, calling `between_levels`
    /// before each level but the first, and reports progress on stderr.
    async fn measure(
        &self,
        endpoint: &str,
        backend: &str,
        watched: &WatchedProcesses,
        between_levels: impl Fn() -> anyhow::Result<()>,
    ) -> anyhow::Result<Vec<LevelResult>> {
        let naming = Arc::new(RunNaming::new());
        let mut levels = Vec::with_capacity(self.clients.len());
        for (index, &clients) in self.clients.iter().enumerate() {
            if index > 0 {
                between_levels()?;
            }
            eprintln!("{backend}: {clients} clients…");
            let level = load::run_level(endpoint, &self.level_plan(clients), &naming, watched)
                .await
                .with_context(|| format!("{clients} clients"))?;
            eprintln!(
                "{backend}: {clients} clients: {:.0} commands/s, p99 {:.2} ms, {} errors",
                level.commands_per_second,
                level.latency_ms.p99,
                level.error_count()
            );
            if let Some(other) = level.cpu.other_cores.filter(|&cores| cores > DISTURBING_CPU_CORES) {
                eprintln!(
                    "warning: other processes kept {other:.2} cores busy during this level; its figures are disturbed"
                );
            }
            levels.push(level);
        }
        Ok(levels)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the tokio runtime")
        .and_then(|runtime| runtime.block_on(interruptible(cli.mode)));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `mode` until done or ctrl-c; either way the child processes and temp
/// dirs are dropped, so stopped and deleted, before the process exits.
async fn interruptible(mode: Mode) -> anyhow::Result<()> {
    tokio::select! {
        outcome = run(mode) => outcome,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

async fn run(mode: Mode) -> anyhow::Result<()> {
    match mode {
        Mode::Load(command) => load_external(command).await,
        Mode::Run(command) => scenario::run(command).await.map(drop),
        Mode::Nats(command) => publication::run(command).await.map(drop),
        Mode::Rebuild(command) => rebuild::run(command).await.map(drop),
        Mode::All(command) => all::run(command).await,
        Mode::EchoServer { listen } => echo::serve(listen).await,
    }
}

async fn load_external(command: LoadCommand) -> anyhow::Result<()> {
    command.load.check()?;
    let revision = Revision::probe();
    let levels = command.load.measure(&command.addr, "external", &WatchedProcesses::default(), || Ok(())).await?;
    let machine = Machine::probe(None, None);
    Report::new(revision, &machine, "external", &command, &levels).publish(command.load.output_json.as_deref())
}
