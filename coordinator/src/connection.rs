//! One client connection: the handshake, then a reader that decodes and dispatches requests and
//! a writer that sends replies strictly in request order.
//!
//! ```text
//!  socket ─▶ reader ─┬─ write ─▶ Raft (proposed now, in order) ──┐
//!                    ├─ read ────────────────────────────────────┤ Pending queue (FIFO)
//!                    └─ ping, auth, errors ──────────────────────┘        │
//!                                                                        ▼
//!  state machine ── notifications ──────────────────────────────────▶ writer ─▶ socket
//! ```
//!
//! Writes are proposed as soon as they are read, so a session's writes are pipelined and logged
//! in its order. Reads are executed by the writer when their turn comes, after every earlier
//! write of the session has been applied, so a read never overtakes the session's own write.
//! Before each reply the writer sends every notification already queued, so a client sees a
//! watch event before any reply that reflects the change (ZooKeeper's ordering guarantee).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use rand::RngCore;
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::CoordinatorConfig;
use crate::frame::{read_body, read_frame, read_prefix};
use crate::proto::{op, ErrorCode, EventType, Id, SessionId, Zxid};
use crate::raft::{Raft, TypeConfig};
use crate::request::{
    decode_header, encode_connect_response, encode_notification, encode_reply, watcher_type, ConnectRequest, ReadOp,
    ReadResult, Reply, Request,
};
use crate::state::{ConnEntry, ConnStats, Outbound, ServerState};
use crate::txn::{OpResult, Txn, TxnOp, TxnOutcome, TxnReply};
use crate::watch::{ConnId, WatchKind};

/// How many requests of one connection may wait for their replies before the server stops
/// reading from it (ZooKeeper's globalOutstandingLimit plays this role).
const MAX_OUTSTANDING: usize = 1000;

type WriteReceiver = tokio::sync::oneshot::Receiver<openraft::raft::ClientWriteResult<TypeConfig>>;

/// What the server shares with every connection.
pub(crate) struct Shared {
    pub config: Arc<CoordinatorConfig>,
    pub raft: Raft,
    pub state: Arc<Mutex<ServerState>>,
}

impl Shared {
    /// `standalone`, `leader` or `follower`, as `srvr` reports it.
    pub fn mode(&self) -> &'static str {
        let leader = self.raft.metrics().borrow().state == openraft::ServerState::Leader;
        let voters = self.raft.metrics().borrow().membership_config.membership().voter_ids().count();
        crate::fourlw::mode_name(voters <= 1, leader)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A request waiting for its reply, with when it arrived and what it was, for statistics.
struct Queued {
    at: Instant,
    op: &'static str,
    item: Pending,
}

/// A reply waiting for its turn.
enum Pending {
    /// A reply already computed.
    Ready { xid: i32, zxid: Zxid, result: Result<Reply, ErrorCode> },
    /// Frames already encoded: a read's notifications (SetWatches) and its reply.
    Frames(Vec<Vec<u8>>),
    /// A proposed write; the reply comes from its outcome.
    Write { xid: i32, rx: WriteReceiver },
    /// A sync, answered once this server has applied everything committed before it.
    Sync { xid: i32, path: String },
    /// Close the connection after the replies before this one.
    Close,
}

/// How far the writer has got with the connection's writes, so that a read can wait for the
/// session's earlier writes to be applied, and no later.
#[derive(Default)]
struct Progress {
    /// Writes whose outcome the writer has received (they are applied).
    resolved: std::sync::atomic::AtomicU64,
    /// Wakes a reader waiting on `resolved`.
    advanced: tokio::sync::Notify,
    /// The client asked to close its session: the close that follows is expected, and its
    /// reply must still be sent.
    closing_by_client: std::sync::atomic::AtomicBool,
}

impl Progress {
    /// Waits until `count` writes have been applied.
    async fn applied(&self, count: u64) {
        use std::sync::atomic::Ordering;
        loop {
            let woken = self.advanced.notified();
            if self.resolved.load(Ordering::Acquire) >= count {
                return;
            }
            woken.await;
        }
    }
}

/// Wall clock in ms, stamped into transactions by their proposer.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Serves one accepted connection until it closes or the server shuts down.
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
        if let Some(open) = st.open_per_address.get_mut(&peer.ip()) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                st.open_per_address.remove(&peer.ip());
            }
        }
    }
    match result {
        Ok(()) => debug!(conn = id, %peer, "connection closed"),
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
    let (rd, wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let mut wr = BufWriter::new(wr);
    let max = shared.config.max_packet_bytes;

    // Handshake: the first frame is a ConnectRequest with no request header.
    let handshake = Duration::from_millis(shared.config.handshake_timeout_ms);
    let prefix = match tokio::time::timeout(handshake, read_prefix(&mut rd)).await {
        Err(_) => return Err(format!("no ConnectRequest within {} ms", handshake.as_millis())),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(None)) => return Ok(()),
        Ok(Ok(Some(p))) => p,
    };
    if let Some(cmd) = crate::fourlw::parse(prefix) {
        let text = {
            let st = shared.lock();
            crate::fourlw::answer(cmd, &shared.config, &st, shared.mode())
        };
        debug!(conn = id, %peer, cmd, "four-letter word");
        wr.write_all(text.as_bytes()).await.map_err(|e| e.to_string())?;
        wr.flush().await.map_err(|e| e.to_string())?;
        let _ = wr.shutdown().await;
        return Ok(());
    }
    let frame = tokio::time::timeout(handshake, read_body(&mut rd, prefix, max))
        .await
        .map_err(|_| "ConnectRequest not complete in time".to_string())?
        .map_err(|e| e.to_string())?;
    let connect = ConnectRequest::decode(&frame).map_err(|e| format!("malformed ConnectRequest: {e}"))?;

    let (session, timeout_ms, password) = match open_session(shared, &connect).await? {
        Some(s) => s,
        None => {
            // ZooKeeper's answer to an expired, unknown or wrongly authenticated session.
            let frame = encode_connect_response(0, 0, &[0; 16], server_read_only(&connect));
            let _ = wr.write_all(&frame).await;
            let _ = wr.flush().await;
            return Err(format!("session 0x{:x} is expired or unknown", connect.session_id));
        }
    };

    // Every connection is authenticated by its address (ZooKeeper's ip provider).
    let mut auth: Arc<[Id]> = Arc::from(vec![Id { scheme: "ip".into(), id: peer.ip().to_string() }]);
    let (out_tx, out_rx) = mpsc::unbounded_channel();
    {
        let mut st = shared.lock();
        // A newer connection takes the session over; the older one is closed, as in ZooKeeper.
        for c in st.conns.values().filter(|c| c.session == session) {
            let _ = c.tx.send(Outbound::Close("session moved to a newer connection"));
        }
        let stats = ConnStats { established_ms: now_ms(), timeout_ms, ..ConnStats::default() };
        st.conns.insert(id, ConnEntry { session, auth: auth.clone(), tx: out_tx, peer, stats });
        st.counters.connections_accepted += 1;
    }
    wr.write_all(&encode_connect_response(timeout_ms, session.0, &password, server_read_only(&connect)))
        .await
        .map_err(|e| e.to_string())?;
    wr.flush().await.map_err(|e| e.to_string())?;
    debug!(conn = id, %peer, session = %session, timeout_ms, "session established");

    let (pending_tx, pending_rx) = mpsc::channel(MAX_OUTSTANDING);
    let progress = Arc::new(Progress::default());
    let writer_ctx = WriterCtx { shared: shared.clone(), conn: id, progress: progress.clone() };
    // Writes proposed so far; a read waits until the writer has seen them applied.
    let mut proposed: u64 = 0;
    let mut writer = tokio::spawn(writer_ctx.run(wr, pending_rx, out_rx));

    let reason = loop {
        let frame = tokio::select! {
            biased;
            _ = shutdown.changed() => break Some("server shutting down".to_string()),
            _ = &mut writer => return Ok(()),
            f = read_frame(&mut rd, max) => match f {
                Ok(Some(f)) => f,
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            },
        };
        let arrived = Instant::now();
        let (xid, opcode, body) = match decode_header(&frame) {
            Ok(h) => h,
            Err(e) => break Some(format!("malformed request header: {e}")),
        };
        {
            let mut st = shared.lock();
            st.counters.packets_received += 1;
            st.tracker.touch(session, arrived);
            if let Some(c) = st.conns.get_mut(&id) {
                c.stats.received += 1;
                c.stats.last_cxid = xid;
            }
        }
        let queued = |item| Queued { at: arrived, op: op_name(opcode), item };
        let req = match Request::decode(opcode, body) {
            Ok(r) => r,
            Err(e) => {
                warn!(conn = id, %peer, opcode, "malformed request: {e}");
                let zxid = shared.lock().tree.last_zxid();
                let p = Pending::Ready { xid, zxid, result: Err(ErrorCode::MarshallingError) };
                if pending_tx.send(queued(p)).await.is_err() {
                    break None;
                }
                continue;
            }
        };
        let mut stop = false;
        let pending = match req {
            Request::Auth { scheme, auth: credentials } => match authenticate(&shared.config, &scheme, &credentials) {
                Ok(ids) => {
                    let mut all: Vec<Id> = auth.to_vec();
                    for i in ids {
                        if !all.contains(&i) {
                            all.push(i);
                        }
                    }
                    auth = Arc::from(all);
                    if let Some(c) = shared.lock().conns.get_mut(&id) {
                        c.auth = auth.clone();
                    }
                    Pending::Ready { xid, zxid: Zxid(0), result: Ok(Reply::Empty) }
                }
                Err(why) => {
                    warn!(conn = id, %peer, "authentication with scheme {scheme:?} failed: {why}");
                    shared.lock().counters.auth_failed += 1;
                    let refused = Pending::Ready { xid, zxid: Zxid(0), result: Err(ErrorCode::AuthFailed) };
                    let _ = pending_tx.send(queued(refused)).await;
                    stop = true;
                    Pending::Close
                }
            },
            Request::CloseSession => {
                progress.closing_by_client.store(true, std::sync::atomic::Ordering::Release);
                let rx = propose(shared, session, &auth, TxnOp::CloseSession { expired: false }).await?;
                proposed += 1;
                let _ = pending_tx.send(queued(Pending::Write { xid, rx })).await;
                stop = true;
                Pending::Close
            }
            Request::Write(op) => {
                proposed += 1;
                Pending::Write { xid, rx: propose(shared, session, &auth, TxnOp::Write(op)).await? }
            }
            Request::Multi(ops) => {
                proposed += 1;
                Pending::Write { xid, rx: propose(shared, session, &auth, TxnOp::Multi(ops)).await? }
            }
            // Without a SASL mechanism ZooKeeper answers OK with a null token and zxid 0.
            Request::Sasl => Pending::Ready { xid, zxid: Zxid(0), result: Ok(Reply::Token(None)) },
            Request::Unknown(opcode) => {
                debug!(conn = id, opcode, "unknown opcode");
                Pending::Ready { xid, zxid: Zxid(-1), result: Err(ErrorCode::Unimplemented) }
            }
            Request::Sync { path } => Pending::Sync { xid, path },
            req => {
                // A read sees exactly the session's earlier writes: it waits for them to be
                // applied, and the session's later writes are not proposed until it has run.
                progress.applied(proposed).await;
                let mut st = shared.lock();
                let mut frames = Vec::new();
                let result = execute_read(&mut st, id, session, req, &auth, &mut frames);
                frames.push(encode_reply(xid, st.tree.last_zxid(), &result));
                Pending::Frames(frames)
            }
        };
        if pending_tx.send(queued(pending)).await.is_err() || stop {
            break None;
        }
    };
    if let Some(why) = &reason {
        debug!(conn = id, %peer, "stopped reading: {why}");
    }
    // Let the writer finish the replies already owed, then close.
    drop(pending_tx);
    let _ = writer.await;
    match reason {
        Some(why) if why != "server shutting down" => Err(why),
        _ => Ok(()),
    }
}

/// The read-only byte of the ConnectResponse: present only if the client sent one, and then
/// saying whether this server is read-only (it never is), as ZooKeeper writes it.
fn server_read_only(c: &ConnectRequest) -> Option<bool> {
    c.read_only.map(|_| false)
}

/// Creates a new session or resumes one. `None` means the client must be told its session is
/// expired.
async fn open_session(shared: &Arc<Shared>, c: &ConnectRequest) -> Result<Option<(SessionId, i32, [u8; 16])>, String> {
    let last = shared.lock().tree.last_zxid();
    if c.last_zxid_seen > last.0 {
        return Err(format!(
            "client has seen zxid 0x{:x} but this server is at {last}; it must try another server",
            c.last_zxid_seen
        ));
    }
    let timeout_ms = shared.config.negotiate_timeout(c.timeout_ms);
    if c.session_id == 0 {
        let mut password = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut password);
        let txn = Txn {
            session: SessionId(0),
            auth: Vec::new(),
            time_ms: now_ms(),
            op: TxnOp::CreateSession { timeout_ms, password },
        };
        let resp = shared.raft.client_write(txn).await.map_err(|e| format!("cannot create session: {e}"))?;
        return match resp.data.result {
            Ok(TxnReply::SessionCreated { session, timeout_ms, password }) => Ok(Some((session, timeout_ms, password))),
            other => Err(format!("session creation answered {other:?}")),
        };
    }
    let id = SessionId(c.session_id);
    let mut st = shared.lock();
    let Some(s) = st.tree.session(id) else { return Ok(None) };
    if s.password[..] != c.password[..] {
        return Ok(None);
    }
    let password = s.password;
    if !st.tracker.reopen(id, Duration::from_millis(timeout_ms as u64), Instant::now()) {
        return Ok(None);
    }
    Ok(Some((id, timeout_ms, password)))
}

/// Hands a transaction to Raft; the returned receiver yields its outcome once applied.
async fn propose(
    shared: &Arc<Shared>,
    session: SessionId,
    auth: &Arc<[Id]>,
    op: TxnOp,
) -> Result<WriteReceiver, String> {
    let txn = Txn { session, auth: auth.to_vec(), time_ms: now_ms(), op };
    shared.raft.client_write_ff(txn).await.map_err(|e| format!("cannot propose: {e}"))
}

/// Checks credentials of an auth packet, returning the identities they establish, as Apache
/// ZooKeeper's providers do: `digest` hashes whatever it is given (the user is the text before
/// the first `:`, or all of it), `ip` adds nothing the connection does not already have.
fn authenticate(config: &CoordinatorConfig, scheme: &str, credentials: &[u8]) -> Result<Vec<Id>, String> {
    match scheme {
        "digest" => {
            let text = String::from_utf8_lossy(credentials);
            let user = text.split_once(':').map_or(text.as_ref(), |(u, _)| u);
            let digest = base64::engine::general_purpose::STANDARD
                .encode(sha1_smol::Sha1::from(text.as_bytes()).digest().bytes());
            let id = format!("{user}:{digest}");
            let mut ids = Vec::new();
            if config.super_digest.as_deref() == Some(id.as_str()) {
                ids.push(Id { scheme: "super".into(), id: String::new() });
            }
            ids.push(Id { scheme: "digest".into(), id });
            Ok(ids)
        }
        "ip" => Ok(Vec::new()),
        other => Err(format!("unsupported auth scheme {other:?} (this server accepts digest and ip)")),
    }
}

struct WriterCtx {
    shared: Arc<Shared>,
    conn: ConnId,
    progress: Arc<Progress>,
}

impl WriterCtx {
    async fn run(
        self,
        mut wr: BufWriter<OwnedWriteHalf>,
        mut pending: mpsc::Receiver<Queued>,
        mut outbound: mpsc::UnboundedReceiver<Outbound>,
    ) {
        if let Err(why) = self.pump(&mut wr, &mut pending, &mut outbound).await {
            debug!(conn = self.conn, "writer stopped: {why}");
        }
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    }

    async fn pump(
        &self,
        wr: &mut BufWriter<OwnedWriteHalf>,
        pending: &mut mpsc::Receiver<Queued>,
        outbound: &mut mpsc::UnboundedReceiver<Outbound>,
    ) -> Result<(), String> {
        let mut sent = 0u64;
        loop {
            tokio::select! {
                biased;
                ob = outbound.recv() => match ob {
                    Some(Outbound::Notification(f)) => {
                        wr.write_all(&f).await.map_err(|e| e.to_string())?;
                        sent += 1;
                    }
                    Some(Outbound::Close(why)) => {
                        if !self.progress.closing_by_client.load(std::sync::atomic::Ordering::Acquire) {
                            return Err(why.to_string());
                        }
                    }
                    None => return Ok(()),
                },
                item = pending.recv() => {
                    let Some(Queued { at, op, item }) = item else { return Ok(()) };
                    let (frames, close) = self.resolve(item).await?;
                    // Notifications queued so far describe changes this reply may reflect:
                    // they go first.
                    while let Ok(ob) = outbound.try_recv() {
                        match ob {
                            Outbound::Notification(f) => {
                                wr.write_all(&f).await.map_err(|e| e.to_string())?;
                                sent += 1;
                            }
                            Outbound::Close(why) => {
                                if !self.progress.closing_by_client.load(std::sync::atomic::Ordering::Acquire) {
                                    return Err(why.to_string());
                                }
                            }
                        }
                    }
                    let reply_zxid = frames.last().map(|f| reply_zxid(f));
                    for f in &frames {
                        wr.write_all(f).await.map_err(|e| e.to_string())?;
                        sent += 1;
                    }
                    if let Some(zxid) = reply_zxid {
                        self.record(op, at, zxid, frames.len() as u64);
                    }
                    if close {
                        return Ok(());
                    }
                }
            }
            if pending.is_empty() && outbound.is_empty() {
                wr.flush().await.map_err(|e| e.to_string())?;
                self.shared.lock().counters.packets_sent += std::mem::take(&mut sent);
            }
        }
    }

    /// Records a reply in the connection's and the server's statistics.
    fn record(&self, op: &'static str, at: Instant, zxid: i64, frames: u64) {
        let ms = at.elapsed().as_millis() as u64;
        let mut st = self.shared.lock();
        st.counters.latency.record(ms);
        if let Some(c) = st.conns.get_mut(&self.conn) {
            c.stats.sent += frames;
            c.stats.last_op = op;
            c.stats.last_zxid = zxid;
            c.stats.last_response_ms = now_ms();
            c.stats.last_latency_ms = ms;
            c.stats.latency.record(ms);
        }
    }

    /// Turns a pending item into frames to send (notifications first, then the reply), and
    /// whether to close afterwards.
    async fn resolve(&self, item: Pending) -> Result<(Vec<Vec<u8>>, bool), String> {
        match item {
            Pending::Ready { xid, zxid, result } => Ok((vec![encode_reply(xid, zxid, &result)], false)),
            Pending::Close => Ok((Vec::new(), true)),
            Pending::Frames(frames) => Ok((frames, false)),
            Pending::Write { xid, rx } => {
                let outcome = match rx.await {
                    Ok(Ok(resp)) => resp.data,
                    Ok(Err(e)) => return Err(format!("write not accepted: {e}")),
                    Err(_) => return Err("replication stopped before the write was applied".into()),
                };
                self.progress.resolved.fetch_add(1, std::sync::atomic::Ordering::Release);
                self.progress.advanced.notify_waiters();
                Ok((vec![write_reply(xid, outcome)], false))
            }
            Pending::Sync { xid, path } => {
                // A sync waits until this server has applied everything committed before it.
                self.shared.raft.ensure_linearizable().await.map_err(|e| format!("sync failed: {e}"))?;
                let zxid = self.shared.lock().tree.last_zxid();
                Ok((vec![encode_reply(xid, zxid, &Ok(Reply::Path(path)))], false))
            }
        }
    }
}

/// Executes a read under the state lock, registering the watches it leaves; notifications it
/// fires at once (SetWatches on stale paths) are pushed to `frames`.
fn execute_read(
    st: &mut ServerState,
    conn: ConnId,
    session: SessionId,
    req: Request,
    auth: &[Id],
    frames: &mut Vec<Vec<u8>>,
) -> Result<Reply, ErrorCode> {
    match req {
        Request::Ping => Ok(Reply::Empty),
        Request::Exists { path, watch } => {
            let r = st.tree.exists(&path);
            if watch && !matches!(r, Err(ErrorCode::BadArguments)) {
                st.watches.add(conn, WatchKind::Data, &path);
            }
            r.map(Reply::Stat)
        }
        Request::GetData { path, watch } => {
            let (data, stat) = st.tree.get_data(&path, auth)?;
            let data = data.map(<[u8]>::to_vec);
            if watch {
                st.watches.add(conn, WatchKind::Data, &path);
            }
            Ok(Reply::Data(data, stat))
        }
        Request::GetChildren { path, watch, with_stat } => {
            let (children, stat) = st.tree.children(&path, auth)?;
            if watch {
                st.watches.add(conn, WatchKind::Child, &path);
            }
            Ok(if with_stat { Reply::Children2(children, stat) } else { Reply::Children(children) })
        }
        Request::GetAcl { path } => st.tree.get_acl(&path, auth).map(|(a, s)| Reply::Acl(a, s)),
        Request::GetEphemerals { prefix } => st.tree.ephemerals(session, &prefix).map(Reply::Strings),
        Request::GetAllChildrenNumber { path } => st.tree.all_children_number(&path, auth).map(Reply::Int),
        Request::MultiRead(ops) => Ok(Reply::MultiRead(
            ops.into_iter()
                .map(|op| match op {
                    ReadOp::GetData(p) => match st.tree.get_data(&p, auth) {
                        Ok((d, s)) => ReadResult::Data(d.map(<[u8]>::to_vec), s),
                        Err(e) => ReadResult::Error(e),
                    },
                    ReadOp::GetChildren(p) => match st.tree.children(&p, auth) {
                        Ok((c, _)) => ReadResult::Children(c),
                        Err(e) => ReadResult::Error(e),
                    },
                })
                .collect(),
        )),
        Request::AddWatch { path, mode } => {
            crate::path::validate(&path, false).map_err(|_| ErrorCode::BadArguments)?;
            let kind = match mode {
                0 => WatchKind::Persistent,
                1 => WatchKind::PersistentRecursive,
                _ => return Err(ErrorCode::BadArguments),
            };
            st.watches.add(conn, kind, &path);
            // ZooKeeper answers addWatch with an ErrorResponse(0).
            Ok(Reply::Int(0))
        }
        Request::CheckWatches { path, ty } => {
            let ty = watcher_type(ty)?;
            if st.watches.contains(conn, &path, ty) {
                Ok(Reply::Empty)
            } else {
                Err(ErrorCode::NoWatcher)
            }
        }
        Request::RemoveWatches { path, ty } => {
            let ty = watcher_type(ty)?;
            if st.watches.remove(conn, &path, ty) {
                Ok(Reply::Empty)
            } else {
                Err(ErrorCode::NoWatcher)
            }
        }
        Request::WhoAmI => Ok(Reply::WhoAmI(
            auth.iter()
                .map(|id| Id {
                    scheme: id.scheme.clone(),
                    // The digest provider reports the user name, not the hash.
                    id: match id.scheme.as_str() {
                        "digest" => id.id.split(':').next().unwrap_or_default().to_string(),
                        _ => id.id.clone(),
                    },
                })
                .collect(),
        )),
        Request::SetWatches { relative_zxid, data, exist, child, persistent, recursive } => {
            let zxid = st.tree.last_zxid();
            let mut fire = |kind: EventType, path: &str| frames.push(encode_notification(kind, path, zxid));
            for p in data {
                match st.tree.node(&p) {
                    None => fire(EventType::NodeDeleted, &p),
                    Some(n) if n.stat.mzxid > relative_zxid => fire(EventType::NodeDataChanged, &p),
                    Some(_) => st.watches.add(conn, WatchKind::Data, &p),
                }
            }
            for p in exist {
                match st.tree.node(&p) {
                    Some(_) => fire(EventType::NodeCreated, &p),
                    None => st.watches.add(conn, WatchKind::Data, &p),
                }
            }
            for p in child {
                match st.tree.node(&p) {
                    None => fire(EventType::NodeDeleted, &p),
                    Some(n) if n.stat.pzxid > relative_zxid => fire(EventType::NodeChildrenChanged, &p),
                    Some(_) => st.watches.add(conn, WatchKind::Child, &p),
                }
            }
            for p in persistent {
                st.watches.add(conn, WatchKind::Persistent, &p);
            }
            for p in recursive {
                st.watches.add(conn, WatchKind::PersistentRecursive, &p);
            }
            Ok(Reply::Empty)
        }
        Request::Refused(code) => Err(code),
        // Handled by the reader; never queued as reads.
        Request::Auth { .. }
        | Request::CloseSession
        | Request::Write(_)
        | Request::Multi(_)
        | Request::Sync { .. }
        | Request::Sasl
        | Request::Unknown(_) => Err(ErrorCode::SystemError),
    }
}

/// Encodes the reply to a write from its outcome.
fn write_reply(xid: i32, outcome: TxnOutcome) -> Vec<u8> {
    let result = match outcome.result {
        Err(code) => Err(code),
        Ok(TxnReply::Op(r)) => match r {
            OpResult::Created { opcode, path, stat, .. } => {
                Ok(if opcode == op::CREATE { Reply::Create(path) } else { Reply::Create2(path, stat) })
            }
            OpResult::DataSet { stat } | OpResult::AclSet { stat } => Ok(Reply::Stat(stat)),
            OpResult::Deleted | OpResult::Checked => Ok(Reply::Empty),
            // Only multis report per-op errors; a single op's refusal is the outcome's error.
            OpResult::Error(_) => Err(ErrorCode::SystemError),
        },
        Ok(TxnReply::Multi(results)) => Ok(Reply::Multi(results)),
        Ok(TxnReply::SessionClosed) | Ok(TxnReply::Nothing) | Ok(TxnReply::SessionCreated { .. }) => Ok(Reply::Empty),
    };
    encode_reply(xid, outcome.zxid, &result)
}

/// The zxid field of an encoded reply frame (length, xid, zxid, ...).
fn reply_zxid(frame: &[u8]) -> i64 {
    frame.get(8..16).map_or(0, |b| i64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
}

/// ZooKeeper's short operation names, as `cons` reports the last one.
fn op_name(opcode: i32) -> &'static str {
    match opcode {
        op::CREATE | op::CREATE2 | op::CREATE_CONTAINER | op::CREATE_TTL => "CREA",
        op::DELETE | op::DELETE_CONTAINER => "DELE",
        op::EXISTS => "EXIS",
        op::GET_DATA => "GETD",
        op::SET_DATA => "SETD",
        op::GET_ACL => "GETA",
        op::SET_ACL => "SETA",
        op::GET_CHILDREN | op::GET_CHILDREN2 => "GETC",
        op::SYNC => "SYNC",
        op::PING => "PING",
        op::CHECK => "CHEC",
        op::MULTI => "MULT",
        op::MULTI_READ => "MLTR",
        op::AUTH => "AUTH",
        op::SET_WATCHES | op::SET_WATCHES2 => "SETW",
        op::ADD_WATCH => "ADDW",
        op::CHECK_WATCHES => "CHKW",
        op::REMOVE_WATCHES => "REMW",
        op::GET_EPHEMERALS => "GETE",
        op::GET_ALL_CHILDREN_NUMBER => "GETN",
        op::WHO_AM_I => "WHOA",
        op::CLOSE_SESSION => "CLOS",
        op::SASL => "SASL",
        _ => "UNKN",
    }
}
