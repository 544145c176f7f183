//! Reads, executed under the state lock when their turn in the reply order comes.
//!
//! Two limits are enforced here, before anything large is built or stored:
//!
//! - The reply must fit in `max_packet_bytes` (clients refuse larger packets: Java's "Packet len
//!   is out of range"). Reads that gather many results (multiRead, getChildren) count the bytes
//!   of their reply as they go and stop at the limit, so a 7 KB multiRead of 400 getData on a
//!   1 MB znode never builds its 400 MB reply: it is answered BadArguments and the connection
//!   goes on.
//! - A connection holds at most `max_watches_per_connection` watches; a read that would leave
//!   one more is answered QuotaExceeded and registers nothing. Watches are registered only on
//!   valid paths (no node can ever exist at an invalid one, so such a watch could never fire).
//!   SetWatches, which clients send without reading its answer, is the exception: see
//!   [`set_watches`].

use crate::path;
use crate::proto::{ErrorCode, EventType, Id, SessionId, Stat};
use crate::request::{encode_notification, watcher_type, ReadOp, ReadResult, Reply, Request};
use crate::state::ServerState;
use crate::tree::ChildrenNumber;
use crate::watch::{ConnId, WatchKind};

/// Bytes of a Stat record on the wire.
const STAT_BYTES: usize = 68;
/// Bytes of a multi header (type, done, err).
const MULTI_HEADER_BYTES: usize = 9;

/// Why a read was refused by a limit rather than answered (or answered in part), for the log
/// line naming it; those that [close](Refusal::closes) the connection are its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refusal {
    /// The reply would pass `max_packet_bytes`; `at_least` bytes were counted when it stopped.
    #[error("the reply would pass max_packet_bytes (at least {at_least} bytes)")]
    ReplyTooLarge { at_least: usize },
    /// The connection holds `max_watches_per_connection` watches already.
    #[error("the connection holds max_watches_per_connection watches")]
    TooManyWatches,
    /// SetWatches left `left_over` one-shot watches unregistered, `too_long` of them on paths
    /// longer than `max_path_bytes` and the rest past `max_watches_per_connection`; each was
    /// sent an event instead.
    #[error(
        "SetWatches left {left_over} one-shot watches unregistered ({too_long} on paths longer than \
         max_path_bytes, the rest past max_watches_per_connection)"
    )]
    WatchesLeftOver { left_over: usize, too_long: usize },
    /// SetWatches named a persistent watch on a path of `len` bytes, longer than
    /// `max_path_bytes`: no event could tell the client it was left out.
    #[error(
        "its SetWatches names a persistent watch on a path of {len} bytes, longer than max_path_bytes, and no \
         event could tell the client it was left out"
    )]
    PersistentWatchPathTooLong { len: usize },
    /// SetWatches named `wanted` persistent watches, more than `max_watches_per_connection`
    /// leaves room for: no event could tell the client which were left out.
    #[error(
        "its SetWatches names {wanted} persistent watches, more than max_watches_per_connection leaves room \
         for, and no event could tell the client which were left out"
    )]
    PersistentWatchesOverLimit { wanted: usize },
    /// SetWatches would fire more notifications (with those owed before its reply) than four
    /// times `max_queued_outbound_bytes`; `at_least` bytes were counted when it stopped.
    #[error(
        "its SetWatches would fire more than four times max_queued_outbound_bytes of notifications (at least \
         {at_least} bytes)"
    )]
    TooManyNotifications { at_least: usize },
}

impl Refusal {
    /// How many kinds there are, for a flag per kind.
    pub const KINDS: usize = 6;

    /// This refusal's kind, below [`Refusal::KINDS`].
    pub fn kind(self) -> usize {
        match self {
            Refusal::ReplyTooLarge { .. } => 0,
            Refusal::TooManyWatches => 1,
            Refusal::WatchesLeftOver { .. } => 2,
            Refusal::PersistentWatchesOverLimit { .. } => 3,
            Refusal::TooManyNotifications { .. } => 4,
            Refusal::PersistentWatchPathTooLong { .. } => 5,
        }
    }

    /// Whether the connection is closed rather than the read answered.
    pub fn closes(self) -> bool {
        match self {
            Refusal::ReplyTooLarge { .. } | Refusal::TooManyWatches | Refusal::WatchesLeftOver { .. } => false,
            Refusal::PersistentWatchesOverLimit { .. }
            | Refusal::PersistentWatchPathTooLong { .. }
            | Refusal::TooManyNotifications { .. } => true,
        }
    }
}

/// What a read runs with.
pub(super) struct ReadCtx<'a> {
    pub conn: ConnId,
    pub session: SessionId,
    pub auth: &'a [Id],
    /// Bytes the reply body may take.
    pub max_body: usize,
    pub max_watches: usize,
    /// The longest path a watch may be kept on (`max_path_bytes`); other requests naming a
    /// longer one are refused before they get here.
    pub max_path_bytes: usize,
    /// Bytes of notifications that may wait for the client (`max_queued_outbound_bytes`).
    pub max_notification_bytes: usize,
    /// Set when a limit refused the read.
    pub refused: Option<Refusal>,
}

impl ReadCtx<'_> {
    /// Registers the watches a read leaves (all or none), within the per-connection limit.
    fn watch(&mut self, st: &mut ServerState, watches: &[(WatchKind, &str)]) -> Result<(), ErrorCode> {
        let wanted: Vec<&(WatchKind, &str)> = watches
            .iter()
            .filter(|(kind, p)| path::validate(p, false).is_ok() && !st.watches.holds(self.conn, *kind, p))
            .collect();
        if st.watches.conn_watch_count(self.conn).saturating_add(wanted.len()) > self.max_watches {
            self.refused = Some(Refusal::TooManyWatches);
            return Err(ErrorCode::QuotaExceeded);
        }
        for (kind, p) in wanted {
            st.watches.add(self.conn, *kind, p);
        }
        Ok(())
    }

    /// Counts `bytes` more of reply body against the limit.
    fn spend(&mut self, used: &mut usize, bytes: usize) -> Result<(), ErrorCode> {
        *used = used.saturating_add(bytes);
        if *used > self.max_body {
            self.refused = Some(Refusal::ReplyTooLarge { at_least: *used });
            return Err(ErrorCode::BadArguments);
        }
        Ok(())
    }
}

/// Bytes of a getChildren body for these names.
fn children_bytes<'a>(names: impl Iterator<Item = &'a String>) -> usize {
    names.fold(4usize, |n, c| n.saturating_add(4).saturating_add(c.len()))
}

/// What a read yields under the state lock.
pub(super) enum Executed {
    /// Its reply.
    Answered(Result<Reply, ErrorCode>),
    /// getAllChildrenNumber below a node other than the root, found and readable: the count,
    /// O(nodes below), is made on a copy of the tree once the lock is let go.
    Count(ChildrenNumber),
}

/// Executes a read under the state lock, registering the watches it leaves; notifications it
/// fires at once (SetWatches on stale paths) are pushed to `frames`.
pub(super) fn execute(st: &mut ServerState, cx: &mut ReadCtx<'_>, req: Request, frames: &mut Vec<Vec<u8>>) -> Executed {
    match req {
        Request::GetAllChildrenNumber { path } => match st.tree.children_number(&path, cx.auth) {
            Ok(ChildrenNumber::Known(n)) => Executed::Answered(Ok(Reply::Int(n))),
            Ok(below) => Executed::Count(below),
            Err(e) => Executed::Answered(Err(e)),
        },
        req => Executed::Answered(answer(st, cx, req, frames)),
    }
}

/// Every read but getAllChildrenNumber, answered under the state lock.
fn answer(
    st: &mut ServerState,
    cx: &mut ReadCtx<'_>,
    req: Request,
    frames: &mut Vec<Vec<u8>>,
) -> Result<Reply, ErrorCode> {
    let mut used = 0usize;
    match req {
        Request::Ping => Ok(Reply::Empty),
        Request::Exists { path, watch } => {
            let r = st.tree.exists(&path);
            if watch && !matches!(r, Err(ErrorCode::BadArguments)) {
                cx.watch(st, &[(WatchKind::Data, &path)])?;
            }
            r.map(Reply::Stat)
        }
        Request::GetData { path, watch } => {
            let len = st.tree.get_data(&path, cx.auth)?.0.map_or(0, <[u8]>::len);
            cx.spend(&mut used, 4 + len + STAT_BYTES)?;
            if watch {
                cx.watch(st, &[(WatchKind::Data, &path)])?;
            }
            let (data, stat) = st.tree.get_data(&path, cx.auth)?;
            Ok(Reply::Data(data.map(<[u8]>::to_vec), stat))
        }
        Request::GetChildren { path, watch, with_stat } => {
            let node = st.tree.node(if path.is_empty() { "/" } else { &path });
            cx.spend(&mut used, node.map_or(0, |n| children_bytes(n.children.iter())) + STAT_BYTES)?;
            let (children, stat) = st.tree.children(&path, cx.auth)?;
            if watch {
                cx.watch(st, &[(WatchKind::Child, &path)])?;
            }
            Ok(if with_stat { Reply::Children2(children, stat) } else { Reply::Children(children) })
        }
        Request::GetAcl { path } => st.tree.get_acl(&path, cx.auth).map(|(a, s)| Reply::Acl(a, s)),
        Request::GetEphemerals { prefix } => {
            let found = st.tree.ephemerals(cx.session, &prefix)?;
            cx.spend(&mut used, children_bytes(found.iter()))?;
            Ok(Reply::Strings(found))
        }
        Request::MultiRead(ops) => {
            let mut results = Vec::with_capacity(ops.len());
            cx.spend(&mut used, MULTI_HEADER_BYTES)?;
            for op in ops {
                // Each result's size is counted before the result is built, so the reply stops
                // growing at the limit.
                let result = match op {
                    ReadOp::GetData(p) => match st.tree.get_data(&p, cx.auth) {
                        Ok((d, s)) => {
                            cx.spend(&mut used, MULTI_HEADER_BYTES + 4 + d.map_or(0, <[u8]>::len) + STAT_BYTES)?;
                            ReadResult::Data(d.map(<[u8]>::to_vec), s)
                        }
                        Err(e) => {
                            cx.spend(&mut used, MULTI_HEADER_BYTES + 4)?;
                            ReadResult::Error(e)
                        }
                    },
                    ReadOp::GetChildren(p) => {
                        let bytes = st.tree.node(&p).map_or(0, |n| children_bytes(n.children.iter()));
                        match st.tree.children(&p, cx.auth) {
                            Ok((c, _)) => {
                                cx.spend(&mut used, MULTI_HEADER_BYTES + bytes)?;
                                ReadResult::Children(c)
                            }
                            Err(e) => {
                                cx.spend(&mut used, MULTI_HEADER_BYTES + 4)?;
                                ReadResult::Error(e)
                            }
                        }
                    }
                };
                results.push(result);
            }
            Ok(Reply::MultiRead(results))
        }
        Request::AddWatch { path, mode } => {
            path::validate(&path, false).map_err(|_| ErrorCode::BadArguments)?;
            let kind = match mode {
                0 => WatchKind::Persistent,
                1 => WatchKind::PersistentRecursive,
                // Apache ZooKeeper 3.8's answer to an unknown mode (measured).
                _ => return Err(ErrorCode::MarshallingError),
            };
            cx.watch(st, &[(kind, &path)])?;
            // ZooKeeper answers addWatch with an ErrorResponse(0).
            Ok(Reply::Int(0))
        }
        Request::CheckWatches { path, ty } => {
            let ty = watcher_type(ty)?;
            if st.watches.contains(cx.conn, &path, ty) {
                Ok(Reply::Empty)
            } else {
                Err(ErrorCode::NoWatcher)
            }
        }
        Request::RemoveWatches { path, ty } => {
            let ty = watcher_type(ty)?;
            if st.watches.remove(cx.conn, &path, ty) {
                Ok(Reply::Empty)
            } else {
                Err(ErrorCode::NoWatcher)
            }
        }
        Request::WhoAmI => Ok(Reply::WhoAmI(
            cx.auth
                .iter()
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
            set_watches(st, cx, relative_zxid, [data, exist, child, persistent, recursive], frames)
        }
        Request::Refused(code) => Err(code),
        // Handled by `execute`.
        Request::GetAllChildrenNumber { .. } => Err(ErrorCode::SystemError),
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

/// SetWatches: re-registers a reconnecting client's watches, firing at once those whose node
/// changed past `relative_zxid` (ZooKeeper's `DataTree.setWatches`).
///
/// Clients send it without reading its answer (the Java client queues it with no callback when
/// it reconnects, zookeeper-client-rust with an empty responder), so it never refuses quietly;
/// ZooKeeper, which has no watch limit, never refuses it at all:
///
/// - every notification owed for a change the client missed is sent: it ends a watch rather
///   than leaving one;
/// - within `max_watches_per_connection`, persistent watches are registered first (no event
///   could tell the client one was left out), then one-shot watches in the order named;
/// - each one-shot watch left over is sent the event of a change to its node (NodeDataChanged,
///   NodeCreated or NodeChildrenChanged, as ZooKeeper sends for a change the client did not
///   see the end of), so its client reads again and hears QuotaExceeded when it sets the watch
///   anew, rather than waiting for ever on a watch that is not there;
/// - a one-shot watch on a path longer than `max_path_bytes` (set where the limit was higher)
///   is left over the same way, and its client hears BadArguments when it sets it anew; a
///   persistent one closes the connection, as below;
/// - if the persistent watches alone do not fit, or the notifications (with those owed before
///   this reply) would pass `max_queued_outbound_bytes`, nothing is registered and the
///   connection is closed, as one whose notifications pile up is.
///
/// A path named twice in a list counts once, and each change is notified once (a NodeDeleted
/// ends the client's data and child watches alike, as ZooKeeper sends it once per connection).
fn set_watches(
    st: &mut ServerState,
    cx: &mut ReadCtx<'_>,
    relative_zxid: i64,
    [data, exist, child, persistent, recursive]: [Vec<String>; 5],
    frames: &mut Vec<Vec<u8>>,
) -> Result<Reply, ErrorCode> {
    let zxid = st.tree.last_zxid();
    let mut fire: Vec<(EventType, &str)> = Vec::new();
    // One-shot watches to keep, each with the event it is sent if there is no room for it.
    let mut one_shot: Vec<(WatchKind, &str, EventType)> = Vec::new();
    let changed = |stat: &Stat, field: fn(&Stat) -> i64| field(stat) > relative_zxid;
    for p in distinct(&data) {
        match st.tree.node(p) {
            None => fire.push((EventType::NodeDeleted, p)),
            Some(n) if changed(&n.stat, |s| s.mzxid) => fire.push((EventType::NodeDataChanged, p)),
            Some(_) => one_shot.push((WatchKind::Data, p, EventType::NodeDataChanged)),
        }
    }
    for p in distinct(&exist) {
        match st.tree.node(p) {
            Some(_) => fire.push((EventType::NodeCreated, p)),
            None => one_shot.push((WatchKind::Data, p, EventType::NodeCreated)),
        }
    }
    for p in distinct(&child) {
        match st.tree.node(p) {
            None => fire.push((EventType::NodeDeleted, p)),
            Some(n) if changed(&n.stat, |s| s.pzxid) => fire.push((EventType::NodeChildrenChanged, p)),
            Some(_) => one_shot.push((WatchKind::Child, p, EventType::NodeChildrenChanged)),
        }
    }
    let mut notified = std::collections::HashSet::new();
    fire.retain(|event| notified.insert(*event));

    // Persistent watches first (`None`: no event stands for them), then the one-shot ones.
    // Only those the connection does not hold yet take room, and none is kept on an invalid
    // path, where no node can ever change.
    let mut seen = std::collections::HashSet::new();
    let wanted: Vec<(WatchKind, &str, Option<EventType>)> = distinct(&persistent)
        .map(|p| (WatchKind::Persistent, p, None))
        .chain(distinct(&recursive).map(|p| (WatchKind::PersistentRecursive, p, None)))
        .chain(one_shot.into_iter().map(|(kind, p, event)| (kind, p, Some(event))))
        .filter(|(kind, p, _)| {
            path::validate(p, false).is_ok() && !st.watches.holds(cx.conn, *kind, p) && seen.insert((*kind, *p))
        })
        .collect();
    if let Some(len) = wanted
        .iter()
        .filter(|(_, p, event)| event.is_none() && p.len() > cx.max_path_bytes)
        .map(|(_, p, _)| p.len())
        .max()
    {
        cx.refused = Some(Refusal::PersistentWatchPathTooLong { len });
        return Err(ErrorCode::BadArguments);
    }
    let lasting = wanted.iter().filter(|(_, _, event)| event.is_none()).count();
    let mut room = cx.max_watches.saturating_sub(st.watches.conn_watch_count(cx.conn));
    if lasting > room {
        cx.refused = Some(Refusal::PersistentWatchesOverLimit { wanted: lasting });
        return Err(ErrorCode::QuotaExceeded);
    }
    room -= lasting;
    let mut register: Vec<(WatchKind, &str)> = Vec::with_capacity(wanted.len());
    let mut left_over: Vec<(EventType, &str)> = Vec::new();
    let mut too_long = 0;
    for (kind, p, event) in wanted {
        match event {
            None => register.push((kind, p)),
            Some(event) if p.len() > cx.max_path_bytes => {
                too_long += 1;
                left_over.push((event, p));
            }
            Some(_) if room > 0 => {
                room -= 1;
                register.push((kind, p));
            }
            Some(event) => left_over.push((event, p)),
        }
    }

    // Built one at a time, so a SetWatches that would fire too many stops at the limit: the
    // larger bound of notifications waiting behind a reply, as these do. With the lists
    // deduplicated they are a few times the request's size at most, so a client is closed
    // here only for a request far beyond a client's own watches (closed, it would send the
    // same one again on every reconnect).
    let limit = cx.max_notification_bytes.saturating_mul(crate::outbox::PENDING_REPLY_FACTOR);
    let mut bytes: usize = frames.iter().map(Vec::len).sum();
    let mut fired = Vec::with_capacity(fire.len() + left_over.len());
    for (kind, p) in fire.iter().chain(&left_over) {
        let frame = encode_notification(*kind, p, zxid);
        bytes = bytes.saturating_add(frame.len());
        if bytes > limit {
            cx.refused = Some(Refusal::TooManyNotifications { at_least: bytes });
            return Err(ErrorCode::BadArguments);
        }
        fired.push(frame);
    }
    for (kind, p) in register {
        st.watches.add(cx.conn, kind, p);
    }
    if !left_over.is_empty() {
        cx.refused = Some(Refusal::WatchesLeftOver { left_over: left_over.len(), too_long });
    }
    frames.extend(fired);
    Ok(Reply::Empty)
}

/// The paths of a list, each once, in the order first named.
fn distinct(paths: &[String]) -> impl Iterator<Item = &str> {
    let mut seen = std::collections::HashSet::new();
    paths.iter().map(String::as_str).filter(move |p| seen.insert(*p))
}
