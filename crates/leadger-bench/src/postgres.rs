//! A throwaway PostgreSQL cluster for one benchmark run: `initdb` in a temp
//! dir, the server on 127.0.0.1 at a given port with the default, durable
//! settings (`fsync` and `synchronous_commit` on), and on drop `pg_ctl stop -m
//! fast` and the directory deleted.
//!
//! PostgreSQL refuses to run as root, so when the harness is root every tool
//! runs as the `postgres` user through `runuser`, and the temp dir belongs to
//! that user.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::process::{self, is_root, log_tail};

/// How long the server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_POLL: Duration = Duration::from_millis(50);
const SUPERUSER: &str = "postgres";
const OS_USER: &str = "postgres";

pub struct PostgresCluster {
    bindir: PathBuf,
    /// Holds `data/`, `postgres.log` and the unix socket.
    dir: TempDir,
    port: u16,
    run_as_postgres: bool,
    /// Set once `pg_ctl start` ran, so a failed `initdb` stops nothing.
    started: bool,
}

impl PostgresCluster {
    /// Creates and starts a cluster under `parent`, listening on `port`, and
    /// waits until it accepts connections. Blocks: call it before the load
    /// starts.
    pub fn start(bindir: &Path, parent: &Path, port: u16) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("leadger-bench-pg-")
            .tempdir_in(parent)
            .with_context(|| format!("create a temp dir in {}", parent.display()))?;
        let run_as_postgres = is_root();
        if run_as_postgres {
            give_to_postgres_user(dir.path())?;
        }
        let mut cluster = Self { bindir: bindir.to_path_buf(), dir, port, run_as_postgres, started: false };
        cluster.init()?;
        cluster.started = true;
        cluster.launch()?;
        cluster.wait_until_ready()?;
        Ok(cluster)
    }

    /// The URL `leadger serve --database-url` takes (trust authentication).
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", self.port)
    }

    /// The postmaster's process id, from `postmaster.pid`.
    pub fn postmaster_pid(&self) -> Option<u32> {
        let text = fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Creates the empty database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        process::run(self.client("psql").args(["-X", "-q", "-c", &format!("CREATE DATABASE \"{name}\"")]))?;
        Ok(format!("postgres://{SUPERUSER}@127.0.0.1:{}/{name}", self.port))
    }

    /// Refreshes the planner's statistics (`ANALYZE`), as autovacuum does on
    /// a database that has been running for a while.
    pub fn analyze(&self) -> anyhow::Result<()> {
        process::run(self.client("psql").args(["-X", "-q", "-c", "ANALYZE"])).map(drop)
    }

    fn init(&self) -> anyhow::Result<()> {
        process::run(
            self.tool("initdb")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions"])
                // Only skips flushing the files initdb writes; the running
                // server still fsyncs every commit.
                .arg("--no-sync"),
        )
        .map(drop)
    }

    /// `pg_ctl start` without waiting; [`Self::wait_until_ready`] polls.
    fn launch(&self) -> anyhow::Result<()> {
        // pg_ctl hands these options to the server through a shell.
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories='{}'",
            self.port,
            self.dir.path().display()
        );
        let mut command = self.tool("pg_ctl");
        command.args(["start", "-W", "-D"]).arg(self.data_dir()).arg("-l").arg(self.log_path()).arg("-o").arg(options);
        process::run(&mut command).map(drop)
    }

    fn wait_until_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ready = self.client("pg_isready").arg("-q").status().context("run pg_isready")?;
            if ready.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "PostgreSQL did not accept connections on port {} within {READY_TIMEOUT:?}; its log ends with:\n{}",
                    self.port,
                    log_tail(&self.log_path(), 20)
                );
            }
            // Polling interval, not a guess at the start-up time: the deadline above bounds the wait.
            std::thread::sleep(READY_POLL);
        }
    }

    /// A client program (`psql`, `pg_isready`) connecting to this cluster.
    fn client(&self, name: &str) -> Command {
        let mut command = Command::new(self.bindir.join(name));
        command.args(["-h", "127.0.0.1", "-p"]).arg(self.port.to_string()).args(["-U", SUPERUSER, "-d", "postgres"]);
        command
    }

    /// A server program, run as the `postgres` user when we are root.
    fn tool(&self, name: &str) -> Command {
        let program = self.bindir.join(name);
        let mut command = if self.run_as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", OS_USER, "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        // The caller's working directory may be closed to the postgres user.
        command.current_dir(self.dir.path());
        command
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn stop(&self) {
        let stopped =
            process::run(self.tool("pg_ctl").args(["stop", "-m", "fast", "-w", "-t", "30", "-D"]).arg(self.data_dir()));
        if let Err(error) = stopped {
            eprintln!("warning: stop PostgreSQL: {error:#}");
            if let Some(pid) = self.postmaster_pid() {
                eprintln!("warning: killing the postmaster (pid {pid})");
                let _ = process::run(Command::new("kill").args(["-KILL", &pid.to_string()]));
            }
        }
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        if self.started {
            self.stop();
        }
    }
}

/// Hands `dir` to the `postgres` OS user, which `initdb` and the server run as.
fn give_to_postgres_user(dir: &Path) -> anyhow::Result<()> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let text = process::run(Command::new("id").args([flag, OS_USER]))
            .with_context(|| format!("PostgreSQL cannot run as root and there is no `{OS_USER}` user to run it as"))?;
        text.parse().with_context(|| format!("parse `id {flag} {OS_USER}` output {text:?}"))
    };
    std::os::unix::fs::chown(dir, Some(id("-u")?), Some(id("-g")?))
        .with_context(|| format!("chown {} to {OS_USER}", dir.display()))
}

/// The directory holding `initdb`, `pg_ctl` and `postgres`: `explicit`, else
/// `pg_config --bindir` when it has them, else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn find_bindir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit {
        if !dir.join("initdb").exists() {
            bail!("--pg-bindir {} has no initdb", dir.display());
        }
        return Ok(dir.to_path_buf());
    }
    let has_server = |dir: &PathBuf| dir.join("initdb").exists() && dir.join("pg_ctl").exists();
    if let Some(dir) = process::probe(Command::new("pg_config").arg("--bindir")).map(PathBuf::from).filter(has_server) {
        return Ok(dir);
    }
    let mut installed: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| Some((entry.file_name().to_str()?.parse().ok()?, entry.path().join("bin"))))
        .filter(|(_, dir)| has_server(dir))
        .collect();
    installed.sort();
    match installed.pop() {
        Some((_, dir)) => Ok(dir),
        None => bail!(
            "no PostgreSQL server binaries found (pg_config --bindir, /usr/lib/postgresql/*/bin); pass --pg-bindir"
        ),
    }
}

/// `postgres --version`, e.g. "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)".
pub fn server_version(bindir: &Path) -> Option<String> {
    process::probe(Command::new(bindir.join("postgres")).arg("--version"))
}
