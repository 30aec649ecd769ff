//! Harness for the fault tests (`tests/tests/faults.rs`): a PostgreSQL
//! cluster of a test's own, which the test may stop and start again, and the
//! memory high-water mark of a process.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use tempfile::TempDir;

/// A throwaway PostgreSQL cluster for one test (temp dir, free port), with the
/// same relaxed durability as the test run's shared cluster (`tests/run.sh`).
/// Stopped and removed on drop.
pub struct PostgresCluster {
    dir: TempDir,
    bin: PathBuf,
    /// initdb and pg_ctl refuse to run as root: as root they run as `postgres`.
    as_postgres: bool,
    pub port: u16,
}

impl PostgresCluster {
    /// initdb and start a new cluster.
    pub fn start_new() -> anyhow::Result<Self> {
        let bin = postgres_bin_dir()?;
        let dir = tempfile::Builder::new().prefix("leadger-fault-pg.").tempdir().context("temp dir")?;
        let as_postgres = is_root()?;
        if as_postgres {
            run(Command::new("chown").arg("postgres:postgres").arg(dir.path()))?;
        }
        let cluster = Self { dir, bin, as_postgres, port: crate::free_port() };
        let data = cluster.data_dir();
        run(cluster.postgres_tool("initdb").arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        ]))?;
        cluster.start()?;
        Ok(cluster)
    }

    /// The URL of database `postgres` in this cluster.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the (stopped) cluster on its port and waits until it accepts connections.
    pub fn start(&self) -> anyhow::Result<()> {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c max_connections=200 \
             -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("postgres.log");
        run(self
            .postgres_tool("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(log)
            .args(["-w", "-t", "60", "start", "-o", &options]))
    }

    /// Fast shutdown: PostgreSQL disconnects every client and stops.
    pub fn stop(&self) -> anyhow::Result<()> {
        run(self.postgres_tool("pg_ctl").arg("-D").arg(self.data_dir()).args(["-m", "fast", "-w", "-t", "60", "stop"]))
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn postgres_tool(&self, name: &str) -> Command {
        let tool = self.bin.join(name);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(tool);
            command
        } else {
            Command::new(tool)
        }
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        let _ = self
            .postgres_tool("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// PostgreSQL's server binaries: `$PG_BIN` (exported by
/// `tests/install-tools.sh`), else the newest `/usr/lib/postgresql/*/bin`.
fn postgres_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from)
        && dir.join("initdb").exists()
    {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no PG_BIN and no /usr/lib/postgresql: run the tests with `bash tests/run.sh`")?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).context("no initdb under /usr/lib/postgresql/*/bin")
}

fn is_root() -> anyhow::Result<bool> {
    let output = Command::new("id").arg("-u").output().context("run id -u")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "0")
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let output = command.output().with_context(|| format!("run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed with {}: {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

/// The peak resident set size of process `pid` (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:")).context("no VmHWM in /proc/<pid>/status")?;
    line.split_whitespace().nth(1).context("VmHWM without a value")?.parse().context("parse VmHWM")
}
