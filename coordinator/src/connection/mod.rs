//! One client connection, in three small stages:
//!
//! - [`handshake`]: the first frame. A four-letter word is answered and the connection closed;
//!   a ConnectRequest creates or resumes a session and registers the connection.
//! - [`reader`]: reads and decodes requests, proposes writes as soon as the session's earlier
//!   requests other than writes are answered (so a session's writes are logged in its order,
//!   and pipelined writes do not wait for each other) and queues a reply slot per request, in
//!   request order. At `max_outstanding_requests` waiting slots, or
//!   `max_outstanding_request_bytes` of waiting requests, it stops reading until replies go out.
//! - [`writer`]: turns each slot into its reply, in order: a read is executed when its turn
//!   comes, so it sees every earlier write of the session; notifications go out in ZooKeeper's
//!   order (see [`crate::outbox`]). [`reads`] executes the reads, within the reply-size and
//!   watch limits.
//!
//! ```text
//!  socket ─▶ reader ─┬─ write ─▶ Raft (proposed in order) ────────┐
//!                    └─ read, ping, sync, errors ────────────────┴─▶ slots (FIFO, bounded)
//!                                                                          │
//!  state machine ── notifications ─▶ outbox (bounded) ─────────────▶ writer ─▶ socket
//! ```
//!
//! Ending. The stages run as two futures of one task, inside one `select!` that also waits for
//! server shutdown, for the outbox to be closed (session moved, closed or expired, client not
//! reading) and, once the client has stopped sending, for a drain deadline. Whichever comes first
//! ends the connection: the other stage is dropped wherever it is waiting (no await of either
//! stage sits outside that `select!`), and [`serve`] then releases the connection's slot, its
//! watches and its pending replies before it returns.

mod handshake;
mod reader;
mod reads;
mod writer;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info};

use crate::config::CoordinatorConfig;
use crate::outbox::Outbox;
use crate::proto::{ErrorCode, Id, SessionId, Zxid};
use crate::raft::Raft;
use crate::request::{Reply, Request};
use crate::state::ServerState;
use crate::watch::ConnId;

/// What the server shares with every connection.
pub(crate) struct Shared {
    pub config: Arc<CoordinatorConfig>,
    pub raft: Raft,
    /// Where every write of this server is submitted.
    pub proposer: Proposer,
    /// Holds a reply on a server that does not lead until the leader knows its session alive;
    /// `None` for a server alone.
    pub liveness: Option<Arc<crate::liveness::LivenessGate>>,
    pub state: Arc<Mutex<ServerState>>,
    /// Set while an ensemble server refuses sessions for want of a leader (`refusing_clients`
    /// says why): before it has found one since it started, and while it has had no contact
    /// with one past its staleness bound. It then answers four-letter words as ZooKeeper's
    /// servers do when they are not serving ([`crate::fourlw::answer_not_serving`]). Outside
    /// the state's lock, as `ruok` and `dirs` take none.
    pub not_serving: std::sync::atomic::AtomicBool,
}

impl Shared {
    /// `standalone`, `leader`, `follower` or `observer`, as `srvr` reports it.
    pub fn mode(&self) -> &'static str {
        crate::fourlw::mode_of(&self.raft.metrics().borrow())
    }

    /// This server's id if it serves in an ensemble, which its clients' writes carry (see
    /// [`crate::txn::TxnOp::ClaimSession`]); `None` for a server alone.
    pub fn ensemble_server(&self) -> Option<u64> {
        self.config.is_ensemble().then(|| self.config.server_id())
    }

    /// Whether this server leads the ensemble (or runs alone).
    pub fn leads(&self) -> bool {
        self.raft.metrics().borrow().state == openraft::ServerState::Leader
    }

    /// The term this server leads, if it leads and is settled in it (it has applied an entry
    /// of that term: see [`crate::role::Role::settled`]).
    pub fn leading(&self) -> Option<u64> {
        crate::role::settled_term(&self.raft.metrics().borrow())
    }

    /// Waits until a reply to `session`'s request that arrived at `arrived` may go out (see
    /// [`crate::liveness`]); at once on a server alone.
    pub async fn liveness_covered(&self, session: SessionId, arrived: std::time::Instant) -> Result<(), String> {
        let Some(gate) = &self.liveness else { return Ok(()) };
        let limit = Duration::from_millis(self.config.max_leader_silence_ms);
        gate.wait_covered(session, arrived, limit, || self.leading()).await.map_err(|e| e.to_string())
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Wall clock in ms, stamped into transactions by their proposer.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

use crate::propose::{ProposeError, Proposer, WriteReceiver};

/// A sync's barrier ([`Proposer::barrier`]), started when the request arrives rather than when
/// its reply's turn comes, so that the syncs a session pipelines share the read-index rounds
/// under way ([`crate::rounds`]) instead of taking one after the other. Starting it early keeps
/// the promise: it covers every write committed before the sync arrived, and the session's own
/// earlier writes and reads are answered before it whatever it covers. Stopped if the
/// connection ends first.
struct SyncBarrier(tokio::task::JoinHandle<Result<(), ProposeError>>);

impl SyncBarrier {
    fn start(proposer: &Proposer) -> Self {
        let proposer = proposer.clone();
        SyncBarrier(tokio::spawn(async move { proposer.barrier().await }))
    }
}

impl Drop for SyncBarrier {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A connection with an established session, as its reader and writer share it.
struct Conn {
    shared: Arc<Shared>,
    id: ConnId,
    peer: SocketAddr,
    session: SessionId,
    /// The negotiated session timeout.
    timeout: Duration,
    outbox: Arc<Outbox>,
    /// How many of the connection's requests other than writes the writer has taken its cut
    /// for: executed a read, passed a sync's barrier, decided an answer's zxid (each when its
    /// turn in the reply order comes). The reader proposes the session's next write only once
    /// every earlier one is cut, so a read sees exactly the session's earlier writes, never a
    /// later one, and no reply comes after a later write's notifications or carries a later
    /// zxid than its reply (ZooKeeper processes a session's requests in order).
    cuts_done: watch::Sender<u64>,
    /// Bytes of requests that may wait for their replies (`max_outstanding_request_bytes`).
    request_bytes: Arc<tokio::sync::Semaphore>,
}

/// A request's place in the reply order, with when it arrived and its short name (for `cons`).
struct Queued {
    at: std::time::Instant,
    op: &'static str,
    slot: Slot,
    /// The request's bytes counted against `max_outstanding_request_bytes`, given back when
    /// the reply has been written.
    _budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// What the writer does when a request's turn comes.
enum Slot {
    /// Execute a read against the tree as it is then, with the identities the connection had
    /// when it sent the request.
    Read { xid: i32, req: Request, auth: Arc<[Id]> },
    /// Wait for a proposed write to be applied and answer with its outcome.
    Write { xid: i32, rx: WriteReceiver },
    /// Answer once this server has applied everything committed before the sync.
    Sync { xid: i32, path: String, barrier: SyncBarrier },
    /// An answer already decided; `zxid: None` stands for the server's last zxid at sending.
    Answer { xid: i32, zxid: Option<Zxid>, result: Result<Reply, ErrorCode> },
    /// Close the connection after the replies before this slot.
    Close,
}

/// Why a connection ends when its client sent closeSession (as `reader` words it).
const CLIENT_CLOSED_SESSION: &str = "the client closed its session";

/// Serves one accepted connection until it ends, then releases everything it held.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    id: ConnId,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let result = run(&shared, id, stream, peer, shutdown).await;
    {
        let mut st = shared.lock();
        st.remove_conn(id);
        if let Some(open) = st.open_per_address.get_mut(&peer.ip().to_canonical()) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                st.open_per_address.remove(&peer.ip().to_canonical());
            }
        }
    }
    match result {
        Ok(()) => debug!(conn = id, %peer, "connection closed"),
        // A session's normal end, one line per client: the session's own close is what an
        // operator may look for, and the leader logs expiries at INFO instead.
        Err(why) if why == CLIENT_CLOSED_SESSION => debug!(conn = id, %peer, "closed connection: {why}"),
        Err(why) => info!(conn = id, %peer, "closed connection: {why}"),
    }
}

async fn run(
    shared: &Arc<Shared>,
    id: ConnId,
    stream: TcpStream,
    peer: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    if *shutdown.borrow_and_update() {
        return Ok(());
    }
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut wr = BufWriter::new(wr);
    let established = tokio::select! {
        biased;
        _ = shutdown.changed() => return Ok(()),
        hello = handshake::run(shared, id, peer, &mut rd, &mut wr) => hello?,
    };
    let Some(established) = established else { return Ok(()) };
    let conn = Conn {
        shared: shared.clone(),
        id,
        peer,
        session: established.session,
        timeout: established.timeout,
        outbox: established.outbox,
        cuts_done: watch::channel(0).0,
        request_bytes: Arc::new(tokio::sync::Semaphore::new(shared.config.max_outstanding_request_bytes)),
    };

    let (slots_tx, slots_rx) = mpsc::channel(shared.config.max_outstanding_requests);
    let reader = reader::run(&conn, rd, established.auth, slots_tx);
    let writer = writer::run(&conn, wr, slots_rx);
    tokio::pin!(reader, writer);
    // Set when the reader has stopped: the writer then has until the deadline to hand over the
    // replies already owed (the session's timeout: a client that stopped sending is expired by
    // then anyway).
    let mut stopped_reading: Option<(reader::ReaderEnd, tokio::time::Instant)> = None;
    loop {
        let drain_deadline = stopped_reading.as_ref().map(|(_, at)| *at);
        tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(()),
            why = conn.outbox.wait_closed() => return Err(why.to_string()),
            end = &mut reader, if stopped_reading.is_none() => {
                debug!(conn = id, %peer, "stopped reading: {end}");
                stopped_reading = Some((end, tokio::time::Instant::now() + conn.timeout));
            }
            written = &mut writer => {
                return match (written, stopped_reading) {
                    (Err(why), _) => Err(why),
                    (Ok(()), Some((reader::ReaderEnd::Stopped(why), _))) => Err(why),
                    (Ok(()), _) => Ok(()),
                };
            }
            _ = tokio::time::sleep_until(drain_deadline.unwrap_or_else(tokio::time::Instant::now)),
                if drain_deadline.is_some() => {
                return Err(format!(
                    "the client stopped sending and did not take its last replies within {} ms",
                    conn.timeout.as_millis()
                ));
            }
        }
    }
}
