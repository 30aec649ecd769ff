//! The test harness: real dependencies, started per test on free ports in
//! temp dirs and cleaned up on drop.
//!
//! - PostgreSQL: one cluster per test run, started by `tests/run.sh`, which
//!   exports its admin URL as `LEADGER_TEST_PG_URL`; every test gets a fresh
//!   database in it ([`fresh_postgres_database`]).
//! - SQLite: a new file in a temp dir per test.
//! - gRPC: [`TestServer`] serves the real services on a real socket (port 0);
//!   [`ServerProcess`] runs the real `leadger` binary as a child process,
//!   [`RelayProcess`] its `relay` subcommand.
//! - NATS: [`nats::NatsServer`], a real `nats-server` per test.
//! - [`workload`]: lead lifecycles driven through the gRPC API.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use leadger_proto::leads::v1::lead_command_service_client::LeadCommandServiceClient;
use leadger_proto::leads::v1::lead_query_service_client::LeadQueryServiceClient;
use leadger_store::{PostgresLog, SqliteLog, Vault};
use sqlx::Connection;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub use leadger_proto::leads::v1 as pb;

pub mod faults;
pub mod nats;
pub mod workload;

/// SplitMix64: a seeded generator for random test data, so a failure replays.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Environment variable holding the admin URL of the test run's PostgreSQL.
pub const PG_URL_ENV: &str = "LEADGER_TEST_PG_URL";

/// Which event log a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The admin URL of the test run's PostgreSQL cluster. Fails loudly (rather
/// than skipping) when the run was not started by `tests/run.sh`.
pub fn postgres_admin_url() -> String {
    std::env::var(PG_URL_ENV).unwrap_or_else(|_| {
        panic!(
            "{PG_URL_ENV} is not set: run the test suite with `bash tests/run.sh`, which installs PostgreSQL \
             when it is missing and starts a throwaway cluster for the run"
        )
    })
}

/// Creates an empty database in the test run's cluster; returns its URL.
pub async fn fresh_postgres_database() -> String {
    let admin = postgres_admin_url();
    let name = format!("t_{}", uuid::Uuid::now_v7().simple());
    let mut connection = sqlx::PgConnection::connect(&admin).await.expect("connect to the test cluster");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut connection)
        .await
        .expect("create a test database");
    let (base, _) = admin.rsplit_once('/').expect("admin url has a database name");
    format!("{base}/{name}")
}

/// A database for one test: a SQLite file in a temp dir, or a fresh
/// PostgreSQL database; plus a KEK file.
pub struct TestDatabase {
    pub backend: Backend,
    pub url: String,
    pub kek_file: PathBuf,
    pub dir: TempDir,
}

impl TestDatabase {
    pub async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = match backend {
            Backend::Sqlite => format!("sqlite://{}", dir.path().join("leadger.db").display()),
            Backend::Postgres => fresh_postgres_database().await,
        };
        let kek_file = dir.path().join("leadger.kek");
        Vault::open(&kek_file, leadger_store::MissingKek::Create).expect("create a KEK");
        Self { backend, url, kek_file, dir }
    }

    pub fn vault(&self) -> Vault {
        Vault::open(&self.kek_file, leadger_store::MissingKek::Fail).expect("read the KEK").0
    }

    /// Every stored text of the database (events, leads, receipts), for
    /// checking that no personal data is stored in clear.
    pub async fn dump(&self) -> String {
        let queries = [
            "SELECT payload || ' ' || metadata FROM events",
            "SELECT lead_id || ' ' || email_index || ' ' || COALESCE(assignee, '') || COALESCE(external_ref, '') FROM leads",
            "SELECT client_id || ' ' || request_id || ' ' || request_hash FROM receipts",
        ];
        let mut dump = String::new();
        for query in queries {
            let rows: Vec<(String,)> = match self.backend {
                Backend::Sqlite => {
                    let mut c = sqlx::SqliteConnection::connect(&self.url).await.expect("open sqlite");
                    sqlx::query_as(query).fetch_all(&mut c).await.expect("dump")
                }
                Backend::Postgres => {
                    let mut c = sqlx::PgConnection::connect(&self.url).await.expect("connect");
                    let query = query
                        .replace("payload ||", "payload::text ||")
                        .replace("metadata FROM", "metadata::text FROM")
                        .replace("lead_id ||", "lead_id::text ||");
                    sqlx::query_as(sqlx::AssertSqlSafe(query)).fetch_all(&mut c).await.expect("dump")
                }
            };
            for (row,) in rows {
                dump.push_str(&row);
                dump.push('\n');
            }
        }
        dump
    }
}

/// The real gRPC services on a real socket, in this process.
pub struct TestServer {
    pub addr: SocketAddr,
    pub database: TestDatabase,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), leadger_grpc::ServeFailure>>>,
}

impl TestServer {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, leadger_grpc::ServerConfig::default()).await
    }

    pub async fn start_with(backend: Backend, config: leadger_grpc::ServerConfig) -> Self {
        Self::start_on(TestDatabase::new(backend).await, config).await
    }

    pub async fn start_on(database: TestDatabase, config: leadger_grpc::ServerConfig) -> Self {
        let backend = database.backend;
        let vault = Arc::new(database.vault());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = match backend {
            Backend::Sqlite => {
                let log = SqliteLog::connect(&database.url).await.expect("open sqlite");
                spawn_with_projector(log, vault, listener, config, shutdown)
            }
            Backend::Postgres => {
                let log = PostgresLog::connect(&database.url).await.expect("connect postgres");
                spawn_with_projector(log, vault, listener, config, shutdown)
            }
        };
        let server = Self { addr, database, stop: Some(stop), task: Some(task) };
        wait_until_serving(addr).await.expect("server becomes ready");
        server
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> Channel {
        connect(self.addr).await
    }

    pub async fn commands(&self) -> LeadCommandServiceClient<Channel> {
        LeadCommandServiceClient::new(self.channel().await)
    }

    pub async fn queries(&self) -> LeadQueryServiceClient<Channel> {
        LeadQueryServiceClient::new(self.channel().await)
    }

    pub async fn analytics(&self) -> pb::lead_analytics_service_client::LeadAnalyticsServiceClient<Channel> {
        pb::lead_analytics_service_client::LeadAnalyticsServiceClient::new(self.channel().await)
    }

    /// Graceful shutdown; returns once the server finished.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server stopped cleanly");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The services on `listener` with the projector beside them, as `leadger
/// serve` runs them.
fn spawn_with_projector<L>(
    log: L,
    vault: Arc<Vault>,
    listener: TcpListener,
    config: leadger_grpc::ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<Result<(), leadger_grpc::ServeFailure>>
where
    L: leadger_store::EventLog + leadger_store::JourneyStore + leadger_store::Leases + leadger_store::Agreements,
{
    let log = Arc::new(log);
    let mut background = leadger_grpc::Background::default();
    let projector_log = log.clone();
    background.companions.push(Box::new(move |appended, stopping| {
        let (applied, _) = tokio::sync::watch::channel(0);
        let config = leadger_projector::ProjectorConfig::default();
        tokio::spawn(leadger_projector::run_projector(projector_log, config, appended, applied, stopping))
    }));
    tokio::spawn(leadger_grpc::serve_with(log, vault, listener, config, background, shutdown))
}

/// A gRPC channel to a server on `addr`.
pub async fn connect(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).expect("valid uri").connect().await.expect("connect")
}

/// Every event of the log at `addr`, via the gRPC `ReadLog`.
pub async fn read_whole_log(addr: SocketAddr) -> Vec<pb::LeadEvent> {
    let mut queries = LeadQueryServiceClient::new(connect(addr).await);
    let mut stream = queries
        .read_log(pb::ReadLogRequest { from_position: 1, follow: false })
        .await
        .expect("read the log")
        .into_inner();
    let mut events = Vec::new();
    while let Some(response) = tokio_stream::StreamExt::next(&mut stream).await {
        events.push(response.expect("a log event").event.expect("an event"));
    }
    events
}

/// Polls the gRPC health service until it answers SERVING (10 s deadline).
pub async fn wait_until_serving(addr: SocketAddr) -> anyhow::Result<()> {
    wait_for_health(addr, "", true, Duration::from_secs(10)).await
}

/// Polls the gRPC health service until `service` (`""`: the server as a
/// whole) reports SERVING (`serving`) or not, within `deadline`.
pub async fn wait_for_health(addr: SocketAddr, service: &str, serving: bool, deadline: Duration) -> anyhow::Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    let until = Instant::now() + deadline;
    loop {
        let attempt = async {
            let channel = Channel::from_shared(format!("http://{addr}"))?.connect().await?;
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let status = health
                .check(tonic_health::pb::HealthCheckRequest { service: service.to_string() })
                .await?
                .into_inner()
                .status;
            anyhow::ensure!(
                (status == ServingStatus::Serving as i32) == serving,
                "health of {service:?} is {:?}",
                ServingStatus::try_from(status)
            );
            anyhow::Ok(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(error) if Instant::now() > until => {
                return Err(error.context(format!("{addr}: {service:?} did not turn serving={serving}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// The real `leadger` binary as a child process; killed on drop.
pub struct ServerProcess {
    pub addr: SocketAddr,
    child: tokio::process::Child,
}

impl ServerProcess {
    /// `binary serve` (see [`leadger_binary!`]) with `args` (plus `--listen` on a free port) in `cwd`.
    pub async fn start(binary: &Path, cwd: &Path, args: &[&str]) -> anyhow::Result<Self> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let child = tokio::process::Command::new(binary)
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .current_dir(cwd)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawn leadger")?;
        let mut process = Self { addr, child };
        if let Err(error) = wait_until_serving(addr).await {
            if let Ok(Some(status)) = process.child.try_wait() {
                bail!("leadger exited with {status} before serving: {error:#}");
            }
            return Err(error);
        }
        Ok(process)
    }

    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        terminate(&mut self.child).await
    }

    /// SIGKILL: the server dies wherever it is, with batches in flight.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        Ok(self.child.kill().await?)
    }
}

/// Sends SIGTERM to `child` and waits (20 s at most) for its exit status.
async fn terminate(child: &mut tokio::process::Child) -> anyhow::Result<std::process::ExitStatus> {
    let pid = child.id().context("process already reaped")?;
    let status = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status()?;
    anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
    Ok(tokio::time::timeout(Duration::from_secs(20), child.wait()).await.context("exit after SIGTERM")??)
}

/// `leadger relay` as a child process; killed on drop.
pub struct RelayProcess {
    child: tokio::process::Child,
}

impl RelayProcess {
    /// `binary relay --database-url <database> --nats-url <nats>` plus `args`.
    pub fn start(binary: &Path, database: &str, nats: &str, args: &[&str]) -> anyhow::Result<Self> {
        let child = tokio::process::Command::new(binary)
            .args(["relay", "--database-url", database, "--nats-url", nats])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawn leadger relay")?;
        Ok(Self { child })
    }

    /// SIGKILL: the relay dies wherever it is, with publishes in flight.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill the relay");
    }

    /// Sends SIGTERM and waits for the exit status.
    pub async fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        terminate(&mut self.child).await
    }
}

/// Runs an async test body `fn(Backend)` once per backend, as two test
/// functions `<name>::sqlite` and `<name>::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() { super::$name($crate::Backend::Sqlite).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() { super::$name($crate::Backend::Postgres).await }
        }
    )*};
}

/// Path of the real CLI built for this test run (cargo sets it for this
/// package's integration tests only, hence a macro).
#[macro_export]
macro_rules! leadger_binary {
    () => {
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_leadger-under-test"))
    };
}
