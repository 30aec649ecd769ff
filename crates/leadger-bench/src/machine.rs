//! What the figures were measured on: the machine (from `/proc`), the
//! PostgreSQL version, the filesystem under the database, and the git
//! revision of the code under test.

use std::fs;
use std::path::Path;
use std::process::Command;

use serde::Serialize;

use crate::process;

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: Option<String>,
    pub memory_total_kib: Option<u64>,
    pub kernel: Option<String>,
    pub postgres_version: Option<String>,
    /// Filesystem type and device the temporary database lives on.
    pub data_filesystem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Revision {
    /// `git rev-parse --short HEAD` of the source tree this binary was built from.
    pub commit: Option<String>,
    /// Whether tracked files differ from that commit.
    pub dirty: Option<bool>,
}

impl Machine {
    pub fn probe(postgres_version: Option<String>, data_dir: Option<&Path>) -> Self {
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpu_model(),
            memory_total_kib: memory_total_kib(),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|text| text.trim().to_string()),
            postgres_version,
            data_filesystem: data_dir.and_then(filesystem_of),
        }
    }

    /// One line for the top of the printed report.
    pub fn summary(&self) -> String {
        let unknown = || "unknown".to_string();
        let memory =
            self.memory_total_kib.map_or_else(unknown, |kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0));
        let mut line = format!(
            "{} cores ({}), {memory} RAM, Linux {}",
            self.cores,
            self.cpu_model.clone().unwrap_or_else(unknown),
            self.kernel.clone().unwrap_or_else(unknown)
        );
        if let Some(version) = &self.postgres_version {
            line.push_str(&format!(", {version}"));
        }
        if let Some(filesystem) = &self.data_filesystem {
            line.push_str(&format!(", database on {filesystem}"));
        }
        line
    }
}

impl Revision {
    pub fn probe() -> Self {
        let source = env!("CARGO_MANIFEST_DIR");
        let git = |args: &[&str]| process::run(Command::new("git").arg("-C").arg(source).args(args)).ok();
        Self {
            commit: git(&["rev-parse", "--short", "HEAD"]).filter(|commit| !commit.is_empty()),
            dirty: git(&["status", "--porcelain", "--untracked-files=no"]).map(|changes| !changes.is_empty()),
        }
    }
}

fn cpu_model() -> Option<String> {
    let text = fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = text.lines().find(|line| line.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_string())
}

fn memory_total_kib() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|line| line.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// "ext4 on /dev/vda": the mount from `/proc/mounts` with the longest mount
/// point that contains `dir`.
fn filesystem_of(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mounts = fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (device, mount_point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            dir.starts_with(mount_point).then(|| (mount_point.len(), format!("{kind} on {device}")))
        })
        .max_by_key(|(length, _)| *length)
        .map(|(_, filesystem)| filesystem)
}
