//! Three coordinator servers configured as an ensemble (`servers` in their configuration),
//! started in one process as `referee coordinator` starts them, one with `--init`: they elect a
//! leader through their peer ports, and a write from a ZooKeeper client connected to the
//! leader is applied on every server's tree; with the leader stopped, the other two elect a new
//! one and its clients' writes are applied on both. An observer listed in `servers` becomes an
//! openraft learner: it applies the writes, and stopping it costs no quorum. Each server's
//! `srvr` and `mntr` name its role: leader, follower or observer. Clients of a follower or an
//! observer write through it (forwarded to the leader), read their own writes there, get the
//! watch events of writes made elsewhere, `sync`, and keep their sessions alive past their
//! timeout while connected there (the server reports them to the leader, which alone expires).
//! A server cut off from the rest closes its clients' connections and refuses new sessions
//! within its staleness bound, and still answers four-letter words.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

mod common;

use anyhow::{anyhow, ensure, Context, Result};
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

impl Running {
    fn data(&self, path: &str) -> Option<Vec<u8>> {
        let st = self.coordinator_state.lock().unwrap_or_else(|p| p.into_inner());
        st.tree.node(path).and_then(|n| n.data().map(<[u8]>::to_vec))
    }
}

/// The server every running server names as leader once that server has applied an entry of
/// its own term, and how long that took to come about.
async fn leader_of(running: &[Running]) -> Result<(u64, Duration)> {
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
        let left = DEADLINE.checked_sub(began.elapsed()).ok_or_else(|| anyhow!("no agreed leader: {named:?}"))?;
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

/// Creates `path` through a ZooKeeper client of server `leader`, and checks every running
/// server applies it.
async fn write_and_check(running: &[Running], leader: u64, path: &str) -> Result<()> {
    let r = running.iter().find(|r| r.id == leader).context("the leader is running")?;
    let zk = connect(&r.client.to_string(), Duration::from_secs(10)).await?;
    zk.create(path, b"replicated", &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await?;
    let index = r.raft.metrics().borrow().last_applied.map(|l| l.index).context("the leader applied the write")?;
    for r in running {
        r.raft
            .wait(Some(DEADLINE))
            .applied_index_at_least(Some(index), "the client's write")
            .await
            .map_err(|e| anyhow!("server {} did not apply entry {index}: {e}", r.id))?;
        assert_eq!(r.data(path).as_deref(), Some(&b"replicated"[..]), "server {} holds {path}", r.id);
    }
    Ok(())
}

/// Starts one server per entry of `roles` (ids 1, 2, ...) together, as separate processes would
/// be, server 1 with `--init`; returns them serving, with their data directories.
async fn start_ensemble(roles: &[Role]) -> Result<(Vec<Running>, Vec<ScratchDir>)> {
    let mut clients = Vec::new();
    let mut peers = Vec::new();
    let mut servers = Vec::new();
    for (id, &role) in (1u64..).zip(roles) {
        let (c, p) = (TcpListener::bind("127.0.0.1:0").await?, TcpListener::bind("127.0.0.1:0").await?);
        servers.push(ServerEntry { id, client: c.local_addr()?, peer: p.local_addr()?, role, admin: None });
        clients.push(c);
        peers.push(p);
    }
    let dirs: Vec<ScratchDir> =
        servers.iter().map(|s| ScratchDir::new(&format!("ensemble-{}", s.id))).collect::<Result<_>>()?;
    let mut starting = Vec::new();
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
        cfg.validate()?;
        // Started together: each waits for a leader, which needs a majority of the voters.
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
    Ok((running, dirs))
}

async fn stop(r: Running) -> Result<()> {
    let _ = r.stop.send(());
    within_for(DEADLINE, "a server to stop", r.task).await??.map_err(|e| anyhow!("server {}: {e}", r.id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_receives_writes_and_losing_it_costs_no_quorum() -> Result<()> {
    let (mut running, _dirs) = start_ensemble(&[Role::Voter, Role::Voter, Role::Voter, Role::Observer]).await?;
    let (leader, _) = leader_of(&running).await?;
    // The initialising server adds the observer as a learner once it leads.
    let learners =
        |r: &Running| r.raft.metrics().borrow().membership_config.membership().learner_ids().collect::<Vec<_>>();
    running[0]
        .raft
        .wait(Some(DEADLINE))
        .metrics(|m| m.membership_config.membership().learner_ids().any(|id| id == 4), "server 4 to be a learner")
        .await?;
    let voters = running[0].raft.metrics().borrow().membership_config.membership().voter_ids().collect::<Vec<_>>();
    assert_eq!((voters, learners(&running[0])), (vec![1, 2, 3], vec![4]));
    write_and_check(&running, leader, "/seen-by-the-observer").await?;
    // Each server names its role as ZooKeeper's servers do, so `zkServer.sh status` reads it.
    for r in &running {
        let want = match r.id {
            4 => "observer",
            id if id == leader => "leader",
            _ => "follower",
        };
        let srvr = referee_testkit::four_letter(r.client.port(), "srvr")?;
        assert!(srvr.contains(&format!("\nMode: {want}\n")), "server {}: {srvr}", r.id);
        let mntr = referee_testkit::four_letter(r.client.port(), "mntr")?;
        assert!(mntr.contains(&format!("zk_server_state\t{want}\n")), "server {}: {mntr}", r.id);
    }

    let observer = running.pop().context("the observer runs")?;
    assert_eq!(observer.id, 4);
    stop(observer).await?;
    // A voter stops too: two of three voters are a quorum, with or without the observer.
    let follower = running.iter().position(|r| r.id != leader).context("a follower runs")?;
    stop(running.remove(follower)).await?;
    write_and_check(&running, leader, "/without-the-observer").await?;
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_configured_servers_elect_a_leader_replicate_client_writes_and_survive_its_loss() -> Result<()> {
    let (mut running, _dirs) = start_ensemble(&[Role::Voter; 3]).await?;
    let (leader_id, _) = leader_of(&running).await?;
    write_and_check(&running, leader_id, "/ensemble").await?;

    // The leader stops (as on SIGTERM); the other two elect a new one, whose clients write.
    let at = running.iter().position(|r| r.id == leader_id).context("the leader is one of the servers")?;
    let old = running.remove(at);
    stop(old).await?;
    let (new_leader, took) = leader_of(&running).await?;
    assert_ne!(new_leader, leader_id, "a stopped server cannot lead");
    eprintln!("server {leader_id} stopped; server {new_leader} leads after {took:?}");
    write_and_check(&running, new_leader, "/after-leader-change").await?;
    for path in ["/ensemble", "/after-leader-change"] {
        for r in &running {
            assert!(r.data(path).is_some(), "server {} lost {path}", r.id);
        }
    }

    for r in running {
        stop(r).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_followers_and_observers_write_read_watch_sync_and_keep_their_sessions() -> Result<()> {
    const SESSION: Duration = Duration::from_millis(600);
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    let (running, _dirs) = start_ensemble(&[Role::Voter, Role::Voter, Role::Voter, Role::Observer]).await?;
    let (leader, _) = leader_of(&running).await?;
    running[0]
        .raft
        .wait(Some(DEADLINE))
        .metrics(|m| m.membership_config.membership().learner_ids().any(|id| id == 4), "server 4 to be a learner")
        .await?;
    let follower = running.iter().find(|r| r.id != leader && r.id != 4).context("a follower runs")?;
    let observer = running.iter().find(|r| r.id == 4).context("the observer runs")?;
    let at_leader = running.iter().find(|r| r.id == leader).context("the leader runs")?;

    // A session opened on a follower writes there, and reads its own writes there at once.
    let fz = within_for(DEADLINE, "a session on a follower", connect(&follower.client.to_string(), SESSION)).await??;
    let fz_id = fz.session().id().0;
    fz.create("/f", b"one", &persistent).await.context("a create through a follower")?;
    fz.create("/f/eph", b"", &ephemeral).await.context("an ephemeral through a follower")?;
    let (data, _) = fz.get_data("/f").await?;
    assert_eq!(data, b"one", "a follower's client reads its own write there");
    for i in 0..20 {
        fz.set_data("/f", format!("v{i}").as_bytes(), None).await?;
    }
    assert_eq!(fz.get_data("/f").await?.0, b"v19", "twenty pipelined writes applied in order");
    assert_eq!(at_leader.data("/f/eph").as_deref(), Some(&b""[..]), "the leader holds the follower's ephemeral");

    // An observer's client watches; a write through the leader fires the watch on the observer.
    let oz =
        within_for(DEADLINE, "a session on the observer", connect(&observer.client.to_string(), SESSION)).await??;
    let (_, _, watcher) = oz.get_and_watch_data("/f").await?;
    let lz = within_for(DEADLINE, "a session on the leader", connect(&at_leader.client.to_string(), SESSION)).await??;
    lz.set_data("/f", b"from-the-leader", None).await?;
    let event = within_for(DEADLINE, "the observer's watch to fire", watcher.changed()).await?;
    assert_eq!((event.event_type, event.path.as_str()), (zk::EventType::NodeDataChanged, "/f"));
    assert_eq!(oz.get_data("/f").await?.0, b"from-the-leader", "the watch fired after the write was applied there");

    // The observer's client writes too; after `sync`, the follower's client sees it.
    oz.create("/from-the-observer", b"o", &persistent).await.context("a create through the observer")?;
    fz.sync("/").await.context("sync on a follower")?;
    assert_eq!(fz.get_data("/from-the-observer").await?.0, b"o", "sync on a follower catches up with the leader");

    // The follower's session outlives several of its timeouts while its client pings the
    // follower only: the follower reports it to the leader, which alone expires sessions.
    let began = std::time::Instant::now();
    while began.elapsed() < SESSION * 4 {
        tokio::time::sleep(SESSION / 4).await;
        assert!(at_leader.data("/f/eph").is_some(), "the leader expired a session alive on a follower");
    }
    assert!(fz.check_stat("/f/eph").await?.is_some(), "the session and its ephemeral are alive");

    // Closing the session through the follower removes its ephemeral everywhere.
    drop(fz);
    within_for(DEADLINE, "the closed session's ephemeral to go", async {
        while running.iter().any(|r| r.data("/f/eph").is_some()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let sessions = at_leader
        .coordinator_state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .tree
        .session(referee_coordinator::proto::SessionId(fz_id))
        .is_some();
    assert!(!sessions, "the closed session is gone from the leader's tree");
    drop((oz, lz));
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_cut_off_from_the_rest_drops_its_clients_within_its_staleness_bound() -> Result<()> {
    let bound = Duration::from_millis(CoordinatorConfig::new("/unused").max_leader_silence_ms);
    let (mut running, _dirs) = start_ensemble(&[Role::Voter, Role::Voter, Role::Voter]).await?;
    let (leader, _) = leader_of(&running).await?;
    let at = running.iter().position(|r| r.id != leader).context("a follower runs")?;
    let follower = running.remove(at);
    let mut client = common::raw::Raw::connect(follower.client, 4000).await.context("a session on a follower")?;

    // The other two stop: the follower hears from no leader again.
    let cut = std::time::Instant::now();
    for r in running {
        stop(r).await?;
    }
    let closed = client.read_frame_for(bound + Duration::from_secs(3)).await;
    let after = cut.elapsed();
    ensure!(matches!(closed, Ok(None)), "the follower's client was not disconnected: {closed:?}");
    // Silence counts from the last heartbeat before the cut (they come every 100 ms).
    assert!(
        after + Duration::from_millis(200) >= bound,
        "disconnected after {after:?}, well before the bound of {bound:?}"
    );
    eprintln!(
        "a follower cut off dropped its client {} ms after the cut (bound {} ms)",
        after.as_millis(),
        bound.as_millis()
    );
    let refused = common::raw::Raw::connect(follower.client, 4000).await;
    assert!(refused.is_err(), "a server without contact granted a new session");
    let srvr = referee_testkit::four_letter(follower.client.port(), "srvr")?;
    assert!(srvr.contains("Mode: "), "four-letter words are still answered: {srvr}");
    stop(follower).await
}

/// A reply from a follower is a promise to the client that the ensemble will not expire its
/// session for a session timeout after it sent the request (less a small slack): the leader
/// must have heard of the session by then. Checked on the leader's own expiry deadline after
/// each reply, with idle gaps longer than the follower's report interval between requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_reply_never_outruns_the_leaders_knowledge_of_the_session() -> Result<()> {
    const SESSION: Duration = Duration::from_millis(2000);
    let (running, _dirs) = start_ensemble(&[Role::Voter, Role::Voter, Role::Voter]).await?;
    let (leader, _) = leader_of(&running).await?;
    let follower = running.iter().find(|r| r.id != leader).context("a follower runs")?;
    let at_leader = running.iter().find(|r| r.id == leader).context("the leader runs")?;
    let fz = within_for(DEADLINE, "a session on a follower", connect(&follower.client.to_string(), SESSION)).await??;
    let session = referee_coordinator::proto::SessionId(fz.session().id().0);
    let granted = Duration::from_millis(u64::try_from(fz.session_timeout().as_millis())?);
    for i in 0..12u64 {
        // Idle for 60 to 280 ms: several report intervals, so the session is not in the
        // reports that happen to be in flight.
        tokio::time::sleep(Duration::from_millis(60 + (i * 37) % 220)).await;
        let sent = std::time::Instant::now();
        fz.check_stat("/").await?;
        let deadline = {
            let st = at_leader.coordinator_state.lock().unwrap_or_else(|p| p.into_inner());
            st.tracker.deadlines_after(None, usize::MAX).into_iter().find(|(s, _)| *s == session).map(|(_, d)| d)
        }
        .context("the leader tracks the session")?;
        let promised = sent + granted - referee_coordinator::liveness::SLACK;
        assert!(
            deadline >= promised,
            "request {i}: the leader would expire the session {:?} before the client may count on it",
            promised - deadline
        );
    }
    drop(fz);
    for r in running {
        stop(r).await?;
    }
    Ok(())
}
