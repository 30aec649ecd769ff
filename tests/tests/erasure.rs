//! GDPR erasure by crypto-shredding, end to end: through the gRPC API on both
//! event logs, and down to the bytes of the database files, the WAL, the
//! server's log and the NATS store, with a real `leadger serve`, a real
//! `nats-server` and each database's own clean-up.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use leadger_store::{PostgresLog, SqliteLog};
use leadger_tests::nats::{NatsServer, stream_messages, wait_for_stream_length};
use leadger_tests::{Backend, TestDatabase, TestServer, leadger_binary, pb};
use sqlx::Connection;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use leadger_tests::on_both_backends;

on_both_backends!(erasure_through_the_api, shredded_key_bytes_leave_every_file);

/// A person no other test (or random bytes) could mention.
struct Person {
    email: String,
    name: String,
}

impl Person {
    fn unique() -> Self {
        let tag = uuid::Uuid::now_v7().simple().to_string();
        Self {
            email: format!("erasure.subject.{tag}@forget-me.example"),
            name: format!("Erasure Subject Quintessa {tag}"),
        }
    }

    fn capture(&self) -> pb::CaptureLeadRequest {
        pb::CaptureLeadRequest {
            request_id: uuid::Uuid::now_v7().to_string(),
            email: self.email.clone(),
            name: self.name.clone(),
            company: "Forgetful Industries".into(),
            phone: "+44 20 7946 0999".into(),
            source: "webinar".into(),
            campaign: "erasure-campaign".into(),
            persona: "dpo".into(),
            ..Default::default()
        }
    }
}

const NOTE: &str = "prefers calls on tuesdays, private number noted";

fn error_reason(status: &Status) -> String {
    status.get_details_error_info().map(|info| info.reason).unwrap_or_default()
}

fn expect_erased(response: Result<impl std::fmt::Debug, Status>, what: &str) {
    match response {
        Err(status) if status.code() == Code::FailedPrecondition => {
            assert_eq!(error_reason(&status), "LEAD_ERASED", "{what}: {status:?}")
        }
        other => panic!("{what}: expected FAILED_PRECONDITION LEAD_ERASED, got {other:?}"),
    }
}

/// Captures, qualifies (with a note) and accepts a lead; returns its id and
/// the last position.
async fn lead_in_sql(channel: tonic::transport::Channel, person: &Person) -> (String, u64) {
    let mut commands = pb::lead_command_service_client::LeadCommandServiceClient::new(channel);
    let captured = commands.capture_lead(person.capture()).await.expect("capture").into_inner().result.expect("result");
    let lead_id = captured.lead_id;
    commands
        .qualify_lead(pb::QualifyLeadRequest {
            lead_id: lead_id.clone(),
            score: Some(81),
            note: NOTE.into(),
            assignee: "rep-erasure".into(),
            ..Default::default()
        })
        .await
        .expect("qualify");
    let accepted = commands
        .accept_lead(pb::AcceptLeadRequest {
            lead_id: lead_id.clone(),
            owner: "ae-erasure".into(),
            ..Default::default()
        })
        .await
        .expect("accept")
        .into_inner()
        .result
        .expect("result");
    (lead_id, accepted.position)
}

fn erase(lead_id: &str) -> pb::EraseLeadRequest {
    pb::EraseLeadRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        lead_id: lead_id.to_string(),
        reason: "GDPR-4711".into(),
        ..Default::default()
    }
}

async fn funnel(server: &TestServer, min_position: u64) -> Vec<pb::FunnelGroup> {
    let filter = pb::AnalyticsFilter { min_position, ..Default::default() };
    let mut analytics = server.analytics().await;
    analytics.get_funnel(pb::GetFunnelRequest { filter: Some(filter) }).await.expect("funnel").into_inner().groups
}

fn assert_shows_erased(got: &pb::GetLeadResponse, person: &Person) {
    let lead = got.lead.as_ref().expect("lead");
    assert!(lead.erased && lead.erased_at.is_some(), "{lead:?}");
    assert_eq!((lead.email.as_str(), lead.name.as_str(), lead.phone.as_str()), ("", "", ""));
    assert_eq!(lead.stage, pb::Stage::Sql as i32, "erasure keeps the stage");
    assert_eq!(lead.version, 4);
    assert_eq!((lead.company.as_str(), lead.source.as_str()), ("Forgetful Industries", "webinar"));
    assert_eq!((lead.assignee.as_str(), lead.owner.as_str(), lead.score), ("rep-erasure", "ae-erasure", Some(81)));
    let types: Vec<&str> = got.events.iter().map(|e| e.r#type.as_str()).collect();
    assert_eq!(types, ["captured", "qualified", "accepted", "erased"], "the history stays");
    match &got.events[1].payload {
        Some(pb::lead_event::Payload::Qualified(q)) => {
            assert_eq!((q.score, q.note.as_str(), q.assignee.as_str()), (Some(81), "", "rep-erasure"))
        }
        other => panic!("qualified payload: {other:?}"),
    }
    match &got.events[3].payload {
        Some(pb::lead_event::Payload::Erased(e)) => assert_eq!(e.reason, "GDPR-4711"),
        other => panic!("erased payload: {other:?}"),
    }
    let shown = format!("{got:?}");
    for secret in [person.email.as_str(), person.name.as_str(), NOTE, "7946 0999"] {
        assert!(!shown.contains(secret), "{secret:?} is shown after the erasure");
    }
}

async fn erasure_through_the_api(backend: Backend) {
    let server = TestServer::start(backend).await;
    let person = Person::unique();
    let (lead_id, accepted_at) = lead_in_sql(server.channel().await, &person).await;
    let mut queries = server.queries().await;
    let before = queries.get_lead(pb::GetLeadRequest { lead_id: lead_id.clone() }).await.expect("get").into_inner();
    assert_eq!(before.lead.as_ref().expect("lead").email, person.email, "readable until erased");
    assert!(!before.lead.as_ref().expect("lead").erased);
    let funnel_before = funnel(&server, accepted_at).await;

    let mut commands = server.commands().await;
    let erased = commands.erase_lead(erase(&lead_id)).await.expect("erase").into_inner().result.expect("result");
    assert_eq!((erased.version, erased.stage), (4, pb::Stage::Sql as i32));

    let got = queries.get_lead(pb::GetLeadRequest { lead_id: lead_id.clone() }).await.expect("get").into_inner();
    assert_shows_erased(&got, &person);
    assert_eq!(funnel(&server, erased.position).await, funnel_before, "the erased lead keeps counting");

    // A rebuild of the read models from the log counts the lead the same way.
    let report = match backend {
        Backend::Sqlite => {
            leadger_projector::rebuild(&SqliteLog::connect(&server.database.url).await.expect("open")).await
        }
        Backend::Postgres => {
            leadger_projector::rebuild(&PostgresLog::connect(&server.database.url).await.expect("connect")).await
        }
    }
    .expect("rebuild");
    assert_eq!(funnel(&server, report.position).await, funnel_before, "a rebuild counts the erased lead too");

    // Every command after the erasure is refused, a second erasure too.
    expect_erased(commands.erase_lead(erase(&lead_id)).await, "a second erasure");
    let close = pb::CloseLeadRequest {
        lead_id: lead_id.clone(),
        outcome: pb::Outcome::Lost as i32,
        lost_reason: "went-dark".into(),
        ..Default::default()
    };
    expect_erased(commands.close_lead(close).await, "closing an erased lead");
    let feedback = pb::RecordFeedbackRequest {
        lead_id: lead_id.clone(),
        rating: 3,
        comment: "about the person".into(),
        ..Default::default()
    };
    expect_erased(commands.record_feedback(feedback).await, "feedback on an erased lead");

    // The address is free again: a new lead, found by it alone.
    let again = commands.capture_lead(person.capture()).await.expect("capture again").into_inner().result.expect("r");
    assert_ne!(again.lead_id, lead_id);
    let found = queries
        .find_leads(pb::FindLeadsRequest { email: person.email.clone(), ..Default::default() })
        .await
        .expect("find")
        .into_inner();
    assert_eq!(found.leads.iter().map(|l| l.lead_id.as_str()).collect::<Vec<_>>(), [again.lead_id.as_str()]);

    // ReadLog replays the whole log, the erased lead's events included.
    let mut log =
        queries.read_log(pb::ReadLogRequest { from_position: 1, follow: false }).await.expect("read log").into_inner();
    let mut of_erased = Vec::new();
    while let Some(item) = log.message().await.expect("read log item") {
        let event = item.event.expect("event");
        if event.lead_id == lead_id {
            of_erased.push((event.r#type.clone(), event.payload.is_some()));
        }
    }
    let expected: Vec<(String, bool)> =
        ["captured", "qualified", "accepted", "erased"].iter().map(|t| (t.to_string(), true)).collect();
    assert_eq!(of_erased, expected);

    let got = queries.get_lead(pb::GetLeadRequest { lead_id }).await.expect("get after rebuild").into_inner();
    assert_shows_erased(&got, &person);
    assert!(!server.database.dump().await.contains(&person.email));
    server.stop().await;
}

/// Where a test's database keeps its bytes.
struct DatabaseFiles {
    /// Files and directories to scan.
    paths: Vec<PathBuf>,
}

async fn database_files(database: &TestDatabase) -> DatabaseFiles {
    match database.backend {
        Backend::Sqlite => DatabaseFiles { paths: vec![database.dir.path().to_path_buf()] },
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&database.url).await.expect("connect");
            let (data_dir,): (String,) =
                sqlx::query_as("SELECT current_setting('data_directory')").fetch_one(&mut c).await.expect("data dir");
            let (oid,): (i64,) =
                sqlx::query_as("SELECT oid::bigint FROM pg_database WHERE datname = current_database()")
                    .fetch_one(&mut c)
                    .await
                    .expect("database oid");
            let data = PathBuf::from(data_dir);
            DatabaseFiles { paths: vec![data.join("base").join(oid.to_string()), data.join("pg_wal")] }
        }
    }
}

/// The files under `paths` (recursively) that contain `needle`.
fn files_containing(paths: &[PathBuf], needle: &[u8]) -> Vec<PathBuf> {
    fn walk(path: &Path, needle: &[u8], found: &mut Vec<PathBuf>) {
        let Ok(meta) = std::fs::symlink_metadata(path) else { return };
        if meta.is_dir() {
            let Ok(entries) = std::fs::read_dir(path) else { return };
            for entry in entries.flatten() {
                walk(&entry.path(), needle, found);
            }
        } else if meta.is_file()
            && let Ok(bytes) = std::fs::read(path)
            && bytes.windows(needle.len()).any(|w| w == needle)
        {
            found.push(path.to_path_buf());
        }
    }
    let mut found = Vec::new();
    for path in paths {
        walk(path, needle, &mut found);
    }
    found
}

async fn wrapped_key_of(database: &TestDatabase, lead_id: &str) -> String {
    match database.backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&database.url).await.expect("open");
            let (key,): (String,) = sqlx::query_as("SELECT wrapped_key FROM lead_keys WHERE lead_id = ?1")
                .bind(lead_id)
                .fetch_one(&mut c)
                .await
                .expect("the lead's wrapped key");
            key
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&database.url).await.expect("connect");
            let (key,): (String,) = sqlx::query_as("SELECT wrapped_key FROM lead_keys WHERE lead_id = $1::uuid")
                .bind(lead_id)
                .fetch_one(&mut c)
                .await
                .expect("the lead's wrapped key");
            key
        }
    }
}

/// Flushes what the database holds in memory to its files, so a scan sees it.
async fn flush(database: &TestDatabase) {
    if database.backend == Backend::Postgres {
        let mut c = sqlx::PgConnection::connect(&database.url).await.expect("connect");
        sqlx::query("CHECKPOINT").execute(&mut c).await.expect("checkpoint");
    }
}

/// The database's own clean-up after an erasure, as an operator runs it:
/// `leadger purge-erased`.
async fn clean_up(database: &TestDatabase) {
    let output = tokio::process::Command::new(leadger_binary!())
        .args(["purge-erased", "--database-url", &database.url])
        .current_dir(database.dir.path())
        .output()
        .await
        .expect("run leadger purge-erased");
    assert!(output.status.success(), "purge-erased: {}", String::from_utf8_lossy(&output.stderr));
}

/// `leadger serve` with the relay in process, logging at debug level to a file.
struct LoggedServer {
    addr: std::net::SocketAddr,
    child: tokio::process::Child,
}

impl LoggedServer {
    async fn start(database: &TestDatabase, nats: &NatsServer, log_file: &Path) -> Self {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", leadger_tests::free_port()).parse().expect("address");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log_file).expect("log file");
        let child = tokio::process::Command::new(leadger_binary!())
            .args(["serve", "--listen", &addr.to_string(), "--database-url", &database.url, "--nats-url", &nats.url()])
            .arg("--kek-file")
            .arg(&database.kek_file)
            .current_dir(database.dir.path())
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn leadger serve");
        leadger_tests::wait_until_serving(addr).await.expect("leadger serves");
        Self { addr, child }
    }

    async fn terminate(mut self) {
        let pid = self.child.id().expect("running");
        std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().expect("kill -TERM");
        let status =
            tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.expect("exits").expect("wait");
        assert!(status.success(), "leadger serve exited with {status}");
    }
}

async fn shredded_key_bytes_leave_every_file(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let nats = NatsServer::start().await;
    let logs = tempfile::tempdir().expect("log dir");
    let log_file = logs.path().join("leadger-serve.log");
    let server = LoggedServer::start(&database, &nats, &log_file).await;
    let person = Person::unique();
    let (lead_id, _) = lead_in_sql(leadger_tests::connect(server.addr).await, &person).await;
    let js = nats.jetstream().await;
    wait_for_stream_length(&js, 3, Duration::from_secs(20)).await.expect("the relay publishes the three events");

    let files = database_files(&database).await;
    let nats_store = nats.store_dir().to_path_buf();
    let wrapped = wrapped_key_of(&database, &lead_id).await;
    flush(&database).await;
    let found_before = files_containing(&files.paths, wrapped.as_bytes());
    assert!(!found_before.is_empty(), "the scan finds the wrapped key before the erasure (in {:?})", files.paths);
    let everywhere: Vec<PathBuf> = files.paths.iter().cloned().chain([log_file.clone(), nats_store.clone()]).collect();
    for secret in [&person.email, &person.name] {
        assert_eq!(files_containing(&everywhere, secret.as_bytes()), Vec::<PathBuf>::new(), "{secret} in clear");
    }

    let mut commands =
        pb::lead_command_service_client::LeadCommandServiceClient::new(leadger_tests::connect(server.addr).await);
    commands.erase_lead(erase(&lead_id)).await.expect("erase");
    wait_for_stream_length(&js, 4, Duration::from_secs(20)).await.expect("the erasure is published");
    let published = stream_messages(&js).await;
    let last = published.last().expect("a message");
    assert_eq!(last.subject, format!("leads.v1.events.erased.{lead_id}"));
    assert_eq!(last.header("ce-type"), Some("leads.v1.LeadErased"));

    clean_up(&database).await;
    for (what, secret) in [("email", person.email.as_str()), ("name", &person.name), ("wrapped key", &wrapped)] {
        assert_eq!(
            files_containing(&everywhere, secret.as_bytes()),
            Vec::<PathBuf>::new(),
            "the {what} is still stored after the erasure and clean-up"
        );
    }
    eprintln!(
        "erasure: on {backend:?}, the wrapped key was in {} of {} database files before the erasure and in none of \
         them, the server log or the NATS store after it; email and name never in clear",
        found_before.len(),
        files.paths.len()
    );
    let logged = std::fs::read_to_string(&log_file).expect("read the server log");
    assert!(logged.contains("lead erased"), "the server logged at debug level: {logged}");

    // After a restart and a rebuild of the read models, the lead is still erased.
    server.terminate().await;
    let rebuilt = tokio::process::Command::new(leadger_binary!())
        .args(["project", "--rebuild", "journeys", "--database-url", &database.url])
        .current_dir(database.dir.path())
        .output()
        .await
        .expect("run leadger project --rebuild");
    assert!(rebuilt.status.success(), "rebuild: {}", String::from_utf8_lossy(&rebuilt.stderr));
    let server = LoggedServer::start(&database, &nats, &log_file).await;
    let mut queries =
        pb::lead_query_service_client::LeadQueryServiceClient::new(leadger_tests::connect(server.addr).await);
    let got = queries.get_lead(pb::GetLeadRequest { lead_id }).await.expect("get after restart").into_inner();
    assert_shows_erased(&got, &person);
    server.terminate().await;
}
