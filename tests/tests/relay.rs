//! The NATS relay against a real `nats-server`: every committed event on the
//! stream exactly once, in position order, as a CloudEvent without personal
//! data — across relay crashes, a stale relay, a NATS outage and a takeover
//! between two relays. A Python consumer (nats-py) checks the format from
//! outside Rust.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::message::PublishMessage;
use leadger_store::{EventLog, SqliteLog};
use leadger_tests::nats::{
    NatsServer, StreamedEvent, assert_exactly_once_in_order, stream_length, stream_messages, wait_for_stream_length,
};
use leadger_tests::workload::{PERSONAL_MARKERS, run_lifecycles};
use leadger_tests::{Backend, RelayProcess, ServerProcess, TestDatabase, leadger_binary, pb, wait_for_health};

const RELAY_HEALTH: &str = "leadger.relay";
/// A short relay lease, so a killed relay's successor takes over in seconds.
const LEASE: [&str; 2] = ["--nats-lease-ttl", "2s"];

/// `leadger serve` on `database`, with `extra` flags.
async fn serve(database: &TestDatabase, extra: &[&str]) -> ServerProcess {
    let kek = database.kek_file.display().to_string();
    let mut args = vec!["--database-url", database.url.as_str(), "--kek-file", kek.as_str()];
    args.extend_from_slice(extra);
    ServerProcess::start(&leadger_binary!(), database.dir.path(), &args).await.expect("start leadger serve")
}

/// The stream matches the log one to one: same positions, ids, leads and
/// versions, in the same order.
fn assert_stream_is_the_log(messages: &[StreamedEvent], log: &[pb::LeadEvent]) {
    assert_exactly_once_in_order(messages, log.len() as u64);
    for (message, event) in messages.iter().zip(log) {
        let position = event.position.to_string();
        let version = event.version.to_string();
        assert_eq!(message.header("ce-id"), Some(event.event_id.as_str()), "ce-id at position {position}");
        assert_eq!(message.header("Nats-Msg-Id"), Some(event.event_id.as_str()), "Nats-Msg-Id at {position}");
        // Lead events are about their lead; the SLA policy about its stream.
        let (token, subject) = match event.r#type.as_str() {
            "sla.policy_defined" => ("sla_policy_defined", "sla-policy"),
            other => (other, event.lead_id.as_str()),
        };
        assert_eq!(message.header("ce-subject"), Some(subject), "ce-subject at {position}");
        assert_eq!(message.header("ce-leadversion"), Some(version.as_str()), "ce-leadversion at {position}");
        assert_eq!(message.subject, format!("leads.v1.events.{token}.{subject}"));
    }
}

/// Defines an SLA policy with every field set; returns the events appended (1).
async fn define_sla_policy(channel: tonic::transport::Channel) -> u64 {
    let mut commands = pb::lead_command_service_client::LeadCommandServiceClient::new(channel);
    let policy = leadger_tests::workload::berlin_sla_policy();
    let request = pb::DefineSlaPolicyRequest { request_id: "sla-2026".into(), policy: Some(policy) };
    commands.define_sla_policy(request).await.expect("define the SLA policy");
    1
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// Runs the Python consumer over the whole stream; returns its summary.
async fn python_consumer(nats: &NatsServer, expect: u64) -> serde_json::Value {
    let python = std::env::var("LEADGER_TEST_PYTHON").unwrap_or_else(|_| {
        panic!("LEADGER_TEST_PYTHON is not set: run the test suite with `bash tests/run.sh`, which installs nats-py")
    });
    let root = repo_root();
    let output = tokio::process::Command::new(python)
        .arg(root.join("tests/python/consume_events.py"))
        .args(["--url", &nats.url(), "--expect", &expect.to_string()])
        .arg("--schemas")
        .arg(root.join("docs/schemas/leads.v1"))
        .output()
        .await
        .expect("run the Python consumer");
    assert!(
        output.status.success(),
        "the Python consumer found problems:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("the consumer's JSON summary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_event_is_on_the_stream_once_in_order_as_a_cloud_event() {
    let nats = NatsServer::start().await;
    let database = TestDatabase::new(Backend::Sqlite).await;
    let server = serve(&database, &["--nats-url", &nats.url(), "--event-source", "/crm eu"]).await;
    // 40 lifecycles (every path of the funnel, every lead event type) and
    // an SLA policy in the middle.
    let channel = leadger_tests::connect(server.addr).await;
    let mut events = run_lifecycles(channel.clone(), 0..20, 4).await;
    events += define_sla_policy(channel.clone()).await;
    events += run_lifecycles(channel, 20..40, 4).await;
    let js = nats.jetstream().await;
    wait_for_stream_length(&js, events, Duration::from_secs(30)).await.expect("the relay publishes everything");
    wait_for_health(server.addr, RELAY_HEALTH, true, Duration::from_secs(10)).await.expect("the relay is healthy");

    let messages = stream_messages(&js).await;
    let log = leadger_tests::read_whole_log(server.addr).await;
    assert_eq!(log.len() as u64, events);
    assert_stream_is_the_log(&messages, &log);
    for message in &messages {
        assert_eq!(message.header("ce-specversion"), Some("1.0"));
        assert_eq!(message.header("ce-source"), Some("/crm%20eu"), "ce-source is percent-encoded");
        assert_eq!(message.header("ce-datacontenttype"), Some("application/json"));
        let everything = format!("{} {:?} {}", message.subject, message.headers, message.payload);
        for marker in PERSONAL_MARKERS {
            assert!(!everything.contains(marker), "personal data {marker:?} on NATS: {everything}");
        }
    }

    let summary = python_consumer(&nats, events).await;
    assert_eq!(summary["received"], events);
    assert_eq!(summary["last_position"], events);
    let types = summary["types"].as_object().expect("types by ce-type");
    assert_eq!(types.len(), 8, "every event type was checked against its schema: {types:?}");
}

/// A relay killed (SIGKILL) mid-backlog, three times, then left to finish:
/// the stream still holds every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_backlog_resumes_without_gaps_or_duplicates() {
    let nats = NatsServer::start().await;
    let database = TestDatabase::new(Backend::Postgres).await;
    let server = serve(&database, &[]).await;
    let events = run_lifecycles(leadger_tests::connect(server.addr).await, 0..3000, 32).await;
    let js = nats.jetstream().await;
    let mut killed_at = Vec::new();
    for _ in 0..3 {
        let before = stream_length(&js).await;
        let relay = RelayProcess::start(&leadger_binary!(), &database.url, &nats.url(), &LEASE).expect("start a relay");
        wait_for_stream_length(&js, before + 1, Duration::from_secs(30)).await.expect("the relay publishes");
        relay.kill().await;
        killed_at.push(stream_length(&js).await);
    }
    assert!(
        killed_at.iter().all(|&length| length < events),
        "every kill must land mid-backlog ({events} events; the stream held {killed_at:?} at the kills)"
    );
    let relay = RelayProcess::start(&leadger_binary!(), &database.url, &nats.url(), &LEASE).expect("start a relay");
    wait_for_stream_length(&js, events, Duration::from_secs(60)).await.expect("the last relay publishes the rest");
    assert_stream_is_the_log(&stream_messages(&js).await, &leadger_tests::read_whole_log(server.addr).await);
    assert_eq!(relay.terminate().await.expect("stop the relay").code(), Some(0));
}

/// A relay that lost its lease and still publishes what it read before (a
/// zombie) is refused by JetStream; the stream does not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_relay_publishing_an_old_batch_is_refused() {
    let nats = NatsServer::start().await;
    let database = TestDatabase::new(Backend::Sqlite).await;
    let server = serve(&database, &["--nats-url", &nats.url()]).await;
    let events = run_lifecycles(leadger_tests::connect(server.addr).await, 0..30, 4).await;
    let js = nats.jetstream().await;
    wait_for_stream_length(&js, events, Duration::from_secs(30)).await.expect("the relay publishes everything");
    let before = stream_messages(&js).await;

    // The zombie held the lease when the stream ended at sequence 10; it
    // publishes positions 11..=20 as it read them then, each fenced by the
    // sequence it believes came before.
    let log = SqliteLog::connect(&database.url).await.expect("open the log");
    let old_batch = log.read_log(11, 10).await.expect("read positions 11..=20");
    let zombie = async_nats::jetstream::new(nats.client().await);
    for (event, expected_last) in old_batch.iter().zip(10u64..) {
        let message = leadger_nats::cloudevent::to_cloud_event(event, "urn:leadger:leads").expect("encode");
        let publish = PublishMessage::build()
            .headers(message.headers)
            .payload(message.payload)
            .expected_last_sequence(expected_last);
        let refusal = zombie
            .send_publish(message.subject, publish)
            .await
            .expect("send the publish")
            .await
            .expect_err("a stale publish is refused");
        assert_eq!(refusal.kind(), PublishErrorKind::WrongLastSequence, "position {}: {refusal}", event.position);
    }
    // Even at the right sequence, an event already in the stream is not
    // stored again: its id is within the duplicate window.
    let tail = log.read_log(events, 1).await.expect("read the last event");
    let message = leadger_nats::cloudevent::to_cloud_event(&tail[0], "urn:leadger:leads").expect("encode");
    let publish =
        PublishMessage::build().headers(message.headers).payload(message.payload).expected_last_sequence(events);
    let ack = zombie.send_publish(message.subject, publish).await.expect("send").await.expect("an ack");
    assert!(ack.duplicate, "a repeated event id is acknowledged as a duplicate, not stored");

    let after = stream_messages(&js).await;
    assert_eq!(after.len(), before.len(), "the stream did not grow");
    for (a, b) in after.iter().zip(&before) {
        assert_eq!((a.sequence, a.header("ce-id")), (b.sequence, b.header("ce-id")));
    }
    assert_exactly_once_in_order(&after, events);
}

/// nats-server killed while commands keep coming, then restarted on the same
/// store: no command fails because of NATS, the relay reports the outage
/// on the health service, and the stream ends with every event once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_go_on_through_a_nats_outage_and_the_backlog_drains() {
    let mut nats = NatsServer::start().await;
    let database = TestDatabase::new(Backend::Sqlite).await;
    let server = serve(&database, &["--nats-url", &nats.url()]).await;
    let channel = leadger_tests::connect(server.addr).await;
    let js = nats.jetstream().await;

    let mut events = run_lifecycles(channel.clone(), 0..50, 4).await;
    wait_for_stream_length(&js, events, Duration::from_secs(30)).await.expect("published before the outage");
    wait_for_health(server.addr, RELAY_HEALTH, true, Duration::from_secs(10)).await.expect("the relay is healthy");

    nats.kill().await;
    // Every command succeeds while NATS is down (run_lifecycles panics on
    // any failure).
    events += run_lifecycles(channel.clone(), 50..150, 4).await;
    wait_for_health(server.addr, RELAY_HEALTH, false, Duration::from_secs(30))
        .await
        .expect("the relay reports NATS down");
    events += run_lifecycles(channel.clone(), 150..200, 4).await;

    nats.restart().await.expect("restart nats-server on the same store");
    events += run_lifecycles(channel, 200..250, 4).await;
    let js = nats.jetstream().await;
    wait_for_stream_length(&js, events, Duration::from_secs(60)).await.expect("the backlog drains");
    wait_for_health(server.addr, RELAY_HEALTH, true, Duration::from_secs(10)).await.expect("healthy again");
    assert_stream_is_the_log(&stream_messages(&js).await, &leadger_tests::read_whole_log(server.addr).await);
}

/// Messages each relay's NATS connection sent, by connection name.
async fn published_by_relays(nats: &NatsServer) -> Vec<(String, u64)> {
    let connz = nats.monitor("connz").await;
    let connections = connz["connections"].as_array().cloned().unwrap_or_default();
    connections
        .iter()
        .filter_map(|c| {
            let name = c["name"].as_str()?;
            name.starts_with("leadger relay-").then(|| (name.to_string(), c["in_msgs"].as_u64().unwrap_or(0)))
        })
        .collect()
}

/// Two relays on one PostgreSQL: only the lease holder publishes; when it is
/// killed, the other takes over, and the stream stays exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_relays_one_publishes_and_the_other_takes_over_when_it_dies() {
    let nats = NatsServer::start().await;
    let database = TestDatabase::new(Backend::Postgres).await;
    let server = serve(&database, &[]).await;
    let channel = leadger_tests::connect(server.addr).await;
    let js = nats.jetstream().await;

    let first = RelayProcess::start(&leadger_binary!(), &database.url, &nats.url(), &LEASE).expect("first relay");
    let mut events = run_lifecycles(channel.clone(), 0..50, 4).await;
    wait_for_stream_length(&js, events, Duration::from_secs(30)).await.expect("the first relay publishes");
    let second = RelayProcess::start(&leadger_binary!(), &database.url, &nats.url(), &LEASE).expect("second relay");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while published_by_relays(&nats).await.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the second relay connects to NATS");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    events += run_lifecycles(channel.clone(), 50..100, 4).await;
    wait_for_stream_length(&js, events, Duration::from_secs(30)).await.expect("published");
    let counts = published_by_relays(&nats).await;
    let active: Vec<_> = counts.iter().filter(|(_, sent)| *sent > 0).collect();
    assert_eq!(active.len(), 1, "only the lease holder sends anything to NATS: {counts:?}");
    assert!(active[0].1 >= events, "the holder published every event: {counts:?}");
    let first_name = active[0].0.clone();

    first.kill().await;
    events += run_lifecycles(channel, 100..150, 4).await;
    wait_for_stream_length(&js, events, Duration::from_secs(30)).await.expect("the standby takes over");
    let counts = published_by_relays(&nats).await;
    assert!(
        counts.iter().any(|(name, sent)| *name != first_name && *sent > 0),
        "the second relay published after the first died: {counts:?}"
    );
    assert_stream_is_the_log(&stream_messages(&js).await, &leadger_tests::read_whole_log(server.addr).await);
    assert_eq!(second.terminate().await.expect("stop the relay").code(), Some(0));
}

/// SLA breaches go to their own stream, once each, in deadline order, only
/// after the deadline passed with the hand-off still open; never for a
/// hand-off imported after its deadline; not again after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sla_breaches_are_announced_once_on_their_own_stream() {
    use leadger_tests::nats::{BREACH_STREAM, length_of, messages_of};
    let nats = NatsServer::start().await;
    let database = TestDatabase::new(Backend::Sqlite).await;
    let server = serve(&database, &["--nats-url", &nats.url()]).await;
    let mut commands =
        pb::lead_command_service_client::LeadCommandServiceClient::new(leadger_tests::connect(server.addr).await);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let policy = pb::SlaPolicy {
        accept_within: Some(prost_types::Duration { seconds: 2, nanos: 0 }),
        effective_from: Some(prost_types::Timestamp { seconds: now - 3600, nanos: 0 }),
        ..Default::default()
    };
    commands
        .define_sla_policy(pb::DefineSlaPolicyRequest { request_id: String::new(), policy: Some(policy) })
        .await
        .expect("define a 2-second SLA");
    let lifecycle_client = commands.clone();
    let mql = |n: usize, occurred_at: Option<prost_types::Timestamp>| {
        let mut commands = lifecycle_client.clone();
        async move {
            let lead = commands
                .capture_lead(pb::CaptureLeadRequest {
                    email: format!("breach{n}@example.org"),
                    occurred_at,
                    ..Default::default()
                })
                .await
                .expect("capture")
                .into_inner()
                .result
                .expect("result")
                .lead_id;
            commands
                .qualify_lead(pb::QualifyLeadRequest {
                    lead_id: lead.clone(),
                    assignee: format!("sdr-{n}"),
                    occurred_at,
                    ..Default::default()
                })
                .await
                .expect("qualify");
            lead
        }
    };
    let unanswered = mql(1, None).await;
    let answered = mql(2, None).await;
    commands
        .accept_lead(pb::AcceptLeadRequest { lead_id: answered, owner: "ae".into(), ..Default::default() })
        .await
        .expect("accept in time");

    let js = nats.jetstream().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while length_of(&js, BREACH_STREAM).await < 1 {
        assert!(tokio::time::Instant::now() < deadline, "the breach is announced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first = messages_of(&js, BREACH_STREAM).await;
    assert_eq!(first.len(), 1);
    let breach = &first[0];
    assert_eq!(breach.subject, format!("leads.v1.sla.breached.acceptance.{unanswered}"));
    assert_eq!(breach.header("ce-id"), Some(format!("{unanswered}.acceptance.1.breach").as_str()));
    assert_eq!(breach.header("Nats-Msg-Id"), breach.header("ce-id"));
    assert_eq!(breach.header("ce-type"), Some("leads.v1.SlaBreached"));
    let payload: serde_json::Value = serde_json::from_str(&breach.payload).expect("JSON");
    assert_eq!(payload["owner"], "sdr-1");
    let first_deadline_us = payload["deadline_us"].as_i64().expect("deadline_us");

    // An import: qualified (in business time) just after the first deadline,
    // recorded seconds after its own deadline passed. And one more live MQL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let imported_at = first_deadline_us + 100_000;
    let imported = prost_types::Timestamp {
        seconds: imported_at.div_euclid(1_000_000),
        nanos: (imported_at.rem_euclid(1_000_000) * 1000) as i32,
    };
    mql(3, Some(imported)).await;
    let live = mql(4, None).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while length_of(&js, BREACH_STREAM).await < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the second breach is announced");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let subjects = |messages: &[StreamedEvent]| messages.iter().map(|m| m.subject.clone()).collect::<Vec<_>>();
    let expected = vec![
        format!("leads.v1.sla.breached.acceptance.{unanswered}"),
        format!("leads.v1.sla.breached.acceptance.{live}"),
    ];
    assert_eq!(subjects(&messages_of(&js, BREACH_STREAM).await), expected, "never the import");

    // A restart announces nothing again.
    assert_eq!(server.terminate().await.expect("stop").code(), Some(0));
    let again = serve(&database, &["--nats-url", &nats.url()]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(subjects(&messages_of(&js, BREACH_STREAM).await), expected, "once, across restarts");
    // The event stream still holds the log's events only.
    assert_stream_is_the_log(&stream_messages(&js).await, &leadger_tests::read_whole_log(again.addr).await);
}
