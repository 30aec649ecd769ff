//! The real `leadger serve` as a child process: started on a given address
//! with its stderr in a log file, ready once its gRPC health check answers
//! SERVING, and stopped on drop (SIGTERM for a graceful drain, SIGKILL if
//! that takes too long).

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

use crate::process::{self, log_tail};

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const READY_POLL: Duration = Duration::from_millis(50);
/// How long a graceful shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Where and how to start the server.
pub struct ServerLaunch<'a> {
    pub binary: &'a Path,
    pub listen: SocketAddr,
    pub database_url: &'a str,
    pub kek_file: &'a Path,
    /// Receives the server's stderr (its tracing output).
    pub log: &'a Path,
}

pub struct LeadgerServer {
    child: Child,
    listen: SocketAddr,
    log: PathBuf,
}

impl LeadgerServer {
    /// Starts the server and waits until it reports SERVING.
    pub async fn start(launch: ServerLaunch<'_>) -> anyhow::Result<Self> {
        let log = File::create(launch.log).with_context(|| format!("create {}", launch.log.display()))?;
        let mut command = Command::new(launch.binary);
        command
            .arg("serve")
            .arg("--listen")
            .arg(launch.listen.to_string())
            .arg("--database-url")
            .arg(launch.database_url)
            .arg("--kek-file")
            .arg(launch.kek_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = command.spawn().with_context(|| format!("start `{}`", process::describe(&command)))?;
        let mut server = Self { child, listen: launch.listen, log: launch.log.to_path_buf() };
        server.wait_until_serving().await?;
        Ok(server)
    }

    /// The gRPC endpoint clients connect to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.listen)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_until_serving(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let endpoint = self.endpoint();
        loop {
            if let Some(status) = self.child.try_wait().context("check the leadger server")? {
                bail!(
                    "the leadger server exited ({status}) before serving; its log ends with:\n{}",
                    log_tail(&self.log, 20)
                );
            }
            if reports_serving(&endpoint).await {
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

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id().to_string();
        if process::run(Command::new("kill").args(["-TERM", &pid])).is_ok() {
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!("warning: the leadger server did not stop within {STOP_TIMEOUT:?} of SIGTERM; killing it");
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for LeadgerServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn reports_serving(endpoint: &str) -> bool {
    let Ok(endpoint) = Channel::from_shared(endpoint.to_string()) else { return false };
    let Ok(channel) = endpoint.connect().await else { return false };
    let request = HealthCheckRequest { service: COMMAND_SERVICE.to_string() };
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
