//! The SLA policy through the real gRPC API, on SQLite and PostgreSQL:
//! versions on the log's `sla-policy` stream, in position order with lead
//! events, idempotent by request id, every bad field named.

use leadger_tests::workload::berlin_sla_policy;
use leadger_tests::{Backend, TestServer, pb};
use tokio_stream::StreamExt;

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
        .define_sla_policy(pb::DefineSlaPolicyRequest {
            request_id: "sla-v1".into(),
            policy: Some(berlin_sla_policy()),
        })
        .await
        .expect("define")
        .into_inner();
    assert_eq!((first.version, first.position), (1, lead.position + 1));
    let retried = commands
        .define_sla_policy(pb::DefineSlaPolicyRequest {
            request_id: "sla-v1".into(),
            policy: Some(berlin_sla_policy()),
        })
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
    assert_eq!(versions[0].policy.as_ref(), Some(&berlin_sla_policy()), "the policy reads back as defined");
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

/// A clock the test moves: the server's "now" (`as_of_time`, default
/// business time), in microseconds.
#[derive(Clone)]
struct TestClock(std::sync::Arc<std::sync::atomic::AtomicI64>);

impl TestClock {
    fn set_utc(&self, seconds: i64) {
        self.0.store(seconds * 1_000_000, std::sync::atomic::Ordering::SeqCst);
    }
    fn server_clock(&self) -> leadger_store::committer::Clock {
        let micros = self.0.clone();
        std::sync::Arc::new(move || {
            leadger_domain::Timestamp::from_micros(micros.load(std::sync::atomic::Ordering::SeqCst))
                .unwrap_or(leadger_domain::Timestamp::MAX)
        })
    }
}

/// Friday 2026-11-27, `hh:mm` Berlin time (UTC+1), as Unix seconds.
fn friday(hh: i64, mm: i64) -> i64 {
    1_795_770_000 + (hh - 10) * 3600 + mm * 60
}

fn at(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

/// Breaches with a working calendar and a clock the test controls: a
/// hand-off started Friday 16:30 with one working hour is due Monday 09:30,
/// is pending at exactly that instant and becomes a breach after it, with no
/// new event; answers late and in time are told apart; pages and the report
/// agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaches_appear_when_the_deadline_passes_in_working_time() {
    let clock = TestClock(Default::default());
    clock.set_utc(friday(16, 40));
    let config = leadger_grpc::ServerConfig { clock: clock.server_clock(), ..Default::default() };
    let server = TestServer::start_with(Backend::Sqlite, config).await;
    let mut commands = server.commands().await;
    let mut analytics = server.analytics().await;
    let mut policy = berlin_sla_policy();
    policy.accept_within = Some(prost_types::Duration { seconds: 3600, nanos: 0 });
    policy.mql_target = Some(10);
    policy.effective_from = at(1_767_225_600);
    policy.review_by = "2026-11-01".into();
    commands
        .define_sla_policy(pb::DefineSlaPolicyRequest { request_id: String::new(), policy: Some(policy) })
        .await
        .expect("define");

    let lead = |n: usize| {
        let mut commands = commands.clone();
        async move {
            let result = commands
                .capture_lead(pb::CaptureLeadRequest {
                    email: format!("sla{n}@example.org"),
                    source: "web".into(),
                    occurred_at: at(friday(9, 30)),
                    ..Default::default()
                })
                .await
                .expect("capture")
                .into_inner()
                .result
                .expect("result");
            result.lead_id
        }
    };
    let (in_time, late, open) = (lead(1).await, lead(2).await, lead(3).await);
    let qualify = |lead_id: &str, hh, mm| pb::QualifyLeadRequest {
        lead_id: lead_id.into(),
        assignee: "sdr-1".into(),
        occurred_at: at(friday(hh, mm)),
        ..Default::default()
    };
    commands.qualify_lead(qualify(&in_time, 10, 0)).await.expect("qualify");
    commands.qualify_lead(qualify(&late, 10, 0)).await.expect("qualify");
    commands.qualify_lead(qualify(&open, 16, 30)).await.expect("qualify");
    commands
        .accept_lead(pb::AcceptLeadRequest {
            lead_id: in_time.clone(),
            occurred_at: at(friday(11, 0)),
            ..Default::default()
        })
        .await
        .expect("accept exactly at the deadline");
    let last = commands
        .reject_lead(pb::RejectLeadRequest {
            lead_id: late.clone(),
            reason: "bad-fit".into(),
            occurred_at: at(friday(12, 0)),
            ..Default::default()
        })
        .await
        .expect("reject late")
        .into_inner()
        .result
        .expect("result")
        .position;

    let breaches = |analytics: &mut pb::lead_analytics_service_client::LeadAnalyticsServiceClient<_>| {
        let mut analytics = analytics.clone();
        async move {
            analytics
                .list_sla_breaches(pb::ListSlaBreachesRequest { min_position: last, ..Default::default() })
                .await
                .expect("breaches")
                .into_inner()
        }
    };
    clock.set_utc(friday(17, 0));
    let friday_evening = breaches(&mut analytics).await;
    assert_eq!(friday_evening.breaches.len(), 1, "{friday_evening:?}");
    let rejected = &friday_evening.breaches[0];
    assert_eq!(rejected.lead_id, late);
    assert_eq!(rejected.state, pb::BreachState::ResolvedLate as i32);
    assert_eq!((rejected.overdue_wall_seconds, rejected.overdue_working_seconds), (3600.0, 3600.0));
    assert_eq!(rejected.owner, "sdr-1");

    // Monday 09:30 Berlin is the open hand-off's deadline: still in time.
    clock.set_utc(1_796_027_400);
    assert_eq!(breaches(&mut analytics).await.breaches.len(), 1);
    // Half an hour later it is a breach, though nothing was appended.
    clock.set_utc(1_796_027_400 + 1800);
    let monday = breaches(&mut analytics).await;
    assert_eq!(monday.as_of_position, last, "no new event");
    assert_eq!(monday.breaches.len(), 2);
    let opened = &monday.breaches[1];
    assert_eq!((opened.lead_id.as_str(), opened.state), (open.as_str(), pb::BreachState::Open as i32));
    assert_eq!(opened.deadline, at(1_796_027_400));
    assert_eq!(opened.overdue_working_seconds, 1800.0);
    assert_eq!(opened.overdue_wall_seconds, 1800.0);
    assert_eq!(opened.handoff_id, format!("{open}.acceptance.1"));

    let page = analytics
        .list_sla_breaches(pb::ListSlaBreachesRequest { page_size: 1, ..Default::default() })
        .await
        .expect("page 1")
        .into_inner();
    assert_eq!(page.breaches.len(), 1);
    assert!(!page.next_page_token.is_empty());
    let next = analytics
        .list_sla_breaches(pb::ListSlaBreachesRequest {
            page_size: 1,
            page_token: page.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .expect("page 2")
        .into_inner();
    assert_eq!(next.breaches, monday.breaches[1..].to_vec());
    assert!(next.next_page_token.is_empty());
    let only_open = analytics
        .list_sla_breaches(pb::ListSlaBreachesRequest { state: pb::BreachState::Open as i32, ..Default::default() })
        .await
        .expect("open only")
        .into_inner();
    assert_eq!(only_open.breaches.len(), 1);

    let report = analytics.get_sla_report(pb::GetSlaReportRequest::default()).await.expect("report").into_inner();
    let acceptance = report.acceptance.expect("acceptance");
    assert_eq!(
        (
            acceptance.started,
            acceptance.within_sla,
            acceptance.resolved_late,
            acceptance.open_breached,
            acceptance.pending
        ),
        (3, 1, 1, 1, 0)
    );
    assert_eq!(acceptance.share_within_sla, Some(1.0 / 3.0));
    let close = report.close.expect("close");
    assert_eq!((close.started, close.pending), (1, 1), "the accepted lead must now be closed in 20 working days");
    assert_eq!(report.months.len(), 1);
    let november = &report.months[0];
    assert_eq!((november.month.as_str(), november.mql_count, november.mql_target), ("2026-11", 3, Some(10)));
    assert_eq!((november.accepted, november.ended_acceptance, november.provisional), (1, 2, true));
    assert_eq!(november.acceptance_rate, Some(0.5));
    assert!(report.review_overdue, "the policy's review date 2026-11-01 has passed");

    let status = analytics
        .list_sla_breaches(pb::ListSlaBreachesRequest { page_token: "nonsense".into(), ..Default::default() })
        .await
        .expect_err("bad token");
    assert!(status.message().contains("page_token"), "{}", status.message());
    server.stop().await;
}
