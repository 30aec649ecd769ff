//! The gRPC API end to end, over a real socket, against both event logs:
//! the lifecycle, every error code, idempotency, optimistic concurrency,
//! uniqueness, request limits and personal-data protection.

use std::collections::HashSet;

use leadger_tests::{Backend, TestServer, pb};
use prost::Message;
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

use leadger_tests::on_both_backends;

on_both_backends!(
    full_lifecycle_with_history_and_search,
    invalid_fields_are_named,
    undecodable_and_oversized_requests,
    unknown_lead_is_not_found,
    stage_refusals_name_stage_and_command,
    expected_version_mismatch_is_aborted,
    idempotent_retries_replay_the_original_response,
    open_email_and_external_ref_are_unique,
    business_time_is_bounded,
    a_bad_command_fails_alone_in_its_batch,
    personal_data_is_never_stored_in_clear,
    read_log_streams_in_order_and_follows,
    feedback_needs_a_lead_sales_has_seen,
);

fn capture(email: &str) -> pb::CaptureLeadRequest {
    pb::CaptureLeadRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        email: email.to_string(),
        name: "Ada Lovelace".to_string(),
        company: "Analytical Engines Ltd".to_string(),
        phone: "+44 20 7946 0000".to_string(),
        source: "web".to_string(),
        campaign: "spring-launch".to_string(),
        persona: "it-director-midmarket".to_string(),
        ..Default::default()
    }
}

fn result_of<T>(
    response: Result<tonic::Response<T>, Status>,
    pick: impl FnOnce(T) -> Option<pb::CommandResult>,
) -> pb::CommandResult {
    let response = response.unwrap_or_else(|status| panic!("command failed: {status:?}"));
    pick(response.into_inner()).expect("response carries a result")
}

fn expect_code<T: std::fmt::Debug>(response: Result<T, Status>, code: Code) -> Status {
    match response {
        Err(status) if status.code() == code => status,
        other => panic!("expected {code:?}, got {other:?}"),
    }
}

fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

fn error_info(status: &Status) -> (String, std::collections::HashMap<String, String>) {
    let info = status.get_details_error_info().unwrap_or_else(|| panic!("{status:?} has ErrorInfo"));
    (info.reason, info.metadata)
}

struct Lead {
    id: String,
}

async fn captured(server: &TestServer, email: &str) -> Lead {
    let mut commands = server.commands().await;
    let result = result_of(commands.capture_lead(capture(email)).await, |r| r.result);
    Lead { id: result.lead_id }
}

async fn qualify(server: &TestServer, lead: &Lead, assignee: &str) -> Result<pb::CommandResult, Status> {
    let mut commands = server.commands().await;
    commands
        .qualify_lead(pb::QualifyLeadRequest {
            lead_id: lead.id.clone(),
            assignee: assignee.to_string(),
            score: Some(72),
            note: "asked for a demo".to_string(),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().result.expect("result"))
}

async fn full_lifecycle_with_history_and_search(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut commands = server.commands().await;
    let captured = result_of(commands.capture_lead(capture("Ada@Example.com")).await, |r| r.result);
    assert_eq!((captured.version, captured.stage), (1, pb::Stage::Captured as i32));
    assert!(
        uuid::Uuid::parse_str(&captured.lead_id).is_ok_and(|id| id.get_version_num() == 7),
        "server makes a UUIDv7"
    );
    let lead = Lead { id: captured.lead_id.clone() };
    let qualified = qualify(&server, &lead, "rep-7").await.expect("qualify");
    assert_eq!((qualified.version, qualified.stage), (2, pb::Stage::Mql as i32));
    let accepted = result_of(
        commands.accept_lead(pb::AcceptLeadRequest { lead_id: lead.id.clone(), ..Default::default() }).await,
        |r| r.result,
    );
    assert_eq!((accepted.version, accepted.stage), (3, pb::Stage::Sql as i32));
    let closed = result_of(
        commands
            .close_lead(pb::CloseLeadRequest {
                lead_id: lead.id.clone(),
                outcome: pb::Outcome::Won as i32,
                amount_minor: 1_250_000,
                currency: "EUR".to_string(),
                ..Default::default()
            })
            .await,
        |r| r.result,
    );
    assert_eq!((closed.version, closed.stage), (4, pb::Stage::Won as i32));
    assert!(
        captured.position < qualified.position
            && qualified.position < accepted.position
            && accepted.position < closed.position
    );

    let mut queries = server.queries().await;
    let got = queries.get_lead(pb::GetLeadRequest { lead_id: lead.id.clone() }).await.expect("get lead").into_inner();
    let view = got.lead.expect("lead");
    assert_eq!(view.stage, pb::Stage::Won as i32);
    assert_eq!(view.version, 4);
    assert_eq!(view.email, "Ada@Example.com");
    assert_eq!(view.name, "Ada Lovelace");
    assert_eq!(view.phone, "+44 20 7946 0000");
    assert_eq!(view.assignee, "rep-7");
    assert_eq!(view.owner, "rep-7", "owner defaults to the assignee");
    assert_eq!(view.score, Some(72));
    let types: Vec<&str> = got.events.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(types, ["captured", "qualified", "accepted", "closed"]);
    assert_eq!(got.events.iter().map(|e| e.version).collect::<Vec<_>>(), [1, 2, 3, 4]);
    match &got.events[1].payload {
        Some(pb::lead_event::Payload::Qualified(q)) => assert_eq!(q.note, "asked for a demo"),
        other => panic!("unexpected payload {other:?}"),
    }
    match &got.events[3].payload {
        Some(pb::lead_event::Payload::Closed(c)) => {
            assert_eq!((c.amount_minor, c.currency.as_str()), (1_250_000, "EUR"))
        }
        other => panic!("unexpected payload {other:?}"),
    }

    let by_email = queries
        .find_leads(pb::FindLeadsRequest { email: "ada@EXAMPLE.com".to_string(), ..Default::default() })
        .await
        .expect("find")
        .into_inner();
    assert_eq!(by_email.leads.iter().map(|l| l.lead_id.as_str()).collect::<Vec<_>>(), [lead.id.as_str()]);
    let by_owner = queries
        .find_leads(pb::FindLeadsRequest {
            owner: "rep-7".to_string(),
            stage: pb::Stage::Won as i32,
            ..Default::default()
        })
        .await
        .expect("find")
        .into_inner();
    assert_eq!(by_owner.leads.len(), 1);
    let nobody = queries
        .find_leads(pb::FindLeadsRequest {
            owner: "rep-7".to_string(),
            stage: pb::Stage::Mql as i32,
            ..Default::default()
        })
        .await
        .expect("find")
        .into_inner();
    assert!(nobody.leads.is_empty());

    // Pagination walks every lead once.
    for n in 0..5 {
        captured_lead(&server, &format!("page-{n}@example.com")).await;
    }
    let mut seen = HashSet::new();
    let mut token = String::new();
    loop {
        let page = queries
            .find_leads(pb::FindLeadsRequest { page_size: 2, page_token: token.clone(), ..Default::default() })
            .await
            .expect("page")
            .into_inner();
        assert!(page.leads.len() <= 2);
        for found in page.leads {
            assert!(seen.insert(found.lead_id), "a lead appears on one page only");
        }
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 6);
    server.stop().await;
}

async fn captured_lead(server: &TestServer, email: &str) -> Lead {
    captured(server, email).await
}

async fn invalid_fields_are_named(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut commands = server.commands().await;
    let bad = pb::CaptureLeadRequest {
        email: "not-an-email".to_string(),
        name: "x".repeat(201),
        phone: "call me".to_string(),
        lead_id: "not-a-uuid".to_string(),
        occurred_at: Some(prost_types::Timestamp { seconds: 253_402_300_800, nanos: 0 }),
        ..Default::default()
    };
    let status = expect_code(commands.capture_lead(bad).await, Code::InvalidArgument);
    let mut fields = violated_fields(&status);
    fields.sort();
    assert_eq!(fields, ["email", "lead_id", "name", "occurred_at", "phone"]);
    assert!(status.message().contains("email"), "{}", status.message());

    let missing_email =
        expect_code(commands.capture_lead(pb::CaptureLeadRequest::default()).await, Code::InvalidArgument);
    assert_eq!(violated_fields(&missing_email), ["email"]);
    let long_email = format!("{}@{}.com", "a".repeat(60), "b".repeat(200));
    let status = expect_code(commands.capture_lead(capture(&long_email)).await, Code::InvalidArgument);
    assert!(status.message().contains("254"));

    let lead = captured(&server, "valid@example.com").await;
    let cases: Vec<(Result<tonic::Response<pb::RejectLeadResponse>, Status>, &str)> = vec![
        (
            commands
                .reject_lead(pb::RejectLeadRequest {
                    lead_id: lead.id.clone(),
                    reason: "No Budget".into(),
                    ..Default::default()
                })
                .await,
            "reason",
        ),
        (
            commands
                .reject_lead(pb::RejectLeadRequest {
                    lead_id: lead.id.clone(),
                    reason: "no-budget".into(),
                    note: "n".repeat(4097),
                    ..Default::default()
                })
                .await,
            "note",
        ),
        (
            commands.reject_lead(pb::RejectLeadRequest { reason: "no-budget".into(), ..Default::default() }).await,
            "lead_id",
        ),
    ];
    for (response, field) in cases {
        let status = expect_code(response, Code::InvalidArgument);
        assert_eq!(violated_fields(&status), [field]);
    }
    let close = |outcome: i32, amount_minor: i64, currency: &str, lost_reason: &str| pb::CloseLeadRequest {
        lead_id: lead.id.clone(),
        outcome,
        amount_minor,
        currency: currency.to_string(),
        lost_reason: lost_reason.to_string(),
        ..Default::default()
    };
    for (request, field) in [
        (close(pb::Outcome::Won as i32, -1, "EUR", ""), "amount_minor"),
        (close(pb::Outcome::Won as i32, i64::MIN, "EUR", ""), "amount_minor"),
        (close(pb::Outcome::Won as i32, 100, "euro", ""), "currency"),
        (close(pb::Outcome::Lost as i32, 0, "", ""), "lost_reason"),
        (close(pb::Outcome::Unspecified as i32, 0, "", ""), "outcome"),
        (close(42, 0, "", ""), "outcome"),
    ] {
        let status = expect_code(commands.close_lead(request).await, Code::InvalidArgument);
        assert_eq!(violated_fields(&status), [field]);
    }
    for (rating, codes, field) in [
        (0, vec![], "rating"),
        (6, vec![], "rating"),
        (3, vec!["good-fit".to_string(), "Bad Fit".to_string()], "reason_codes[1]"),
    ] {
        let request =
            pb::RecordFeedbackRequest { lead_id: lead.id.clone(), rating, reason_codes: codes, ..Default::default() };
        let status = expect_code(commands.record_feedback(request).await, Code::InvalidArgument);
        assert_eq!(violated_fields(&status), [field]);
    }
    let status = expect_code(
        commands.assign_lead(pb::AssignLeadRequest { lead_id: lead.id.clone(), ..Default::default() }).await,
        Code::InvalidArgument,
    );
    assert_eq!(violated_fields(&status), ["assignee"]);
    for (score, occurred_at, fields) in [
        (Some(101), None, vec!["score"]),
        (Some(i32::MIN), None, vec!["score"]),
        (Some(50), Some(prost_types::Timestamp { seconds: 0, nanos: -1 }), vec!["occurred_at"]),
        (Some(50), Some(prost_types::Timestamp { seconds: i64::MIN, nanos: 0 }), vec!["occurred_at"]),
        (Some(50), Some(prost_types::Timestamp { seconds: 1, nanos: 1_000_000_000 }), vec!["occurred_at"]),
    ] {
        let request = pb::QualifyLeadRequest {
            lead_id: lead.id.clone(),
            score,
            occurred_at,
            assignee: "ana".into(),
            ..Default::default()
        };
        let status = expect_code(commands.qualify_lead(request).await, Code::InvalidArgument);
        assert_eq!(violated_fields(&status), fields, "{score:?} {occurred_at:?}");
    }
    let mut queries = server.queries().await;
    let status =
        expect_code(queries.get_lead(pb::GetLeadRequest { lead_id: "42".into() }).await, Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["lead_id"]);
    let status = expect_code(
        queries.find_leads(pb::FindLeadsRequest { page_size: -1, page_token: "x".into(), ..Default::default() }).await,
        Code::InvalidArgument,
    );
    assert_eq!(violated_fields(&status), ["page_size", "page_token"]);
    server.stop().await;
}

/// Sends raw bytes as a request body, bypassing the typed client.
async fn send_raw(server: &TestServer, path: &'static str, body: Vec<u8>) -> Status {
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.expect("ready");
    let result: Result<tonic::Response<pb::CaptureLeadResponse>, Status> =
        grpc.unary(Request::new(RawBytes(body)), http::uri::PathAndQuery::from_static(path), RawCodec).await;
    result.expect_err("raw request is refused")
}

async fn undecodable_and_oversized_requests(backend: Backend) {
    let server = TestServer::start(backend).await;
    // Field 5 (email), wire type 2, length 2, bytes that are not UTF-8.
    let invalid_utf8 = vec![0x2a, 0x02, 0xff, 0xfe];
    let status = send_raw(&server, "/leads.v1.LeadCommandService/CaptureLead", invalid_utf8).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("email"), "the message names the field: {}", status.message());
    let truncated = vec![0x2a, 0x10, b'a'];
    let status = send_raw(&server, "/leads.v1.LeadCommandService/CaptureLead", truncated).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let mut huge = capture("huge@example.com");
    huge.name = "x".repeat(2 * 1024 * 1024);
    let status = send_raw(&server, "/leads.v1.LeadCommandService/CaptureLead", huge.encode_to_vec()).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    // The server is still fine and nothing was appended.
    let lead = captured(&server, "after@example.com").await;
    let mut queries = server.queries().await;
    let got = queries.get_lead(pb::GetLeadRequest { lead_id: lead.id }).await.expect("get").into_inner();
    assert_eq!(got.events[0].position, 1);
    server.stop().await;
}

async fn unknown_lead_is_not_found(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut commands = server.commands().await;
    let missing = uuid::Uuid::now_v7().to_string();
    let status = expect_code(
        commands
            .assign_lead(pb::AssignLeadRequest {
                lead_id: missing.clone(),
                assignee: "rep-1".into(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    assert!(status.message().contains(&missing));
    let mut queries = server.queries().await;
    expect_code(queries.get_lead(pb::GetLeadRequest { lead_id: missing }).await, Code::NotFound);
    server.stop().await;
}

async fn stage_refusals_name_stage_and_command(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut commands = server.commands().await;
    let lead = captured(&server, "stage@example.com").await;
    let won = pb::CloseLeadRequest { lead_id: lead.id.clone(), outcome: pb::Outcome::Won as i32, ..Default::default() };
    let status = expect_code(commands.close_lead(won).await, Code::FailedPrecondition);
    assert!(status.message().contains("CAPTURED") && status.message().contains("CloseLead"), "{}", status.message());
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "STAGE_DOES_NOT_ALLOW");
    assert_eq!(metadata.get("stage").map(String::as_str), Some("CAPTURED"));
    let status = expect_code(
        commands
            .reject_lead(pb::RejectLeadRequest {
                lead_id: lead.id.clone(),
                reason: "no-budget".into(),
                ..Default::default()
            })
            .await,
        Code::FailedPrecondition,
    );
    assert!(status.message().contains("RejectLead"));
    // Accept without an assignee needs an owner.
    let status = expect_code(
        commands.accept_lead(pb::AcceptLeadRequest { lead_id: lead.id.clone(), ..Default::default() }).await,
        Code::InvalidArgument,
    );
    assert_eq!(violated_fields(&status), ["owner"]);
    let lost = pb::CloseLeadRequest {
        lead_id: lead.id.clone(),
        outcome: pb::Outcome::Lost as i32,
        lost_reason: "went-dark".into(),
        ..Default::default()
    };
    result_of(commands.close_lead(lost.clone()).await, |r| r.result);
    let status = expect_code(commands.close_lead(lost).await, Code::FailedPrecondition);
    assert!(status.message().contains("LOST"));
    server.stop().await;
}

async fn expected_version_mismatch_is_aborted(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut commands = server.commands().await;
    let lead = captured(&server, "occ@example.com").await;
    let assign = |version: u64, rep: &str| pb::AssignLeadRequest {
        lead_id: lead.id.clone(),
        expected_version: Some(version),
        assignee: rep.into(),
        ..Default::default()
    };
    qualify(&server, &lead, "rep-1").await.expect("qualify");
    let status = expect_code(commands.assign_lead(assign(1, "rep-2")).await, Code::Aborted);
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "VERSION_MISMATCH");
    assert_eq!(metadata.get("actual_version").map(String::as_str), Some("2"));
    let ok = result_of(commands.assign_lead(assign(2, "rep-2")).await, |r| r.result);
    assert_eq!(ok.version, 3);
    let status = expect_code(
        commands
            .capture_lead(pb::CaptureLeadRequest {
                expected_version: Some(0),
                lead_id: lead.id.clone(),
                ..capture("x@example.com")
            })
            .await,
        Code::Aborted,
    );
    assert!(status.message().contains("expected_version"));
    server.stop().await;
}

async fn idempotent_retries_replay_the_original_response(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut commands = server.commands().await;
    // No lead_id and no occurred_at: the retry must not get a second lead.
    let request = capture("retry@example.com");
    let first = result_of(commands.capture_lead(request.clone()).await, |r| r.result);
    let again = result_of(commands.capture_lead(request.clone()).await, |r| r.result);
    assert!(!first.replayed);
    assert_eq!(pb::CommandResult { replayed: true, ..first.clone() }, again, "a retry gets the original response");
    let changed = pb::CaptureLeadRequest { name: "Someone Else".into(), ..request.clone() };
    let status = expect_code(commands.capture_lead(changed).await, Code::AlreadyExists);
    assert_eq!(error_info(&status).0, "REQUEST_ID_REUSED");

    // A request id is scoped to the calling client.
    let mut other_client =
        Request::new(pb::CaptureLeadRequest { email: "other@example.com".into(), ..request.clone() });
    other_client.metadata_mut().insert("x-client-id", "crm-importer".parse().expect("ascii"));
    let other = result_of(commands.capture_lead(other_client).await, |r| r.result);
    assert_ne!(other.lead_id, first.lead_id);

    let lead = Lead { id: first.lead_id.clone() };
    let qualify_once =
        pb::QualifyLeadRequest { request_id: "q-1".into(), lead_id: lead.id.clone(), ..Default::default() };
    let q1 = result_of(commands.qualify_lead(qualify_once.clone()).await, |r| r.result);
    let q2 = result_of(commands.qualify_lead(qualify_once).await, |r| r.result);
    assert_eq!(pb::CommandResult { replayed: true, ..q1 }, q2);
    // Refused commands store no receipt: fixing the request and retrying works.
    let bad_accept = pb::AcceptLeadRequest { request_id: "a-1".into(), lead_id: lead.id.clone(), ..Default::default() };
    expect_code(commands.accept_lead(bad_accept.clone()).await, Code::InvalidArgument);
    let good_accept = pb::AcceptLeadRequest { owner: "rep-9".into(), ..bad_accept };
    result_of(commands.accept_lead(good_accept).await, |r| r.result);

    let mut queries = server.queries().await;
    let got = queries.get_lead(pb::GetLeadRequest { lead_id: lead.id }).await.expect("get").into_inner();
    assert_eq!(got.events.len(), 3, "retries appended nothing");
    assert_eq!(got.events[0].request_id, request.request_id);
    server.stop().await;
}

async fn open_email_and_external_ref_are_unique(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut commands = server.commands().await;
    let first = captured(&server, "dup@example.com").await;
    let status = expect_code(commands.capture_lead(capture("DUP@example.com")).await, Code::AlreadyExists);
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "OPEN_LEAD_WITH_EMAIL_EXISTS");
    assert_eq!(metadata.get("lead_id"), Some(&first.id));
    // Once the lead is closed, the person may come back as a new lead.
    commands
        .close_lead(pb::CloseLeadRequest {
            lead_id: first.id.clone(),
            outcome: pb::Outcome::Lost as i32,
            lost_reason: "no-budget".into(),
            ..Default::default()
        })
        .await
        .expect("close lost");
    let second = captured(&server, "dup@example.com").await;
    assert_ne!(second.id, first.id);

    let imported = pb::CaptureLeadRequest { external_ref: "sfdc-00Q1".into(), ..capture("imported@example.com") };
    let original = result_of(commands.capture_lead(imported).await, |r| r.result);
    let clash = pb::CaptureLeadRequest { external_ref: "sfdc-00Q1".into(), ..capture("someone@example.com") };
    let status = expect_code(commands.capture_lead(clash).await, Code::AlreadyExists);
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "EXTERNAL_REF_EXISTS");
    assert_eq!(metadata.get("lead_id"), Some(&original.lead_id));
    let reuse_id = pb::CaptureLeadRequest { lead_id: original.lead_id.clone(), ..capture("third@example.com") };
    let status = expect_code(commands.capture_lead(reuse_id).await, Code::AlreadyExists);
    assert_eq!(error_info(&status).0, "LEAD_EXISTS");
    let mut queries = server.queries().await;
    let found = queries
        .find_leads(pb::FindLeadsRequest { external_ref: "sfdc-00Q1".into(), ..Default::default() })
        .await
        .expect("find")
        .into_inner();
    assert_eq!(found.leads.len(), 1);
    assert_eq!(found.leads[0].lead_id, original.lead_id);
    server.stop().await;
}

async fn business_time_is_bounded(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut commands = server.commands().await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs() as i64;
    let at = |seconds: i64| Some(prost_types::Timestamp { seconds, nanos: 123_456_789 });
    let future = pb::CaptureLeadRequest { occurred_at: at(now + 600), ..capture("future@example.com") };
    let status = expect_code(commands.capture_lead(future).await, Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["occurred_at"]);
    // Imported history: a capture a year ago keeps its business time, to the microsecond.
    let year_ago = now - 365 * 24 * 3600;
    let imported = result_of(
        commands
            .capture_lead(pb::CaptureLeadRequest { occurred_at: at(year_ago), ..capture("past@example.com") })
            .await,
        |r| r.result,
    );
    let lead = Lead { id: imported.lead_id };
    let earlier =
        pb::QualifyLeadRequest { lead_id: lead.id.clone(), occurred_at: at(year_ago - 1), ..Default::default() };
    let status = expect_code(commands.qualify_lead(earlier).await, Code::FailedPrecondition);
    assert!(status.message().contains("occurred_at"));
    let mut queries = server.queries().await;
    let got = queries.get_lead(pb::GetLeadRequest { lead_id: lead.id }).await.expect("get").into_inner();
    assert_eq!(got.events[0].occurred_at, Some(prost_types::Timestamp { seconds: year_ago, nanos: 123_456_000 }));
    assert!(got.events[0].recorded_at.as_ref().is_some_and(|t| t.seconds >= now));
    server.stop().await;
}

async fn a_bad_command_fails_alone_in_its_batch(backend: Backend) {
    let server = TestServer::start(backend).await;
    let channel = server.channel().await;
    let lead = captured(&server, "batch@example.com").await;
    // 200 concurrent commands: good captures, duplicate emails, stale versions
    // and refused stages, all racing into the same commit batches.
    let mut tasks = Vec::new();
    for n in 0..200 {
        let mut commands = pb::lead_command_service_client::LeadCommandServiceClient::new(channel.clone());
        let lead_id = lead.id.clone();
        tasks.push(tokio::spawn(async move {
            let outcome = match n % 4 {
                0 => commands.capture_lead(capture(&format!("ok-{n}@example.com"))).await.map(|_| ()),
                1 => commands.capture_lead(capture("batch@example.com")).await.map(|_| ()),
                2 => commands
                    .assign_lead(pb::AssignLeadRequest {
                        lead_id,
                        expected_version: Some(99),
                        assignee: "rep".into(),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ()),
                _ => commands
                    .reject_lead(pb::RejectLeadRequest { lead_id, reason: "no-fit".into(), ..Default::default() })
                    .await
                    .map(|_| ()),
            };
            (n % 4, outcome.map_err(|s| s.code()))
        }));
    }
    for task in tasks {
        let (kind, outcome) = task.await.expect("task");
        let expected = match kind {
            0 => Ok(()),
            1 => Err(Code::AlreadyExists),
            2 => Err(Code::Aborted),
            _ => Err(Code::FailedPrecondition),
        };
        assert_eq!(outcome, expected, "command kind {kind}");
    }
    let mut queries = server.queries().await;
    let mut log =
        queries.read_log(pb::ReadLogRequest { from_position: 1, follow: false }).await.expect("read").into_inner();
    let mut positions = Vec::new();
    while let Some(item) = log.message().await.expect("stream") {
        positions.push(item.event.expect("event").position);
    }
    assert_eq!(positions, (1..=51).collect::<Vec<u64>>(), "exactly the 1 + 50 good captures, contiguous");
    server.stop().await;
}

async fn personal_data_is_never_stored_in_clear(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut commands = server.commands().await;
    let lead = captured(&server, "Grace.Hopper@Navy.example").await;
    qualify(&server, &lead, "rep-1").await.expect("qualify");
    commands
        .reject_lead(pb::RejectLeadRequest {
            lead_id: lead.id.clone(),
            reason: "no-budget".into(),
            note: "secret remark about Grace".into(),
            ..Default::default()
        })
        .await
        .expect("reject");
    qualify(&server, &lead, "rep-1").await.expect("qualify again");
    commands
        .record_feedback(pb::RecordFeedbackRequest {
            lead_id: lead.id.clone(),
            rating: 2,
            comment: "Grace was not ready".into(),
            ..Default::default()
        })
        .await
        .expect("feedback");
    let dump = server.database.dump().await;
    assert!(dump.contains("no-budget"), "the dump does hold the log: {dump}");
    for secret in
        ["Grace", "grace", "Hopper", "Navy", "navy", "Ada Lovelace", "7946", "secret remark", "asked for a demo"]
    {
        assert!(!dump.contains(secret), "{secret:?} is stored in clear:\n{dump}");
    }
    let mut queries = server.queries().await;
    let got = queries.get_lead(pb::GetLeadRequest { lead_id: lead.id.clone() }).await.expect("get").into_inner();
    assert_eq!(got.lead.expect("lead").email, "Grace.Hopper@Navy.example", "the owner of the key can read it");
    server.stop().await;
}

async fn read_log_streams_in_order_and_follows(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut queries = server.queries().await;
    let first = captured(&server, "log-1@example.com").await;
    qualify(&server, &first, "rep-1").await.expect("qualify");
    let mut follower =
        queries.read_log(pb::ReadLogRequest { from_position: 2, follow: true }).await.expect("follow").into_inner();
    let event = follower.message().await.expect("stream").expect("event").event.expect("event");
    assert_eq!((event.position, event.r#type.as_str(), event.version), (2, "qualified", 2));
    match event.payload {
        Some(pb::lead_event::Payload::Qualified(q)) => {
            assert_eq!(q.assignee, "rep-1");
            assert_eq!(q.note, "", "personal fields are not streamed");
        }
        other => panic!("unexpected payload {other:?}"),
    }
    captured(&server, "log-2@example.com").await;
    let next = tokio::time::timeout(std::time::Duration::from_secs(10), follower.message())
        .await
        .expect("a new event arrives promptly")
        .expect("stream")
        .expect("event")
        .event
        .expect("event");
    assert_eq!(next.position, 3);
    match next.payload {
        Some(pb::lead_event::Payload::Captured(c)) => {
            assert_eq!((c.email.as_str(), c.name.as_str(), c.phone.as_str()), ("", "", ""));
            assert_eq!(c.company, "Analytical Engines Ltd");
        }
        other => panic!("unexpected payload {other:?}"),
    }
    drop(follower);
    server.stop().await;
}

async fn feedback_needs_a_lead_sales_has_seen(backend: Backend) {
    let server = TestServer::start(backend).await;
    let mut commands = server.commands().await;
    let lead = captured(&server, "fb@example.com").await;
    let feedback = pb::RecordFeedbackRequest {
        lead_id: lead.id.clone(),
        rating: 4,
        reason_codes: vec!["good-fit".into()],
        ..Default::default()
    };
    let status = expect_code(commands.record_feedback(feedback.clone()).await, Code::FailedPrecondition);
    assert_eq!(error_info(&status).0, "NOT_SEEN_BY_SALES");
    qualify(&server, &lead, "rep-1").await.expect("qualify");
    let ok = result_of(commands.record_feedback(feedback.clone()).await, |r| r.result);
    assert_eq!((ok.version, ok.stage), (3, pb::Stage::Mql as i32), "feedback leaves the stage unchanged");
    server.stop().await;
}

/// Passes bytes through unchanged, to send requests the typed client could not.
#[derive(Debug, Clone)]
struct RawBytes(Vec<u8>);

#[derive(Debug, Clone, Default)]
struct RawCodec;

#[derive(Debug)]
struct RawEncoder;

impl tonic::codec::Encoder for RawEncoder {
    type Item = RawBytes;
    type Error = Status;
    fn encode(&mut self, item: RawBytes, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        use bytes_put::BufMut;
        dst.put_slice(&item.0);
        Ok(())
    }
}

mod bytes_put {
    pub use prost::bytes::BufMut;
}

impl tonic::codec::Codec for RawCodec {
    type Encode = RawBytes;
    type Decode = pb::CaptureLeadResponse;
    type Encoder = RawEncoder;
    type Decoder =
        <tonic_prost::ProstCodec<pb::CaptureLeadRequest, pb::CaptureLeadResponse> as tonic::codec::Codec>::Decoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstCodec::<pb::CaptureLeadRequest, pb::CaptureLeadResponse>::default().decoder()
    }
}

/// With a tiny commit queue, a burst is partly refused at once with
/// RESOURCE_EXHAUSTED instead of queueing without bound; whatever was
/// accepted is in the log, and only that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_commit_queue_answers_resource_exhausted() {
    let mut config = leadger_grpc::ServerConfig::default();
    config.committer.queue_capacity = 1;
    config.committer.max_batch = 1;
    let server = TestServer::start_with(Backend::Sqlite, config).await;
    let channel = server.channel().await;
    let mut tasks = Vec::new();
    for n in 0..64 {
        let mut commands = pb::lead_command_service_client::LeadCommandServiceClient::new(channel.clone());
        tasks
            .push(tokio::spawn(async move { commands.capture_lead(capture(&format!("burst-{n}@example.com"))).await }));
    }
    let (mut accepted, mut refused) = (0u64, 0u64);
    for task in tasks {
        match task.await.expect("task") {
            Ok(_) => accepted += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert_eq!(error_info(&status).0, "OVERLOADED");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "a burst of 64 overflows a queue of 1");
    assert_eq!(accepted + refused, 64);
    let mut queries = server.queries().await;
    let mut log =
        queries.read_log(pb::ReadLogRequest { from_position: 1, follow: false }).await.expect("read").into_inner();
    let mut logged = 0;
    while log.message().await.expect("stream").is_some() {
        logged += 1;
    }
    assert_eq!(logged, accepted, "exactly the accepted commands are in the log");
    server.stop().await;
}
