//! Coordinator servers configured as an ensemble and started in this process, as separate
//! `referee coordinator` processes would be (server 1 with `--init`, each its own listeners and
//! data directory), with their Raft handles and trees for what clients cannot see. Shared by the
//! ensemble tests and by the variants of the client-facing tests (differential, zkCli) that run
//! against a follower.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use referee_coordinator::config::{CoordinatorConfig, Role, ServerEntry};
use referee_coordinator::log::{FileSystem, RealFs};
use referee_coordinator::raft::Raft;
use referee_coordinator::server::{Coordinator, CoordinatorError, Startup};
use referee_coordinator::state::ServerState;
use referee_testkit::{within_for, Proxy, ScratchDir};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long an ensemble may take to start, elect or stop.
pub const ENSEMBLE_DEADLINE: Duration = Duration::from_secs(20);

/// One server of an in-process ensemble.
pub struct Running {
    /// Its id.
    pub id: u64,
    /// Where its clients connect.
    pub client: SocketAddr,
    /// Its Raft handle.
    pub raft: Raft,
    /// Its state: the tree it applied, its connections.
    pub coordinator_state: Arc<std::sync::Mutex<ServerState>>,
    /// Its configuration, for [`launch_again`].
    pub config: CoordinatorConfig,
    /// Where its peer listener is bound (behind a proxy, the proxy's target).
    pub peer_listen: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), CoordinatorError>>,
}

impl Running {
    /// Waits up to `limit` for the server to stop by itself (it is not asked to); the error it
    /// stopped with.
    pub async fn stopped_by_itself(self, limit: Duration) -> Result<CoordinatorError> {
        // Dropped, the stop sender would ask the server to stop: it is kept until the end.
        let Running { id, stop, task, .. } = self;
        let ended = within_for(limit, "the server to stop by itself", task).await;
        drop(stop);
        match ended?? {
            Ok(()) => Err(anyhow!("server {id} stopped without an error")),
            Err(e) => Ok(e),
        }
    }

    /// The data of `path` in its tree, if the node exists.
    pub fn data(&self, path: &str) -> Option<Vec<u8>> {
        let st = self.coordinator_state.lock().unwrap_or_else(|p| p.into_inner());
        st.tree.node(path).and_then(|n| n.data().map(<[u8]>::to_vec))
    }

    /// Waits, up to [`ENSEMBLE_DEADLINE`], until it has applied entry `index` (`what` says
    /// which).
    pub async fn applied(&self, index: u64, what: &str) -> Result<()> {
        self.raft
            .wait(Some(ENSEMBLE_DEADLINE))
            .applied_index_at_least(Some(index), what)
            .await
            .map(drop)
            .map_err(|e| anyhow!("server {} did not apply entry {index} ({what}): {e}", self.id))
    }

    /// The ids of the sessions its replicated tree holds.
    pub fn session_ids(&self) -> Vec<i64> {
        let st = self.coordinator_state.lock().unwrap_or_else(|p| p.into_inner());
        st.tree.sessions().map(|(id, _)| id.0).collect()
    }
}

/// The server every running server names as leader once that server has applied an entry of
/// its own term, and how long that took to come about.
pub async fn leader_of(running: &[Running]) -> Result<(u64, Duration)> {
    let began = std::time::Instant::now();
    loop {
        let named: std::collections::BTreeSet<Option<u64>> =
            running.iter().map(|r| r.raft.metrics().borrow().current_leader).collect();
        if let [Some(l)] = named.iter().copied().collect::<Vec<_>>()[..] {
            if let Some(r) = running.iter().find(|r| r.id == l) {
                let m = r.raft.metrics().borrow().clone();
                if m.last_applied.is_some_and(|a| a.leader_id.get_term() == m.current_term) {
                    return Ok((l, began.elapsed()));
                }
            }
        }
        // Re-checked when any server's metrics change, never later than the deadline.
        let left =
            ENSEMBLE_DEADLINE.checked_sub(began.elapsed()).ok_or_else(|| anyhow!("no agreed leader: {named:?}"))?;
        let mut rxs: Vec<_> = running.iter().map(|r| r.raft.metrics()).collect();
        let mut changes: Vec<_> = rxs.iter_mut().map(|rx| Box::pin(rx.changed())).collect();
        let any = std::future::poll_fn(|cx| {
            for c in changes.iter_mut() {
                if c.as_mut().poll(cx).is_ready() {
                    return std::task::Poll::Ready(());
                }
            }
            std::task::Poll::Pending
        });
        let _ = tokio::time::timeout(left, any).await;
    }
}

/// Starts one server per entry of `roles` (ids 1, 2, ...) together, as separate processes would
/// be, server 1 with `--init`; returns them serving, with their data directories.
pub async fn start_ensemble(roles: &[Role]) -> Result<(Vec<Running>, Vec<ScratchDir>)> {
    start_ensemble_with(roles, |_| {}).await
}

/// [`start_ensemble`], with `adjust` applied to every server's configuration.
pub async fn start_ensemble_with(
    roles: &[Role],
    adjust: impl Fn(&mut CoordinatorConfig),
) -> Result<(Vec<Running>, Vec<ScratchDir>)> {
    let (running, dirs, _) = start(roles, adjust, false, &|_| Arc::new(RealFs)).await?;
    Ok((running, dirs))
}

/// [`start_ensemble_with`], server i+1 on filesystem `fs(i)` (a fault-injecting one, say).
pub async fn start_ensemble_on(
    roles: &[Role],
    adjust: impl Fn(&mut CoordinatorConfig),
    fs: &dyn Fn(usize) -> Arc<dyn FileSystem>,
) -> Result<(Vec<Running>, Vec<ScratchDir>)> {
    let (running, dirs, _) = start(roles, adjust, false, fs).await?;
    Ok((running, dirs))
}

/// [`start_ensemble_with`], each server's peer port behind a [`Proxy`] (`proxies[i]` is server
/// i+1's): every peer connection to that server goes through it, and cutting it breaks them.
pub async fn start_ensemble_behind_proxies(
    roles: &[Role],
    adjust: impl Fn(&mut CoordinatorConfig),
) -> Result<(Vec<Running>, Vec<ScratchDir>, Vec<Proxy>)> {
    start(roles, adjust, true, &|_| Arc::new(RealFs)).await
}

async fn start(
    roles: &[Role],
    adjust: impl Fn(&mut CoordinatorConfig),
    proxied: bool,
    fs: &dyn Fn(usize) -> Arc<dyn FileSystem>,
) -> Result<(Vec<Running>, Vec<ScratchDir>, Vec<Proxy>)> {
    let mut clients = Vec::new();
    let mut peers = Vec::new();
    let mut servers = Vec::new();
    let mut proxies = Vec::new();
    for (id, &role) in (1u64..).zip(roles) {
        let (c, p) = (TcpListener::bind("127.0.0.1:0").await?, TcpListener::bind("127.0.0.1:0").await?);
        let mut peer = p.local_addr()?;
        if proxied {
            let proxy = Proxy::start(peer).await?;
            peer = proxy.addr;
            proxies.push(proxy);
        }
        servers.push(ServerEntry { id, client: c.local_addr()?, peer, role, admin: None });
        clients.push(c);
        peers.push(p);
    }
    let dirs: Vec<ScratchDir> =
        servers.iter().map(|s| ScratchDir::new(&format!("ensemble-{}", s.id))).collect::<Result<_>>()?;
    let mut starting = Vec::new();
    let mut configs = Vec::new();
    for (i, peer_listener) in peers.into_iter().enumerate() {
        let mut cfg = CoordinatorConfig::new(dirs[i].path("data"));
        cfg.cluster_id = Some(7);
        cfg.server_id = Some(servers[i].id);
        cfg.listen = servers[i].client;
        cfg.servers = servers.clone();
        // Short ticks, so that sessions of a few hundred ms are granted and tests of their
        // expiry take well under a second a timeout.
        cfg.tick_ms = 100;
        cfg.min_session_timeout_ms = Some(400);
        adjust(&mut cfg);
        cfg.validate()?;
        // Started together: each waits for a leader, which needs a majority of the voters.
        configs.push((cfg.clone(), peer_listener.local_addr()?));
        let startup = Startup { initialise: i == 0, peer_listener: Some(peer_listener) };
        starting.push(tokio::spawn(Coordinator::start_with(cfg, fs(i), startup)));
    }
    let mut running = Vec::new();
    for ((start, listener), (config, peer_listen)) in starting.into_iter().zip(clients).zip(configs) {
        let coordinator = within_for(ENSEMBLE_DEADLINE, "a server to start", start).await???;
        running.push(serving(coordinator, listener, config, peer_listen));
    }
    Ok((running, dirs, proxies))
}

/// Serves `coordinator`'s clients on `listener` until [`stop`].
fn serving(
    coordinator: Coordinator,
    listener: TcpListener,
    config: CoordinatorConfig,
    peer_listen: SocketAddr,
) -> Running {
    let (stop, stopped) = oneshot::channel::<()>();
    let (raft, coordinator_state) = (coordinator.raft(), coordinator.state());
    let (id, client) = (config.server_id(), config.listen);
    let task = tokio::spawn(coordinator.serve(listener, async move {
        let _ = stopped.await;
    }));
    Running { id, client, raft, coordinator_state, config, peer_listen, stop, task }
}

/// Starts a stopped server again from its data directory, on its own ports, as a restarted
/// process would be, without waiting for it to find a leader (`referee coordinator` serves
/// while it waits: [`Coordinator::launch`]).
pub async fn launch_again(config: CoordinatorConfig, peer_listen: SocketAddr) -> Result<Running> {
    let (listener, peer_listener) = (TcpListener::bind(config.listen).await?, TcpListener::bind(peer_listen).await?);
    let startup = Startup { initialise: false, peer_listener: Some(peer_listener) };
    let coordinator = Coordinator::launch(config.clone(), Arc::new(RealFs), startup).await?;
    Ok(serving(coordinator, listener, config, peer_listen))
}

/// Stops a server as on SIGTERM, and checks it stopped cleanly.
pub async fn stop(r: Running) -> Result<()> {
    let _ = r.stop.send(());
    within_for(ENSEMBLE_DEADLINE, "a server to stop", r.task).await??.map_err(|e| anyhow!("server {}: {e}", r.id))
}

/// Three voters with an agreed leader, for a test to run its clients against a follower.
pub struct ThreeVoters {
    /// The servers.
    pub running: Vec<Running>,
    /// The leader's id.
    pub leader: u64,
    _dirs: Vec<ScratchDir>,
}

impl ThreeVoters {
    /// Starts three voters with `adjust` applied to each configuration, and waits for a leader.
    pub async fn start(adjust: impl Fn(&mut CoordinatorConfig)) -> Result<ThreeVoters> {
        let (running, dirs) = start_ensemble_with(&[Role::Voter; 3], adjust).await?;
        let (leader, _) = leader_of(&running).await?;
        // The first leader writes the members into /zookeeper/config: every server has it
        // before a test reads the tree, so no test sees it arrive midway.
        within_for(ENSEMBLE_DEADLINE, "/zookeeper/config written on every server", async {
            while running.iter().any(|r| r.data("/zookeeper/config").is_none_or(|d| d.is_empty())) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await?;
        Ok(ThreeVoters { running, leader, _dirs: dirs })
    }

    /// A server that does not lead.
    pub fn follower(&self) -> &Running {
        self.running.iter().find(|r| r.id != self.leader).expect("three servers, one leader")
    }

    /// The leader, while it is among the running servers.
    pub fn leader(&self) -> Result<&Running> {
        self.running.iter().find(|r| r.id == self.leader).context("the leader is not among the running servers")
    }

    /// Stops every server, checking each stopped cleanly.
    pub async fn stop(self) -> Result<()> {
        for r in self.running {
            stop(r).await.context("stopping the ensemble")?;
        }
        Ok(())
    }
}
