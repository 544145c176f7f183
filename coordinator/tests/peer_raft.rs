//! The replicated Raft layer over the real peer transport: coordinator Raft nodes in one
//! process, each with its own durable log and snapshot directory, talking only through
//! `PeerNetwork` and `serve_peers` on loopback ports.
//!
//! Checked: a write proposed on the leader is applied on every node's state machine; with the
//! leader stopped a new one is elected within a deadline and holds the old entries and takes
//! new writes; a minority cannot commit (the proposal times out and nothing is applied), and
//! the entry commits once a majority is back; a leader's fdatasync overlaps its followers', and
//! nothing is applied anywhere before it ends; a leader that died before that fdatasync, all
//! servers restarted, never leads its old term again (the trees would part); a second process claiming a live server's id is
//! refused at either end of a connection, with the reason, and so is a server that comes back
//! under its old id with its data wiped.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context, Result};
use openraft::error::{ClientWriteError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::VoteRequest;
use openraft::{BasicNode, Vote};
use referee_coordinator::log::{FaultFs, FileSystem, LogStore, RealFs, WalOptions};
use referee_coordinator::peer::{serve_peers, LinkOptions, ListenerOptions, LocalIdentity, PeerNetwork, Sightings};
use referee_coordinator::proto::{Acl, SessionId};
use referee_coordinator::raft::{Raft, SnapshotPolicy, StateMachine, TypeConfig};
use referee_coordinator::read_index;
use referee_coordinator::role::RoleWatch;
use referee_coordinator::snapshot::SnapshotDir;
use referee_coordinator::state::ServerState;
use referee_coordinator::txn::{Txn, TxnOp, WriteOp};
use referee_testkit::{within_for, ScratchDir};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const CLUSTER: u64 = 0x5eed;
/// Generous against a loaded 2-core machine; elections take under a second when idle.
const DEADLINE: Duration = Duration::from_secs(10);
/// How long a proposal without a quorum is given before it counts as not committing: many
/// heartbeat rounds (100 ms) and election timeouts (300-600 ms).
const NO_QUORUM_WAIT: Duration = Duration::from_secs(2);

/// One server's Raft node, its peer listener and its data.
struct Node {
    id: u64,
    raft: Raft,
    state: Arc<Mutex<ServerState>>,
    local: LocalIdentity,
    sightings: Arc<Sightings>,
    /// Its links to the other servers, as the server keeps them for its own rounds.
    network: PeerNetwork,
    stop: Option<oneshot::Sender<()>>,
    listener: JoinHandle<()>,
}

/// The servers of one test: each one's peer address and data directory; the nodes running now.
struct Ensemble {
    addrs: BTreeMap<u64, String>,
    dirs: BTreeMap<u64, ScratchDir>,
    /// Each server's filesystem: the real one, or a fault-injecting one of its own.
    fs: BTreeMap<u64, Arc<dyn FileSystem>>,
    faults: BTreeMap<u64, FaultFs>,
    nodes: BTreeMap<u64, Node>,
}

fn raft_config() -> Result<Arc<openraft::Config>> {
    let config = openraft::Config {
        cluster_name: "referee-coordinator".into(),
        heartbeat_interval: 100,
        election_timeout_min: 300,
        election_timeout_max: 600,
        ..Default::default()
    };
    Ok(Arc::new(config.validate()?))
}

/// The data directory incarnation of server `id`'s first directory.
fn incarnation_of(id: u64) -> u64 {
    1000 + id
}

/// Starts server `id` of `CLUSTER` on `listener` from `dir` (of data directory incarnation
/// `incarnation`), dialling peers at `addrs`, its files on `fs`. Wired as the server wires it:
/// the leader's fdatasync overlaps replication, and applies and the commit index sent to
/// followers wait for it.
async fn start_node(
    id: u64,
    listener: TcpListener,
    dir: &ScratchDir,
    incarnation: u64,
    addrs: &BTreeMap<u64, String>,
    fs: Arc<dyn FileSystem>,
) -> Result<Node> {
    let log = LogStore::open(fs.clone(), WalOptions::new(dir.path("log"), CLUSTER))?
        .pipelining_as_leader(id)
        .free_to_vote_at_start(id);
    let purged = log.meta().last_purged.map_or(0, |l| l.index);
    let state = Arc::new(Mutex::new(ServerState::new(false, Duration::from_millis(100))));
    let snapshots = SnapshotDir::open(fs, dir.path("snapshots"), CLUSTER, 2)?;
    let sm = StateMachine::open(state.clone(), snapshots, purged, SnapshotPolicy::NEVER)?
        .applying_only_durable(log.durable());
    let local = LocalIdentity::new(CLUSTER, id, incarnation);
    let sightings = Arc::new(Sightings::default());
    let network = PeerNetwork::new(local, addrs.clone(), LinkOptions::default(), sightings.clone())
        .holding_commits_to(log.durable());
    let raft = Raft::new(id, raft_config()?, network.clone(), log, sm).await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let servers: BTreeSet<u64> = addrs.keys().copied().collect();
    let listener = tokio::spawn(serve_peers(
        listener,
        raft.clone(),
        state.clone(),
        local,
        servers,
        sightings.clone(),
        ListenerOptions::default(),
        async move {
            let _ = stopped.await;
        },
    ));
    Ok(Node { id, raft, state, local, sightings, network, stop: Some(stop), listener })
}

impl Node {
    /// Stops the node as a crash would look to its peers: Raft and every connection end.
    async fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.raft.shutdown().await.map_err(|e| anyhow!("server {} did not shut down: {e:?}", self.id))?;
        within_for(DEADLINE, "the peer listener to stop", self.listener).await??;
        Ok(())
    }

    /// The data at `path` in this node's tree, if the node exists.
    fn data(&self, path: &str) -> Option<Vec<u8>> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.tree.node(path).map(|n| n.data().unwrap_or_default().to_vec())
    }

    fn last_applied(&self) -> Option<u64> {
        self.raft.metrics().borrow().last_applied.map(|l| l.index)
    }
}

impl Ensemble {
    /// Starts `n` voters (ids 1..=n) and initialises their membership once, on server 1.
    async fn start(n: u64) -> Result<Ensemble> {
        Self::start_on(n, false).await
    }

    /// As [`Ensemble::start`], each server on a fault-injecting filesystem of its own when
    /// `faults`, in [`Ensemble::faults`].
    async fn start_on(n: u64, faults: bool) -> Result<Ensemble> {
        let mut listeners = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        let mut dirs = BTreeMap::new();
        for id in 1..=n {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            addrs.insert(id, l.local_addr()?.to_string());
            listeners.insert(id, l);
            dirs.insert(id, ScratchDir::new(&format!("peer-raft-{id}"))?);
        }
        let mut fs: BTreeMap<u64, Arc<dyn FileSystem>> = BTreeMap::new();
        let mut fault_fs = BTreeMap::new();
        for &id in addrs.keys() {
            if faults {
                let f = FaultFs::new();
                fs.insert(id, Arc::new(f.clone()));
                fault_fs.insert(id, f);
            } else {
                fs.insert(id, Arc::new(RealFs));
            }
        }
        let mut nodes = BTreeMap::new();
        for (id, l) in listeners {
            nodes.insert(id, start_node(id, l, &dirs[&id], incarnation_of(id), &addrs, fs[&id].clone()).await?);
        }
        let members: BTreeMap<u64, BasicNode> =
            addrs.iter().map(|(&id, addr)| (id, BasicNode { addr: addr.clone() })).collect();
        nodes[&1].raft.initialize(members).await.context("initialising the membership")?;
        Ok(Ensemble { addrs, dirs, fs, faults: fault_fs, nodes })
    }

    /// Restarts stopped server `id` from its data directory on its old peer address.
    async fn restart(&mut self, id: u64) -> Result<()> {
        let l = TcpListener::bind(&self.addrs[&id]).await.context("binding the old peer address")?;
        let node = start_node(id, l, &self.dirs[&id], incarnation_of(id), &self.addrs, self.fs[&id].clone()).await?;
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Starts stopped server `id` again on its old peer address, from an empty data directory
    /// (a new incarnation), as after its disk was wiped or replaced.
    async fn restart_wiped(&mut self, id: u64) -> Result<()> {
        let dir = ScratchDir::new(&format!("peer-raft-{id}-wiped"))?;
        let l = TcpListener::bind(&self.addrs[&id]).await.context("binding the old peer address")?;
        let node = start_node(id, l, &dir, incarnation_of(id) + 1000, &self.addrs, self.fs[&id].clone()).await?;
        self.dirs.insert(id, dir);
        self.nodes.insert(id, node);
        Ok(())
    }

    async fn stop(&mut self, id: u64) -> Result<()> {
        self.nodes.remove(&id).context("stopping a server that is not running")?.stop().await
    }

    /// Waits until every running node names the same leader, one of the running nodes other
    /// than `not`, and that leader knows it leads. Returns its id and how long it took.
    async fn agreed_leader(&self, not: Option<u64>) -> Result<(u64, Duration)> {
        let began = Instant::now();
        loop {
            let leaders: BTreeSet<Option<u64>> =
                self.nodes.values().map(|n| n.raft.metrics().borrow().current_leader).collect();
            if let [Some(l)] = leaders.iter().copied().collect::<Vec<_>>()[..] {
                let leads = self
                    .nodes
                    .get(&l)
                    .is_some_and(|n| n.raft.metrics().borrow().state == openraft::ServerState::Leader);
                if leads && Some(l) != not {
                    return Ok((l, began.elapsed()));
                }
            }
            if began.elapsed() > DEADLINE {
                bail!("no agreed leader within {DEADLINE:?}: the nodes name {leaders:?}");
            }
            // Woken by the first metrics change on any node, not by a timer.
            let mut rxs: Vec<_> = self.nodes.values().map(|n| n.raft.metrics()).collect();
            let mut changes: Vec<_> = rxs.iter_mut().map(|rx| Box::pin(rx.changed())).collect();
            let any = std::future::poll_fn(|cx| {
                for c in changes.iter_mut() {
                    if c.as_mut().poll(cx).is_ready() {
                        return std::task::Poll::Ready(());
                    }
                }
                std::task::Poll::Pending
            });
            let _ = tokio::time::timeout(DEADLINE, any).await;
        }
    }

    /// Waits for an agreed leader (see [`Ensemble::agreed_leader`]) and creates `path` with
    /// `data` on it, as a client would: a node that turns out to lead no longer (on a loaded
    /// machine a second election can follow the first) is asked again once a leader is agreed.
    /// Returns the leader that took the write and the entry's log index.
    async fn lead_and_write(&self, path: &str, data: &[u8]) -> Result<(u64, u64)> {
        let began = Instant::now();
        loop {
            let (leader, _) = self.agreed_leader(None).await?;
            let proposed = self.nodes[&leader].raft.client_write(vec![create(path, data)]);
            match within_for(DEADLINE, "a write to commit", proposed).await? {
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) if began.elapsed() < DEADLINE => {
                    eprintln!("server {leader} no longer leads (it names {:?}): asking the next leader", f.leader_id);
                }
                Err(e) => bail!("write of {path} failed: {e}"),
                Ok(reply) => return Ok((leader, created(reply, path)?)),
            }
        }
    }

    /// Proposes creating `path` with `data` on `leader`; returns the entry's log index.
    async fn write(&self, leader: u64, path: &str, data: &[u8]) -> Result<u64> {
        let reply =
            within_for(DEADLINE, "a write to commit", self.nodes[&leader].raft.client_write(vec![create(path, data)]))
                .await?
                .map_err(|e| anyhow!("write of {path} failed: {e}"))?;
        created(reply, path)
    }

    /// Waits until every running node has applied `index`, then checks each holds `path` = `data`.
    async fn applied_everywhere(&self, index: u64, path: &str, data: &[u8]) -> Result<()> {
        for node in self.nodes.values() {
            node.raft
                .wait(Some(DEADLINE))
                .applied_index_at_least(Some(index), "the write to be applied")
                .await
                .map_err(|e| anyhow!("server {} did not apply entry {index}: {e}", node.id))?;
            let got = node.data(path);
            if got.as_deref() != Some(data) {
                bail!("server {} holds {got:?} at {path} after applying {index}, want {data:?}", node.id);
            }
        }
        Ok(())
    }

    /// Any running node other than `leader`.
    fn follower(&self, leader: u64) -> u64 {
        *self.nodes.keys().find(|&&id| id != leader).expect("a follower is running")
    }

    async fn stop_all(mut self) -> Result<()> {
        for id in self.nodes.keys().copied().collect::<Vec<_>>() {
            self.stop(id).await?;
        }
        Ok(())
    }
}

/// The log index of the create of `path` that `reply` answers, if the tree took it.
fn created(reply: openraft::raft::ClientWriteResponse<TypeConfig>, path: &str) -> Result<u64> {
    let outcome = reply.data.into_iter().next().ok_or_else(|| anyhow!("no outcome for the create of {path}"))?;
    outcome.result.map_err(|e| anyhow!("create {path} failed in the tree: {e:?}"))?;
    Ok(reply.log_id.index)
}

fn create(path: &str, data: &[u8]) -> Txn {
    Txn {
        session: SessionId(0),
        auth: vec![],
        time_ms: 0,
        op: TxnOp::Write(WriteOp::Create {
            opcode: 1,
            path: path.into(),
            data: Some(data.to_vec()),
            acl: Acl::open_unsafe(),
            flags: 0,
            ttl_ms: 0,
        }),
    }
}

/// A proposal on `leader`, which has lost its quorum, must not commit: it times out, and
/// neither the leader nor any other running node applies anything.
async fn proposal_does_not_commit(e: &Ensemble, leader: u64, path: &str) -> Result<()> {
    let before: BTreeMap<u64, Option<u64>> = e.nodes.iter().map(|(&id, n)| (id, n.last_applied())).collect();
    let r =
        tokio::time::timeout(NO_QUORUM_WAIT, e.nodes[&leader].raft.client_write(vec![create(path, b"minority")])).await;
    match r {
        Err(_) => {}
        Ok(Ok(reply)) => bail!("a write committed without a quorum at {:?}", reply.log_id),
        // Losing leadership is also a refusal to commit; openraft 0.9 keeps a leader without
        // a quorum in office, so this is not expected, but it is not a violation either.
        Ok(Err(err)) => eprintln!("the minority write was refused: {err}"),
    }
    for (id, n) in &e.nodes {
        assert_eq!(n.last_applied(), before[id], "server {id} applied an entry without a quorum");
        assert_eq!(n.data(path), None, "server {id} holds {path}, written without a quorum");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_replicate_elect_a_new_leader_and_never_commit_without_a_majority() -> Result<()> {
    let mut e = Ensemble::start(3).await?;
    let (leader, i) = e.lead_and_write("/a", b"one").await?;
    eprintln!("first leader: server {leader}");
    e.applied_everywhere(i, "/a", b"one").await?;

    e.stop(leader).await?;
    let (second, took) = e.agreed_leader(Some(leader)).await?;
    eprintln!("server {leader} stopped; server {second} leads after {took:?}");
    let i = e.write(second, "/b", b"two").await?;
    e.applied_everywhere(i, "/b", b"two").await?;
    e.applied_everywhere(i, "/a", b"one").await?;

    // One of three left: the leader keeps office (openraft 0.9 has no check-quorum) but
    // cannot commit.
    let follower = e.follower(second);
    e.stop(follower).await?;
    proposal_does_not_commit(&e, second, "/c").await?;

    // With a majority back, the entry the leader kept commits: a timed-out write was never
    // a definite failure. New writes commit too, on both running nodes.
    e.restart(follower).await?;
    let (_, i) = e.lead_and_write("/d", b"four").await?;
    e.applied_everywhere(i, "/d", b"four").await?;
    e.applied_everywhere(i, "/c", b"minority").await?;
    e.applied_everywhere(i, "/a", b"one").await?;
    e.stop_all().await
}

/// What a client write on a Raft node ends with.
type WriteResult = Result<
    openraft::raft::ClientWriteResponse<TypeConfig>,
    openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, BasicNode>>,
>;

/// A write of /b proposed on the leader while its fdatasyncs are held, and stored by both
/// followers: see [`b_held_on_the_leader`].
struct HeldWrite {
    /// The leader's fdatasyncs, held until this is dropped.
    syncs: SyncsHeld,
    leader: u64,
    /// The leader's term when /b was proposed.
    term: u64,
    followers: Vec<u64>,
    /// The log index of /b's entry.
    entry: u64,
    write: JoinHandle<WriteResult>,
}

/// A filesystem's fsyncs held ([`FaultFs::hold_syncs`]) until this is dropped, whichever way
/// the test ends: a log writer left in a held fsync would never let the test end, as its
/// store waits for it when the runtime drops it.
struct SyncsHeld(FaultFs);

impl SyncsHeld {
    fn hold(fs: &FaultFs) -> SyncsHeld {
        fs.hold_syncs();
        SyncsHeld(fs.clone())
    }
}

impl Drop for SyncsHeld {
    fn drop(&mut self) {
        self.0.release_syncs();
    }
}

/// Starts three nodes on fault filesystems, writes /a and waits until every node applied it,
/// then holds the leader's fdatasyncs, proposes /b on it and waits until both followers hold
/// its entry. The syncs stay held until [`HeldWrite::syncs`] is dropped.
async fn b_held_on_the_leader() -> Result<(Ensemble, HeldWrite)> {
    let e = Ensemble::start_on(3, true).await?;
    let (leader, i) = e.lead_and_write("/a", b"one").await?;
    e.applied_everywhere(i, "/a", b"one").await?;
    let followers: Vec<u64> = e.nodes.keys().copied().filter(|&id| id != leader).collect();
    // /b's entry follows the leader's last one: /a's, or the first entry of a term the leader
    // began since (a second election on a loaded machine), read once it has applied all it holds.
    // An election after this shows in the term.
    let settled = e.nodes[&leader]
        .raft
        .wait(Some(DEADLINE))
        .metrics(
            |m| m.state == openraft::ServerState::Leader && m.last_applied.map(|l| l.index) == m.last_log_index,
            "the leader to apply every entry it holds",
        )
        .await
        .map_err(|err| anyhow!("server {leader} did not settle as leader: {err}"))?;
    let (term, entry) = (settled.current_term, settled.last_log_index.unwrap_or(i) + 1);
    let syncs = SyncsHeld::hold(&e.faults[&leader]);
    let raft = e.nodes[&leader].raft.clone();
    let write = tokio::spawn(async move { raft.client_write(vec![create("/b", b"two")]).await });
    for f in &followers {
        let stored = e.nodes[f]
            .raft
            .wait(Some(DEADLINE))
            .log_index_at_least(Some(entry), "the entry to reach a follower while the leader's fsync is held")
            .await;
        if let Err(err) = stored {
            bail!("server {f} did not receive entry {entry} during the leader's fsync: {err}");
        }
    }
    Ok((e, HeldWrite { syncs, leader, term, followers, entry, write }))
}

/// The leader's fdatasync of an entry runs while its followers store the entry and answer, as
/// a ZooKeeper leader logs a proposal while it sends it: the leader takes in their
/// acknowledgements with its own fdatasync held. And while it is held, nothing is applied and
/// the write is not answered anywhere, though both followers hold the entry durably.
///
/// A loaded machine can hold up the leader's heartbeats past an election timeout: a follower
/// then leads a new term, and rightly commits and applies the entry, which its own log holds.
/// That attempt tested nothing and is made again (at most [`ATTEMPTS`] in all).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaders_entry_reaches_the_followers_during_its_own_fsync_and_nothing_applies_before_it_ends() -> Result<()> {
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        let (e, HeldWrite { syncs, leader, term, followers, entry, mut write }) = b_held_on_the_leader().await?;
        let held = async {
            e.nodes[&leader]
                .raft
                .wait(Some(DEADLINE))
                .metrics(
                    |m| {
                        m.replication.as_ref().is_some_and(|r| {
                            followers.iter().all(|f| r.get(f).is_some_and(|l| l.is_some_and(|l| l.index >= entry)))
                        })
                    },
                    "both followers to acknowledge the entry",
                )
                .await
                .map_err(|err| anyhow!("the followers' acknowledgements did not reach the leader: {err}"))?;
            // A quorum holds the entry durably, the leader counts itself in: yet for five
            // heartbeat rounds nobody applies it and the write is not answered, as the leader's
            // copy is not on its disk.
            let window = tokio::time::timeout(Duration::from_millis(500), &mut write).await;
            ensure!(window.is_err(), "the write was answered before the leader's fsync: {window:?}");
            for (id, n) in &e.nodes {
                ensure!(
                    n.last_applied() < Some(entry),
                    "server {id} applied entry {entry} before the leader's fsync (leader {leader} of term {term}; \
                     the servers' metrics: {:?})",
                    e.nodes.iter().map(|(id, n)| (*id, n.raft.metrics().borrow().clone())).collect::<Vec<_>>()
                );
                ensure!(n.data("/b").is_none(), "server {id} shows /b before the leader's fsync");
            }
            Ok::<_, anyhow::Error>(())
        };
        let checked = held.await;
        let terms: BTreeMap<u64, u64> =
            e.nodes.iter().map(|(&id, n)| (id, n.raft.metrics().borrow().current_term)).collect();
        drop(syncs);
        if terms.values().any(|&t| t != term) {
            let what = format!(
                "attempt {attempt}: an election overtook server {leader}, leader of term {term}, during its held \
                 fsync (the servers' terms: {terms:?}); the check {}",
                if checked.is_ok() { "held" } else { "failed" }
            );
            e.stop_all().await?;
            ensure!(attempt < ATTEMPTS, "{what}, and so did every attempt: the claim was never put to the test");
            eprintln!("{what}: again");
            continue;
        }
        checked?;
        let reply = within_for(DEADLINE, "the write once the leader's fsync is done", write)
            .await??
            .map_err(|err| anyhow!("the write failed: {err}"))?;
        ensure!(reply.log_id.index == entry, "the write was answered as entry {}, not {entry}", reply.log_id.index);
        e.applied_everywhere(entry, "/b", b"two").await?;
        return e.stop_all().await;
    }
    unreachable!("every attempt returns or continues")
}

/// The leader's own entries count toward a quorum before its fdatasync: when it dies before
/// that fdatasync, its followers may hold an entry of its term that its disk lost. Restarted
/// with every other server, it must not take up its old term again: as that term's leader it
/// would write a different entry under the same log id, which the followers take for the one
/// they hold, so the servers' trees part. It campaigns for a new term instead, and the entry
/// its followers kept is in every tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_lost_its_unsynced_entries_never_leads_their_term_again() -> Result<()> {
    // The leader's fdatasync of /b is held; both followers store /b durably.
    let (mut e, HeldWrite { syncs, leader, followers, write, .. }) = b_held_on_the_leader().await?;
    // The leader's machine loses power before its fdatasync: /b is not on its disk, and the
    // write was never answered.
    e.faults[&leader].crash();
    // The power loss ended the hold.
    drop(syncs);
    let unanswered = within_for(DEADLINE, "the write to fail with the leader's log", write).await??;
    assert!(unanswered.is_err(), "a write the leader never made durable was answered: {unanswered:?}");
    let crashed = e.nodes.remove(&leader).expect("the leader runs");
    let _ = crashed.stop.map(|stop| stop.send(()));
    let _ = crashed.raft.shutdown().await;
    within_for(DEADLINE, "the crashed leader's peer listener to stop", crashed.listener).await??;
    for f in &followers {
        e.stop(*f).await?;
    }

    // Everyone starts again at once.
    for id in [leader, followers[0], followers[1]] {
        e.restart(id).await?;
    }
    let (now, c) = e.lead_and_write("/c", b"three").await?;
    for (id, n) in &e.nodes {
        n.raft
            .wait(Some(DEADLINE))
            .applied_index_at_least(Some(c), "the write after the restart to be applied")
            .await
            .map_err(|err| anyhow!("server {id} did not apply entry {c}: {err}"))?;
    }
    // Each server's /b and /c.
    type Held = (Option<Vec<u8>>, Option<Vec<u8>>);
    let trees: BTreeMap<u64, Held> = e.nodes.iter().map(|(&id, n)| (id, (n.data("/b"), n.data("/c")))).collect();
    let first = trees.values().next().cloned();
    assert!(trees.values().all(|t| Some(t) == first.as_ref()), "the servers' trees parted: {trees:?}");
    e.applied_everywhere(c, "/b", b"two").await?;
    let term = e.nodes[&now].raft.metrics().borrow().current_term;
    assert!(term > 1, "the ensemble leads term {term}, the lost entry's");
    e.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_peers_survive_two_losses_and_stop_committing_at_the_third() -> Result<()> {
    let mut e = Ensemble::start(5).await?;
    let (leader, i) = e.lead_and_write("/a", b"one").await?;
    e.applied_everywhere(i, "/a", b"one").await?;

    e.stop(leader).await?;
    let (second, took) = e.agreed_leader(Some(leader)).await?;
    eprintln!("server {leader} stopped; server {second} leads after {took:?}");
    let i = e.write(second, "/b", b"two").await?;
    e.applied_everywhere(i, "/b", b"two").await?;

    // Three of five still commit.
    e.stop(e.follower(second)).await?;
    let i = e.write(second, "/c", b"three").await?;
    e.applied_everywhere(i, "/c", b"three").await?;
    e.applied_everywhere(i, "/a", b"one").await?;

    // Two of five do not.
    e.stop(e.follower(second)).await?;
    proposal_does_not_commit(&e, second, "/d").await?;
    e.stop_all().await
}

/// A vote request, the smallest thing to send over a link.
fn vote_from(id: u64) -> VoteRequest<u64> {
    VoteRequest { vote: Vote::new(0, id), last_log_id: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_live_servers_id_is_refused_at_either_end() -> Result<()> {
    let e = Ensemble::start(3).await?;
    let (leader, i) = e.lead_and_write("/a", b"one").await?;
    // The leader hears every follower at each heartbeat, so it knows each one is alive.
    let real = e.follower(leader);
    e.applied_everywhere(i, "/a", b"one").await?;
    let option = RPCOption::new(Duration::from_secs(2));
    let leader_node = BasicNode { addr: e.addrs[&leader].clone() };

    // Dialling in: an impostor with the follower's id dials the leader and is refused.
    let impostor = LocalIdentity::new(CLUSTER, real, incarnation_of(real));
    let mut net = PeerNetwork::new(impostor, e.addrs.clone(), LinkOptions::default(), Arc::default());
    let err = net.new_client(leader, &leader_node).await.vote(vote_from(real), option.clone()).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&format!("duplicate server id {real}")), "the impostor is told why: {msg}");

    // Answering: the impostor listens somewhere, and the leader's own process dials it there
    // as that id. The leader refuses to talk to it, naming both processes.
    let dir = ScratchDir::new("peer-raft-impostor")?;
    let l = TcpListener::bind("127.0.0.1:0").await?;
    let mut addrs = e.addrs.clone();
    addrs.insert(real, l.local_addr()?.to_string());
    let fake = start_node(real, l, &dir, incarnation_of(real), &addrs, Arc::new(RealFs)).await?;
    let leader_side = &e.nodes[&leader];
    let mut net = PeerNetwork::new(leader_side.local, addrs, LinkOptions::default(), leader_side.sightings.clone());
    let real_node = BasicNode { addr: e.addrs[&real].clone() };
    let err = net.new_client(real, &real_node).await.vote(vote_from(leader), option.clone()).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&format!("two live servers claim id {real}")), "the dialler says why: {msg}");
    fake.stop().await?;

    // The real follower is untouched: writes still reach every node.
    let i = e.write(leader, "/b", b"two").await?;
    e.applied_everywhere(i, "/b", b"two").await?;

    // Another cluster is refused too, with both ids named.
    let stranger = LocalIdentity::new(CLUSTER + 1, real, incarnation_of(real));
    let mut net = PeerNetwork::new(stranger, e.addrs.clone(), LinkOptions::default(), Arc::default());
    let err = net.new_client(leader, &leader_node).await.vote(vote_from(real), option).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("wrong cluster id"), "the stranger is told why: {msg}");
    e.stop_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_data_was_wiped_is_refused_under_its_old_id_at_either_end() -> Result<()> {
    let mut e = Ensemble::start(3).await?;
    let (leader, i) = e.lead_and_write("/a", b"one").await?;
    let wiped = e.follower(leader);
    let kept = (1..=3).find(|&id| id != leader && id != wiped).context("a third server")?;
    // Every server has now heard every other one, with its data directory.
    e.applied_everywhere(i, "/a", b"one").await?;

    // The follower loses its disk and comes back under its old id and address, with an empty
    // log and no memory of its votes.
    e.stop(wiped).await?;
    e.restart_wiped(wiped).await?;
    let option = RPCOption::new(Duration::from_secs(2));

    // Dialling in: the wiped server asks the leader for a vote and is refused, told why.
    let node = BasicNode { addr: e.addrs[&leader].clone() };
    let mut net = PeerNetwork::new(e.nodes[&wiped].local, e.addrs.clone(), LinkOptions::default(), Arc::default());
    let err = net.new_client(leader, &node).await.vote(vote_from(wiped), option.clone()).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&format!("server {wiped} presents a new data directory")), "refused with the reason: {msg}");
    assert!(msg.contains("new member"), "and told what to do: {msg}");

    // Dialled: the leader's own process reaches the wiped server and sends it nothing.
    let leader_side = &e.nodes[&leader];
    let mut net =
        PeerNetwork::new(leader_side.local, e.addrs.clone(), LinkOptions::default(), leader_side.sightings.clone());
    let node = BasicNode { addr: e.addrs[&wiped].clone() };
    let err = net.new_client(wiped, &node).await.vote(vote_from(leader), option).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("is not spoken to") && msg.contains("new data directory"), "the dialler says why: {msg}");

    // The other two go on; the wiped server is sent none of the log under its old id.
    let i = e.write(leader, "/b", b"two").await?;
    let kept_node = &e.nodes[&kept];
    within_for(DEADLINE, "the kept follower to apply the write", async {
        while kept_node.last_applied() < Some(i) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    let w = &e.nodes[&wiped];
    assert!(w.last_applied().unwrap_or(0) < i && w.data("/a").is_none(), "the wiped server received the log");
    e.stop_all().await
}

/// A proof round of leadership goes out only from a leader, under its own vote: a follower
/// that tries one (a round started a second after its callers, by a leader deposed meanwhile)
/// is refused at once and sends nothing. Sent, it would carry the new leader's vote, and reach
/// that leader as an AppendEntries of its own term, which openraft follows (and a debug build
/// asserts it never does while it leads): the leader's core stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_sends_no_proof_round_under_its_leaders_vote() -> Result<()> {
    let e = Ensemble::start(3).await?;
    let (leader, i) = e.lead_and_write("/before", b"0").await?;
    e.applied_everywhere(i, "/before", b"0").await?;
    let follower = e.follower(leader);
    let node = &e.nodes[&follower];
    let proved =
        within_for(DEADLINE, "a follower's proof round", read_index::prove_once(&node.raft, &node.network)).await?;
    // The leader first: a proof sent in its name would have stopped its core.
    let i = e.write(leader, "/after", b"1").await.context("the leader still takes writes")?;
    e.applied_everywhere(i, "/after", b"1").await?;
    let running = e.nodes[&leader].raft.metrics().borrow().running_state.clone();
    ensure!(running.is_ok(), "the leader's core stopped: {running:?}");
    match proved {
        Err(why) => ensure!(why.contains("does not lead"), "refused for another reason: {why}"),
        Ok(term) => bail!("a follower proved the leadership of term {term}"),
    }
    e.stop_all().await
}

/// Whether `changed` is ready at its first poll.
async fn ready_now<F: std::future::Future>(changed: F) -> bool {
    tokio::time::timeout(Duration::ZERO, changed).await.is_ok()
}

/// The server's long-running watchers follow its role through [`RoleWatch`]: writes do not wake
/// it (openraft's full metrics, sent again at every step, do), a change of leader does, and a
/// new leader is seen to settle once it has applied an entry of its own term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_watch_sleeps_through_writes_and_wakes_for_a_new_leader() -> Result<()> {
    let mut e = Ensemble::start(3).await?;
    let (leader, i) = e.lead_and_write("/settle", b"0").await?;
    e.applied_everywhere(i, "/settle", b"0").await?;
    let follower = e.follower(leader);
    let mut on_leader = RoleWatch::new(&e.nodes[&leader].raft);
    let mut on_follower = RoleWatch::new(&e.nodes[&follower].raft);
    let mut full = e.nodes[&follower].raft.metrics();
    let role = on_leader.current();
    assert!(role.leads() && role.settled, "the leader has applied an entry of its term: {role:?}");
    let role = on_follower.current();
    assert!(!role.leads() && !role.settled && role.leader == Some(leader), "{role:?}");
    full.borrow_and_update();

    let mut last = 0;
    for n in 0..20 {
        let path = format!("/w{n}");
        last = e.write(leader, &path, b"x").await?;
    }
    e.applied_everywhere(last, "/w19", b"x").await?;
    assert!(ready_now(full.changed()).await, "the writes changed openraft's full metrics");
    assert!(!ready_now(on_follower.changed()).await, "20 writes woke the follower's role watch");
    assert!(!ready_now(on_leader.changed()).await, "20 writes woke the leader's role watch");

    e.stop(leader).await?;
    within_for(DEADLINE, "the follower's role watch to wake for the lost leader", on_follower.changed()).await??;
    let (second, _) = e.agreed_leader(Some(leader)).await?;
    let mut on_second = RoleWatch::new(&e.nodes[&second].raft);
    let settled = async {
        while !on_second.current().settled {
            on_second.changed().await?;
        }
        anyhow::Ok(())
    };
    within_for(DEADLINE, "the new leader's role watch to see it settled", settled).await??;
    let role = on_second.current();
    assert!(role.leads() && role.term > 1 && role.leader == Some(second), "{role:?}");
    e.stop_all().await
}

/// Sockets that connect to the peer port and send nothing take none of the slots the servers
/// need: a server that dials in while forty of them wait is heard, not refused as busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_on_the_peer_port_keep_no_server_out() -> Result<()> {
    let mut e = Ensemble::start(3).await?;
    let (leader, _) = e.lead_and_write("/a", b"one").await?;
    let returning = e.follower(leader);
    e.stop(returning).await?;
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(tokio::net::TcpStream::connect(&e.addrs[&leader]).await?);
    }
    // The stopped server's process, back: its first dial to the leader.
    let back = LocalIdentity::new(CLUSTER, returning, incarnation_of(returning));
    let mut net = PeerNetwork::new(back, e.addrs.clone(), LinkOptions::default(), Arc::default());
    let leader_node = BasicNode { addr: e.addrs[&leader].clone() };
    let option = RPCOption::new(Duration::from_secs(2));
    let answer = net.new_client(leader, &leader_node).await.vote(vote_from(returning), option).await;
    assert!(answer.is_ok(), "the returning server was not heard: {:?}", answer.err().map(|e| e.to_string()));
    drop(idle);
    e.stop_all().await
}
