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

use crate::path;
use crate::proto::{ErrorCode, EventType, Id, SessionId, Stat};
use crate::request::{encode_notification, watcher_type, ReadOp, ReadResult, Reply, Request};
use crate::state::ServerState;
use crate::watch::{ConnId, WatchKind};

/// Bytes of a Stat record on the wire.
const STAT_BYTES: usize = 68;
/// Bytes of a multi header (type, done, err).
const MULTI_HEADER_BYTES: usize = 9;

/// Why a read was refused by a limit rather than answered, for the log line naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The reply would pass `max_packet_bytes`; `at_least` bytes were counted when it stopped.
    ReplyTooLarge { at_least: usize },
    /// The connection holds `max_watches_per_connection` watches already.
    TooManyWatches,
}

/// What a read runs with.
pub(super) struct ReadCtx<'a> {
    pub conn: ConnId,
    pub session: SessionId,
    pub auth: &'a [Id],
    /// Bytes the reply body may take.
    pub max_body: usize,
    pub max_watches: usize,
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

/// Executes a read under the state lock, registering the watches it leaves; notifications it
/// fires at once (SetWatches on stale paths) are pushed to `frames`.
pub(super) fn execute(
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
        Request::GetAllChildrenNumber { path } => st.tree.all_children_number(&path, cx.auth).map(Reply::Int),
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
                _ => return Err(ErrorCode::BadArguments),
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
/// changed past `relative_zxid` (ZooKeeper's `DataTree.setWatches`). All within the watch limit
/// or none.
fn set_watches(
    st: &mut ServerState,
    cx: &mut ReadCtx<'_>,
    relative_zxid: i64,
    [data, exist, child, persistent, recursive]: [Vec<String>; 5],
    frames: &mut Vec<Vec<u8>>,
) -> Result<Reply, ErrorCode> {
    let zxid = st.tree.last_zxid();
    let mut fire: Vec<(EventType, &str)> = Vec::new();
    let mut keep: Vec<(WatchKind, &str)> = Vec::new();
    let changed = |stat: &Stat, field: fn(&Stat) -> i64| field(stat) > relative_zxid;
    for p in &data {
        match st.tree.node(p) {
            None => fire.push((EventType::NodeDeleted, p.as_str())),
            Some(n) if changed(&n.stat, |s| s.mzxid) => fire.push((EventType::NodeDataChanged, p.as_str())),
            Some(_) => keep.push((WatchKind::Data, p.as_str())),
        }
    }
    for p in &exist {
        match st.tree.node(p) {
            Some(_) => fire.push((EventType::NodeCreated, p.as_str())),
            None => keep.push((WatchKind::Data, p.as_str())),
        }
    }
    for p in &child {
        match st.tree.node(p) {
            None => fire.push((EventType::NodeDeleted, p.as_str())),
            Some(n) if changed(&n.stat, |s| s.pzxid) => fire.push((EventType::NodeChildrenChanged, p.as_str())),
            Some(_) => keep.push((WatchKind::Child, p.as_str())),
        }
    }
    keep.extend(persistent.iter().map(|p| (WatchKind::Persistent, p.as_str())));
    keep.extend(recursive.iter().map(|p| (WatchKind::PersistentRecursive, p.as_str())));
    cx.watch(st, &keep)?;
    frames.extend(fire.into_iter().map(|(kind, p)| encode_notification(kind, p, zxid)));
    Ok(Reply::Empty)
}
