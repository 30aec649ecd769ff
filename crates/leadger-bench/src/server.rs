//! The real `leadger` as child processes: `leadger serve` started on a given
//! address with its stderr in a log file, ready once its gRPC health check
//! answers SERVING (for the command service and, with `--nats-url`, for the
//! relay); and `leadger relay`, the relay as its own process. Both are
//! stopped on drop (SIGTERM for a graceful drain, SIGKILL if that takes too
//! long).

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use leadger_proto::leads::v1::lead_command_service_server::SERVICE_NAME as COMMAND_SERVICE;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::process::{self, log_tail, stop_gracefully};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_POLL: Duration = Duration::from_millis(50);
/// How long a graceful shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The health service `leadger serve --nats-url` reports its relay under.
const RELAY_HEALTH_SERVICE: &str = "leadger.relay";

/// Where and how to start the server.
pub struct ServerLaunch<'a> {
    pub binary: &'a Path,
    pub listen: SocketAddr,
    pub database_url: &'a str,
    pub kek_file: &'a Path,
    /// Receives the server's stderr (its tracing output).
    pub log: &'a Path,
    /// `--nats-url`: relay the log to this NATS server in process.
    pub nats_url: Option<&'a str>,
    /// More arguments for `leadger serve`, as given.
    pub extra_args: &'a [String],
}

pub struct LeadgerServer {
    child: Child,
    listen: SocketAddr,
    log: PathBuf,
    /// Started with `--nats-url`: serving also means the relay is healthy.
    relays: bool,
}

impl LeadgerServer {
    /// Starts the server and waits until it reports SERVING.
    pub async fn start(launch: ServerLaunch<'_>) -> anyhow::Result<Self> {
        let mut server = Self::spawn(launch)?;
        server.wait_until_serving().await?;
        Ok(server)
    }

    /// Starts the server without waiting for it: call
    /// [`Self::wait_until_serving`] before sending commands.
    pub fn spawn(launch: ServerLaunch<'_>) -> anyhow::Result<Self> {
        let log = File::create(launch.log).with_context(|| format!("create {}", launch.log.display()))?;
        let mut command = Command::new(launch.binary);
        command
            .arg("serve")
            .arg("--listen")
            .arg(launch.listen.to_string())
            .arg("--database-url")
            .arg(launch.database_url)
            .arg("--kek-file")
            .arg(launch.kek_file);
        if let Some(url) = launch.nats_url {
            command.arg("--nats-url").arg(url);
        }
        command.args(launch.extra_args);
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let child = command.spawn().with_context(|| format!("start `{}`", process::describe(&command)))?;
        let relays = launch.nats_url.is_some();
        Ok(Self { child, listen: launch.listen, log: launch.log.to_path_buf(), relays })
    }

    /// The gRPC endpoint clients connect to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// The server's peak resident set so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        crate::process::high_water_mark_kib(self.pid())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until the command service (and, with `--nats-url`, the relay)
    /// reports SERVING; fails if the server exits or takes too long.
    pub async fn wait_until_serving(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let endpoint = self.endpoint();
        loop {
            self.check_running()?;
            if reports_serving(&endpoint, COMMAND_SERVICE).await
                && (!self.relays || reports_serving(&endpoint, RELAY_HEALTH_SERVICE).await)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the leadger server did not serve within {READY_TIMEOUT:?}; its log ends with:\n{}",
                    log_tail(&self.log, 20)
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// Fails, with the end of its log, if the server has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("check the leadger server")? {
            bail!("the leadger server exited ({status}); its log ends with:\n{}", log_tail(&self.log, 20));
        }
        Ok(())
    }
}

impl Drop for LeadgerServer {
    fn drop(&mut self) {
        stop_gracefully(&mut self.child, "the leadger server", STOP_TIMEOUT);
    }
}

/// Where and how to start `leadger relay`.
pub struct RelayLaunch<'a> {
    pub binary: &'a Path,
    /// A PostgreSQL URL: `leadger relay` runs beside servers on PostgreSQL.
    pub database_url: &'a str,
    pub nats_url: &'a str,
    /// Receives the relay's stderr (its tracing output).
    pub log: &'a Path,
}

/// `leadger relay`: the relay as its own process. It has no health endpoint;
/// it is working once its messages appear in the stream.
pub struct LeadgerRelay {
    child: Child,
    log: PathBuf,
}

impl LeadgerRelay {
    pub fn spawn(launch: RelayLaunch<'_>) -> anyhow::Result<Self> {
        let log = File::create(launch.log).with_context(|| format!("create {}", launch.log.display()))?;
        let mut command = Command::new(launch.binary);
        command
            .arg("relay")
            .arg("--database-url")
            .arg(launch.database_url)
            .arg("--nats-url")
            .arg(launch.nats_url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = command.spawn().with_context(|| format!("start `{}`", process::describe(&command)))?;
        Ok(Self { child, log: launch.log.to_path_buf() })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails, with the end of its log, if the relay has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait().context("check the leadger relay")? {
            bail!("`leadger relay` exited ({status}); its log ends with:\n{}", log_tail(&self.log, 20));
        }
        Ok(())
    }
}

impl Drop for LeadgerRelay {
    fn drop(&mut self) {
        // SIGTERM lets the relay release its lease, so a server relaying in
        // process can take it at once.
        stop_gracefully(&mut self.child, "`leadger relay`", STOP_TIMEOUT);
    }
}

async fn reports_serving(endpoint: &str, service: &str) -> bool {
    let Ok(endpoint) = Channel::from_shared(endpoint.to_string()) else { return false };
    let Ok(channel) = endpoint.connect().await else { return false };
    let request = HealthCheckRequest { service: service.to_string() };
    match HealthClient::new(channel).check(request).await {
        Ok(response) => response.into_inner().status == ServingStatus::Serving as i32,
        Err(_) => false,
    }
}

/// `leadger kek generate PATH`.
pub fn generate_kek(binary: &Path, path: &Path) -> anyhow::Result<()> {
    process::run(Command::new(binary).args(["kek", "generate"]).arg(path)).map(drop)
}

/// The `leadger` executable next to this one: `cargo build --release -p
/// leadger -p leadger-bench` puts both in `target/release/`.
pub fn sibling_binary() -> anyhow::Result<PathBuf> {
    let bench = std::env::current_exe().context("find the leadger-bench executable")?;
    let dir = bench.parent().context("the leadger-bench executable has no directory")?;
    Ok(dir.join("leadger"))
}
