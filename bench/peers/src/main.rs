//! `leadger-peers`: runs leadger's benchmark workload in-process on peer Rust
//! event-sourcing crates against a real PostgreSQL, so their figures can sit
//! next to leadger's own.
//!
//! One run drives one peer against one empty database: the peer creates the
//! schema it needs, then `--writers` tasks play leads' journeys (the same
//! seeded funnel as `leadger-bench`) for a warm-up and a measured window.
//! The JSON report goes to stdout (and `--output-json`), a one-line summary
//! to stderr.
//!
//! Commands turned away by a peer's optimistic concurrency, or refused on a
//! load that missed the writer's own earlier commit, are retried (up to 50
//! attempts, short jittered backoff; see [`retry`]), the same for every
//! peer, since that is how these crates are meant to be used: disintegrate
//! needs it at any real concurrency. The report counts the retried attempts
//! apart from the errors and says in a note where they came from.
//!
//! Connections: one sqlx pool of `--writers` connections, handed to the peer;
//! every peer here takes the caller's pool, none forces its own size. The
//! session settings are left at PostgreSQL's defaults (so `synchronous_commit`
//! stays on); only disintegrate raises its append transactions to
//! SERIALIZABLE, as the crate itself does.

mod cqrs_es_peer;
mod disintegrate_peer;
mod drive;
mod esrs_peer;
/// The funnel of `leadger-bench` itself, compiled from the main workspace's
/// source (this workspace does not depend on that one, but plays the very
/// same journeys); `rustfmt::skip` keeps `cargo fmt` here off that file.
#[allow(dead_code)]
#[rustfmt::skip]
#[path = "../../../crates/leadger-bench/src/funnel.rs"]
mod funnel;
mod lead;
mod report;
mod retry;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use sqlx::postgres::PgPoolOptions;

use crate::cqrs_es_peer::CqrsEsPeer;
use crate::disintegrate_peer::DisintegratePeer;
use crate::drive::{Peer, Plan, Tally};
use crate::esrs_peer::EsrsPeer;
use crate::report::Report;

/// Failed commands (after their retries) after which the run stops.
const MAX_ERRORS: u64 = 1000;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks peer Rust event-sourcing crates with leadger's workload")]
struct Cli {
    /// An empty database for this run; the peer creates its schema in it.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[arg(long, value_enum)]
    peer: PeerName,
    /// Concurrent writer tasks, and the size of the connection pool.
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Length of the measured window.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Time before the window whose commands are not counted.
    #[arg(long, default_value_t = 2)]
    warmup_secs: u64,
    /// Seed of the funnel: which journey each lead number takes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the JSON report here.
    #[arg(long)]
    output_json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PeerName {
    CqrsEs,
    Esrs,
    Disintegrate,
}

impl PeerName {
    fn as_str(self) -> &'static str {
        match self {
            Self::CqrsEs => "cqrs-es",
            Self::Esrs => "esrs",
            Self::Disintegrate => "disintegrate",
        }
    }

    /// The crates the peer is made of, at the versions Cargo.lock resolved.
    fn crates(self) -> BTreeMap<&'static str, &'static str> {
        BTreeMap::from_iter(match self {
            Self::CqrsEs => {
                vec![("cqrs-es", env!("LOCKED_VERSION_CQRS_ES")), ("postgres-es", env!("LOCKED_VERSION_POSTGRES_ES"))]
            }
            Self::Esrs => vec![("esrs", env!("LOCKED_VERSION_ESRS"))],
            Self::Disintegrate => vec![
                ("disintegrate", env!("LOCKED_VERSION_DISINTEGRATE")),
                ("disintegrate-postgres", env!("LOCKED_VERSION_DISINTEGRATE_POSTGRES")),
            ],
        })
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(cli.writers > 0, "--writers must be at least 1");
    anyhow::ensure!(cli.duration_secs > 0, "--duration-secs must be at least 1");
    let plan = Plan {
        writers: cli.writers,
        warmup: Duration::from_secs(cli.warmup_secs),
        measured: Duration::from_secs(cli.duration_secs),
        seed: cli.seed,
        max_errors: MAX_ERRORS,
    };
    let pool = PgPoolOptions::new()
        .max_connections(u32::try_from(cli.writers).context("--writers is too large")?)
        .connect(&cli.database_url)
        .await
        .context("connect to the database")?;
    let (tally, notes) = match cli.peer {
        PeerName::CqrsEs => drive(CqrsEsPeer::start(pool).await?, &plan).await?,
        PeerName::Esrs => drive(EsrsPeer::start(pool).await?, &plan).await?,
        PeerName::Disintegrate => drive(DisintegratePeer::start(pool).await?, &plan).await?,
    };
    let report = Report::new(cli.peer.as_str(), cli.peer.crates(), cli.writers, &tally, notes);
    let stopped = if tally.stopped_by_errors { format!("; stopped after {MAX_ERRORS} errors") } else { String::new() };
    eprintln!("{}{stopped} ({} events committed in all, warm-up included)", report.summary(), tally.committed);
    let json = serde_json::to_string_pretty(&report).context("serialize the report")?;
    println!("{json}");
    if let Some(path) = &cli.output_json {
        std::fs::write(path, format!("{json}\n")).with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}

/// Runs the plan on `peer`; returns what the writers counted and the peer's
/// notes, with one on the retries if there were any.
async fn drive<P: Peer>(peer: P, plan: &Plan) -> anyhow::Result<(Tally, Vec<String>)> {
    let mut notes = peer.notes();
    for note in &notes {
        eprintln!("note: {note}");
    }
    let peer = Arc::new(peer);
    let tally = drive::run(peer.clone(), plan).await?;
    if let Some(note) = tally.retries.note(peer.retry_cause()) {
        eprintln!("note: {note}");
        notes.push(note);
    }
    Ok((tally, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_versions_come_from_the_lock_file() {
        for peer in [PeerName::CqrsEs, PeerName::Esrs, PeerName::Disintegrate] {
            let crates = peer.crates();
            assert!(crates.keys().any(|name| name.starts_with(peer.as_str())), "{crates:?}");
            for (name, version) in crates {
                assert!(version.split('.').count() == 3, "{name} {version}");
            }
        }
    }
}
