//! grpcurl, with no proto files at hand, drives a whole lifecycle through
//! server reflection, as the README shows.

use std::process::Command;

use leadger_tests::{Backend, TestServer};
use serde_json::Value;

fn grpcurl() -> String {
    std::env::var("LEADGER_GRPCURL").unwrap_or_else(|_| {
        panic!("LEADGER_GRPCURL is not set: run the suite with `bash tests/run.sh`, which installs grpcurl")
    })
}

fn call(server: &TestServer, method: &str, body: &str) -> Value {
    let output = Command::new(grpcurl())
        .args(["-plaintext", "-d", body, &server.addr.to_string(), method])
        .output()
        .expect("run grpcurl");
    assert!(output.status.success(), "grpcurl {method}: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("grpcurl prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_drives_a_full_lifecycle_through_reflection() {
    let server = TestServer::start(Backend::Sqlite).await;
    let addr = server.addr.to_string();
    let listed = Command::new(grpcurl()).args(["-plaintext", &addr, "list"]).output().expect("run grpcurl");
    let services = String::from_utf8_lossy(&listed.stdout);
    for service in ["leads.v1.LeadCommandService", "leads.v1.LeadQueryService", "grpc.health.v1.Health"] {
        assert!(services.lines().any(|l| l == service), "{service} is listed: {services}");
    }
    let health = call(&server, "grpc.health.v1.Health/Check", "{}");
    assert_eq!(health["status"], "SERVING");

    let captured = call(
        &server,
        "leads.v1.LeadCommandService/CaptureLead",
        r#"{"request_id": "req-1", "email": "ada@example.com", "name": "Ada Lovelace", "source": "web"}"#,
    );
    let lead_id = captured["result"]["leadId"].as_str().expect("lead id").to_string();
    assert_eq!(captured["result"]["stage"], "STAGE_CAPTURED");
    let qualified = call(
        &server,
        "leads.v1.LeadCommandService/QualifyLead",
        &format!(r#"{{"lead_id": "{lead_id}", "score": 80, "assignee": "rep-7"}}"#),
    );
    assert_eq!(qualified["result"]["stage"], "STAGE_MQL");
    let accepted = call(&server, "leads.v1.LeadCommandService/AcceptLead", &format!(r#"{{"lead_id": "{lead_id}"}}"#));
    assert_eq!(accepted["result"]["stage"], "STAGE_SQL");
    let closed = call(
        &server,
        "leads.v1.LeadCommandService/CloseLead",
        &format!(r#"{{"lead_id": "{lead_id}", "outcome": "OUTCOME_WON", "amount_minor": 4200000, "currency": "EUR"}}"#),
    );
    assert_eq!(closed["result"]["stage"], "STAGE_WON");
    assert_eq!(closed["result"]["version"], "4");
    let got = call(&server, "leads.v1.LeadQueryService/GetLead", &format!(r#"{{"lead_id": "{lead_id}"}}"#));
    assert_eq!(got["lead"]["owner"], "rep-7");
    assert_eq!(got["events"].as_array().map(Vec::len), Some(4));

    let refused = Command::new(grpcurl())
        .args(["-plaintext", "-d", r#"{"email": "nope"}"#, &addr, "leads.v1.LeadCommandService/CaptureLead"])
        .output()
        .expect("run grpcurl");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("InvalidArgument") && stderr.contains("email"), "{stderr}");
    server.stop().await;
}
