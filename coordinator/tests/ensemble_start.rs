//! Three coordinator servers configured as an ensemble (`servers` in their configuration),
//! started in one process as `referee coordinator` starts them, one with `--init`: they elect a
//! leader through their peer ports, and a write from a ZooKeeper client connected to the
//! leader is applied on every server's tree.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use referee_coordinator::config::{CoordinatorConfig, Role, ServerEntry};
use referee_coordinator::log::RealFs;
use referee_coordinator::raft::Raft;
use referee_coordinator::server::{Coordinator, CoordinatorError, Startup};
use referee_testkit::{connect, within_for, ScratchDir};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zookeeper_client as zk;

const DEADLINE: Duration = Duration::from_secs(20);

struct Running {
    id: u64,
    client: SocketAddr,
    raft: Raft,
    coordinator_state: Arc<std::sync::Mutex<referee_coordinator::state::ServerState>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), CoordinatorError>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_configured_servers_elect_a_leader_and_replicate_a_client_write() -> Result<()> {
    let mut clients = Vec::new();
    let mut peers = Vec::new();
    let mut servers = Vec::new();
    for id in 1..=3u64 {
        let (c, p) = (TcpListener::bind("127.0.0.1:0").await?, TcpListener::bind("127.0.0.1:0").await?);
        servers.push(ServerEntry { id, client: c.local_addr()?, peer: p.local_addr()?, role: Role::Voter });
        clients.push(c);
        peers.push(p);
    }
    let dirs: Vec<ScratchDir> = (1..=3).map(|id| ScratchDir::new(&format!("ensemble-{id}"))).collect::<Result<_>>()?;
    let mut starting = Vec::new();
    for (i, peer_listener) in peers.into_iter().enumerate() {
        let mut cfg = CoordinatorConfig::new(dirs[i].path("data"));
        cfg.cluster_id = Some(7);
        cfg.server_id = Some(servers[i].id);
        cfg.listen = servers[i].client;
        cfg.servers = servers.clone();
        cfg.validate()?;
        // Started together, as three processes would be: each waits for a leader, which needs
        // a majority of them running.
        let startup = Startup { initialise: i == 0, peer_listener: Some(peer_listener) };
        starting.push(tokio::spawn(Coordinator::start_with(cfg, Arc::new(RealFs), startup)));
    }
    let mut running = Vec::new();
    for ((start, listener), entry) in starting.into_iter().zip(clients).zip(&servers) {
        let coordinator = within_for(DEADLINE, "a server to start", start).await???;
        let (stop, stopped) = oneshot::channel::<()>();
        let (raft, coordinator_state) = (coordinator.raft(), coordinator.state());
        let task = tokio::spawn(coordinator.serve(listener, async move {
            let _ = stopped.await;
        }));
        running.push(Running { id: entry.id, client: entry.client, raft, coordinator_state, stop, task });
    }

    let leader_id = running[0].raft.metrics().borrow().current_leader.context("a leader is known after start")?;
    let leader = running.iter().find(|r| r.id == leader_id).context("the leader is one of the servers")?;
    let zk = connect(&leader.client.to_string(), Duration::from_secs(10)).await?;
    zk.create("/ensemble", b"replicated", &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await?;
    let index = leader.raft.metrics().borrow().last_applied.map(|l| l.index).context("the leader applied the write")?;
    for r in &running {
        r.raft
            .wait(Some(DEADLINE))
            .applied_index_at_least(Some(index), "the client's write")
            .await
            .map_err(|e| anyhow!("server {} did not apply entry {index}: {e}", r.id))?;
        let st = r.coordinator_state.lock().unwrap_or_else(|p| p.into_inner());
        let data = st.tree.node("/ensemble").and_then(|n| n.data().map(<[u8]>::to_vec));
        assert_eq!(data.as_deref(), Some(&b"replicated"[..]), "server {} holds the write", r.id);
    }
    drop(zk);
    for r in running {
        let _ = r.stop.send(());
        within_for(DEADLINE, "a server to stop", r.task).await??.map_err(|e| anyhow!("server {}: {e}", r.id))?;
    }
    Ok(())
}
