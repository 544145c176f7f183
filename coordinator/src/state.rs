//! The server's shared state: the replicated data tree plus what only this server knows (its
//! connections, their watches, session liveness), behind one lock.
//!
//! One lock, because applying a transaction and firing its watches must be a single step as seen
//! by readers: a read that registers a watch either sees the state before a write (and its watch
//! fires for that write) or after it (and needs no notification). Critical sections are short
//! and never await.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::outbox::{CloseReason, Outbox};
use crate::proto::{perms, Id, SessionId, Zxid};
use crate::request::encode_notification;
use crate::session::SessionTracker;
use crate::staleness::LeaderContact;
use crate::tree::{check_acl, DataTree, Effects};
use crate::txn::{Txn, TxnOutcome};
use crate::watch::{ConnId, WatchRegistry};
use tracing::debug;

/// A live connection as the shared state knows it.
#[derive(Debug)]
pub struct ConnEntry {
    /// Its session.
    pub session: SessionId,
    /// The identities it has authenticated as, for filtering notifications by READ.
    pub auth: Arc<[Id]>,
    /// Where notifications wait for the connection to send them, and how it is told to close.
    pub outbox: Arc<Outbox>,
    /// The client's address.
    pub peer: std::net::SocketAddr,
    /// Per-connection statistics, for `cons`.
    pub stats: ConnStats,
}

/// Per-connection statistics reported by `cons` and `stat`.
#[derive(Debug, Clone, Default)]
pub struct ConnStats {
    /// Packets received.
    pub received: u64,
    /// Packets sent.
    pub sent: u64,
    /// When the connection was established, ms since the epoch.
    pub established_ms: i64,
    /// Negotiated session timeout.
    pub timeout_ms: i32,
    /// Short name of the last operation answered (ZooKeeper's `lop`).
    pub last_op: &'static str,
    /// Last client xid seen.
    pub last_cxid: i32,
    /// Zxid of the last reply.
    pub last_zxid: i64,
    /// When the last reply was sent, ms since the epoch.
    pub last_response_ms: i64,
    /// Latency of the last reply, ms.
    pub last_latency_ms: u64,
    /// Latency statistics of this connection.
    pub latency: Latency,
    /// Requests read and not yet answered (`cons`'s `queued`, summed in `mntr`'s
    /// `zk_outstanding_requests` and `srvr`'s `Outstanding`).
    pub outstanding: u64,
    /// The server has stopped reading from the connection: `max_outstanding_requests` of its
    /// requests wait for their replies.
    pub throttled: bool,
}

/// Request latency statistics in ms (min/avg/max as ZooKeeper reports them).
#[derive(Debug, Clone, Default)]
pub struct Latency {
    /// Requests counted.
    pub count: u64,
    /// Sum of latencies.
    pub total_ms: u64,
    /// Smallest latency.
    pub min_ms: u64,
    /// Largest latency.
    pub max_ms: u64,
}

impl Latency {
    /// Adds one request's latency.
    pub fn record(&mut self, ms: u64) {
        self.min_ms = if self.count == 0 { ms } else { self.min_ms.min(ms) };
        self.max_ms = self.max_ms.max(ms);
        self.total_ms = self.total_ms.saturating_add(ms);
        self.count = self.count.saturating_add(1);
    }

    /// Adds the requests another record counted.
    pub fn merge(&mut self, other: &Latency) {
        if other.count == 0 {
            return;
        }
        self.min_ms = if self.count == 0 { other.min_ms } else { self.min_ms.min(other.min_ms) };
        self.max_ms = self.max_ms.max(other.max_ms);
        self.total_ms = self.total_ms.saturating_add(other.total_ms);
        self.count = self.count.saturating_add(other.count);
    }

    /// Mean latency, 0 when nothing was counted.
    pub fn avg_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.total_ms as f64 / self.count as f64
        }
    }
}

/// Counters reported by the four-letter words and metrics.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Packets received from clients.
    pub packets_received: u64,
    /// Packets sent to clients.
    pub packets_sent: u64,
    /// Connections accepted since start.
    pub connections_accepted: u64,
    /// Connections refused by the per-address limit.
    pub connections_rejected: u64,
    /// Failed auth packets.
    pub auth_failed: u64,
    /// Request latency over all connections.
    pub latency: Latency,
    /// Pre-votes this server asked for as a voter whose leader had gone silent (see
    /// [`crate::staleness`]), counted when the answers are in.
    pub pre_votes_asked: u64,
    /// Of those, the ones no quorum granted.
    pub pre_votes_refused: u64,
    /// Elections this server called, each after a quorum granted its pre-vote.
    pub elections_called: u64,
}

impl ServerState {
    /// Requests read from every connection and not yet answered.
    pub fn outstanding_requests(&self) -> u64 {
        self.conns.values().map(|c| c.stats.outstanding).fold(0, u64::saturating_add)
    }
}

/// Everything the server shares between its Raft state machine and its connections.
#[derive(Debug)]
pub struct ServerState {
    /// The replicated tree and sessions.
    pub tree: DataTree,
    /// Watches of this server's connections.
    pub watches: WatchRegistry,
    /// This server's connections.
    pub conns: HashMap<ConnId, ConnEntry>,
    /// Liveness of the sessions.
    pub tracker: SessionTracker,
    /// Counters.
    pub counters: Counters,
    /// When the server started.
    pub started: Instant,
    /// Open sockets per client address, for the per-address limit.
    pub open_per_address: HashMap<std::net::IpAddr, u32>,
    /// The last proof of contact with a leader (see [`crate::staleness`]).
    pub leader_contact: Arc<LeaderContact>,
    /// When this server, not leading, last sent a liveness report the leader acknowledged:
    /// proof that the leader it follows is the ensemble's (see [`crate::liveness`]).
    pub report_contact: Arc<LeaderContact>,
    /// This server's proof of leadership while it leads (see [`crate::liveness`]).
    pub quorum_proof: Arc<crate::liveness::QuorumProof>,
    /// Set while this server refuses clients for want of contact: why.
    pub refusing_clients: Option<String>,
    /// This server's id in its ensemble (1 alone), for the sessions that move away from it.
    pub server_id: u64,
    /// Where this server's Raft log ends, for pre-votes (see [`crate::staleness`]); `None`
    /// until an ensemble's log is open.
    pub log_end: Option<crate::log::LogReader>,
    /// How this server answers a read index while it leads (see [`crate::read_index`]);
    /// `None` for a server alone, and until an ensemble's peers are set up.
    pub read_index: Option<crate::read_index::ReadIndex>,
}

impl ServerState {
    /// A fresh state; `extended_types` allows TTL nodes, `tick` is the width of the session
    /// expiry buckets (the server's tick).
    pub fn new(extended_types: bool, tick: Duration) -> Self {
        let started = Instant::now();
        let mut tree = DataTree::new();
        tree.set_extended_types(extended_types);
        ServerState {
            tree,
            watches: WatchRegistry::new(),
            conns: HashMap::new(),
            tracker: SessionTracker::new(tick, started),
            counters: Counters::default(),
            started,
            open_per_address: HashMap::new(),
            leader_contact: Arc::default(),
            report_contact: Arc::default(),
            quorum_proof: Arc::default(),
            refusing_clients: None,
            server_id: 1,
            log_end: None,
            read_index: None,
        }
    }

    /// Applies a committed transaction and acts on its effects: notifications go out to the
    /// watching connections (withheld from those without READ on the node), new sessions start
    /// being tracked, closed sessions lose their connections.
    pub fn apply(&mut self, zxid: Zxid, txn: &Txn, now: Instant) -> TxnOutcome {
        let (outcome, fx) = self.tree.apply(zxid, txn);
        self.act_on(fx, now);
        outcome
    }

    fn act_on(&mut self, fx: Effects, now: Instant) {
        for ev in &fx.events {
            let targets = self.watches.trigger(&ev.path, ev.kind);
            if targets.is_empty() {
                continue;
            }
            let frame = encode_notification(ev.kind, &ev.path, ev.zxid);
            for conn in targets {
                if let Some(c) = self.conns.get(&conn) {
                    if check_acl(&ev.acl, perms::READ, &c.auth).is_ok() {
                        c.outbox.push(ev.zxid, frame.clone());
                    }
                }
            }
        }
        if let Some(id) = fx.opened {
            if let Some(s) = self.tree.session(id) {
                self.tracker.add(id, Duration::from_millis(s.timeout_ms.max(0) as u64), now);
            }
        }
        if let Some((id, to)) = fx.moved.filter(|(_, to)| *to != self.server_id) {
            debug!(session = %id, to_server = to, "the session moved to another server: closing its connections here");
            for c in self.conns.values().filter(|c| c.session == id) {
                c.outbox.close(CloseReason::SessionMoved);
            }
        }
        if let Some(id) = fx.closed {
            self.tracker.remove(id);
            for c in self.conns.values().filter(|c| c.session == id) {
                c.outbox.close(CloseReason::SessionClosed);
            }
        }
    }

    /// Replaces the tree (from a snapshot) and rebuilds session liveness from it, giving every
    /// session a full timeout from now. Every client connection is closed
    /// ([`CloseReason::SnapshotInstalled`]): no watch fired for the changes the snapshot
    /// skipped, and a reconnected client's SetWatches fires what it missed.
    pub fn install_tree(&mut self, mut tree: DataTree, now: Instant) {
        if !self.conns.is_empty() {
            debug!(connections = self.conns.len(), "installed a snapshot: closing every client connection");
        }
        for c in self.conns.values() {
            c.outbox.close(CloseReason::SnapshotInstalled);
        }
        tree.set_extended_types(self.tree.extended_types());
        self.tree = tree;
        self.tracker = SessionTracker::new(self.tracker.tick(), self.started);
        let sessions: Vec<(SessionId, i32)> = self.tree.sessions().map(|(id, s)| (id, s.timeout_ms)).collect();
        for (id, timeout) in sessions {
            self.tracker.add(id, Duration::from_millis(timeout.max(0) as u64), now);
        }
    }

    /// Drops a closed connection and its watches.
    pub fn remove_conn(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.watches.remove_conn(conn);
    }
}
