//! Where the CPU goes during a measurement: CPU time of the leadger server,
//! of a separate `leadger relay`, `leadger project` and `nats-server` when
//! there are, of the PostgreSQL processes, of the load generator itself and
//! of the whole machine, read from `/proc` at the start and end of the window and
//! reported in cores (1.0 = one core busy the whole time).
//!
//! Linux only; elsewhere every figure is simply missing.

use std::fs;
use std::process::Command;
use std::time::Instant;

use serde::Serialize;

use crate::DISTURBING_CPU_CORES;
use crate::process;

/// The processes to account for; a missing one is left out of the figures.
#[derive(Debug, Clone, Default)]
pub struct WatchedProcesses {
    pub server: Option<u32>,
    /// The postmaster; its children (one backend per connection, the WAL
    /// writer, the checkpointer, …) count with it.
    pub postmaster: Option<u32>,
    /// A `leadger relay` process of its own.
    pub relay: Option<u32>,
    pub nats_server: Option<u32>,
    /// A `leadger project` process. Sample its end while it is a zombie
    /// (exited, not yet waited for): its CPU times are still readable then.
    pub projector: Option<u32>,
}

/// CPU time in clock ticks at one instant.
#[derive(Debug, Clone)]
pub struct CpuSample {
    at: Instant,
    server: Option<u64>,
    postgres: Option<u64>,
    relay: Option<u64>,
    nats_server: Option<u64>,
    projector: Option<u64>,
    bench: Option<u64>,
    machine_busy: Option<u64>,
    interrupts: Option<u64>,
}

/// Average number of cores each party kept busy between two samples.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    pub server_cores: Option<f64>,
    pub postgres_cores: Option<f64>,
    /// Only where a run has a relay process or a NATS server.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_cores: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_server_cores: Option<f64>,
    /// Only where a run has a `leadger project` process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projector_cores: Option<f64>,
    pub bench_cores: Option<f64>,
    pub machine_busy_cores: Option<f64>,
    /// Part of `machine_busy_cores` spent in interrupt handlers (irq and
    /// softirq: the kernel's side of the loopback traffic between the
    /// parties), which no process is charged for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupt_cores: Option<f64>,
    /// Busy cores not accounted to the parties above nor to interrupts:
    /// other work on the machine (a build, another test) disturbing the
    /// figures.
    pub other_cores: Option<f64>,
}

impl WatchedProcesses {
    pub fn sample(&self) -> CpuSample {
        CpuSample {
            at: Instant::now(),
            server: self.server.and_then(process_ticks),
            postgres: self.postmaster.map(postgres_ticks),
            relay: self.relay.and_then(process_ticks),
            nats_server: self.nats_server.and_then(process_ticks),
            projector: self.projector.and_then(process_ticks),
            bench: process_ticks(std::process::id()),
            machine_busy: machine_busy_ticks(),
            interrupts: interrupt_ticks(),
        }
    }
}

impl CpuSample {
    /// CPU use from `self` (earlier) to `end`.
    pub fn until(&self, end: &CpuSample) -> CpuUse {
        let seconds = end.at.duration_since(self.at).as_secs_f64();
        let ticks_per_second = clock_ticks_per_second();
        let cores = |start: Option<u64>, end: Option<u64>| match (start, end) {
            (Some(start), Some(end)) if seconds > 0.0 => {
                Some(end.saturating_sub(start) as f64 / ticks_per_second / seconds)
            }
            _ => None,
        };
        let server_cores = cores(self.server, end.server);
        let postgres_cores = cores(self.postgres, end.postgres);
        let relay_cores = cores(self.relay, end.relay);
        let nats_server_cores = cores(self.nats_server, end.nats_server);
        let projector_cores = cores(self.projector, end.projector);
        let bench_cores = cores(self.bench, end.bench);
        let machine_busy_cores = cores(self.machine_busy, end.machine_busy);
        let interrupt_cores = cores(self.interrupts, end.interrupts);
        let accounted = [
            server_cores,
            postgres_cores,
            relay_cores,
            nats_server_cores,
            projector_cores,
            bench_cores,
            interrupt_cores,
        ]
        .into_iter()
        .flatten()
        .sum::<f64>();
        let other_cores = machine_busy_cores.map(|busy| (busy - accounted).max(0.0));
        CpuUse {
            server_cores,
            postgres_cores,
            relay_cores,
            nats_server_cores,
            projector_cores,
            bench_cores,
            machine_busy_cores,
            interrupt_cores,
            other_cores,
        }
    }
}

impl CpuUse {
    /// Warns on stderr when processes outside the benchmark kept the machine
    /// busy during `what`.
    pub fn warn_if_disturbed(&self, what: &str) {
        if let Some(other) = self.other_cores.filter(|&cores| cores > DISTURBING_CPU_CORES) {
            eprintln!("warning: other processes kept {other:.2} cores busy during {what}; its figures are disturbed");
        }
    }
}

/// `utime + stime` of one process, from `/proc/PID/stat`.
fn process_ticks(pid: u32) -> Option<u64> {
    stat_fields(pid).map(|fields| fields.user_and_system_ticks)
}

/// The postmaster and its children, the running ones and (through the
/// postmaster's `cutime + cstime`) those that exited and were reaped, such as
/// autovacuum workers and the backends of closed connections.
fn postgres_ticks(postmaster: u32) -> u64 {
    let Ok(entries) = fs::read_dir("/proc") else { return 0 };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| stat_fields(pid).map(|fields| (pid, fields)))
        .filter(|(pid, fields)| *pid == postmaster || fields.parent == postmaster)
        .map(|(pid, fields)| {
            fields.user_and_system_ticks + if pid == postmaster { fields.reaped_children_ticks } else { 0 }
        })
        .sum()
}

struct StatFields {
    parent: u32,
    user_and_system_ticks: u64,
    /// `cutime + cstime`: the ticks of children that exited and were waited for.
    reaped_children_ticks: u64,
}

fn stat_fields(pid: u32) -> Option<StatFields> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces.
    let after_name = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 4 (ppid), 14-17 (utime, stime, cutime, cstime) of proc(5),
    // counted after field 2.
    let tick = |index: usize| -> Option<u64> { fields.get(index)?.parse().ok() };
    Some(StatFields {
        parent: fields.get(1)?.parse().ok()?,
        user_and_system_ticks: tick(11)? + tick(12)?,
        reaped_children_ticks: tick(13)? + tick(14)?,
    })
}

/// The ticks of all CPUs from the first line of `/proc/stat`: user, nice,
/// system, idle, iowait, irq, softirq, steal, guest, guest_nice.
fn all_cpu_ticks() -> Option<Vec<u64>> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    Some(line.split_whitespace().filter_map(|field| field.parse().ok()).collect())
}

/// Busy ticks of all CPUs: everything but idle and iowait.
fn machine_busy_ticks() -> Option<u64> {
    let ticks = all_cpu_ticks()?;
    let (idle, iowait) = (*ticks.get(3)?, *ticks.get(4)?);
    // guest and guest_nice (fields 9 and 10) are already counted in user and nice.
    Some(ticks.iter().take(8).sum::<u64>() - idle - iowait)
}

/// Ticks of all CPUs in interrupt handlers: irq and softirq.
fn interrupt_ticks() -> Option<u64> {
    let ticks = all_cpu_ticks()?;
    Some(ticks.get(5)? + ticks.get(6)?)
}

fn clock_ticks_per_second() -> f64 {
    process::probe(Command::new("getconf").arg("CLK_TCK")).and_then(|text| text.parse().ok()).unwrap_or(100.0)
}
