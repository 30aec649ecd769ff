//! `deploy/local-cluster`, the production topology without containers
//! (PostgreSQL, three clustered `nats-server`, two `leadger serve
//! --no-projector`, `leadger relay --nats-replicas 3`, `leadger project`), run
//! as users run it, with the binary this suite built. The script does the
//! checking (deploy/local-cluster.md): a lead's lifecycle across both servers,
//! its events on NATS and in the funnel, then again after SIGKILLing the NATS
//! node that leads the stream and one server. It exits non-zero when any check
//! fails; this test fails with its output then.
//!
//! The tools come from the environment `tests/install-tools.sh` sets (sourced
//! by `tests/run.sh`); without it the script sources that file itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use leadger_tests::leadger_binary;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the repository").to_path_buf()
}

#[test]
fn the_local_cluster_keeps_working_after_losing_a_nats_node_and_a_server() {
    let started = Instant::now();
    let output = Command::new("bash")
        .arg(repo().join("deploy/local-cluster"))
        .arg("--binary")
        .arg(leadger_binary!())
        .current_dir(repo())
        .output()
        .expect("run bash deploy/local-cluster");
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "deploy/local-cluster exited with {}:\n{log}", output.status);
    eprintln!("{log}");
    eprintln!("deploy/local-cluster passed in {:.1} s", started.elapsed().as_secs_f64());
    // What the second run, after the failover, saw: the stream holds both
    // leads' 8 events exactly once, and the funnel counts both leads.
    for line in [
        "stream LEADS_V1_EVENTS: positions 1..8 once each, in order, in the published format",
        "all campaigns 2 captured, 2 won",
        "PASSED: both smoke runs",
    ] {
        assert!(log.contains(line), "deploy/local-cluster printed {line:?}:\n{log}");
    }
}
