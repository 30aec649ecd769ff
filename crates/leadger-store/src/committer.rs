//! Group commit: one task per process owns the write path of the log.
//!
//! Handlers submit commands to a bounded queue; the committer takes whatever
//! has queued up (up to `max_batch`), appends it in one transaction and
//! answers each command only after that transaction committed, so an
//! acknowledged event is durable. While one batch commits the next one
//! queues, so throughput is bound by commits per second times batch size, not
//! by one fsync per command. A full queue is refused at once
//! ([`CommandError::Overloaded`]) instead of growing memory, and a command
//! whose caller went away (cancelled, or its gRPC deadline passed, which makes
//! tonic drop the handler) before it joined a batch is not applied.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use leadger_domain::Timestamp;
use tokio::sync::{mpsc, oneshot, watch};

use crate::vault::Vault;
use crate::{CommandError, CommandOutcome, EventLog, PendingCommand};

#[derive(Debug, Clone, Copy)]
pub struct CommitterConfig {
    /// Commands waiting for a commit before new ones are refused.
    pub queue_capacity: usize,
    /// Most commands in one transaction.
    pub max_batch: usize,
    /// Idempotency receipts are kept at least this long.
    pub receipt_retention: Duration,
}

impl Default for CommitterConfig {
    fn default() -> Self {
        Self { queue_capacity: 8192, max_batch: 1024, receipt_retention: Duration::from_secs(7 * 24 * 3600) }
    }
}

/// The server's clock, injectable so tests control "now".
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros());
        Timestamp::from_micros(i64::try_from(micros).unwrap_or(i64::MAX)).unwrap_or(Timestamp::MAX)
    })
}

struct Job {
    pending: PendingCommand,
    reply: oneshot::Sender<Result<CommandOutcome, CommandError>>,
}

/// The handle handlers submit commands through. Cloning is cheap; the
/// committer stops when every handle is dropped, after draining its queue.
#[derive(Clone)]
pub struct CommandGateway {
    jobs: mpsc::Sender<Job>,
    committed: watch::Receiver<u64>,
}

impl std::fmt::Debug for CommandGateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandGateway").field("queued", &(self.jobs.max_capacity() - self.jobs.capacity())).finish()
    }
}

impl CommandGateway {
    /// Submits a command and waits until it is committed or refused.
    pub async fn submit(&self, pending: PendingCommand) -> Result<CommandOutcome, CommandError> {
        let (reply, answer) = oneshot::channel();
        self.jobs.try_send(Job { pending, reply }).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => CommandError::Overloaded { queued: self.jobs.max_capacity() },
            mpsc::error::TrySendError::Closed(_) => CommandError::ShuttingDown,
        })?;
        answer.await.unwrap_or(Err(CommandError::ShuttingDown))
    }

    /// The position of the last event this process committed, or that another
    /// process was seen to commit; changes wake log followers.
    pub fn committed(&self) -> watch::Receiver<u64> {
        self.committed.clone()
    }
}

/// Starts the committer task for `log`. `head` is the log's last position.
pub fn spawn_committer<L: EventLog>(
    log: Arc<L>,
    vault: Arc<Vault>,
    clock: Clock,
    config: CommitterConfig,
    head: u64,
) -> (CommandGateway, tokio::task::JoinHandle<()>) {
    let (jobs, queue) = mpsc::channel(config.queue_capacity);
    let (committed_tx, committed) = watch::channel(head);
    log.forward_foreign_appends(committed_tx.clone());
    let task = tokio::spawn(run(log, vault, clock, config, queue, committed_tx));
    (CommandGateway { jobs, committed }, task)
}

async fn run<L: EventLog>(
    log: Arc<L>,
    vault: Arc<Vault>,
    clock: Clock,
    config: CommitterConfig,
    mut queue: mpsc::Receiver<Job>,
    committed: watch::Sender<u64>,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(config.max_batch);
    let mut next_purge = Instant::now();
    while queue.recv_many(&mut batch, config.max_batch).await > 0 {
        // Nobody waits for these any more: leave them out.
        let live: Vec<Job> = batch.drain(..).filter(|job| !job.reply.is_closed()).collect();
        if live.is_empty() {
            if queue.is_empty() {
                log.idle();
            }
            continue;
        }
        let pending: Vec<&PendingCommand> = live.iter().map(|job| &job.pending).collect();
        let now = clock();
        let more_waiting = || !queue.is_empty();
        let appended = log.append_batch(&pending, now, &vault, &more_waiting).await;
        if queue.is_empty() {
            log.idle();
        }
        match appended {
            Ok(outcomes) => {
                metrics::histogram!("leadger_commit_batch_commands").record(live.len() as f64);
                let new_events = outcomes.iter().filter(|outcome| outcome.as_ref().is_ok_and(|o| !o.replayed)).count();
                metrics::counter!("leadger_events_appended_total").increment(new_events as u64);
                if let Some(last) = outcomes.iter().filter_map(|o| o.as_ref().ok()).map(|o| o.position).max() {
                    crate::advance(&committed, last);
                }
                for (job, outcome) in live.into_iter().zip(outcomes) {
                    let _ = job.reply.send(outcome);
                }
            }
            Err(error) => {
                tracing::error!(batch = live.len(), %error, "append batch of {} commands", live.len());
                let refusal = CommandError::from(&error);
                for job in live {
                    let _ = job.reply.send(Err(refusal.clone()));
                }
            }
        }
        if Instant::now() >= next_purge {
            next_purge = Instant::now() + Duration::from_secs(3600);
            let retention = i64::try_from(config.receipt_retention.as_micros()).unwrap_or(i64::MAX);
            let cutoff = Timestamp::from_micros(now.as_micros().saturating_sub(retention)).unwrap_or(Timestamp::MIN);
            match log.purge_receipts(cutoff).await {
                Ok(purged) if purged > 0 => tracing::info!(purged, "purged expired idempotency receipts"),
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "purge expired idempotency receipts"),
            }
        }
    }
    log.idle();
    tracing::debug!("committer stopped: every gateway was dropped");
}
