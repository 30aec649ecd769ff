//! Presenting results: a markdown table on stdout (meant to be pasted into
//! docs/benchmarks.md as printed) and, on request, a JSON document with the
//! same figures plus everything needed to reproduce them.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;

use crate::machine::{Machine, Revision};
use crate::measure::LevelResult;

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
            finished_at_unix: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
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
        if let Some(path) = json {
            let text = serde_json::to_string_pretty(self).context("serialize the results")?;
            std::fs::write(path, text + "\n").with_context(|| format!("write {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        Ok(())
    }

    fn header(&self) -> String {
        let revision = match (&self.revision.commit, self.revision.dirty) {
            (Some(commit), Some(true)) => format!("{commit} (with uncommitted changes)"),
            (Some(commit), _) => commit.clone(),
            (None, _) => "unknown".to_string(),
        };
        format!(
            "backend: {}; commit: {revision}\nmachine: {}\ncommand: {}",
            self.backend,
            self.machine.summary(),
            self.command_line.join(" ")
        )
    }
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
