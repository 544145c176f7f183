//! The proposer: every write of a server goes through here on its way into the Raft log, and
//! the writes that arrive while an entry is being made durable share the next entry.
//!
//! ```text
//!  connections ─┐                 ┌─ batch 1: [t1]           ── append, fdatasync ─┐
//!  session open ├─ Txn ─▶ queue ──┤  (while batch 1 syncs, t2..t9 wait here)      │ applied
//!  expiry/reap ─┘    (FIFO)       └─ batch 2: [t2 … t9]      ── append, fdatasync  ▼
//!                                                   outcome i ──▶ waiter i of the batch
//! ```
//!
//! Why: openraft 0.9's core appends one entry at a time and awaits its flush before it takes
//! the next message, so one transaction per entry means one fdatasync per write, serially.
//! ZooKeeper's SyncRequestProcessor batches the transactions that queue behind an fsync; the
//! proposer does the same one level up, by putting them in one entry ([`TxnBatch`]). Each
//! transaction still gets its own zxid when applied (see [`crate::raft`]).
//!
//! Order: the queue is FIFO and batches go to Raft in the order they are made, so a session's
//! writes are applied in the order its connection submitted them.
//!
//! Bounds: at most [`MAX_IN_FLIGHT`] batches are handed to Raft and not yet applied; a batch
//! holds at most [`MAX_BATCH_TXNS`] transactions and about [`MAX_BATCH_BYTES`] bytes (so a record
//! stays far below the log's record limit). The queue itself is bounded upstream: each
//! connection stops reading at `max_outstanding_requests` and `max_outstanding_request_bytes`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::raft::Raft;
use crate::txn::{Txn, TxnBatch, TxnOutcome};

/// Batches handed to Raft and not yet applied. Two let the next batch reach Raft while the
/// previous one waits on its quorum; more only split what would have been one batch.
pub const MAX_IN_FLIGHT: usize = 2;
/// The most transactions in one batch.
pub const MAX_BATCH_TXNS: usize = 2048;
/// A batch is closed once its transactions' estimated size reaches this.
pub const MAX_BATCH_BYTES: usize = 8 << 20;

/// Why a proposed write has no outcome. None of these says the write was refused: it may or
/// may not have been applied, so the connection that proposed it is closed and the client,
/// seeing ConnectionLoss, must check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This server is not (or no longer) the leader.
    #[error("this server is not the leader (leader: {})", leader.map_or_else(|| "unknown".to_owned(), |l| l.to_string()))]
    NotLeader {
        /// The leader this server knows of.
        leader: Option<u64>,
    },
    /// Raft failed (storage failure, shutdown) with the write in flight.
    #[error("replication failed with the write in flight: {0}")]
    Raft(String),
    /// The proposer is gone: the server is stopping.
    #[error("the server is stopping")]
    Stopped,
}

/// A write's outcome, once its batch is applied.
pub type WriteReceiver = oneshot::Receiver<Result<TxnOutcome, ProposeError>>;

struct Pending {
    txn: Txn,
    done: oneshot::Sender<Result<TxnOutcome, ProposeError>>,
}

/// The handle every writer of a server submits through. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Proposer {
    queue: mpsc::UnboundedSender<Pending>,
    counts: Arc<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    queued: AtomicU64,
    batches: AtomicU64,
    txns: AtomicU64,
    largest: AtomicU64,
}

/// What the proposer has done so far, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProposerStats {
    /// Transactions submitted and not yet in a batch.
    pub queued: u64,
    /// Batches handed to Raft.
    pub batches: u64,
    /// Transactions in those batches.
    pub txns: u64,
    /// The most transactions one batch held.
    pub largest_batch: u64,
}

impl Proposer {
    /// Starts the proposer of `raft` on the current runtime. It stops when every handle is
    /// dropped, after answering what it holds.
    pub fn spawn(raft: Raft) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        tokio::spawn(run(raft, rx, counts.clone()));
        Proposer { queue, counts }
    }

    /// Counts of what was submitted and batched.
    pub fn stats(&self) -> ProposerStats {
        let c = &self.counts;
        ProposerStats {
            queued: c.queued.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            txns: c.txns.load(Ordering::Relaxed),
            largest_batch: c.largest.load(Ordering::Relaxed),
        }
    }

    /// Queues `txn` behind every transaction submitted before it; the receiver yields its
    /// outcome once applied.
    pub fn submit(&self, txn: Txn) -> WriteReceiver {
        let (done, rx) = oneshot::channel();
        self.counts.queued.fetch_add(1, Ordering::Relaxed);
        // A send fails only when the proposer has stopped; `done` is then dropped, and the
        // receiver reports that as `Stopped`.
        if self.queue.send(Pending { txn, done }).is_err() {
            self.counts.queued.fetch_sub(1, Ordering::Relaxed);
        }
        rx
    }

    /// Submits `txn` and waits for its outcome.
    pub async fn write(&self, txn: Txn) -> Result<TxnOutcome, ProposeError> {
        self.submit(txn).await.unwrap_or(Err(ProposeError::Stopped))
    }
}

/// Takes what is queued into batches and hands each to Raft, at most [`MAX_IN_FLIGHT`] at once.
async fn run(raft: Raft, mut queue: mpsc::UnboundedReceiver<Pending>, counts: Arc<Counts>) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        // Waiting for a slot before gathering is what makes batches: whatever arrives while
        // the slots are taken joins this one.
        let Ok(slot) = in_flight.clone().acquire_owned().await else { return };
        let mut bytes = first.txn.approx_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_TXNS && bytes < MAX_BATCH_BYTES {
            let Ok(p) = queue.try_recv() else { break };
            bytes += p.txn.approx_len();
            batch.push(p);
        }
        let n = batch.len() as u64;
        counts.queued.fetch_sub(n, Ordering::Relaxed);
        counts.batches.fetch_add(1, Ordering::Relaxed);
        counts.txns.fetch_add(n, Ordering::Relaxed);
        counts.largest.fetch_max(n, Ordering::Relaxed);
        let (txns, waiters): (TxnBatch, Vec<_>) = batch.into_iter().map(|p| (p.txn, p.done)).unzip();
        match raft.client_write_ff(txns).await {
            Err(fatal) => answer_all(waiters, &ProposeError::Raft(fatal.to_string())),
            Ok(applied) => {
                tokio::spawn(async move {
                    let result = applied.await;
                    drop(slot);
                    match result {
                        Ok(Ok(resp)) => fan_out(waiters, resp.data),
                        Ok(Err(e)) => answer_all(waiters, &propose_error(e)),
                        Err(_) => answer_all(waiters, &ProposeError::Stopped),
                    }
                });
            }
        }
    }
}

/// Hands outcome i to waiter i. A count that does not match is a bug; the waiters without an
/// outcome are told the write's fate is unknown rather than given another's.
fn fan_out(waiters: Vec<oneshot::Sender<Result<TxnOutcome, ProposeError>>>, outcomes: Vec<TxnOutcome>) {
    if outcomes.len() != waiters.len() {
        tracing::error!(
            batch = waiters.len(),
            outcomes = outcomes.len(),
            "a batch was applied with a different number of outcomes"
        );
    }
    let mut outcomes = outcomes.into_iter();
    for w in waiters {
        let _ = w.send(outcomes.next().ok_or_else(|| ProposeError::Raft("no outcome for this write".into())));
    }
}

fn answer_all(waiters: Vec<oneshot::Sender<Result<TxnOutcome, ProposeError>>>, e: &ProposeError) {
    for w in waiters {
        let _ = w.send(Err(e.clone()));
    }
}

fn propose_error(e: ClientWriteError<u64, openraft::BasicNode>) -> ProposeError {
    match e {
        ClientWriteError::ForwardToLeader(f) => ProposeError::NotLeader { leader: f.leader_id },
        other => ProposeError::Raft(other.to_string()),
    }
}
