//! `leadger-bench all`: every scenario of the benchmark in one run on one
//! machine, so that leadger's figures stand beside the limits and the peers
//! measured minutes apart under the same conditions. It builds what it runs
//! (`leadger` and the peer driver) from the source tree it was built from,
//! runs the scenarios one after the other (each starting and deleting its
//! own PostgreSQL cluster, SQLite file and nats-server), then writes the
//! JSON of everything (`target/bench/results.json`), the charts and the
//! report (`docs/benchmarks.md`, see [`crate::summary`]).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, Parser, ValueEnum};
use serde::Serialize;

use crate::cpu::WatchedProcesses;
use crate::echo::EchoServer;
use crate::freshness::{self, FreshnessResult};
use crate::limits::{self, InsertPlan, InsertResult, SourceRows};
use crate::load::RunNaming;
use crate::machine::{Machine, Revision};
use crate::measure::LevelResult;
use crate::nats_server::{self, NatsServer};
use crate::paced::PacedPlan;
use crate::peers::{self, PeerPlan, PeerResult};
use crate::postgres::{self, PostgresCluster};
use crate::process;
use crate::publication::{self, NatsCommand, PublicationResults};
use crate::rebuild::{self, RebuildCommand, RebuildResults};
use crate::scenario::{self, Backend, GrpcRun, RunCommand, Workspace};
use crate::server::{LeadgerServer, ServerLaunch};
use crate::store_layer::{self, StorePlan, StoreResult};
use crate::{LoadArgs, summary};

/// Scenarios `--skip` can leave out (PostgreSQL over gRPC always runs: the
/// others are compared to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Sqlite,
    Echo,
    Store,
    Peers,
    Freshness,
    Nats,
    Rebuild,
}

#[derive(Debug, Args, Serialize)]
pub struct AllCommand {
    /// Concurrent gRPC clients, one level per value (PostgreSQL, SQLite, echo).
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Measured seconds of each level and in-process run.
    #[arg(long, default_value_t = 5)]
    pub duration_secs: u64,
    /// Unmeasured seconds before each.
    #[arg(long, default_value_t = 1)]
    pub warmup_secs: u64,
    /// Concurrent writers of the in-process store layer and of each peer.
    #[arg(long, default_value_t = 64)]
    pub writers: usize,
    /// Transactions in flight at once in the batched raw inserts.
    #[arg(long, default_value_t = 4)]
    raw_batch_writers: usize,
    /// Measured seconds of the projection freshness (at half the best
    /// PostgreSQL command rate of scenario 1).
    #[arg(long, default_value_t = 10)]
    freshness_secs: u64,
    /// Events in the log before the NATS relay starts.
    #[arg(long, default_value_t = 100_000)]
    nats_backlog_events: u64,
    /// Rounds of relay and raw JetStream throughput.
    #[arg(long, default_value_t = 2)]
    nats_rounds: u32,
    /// Events the read models are rebuilt from.
    #[arg(long, default_value_t = 1_000_000)]
    rebuild_events: u64,
    /// Rebuilds of those events.
    #[arg(long, default_value_t = 2)]
    rebuild_rounds: u32,
    /// Seed of the funnel.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Scenarios to leave out, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',')]
    skip: Vec<Scenario>,
    /// Use the `leadger` and `leadger-peers` executables as they are
    /// instead of building them first.
    #[arg(long)]
    no_build: bool,
    /// The leadger executable [default: `leadger` next to this executable].
    #[arg(long)]
    leadger_bin: Option<PathBuf>,
    /// The peer driver [default: bench/peers/target/release/leadger-peers].
    #[arg(long)]
    peers_bin: Option<PathBuf>,
    /// Directory with initdb, pg_ctl and postgres.
    #[arg(long)]
    pg_bindir: Option<PathBuf>,
    /// The nats-server executable [default: target/test-tools/venv/bin/nats-server].
    #[arg(long, env = "LEADGER_BENCH_NATS_SERVER")]
    nats_server: Option<PathBuf>,
    /// Where temporary databases go [default: the system temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// The JSON of everything.
    #[arg(long, default_value = "target/bench/results.json")]
    results: PathBuf,
    /// The markdown report; the charts go in a directory of the same name
    /// without `.md`.
    #[arg(long, default_value = "docs/benchmarks.md")]
    report: PathBuf,
}

impl AllCommand {
    fn runs(&self, scenario: Scenario) -> bool {
        !self.skip.contains(&scenario)
    }

    fn common_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        for (flag, value) in
            [("--leadger-bin", &self.leadger_bin), ("--pg-bindir", &self.pg_bindir), ("--work-dir", &self.work_dir)]
        {
            if let Some(path) = value {
                args.extend([flag.to_string(), path.display().to_string()]);
            }
        }
        args
    }

    fn load_args(&self) -> Vec<String> {
        let clients: Vec<String> = self.clients.iter().map(ToString::to_string).collect();
        vec![
            "--clients".into(),
            clients.join(","),
            "--duration-secs".into(),
            self.duration_secs.to_string(),
            "--warmup-secs".into(),
            self.warmup_secs.to_string(),
            "--seed".into(),
            self.seed.to_string(),
        ]
    }
}

/// Everything one `all` run measured, with what it ran on.
#[derive(Debug, Serialize)]
pub struct AllResults<'a> {
    pub tool: String,
    pub finished_at_unix: u64,
    pub command_line: Vec<String>,
    pub revision: Revision,
    pub machine: Machine,
    pub nats_server_version: Option<String>,
    pub parameters: &'a AllCommand,
    /// The scenarios' wall time, builds left out.
    pub run_seconds: f64,
    pub grpc_postgres: GrpcRun,
    pub grpc_sqlite: Option<GrpcRun>,
    pub echo: Option<Vec<LevelResult>>,
    pub store: Option<StoreLimits>,
    pub peers: Vec<PeerResult>,
    pub freshness: Option<Freshness>,
    pub nats: Option<PublicationResults>,
    pub rebuild: Option<RebuildResults>,
}

/// leadger's store layer in process and the raw inserts of its rows.
#[derive(Debug, Serialize)]
pub struct StoreLimits {
    pub store: StoreResult,
    /// Median commands per commit batch of that run.
    pub median_batch: usize,
    pub raw_inserts: Vec<InsertResult>,
}

#[derive(Debug, Serialize)]
pub struct Freshness {
    pub result: FreshnessResult,
    /// Of the server (with its projector) over the freshness run, in KiB.
    pub server_peak_rss_kib: Option<u64>,
}

/// Parses `args` as the flags of `T`, as if given on the command line.
fn parse_flags<T: Args>(args: Vec<String>) -> anyhow::Result<T> {
    #[derive(Parser)]
    struct Flags<T: Args> {
        #[command(flatten)]
        inner: T,
    }
    let argv = std::iter::once("leadger-bench".to_string()).chain(args);
    Ok(Flags::<T>::try_parse_from(argv).context("build a scenario's flags")?.inner)
}

pub async fn run(command: AllCommand) -> anyhow::Result<()> {
    let revision = Revision::probe();
    if !command.no_build {
        install_tools()?;
        build_leadger(&command)?;
    }
    let peers_bin = match (&command.peers_bin, command.runs(Scenario::Peers), command.no_build) {
        (_, false, _) => None,
        (Some(path), true, _) => Some(path.clone()),
        (None, true, true) => Some(peers::workspace().join("target/release/leadger-peers")),
        (None, true, false) => Some(peers::build()?),
    };
    let started = Instant::now();
    eprintln!("== 1. commands over gRPC, PostgreSQL");
    let grpc_postgres = scenario::run(parse_flags::<RunCommand>(
        [vec!["--backend".into(), "postgres".into()], command.common_args(), command.load_args()].concat(),
    )?)
    .await?;
    let grpc_sqlite = if command.runs(Scenario::Sqlite) {
        eprintln!("== 1. commands over gRPC, SQLite");
        let flags = [vec!["--backend".into(), "sqlite".into()], command.common_args(), command.load_args()].concat();
        Some(scenario::run(parse_flags::<RunCommand>(flags)?).await?)
    } else {
        None
    };
    let echo = if command.runs(Scenario::Echo) { Some(echo_levels(&command).await?) } else { None };
    let (store, peers) = comparison(&command, peers_bin.as_deref()).await?;
    let freshness =
        if command.runs(Scenario::Freshness) { Some(measure_freshness(&command, &grpc_postgres).await?) } else { None };
    let nats_binary = nats_server::binary(command.nats_server.as_deref());
    let nats = if command.runs(Scenario::Nats) {
        eprintln!("== 6. NATS publication");
        let mut flags = [vec!["--backend".into(), "postgres".into()], command.common_args()].concat();
        flags.extend(["--backlog-events".into(), command.nats_backlog_events.to_string()]);
        flags.extend(["--rounds".into(), command.nats_rounds.to_string(), "--seed".into(), command.seed.to_string()]);
        if let Some(path) = &command.nats_server {
            flags.extend(["--nats-server".into(), path.display().to_string()]);
        }
        Some(publication::run(parse_flags::<NatsCommand>(flags)?).await?)
    } else {
        None
    };
    let rebuild = if command.runs(Scenario::Rebuild) {
        eprintln!("== 5. read-model rebuild");
        let mut flags = [vec!["--backend".into(), "postgres".into()], command.common_args()].concat();
        flags.extend(["--events".into(), command.rebuild_events.to_string()]);
        flags.extend([
            "--rounds".into(),
            command.rebuild_rounds.to_string(),
            "--seed".into(),
            command.seed.to_string(),
        ]);
        Some(rebuild::run(parse_flags::<RebuildCommand>(flags)?).await?)
    } else {
        None
    };
    let run_seconds = started.elapsed().as_secs_f64();
    let bindir = postgres::find_bindir(command.pg_bindir.as_deref())?;
    let work_dir = command.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let results = AllResults {
        tool: format!("leadger-bench {}", env!("CARGO_PKG_VERSION")),
        finished_at_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        command_line: std::env::args().collect(),
        revision,
        machine: Machine::probe(postgres::server_version(&bindir), Some(&work_dir)),
        nats_server_version: nats_binary.ok().and_then(|binary| NatsServer::version(&binary)),
        parameters: &command,
        run_seconds,
        grpc_postgres,
        grpc_sqlite,
        echo,
        store,
        peers,
        freshness,
        nats,
        rebuild,
    };
    write_outputs(&command, &results)
}

/// `bash tests/install-tools.sh`: PostgreSQL and the pinned nats-server,
/// where missing, as the tests install them.
fn install_tools() -> anyhow::Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/install-tools.sh");
    process::run_step(Command::new("bash").arg(script))
}

/// `cargo build --release -p leadger` in the source tree of this harness,
/// unless another executable was named.
fn build_leadger(command: &AllCommand) -> anyhow::Result<()> {
    if command.leadger_bin.is_some() {
        return Ok(());
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    process::run_step(
        Command::new(cargo).args(["build", "--release", "-p", "leadger", "--manifest-path"]).arg(manifest),
    )
}

/// Scenario 2, the gRPC limit: the echo service driven like leadger.
async fn echo_levels(command: &AllCommand) -> anyhow::Result<Vec<LevelResult>> {
    eprintln!("== 2. gRPC echo service");
    let load: LoadArgs = parse_flags(command.load_args())?;
    let echo = EchoServer::start().await?;
    let watched = WatchedProcesses { server: Some(echo.pid()), ..WatchedProcesses::default() };
    load.measure(&echo.endpoint(), "echo", &watched, || Ok(())).await
}

/// Scenarios 2 and 3 on one PostgreSQL cluster: leadger's store layer in
/// process, the raw inserts of its rows, and the peers, each in a fresh
/// database.
async fn comparison(
    command: &AllCommand,
    peers_bin: Option<&Path>,
) -> anyhow::Result<(Option<StoreLimits>, Vec<PeerResult>)> {
    if !command.runs(Scenario::Store) && peers_bin.is_none() {
        return Ok((None, Vec::new()));
    }
    let leadger = scenario::leadger_binary(command.leadger_bin.as_deref())?;
    let workspace = Workspace::prepare(&leadger, command.work_dir.as_deref(), None)?;
    let bindir = postgres::find_bindir(command.pg_bindir.as_deref())?;
    let cluster = PostgresCluster::start(&bindir, &workspace.parent, scenario::free_port()?)?;
    let watched = WatchedProcesses { postmaster: cluster.postmaster_pid(), ..WatchedProcesses::default() };
    let store = if command.runs(Scenario::Store) {
        eprintln!("== 3. leadger's store layer in process, {} writers", command.writers);
        let plan = StorePlan {
            writers: command.writers,
            warmup_secs: command.warmup_secs as f64,
            measured_secs: command.duration_secs as f64,
            seed: command.seed,
            pool_size: 4,
        };
        let url = cluster.create_database("leadger_store")?;
        let store = store_layer::run(&url, &workspace.kek_file, &plan, &watched).await?;
        eprintln!("store layer: {:.0} events/s, p99 {:.2} ms", store.events_per_second, store.latency_ms.p99);
        let source = SourceRows::read(&url).await?;
        let median_batch = source.median_batch();
        let mut raw_inserts = Vec::new();
        // One batch in flight is what a log with positions in commit order
        // allows (leadger's append lock); several are the database's limit.
        for (batch, writers) in [
            (1, command.writers),
            (median_batch, 1),
            (median_batch, command.raw_batch_writers),
            (500, command.raw_batch_writers),
        ] {
            eprintln!("== 2. raw inserts, {batch} commands per transaction, {writers} at a time");
            let url = cluster.create_database(&format!("raw_{batch}_{writers}"))?;
            leadger_store::PostgresLog::connect(&url).await.context("create leadger's schema")?;
            let plan = InsertPlan {
                batch,
                writers,
                warmup_secs: command.warmup_secs as f64,
                measured_secs: command.duration_secs as f64,
            };
            let inserted = limits::insert(&url, &source, &plan).await?;
            eprintln!(
                "raw inserts: {:.0} commands/s ({:.0} rows/s)",
                inserted.commands_per_second, inserted.rows_per_second
            );
            raw_inserts.push(inserted);
        }
        Some(StoreLimits { store, median_batch, raw_inserts })
    } else {
        None
    };
    let mut results = Vec::new();
    if let Some(driver) = peers_bin {
        let plan = PeerPlan {
            writers: command.writers,
            warmup_secs: command.warmup_secs,
            duration_secs: command.duration_secs,
            seed: command.seed,
        };
        for peer in peers::PEERS {
            eprintln!("== 3. peer {peer}, {} writers", plan.writers);
            let url = cluster.create_database(&format!("peer_{}", peer.replace('-', "_")))?;
            let result = peers::run(driver, peer, &url, &plan)?;
            eprintln!("{peer}: {:.0} events/s, p99 {:.2} ms", result.events_per_second, result.latency_ms.p99);
            results.push(result);
        }
    }
    drop(cluster);
    drop(workspace);
    Ok((store, results))
}

/// Scenario 4: a server with its projector, at half the best command rate
/// PostgreSQL reached in scenario 1.
async fn measure_freshness(command: &AllCommand, grpc: &GrpcRun) -> anyhow::Result<Freshness> {
    let best = grpc.levels.iter().map(|level| level.commands_per_second).fold(0.0, f64::max);
    let rate = ((best / 2.0).round() as u32).max(1);
    eprintln!("== 4. projection freshness at {rate} commands/s");
    let leadger = scenario::leadger_binary(command.leadger_bin.as_deref())?;
    let workspace = Workspace::prepare(&leadger, command.work_dir.as_deref(), None)?;
    let database =
        scenario::start_database(Backend::Postgres, command.pg_bindir.as_deref(), workspace.path(), &workspace.parent)?;
    let server = LeadgerServer::start(ServerLaunch {
        binary: &leadger,
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, scenario::free_port()?)),
        database_url: &database.url,
        kek_file: &workspace.kek_file,
        log: &workspace.logs.join("leadger-serve.log"),
        nats_url: None,
        extra_args: &[],
    })
    .await?;
    let plan = PacedPlan {
        rate,
        warmup: Duration::from_secs(command.warmup_secs),
        measured: Duration::from_secs(command.freshness_secs),
        connections: 4,
        seed: command.seed,
        max_errors: 1000,
    };
    let result = freshness::measure(&server.endpoint(), &plan, &Arc::new(RunNaming::new())).await?;
    for model in &result.read_models {
        eprintln!("{}: p50 {:.2} ms, p99 {:.2} ms", model.read_model, model.delay_ms.p50, model.delay_ms.p99);
    }
    let server_peak_rss_kib = server.peak_rss_kib();
    drop(server);
    drop(database);
    drop(workspace);
    Ok(Freshness { result, server_peak_rss_kib })
}

/// The JSON, the charts and the report.
fn write_outputs(command: &AllCommand, results: &AllResults<'_>) -> anyhow::Result<()> {
    if let Some(dir) = command.results.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let json = serde_json::to_string_pretty(results).context("encode the results")?;
    std::fs::write(&command.results, json + "\n").with_context(|| format!("write {}", command.results.display()))?;
    let charts_dir = command.report.with_extension("");
    std::fs::create_dir_all(&charts_dir).with_context(|| format!("create {}", charts_dir.display()))?;
    let charts = summary::charts(results);
    for (name, chart) in &charts {
        let path = charts_dir.join(name);
        std::fs::write(&path, chart).with_context(|| format!("write {}", path.display()))?;
    }
    let charts_link = charts_dir.file_name().map_or_else(String::new, |name| name.to_string_lossy().into_owned());
    let markdown = summary::markdown(results, &charts_link);
    std::fs::write(&command.report, markdown).with_context(|| format!("write {}", command.report.display()))?;
    eprintln!(
        "wrote {}, {} and {} charts in {}",
        command.results.display(),
        command.report.display(),
        charts.len(),
        charts_dir.display()
    );
    Ok(())
}
