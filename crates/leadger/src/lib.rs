//! `leadger`: the command line. It parses flags (each with a `LEADGER_*`
//! environment variable), opens the event log the database URL names, and
//! runs the gRPC server until SIGTERM or ctrl-c. Everything else lives in the
//! adapter crates; this crate only wires them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use leadger_grpc::ServerConfig;
use leadger_store::{DatabaseUrl, EventLog, MissingKek, PostgresLog, SqliteLog, Vault};
use tokio::net::TcpListener;

#[derive(Debug, Parser)]
#[command(name = "leadger", version, about = "Event-sourced lead lifecycle service for sales and marketing")]
pub struct Cli {
    /// Log format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, env = "LEADGER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
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
    /// Manage the key-encryption key that protects personal data.
    #[command(subcommand)]
    Kek(KekCommand),
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
}

/// Runs the CLI and turns an error into a message and exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
    let result = match cli.command {
        Command::Kek(KekCommand::Generate { path }) => generate_kek(&path),
        Command::Serve(args) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("start the tokio runtime")
            .and_then(|runtime| runtime.block_on(serve(args))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn generate_kek(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        bail!("{} exists; refusing to overwrite a key-encryption key", path.display());
    }
    Vault::open(path, MissingKek::Create)?;
    println!("wrote a new key-encryption key to {}", path.display());
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let url = DatabaseUrl::parse(&args.database_url).with_context(|| {
        format!("--database-url {:?} must start with sqlite: or postgres://", redact(&args.database_url))
    })?;
    let (kek_path, missing) = match (&args.kek_file, &url) {
        (Some(path), _) => (path.clone(), MissingKek::Fail),
        (None, DatabaseUrl::Sqlite(url)) => (kek_next_to(url)?, MissingKek::Create),
        (None, DatabaseUrl::Postgres(_)) => bail!(
            "--kek-file (LEADGER_KEK_FILE) is required with PostgreSQL: every server of a deployment must share one key; create it with `leadger kek generate PATH`"
        ),
    };
    let (vault, created) = Vault::open(&kek_path, missing)?;
    if created {
        tracing::warn!(path = %kek_path.display(), "created a new key-encryption key; back it up: without it no personal data in the log can be read");
    }
    let vault = Arc::new(vault);
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("listen on {}", args.listen))?;
    let config = ServerConfig {
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
            run(log, vault, listener, config, &url).await
        }
        DatabaseUrl::Postgres(url) => {
            let shown = redact(&url);
            let log = PostgresLog::connect(&url).await.with_context(|| format!("connect to {shown}"))?;
            run(log, vault, listener, config, &shown).await
        }
    }
}

async fn run<L: EventLog>(
    log: L,
    vault: Arc<Vault>,
    listener: TcpListener,
    config: ServerConfig,
    database: &str,
) -> anyhow::Result<()> {
    let address = listener.local_addr()?;
    tracing::info!(%address, database, "leadger serving gRPC");
    leadger_grpc::serve(Arc::new(log), vault, listener, config, shutdown_signal()).await?;
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

/// A database URL without its password, for logs and errors.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}://{user}:***{}", &url[..scheme], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

async fn shutdown_signal() {
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
    fn passwords_never_reach_the_logs() {
        assert_eq!(redact("postgres://app:s3cret@db:5432/leads"), "postgres://app:***@db:5432/leads");
        assert_eq!(redact("postgres://db/leads"), "postgres://db/leads");
    }
}
