//! Faults leadger must survive, against the real binary and real databases:
//! SIGKILL under load (nothing acknowledged is lost, nothing is invented, a
//! retry is answered once), PostgreSQL restarting under a running server, a
//! deadline that passes before a command is committed, and overload.
//!
//! Each test prints a `faults:` summary line with its figures (for
//! docs/reliability.md).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use leadger_tests::faults::{PostgresCluster, peak_rss_kib};
use leadger_tests::{Backend, Rng, ServerProcess, TestDatabase, connect, leadger_binary, pb};
use pb::lead_analytics_service_client::LeadAnalyticsServiceClient;
use pb::lead_command_service_client::LeadCommandServiceClient;
use pb::lead_query_service_client::LeadQueryServiceClient;
use sqlx::Connection;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Longest wait for any one command, so a test cannot hang on one.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// One lifecycle command as sent, kept to be resent with its request_id.
#[derive(Debug, Clone)]
enum LeadCommand {
    Capture(pb::CaptureLeadRequest),
    Qualify(pb::QualifyLeadRequest),
    Accept(pb::AcceptLeadRequest),
    Close(pb::CloseLeadRequest),
}

impl LeadCommand {
    /// Lifecycle `n` of a new lead (its id chosen here, so a capture whose
    /// answer was lost can be recognised in the log): capture, qualify,
    /// accept, close won (even `n`) or lost (odd `n`).
    fn lifecycle(n: u64) -> Vec<LeadCommand> {
        let lead_id = uuid::Uuid::now_v7().to_string();
        let request_id = || uuid::Uuid::now_v7().to_string();
        let close = if n.is_multiple_of(2) {
            pb::CloseLeadRequest {
                outcome: pb::Outcome::Won as i32,
                amount_minor: 1000 * (1 + n as i64 % 7),
                currency: "EUR".into(),
                ..Default::default()
            }
        } else {
            pb::CloseLeadRequest {
                outcome: pb::Outcome::Lost as i32,
                lost_reason: "no-budget".into(),
                ..Default::default()
            }
        };
        vec![
            Self::Capture(pb::CaptureLeadRequest {
                request_id: request_id(),
                lead_id: lead_id.clone(),
                email: format!("lead-{n}-{lead_id}@faults.example"),
                name: "Grace Hopper".into(),
                source: ["web", "event", "partner"][n as usize % 3].into(),
                campaign: ["spring", "autumn"][n as usize % 2].into(),
                persona: "cto".into(),
                ..Default::default()
            }),
            Self::Qualify(pb::QualifyLeadRequest {
                request_id: request_id(),
                lead_id: lead_id.clone(),
                score: Some(50 + (n % 50) as i32),
                assignee: format!("sdr-{}", n % 4),
                ..Default::default()
            }),
            Self::Accept(pb::AcceptLeadRequest {
                request_id: request_id(),
                lead_id: lead_id.clone(),
                owner: format!("ae-{}", n % 3),
                ..Default::default()
            }),
            Self::Close(pb::CloseLeadRequest { request_id: request_id(), lead_id, ..close }),
        ]
    }

    fn request_id(&self) -> &str {
        match self {
            Self::Capture(r) => &r.request_id,
            Self::Qualify(r) => &r.request_id,
            Self::Accept(r) => &r.request_id,
            Self::Close(r) => &r.request_id,
        }
    }

    async fn send(
        &self,
        commands: &mut LeadCommandServiceClient<Channel>,
        timeout: Duration,
    ) -> Result<pb::CommandResult, Status> {
        let result = match self {
            Self::Capture(r) => commands.capture_lead(with_timeout(r.clone(), timeout)).await?.into_inner().result,
            Self::Qualify(r) => commands.qualify_lead(with_timeout(r.clone(), timeout)).await?.into_inner().result,
            Self::Accept(r) => commands.accept_lead(with_timeout(r.clone(), timeout)).await?.into_inner().result,
            Self::Close(r) => commands.close_lead(with_timeout(r.clone(), timeout)).await?.into_inner().result,
        };
        result.ok_or_else(|| Status::internal("a command answer without a result"))
    }
}

/// `message` with a gRPC deadline (sent as `grpc-timeout`).
fn with_timeout<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// A capture of a new lead with id `lead_id`.
fn capture(lead_id: &str) -> pb::CaptureLeadRequest {
    pb::CaptureLeadRequest {
        request_id: uuid::Uuid::now_v7().to_string(),
        lead_id: lead_id.to_string(),
        email: format!("{lead_id}@faults.example"),
        name: "Grace Hopper".into(),
        ..Default::default()
    }
}

/// The answer did not say whether the command was applied: the connection
/// broke, the server was unavailable, or the deadline passed.
fn outcome_unknown(status: &Status) -> bool {
    matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded)
}

/// The whole log, from position 1 to its head.
async fn read_whole_log(channel: &Channel) -> Vec<pb::LeadEvent> {
    let mut queries = LeadQueryServiceClient::new(channel.clone());
    let request = with_timeout(pb::ReadLogRequest { from_position: 1, follow: false }, Duration::from_secs(30));
    let mut stream = queries.read_log(request).await.expect("read the log").into_inner();
    let mut events = Vec::new();
    while let Some(item) = stream.message().await.expect("read the log stream") {
        events.push(item.event.expect("a log item has an event"));
    }
    events
}

/// Checks the log's shape: positions 1..n, each lead's versions 1..k in
/// position order, no request_id twice. Returns the events by request_id.
fn check_log(log: &[pb::LeadEvent]) -> HashMap<&str, &pb::LeadEvent> {
    let positions: Vec<u64> = log.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=log.len() as u64).collect::<Vec<_>>(), "positions are 1..n without holes");
    let mut versions: HashMap<&str, u64> = HashMap::new();
    let mut by_request = HashMap::new();
    for event in log {
        let version = versions.entry(event.lead_id.as_str()).or_default();
        *version += 1;
        assert_eq!(event.version, *version, "versions of lead {} are contiguous from 1: {event:?}", event.lead_id);
        assert!(!event.request_id.is_empty(), "every command carried a request_id: {event:?}");
        if let Some(first) = by_request.insert(event.request_id.as_str(), event) {
            panic!("request {} is in the log twice: at {} and {}", event.request_id, first.position, event.position);
        }
    }
    by_request
}

/// What one writer saw.
#[derive(Default)]
struct WriterRecord {
    acknowledged: Vec<(LeadCommand, pb::CommandResult)>,
    /// In flight when the server died, or sent while it was down.
    unknown: Vec<LeadCommand>,
    refused: Vec<(LeadCommand, Status)>,
}

/// The server writers should talk to: its generation (0, then one more per
/// restart) and a channel to it; `None` tells the writers to stop.
type CurrentServer = watch::Receiver<Option<(u32, Channel)>>;

/// Runs lifecycles on the current server until told to stop. A lead whose
/// command got no definite answer is left there (the command is retried
/// after the last restart) and the writer waits for the next server.
async fn lifecycle_writer(writer: u64, mut current: CurrentServer) -> WriterRecord {
    let mut record = WriterRecord::default();
    for n in 0.. {
        let Some((generation, channel)) = current.borrow_and_update().clone() else { break };
        let mut commands = LeadCommandServiceClient::new(channel);
        for command in LeadCommand::lifecycle(writer * 1_000_000 + n) {
            if current.borrow().is_none() {
                return record;
            }
            match command.send(&mut commands, COMMAND_TIMEOUT).await {
                Ok(result) => record.acknowledged.push((command, result)),
                Err(status) if outcome_unknown(&status) => {
                    record.unknown.push(command);
                    let _ = current.wait_for(|s| s.as_ref().is_none_or(|(g, _)| *g > generation)).await;
                    break;
                }
                Err(status) => {
                    record.refused.push((command, status));
                    break;
                }
            }
        }
    }
    record
}

/// The analytics read models, as of `position`, without the answer time.
#[derive(Debug, PartialEq)]
struct ReadModels {
    funnel: Vec<pb::GetFunnelResponse>,
    conversion: Vec<pb::GetConversionRatesResponse>,
    quality: Vec<pb::GetLeadQualityResponse>,
}

async fn read_models(channel: &Channel, position: u64) -> ReadModels {
    let mut analytics = LeadAnalyticsServiceClient::new(channel.clone());
    let mut models = ReadModels { funnel: Vec::new(), conversion: Vec::new(), quality: Vec::new() };
    // The server waits until its projector applied `position` (min_position).
    let timeout = Duration::from_secs(20);
    for group_by in [pb::GroupBy::Unspecified, pb::GroupBy::Source, pb::GroupBy::Campaign] {
        let filter =
            || Some(pb::AnalyticsFilter { group_by: group_by as i32, min_position: position, ..Default::default() });
        let mut funnel = analytics
            .get_funnel(with_timeout(pb::GetFunnelRequest { filter: filter() }, timeout))
            .await
            .expect("funnel")
            .into_inner();
        funnel.as_of_time = None;
        let mut conversion = analytics
            .get_conversion_rates(with_timeout(pb::GetConversionRatesRequest { filter: filter() }, timeout))
            .await
            .expect("conversion rates")
            .into_inner();
        conversion.as_of_time = None;
        let mut quality = analytics
            .get_lead_quality(with_timeout(pb::GetLeadQualityRequest { filter: filter() }, timeout))
            .await
            .expect("lead quality")
            .into_inner();
        quality.as_of_time = None;
        assert_eq!(
            (funnel.as_of_position, conversion.as_of_position, quality.as_of_position),
            (position, position, position),
            "the read models caught up with the log head"
        );
        models.funnel.push(funnel);
        models.conversion.push(conversion);
        models.quality.push(quality);
    }
    models
}

fn kills_from_env() -> u32 {
    std::env::var("LEADGER_TEST_KILLS").ok().and_then(|n| n.parse().ok()).unwrap_or(20)
}

/// 16 writers run lifecycles while the server is SIGKILLed at random moments
/// and restarted on the same database, again and again. Afterwards the log
/// holds every acknowledged command once at its position, nothing that was
/// not sent, no holes; every command left without an answer gets one when
/// retried, without a duplicate; and the read models equal a full rebuild.
async fn crash_during_load(backend: Backend, seed: u64) {
    let started = Instant::now();
    let kills = kills_from_env();
    let seed = std::env::var("LEADGER_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(seed);
    let database = TestDatabase::new(backend).await;
    let kek = database.kek_file.display().to_string();
    let args = ["--database-url", database.url.as_str(), "--kek-file", kek.as_str()];
    let binary = leadger_binary!();
    let start = || ServerProcess::start(&binary, database.dir.path(), &args);

    let mut server = start().await.expect("start");
    let (current_tx, current) = watch::channel(Some((0, connect(server.addr).await)));
    let writers: Vec<_> = (0..16).map(|w| tokio::spawn(lifecycle_writer(w, current.clone()))).collect();
    let mut rng = Rng(seed);
    for generation in 1..=kills {
        // The interval between faults is the point of the test, not a wait
        // for readiness (restarts poll the health service).
        tokio::time::sleep(Duration::from_millis(50 + rng.below(351))).await;
        server.kill().await.expect("SIGKILL the server");
        server = start().await.unwrap_or_else(|e| panic!("restart {generation} after SIGKILL: {e:#}"));
        current_tx.send_replace(Some((generation, connect(server.addr).await)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    current_tx.send_replace(None);
    let mut record = WriterRecord::default();
    for writer in writers {
        let done = tokio::time::timeout(Duration::from_secs(30), writer).await.expect("writers stop").expect("writer");
        record.acknowledged.extend(done.acknowledged);
        record.unknown.extend(done.unknown);
        record.refused.extend(done.refused);
    }
    assert!(record.acknowledged.len() > 100, "the load ran ({} acknowledged)", record.acknowledged.len());
    assert!(
        record.refused.is_empty(),
        "no command of a lifecycle is refused: {:?}",
        record.refused.iter().map(|(_, s)| s).take(5).collect::<Vec<_>>()
    );

    let channel = connect(server.addr).await;
    let log = read_whole_log(&channel).await;
    let by_request = check_log(&log);
    for (command, result) in &record.acknowledged {
        let event = by_request
            .get(command.request_id())
            .unwrap_or_else(|| panic!("acknowledged {result:?} of {command:?} is in the log"));
        assert_eq!(
            (event.position, event.version, event.lead_id.as_str()),
            (result.position, result.version, result.lead_id.as_str()),
            "acknowledged {command:?} is in the log where its answer said"
        );
    }
    let sent: HashSet<&str> = record
        .acknowledged
        .iter()
        .map(|(c, _)| c.request_id())
        .chain(record.unknown.iter().map(LeadCommand::request_id))
        .collect();
    for event in &log {
        assert!(sent.contains(event.request_id.as_str()), "every logged event was sent: {event:?}");
    }

    // Retry every command whose answer was lost, with its request_id.
    let head = log.len() as u64;
    let mut commands = LeadCommandServiceClient::new(channel.clone());
    let mut logged_before_retry = 0;
    for command in &record.unknown {
        let result = command
            .send(&mut commands, COMMAND_TIMEOUT)
            .await
            .unwrap_or_else(|s| panic!("retry of {command:?} gets a definite answer: {s:?}"));
        match by_request.get(command.request_id()) {
            Some(event) => {
                logged_before_retry += 1;
                assert_eq!(
                    (result.position, result.version),
                    (event.position, event.version),
                    "the retry of {command:?}, already applied, replays its result"
                );
            }
            None => assert!(result.position > head, "the retry of {command:?} is applied now: {result:?}"),
        }
    }
    let log = read_whole_log(&channel).await;
    check_log(&log);
    assert_eq!(log.len(), record.acknowledged.len() + record.unknown.len(), "one event per command, none twice");
    let head = log.len() as u64;

    // The read models the server kept through the crashes equal a rebuild.
    let live = read_models(&channel, head).await;
    let leads = log.iter().filter(|e| e.r#type == "captured").count() as u64;
    let counted: u64 = live.funnel[0].groups.iter().flat_map(|g| &g.current).map(|c| c.leads).sum();
    assert_eq!(counted, leads, "the funnel counts every captured lead once");
    assert_eq!(server.terminate().await.expect("terminate").code(), Some(0));
    let rebuild = std::process::Command::new(&binary)
        .args(["project", "--rebuild", "--database-url", database.url.as_str()])
        .env("RUST_LOG", "warn")
        .output()
        .expect("run leadger project --rebuild");
    assert!(rebuild.status.success(), "rebuild: {}", String::from_utf8_lossy(&rebuild.stderr));
    let server = start().await.expect("start after the rebuild");
    let rebuilt = read_models(&connect(server.addr).await, head).await;
    assert_eq!(live, rebuilt, "read models kept through {kills} crashes equal a full rebuild");
    assert_eq!(server.terminate().await.expect("terminate").code(), Some(0));

    eprintln!(
        "faults: crash during load on {backend:?} (seed {seed}): {kills} SIGKILLs survived, {} acknowledged, {} in flight \
         ({logged_before_retry} of them applied before the retry), {} events, {leads} leads, {:.1} s",
        record.acknowledged.len(),
        record.unknown.len(),
        log.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_load_on_sqlite() {
    crash_during_load(Backend::Sqlite, 0x5EED_0001).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_during_load_on_postgres() {
    crash_during_load(Backend::Postgres, 0x5EED_0002).await;
}

/// One command of a writer that keeps sending.
struct Attempt {
    sent: Instant,
    latency: Duration,
    result: Result<pb::CommandResult, Status>,
}

/// Polls `condition` every 10 ms until it holds, or panics after `deadline`.
async fn wait_until(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !condition() {
        assert!(Instant::now() < until, "{what} within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// PostgreSQL stops under a running server and starts again: meanwhile
/// commands fail fast with UNAVAILABLE (not a hang until the deadline), and
/// once it is back they succeed again without restarting leadger; nothing
/// acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_under_load_fails_fast_and_recovers() {
    const DEADLINE: Duration = Duration::from_secs(3);
    let cluster = PostgresCluster::start_new().expect("a PostgreSQL cluster of the test's own");
    let dir = tempfile::tempdir().expect("temp dir");
    let kek = dir.path().join("leadger.kek");
    leadger_store::Vault::open(&kek, leadger_store::MissingKek::Create).expect("create a KEK");
    let (url, kek) = (cluster.url(), kek.display().to_string());
    let args = ["--database-url", url.as_str(), "--kek-file", kek.as_str()];
    let server = ServerProcess::start(&leadger_binary!(), dir.path(), &args).await.expect("start");
    let channel = connect(server.addr).await;

    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let (stop_tx, stop) = watch::channel(false);
    let mut writers = Vec::new();
    for _ in 0..8 {
        let (mut commands, attempts, stop) =
            (LeadCommandServiceClient::new(channel.clone()), attempts.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            while !*stop.borrow() {
                let lead_id = uuid::Uuid::now_v7().to_string();
                let sent = Instant::now();
                let result = LeadCommand::Capture(capture(&lead_id)).send(&mut commands, DEADLINE).await;
                let failed = result.is_err();
                attempts.lock().expect("attempts").push(Attempt { sent, latency: sent.elapsed(), result });
                if failed {
                    // A client's backoff, so the outage is not a busy loop.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    let successes = |since: Instant| {
        let attempts = attempts.lock().expect("attempts");
        attempts.iter().filter(|a| a.sent >= since && a.result.is_ok()).count()
    };
    let began = Instant::now();
    wait_until("50 commands succeed before the outage", Duration::from_secs(20), || successes(began) >= 50).await;

    cluster.stop().expect("stop PostgreSQL");
    let stopped = Instant::now();
    // The outage lasts longer than a command's deadline, so a command that
    // hangs instead of failing shows as DEADLINE_EXCEEDED.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let restarting = Instant::now();
    cluster.start().expect("start PostgreSQL again on the same port");
    let restarted = Instant::now();
    wait_until("a command succeeds after PostgreSQL is back", Duration::from_secs(30), || successes(restarted) > 0)
        .await;
    stop_tx.send_replace(true);
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(10), writer).await.expect("writers stop").expect("writer");
    }

    let attempts = std::mem::take(&mut *attempts.lock().expect("attempts"));
    // Commands sent while PostgreSQL is down, at least 2 s before it starts again.
    let during: Vec<&Attempt> =
        attempts.iter().filter(|a| a.sent >= stopped && a.sent + Duration::from_secs(2) <= restarting).collect();
    assert!(during.len() >= 8, "commands were sent during the outage ({})", during.len());
    let wrong: Vec<String> = during
        .iter()
        .filter(|a| !matches!(&a.result, Err(s) if s.code() == Code::Unavailable))
        .map(|a| format!("{:?} after {:?}", a.result.as_ref().map_err(|s| (s.code(), s.message())), a.latency))
        .collect();
    assert!(
        wrong.is_empty(),
        "every command during the outage fails with UNAVAILABLE: {} did not: {wrong:?}",
        wrong.len()
    );
    let worst = during.iter().map(|a| a.latency).max().unwrap_or_default();
    assert!(
        worst < DEADLINE - Duration::from_millis(500),
        "a command fails well within its deadline while PostgreSQL is down (worst {worst:?})"
    );
    let first_success = attempts
        .iter()
        .filter(|a| a.sent >= restarted && a.result.is_ok())
        .map(|a| a.sent + a.latency)
        .min()
        .expect("a success after the restart");
    let recovery = first_success - restarted;
    assert!(recovery < Duration::from_secs(10), "commands succeed within 10 s of PostgreSQL's return ({recovery:?})");

    let log = read_whole_log(&channel).await;
    check_log(&log);
    let logged: HashSet<(u64, &str)> = log.iter().map(|e| (e.position, e.lead_id.as_str())).collect();
    let acknowledged: Vec<&pb::CommandResult> = attempts.iter().filter_map(|a| a.result.as_ref().ok()).collect();
    for result in &acknowledged {
        assert!(logged.contains(&(result.position, result.lead_id.as_str())), "acknowledged {result:?} is in the log");
    }
    assert_eq!(server.terminate().await.expect("terminate").code(), Some(0), "the same server ran throughout");
    eprintln!(
        "faults: PostgreSQL restart under load: {} commands failed during the {:.1} s outage, all UNAVAILABLE, worst \
         latency {} ms (deadline {} ms); first success {} ms after PostgreSQL was back (its start took {} ms); \
         {} acknowledged, all in the log of {} events",
        during.len(),
        (restarting - stopped).as_secs_f64(),
        worst.as_millis(),
        DEADLINE.as_millis(),
        recovery.as_millis(),
        (restarted - restarting).as_millis(),
        acknowledged.len(),
        log.len()
    );
}

/// A command whose deadline passes while it waits for a commit is not
/// applied. Deterministic on SQLite: the test holds the database's write
/// lock, so the committer's batch (the one command A, `--max-batch 1`) waits
/// for it; command B queues behind A and its deadline passes; once the lock
/// is released A commits and B is left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_deadline_passed_in_the_queue_is_not_applied() {
    let database = TestDatabase::new(Backend::Sqlite).await;
    let kek = database.kek_file.display().to_string();
    let args = ["--database-url", database.url.as_str(), "--kek-file", kek.as_str(), "--max-batch", "1"];
    let server = ServerProcess::start(&leadger_binary!(), database.dir.path(), &args).await.expect("start");
    let channel = connect(server.addr).await;

    let mut lock = sqlx::SqliteConnection::connect(&database.url).await.expect("open the database");
    sqlx::query("BEGIN IMMEDIATE").execute(&mut lock).await.expect("take the write lock");
    let (a, b) = (uuid::Uuid::now_v7().to_string(), uuid::Uuid::now_v7().to_string());
    let mut commands = LeadCommandServiceClient::new(channel.clone());
    let command_a = tokio::spawn({
        let (mut commands, a) = (commands.clone(), a.clone());
        async move { commands.capture_lead(with_timeout(capture(&a), Duration::from_secs(30))).await }
    });
    // Ordering, not readiness: A reaches the committer (which takes it at
    // once into a batch of one that blocks on the lock) before B is sent.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = Instant::now();
    let refused = commands.capture_lead(with_timeout(capture(&b), Duration::from_millis(300))).await;
    let b_latency = sent.elapsed();
    let status = refused.expect_err("B cannot commit while the write lock is held");
    // The server answers DEADLINE_EXCEEDED when the deadline passes (tonic's
    // grpc-timeout layer, which drops the handler and so B's reply channel);
    // tonic's client runs the same timer and reports its own expiry as
    // CANCELLED "Timeout expired", whichever comes first.
    let deadline_passed = status.code() == Code::DeadlineExceeded
        || (status.code() == Code::Cancelled && status.message() == "Timeout expired");
    assert!(deadline_passed, "B's deadline passed: {status:?}");
    assert!(b_latency < Duration::from_secs(2), "B's deadline is kept ({b_latency:?})");
    assert!(!command_a.is_finished(), "A waits for the lock");

    sqlx::query("COMMIT").execute(&mut lock).await.expect("release the write lock");
    let a_result = tokio::time::timeout(Duration::from_secs(20), command_a)
        .await
        .expect("A finishes")
        .expect("A's task")
        .expect("A commits once the lock is released")
        .into_inner()
        .result
        .expect("result");
    assert_eq!(a_result.lead_id, a);
    // The committer takes jobs in order: once C committed, B's job was dealt with.
    let c = uuid::Uuid::now_v7().to_string();
    commands.capture_lead(with_timeout(capture(&c), COMMAND_TIMEOUT)).await.expect("C commits");

    let log = read_whole_log(&channel).await;
    check_log(&log);
    let leads: Vec<&str> = log.iter().map(|e| e.lead_id.as_str()).collect();
    assert_eq!(leads, [a.as_str(), c.as_str()], "A and C are in the log, B is not");
    let mut queries = LeadQueryServiceClient::new(channel);
    let missing = queries.get_lead(pb::GetLeadRequest { lead_id: b }).await.expect_err("B does not exist");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
    assert_eq!(server.terminate().await.expect("terminate").code(), Some(0));
    eprintln!("faults: deadline: B answered {:?} after {} ms and not applied", status.code(), b_latency.as_millis());
}

/// Flooded with commands, a server with a small commit queue refuses the
/// excess at once with RESOURCE_EXHAUSTED, keeps serving, and its memory
/// stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_quickly_with_bounded_memory() {
    const FLOOD: Duration = Duration::from_secs(3);
    const MAX_PEAK_RSS_KIB: u64 = 200 * 1024;
    let database = TestDatabase::new(Backend::Sqlite).await;
    let kek = database.kek_file.display().to_string();
    let args = [
        "--database-url",
        database.url.as_str(),
        "--kek-file",
        kek.as_str(),
        "--queue-capacity",
        "8",
        "--max-batch",
        "4",
    ];
    let server = ServerProcess::start(&leadger_binary!(), database.dir.path(), &args).await.expect("start");
    let pid = server.id().expect("server pid");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let channel = connect(server.addr).await;
        for _ in 0..32 {
            let mut commands = LeadCommandServiceClient::new(channel.clone());
            tasks.spawn(async move {
                let until = Instant::now() + FLOOD;
                let mut answers: Vec<(Result<(), Code>, Duration)> = Vec::new();
                while Instant::now() < until {
                    let lead_id = uuid::Uuid::now_v7().to_string();
                    let sent = Instant::now();
                    let answer = commands.capture_lead(with_timeout(capture(&lead_id), COMMAND_TIMEOUT)).await;
                    answers.push((answer.map(drop).map_err(|s| s.code()), sent.elapsed()));
                }
                answers
            });
        }
    }
    let answers: Vec<(Result<(), Code>, Duration)> = tasks.join_all().await.into_iter().flatten().collect();
    let peak_rss = peak_rss_kib(pid).expect("the server's peak RSS");

    let accepted = answers.iter().filter(|(a, _)| a.is_ok()).count();
    let refused: Vec<Duration> =
        answers.iter().filter(|(a, _)| *a == Err(Code::ResourceExhausted)).map(|(_, latency)| *latency).collect();
    let other: Vec<&Code> =
        answers.iter().filter_map(|(a, _)| a.as_ref().err()).filter(|c| **c != Code::ResourceExhausted).collect();
    assert!(other.is_empty(), "answers are OK or RESOURCE_EXHAUSTED, not {other:?}");
    assert!(accepted > 0, "commands are still accepted under overload");
    assert!(refused.len() > 100, "the flood overflows a queue of 8 ({} refused)", refused.len());
    let mut sorted = refused.clone();
    sorted.sort();
    let worst = sorted.last().copied().unwrap_or_default();
    let p99 = sorted[sorted.len() * 99 / 100];
    assert!(worst < Duration::from_secs(1), "RESOURCE_EXHAUSTED comes back at once (worst {worst:?})");
    assert!(peak_rss < MAX_PEAK_RSS_KIB, "peak RSS {peak_rss} KiB stays under {MAX_PEAK_RSS_KIB} KiB");

    // Still serving once the flood is over.
    let mut commands = LeadCommandServiceClient::new(connect(server.addr).await);
    let lead_id = uuid::Uuid::now_v7().to_string();
    commands.capture_lead(with_timeout(capture(&lead_id), COMMAND_TIMEOUT)).await.expect("a capture after the flood");
    assert_eq!(server.terminate().await.expect("terminate").code(), Some(0));
    eprintln!(
        "faults: overload (queue 8, batch 4, 128 clients, {} s): {accepted} accepted, {} RESOURCE_EXHAUSTED (p99 {} ms, \
         worst {} ms), server peak RSS {:.1} MiB",
        FLOOD.as_secs(),
        refused.len(),
        p99.as_millis(),
        worst.as_millis(),
        peak_rss as f64 / 1024.0
    );
}
