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
//! transaction still gets its own zxid when applied (see [`crate::raft`]). Before it cuts a
//! batch, it lets the writes already on their way (connections woken by the same readiness
//! event) join it (`settle`).
//!
//! Order: the queue is FIFO and batches go to Raft in the order they are made, so a session's
//! writes are applied in the order its connection submitted them.
//!
//! On a follower or observer of an ensemble the batch is forwarded to the leader over the peer
//! transport instead, up to [`MAX_FORWARDS_IN_FLIGHT`] batches at once, under one rule: two
//! forwards in flight never hold writes of the same connection. A write whose connection has
//! a write in an unanswered forward is held back, with every later write of that connection,
//! until the leader has answered; the server's own writes (origin 0, among them a session
//! resumed here, whose earlier connection may still have writes in flight)
//! go only when nothing is in flight, and nothing goes behind them until they are answered.
//! So the order in which forwards reach the leader, across reconnects and leader changes
//! alike, can never reorder one connection's writes: no connection has two in the air. (Two
//! forwards may reach the leader in either order: the link is one queue, but each forward is
//! sent from its own task.)
//!
//! ```text
//!  queue ─▶ held (FIFO) ─ take_batch: skip connections busy in a forward ─▶ forward k ──▶ leader
//!                   ▲                                                       forward k+1 ─▶ leader
//!                   └──── leader's answer: the batch's connections free again ◀──┘
//!                         (then, in its own task: wait until applied here, answer the clients)
//! ```
//!
//! A forward's outcomes are handed back only once this server has applied the leader's entry,
//! so a client reads its own write wherever it is connected; that wait overlaps the next
//! forwards (a later write of the same connection is answered after it regardless: the
//! connection answers its requests in order). A batch whose fate is unknown (the leader lost,
//! the link broken) fails each of its writes with [`ProposeError`], which closes their
//! connections; the connections are marked failed before they are freed, so their later
//! writes, held back meanwhile, are failed too, never entered behind a write that may not
//! have been.
//!
//! Bounds: at most [`MAX_IN_FLIGHT`] batches are handed to Raft and not yet applied; a batch
//! holds at most [`MAX_BATCH_TXNS`] transactions and about [`MAX_BATCH_BYTES`] bytes, or one
//! larger write alone (at most `max_packet_bytes`, 16 MiB, with its connection's identities,
//! at most 64 KiB), so an entry stays below the peer link's frame limit and far below the log's
//! record limit. The queue itself is bounded upstream: each connection stops reading at
//! `max_outstanding_requests` and `max_outstanding_request_bytes`.

use std::collections::{BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::error::ClientWriteError;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;

use crate::peer::wire::{Forwarded, PeerReply, PeerRequest};
use crate::peer::PeerNetwork;
use crate::raft::Raft;
use crate::read_index::{ReadIndex, ReadIndexError};
use crate::rounds::Rounds;
use crate::txn::{Txn, TxnBatch, TxnOp, TxnOutcome};

/// Batches handed to Raft and not yet applied. With one request in flight per session, the
/// clients a batch answers send their next writes while the batches after it are still being
/// made durable or replicated; with two slots those writes waited for a slot. Against two,
/// four gave x0.99 to x1.26 the writes a second from 16 sessions with one request each (create,
/// setData and delete, on one server and on three), x0.95 to x1.07 from 64, within the noise;
/// eight gave less on one server (medians of three alternated runs,
/// `bench/coordinator-throughput.in-flight.txt`).
pub const MAX_IN_FLIGHT: usize = 4;
/// The most transactions in one batch.
pub const MAX_BATCH_TXNS: usize = 2048;
/// A batch is closed once its transactions' estimated size reaches this.
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// Forwarded batches sent to the leader and not yet answered. Each holds writes of other
/// connections than the rest (see the module docs), so this bounds only what one follower
/// asks of the leader's link at once.
pub const MAX_FORWARDS_IN_FLIGHT: usize = 4;
/// The most times the proposer yields, before cutting a batch, to let writes already on
/// their way join it (see `settle`).
pub const SETTLE_YIELDS: usize = 8;
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
    done: Waiter,
}

/// Where a write's outcome goes: to a connection, or, for a batch forwarded here by another
/// server, with the index of the entry that holds it (the forwarder waits to apply it).
enum Waiter {
    Plain(oneshot::Sender<Result<TxnOutcome, ProposeError>>),
    Indexed(oneshot::Sender<Result<(u64, TxnOutcome), ProposeError>>),
}

impl Waiter {
    /// Sends the outcome of a write in the entry at `index`, or why it has none.
    fn send(self, result: Result<TxnOutcome, ProposeError>, index: u64) {
        match self {
            Waiter::Plain(tx) => {
                let _ = tx.send(result);
            }
            Waiter::Indexed(tx) => {
                let _ = tx.send(result.map(|o| (index, o)));
            }
        }
    }
}

/// A proposer's places for batches handed to Raft and not yet applied, at most
/// [`MAX_IN_FLIGHT`]; shared so that others can see how many are taken. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BatchSlots(Arc<Semaphore>);

impl Default for BatchSlots {
    fn default() -> Self {
        BatchSlots(Arc::new(Semaphore::new(MAX_IN_FLIGHT)))
    }
}

impl BatchSlots {
    /// How many batches are handed to Raft and not yet applied.
    pub fn in_flight(&self) -> usize {
        MAX_IN_FLIGHT.saturating_sub(self.0.available_permits())
    }
}

/// The handle every writer of a server submits through. Cheap to clone.
#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::UnboundedSender<Pending>,
    counts: Arc<Counts>,
    raft: Raft,
    forward: Option<PeerNetwork>,
    read_index: Option<ReadIndex>,
    /// A follower's requests for the leader's read index, one for all the `sync`s that come
    /// while the one before is under way.
    leader_read_indexes: Rounds<Result<u64, ProposeError>>,
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
    /// (`None` for a server alone); `read_index` is how it answers a `sync` while it leads
    /// an ensemble (`None` alone); `slots` are its places for batches in flight (see
    /// [`BatchSlots`]). It stops when every handle is dropped, after answering what it holds.
    pub fn spawn(raft: Raft, forward: Option<PeerNetwork>, read_index: Option<ReadIndex>, slots: BatchSlots) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        let counts = Arc::new(Counts::default());
        tokio::spawn(run(raft.clone(), forward.clone(), rx, counts.clone(), slots.0));
        Proposer { queue, counts, raft, forward, read_index, leader_read_indexes: Rounds::new() }
    }

    /// `sync`: returns once this server has applied every write committed before the call,
    /// within [`FORWARD_DEADLINE`]: the read index is its own while it leads (see
    /// [`crate::read_index`]), the leader's when it does not.
    pub async fn barrier(&self) -> Result<(), ProposeError> {
        let started = tokio::time::Instant::now();
        let index = match (route(&self.raft, self.forward.is_some()), &self.forward, &self.read_index) {
            (Route::Local, _, Some(read_index)) => read_index.at_leader(&self.raft).await.map_err(|e| match e {
                ReadIndexError::NotLeader { leader } => ProposeError::NotLeader { leader },
                e => ProposeError::Raft(e.to_string()),
            })?,
            (Route::Local, _, None) => {
                // A server alone: it is its own quorum, and openraft's round sends nothing.
                return match self.raft.ensure_linearizable().await {
                    Ok(_) => Ok(()),
                    Err(openraft::error::RaftError::APIError(
                        openraft::error::CheckIsLeaderError::ForwardToLeader(f),
                    )) => Err(ProposeError::NotLeader { leader: f.leader_id }),
                    Err(e) => Err(ProposeError::Raft(e.to_string())),
                };
            }
            (Route::Forward(_), Some(net), _) => self.leaders_read_index(net).await?,
            (Route::NoLeader, _, _) | (Route::Forward(_), None, _) => {
                return Err(ProposeError::NotLeader { leader: None })
            }
        };
        let left = FORWARD_DEADLINE.saturating_sub(started.elapsed());
        self.raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "the read index applied here")
            .await
            .map(|_| ())
            .map_err(|e| ProposeError::Raft(format!("the read index was not applied here in time: {e}")))
    }

    /// The leader's read index, asked in a request that starts after this call: the request
    /// under way, if any, cannot serve; the next one, shared with every `sync` that comes
    /// meanwhile, does (see [`Rounds`]). Within [`FORWARD_DEADLINE`].
    async fn leaders_read_index(&self, net: &PeerNetwork) -> Result<u64, ProposeError> {
        let (raft, net) = (self.raft.clone(), net.clone());
        let request = move || {
            let (raft, net) = (raft.clone(), net.clone());
            async move {
                // The leader as it is when the request starts.
                match route(&raft, true) {
                    Route::Forward(leader) => ask_read_index(&raft, &net, leader).await,
                    Route::Local => Err(ProposeError::Raft("this server came to lead while the sync waited".into())),
                    Route::NoLeader => Err(ProposeError::NotLeader { leader: None }),
                }
            }
        };
        match tokio::time::timeout(FORWARD_DEADLINE, self.leader_read_indexes.next(request)).await {
            Ok(Some(answer)) => answer,
            Ok(None) => Err(ProposeError::Raft("the read-index request ended without an answer".into())),
            Err(_) => Err(ProposeError::Raft(format!("no read index from the leader within {FORWARD_DEADLINE:?}"))),
        }
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
        self.enqueue(Pending { origin, txn, done: Waiter::Plain(done) });
        rx
    }

    /// [`Proposer::submit`] for a write another server forwarded here: its outcome comes with
    /// the index of the entry that holds it.
    pub fn submit_forwarded(
        &self,
        origin: u64,
        txn: Txn,
    ) -> oneshot::Receiver<Result<(u64, TxnOutcome), ProposeError>> {
        let (done, rx) = oneshot::channel();
        self.enqueue(Pending { origin, txn, done: Waiter::Indexed(done) });
        rx
    }

    fn enqueue(&self, pending: Pending) {
        self.counts.queued.fetch_add(1, Ordering::Relaxed);
        // A send fails only when the proposer has stopped; the waiter is then dropped, and
        // the receiver reports that as `Stopped`.
        if self.queue.send(pending).is_err() {
            self.counts.queued.fetch_sub(1, Ordering::Relaxed);
        }
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

/// Asks `leader` for its read index.
async fn ask_read_index(raft: &Raft, net: &PeerNetwork, leader: u64) -> Result<u64, ProposeError> {
    // As a forward: a leader replaced meanwhile (a frozen one answers nothing) is not waited
    // on; the callers close their connections, and their clients ask again elsewhere.
    let asked = tokio::select! {
        reply = net.request(raft, leader, PeerRequest::ReadIndex, FORWARD_DEADLINE) => reply,
        _ = crate::role::leader_replaced(raft, leader) => {
            return Err(ProposeError::Raft(format!("the leader ({leader}) was replaced while asked for its read index")))
        }
    };
    match asked {
        Ok(PeerReply::ReadIndex(Ok(index))) => Ok(index),
        Ok(PeerReply::ReadIndex(Err(why))) => Err(ProposeError::Raft(format!("the leader ({leader}) answered: {why}"))),
        Ok(_) => Err(ProposeError::Raft(format!("the leader ({leader}) answered a sync with another reply"))),
        Err(e) => Err(ProposeError::Raft(format!("asking the leader for its read index: {e}"))),
    }
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

/// Takes what is queued into batches and hands each to Raft, at most [`MAX_IN_FLIGHT`] at once,
/// or forwards each to the leader, at most [`MAX_FORWARDS_IN_FLIGHT`] at once and never two
/// holding writes of one connection (see the module docs).
async fn run(
    raft: Raft,
    forward: Option<PeerNetwork>,
    mut queue: mpsc::UnboundedReceiver<Pending>,
    counts: Arc<Counts>,
    in_flight: Arc<Semaphore>,
) {
    let failed = Arc::new(std::sync::Mutex::new(Failed::default()));
    let mut held = Held::default();
    let mut forwards: JoinSet<ForwardResult> = JoinSet::new();
    let mut open = true;
    loop {
        // Answered at once, without waiting for anything: writes of failed connections.
        held.drop_failed(&lock(&failed), &counts);
        if held.queue.is_empty() {
            if !open && forwards.is_empty() {
                return;
            }
            tokio::select! {
                p = queue.recv(), if open => match p {
                    Some(p) => held.queue.push_back(p),
                    None => open = false,
                },
                Some(r) = forwards.join_next(), if !forwards.is_empty() => {
                    resolved(&raft, &mut held, &failed, r);
                }
                else => {}
            }
            continue;
        }
        match (route(&raft, forward.is_some()), &forward) {
            (Route::Forward(leader), Some(net)) => {
                if forwards.len() >= MAX_FORWARDS_IN_FLIGHT {
                    wait_for_forward(&raft, &mut forwards, &mut held, &failed, (&mut queue, &mut open)).await;
                    continue;
                }
                // A batch this server entered as leader must be resolved before any write of
                // its connections goes to another leader.
                if in_flight.available_permits() < MAX_IN_FLIGHT {
                    let _ = in_flight.acquire_many(MAX_IN_FLIGHT as u32).await;
                }
                settle(&queue).await;
                gather(&mut held, &mut queue);
                held.drop_failed(&lock(&failed), &counts);
                held.drop_leader_decisions(&counts);
                let batch = held.take_batch();
                if batch.is_empty() {
                    if forwards.is_empty() {
                        continue;
                    }
                    wait_for_forward(&raft, &mut forwards, &mut held, &failed, (&mut queue, &mut open)).await;
                    continue;
                }
                count(&counts, batch.len());
                let origins: Vec<u64> = batch.iter().map(|p| p.origin).collect();
                held.busy.extend(origins.iter().copied());
                let (txns, waiters): (TxnBatch, Vec<_>) = batch.into_iter().map(|p| (p.txn, p.done)).unzip();
                let net = net.clone();
                let raft = raft.clone();
                forwards.spawn(async move {
                    let started = tokio::time::Instant::now();
                    let result = forward_batch(&raft, &net, leader, txns).await;
                    ForwardResult { origins, waiters, started, result }
                });
            }
            (Route::NoLeader, _) | (Route::Forward(_), None) => {
                gather(&mut held, &mut queue);
                let batch = held.take_batch();
                if batch.is_empty() {
                    wait_for_forward(&raft, &mut forwards, &mut held, &failed, (&mut queue, &mut open)).await;
                    continue;
                }
                counts.queued.fetch_sub(batch.len() as u64, Ordering::Relaxed);
                let origins: Vec<u64> = batch.iter().map(|p| p.origin).collect();
                fail(&failed, &origins, &ProposeError::NotLeader { leader: None }, waiters_of(batch));
            }
            (Route::Local, _) => {
                // Waiting for a slot before gathering is what makes batches: whatever arrives
                // while the slots are taken joins this one, and so does what is on its way.
                let Ok(slot) = in_flight.clone().acquire_owned().await else { return };
                settle(&queue).await;
                gather(&mut held, &mut queue);
                held.drop_failed(&lock(&failed), &counts);
                let batch = held.take_batch();
                if batch.is_empty() {
                    drop(slot);
                    if !forwards.is_empty() {
                        wait_for_forward(&raft, &mut forwards, &mut held, &failed, (&mut queue, &mut open)).await;
                    }
                    continue;
                }
                count(&counts, batch.len());
                let origins: Vec<u64> = batch.iter().map(|p| p.origin).collect();
                let (txns, waiters): (TxnBatch, Vec<_>) = batch.into_iter().map(|p| (p.txn, p.done)).unzip();
                // The term the batch is proposed in: if this server stops leading it before
                // the batch is answered, its fate is unknown here (see `no_longer_leading`).
                let term = crate::role::leading_term(&raft);
                match raft.client_write_ff(txns).await {
                    Err(fatal) => fail(&failed, &origins, &ProposeError::Raft(fatal.to_string()), waiters),
                    Ok(applied) => {
                        let failed = failed.clone();
                        let raft = raft.clone();
                        tokio::spawn(async move {
                            let lost = async {
                                match term {
                                    Some(term) => crate::role::no_longer_leading(&raft, term).await,
                                    None => crate::role::current_leader(&raft),
                                }
                            };
                            tokio::select! {
                                biased;
                                result = applied => match result {
                                    Ok(Ok(resp)) => fan_out(waiters, resp.data, resp.log_id.index),
                                    Ok(Err(e)) => fail(&failed, &origins, &propose_error(e), waiters),
                                    Err(_) => fail(&failed, &origins, &ProposeError::Stopped, waiters),
                                },
                                // Committed or not, it is not known here: the connections close,
                                // and their clients check.
                                leader = lost => fail(&failed, &origins, &ProposeError::NotLeader { leader }, waiters),
                            }
                            // Freed once the connections are marked failed: a later write of
                            // theirs is never entered behind one of unknown fate.
                            drop(slot);
                        });
                    }
                }
            }
        }
    }
}

/// Lets the writes already on their way join the batch about to be cut: yields to the
/// runtime, at most [`SETTLE_YIELDS`] times, for as long as each yield brought more into the
/// queue.
///
/// Why: the connections one readiness event wakes (the clients answered by the last batch,
/// sending their next writes) run one after the other, and the first to submit woke the
/// proposer. Cut at once, the batch held that one write, and the next slot went to the
/// second: batches of one or two beside one of the rest. Letting the woken connections run
/// first makes one batch of them, with fewer entries, log records and hand-offs per write.
/// Alone on the server, a write waits one yield (microseconds), as nothing more comes.
async fn settle(queue: &mpsc::UnboundedReceiver<Pending>) {
    let mut seen = queue.len();
    for _ in 0..SETTLE_YIELDS {
        tokio::task::yield_now().await;
        let now = queue.len();
        if now == seen {
            return;
        }
        seen = now;
    }
}

/// A forwarded batch as the leader answered it (or did not).
struct ForwardResult {
    origins: Vec<u64>,
    waiters: Vec<Waiter>,
    started: tokio::time::Instant,
    result: Result<Forwarded, ProposeError>,
}

/// The writes not yet in a batch, in submission order, and the connections with a write in a
/// forwarded batch the leader has not answered yet.
#[derive(Default)]
struct Held {
    queue: VecDeque<Pending>,
    busy: BTreeSet<u64>,
}

/// The origins of writes another server forwarded here: one per forwarded batch, counted from
/// here up, above every connection id of this server.
pub const FORWARDED_ORIGINS: u64 = 1 << 63;

/// Whether `p` may be entered only while this server leads: a decision only a leader takes,
/// for its own term (a session's expiry, made from the liveness this server saw while it led,
/// or a reap), or a write another server forwarded here because this one led. A server that
/// no longer leads fails such a write rather than forward it to the new leader: the new leader
/// decides for itself (a deposed leader cut off from the clients' reports would otherwise close
/// live sessions), and the server that forwarded a write learns it failed and closes its
/// client's connection (passed on, the write could land after what the client sent since
/// through that same server, as ZooKeeper's deposed leader drops what it had not committed).
fn leader_decision(p: &Pending) -> bool {
    p.origin >= FORWARDED_ORIGINS
        || p.origin == 0
            && matches!(
                p.txn.op,
                TxnOp::CloseSession { expired: true } | TxnOp::Write(crate::txn::WriteOp::DeleteContainer { .. })
            )
}

impl Held {
    /// Fails, at once, every held decision of a leader and every write forwarded here
    /// ([`leader_decision`]): this server is about to forward.
    fn drop_leader_decisions(&mut self, counts: &Counts) {
        if !self.queue.iter().any(leader_decision) {
            return;
        }
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for p in self.queue.drain(..) {
            if leader_decision(&p) {
                counts.queued.fetch_sub(1, Ordering::Relaxed);
                p.done.send(Err(ProposeError::NotLeader { leader: None }), 0);
            } else {
                kept.push_back(p);
            }
        }
        self.queue = kept;
    }

    /// Fails, at once, every held write of a connection that already lost one.
    fn drop_failed(&mut self, failed: &Failed, counts: &Counts) {
        if failed.set.is_empty() {
            return;
        }
        let mut kept = VecDeque::with_capacity(self.queue.len());
        for p in self.queue.drain(..) {
            if p.origin != 0 && failed.set.contains(&p.origin) {
                counts.queued.fetch_sub(1, Ordering::Relaxed);
                p.done.send(Err(ProposeError::Raft("an earlier write of this connection failed".into())), 0);
            } else {
                kept.push_back(p);
            }
        }
        self.queue = kept;
    }

    /// The next batch, in submission order, leaving held what may not go yet: every write of a
    /// connection with a write in an unanswered forward (and every later write of that
    /// connection); the server's own writes (origin 0) only when nothing else is in flight,
    /// and nothing behind them until they are answered.
    fn take_batch(&mut self) -> Vec<Pending> {
        let mut batch = Vec::new();
        if self.busy.contains(&0) {
            return batch;
        }
        let mut blocked: BTreeSet<u64> = BTreeSet::new();
        let mut barrier = false;
        let mut bytes = 0;
        let mut full = false;
        let mut kept = VecDeque::new();
        for p in self.queue.drain(..) {
            // A write that would take a batch past its bound closes it (one larger than the
            // bound goes alone, in a batch of its own).
            let len = p.txn.approx_len();
            full = full || batch.len() >= MAX_BATCH_TXNS || (!batch.is_empty() && bytes + len > MAX_BATCH_BYTES);
            let go = !full
                && !barrier
                && if p.origin == 0 {
                    self.busy.is_empty() && blocked.is_empty()
                } else {
                    !self.busy.contains(&p.origin) && !blocked.contains(&p.origin)
                };
            if go {
                bytes += len;
                batch.push(p);
            } else {
                if p.origin == 0 {
                    barrier = true;
                }
                blocked.insert(p.origin);
                kept.push_back(p);
            }
        }
        self.queue = kept;
        batch
    }
}

/// Moves what is queued now behind what is held.
fn gather(held: &mut Held, queue: &mut mpsc::UnboundedReceiver<Pending>) {
    while held.queue.len() < MAX_BATCH_TXNS * 4 {
        let Ok(p) = queue.try_recv() else { break };
        held.queue.push_back(p);
    }
}

fn count(counts: &Counts, n: usize) {
    let n = n as u64;
    counts.queued.fetch_sub(n, Ordering::Relaxed);
    counts.batches.fetch_add(1, Ordering::Relaxed);
    counts.txns.fetch_add(n, Ordering::Relaxed);
    counts.largest.fetch_max(n, Ordering::Relaxed);
}

fn waiters_of(batch: Vec<Pending>) -> Vec<Waiter> {
    batch.into_iter().map(|p| p.done).collect()
}

fn lock(failed: &std::sync::Mutex<Failed>) -> std::sync::MutexGuard<'_, Failed> {
    failed.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks the connections of a batch failed, then fails its writes.
fn fail(failed: &std::sync::Mutex<Failed>, origins: &[u64], e: &ProposeError, waiters: Vec<Waiter>) {
    let mut f = lock(failed);
    origins.iter().for_each(|&o| f.add(o));
    drop(f);
    answer_all(waiters, e);
}

/// Waits for the next forward to be answered (taking in what is submitted meanwhile).
async fn wait_for_forward(
    raft: &Raft,
    forwards: &mut JoinSet<ForwardResult>,
    held: &mut Held,
    failed: &Arc<std::sync::Mutex<Failed>>,
    (queue, open): (&mut mpsc::UnboundedReceiver<Pending>, &mut bool),
) {
    if forwards.is_empty() {
        // Nothing can come back to unblock a held write: no connection is waiting on a forward.
        held.busy.clear();
        return;
    }
    loop {
        tokio::select! {
            Some(r) = forwards.join_next(), if !forwards.is_empty() => {
                resolved(raft, held, failed, r);
                return;
            }
            p = queue.recv(), if *open => match p {
                Some(p) => held.queue.push_back(p),
                None => *open = false,
            },
            else => return,
        }
    }
}

/// A forward was answered: its connections may send again. A failure marks them failed
/// first, so their held writes are failed rather than sent; a success hands the outcomes back
/// once this server has applied the leader's entry, while the next batches go out.
fn resolved(
    raft: &Raft,
    held: &mut Held,
    failed: &Arc<std::sync::Mutex<Failed>>,
    r: Result<ForwardResult, tokio::task::JoinError>,
) {
    let Ok(ForwardResult { origins, waiters, started, result }) = r else {
        // A forward task ends only by returning; cancelled means the runtime is stopping.
        held.busy.clear();
        return;
    };
    match result {
        Err(e) => {
            fail(failed, &origins, &e, waiters);
            origins.iter().for_each(|o| {
                held.busy.remove(o);
            });
        }
        Ok(forwarded) => {
            origins.iter().for_each(|o| {
                held.busy.remove(o);
            });
            let answered = started.elapsed();
            let (raft, failed) = (raft.clone(), failed.clone());
            tokio::spawn(async move {
                let left = FORWARD_DEADLINE.saturating_sub(started.elapsed());
                let applied = raft
                    .wait(Some(left))
                    .applied_index_at_least(Some(forwarded.applied_index), "a forwarded batch applied here")
                    .await;
                tracing::debug!(
                    writes = waiters.len(),
                    leader_reply_us = answered.as_micros() as u64,
                    local_apply_us = started.elapsed().saturating_sub(answered).as_micros() as u64,
                    "forwarded batch"
                );
                match applied {
                    Ok(_) => fan_out(waiters, forwarded.outcomes, forwarded.applied_index),
                    Err(e) => {
                        let e = ProposeError::Raft(format!("the leader's entry was not applied here in time: {e}"));
                        fail(&failed, &origins, &e, waiters)
                    }
                }
            });
        }
    }
}

/// Sends a batch to the leader and returns its answer: the entry's index and the outcomes. It
/// waits for at most [`FORWARD_DEADLINE`], and no longer than `leader` leads as far as this
/// server knows: once another leader (or none) is known here, the batch's fate is unknown (the
/// old leader may have logged it, and the new one may commit it), so it fails like a forward
/// on a broken link, closing its connections.
async fn forward_batch(raft: &Raft, net: &PeerNetwork, leader: u64, txns: TxnBatch) -> Result<Forwarded, ProposeError> {
    let request = net.request(raft, leader, PeerRequest::Forward(txns), FORWARD_DEADLINE);
    let reply = tokio::select! {
        reply = request => reply.map_err(|e| ProposeError::Raft(format!("forwarding to the leader: {e}")))?,
        _ = crate::role::leader_replaced(raft, leader) => {
            return Err(ProposeError::Raft(format!(
                "the leader ({leader}) was replaced while this write was forwarded to it: its fate is unknown"
            )))
        }
    };
    match reply {
        PeerReply::Forward(Ok(f)) => Ok(f),
        PeerReply::Forward(Err(why)) => Err(ProposeError::Raft(format!("the leader ({leader}) answered: {why}"))),
        _ => Err(ProposeError::Raft(format!("the leader ({leader}) answered a forward with another reply"))),
    }
}

/// Hands outcome i to waiter i, all of the entry at `index`. A count that does not match is a
/// bug; the waiters without an outcome are told the write's fate is unknown rather than given
/// another's.
fn fan_out(waiters: Vec<Waiter>, outcomes: Vec<TxnOutcome>, index: u64) {
    if outcomes.len() != waiters.len() {
        tracing::error!(
            batch = waiters.len(),
            outcomes = outcomes.len(),
            "a batch was applied with a different number of outcomes"
        );
    }
    let mut outcomes = outcomes.into_iter();
    for w in waiters {
        w.send(outcomes.next().ok_or_else(|| ProposeError::Raft("no outcome for this write".into())), index);
    }
}

fn answer_all(waiters: Vec<Waiter>, e: &ProposeError) {
    for w in waiters {
        w.send(Err(e.clone()), 0);
    }
}

fn propose_error(e: ClientWriteError<u64, openraft::BasicNode>) -> ProposeError {
    match e {
        ClientWriteError::ForwardToLeader(f) => ProposeError::NotLeader { leader: f.leader_id },
        other => ProposeError::Raft(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A held write of connection `origin`, tagged with `tag` (its session id) to follow it.
    fn pending(origin: u64, tag: i64) -> Pending {
        let txn = Txn {
            session: crate::proto::SessionId(tag),
            auth: Vec::new(),
            time_ms: 0,
            op: TxnOp::MoveSession { to_server: 1 },
        };
        Pending { origin, txn, done: Waiter::Plain(oneshot::channel().0) }
    }

    fn held(writes: &[(u64, i64)], busy: &[u64]) -> Held {
        Held { queue: writes.iter().map(|&(o, t)| pending(o, t)).collect(), busy: busy.iter().copied().collect() }
    }

    fn tags(ps: &[Pending]) -> Vec<i64> {
        ps.iter().map(|p| p.txn.session.0).collect()
    }

    /// A batch closes before a write that would take it past [`MAX_BATCH_BYTES`]; a write
    /// larger than that goes alone. So an entry is never much more than the larger of the two,
    /// far below the log's record limit and the peer link's frame limit.
    #[test]
    fn a_batch_closes_before_a_write_that_would_take_it_past_its_byte_bound() {
        let big = |origin: u64, tag: i64, bytes: usize| {
            let mut p = pending(origin, tag);
            let op = crate::txn::WriteOp::SetData { path: "/x".into(), data: Some(vec![0; bytes]), version: -1 };
            p.txn.op = TxnOp::Write(op);
            p
        };
        let mut h = Held { queue: VecDeque::new(), busy: BTreeSet::new() };
        h.queue.extend([big(1, 1, 7 << 20), big(2, 2, 7 << 20), big(3, 3, 12 << 20), big(4, 4, 1 << 10)]);
        let sizes = |b: &[Pending]| b.iter().map(|p| p.txn.approx_len()).sum::<usize>();
        let first = h.take_batch();
        assert_eq!(tags(&first), [1], "the second 7 MiB write would pass the bound");
        let second = h.take_batch();
        assert_eq!(tags(&second), [2]);
        let third = h.take_batch();
        assert_eq!(tags(&third), [3], "a write above the bound goes alone");
        assert!(sizes(&third) > MAX_BATCH_BYTES);
        assert_eq!(tags(&h.take_batch()), [4]);
        for b in [first, second] {
            assert!(sizes(&b) <= MAX_BATCH_BYTES);
        }
    }

    /// A deposed leader's expiries and reaps, and the writes forwarded to it, are failed, not
    /// forwarded on: the new leader decides from what it hears, the forwarding server closes
    /// its client's connection. A session claimed here, and this server's clients' writes, go on.
    #[test]
    fn a_leaders_own_decisions_are_not_forwarded() {
        let with_op = |origin: u64, tag: i64, op: TxnOp| {
            let mut p = pending(origin, tag);
            p.txn.op = op;
            p
        };
        let (tx, mut rx) = oneshot::channel();
        let mut expiry = with_op(0, 1, TxnOp::CloseSession { expired: true });
        expiry.done = Waiter::Plain(tx);
        let reap = with_op(0, 2, TxnOp::Write(crate::txn::WriteOp::DeleteContainer { path: "/c".into() }));
        let claim = with_op(0, 3, TxnOp::ClaimSession { server: 2 });
        let close = with_op(7, 4, TxnOp::CloseSession { expired: false });
        let write = pending(7, 5);
        // Writes another server forwarded here while this one led: that server decides where
        // its clients' writes go (and closes their connections on a failure); passed on to
        // the new leader, one could land after what its client sent since through the same
        // server.
        let (tx, mut forwarded_rx) = oneshot::channel();
        let mut forwarded = pending(FORWARDED_ORIGINS + 3, 6);
        forwarded.done = Waiter::Indexed(tx);
        let mut h =
            Held { queue: VecDeque::from([expiry, reap, claim, close, write, forwarded]), busy: BTreeSet::new() };
        let counts = Counts::default();
        counts.queued.store(6, Ordering::Relaxed);
        h.drop_leader_decisions(&counts);
        assert_eq!(tags(&Vec::from(std::mem::take(&mut h.queue))), [3, 4, 5]);
        assert_eq!(counts.queued.load(Ordering::Relaxed), 3);
        assert!(matches!(rx.try_recv(), Ok(Err(ProposeError::NotLeader { .. }))));
        assert!(matches!(forwarded_rx.try_recv(), Ok(Err(ProposeError::NotLeader { .. }))));
    }

    #[test]
    fn a_connection_busy_in_a_forward_is_held_back_with_all_its_later_writes_and_the_rest_go_in_order() {
        let mut h = held(&[(7, 1), (8, 2), (7, 3), (9, 4), (8, 5)], &[7]);
        let batch = h.take_batch();
        assert_eq!(tags(&batch), [2, 4, 5]);
        assert_eq!(tags(&Vec::from(std::mem::take(&mut h.queue))), [1, 3]);
    }

    #[test]
    fn nothing_of_a_batch_goes_twice_and_a_free_queue_goes_whole() {
        let mut h = held(&[(7, 1), (8, 2), (7, 3)], &[]);
        assert_eq!(tags(&h.take_batch()), [1, 2, 3]);
        assert!(h.queue.is_empty());
        assert!(h.take_batch().is_empty());
    }

    #[test]
    fn the_servers_own_write_waits_for_every_forward_and_holds_everything_behind_it() {
        // Something in flight: the server's write and all after it wait; what came before goes.
        let mut h = held(&[(8, 1), (0, 2), (9, 3), (8, 4)], &[7]);
        assert_eq!(tags(&h.take_batch()), [1]);
        assert_eq!(h.queue.len(), 3);
        // Nothing in flight: it goes, with what follows, in order.
        h.busy.clear();
        assert_eq!(tags(&h.take_batch()), [2, 3, 4]);
        // While it is in flight (origin 0 busy), nothing goes.
        let mut h = held(&[(8, 5)], &[0]);
        assert!(h.take_batch().is_empty());
        assert_eq!(h.queue.len(), 1);
    }

    #[test]
    fn writes_of_a_failed_connection_are_answered_at_once_and_never_batched() {
        let mut h = held(&[(7, 1), (8, 2)], &[]);
        let (done, mut rx) = oneshot::channel();
        h.queue.push_back(Pending { done: Waiter::Plain(done), ..pending(7, 3) });
        let mut failed = Failed::default();
        failed.add(7);
        h.drop_failed(&failed, &Counts::default());
        assert_eq!(tags(&h.take_batch()), [2]);
        assert!(matches!(rx.try_recv(), Ok(Err(ProposeError::Raft(_)))));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_batch_waits_for_the_writes_already_on_their_way_and_no_longer() {
        let (tx, rx) = mpsc::unbounded_channel();
        // Eight connections woken by one readiness event, each about to submit a write; the
        // last one's write wakes a ninth (a write it caused, a step later).
        for tag in 0..8 {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(pending(1, tag));
                if tag == 7 {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(pending(1, 8));
                    });
                }
            });
        }
        assert_eq!(rx.len(), 0, "nothing has run yet");
        settle(&rx).await;
        assert_eq!(rx.len(), 9, "every write on its way joined before the cut");

        // Nothing on its way: one yield and done, with the queue as it was.
        settle(&rx).await;
        assert_eq!(rx.len(), 9);

        // A producer that never stops does not hold the batch back for ever.
        let producer = tokio::spawn(async move {
            for tag in 100.. {
                if tx.send(pending(1, tag)).is_err() {
                    return;
                }
                tokio::task::yield_now().await;
            }
        });
        tokio::task::yield_now().await;
        let before = rx.len();
        settle(&rx).await;
        let joined = rx.len() - before;
        assert!(
            (1..=SETTLE_YIELDS + 1).contains(&joined),
            "{joined} writes joined while the producer ran; at most {SETTLE_YIELDS} yields were allowed"
        );
        producer.abort();
    }
}
