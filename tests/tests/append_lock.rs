//! The PostgreSQL append lock and the transaction a committer prepares for
//! its next batch: prepared only while commands wait, and let go when the
//! committer goes idle, so other servers are never locked out.

use std::time::Duration;

use leadger_domain::{Action, Command, Email, LeadDetails, LeadId, Timestamp};
use leadger_store::{EventLog, Origin, PendingCommand, PostgresLog};
use leadger_tests::{Backend, TestDatabase};

fn capture(email: &str) -> PendingCommand {
    PendingCommand {
        command: Command {
            lead_id: LeadId::from_uuid(uuid::Uuid::now_v7()),
            expected_version: None,
            occurred_at: None,
            action: Action::Capture(LeadDetails {
                email: Email::parse("email", email).expect("valid"),
                name: None,
                company: None,
                phone: None,
                source: None,
                campaign: None,
                persona: None,
                external_ref: None,
            }),
        },
        origin: Origin {
            client_id: "test".into(),
            request_id: None,
            request_hash: String::new(),
            correlation_id: None,
            roles: leadger_domain::Roles::ALL,
            trace: None,
        },
    }
}

/// Polls `pg_locks` (10 s deadline) until `count` advisory locks are granted.
async fn wait_for_granted_advisory_locks(url: &str, count: i64) {
    use sqlx::Connection;
    let mut connection = sqlx::PgConnection::connect(url).await.expect("connect");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (granted,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
                .fetch_one(&mut connection)
                .await
                .expect("read pg_locks");
        if granted == count {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{granted} advisory locks granted, expected {count}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepared_next_batch_holds_the_lock_until_the_committer_goes_idle() {
    let database = TestDatabase::new(Backend::Postgres).await;
    let vault = database.vault();
    let now = Timestamp::from_micros(1_760_000_000_000_000).expect("in range");
    let busy = PostgresLog::connect(&database.url).await.expect("first server");
    let other = PostgresLog::connect(&database.url).await.expect("second server");

    // "More commands are waiting": the next batch's transaction queues for the lock.
    let first = capture("first@lock.example");
    busy.append_batch(&[&first], now, &vault, &|| true).await.expect("append");
    wait_for_granted_advisory_locks(&database.url, 1).await;
    let other = std::sync::Arc::new(other);
    let waiting = {
        let (other, vault) = (other.clone(), database.vault());
        tokio::spawn(async move {
            let second = capture("second@lock.example");
            other.append_batch(&[&second], now, &vault, &|| false).await.map(|outcomes| outcomes[0].clone())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the prepared transaction holds the append lock");

    // Idle: the prepared transaction is rolled back and the lock is free.
    busy.idle();
    let outcome = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the other server gets the lock once the first is idle")
        .expect("task")
        .expect("append");
    assert_eq!(outcome.expect("appended").position, 2);
    wait_for_granted_advisory_locks(&database.url, 0).await;

    // Without waiting commands nothing is prepared: the lock is free at once.
    let third = capture("third@lock.example");
    busy.append_batch(&[&third], now, &vault, &|| false).await.expect("append");
    let fourth = capture("fourth@lock.example");
    let outcomes = tokio::time::timeout(Duration::from_secs(5), other.append_batch(&[&fourth], now, &vault, &|| false))
        .await
        .expect("no lock is kept when nothing waits")
        .expect("append");
    assert_eq!(outcomes[0].as_ref().expect("appended").position, 4);
}
