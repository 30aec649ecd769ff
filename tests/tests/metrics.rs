//! `--metrics-listen`: the real server's Prometheus endpoint, scraped over
//! HTTP while it serves real commands, relays to a real nats-server and
//! projects the read models.

use std::collections::BTreeMap;
use std::time::Duration;

use leadger_tests::nats::NatsServer;
use leadger_tests::{ServerProcess, free_port, leadger_binary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GET http://ADDR/metrics, the body.
async fn scrape(address: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect to /metrics");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send the request");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// Samples by their full name with labels, e.g. `leadger_funnel_leads{stage="MQL"}`.
fn samples(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Runs a client command that must succeed.
async fn leadger(args: &[&str]) {
    let output = tokio::process::Command::new(leadger_binary!()).args(args).output().await.expect("run leadger");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "leadger {args:?}: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_commands_latency_batches_lags_breaches_and_the_funnel() {
    let mut nats = NatsServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let metrics = format!("127.0.0.1:{}", free_port());
    let server = ServerProcess::start(
        &leadger_binary!(),
        dir.path(),
        &["--database-url", "sqlite://metrics.db", "--metrics-listen", &metrics, "--nats-url", &nats.url()],
    )
    .await
    .expect("start the server");
    let url = format!("http://{}", server.addr);
    let url = url.as_str();

    // An SLA of one hour, in force for a week: a lead qualified two days ago
    // and not answered is an open acceptance breach.
    let day = 86_400;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let at = |seconds_ago: i64| jiff::Timestamp::from_second(now - seconds_ago).expect("a time").to_string();
    leadger(&[
        "sla",
        "set-policy",
        "--accept-within",
        "1h",
        "--close-within",
        "30d",
        "--effective-from",
        &at(7 * day),
        "--server",
        url,
    ])
    .await;
    for (i, email) in ["ada@example.com", "bob@example.com"].iter().enumerate() {
        let lead = uuid::Uuid::new_v4().to_string();
        let captured = at(3 * day);
        leadger(&[
            "lead",
            "capture",
            "--lead-id",
            &lead,
            "--email",
            email,
            "--source",
            "web",
            "--occurred-at",
            &captured,
            "--server",
            url,
        ])
        .await;
        if i == 0 {
            leadger(&["lead", "qualify", &lead, "--assignee", "ben", "--occurred-at", &at(2 * day), "--server", url])
                .await;
        }
    }
    let refused = tokio::process::Command::new(leadger_binary!())
        .args(["lead", "capture", "--email", "not-an-email", "--server", url])
        .output()
        .await
        .expect("run leadger");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("InvalidArgument"), "{refused:?}");

    // The projector and the relay catch up within moments.
    let mut seen = BTreeMap::new();
    for _ in 0..100 {
        seen = samples(&scrape(&metrics).await);
        let caught_up = seen.get("leadger_projector_lag_events{model=\"journeys\"}") == Some(&0.0)
            && seen.get("leadger_relay_publishing") == Some(&1.0)
            && seen.get("leadger_relay_lag_events") == Some(&0.0)
            && seen.get("leadger_funnel_leads{stage=\"CAPTURED\"}") == Some(&1.0);
        if caught_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let value = |name: &str| seen.get(name).copied().unwrap_or_else(|| panic!("{name} is missing from {seen:#?}"));
    assert_eq!(value("leadger_commands_total{command=\"CaptureLead\",code=\"OK\"}"), 2.0);
    assert_eq!(value("leadger_commands_total{command=\"CaptureLead\",code=\"INVALID_ARGUMENT\"}"), 1.0);
    assert_eq!(value("leadger_commands_total{command=\"QualifyLead\",code=\"OK\"}"), 1.0);
    assert_eq!(value("leadger_commands_total{command=\"DefineSlaPolicy\",code=\"OK\"}"), 1.0);
    assert_eq!(value("leadger_command_duration_seconds_count{command=\"CaptureLead\"}"), 3.0);
    assert_eq!(value("leadger_command_duration_seconds_bucket{command=\"CaptureLead\",le=\"+Inf\"}"), 3.0);
    assert!(value("leadger_command_duration_seconds_sum{command=\"CaptureLead\"}") > 0.0);
    // Three lead commands committed, in batches of at least one.
    assert_eq!(value("leadger_events_appended_total"), 3.0);
    let batches = value("leadger_commit_batch_commands_count");
    assert!((1.0..=3.0).contains(&batches), "{batches} batches");
    assert_eq!(value("leadger_commit_batch_commands_sum"), 3.0);
    assert_eq!(value("leadger_funnel_leads{stage=\"CAPTURED\"}"), 1.0);
    assert_eq!(value("leadger_funnel_leads{stage=\"MQL\"}"), 1.0);
    assert_eq!(value("leadger_funnel_leads{stage=\"WON\"}"), 0.0);
    assert_eq!(value("leadger_sla_breaches_open{kind=\"acceptance\"}"), 1.0);
    assert_eq!(value("leadger_sla_breaches_open{kind=\"close\"}"), 0.0);
    assert_eq!(value("leadger_projector_lag_events{model=\"journeys\"}"), 0.0);
    assert_eq!(value("leadger_relay_lag_events"), 0.0);
    assert_eq!(value("leadger_relay_publishing"), 1.0);
    assert_eq!(value("leadger_nats_connected"), 1.0);
    assert!(value("leadger_log_head_position") >= 4.0);
    assert!(value("leadger_db_pool_max_connections") >= 1.0);
    assert!(seen.contains_key("leadger_db_pool_connections{state=\"in_use\"}"));

    // Prometheus naming: leadger_ prefix, snake case, counters end in
    // _total, each family has HELP and TYPE.
    let body = scrape(&metrics).await;
    for line in body.lines().filter(|l| l.starts_with("# TYPE ")) {
        let mut words = line.split_whitespace().skip(2);
        let (name, kind) = (words.next().expect("a name"), words.next().expect("a type"));
        assert!(name.starts_with("leadger_") && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{name}");
        assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
        assert!(body.contains(&format!("# HELP {name} ")), "{name} has no HELP");
    }

    // The relay's gauges follow NATS: down, then back.
    nats.kill().await;
    let mut disconnected = false;
    for _ in 0..100 {
        if samples(&scrape(&metrics).await).get("leadger_nats_connected") == Some(&0.0) {
            disconnected = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(disconnected, "leadger_nats_connected stayed 1 after the NATS server died");
    server.terminate().await.expect("stop the server");
}
