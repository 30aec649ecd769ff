//! The peers beside leadger's store layer: the Rust event-sourcing crates
//! a user would pick instead, each driven in process through its own public
//! API with the same lead aggregate and funnel, by `leadger-peers`. That
//! driver lives in its own Cargo workspace (`bench/peers`), because the
//! peers pin dependency versions (sqlx 0.8) that clash with leadger's; this
//! module builds it, runs it once per peer against a fresh database of the
//! same PostgreSQL cluster, and reads the JSON it prints.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::process;

/// The peers, by the name `leadger-peers --peer` takes.
pub const PEERS: [&str; 3] = ["cqrs-es", "esrs", "disintegrate"];

/// The driver's workspace, from this crate's place in the source tree.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/peers")
}

/// Builds `leadger-peers` in release mode with the `cargo` that runs this
/// harness (or the one on PATH) and returns the executable.
pub fn build() -> anyhow::Result<PathBuf> {
    let dir = workspace();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building the peer driver in {}…", dir.display());
    process::run_step(Command::new(cargo).args(["build", "--release", "--manifest-path"]).arg(dir.join("Cargo.toml")))?;
    Ok(dir.join("target/release/leadger-peers"))
}

/// What `leadger-peers` printed for one peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerResult {
    pub peer: String,
    /// Crate name → the version the driver was built with.
    pub crates: BTreeMap<String, String>,
    pub writers: usize,
    pub duration_secs: f64,
    pub events: u64,
    pub events_per_second: f64,
    pub latency_ms: PeerLatency,
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    /// Attempts retried after a concurrency conflict or a stale read
    /// (warm-up included), as a user of the crate would retry them.
    #[serde(default)]
    pub retries: u64,
    #[serde(default)]
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerLatency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// How each peer runs.
#[derive(Debug, Clone, Serialize)]
pub struct PeerPlan {
    pub writers: usize,
    pub warmup_secs: u64,
    pub duration_secs: u64,
    pub seed: u64,
}

/// Runs `peer` on the empty database at `url`.
pub fn run(driver: &Path, peer: &str, url: &str, plan: &PeerPlan) -> anyhow::Result<PeerResult> {
    let stdout = process::run(
        Command::new(driver)
            .args(["--peer", peer, "--database-url", url])
            .args(["--writers", &plan.writers.to_string()])
            .args(["--warmup-secs", &plan.warmup_secs.to_string()])
            .args(["--duration-secs", &plan.duration_secs.to_string()])
            .args(["--seed", &plan.seed.to_string()]),
    )?;
    serde_json::from_str(stdout.trim())
        .with_context(|| format!("parse what leadger-peers printed for {peer}: {stdout:?}"))
}
