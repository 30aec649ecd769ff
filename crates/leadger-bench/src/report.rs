//! Presenting results: markdown tables on stdout (meant to be pasted into
//! docs/benchmarks.md as printed) and, on request, a JSON document with the
//! same figures plus everything needed to reproduce them. [`Report`] is the
//! document of the load levels (`run`, `load`), [`PublicationReport`] that of
//! the NATS publication benchmark (`nats`), [`RebuildReport`] that of the
//! read-model rebuild (`rebuild`).

use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;

use crate::cpu::CpuUse;
use crate::machine::{Machine, Revision};
use crate::measure::LevelResult;
use crate::publication::PublicationResults;
use crate::rebuild::{RebuildResults, mib};

/// The JSON document of one invocation.
#[derive(Debug, Serialize)]
pub struct Report<'a, P: Serialize> {
    pub tool: String,
    pub finished_at_unix: u64,
    pub command_line: Vec<String>,
    pub revision: Revision,
    pub machine: &'a Machine,
    /// What was under load: "postgres", "sqlite" or "external".
    pub backend: &'a str,
    pub parameters: &'a P,
    pub levels: &'a [LevelResult],
}

impl<'a, P: Serialize> Report<'a, P> {
    /// `revision` is best probed when the run starts: the tree may move while it runs.
    pub fn new(
        revision: Revision,
        machine: &'a Machine,
        backend: &'a str,
        parameters: &'a P,
        levels: &'a [LevelResult],
    ) -> Self {
        Self {
            tool: format!("leadger-bench {}", env!("CARGO_PKG_VERSION")),
            finished_at_unix: finished_at_unix(),
            command_line: std::env::args().collect(),
            revision,
            machine,
            backend,
            parameters,
            levels,
        }
    }

    /// Prints the header lines and the table to stdout, error examples to
    /// stderr, and writes the JSON document when `json` is given.
    pub fn publish(&self, json: Option<&Path>) -> anyhow::Result<()> {
        println!("{}", self.header());
        println!();
        print!("{}", markdown_table(self.levels));
        for level in self.levels {
            for (code, errors) in &level.errors {
                eprintln!("{} clients: {} × {code}, e.g. {:?}", level.clients, errors.count, errors.first_message);
            }
        }
        match json {
            Some(path) => write_json(self, path),
            None => Ok(()),
        }
    }

    fn header(&self) -> String {
        format!(
            "backend: {}; commit: {}\nmachine: {}\ncommand: {}",
            self.backend,
            revision_line(&self.revision),
            self.machine.summary(),
            self.command_line.join(" ")
        )
    }
}

/// "f087cdd", "f087cdd (with uncommitted changes)" or "unknown".
fn revision_line(revision: &Revision) -> String {
    match (&revision.commit, revision.dirty) {
        (Some(commit), Some(true)) => format!("{commit} (with uncommitted changes)"),
        (Some(commit), _) => commit.clone(),
        (None, _) => "unknown".to_string(),
    }
}

fn write_json(document: &impl Serialize, path: &Path) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(document).context("serialize the results")?;
    std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

fn finished_at_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// One row per level. CPU columns are in cores (1.00 = one core busy for
/// the whole window); "-" where a process was not watched. "other" is what
/// the machine spent beyond the watched processes: when it is not near 0,
/// something else was running and the figures are disturbed.
pub fn markdown_table(levels: &[LevelResult]) -> String {
    let mut table = String::from(
        "| clients | commands/s | leads/s | p50 ms | p99 ms | p99.9 ms | max ms | errors | server CPU | postgres CPU | bench CPU | other CPU | machine CPU |\n\
         |--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for level in levels {
        let cores = |value: Option<f64>| value.map_or_else(|| "-".to_string(), |cores| format!("{cores:.2}"));
        let latency = &level.latency_ms;
        let _ = writeln!(
            table,
            "| {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |",
            level.clients,
            level.commands_per_second,
            level.leads_per_second,
            latency.p50,
            latency.p99,
            latency.p99_9,
            latency.max,
            errors_cell(level),
            cores(level.cpu.server_cores),
            cores(level.cpu.postgres_cores),
            cores(level.cpu.bench_cores),
            cores(level.cpu.other_cores),
            cores(level.cpu.machine_busy_cores),
        );
    }
    table
}

fn errors_cell(level: &LevelResult) -> String {
    if level.errors.is_empty() {
        return "0".to_string();
    }
    let counts: Vec<String> = level.errors.iter().map(|(code, errors)| format!("{code} {}", errors.count)).collect();
    let stopped = if level.stopped_by_errors { " (stopped)" } else { "" };
    format!("{}{stopped}", counts.join(", "))
}

/// The JSON document of one `leadger-bench nats` invocation.
#[derive(Debug, Serialize)]
pub struct PublicationReport<'a, P: Serialize> {
    pub tool: String,
    pub finished_at_unix: u64,
    pub command_line: Vec<String>,
    pub revision: Revision,
    pub machine: &'a Machine,
    /// `nats-server --version`.
    pub nats_server: Option<String>,
    /// The event log the relay read: "postgres" or "sqlite".
    pub backend: &'a str,
    pub parameters: &'a P,
    pub results: &'a PublicationResults,
}

impl<'a, P: Serialize> PublicationReport<'a, P> {
    pub fn new(
        revision: Revision,
        machine: &'a Machine,
        nats_server: Option<String>,
        backend: &'a str,
        parameters: &'a P,
        results: &'a PublicationResults,
    ) -> Self {
        Self {
            tool: format!("leadger-bench {}", env!("CARGO_PKG_VERSION")),
            finished_at_unix: finished_at_unix(),
            command_line: std::env::args().collect(),
            revision,
            machine,
            nats_server,
            backend,
            parameters,
            results,
        }
    }

    /// Prints the header lines and the tables to stdout, and writes the
    /// JSON document when `json` is given.
    pub fn publish(&self, json: Option<&Path>) -> anyhow::Result<()> {
        let results = self.results;
        let backlog = &results.backlog;
        println!("backend: {}; commit: {}", self.backend, revision_line(&self.revision));
        println!("machine: {}", self.machine.summary());
        println!(
            "nats-server: {} (JetStream file store beside the database, default settings)",
            self.nats_server.as_deref().unwrap_or("unknown version")
        );
        println!("command: {}", self.command_line.join(" "));
        println!(
            "backlog: {} events ({} leads, {} clients) loaded at {:.0} commands/s, {} errors",
            backlog.events, backlog.leads, backlog.clients, backlog.commands_per_second, backlog.errors
        );
        println!();
        print!("{}", throughput_table(results));
        println!();
        let per_round: Vec<String> = results.rounds.iter().map(|round| format!("{:.2}", round.relay_to_raw)).collect();
        println!(
            "relay / raw: {:.2} (medians of {} rounds: {:.0} against {:.0} messages/s, first to last message stored; per round {})",
            results.relay_to_raw,
            results.rounds.len(),
            results.relay_messages_per_second,
            results.raw_messages_per_second,
            per_round.join(", ")
        );
        println!();
        print!("{}", delay_table(results));
        for delay in &results.delays {
            for (code, errors) in &delay.errors {
                eprintln!("{}: {} × {code}, e.g. {:?}", delay.relay, errors.count, errors.first_message);
            }
        }
        match json {
            Some(path) => write_json(self, path),
            None => Ok(()),
        }
    }
}

fn cores(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |cores| format!("{cores:.2}"))
}

/// The relay publishing the backlog and the raw publisher, round by round.
/// Rates are from the first message JetStream stored to the last. CPU
/// columns as in [`markdown_table`]: "relay" is a `leadger relay` process,
/// "server" the `leadger serve` (which relays itself on SQLite); the raw
/// publisher is the bench itself; "interrupts" is the kernel's irq and
/// softirq time (loopback networking), charged to no process.
pub fn throughput_table(results: &PublicationResults) -> String {
    let mut table = String::from(
        "| round | publisher | messages | first to last s | messages/s | start-up s | messages/s with start-up | relay CPU | server CPU | nats-server CPU | postgres CPU | bench CPU | interrupts CPU | other CPU | machine CPU |\n\
         |--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for round in &results.rounds {
        let relay = &round.relay;
        let _ = writeln!(
            table,
            "| {} | `{}` | {} | {:.2} | {:.0} | {:.2} | {:.0} | {} |",
            round.round,
            relay.relay,
            relay.messages,
            relay.publishing_seconds,
            relay.messages_per_second,
            relay.startup_seconds,
            relay.messages_per_second_with_startup,
            cpu_cells(&relay.cpu),
        );
        let raw = &round.raw;
        let _ = writeln!(
            table,
            "| {} | raw {}, {} in flight | {} | {:.2} | {:.0} | - | - | {} |",
            round.round,
            raw.publisher,
            raw.window,
            raw.messages,
            raw.publishing_seconds,
            raw.messages_per_second,
            cpu_cells(&raw.cpu),
        );
    }
    table
}

fn cpu_cells(cpu: &CpuUse) -> String {
    [
        cpu.relay_cores,
        cpu.server_cores,
        cpu.nats_server_cores,
        cpu.postgres_cores,
        cpu.bench_cores,
        cpu.interrupt_cores,
        cpu.other_cores,
        cpu.machine_busy_cores,
    ]
    .into_iter()
    .map(cores)
    .collect::<Vec<_>>()
    .join(" | ")
}

/// Answer-to-arrival delay per relay: from the instant a command's answer
/// reached the bench to the instant its message reached the bench's
/// consumer of the stream ("before answer" counts messages that were there
/// first, recorded as 0); then the commands' own latency, and send to
/// arrival. CPU use over the whole paced load, warm-up included.
pub fn delay_table(results: &PublicationResults) -> String {
    let mut table = String::from(
        "| relay | commands/s | commands | received | p50 ms | p99 ms | p99.9 ms | max ms | mean ms | before answer | missing | command p50 ms | command p99 ms | send to arrival p50 ms | send to arrival p99 ms | errors | relay CPU | server CPU | nats-server CPU | postgres CPU | bench CPU | interrupts CPU | other CPU | machine CPU |\n\
         |---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for delay in &results.delays {
        let errors: u64 = delay.errors.values().map(|errors| errors.count).sum();
        let _ = writeln!(
            table,
            "| `{}` | {:.0} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {}{} | {} |",
            delay.relay,
            delay.commands_per_second,
            delay.commands,
            delay.received,
            delay.delay_ms.p50,
            delay.delay_ms.p99,
            delay.delay_ms.p99_9,
            delay.delay_ms.max,
            delay.delay_ms.mean,
            delay.arrived_before_answer,
            delay.missing,
            delay.command_latency_ms.p50,
            delay.command_latency_ms.p99,
            delay.send_to_arrival_ms.p50,
            delay.send_to_arrival_ms.p99,
            errors,
            if delay.stopped_by_errors { " (stopped)" } else { "" },
            cpu_cells(&delay.cpu),
        );
    }
    table
}

/// The JSON document of one `leadger-bench rebuild` invocation.
#[derive(Debug, Serialize)]
pub struct RebuildReport<'a, P: Serialize> {
    pub tool: String,
    pub finished_at_unix: u64,
    pub command_line: Vec<String>,
    pub revision: Revision,
    pub machine: &'a Machine,
    /// The event log rebuilt from: "postgres" or "sqlite".
    pub backend: &'a str,
    pub parameters: &'a P,
    pub results: &'a RebuildResults,
}

impl<'a, P: Serialize> RebuildReport<'a, P> {
    pub fn new(
        revision: Revision,
        machine: &'a Machine,
        backend: &'a str,
        parameters: &'a P,
        results: &'a RebuildResults,
    ) -> Self {
        Self {
            tool: format!("leadger-bench {}", env!("CARGO_PKG_VERSION")),
            finished_at_unix: finished_at_unix(),
            command_line: std::env::args().collect(),
            revision,
            machine,
            backend,
            parameters,
            results,
        }
    }

    /// Prints the header lines, the backlog, the table and the medians to
    /// stdout, and writes the JSON document when `json` is given.
    pub fn publish(&self, json: Option<&Path>) -> anyhow::Result<()> {
        let results = self.results;
        let backlog = &results.backlog;
        println!("backend: {}; commit: {}", self.backend, revision_line(&self.revision));
        println!("machine: {}", self.machine.summary());
        println!("command: {}", self.command_line.join(" "));
        println!(
            "backlog: {} events ({} leads, {} clients, `leadger serve --no-projector`) loaded in {:.1} s at {:.0} commands/s, {} errors; server CPU {}, postgres CPU {}, bench CPU {}, other CPU {}, machine CPU {}",
            backlog.events,
            backlog.leads,
            backlog.clients,
            backlog.seconds,
            backlog.commands_per_second,
            backlog.errors,
            cores(backlog.cpu.server_cores),
            cores(backlog.cpu.postgres_cores),
            cores(backlog.cpu.bench_cores),
            cores(backlog.cpu.other_cores),
            cores(backlog.cpu.machine_busy_cores),
        );
        println!();
        print!("{}", rebuild_table(results));
        println!();
        println!(
            "median of {} rounds: {:.2} s, {:.0} events/s, peak RSS {:.1} MiB (wall time from spawn to exit)",
            results.rounds.len(),
            results.wall_seconds,
            results.events_per_second,
            mib(results.peak_rss_kib)
        );
        match json {
            Some(path) => write_json(self, path),
            None => Ok(()),
        }
    }
}

/// One row per rebuild: the harness's wall time (spawn to exit) and rate,
/// then what `leadger project --rebuild` printed (its own timing starts
/// after its process start and ends at the swap), the peak RSS, and CPU over
/// the wall time as in [`markdown_table`] ("projector" is the rebuilding
/// process; the server is idle).
pub fn rebuild_table(results: &RebuildResults) -> String {
    let mut table = String::from(
        "| round | events | leads | wall s | events/s | printed s | printed events/s | peak RSS MiB | projector CPU | server CPU | postgres CPU | bench CPU | interrupts CPU | other CPU | machine CPU |\n\
         |--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    for round in &results.rounds {
        let cpu = &round.cpu;
        let _ = writeln!(
            table,
            "| {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.0} | {:.1} | {} |",
            round.round,
            round.printed.events,
            round.printed.leads,
            round.wall_seconds,
            round.events_per_second,
            round.printed.seconds,
            round.printed.events_per_second,
            mib(round.peak_rss_kib as f64),
            [
                cpu.projector_cores,
                cpu.server_cores,
                cpu.postgres_cores,
                cpu.bench_cores,
                cpu.interrupt_cores,
                cpu.other_cores,
                cpu.machine_busy_cores,
            ]
            .into_iter()
            .map(cores)
            .collect::<Vec<_>>()
            .join(" | "),
        );
    }
    table
}
