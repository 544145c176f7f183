//! The request reader: frames in, reply slots out, in request order.
//!
//! It never waits for a write's outcome: writes are proposed as soon as they are read, once the
//! session's earlier requests other than writes are answered (reads run, syncs past their
//! barrier, refusals decided: see [`holds_back_writes`]), and every other request is queued for
//! the writer. Its only waits are the socket, those earlier requests, the proposal hand-off to
//! Raft and a full slot queue (back-pressure), and the connection's `select!` can drop it at any
//! of them.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use base64::Engine;
use tokio::io::BufReader;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::{now_ms, Conn, Queued, Slot, SyncBarrier};
use crate::config::CoordinatorConfig;
use crate::frame::read_frame;
use crate::propose::WriteReceiver;
use crate::proto::{op, ErrorCode, Id, Zxid};
use crate::request::{decode_header, multi_reply_bound, ReadOp, Reply, Request};
use crate::txn::{Txn, TxnOp, WriteOp};

/// Why the reader stopped.
pub(super) enum ReaderEnd {
    /// The client closed its side between requests.
    ClientClosed,
    /// The reader stopped the connection (the reason is logged).
    Stopped(String),
}

impl fmt::Display for ReaderEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReaderEnd::ClientClosed => write!(f, "the client closed its side"),
            ReaderEnd::Stopped(why) => write!(f, "{why}"),
        }
    }
}

/// Reads requests until the client stops, something is wrong, or a request ends the
/// connection; dropping `slots` on return tells the writer no more requests come.
pub(super) async fn run(
    conn: &Conn,
    mut rd: BufReader<OwnedReadHalf>,
    mut auth: Arc<[Id]>,
    slots: mpsc::Sender<Queued>,
) -> ReaderEnd {
    let config = &conn.shared.config;
    // Whether each throttle has been logged on this connection (once each).
    let mut throttled = false;
    let mut throttled_by_bytes = false;
    // Requests queued so far that hold back the session's next write, and how many of them the
    // writer has taken its cut for.
    let mut cuts_queued = 0u64;
    let mut cuts_done = conn.cuts_done.subscribe();
    loop {
        let frame = match read_frame(&mut rd, config.max_packet_bytes).await {
            Ok(Some(f)) => f,
            Ok(None) => return ReaderEnd::ClientClosed,
            Err(e) => return ReaderEnd::Stopped(e.to_string()),
        };
        // The request's bytes stay reserved until its reply is written: a client that sends
        // large requests and reads no replies is stopped at max_outstanding_request_bytes.
        let Some(budget) = reserve(conn, frame.len(), &mut throttled_by_bytes).await else {
            return ReaderEnd::Stopped("the reply writer stopped".into());
        };
        let mut budget = Some(budget);
        let arrived = Instant::now();
        let (xid, opcode, body) = match decode_header(&frame) {
            Ok(h) => h,
            Err(e) => return ReaderEnd::Stopped(format!("malformed request header: {e}")),
        };
        let live = {
            let mut st = conn.shared.lock();
            st.counters.packets_received = st.counters.packets_received.saturating_add(1);
            if let Some(c) = st.conns.get_mut(&conn.id) {
                c.stats.received = c.stats.received.saturating_add(1);
                // Every request that gets this far gets exactly one reply, which takes it off.
                c.stats.outstanding = c.stats.outstanding.saturating_add(1);
                // As Apache ZooKeeper's `cons`: the last client request's xid, not a ping's (-2),
                // an auth's (-4) or a SetWatches' (-8).
                if xid >= 0 {
                    c.stats.last_cxid = xid;
                }
            }
            st.tracker.touch(conn.session, arrived)
        };
        let mut queued = |slot| Queued { at: arrived, op: op_name(opcode), slot, _budget: budget.take() };
        if !live {
            // ZooKeeper's touchSession: a session that is expired or being expired is not
            // served. The client hears SessionExpired and the connection closes.
            info!(conn = conn.id, session = %conn.session, "request from a session that is expired or being expired: answering SessionExpired and closing");
            let refused = Slot::Answer { xid, zxid: None, result: Err(ErrorCode::SessionExpired) };
            if queue(conn, &slots, queued(refused), &mut throttled).await {
                queue(conn, &slots, queued(Slot::Close), &mut throttled).await;
            }
            return ReaderEnd::Stopped("the session is expired".into());
        }
        let (slot, then_close) = match Request::decode(opcode, body) {
            Err(e) => {
                warn!(conn = conn.id, peer = %conn.peer, opcode, "malformed request: {e}");
                (Slot::Answer { xid, zxid: None, result: Err(ErrorCode::MarshallingError) }, None)
            }
            Ok(req) => match refuse_past_limits(conn, xid, opcode, &req) {
                Some(refused) => (refused, None),
                None => {
                    if req.is_write() && cuts_done.wait_for(|done| *done >= cuts_queued).await.is_err() {
                        return ReaderEnd::Stopped("the reply writer stopped".into());
                    }
                    match dispatch(conn, xid, req, &mut auth).await {
                        Ok(s) => s,
                        Err(why) => return ReaderEnd::Stopped(why),
                    }
                }
            },
        };
        if holds_back_writes(&slot) {
            cuts_queued += 1;
        }
        if !queue(conn, &slots, queued(slot), &mut throttled).await {
            return ReaderEnd::Stopped("the reply writer stopped".into());
        }
        if let Some(why) = then_close {
            queue(conn, &slots, queued(Slot::Close), &mut throttled).await;
            return ReaderEnd::Stopped(why);
        }
    }
}

/// Whether a slot holds back the session's later writes until the writer has taken its cut
/// ([`Conn::cuts_done`]): every slot but a write's own. A write is proposed only once the
/// session's earlier reads have run, its syncs have passed their barrier and its refusals are
/// decided, so none of them sees the write, or is answered after the write's notifications or
/// with a later zxid than the write's reply: ZooKeeper's CommitProcessor holds a session's
/// requests behind its earlier ones the same way.
fn holds_back_writes(slot: &Slot) -> bool {
    match slot {
        Slot::Read { .. } | Slot::Sync { .. } | Slot::Answer { .. } => true,
        Slot::Write { .. } | Slot::Close => false,
    }
}

/// The refusal of a request past a limit checked before it is dispatched, logged naming the
/// limit; `None` when it is within them.
fn refuse_past_limits(conn: &Conn, xid: i32, opcode: i32, req: &Request) -> Option<Slot> {
    let config = &conn.shared.config;
    let refused = Some(Slot::Answer { xid, zxid: None, result: Err(ErrorCode::BadArguments) });
    if let Some(len) = longest_path(req).filter(|len| *len > config.max_path_bytes) {
        warn!(
            conn = conn.id,
            peer = %conn.peer,
            opcode,
            len,
            limit = config.max_path_bytes,
            "refusing a request naming a path longer than max_path_bytes"
        );
        return refused;
    }
    // A multi's reply may be several times its request (a Stat per setData). Once applied it
    // must be answered as applied (an error would tell the client nothing happened), so one
    // whose reply might not fit max_packet_bytes is refused here, before it is proposed,
    // whatever its ops would do: deterministically, and with nothing applied.
    if let Request::Multi(ops) = req {
        let bound = multi_reply_bound(ops);
        if bound > config.max_packet_bytes {
            warn!(
                conn = conn.id,
                peer = %conn.peer,
                xid,
                ops = ops.len(),
                bound,
                limit = config.max_packet_bytes,
                "refusing a multi whose reply could pass max_packet_bytes (answered BadArguments; nothing was proposed)"
            );
            return refused;
        }
    }
    None
}

/// Reserves `bytes` of the connection's request budget, waiting (and not reading) while the
/// requests already waiting for replies hold it. `None` when the connection is ending.
async fn reserve(conn: &Conn, bytes: usize, logged: &mut bool) -> Option<tokio::sync::OwnedSemaphorePermit> {
    // A frame is at most max_packet_bytes, and the budget at least that (checked at start-up),
    // so every reservation can be granted once the earlier requests are answered.
    let n = u32::try_from(bytes.max(1)).unwrap_or(u32::MAX);
    match conn.request_bytes.clone().try_acquire_many_owned(n) {
        Ok(p) => Some(p),
        Err(tokio::sync::TryAcquireError::Closed) => None,
        Err(tokio::sync::TryAcquireError::NoPermits) => {
            if !*logged {
                *logged = true;
                info!(
                    conn = conn.id,
                    peer = %conn.peer,
                    limit = conn.shared.config.max_outstanding_request_bytes,
                    "max_outstanding_request_bytes of requests waiting for replies: not reading from this connection until they go out"
                );
            }
            set_throttled(conn, true);
            let permit = conn.request_bytes.clone().acquire_many_owned(n).await.ok();
            set_throttled(conn, false);
            permit
        }
    }
}

/// Queues a slot, waiting while `max_outstanding_requests` are queued: the reader stops
/// reading until the writer catches up, so a client that floods requests is throttled at its
/// own socket. False when the writer is gone.
async fn queue(conn: &Conn, slots: &mpsc::Sender<Queued>, q: Queued, throttled: &mut bool) -> bool {
    match slots.try_send(q) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(q)) => {
            if !*throttled {
                *throttled = true;
                info!(
                    conn = conn.id,
                    peer = %conn.peer,
                    limit = conn.shared.config.max_outstanding_requests,
                    "max_outstanding_requests waiting for replies: not reading from this connection until they go out"
                );
            }
            set_throttled(conn, true);
            let sent = slots.send(q).await.is_ok();
            set_throttled(conn, false);
            sent
        }
    }
}

fn set_throttled(conn: &Conn, on: bool) {
    if let Some(c) = conn.shared.lock().conns.get_mut(&conn.id) {
        c.stats.throttled = on;
    }
}

/// The most bytes of authenticated identities one connection may hold. Every write it makes
/// carries them into the log (ACLs are checked at apply), so they bound the size of its
/// entries; a few digest users and its address fit many times over.
const MAX_AUTH_BYTES: usize = 64 << 10;

/// Decides what a decoded request becomes: its slot, and whether the connection closes after
/// it (with the reason). Writes are proposed here.
async fn dispatch(conn: &Conn, xid: i32, req: Request, auth: &mut Arc<[Id]>) -> Result<(Slot, Option<String>), String> {
    Ok(match req {
        Request::Auth { scheme, auth: credentials } => match authenticate(&conn.shared.config, &scheme, &credentials) {
            Ok(ids) => {
                let mut all: Vec<Id> = auth.to_vec();
                for i in ids {
                    if !all.contains(&i) {
                        all.push(i);
                    }
                }
                let bytes: usize = all.iter().map(|i| i.scheme.len() + i.id.len()).sum();
                if bytes > MAX_AUTH_BYTES {
                    warn!(conn = conn.id, peer = %conn.peer, bytes, "authentication refused: the connection's identities would pass {MAX_AUTH_BYTES} bytes");
                    let refused = Slot::Answer { xid, zxid: Some(Zxid(0)), result: Err(ErrorCode::AuthFailed) };
                    return Ok((refused, Some(format!("its identities would pass {MAX_AUTH_BYTES} bytes"))));
                }
                *auth = Arc::from(all);
                if let Some(c) = conn.shared.lock().conns.get_mut(&conn.id) {
                    c.auth = auth.clone();
                }
                (Slot::Answer { xid, zxid: Some(Zxid(0)), result: Ok(Reply::Empty) }, None)
            }
            Err(why) => {
                warn!(conn = conn.id, peer = %conn.peer, "authentication with scheme {scheme:?} failed: {why}");
                let mut st = conn.shared.lock();
                st.counters.auth_failed = st.counters.auth_failed.saturating_add(1);
                let refused = Slot::Answer { xid, zxid: Some(Zxid(0)), result: Err(ErrorCode::AuthFailed) };
                (refused, Some(format!("authentication failed: {why}")))
            }
        },
        Request::CloseSession => {
            // The session's close, when applied, must not cut off the reply to this request.
            conn.outbox.set_client_closing();
            let rx = propose(conn, auth, TxnOp::CloseSession { expired: false });
            (Slot::Write { xid, rx }, Some("the client closed its session".into()))
        }
        Request::Write(op) => {
            let op = TxnOp::client_write(conn.shared.ensemble_server(), conn.shared.config.extended_types_enabled, op);
            (Slot::Write { xid, rx: propose(conn, auth, op) }, None)
        }
        Request::Multi(ops) => {
            let op = TxnOp::client_multi(conn.shared.ensemble_server(), conn.shared.config.extended_types_enabled, ops);
            (Slot::Write { xid, rx: propose(conn, auth, op) }, None)
        }
        // Without a SASL mechanism ZooKeeper answers OK with a null token and zxid 0.
        Request::Sasl => (Slot::Answer { xid, zxid: Some(Zxid(0)), result: Ok(Reply::Token(None)) }, None),
        Request::Unknown(opcode) => {
            debug!(conn = conn.id, opcode, "unknown opcode");
            (Slot::Answer { xid, zxid: Some(Zxid(-1)), result: Err(ErrorCode::Unimplemented) }, None)
        }
        Request::Sync { path } => (Slot::Sync { xid, path, barrier: SyncBarrier::start(&conn.shared.proposer) }, None),
        req => (Slot::Read { xid, req, auth: auth.clone() }, None),
    })
}

/// Queues a transaction behind this session's earlier ones; the returned receiver yields its
/// outcome once applied.
fn propose(conn: &Conn, auth: &Arc<[Id]>, op: TxnOp) -> WriteReceiver {
    let txn = Txn { session: conn.session, auth: auth.to_vec(), time_ms: now_ms(), op };
    conn.shared.proposer.submit(conn.id, txn)
}

/// The length in bytes of the longest path a request names, if it names any.
fn longest_path(req: &Request) -> Option<usize> {
    fn write_path(op: &WriteOp) -> usize {
        match op {
            WriteOp::Create { path, .. }
            | WriteOp::Delete { path, .. }
            | WriteOp::SetData { path, .. }
            | WriteOp::SetAcl { path, .. }
            | WriteOp::DeleteContainer { path }
            | WriteOp::Check { path, .. } => path.len(),
        }
    }
    match req {
        Request::Exists { path, .. }
        | Request::GetData { path, .. }
        | Request::GetChildren { path, .. }
        | Request::GetAcl { path }
        | Request::Sync { path }
        | Request::CheckWatches { path, .. }
        | Request::RemoveWatches { path, .. }
        | Request::GetAllChildrenNumber { path }
        | Request::AddWatch { path, .. } => Some(path.len()),
        Request::GetEphemerals { prefix } => Some(prefix.len()),
        Request::Write(op) => Some(write_path(op)),
        Request::Multi(ops) => ops.iter().map(write_path).max(),
        Request::MultiRead(ops) => ops
            .iter()
            .map(|op| match op {
                ReadOp::GetData(p) | ReadOp::GetChildren(p) => p.len(),
            })
            .max(),
        // Checked path by path where the watches are set (`reads::set_watches`): refused whole,
        // it would leave every watch it names unset, and clients never read its answer.
        Request::SetWatches { .. }
        | Request::Ping
        | Request::Auth { .. }
        | Request::CloseSession
        | Request::WhoAmI
        | Request::Sasl
        | Request::Refused(_)
        | Request::Unknown(_) => None,
    }
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

/// ZooKeeper's short operation names, as `cons` reports the last one.
pub(super) fn op_name(opcode: i32) -> &'static str {
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
