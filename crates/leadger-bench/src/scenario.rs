//! `leadger-bench run`: a self-contained benchmark. It creates a temp dir,
//! generates a key-encryption key with `leadger kek generate`, starts the
//! database (a throwaway PostgreSQL cluster or a SQLite file) and the real
//! `leadger serve` on free ports, drives every concurrency level against one
//! server, and reports. Every child process and temp dir is owned by a guard,
//! so they are stopped and deleted on success, on error and on ctrl-c.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::LoadArgs;
use crate::cpu::WatchedProcesses;
use crate::machine::{Machine, Revision};
use crate::measure::LevelResult;
use crate::postgres::{self, PostgresCluster};
use crate::report::Report;
use crate::server::{self, LeadgerServer, ServerLaunch};

#[derive(Debug, Args, Serialize)]
pub struct RunCommand {
    /// The event log to benchmark.
    #[arg(long, value_enum)]
    backend: Backend,
    /// The leadger executable [default: `leadger` next to this executable,
    /// which `cargo build --release -p leadger` puts there].
    #[arg(long)]
    leadger_bin: Option<PathBuf>,
    /// Directory with initdb, pg_ctl and postgres [default: `pg_config
    /// --bindir`, else the newest /usr/lib/postgresql/*/bin].
    #[arg(long)]
    pg_bindir: Option<PathBuf>,
    /// Where the temporary database goes [default: the system temp dir].
    /// Its disk is part of what is measured: every commit is fsynced.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the leadger server's log at PATH instead of deleting it with the
    /// temp dir (set RUST_LOG for more detail, e.g. leadger_store=debug shows
    /// batch sizes; it slows the server down).
    #[arg(long)]
    server_log: Option<PathBuf>,
    /// PostgreSQL only: run ANALYZE between levels, as autovacuum would
    /// after that much growth. A new database has no planner statistics
    /// until autovacuum's first pass, up to a minute in. (Not before the
    /// first level: statistics of empty tables mislead the planner more
    /// than none.)
    #[arg(long)]
    analyze: bool,
    /// An argument for `leadger serve`, e.g. `--server-arg=--no-projector`;
    /// repeat for more.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }
}

/// The database a run writes to, with its process when it has one.
pub struct Database {
    pub url: String,
    pub cluster: Option<PostgresCluster>,
    pub postgres_version: Option<String>,
}

/// Everything a run starts. Fields drop in declaration order: the server
/// stops before its database, and the temp dir (KEK, SQLite file, server
/// log) goes last.
struct Stack {
    server: LeadgerServer,
    database: Database,
    /// Dropped last: its temp dir is deleted when the run ends.
    workspace: Workspace,
}

/// What `run` measured, for `all` to report.
#[derive(Debug, Clone, Serialize)]
pub struct GrpcRun {
    pub backend: &'static str,
    pub levels: Vec<LevelResult>,
    /// The server's `VmHWM` after the last level, in KiB (its embedded
    /// projector included).
    pub server_peak_rss_kib: Option<u64>,
}

pub async fn run(command: RunCommand) -> anyhow::Result<GrpcRun> {
    command.load.check()?;
    if command.analyze && !matches!(command.backend, Backend::Postgres) {
        bail!("--analyze is for --backend postgres");
    }
    let revision = Revision::probe();
    let stack = Stack::start(&command).await?;
    let parent = stack.workspace.parent.clone();
    let refresh_statistics = || match (&stack.database.cluster, command.analyze) {
        (Some(cluster), true) => cluster.analyze(),
        _ => Ok(()),
    };
    let backend = command.backend.name();
    let levels = command.load.measure(&stack.server.endpoint(), backend, &stack.watched(), refresh_statistics).await?;
    let server_peak_rss_kib = stack.server.peak_rss_kib();
    let machine = Machine::probe(stack.database.postgres_version.clone(), Some(&parent));
    drop(stack);
    Report::new(revision, &machine, backend, &command, &levels).publish(command.load.output_json.as_deref())?;
    Ok(GrpcRun { backend, levels, server_peak_rss_kib })
}

impl Stack {
    /// Creates the temp dir, the KEK and the database, then starts the
    /// server and waits until it serves.
    async fn start(command: &RunCommand) -> anyhow::Result<Self> {
        let leadger = leadger_binary(command.leadger_bin.as_deref())?;
        let workspace = Workspace::prepare(&leadger, command.work_dir.as_deref(), None)?;
        let database =
            start_database(command.backend, command.pg_bindir.as_deref(), workspace.path(), &workspace.parent)?;
        let log = command.server_log.clone().unwrap_or_else(|| workspace.path().join("leadger.log"));
        let server = LeadgerServer::start(ServerLaunch {
            binary: &leadger,
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?)),
            database_url: &database.url,
            kek_file: &workspace.kek_file,
            log: &log,
            nats_url: None,
            extra_args: &command.server_arg,
        })
        .await?;
        Ok(Self { server, database, workspace })
    }

    fn watched(&self) -> WatchedProcesses {
        WatchedProcesses {
            server: Some(self.server.pid()),
            postmaster: self.database.cluster.as_ref().and_then(PostgresCluster::postmaster_pid),
            ..WatchedProcesses::default()
        }
    }
}

/// A scenario's temp dir under `--work-dir` (the system temp dir by
/// default), where the `leadger` logs go, and a new key-encryption key in it.
pub struct Workspace {
    /// Where the temp dir and the database live (`--work-dir`).
    pub parent: PathBuf,
    pub dir: tempfile::TempDir,
    /// `--log-dir`, created if missing, else the temp dir.
    pub logs: PathBuf,
    pub kek_file: PathBuf,
}

impl Workspace {
    pub fn prepare(leadger: &Path, work_dir: Option<&Path>, log_dir: Option<&Path>) -> anyhow::Result<Self> {
        let parent = work_dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let dir = tempfile::Builder::new()
            .prefix("leadger-bench-")
            .tempdir_in(&parent)
            .with_context(|| format!("create a temp dir in {}", parent.display()))?;
        let logs = match log_dir {
            Some(logs) => {
                std::fs::create_dir_all(logs).with_context(|| format!("create {}", logs.display()))?;
                logs.to_path_buf()
            }
            None => dir.path().to_path_buf(),
        };
        let kek_file = dir.path().join("leadger.kek");
        server::generate_kek(leadger, &kek_file)?;
        Ok(Self { parent, dir, logs, kek_file })
    }

    /// Where a SQLite log goes; PostgreSQL clusters go under `parent`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// `explicit` (`--leadger-bin`), else the `leadger` next to this executable.
pub fn leadger_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let binary = match explicit {
        Some(path) => path.to_path_buf(),
        None => server::sibling_binary()?,
    };
    if !binary.is_file() {
        bail!("{} not found: build it with `cargo build --release -p leadger` or pass --leadger-bin", binary.display());
    }
    Ok(binary)
}

/// Starts a throwaway PostgreSQL cluster under `parent`, or names a SQLite
/// file in `workspace`.
pub fn start_database(
    backend: Backend,
    pg_bindir: Option<&Path>,
    workspace: &Path,
    parent: &Path,
) -> anyhow::Result<Database> {
    match backend {
        Backend::Postgres => {
            let bindir = postgres::find_bindir(pg_bindir)?;
            let cluster = PostgresCluster::start(&bindir, parent, free_port()?)?;
            Ok(Database {
                url: cluster.url(),
                cluster: Some(cluster),
                postgres_version: postgres::server_version(&bindir),
            })
        }
        Backend::Sqlite => Ok(Database {
            url: format!("sqlite://{}", workspace.join("leadger.db").display()),
            cluster: None,
            postgres_version: None,
        }),
    }
}

/// A port nothing listens on right now: bind port 0 and let the kernel pick.
/// The listener is closed before the child binds the port; another process
/// taking it in between is possible but unlikely, and fails loudly.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("bind a free port")?;
    Ok(listener.local_addr().context("read the free port")?.port())
}
