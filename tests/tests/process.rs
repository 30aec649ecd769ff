//! The `leadger` binary as users run it: defaults, restarts, configuration
//! errors and graceful shutdown under load.

use std::collections::HashSet;
use std::time::Duration;

use leadger_tests::{Backend, ServerProcess, TestDatabase, leadger_binary, pb};
use pb::lead_command_service_client::LeadCommandServiceClient;
use pb::lead_query_service_client::LeadQueryServiceClient;
use tonic::transport::Channel;

async fn channel(server: &ServerProcess) -> Channel {
    leadger_tests::connect(server.addr).await
}

fn capture(email: String) -> pb::CaptureLeadRequest {
    pb::CaptureLeadRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        email,
        name: "Linus".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_flags_creates_its_sqlite_log_and_key_and_keeps_them() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Only --listen is given, to get a free port; everything else is default.
    let server = ServerProcess::start(&leadger_binary!(), dir.path(), &[]).await.expect("serve with defaults");
    let db = dir.path().join("leadger.db");
    let kek = dir.path().join("leadger.kek");
    assert!(db.exists(), "./leadger.db is created");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&kek).expect("kek").permissions().mode() & 0o777, 0o600);
    }
    let key_before = std::fs::read_to_string(&kek).expect("kek");
    let mut commands = LeadCommandServiceClient::new(channel(&server).await);
    let lead = commands
        .capture_lead(capture("linus@example.com".into()))
        .await
        .expect("capture")
        .into_inner()
        .result
        .expect("result");
    assert_eq!(server.terminate().await.expect("terminate").code(), Some(0), "SIGTERM exits 0");

    let again = ServerProcess::start(&leadger_binary!(), dir.path(), &[]).await.expect("restart");
    assert_eq!(std::fs::read_to_string(&kek).expect("kek"), key_before, "the key is reused, not replaced");
    let mut queries = LeadQueryServiceClient::new(channel(&again).await);
    let got =
        queries.get_lead(pb::GetLeadRequest { lead_id: lead.lead_id }).await.expect("get after restart").into_inner();
    assert_eq!(got.lead.expect("lead").email, "linus@example.com");
    assert_eq!(again.terminate().await.expect("terminate").code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_needs_a_shared_kek_file_and_bad_urls_are_explained() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = std::process::Command::new(leadger_binary!())
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", "postgres://nobody@127.0.0.1:1/none"])
        .current_dir(dir.path())
        .output()
        .expect("run leadger");
    assert_eq!(output.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("--kek-file"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = std::process::Command::new(leadger_binary!())
        .args(["serve", "--listen", "127.0.0.1:0", "--database-url", "mysql://x"])
        .current_dir(dir.path())
        .output()
        .expect("run leadger");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("sqlite: or postgres://"));
}

/// Writers keep sending while the server gets SIGTERM: every command that was
/// acknowledged is in the log after a restart, each exactly once.
async fn graceful_shutdown_under_load_loses_nothing_acknowledged(backend: Backend) {
    let database = TestDatabase::new(backend).await;
    let kek = database.kek_file.display().to_string();
    let args = ["--database-url", database.url.as_str(), "--kek-file", kek.as_str()];
    let server = ServerProcess::start(&leadger_binary!(), database.dir.path(), &args).await.expect("start");
    let shared = channel(&server).await;
    let mut writers = Vec::new();
    for writer in 0..16 {
        let mut commands = LeadCommandServiceClient::new(shared.clone());
        writers.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0.. {
                match commands.capture_lead(capture(format!("w{writer}-{n}@shutdown.example"))).await {
                    Ok(response) => acknowledged.push(response.into_inner().result.expect("result")),
                    Err(_) => return acknowledged,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(server.terminate().await.expect("terminate").code(), Some(0));
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("writer"));
    }
    assert!(acknowledged.len() > 16, "the load ran before the shutdown ({} commands)", acknowledged.len());

    let server = ServerProcess::start(&leadger_binary!(), database.dir.path(), &args).await.expect("restart");
    let mut queries = LeadQueryServiceClient::new(channel(&server).await);
    let mut log =
        queries.read_log(pb::ReadLogRequest { from_position: 1, follow: false }).await.expect("read").into_inner();
    let mut logged = Vec::new();
    while let Some(item) = log.message().await.expect("stream") {
        let event = item.event.expect("event");
        logged.push((event.position, event.lead_id));
    }
    let logged_leads: HashSet<&String> = logged.iter().map(|(_, lead)| lead).collect();
    assert_eq!(logged_leads.len(), logged.len(), "no lead was captured twice");
    assert_eq!(logged.iter().map(|(p, _)| *p).collect::<Vec<_>>(), (1..=logged.len() as u64).collect::<Vec<_>>());
    for result in &acknowledged {
        assert!(logged.contains(&(result.position, result.lead_id.clone())), "acknowledged {result:?} is in the log");
    }
    assert_eq!(server.terminate().await.expect("terminate").code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load_on_sqlite() {
    graceful_shutdown_under_load_loses_nothing_acknowledged(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_under_load_on_postgres() {
    graceful_shutdown_under_load_loses_nothing_acknowledged(Backend::Postgres).await;
}
