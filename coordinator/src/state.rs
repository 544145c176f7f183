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

use tokio::sync::mpsc;

use crate::proto::{perms, Id, SessionId, Zxid};
use crate::request::encode_notification;
use crate::session::SessionTracker;
use crate::tree::{check_acl, DataTree, Effects};
use crate::txn::{Txn, TxnOutcome};
use crate::watch::{ConnId, WatchRegistry};

/// What the server pushes to a connection outside the request/reply flow.
#[derive(Debug)]
pub enum Outbound {
    /// An encoded watch notification.
    Notification(Vec<u8>),
    /// Close the connection (its session was closed or taken over by a newer connection).
    Close(&'static str),
}

/// A live connection as the shared state knows it.
#[derive(Debug)]
pub struct ConnEntry {
    /// Its session.
    pub session: SessionId,
    /// The identities it has authenticated as, for filtering notifications by READ.
    pub auth: Arc<[Id]>,
    /// Where notifications go.
    pub tx: mpsc::UnboundedSender<Outbound>,
    /// The client's address.
    pub peer: std::net::SocketAddr,
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
}

impl Default for ServerState {
    fn default() -> Self {
        ServerState {
            tree: DataTree::new(),
            watches: WatchRegistry::new(),
            conns: HashMap::new(),
            tracker: SessionTracker::new(),
            counters: Counters::default(),
            started: Instant::now(),
        }
    }
}

impl ServerState {
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
                        let _ = c.tx.send(Outbound::Notification(frame.clone()));
                    }
                }
            }
        }
        if let Some(id) = fx.opened {
            if let Some(s) = self.tree.session(id) {
                self.tracker.add(id, Duration::from_millis(s.timeout_ms.max(0) as u64), now);
            }
        }
        if let Some(id) = fx.closed {
            self.tracker.remove(id);
            for c in self.conns.values().filter(|c| c.session == id) {
                let _ = c.tx.send(Outbound::Close("session closed"));
            }
        }
    }

    /// Replaces the tree (from a snapshot) and rebuilds session liveness from it, giving every
    /// session a full timeout from now.
    pub fn install_tree(&mut self, tree: DataTree, now: Instant) {
        self.tree = tree;
        self.tracker = SessionTracker::new();
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
