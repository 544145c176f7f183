//! The dialling side: openraft's network factory and one link per peer.
//!
//! ```text
//!  openraft replication / election ─▶ PeerClient::call ─try_send─▶ [bounded queue] ─▶ link task
//!        ▲                                                                   │ frames with ids
//!        └────────── oneshot reply (or Timeout at the RPC's hard TTL) ◀──── reader ◀── socket
//! ```
//!
//! Each peer has one link task owning at most one TCP connection. Requests are pipelined over
//! it with ids: openraft runs a replication stream, elections and snapshot chunks to the same
//! peer at once, and a vote must not wait behind a slow append. What a peer can cost is
//! bounded: the queue holds [`LinkOptions::queue`] calls (a full queue fails the call at once,
//! it never waits), and at most [`LinkOptions::in_flight`] requests are outstanding on the
//! connection. A connection on which requests are outstanding and nothing has arrived for
//! [`LinkOptions::stall`] is dropped (a partition that drops packets never closes TCP), and the
//! link dials again. After a failed dial or a refused handshake the link waits a bounded
//! exponential back-off before the next, failing calls meanwhile without touching the network,
//! unless the peer is heard from meanwhile (it dialled this server): then it is back, and the
//! next call dials at once ([`may_dial`]). The back-off is capped low, a few heartbeats: a dead
//! peer costs one refused or unanswered dial per cap, and a healed one is not left unreached for
//! seconds.
//!
//! The link says what goes wrong with its peer itself, once and then once a minute while it
//! lasts (see [`super::noise`] for openraft's repeats): a dial that fails, a connection given up,
//! a full queue, a peer silent on an open connection. A call that waits out its deadline while
//! the link has no connection (it is dialling), or on a connection on which nothing has arrived
//! since the call was made (a frozen peer, a partition that drops packets), fails as the peer
//! unreachable: openraft pauses before its next call to it. Only a peer that answers other calls
//! meanwhile (slow, not gone) times out as openraft's own.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::handshake::{LocalIdentity, Sightings};
use super::wire::{
    read_frame, write_frame, Hello, HelloReply, PeerMessage, PeerReply, PeerRequest, Refusal, WireError,
    MAX_FRAME_BYTES, MAX_HANDSHAKE_BYTES, PROTOCOL_VERSION,
};
use crate::log::store::Durable;
use crate::raft::TypeConfig;

/// The limits and timings of every link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkOptions {
    /// Calls waiting for the link task; one more fails at once.
    pub queue: usize,
    /// Requests sent and not yet answered on a connection.
    pub in_flight: usize,
    /// How long a dial and handshake may take: a round trip or two on a LAN. Longer means a
    /// dropped SYN, which the kernel resends only after a second: a fresh dial is quicker.
    pub connect_timeout: Duration,
    /// How long requests may be outstanding with nothing arriving before the connection is
    /// given up. Longer than a peer takes to answer one request (an fsync, a snapshot chunk).
    pub stall: Duration,
    /// How long a TCP connect may go unanswered before another is started beside it (see
    /// `connect_again_and_again`): a few round trips on a LAN.
    pub reconnect_every: Duration,
    /// The first back-off after a failed dial.
    pub backoff_min: Duration,
    /// The longest back-off: the longest a peer that comes back without dialling this server
    /// may wait to be dialled again (plus a dial).
    pub backoff_max: Duration,
    /// How long the process last heard for a peer's id must have been silent before a
    /// different process answering at its address is taken for its restart rather than a
    /// second server with the same id (see [`super::handshake::may_speak_for`]). The same as
    /// the listener's [`super::ListenerOptions::live_window`].
    pub live_window: Duration,
}

impl Default for LinkOptions {
    fn default() -> Self {
        LinkOptions {
            queue: 64,
            in_flight: 32,
            connect_timeout: Duration::from_secs(1),
            stall: Duration::from_secs(3),
            reconnect_every: Duration::from_millis(100),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_millis(250),
            live_window: Duration::from_secs(3),
        }
    }
}

/// The back-off after `failures` consecutive failed dials (at least 1): doubling from `min`,
/// never more than `max`.
pub fn backoff_delay(failures: u32, min: Duration, max: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    min.saturating_mul(1u32 << doublings).min(max)
}

/// Whether a link without a connection dials for a call at `now`: when it is not backing off
/// (`retry_at` is `None` or past), or when the peer has been heard from (`heard_at`: it dialled
/// this server, or answered) after the dial that failed (`failed_at`). A peer heard from is
/// back: waiting out the rest of the back-off would only leave it unreached.
pub fn may_dial(
    now: Instant,
    retry_at: Option<Instant>,
    failed_at: Option<Instant>,
    heard_at: Option<Instant>,
) -> bool {
    match retry_at {
        None => true,
        Some(at) if now >= at => true,
        Some(_) => matches!((failed_at, heard_at), (Some(failed), Some(heard)) if heard > failed),
    }
}

/// Opens a TCP connection to `addr`, starting another attempt every `every` while the earlier
/// ones have neither connected nor failed, and keeping the first to connect (the caller bounds
/// the whole). A SYN dropped by a partition is resent by the kernel only after a second, so a
/// single attempt begun just before the partition heals waits out that second; a fresh one goes
/// through at once. The first attempt to fail (the port closed: nobody listens) fails the dial.
async fn connect_again_and_again(addr: &str, every: Duration) -> std::io::Result<TcpStream> {
    let mut attempts = tokio::task::JoinSet::new();
    loop {
        let to = addr.to_string();
        attempts.spawn(async move { connect_once(&to).await });
        tokio::select! {
            // Dropping the set aborts the attempts still pending.
            Some(done) = attempts.join_next() => {
                return done.unwrap_or_else(|e| Err(std::io::Error::other(format!("a connection attempt stopped: {e}"))))
            }
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// One connection attempt to `addr` (each address it resolves to in turn). The socket is
/// marked `SO_REUSEADDR` and a connection to itself is refused: with the peer down and its
/// port in the kernel's ephemeral range, a dial can be given that very port as its own and
/// connect to itself (TCP's simultaneous open); its `TIME_WAIT` would then keep the peer from
/// binding its port when it starts, unless the socket allowed reuse.
async fn connect_once(addr: &str) -> std::io::Result<TcpStream> {
    let mut last = None;
    for to in tokio::net::lookup_host(addr).await? {
        let socket = if to.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.connect(to).await {
            Ok(stream) if connected_to_itself(stream.local_addr().ok(), stream.peer_addr().ok()) => {
                last = Some(std::io::Error::new(
                    std::io::ErrorKind::ConnectionRefused,
                    format!("nothing listens at {to} (the dial connected to itself)"),
                ));
            }
            Ok(stream) => return Ok(stream),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other(format!("{addr} resolves to no address"))))
}

/// Whether a connection's two ends are one socket.
fn connected_to_itself(local: Option<SocketAddr>, peer: Option<SocketAddr>) -> bool {
    local.is_some() && local == peer
}

/// Why a call to a peer failed before an answer came back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The peer could not be dialled, or the link is backing off after that.
    #[error("peer {target} at {addr} is unreachable: {why}")]
    Unreachable {
        /// The peer's id.
        target: u64,
        /// The address dialled.
        addr: String,
        /// The dial's failure.
        why: String,
    },
    /// The peer refused the handshake; the link keeps dialling (the configuration may be fixed).
    #[error("peer {target} at {addr} refused the connection: {refusal}")]
    Refused {
        /// The peer's id.
        target: u64,
        /// The address dialled.
        addr: String,
        /// The peer's reason, as it sent it.
        refusal: Refusal,
    },
    /// The listener at the peer's address accepted as a different process than the one heard
    /// speaking for the peer's id moments ago: two servers are configured with one id. The
    /// connection is closed and nothing is sent on it.
    #[error(
        "peer {target} at {addr} answered as process {answered:#x}, but process {heard:#x} spoke for server \
         {target} {silent_ms} ms ago: two live servers claim id {target}; give every server its own id"
    )]
    Duplicate {
        /// The peer's id.
        target: u64,
        /// The address dialled.
        addr: String,
        /// The instance the listener accepted with.
        answered: u64,
        /// The instance heard before.
        heard: u64,
        /// How long ago it was heard.
        silent_ms: u64,
    },
    /// The peer answered from another data directory than the one it was first heard with:
    /// it lost its data, and is not spoken to under its old id.
    #[error("peer {target} at {addr} is not spoken to: {refusal}")]
    ReplacedDataDir {
        /// The peer's id.
        target: u64,
        /// The address dialled.
        addr: String,
        /// Why, as a listener would say it.
        refusal: Refusal,
    },
    /// The link's queue is full: the peer is slower than the requests for it.
    #[error("peer {target}: {bound} requests are already queued for it")]
    QueueFull {
        /// The peer's id.
        target: u64,
        /// The queue's bound.
        bound: usize,
    },
    /// The connection broke (or was given up) with the request outstanding.
    #[error("peer {target}: connection lost: {why}")]
    Broken {
        /// The peer's id.
        target: u64,
        /// What happened.
        why: String,
    },
    /// The request does not fit in one frame.
    #[error("peer {target}: a request of {bytes} bytes exceeds the frame limit of {max} bytes")]
    TooLarge {
        /// The peer's id.
        target: u64,
        /// The encoded request's size.
        bytes: usize,
        /// The frame limit.
        max: usize,
    },
    /// An AppendEntries carries more entry bytes than [`MAX_APPEND_BYTES`]; openraft sends the
    /// first `fit` entries instead. Refused before anything is encoded.
    #[error(
        "peer {target}: {entries} entries of about {bytes} bytes exceed the {max} bytes one AppendEntries \
         carries; the first {fit} are sent"
    )]
    BatchTooLarge {
        /// The peer's id.
        target: u64,
        /// The entries openraft meant to send.
        entries: usize,
        /// Their size, as [`entry_bytes`] counts it.
        bytes: usize,
        /// How many of the leading ones fit.
        fit: usize,
        /// The bound.
        max: usize,
    },
    /// The peer answered with a reply of another kind than the request.
    #[error("peer {target} answered a {asked} request with another kind of reply")]
    WrongReply {
        /// The peer's id.
        target: u64,
        /// The request's kind.
        asked: RPCTypes,
    },
}

/// How openraft is told about a [`LinkError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Back off before retrying: the peer is down, refusing, or saturated.
    Unreachable,
    /// Retry at once: the connection broke, the next call dials again.
    Network,
    /// Send fewer entries.
    PayloadTooLarge,
}

impl LinkError {
    /// How openraft should react. A refusal is reported as unreachable, never as permanent:
    /// openraft backs off and calls again, and the link dials again, so a corrected
    /// configuration or a restarted peer is picked up.
    pub fn kind(&self) -> FailureKind {
        match self {
            LinkError::Unreachable { .. }
            | LinkError::Refused { .. }
            | LinkError::Duplicate { .. }
            | LinkError::ReplacedDataDir { .. }
            | LinkError::QueueFull { .. } => FailureKind::Unreachable,
            LinkError::Broken { .. } | LinkError::WrongReply { .. } => FailureKind::Network,
            LinkError::TooLarge { .. } | LinkError::BatchTooLarge { .. } => FailureKind::PayloadTooLarge,
        }
    }
}

/// The address of each peer, by server id. A peer missing here is dialled at the address its
/// Raft membership entry names.
pub type AddressBook = BTreeMap<u64, String>;

/// openraft's network factory: one [`PeerClient`] per call of `new_client`, sharing one link per
/// peer. Dropping the factory (when its Raft shuts down) ends the links and their connections.
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    local: LocalIdentity,
    addresses: Arc<AddressBook>,
    options: LinkOptions,
    sightings: Arc<Sightings>,
    links: Arc<Mutex<HashMap<u64, Arc<Link>>>>,
    /// When set, the commit index sent to followers is held to this server's durable log.
    durable: Option<Durable>,
}

/// The most entry bytes one AppendEntries carries (a single larger entry goes alone).
///
/// openraft 0.9 gives every AppendEntries its heartbeat interval (100 ms) to be sent, appended
/// and fdatasynced by the follower, and answered, whatever its size, and nothing outside
/// openraft can lengthen that deadline. A follower behind on large entries must therefore be
/// sent batches that fit it: a megabyte crosses a LAN in about 10 ms. Batches of openraft's
/// size (hundreds of entries, each up to [`crate::propose::MAX_BATCH_BYTES`]) timed out every
/// time, and their encoding, hundreds of megabytes, starved the heartbeats to the other voters.
pub const MAX_APPEND_BYTES: usize = 1 << 20;

/// About how many bytes `entry` takes on the wire: the sum its transactions' sizes, as the
/// proposer bounds its batches by ([`crate::txn::Txn::approx_len`]). Cheap: nothing is encoded.
pub fn entry_bytes(entry: &openraft::Entry<TypeConfig>) -> usize {
    const FIXED: usize = 32;
    FIXED
        + match &entry.payload {
            openraft::EntryPayload::Blank => 0,
            openraft::EntryPayload::Normal(batch) => batch.iter().map(crate::txn::Txn::approx_len).sum(),
            openraft::EntryPayload::Membership(m) => m.nodes().map(|(_, n)| 16 + n.addr.len()).sum(),
        }
}

/// How many of the leading entries of sizes `sizes` fit within `max` bytes together: at least
/// one, so that an entry larger than `max` by itself is still sent (alone).
pub fn entries_that_fit(sizes: impl IntoIterator<Item = usize>, max: usize) -> usize {
    let mut total = 0usize;
    let mut fit = 0;
    for size in sizes {
        total = total.saturating_add(size);
        if total > max && fit > 0 {
            break;
        }
        fit += 1;
    }
    fit
}

/// How long an AppendEntries may wait for the leader's own fdatasync of the commit index it
/// carries, before it goes with the last durable one instead (the next message carries the
/// rest). Well under openraft's deadline for the call, its heartbeat interval.
pub const COMMIT_PATIENCE: Duration = Duration::from_millis(20);

impl PeerNetwork {
    /// A factory dialling as `local`. `sightings` is shared with this server's listener.
    pub fn new(local: LocalIdentity, addresses: AddressBook, options: LinkOptions, sightings: Arc<Sightings>) -> Self {
        PeerNetwork { local, addresses: Arc::new(addresses), options, sightings, links: Arc::default(), durable: None }
    }

    /// Never tells a follower of a commit index past what this server's log holds durably
    /// (waiting up to [`COMMIT_PATIENCE`] for it): required when the log store reports a
    /// leader's entries flushed before their fdatasync
    /// ([`crate::log::LogStore::pipelining_as_leader`]), so that no follower applies, and
    /// answers a client for, an entry a crash of the leader could still take back from a
    /// quorum.
    pub fn holding_commits_to(mut self, durable: Durable) -> Self {
        self.durable = Some(durable);
        self
    }

    fn link(&self, target: u64, node: &BasicNode) -> Arc<Link> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        links
            .entry(target)
            .or_insert_with(|| {
                let addr = self.addresses.get(&target).cloned().unwrap_or_else(|| node.addr.clone());
                Arc::new(Link::start(self.local, target, addr, self.options, self.sightings.clone()))
            })
            .clone()
    }
}

impl PeerNetwork {
    /// How long ago server `id` last sent this server a frame only a leader sends (entries, a
    /// heartbeat, a snapshot chunk), or `None` if it never did: see [`Sightings::saw_leading`].
    pub fn leading_silent_for(&self, id: u64) -> Option<Duration> {
        self.sightings.leading_silent_for(id, Instant::now())
    }

    /// How long ago server `id` last sent this server any frame, or `None` if it never did, or
    /// its process has hung up since: for reports on who can be reached.
    pub fn heard_from(&self, id: u64) -> Option<Duration> {
        self.sightings.active(id, Instant::now()).filter(|a| !a.hung_up).map(|a| a.silent_for)
    }

    /// Why server `id` refused this server's last dial, if it refused it for who either end is
    /// (another cluster, a duplicate id, a replaced data directory) and no dial has succeeded
    /// since; `None` if this server has not dialled it.
    pub fn refused_by(&self, id: u64) -> Option<String> {
        let links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let link = links.get(&id)?;
        let why = link.conn.refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
        why
    }

    /// Sends `request` to server `target` outside Raft and waits for the reply, at most
    /// `deadline`: how followers forward writes, report session liveness and ask for a read
    /// index, and how voters ask for pre-votes and a leader proves it leads. The address is the
    /// configured one, or else the one the ensemble's membership (`raft`) gives: a server
    /// added after this one was configured.
    pub async fn request(
        &self,
        raft: &crate::raft::Raft,
        target: u64,
        request: PeerRequest,
        deadline: Duration,
    ) -> Result<PeerReply, LinkError> {
        let node = raft.metrics().borrow().membership_config.membership().get_node(&target).cloned();
        if !self.addresses.contains_key(&target) && node.is_none() {
            return Err(LinkError::Unreachable {
                target,
                addr: String::new(),
                why: "it is neither in this server's `servers` list nor a member of the ensemble".into(),
            });
        }
        let link = self.link(target, &node.unwrap_or(BasicNode { addr: String::new() }));
        let (tx, rx) = oneshot::channel();
        match link.calls.try_send(Call { request, reply: tx }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(link.queue_full()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(LinkError::Broken { target, why: "the link has stopped".into() })
            }
        }
        match tokio::time::timeout(deadline, rx).await {
            Err(_) => Err(LinkError::Broken { target, why: format!("no reply within {deadline:?}") }),
            Ok(Err(_)) => Err(LinkError::Broken { target, why: "the link has stopped".into() }),
            Ok(Ok(r)) => r,
        }
    }
}

impl openraft::RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> PeerClient {
        PeerClient {
            local_id: self.local.server_id,
            target,
            link: self.link(target, node),
            durable: self.durable.clone(),
        }
    }
}

/// One call waiting for the link task.
struct Call {
    request: PeerRequest,
    reply: oneshot::Sender<Result<PeerReply, LinkError>>,
}

/// The handle on one peer's link task; the task ends when the last handle is dropped.
#[derive(Debug)]
struct Link {
    calls: mpsc::Sender<Call>,
    bound: usize,
    task: JoinHandle<()>,
    target: u64,
    addr: String,
    /// What the link task says of its connection, for the callers (see [`PeerClient::call`]).
    conn: Arc<ConnState>,
    /// When the link last logged its queue full (see [`Link::queue_full`]).
    full_logged_at: Mutex<Option<Instant>>,
}

/// Why a call waited out its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waited {
    /// The link had no connection: it was dialling.
    Dialling,
    /// Nothing arrived on the open connection since the call was made.
    Silent,
    /// The peer answered other calls meanwhile: this one was slow.
    Slow,
}

/// Why a call made at `sent` waited out its deadline, the connection being `open` and the
/// last frame having arrived at `heard` (both in the same clock's microseconds).
fn waited(open: bool, heard: u64, sent: u64) -> Waited {
    match (open, heard >= sent) {
        (false, _) => Waited::Dialling,
        (true, false) => Waited::Silent,
        (true, true) => Waited::Slow,
    }
}

/// What a link task says of its connection to the callers of the link.
#[derive(Debug)]
struct ConnState {
    /// What `heard_us` counts from.
    base: Instant,
    /// Whether the task holds an open connection.
    open: AtomicBool,
    /// When a frame last arrived (or the connection opened), in microseconds from `base`.
    heard_us: AtomicU64,
    /// Whether the peer was reported silent and has not answered since.
    silence_reported: AtomicBool,
    /// Why the peer refused the last dial for who either end is (another cluster, a duplicate
    /// id, a replaced data directory), until a dial succeeds: for the answers that would
    /// otherwise only say the peer was not heard from.
    refused: Mutex<Option<String>>,
}

impl ConnState {
    fn new() -> Self {
        ConnState {
            base: Instant::now(),
            open: AtomicBool::new(false),
            heard_us: AtomicU64::new(0),
            silence_reported: AtomicBool::new(false),
            refused: Mutex::new(None),
        }
    }

    fn set_refused(&self, why: Option<String>) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = why;
    }

    fn now_us(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    fn heard(&self) {
        self.heard_us.fetch_max(self.now_us(), Ordering::Relaxed);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Link {
    fn start(local: LocalIdentity, target: u64, addr: String, options: LinkOptions, sightings: Arc<Sightings>) -> Link {
        let (calls, rx) = mpsc::channel(options.queue.max(1));
        let conn = Arc::new(ConnState::new());
        let task = tokio::spawn(LinkTask::new(local, target, addr.clone(), options, sightings, conn.clone()).run(rx));
        Link { calls, bound: options.queue.max(1), task, target, addr, conn, full_logged_at: Mutex::new(None) }
    }

    /// The error of a call that waited out its deadline `ttl` since it was queued at `sent`
    /// (see [`ConnState::now_us`]), `None` when the peer has answered anything since (it is
    /// slow, not gone: a timeout of openraft's own). Without a connection (the link is
    /// dialling) the dial's outcome is the link's to log; on an open connection that has been
    /// silent since, the link logs the silence once until the peer answers again. Either way
    /// the call fails as the peer unreachable, and openraft pauses before its next call
    /// instead of timing out call after call (and logging four lines for each).
    fn waited_out(&self, sent: u64, ttl: Duration) -> Option<LinkError> {
        let unreachable = |why| LinkError::Unreachable { target: self.target, addr: self.addr.clone(), why };
        match waited(self.conn.open.load(Ordering::Relaxed), self.conn.heard_us.load(Ordering::Relaxed), sent) {
            Waited::Slow => None,
            Waited::Dialling => {
                Some(unreachable(format!("no connection to it within {ttl:?}: the link is dialling it")))
            }
            Waited::Silent => {
                let e = unreachable(format!("it answered nothing within {ttl:?} on an open connection"));
                if !self.conn.silence_reported.swap(true, Ordering::Relaxed) {
                    tracing::warn!(peer = self.target, "{e}; calls to it fail until it answers");
                }
                Some(e)
            }
        }
    }

    /// The error of a call that found the queue full. The link says so itself, once and then
    /// at most every [`STILL_DOWN_EVERY`] while it lasts: a peer that answers nothing (a
    /// frozen process) fills the queue, and every call after that, from openraft's replication
    /// or the leader's proof rounds, fails at once until the link gives the connection up.
    fn queue_full(&self) -> LinkError {
        let e = LinkError::QueueFull { target: self.target, bound: self.bound };
        let now = Instant::now();
        let mut logged_at = self.full_logged_at.lock().unwrap_or_else(|p| p.into_inner());
        if failure_log_due(false, *logged_at, now) {
            *logged_at = Some(now);
            tracing::warn!(peer = self.target, "{e}: calls to it fail at once until it answers");
        }
        e
    }
}

/// An open, accepted connection.
struct Conn {
    writer: OwnedWriteHalf,
    replies: mpsc::Receiver<Result<PeerMessage, WireError>>,
    reader: JoinHandle<()>,
    next_id: u64,
    pending: HashMap<u64, oneshot::Sender<Result<PeerReply, LinkError>>>,
    /// When a frame last arrived, or the first request of an idle spell went out.
    heard: Instant,
    /// The peer's process instance, from its handshake reply.
    instance: u64,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

struct LinkTask {
    local: LocalIdentity,
    target: u64,
    addr: String,
    options: LinkOptions,
    sightings: Arc<Sightings>,
    conn: Option<Conn>,
    failures: u32,
    retry_at: Option<Instant>,
    /// When the last dial failed.
    failed_at: Option<Instant>,
    /// The error of the last failed dial, returned while backing off and logged on a change.
    last_failure: Option<LinkError>,
    /// When the first of the dials failing since the last connection failed.
    down_since: Option<Instant>,
    /// When the failure was last logged.
    logged_at: Option<Instant>,
    /// What the callers are told of `conn` (see [`ConnState`]).
    shared: Arc<ConnState>,
}

impl LinkTask {
    fn new(
        local: LocalIdentity,
        target: u64,
        addr: String,
        options: LinkOptions,
        sightings: Arc<Sightings>,
        shared: Arc<ConnState>,
    ) -> Self {
        LinkTask {
            local,
            target,
            addr,
            options,
            sightings,
            conn: None,
            failures: 0,
            retry_at: None,
            failed_at: None,
            last_failure: None,
            down_since: None,
            logged_at: None,
            shared,
        }
    }

    async fn run(mut self, mut calls: mpsc::Receiver<Call>) {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                let Some(call) = calls.recv().await else { return };
                self.dial_and_send(call).await;
                continue;
            };
            let room = conn.pending.len() < self.options.in_flight;
            let stall_at = conn.heard + self.options.stall;
            let waiting = !conn.pending.is_empty();
            tokio::select! {
                call = calls.recv(), if room => match call {
                    Some(call) => self.send(call).await,
                    None => return,
                },
                msg = conn.replies.recv() => self.on_reply(msg),
                _ = tokio::time::sleep_until(stall_at), if waiting => {
                    let why = format!("no reply for {:?} with requests outstanding", self.options.stall);
                    tracing::warn!(peer = self.target, addr = %self.addr, "{why}; dialling again");
                    self.drop_conn(why);
                }
            }
        }
    }

    async fn dial_and_send(&mut self, call: Call) {
        if call.reply.is_closed() {
            return;
        }
        if let Some(e) = &self.last_failure {
            let now = Instant::now();
            let heard_at = self.sightings.active(self.target, now).map(|a| now - a.silent_for);
            // Only a peer that could not be reached is dialled early when heard from: one that
            // refused (a configuration error, a duplicate id) is alive and would refuse again.
            let failed_at = match e {
                LinkError::Unreachable { .. } => self.failed_at,
                _ => None,
            };
            if !may_dial(now, self.retry_at, failed_at, heard_at) {
                let _ = call.reply.send(Err(e.clone()));
                return;
            }
        }
        match tokio::time::timeout(self.options.connect_timeout, self.dial()).await {
            Ok(Ok(conn)) => {
                if self.last_failure.take().is_some() {
                    let down = self.down_since.map(|t| t.elapsed()).unwrap_or_default();
                    tracing::info!(peer = self.target, addr = %self.addr, "peer connection established again after {}", Secs(down));
                }
                self.down_since = None;
                self.logged_at = None;
                self.failures = 0;
                self.retry_at = None;
                self.failed_at = None;
                self.conn = Some(conn);
                self.shared.heard();
                self.shared.open.store(true, Ordering::Relaxed);
                self.shared.set_refused(None);
                self.send(call).await;
            }
            Ok(Err(e)) => self.dial_failed(e, call),
            Err(_) => {
                let why = format!("no handshake within {:?}", self.options.connect_timeout);
                let e = LinkError::Unreachable { target: self.target, addr: self.addr.clone(), why };
                self.dial_failed(e, call)
            }
        }
    }

    fn dial_failed(&mut self, e: LinkError, call: Call) {
        // The reason is logged when it changes, and while it lasts once every STILL_DOWN_EVERY,
        // not at every retry: a refusal names a configuration error the operator must see
        // clearly, not drowned in repeats (openraft's own repeats are dropped, `super::noise`).
        let now = Instant::now();
        let down_since = *self.down_since.get_or_insert(now);
        let changed = self.last_failure.as_ref() != Some(&e);
        if let LinkError::Refused { .. } | LinkError::Duplicate { .. } | LinkError::ReplacedDataDir { .. } = &e {
            self.shared.set_refused(Some(e.to_string()));
        }
        if failure_log_due(changed, self.logged_at, now) {
            let lasting = if changed { String::new() } else { format!(" (for {})", Secs(now - down_since)) };
            match &e {
                LinkError::Refused { .. } | LinkError::Duplicate { .. } | LinkError::ReplacedDataDir { .. } => {
                    tracing::error!(peer = self.target, "{e}{lasting}")
                }
                _ => tracing::warn!(peer = self.target, "{e}{lasting}"),
            }
            self.logged_at = Some(now);
        }
        self.failures = self.failures.saturating_add(1);
        let delay = backoff_delay(self.failures, self.options.backoff_min, self.options.backoff_max);
        self.failed_at = Some(now);
        self.retry_at = Some(now + delay);
        self.last_failure = Some(e.clone());
        let _ = call.reply.send(Err(e));
    }

    async fn dial(&self) -> Result<Conn, LinkError> {
        let unreachable = |why: String| LinkError::Unreachable { target: self.target, addr: self.addr.clone(), why };
        let stream = connect_again_and_again(&self.addr, self.options.reconnect_every)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        let hello = Hello {
            version: PROTOCOL_VERSION,
            cluster_id: self.local.cluster_id,
            from: self.local.server_id,
            to: self.target,
            instance: self.local.instance,
            incarnation: self.local.incarnation,
        };
        write_frame(&mut writer, &hello.encode()).await.map_err(|e| unreachable(e.to_string()))?;
        let body = read_frame(&mut reader, MAX_HANDSHAKE_BYTES).await.map_err(|e| unreachable(e.to_string()))?;
        let (instance, incarnation) = match HelloReply::decode(&body).map_err(|e| unreachable(e.to_string()))? {
            HelloReply::Accepted { instance, incarnation } => (instance, incarnation),
            HelloReply::Refused(refusal) => {
                return Err(LinkError::Refused { target: self.target, addr: self.addr.clone(), refusal })
            }
        };
        // A server whose data was wiped may not come back under its old id, whichever end
        // dials: nothing is sent to it.
        if let Err(r) = self.sightings.check_data_dir(self.target, incarnation) {
            let refusal = Refusal::ReplacedDataDir { id: self.target, known: r.known, presented: r.presented };
            // The refused server accepted us: it learns why only if told. Best effort, bounded.
            if let Ok(body) = PeerMessage::Refused(refusal.clone()).encode() {
                let _ = tokio::time::timeout(self.options.connect_timeout, write_frame(&mut writer, &body)).await;
            }
            return Err(LinkError::ReplacedDataDir { target: self.target, addr: self.addr.clone(), refusal });
        }
        // The dialler's half of duplicate-id detection: the listener checked who we are, we
        // check who it is. Dropping the socket here closes it before anything is sent.
        if let Err(heard) = self.sightings.admit(self.target, instance, Instant::now(), self.options.live_window) {
            return Err(LinkError::Duplicate {
                target: self.target,
                addr: self.addr.clone(),
                answered: instance,
                heard: heard.instance,
                silent_ms: heard.silent_for.as_millis() as u64,
            });
        }
        let (tx, replies) = mpsc::channel(self.options.in_flight.max(1));
        let reader = tokio::spawn(async move {
            loop {
                let msg = match read_frame(&mut reader, MAX_FRAME_BYTES).await {
                    Ok(body) => PeerMessage::decode(&body),
                    Err(e) => Err(e),
                };
                let end = msg.is_err();
                if tx.send(msg).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Conn { writer, replies, reader, next_id: 1, pending: HashMap::new(), heard: Instant::now(), instance })
    }

    async fn send(&mut self, call: Call) {
        // A caller that gave up (its deadline passed while queued) is not sent for.
        if call.reply.is_closed() {
            return;
        }
        // Only called with a connection open; should it have just closed, the call fails
        // like any call on a lost connection and the next one dials.
        let Some(conn) = self.conn.as_mut() else {
            let _ = call.reply.send(Err(LinkError::Broken { target: self.target, why: "not connected".into() }));
            return;
        };
        let id = conn.next_id;
        conn.next_id += 1;
        let body = match (PeerMessage::Request { id, body: call.request }).encode() {
            Ok(b) if b.len() <= MAX_FRAME_BYTES => b,
            Ok(b) => {
                let e = LinkError::TooLarge { target: self.target, bytes: b.len(), max: MAX_FRAME_BYTES };
                let _ = call.reply.send(Err(e));
                return;
            }
            Err(e) => {
                let _ = call.reply.send(Err(LinkError::Broken { target: self.target, why: e.to_string() }));
                return;
            }
        };
        if conn.pending.is_empty() {
            conn.heard = Instant::now();
        }
        conn.pending.insert(id, call.reply);
        // A peer that stops reading fills the socket's buffer and blocks this write: bounded
        // like a silent connection.
        match tokio::time::timeout(self.options.stall, write_frame(&mut conn.writer, &body)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.drop_conn(e.to_string()),
            Err(_) => self.drop_conn(format!("a request could not be written for {:?}", self.options.stall)),
        }
    }

    fn on_reply(&mut self, msg: Option<Result<PeerMessage, WireError>>) {
        let Some(conn) = self.conn.as_mut() else { return };
        match msg {
            Some(Ok(PeerMessage::Reply { id, body })) => {
                conn.heard = Instant::now();
                self.shared.heard();
                if self.shared.silence_reported.swap(false, Ordering::Relaxed) {
                    tracing::info!(peer = self.target, addr = %self.addr, "peer answers again");
                }
                self.sightings.saw(self.target, conn.instance, conn.heard);
                // A reply whose caller has timed out is dropped here.
                if let Some(tx) = conn.pending.remove(&id) {
                    let _ = tx.send(Ok(body));
                }
            }
            Some(Ok(PeerMessage::Request { .. } | PeerMessage::Refused(_))) => {
                self.drop_conn("the peer sent a dialler's message on a connection it accepted".into());
            }
            Some(Err(e)) => {
                if e.is_hang_up() {
                    self.sightings.hung_up(self.target, conn.instance);
                }
                self.drop_conn(e.to_string())
            }
            None => self.drop_conn("the connection closed".into()),
        }
    }

    /// Closes the connection; every outstanding request fails with `why`.
    fn drop_conn(&mut self, why: String) {
        let Some(conn) = self.conn.take() else { return };
        self.shared.open.store(false, Ordering::Relaxed);
        tracing::debug!(peer = self.target, addr = %self.addr, outstanding = conn.pending.len(), "peer connection closed: {why}");
        let mut conn = conn;
        for (_, tx) in conn.pending.drain() {
            let _ = tx.send(Err(LinkError::Broken { target: self.target, why: why.clone() }));
        }
    }
}

/// One peer as openraft sees it; cheap to create, all share the peer's link.
#[derive(Debug)]
pub struct PeerClient {
    local_id: u64,
    target: u64,
    link: Arc<Link>,
    durable: Option<Durable>,
}

type RpcResult<T, E> = Result<T, RPCError<u64, BasicNode, E>>;

impl PeerClient {
    /// Sends `request` (a Raft RPC of `kind`) and waits for its reply, at most the RPC's hard TTL.
    async fn call<E: std::error::Error>(
        &self,
        request: PeerRequest,
        kind: RPCTypes,
        option: &RPCOption,
    ) -> RpcResult<PeerReply, E> {
        let ttl = option.hard_ttl();
        let (tx, rx) = oneshot::channel();
        let entries = match &request {
            PeerRequest::AppendEntries(r) => r.entries.len() as u64,
            _ => 0,
        };
        let failed = |e: LinkError| -> RPCError<u64, BasicNode, E> {
            match e.kind() {
                FailureKind::Unreachable => RPCError::Unreachable(Unreachable::new(&e)),
                FailureKind::Network => RPCError::Network(NetworkError::new(&e)),
                // Half the entries fit where all did not; openraft retries with that many.
                FailureKind::PayloadTooLarge => RPCError::PayloadTooLarge(
                    PayloadTooLarge::new_entries_hint((entries / 2).max(1)).with_source_error(&e),
                ),
            }
        };
        let sent = self.link.conn.now_us();
        match self.link.calls.try_send(Call { request, reply: tx }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(failed(self.link.queue_full())),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(failed(LinkError::Broken { target: self.target, why: "the link has stopped".into() }))
            }
        }
        let timeout =
            || RPCError::Timeout(Timeout { action: kind, id: self.local_id, target: self.target, timeout: ttl });
        match tokio::time::timeout(ttl, rx).await {
            Err(_) => match self.link.waited_out(sent, ttl) {
                Some(e) => Err(failed(e)),
                None => Err(timeout()),
            },
            Ok(Err(_)) => Err(failed(LinkError::Broken { target: self.target, why: "the link has stopped".into() })),
            Ok(Ok(Ok(reply))) => Ok(reply),
            Ok(Ok(Err(e))) => Err(failed(e)),
        }
    }

    fn wrong_reply<E: std::error::Error>(&self, asked: RPCTypes) -> RPCError<u64, BasicNode, E> {
        RPCError::Network(NetworkError::new(&LinkError::WrongReply { target: self.target, asked }))
    }
}

/// How often a link logs a failure that lasts (the first time at once, and whenever the reason
/// changes).
pub const STILL_DOWN_EVERY: Duration = Duration::from_secs(60);

/// Whether a link logs a failed dial: when the reason `changed`, else when the failure was
/// last logged at least [`STILL_DOWN_EVERY`] before `now` (or never).
pub fn failure_log_due(changed: bool, logged_at: Option<Instant>, now: Instant) -> bool {
    changed || logged_at.is_none_or(|at| now.saturating_duration_since(at) >= STILL_DOWN_EVERY)
}

/// A duration as seconds with one decimal, for log lines.
struct Secs(Duration);

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} s", self.0.as_secs_f64())
    }
}

/// How long openraft's replication to a peer first pauses after the link reports it
/// unreachable, before calling again; each further failure doubles the pause, up to
/// [`REPLICATION_PAUSE_MAX`]. The link keeps its own back-off (calls meanwhile fail at once,
/// without touching the network) and dials at once when the peer is heard from, so a short
/// pause costs nothing and keeps a healed peer from waiting out openraft's default of 500 ms.
pub const REPLICATION_PAUSE: Duration = Duration::from_millis(50);

/// The longest pause of openraft's replication to an unreachable peer: the link's own back-off
/// cap. openraft logs every failed call (dropped from the log by [`super::noise`]); pausing
/// longer spares the work, not only the lines.
pub const REPLICATION_PAUSE_MAX: Duration = Duration::from_millis(250);

impl openraft::RaftNetwork<TypeConfig> for PeerClient {
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new((1..).map(|n| backoff_delay(n, REPLICATION_PAUSE, REPLICATION_PAUSE_MAX)))
    }

    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>, RaftError<u64>> {
        // Refused before it is encoded: openraft retries at once with the first `fit` entries,
        // and keeps that count for its next few calls (its `entries_hint`).
        let fit = entries_that_fit(rpc.entries.iter().map(entry_bytes), MAX_APPEND_BYTES);
        if fit < rpc.entries.len() {
            let e = LinkError::BatchTooLarge {
                target: self.target,
                entries: rpc.entries.len(),
                bytes: rpc.entries.iter().map(entry_bytes).sum(),
                fit,
                max: MAX_APPEND_BYTES,
            };
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit as u64).with_source_error(&e)));
        }
        if let Some(durable) = &self.durable {
            rpc.leader_commit = durable.commit_to_send(rpc.leader_commit, COMMIT_PATIENCE).await;
        }
        match self.call(PeerRequest::AppendEntries(rpc), RPCTypes::AppendEntries, &option).await? {
            PeerReply::AppendEntries(Ok(r)) => Ok(r),
            PeerReply::AppendEntries(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.wrong_reply(RPCTypes::AppendEntries)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        match self.call(PeerRequest::InstallSnapshot(rpc), RPCTypes::InstallSnapshot, &option).await? {
            PeerReply::InstallSnapshot(Ok(r)) => Ok(r),
            PeerReply::InstallSnapshot(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.wrong_reply(RPCTypes::InstallSnapshot)),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> RpcResult<VoteResponse<u64>, RaftError<u64>> {
        match self.call(PeerRequest::Vote(rpc), RPCTypes::Vote, &option).await? {
            PeerReply::Vote(Ok(r)) => Ok(r),
            PeerReply::Vote(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            _ => Err(self.wrong_reply(RPCTypes::Vote)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lasting_failure_is_logged_at_once_then_once_a_minute_and_at_every_change_of_reason() {
        let t0 = Instant::now();
        let second = Duration::from_secs(1);
        assert!(failure_log_due(false, None, t0), "never logged yet");
        assert!(failure_log_due(true, Some(t0), t0 + second), "the reason changed");
        assert!(!failure_log_due(false, Some(t0), t0 + second), "a retry a second later");
        assert!(!failure_log_due(false, Some(t0), t0 + STILL_DOWN_EVERY - second));
        assert!(failure_log_due(false, Some(t0), t0 + STILL_DOWN_EVERY), "the reminder");
        assert!(!failure_log_due(false, Some(t0 + second), t0), "a clock read out of order logs nothing");
    }

    #[test]
    fn back_off_doubles_from_the_minimum_and_stays_within_a_few_heartbeats() {
        let o = LinkOptions::default();
        let delays: Vec<u64> =
            (1..=8).map(|n| backoff_delay(n, o.backoff_min, o.backoff_max).as_millis() as u64).collect();
        assert_eq!(delays, [50, 100, 200, 250, 250, 250, 250, 250]);
        assert_eq!(backoff_delay(u32::MAX, o.backoff_min, o.backoff_max), o.backoff_max, "no overflow");
        // A peer back after a partition is dialled again within the cap plus a dial. The dial
        // keeps a whole second: on a loaded machine a handshake can take more than half of one,
        // and a failed dial fails the forwarded writes waiting on it.
        assert!(o.backoff_max + o.connect_timeout <= Duration::from_millis(1250), "{o:?}");
    }

    #[tokio::test]
    async fn a_connect_reaches_a_listener_and_fails_at_once_on_a_closed_port() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let every = Duration::from_millis(100);
        let stream = tokio::time::timeout(Duration::from_secs(5), connect_again_and_again(&addr, every)).await;
        assert!(matches!(stream, Ok(Ok(_))), "{stream:?}");
        drop(listener);
        // Nobody listens now: the first attempt's refusal ends the dial, no retry behind it.
        let refused = tokio::time::timeout(Duration::from_secs(5), connect_again_and_again(&addr, every)).await;
        assert!(matches!(refused, Ok(Err(_))), "{refused:?}");
    }

    #[tokio::test]
    async fn a_call_that_waits_out_its_deadline_while_the_link_dials_fails_as_the_peer_unreachable() {
        use openraft::{RaftNetwork, RaftNetworkFactory};
        // A frozen peer's kernel accepts the connection; nothing answers the handshake.
        let frozen = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = frozen.local_addr().unwrap().to_string();
        let options = LinkOptions { connect_timeout: Duration::from_secs(10), ..LinkOptions::default() };
        let local = LocalIdentity::new(7, 1, 1);
        let mut net = PeerNetwork::new(local, [(2, addr.clone())].into(), options, Arc::default());
        let mut client = net.new_client(2, &BasicNode { addr }).await;
        let vote = VoteRequest { vote: openraft::Vote::new(3, 1), last_log_id: None };
        let err = client.vote(vote, RPCOption::new(Duration::from_millis(100))).await.unwrap_err();
        // openraft pauses before calling again, and its line about the failure is dropped:
        // the link reports the peer itself.
        let RPCError::Unreachable(e) = &err else { panic!("a timeout of a connected peer: {err:?}") };
        let text = e.to_string();
        assert!(text.contains(super::super::noise::UNREACHABLE) && text.contains("dialling"), "{text}");
        drop(frozen);
    }

    #[test]
    fn a_connection_whose_ends_are_one_address_is_to_itself() {
        let a: SocketAddr = "127.0.0.1:42122".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:51234".parse().unwrap();
        assert!(connected_to_itself(Some(a), Some(a)));
        assert!(!connected_to_itself(Some(b), Some(a)));
        assert!(!connected_to_itself(None, None), "unknown ends are not taken for one");
    }

    #[tokio::test]
    async fn a_dial_to_a_closed_port_fails_and_one_to_a_listener_connects() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let stream = connect_once(&open.to_string()).await.expect("a listener is reached");
        assert_eq!(stream.peer_addr().unwrap(), open);
        drop(listener);
        assert!(connect_once(&open.to_string()).await.is_err(), "nothing listens there any more");
    }

    #[test]
    fn an_append_carries_the_leading_entries_that_fit_and_at_least_one() {
        let mb = 1 << 20;
        assert_eq!(entries_that_fit([], mb), 0, "a heartbeat");
        assert_eq!(entries_that_fit([100; 50], mb), 50, "small entries all fit");
        assert_eq!(entries_that_fit([500_000; 300], mb), 2, "two of 500 KB in a MiB");
        assert_eq!(entries_that_fit([8 * mb, 10], mb), 1, "an entry larger than the bound goes alone");
        assert_eq!(entries_that_fit([10, 8 * mb], mb), 1, "and not behind another");
        assert_eq!(entries_that_fit([mb / 2, mb / 2, 1], mb), 2, "exactly the bound fits");
        assert_eq!(entries_that_fit([usize::MAX, usize::MAX], mb), 1, "no overflow");
    }

    #[test]
    fn a_call_waited_out_is_the_peers_silence_unless_it_answered_meanwhile() {
        assert_eq!(waited(false, 500, 100), Waited::Dialling, "no connection, whatever was heard before");
        assert_eq!(waited(true, 90, 100), Waited::Silent, "nothing since the call");
        assert_eq!(waited(true, 100, 100), Waited::Slow, "a frame at the very moment of the call");
        assert_eq!(waited(true, 150, 100), Waited::Slow, "other replies since: slow, not gone");
    }

    #[test]
    fn a_backing_off_link_dials_at_once_for_a_peer_heard_from_after_the_failure() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let (failed, retry) = (Some(ms(0)), Some(ms(250)));
        assert!(may_dial(ms(10), None, None, None), "never failed: dial");
        assert!(!may_dial(ms(10), retry, failed, None), "backing off, peer not heard: wait");
        assert!(!may_dial(ms(10), retry, failed, Some(ms(0))), "heard no later than the failure: wait");
        assert!(!may_dial(ms(20), retry, Some(ms(10)), Some(ms(5))), "heard only before the failure: wait");
        assert!(may_dial(ms(10), retry, failed, Some(ms(5))), "heard after the failure: dial at once");
        assert!(may_dial(ms(250), retry, failed, None), "back-off over: dial");
    }
}
