//! Running the helper programs the harness depends on (`initdb`, `pg_ctl`,
//! `leadger kek generate`, `git`, …): to completion, with their output in the
//! error when they fail; and stopping the long-running children (`leadger
//! serve`, `leadger relay`, `nats-server`) gracefully.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// Runs `command` to completion and returns its trimmed stdout; fails with
/// its stderr when it cannot start or exits unsuccessfully.
pub fn run(command: &mut Command) -> anyhow::Result<String> {
    let shown = describe(command);
    let output = command.stdin(Stdio::null()).output().with_context(|| format!("start `{shown}`"))?;
    if !output.status.success() {
        bail!(
            "`{shown}` failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            String::from_utf8_lossy(&output.stdout).trim(),
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// `run`, for probes whose failure only means "unknown".
pub fn probe(command: &mut Command) -> Option<String> {
    run(command).ok().filter(|text| !text.is_empty())
}

/// The program and its arguments, as one would type them.
pub fn describe(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether this process runs as root: `/proc/self` belongs to the effective
/// user.
pub fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    match fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}

/// Stops a long-running child: SIGTERM for a graceful shutdown, SIGKILL if
/// it has not exited within `timeout`. `what` names it in the warning.
pub fn stop_gracefully(child: &mut Child, what: &str, timeout: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let pid = child.id().to_string();
    if run(Command::new("kill").args(["-TERM", &pid])).is_ok() {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: {what} did not stop within {timeout:?} of SIGTERM; killing it");
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `VmHWM` of `/proc/PID/status`: the kernel's high-water mark of the
/// process's resident set, in KiB; none once the process has freed its
/// memory on exit.
pub fn high_water_mark_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|line| line.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs a build or install step to completion, its progress on our stderr.
pub fn run_step(command: &mut Command) -> anyhow::Result<()> {
    let shown = describe(command);
    let status = command.status().with_context(|| format!("start `{shown}`"))?;
    anyhow::ensure!(status.success(), "`{shown}` failed ({status})");
    Ok(())
}
