//! `leadger-bench rebuild`: how fast `leadger project --rebuild` replays the
//! whole log into a new generation of the read models, and how much memory
//! it takes.
//!
//! It starts a throwaway database (PostgreSQL or SQLite, as `run` does) and
//! the real `leadger serve --no-projector`, loads the funnel until the log
//! holds `--events` events ([`backlog`]), and leaves the server running,
//! idle. Then, `--rounds` times, it runs the real `leadger project --rebuild
//! --database-url URL` as a child process (each rebuild replaces the
//! generation the previous one swapped in) and takes:
//!
//! - **wall time** from just before the process is spawned to the moment
//!   the harness sees it exit: `/proc/PID/stat` is polled every
//!   [`POLL`] and the process has exited once its state is `Z` (zombie:
//!   exited, not yet waited for);
//! - **peak RSS**: the largest `VmHWM` read from `/proc/PID/status` at the
//!   same polls. `VmHWM` is the kernel's own high-water mark of the resident
//!   set, so the polls only need to see its last value before the process
//!   frees its memory on exit; growth in the last poll interval before exit
//!   would be missed;
//! - **CPU** of the projector from its `/proc/PID/stat` while it is a
//!   zombie, when its times are final and still readable, and of the idle
//!   server, PostgreSQL, the bench and the machine over the same window;
//! - what the rebuild printed: events, leads, last position and its own
//!   timing (from its database connection to its swap).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde::Serialize;

use crate::backlog::{self, Backlog, BacklogPlan};
use crate::cpu::{CpuUse, WatchedProcesses};
use crate::load::RunNaming;
use crate::machine::{Machine, Revision};
use crate::measure::median;
use crate::postgres::PostgresCluster;
use crate::process::high_water_mark_kib;
use crate::process::{self, log_tail};
use crate::report::RebuildReport;
use crate::scenario::{self, Backend, Database, Workspace};
use crate::server::{LeadgerServer, ServerLaunch};

/// How often the harness looks at the rebuilding process.
const POLL: Duration = Duration::from_millis(5);
/// What `leadger serve` gets besides `--server-arg`: the log is only
/// written during the load, and the rebuild is the only projector.
const NO_PROJECTOR: &str = "--no-projector";

#[derive(Debug, Args, Serialize)]
pub struct RebuildCommand {
    /// The event log to rebuild from.
    #[arg(long, value_enum)]
    backend: Backend,
    /// The leadger executable [default: `leadger` next to this executable].
    #[arg(long)]
    leadger_bin: Option<PathBuf>,
    /// Directory with initdb, pg_ctl and postgres [default: `pg_config
    /// --bindir`, else the newest /usr/lib/postgresql/*/bin].
    #[arg(long)]
    pg_bindir: Option<PathBuf>,
    /// Where the temporary database goes [default: the system temp dir].
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep the logs of every `leadger` process in DIR instead of deleting
    /// them with the temp dir.
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// An argument for `leadger serve` besides `--no-projector`, e.g.
    /// `--server-arg=--max-batch=256`; repeat for more.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    /// Events in the log before the rebuilds (the funnel's leads, about 1.4
    /// commands each, until at least this many).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Concurrent clients that load the log.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// HTTP/2 connections the clients share.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seed of the funnel.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Stop the load after this many failed commands.
    #[arg(long, default_value_t = 1000)]
    max_errors: u64,
    /// Rebuilds, one after the other.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Longest a rebuild may take before it is killed.
    #[arg(long, default_value_t = 600)]
    rebuild_timeout_secs: u64,
    /// Also write the results, machine and parameters as JSON to PATH.
    #[arg(long)]
    output_json: Option<PathBuf>,
}

impl RebuildCommand {
    fn check(&self) -> anyhow::Result<()> {
        if self.events == 0 || self.rounds == 0 {
            bail!("--events and --rounds must be above 0");
        }
        if self.clients == 0 || self.connections == 0 {
            bail!("--clients and --connections must be at least 1");
        }
        Ok(())
    }
}

/// What `leadger project --rebuild` printed on stdout.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PrintedRebuild {
    pub events: u64,
    pub leads: u64,
    pub position: u64,
    /// Its own timing, from its connection to the swap.
    pub seconds: f64,
    pub events_per_second: f64,
}

/// One rebuild.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildRound {
    pub round: u32,
    pub printed: PrintedRebuild,
    /// From the spawn to the exit the harness saw.
    pub wall_seconds: f64,
    /// `printed.events` over `wall_seconds`.
    pub events_per_second: f64,
    /// The largest `VmHWM` seen, in KiB.
    pub peak_rss_kib: u64,
    /// Over the wall time.
    pub cpu: CpuUse,
}

/// Everything the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct RebuildResults {
    pub backlog: Backlog,
    pub rounds: Vec<RebuildRound>,
    /// Medians over the rounds.
    pub wall_seconds: f64,
    pub events_per_second: f64,
    pub peak_rss_kib: f64,
}

/// Everything the scenario starts. Fields drop in declaration order: the
/// server stops before its database, the temp dir goes last.
struct Stack {
    server: LeadgerServer,
    database: Database,
    /// Held only to be deleted when the run ends.
    /// Dropped last: its temp dir is deleted at the end.
    workspace: Workspace,
}

pub async fn run(command: RebuildCommand) -> anyhow::Result<RebuildResults> {
    command.check()?;
    let revision = Revision::probe();
    let leadger = scenario::leadger_binary(command.leadger_bin.as_deref())?;
    let workspace = Workspace::prepare(&leadger, command.work_dir.as_deref(), command.log_dir.as_deref())?;
    let database =
        scenario::start_database(command.backend, command.pg_bindir.as_deref(), workspace.path(), &workspace.parent)?;
    let server_args: Vec<String> =
        std::iter::once(NO_PROJECTOR.to_string()).chain(command.server_arg.iter().cloned()).collect();
    let server = LeadgerServer::start(ServerLaunch {
        binary: &leadger,
        listen: std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, scenario::free_port()?)),
        database_url: &database.url,
        kek_file: &workspace.kek_file,
        log: &workspace.logs.join("leadger-serve.log"),
        nats_url: None,
        extra_args: &server_args,
    })
    .await?;
    let stack = Stack { server, database, workspace };
    let results = measure(&command, &stack, &leadger, &stack.workspace.logs).await?;
    let machine = Machine::probe(stack.database.postgres_version.clone(), Some(&stack.workspace.parent));
    drop(stack);
    RebuildReport::new(revision, &machine, command.backend.name(), &command, &results)
        .publish(command.output_json.as_deref())?;
    Ok(results)
}

async fn measure(
    command: &RebuildCommand,
    stack: &Stack,
    leadger: &Path,
    logs: &Path,
) -> anyhow::Result<RebuildResults> {
    let backend = command.backend.name();
    let watched = |projector: Option<u32>| WatchedProcesses {
        server: Some(stack.server.pid()),
        postmaster: stack.database.cluster.as_ref().and_then(PostgresCluster::postmaster_pid),
        projector,
        ..WatchedProcesses::default()
    };
    let plan = BacklogPlan {
        events: command.events,
        clients: command.clients,
        connections: command.connections,
        seed: command.seed,
        max_errors: command.max_errors,
    };
    let backlog = backlog::load(&stack.server, &plan, backend, &Arc::new(RunNaming::new()), &watched(None)).await?;
    let mut rounds = Vec::new();
    for round in 1..=command.rounds {
        let launch = RebuildLaunch {
            binary: leadger,
            database_url: &stack.database.url,
            stdout: &logs.join(format!("leadger-rebuild-{round}.out")),
            log: &logs.join(format!("leadger-rebuild-{round}.log")),
            timeout: Duration::from_secs(command.rebuild_timeout_secs),
        };
        let measured = rebuild_once(&launch, |pid| watched(Some(pid))).await?;
        let round = RebuildRound {
            round,
            events_per_second: measured.printed.events as f64 / measured.wall_seconds,
            printed: measured.printed,
            wall_seconds: measured.wall_seconds,
            peak_rss_kib: measured.peak_rss_kib,
            cpu: measured.cpu,
        };
        if round.printed.events != backlog.events {
            eprintln!(
                "note: the rebuild replayed {} events; the load appended {}",
                round.printed.events, backlog.events
            );
        }
        eprintln!(
            "{backend}: rebuild {}: {} events in {:.2} s ({:.0} events/s), peak RSS {:.1} MiB",
            round.round,
            round.printed.events,
            round.wall_seconds,
            round.events_per_second,
            mib(round.peak_rss_kib as f64)
        );
        round.cpu.warn_if_disturbed(&format!("rebuild {}", round.round));
        rounds.push(round);
    }
    Ok(RebuildResults {
        backlog,
        wall_seconds: median(rounds.iter().map(|round| round.wall_seconds)),
        events_per_second: median(rounds.iter().map(|round| round.events_per_second)),
        peak_rss_kib: median(rounds.iter().map(|round| round.peak_rss_kib as f64)),
        rounds,
    })
}

/// KiB to MiB.
pub fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

/// How to run one `leadger project --rebuild`.
struct RebuildLaunch<'a> {
    binary: &'a Path,
    database_url: &'a str,
    /// Receives its stdout, where it prints its summary.
    stdout: &'a Path,
    /// Receives its stderr (its tracing output).
    log: &'a Path,
    timeout: Duration,
}

struct MeasuredRebuild {
    printed: PrintedRebuild,
    wall_seconds: f64,
    peak_rss_kib: u64,
    cpu: CpuUse,
}

/// Runs the rebuild to its exit, watching it as the module docs say;
/// `watched` names the processes whose CPU is read, given the rebuild's pid.
async fn rebuild_once(
    launch: &RebuildLaunch<'_>,
    watched: impl Fn(u32) -> WatchedProcesses,
) -> anyhow::Result<MeasuredRebuild> {
    let stdout = File::create(launch.stdout).with_context(|| format!("create {}", launch.stdout.display()))?;
    let log = File::create(launch.log).with_context(|| format!("create {}", launch.log.display()))?;
    let mut command = Command::new(launch.binary);
    command
        .arg("project")
        .arg("--rebuild")
        .arg("--database-url")
        .arg(launch.database_url)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log);
    let shown = process::describe(&command);
    let started = Instant::now();
    let child = command.spawn().with_context(|| format!("start `{shown}`"))?;
    let mut child = Reaped(child);
    let pid = child.0.id();
    let watched = watched(pid);
    let before = watched.sample();
    let mut peak_rss_kib = 0;
    loop {
        if let Some(kib) = high_water_mark_kib(pid) {
            peak_rss_kib = peak_rss_kib.max(kib);
        }
        if has_exited(pid) {
            break;
        }
        if started.elapsed() > launch.timeout {
            bail!("`{shown}` did not finish within {:?}", launch.timeout);
        }
        tokio::time::sleep(POLL).await;
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    let cpu = before.until(&watched.sample());
    let status = child.0.wait().with_context(|| format!("wait for `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status}); its log ends with:\n{}", log_tail(launch.log, 20));
    }
    let text = fs::read_to_string(launch.stdout).with_context(|| format!("read {}", launch.stdout.display()))?;
    let printed = parse_printed(&text).with_context(|| format!("`{shown}` printed {:?}", text.trim()))?;
    if peak_rss_kib == 0 {
        bail!("no VmHWM read from /proc/{pid}/status while `{shown}` ran");
    }
    Ok(MeasuredRebuild { printed, wall_seconds, peak_rss_kib, cpu })
}

/// A child that is killed and waited for if dropped before it was waited
/// for (on error or ctrl-c).
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(Some(_))) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Whether our child `pid` has exited: a zombie (`Z`, or `X` while being
/// reaped), or gone from `/proc`.
fn has_exited(pid: u32) -> bool {
    let Ok(text) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
    let state = text.rfind(')').and_then(|end| text[end + 1..].split_whitespace().next());
    matches!(state, Some("Z" | "X") | None)
}

/// Parses "rebuilt journeys: 1000000 events, 707000 leads, up to position
/// 1000000, in 5.12 s (195312 events/s)".
fn parse_printed(text: &str) -> anyhow::Result<PrintedRebuild> {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix("rebuilt journeys: "))
        .context("no line starting `rebuilt journeys: `")?;
    let number = |before: &str, after: &str| -> anyhow::Result<&str> {
        let start = line.find(before).with_context(|| format!("no {before:?}"))? + before.len();
        let rest = &line[start..];
        let end = rest.find(after).with_context(|| format!("no {after:?} after {before:?}"))?;
        Ok(rest[..end].trim())
    };
    let integer = |before: &str, after: &str| -> anyhow::Result<u64> {
        let text = number(before, after)?;
        text.parse().with_context(|| format!("{text:?} is not a count"))
    };
    let real = |before: &str, after: &str| -> anyhow::Result<f64> {
        let text = number(before, after)?;
        text.parse().with_context(|| format!("{text:?} is not a number"))
    };
    Ok(PrintedRebuild {
        events: integer("", " events,")?,
        leads: integer("events, ", " leads,")?,
        position: integer("up to position ", ",")?,
        seconds: real(", in ", " s (")?,
        events_per_second: real(" s (", " events/s)")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_printed_summary_parses() {
        let text =
            "rebuilt journeys: 1000001 events, 707109 leads, up to position 1000003, in 5.12 s (195312 events/s)\n";
        assert_eq!(
            parse_printed(text).ok(),
            Some(PrintedRebuild {
                events: 1_000_001,
                leads: 707_109,
                position: 1_000_003,
                seconds: 5.12,
                events_per_second: 195_312.0,
            })
        );
    }

    #[test]
    fn other_output_does_not_parse() {
        assert!(parse_printed("").is_err());
        assert!(parse_printed("rebuilt journeys: many events").is_err());
    }

    #[test]
    fn a_running_process_has_not_exited_and_has_a_high_water_mark() {
        assert!(!has_exited(std::process::id()));
        assert!(high_water_mark_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}
