//! The election layer: the agent's lock, breadcrumb and membership znodes in the coordinator,
//! kept through one ZooKeeper session (Hadoop ZKFC's `ActiveStandbyElector`, without the
//! callbacks: this module only observes and writes; the decision core decides).
//!
//! Everything lives under `/referee/<cluster>` (under the connect string's chroot, if it has
//! one: `zk1:2181,zk2:2181/ha` puts it at `/ha/referee/<cluster>`):
//!
//! ```text
//! /referee/<cluster>/lock               EPHEMERAL   LockRecord  its czxid + the token base is the fencing token
//! /referee/<cluster>/breadcrumb         PERSISTENT  Breadcrumb  the last active; never deleted
//! /referee/<cluster>/token-base         PERSISTENT  TokenBase   added to every czxid; only ever raised
//! /referee/<cluster>/members/<node_id>  EPHEMERAL   Member      one per live agent, with its candidacy
//! /referee/<cluster>/position           PERSISTENT  ActivePosition  the active's master's position
//! /referee/<cluster>/switchover         PERSISTENT  ScheduledSwitchover  one scheduled by an operator
//! /referee/<cluster>/pause              PERSISTENT  PauseRecord while the whole cluster is paused
//! /referee/<cluster>/config             PERSISTENT  ClusterSettingsRecord  settings for every agent
//! /referee/<cluster>/drained/<node_id>  PERSISTENT  DrainRecord while an operator keeps the node from promotion
//! /referee/<cluster>/confirmed-down/<node_id>  PERSISTENT  ConfirmedDownRecord  an operator's word that it is down
//! ```
//!
//! The position is written only by the lock's holder, in a multi with a check of the lock's
//! version, at the configured interval: its znode version moves on every write, which is how a
//! standby tells a live publisher from a dead one. A standby's candidacy (its position,
//! priority, zone, eligibility) is rewritten into its own member znode when it changes.
//!
//! # Tokens never go backwards
//!
//! A lock's fencing token is its czxid plus the cluster's token base. Within one coordinator
//! history czxids only grow, so tokens do too. If the coordinator's data is lost (a bundled
//! coordinator restarted without its log, an Apache ZooKeeper ensemble re-created), czxids
//! start again from the bottom, and so would tokens, below what the masters have already seen.
//! The token base is what carries the order across: it lives in the same tree as the lock, so
//! losing the tree loses it too, and its absence is how a lock holder learns that history was
//! lost. The holder then sets it, through the lock's session and conditioned on the lock's
//! version, so that its czxid plus the base is above every token it can still find (its own
//! master's, the peers' masters', the breadcrumb's, and every token the agent has seen while it
//! ran). A holder whose master or breadcrumb shows a token at or above its own raises the base
//! the same way before it fences or promotes anything. Raising is always safe: both the czxid
//! and the base only grow.
//!
//! With a digest credential configured, every znode the agent creates carries the cluster's
//! ACL, as `referee admin format` sets it: the credential's identity may do everything,
//! everyone else may only read.
//!
//! # One handle, one session
//!
//! A [`Coordination`] owns exactly one session. The client library reconnects on its own while
//! the session lives ([`SessionView::Disconnected`] → [`SessionView::Connected`]), but once the
//! session has expired or been closed the handle is dead: every call fails with
//! [`ElectionError::SessionExpired`] or [`ElectionError::StaleSession`], and the caller connects
//! a new handle. Ownership is therefore always "the lock's `ephemeralOwner` equals this handle's
//! session id", never "this node id": a lock left by an older session of the same agent is
//! [`LockView::OursFromOldSession`] and gives nothing.
//!
//! # Deadlines and unknown outcomes
//!
//! Every remote call is bounded by the configured `op_timeout` (the library has no request
//! timeout: a request made while disconnected waits for the next connection). A write that times
//! out or loses its connection may or may not have been applied (the ZooKeeper FAQ's
//! CONNECTION_LOSS ambiguity); [`Coordination::try_acquire`] settles that itself by reading the
//! lock back, the other writes report it as [`ElectionError::Timeout`] or
//! [`ElectionError::ConnectionLoss`] and the caller re-reads on its next cycle.
//!
//! # The lease
//!
//! This module keeps no lease: a reply proves the session was alive after its request was sent,
//! and the caller, which knows when it sent each request, renews the one lease the agent has
//! ([`crate::lease`]) from that send time.
//!
//! # Watches
//!
//! [`Coordination::watch_lock`] and [`Coordination::session_watch`] only wake the driver early;
//! the driver re-reads everything on each cycle and decides from what it read.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, Instant};

use referee_fencing::FencingToken;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::task::JoinHandle;
use zookeeper_client as zk;

use crate::candidacy::ActivePosition;
use crate::model::{
    Breadcrumb, BreadcrumbView, ClusterSettingsRecord, ConfirmedDownRecord, DrainRecord, HandoverRecord, LockRecord,
    LockView, Member, PauseRecord, SessionView, TokenBase, TokenBaseView,
};
use crate::schedule::ScheduledSwitchover;

/// The parent of every cluster's znodes (under the session's chroot, if any).
pub const ROOT: &str = "/referee";

/// The name, under `/referee/<cluster>`, of the scheduled switchover's record.
pub const SWITCHOVER: &str = "switchover";
/// The cluster's pause record under `/referee/<cluster>` (see [`crate::model::PauseRecord`]).
pub const PAUSE: &str = "pause";
/// The cluster's settings under `/referee/<cluster>` (see
/// [`crate::model::ClusterSettingsRecord`]).
pub const CLUSTER_CONFIG: &str = "config";
/// The parent, under `/referee/<cluster>`, of each drained node's record (see
/// [`crate::model::DrainRecord`]).
pub const DRAINED: &str = "drained";
/// The parent, under `/referee/<cluster>`, of each node's confirmation that it is down (see
/// [`crate::model::ConfirmedDownRecord`]).
pub const CONFIRMED_DOWN: &str = "confirmed-down";
/// The graceful failover under way under `/referee/<cluster>` (see
/// [`crate::model::HandoverRecord`]).
pub const HANDOVER: &str = "handover";

/// How often `try_acquire` races for a lock that reads back as free before giving up for this
/// cycle: a free lock after `NodeExists` means a holder released in between.
const ACQUIRE_ATTEMPTS: usize = 3;

/// The cluster's ACL when the agents hold a digest credential (the one `referee admin format`
/// sets): the session's authenticated identity may do everything, everyone else may read.
static SECURED: [zk::Acl; 2] =
    [zk::Acl::new_const(zk::Permission::ALL, "auth", ""), zk::Acl::new_const(zk::Permission::READ, "world", "anyone")];
/// `/referee` itself when secured: other clusters must still be able to create theirs under it.
static SECURED_ROOT: LazyLock<[zk::Acl; 2]> = LazyLock::new(|| {
    [
        zk::Acl::new(zk::Permission::ALL, zk::AuthId::authed()),
        zk::Acl::new(zk::Permission::READ | zk::Permission::CREATE, zk::AuthId::anyone()),
    ]
});

/// How to reach the coordinator and who we are in it.
#[derive(Clone, PartialEq, Eq)]
pub struct CoordinationConfig {
    /// Comma-separated `host:port` list of the ensemble (the bundled coordinator or Apache
    /// ZooKeeper 3.5 and later), optionally followed by a chroot (`/ha`) under which the tree
    /// lives (see [`split_chroot`]).
    pub connect: String,
    /// The cluster's name, the znode under [`ROOT`] that holds its lock, breadcrumb and members.
    pub cluster: String,
    /// This agent's node id, unique in the cluster.
    pub node_id: String,
    /// The session timeout to ask for. The ensemble clamps it into its own bounds; the agent
    /// must use [`Coordination::negotiated_timeout`], never this.
    pub session_timeout: Duration,
    /// The bound on every remote call. Must be shorter than the session timeout.
    pub op_timeout: Duration,
    /// A digest credential, `user:password`, added to the session on every connection, so the
    /// tree can be protected with digest ACLs.
    pub digest: Option<String>,
}

/// How long the agent's connection to one coordinator server may go without a byte from it
/// before the client gives that server up and resumes the session on another: a fifth of the
/// session timeout the lease counts on (the client pings after three eighths of this in
/// silence). The client library fixes it when the session is made, so
/// [`Coordination::connect`] makes the session again when the timeout the lease counts on
/// turns out lower than the one asked for ([`IdleLimitPlan`]).
///
/// The client library's own default is two fifths, 1 s of a 2.5 s session. A server that is
/// frozen (SIGSTOP, a stalled VM) keeps its TCP connections open, so silence is the only sign,
/// and the library may try the same server once more before the next. Twice the default is
/// 2 s, past the lease the session buys (1.65 s of a 2.5 s session with the default demote
/// deadline and margin), so an agent on a frozen coordinator server demoted its master before it
/// reached a live one. Twice a fifth is 1 s, inside the lease: the session moves, the lease is
/// renewed, and the master stays active. A server merely slow for that long costs a
/// reconnection, never the session.
pub fn connection_idle_limit(session_timeout: Duration) -> Duration {
    (session_timeout / 5).max(Duration::from_millis(50))
}

/// The idle limit the client library puts in force on a connection set up with `configured`
/// once the session is granted `granted`: zookeeper-client 0.11 keeps the one it was given
/// unless that is over three fifths of the grant, and then takes two fifths of the grant.
pub fn idle_limit_in_force(configured: Duration, granted: Duration) -> Duration {
    if configured > granted * 3 / 5 {
        granted * 2 / 5
    } else {
        configured
    }
}

/// How many sessions [`Coordination::connect`] makes at most before it keeps one (see
/// [`IdleLimitPlan`]).
pub const MAX_SESSION_ASKS: usize = 4;

/// How a new session comes to a connection idle limit of a fifth of the session timeout the
/// lease counts on, when that is below the timeout asked for: the coordinator clamps the request
/// into its bounds (Apache ZooKeeper's `maxSessionTimeout`, 20 × `tickTime` by default), or
/// another server of the ensemble would grant less on a reconnection ([`crate::grants`]), and
/// the client library fixed the idle limit from the request when it made the session.
///
/// Such a session is closed before it holds anything and made again asking for the lower
/// timeout. Each ask is strictly lower than the one before, never at or below `op_timeout` (the
/// coordinator's answers would come too late to count), and there are at most
/// [`MAX_SESSION_ASKS`]: a session whose lease counts on less than its connection was set up for
/// after that is kept, and the lease warns of it ([`crate::lease::frozen_server_warning`]).
/// Pure: [`Coordination::connect`] makes the sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleLimitPlan {
    /// The session timeout the session being made asks for.
    asked: Duration,
    /// No ask goes at or below this: the op timeout.
    floor: Duration,
    /// Sessions made so far, the one being made included.
    asks: usize,
}

impl IdleLimitPlan {
    /// The first session asks for `requested`; no later one for `floor` or less.
    pub fn new(requested: Duration, floor: Duration) -> Self {
        IdleLimitPlan { asked: requested, floor, asks: 1 }
    }

    /// The session timeout the session being made asks for.
    pub fn asked(&self) -> Duration {
        self.asked
    }

    /// The connection idle limit of the session being made.
    pub fn idle_limit(&self) -> Duration {
        connection_idle_limit(self.asked)
    }

    /// The session made asking for [`IdleLimitPlan::asked`] leaves the lease counting on
    /// `counted` (its grant, or a lower one another server would give it): the timeout to close
    /// it and ask for instead, or `None` to keep it.
    pub fn ask_again(&mut self, counted: Duration) -> Option<Duration> {
        let fits = connection_idle_limit(counted) >= self.idle_limit();
        if fits || counted <= self.floor || self.asks >= MAX_SESSION_ASKS {
            return None;
        }
        self.asked = counted;
        self.asks += 1;
        Some(counted)
    }
}

/// A connect string's servers and its chroot: everything from the first `/` on
/// (`zk1:2181,zk2:2181/ha` has the servers `zk1:2181,zk2:2181` and the chroot `/ha`), as Apache
/// ZooKeeper's clients read it. The client library applies the chroot to every path of the
/// session; the agent's tree is then `<chroot>/referee/<cluster>`.
pub fn split_chroot(connect: &str) -> (&str, Option<&str>) {
    match connect.find('/') {
        Some(i) => (&connect[..i], Some(&connect[i..])),
        None => (connect, None),
    }
}

/// What is wrong with a connect string (`host:port[,host:port...][/chroot]`), said as the end of
/// a sentence that starts with its name ("coordinator.connect ..."), or `None` if it is usable.
pub fn connect_string_problem(connect: &str) -> Option<String> {
    let (servers, chroot) = split_chroot(connect);
    if servers.trim().is_empty() {
        return Some("is empty; name the coordinator as host:port[,host:port...][/chroot]".to_string());
    }
    for part in servers.split(',') {
        let (host, port) = part.trim().rsplit_once(':').unwrap_or(("", ""));
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Some(format!("has {part:?}, which is not host:port"));
        }
    }
    let chroot = chroot?;
    let why = if chroot.contains(',') {
        "is not after the last server; write host:port,host:port/chroot"
    } else if chroot == "/" {
        "names the ensemble's root; leave it out"
    } else if chroot.ends_with('/') {
        "ends with '/'; leave that out"
    } else if chroot[1..].split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        "has an empty, '.' or '..' step; name the znode by its plain path"
    } else if chroot == "/zookeeper" || chroot.starts_with("/zookeeper/") {
        "is ZooKeeper's own subtree, where nothing may be created; pick another"
    } else if chroot.chars().any(|c| c.is_control() || c.is_whitespace()) {
        "has a space or a control character; name the znode by its plain path"
    } else {
        return None;
    };
    Some(format!("has the chroot {chroot:?}, which {why}"))
}

impl fmt::Debug for CoordinationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The digest's password never reaches a log line.
        let digest = self.digest.as_deref().map(|d| format!("{}:<redacted>", d.split(':').next().unwrap_or_default()));
        f.debug_struct("CoordinationConfig")
            .field("connect", &self.connect)
            .field("cluster", &self.cluster)
            .field("node_id", &self.node_id)
            .field("session_timeout", &self.session_timeout)
            .field("op_timeout", &self.op_timeout)
            .field("digest", &digest)
            .finish()
    }
}

impl CoordinationConfig {
    /// Checks the fields and their timing rules, naming what to change.
    pub fn validate(&self) -> Result<(), ElectionError> {
        let bad = |what: String| Err(ElectionError::Config(what));
        if let Some(problem) = connect_string_problem(&self.connect) {
            return bad(format!("connect string {:?} {problem}", self.connect));
        }
        if !is_znode_name(&self.cluster) {
            return bad(format!("cluster name {:?} must be 1-64 characters of [A-Za-z0-9._-]", self.cluster));
        }
        if !is_znode_name(&self.node_id) {
            return bad(format!("node id {:?} must be 1-64 characters of [A-Za-z0-9._-]", self.node_id));
        }
        if self.session_timeout.is_zero() || self.session_timeout.as_millis() > i32::MAX as u128 {
            return bad(format!("session timeout {:?} must be between 1 ms and i32::MAX ms", self.session_timeout));
        }
        if self.op_timeout.is_zero() || self.op_timeout >= self.session_timeout {
            // A reply that may arrive after the session could have expired says nothing about it.
            return bad(format!(
                "op timeout {:?} must be above zero and shorter than the session timeout {:?}",
                self.op_timeout, self.session_timeout
            ));
        }
        if let Some(d) = &self.digest {
            match d.split_once(':') {
                Some((user, _)) if !user.is_empty() => {}
                _ => return bad("digest credential must look like user:password".to_string()),
            }
        }
        Ok(())
    }
}

/// A znode name we accept for clusters and node ids: no `/`, no `.` or `..`, nothing a shell
/// or a path could misread.
fn is_znode_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "."
        && s != ".."
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// What went wrong in the election layer. [`ElectionError::recovery`] says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ElectionError {
    /// The configuration is unusable; the message says what to change.
    #[error("invalid coordination settings: {0}")]
    Config(String),
    /// The caller passed arguments that contradict each other or this handle.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No session could be established.
    #[error("could not connect to {connect}: {source}")]
    Connect {
        /// The connect string.
        connect: String,
        /// The client library's error.
        source: zk::Error,
    },
    /// No session was established in time.
    #[error("no session with {connect} within {after:?}")]
    ConnectTimeout {
        /// The connect string.
        connect: String,
        /// How long we waited.
        after: Duration,
    },
    /// The call got no reply in time. A write may or may not have been applied: re-read.
    #[error("{op}: no reply within {after:?} (a write may or may not have been applied)")]
    Timeout {
        /// What we were doing.
        op: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// The connection dropped with the call in flight. A write may or may not have been applied.
    #[error("{op}: connection lost (a write may or may not have been applied)")]
    ConnectionLoss {
        /// What we were doing.
        op: &'static str,
    },
    /// The session has expired or was closed; this handle is dead.
    #[error("session {session_id:#x} has expired or was closed; connect a new handle")]
    SessionExpired {
        /// The dead session.
        session_id: i64,
    },
    /// A reply arrived but the session it belongs to has ended since: it must not be acted on
    /// (in particular, it is never a win).
    #[error("{op}: the reply belongs to session {session_id:#x}, which has ended since")]
    StaleSession {
        /// What we were doing.
        op: &'static str,
        /// The ended session.
        session_id: i64,
    },
    /// The ensemble refused our credential.
    #[error("the coordinator refused our credential")]
    AuthFailed,
    /// Our credential lacks a permission the call needs.
    #[error("{op}: not authorised (check the digest credential and the tree's ACLs)")]
    NoAuth {
        /// What we were doing.
        op: &'static str,
    },
    /// A znode the agent needs could not be created because its parent's ACL does not give
    /// this session's identity CREATE: the tree belongs to another credential.
    #[error(
        "{who} may not create {path}: its parent {parent} does not give it CREATE. Give the agent the credential the \
         cluster was formatted with (coordinator.digest), or ask whoever owns {parent} to let this one create there: \
         add it to the ACL, or format the cluster for it (`referee admin format --force` with this credential, \
         which needs ADMIN on {parent})",
        who = match user {
            Some(user) => format!("digest user `{user}`"),
            None => "an agent with no digest credential (coordinator.digest is unset)".to_string(),
        }
    )]
    CreateRefused {
        /// The znode refused, as the ensemble names it (with the chroot).
        path: String,
        /// Its parent, whose ACL refused.
        parent: String,
        /// The digest user the session authenticated as; `None`: no credential.
        user: Option<String>,
    },
    /// Another live session holds our node id: two agents are configured with the same id.
    #[error("node id {node_id} is registered by another live session {owner_session:#x}; two agents share this id")]
    DuplicateNodeId {
        /// The contested node id.
        node_id: String,
        /// The session holding it (0 if a persistent znode squats the path).
        owner_session: i64,
    },
    /// This session does not hold the lock with the given token and version (any more).
    #[error("{op}: this session does not hold the lock at token {token}, version {version}")]
    LockNotHeld {
        /// What we were doing.
        op: &'static str,
        /// The token the caller believed it held.
        token: FencingToken,
        /// The lock version the caller believed current.
        version: i32,
    },
    /// The breadcrumb is not at the version the caller read (or exists when it read none).
    #[error("the breadcrumb changed since version {expected:?} was read")]
    BreadcrumbChanged {
        /// The version the caller expected (`None`: expected no breadcrumb).
        expected: Option<i32>,
    },
    /// The token base is not at the version the caller read (or exists when it read none).
    #[error("the token base changed since version {expected:?} was read")]
    TokenBaseChanged {
        /// The version the caller expected (`None`: expected no token base).
        expected: Option<i32>,
    },
    /// The lock kept changing hands between our create and our read-back.
    #[error("the lock changed hands {attempts} times while we raced for it")]
    LockChurn {
        /// How many times we raced.
        attempts: usize,
    },
    /// A znode holds data we cannot decode.
    #[error("{path} holds unreadable data: {source}")]
    Corrupt {
        /// The znode.
        path: String,
        /// The decoding error.
        source: serde_json::Error,
    },
    /// A record could not be encoded.
    #[error("could not encode a record: {0}")]
    Encode(serde_json::Error),
    /// Any other error the ensemble or the client library reported.
    #[error("{op}: {source}")]
    Coordinator {
        /// What we were doing.
        op: &'static str,
        /// The client library's error.
        source: zk::Error,
    },
    /// The ensemble answered something impossible.
    #[error("{op}: unexpected reply: {detail}")]
    UnexpectedReply {
        /// What we were doing.
        op: &'static str,
        /// What was wrong with it.
        detail: String,
    },
}

/// What the caller should do about an [`ElectionError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Transient: try again on a later cycle with the same handle, re-reading first (a write's
    /// outcome may be unknown).
    Retry,
    /// The state changed under us (lock lost, breadcrumb moved): re-read and decide again.
    Reread,
    /// The session is gone or was never made: connect a new handle.
    Reconnect,
    /// Retrying cannot help (bad settings, duplicate node id, credentials): refuse to run.
    Fatal,
}

impl ElectionError {
    /// What the caller should do about this error.
    pub fn recovery(&self) -> Recovery {
        match self {
            ElectionError::Config(_)
            | ElectionError::InvalidArgument(_)
            | ElectionError::AuthFailed
            | ElectionError::NoAuth { .. }
            | ElectionError::CreateRefused { .. }
            | ElectionError::DuplicateNodeId { .. }
            | ElectionError::Encode(_) => Recovery::Fatal,
            ElectionError::Connect { .. }
            | ElectionError::ConnectTimeout { .. }
            | ElectionError::SessionExpired { .. }
            | ElectionError::StaleSession { .. } => Recovery::Reconnect,
            ElectionError::LockNotHeld { .. }
            | ElectionError::BreadcrumbChanged { .. }
            | ElectionError::TokenBaseChanged { .. } => Recovery::Reread,
            ElectionError::Timeout { .. }
            | ElectionError::ConnectionLoss { .. }
            | ElectionError::LockChurn { .. }
            | ElectionError::Corrupt { .. }
            | ElectionError::Coordinator { .. }
            | ElectionError::UnexpectedReply { .. } => Recovery::Retry,
        }
    }
}

/// The cluster's settings record as read by [`Coordination::read_cluster_settings`].
#[derive(Debug, Clone)]
pub struct ClusterSettingsRead {
    /// The record, or why it cannot be decoded (naming its znode).
    pub record: Result<ClusterSettingsRecord, String>,
    /// Its znode's version, as `referee admin config` shows it.
    pub version: i32,
    /// The zxid of its last change, which tells one change from another where the version
    /// cannot: a record removed and set again starts again at version 0.
    pub mzxid: i64,
}

/// The outcome of [`Coordination::try_acquire`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    /// This session holds the lock; `token` is its czxid plus the token base. A freshly created
    /// lock has version 0.
    Won {
        /// The fencing token of this acquisition.
        token: FencingToken,
    },
    /// Someone else holds it (possibly an older session of this very node: see
    /// [`LockView::OursFromOldSession`]).
    HeldBy {
        /// The holder's node id.
        node_id: String,
        /// The holder's token.
        token: FencingToken,
    },
}

/// The outcome of [`Coordination::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// Our lock is deleted.
    Deleted,
    /// There was no lock.
    AlreadyFree,
    /// The lock is not ours (another session, or another acquisition's token): left alone.
    NotOurs {
        /// The current holder's token.
        token: FencingToken,
        /// The current holder's session.
        owner_session: i64,
    },
}

/// The lock znode's identity, for fencing targets and conditional writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockMeta {
    /// The holder's fencing token: czxid plus the token base read with it.
    pub token: FencingToken,
    /// Its czxid.
    pub czxid: u64,
    /// Its data version.
    pub version: i32,
    /// The session that created it (`ephemeralOwner`).
    pub owner_session: i64,
}

/// What woke a [`LockWatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockEvent {
    /// The lock was created (the watch was armed while it was free).
    Created,
    /// The lock was deleted: released, or its holder's session ended.
    Deleted,
    /// The lock's data changed.
    DataChanged,
    /// Our session ended; the lock will not be watched through it again.
    SessionEnded,
}

/// A one-shot wake-up for the next change of the lock znode. Arm a new one with
/// [`Coordination::watch_lock`] after it fires; dropping it disarms it.
#[derive(Debug)]
pub struct LockWatch {
    task: Option<JoinHandle<zk::WatchedEvent>>,
    fired: Option<LockEvent>,
}

impl LockWatch {
    /// Waits for the change. Cancel-safe. Once it has reported an event it reports the same
    /// event again at once.
    pub async fn changed(&mut self) -> LockEvent {
        if let Some(event) = self.fired {
            return event;
        }
        let event = match self.task.as_mut() {
            Some(task) => match task.await {
                Ok(ev) => match ev.event_type {
                    zk::EventType::NodeCreated => LockEvent::Created,
                    zk::EventType::NodeDeleted => LockEvent::Deleted,
                    // Exist watches get no child events; should one come, it is still a change.
                    zk::EventType::NodeDataChanged | zk::EventType::NodeChildrenChanged => LockEvent::DataChanged,
                    zk::EventType::Session => LockEvent::SessionEnded,
                },
                // The library's watch task ends without an event only when the session machinery
                // itself is gone.
                Err(_) => LockEvent::SessionEnded,
            },
            None => LockEvent::SessionEnded,
        };
        self.task = None;
        self.fired = Some(event);
        event
    }
}

impl Drop for LockWatch {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Follows the session's state. See [`Coordination::session_watch`].
#[derive(Debug)]
pub struct SessionWatch {
    states: zk::StateWatcher,
    session_id: i64,
}

impl SessionWatch {
    /// The state now.
    pub fn current(&self) -> SessionView {
        session_view(self.states.peek_state(), self.session_id)
    }

    /// Waits for the next state change and returns the new state. Cancel-safe. After it has
    /// returned [`SessionView::Expired`] it never returns again.
    pub async fn changed(&mut self) -> SessionView {
        session_view(self.states.changed().await, self.session_id)
    }
}

fn session_view(state: zk::SessionState, session_id: i64) -> SessionView {
    match state {
        zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => SessionView::Connected { session_id },
        zk::SessionState::Disconnected => SessionView::Disconnected { session_id },
        zk::SessionState::Expired | zk::SessionState::Closed | zk::SessionState::AuthFailed => SessionView::Expired,
    }
}

/// The znode paths of one cluster.
#[derive(Debug, Clone)]
struct Paths {
    cluster: String,
    lock: String,
    breadcrumb: String,
    members: String,
    member: String,
    token_base: String,
    position: String,
    switchover: String,
    pause: String,
    config: String,
    drained: String,
    handover: String,
}

impl Paths {
    fn new(cluster: &str, node_id: &str) -> Self {
        let root = format!("{ROOT}/{cluster}");
        Paths {
            lock: format!("{root}/lock"),
            breadcrumb: format!("{root}/breadcrumb"),
            members: format!("{root}/members"),
            member: format!("{root}/members/{node_id}"),
            token_base: format!("{root}/token-base"),
            position: format!("{root}/position"),
            switchover: format!("{root}/{SWITCHOVER}"),
            pause: format!("{root}/{PAUSE}"),
            config: format!("{root}/{CLUSTER_CONFIG}"),
            drained: format!("{root}/{DRAINED}/{node_id}"),
            handover: format!("{root}/{HANDOVER}"),
            cluster: root,
        }
    }
}

/// Why a remote call did not succeed: the ensemble's (or library's) error, or our deadline.
enum Failure<E> {
    Reply(E),
    TimedOut(Duration),
}

/// A handle on the cluster's election znodes through one session. See the module docs.
#[derive(Debug)]
pub struct Coordination {
    client: zk::Client,
    cfg: CoordinationConfig,
    paths: Paths,
    session_id: i64,
    /// The connection idle limit the client was made with (see [`IdleLimitPlan`]).
    idle_limit: Duration,
    /// The lowest session timeout any server would grant this session on a reconnection
    /// ([`crate::grants`]), kept by the survey task.
    lowest_grant: Arc<Mutex<Duration>>,
    _survey: AbortOnDrop,
    /// What each server says of its staleness ([`crate::staleness`]), kept by its own task.
    staleness: Arc<Mutex<Vec<(String, crate::staleness::Implied)>>>,
    _staleness_check: AbortOnDrop,
}

/// A task that ends with its owner.
#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Coordination {
    /// Connects a new session, authenticates with the digest credential if one is configured,
    /// and creates `/referee/<cluster>/members` and its parents if they are missing.
    ///
    /// When the session would live on less than it asked for (its grant, or a lower one another
    /// server gives on a reconnection: [`crate::grants::survey_first`]), it is closed before it
    /// holds anything and made again asking for that, so that its connection gives a silent
    /// server up within a fifth of the timeout the lease counts on ([`IdleLimitPlan`]: at most
    /// [`MAX_SESSION_ASKS`] sessions, each asking for less).
    ///
    /// Each session takes at most its requested timeout plus `op_timeout` to connect and
    /// `op_timeout` to survey; then one `op_timeout` per missing parent.
    pub async fn connect(cfg: CoordinationConfig) -> Result<Self, ElectionError> {
        cfg.validate()?;
        let mut plan = IdleLimitPlan::new(cfg.session_timeout, cfg.op_timeout);
        let (client, survey) = loop {
            let client = open_session(&cfg, plan).await?;
            let negotiated = client.session_timeout();
            if cfg.op_timeout >= negotiated {
                // Dropping the client closes the session.
                return Err(ElectionError::Config(format!(
                    "the coordinator granted a session timeout of {negotiated:?} (asked for {:?}), which is not \
                     above the op timeout {:?}; lower op_timeout or widen the server's session timeout bounds",
                    plan.asked(),
                    cfg.op_timeout
                )));
            }
            let survey = crate::grants::survey_first(&cfg.connect, negotiated, cfg.op_timeout).await;
            let counted = survey.lowest().min(negotiated);
            let asked = plan.asked();
            let Some(next) = plan.ask_again(counted) else { break (client, survey) };
            tracing::info!(
                session = %format_args!("{:#x}", client.session_id().0),
                asked_ms = asked.as_millis() as u64,
                granted_ms = negotiated.as_millis() as u64,
                counted_ms = counted.as_millis() as u64,
                "the lease counts on a shorter session timeout than this new session asked for: closing it before it \
                 holds anything and asking for {} ms, so that a silent coordinator server is given up after {} ms, \
                 not {} ms",
                next.as_millis(),
                connection_idle_limit(next).as_millis(),
                connection_idle_limit(asked).as_millis()
            );
            close_client(client, cfg.op_timeout).await;
        };
        let negotiated = client.session_timeout();
        let session_id = client.session_id().0;
        tracing::info!(session = %format_args!("{session_id:#x}"), ?negotiated, cluster = %cfg.cluster, "coordinator session established");
        let paths = Paths::new(&cfg.cluster, &cfg.node_id);
        let lowest_grant = Arc::new(Mutex::new(survey.lowest()));
        let survey = crate::grants::spawn_survey(survey, cfg.op_timeout, client.state_watcher(), lowest_grant.clone());
        let staleness = Arc::new(Mutex::new(Vec::new()));
        let check =
            crate::staleness::spawn_check(&cfg.connect, cfg.op_timeout, client.state_watcher(), staleness.clone());
        let me = Coordination {
            client,
            cfg,
            paths,
            session_id,
            idle_limit: idle_limit_in_force(plan.idle_limit(), negotiated),
            lowest_grant,
            _survey: AbortOnDrop(survey),
            staleness,
            _staleness_check: AbortOnDrop(check),
        };
        me.ensure_parents().await?;
        Ok(me)
    }

    /// Creates the persistent parents, tolerating creation races with other agents. Existing
    /// ones are not re-created, so a tree locked down with ACLs only needs read access here.
    async fn ensure_parents(&self) -> Result<(), ElectionError> {
        const OP: &str = "create the cluster's znodes";
        for path in [ROOT, self.paths.cluster.as_str(), self.paths.members.as_str()] {
            let sent = Instant::now();
            let exists = self.client.check_stat(path);
            if self.finish(self.deadline(), sent, exists).await.map_err(|f| self.failure(OP, f))?.is_some() {
                continue;
            }
            let options = match (path == ROOT, self.cfg.digest.is_some()) {
                (true, true) => zk::CreateMode::Persistent.with_acls(zk::Acls::new(&*SECURED_ROOT)),
                _ => self.options(zk::CreateMode::Persistent),
            };
            let sent = Instant::now();
            let created = self.client.create(path, b"", &options);
            match self.finish(self.deadline(), sent, created).await {
                Ok(_) | Err(Failure::Reply(zk::Error::NodeExists)) => {}
                Err(Failure::Reply(zk::Error::NoAuth)) => return Err(self.create_refused(path)),
                Err(Failure::Reply(zk::Error::NoNode)) if path == ROOT => {
                    // Only a chroot can be missing above `/referee`.
                    let chroot = split_chroot(&self.cfg.connect).1.unwrap_or("/");
                    return Err(ElectionError::Config(format!(
                        "the chroot {chroot} of coordinator.connect {:?} does not exist in the coordinator: create it \
                         (zkCli.sh create {chroot}, or ask whoever runs the ensemble) or correct the connect string",
                        self.cfg.connect
                    )));
                }
                Err(f) => return Err(self.failure(OP, f)),
            }
        }
        Ok(())
    }

    /// The refusal to create `path` (a path of this session, under its chroot), naming it and
    /// its parent as the ensemble does, and the digest user the session authenticated as.
    fn create_refused(&self, path: &str) -> ElectionError {
        let chroot = split_chroot(&self.cfg.connect).1.unwrap_or_default();
        let parent = match path.rsplit_once('/') {
            Some(("", _)) | None => "/",
            Some((parent, _)) => parent,
        };
        let full = |p: &str| if p == "/" && !chroot.is_empty() { chroot.to_string() } else { format!("{chroot}{p}") };
        let user = self.cfg.digest.as_deref().and_then(|d| d.split_once(':')).map(|(user, _)| user.to_string());
        ElectionError::CreateRefused { path: full(path), parent: full(parent), user }
    }

    /// How long the connection may go without a byte from its server before the client moves
    /// the session to another: a fifth of the session timeout this session asked for, which
    /// [`Coordination::connect`] brings to a fifth of the one the lease counts on (as the
    /// client library puts it in force: [`idle_limit_in_force`]).
    pub fn idle_limit(&self) -> Duration {
        self.idle_limit
    }

    /// This handle's session id.
    pub fn session_id(&self) -> i64 {
        self.session_id
    }

    /// The session timeout the ensemble granted (not the one requested).
    pub fn negotiated_timeout(&self) -> Duration {
        self.client.session_timeout()
    }

    /// The session timeout the lease counts on: the lowest any server of the connect string
    /// would grant this session on a reconnection, as far as they have answered
    /// ([`crate::grants`]; Apache ZooKeeper grants a session's timeout anew, within its own
    /// bounds, at every reconnection). Never above [`Coordination::negotiated_timeout`].
    pub fn lease_timeout(&self) -> Duration {
        let lowest = *self.lowest_grant.lock().unwrap_or_else(PoisonError::into_inner);
        lowest.min(self.negotiated_timeout())
    }

    /// What each server of the connect string last said of its staleness, in its order (empty
    /// until the first answers).
    pub fn staleness_reports(&self) -> Vec<(String, crate::staleness::Implied)> {
        self.staleness.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The node id this handle registers and acquires as.
    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    /// The session's state now.
    pub fn session(&self) -> SessionView {
        session_view(self.client.state(), self.session_id)
    }

    /// A follower of the session's state changes from now on (combine with
    /// [`SessionWatch::current`] to miss nothing).
    pub fn session_watch(&self) -> SessionWatch {
        SessionWatch { states: self.client.state_watcher(), session_id: self.session_id }
    }

    /// Registers this agent as a member: an ephemeral znode holding `member`.
    ///
    /// If another live session holds our node id, this waits (watching for its deletion) up to
    /// the negotiated session timeout plus the larger of `op_timeout` and half that timeout, in
    /// case it is the leftover of our own previous incarnation, which expires on that schedule
    /// (assuming it ran with the same session timeout). If it is still there, returns
    /// [`ElectionError::DuplicateNodeId`]: two agents share the id and this one must not start.
    ///
    /// A registration this session already holds is kept as it is (its data is not rewritten).
    /// A members znode whose ACL does not let this credential create there is
    /// [`ElectionError::CreateRefused`], naming it.
    pub async fn register_member(&self, member: &Member) -> Result<(), ElectionError> {
        const OP: &str = "register as a member";
        if member.node_id != self.cfg.node_id {
            return Err(ElectionError::InvalidArgument(format!(
                "member record names {:?} but this handle is node {:?}",
                member.node_id, self.cfg.node_id
            )));
        }
        let data = encode(member)?;
        let negotiated = self.negotiated_timeout();
        let grace = negotiated + self.cfg.op_timeout.max(negotiated / 2);
        let give_up = Instant::now() + grace;
        loop {
            if Instant::now() >= give_up {
                // Only reached if the znode keeps appearing and vanishing under us.
                return Err(ElectionError::Timeout { op: OP, after: grace });
            }
            let sent = Instant::now();
            let created = self.client.create(&self.paths.member, &data, &self.options(zk::CreateMode::Ephemeral));
            match self.finish(self.deadline(), sent, created).await {
                Ok(_) => return self.ensure_live(OP),
                // Exists, or perhaps created by us with the reply lost: the owner tells.
                Err(Failure::Reply(zk::Error::NodeExists | zk::Error::ConnectionLoss)) | Err(Failure::TimedOut(_)) => {}
                Err(Failure::Reply(zk::Error::NoAuth)) => return Err(self.create_refused(&self.paths.member)),
                Err(f) => return Err(self.failure(OP, f)),
            }
            let sent = Instant::now();
            let checked = self.client.check_and_watch_stat(&self.paths.member);
            let (stat, watcher) = self.finish(self.deadline(), sent, checked).await.map_err(|f| self.failure(OP, f))?;
            let Some(stat) = stat else {
                // Gone since our create: race for it again (the watch fires on creation; unneeded).
                continue;
            };
            let owner_session = stat.ephemeral_owner;
            if owner_session == self.session_id {
                return self.ensure_live(OP);
            }
            let duplicate = ElectionError::DuplicateNodeId { node_id: self.cfg.node_id.clone(), owner_session };
            if owner_session == 0 || Instant::now() >= give_up {
                // A persistent squatter never goes away; a live one has outlasted any leftover.
                return Err(duplicate);
            }
            tracing::info!(owner = %format_args!("{owner_session:#x}"), "our node id is held by another session; waiting for it to expire");
            let mut watch = spawn_watch(watcher);
            match tokio::time::timeout_at(give_up.into(), watch.changed()).await {
                Err(_) => return Err(duplicate),
                Ok(LockEvent::SessionEnded) => {
                    return Err(ElectionError::SessionExpired { session_id: self.session_id })
                }
                Ok(LockEvent::Created | LockEvent::Deleted | LockEvent::DataChanged) => {}
            }
        }
    }

    /// Rewrites this agent's member znode (registered by this session) with `member`, its
    /// candidacy included. Fails with [`ElectionError::Coordinator`] (`NoNode`) if the
    /// registration is gone: the caller registers again.
    pub async fn publish_member(&self, member: &Member) -> Result<(), ElectionError> {
        const OP: &str = "publish the candidacy";
        if member.node_id != self.cfg.node_id {
            return Err(ElectionError::InvalidArgument(format!(
                "member record names {:?} but this handle is node {:?}",
                member.node_id, self.cfg.node_id
            )));
        }
        let data = encode(member)?;
        let sent = Instant::now();
        let set = self.client.set_data(&self.paths.member, &data, None);
        self.finish(self.deadline(), sent, set).await.map_err(|f| self.failure(OP, f))?;
        Ok(())
    }

    /// Publishes the active's position while this session holds the lock: one multi of
    /// `check(lock, lock_version)` and `setData(position)` (or `create` the first time). Fails
    /// with [`ElectionError::LockNotHeld`] if the lock is gone or changed.
    pub async fn publish_position(&self, record: &ActivePosition, lock_version: i32) -> Result<(), ElectionError> {
        const OP: &str = "publish the position";
        let data = encode(record)?;
        // A version check alone cannot tell our lock from a peer's at the same version (see
        // `write_breadcrumb`): the lock is first confirmed ours with the record's token.
        self.confirm_holder(OP, record.token, lock_version).await?;
        let persistent = self.options(zk::CreateMode::Persistent);
        // Set first (the usual case); a missing znode is created, one created meanwhile by
        // another holder is set again: two rounds at most.
        for create in [false, true, false] {
            let mut writer = self.client.new_multi_writer();
            let staged = writer.add_check_version(&self.paths.lock, lock_version).and_then(|()| {
                if create {
                    writer.add_create(&self.paths.position, &data, &persistent)
                } else {
                    writer.add_set_data(&self.paths.position, &data, None)
                }
            });
            staged.map_err(|source| ElectionError::Coordinator { op: OP, source })?;
            let sent = Instant::now();
            let committed = writer.commit();
            match self.finish(self.deadline(), sent, committed).await {
                Ok(_) => return Ok(()),
                Err(Failure::Reply(zk::MultiWriteError::OperationFailed {
                    index: 1,
                    source: zk::Error::NoNode | zk::Error::NodeExists,
                })) => continue,
                Err(f) => {
                    return Err(self.multi_failure(OP, f, record.token, lock_version, || ElectionError::Coordinator {
                        op: OP,
                        source: zk::Error::NodeExists,
                    }))
                }
            }
        }
        Err(ElectionError::Coordinator { op: OP, source: zk::Error::NodeExists })
    }

    /// The active's published position and the znode's modification zxid (which moves on every
    /// publication, even of the same position); `None` if none was ever published.
    pub async fn read_position(&self) -> Result<Option<(ActivePosition, i64)>, ElectionError> {
        const OP: &str = "read the position";
        let sent = Instant::now();
        let read = self.client.get_data(&self.paths.position);
        match self.finish(self.deadline(), sent, read).await {
            Ok((data, stat)) => Ok(Some((decode(&self.paths.position, &data)?, stat.mzxid))),
            Err(Failure::Reply(zk::Error::NoNode)) => Ok(None),
            Err(f) => Err(self.failure(OP, f)),
        }
    }

    /// The registered members, sorted by node id. Members whose data cannot be decoded are
    /// skipped with a warning rather than hiding every other member.
    pub async fn members(&self) -> Result<Vec<Member>, ElectionError> {
        const OP: &str = "list members";
        let sent = Instant::now();
        let listed = self.client.list_children(&self.paths.members);
        let names = self.finish(self.deadline(), sent, listed).await.map_err(|f| self.failure(OP, f))?;
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let paths: Vec<String> = names.iter().map(|n| format!("{}/{n}", self.paths.members)).collect();
        let mut reader = self.client.new_multi_reader();
        for path in &paths {
            reader.add_get_data(path).map_err(|source| ElectionError::Coordinator { op: OP, source })?;
        }
        let sent = Instant::now();
        let read = reader.commit();
        let results = self.finish(self.deadline(), sent, read).await.map_err(|f| self.failure(OP, f))?;
        let mut members = Vec::with_capacity(results.len());
        for (path, result) in paths.iter().zip(results) {
            match result {
                zk::MultiReadResult::Data { data, .. } => match decode::<Member>(path, &data) {
                    Ok(m) => members.push(m),
                    Err(e) => tracing::warn!(error = %e, "skipping an unreadable member"),
                },
                // Left between the listing and the read.
                zk::MultiReadResult::Error { err: zk::Error::NoNode } => {}
                zk::MultiReadResult::Error { err } => return Err(ElectionError::Coordinator { op: OP, source: err }),
                other => {
                    return Err(ElectionError::UnexpectedReply { op: OP, detail: format!("{other:?} for a data read") })
                }
            }
        }
        members.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(members)
    }

    /// The scheduled switchover (see [`crate::schedule`]) with its version, if one is recorded.
    pub async fn read_switchover(&self) -> Result<Option<(ScheduledSwitchover, i32)>, ElectionError> {
        const OP: &str = "read the scheduled switchover";
        let sent = Instant::now();
        let read = self.client.get_data(&self.paths.switchover);
        match self.finish(self.deadline(), sent, read).await {
            Ok((data, stat)) => Ok(Some((decode(&self.paths.switchover, &data)?, stat.version))),
            Err(Failure::Reply(zk::Error::NoNode)) => Ok(None),
            Err(f) => Err(self.failure(OP, f)),
        }
    }

    /// The cluster's pause record, if the cluster is paused. A record that cannot be decoded
    /// counts as a pause (by "an unreadable record"): an operator's `resume` removes it, and
    /// until then no agent acts on a guess.
    pub async fn read_pause(&self) -> Result<Option<PauseRecord>, ElectionError> {
        const OP: &str = "read the cluster's pause record";
        let sent = Instant::now();
        let read = self.client.get_data(&self.paths.pause);
        match self.finish(self.deadline(), sent, read).await {
            Ok((data, _)) => Ok(Some(decode(&self.paths.pause, &data).unwrap_or_else(|e| PauseRecord {
                requested_by: format!("an unreadable record at {} ({e})", self.paths.pause),
                at_ms: 0,
            }))),
            Err(Failure::Reply(zk::Error::NoNode)) => Ok(None),
            Err(f) => Err(self.failure(OP, f)),
        }
    }

    /// This node's drain record, while an operator keeps it from promotion. A record that
    /// cannot be decoded counts as drained (by "an unreadable record"): `referee admin undrain`
    /// removes it, and until then the node is not promoted on a guess.
    pub async fn read_drained(&self) -> Result<Option<DrainRecord>, ElectionError> {
        const OP: &str = "read this node's drain record";
        let sent = Instant::now();
        let read = self.client.get_data(&self.paths.drained);
        match self.finish(self.deadline(), sent, read).await {
            Ok((data, _)) => Ok(Some(decode(&self.paths.drained, &data).unwrap_or_else(|e| DrainRecord {
                requested_by: format!("an unreadable record at {} ({e})", self.paths.drained),
                at_ms: 0,
                reason: None,
            }))),
            Err(Failure::Reply(zk::Error::NoNode)) => Ok(None),
            Err(f) => Err(self.failure(OP, f)),
        }
    }

    /// The cluster's settings, if any were set. A record that cannot be decoded comes back as
    /// the error naming it: no agent guesses at settings, and each can say which change of the
    /// record it could not read.
    pub async fn read_cluster_settings(&self) -> Result<Option<ClusterSettingsRead>, ElectionError> {
        const OP: &str = "read the cluster's settings";
        let sent = Instant::now();
        let read = self.client.get_data(&self.paths.config);
        match self.finish(self.deadline(), sent, read).await {
            Ok((data, stat)) => Ok(Some(ClusterSettingsRead {
                record: decode(&self.paths.config, &data).map_err(|e| e.to_string()),
                version: stat.version,
                mzxid: stat.mzxid,
            })),
            Err(Failure::Reply(zk::Error::NoNode)) => Ok(None),
            Err(f) => Err(self.failure(OP, f)),
        }
    }

    /// An operator's confirmation that `node` is down, and its version. A record that cannot be
    /// decoded is no confirmation: it comes back as the error naming it, so that no fence is
    /// skipped on a guess.
    pub async fn read_confirmed_down(
        &self,
        node: &str,
    ) -> Result<Option<(Result<ConfirmedDownRecord, String>, i32)>, ElectionError> {
        const OP: &str = "read the operator's confirmation that a node is down";
        let path = format!("{}/{CONFIRMED_DOWN}/{node}", self.paths.cluster);
        let sent = Instant::now();
        let read = self.client.get_data(&path);
        match self.finish(self.deadline(), sent, read).await {
            Ok((data, stat)) => Ok(Some((decode(&path, &data).map_err(|e| e.to_string()), stat.version))),
            Err(Failure::Reply(zk::Error::NoNode)) => Ok(None),
            Err(f) => Err(self.failure(OP, f)),
        }
    }

    /// Removes `node`'s confirmation read at `version`, once it has served: false when it
    /// changed meanwhile (an operator confirmed again) or is gone.
    pub async fn remove_confirmed_down(&self, node: &str, version: i32) -> Result<bool, ElectionError> {
        const OP: &str = "remove the operator's confirmation that a node is down";
        let path = format!("{}/{CONFIRMED_DOWN}/{node}", self.paths.cluster);
        let sent = Instant::now();
        let deleted = self.client.delete(&path, Some(version));
        match self.finish(self.deadline(), sent, deleted).await {
            Ok(()) => Ok(true),
            Err(Failure::Reply(zk::Error::NoNode | zk::Error::BadVersion)) => Ok(false),
            Err(f) => Err(self.failure(OP, f)),
        }
    }

    /// The graceful failover under way, with its data's zxid (each write gives a new one, so a
    /// reader can tell a new record from one it has seen), if one is recorded.
    pub async fn read_handover(&self) -> Result<Option<(HandoverRecord, i64)>, ElectionError> {
        const OP: &str = "read the handover record";
        let sent = Instant::now();
        let read = self.client.get_data(&self.paths.handover);
        match self.finish(self.deadline(), sent, read).await {
            Ok((data, stat)) => Ok(Some((decode(&self.paths.handover, &data)?, stat.mzxid))),
            Err(Failure::Reply(zk::Error::NoNode)) => Ok(None),
            Err(f) => Err(self.failure(OP, f)),
        }
    }

    /// Records a graceful failover to `record.to` (created with the cluster's ACL, or replacing
    /// the one there).
    pub async fn write_handover(&self, record: &HandoverRecord) -> Result<(), ElectionError> {
        const OP: &str = "write the handover record";
        let data = encode(record)?;
        let sent = Instant::now();
        let created = self.client.create(&self.paths.handover, &data, &self.options(zk::CreateMode::Persistent));
        match self.finish(self.deadline(), sent, created).await {
            Ok(_) => return Ok(()),
            Err(Failure::Reply(zk::Error::NodeExists)) => {}
            Err(f) => return Err(self.failure(OP, f)),
        }
        let sent = Instant::now();
        let set = self.client.set_data(&self.paths.handover, &data, None);
        match self.finish(self.deadline(), sent, set).await {
            Ok(_) => Ok(()),
            Err(f) => Err(self.failure(OP, f)),
        }
    }

    /// Removes the handover record if `obsolete` says so of it (read and deleted at the version
    /// read, so a record written meanwhile stays): true when one was removed.
    pub async fn remove_handover(&self, obsolete: impl Fn(&HandoverRecord) -> bool) -> Result<bool, ElectionError> {
        const OP: &str = "remove the handover record";
        let sent = Instant::now();
        let read = self.client.get_data(&self.paths.handover);
        let (record, version) = match self.finish(self.deadline(), sent, read).await {
            // A record that cannot be decoded is of no use to anyone: it goes too.
            Ok((data, stat)) => (decode::<HandoverRecord>(&self.paths.handover, &data).ok(), stat.version),
            Err(Failure::Reply(zk::Error::NoNode)) => return Ok(false),
            Err(f) => return Err(self.failure(OP, f)),
        };
        if record.as_ref().is_some_and(|r| !obsolete(r)) {
            return Ok(false);
        }
        let sent = Instant::now();
        let deleted = self.client.delete(&self.paths.handover, Some(version));
        match self.finish(self.deadline(), sent, deleted).await {
            Ok(()) => Ok(true),
            Err(Failure::Reply(zk::Error::NoNode | zk::Error::BadVersion)) => Ok(false),
            Err(f) => Err(self.failure(OP, f)),
        }
    }

    /// Deletes the scheduled switchover read at `version`: false when it changed or went
    /// meanwhile (cancelled or replaced), so one record is acted on at most once.
    pub async fn take_switchover(&self, version: i32) -> Result<bool, ElectionError> {
        const OP: &str = "take the scheduled switchover";
        let sent = Instant::now();
        let deleted = self.client.delete(&self.paths.switchover, Some(version));
        match self.finish(self.deadline(), sent, deleted).await {
            Ok(()) => Ok(true),
            Err(Failure::Reply(zk::Error::NoNode | zk::Error::BadVersion)) => Ok(false),
            Err(f) => Err(self.failure(OP, f)),
        }
    }

    /// Who holds the lock. Ownership is decided by the lock's `ephemeralOwner` against this
    /// handle's session, never by the node id in its data.
    pub async fn read_lock(&self) -> Result<LockView, ElectionError> {
        Ok(self.read_lock_state().await?.0)
    }

    /// Who holds the lock, and the token base its token was computed with, read together.
    pub async fn read_lock_state(&self) -> Result<(LockView, TokenBaseView), ElectionError> {
        let (lock, base, _) = self.read_lock_with_record().await?;
        Ok((lock, base))
    }

    /// As [`Coordination::read_lock_state`], with the holder's record (how to fence it), if
    /// the lock is held.
    pub async fn read_lock_with_record(&self) -> Result<(LockView, TokenBaseView, Option<LockRecord>), ElectionError> {
        const OP: &str = "read the lock";
        match self.read_lock_and_base(OP).await? {
            (None, base) => Ok((LockView::Free, base, None)),
            (Some((data, meta)), base) => {
                let record: LockRecord = decode(&self.paths.lock, &data)?;
                Ok((self.classify_lock(OP, &record, meta)?, base, Some(record)))
            }
        }
    }

    /// Sets the token base while holding the lock: in one multi through the lock's session,
    /// `check(lock, lock_version)` then `create(token-base)` (`expected == None`) or
    /// `setData(token-base, expected)`. The base must not go down; the caller computes it so
    /// that `lock_czxid + base` is above every token it knows of.
    pub async fn set_token_base(
        &self,
        record: &TokenBase,
        lock_czxid: u64,
        lock_version: i32,
        expected: Option<(u64, i32)>,
    ) -> Result<FencingToken, ElectionError> {
        const OP: &str = "set the token base";
        if let Some((current, _)) = expected {
            if record.base < current {
                return Err(ElectionError::InvalidArgument(format!(
                    "the token base may only go up (from {current} to {})",
                    record.base
                )));
            }
        }
        let token = lock_czxid
            .checked_add(record.base)
            .map(FencingToken)
            .ok_or_else(|| ElectionError::InvalidArgument(format!("token base {} overflows", record.base)))?;
        self.confirm_holding(OP, token, lock_version, |meta| meta.czxid == lock_czxid).await?;
        let data = encode(record)?;
        let mut writer = self.client.new_multi_writer();
        let persistent = self.options(zk::CreateMode::Persistent);
        let staged = writer.add_check_version(&self.paths.lock, lock_version).and_then(|()| match expected {
            Some((_, version)) => writer.add_set_data(&self.paths.token_base, &data, Some(version)),
            None => writer.add_create(&self.paths.token_base, &data, &persistent),
        });
        staged.map_err(|source| ElectionError::Coordinator { op: OP, source })?;
        let sent = Instant::now();
        let committed = writer.commit();
        let changed = || ElectionError::TokenBaseChanged { expected: expected.map(|(_, v)| v) };
        self.finish(self.deadline(), sent, committed)
            .await
            .map_err(|f| self.multi_failure(OP, f, token, lock_version, changed))?;
        tracing::info!(base = record.base, floor = %record.floor, %token, "set the token base");
        Ok(token)
    }

    /// The lock's record and identity, or `None` if it is free (for building fencing targets).
    pub async fn read_lock_record(&self) -> Result<Option<(LockRecord, LockMeta)>, ElectionError> {
        const OP: &str = "read the lock record";
        match self.read_lock_raw(OP).await? {
            None => Ok(None),
            Some((data, meta)) => Ok(Some((decode(&self.paths.lock, &data)?, meta))),
        }
    }

    /// Arms a one-shot watch on the lock znode: it fires when the lock is created, changed or
    /// deleted, or when our session ends. Re-arm after each firing.
    pub async fn watch_lock(&self) -> Result<LockWatch, ElectionError> {
        const OP: &str = "watch the lock";
        let sent = Instant::now();
        let armed = self.client.check_and_watch_stat(&self.paths.lock);
        let (_, watcher) = self.finish(self.deadline(), sent, armed).await.map_err(|f| self.failure(OP, f))?;
        Ok(spawn_watch(watcher))
    }

    /// Races for the lock with `record` as its data.
    ///
    /// On `NodeExists` reads who holds it. After a lost connection or a timeout on the create,
    /// ZooKeeper may have applied it, so this reads the lock back (on the same session, hence
    /// after the create) and decides by `ephemeralOwner`. A result whose session has ended by
    /// the time it is read is [`ElectionError::StaleSession`], never a win. Takes at most
    /// `2 × op_timeout` per attempt, and makes at most three attempts.
    pub async fn try_acquire(&self, record: &LockRecord) -> Result<Acquired, ElectionError> {
        const OP: &str = "acquire the lock";
        if record.node_id != self.cfg.node_id {
            return Err(ElectionError::InvalidArgument(format!(
                "lock record names {:?} but this handle is node {:?}",
                record.node_id, self.cfg.node_id
            )));
        }
        let data = encode(record)?;
        for _ in 0..ACQUIRE_ATTEMPTS {
            let sent = Instant::now();
            let created = self.client.create(&self.paths.lock, &data, &self.options(zk::CreateMode::Ephemeral));
            match self.finish(self.deadline(), sent, created).await {
                // Created: the read-back below gives the token (czxid plus the base read with it).
                Ok(_) => {}
                Err(Failure::Reply(zk::Error::NodeExists)) => {}
                Err(Failure::Reply(zk::Error::ConnectionLoss)) | Err(Failure::TimedOut(_)) => {
                    tracing::info!("lock create outcome unknown; reading the lock back");
                }
                Err(f) => return Err(self.failure(OP, f)),
            }
            let Some((data, meta)) = self.read_lock_raw(OP).await? else {
                // The create was not applied (the read is ordered after it on this session) and
                // any holder has released since: race again.
                continue;
            };
            if meta.owner_session == self.session_id {
                self.ensure_live(OP)?;
                tracing::info!(token = %meta.token, czxid = meta.czxid, "won the lock");
                return Ok(Acquired::Won { token: meta.token });
            }
            let holder: LockRecord = decode(&self.paths.lock, &data)?;
            return Ok(Acquired::HeldBy { node_id: holder.node_id, token: meta.token });
        }
        Err(ElectionError::LockChurn { attempts: ACQUIRE_ATTEMPTS })
    }

    /// Deletes the lock if this session holds it with `token`, conditioned on the version read.
    /// Someone else's lock, or another acquisition's, is left alone.
    pub async fn release(&self, token: FencingToken) -> Result<Released, ElectionError> {
        const OP: &str = "release the lock";
        let Some((_, meta)) = self.read_lock_raw(OP).await? else {
            return Ok(Released::AlreadyFree);
        };
        if meta.owner_session != self.session_id || meta.token != token {
            return Ok(Released::NotOurs { token: meta.token, owner_session: meta.owner_session });
        }
        let sent = Instant::now();
        let deleted = self.client.delete(&self.paths.lock, Some(meta.version));
        match self.finish(self.deadline(), sent, deleted).await {
            Ok(()) => {
                tracing::info!(%token, "released the lock");
                Ok(Released::Deleted)
            }
            Err(Failure::Reply(zk::Error::NoNode)) => Ok(Released::AlreadyFree),
            Err(f) => Err(self.failure(OP, f)),
        }
    }

    /// The breadcrumb and its version.
    pub async fn read_breadcrumb(&self) -> Result<BreadcrumbView, ElectionError> {
        const OP: &str = "read the breadcrumb";
        let sent = Instant::now();
        let read = self.client.get_data(&self.paths.breadcrumb);
        match self.finish(self.deadline(), sent, read).await {
            Ok((data, stat)) => {
                Ok(BreadcrumbView::Present { crumb: decode(&self.paths.breadcrumb, &data)?, version: stat.version })
            }
            Err(Failure::Reply(zk::Error::NoNode)) => Ok(BreadcrumbView::Missing),
            Err(f) => Err(self.failure(OP, f)),
        }
    }

    /// Writes our breadcrumb while holding the lock, returning its new version.
    ///
    /// One multi through this (the lock's) session: `check(lock, lock_version)`, then
    /// `setData(breadcrumb, expected)` or, with `expected == None`, `create(breadcrumb)`. It fails
    /// as a whole with [`ElectionError::LockNotHeld`] if the lock is gone or changed, and with
    /// [`ElectionError::BreadcrumbChanged`] if someone else moved the breadcrumb.
    ///
    /// A version check alone cannot tell our lock from a new one at the same version, so the lock
    /// is first read to confirm this session holds it with `crumb.token`; while our session
    /// lives, only an explicit delete by a third party can replace it between the two calls.
    pub async fn write_breadcrumb(
        &self,
        crumb: &Breadcrumb,
        lock_version: i32,
        expected: Option<i32>,
    ) -> Result<i32, ElectionError> {
        const OP: &str = "write the breadcrumb";
        let data = encode(crumb)?;
        self.confirm_holder(OP, crumb.token, lock_version).await?;
        let mut writer = self.client.new_multi_writer();
        let persistent = self.options(zk::CreateMode::Persistent);
        let staged = writer.add_check_version(&self.paths.lock, lock_version).and_then(|()| match expected {
            Some(version) => writer.add_set_data(&self.paths.breadcrumb, &data, Some(version)),
            None => writer.add_create(&self.paths.breadcrumb, &data, &persistent),
        });
        staged.map_err(|source| ElectionError::Coordinator { op: OP, source })?;
        let sent = Instant::now();
        let committed = writer.commit();
        let results = self.finish(self.deadline(), sent, committed).await.map_err(|f| {
            self.multi_failure(OP, f, crumb.token, lock_version, || ElectionError::BreadcrumbChanged { expected })
        })?;
        // The write is applied whatever happened to the session since: report it.
        match results.get(1) {
            Some(zk::MultiWriteResult::SetData { stat }) => Ok(stat.version),
            Some(zk::MultiWriteResult::Create { .. }) => Ok(0),
            other => {
                Err(ElectionError::UnexpectedReply { op: OP, detail: format!("{other:?} as the breadcrumb write") })
            }
        }
    }

    /// Steps down cleanly: in one multi through the lock's session, `check(lock, lock_version)`,
    /// `setData(breadcrumb, crumb, breadcrumb_version)` and `delete(lock, lock_version)`. Either
    /// the breadcrumb says "clean" and the lock is free, or nothing changed.
    ///
    /// `crumb` must be marked clean and carry `lock_token`; the lock is first read to confirm
    /// this session holds it with that token (see [`Coordination::write_breadcrumb`]).
    pub async fn step_down_cleanly(
        &self,
        crumb: &Breadcrumb,
        lock_token: FencingToken,
        lock_version: i32,
        breadcrumb_version: i32,
    ) -> Result<(), ElectionError> {
        const OP: &str = "step down cleanly";
        if !crumb.clean || crumb.token != lock_token {
            return Err(ElectionError::InvalidArgument(format!(
                "a clean step-down needs a breadcrumb marked clean with the lock's token {lock_token} (got clean={}, token={})",
                crumb.clean, crumb.token
            )));
        }
        let data = encode(crumb)?;
        self.confirm_holder(OP, lock_token, lock_version).await?;
        let mut writer = self.client.new_multi_writer();
        let staged = writer
            .add_check_version(&self.paths.lock, lock_version)
            .and_then(|()| writer.add_set_data(&self.paths.breadcrumb, &data, Some(breadcrumb_version)))
            .and_then(|()| writer.add_delete(&self.paths.lock, Some(lock_version)));
        staged.map_err(|source| ElectionError::Coordinator { op: OP, source })?;
        let sent = Instant::now();
        let committed = writer.commit();
        self.finish(self.deadline(), sent, committed).await.map_err(|f| {
            self.multi_failure(OP, f, lock_token, lock_version, || ElectionError::BreadcrumbChanged {
                expected: Some(breadcrumb_version),
            })
        })?;
        tracing::info!(token = %lock_token, "stepped down cleanly");
        Ok(())
    }

    /// Closes the session, which deletes its ephemerals (lock, membership) at once, and waits up
    /// to `op_timeout` for the ensemble to confirm.
    pub async fn close(self) -> Result<(), ElectionError> {
        let Coordination { client, cfg, session_id, .. } = self;
        let mut states = client.state_watcher();
        // The library sends CloseSession when its last client handle is dropped.
        drop(client);
        let closed = async {
            while !states.peek_state().is_terminated() {
                states.changed().await;
            }
        };
        tokio::time::timeout(cfg.op_timeout, closed)
            .await
            .map_err(|_| ElectionError::Timeout { op: "close the session", after: cfg.op_timeout })?;
        tracing::info!(session = %format_args!("{session_id:#x}"), "coordinator session closed");
        Ok(())
    }

    /// Reads the lock's data and identity, `None` if it is free.
    async fn read_lock_raw(&self, op: &'static str) -> Result<Option<(Vec<u8>, LockMeta)>, ElectionError> {
        Ok(self.read_lock_and_base(op).await?.0)
    }

    /// Reads the lock and the token base in one multi-read, so the token is computed from a
    /// base that was current when the lock was read.
    async fn read_lock_and_base(
        &self,
        op: &'static str,
    ) -> Result<(Option<(Vec<u8>, LockMeta)>, TokenBaseView), ElectionError> {
        let mut reader = self.client.new_multi_reader();
        reader
            .add_get_data(&self.paths.lock)
            .and_then(|()| reader.add_get_data(&self.paths.token_base))
            .map_err(|source| ElectionError::Coordinator { op, source })?;
        let sent = Instant::now();
        let read = reader.commit();
        let mut results = self.finish(self.deadline(), sent, read).await.map_err(|f| self.failure(op, f))?.into_iter();
        let (lock, base) = (results.next(), results.next());
        let base = match base {
            Some(zk::MultiReadResult::Data { data, stat }) => {
                let record: TokenBase = decode(&self.paths.token_base, &data)?;
                TokenBaseView::Present { base: record.base, version: stat.version }
            }
            Some(zk::MultiReadResult::Error { err: zk::Error::NoNode }) => TokenBaseView::Missing,
            Some(zk::MultiReadResult::Error { err }) => return Err(self.zk_error(op, err)),
            other => {
                return Err(ElectionError::UnexpectedReply { op, detail: format!("{other:?} for the token base") })
            }
        };
        let lock = match lock {
            Some(zk::MultiReadResult::Data { data, stat }) => {
                let czxid = token_of(op, stat.czxid)?.0;
                let token = czxid.checked_add(base.base()).map(FencingToken).ok_or_else(|| {
                    ElectionError::UnexpectedReply { op, detail: format!("czxid {czxid} plus token base overflows") }
                })?;
                Some((data, LockMeta { token, czxid, version: stat.version, owner_session: stat.ephemeral_owner }))
            }
            Some(zk::MultiReadResult::Error { err: zk::Error::NoNode }) => None,
            Some(zk::MultiReadResult::Error { err }) => return Err(self.zk_error(op, err)),
            other => return Err(ElectionError::UnexpectedReply { op, detail: format!("{other:?} for the lock") }),
        };
        Ok((lock, base))
    }

    fn classify_lock(&self, op: &'static str, holder: &LockRecord, meta: LockMeta) -> Result<LockView, ElectionError> {
        if meta.owner_session == self.session_id {
            self.ensure_live(op)?;
            return Ok(LockView::Ours { token: meta.token, version: meta.version });
        }
        if holder.node_id == self.cfg.node_id {
            Ok(LockView::OursFromOldSession { token: meta.token })
        } else {
            Ok(LockView::Peer { node_id: holder.node_id.clone(), token: meta.token })
        }
    }

    /// Confirms this session holds the lock with `token` at `version`.
    async fn confirm_holder(&self, op: &'static str, token: FencingToken, version: i32) -> Result<(), ElectionError> {
        self.confirm_holding(op, token, version, |meta| meta.token == token).await
    }

    /// Confirms this session holds the lock at `version` and `same` accepts it (by token, or by
    /// czxid when the base is about to change); `token` only names it in the error.
    async fn confirm_holding(
        &self,
        op: &'static str,
        token: FencingToken,
        version: i32,
        same: impl FnOnce(&LockMeta) -> bool,
    ) -> Result<(), ElectionError> {
        match self.read_lock_raw(op).await? {
            Some((_, meta)) if meta.owner_session == self.session_id && meta.version == version && same(&meta) => {
                self.ensure_live(op)
            }
            _ => Err(ElectionError::LockNotHeld { op, token, version }),
        }
    }

    /// Maps a failed check-lock-then-write multi. Index 0 is always the lock check; index 1 the
    /// write the multi is for (`changed` says what its conflict means); a later index is the
    /// lock delete.
    fn multi_failure(
        &self,
        op: &'static str,
        f: Failure<zk::MultiWriteError>,
        token: FencingToken,
        version: i32,
        changed: impl FnOnce() -> ElectionError,
    ) -> ElectionError {
        match f {
            Failure::TimedOut(after) => ElectionError::Timeout { op, after },
            Failure::Reply(zk::MultiWriteError::RequestFailed { source }) => self.zk_error(op, source),
            Failure::Reply(zk::MultiWriteError::OperationFailed { index, source }) => match (index, source) {
                (0, zk::Error::NoNode | zk::Error::BadVersion) => ElectionError::LockNotHeld { op, token, version },
                (1, zk::Error::NoNode | zk::Error::BadVersion | zk::Error::NodeExists) => changed(),
                (2, zk::Error::NoNode | zk::Error::BadVersion) => ElectionError::LockNotHeld { op, token, version },
                (_, source) => self.zk_error(op, source),
            },
        }
    }

    /// How znodes of `mode` are created: with the cluster's ACL when this handle holds a digest
    /// credential, open otherwise.
    fn options(&self, mode: zk::CreateMode) -> zk::CreateOptions<'static> {
        if self.cfg.digest.is_some() {
            mode.with_acls(zk::Acls::new(&SECURED))
        } else {
            mode.with_acls(zk::Acls::anyone_all())
        }
    }

    /// The deadline of a call issued now.
    fn deadline(&self) -> Instant {
        Instant::now() + self.cfg.op_timeout
    }

    /// Awaits a call issued at `sent` until `deadline`.
    async fn finish<T, E>(
        &self,
        deadline: Instant,
        sent: Instant,
        call: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Failure<E>> {
        match tokio::time::timeout_at(deadline.into(), call).await {
            Err(_) => Err(Failure::TimedOut(deadline.saturating_duration_since(sent))),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(Failure::Reply(e)),
        }
    }

    /// A reply is only worth acting on while its session lives. A handle has exactly one
    /// session, so a reply is stale when that session has ended by the time it is read.
    fn ensure_live(&self, op: &'static str) -> Result<(), ElectionError> {
        if self.client.state().is_terminated() {
            return Err(ElectionError::StaleSession { op, session_id: self.session_id });
        }
        Ok(())
    }

    fn failure(&self, op: &'static str, f: Failure<zk::Error>) -> ElectionError {
        match f {
            Failure::TimedOut(after) => ElectionError::Timeout { op, after },
            Failure::Reply(e) => self.zk_error(op, e),
        }
    }

    fn zk_error(&self, op: &'static str, e: zk::Error) -> ElectionError {
        match e {
            zk::Error::ConnectionLoss => ElectionError::ConnectionLoss { op },
            zk::Error::SessionExpired | zk::Error::SessionMoved | zk::Error::ClientClosed => {
                ElectionError::SessionExpired { session_id: self.session_id }
            }
            zk::Error::AuthFailed => ElectionError::AuthFailed,
            zk::Error::NoAuth => ElectionError::NoAuth { op },
            source => ElectionError::Coordinator { op, source },
        }
    }
}

/// Makes a session asking for [`IdleLimitPlan::asked`], with its idle limit, and the digest
/// credential if there is one; within the asked timeout plus `op_timeout`.
async fn open_session(cfg: &CoordinationConfig, plan: IdleLimitPlan) -> Result<zk::Client, ElectionError> {
    let mut connector =
        zk::Client::connector().with_session_timeout(plan.asked()).with_connection_timeout(plan.idle_limit());
    if let Some(digest) = &cfg.digest {
        // Given to the connector, the credential is re-sent on every reconnection.
        connector = connector.with_auth("digest", digest.as_bytes());
    }
    let limit = plan.asked() + cfg.op_timeout;
    match tokio::time::timeout(limit, connector.connect(&cfg.connect)).await {
        Err(_) => Err(ElectionError::ConnectTimeout { connect: cfg.connect.clone(), after: limit }),
        Ok(Err(zk::Error::AuthFailed)) => Err(ElectionError::AuthFailed),
        Ok(Err(source)) => Err(ElectionError::Connect { connect: cfg.connect.clone(), source }),
        Ok(Ok(client)) => Ok(client),
    }
}

/// Closes a session that holds nothing, waiting up to `limit` for the ensemble to confirm (one
/// that does not confirm expires on its own, with nothing to lose).
pub(crate) async fn close_client(client: zk::Client, limit: Duration) {
    let mut states = client.state_watcher();
    // The library sends CloseSession when its last client handle is dropped.
    drop(client);
    let closed = async {
        while !states.peek_state().is_terminated() {
            states.changed().await;
        }
    };
    let _ = tokio::time::timeout(limit, closed).await;
}

/// Runs a one-shot watcher in its own task, so that the library's internal `unwrap` on a
/// vanished watch channel can only end that task, never the caller.
fn spawn_watch(watcher: zk::OneshotWatcher) -> LockWatch {
    LockWatch { task: Some(tokio::spawn(watcher.changed())), fired: None }
}

/// The fencing token of a znode created at `czxid`.
fn token_of(op: &'static str, czxid: i64) -> Result<FencingToken, ElectionError> {
    match u64::try_from(czxid) {
        Ok(z) if z > 0 => Ok(FencingToken(z)),
        _ => Err(ElectionError::UnexpectedReply { op, detail: format!("the lock has czxid {czxid}") }),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ElectionError> {
    serde_json::to_vec(value).map_err(ElectionError::Encode)
}

fn decode<T: DeserializeOwned>(path: &str, data: &[u8]) -> Result<T, ElectionError> {
    serde_json::from_slice(data).map_err(|source| ElectionError::Corrupt { path: path.to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> CoordinationConfig {
        CoordinationConfig {
            connect: "127.0.0.1:2181,127.0.0.1:2182".into(),
            cluster: "demo".into(),
            node_id: "node-1".into(),
            session_timeout: Duration::from_secs(6),
            op_timeout: Duration::from_secs(2),
            digest: Some("referee:s3cret".into()),
        }
    }

    #[test]
    fn accepts_sane_settings_and_hides_the_password() {
        assert!(cfg().validate().is_ok());
        let shown = format!("{:?}", cfg());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("referee:<redacted>"), "{shown}");
    }

    #[test]
    fn refuses_bad_names_timings_and_credentials() {
        type Change = fn(&mut CoordinationConfig);
        let cases: [(&str, Change); 8] = [
            ("empty connect", |c| c.connect = String::new()),
            ("empty host", |c| c.connect = "a:1,,b:2".into()),
            ("slash in cluster", |c| c.cluster = "a/b".into()),
            ("dot-dot node", |c| c.node_id = "..".into()),
            ("zero op timeout", |c| c.op_timeout = Duration::ZERO),
            ("op timeout not below session", |c| c.op_timeout = c.session_timeout),
            ("digest without user", |c| c.digest = Some(":pw".into())),
            ("digest without colon", |c| c.digest = Some("user".into())),
        ];
        for (what, change) in cases {
            let mut c = cfg();
            change(&mut c);
            assert!(matches!(c.validate(), Err(ElectionError::Config(_))), "{what} was accepted");
        }
    }

    #[test]
    fn a_frozen_server_is_given_up_twice_within_the_lease() {
        let ms = Duration::from_millis;
        // The library tries a silent server a second time before the next one: both waits
        // must fit in the lease, with room for an election and a round trip on a live server.
        let rule = crate::lease::LeaseRule { staleness: ms(100), demote_deadline: ms(500), margin: ms(250) };
        for session in [ms(2500), ms(4000), ms(10_000)] {
            let lease = rule.budget(session).expect("the lease is not empty");
            let twice = 2 * connection_idle_limit(session);
            assert!(twice + ms(500) <= lease, "session {session:?}: twice {twice:?} leaves too little of {lease:?}");
        }
        assert_eq!(connection_idle_limit(ms(2500)), ms(500));
        assert_eq!(connection_idle_limit(ms(100)), ms(50), "never below 50 ms");
    }

    #[test]
    fn a_frozen_server_is_given_up_twice_within_the_lease_of_a_lower_grant() {
        let ms = Duration::from_millis;
        // 4 s asked of servers whose maxSessionTimeout is 1.5 s, with the lease's defaults and
        // no staleness: each answered request buys 750 ms. Both waits on a frozen server and a
        // round trip on a live one must fit in it.
        let rule = crate::lease::LeaseRule { staleness: ms(0), demote_deadline: ms(500), margin: ms(250) };
        let grant = |asked: Duration| asked.clamp(ms(400), ms(1500));
        // The grant itself is lower, or a survey of the servers finds one that would grant less
        // on a reconnection (the lease counts on the lowest): the same either way.
        for first_counted in [grant(ms(4000)), ms(1500)] {
            let mut plan = IdleLimitPlan::new(ms(4000), ms(800));
            let mut sessions = 1;
            let mut counted = first_counted;
            while plan.ask_again(counted).is_some() {
                sessions += 1;
                counted = grant(plan.asked());
            }
            let lease = rule.budget(counted).expect("the lease is not empty");
            let twice = 2 * plan.idle_limit();
            assert!(
                twice + ms(100) <= lease,
                "asked {:?}, the lease counts on {counted:?}: twice the idle limit in effect, {twice:?}, leaves no \
                 round trip in the lease of {lease:?}",
                plan.asked()
            );
            assert_eq!(plan.idle_limit(), connection_idle_limit(counted), "a fifth of what the lease counts on");
            assert_eq!(sessions, 2, "the first session is closed and the second kept");
        }
    }

    #[test]
    fn a_new_session_is_made_again_at_most_a_few_times_each_asking_less() {
        let ms = Duration::from_millis;
        // Every reconnection lands on a server granting less: the asks go down, and stop after
        // MAX_SESSION_ASKS sessions whatever the coordinator does.
        let mut plan = IdleLimitPlan::new(ms(10_000), ms(500));
        let mut asked = vec![plan.asked()];
        for counted in [ms(6000), ms(4000), ms(3000), ms(2000), ms(1500)] {
            if let Some(next) = plan.ask_again(counted) {
                assert_eq!(next, plan.asked());
                asked.push(next);
            }
        }
        assert_eq!(asked, [ms(10_000), ms(6000), ms(4000), ms(3000)]);
        assert_eq!(asked.len(), MAX_SESSION_ASKS);
        // The library keeps the idle limit it was given only up to three fifths of the grant.
        assert_eq!(idle_limit_in_force(ms(600), ms(3000)), ms(600));
        assert_eq!(idle_limit_in_force(ms(2000), ms(1500)), ms(600));
        // A grant at or above the request, or whose fifth is no shorter, keeps the session.
        let mut plan = IdleLimitPlan::new(ms(2500), ms(500));
        assert_eq!(plan.ask_again(ms(2500)), None);
        assert_eq!(
            plan.ask_again(ms(4000)),
            None,
            "a grant above the request (a raised minimum) leaves a shorter idle limit than a fifth of it"
        );
        let mut tiny = IdleLimitPlan::new(ms(240), ms(100));
        assert_eq!(tiny.ask_again(ms(200)), None, "both are at the 50 ms floor");
        // Never at or below the op timeout: those answers would come too late to count.
        let mut plan = IdleLimitPlan::new(ms(4000), ms(800));
        assert_eq!(plan.ask_again(ms(800)), None);
        assert_eq!(plan.ask_again(ms(900)), Some(ms(900)));
    }

    #[test]
    fn a_chroot_follows_the_last_server_and_is_a_plain_path() {
        assert_eq!(split_chroot("a:1,b:2/ha/prod"), ("a:1,b:2", Some("/ha/prod")));
        assert_eq!(split_chroot("a:1,b:2"), ("a:1,b:2", None));
        for good in ["a:1", "a:1,b:2/ha", "a:1/ha/prod-1.x_y"] {
            assert_eq!(connect_string_problem(good), None, "{good}");
        }
        for (bad, says) in [
            ("", "is empty"),
            ("a:1,,b:2", "\"\""),
            ("a:1/ha,b:2", "not after the last server"),
            ("a:1/", "the ensemble's root"),
            ("a:1/ha/", "ends with"),
            ("a:1/ha//b", "empty"),
            ("a:1/ha/..", "'..'"),
            ("a:1/zookeeper/x", "ZooKeeper's own"),
            ("a:1/h a", "space"),
        ] {
            let problem = connect_string_problem(bad).unwrap_or_else(|| panic!("{bad:?} was accepted"));
            assert!(problem.contains(says), "{bad:?}: {problem}");
        }
        let mut c = cfg();
        c.connect = "a:1,b:2/ha/".into();
        assert!(matches!(c.validate(), Err(ElectionError::Config(e)) if e.contains("chroot")));
    }

    #[test]
    fn paths_live_under_the_cluster() {
        let p = Paths::new("demo", "node-1");
        assert_eq!(p.cluster, "/referee/demo");
        assert_eq!(p.lock, "/referee/demo/lock");
        assert_eq!(p.breadcrumb, "/referee/demo/breadcrumb");
        assert_eq!(p.member, "/referee/demo/members/node-1");
        assert_eq!(p.handover, "/referee/demo/handover");
    }

    #[test]
    fn session_states_map_onto_views() {
        use zk::SessionState as S;
        assert_eq!(session_view(S::SyncConnected, 7), SessionView::Connected { session_id: 7 });
        assert_eq!(session_view(S::ConnectedReadOnly, 7), SessionView::Connected { session_id: 7 });
        assert_eq!(session_view(S::Disconnected, 7), SessionView::Disconnected { session_id: 7 });
        for s in [S::Expired, S::Closed, S::AuthFailed] {
            assert_eq!(session_view(s, 7), SessionView::Expired);
        }
    }

    #[test]
    fn tokens_come_only_from_positive_czxids() {
        assert_eq!(token_of("t", 42).unwrap(), FencingToken(42));
        assert!(token_of("t", 0).is_err());
        assert!(token_of("t", -1).is_err());
    }

    /// The driver shares one handle between tasks and spawns its calls.
    #[test]
    fn handles_and_their_calls_can_cross_tasks() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>(_: &T) {}
        send_sync::<Coordination>();
        send_sync::<ElectionError>();
        #[allow(dead_code)]
        fn calls(
            c: &Coordination,
            r: &LockRecord,
            m: &Member,
            b: &Breadcrumb,
            w: &mut LockWatch,
            s: &mut SessionWatch,
        ) {
            send(&c.register_member(m));
            send(&c.members());
            send(&c.read_lock());
            send(&c.read_lock_record());
            send(&c.watch_lock());
            send(&c.try_acquire(r));
            send(&c.release(FencingToken(1)));
            send(&c.read_breadcrumb());
            send(&c.write_breadcrumb(b, 0, None));
            send(&c.step_down_cleanly(b, FencingToken(1), 0, 0));
            send(&w.changed());
            send(&s.changed());
        }
        #[allow(dead_code)]
        fn lifecycle(cfg: CoordinationConfig, c: Coordination) {
            send(&Coordination::connect(cfg));
            send(&c.close());
        }
    }

    #[test]
    fn errors_say_how_to_recover() {
        assert_eq!(
            ElectionError::DuplicateNodeId { node_id: "n".into(), owner_session: 1 }.recovery(),
            Recovery::Fatal
        );
        assert_eq!(ElectionError::StaleSession { op: "x", session_id: 1 }.recovery(), Recovery::Reconnect);
        assert_eq!(ElectionError::BreadcrumbChanged { expected: Some(1) }.recovery(), Recovery::Reread);
        assert_eq!(ElectionError::ConnectionLoss { op: "x" }.recovery(), Recovery::Retry);
    }
}
