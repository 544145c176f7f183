//! The data tree: znodes, sessions and their ephemerals, as a deterministic state machine.
//!
//! [`DataTree::apply`] takes a [`Txn`] and the zxid it was committed at and returns the reply and
//! the watch events it fires. It reads no clock and no randomness: everything non-deterministic
//! was stamped into the txn by its proposer, so every server that applies the same log holds the
//! same tree, byte for byte. Validation happens here, at apply, against the state the write really
//! meets: a write from a session that is already closed is refused, so a late create can never
//! leave an orphaned ephemeral behind.
//!
//! Reads (`get_data`, `children`, ...) take the same tree under the server's lock, so a read that
//! registers a watch cannot miss an event applied between the read and the registration.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::path;
use crate::proto::{perms, Acl, CreateMode, ErrorCode, EventType, Id, SessionId, Stat, Zxid};
use crate::txn::{OpResult, Txn, TxnOp, TxnOutcome, TxnReply, WriteOp};

/// `ephemeralOwner` of a container node (`EphemeralType.CONTAINER`: `Long.MIN_VALUE`).
pub const CONTAINER_OWNER: i64 = i64::MIN;
/// High byte marking a TTL node's `ephemeralOwner` (`EphemeralType.TTL`).
const TTL_OWNER_MARK: i64 = 0xff00_0000_0000_0000u64 as i64;
/// Largest TTL ZooKeeper can encode in the owner field (`EphemeralType.TTL.maxValue()`: the low
/// 40 bits; the 16 above them are reserved).
pub const MAX_TTL_MS: i64 = 0x0000_00ff_ffff_ffff;

/// One znode.
///
/// Kept small, because a tree holds many: the ACL is a list shared with every node that has
/// the same one (the tree interns them, as ZooKeeper's `ReferenceCountedACLCache` does), and
/// the child names are a persistent set, so copying a node with many children (when a snapshot
/// still shares it) copies no names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Data, `None` when created with a null buffer.
    #[serde(with = "serde_bytes")]
    pub data: Option<Vec<u8>>,
    /// The node's ACL.
    pub acl: Arc<[Acl]>,
    /// Stat; `data_length` and `num_children` are derived on read, and `cversion` here counts
    /// child creates (see [`Node::stat`]).
    pub stat: Stat,
    /// Child names.
    pub children: imbl::OrdSet<String>,
}

impl Node {
    fn new(data: Option<Vec<u8>>, acl: Arc<[Acl]>, zxid: i64, time_ms: i64, owner: i64) -> Self {
        Node {
            data,
            acl,
            stat: Stat {
                czxid: zxid,
                mzxid: zxid,
                ctime: time_ms,
                mtime: time_ms,
                version: 0,
                cversion: 0,
                aversion: 0,
                ephemeral_owner: owner,
                data_length: 0,
                num_children: 0,
                pzxid: zxid,
            },
            children: imbl::OrdSet::new(),
        }
    }

    /// The Stat as clients see it.
    ///
    /// Like Apache ZooKeeper's `DataNode`, the node counts child creates, which also number
    /// sequential children, and reports the child version as creates plus deletes, taking every
    /// child not present as deleted: `2 × creates − children`. (So `/`, which holds
    /// `/zookeeper` without having created it, reports -1, as ZooKeeper's does.)
    pub fn stat(&self) -> Stat {
        let children = self.children.len() as i32;
        Stat {
            data_length: self.data.as_ref().map_or(0, |d| d.len() as i32),
            num_children: children,
            cversion: self.stat.cversion.wrapping_mul(2).wrapping_sub(children),
            // Container and TTL markers are the server's business: clients see 0 (ZooKeeper's
            // `getClientEphemeralOwner`).
            ephemeral_owner: self.ephemeral_session().map_or(0, |s| s.0),
            ..self.stat
        }
    }

    /// The data, empty for a null buffer.
    pub fn data(&self) -> Option<&[u8]> {
        self.data.as_deref()
    }

    /// Whether the owner field marks a container.
    pub fn is_container(&self) -> bool {
        self.stat.ephemeral_owner == CONTAINER_OWNER
    }

    /// The TTL in ms for a TTL node.
    pub fn ttl_ms(&self) -> Option<i64> {
        let owner = self.stat.ephemeral_owner;
        (owner != CONTAINER_OWNER && owner & TTL_OWNER_MARK == TTL_OWNER_MARK).then_some(owner & MAX_TTL_MS)
    }

    /// The owning session of a real ephemeral (not a container or TTL marker).
    pub fn ephemeral_session(&self) -> Option<SessionId> {
        let owner = self.stat.ephemeral_owner;
        (owner != 0 && owner != CONTAINER_OWNER && owner & TTL_OWNER_MARK != TTL_OWNER_MARK).then_some(SessionId(owner))
    }
}

/// A session as the replicated state knows it. Liveness (the last time a client was heard) is
/// not replicated; it is tracked by the server the client is connected to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Negotiated timeout.
    pub timeout_ms: i32,
    /// Password checked on reconnect.
    pub password: [u8; 16],
    /// Paths of the session's ephemeral nodes.
    pub ephemerals: BTreeSet<String>,
}

/// A copy of the tree's node and session maps, for the figures that walk all of them (`mntr`'s
/// data size and ephemeral count, getAllChildrenNumber). The maps are persistent, so taking the
/// copy costs O(1) and shares every node: a server takes it under its lock and counts once it
/// has let the lock go, so no count of a large tree holds up the writers. It is the tree as it
/// was when taken.
#[derive(Debug, Clone)]
pub struct TreeCounts {
    nodes: imbl::OrdMap<String, Arc<Node>>,
    sessions: imbl::OrdMap<SessionId, Session>,
}

impl TreeCounts {
    /// Total bytes of paths and data (ZooKeeper's `approximateDataSize`).
    pub fn approximate_data_size(&self) -> u64 {
        self.nodes.iter().map(|(p, n)| (p.len() + n.data.as_ref().map_or(0, Vec::len)) as u64).sum()
    }

    /// Open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Ephemeral nodes, of every session.
    pub fn ephemeral_count(&self) -> usize {
        self.sessions.values().map(|s| s.ephemerals.len()).sum()
    }

    /// Nodes below `path`, a path other than the root. The map is ordered by path, and the
    /// paths below `path` are exactly those from `path + "/"` up to `path + "0"` excluded ('0'
    /// is the character after '/'), so they are counted without building a path or looking
    /// one up.
    pub fn below(&self, path: &str) -> usize {
        use std::ops::Bound;
        let (from, to) = (format!("{path}/"), format!("{path}0"));
        self.nodes.range::<_, str>((Bound::Included(from.as_str()), Bound::Excluded(to.as_str()))).count()
    }
}

/// getAllChildrenNumber's answer once its node is found and may be read
/// ([`DataTree::children_number`]).
#[derive(Debug, Clone)]
pub enum ChildrenNumber {
    /// Known without counting (the root's).
    Known(i32),
    /// To be counted below `path` in a copy of the tree.
    Below {
        /// The copy.
        tree: TreeCounts,
        /// The node whose descendants are counted.
        path: String,
    },
}

impl ChildrenNumber {
    /// The number, counted if need be: O(nodes below) for [`ChildrenNumber::Below`].
    pub fn count(self) -> i32 {
        match self {
            ChildrenNumber::Known(n) => n,
            ChildrenNumber::Below { tree, path } => i32::try_from(tree.below(&path)).unwrap_or(i32::MAX),
        }
    }
}

/// A change a watch may be waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The path the event is about.
    pub path: String,
    /// What happened.
    pub kind: EventType,
    /// The zxid of the transaction that caused it.
    pub zxid: Zxid,
    /// The ACL of the node the event is about (before deletion, for a delete), so a server can
    /// withhold the notification from connections without READ.
    pub acl: Arc<[Acl]>,
}

/// What applying one transaction did besides its reply, for the server to act on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Effects {
    /// Watch events, in the order they happened.
    pub events: Vec<WatchEvent>,
    /// A session that was opened.
    pub opened: Option<SessionId>,
    /// A session that was closed or expired.
    pub closed: Option<SessionId>,
    /// A session whose client reconnected to this server id.
    pub moved: Option<(SessionId, u64)>,
}

/// Undo record for rolling back a failed multi.
enum Undo {
    /// The node at `path` was this before (None: it did not exist).
    Node(String, Option<Arc<Node>>),
    /// The session's ephemeral set contained the path (true) or not (false) before.
    Ephemeral(SessionId, String, bool),
}

/// The replicated state: the znode tree and the session table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "TreeFields")]
pub struct DataTree {
    // Persistent (copy-on-write) maps: cloning the tree for a snapshot is O(1) and shares every
    // node; the first change to a node after a clone copies that node alone. So a snapshot
    // never stops the writers for longer than a few pointer copies.
    //
    // A B-tree, not a hash trie, and each node behind its own pointer: a hash trie's levels are
    // arrays of 32 slots, each as wide as a key and its value, allocated whole however few of
    // them are used, which cost about 2.5 KB per znode at 100,000 znodes. A B-tree node is at
    // least a third full and its slots hold a key and a pointer. The order is also the order a
    // snapshot writes them in, the same on every server.
    nodes: imbl::OrdMap<String, Arc<Node>>,
    sessions: imbl::OrdMap<SessionId, Session>,
    last_zxid: Zxid,
    /// Paths of containers and TTL nodes, the candidates for reaping.
    reapable: imbl::OrdSet<String>,
    /// The server that owns each session claimed by one ([`TxnOp::ClaimSession`]): writes for
    /// it through any other server are refused. A session never claimed takes them from any.
    owners: imbl::OrdMap<SessionId, u64>,
    /// Whether TTL nodes may be created (a server setting every member must share).
    #[serde(skip)]
    extended_types: bool,
    /// The distinct ACL lists the nodes share.
    #[serde(skip)]
    acls: AclCache,
}

/// The fields of a [`DataTree`] as its serialised form holds them; reading them back interns
/// the nodes' ACLs again, so a tree restored from a snapshot shares them as the live one did.
#[derive(Deserialize)]
struct TreeFields {
    nodes: imbl::OrdMap<String, Arc<Node>>,
    sessions: imbl::OrdMap<SessionId, Session>,
    last_zxid: Zxid,
    reapable: imbl::OrdSet<String>,
    owners: imbl::OrdMap<SessionId, u64>,
}

/// A tree as snapshot format version 1 holds it: without the sessions' owners (no session
/// had one before [`TxnOp::ClaimSession`]).
#[derive(Deserialize)]
pub(crate) struct TreeFieldsV1 {
    nodes: imbl::OrdMap<String, Arc<Node>>,
    sessions: imbl::OrdMap<SessionId, Session>,
    last_zxid: Zxid,
    reapable: imbl::OrdSet<String>,
}

impl From<TreeFieldsV1> for DataTree {
    fn from(f: TreeFieldsV1) -> Self {
        DataTree::from(TreeFields {
            nodes: f.nodes,
            sessions: f.sessions,
            last_zxid: f.last_zxid,
            reapable: f.reapable,
            owners: imbl::OrdMap::new(),
        })
    }
}

impl From<TreeFields> for DataTree {
    fn from(f: TreeFields) -> Self {
        let mut acls = AclCache::default();
        let nodes = f
            .nodes
            .into_iter()
            .map(|(path, mut node)| {
                let shared = acls.intern_shared(&node.acl);
                if !Arc::ptr_eq(&shared, &node.acl) {
                    Arc::make_mut(&mut node).acl = shared;
                }
                (path, node)
            })
            .collect();
        DataTree {
            nodes,
            sessions: f.sessions,
            last_zxid: f.last_zxid,
            reapable: f.reapable,
            owners: f.owners,
            extended_types: false,
            acls,
        }
    }
}

/// The distinct ACL lists in use, each stored once and shared by every node that has it
/// (ZooKeeper's `ReferenceCountedACLCache`). Lists no node holds any more are dropped when the
/// cache has doubled since it was last swept, so a client that sets many different ACLs over
/// time leaves no more behind than the tree uses.
#[derive(Debug, Clone, Default)]
struct AclCache {
    lists: HashSet<Arc<[Acl]>>,
    /// The size at which the next sweep happens.
    sweep_at: usize,
}

/// The cache is not part of the tree's state: two trees with the same nodes are equal
/// whatever their caches hold.
impl PartialEq for AclCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for AclCache {}

impl AclCache {
    /// The shared copy of `acl`.
    fn intern(&mut self, acl: Vec<Acl>) -> Arc<[Acl]> {
        if let Some(shared) = self.lists.get(acl.as_slice()) {
            return shared.clone();
        }
        self.insert(Arc::from(acl))
    }

    /// The shared copy of an already allocated list (the list itself if it is the first).
    fn intern_shared(&mut self, acl: &Arc<[Acl]>) -> Arc<[Acl]> {
        if let Some(shared) = self.lists.get(&**acl) {
            return shared.clone();
        }
        self.insert(acl.clone())
    }

    fn insert(&mut self, list: Arc<[Acl]>) -> Arc<[Acl]> {
        if self.lists.len() >= self.sweep_at {
            // Held only by the cache: no node has it any more.
            self.lists.retain(|l| Arc::strong_count(l) > 1);
            self.sweep_at = (self.lists.len() * 2).max(64);
        }
        self.lists.insert(list.clone());
        list
    }
}

impl Default for DataTree {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether an authenticated identity satisfies an ACL entry's id.
fn id_matches(acl_id: &Id, auth: &Id) -> bool {
    if acl_id.scheme != auth.scheme {
        return false;
    }
    match acl_id.scheme.as_str() {
        "ip" => ip_matches(&acl_id.id, &auth.id),
        _ => acl_id.id == auth.id,
    }
}

/// `ip` scheme: `addr` or `addr/bits` against the client's address.
fn ip_matches(pattern: &str, client: &str) -> bool {
    let (addr, bits) = match pattern.split_once('/') {
        Some((a, b)) => match b.parse::<u32>() {
            Ok(bits) => (a, Some(bits)),
            Err(_) => return false,
        },
        None => (pattern, None),
    };
    let (Ok(want), Ok(have)) = (addr.parse::<IpAddr>(), client.parse::<IpAddr>()) else {
        return false;
    };
    let (want, have, width) = match (want, have) {
        (IpAddr::V4(w), IpAddr::V4(h)) => (u32::from(w) as u128, u32::from(h) as u128, 32),
        (IpAddr::V6(w), IpAddr::V6(h)) => (u128::from(w), u128::from(h), 128),
        _ => return false,
    };
    let bits = bits.unwrap_or(width).min(width);
    if bits == 0 {
        return true;
    }
    let mask = if bits == 128 { u128::MAX } else { ((1u128 << bits) - 1) << (width - bits) };
    want & mask == have & mask
}

/// Checks `perm` against an ACL for a caller with the given identities (ZooKeeper's `checkACL`).
pub fn check_acl(acl: &[Acl], perm: i32, auth: &[Id]) -> Result<(), ErrorCode> {
    if auth.iter().any(|a| a.scheme == "super") {
        return Ok(());
    }
    if acl.is_empty() {
        return Ok(());
    }
    for entry in acl {
        if entry.perms & perm == 0 {
            continue;
        }
        // Compared in place: this runs for every request, and building the `world:anyone`
        // identity to compare with would allocate each time.
        let anyone = entry.id.scheme == "world" && entry.id.id == "anyone";
        if anyone || auth.iter().any(|a| id_matches(&entry.id, a)) {
            return Ok(());
        }
    }
    Err(ErrorCode::NoAuth)
}

/// Validates a requested ACL and expands `auth` entries to the caller's authenticated identities
/// (ZooKeeper's `fixupACL`). An empty or invalid ACL is `InvalidACL`.
pub fn fixup_acl(acl: &[Acl], auth: &[Id]) -> Result<Vec<Acl>, ErrorCode> {
    if acl.is_empty() {
        return Err(ErrorCode::InvalidAcl);
    }
    let mut out: Vec<Acl> = Vec::with_capacity(acl.len());
    let mut push = |a: Acl| {
        if !out.contains(&a) {
            out.push(a);
        }
    };
    for entry in acl {
        match entry.id.scheme.as_str() {
            "world" => {
                if entry.id.id != "anyone" {
                    return Err(ErrorCode::InvalidAcl);
                }
                push(entry.clone());
            }
            "auth" => {
                // Every identity from a provider that authenticates (digest; x509 and sasl where
                // present), not the address nor the super marker, as ZooKeeper's `fixupACL`.
                let mut any = false;
                for a in auth.iter().filter(|a| matches!(a.scheme.as_str(), "digest" | "x509" | "sasl")) {
                    any = true;
                    push(Acl { perms: entry.perms, id: a.clone() });
                }
                if !any {
                    return Err(ErrorCode::InvalidAcl);
                }
            }
            "digest" => {
                if entry.id.id.split(':').count() != 2 {
                    return Err(ErrorCode::InvalidAcl);
                }
                push(entry.clone());
            }
            "ip" => {
                let (addr, bits) = match entry.id.id.split_once('/') {
                    Some((a, b)) => (a, Some(b)),
                    None => (entry.id.id.as_str(), None),
                };
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    return Err(ErrorCode::InvalidAcl);
                };
                let width = if ip.is_ipv4() { 32 } else { 128 };
                if let Some(b) = bits {
                    match b.parse::<u32>() {
                        Ok(n) if n <= width => {}
                        _ => return Err(ErrorCode::InvalidAcl),
                    }
                }
                push(entry.clone());
            }
            // No provider checks any other scheme (ZooKeeper registers `ip` and `digest`, and
            // never one called `super`): an ACL naming one could never be met.
            _ => return Err(ErrorCode::InvalidAcl),
        }
    }
    Ok(out)
}

/// The nodes ZooKeeper keeps for itself, which no client may delete.
fn is_special(path: &str) -> bool {
    matches!(path, "/" | "/zookeeper" | "/zookeeper/quota" | "/zookeeper/config")
}

/// Session ids derive from the index of the entry that created the session and the proposer's
/// clock: unique within one log (the index), different across a wiped and re-created ensemble
/// (the clock), never 0 (index ≥ 1) and never negative, so they cannot collide with the owner
/// markers of containers and TTL nodes.
pub fn derive_session_id(index: u64, time_ms: i64) -> SessionId {
    let clock = ((time_ms as u64) & 0x7f_ffff) << 40;
    SessionId((clock | (index & 0xff_ffff_ffff)) as i64)
}

impl DataTree {
    /// A tree holding `/`, `/zookeeper`, `/zookeeper/quota` and `/zookeeper/config`, as a fresh
    /// Apache ZooKeeper server does.
    pub fn new() -> Self {
        let mut acls = AclCache::default();
        let open = acls.intern(Acl::open_unsafe());
        let mut nodes = imbl::OrdMap::new();
        let mut root = Node::new(Some(Vec::new()), open.clone(), 0, 0, 0);
        root.children.insert("zookeeper".into());
        let mut zk = Node::new(Some(Vec::new()), open.clone(), 0, 0, 0);
        zk.children.insert("quota".into());
        zk.children.insert("config".into());
        nodes.insert("/".to_string(), Arc::new(root));
        nodes.insert("/zookeeper".to_string(), Arc::new(zk));
        nodes.insert("/zookeeper/quota".to_string(), Arc::new(Node::new(Some(Vec::new()), open, 0, 0, 0)));
        let read = acls.intern(Acl::read_unsafe());
        nodes.insert("/zookeeper/config".to_string(), Arc::new(Node::new(Some(Vec::new()), read, 0, 0, 0)));
        DataTree {
            nodes,
            sessions: imbl::OrdMap::new(),
            last_zxid: Zxid(0),
            reapable: imbl::OrdSet::new(),
            owners: imbl::OrdMap::new(),
            extended_types: false,
            acls,
        }
    }

    /// Allows or refuses TTL nodes (refused creates answer `Unimplemented`, as ZooKeeper's do
    /// without `zookeeper.extendedTypesEnabled`).
    pub fn set_extended_types(&mut self, enabled: bool) {
        self.extended_types = enabled;
    }

    /// Whether TTL nodes may be created.
    pub fn extended_types(&self) -> bool {
        self.extended_types
    }

    /// Containers that had children and have none left, and TTL nodes without children whose TTL
    /// has passed since their last change at `now_ms`: what the reaper proposes to delete.
    pub fn reap_candidates(&self, now_ms: i64) -> Vec<String> {
        self.reapable
            .iter()
            .filter(|p| self.nodes.get(p.as_str()).is_some_and(|n| Self::is_reapable(n, now_ms)))
            .cloned()
            .collect()
    }

    fn is_reapable(n: &Node, now_ms: i64) -> bool {
        if !n.children.is_empty() {
            return false;
        }
        if n.is_container() {
            return n.stat.cversion > 0;
        }
        n.ttl_ms().is_some_and(|ttl| now_ms.saturating_sub(n.stat.mtime) > ttl)
    }

    /// The zxid of the last applied transaction.
    pub fn last_zxid(&self) -> Zxid {
        self.last_zxid
    }

    /// Records a log entry without application payload, so `last_zxid` follows the log.
    pub fn apply_empty(&mut self, zxid: Zxid) {
        self.last_zxid = self.last_zxid.max(zxid);
    }

    /// A node by path.
    pub fn node(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path).map(|n| &**n)
    }

    /// A node as reads look it up: ZooKeeper keeps the root under the empty path too.
    fn lookup(&self, path: &str) -> Option<&Node> {
        self.nodes.get(if path.is_empty() { "/" } else { path }).map(|n| &**n)
    }

    /// A session by id.
    pub fn session(&self, id: SessionId) -> Option<&Session> {
        self.sessions.get(&id)
    }

    /// Every open session.
    pub fn sessions(&self) -> impl Iterator<Item = (SessionId, &Session)> {
        self.sessions.iter().map(|(k, v)| (*k, v))
    }

    /// Up to `max` open sessions after `after`, in id order (for walks a few at a time).
    pub fn sessions_after(&self, after: Option<SessionId>, max: usize) -> impl Iterator<Item = (SessionId, &Session)> {
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        self.sessions.range::<_, SessionId>((from, std::ops::Bound::Unbounded)).take(max).map(|(k, v)| (*k, v))
    }

    /// Number of znodes, `/` included.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Total bytes of paths and data (ZooKeeper's `approximateDataSize`): a walk of every node,
    /// which a server makes on [`DataTree::counts`] once it has let its lock go.
    pub fn approximate_data_size(&self) -> u64 {
        self.counts().approximate_data_size()
    }

    /// An O(1) copy of the node and session maps, to count over outside the server's lock
    /// (see [`TreeCounts`]).
    pub fn counts(&self) -> TreeCounts {
        TreeCounts { nodes: self.nodes.clone(), sessions: self.sessions.clone() }
    }

    // Reads do not validate paths: Apache ZooKeeper looks them up as they are, and a path that
    // is invalid names no node (NoNode). Writes validate, at apply.

    /// getData: the node's data and Stat, after a READ check.
    pub fn get_data(&self, path: &str, auth: &[Id]) -> Result<(Option<&[u8]>, Stat), ErrorCode> {
        let node = self.lookup(path).ok_or(ErrorCode::NoNode)?;
        check_acl(&node.acl, perms::READ, auth)?;
        Ok((node.data(), node.stat()))
    }

    /// exists: the Stat, with no ACL check (as in ZooKeeper).
    pub fn exists(&self, path: &str) -> Result<Stat, ErrorCode> {
        // ZooKeeper checks this for exists alone (FinalRequestProcessor), before any watch.
        if path.contains('\0') {
            return Err(ErrorCode::BadArguments);
        }
        self.lookup(path).map(Node::stat).ok_or(ErrorCode::NoNode)
    }

    /// getChildren / getChildren2: sorted child names and the parent's Stat, after a READ check.
    pub fn children(&self, path: &str, auth: &[Id]) -> Result<(Vec<String>, Stat), ErrorCode> {
        let node = self.lookup(path).ok_or(ErrorCode::NoNode)?;
        check_acl(&node.acl, perms::READ, auth)?;
        Ok((node.children.iter().cloned().collect(), node.stat()))
    }

    /// getACL: the ACL and Stat (ZooKeeper requires READ or ADMIN). Without ADMIN, digest ids
    /// are shown as `user:x`, so the password hash does not leak.
    pub fn get_acl(&self, path: &str, auth: &[Id]) -> Result<(Vec<Acl>, Stat), ErrorCode> {
        let node = self.lookup(path).ok_or(ErrorCode::NoNode)?;
        check_acl(&node.acl, perms::READ | perms::ADMIN, auth)?;
        if check_acl(&node.acl, perms::ADMIN, auth).is_ok() {
            return Ok((node.acl.to_vec(), node.stat()));
        }
        let masked = node
            .acl
            .iter()
            .map(|a| match a.id.scheme.as_str() {
                "digest" => Acl {
                    perms: a.perms,
                    id: Id {
                        scheme: a.id.scheme.clone(),
                        id: format!("{}:x", a.id.id.split(':').next().unwrap_or_default()),
                    },
                },
                _ => a.clone(),
            })
            .collect();
        Ok((masked, node.stat()))
    }

    /// getAllChildrenNumber: every node below `path`, counted here and now (see
    /// [`DataTree::children_number`] for a count outside the server's lock).
    pub fn all_children_number(&self, path: &str, auth: &[Id]) -> Result<i32, ErrorCode> {
        self.children_number(path, auth).map(ChildrenNumber::count)
    }

    /// getAllChildrenNumber up to its count: the node must exist and `auth` must be allowed to
    /// read it. The root's answer is the node count, as ZooKeeper gives it; below any other
    /// node the nodes are counted on an O(1) copy of the tree ([`ChildrenNumber::count`]),
    /// which a server does once it has let its lock go: the count is O(nodes below).
    pub fn children_number(&self, path: &str, auth: &[Id]) -> Result<ChildrenNumber, ErrorCode> {
        let node = self.lookup(path).ok_or(ErrorCode::NoNode)?;
        check_acl(&node.acl, perms::READ, auth)?;
        let all = i32::try_from(self.nodes.len()).unwrap_or(i32::MAX);
        Ok(match path {
            // Every node but the root is below it.
            "/" => ChildrenNumber::Known(all.saturating_sub(1)),
            // ZooKeeper counts the keys of its node map below `path + "/"`; for the empty path
            // that includes its second key for the root, "/".
            "" => ChildrenNumber::Known(all),
            _ => ChildrenNumber::Below { tree: self.counts(), path: path.to_owned() },
        })
    }

    /// getEphemerals: the session's ephemerals whose path starts with `prefix`, sorted.
    pub fn ephemerals(&self, session: SessionId, prefix: &str) -> Result<Vec<String>, ErrorCode> {
        let Some(s) = self.sessions.get(&session) else {
            return Ok(Vec::new());
        };
        Ok(s.ephemerals.iter().filter(|p| prefix == "/" || p.starts_with(prefix)).cloned().collect())
    }

    /// Applies one committed transaction at `zxid`.
    pub fn apply(&mut self, zxid: Zxid, txn: &Txn) -> (TxnOutcome, Effects) {
        self.last_zxid = self.last_zxid.max(zxid);
        let mut fx = Effects::default();
        let result = match &txn.op {
            TxnOp::CreateSession { timeout_ms, password } => {
                let id = derive_session_id(zxid.0 as u64, txn.time_ms);
                match self.sessions.get(&id) {
                    Some(_) => Err(ErrorCode::SystemError),
                    None => {
                        self.sessions.insert(
                            id,
                            Session { timeout_ms: *timeout_ms, password: *password, ephemerals: BTreeSet::new() },
                        );
                        fx.opened = Some(id);
                        Ok(TxnReply::SessionCreated { session: id, timeout_ms: *timeout_ms, password: *password })
                    }
                }
            }
            TxnOp::CloseSession { .. } => match self.sessions.remove(&txn.session) {
                None => Err(ErrorCode::SessionExpired),
                Some(session) => {
                    self.owners.remove(&txn.session);
                    // Deepest first, so an ephemeral's removal never meets a child it cannot have,
                    // and every deletion fires its events under this one zxid.
                    let mut paths: Vec<String> = session.ephemerals.into_iter().collect();
                    paths.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
                    for p in paths {
                        self.remove_node(&p, zxid, &mut fx.events, None);
                    }
                    fx.closed = Some(txn.session);
                    Ok(TxnReply::SessionClosed)
                }
            },
            TxnOp::Write(op) => self
                .writable(txn.session, None)
                .and_then(|()| self.write(op, txn, zxid, &mut fx.events, None).map(TxnReply::Op)),
            TxnOp::WriteVia { server, op } => self
                .writable(txn.session, Some(*server))
                .and_then(|()| self.write(op, txn, zxid, &mut fx.events, None).map(TxnReply::Op)),
            TxnOp::Multi(ops) => self
                .writable(txn.session, None)
                .and_then(|()| self.multi(ops, txn, zxid, &mut fx.events).map(TxnReply::Multi)),
            TxnOp::MultiVia { server, ops } => self
                .writable(txn.session, Some(*server))
                .and_then(|()| self.multi(ops, txn, zxid, &mut fx.events).map(TxnReply::Multi)),
            TxnOp::ClientWrite { server, extended_types, op } => self.with_extended_types(*extended_types, |t| {
                t.writable(txn.session, *server)
                    .and_then(|()| t.write(op, txn, zxid, &mut fx.events, None).map(TxnReply::Op))
            }),
            TxnOp::ClientMulti { server, extended_types, ops } => self.with_extended_types(*extended_types, |t| {
                t.writable(txn.session, *server)
                    .and_then(|()| t.multi(ops, txn, zxid, &mut fx.events).map(TxnReply::Multi))
            }),
            TxnOp::ClaimSession { server } => {
                if self.sessions.contains_key(&txn.session) {
                    self.owners.insert(txn.session, *server);
                    fx.moved = Some((txn.session, *server));
                    Ok(TxnReply::Nothing)
                } else {
                    Err(ErrorCode::SessionExpired)
                }
            }
            TxnOp::MoveSession { to_server } => {
                if self.sessions.contains_key(&txn.session) {
                    fx.moved = Some((txn.session, *to_server));
                    Ok(TxnReply::Nothing)
                } else {
                    Err(ErrorCode::SessionExpired)
                }
            }
            TxnOp::EnsembleConfig { members } => self.set_ensemble_config(members, txn, zxid, &mut fx.events),
        };
        (TxnOutcome { zxid, result }, fx)
    }

    /// Whether `session` may write through `via` (the server whose client sent the write, if
    /// it was tagged with one): open, and not owned by another server since it moved.
    fn writable(&self, session: SessionId, via: Option<u64>) -> Result<(), ErrorCode> {
        if !self.session_is_open(session) {
            return Err(ErrorCode::SessionExpired);
        }
        match (via, self.owners.get(&session)) {
            (Some(via), Some(owner)) if *owner != via => Err(ErrorCode::SessionMoved),
            _ => Ok(()),
        }
    }

    /// The server that owns `session`, if one claimed it.
    pub fn owner(&self, session: SessionId) -> Option<u64> {
        self.owners.get(&session).copied()
    }

    /// Writes the members' text into `/zookeeper/config`, as a setData would, firing its data
    /// watches. Only the servers issue it: a client's session never does.
    fn set_ensemble_config(
        &mut self,
        members: &[crate::members_config::MemberLine],
        txn: &Txn,
        zxid: Zxid,
        events: &mut Vec<WatchEvent>,
    ) -> Result<TxnReply, ErrorCode> {
        const CONFIG: &str = "/zookeeper/config";
        if txn.session.0 != 0 {
            return Err(ErrorCode::NoAuth);
        }
        let node = Arc::make_mut(self.nodes.get_mut(CONFIG).ok_or(ErrorCode::NoNode)?);
        node.data = Some(crate::members_config::render(members, zxid.0).into_bytes());
        node.stat.version = node.stat.version.wrapping_add(1);
        node.stat.mzxid = zxid.0;
        node.stat.mtime = txn.time_ms;
        events.push(WatchEvent {
            path: CONFIG.to_string(),
            kind: EventType::NodeDataChanged,
            zxid,
            acl: node.acl.clone(),
        });
        Ok(TxnReply::Nothing)
    }

    fn session_is_open(&self, session: SessionId) -> bool {
        // Session 0 is the server itself (reaping containers and TTL nodes).
        session.0 == 0 || self.sessions.contains_key(&session)
    }

    /// Applies a multi: all ops or none. Later ops see earlier ops' effects; on the first failure
    /// everything is rolled back and the results say which op failed, as ZooKeeper's do.
    fn multi(
        &mut self,
        ops: &[WriteOp],
        txn: &Txn,
        zxid: Zxid,
        events: &mut Vec<WatchEvent>,
    ) -> Result<Vec<OpResult>, ErrorCode> {
        // A TTL mode inside a multi cannot carry its TTL. Apache ZooKeeper 3.8 fails on such an
        // op when it reaches it and answers the whole multi with MarshallingError (measured),
        // its zxid still used; an earlier failing op answers as usual.
        let ttl_without_ttl = |op: &WriteOp| matches!(op, WriteOp::Create { opcode, flags: 5 | 6, .. } if *opcode != crate::proto::op::CREATE_TTL);
        let mut undo = Vec::new();
        let mut local_events = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            if ttl_without_ttl(op) {
                self.roll_back(undo);
                return Err(ErrorCode::MarshallingError);
            }
            match self.write(op, txn, zxid, &mut local_events, Some(&mut undo)) {
                Ok(r) => results.push(r),
                Err(code) => {
                    self.roll_back(undo);
                    let mut out = vec![OpResult::Error(0); i];
                    out.push(OpResult::Error(code.code()));
                    out.extend(std::iter::repeat_n(
                        OpResult::Error(ErrorCode::RuntimeInconsistency.code()),
                        ops.len() - i - 1,
                    ));
                    return Ok(out);
                }
            }
        }
        events.extend(local_events);
        Ok(results)
    }

    /// Undoes the changes of a failed multi, newest first.
    fn roll_back(&mut self, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            match u {
                Undo::Node(p, Some(n)) => {
                    if n.is_container() || n.ttl_ms().is_some() {
                        self.reapable.insert(p.clone());
                    }
                    self.nodes.insert(p, n);
                }
                Undo::Node(p, None) => {
                    self.reapable.remove(&p);
                    self.nodes.remove(&p);
                }
                Undo::Ephemeral(s, p, was) => {
                    if let Some(sess) = self.sessions.get_mut(&s) {
                        if was {
                            sess.ephemerals.insert(p);
                        } else {
                            sess.ephemerals.remove(&p);
                        }
                    }
                }
            }
        }
    }

    fn save(&self, undo: &mut Option<&mut Vec<Undo>>, path: &str) {
        if let Some(u) = undo.as_deref_mut() {
            u.push(Undo::Node(path.to_string(), self.nodes.get(path).cloned()));
        }
    }

    fn write(
        &mut self,
        op: &WriteOp,
        txn: &Txn,
        zxid: Zxid,
        events: &mut Vec<WatchEvent>,
        mut undo: Option<&mut Vec<Undo>>,
    ) -> Result<OpResult, ErrorCode> {
        match op {
            WriteOp::Create { opcode, path, data, acl, flags, ttl_ms } => {
                // The order of the checks is Apache ZooKeeper's (PrepRequestProcessor), so the
                // same bad request gets the same error: mode and TTL, a rough path check, the
                // ACL, the parent, CREATE permission, then the full path with its suffix.
                let mode = CreateMode::from_flags(*flags)?;
                let ttl = if *opcode == crate::proto::op::CREATE_TTL { *ttl_ms } else { -1 };
                self.validate_create(mode, ttl)?;
                if !path.contains('/') || path.contains('\0') {
                    return Err(ErrorCode::BadArguments);
                }
                let acl = self.acls.intern(fixup_acl(acl, &txn.auth)?);
                let parent_path = path::parent(path).to_string();
                let parent = self.nodes.get(&parent_path).ok_or(ErrorCode::NoNode)?;
                check_acl(&parent.acl, perms::CREATE, &txn.auth)?;
                // The parent's create counter numbers sequential children and feeds its
                // cversion. At its maximum there is no next number: the create is refused
                // (deterministically, on every server) rather than wrapping to a name or a
                // version already used, or panicking inside the state machine.
                let next_cversion = parent.stat.cversion.checked_add(1).ok_or(ErrorCode::BadArguments)?;
                let mut final_path = path.clone();
                if mode.is_sequential() {
                    final_path.push_str(&format!("{:010}", parent.stat.cversion));
                }
                path::validate(&final_path, false).map_err(|_| ErrorCode::BadArguments)?;
                if self.nodes.contains_key(&final_path) {
                    return Err(ErrorCode::NodeExists);
                }
                if parent.ephemeral_session().is_some() {
                    return Err(ErrorCode::NoChildrenForEphemerals);
                }
                // A container is what createContainer makes, whatever its flags say, and only
                // that (ZooKeeper logs a CreateContainerTxn for it, a plain CreateTxn for create
                // and create2 with the container flag); inside a multi the flags decide, as
                // ZooKeeper derives each op's opcode from them.
                let container = if undo.is_some() {
                    mode == CreateMode::Container
                } else {
                    *opcode == crate::proto::op::CREATE_CONTAINER
                };
                let owner = match mode {
                    _ if container => CONTAINER_OWNER,
                    CreateMode::Ephemeral | CreateMode::EphemeralSequential => txn.session.0,
                    CreateMode::PersistentWithTtl | CreateMode::PersistentSequentialWithTtl => TTL_OWNER_MARK | ttl,
                    CreateMode::Container | CreateMode::Persistent | CreateMode::PersistentSequential => 0,
                };
                if mode.is_ephemeral() && txn.session.0 == 0 {
                    return Err(ErrorCode::BadArguments);
                }
                self.save(&mut undo, &parent_path);
                self.save(&mut undo, &final_path);
                let parent = Arc::make_mut(self.nodes.get_mut(&parent_path).expect("parent checked above"));
                parent.stat.cversion = next_cversion;
                parent.stat.pzxid = zxid.0;
                parent.children.insert(path::name(&final_path).to_string());
                let parent_acl = parent.acl.clone();
                let node = Node::new(data.clone(), acl.clone(), zxid.0, txn.time_ms, owner);
                let stat = node.stat();
                self.nodes.insert(final_path.clone(), Arc::new(node));
                if owner == CONTAINER_OWNER || mode.is_ttl() {
                    self.reapable.insert(final_path.clone());
                }
                if mode.is_ephemeral() && !container {
                    if let Some(u) = undo.as_deref_mut() {
                        u.push(Undo::Ephemeral(txn.session, final_path.clone(), false));
                    }
                    if let Some(s) = self.sessions.get_mut(&txn.session) {
                        s.ephemerals.insert(final_path.clone());
                    }
                }
                events.push(WatchEvent { path: final_path.clone(), kind: EventType::NodeCreated, zxid, acl });
                events.push(WatchEvent {
                    path: parent_path,
                    kind: EventType::NodeChildrenChanged,
                    zxid,
                    acl: parent_acl,
                });
                Ok(OpResult::Created { opcode: *opcode, mode, path: final_path, stat })
            }
            WriteOp::Delete { path, version } => {
                // ZooKeeper's order: a rough path check that also protects its own nodes, the
                // parent, DELETE on the parent, then the node, its version and its children.
                if !path.contains('/') || path.contains('\0') || is_special(path) {
                    return Err(ErrorCode::BadArguments);
                }
                let parent_path = path::parent(path).to_string();
                let parent = self.nodes.get(&parent_path).ok_or(ErrorCode::NoNode)?;
                check_acl(&parent.acl, perms::DELETE, &txn.auth)?;
                let node = self.nodes.get(path).ok_or(ErrorCode::NoNode)?;
                if *version != -1 && *version != node.stat.version {
                    return Err(ErrorCode::BadVersion);
                }
                if !node.children.is_empty() {
                    return Err(ErrorCode::NotEmpty);
                }
                self.remove_node(path, zxid, events, undo);
                Ok(OpResult::Deleted)
            }
            WriteOp::SetData { path, data, version } => {
                path::validate(path, false).map_err(|_| ErrorCode::BadArguments)?;
                let node = self.nodes.get(path).ok_or(ErrorCode::NoNode)?;
                check_acl(&node.acl, perms::WRITE, &txn.auth)?;
                if *version != -1 && *version != node.stat.version {
                    return Err(ErrorCode::BadVersion);
                }
                self.save(&mut undo, path);
                let node = Arc::make_mut(self.nodes.get_mut(path).expect("node checked above"));
                node.data = data.clone();
                node.stat.version = node.stat.version.wrapping_add(1);
                node.stat.mzxid = zxid.0;
                node.stat.mtime = txn.time_ms;
                let stat = node.stat();
                events.push(WatchEvent {
                    path: path.clone(),
                    kind: EventType::NodeDataChanged,
                    zxid,
                    acl: node.acl.clone(),
                });
                Ok(OpResult::DataSet { stat })
            }
            WriteOp::SetAcl { path, acl, version } => {
                path::validate(path, false).map_err(|_| ErrorCode::BadArguments)?;
                let acl = fixup_acl(acl, &txn.auth)?;
                let node = self.nodes.get(path).ok_or(ErrorCode::NoNode)?;
                check_acl(&node.acl, perms::ADMIN, &txn.auth)?;
                let acl = self.acls.intern(acl);
                if *version != -1 && *version != node.stat.aversion {
                    return Err(ErrorCode::BadVersion);
                }
                self.save(&mut undo, path);
                let node = Arc::make_mut(self.nodes.get_mut(path).expect("node checked above"));
                node.acl = acl;
                node.stat.aversion = node.stat.aversion.wrapping_add(1);
                Ok(OpResult::AclSet { stat: node.stat() })
            }
            WriteOp::DeleteContainer { path } => {
                path::validate(path, false).map_err(|_| ErrorCode::BadArguments)?;
                let node = self.nodes.get(path).ok_or(ErrorCode::NoNode)?;
                if !node.children.is_empty() {
                    return Err(ErrorCode::NotEmpty);
                }
                // Not a container or TTL node, or not due: ZooKeeper answers BadVersion.
                if !Self::is_reapable(node, txn.time_ms) {
                    return Err(ErrorCode::BadVersion);
                }
                self.remove_node(path, zxid, events, undo);
                Ok(OpResult::Deleted)
            }
            WriteOp::Check { path, version } => {
                path::validate(path, false).map_err(|_| ErrorCode::BadArguments)?;
                let node = self.nodes.get(path).ok_or(ErrorCode::NoNode)?;
                check_acl(&node.acl, perms::READ, &txn.auth)?;
                if *version != -1 && *version != node.stat.version {
                    return Err(ErrorCode::BadVersion);
                }
                Ok(OpResult::Checked)
            }
        }
    }

    /// Runs `apply` with TTL nodes allowed as the logged entry says (the server that took it
    /// decided), then puts this server's own setting back.
    fn with_extended_types<T>(&mut self, allowed: bool, apply: impl FnOnce(&mut Self) -> T) -> T {
        let own = std::mem::replace(&mut self.extended_types, allowed);
        let out = apply(self);
        self.extended_types = own;
        out
    }

    /// Checks the create mode against the TTL (ZooKeeper's `validateCreateRequest` and
    /// `EphemeralType.validateTTL`). `ttl` is -1 for every opcode but createTTL; the opcode does not
    /// otherwise constrain the mode, as in ZooKeeper.
    fn validate_create(&self, mode: CreateMode, ttl: i64) -> Result<(), ErrorCode> {
        if mode.is_ttl() {
            if !self.extended_types {
                return Err(ErrorCode::Unimplemented);
            }
            if !(1..=MAX_TTL_MS).contains(&ttl) {
                return Err(ErrorCode::BadArguments);
            }
        } else if ttl >= 0 {
            return Err(ErrorCode::BadArguments);
        }
        Ok(())
    }

    /// Removes a node known to exist and have no children, updating its parent's pzxid (the
    /// reported cversion follows from the child count) and its session's ephemeral set.
    fn remove_node(&mut self, path: &str, zxid: Zxid, events: &mut Vec<WatchEvent>, mut undo: Option<&mut Vec<Undo>>) {
        let parent_path = path::parent(path).to_string();
        self.save(&mut undo, path);
        self.save(&mut undo, &parent_path);
        let Some(node) = self.nodes.remove(path) else {
            return;
        };
        self.reapable.remove(path);
        if let Some(owner) = node.ephemeral_session() {
            if let Some(s) = self.sessions.get_mut(&owner) {
                if s.ephemerals.remove(path) {
                    if let Some(u) = undo {
                        u.push(Undo::Ephemeral(owner, path.to_string(), true));
                    }
                }
            }
        }
        let mut parent_acl: Arc<[Acl]> = Arc::from(Vec::new());
        if let Some(parent) = self.nodes.get_mut(&parent_path) {
            let parent = Arc::make_mut(parent);
            parent.children.remove(path::name(path));
            parent.stat.pzxid = zxid.0;
            parent_acl = parent.acl.clone();
        }
        events.push(WatchEvent { path: path.to_string(), kind: EventType::NodeDeleted, zxid, acl: node.acl.clone() });
        events.push(WatchEvent { path: parent_path, kind: EventType::NodeChildrenChanged, zxid, acl: parent_acl });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::op;

    const T0: i64 = 1_700_000_000_000;

    fn txn(session: i64, op: TxnOp) -> Txn {
        Txn { session: SessionId(session), auth: vec![], time_ms: T0, op }
    }

    fn create(path: &str, flags: i32) -> WriteOp {
        WriteOp::Create {
            opcode: op::CREATE2,
            path: path.into(),
            data: Some(b"d".to_vec()),
            acl: Acl::open_unsafe(),
            flags,
            ttl_ms: 0,
        }
    }

    /// A node's data is encoded as a plain sequence of bytes would be (postcard: a length, then
    /// the bytes; JSON: an array of numbers), so snapshots keep their format.
    #[test]
    fn a_nodes_data_encodes_as_a_plain_byte_sequence() {
        #[derive(Serialize)]
        struct PlainNode<'a> {
            data: &'a Option<Vec<u8>>,
            acl: &'a Arc<[Acl]>,
            stat: &'a Stat,
            children: &'a imbl::OrdSet<String>,
        }
        for data in [None, Some(Vec::new()), Some(vec![0, 1, 127, 128, 255]), Some(vec![0xab; 300])] {
            let mut node = Node::new(data, Acl::open_unsafe().into(), 5, T0, 7);
            node.children.insert("child".into());
            let plain = PlainNode { data: &node.data, acl: &node.acl, stat: &node.stat, children: &node.children };
            let bytes = postcard::to_stdvec(&node).unwrap();
            assert_eq!(bytes, postcard::to_stdvec(&plain).unwrap());
            assert_eq!(postcard::from_bytes::<Node>(&bytes).unwrap(), node);
            let json = serde_json::to_string(&node).unwrap();
            assert_eq!(json, serde_json::to_string(&plain).unwrap());
            assert_eq!(serde_json::from_str::<Node>(&json).unwrap(), node);
        }
    }

    /// A tree with one open session; returns the tree and the session id.
    fn with_session() -> (DataTree, SessionId) {
        let mut t = DataTree::new();
        let (out, fx) = t.apply(Zxid(1), &txn(0, TxnOp::CreateSession { timeout_ms: 6000, password: [7; 16] }));
        let Ok(TxnReply::SessionCreated { session, .. }) = out.result else { panic!("{out:?}") };
        assert_eq!(fx.opened, Some(session));
        assert_eq!(session, derive_session_id(1, T0));
        (t, session)
    }

    impl WriteOp {
        fn clone_with_flags(&self, new_flags: i32) -> WriteOp {
            let mut op = self.clone();
            if let WriteOp::Create { flags, .. } = &mut op {
                *flags = new_flags;
            }
            op
        }
    }

    fn ok_op(t: &mut DataTree, zxid: i64, s: SessionId, op: WriteOp) -> (OpResult, Effects) {
        let (out, fx) = t.apply(Zxid(zxid), &txn(s.0, TxnOp::Write(op)));
        match out.result {
            Ok(TxnReply::Op(r)) => (r, fx),
            other => panic!("expected success, got {other:?}"),
        }
    }

    fn err_op(t: &mut DataTree, zxid: i64, s: SessionId, op: WriteOp) -> ErrorCode {
        let (out, fx) = t.apply(Zxid(zxid), &txn(s.0, TxnOp::Write(op)));
        assert!(fx.events.is_empty(), "a refused write fires nothing");
        assert_eq!(out.zxid, Zxid(zxid), "a refused write still has its zxid");
        out.result.expect_err("expected a refusal")
    }

    #[test]
    fn a_claimed_session_takes_writes_through_its_owner_only() {
        let set = |data: &[u8]| WriteOp::SetData { path: "/x".into(), data: Some(data.to_vec()), version: -1 };
        let (mut t, s) = with_session();
        ok_op(&mut t, 2, s, create("/x", 0));
        // Never claimed: a write through any server is taken.
        let (out, _) = t.apply(Zxid(3), &txn(s.0, TxnOp::WriteVia { server: 2, op: set(b"via 2") }));
        assert!(out.result.is_ok(), "{out:?}");
        // Claimed by server 1: server 2's writes (left behind there) are refused, under a zxid.
        let (out, fx) = t.apply(Zxid(4), &txn(s.0, TxnOp::ClaimSession { server: 1 }));
        assert_eq!(out.result, Ok(TxnReply::Nothing));
        assert_eq!(fx.moved, Some((s, 1)));
        assert_eq!(t.owner(s), Some(1));
        let (out, fx) = t.apply(Zxid(5), &txn(s.0, TxnOp::WriteVia { server: 2, op: set(b"late") }));
        assert_eq!((out.zxid, out.result), (Zxid(5), Err(ErrorCode::SessionMoved)));
        assert!(fx.events.is_empty());
        let multi = TxnOp::MultiVia { server: 2, ops: vec![set(b"late multi")] };
        assert_eq!(t.apply(Zxid(6), &txn(s.0, multi)).0.result, Err(ErrorCode::SessionMoved));
        assert_eq!(t.node("/x").and_then(Node::data), Some(&b"via 2"[..]));
        // The owner's, and a server alone's (untagged), are taken.
        let (out, _) = t.apply(Zxid(7), &txn(s.0, TxnOp::WriteVia { server: 1, op: set(b"via 1") }));
        assert!(out.result.is_ok(), "{out:?}");
        let (out, _) = t.apply(Zxid(8), &txn(s.0, TxnOp::Write(set(b"alone"))));
        assert!(out.result.is_ok(), "{out:?}");
        // An earlier release's move closes connections and records no owner.
        let (_, fx) = t.apply(Zxid(9), &txn(s.0, TxnOp::MoveSession { to_server: 3 }));
        assert_eq!((fx.moved, t.owner(s)), (Some((s, 3)), Some(1)));
        // The owner goes with the session.
        t.apply(Zxid(10), &txn(s.0, TxnOp::CloseSession { expired: false }));
        assert_eq!(t.owner(s), None);
        let (out, _) = t.apply(Zxid(11), &txn(s.0, TxnOp::WriteVia { server: 1, op: set(b"closed") }));
        assert_eq!(out.result, Err(ErrorCode::SessionExpired));
    }

    /// Snapshot format 2 keeps the owners; a format 1 tree (the same fields without them) is
    /// read as a tree whose sessions have no owner.
    #[test]
    fn owners_are_kept_in_snapshots_and_a_format_1_tree_has_none() {
        let (mut t, s) = with_session();
        ok_op(&mut t, 2, s, create("/x", 0));
        t.apply(Zxid(3), &txn(s.0, TxnOp::ClaimSession { server: 2 }));
        let v2 = postcard::to_stdvec(&t).unwrap();
        let back = crate::snapshot::decode_tree(&v2, 2).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.owner(s), Some(2));
        let v1 = postcard::to_stdvec(&(&t.nodes, &t.sessions, &t.last_zxid, &t.reapable)).unwrap();
        let old = crate::snapshot::decode_tree(&v1, 1).unwrap();
        assert_eq!(old.owner(s), None);
        assert_eq!((old.node("/x"), old.session(s), old.last_zxid()), (t.node("/x"), t.session(s), t.last_zxid()));
        assert!(crate::snapshot::decode_tree(&v1, 2).is_err(), "a format 1 tree is not a format 2 one");
    }

    #[test]
    fn the_ensemble_config_is_written_by_servers_only_and_fires_data_watches() {
        use crate::members_config::{parse, MemberLine, MemberRole};
        let (mut t, s) = with_session();
        let members = vec![MemberLine {
            id: 5,
            role: MemberRole::Observer,
            peer: "127.0.0.1:2885".into(),
            client: Some("127.0.0.1:2185".parse().unwrap()),
            admin: None,
        }];
        let op = TxnOp::EnsembleConfig { members: members.clone() };
        let (out, fx) = t.apply(Zxid(2), &txn(s.0, op.clone()));
        assert_eq!(out.result, Err(ErrorCode::NoAuth), "a client's session may not write it");
        assert!(fx.events.is_empty());
        let (out, fx) = t.apply(Zxid(3), &txn(0, op));
        assert_eq!(out.result, Ok(TxnReply::Nothing));
        assert_eq!(fx.events.len(), 1);
        assert_eq!((fx.events[0].path.as_str(), fx.events[0].kind), ("/zookeeper/config", EventType::NodeDataChanged));
        let (data, stat) = t.get_data("/zookeeper/config", &[]).unwrap();
        let text = String::from_utf8(data.unwrap().to_vec()).unwrap();
        assert_eq!((stat.version, stat.mzxid), (1, 3));
        assert!(text.ends_with("\nversion=3"), "{text}");
        assert_eq!(parse(&text).into_values().collect::<Vec<_>>(), members);
    }

    #[test]
    fn fresh_tree_has_zookeeper_nodes() {
        let t = DataTree::new();
        // As a fresh Apache ZooKeeper 3.8 reports them.
        assert_eq!(t.exists("/").unwrap().cversion, -1);
        assert_eq!(t.exists("/zookeeper").unwrap().cversion, -2);
        assert_eq!(t.children("/", &[]).unwrap().0, vec!["zookeeper"]);
        let (mut kids, _) = t.children("/zookeeper", &[]).unwrap();
        kids.sort();
        assert_eq!(kids, vec!["config", "quota"]);
        assert_eq!(t.node_count(), 4);
    }

    #[test]
    fn create_sets_exact_stat_and_parent_and_fires_events() {
        let (mut t, s) = with_session();
        let (r, fx) = ok_op(&mut t, 5, s, create("/a", 0));
        let expected = Stat {
            czxid: 5,
            mzxid: 5,
            ctime: T0,
            mtime: T0,
            version: 0,
            cversion: 0,
            aversion: 0,
            ephemeral_owner: 0,
            data_length: 1,
            num_children: 0,
            pzxid: 5,
        };
        assert_eq!(
            r,
            OpResult::Created { opcode: op::CREATE2, mode: CreateMode::Persistent, path: "/a".into(), stat: expected }
        );
        let root = t.exists("/").unwrap();
        // One create under `/`, two children (one of them /zookeeper): 2 × 1 − 2.
        assert_eq!((root.cversion, root.pzxid, root.num_children), (0, 5, 2));
        let kinds: Vec<_> = fx.events.iter().map(|e| (e.path.as_str(), e.kind, e.zxid)).collect();
        assert_eq!(
            kinds,
            vec![("/a", EventType::NodeCreated, Zxid(5)), ("/", EventType::NodeChildrenChanged, Zxid(5))]
        );
    }

    #[test]
    fn sequential_names_count_creates_and_cversion_reports_creates_plus_deletes() {
        let (mut t, s) = with_session();
        ok_op(&mut t, 2, s, create("/q", 0));
        let (r, _) = ok_op(&mut t, 3, s, create("/q/n-", 2));
        assert!(matches!(r, OpResult::Created { ref path, .. } if path == "/q/n-0000000000"));
        ok_op(&mut t, 4, s, WriteOp::Delete { path: "/q/n-0000000000".into(), version: -1 });
        let q = t.exists("/q").unwrap();
        // Reported child version = 2 × creates − children, as Apache ZooKeeper 3.8 reports it;
        // sequence numbers count creates only.
        assert_eq!((q.cversion, q.pzxid), (2, 4));
        let (r, _) = ok_op(&mut t, 5, s, create("/q/", 2));
        assert!(matches!(r, OpResult::Created { ref path, .. } if path == "/q/0000000001"));
        assert_eq!(t.exists("/q").unwrap().cversion, 3);
    }

    #[test]
    fn versions_and_errors_are_zookeepers() {
        let (mut t, s) = with_session();
        ok_op(&mut t, 2, s, create("/a", 0));
        assert_eq!(err_op(&mut t, 3, s, create("/a", 0)), ErrorCode::NodeExists);
        assert_eq!(err_op(&mut t, 4, s, create("/x/y", 0)), ErrorCode::NoNode);
        // As in ZooKeeper, the parent is looked up before the full path check.
        assert_eq!(err_op(&mut t, 5, s, create("/bad/", 0)), ErrorCode::NoNode);
        assert_eq!(err_op(&mut t, 5, s, create("/a/", 0)), ErrorCode::BadArguments);
        assert_eq!(err_op(&mut t, 5, s, create("nope", 0)), ErrorCode::BadArguments);
        assert_eq!(err_op(&mut t, 6, s, create("/m", 9)), ErrorCode::BadArguments);
        let set = |v| WriteOp::SetData { path: "/a".into(), data: Some(b"x".to_vec()), version: v };
        assert_eq!(err_op(&mut t, 7, s, set(3)), ErrorCode::BadVersion);
        let (r, fx) = ok_op(&mut t, 8, s, set(0));
        let OpResult::DataSet { stat } = r else { panic!() };
        assert_eq!((stat.version, stat.mzxid, stat.czxid), (1, 8, 2));
        assert_eq!(fx.events[0].kind, EventType::NodeDataChanged);
        ok_op(&mut t, 9, s, create("/a/b", 0));
        assert_eq!(err_op(&mut t, 10, s, WriteOp::Delete { path: "/a".into(), version: -1 }), ErrorCode::NotEmpty);
        assert_eq!(err_op(&mut t, 11, s, WriteOp::Check { path: "/a".into(), version: 0 }), ErrorCode::BadVersion);
        let mut empty_acl = create("/e", 0);
        if let WriteOp::Create { acl, .. } = &mut empty_acl {
            acl.clear();
        }
        assert_eq!(err_op(&mut t, 12, s, empty_acl), ErrorCode::InvalidAcl);
        assert_eq!(t.last_zxid(), Zxid(12));
    }

    #[test]
    fn ephemerals_belong_to_their_session_and_go_with_it() {
        let (mut t, s) = with_session();
        ok_op(&mut t, 2, s, create("/p", 0));
        ok_op(&mut t, 3, s, create("/p/e", 1));
        assert_eq!(err_op(&mut t, 4, s, create("/p/e/child", 0)), ErrorCode::NoChildrenForEphemerals);
        assert_eq!(t.exists("/p/e").unwrap().ephemeral_owner, s.0);
        assert_eq!(t.ephemerals(s, "/").unwrap(), vec!["/p/e"]);
        let (out, fx) = t.apply(Zxid(5), &txn(s.0, TxnOp::CloseSession { expired: true }));
        assert_eq!(out.result, Ok(TxnReply::SessionClosed));
        assert_eq!(fx.closed, Some(s));
        assert_eq!(t.exists("/p/e"), Err(ErrorCode::NoNode));
        assert_eq!(t.exists("/p").unwrap().pzxid, 5);
        let kinds: Vec<_> = fx.events.iter().map(|e| (e.path.as_str(), e.kind)).collect();
        assert_eq!(kinds, vec![("/p/e", EventType::NodeDeleted), ("/p", EventType::NodeChildrenChanged)]);
    }

    #[test]
    fn writes_from_a_closed_session_are_refused() {
        // ZOOKEEPER-1208: a create that was in flight when its session closed must not land.
        let (mut t, s) = with_session();
        t.apply(Zxid(2), &txn(s.0, TxnOp::CloseSession { expired: false }));
        assert_eq!(err_op(&mut t, 3, s, create("/late", 1)), ErrorCode::SessionExpired);
        assert_eq!(t.exists("/late"), Err(ErrorCode::NoNode));
        let (out, _) = t.apply(Zxid(4), &txn(s.0, TxnOp::CloseSession { expired: true }));
        assert_eq!(out.result, Err(ErrorCode::SessionExpired));
    }

    #[test]
    fn multi_is_atomic_with_zookeepers_per_op_results() {
        let (mut t, s) = with_session();
        let ops = vec![
            create("/m", 0),
            create("/m/a", 0),
            WriteOp::Delete { path: "/nope".into(), version: -1 },
            WriteOp::SetData { path: "/m".into(), data: None, version: -1 },
        ];
        let (out, fx) = t.apply(Zxid(2), &txn(s.0, TxnOp::Multi(ops)));
        assert_eq!(
            out.result,
            Ok(TxnReply::Multi(vec![
                OpResult::Error(0),
                OpResult::Error(0),
                OpResult::Error(-101),
                OpResult::Error(-2)
            ]))
        );
        assert!(fx.events.is_empty());
        assert_eq!(t.exists("/m"), Err(ErrorCode::NoNode));
        assert_eq!(t.exists("/").unwrap().cversion, -1, "rolled back");
        assert_eq!(t.exists("/").unwrap().pzxid, 0);

        let ops = vec![create("/m", 0), create("/m/e", 1), WriteOp::Check { path: "/m".into(), version: 0 }];
        let (out, fx) = t.apply(Zxid(3), &txn(s.0, TxnOp::Multi(ops)));
        let Ok(TxnReply::Multi(rs)) = out.result else { panic!() };
        assert_eq!(rs.len(), 3);
        assert_eq!(rs[2], OpResult::Checked);
        assert!(fx.events.iter().all(|e| e.zxid == Zxid(3)), "one zxid for the whole multi");
        assert_eq!(t.ephemerals(s, "/m").unwrap(), vec!["/m/e"]);
    }

    #[test]
    fn failed_multi_restores_ephemeral_bookkeeping() {
        let (mut t, s) = with_session();
        ok_op(&mut t, 2, s, create("/e", 1));
        let ops = vec![WriteOp::Delete { path: "/e".into(), version: -1 }, create("/x/y", 0)];
        t.apply(Zxid(3), &txn(s.0, TxnOp::Multi(ops)));
        assert_eq!(t.ephemerals(s, "/").unwrap(), vec!["/e"]);
        assert!(t.exists("/e").is_ok());
    }

    #[test]
    fn acl_checks_and_fixup() {
        let (mut t, s) = with_session();
        let digest = Id { scheme: "digest".into(), id: "bob:x".into() };
        let mut c = create("/secret", 0);
        if let WriteOp::Create { acl, .. } = &mut c {
            *acl = vec![Acl { perms: perms::ALL, id: Id { scheme: "auth".into(), id: "".into() } }];
        }
        // `auth` with no authenticated identity is invalid.
        assert_eq!(err_op(&mut t, 2, s, c.clone()), ErrorCode::InvalidAcl);
        let mut with_auth = txn(s.0, TxnOp::Write(c));
        with_auth.auth = vec![digest.clone()];
        let (out, _) = t.apply(Zxid(3), &with_auth);
        assert!(out.result.is_ok());
        assert_eq!(t.get_acl("/secret", std::slice::from_ref(&digest)).unwrap().0[0].id, digest);
        assert_eq!(t.get_data("/secret", &[]).unwrap_err(), ErrorCode::NoAuth);
        assert!(t.get_data("/secret", &[Id { scheme: "super".into(), id: "".into() }]).is_ok());
        assert_eq!(err_op(&mut t, 4, s, create("/secret/c", 0)), ErrorCode::NoAuth);
        assert!(ip_matches("10.0.0.0/8", "10.1.2.3"));
        assert!(!ip_matches("10.0.0.0/8", "11.1.2.3"));
        assert!(ip_matches("127.0.0.1", "127.0.0.1"));
    }

    #[test]
    fn session_ids_are_never_zero_or_negative() {
        for (i, t) in [(1u64, 0i64), (u64::MAX, i64::MAX), (42, -1)] {
            let id = derive_session_id(i, t);
            assert!(id.0 > 0, "{id:?}");
        }
    }

    #[test]
    fn containers_and_ttl_nodes_are_reaped_only_when_due() {
        let (mut t, s) = with_session();
        let container = |p: &str| WriteOp::Create {
            opcode: op::CREATE_CONTAINER,
            path: p.into(),
            data: None,
            acl: Acl::open_unsafe(),
            flags: 4,
            ttl_ms: 0,
        };
        let ttl = |p: &str, ttl_ms| WriteOp::Create {
            opcode: op::CREATE_TTL,
            path: p.into(),
            data: None,
            acl: Acl::open_unsafe(),
            flags: 5,
            ttl_ms,
        };
        // TTL nodes are refused unless extended types are on, as in ZooKeeper.
        assert_eq!(err_op(&mut t, 2, s, ttl("/t", 100)), ErrorCode::Unimplemented);
        t.set_extended_types(true);
        assert_eq!(err_op(&mut t, 3, s, ttl("/t", 0)), ErrorCode::BadArguments);
        // The mode decides, not the opcode (as in ZooKeeper): a createTTL with a plain mode and
        // a TTL is refused; a createContainer with a plain mode makes a plain node.
        assert_eq!(err_op(&mut t, 4, s, ttl("/t", 100).clone_with_flags(0)), ErrorCode::BadArguments);
        ok_op(&mut t, 4, s, container("/plain").clone_with_flags(0));
        assert_eq!(t.exists("/plain").unwrap().ephemeral_owner, 0);
        let (r, _) = ok_op(&mut t, 5, s, ttl("/t", 100));
        let OpResult::Created { stat, .. } = r else { panic!() };
        assert_eq!(stat.ephemeral_owner, 0, "clients see no owner on a TTL node");
        assert_eq!(t.node("/t").unwrap().ttl_ms(), Some(100));
        ok_op(&mut t, 6, s, container("/c"));
        assert_eq!(t.exists("/c").unwrap().ephemeral_owner, 0);
        assert!(t.node("/c").unwrap().is_container());
        // A container that never had a child is not reaped; the TTL node is not due yet.
        assert!(t.reap_candidates(T0 + 100).is_empty());
        ok_op(&mut t, 7, s, create("/c/x", 0));
        assert!(t.reap_candidates(T0 + 100).is_empty(), "the container has a child");
        ok_op(&mut t, 8, s, WriteOp::Delete { path: "/c/x".into(), version: -1 });
        assert_eq!(t.reap_candidates(T0 + 101), vec!["/c".to_string(), "/t".to_string()]);
        // The reaping delete re-checks at apply, against the transaction's time.
        let reap = |p: &str, time_ms| Txn {
            session: SessionId(0),
            auth: vec![],
            time_ms,
            op: TxnOp::Write(WriteOp::DeleteContainer { path: p.into() }),
        };
        let (out, _) = t.apply(Zxid(9), &reap("/t", T0 + 50));
        assert_eq!(out.result, Err(ErrorCode::BadVersion), "not due at that time");
        let (out, fx) = t.apply(Zxid(10), &reap("/t", T0 + 101));
        assert_eq!(out.result, Ok(TxnReply::Op(OpResult::Deleted)));
        assert_eq!(fx.events[0].kind, EventType::NodeDeleted);
        let (out, _) = t.apply(Zxid(11), &reap("/c", T0 + 101));
        assert!(out.result.is_ok());
        assert_eq!(t.exists("/c"), Err(ErrorCode::NoNode));
        assert!(t.reap_candidates(i64::MAX).is_empty());
        let (out, _) = t.apply(Zxid(12), &reap("/zookeeper/quota", T0));
        assert_eq!(out.result, Err(ErrorCode::BadVersion), "plain nodes are never reaped");
    }

    #[test]
    fn counters_at_their_maximum_never_panic_the_state_machine() {
        let (mut t, s) = with_session();
        ok_op(&mut t, 2, s, create("/p", 0));
        // A parent whose create counter is at its maximum: no next sequential name exists, so
        // every create under it is refused and the tree is left as it was.
        Arc::make_mut(t.nodes.get_mut("/p").unwrap()).stat.cversion = i32::MAX;
        let before = t.clone();
        for flags in [0, 2] {
            assert_eq!(err_op(&mut t, 3, s, create("/p/c", flags)), ErrorCode::BadArguments, "flags {flags}");
        }
        let mut after = t.clone();
        after.last_zxid = before.last_zxid;
        assert_eq!(after, before, "a refused create changes nothing");
        // Inside a multi the refusal rolls back the ops before it.
        let (out, fx) = t.apply(Zxid(4), &txn(s.0, TxnOp::Multi(vec![create("/q", 0), create("/p/c", 0)])));
        assert_eq!(
            out.result,
            Ok(TxnReply::Multi(vec![OpResult::Error(0), OpResult::Error(ErrorCode::BadArguments.code())]))
        );
        assert!(fx.events.is_empty());
        assert_eq!(t.exists("/q"), Err(ErrorCode::NoNode));
        // Data and ACL versions wrap as ZooKeeper's Java ints do, and never panic.
        Arc::make_mut(t.nodes.get_mut("/p").unwrap()).stat.version = i32::MAX;
        Arc::make_mut(t.nodes.get_mut("/p").unwrap()).stat.aversion = i32::MAX;
        let (r, _) = ok_op(&mut t, 5, s, WriteOp::SetData { path: "/p".into(), data: None, version: i32::MAX });
        assert!(matches!(r, OpResult::DataSet { stat } if stat.version == i32::MIN));
        let (r, _) =
            ok_op(&mut t, 6, s, WriteOp::SetAcl { path: "/p".into(), acl: Acl::open_unsafe(), version: i32::MAX });
        assert!(matches!(r, OpResult::AclSet { stat } if stat.aversion == i32::MIN));
        // The reported child version of a node with a huge create counter wraps, not panics.
        let _ = t.exists("/p").unwrap();
    }

    #[test]
    fn a_copy_for_a_snapshot_shares_nodes_and_keeps_its_point_in_time() {
        let (mut t, s) = with_session();
        for i in 0..1000 {
            ok_op(&mut t, 2 + i, s, create(&format!("/n{i}"), 0));
        }
        let copy = t.clone();
        assert!(copy.nodes.ptr_eq(&t.nodes) && copy.sessions.ptr_eq(&t.sessions), "a copy shares the maps");
        let frozen = serde_json::to_string(&copy).unwrap();
        // Writes after the copy change the live tree only.
        ok_op(&mut t, 2000, s, WriteOp::SetData { path: "/n1".into(), data: Some(b"new".to_vec()), version: -1 });
        ok_op(&mut t, 2001, s, WriteOp::Delete { path: "/n2".into(), version: -1 });
        ok_op(&mut t, 2002, s, create("/later", 1));
        assert!(!copy.nodes.ptr_eq(&t.nodes));
        assert_eq!(serde_json::to_string(&copy).unwrap(), frozen, "the copy is a point in time");
        assert_eq!(copy.get_data("/n1", &[]).unwrap().0, Some(&b"d"[..]));
        assert!(copy.exists("/n2").is_ok() && copy.exists("/later").is_err());
        assert_eq!(t.get_data("/n1", &[]).unwrap().0, Some(&b"new"[..]));
        // And it restores to exactly what it was.
        let restored: DataTree = serde_json::from_str(&frozen).unwrap();
        assert_eq!(restored, copy);
    }

    #[test]
    fn counts_descendants() {
        let (mut t, s) = with_session();
        ok_op(&mut t, 2, s, create("/c", 0));
        ok_op(&mut t, 3, s, create("/c/a", 0));
        ok_op(&mut t, 4, s, create("/c/a/b", 0));
        ok_op(&mut t, 5, s, create("/c/d", 0));
        assert_eq!(t.all_children_number("/c", &[]).unwrap(), 3);
        assert_eq!(t.all_children_number("/nope", &[]), Err(ErrorCode::NoNode));
    }

    /// Whether TTL nodes are allowed is decided by the server that took the write, and logged
    /// with it: servers whose own setting differs (turned on one restart at a time) apply the
    /// entry alike, instead of one creating the node and the other answering Unimplemented.
    #[test]
    fn a_logged_client_write_applies_alike_whatever_each_servers_ttl_setting() {
        let ttl = WriteOp::Create {
            opcode: op::CREATE_TTL,
            path: "/t".into(),
            data: None,
            acl: Acl::open_unsafe(),
            flags: 5,
            ttl_ms: 100,
        };
        for (taken_with, expected) in [(true, None), (false, Some(ErrorCode::Unimplemented))] {
            for server in [None, Some(2)] {
                let outcomes: Vec<_> = [false, true]
                    .into_iter()
                    .map(|own_setting| {
                        let (mut t, s) = with_session();
                        t.set_extended_types(own_setting);
                        let op = TxnOp::client_write(server, taken_with, ttl.clone());
                        let (out, _) = t.apply(Zxid(2), &txn(s.0, op));
                        (out.result.err(), t.node("/t").is_some())
                    })
                    .collect();
                assert_eq!(outcomes[0], outcomes[1], "taken with {taken_with}, via {server:?}: the servers diverged");
                assert_eq!(outcomes[0], (expected, expected.is_none()), "taken with {taken_with}, via {server:?}");
                let multi: Vec<_> = [false, true]
                    .into_iter()
                    .map(|own_setting| {
                        let (mut t, s) = with_session();
                        t.set_extended_types(own_setting);
                        let op = TxnOp::client_multi(server, taken_with, vec![ttl.clone()]);
                        let (out, _) = t.apply(Zxid(2), &txn(s.0, op));
                        (out.result.is_ok(), t.node("/t").is_some())
                    })
                    .collect();
                assert_eq!(multi[0], multi[1], "multi taken with {taken_with}, via {server:?}: the servers diverged");
                assert_eq!(multi[0].1, expected.is_none(), "multi taken with {taken_with}, via {server:?}");
            }
        }
    }

    /// The counts made on a copy of the tree (outside the server's lock) match a walk of the
    /// live tree's child links, through creates, deletes, a multi that applies and one rolled
    /// back, a session's ephemerals going with it, and a snapshot's round trip; and a copy
    /// counts the tree as it was when taken.
    #[test]
    fn counts_on_a_copy_match_a_walk_of_the_tree() {
        fn walk(t: &DataTree, from: &str) -> i32 {
            let mut count = 0;
            let mut stack = vec![if from.is_empty() { "/".to_string() } else { from.to_string() }];
            while let Some(p) = stack.pop() {
                let node = t.node(&p).unwrap_or_else(|| panic!("{p} is listed as a child but missing"));
                for c in &node.children {
                    count += 1;
                    stack.push(path::join(&p, c));
                }
            }
            // ZooKeeper counts the root itself below the empty path.
            count + i32::from(from.is_empty())
        }
        fn check(t: &DataTree, when: &str) {
            for p in t.nodes.keys().map(String::as_str).chain([""]) {
                assert_eq!(t.all_children_number(p, &[]), Ok(walk(t, p)), "below {p:?} {when}");
            }
            let size: u64 = t.nodes.iter().map(|(p, n)| (p.len() + n.data().map_or(0, <[u8]>::len)) as u64).sum();
            assert_eq!(t.approximate_data_size(), size, "{when}");
            let counts = t.counts();
            assert_eq!(counts.session_count(), t.sessions().count(), "{when}");
            let ephemerals: usize = t.sessions().map(|(_, s)| s.ephemerals.len()).sum();
            assert_eq!(counts.ephemeral_count(), ephemerals, "{when}");
        }
        let (mut t, s) = with_session();
        check(&t, "at first");
        for (i, p) in ["/a", "/a/b", "/a/b/c", "/a0", "/a-", "/a/bb", "/ab", "/a/b/c/d"].into_iter().enumerate() {
            ok_op(&mut t, 2 + i as i64, s, create(p, 0));
        }
        ok_op(&mut t, 10, s, create("/a/e", 1));
        check(&t, "after creates");
        let before = t.counts();
        ok_op(&mut t, 11, s, WriteOp::Delete { path: "/a/b/c/d".into(), version: -1 });
        ok_op(&mut t, 12, s, WriteOp::SetData { path: "/a/b".into(), data: Some(vec![7; 100]), version: -1 });
        check(&t, "after a delete and a setData");
        assert_eq!((before.below("/a/b"), t.counts().below("/a/b")), (2, 1), "a copy keeps its point in time");
        let (out, _) = t.apply(Zxid(13), &txn(s.0, TxnOp::Multi(vec![create("/m", 0), create("/m/n", 0)])));
        assert!(out.result.is_ok(), "{out:?}");
        let (out, _) = t.apply(Zxid(14), &txn(s.0, TxnOp::Multi(vec![create("/m/o", 0), create("/nope/x", 0)])));
        assert!(out.result.is_ok(), "a multi that fails is answered with per-op results: {out:?}");
        assert!(t.node("/m/o").is_none(), "and rolled back");
        check(&t, "after multis");
        t.apply(Zxid(15), &txn(s.0, TxnOp::CloseSession { expired: false }));
        assert!(t.node("/a/e").is_none(), "the ephemeral went with its session");
        check(&t, "after the session closed");
        let restored: DataTree = postcard::from_bytes(&postcard::to_stdvec(&t).unwrap()).unwrap();
        check(&restored, "after a snapshot's round trip");
        assert_eq!(restored.all_children_number("/", &[]), Ok(t.node_count() as i32 - 1));
    }
}
