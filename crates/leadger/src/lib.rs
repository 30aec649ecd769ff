//! `leadger`: the command line. For the processes (`serve`, `relay`,
//! `project`) it parses flags (each with a `LEADGER_*` environment variable
//! and a config-file key), opens the event log the database URL names, and
//! wires the adapter crates until SIGTERM or ctrl-c. The commands for people
//! (`lead`, `sla`, `report`, `demo`, `import`) are gRPC clients in their own
//! modules, with no path of their own into the log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{ArgMatches, Args, FromArgMatches, Parser, Subcommand};
use leadger_grpc::{Authenticator, Background, Credentials, HealthCheck, ServerConfig};
use leadger_nats::{
    BreachConfig, NatsConnection, RelayConfig, RelayState, RelayStatus, StreamSettings, run_breach_notifier, run_relay,
};
use leadger_projector::{ProjectorConfig, rebuild, run_projector};
use leadger_store::{
    Agreements, DatabaseUrl, EventLog, JourneyStore, Leases, MissingKek, PostgresLog, SqliteLog, Vault,
};
use tokio::net::TcpListener;
use tokio::sync::watch;

mod client;
mod config;
mod demo;
mod import;
mod metrics;
mod report;
mod telemetry;

#[derive(Debug, Parser)]
#[command(name = "leadger", version, about = "Event-sourced lead lifecycle service for sales and marketing")]
pub struct Cli {
    /// Config file: TOML with one key per flag (`database_url = "…"`); flags
    /// and LEADGER_* variables override it. See `leadger config check`.
    #[arg(long, env = "LEADGER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, env = "LEADGER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    /// Export traces over OTLP/gRPC to this collector, such as
    /// http://127.0.0.1:4317 (plaintext). Off when unset.
    #[arg(long, env = "LEADGER_OTLP_ENDPOINT", global = true)]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines with key=value fields.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC command and query service.
    Serve(ServeArgs),
    /// Publish the event log to NATS JetStream as its own process
    /// (PostgreSQL; with several relays, one publishes and the others stand by).
    Relay(RelayArgs),
    /// Keep the read models up to date as their own process (PostgreSQL; with
    /// several projectors, one writes and the others stand by), or rebuild them.
    Project(ProjectArgs),
    /// Manage the key-encryption key that protects personal data.
    #[command(subcommand)]
    Kek(KekCommand),
    /// Capture, qualify, accept, reject, close, rate or show a lead on a running server.
    Lead {
        #[command(subcommand)]
        command: client::LeadCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Define the SLA policy or list its breaches on a running server.
    Sla {
        #[command(subcommand)]
        command: client::SlaCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// Funnel, conversion, SLA and lead-quality reports from a running server.
    Report {
        #[command(subcommand)]
        command: report::ReportCommand,
        #[command(flatten)]
        server: client::ServerArgs,
    },
    /// See leadger work in a minute: an embedded server, a quarter of
    /// synthetic leads through its gRPC API, and the reports.
    Demo(demo::DemoArgs),
    /// Import lead history from another CRM (CSV or JSON Lines, one
    /// lifecycle event per line) through the command API; safe to re-run.
    Import(import::ImportArgs),
    /// Check a configuration and print the effective settings.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage the bearer tokens of calling systems.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Remove the bytes of erased leads' data keys from the database files and
    /// WAL (after EraseLead; see docs/personal-data.md). PostgreSQL: needs a
    /// superuser (VACUUM FULL, CHECKPOINT) and `wal_recycle = off`.
    PurgeErased {
        /// The event log: sqlite://PATH or postgres://…
        #[arg(long, env = "LEADGER_DATABASE_URL")]
        database_url: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a new random token for CLIENT_ID and the line that lists it in
    /// the credentials file (only its hash is stored there).
    Generate {
        client_id: String,
        /// Comma-separated: marketing, sales, analytics, admin.
        #[arg(long)]
        roles: String,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate the settings of PROCESS from --config, LEADGER_* variables and
    /// defaults (files named exist and parse, URLs are well-formed) and print
    /// each effective setting with its source; secrets are masked.
    Check {
        #[arg(value_parser = ["serve", "relay", "project"], default_value = "serve")]
        process: String,
    },
}

#[derive(Debug, Subcommand)]
enum KekCommand {
    /// Write a new random key-encryption key to PATH (mode 0600); refuses to overwrite.
    Generate { path: PathBuf },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on for gRPC.
    #[arg(long, env = "LEADGER_LISTEN", default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// The event log: sqlite://PATH (embedded, created if missing) or postgres://…
    #[arg(long, env = "LEADGER_DATABASE_URL", default_value = "sqlite://leadger.db")]
    database_url: String,
    /// Key-encryption key file (64 hex characters). Default for SQLite: next to
    /// the database, created on first start. Required for PostgreSQL, shared by
    /// every server of the deployment.
    #[arg(long, env = "LEADGER_KEK_FILE")]
    kek_file: Option<PathBuf>,
    /// Largest request accepted, in bytes.
    #[arg(long, env = "LEADGER_MAX_REQUEST_BYTES", default_value_t = 1024 * 1024)]
    max_request_bytes: usize,
    /// Commands waiting for a commit before new ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "LEADGER_QUEUE_CAPACITY", default_value_t = 8192)]
    queue_capacity: usize,
    /// Most commands committed in one transaction.
    #[arg(long, env = "LEADGER_MAX_BATCH", default_value_t = 1024)]
    max_batch: usize,
    /// Do not run the projector in this process: `leadger project` workers
    /// keep the read models instead (PostgreSQL).
    #[arg(long, env = "LEADGER_NO_PROJECTOR")]
    no_projector: bool,
    #[command(flatten)]
    security: SecurityArgs,
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
}

/// Prometheus metrics of the process.
#[derive(Debug, Args)]
struct MetricsArgs {
    /// Serve Prometheus metrics on http://ADDR/metrics (e.g. 0.0.0.0:9090).
    #[arg(long, env = "LEADGER_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
}

impl MetricsArgs {
    async fn open(&self) -> anyhow::Result<Option<(TcpListener, metrics_exporter_prometheus::PrometheusHandle)>> {
        match self.metrics_listen {
            Some(address) => Ok(Some(metrics::open(address).await?)),
            None => Ok(None),
        }
    }
}

/// TLS and who may call what.
#[derive(Debug, Args)]
struct SecurityArgs {
    /// PEM certificate chain of this server: serve gRPC over TLS.
    #[arg(long, env = "LEADGER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "LEADGER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA certificate(s): clients must present a certificate it signed (mutual TLS).
    #[arg(long, env = "LEADGER_CLIENT_CA", requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Credentials file: one `client-id roles sha256:<token hash>|certificate`
    /// per line (see `leadger token generate`). Without it every caller has every role.
    #[arg(long, env = "LEADGER_CREDENTIALS_FILE")]
    credentials_file: Option<PathBuf>,
    /// Listen on a non-loopback address without TLS (traffic in clear).
    #[arg(long, env = "LEADGER_ALLOW_PLAINTEXT")]
    allow_plaintext: bool,
    /// Listen on a non-loopback address without a credentials file (anyone may call anything).
    #[arg(long, env = "LEADGER_ALLOW_ANONYMOUS")]
    allow_anonymous: bool,
}

impl SecurityArgs {
    /// The TLS configuration and authenticator for a server on `listen`;
    /// refuses an exposed address without TLS or credentials unless asked.
    fn server_settings(
        &self,
        listen: SocketAddr,
    ) -> anyhow::Result<(Option<tonic::transport::ServerTlsConfig>, Arc<Authenticator>)> {
        let read = |path: &PathBuf| std::fs::read(path).with_context(|| format!("read {}", path.display()));
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let identity = tonic::transport::Identity::from_pem(read(cert)?, read(key)?);
                let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
                if let Some(ca) = &self.client_ca {
                    tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
                }
                Some(tls)
            }
            _ => None,
        };
        let exposed = !listen.ip().is_loopback();
        if tls.is_none() && exposed {
            if !self.allow_plaintext {
                bail!(
                    "--listen {listen} is not a loopback address: give --tls-cert and --tls-key, or --allow-plaintext (LEADGER_ALLOW_PLAINTEXT) to serve in clear"
                );
            }
            tracing::warn!(%listen, "serving gRPC without TLS on a non-loopback address: requests and tokens travel in clear");
        }
        let authenticator = match &self.credentials_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
                let credentials = Credentials::parse(&text).with_context(|| format!("parse {}", path.display()))?;
                if credentials.is_empty() {
                    bail!("{} lists no credentials: nobody could call the server", path.display());
                }
                if self.client_ca.is_none() && credentials.entries().any(|(_, kind)| kind == "certificate") {
                    tracing::warn!(
                        "the credentials file lists certificates but --client-ca is not set: they cannot authenticate"
                    );
                }
                tracing::info!(path = %path.display(), callers = credentials.entries().count(), "authentication on");
                Authenticator::Credentials(credentials)
            }
            None if exposed && !self.allow_anonymous => bail!(
                "--listen {listen} is not a loopback address: give --credentials-file, or --allow-anonymous (LEADGER_ALLOW_ANONYMOUS) to let anyone call anything"
            ),
            None => {
                tracing::warn!("authentication off: no --credentials-file, every caller has every role");
                Authenticator::Open
            }
        };
        Ok((tls, Arc::new(authenticator)))
    }
}

#[derive(Debug, Args)]
pub struct ProjectArgs {
    /// The event log: postgres://… (or sqlite://PATH with --rebuild).
    #[arg(long, env = "LEADGER_DATABASE_URL")]
    database_url: String,
    /// Replay the whole log into fresh read-model rows, swap them in
    /// atomically and exit. MODEL: `journeys` (funnel, conversion, lead
    /// quality, SLA), the default and only one so far.
    #[arg(long, value_name = "MODEL", num_args = 0..=1, default_missing_value = "journeys")]
    rebuild: Option<String>,
    /// How long the projector lease lasts unless renewed: how soon a standby
    /// takes over from a projector that died.
    #[arg(long, env = "LEADGER_PROJECTOR_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    lease_ttl: Duration,
    #[command(flatten)]
    metrics: MetricsArgs,
}

#[derive(Debug, Args)]
pub struct RelayArgs {
    /// The event log to publish: postgres://…
    #[arg(long, env = "LEADGER_DATABASE_URL")]
    database_url: String,
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    metrics: MetricsArgs,
}

/// Where and how the event log is published to NATS JetStream.
#[derive(Debug, Args)]
struct NatsArgs {
    /// NATS server URL(s), comma-separated; enables the relay.
    #[arg(long, env = "LEADGER_NATS_URL")]
    nats_url: Option<String>,
    /// NATS credentials file (JWT and NKey seed).
    #[arg(long, env = "LEADGER_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// NATS authentication token.
    #[arg(long, env = "LEADGER_NATS_TOKEN", hide_env_values = true)]
    nats_token: Option<String>,
    /// CA certificate that signed the NATS server's TLS certificate.
    #[arg(long, env = "LEADGER_NATS_TLS_CA")]
    nats_tls_ca: Option<PathBuf>,
    /// Client certificate for NATS servers that require mutual TLS.
    #[arg(long, env = "LEADGER_NATS_TLS_CERT", requires = "nats_tls_key")]
    nats_tls_cert: Option<PathBuf>,
    /// Key of --nats-tls-cert.
    #[arg(long, env = "LEADGER_NATS_TLS_KEY", requires = "nats_tls_cert")]
    nats_tls_key: Option<PathBuf>,
    /// JetStream stream of the lead events (created or updated at start-up).
    #[arg(long, env = "LEADGER_NATS_STREAM", default_value = "LEADS_V1_EVENTS")]
    nats_stream: String,
    /// Stream replicas: 1 on a single server, 3 on a cluster.
    #[arg(long, env = "LEADGER_NATS_REPLICAS", default_value_t = 1)]
    nats_replicas: usize,
    /// How long the stream keeps events (e.g. 30d, 12h; 0 keeps them forever).
    #[arg(long, env = "LEADGER_NATS_MAX_AGE", default_value = "0", value_parser = parse_duration)]
    nats_max_age: Duration,
    /// How long JetStream remembers event ids to drop repeated publishes.
    #[arg(long, env = "LEADGER_NATS_DUPLICATE_WINDOW", default_value = "2m", value_parser = parse_duration)]
    nats_duplicate_window: Duration,
    /// `ce-source` of every published event.
    #[arg(long, env = "LEADGER_EVENT_SOURCE", default_value = "urn:leadger:leads")]
    event_source: String,
    /// How long the relay lease lasts unless renewed: how soon a standby
    /// relay takes over from one that died.
    #[arg(long, env = "LEADGER_NATS_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    nats_lease_ttl: Duration,
}

impl NatsArgs {
    /// The connection of the relay `holder` (named after it, so
    /// `nats server report connections` tells relays apart).
    fn connection(&self, url: &str, holder: &str) -> NatsConnection {
        NatsConnection {
            url: url.to_string(),
            credentials_file: self.nats_creds.clone(),
            token: self.nats_token.clone(),
            tls_ca: self.nats_tls_ca.clone(),
            tls_client: self.nats_tls_cert.clone().zip(self.nats_tls_key.clone()),
            name: format!("leadger {holder}"),
        }
    }

    fn relay_config(&self) -> RelayConfig {
        let stream = StreamSettings {
            name: self.nats_stream.clone(),
            replicas: self.nats_replicas,
            max_age: self.nats_max_age,
            duplicate_window: self.nats_duplicate_window,
        };
        RelayConfig { lease_ttl: self.nats_lease_ttl, ..RelayConfig::new(stream, self.event_source.clone()) }
    }

    /// The SLA-breach notifier that runs beside the relay.
    fn breach_config(&self, clock: leadger_store::committer::Clock) -> BreachConfig {
        BreachConfig {
            lease_ttl: self.nats_lease_ttl,
            ..BreachConfig::new(self.event_source.clone(), self.nats_replicas, clock)
        }
    }
}

/// A duration such as `0`, `90s`, `15m`, `12h` or `30d`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 90s, 15m, 12h or 30d"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

/// Runs the CLI and turns an error into a message and exit code 1.
pub fn main() -> ExitCode {
    let cli = match config::resolve(std::env::args_os().collect())
        .and_then(|resolved| Ok(Cli::from_arg_matches(&resolved.matches)?))
    {
        Ok(cli) => cli,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    // Services log what they do; commands for people only what went wrong.
    let service = matches!(cli.command, Command::Serve(_) | Command::Relay(_) | Command::Project(_));
    let level = if service { "info" } else { "warn" };
    let service_name = match cli.command {
        Command::Serve(_) => "leadger-serve",
        Command::Relay(_) => "leadger-relay",
        Command::Project(_) => "leadger-project",
        _ => "leadger",
    };
    // Held until the command returned: dropping it exports the last spans.
    let _telemetry = match telemetry::init(cli.log_format, level, cli.otlp_endpoint.as_deref(), service_name) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Kek(KekCommand::Generate { path }) => generate_kek(&path),
        Command::Token(TokenCommand::Generate { client_id, roles }) => generate_token(&client_id, &roles),
        Command::Config(ConfigCommand::Check { process }) => config::check(cli.config.as_deref(), &process),
        Command::Lead { command, server } => {
            tokio_runtime().and_then(|runtime| runtime.block_on(client::lead(&server, command)))
        }
        Command::Sla { command, server } => {
            tokio_runtime().and_then(|runtime| runtime.block_on(client::sla(&server, command)))
        }
        Command::Report { command, server } => {
            tokio_runtime().and_then(|runtime| runtime.block_on(report::run(&server, command)))
        }
        Command::Import(args) => tokio_runtime().and_then(|runtime| {
            let clean = runtime.block_on(import::run(args))?;
            if clean { Ok(()) } else { bail!("some lines were rejected (listed above)") }
        }),
        Command::Demo(args) => tokio_runtime().and_then(|runtime| runtime.block_on(demo::run(args))),
        Command::Serve(args) => tokio_runtime().and_then(|runtime| runtime.block_on(serve(args))),
        Command::Relay(args) => tokio_runtime().and_then(|runtime| runtime.block_on(relay(args))),
        Command::Project(args) => tokio_runtime().and_then(|runtime| runtime.block_on(project(args))),
        Command::PurgeErased { database_url } => {
            tokio_runtime().and_then(|runtime| runtime.block_on(purge_erased(&database_url)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            if service {
                tracing::error!("{error:#}");
            }
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("start the tokio runtime")
}

fn generate_kek(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        bail!("{} exists; refusing to overwrite a key-encryption key", path.display());
    }
    Vault::open(path, MissingKek::Create)?;
    println!("wrote a new key-encryption key to {}", path.display());
    Ok(())
}

fn generate_token(client_id: &str, roles: &str) -> anyhow::Result<()> {
    let (token, digest) = leadger_grpc::auth::new_token();
    let line = format!("{client_id} {roles} {digest}");
    Credentials::parse(&line).context("the token's credentials line")?;
    println!("token (give it to {client_id}; it is not stored): {token}");
    println!("credentials file line: {line}");
    Ok(())
}

impl ServeArgs {
    fn database(&self) -> anyhow::Result<DatabaseUrl> {
        DatabaseUrl::parse(&self.database_url).with_context(|| {
            format!("--database-url {:?} must start with sqlite: or postgres://", redact(&self.database_url))
        })
    }

    /// The key-encryption key file, and whether a missing one is created.
    fn kek(&self, database: &DatabaseUrl) -> anyhow::Result<(PathBuf, MissingKek)> {
        Ok(match (&self.kek_file, database) {
            (Some(path), _) => (path.clone(), MissingKek::Fail),
            (None, DatabaseUrl::Sqlite(url)) => (kek_next_to(url)?, MissingKek::Create),
            (None, DatabaseUrl::Postgres(_)) => bail!(
                "--kek-file (LEADGER_KEK_FILE) is required with PostgreSQL: every server of a deployment must share one key; create it with `leadger kek generate PATH`"
            ),
        })
    }
}

/// The PostgreSQL URL a worker process (`relay`, `project`) needs.
fn worker_database(process: &str, url: &str) -> anyhow::Result<String> {
    match DatabaseUrl::parse(url) {
        Some(DatabaseUrl::Postgres(database)) => Ok(database),
        Some(DatabaseUrl::Sqlite(_)) if process == "relay" => bail!(
            "`leadger relay` runs beside servers on PostgreSQL; with SQLite, give --nats-url to `leadger serve`, which relays in process"
        ),
        Some(DatabaseUrl::Sqlite(_)) => bail!(
            "`leadger project` runs beside servers on PostgreSQL; with SQLite, `leadger serve` runs the projector in process"
        ),
        None => bail!("--database-url {:?} must start with postgres://", redact(url)),
    }
}

/// The checks of `leadger config check PROCESS` that need no network: URLs
/// parse, the files named exist and parse, the listen address is allowed.
fn validate(process: &str, matches: &ArgMatches) -> anyhow::Result<()> {
    match process {
        "serve" => {
            let args = ServeArgs::from_arg_matches(matches)?;
            let database = args.database()?;
            let (kek, missing) = args.kek(&database)?;
            if missing == MissingKek::Fail || kek.exists() {
                Vault::open(&kek, MissingKek::Fail)?;
            }
            args.security.server_settings(args.listen)?;
        }
        "relay" => {
            let args = RelayArgs::from_arg_matches(matches)?;
            worker_database(process, &args.database_url)?;
            if args.nats.nats_url.is_none() {
                bail!("--nats-url (LEADGER_NATS_URL) is required: the relay publishes to NATS");
            }
        }
        _ => {
            let args = ProjectArgs::from_arg_matches(matches)?;
            worker_database(process, &args.database_url)?;
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let url = args.database()?;
    let (kek_path, missing) = args.kek(&url)?;
    let (vault, created) = Vault::open(&kek_path, missing)?;
    if created {
        tracing::warn!(path = %kek_path.display(), "created a new key-encryption key; back it up: without it no personal data in the log can be read");
    }
    let vault = Arc::new(vault);
    let (tls, authenticator) = args.security.server_settings(args.listen)?;
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
    let config = ServerConfig {
        tls,
        authenticator,
        max_request_bytes: args.max_request_bytes,
        committer: leadger_store::CommitterConfig {
            queue_capacity: args.queue_capacity,
            max_batch: args.max_batch,
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    match url {
        DatabaseUrl::Sqlite(url) => {
            let log = SqliteLog::connect(&url).await.with_context(|| format!("open {url}"))?;
            run(log, vault, listener, config, &args, &url).await
        }
        DatabaseUrl::Postgres(url) => {
            let shown = redact(&url);
            let log = PostgresLog::connect(&url).await.with_context(|| format!("connect to {shown}"))?;
            run(log, vault, listener, config, &args, &shown).await
        }
    }
}

async fn run<L: EventLog + Leases + JourneyStore + Agreements>(
    log: L,
    vault: Arc<Vault>,
    listener: TcpListener,
    config: ServerConfig,
    args: &ServeArgs,
    database: &str,
) -> anyhow::Result<()> {
    let log = Arc::new(log);
    let nats = &args.nats;
    let clock = config.clock.clone();
    let exporter = args.metrics.open().await?;
    let mut samplers = vec![metrics::log_sampler(log.clone())];
    let mut background = Background::default();
    if !args.no_projector {
        background.companions.push(projector_companion(log.clone()));
        samplers.push(metrics::projector_sampler(log.clone(), clock.clone()));
    }
    if let Some(url) = &nats.nats_url {
        let config = nats.relay_config();
        let client = nats.connection(url, &config.holder).connect().await?;
        let (status_tx, status) = watch::channel(RelayStatus { state: RelayState::Starting, published: 0 });
        samplers.push(metrics::relay_sampler(log.clone(), status.clone(), client.clone(), clock.clone()));
        background.health_checks.push(HealthCheck { service: RELAY_HEALTH_SERVICE, serving: relay_health(status) });
        let (notifier_log, notifier_client) = (log.clone(), client.clone());
        let breaches = nats.breach_config(clock);
        background.companions.push(Box::new(move |_, stopping| {
            tokio::spawn(run_breach_notifier(notifier_log, notifier_client, breaches, stopping))
        }));
        let relay_log = log.clone();
        background.companions.push(Box::new(move |appended, stopping| {
            tokio::spawn(run_relay(relay_log, client, config, appended, status_tx, stopping))
        }));
        tracing::info!(nats = url, stream = nats.nats_stream, "relay enabled");
    }
    if let Some((listener, handle)) = exporter {
        background
            .companions
            .push(Box::new(move |_, stopping| tokio::spawn(metrics::serve(listener, handle, samplers, stopping))));
    }
    let address = listener.local_addr()?;
    tracing::info!(%address, database, "leadger serving gRPC");
    leadger_grpc::serve_with(log, vault, listener, config, background, shutdown_signal()).await?;
    Ok(())
}

/// The projector, run beside the gRPC services in this process.
pub(crate) fn projector_companion<L: EventLog + JourneyStore + Leases>(log: Arc<L>) -> leadger_grpc::Companion {
    Box::new(move |appended, stopping| {
        let (applied, _) = watch::channel(0);
        tokio::spawn(run_projector(log, ProjectorConfig::default(), appended, applied, stopping))
    })
}

/// The health service name that reports the NATS relay: serving while it
/// publishes or stands by, not serving while NATS or the database fails.
const RELAY_HEALTH_SERVICE: &str = "leadger.relay";

fn relay_health(mut status: watch::Receiver<RelayStatus>) -> watch::Receiver<bool> {
    let (serving_tx, serving) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let healthy = status.borrow_and_update().is_healthy();
            serving_tx.send_if_modified(|serving| std::mem::replace(serving, healthy) != healthy);
            if status.changed().await.is_err() {
                break;
            }
        }
    });
    serving
}

async fn relay(args: RelayArgs) -> anyhow::Result<()> {
    let Some(url) = args.nats.nats_url.as_deref() else {
        bail!("--nats-url (LEADGER_NATS_URL) is required: the relay publishes to NATS");
    };
    let database = worker_database("relay", &args.database_url)?;
    let exporter = args.metrics.open().await?;
    let shown = redact(&database);
    let log = Arc::new(PostgresLog::connect(&database).await.with_context(|| format!("connect to {shown}"))?);
    let config = args.nats.relay_config();
    let client = args.nats.connection(url, &config.holder).connect().await?;
    let head = log.head_position().await.context("read the log head")?;
    let (appended_tx, appended) = watch::channel(head);
    log.forward_foreign_appends(appended_tx);
    let (status_tx, status) = watch::channel(RelayStatus { state: RelayState::Starting, published: 0 });
    let (stopping_tx, stopping) = watch::channel(false);
    tracing::info!(
        database = shown,
        nats = url,
        stream = args.nats.nats_stream,
        holder = config.holder,
        "relay starting"
    );
    let clock = leadger_store::committer::system_clock();
    let exporter = exporter.map(|(listener, handle)| {
        let samplers = vec![
            metrics::log_sampler(log.clone()),
            metrics::relay_sampler(log.clone(), status.clone(), client.clone(), clock.clone()),
        ];
        tokio::spawn(metrics::serve(listener, handle, samplers, stopping.clone()))
    });
    let breaches = args.nats.breach_config(clock);
    let notifier = tokio::spawn(run_breach_notifier(log.clone(), client.clone(), breaches, stopping.clone()));
    let relay = tokio::spawn(run_relay(log, client, config, appended, status_tx, stopping));
    shutdown_signal().await;
    tracing::info!(published = status.borrow().published, "relay shutting down");
    let _ = stopping_tx.send(true);
    relay.await.context("the relay task failed")?;
    notifier.await.context("the SLA-breach notifier failed")?;
    if let Some(exporter) = exporter {
        exporter.await.context("the metrics server failed")?;
    }
    Ok(())
}

async fn project(args: ProjectArgs) -> anyhow::Result<()> {
    if let Some(model) = &args.rebuild {
        if model != "journeys" {
            bail!("--rebuild {model:?}: the read models are `journeys` (funnel, conversion, lead quality, SLA)");
        }
        let report = match DatabaseUrl::parse(&args.database_url) {
            Some(DatabaseUrl::Sqlite(url)) => rebuild(&SqliteLog::connect(&url).await?).await?,
            Some(DatabaseUrl::Postgres(url)) => rebuild(&PostgresLog::connect(&url).await?).await?,
            None => bail!("--database-url {:?} must start with sqlite: or postgres://", redact(&args.database_url)),
        };
        println!(
            "rebuilt journeys: {} events, {} leads, up to position {}, in {:.2} s ({:.0} events/s)",
            report.events,
            report.leads,
            report.position,
            report.elapsed.as_secs_f64(),
            report.events as f64 / report.elapsed.as_secs_f64().max(1e-9)
        );
        return Ok(());
    }
    let database = worker_database("project", &args.database_url)?;
    let exporter = args.metrics.open().await?;
    let shown = redact(&database);
    let log = Arc::new(PostgresLog::connect(&database).await.with_context(|| format!("connect to {shown}"))?);
    let head = log.head_position().await.context("read the log head")?;
    let (appended_tx, appended) = watch::channel(head);
    log.forward_foreign_appends(appended_tx);
    let (applied_tx, applied) = watch::channel(0);
    let (stopping_tx, stopping) = watch::channel(false);
    let config = ProjectorConfig { lease_ttl: args.lease_ttl, ..ProjectorConfig::default() };
    tracing::info!(database = shown, holder = config.holder, "projector starting");
    let exporter = exporter.map(|(listener, handle)| {
        let clock = leadger_store::committer::system_clock();
        let samplers = vec![metrics::log_sampler(log.clone()), metrics::projector_sampler(log.clone(), clock)];
        tokio::spawn(metrics::serve(listener, handle, samplers, stopping.clone()))
    });
    let projector = tokio::spawn(run_projector(log, config, appended, applied_tx, stopping));
    shutdown_signal().await;
    tracing::info!(applied = *applied.borrow(), "projector shutting down");
    let _ = stopping_tx.send(true);
    projector.await.context("the projector task failed")?;
    if let Some(exporter) = exporter {
        exporter.await.context("the metrics server failed")?;
    }
    Ok(())
}

async fn purge_erased(database_url: &str) -> anyhow::Result<()> {
    match DatabaseUrl::parse(database_url) {
        Some(DatabaseUrl::Sqlite(url)) => SqliteLog::connect(&url).await?.purge_erased_keys().await?,
        Some(DatabaseUrl::Postgres(url)) => PostgresLog::connect(&url).await?.purge_erased_keys().await?,
        None => bail!("--database-url {:?} must start with sqlite: or postgres://", redact(database_url)),
    }
    println!("purged: the data keys of erased leads are gone from the database files and the WAL");
    Ok(())
}

/// The KEK path for a SQLite database: `leadger.db` → `leadger.kek`.
fn kek_next_to(url: &str) -> anyhow::Result<PathBuf> {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path.contains(":memory:") {
        bail!("--kek-file is required for an in-memory SQLite database");
    }
    Ok(Path::new(path).with_extension("kek"))
}

/// A URL, or a comma-separated list of them, without secrets, for logs,
/// errors and `config check`: the password of `user:password@`, a bare
/// `token@` (NATS), and `password=` query values become `***`. An `@` in a
/// password is found by the last `@`, so nothing after the user shows.
fn redact(urls: &str) -> String {
    urls.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some(scheme) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme + 3..];
    let url = match rest.rfind('@') {
        Some(at) => match rest[..at].split_once(':') {
            Some((user, _)) => format!("{}://{user}:***{}", &url[..scheme], &rest[at..]),
            None if url.starts_with("nats") || url.starts_with("tls") => {
                format!("{}://***{}", &url[..scheme], &rest[at..])
            }
            None => url.to_string(),
        },
        None => url.to_string(),
    };
    match url.split_once('?') {
        Some((base, query)) => {
            let masked: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_string(),
                })
                .collect();
            format!("{base}?{}", masked.join("&"))
        }
        None => url,
    }
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kek_lives_next_to_the_sqlite_file() {
        assert_eq!(kek_next_to("sqlite://leadger.db").ok(), Some(PathBuf::from("leadger.kek")));
        assert_eq!(
            kek_next_to("sqlite:///var/lib/leadger/log.db?mode=rwc").ok(),
            Some(PathBuf::from("/var/lib/leadger/log.kek"))
        );
        assert!(kek_next_to("sqlite::memory:").is_err());
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("30").is_err());
        assert!(parse_duration("1w").is_err());
        assert!(parse_duration("m").is_err());
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(redact("postgres://app:s3cret@db:5432/leads"), "postgres://app:***@db:5432/leads");
        assert_eq!(redact("postgres://db/leads"), "postgres://db/leads");
        assert_eq!(redact("postgres://app:p@ss@db/leads"), "postgres://app:***@db/leads");
        assert_eq!(redact("postgres://db/leads?user=app&password=s3cret"), "postgres://db/leads?user=app&password=***");
        assert_eq!(redact("nats://a:s3cret@n1:4222,nats://t0ken@n2:4222"), "nats://a:***@n1:4222,nats://***@n2:4222");
    }
}
