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
//! On a follower or observer of an ensemble the batch is forwarded to the leader over the peer
//! transport instead, one at a time (two in flight could reach the leader in either order
//! across a reconnect), and its outcomes are handed back only once this server has applied the
//! leader's entry, so a client reads its own write wherever it is connected. A batch whose
//! fate is unknown (the leader lost, the link broken) fails each of its writes with
//! [`ProposeError`], which closes their connections; later writes already queued from those
//! connections are failed too, never entered behind a write that may not have been.
//!
//! Bounds: at most [`MAX_IN_FLIGHT`] batches are handed to Raft and not yet applied; a batch
//! holds at most [`MAX_BATCH_TXNS`] transactions and about [`MAX_BATCH_BYTES`] bytes (so a record
//! stays far below the log's record limit). The queue itself is bounded upstream: each
//! connection stops reading at `max_outstanding_requests` and `max_outstanding_request_bytes`.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::peer::wire::{PeerReply, PeerRequest};
use crate::peer::PeerNetwork;
use crate::raft::Raft;
use crate::txn::{BatchOutcome, Txn, TxnBatch, TxnOutcome};

/// Batches handed to Raft and not yet applied. Two let the next batch reach Raft while the
/// previous one waits on its quorum; more only split what would have been one batch.
pub const MAX_IN_FLIGHT: usize = 2;
/// The most transactions in one batch.
pub const MAX_BATCH_TXNS: usize = 2048;
/// A batch is closed once its transactions' estimated size reaches this.
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// How long a forwarded batch may take to be answered by the leader and applied here.
pub const FORWARD_DEADLINE: Duration = Duration::from_secs(4);
/// Connections remembered as failed; past this many the oldest are forgotten (their
/// connections were closed long before).
const MAX_FAILED_ORIGINS: usize = 4096;

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
    /// The connection that submitted it, 0 for the server's own.
    origin: u64,
    txn: Txn,
    done: oneshot::Sender<Result<TxnOutcome, ProposeError>>,
}

/// The handle every writer of a server submits through. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::UnboundedSender<Pending>,
    counts: Arc<Counts>,
    raft: Raft,
    forward: Option<PeerNetwork>,
}

#[derive(Debug, Default)]
struct Counts {
    queued: AtomicU64,
    batches: AtomicU64,
    txns: AtomicU64,
    largest: AtomicU64,
}

impl std::fmt::Debug for Proposer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposer").field("stats", &self.stats()).field("forwards", &self.forward.is_some()).finish()
    }
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
    /// Starts the proposer of `raft` on the current runtime; `forward` is the ensemble's peer
    /// network, through which a server that does not lead sends its batches to the leader
    /// (`None` for a server alone). It stops when every handle is dropped, after answering what
    /// it holds.
    pub fn spawn(raft: Raft, forward: Option<PeerNetwork>) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        tokio::spawn(run(raft.clone(), forward.clone(), rx, counts.clone()));
        Proposer { queue, counts, raft, forward }
    }

    /// `sync`: returns once this server has applied every write committed before the call,
    /// asking the leader for its read index when this server does not lead.
    pub async fn barrier(&self) -> Result<(), ProposeError> {
        let leader = match (route(&self.raft, self.forward.is_some()), &self.forward) {
            (Route::Forward(leader), Some(net)) => (leader, net),
            (Route::NoLeader, _) | (Route::Forward(_), None) => return Err(ProposeError::NotLeader { leader: None }),
            (Route::Local, _) => {
                return match self.raft.ensure_linearizable().await {
                    Ok(_) => Ok(()),
                    Err(openraft::error::RaftError::APIError(
                        openraft::error::CheckIsLeaderError::ForwardToLeader(f),
                    )) => Err(ProposeError::NotLeader { leader: f.leader_id }),
                    Err(e) => Err(ProposeError::Raft(e.to_string())),
                }
            }
        };
        let (leader, net) = leader;
        let started = tokio::time::Instant::now();
        let index = match net.request(leader, PeerRequest::ReadIndex, FORWARD_DEADLINE).await {
            Ok(PeerReply::ReadIndex(Ok(index))) => index,
            Ok(PeerReply::ReadIndex(Err(why))) => {
                return Err(ProposeError::Raft(format!("the leader ({leader}) answered: {why}")))
            }
            Ok(_) => {
                return Err(ProposeError::Raft(format!("the leader ({leader}) answered a sync with another reply")))
            }
            Err(e) => return Err(ProposeError::Raft(format!("asking the leader for its read index: {e}"))),
        };
        let left = FORWARD_DEADLINE.saturating_sub(started.elapsed());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "the leader's read index applied here")
            .await
            .map(|_| ())
            .map_err(|e| ProposeError::Raft(format!("the leader's read index was not applied here in time: {e}")))
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

    /// Queues `txn` of connection `origin` (0: the server's own) behind every transaction
    /// submitted before it; the receiver yields its outcome once applied here.
    pub fn submit(&self, origin: u64, txn: Txn) -> WriteReceiver {
        let (done, rx) = oneshot::channel();
        self.counts.queued.fetch_add(1, Ordering::Relaxed);
        // A send fails only when the proposer has stopped; `done` is then dropped, and the
        // receiver reports that as `Stopped`.
        if self.queue.send(Pending { origin, txn, done }).is_err() {
            self.counts.queued.fetch_sub(1, Ordering::Relaxed);
        }
        rx
    }

    /// Submits the server's own `txn` and waits for its outcome.
    pub async fn write(&self, txn: Txn) -> Result<TxnOutcome, ProposeError> {
        self.submit(0, txn).await.unwrap_or(Err(ProposeError::Stopped))
    }
}

/// Where the next batch goes.
enum Route {
    /// This server leads (or is alone): into its own Raft log.
    Local,
    /// To the leader with this id.
    Forward(u64),
    /// Nowhere: no leader is known.
    NoLeader,
}

fn route(raft: &Raft, forwarding: bool) -> Route {
    let m = raft.metrics();
    let m = m.borrow();
    if !forwarding || m.state == openraft::ServerState::Leader {
        return Route::Local;
    }
    match m.current_leader {
        Some(l) if l != m.id => Route::Forward(l),
        _ => Route::NoLeader,
    }
}

/// The connections whose writes failed with their fate unknown: their later writes are failed
/// too, so none is entered behind one that may not have been.
#[derive(Default)]
struct Failed {
    set: BTreeSet<u64>,
    order: VecDeque<u64>,
}

impl Failed {
    fn add(&mut self, origin: u64) {
        if origin != 0 && self.set.insert(origin) {
            self.order.push_back(origin);
            if self.order.len() > MAX_FAILED_ORIGINS {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// Takes what is queued into batches and hands each to Raft, at most [`MAX_IN_FLIGHT`] at once
/// (one at a time when forwarding).
async fn run(
    raft: Raft,
    forward: Option<PeerNetwork>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    counts: Arc<Counts>,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let failed = Arc::new(std::sync::Mutex::new(Failed::default()));
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
        {
            let failed = failed.lock().unwrap_or_else(|p| p.into_inner());
            batch.retain_mut(|p| {
                if p.origin != 0 && failed.set.contains(&p.origin) {
                    let (done, _) = oneshot::channel();
                    let done = std::mem::replace(&mut p.done, done);
                    let _ = done.send(Err(ProposeError::Raft("an earlier write of this connection failed".into())));
                    return false;
                }
                true
            });
        }
        if batch.is_empty() {
            continue;
        }
        let n = batch.len() as u64;
        counts.batches.fetch_add(1, Ordering::Relaxed);
        counts.txns.fetch_add(n, Ordering::Relaxed);
        counts.largest.fetch_max(n, Ordering::Relaxed);
        let origins: Vec<u64> = batch.iter().map(|p| p.origin).collect();
        let (txns, waiters): (TxnBatch, Vec<_>) = batch.into_iter().map(|p| (p.txn, p.done)).unzip();
        let fail = {
            let failed = failed.clone();
            move |e: &ProposeError, waiters| {
                let mut f = failed.lock().unwrap_or_else(|p| p.into_inner());
                origins.iter().for_each(|&o| f.add(o));
                drop(f);
                answer_all(waiters, e);
            }
        };
        match (route(&raft, forward.is_some()), &forward) {
            (Route::Forward(leader), Some(net)) => {
                // Waited for here: the next batch is forwarded only after this one is answered.
                let result = forward_batch(&raft, net, leader, txns).await;
                drop(slot);
                match result {
                    Ok(outcomes) => fan_out(waiters, outcomes),
                    Err(e) => fail(&e, waiters),
                }
            }
            (Route::NoLeader, _) | (Route::Forward(_), None) => {
                fail(&ProposeError::NotLeader { leader: None }, waiters)
            }
            (Route::Local, _) => match raft.client_write_ff(txns).await {
                Err(fatal) => fail(&ProposeError::Raft(fatal.to_string()), waiters),
                Ok(applied) => {
                    tokio::spawn(async move {
                        let result = applied.await;
                        drop(slot);
                        match result {
                            Ok(Ok(resp)) => fan_out(waiters, resp.data),
                            Ok(Err(e)) => fail(&propose_error(e), waiters),
                            Err(_) => fail(&ProposeError::Stopped, waiters),
                        }
                    });
                }
            },
        }
    }
}

/// Sends a batch to the leader and waits until this server has applied the leader's entry.
async fn forward_batch(
    raft: &Raft,
    net: &PeerNetwork,
    leader: u64,
    txns: TxnBatch,
) -> Result<BatchOutcome, ProposeError> {
    let started = tokio::time::Instant::now();
    let reply = net
        .request(leader, PeerRequest::Forward(txns), FORWARD_DEADLINE)
        .await
        .map_err(|e| ProposeError::Raft(format!("forwarding to the leader: {e}")))?;
    let forwarded = match reply {
        PeerReply::Forward(Ok(f)) => f,
        PeerReply::Forward(Err(why)) => {
            return Err(ProposeError::Raft(format!("the leader ({leader}) answered: {why}")))
        }
        _ => return Err(ProposeError::Raft(format!("the leader ({leader}) answered a forward with another reply"))),
    };
    let left = FORWARD_DEADLINE.saturating_sub(started.elapsed());
    raft.wait(Some(left))
        .applied_index_at_least(Some(forwarded.applied_index), "a forwarded batch applied here")
        .await
        .map_err(|e| ProposeError::Raft(format!("the leader's entry was not applied here in time: {e}")))?;
    Ok(forwarded.outcomes)
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
