//! The gap test: a reader tailing the log by position must see every event
//! exactly once, in order, while many writers in two server processes append
//! to the same PostgreSQL. Its control shows the same reader and checker do
//! catch the classic bug of sequence-based stores: a position committed after
//! a higher one is skipped for good.

use std::collections::HashSet;
use std::time::Duration;

use leadger_tests::{Backend, ServerProcess, TestDatabase, TestServer, connect, leadger_binary, pb};
use pb::lead_command_service_client::LeadCommandServiceClient;
use pb::lead_query_service_client::LeadQueryServiceClient;
use sqlx::Connection;
use tokio::sync::mpsc;
use tonic::transport::Channel;

const WRITERS_PER_SERVER: usize = 16;
const LEADS_PER_WRITER: usize = 60;

/// Checks what a tailing reader saw: exactly positions 1..=last, in order.
fn check_gapless(seen: &[u64], last: u64) -> Result<(), String> {
    let mut expected = 1;
    for &position in seen {
        if position != expected {
            return Err(format!(
                "expected position {expected}, the reader got {position}: position {expected} was skipped"
            ));
        }
        expected += 1;
    }
    if expected != last + 1 {
        return Err(format!("the reader stopped at {} of {last}", expected - 1));
    }
    Ok(())
}

/// Tails the log through `ReadLog` with `follow`, forwarding positions.
async fn tail(channel: Channel) -> mpsc::UnboundedReceiver<u64> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut queries = LeadQueryServiceClient::new(channel);
    let mut stream = queries
        .read_log(pb::ReadLogRequest { from_position: 1, follow: true })
        .await
        .expect("follow the log")
        .into_inner();
    tokio::spawn(async move {
        while let Ok(Some(item)) = stream.message().await {
            if tx.send(item.event.expect("event").position).is_err() {
                return;
            }
        }
    });
    rx
}

/// Collects positions until `last` arrived or nothing came for 3 seconds.
async fn read_until(positions: &mut mpsc::UnboundedReceiver<u64>, seen: &mut Vec<u64>, last: u64) {
    while seen.last() < Some(&last) {
        match tokio::time::timeout(Duration::from_secs(3), positions.recv()).await {
            Ok(Some(position)) => seen.push(position),
            _ => return,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_many_writers_and_a_tailing_reader_see_every_position_once() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let kek = database.kek_file.display().to_string();
    let args = ["--database-url", database.url.as_str(), "--kek-file", kek.as_str()];
    let first = ServerProcess::start(&leadger_binary!(), database.dir.path(), &args).await.expect("first server");
    let second = ServerProcess::start(&leadger_binary!(), database.dir.path(), &args).await.expect("second server");
    let channels = [connect(first.addr).await, connect(second.addr).await];
    let mut positions = tail(channels[0].clone()).await;

    let mut writers = Vec::new();
    for (server, channel) in channels.iter().enumerate() {
        for writer in 0..WRITERS_PER_SERVER {
            let mut commands = LeadCommandServiceClient::new(channel.clone());
            writers.push(tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                for n in 0..LEADS_PER_WRITER {
                    let request = pb::CaptureLeadRequest {
                        request_id: uuid::Uuid::now_v7().to_string(),
                        email: format!("s{server}-w{writer}-{n}@gap.example"),
                        ..Default::default()
                    };
                    let result =
                        commands.capture_lead(request).await.expect("capture").into_inner().result.expect("result");
                    acknowledged.push(result.position);
                }
                acknowledged
            }));
        }
    }
    let mut acknowledged = Vec::new();
    for writer in writers {
        acknowledged.extend(writer.await.expect("writer"));
    }
    let total = (2 * WRITERS_PER_SERVER * LEADS_PER_WRITER) as u64;
    assert_eq!(acknowledged.len() as u64, total);
    assert_eq!(
        acknowledged.iter().copied().collect::<HashSet<_>>().len() as u64,
        total,
        "each command got its own position"
    );
    assert_eq!(acknowledged.iter().max(), Some(&total));

    let mut seen = Vec::new();
    read_until(&mut positions, &mut seen, total).await;
    check_gapless(&seen, total).expect("the tailing reader saw every position once, in order");
    assert_eq!(first.terminate().await.expect("stop").code(), Some(0));
    assert_eq!(second.terminate().await.expect("stop").code(), Some(0));
}

/// The control: positions from a sequence, committed out of order, with the
/// same reader and checker. Position 1 commits after position 2 was read, so
/// the reader never sees it, and the checker must say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_a_sequence_based_writer_skipping_an_event() {
    let server = TestServer::start(Backend::Postgres).await;
    let url = server.database.url.clone();
    let mut positions = tail(server.channel().await).await;
    let mut setup = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query("CREATE SEQUENCE broken_positions").execute(&mut setup).await.expect("sequence");

    let insert = "INSERT INTO events (position, event_id, stream_id, version, event_type, schema_version, payload, metadata, occurred_at_us, recorded_at_us)
                  VALUES (nextval('broken_positions'), $1, $2, 1, 'lead.captured', 1, '{}', '{\"client_id\":\"broken-writer\"}', 0, 0)
                  RETURNING position";
    let mut slow = sqlx::PgConnection::connect(&url).await.expect("connect");
    let mut slow_tx = slow.begin().await.expect("begin");
    let (slow_position,): (i64,) = sqlx::query_as(insert)
        .bind(uuid::Uuid::now_v7())
        .bind(uuid::Uuid::now_v7())
        .fetch_one(&mut *slow_tx)
        .await
        .expect("insert");
    let (fast_position,): (i64,) = sqlx::query_as(insert)
        .bind(uuid::Uuid::now_v7())
        .bind(uuid::Uuid::now_v7())
        .fetch_one(&mut setup)
        .await
        .expect("insert");
    assert_eq!((slow_position, fast_position), (1, 2));
    let mut seen = Vec::new();
    read_until(&mut positions, &mut seen, 2).await;
    assert_eq!(seen, [2], "the reader moved past the uncommitted position 1");
    slow_tx.commit().await.expect("commit the slow writer");
    sqlx::query_as::<_, (i64,)>(insert)
        .bind(uuid::Uuid::now_v7())
        .bind(uuid::Uuid::now_v7())
        .fetch_one(&mut setup)
        .await
        .expect("insert");
    read_until(&mut positions, &mut seen, 3).await;

    let verdict = check_gapless(&seen, 3);
    assert_eq!(verdict, Err("expected position 1, the reader got 2: position 1 was skipped".to_string()));
    server.stop().await;
}

#[test]
fn the_checker_accepts_only_one_to_last_in_order() {
    assert_eq!(check_gapless(&[1, 2, 3], 3), Ok(()));
    assert!(check_gapless(&[1, 3], 3).is_err());
    assert!(check_gapless(&[1, 2, 2, 3], 3).is_err());
    assert!(check_gapless(&[2, 1, 3], 3).is_err());
    assert!(check_gapless(&[1, 2], 3).is_err());
}

/// While commands wait, a server queues its next batch for the append lock
/// before it commits. After a burst of 256 commands on one server, a second
/// server on the same database still commits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_goes_idle_after_a_burst_does_not_keep_the_append_lock() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let kek = database.kek_file.display().to_string();
    let args = ["--database-url", database.url.as_str(), "--kek-file", kek.as_str()];
    let busy = ServerProcess::start(&leadger_binary!(), database.dir.path(), &args).await.expect("first server");
    let other = ServerProcess::start(&leadger_binary!(), database.dir.path(), &args).await.expect("second server");
    let channel = connect(busy.addr).await;
    let mut burst = Vec::new();
    for n in 0..256 {
        let mut commands = LeadCommandServiceClient::new(channel.clone());
        burst.push(tokio::spawn(async move {
            let request = pb::CaptureLeadRequest { email: format!("burst-{n}@idle.example"), ..Default::default() };
            commands.capture_lead(request).await.expect("capture")
        }));
    }
    for capture in burst {
        capture.await.expect("task");
    }
    let mut commands = LeadCommandServiceClient::new(connect(other.addr).await);
    let request = pb::CaptureLeadRequest { email: "after-the-burst@idle.example".into(), ..Default::default() };
    let answered = tokio::time::timeout(Duration::from_secs(5), commands.capture_lead(request))
        .await
        .expect("the other server commits promptly: nobody holds the append lock")
        .expect("capture")
        .into_inner()
        .result
        .expect("result");
    assert_eq!(answered.position, 257);
    assert_eq!(busy.terminate().await.expect("stop").code(), Some(0));
    assert_eq!(other.terminate().await.expect("stop").code(), Some(0));
}
