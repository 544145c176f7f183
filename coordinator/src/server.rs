//! The coordinator server: starts replication, accepts client connections, expires sessions.
//!
//! [`Coordinator::start`] brings up the Raft node (a cluster of one voter until the ensemble
//! exists) and waits until it leads; [`Coordinator::serve`] takes an already bound listener and a
//! shutdown future, as a library should, and returns once every connection has stopped.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::BasicNode;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::config::CoordinatorConfig;
use crate::connection::{self, now_ms, Shared};
use crate::proto::SessionId;
use crate::raft::{LoneNetwork, MemLogStore, Raft, StateMachine};
use crate::state::ServerState;
use crate::txn::{Txn, TxnOp};

/// Why the coordinator could not start or run.
#[derive(Debug, Error)]
pub enum CoordinatorError {
    /// The Raft configuration was refused.
    #[error("replication settings refused: {0}")]
    RaftConfig(String),
    /// Replication failed to start or stopped.
    #[error("replication failed: {0}")]
    Raft(String),
    /// The node did not become leader in time.
    #[error("this server did not become leader within {0:?}")]
    NoLeader(Duration),
    /// Socket error on the listener.
    #[error("listener error: {0}")]
    Io(#[from] std::io::Error),
}

/// A running coordinator server.
pub struct Coordinator {
    shared: Arc<Shared>,
}

/// This server's id in the Raft cluster (one voter until the ensemble exists).
const NODE_ID: u64 = 1;

impl Coordinator {
    /// Starts replication and waits until this server leads (immediate for a single voter).
    pub async fn start(config: CoordinatorConfig) -> Result<Self, CoordinatorError> {
        let raft_config = openraft::Config {
            cluster_name: "referee-coordinator".into(),
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
            max_in_snapshot_log_to_keep: 1_000,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| CoordinatorError::RaftConfig(e.to_string()))?);
        let state = Arc::new(Mutex::new(ServerState::new(
            config.extended_types_enabled,
            Duration::from_millis(config.tick_ms),
        )));
        let raft =
            Raft::new(NODE_ID, raft_config, LoneNetwork, MemLogStore::default(), StateMachine::new(state.clone()))
                .await
                .map_err(|e| CoordinatorError::Raft(e.to_string()))?;
        if !raft.is_initialized().await.map_err(|e| CoordinatorError::Raft(e.to_string()))? {
            let members = std::collections::BTreeMap::from([(NODE_ID, BasicNode { addr: config.listen.to_string() })]);
            raft.initialize(members).await.map_err(|e| CoordinatorError::Raft(e.to_string()))?;
        }
        let wait = Duration::from_secs(10);
        raft.wait(Some(wait))
            .state(openraft::ServerState::Leader, "coordinator start")
            .await
            .map_err(|_| CoordinatorError::NoLeader(wait))?;
        Ok(Coordinator { shared: Arc::new(Shared { config: Arc::new(config), raft, state }) })
    }

    /// The shared state, for status reporting.
    pub fn state(&self) -> Arc<Mutex<ServerState>> {
        self.shared.state.clone()
    }

    /// Serves clients on `listener` until `shutdown` completes, then closes every connection,
    /// stops replication and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), CoordinatorError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let local = listener.local_addr()?;
        info!(address = %local, "coordinator serving ZooKeeper clients");
        let mut tasks = JoinSet::new();
        tasks.spawn(expire_sessions(self.shared.clone(), stop_rx.clone()));
        tasks.spawn(reap_containers(self.shared.clone(), stop_rx.clone()));
        let mut next_conn: u64 = 1;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        if !self.admit(peer) {
                            continue;
                        }
                        let id = next_conn;
                        next_conn += 1;
                        tasks.spawn(connection::serve(self.shared.clone(), id, stream, peer, stop_rx.clone()));
                    }
                    // Out of file descriptors and the like: keep serving the connections we have.
                    Err(e) => {
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        info!("coordinator shutting down");
        let _ = stop_tx.send(true);
        let drain = Duration::from_secs(5);
        if tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
            warn!("connections did not close within {drain:?}; aborting them");
            tasks.abort_all();
        }
        let _ = self.shared.raft.shutdown().await;
        Ok(())
    }

    /// Per-address connection limit (ZooKeeper's maxClientCnxns), counted from accept to close.
    fn admit(&self, peer: SocketAddr) -> bool {
        let limit = self.shared.config.max_connections_per_address;
        let mut st = self.shared.lock();
        let open = st.open_per_address.entry(peer.ip()).or_insert(0);
        if limit != 0 && *open >= limit {
            st.counters.connections_rejected += 1;
            warn!(%peer, limit, "too many connections from this address (max_connections_per_address); refusing");
            return false;
        }
        *open += 1;
        true
    }
}

/// Every tick, the leader closes sessions whose clients have gone quiet for their timeout.
async fn expire_sessions(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let tick = Duration::from_millis(shared.config.tick_ms);
    let mut metrics = shared.raft.metrics();
    let mut was_leader = false;
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = metrics.changed() => {}
            _ = interval.tick() => {}
        }
        let is_leader = metrics.borrow().state == openraft::ServerState::Leader;
        if !is_leader {
            was_leader = false;
            continue;
        }
        let expired: Vec<SessionId> = {
            let mut st = shared.lock();
            if !was_leader {
                // A new leader does not know when followers last heard from clients.
                st.tracker.reset_all(Instant::now());
            }
            st.tracker.take_expired(Instant::now())
        };
        was_leader = true;
        for session in expired {
            debug!(%session, "session expired");
            let shared = shared.clone();
            tokio::spawn(async move {
                let txn =
                    Txn { session, auth: Vec::new(), time_ms: now_ms(), op: TxnOp::CloseSession { expired: true } };
                if let Err(e) = shared.raft.client_write(txn).await {
                    warn!(%session, "could not close expired session: {e}");
                    shared.lock().tracker.close_failed(session, Instant::now());
                }
            });
        }
    }
}

/// Every `container_check_interval_ms`, the leader deletes empty containers and expired TTL
/// nodes (ZooKeeper's ContainerManager). Each deletion is a transaction that re-checks the
/// condition at apply, so a child created meanwhile keeps its container.
async fn reap_containers(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(Duration::from_millis(shared.config.container_check_interval_ms));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = interval.tick() => {}
        }
        if shared.raft.metrics().borrow().state != openraft::ServerState::Leader {
            continue;
        }
        let now = now_ms();
        let candidates = shared.lock().tree.reap_candidates(now);
        for path in candidates {
            let txn = Txn {
                session: SessionId(0),
                auth: Vec::new(),
                time_ms: now,
                op: TxnOp::Write(crate::txn::WriteOp::DeleteContainer { path: path.clone() }),
            };
            match shared.raft.client_write(txn).await {
                Ok(resp) => debug!(path, result = ?resp.data.result, "reaped"),
                Err(e) => {
                    warn!(path, "could not reap: {e}");
                    break;
                }
            }
        }
    }
}

/// The shutdown future the `referee` binaries hand to their servers: completes on the first
/// SIGINT or SIGTERM, which starts an orderly shutdown (an active agent hands over first); a
/// second signal makes `program` exit at once. Never completes if the signals cannot be
/// watched.
pub async fn shutdown_signal(program: &'static str) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    info!("shutting down (a second signal forces exit)");
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("{program}: second signal, exiting now");
        std::process::exit(130);
    });
}
