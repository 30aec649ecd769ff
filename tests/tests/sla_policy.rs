//! The SLA policy through the real gRPC API, on SQLite and PostgreSQL:
//! versions on the log's `sla-policy` stream, in position order with lead
//! events, idempotent by request id, every bad field named.

use leadger_tests::{Backend, TestServer, pb};
use tokio_stream::StreamExt;

fn berlin_policy() -> pb::SlaPolicy {
    pb::SlaPolicy {
        accept_within: Some(prost_types::Duration { seconds: 8 * 3600, nanos: 0 }),
        close_within: Some(prost_types::Duration { seconds: 20 * 8 * 3600, nanos: 0 }),
        mql_target: Some(120),
        mql_to_sql_rate_target: Some(0.6),
        won_amount_target: Some(pb::CurrencyAmount { currency: "EUR".into(), amount_minor: 5_000_000 }),
        review_by: "2027-03-31".into(),
        calendar: Some(pb::WorkingCalendar {
            time_zone: "Europe/Berlin".into(),
            working_days: vec![1, 2, 3, 4, 5],
            opens: "09:00".into(),
            closes: "17:00".into(),
            holidays: vec!["2026-12-25".into(), "2026-12-26".into()],
        }),
        effective_from: Some(prost_types::Timestamp { seconds: 1_798_761_600, nanos: 0 }),
    }
}

async fn policy_versions(server: &TestServer) {
    let mut commands = server.commands().await;
    let mut analytics = server.analytics().await;
    let lead = commands
        .capture_lead(pb::CaptureLeadRequest { email: "ada@example.com".into(), ..Default::default() })
        .await
        .expect("capture")
        .into_inner()
        .result
        .expect("result");

    let first = commands
        .define_sla_policy(pb::DefineSlaPolicyRequest { request_id: "sla-v1".into(), policy: Some(berlin_policy()) })
        .await
        .expect("define")
        .into_inner();
    assert_eq!((first.version, first.position), (1, lead.position + 1));
    let retried = commands
        .define_sla_policy(pb::DefineSlaPolicyRequest { request_id: "sla-v1".into(), policy: Some(berlin_policy()) })
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(retried, first, "a retry with the same request_id appends nothing");
    // Defaults: 24 working hours to answer, 30 days to close, 24x7, from now.
    let second = commands
        .define_sla_policy(pb::DefineSlaPolicyRequest { request_id: String::new(), policy: None })
        .await
        .expect("define defaults")
        .into_inner();
    assert_eq!(second.version, 2);
    let qualified = commands
        .qualify_lead(pb::QualifyLeadRequest { lead_id: lead.lead_id.clone(), ..Default::default() })
        .await
        .expect("qualify")
        .into_inner()
        .result
        .expect("result");
    assert_eq!(qualified.position, second.position + 1, "positions stay contiguous across streams");

    let versions = analytics.get_sla_policy(pb::GetSlaPolicyRequest {}).await.expect("get").into_inner().versions;
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0].policy.as_ref(), Some(&berlin_policy()), "the policy reads back as defined");
    let defaults = versions[1].policy.clone().expect("policy");
    assert_eq!(defaults.accept_within, Some(prost_types::Duration { seconds: 24 * 3600, nanos: 0 }));
    assert_eq!(defaults.close_within, Some(prost_types::Duration { seconds: 30 * 24 * 3600, nanos: 0 }));
    assert_eq!(defaults.calendar, None);
    assert!(defaults.effective_from.is_some());

    let mut queries = server.queries().await;
    let mut log =
        queries.read_log(pb::ReadLogRequest { from_position: 1, follow: false }).await.expect("log").into_inner();
    let mut types = Vec::new();
    while let Some(event) = log.next().await {
        let event = event.expect("event").event.expect("event");
        types.push((event.position, event.r#type, event.version));
    }
    assert_eq!(
        types,
        vec![
            (1, "captured".to_string(), 1),
            (2, "sla.policy_defined".to_string(), 1),
            (3, "sla.policy_defined".to_string(), 2),
            (4, "qualified".to_string(), 2),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_keeps_sla_policy_versions_in_the_log() {
    let server = TestServer::start(Backend::Sqlite).await;
    policy_versions(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_sla_policy_versions_in_the_log() {
    let server = TestServer::start(Backend::Postgres).await;
    policy_versions(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policy_names_every_bad_field() {
    let server = TestServer::start(Backend::Sqlite).await;
    let mut commands = server.commands().await;
    let bad = pb::SlaPolicy {
        accept_within: Some(prost_types::Duration { seconds: -5, nanos: 0 }),
        close_within: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
        mql_to_sql_rate_target: Some(1.5),
        won_amount_target: Some(pb::CurrencyAmount { currency: "euro".into(), amount_minor: -1 }),
        review_by: "next spring".into(),
        calendar: Some(pb::WorkingCalendar {
            time_zone: "Mars/Olympus".into(),
            working_days: vec![8],
            opens: "9am".into(),
            closes: "17:00".into(),
            holidays: vec![],
        }),
        ..Default::default()
    };
    let status = commands
        .define_sla_policy(pb::DefineSlaPolicyRequest { request_id: String::new(), policy: Some(bad) })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    for field in [
        "policy.accept_within",
        "policy.close_within",
        "policy.mql_to_sql_rate_target",
        "policy.won_amount_target.amount_minor",
        "policy.review_by",
        "policy.calendar.time_zone",
    ] {
        assert!(status.message().contains(field), "{field} is named in: {}", status.message());
    }
    // The nil UUID is the policy's stream: no lead may use it.
    let status = commands
        .qualify_lead(pb::QualifyLeadRequest {
            lead_id: "00000000-0000-0000-0000-000000000000".into(),
            ..Default::default()
        })
        .await
        .expect_err("reserved id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("lead_id"), "{}", status.message());
    server.stop().await;
}
