//! The coordinator server: starts replication, accepts client connections, expires sessions.
//!
//! [`Coordinator::start`] checks the data directory's identity, recovers the Raft log and the
//! newest snapshot from it (the two at once, on two threads), refuses what it must not start
//! on (a damaged or partly deleted directory, with what to do for the server's role; a
//! server alone on a log whose membership is not itself alone), applies the recovered log to
//! the tree itself when this server is the only voter (every entry of its log is then committed),
//! brings up the Raft node (a cluster of one voter, or one member of the ensemble `servers`
//! lists, talking to the others through [`crate::peer`]) and waits until it leads and has
//! applied every entry it recovered (in an ensemble: until a leader is known); each phase is
//! logged with its duration;
//! [`Coordinator::serve`] takes an already bound listener and a shutdown future, as a library
//! should, and returns once every connection has stopped, or with an error as soon as the log
//! cannot make writes durable any more.
//!
//! An ensemble server started by [`Coordinator::launch`] instead serves its client port while
//! it waits for a leader, for as long as that takes, as ZooKeeper's servers do: sessions are
//! refused (their clients try another server) and four-letter words answered as by a server
//! that is not serving ([`crate::fourlw::NOT_SERVING`]), and the wait is logged with what the
//! server knows of its peers at growing intervals. A server that serves and then loses contact
//! with its leader past its staleness bound answers the same way until contact resumes
//! (`guard_staleness`), as a ZooKeeper server that has lost its leader does while it looks
//! for one.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::BasicNode;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::config::CoordinatorConfig;
use crate::connection::{self, now_ms, Shared};
use crate::datadir::{random_cluster_id, DataDir, DataDirError, KnownPeers};
use crate::log::{FileSystem, LogError, LogStore, RealFs, WalOptions};
use crate::peer::wire::{HeardFrom, PeerReply, PeerRequest};
use crate::peer::{serve_peers, LinkOptions, ListenerOptions, LocalIdentity, PeerNetwork, Sightings};
use crate::propose::Proposer;
use crate::proto::SessionId;
use crate::raft::{LoneNetwork, Raft, SnapshotDue, SnapshotPolicy, StateMachine};
use crate::read_index::PROVE_DEADLINE;
use crate::role::RoleWatch;
use crate::snapshot::{SnapshotDir, SnapshotError};
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
    /// The data directory belongs to someone else or cannot be used.
    #[error("data directory refused: {0}")]
    DataDir(#[from] DataDirError),
    /// The Raft log cannot be recovered.
    #[error("the Raft log cannot be opened: {0}")]
    Log(#[from] LogError),
    /// No usable snapshot, or one cannot be read.
    #[error("the snapshots cannot be loaded: {0}")]
    Snapshot(#[from] SnapshotError),
    /// A server configured to run alone on a log whose membership it could never lead in.
    #[error(
        "this server runs alone (its configuration lists no ensemble `servers`), but the log in {} (cluster \
         {cluster_id}) holds the membership {membership}, in which a server alone never becomes leader. Start it \
         with the ensemble's configuration (`cluster_id: {cluster_id}`, its `server_id`, and `servers` listing \
         those voters), or point data_dir at an empty directory to start a new cluster alone",
        dir.display()
    )]
    NotAlone {
        /// The data directory.
        dir: std::path::PathBuf,
        /// Its cluster id.
        cluster_id: u64,
        /// The membership in force, in words.
        membership: String,
    },
    /// The data directory's acknowledged state is damaged or partly gone, past what start-up
    /// repairs (a torn last write): nothing is guessed or dropped, and what to do about it
    /// depends on where else the writes live.
    #[error("{damage}. {recovery}")]
    Damaged {
        /// What start-up found.
        damage: Damage,
        /// What the operator does about it.
        recovery: Recovery,
    },
    /// The log could not make a write durable (failed fsync, full disk): the server stopped.
    #[error(
        "storage failed, the server stopped: {why}. No write was acknowledged without being \
         durable: each acknowledgement waits for the fsync that covers it, and none came after \
         this failure. Check the disk holding {} (free space, I/O errors in the kernel log), \
         then restart the server: it recovers every acknowledged write from its log",
        dir.display()
    )]
    Storage {
        /// What failed, on which file.
        why: String,
        /// The log's directory.
        dir: std::path::PathBuf,
    },
}

impl CoordinatorError {
    /// This error with what to do about it ([`CoordinatorError::Damaged`]) when it is damage
    /// start-up does not repair; any other error as it is.
    fn with_recovery(self, recovery: Recovery) -> Self {
        let damage = match self {
            CoordinatorError::Log(e @ (LogError::Corrupt { .. } | LogError::LostSavedState { .. })) => Damage::Log(e),
            CoordinatorError::Snapshot(e @ SnapshotError::Gap { .. }) => Damage::Snapshot(e),
            CoordinatorError::DataDir(e @ DataDirError::Incomplete { .. }) => Damage::DataDir(e),
            other => return other,
        };
        CoordinatorError::Damaged { damage, recovery }
    }
}

/// What start-up found damaged or missing in a data directory ([`CoordinatorError::Damaged`]).
#[derive(Debug, Error)]
pub enum Damage {
    /// The log, or its saved vote, commit and purge points.
    #[error("the Raft log cannot be opened: {0}")]
    Log(LogError),
    /// The snapshots the log needs.
    #[error("the snapshots cannot be loaded: {0}")]
    Snapshot(SnapshotError),
    /// The directory's layout.
    #[error("data directory refused: {0}")]
    DataDir(DataDirError),
}

/// What an operator does about a data directory whose acknowledged state is damaged or partly
/// gone. It depends on the server's role: an ensemble's other servers hold every committed
/// write (and refuse a wiped server under its old id), a server alone holds the only copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// A server of an ensemble.
    Ensemble {
        /// Its id.
        server_id: u64,
    },
    /// A server running alone.
    Alone,
}

impl Recovery {
    /// The recovery of a server configured by `config`.
    pub fn of(config: &CoordinatorConfig) -> Self {
        if config.is_ensemble() {
            Recovery::Ensemble { server_id: config.server_id() }
        } else {
            Recovery::Alone
        }
    }
}

impl std::fmt::Display for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recovery::Ensemble { server_id } => write!(
                f,
                "What to do: server {server_id} belongs to an ensemble, whose other servers hold every committed \
                 write. Remove it from the ensemble (`referee coordinator members remove --server ADMIN --id \
                 {server_id}`, ADMIN being any server's admin address), empty this data directory, and add the \
                 server back under a new id (`referee coordinator members add`): its peers refuse a directory made \
                 again under its old id. Never restore a voter's data directory from a backup: it would come back \
                 without votes it cast and entries it acknowledged, and the ensemble could elect a leader without \
                 writes it had committed"
            ),
            Recovery::Alone => f.write_str(
                "What to do: this server runs alone, so its data directory holds the only copy of its writes. \
                 Restore the directory from a backup (the writes made since that backup are lost), or, if they do \
                 not matter, move it aside and start on an empty one",
            ),
        }
    }
}

/// A running coordinator server.
pub struct Coordinator {
    shared: Arc<Shared>,
    /// Becomes `Some(why)` when the log stops taking writes.
    log_stopped: watch::Receiver<Option<String>>,
    /// Stops the log when a write or fdatasync of it hangs (`log_sync_stall_ms`).
    stall: crate::log::StallWatch,
    log_dir: std::path::PathBuf,
    /// The peer listener of an ensemble server, stopped after replication.
    peers: Option<PeerService>,
    /// The bound admin HTTP listener (`admin_listen`), served from [`Coordinator::serve`].
    admin: Option<TcpListener>,
    /// Says when the state machine wants a snapshot (see [`StateMachine::snapshot_due`]).
    snapshot_due: SnapshotDue,
    /// When start-up began, for the time to serving.
    began: Instant,
    /// Set while an ensemble server launched by [`Coordinator::launch`] has yet to find a
    /// leader: what it waits for.
    awaiting: Option<AwaitingLeader>,
    /// The data directory's lock, held until the server is dropped (see [`crate::datadir`]).
    _data_lock: Arc<crate::log::FileLock>,
}

/// A running peer listener.
struct PeerService {
    /// Stops the peer listener and the elections (see [`campaign_when_leader_lapses`]).
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    /// The links to the other servers, for forwarded writes and liveness reports.
    network: PeerNetwork,
}

/// How a server starts, beyond its configuration.
#[derive(Debug, Default)]
pub struct Startup {
    /// Initialise the ensemble's membership (the voters of `servers`) if this server's data
    /// directory holds none yet. Needed once, on one server, when an ensemble first starts;
    /// later starts rejoin from the log. A server running alone initialises itself always.
    pub initialise: bool,
    /// The bound peer listener of an ensemble server; bound from `servers` when `None`.
    pub peer_listener: Option<TcpListener>,
}

/// How often a Raft leader sends heartbeats, in milliseconds.
const HEARTBEAT_MS: u64 = 100;

/// openraft's `max_payload_entries`: the most entries one AppendEntries is read with (see
/// [`crate::peer::client::MAX_APPEND_BYTES`] for what is sent of them).
const MAX_PAYLOAD_ENTRIES: u64 = 64;
/// The shortest election timeout, in milliseconds.
const ELECTION_TIMEOUT_MIN_MS: u64 = 300;
/// The longest election timeout, in milliseconds. Openraft 0.9 also takes it as the voters'
/// lease on their leader: a voter refuses every vote until it has not heard the leader for this
/// long (see [`crate::staleness::LEASE`]).
const ELECTION_TIMEOUT_MAX_MS: u64 = crate::staleness::LEASE.as_millis() as u64;

/// How long an ensemble server waits for a leader before it first logs the wait, with what it
/// knows of its peers; each later report comes twice as long after the last one, up to
/// [`LEADERLESS_REPORT_MAX`]. An election takes about a second.
const LEADERLESS_REPORT_FIRST: Duration = Duration::from_secs(5);
/// How long the log's purge past its end waits for the snapshot it purges behind to be on disk
/// (see [`LogStore::purging_past_its_end_after`]): a snapshot of 100,000 znodes is written in
/// well under a second; past this, the server stops rather than purge without it.
const SNAPSHOT_ON_DISK_PATIENCE: Duration = Duration::from_secs(60);
/// The longest time between two reports of a wait for a leader.
const LEADERLESS_REPORT_MAX: Duration = Duration::from_secs(60);
/// How often a server waiting for its leader looks for contact with it, which its Raft metrics
/// do not show.
const CONTACT_POLL: Duration = Duration::from_millis(20);

impl Coordinator {
    /// Starts replication on the real filesystem; see [`Coordinator::start_on`].
    pub async fn start(config: CoordinatorConfig) -> Result<Self, CoordinatorError> {
        Self::start_on(config, Arc::new(RealFs)).await
    }

    /// Opens the data directory on `fs`, recovers the log and the newest snapshot, starts
    /// replication, and waits until this server leads and has applied every recovered entry
    /// (so no client reads a tree older than a write it was told is done). Blocks on file I/O
    /// while recovering.
    pub async fn start_on(config: CoordinatorConfig, fs: Arc<dyn FileSystem>) -> Result<Self, CoordinatorError> {
        Self::start_with(config, fs, Startup::default()).await
    }

    /// As [`Coordinator::start_on`], with the ensemble's start-up choices. An ensemble server
    /// (one whose `servers` lists others) serves its peers from here on and waits until a
    /// leader is known, however long that takes; a follower's or observer's clients write
    /// through it (see [`crate::propose`]).
    pub async fn start_with(
        config: CoordinatorConfig,
        fs: Arc<dyn FileSystem>,
        startup: Startup,
    ) -> Result<Self, CoordinatorError> {
        let mut coordinator = Self::launch(config, fs, startup).await?;
        if let Some(awaiting) = coordinator.awaiting.take() {
            let network = coordinator.peers.as_ref().map(|p| p.network.clone());
            awaiting.wait(&coordinator.shared, network).await?;
        }
        Ok(coordinator)
    }

    /// As [`Coordinator::start_with`], except that an ensemble server returns before a leader
    /// is known: [`Coordinator::serve`] then answers on the client port while it waits (as a
    /// server that is not serving, see the module's description) and takes sessions once the
    /// ensemble has a leader. How the `referee coordinator` command starts.
    pub async fn launch(
        config: CoordinatorConfig,
        fs: Arc<dyn FileSystem>,
        startup: Startup,
    ) -> Result<Self, CoordinatorError> {
        for advice in config.advice() {
            warn!("{advice}");
        }
        // Bound before replication starts, so a taken port fails the start with nothing to undo.
        let admin = crate::admin::bind(&config).await?;
        let node_id = config.server_id();
        let every = config.snapshot_every_txns;
        let raft_config = openraft::Config {
            cluster_name: "referee-coordinator".into(),
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
            election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
            // Snapshots are counted in transactions by the state machine, which asks for them
            // (`snapshot_when_due`); openraft's own policy counts entries, which are batches.
            snapshot_policy: openraft::SnapshotPolicy::Never,
            // The log store keeps the log back to the snapshot before the newest
            // (`purging_one_snapshot_late`), so a damaged newest snapshot can be skipped.
            // Openraft counts the log from the newest: a follower behind it gets the snapshot.
            max_in_snapshot_log_to_keep: 0,
            // In an ensemble, elections are called after a pre-vote (`campaign_when_leader_lapses`);
            // a server alone elects itself.
            enable_elect: !config.is_ensemble(),
            // What openraft's blocking `add_learner` waits for (and all this threshold does in
            // openraft 0.9): the new member within this many entries of the leader's log. The
            // admin API's caught-up bound, so an observer added answers once it could be
            // promoted, rather than 5000 entries behind. (A server that acknowledged nothing
            // counts as behind by the log's length: on a short log the wait ends at once, so
            // a voter added is also checked itself, `admin::until_ready_to_vote`.)
            replication_lag_threshold: crate::admin::PROMOTE_MAX_LAG,
            // Entries read from the log for one AppendEntries; the link then sends as many of
            // them as fit in `MAX_APPEND_BYTES` (openraft keeps that count for its next ten
            // calls, then reads this many again). openraft's 300 read and decoded up to 300
            // entries of up to 8 MiB each time, for one or two to be sent; each entry is a
            // batch of transactions, so 64 still carry thousands of small writes.
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| CoordinatorError::RaftConfig(e.to_string()))?);
        let mut phases = StartPhases::new();
        let recovery = Recovery::of(&config);
        let advised = |e: CoordinatorError| e.with_recovery(recovery);
        let data = DataDir::open(fs.as_ref(), &config.data_dir, config.cluster_id, node_id, random_cluster_id)
            .map_err(|e| advised(e.into()))?;
        phases.done("data directory opened", &[]);
        let cluster_id = data.identity.cluster_id;
        let log_dir = data.log_dir();
        let state = {
            let mut st = ServerState::new(config.extended_types_enabled, Duration::from_millis(config.tick_ms));
            st.server_id = node_id;
            Arc::new(Mutex::new(st))
        };
        let every_bytes = match config.snapshot_every_bytes {
            0 => u64::MAX,
            n => n,
        };
        let policy = SnapshotPolicy { every_txns: every, retry_gap_txns: (every / 10).max(1), every_bytes };
        // The log and the newest snapshot are read and checked at the same time, on two
        // threads (each is a few hundred milliseconds with 100,000 znodes); the snapshot needs
        // only the log's purge point, which is in its small state file.
        let purged_upto =
            crate::log::wal::saved_purge_point(fs.as_ref(), &log_dir, cluster_id).map_err(|e| advised(e.into()))?;
        let (log, sm, log_took) = std::thread::scope(|scope| {
            let log = scope.spawn(|| {
                let began = Instant::now();
                LogStore::open(fs.clone(), WalOptions::new(&log_dir, cluster_id)).map(|l| (l, began.elapsed()))
            });
            let sm = SnapshotDir::open(fs.clone(), data.snapshot_dir(), cluster_id, config.snapshots_to_keep)
                .and_then(|snapshots| StateMachine::open(state.clone(), snapshots, purged_upto, policy));
            let log = log.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            // The log's error first: a damaged log is the more telling of the two.
            let (log, log_took) = log?;
            let snapshot = newest_snapshot_file(fs.as_ref(), &data.snapshot_dir());
            crate::log::wal::check_saved_state(&log_dir, &log.meta(), log.last_index(), snapshot)?;
            let sm = sm?;
            let log = log
                .purging_one_snapshot_late()
                .purging_past_its_end_after(sm.snapshots_on_disk(), SNAPSHOT_ON_DISK_PATIENCE);
            Ok::<_, CoordinatorError>((log, sm, log_took))
        })
        .map_err(advised)?;
        // The leader's fdatasync runs while its entries go to the followers; applies wait for
        // it (`LogStore::pipelining_as_leader`, and `holding_commits_to` below for followers).
        let log = log.pipelining_as_leader(node_id);
        // A voter of an ensemble refuses no vote for a lease on a leader it has not heard since
        // it started (`LogStore::free_to_vote_at_start`; the pre-vote keeps elections away
        // from a working leader).
        let log = if config.is_ensemble() { log.free_to_vote_at_start(node_id) } else { log };
        // A server alone waits for no follower: its appends are synced by their caller when the
        // writer thread is idle and no other batch of writes is on its way
        // (`LogStore::syncing_own_entries_inline`).
        let slots = crate::propose::BatchSlots::default();
        let log = if config.is_ensemble() {
            log
        } else {
            let slots = slots.clone();
            log.syncing_own_entries_inline(move || slots.in_flight() <= 1)
        };
        let sm = sm.applying_only_durable(log.durable());
        debug_assert_eq!(log.meta().last_purged.map_or(0, |l| l.index), purged_upto);
        let log_stopped = log.stop_watch();
        let stall = log.stall_watch();
        let recovered_upto = log.last_index();
        let snapshot_due = sm.snapshot_due();
        let nodes = state.lock().unwrap_or_else(|p| p.into_inner()).tree.node_count() as u64;
        phases.done(
            "log read and checked, snapshot loaded",
            &[
                ("log_ms", log_took.as_millis() as u64),
                ("last_index", recovered_upto.unwrap_or(0)),
                ("purged_upto", purged_upto),
                ("applied_upto", sm.last_applied().map_or(0, |l| l.index)),
                ("znodes", nodes),
            ],
        );
        let pending = membership_after_applied(&log, &sm)?;
        if !config.is_ensemble() {
            // A server alone wins elections only in a membership of itself: any other (an
            // ensemble member's directory, or a change of voters begun on this server) would
            // leave it waiting for a leadership that can never come.
            let mut sm = sm.clone();
            let (_, applied) = openraft::storage::RaftStateMachine::applied_state(&mut sm)
                .await
                .map_err(|e| CoordinatorError::Raft(e.to_string()))?;
            let in_force = pending.clone().unwrap_or_else(|| applied.membership().clone());
            if let Some(membership) = not_alone_in(node_id, &in_force) {
                return Err(CoordinatorError::NotAlone { dir: config.data_dir.clone(), cluster_id, membership });
            }
        }
        let replayed = replay_if_sole_voter(&log, &sm, node_id, pending.as_ref())?;
        let (entries, txns) = replayed.unwrap_or_default();
        phases.done("log replayed", &[("entries", entries), ("txns", txns)]);
        // A sole voter with a saved vote is never the committed leader of its saved term here
        // (stopped mid-election, or stopped leading: the log store has read its old leadership
        // back as a vote not yet granted, see `LogStore::pipelining_as_leader` above). It would
        // wait out an election timeout (300 to 600 ms) with nobody to hear from, so it
        // campaigns at once (always safe: an election only ever replaces a leader through a new
        // term).
        let campaign_at_once = replayed.is_some() && log.meta().vote.is_some();
        let (raft, peers) = if config.is_ensemble() {
            let known_peers = KnownPeers::open(fs.clone(), &data.root)?;
            let me = (cluster_id, data.identity.incarnation, known_peers);
            let (raft, peers) = start_ensemble_node(&config, me, raft_config, log, sm, state.clone(), startup).await?;
            (raft, Some(peers))
        } else {
            let raft = Raft::new(node_id, raft_config, LoneNetwork, log, sm)
                .await
                .map_err(|e| CoordinatorError::Raft(e.to_string()))?;
            if !raft.is_initialized().await.map_err(|e| CoordinatorError::Raft(e.to_string()))? {
                let members =
                    std::collections::BTreeMap::from([(node_id, BasicNode { addr: config.listen.to_string() })]);
                raft.initialize(members).await.map_err(|e| CoordinatorError::Raft(e.to_string()))?;
            } else if campaign_at_once {
                raft.trigger().elect().await.map_err(|e| CoordinatorError::Raft(e.to_string()))?;
            }
            (raft, None)
        };
        phases.done("Raft started", &[]);
        let read_index = state.lock().unwrap_or_else(|p| p.into_inner()).read_index.clone();
        let proposer = Proposer::spawn(raft.clone(), peers.as_ref().map(|p| p.network.clone()), read_index, slots);
        let proof = state.lock().unwrap_or_else(|p| p.into_inner()).quorum_proof.clone();
        let liveness = peers.as_ref().map(|_| Arc::new(crate::liveness::LivenessGate::new(proof)));
        let data_dir = config.data_dir.clone();
        let not_serving = std::sync::atomic::AtomicBool::new(peers.is_some());
        let shared = Arc::new(Shared { config: Arc::new(config), raft, proposer, liveness, state, not_serving });
        let began = phases.began;
        let mut awaiting = AwaitingLeader {
            phases,
            recovered_upto,
            cluster_id,
            data_dir,
            log_stopped: log_stopped.clone(),
            log_dir: log_dir.clone(),
        };
        if peers.is_none() {
            // Leading, and the tree holds every entry up to its own first one of the term (the
            // initial membership and the leader's blank entry on a fresh server): before that
            // a four-letter word or a first client would see a tree still catching up.
            let waiting = Instant::now();
            shared
                .raft
                .wait(Some(Duration::from_secs(10)))
                .metrics(|m| m.state == openraft::ServerState::Leader && leader_settled(m), "coordinator start")
                .await
                .map_err(|_| awaiting.wait_failed(&shared.raft, waiting.elapsed()))?;
            awaiting.phases.done("leader known", &[("term", shared.raft.metrics().borrow().current_term)]);
            awaiting.recovered(&shared).await?;
        } else {
            shared.lock().refusing_clients = Some("this server has not yet found the ensemble's leader".into());
        }
        let awaiting = peers.is_some().then_some(awaiting);
        let _data_lock = data.lock;
        Ok(Coordinator { shared, log_stopped, stall, log_dir, peers, admin, snapshot_due, began, awaiting, _data_lock })
    }

    /// The Raft node, for status reporting and for tests that wait on replication.
    pub fn raft(&self) -> Raft {
        self.shared.raft.clone()
    }

    /// The proposer every write of this server goes through, for its counts.
    pub fn proposer(&self) -> Proposer {
        self.shared.proposer.clone()
    }

    /// The bound address of the admin HTTP listener, if `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared state, for status reporting.
    pub fn state(&self) -> Arc<Mutex<ServerState>> {
        self.shared.state.clone()
    }

    /// Serves clients on `listener` until `shutdown` completes, then closes every connection,
    /// stops replication and returns.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), CoordinatorError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let local = listener.local_addr()?;
        let awaiting = self.awaiting.take();
        if awaiting.is_none() {
            info!(
                address = %local,
                since_start_ms = self.began.elapsed().as_millis() as u64,
                "coordinator serving ZooKeeper clients"
            );
        } else {
            info!(address = %local, "client port open: sessions are refused until the ensemble has a leader");
        }
        let mut tasks = JoinSet::new();
        let (start_failed_tx, mut start_failed) = tokio::sync::oneshot::channel::<CoordinatorError>();
        tasks.spawn(expire_sessions(self.shared.clone(), stop_rx.clone()));
        tasks.spawn(reap_containers(self.shared.clone(), stop_rx.clone()));
        tasks.spawn(snapshot_when_due(self.shared.raft.clone(), self.snapshot_due.clone(), stop_rx.clone()));
        if let Some(peers) = &self.peers {
            tasks.spawn(report_liveness(self.shared.clone(), peers.network.clone(), stop_rx.clone()));
            tasks.spawn(follow_leader_commit(self.shared.clone(), peers.network.clone(), stop_rx.clone()));
            tasks.spawn(prove_leadership(self.shared.clone(), peers.network.clone(), stop_rx.clone()));
            let (shared, network, mut stop) = (self.shared.clone(), peers.network.clone(), stop_rx.clone());
            let began = self.began;
            tasks.spawn(async move {
                if let Some(awaiting) = awaiting {
                    tokio::select! {
                        found = awaiting.wait(&shared, Some(network)) => match found {
                            Ok(()) => {}
                            // Replication stopped: `storage_failure` below says why.
                            Err(CoordinatorError::Raft(_)) => return,
                            Err(e) => {
                                let _ = start_failed_tx.send(e);
                                return;
                            }
                        },
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    info!(
                        address = %local,
                        since_start_ms = began.elapsed().as_millis() as u64,
                        "coordinator serving ZooKeeper clients"
                    );
                }
                guard_staleness(shared, stop).await
            });
            tasks.spawn(log_role_changes(self.shared.raft.clone(), stop_rx.clone()));
        }
        let ctx = crate::admin::AdminContext::new(
            self.shared.config.clone(),
            self.shared.raft.clone(),
            self.shared.state.clone(),
            self.shared.proposer.clone(),
        );
        let ctx = match &self.peers {
            Some(peers) => ctx.hearing_through(peers.network.clone()),
            None => ctx,
        };
        if self.peers.is_some() {
            tasks.spawn(crate::admin::keep_members_published(ctx.clone(), stopped(&stop_rx)));
            tasks.spawn(crate::admin::complete_interrupted_changes(ctx.clone(), stopped(&stop_rx)));
        }
        if let Some(admin) = self.admin.take() {
            info!(address = %admin.local_addr()?, "admin HTTP listener serving");
            let stopped = stopped(&stop_rx);
            tasks.spawn(async move {
                if let Err(e) = crate::admin::serve(admin, ctx, stopped).await {
                    warn!("the admin HTTP listener failed: {e}");
                }
            });
        }
        // A leader whose disk hangs still sends heartbeats, so the others would never elect
        // another, and every write of the ensemble would wait on that disk: past the bound the
        // log stops, which stops the server (`storage_failure`).
        if let Some(limit) = self.shared.config.log_sync_stall() {
            if let Err(e) = self.stall.watch_on_a_thread(limit) {
                warn!("cannot watch the log for a hung disk (log_sync_stall_ms): {e}");
            }
        }
        let mut next_conn: u64 = 1;
        tokio::pin!(shutdown);
        let storage_failed = storage_failure(self.shared.raft.clone(), self.log_stopped.clone());
        tokio::pin!(storage_failed);
        let mut failure = None;
        let (mut start_pending, mut start_failure) = (true, None);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                why = &mut storage_failed => {
                    error!("storage failed, stopping: {why}");
                    failure = Some(why);
                    break;
                }
                failed = &mut start_failed, if start_pending => {
                    start_pending = false;
                    // Closed without a word: the start is done, or there was nothing to wait for.
                    if let Ok(e) = failed {
                        error!("start-up failed, stopping: {e}");
                        start_failure = Some(e);
                        break;
                    }
                }
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
        let storage_failed = failure.is_some();
        if storage_failed {
            // No write can be acknowledged any more: replication stops first, so that a
            // leader's heartbeats end and the others elect one of them at once, not after the
            // connections' drain.
            stop_replication(&self.shared.raft).await;
        }
        let _ = stop_tx.send(true);
        let drain = Duration::from_secs(5);
        if tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await.is_err() {
            warn!("connections did not close within {drain:?}; aborting them");
            tasks.abort_all();
        }
        if !storage_failed {
            stop_replication(&self.shared.raft).await;
        }
        // Peers are served until replication has stopped: a leader handing over still talks.
        if let Some(peers) = self.peers {
            peers.stop.send_replace(true);
            if tokio::time::timeout(SHUTDOWN_STEP, peers.task).await.is_err() {
                warn!("the peer listener did not stop within {SHUTDOWN_STEP:?}; stopping without it");
            }
        }
        match (failure, start_failure) {
            (Some(why), _) => Err(CoordinatorError::Storage { why, dir: self.log_dir }),
            (None, Some(e)) => Err(e),
            (None, None) => Ok(()),
        }
    }

    /// Per-address connection limit (ZooKeeper's maxClientCnxns), counted from accept to close.
    fn admit(&self, peer: SocketAddr) -> bool {
        let limit = self.shared.config.max_connections_per_address;
        let mut st = self.shared.lock();
        let open = st.open_per_address.entry(peer.ip().to_canonical()).or_insert(0);
        if limit != 0 && *open >= limit {
            st.counters.connections_rejected += 1;
            warn!(%peer, limit, "too many connections from this address (max_connections_per_address); refusing");
            return false;
        }
        *open += 1;
        true
    }
}

/// What a server still does at start once Raft runs: find a leader (an ensemble server), and
/// see the log it recovered applied if it leads.
struct AwaitingLeader {
    phases: StartPhases,
    recovered_upto: Option<u64>,
    cluster_id: u64,
    data_dir: std::path::PathBuf,
    /// Why the log stopped, if it has: what ends a wait below early.
    log_stopped: watch::Receiver<Option<String>>,
    log_dir: std::path::PathBuf,
}

impl AwaitingLeader {
    /// Why a wait of start-up on Raft ended, after `waited`, without what it waited for. Raft's
    /// core quits on a storage error (a vote or entry it could not make durable, as on a full
    /// disk), which ends the wait at once: that failure, as a running server reports it. Only
    /// without one did the time run out with no leader.
    fn wait_failed(&self, raft: &Raft, waited: Duration) -> CoordinatorError {
        self.storage_failed(raft)
            .unwrap_or_else(|| CoordinatorError::NoLeader(Duration::from_millis(waited.as_millis() as u64)))
    }

    /// The storage failure that stopped the log or replication, if one did.
    fn storage_failed(&self, raft: &Raft) -> Option<CoordinatorError> {
        let fatal =
            || raft.metrics().borrow().running_state.as_ref().err().map(|f| format!("replication stopped: {f}"));
        let why = self.log_stopped.borrow().clone().or_else(fatal)?;
        Some(CoordinatorError::Storage { why, dir: self.log_dir.clone() })
    }

    /// Waits, for as long as it takes, until the ensemble has a settled leader (see
    /// [`leader_settled`]) that this process has heard from, reporting the wait at growing
    /// intervals with what this server knows of its peers through `network`; then as
    /// [`AwaitingLeader::recovered`]. Clears the server's refusal of clients when done. Fails
    /// only if replication stops meanwhile.
    ///
    /// Heard from, because a restarted server restores its last vote, and with it the leader
    /// it followed, who may be gone; and caught up, because a follower restarted (or added)
    /// while the ensemble wrote holds an old tree: a follower has found its leader once it has
    /// applied up to a read index the leader answered it, asked within the staleness bound (the
    /// bound's contact, see [`crate::staleness`]), as a ZooKeeper follower syncs with its
    /// leader before it serves. A restarted leader is settled only once it has applied an
    /// entry of its own new term, which a majority then holds.
    async fn wait(mut self, shared: &Shared, network: Option<PeerNetwork>) -> Result<(), CoordinatorError> {
        let raft = &shared.raft;
        let me = raft.metrics().borrow().id;
        let contact = shared.lock().leader_contact.clone();
        let bound = Duration::from_millis(shared.config.max_leader_silence_ms);
        let found = |m: &openraft::RaftMetrics<u64, BasicNode>| {
            if !leader_settled(m) {
                return false;
            }
            if m.current_leader == Some(me) {
                return true;
            }
            contact.caught_up(m.last_applied.map(|l| l.index));
            contact.current_since(Instant::now()).is_some_and(|s| s <= bound)
        };
        // Where the leader's log ends is asked here as well: `follow_leader_commit` runs only
        // once the server serves.
        let mut asked: Option<Instant> = None;
        info!(server_id = me, "waiting for the ensemble to elect a leader");
        let began = Instant::now();
        let mut report_in = LEADERLESS_REPORT_FIRST;
        let mut report_at = began + report_in;
        let mut metrics = raft.metrics();
        let leader = loop {
            {
                let m = metrics.borrow_and_update();
                if found(&m) {
                    break m.current_leader;
                }
            }
            let due = asked.is_none_or(|at| at.elapsed() >= commit_ask_every(bound));
            if let (Some(network), true) = (&network, due) {
                asked = Some(Instant::now());
                ask_leader_commit(shared, network, &contact, bound).await;
            }
            // Contact is not in the metrics: it is looked at again after a while.
            tokio::select! {
                changed = metrics.changed() => if changed.is_err() {
                    return Err(self.storage_failed(&shared.raft).unwrap_or_else(|| {
                        CoordinatorError::Raft("replication stopped while waiting for a leader".into())
                    }));
                },
                () = tokio::time::sleep(CONTACT_POLL) => {}
            }
            if Instant::now() >= report_at {
                let m = metrics.borrow();
                let membership = m.membership_config.membership();
                let heard = |id| network.as_ref().and_then(|n| n.heard_from(id));
                let peers = shared.config.servers.iter().filter(|s| s.id != me).map(|s| (s.id, heard(s.id)));
                warn!(
                    server_id = me,
                    waited_s = began.elapsed().as_secs(),
                    term = m.current_term,
                    last_log_index = m.last_log_index.unwrap_or(0),
                    "{}",
                    leaderless_report(
                        me,
                        &membership.voter_ids().collect(),
                        &membership.nodes().map(|(id, _)| *id).collect(),
                        peers
                    )
                );
                report_in = (report_in * 2).min(LEADERLESS_REPORT_MAX);
                report_at = Instant::now() + report_in;
            }
        };
        info!(server_id = me, leader = ?leader, waited_ms = began.elapsed().as_millis() as u64, "the ensemble has a leader");
        self.phases.done("leader known", &[("term", raft.metrics().borrow().current_term)]);
        self.recovered(shared).await?;
        shared.lock().refusing_clients = None;
        shared.not_serving.store(false, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Once a leader is known: if this server leads, waits until it has applied every entry it
    /// recovered (a leader commits, and so applies, every earlier entry once its first entry of
    /// the new term is committed; until then the tree may lack acknowledged writes). A
    /// follower's recovered tail may be one the leader replaces, so it does not wait for it.
    async fn recovered(&mut self, shared: &Shared) -> Result<(), CoordinatorError> {
        let leads = shared.leads();
        if let (Some(upto), true) = (self.recovered_upto, leads) {
            let waiting = Instant::now();
            shared
                .raft
                .wait(Some(Duration::from_secs(10)))
                .applied_index_at_least(Some(upto), "replaying the recovered log")
                .await
                .map_err(|_| self.wait_failed(&shared.raft, waiting.elapsed()))?;
        }
        self.phases.done("recovered log applied", &[]);
        info!(
            dir = %self.data_dir.display(),
            cluster_id = self.cluster_id,
            log_upto = ?self.recovered_upto,
            total_ms = self.phases.total_ms(),
            leads,
            "recovered the data directory"
        );
        Ok(())
    }
}

/// A background task's clock: wakes it every `period` (a tick missed while the task worked is
/// taken late, never in a burst) until the server stops.
struct Ticker {
    interval: tokio::time::Interval,
    stop: watch::Receiver<bool>,
}

impl Ticker {
    fn new(period: Duration, stop: watch::Receiver<bool>) -> Self {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticker { interval, stop }
    }

    /// Waits for the next tick: `false` once the server stops (or its sender is gone), which
    /// is looked at first.
    async fn tick(&mut self) -> bool {
        tokio::select! {
            biased;
            _ = self.stop.changed() => false,
            _ = self.interval.tick() => true,
        }
    }
}

/// Completes once `stop` says the server stops (or its sender is gone).
fn stopped(stop: &watch::Receiver<bool>) -> impl Future<Output = ()> + Send + 'static {
    let mut stop = stop.clone();
    async move {
        let _ = stop.wait_for(|s| *s).await;
    }
}

/// What an ensemble server waiting for a leader says about it: who it has heard from lately
/// (`peers`: each other server with how long ago it last sent a frame, `None` if never since
/// this process started), whether that makes a majority of `voters`, when its log holds no
/// membership at all how a server gets one, and when the membership its log holds does not
/// list it among its `members` (voters and observers), that it was removed.
fn leaderless_report(
    me: u64,
    voters: &std::collections::BTreeSet<u64>,
    members: &std::collections::BTreeSet<u64>,
    peers: impl Iterator<Item = (u64, Option<Duration>)>,
) -> String {
    if !members.is_empty() && !members.contains(&me) {
        let list: Vec<String> = members.iter().map(u64::to_string).collect();
        return format!(
            "no leader, and none will come: this server ({me}) is not a member of the ensemble its log holds \
             (members {}), so it was removed and no leader sends it anything. Stop it; to bring it back, wipe its \
             data directory and add it under a new id (`referee coordinator members add` on the ensemble)",
            list.join(", ")
        );
    }
    let (mut heard, mut silent) = (Vec::new(), Vec::new());
    let mut reachable: std::collections::BTreeSet<u64> = voters.iter().copied().filter(|&v| v == me).collect();
    for (id, ago) in peers {
        match ago.filter(|a| *a <= PEER_HEARD_LATELY) {
            Some(a) => {
                heard.push(format!("{id} ({} ms ago)", a.as_millis()));
                if voters.contains(&id) {
                    reachable.insert(id);
                }
            }
            None => silent.push(id.to_string()),
        }
    }
    let reachable_voters = reachable.len();
    let list = |v: &[String]| if v.is_empty() { "none".to_string() } else { v.join(", ") };
    let peers = format!("heard lately from servers: {}; not heard from: {}", list(&heard), list(&silent));
    let still = "still waiting: sessions are refused and four-letter words say this server is not serving";
    if voters.is_empty() {
        return format!(
            "no leader yet: this server's log holds no membership, so it waits to be reached by the ensemble's \
             leader. For a new ensemble, start one server with `referee coordinator --config FILE --init`; to \
             add this server to a running ensemble, use `referee coordinator members add` there; {peers}; {still}"
        );
    }
    let need = voters.len() / 2 + 1;
    let voter_list: Vec<String> = voters.iter().map(u64::to_string).collect();
    let quorum = if crate::staleness::quorum_granted(std::slice::from_ref(voters), &reachable) {
        format!(
            "{reachable_voters} of the voters {} are reachable, a majority: an election should follow (if none \
             does, this server may have been removed from the ensemble while it was away, and its log not told: \
             `referee coordinator members list` on another server shows the members)",
            voter_list.join(", ")
        )
    } else {
        format!(
            "a leader needs {need} of the voters {} running and reachable on their peer addresses, and {reachable_voters} are",
            voter_list.join(", ")
        )
    };
    format!("no leader yet: {quorum}; {peers}; {still}")
}

/// How recent a frame from a peer must be for a report of a wait for a leader to count the
/// peer as reachable: a few of the heartbeats and pre-vote rounds that flow between live
/// servers.
const PEER_HEARD_LATELY: Duration = Duration::from_secs(3);

/// Start-up phases, each logged with its duration as it ends (`REFEREE_LOG=info` shows them),
/// so a slow start names its slow step.
struct StartPhases {
    began: Instant,
    last: Instant,
}

impl StartPhases {
    fn new() -> Self {
        let now = Instant::now();
        StartPhases { began: now, last: now }
    }

    fn done(&mut self, phase: &'static str, figures: &[(&'static str, u64)]) {
        let now = Instant::now();
        let took_ms = (now - self.last).as_secs_f64() * 1e3;
        self.last = now;
        let figures: Vec<String> = figures.iter().map(|(k, v)| format!("{k}={v}")).collect();
        info!(phase, took_ms = format!("{took_ms:.1}"), figures = figures.join(" "), "start-up phase done");
    }

    fn total_ms(&self) -> u64 {
        self.began.elapsed().as_millis() as u64
    }
}

/// On a server that is the only voter, applies every entry of the recovered log after the
/// snapshot before Raft starts (see [`StateMachine::replay`]): all of them are committed, as
/// openraft would commit them on leading again. Elsewhere (several voters, or a change of
/// voters under way) leaves replay to openraft, which applies what it learns is committed.
/// The membership in force is `newer` (that of a membership entry after the applied one, see
/// [`membership_after_applied`]), else the applied one. Returns the entries and transactions
/// applied, or `None` if this server is not the only voter.
fn replay_if_sole_voter(
    log: &LogStore,
    sm: &StateMachine,
    me: u64,
    newer: Option<&openraft::Membership<u64, BasicNode>>,
) -> Result<Option<(u64, u64)>, CoordinatorError> {
    if !sm.sole_voter(me, newer) {
        return Ok(None);
    }
    let pending = log.encoded_after(sm.last_applied().map(|l| l.index));
    let decode = |e: &crate::log::EncodedEntry| {
        e.decode().map_err(|reason| LogError::BadEntry { index: e.log_id.index, reason })
    };
    // Decoded on a second thread while this one applies: the two take about as long.
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<openraft::Entry<crate::raft::TypeConfig>>>(4);
        let pending = &pending;
        let decoder = scope.spawn(move || -> Result<(), LogError> {
            for chunk in pending.chunks(DECODE_CHUNK) {
                let decoded = chunk.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
                if tx.send(decoded).is_err() {
                    break;
                }
            }
            Ok(())
        });
        let applied = sm.replay(rx.iter().flatten());
        // A decoding failure ends the stream early: what came before it is applied, and the
        // start fails naming the entry.
        decoder.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        Ok(Some(applied))
    })
}

/// The membership of the last membership entry of the log after the state machine's last
/// applied entry, committed or not (as openraft takes it): the one in force, unless `None`,
/// when the applied one is.
fn membership_after_applied(
    log: &LogStore,
    sm: &StateMachine,
) -> Result<Option<openraft::Membership<u64, BasicNode>>, CoordinatorError> {
    let pending = log.encoded_after(sm.last_applied().map(|l| l.index));
    let Some(e) = pending.iter().rev().find(|e| e.is_membership()) else { return Ok(None) };
    let index = e.log_id.index;
    match e.decode().map_err(|reason| LogError::BadEntry { index, reason })?.payload {
        openraft::EntryPayload::Membership(m) => Ok(Some(m)),
        _ => Err(LogError::BadEntry { index, reason: "not a membership".into() }.into()),
    }
}

/// The membership `m` said in words, when a server alone, `me`, could not lead in it: it has
/// voters (a new log has none, and is initialised) other than `me` alone, or a change of
/// voters under way. `None` when it can.
fn not_alone_in(me: u64, m: &openraft::Membership<u64, BasicNode>) -> Option<String> {
    let sets = m.get_joint_config();
    let alone = sets.iter().all(|voters| voters.len() == 1 && voters.contains(&me));
    if sets.iter().all(|voters| voters.is_empty()) || (alone && sets.len() == 1) {
        return None;
    }
    let list =
        |voters: &std::collections::BTreeSet<u64>| voters.iter().map(u64::to_string).collect::<Vec<_>>().join(", ");
    Some(match sets.as_slice() {
        [one] => format!("voters {}", list(one)),
        [old, new] => format!("voters {} joint with voters {} (a change of voters under way)", list(old), list(new)),
        _ => sets.iter().map(|v| format!("voters {}", list(v))).collect::<Vec<_>>().join(" joint with "),
    })
}

/// Entries decoded at a time while the log is replayed at start-up.
const DECODE_CHUNK: usize = 64;

/// Brings up this server's Raft node in the ensemble of `config.servers`: serves its peer port
/// and dials the others through [`PeerNetwork`], and initialises the membership when asked to
/// and the log holds none. Observers are added as learners by the initialising server once it
/// leads.
async fn start_ensemble_node(
    config: &CoordinatorConfig,
    (cluster_id, incarnation, known_peers): (u64, u64, KnownPeers),
    raft_config: Arc<openraft::Config>,
    log: LogStore,
    sm: StateMachine,
    state: Arc<Mutex<ServerState>>,
    startup: Startup,
) -> Result<(Raft, PeerService), CoordinatorError> {
    let node_id = config.server_id();
    state.lock().unwrap_or_else(|p| p.into_inner()).log_end = Some(log.reader());
    // A validated ensemble configuration lists this server.
    let me = config.this_server().ok_or_else(|| CoordinatorError::Raft("this server is not in `servers`".into()))?;
    let listener = match startup.peer_listener {
        Some(l) => l,
        None => TcpListener::bind(me.peer).await.map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on the peer address {} (servers, id {node_id}): {e}", me.peer),
            )
        })?,
    };
    let local = LocalIdentity::new(cluster_id, node_id, incarnation);
    let sightings = Arc::new(Sightings::new(known_peers));
    let network = PeerNetwork::new(local, config.peer_addresses(), LinkOptions::default(), sightings.clone())
        .holding_commits_to(log.durable());
    state.lock().unwrap_or_else(|p| p.into_inner()).read_index =
        Some(crate::read_index::ReadIndex::new(network.clone(), log.reader()));
    let raft = Raft::new(node_id, raft_config, network.clone(), log, sm)
        .await
        .map_err(|e| CoordinatorError::Raft(e.to_string()))?;
    let (stop, stopped) = watch::channel(false);
    let servers = config.servers.iter().map(|s| s.id).collect();
    info!(peer_address = %me.peer, server_id = node_id, cluster_id, "serving the ensemble's peers");
    // Elections run from here on, before this server has a leader to wait for: the first one
    // of a new ensemble, if its servers start one after another, is called again by them.
    let elections = campaign_when_leader_lapses(raft.clone(), state.clone(), network.clone(), stopped.clone());
    let mut stopped = stopped;
    let serving =
        serve_peers(listener, raft.clone(), state, local, servers, sightings, ListenerOptions::default(), async move {
            let _ = stopped.wait_for(|s| *s).await;
        });
    let task = tokio::spawn(async move {
        tokio::join!(serving, elections);
    });
    let peers = PeerService { stop, task, network };
    let initialised = raft.is_initialized().await.map_err(|e| CoordinatorError::Raft(e.to_string()))?;
    if initialised {
        if startup.initialise {
            info!("the ensemble is already initialised; --init has nothing to do");
        }
    } else if startup.initialise {
        let voters: std::collections::BTreeMap<u64, BasicNode> = config
            .servers
            .iter()
            .filter(|s| s.role == crate::config::Role::Voter)
            .map(|s| (s.id, BasicNode { addr: s.peer.to_string() }))
            .collect();
        info!(voters = ?voters.keys().collect::<Vec<_>>(), "initialising the ensemble");
        raft.initialize(voters).await.map_err(|e| CoordinatorError::Raft(e.to_string()))?;
        let observers: Vec<_> =
            config.servers.iter().filter(|s| s.role == crate::config::Role::Observer).cloned().collect();
        if !observers.is_empty() {
            tokio::spawn(add_observers(raft.clone(), observers));
        }
    } else {
        info!("this server's log holds no membership yet: waiting to be reached by the ensemble's leader (start one server with --init the first time)");
    }
    Ok((raft, peers))
}

/// Whether a leader is known and settled: another server, or this one once it has applied an
/// entry of its own term (which a majority then holds, with everything before it).
fn leader_settled(m: &openraft::RaftMetrics<u64, BasicNode>) -> bool {
    match m.current_leader {
        None => false,
        Some(l) if l == m.id => crate::role::settled_in(m.current_term, m.last_applied),
        Some(_) => true,
    }
}

/// Adds `observers` as learners once this server leads, as the last step of initialising.
/// Gives up (with the reason) if another server leads first: it must be done there, and
/// quietly if replication stops first.
async fn add_observers(raft: Raft, observers: Vec<crate::config::ServerEntry>) {
    let me = raft.metrics().borrow().id;
    // Not before this server's leadership has committed an entry: until then the initial
    // membership may be uncommitted, and openraft refuses a second change on top of it.
    // As long as it takes: the start waits for the same leader, and reports the wait.
    let Ok(m) = raft.wait(None).metrics(leader_settled, "a settled leader").await else {
        return;
    };
    if m.current_leader != Some(me) {
        warn!(leader = ?m.current_leader, "another server leads: the observers in `servers` were not added as learners");
        return;
    }
    for o in observers {
        match raft.add_learner(o.id, BasicNode { addr: o.peer.to_string() }, false).await {
            Ok(_) => info!(observer = o.id, "observer added as a learner"),
            Err(e) => warn!(observer = o.id, "could not add the observer as a learner: {e}"),
        }
    }
}

/// How long each step of a stop (replication, then the peer listener) may take.
const SHUTDOWN_STEP: Duration = Duration::from_secs(5);

/// Stops Raft's core, within [`SHUTDOWN_STEP`]: after a stalled disk it may be waiting in an
/// fdatasync that never returns, and the server stops all the same.
async fn stop_replication(raft: &Raft) {
    if tokio::time::timeout(SHUTDOWN_STEP, raft.shutdown()).await.is_err() {
        warn!("replication did not stop within {SHUTDOWN_STEP:?}; stopping without it");
    }
}

/// The newest snapshot file in `dir` and its last entry, by the files' names (whether it reads
/// back or not, it shows how far this server once committed).
fn newest_snapshot_file(fs: &dyn FileSystem, dir: &std::path::Path) -> Option<(std::path::PathBuf, u64)> {
    let names = fs.list(dir).ok()?;
    let (index, name) =
        names.into_iter().filter_map(|n| crate::snapshot::parse_snapshot_name(&n).map(|i| (i, n))).max()?;
    Some((dir.join(name), index))
}

/// Completes with why once the log has stopped taking writes or replication has stopped on a
/// storage error: from then on no write can be acknowledged, so the server must stop.
///
/// Raft's fatal errors end its core, which drops the senders of its metrics: that is what is
/// watched (through [`RoleWatch`], which is not woken by every write), and the reason is then
/// read from the full metrics.
async fn storage_failure(raft: Raft, mut log_stopped: watch::Receiver<Option<String>>) -> String {
    let mut role = RoleWatch::new(&raft);
    let fatal = || raft.metrics().borrow().running_state.as_ref().err().map(|f| format!("replication stopped: {f}"));
    loop {
        if let Some(why) = log_stopped.borrow().clone() {
            return why;
        }
        if let Some(why) = fatal() {
            return why;
        }
        tokio::select! {
            changed = log_stopped.changed() => if changed.is_err() { return std::future::pending().await },
            changed = role.changed() => if changed.is_err() {
                return fatal().unwrap_or_else(|| "replication stopped".into());
            },
        }
    }
}

/// Every tick, the leader closes sessions whose clients have gone quiet for their timeout. A
/// new leader expires nothing until it has applied an entry of its own term (by then it has
/// applied every session the old leader opened or closed), and then gives every session a fresh
/// timeout, as ZooKeeper's does: it cannot know when other servers last heard from their clients.
async fn expire_sessions(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let tick = Duration::from_millis(shared.config.tick_ms);
    let mut role = RoleWatch::new(&shared.raft);
    // The term this server has led and expired sessions in, if it leads: leading again in a
    // later term (even without the loop seeing it step down) starts every deadline afresh.
    let mut led_term: Option<u64> = None;
    loop {
        // Woken at any change of this server's role (a change of leader resets the deadlines),
        // at least every tick, and on the leader at the earliest deadline (its bucket's end).
        // Only the leader takes the expired sessions off, so only it may wake for them: a
        // follower woken for a deadline already past would wake again at once.
        let wake = tokio::time::Instant::now() + tick;
        let next = if led_term.is_some() { shared.lock().tracker.next_deadline() } else { None };
        let wake = next.map_or(wake, |n| wake.min(tokio::time::Instant::from_std(n)));
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = role.changed() => {}
            () = tokio::time::sleep_until(wake) => {}
        }
        let now_role = role.current();
        if !now_role.settled {
            led_term = None;
            continue;
        }
        let expired: Vec<(SessionId, Option<i32>)> = {
            let mut st = shared.lock();
            if led_term != Some(now_role.term) {
                // A new leader does not know when followers last heard from clients.
                st.tracker.reset_all(Instant::now());
            }
            let expired = st.tracker.take_expired(Instant::now());
            expired.into_iter().map(|s| (s, st.tree.session(s).map(|x| x.timeout_ms))).collect()
        };
        led_term = Some(now_role.term);
        for (session, timeout_ms) in expired {
            // ZooKeeper's "Expiring session 0x…, timeout of N ms exceeded": the line an operator
            // looks for after a failover caused by a lost client (logged by the leader alone,
            // which alone expires sessions).
            match timeout_ms {
                Some(timeout_ms) => {
                    info!(%session, timeout_ms, "expiring session: timeout of {timeout_ms} ms exceeded")
                }
                None => info!(%session, "expiring session: its timeout was exceeded"),
            }
            let shared = shared.clone();
            tokio::spawn(async move {
                let txn =
                    Txn { session, auth: Vec::new(), time_ms: now_ms(), op: TxnOp::CloseSession { expired: true } };
                if let Err(e) = shared.proposer.write(txn).await {
                    warn!(%session, "could not close expired session: {e}");
                    // Tried again a tick later, not at once: a close that fails fast (no quorum)
                    // must not spin the expiry loop.
                    shared.lock().tracker.close_failed(session, Instant::now() + tick);
                }
            });
        }
    }
}

/// A leader of an ensemble proves, every [`crate::liveness::PROVE_EVERY`], that it still leads
/// ([`crate::read_index::prove_once`]); each proof is recorded with its round's start and term (the
/// [`crate::liveness::QuorumProof`] its replies and its acknowledgements of liveness reports
/// rest on) and as its contact for the staleness bound. Rounds run one at a time, and only once
/// the leader is settled (it has applied an entry of its term).
async fn prove_leadership(shared: Arc<Shared>, network: PeerNetwork, stop: watch::Receiver<bool>) {
    let (proof, contact) = {
        let st = shared.lock();
        (st.quorum_proof.clone(), st.leader_contact.clone())
    };
    let mut ticker = Ticker::new(crate::liveness::PROVE_EVERY, stop);
    // Whether the last round failed: a run of failures is logged once.
    let mut failing = false;
    while ticker.tick().await {
        let Some(term) = shared.leading() else {
            failing = false;
            continue;
        };
        let started = Instant::now();
        match tokio::time::timeout(PROVE_DEADLINE, crate::read_index::prove_once(&shared.raft, &network)).await {
            Ok(Ok(proven)) => {
                // Recorded under the term the round carried, which may be older than `term`
                // if this server was elected again meanwhile: it then proves nothing of the
                // newer one.
                proof.confirmed(proven.min(term), started);
                contact.proven_leading(started);
                if failing {
                    info!(term, "a quorum confirms this leader again");
                    failing = false;
                }
            }
            Ok(Err(why)) if !failing => {
                info!(term, "no quorum confirms this leader, so its replies wait until one does: {why}");
                failing = true;
            }
            Err(_) if !failing => {
                info!(
                    term,
                    "no quorum confirmed this leader within {PROVE_DEADLINE:?}, so its replies wait until one does"
                );
                failing = true;
            }
            _ => {}
        }
    }
}

/// Keeps the staleness bound (see [`crate::staleness`]): a leader's contact is its last
/// proof of leadership ([`prove_leadership`]); a follower's or observer's is the older of the
/// last time it asked its leader for a read index it has since applied up to
/// ([`follow_leader_commit`], looked at again here against what is applied now) and the last
/// liveness report the leader acknowledged (which it does only under a proof: a leader cut off
/// from the majority, still heartbeating the servers on its side, acknowledges none). Past the
/// bound, every client connection is closed, new sessions are refused and four-letter words
/// answer that the server is not serving, until contact resumes with a tree caught up.
///
/// It starts once the server has found its leader, which is contact enough: silence is counted
/// from then at the earliest. Counted from the process's start, as before any contact, a
/// server that took longer than the bound to find its leader (its recovery and the election)
/// refused the first sessions it was offered and dropped its clients as soon as it served,
/// until its first liveness report was acknowledged.
async fn guard_staleness(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    use crate::staleness::{verdict, Verdict};
    let began = Instant::now();
    let bound = Duration::from_millis(shared.config.max_leader_silence_ms);
    // As often as a follower asks its leader where its log ends.
    let every = commit_ask_every(bound);
    let (contact, reported) = {
        let st = shared.lock();
        (st.leader_contact.clone(), st.report_contact.clone())
    };
    let mut ticker = Ticker::new(every, stop);
    while ticker.tick().await {
        let now = Instant::now();
        let silent = match shared.leading() {
            Some(_) => contact.silent_for(now),
            None => {
                contact.caught_up(shared.raft.metrics().borrow().last_applied.map(|l| l.index));
                contact.current_silent_for(now).max(reported.silent_for(now))
            }
        }
        .min(now.saturating_duration_since(began));
        let mut st = shared.lock();
        match (verdict(silent, bound), st.refusing_clients.is_some()) {
            (Verdict::Refuse { silent_for }, false) => {
                let silent_ms = silent_for.as_millis() as u64;
                let why = crate::outbox::CloseReason::NoLeaderContact { silent_ms };
                warn!(
                    silent_ms,
                    bound_ms = bound.as_millis() as u64,
                    connections = st.conns.len(),
                    "no contact with a leader, or too far behind it: closing every client connection and refusing new \
                     sessions until this server is current again"
                );
                for c in st.conns.values() {
                    c.outbox.close(why);
                }
                st.refusing_clients = Some(why.to_string());
                shared.not_serving.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            (Verdict::Refuse { silent_for }, true) => {
                // A handshake that passed the check before the refusal began finishes after it
                // (its session is a write, applied here before it is answered): closed too.
                let why = crate::outbox::CloseReason::NoLeaderContact { silent_ms: silent_for.as_millis() as u64 };
                for c in st.conns.values().filter(|c| c.outbox.closed().is_none()) {
                    debug!("closing a connection opened as this server stopped serving");
                    c.outbox.close(why);
                }
                // The refusals name the silence as it is now, not as it was when they began.
                st.refusing_clients = Some(why.to_string());
            }
            (Verdict::Serve, true) => {
                info!("current with a leader again: taking clients again");
                st.refusing_clients = None;
                shared.not_serving.store(false, std::sync::atomic::Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// How often a voter looks at its last contact with the leader, for [`campaign_when_leader_lapses`].
const CAMPAIGN_CHECK: Duration = Duration::from_millis(20);

/// How long a pre-vote waits for the other voters' answers: a round trip on a LAN, with room
/// for a loaded server. A voter that has not answered by then counts as a no.
const PRE_VOTE_DEADLINE: Duration = Duration::from_millis(300);

/// Elections in an ensemble, where openraft's own timer is off (see [`crate::staleness`]): a
/// voting follower or candidate whose leader has been silent past the voters' lease on it (no
/// lease before it has heard of any leader since it started, see
/// [`crate::staleness::lease_to_wait`]), plus a stagger of its own
/// ([`crate::staleness::campaign_due`]), asks the other voters for a
/// pre-vote, and calls the election only with a quorum of yeses. Leaders and learners do
/// nothing here. Silence is counted from the last AppendEntries accepted from a leader (the
/// staleness bound's contact; from this task's start if there was none), from the last frame
/// only a leader sends (AppendEntries, accepted or not, or a snapshot chunk: a snapshot being
/// installed is a leader at work) from the leader this server knows, and from the last change
/// of term seen here (a vote granted to another candidate: its election is under way and must
/// not be overtaken). Other frames from that server do not count: a leader restarted without
/// its leadership (see [`crate::log::LogStore::pipelining_as_leader`]) asks for pre-votes, and
/// if its log lost entries its followers hold, it can win no vote; were its requests word from
/// their leader, neither follower would campaign and nobody would ever lead.
async fn campaign_when_leader_lapses(
    raft: Raft,
    state: Arc<Mutex<ServerState>>,
    network: PeerNetwork,
    stop: watch::Receiver<bool>,
) {
    use crate::staleness::{
        campaign_due, campaign_wait, lease_to_wait, quorum_granted, still_lapsed, ElectionView, LEASE,
    };
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let id = raft.metrics().borrow().id;
    let contact = lock().leader_contact.clone();
    let started = Instant::now();
    let mut ticker = Ticker::new(CAMPAIGN_CHECK, stop);
    let mut campaigned: Option<Instant> = None;
    let mut term = (raft.metrics().borrow().current_term, Instant::now());
    let first_term = term.0;
    // Whether this server has heard of a leader or seen an election since it started: until
    // then it waits out no lease (see `crate::staleness::lease_to_wait`).
    let mut heard = false;
    // Whether the last pre-vote was refused: a run of refusals (a server cut off from the rest)
    // is logged once.
    let mut refused = false;
    while ticker.tick().await {
        let now = Instant::now();
        let (contends, leader, configs) = {
            let m = raft.metrics();
            let m = m.borrow();
            if m.current_term != term.0 {
                term = (m.current_term, now);
            }
            let membership = m.membership_config.membership();
            let voter = membership.voter_ids().any(|v| v == m.id);
            let state = matches!(m.state, openraft::ServerState::Follower | openraft::ServerState::Candidate);
            (voter && state, m.current_leader, membership.get_joint_config().clone())
        };
        if !contends {
            continue;
        }
        let heard_leader = leader.and_then(|l| network.leading_silent_for(l));
        heard = heard || heard_leader.is_some() || contact.since_contact(now).is_some() || term.0 != first_term;
        let mut silent = contact.since_contact(now).unwrap_or(now - started).min(now - term.1);
        if let Some(h) = heard_leader {
            silent = silent.min(h);
        }
        let wait = campaign_wait(lease_to_wait(LEASE, heard), id);
        if !campaign_due(silent, campaigned.map(|t| now - t), wait) {
            continue;
        }
        campaigned = Some(now);
        let view = |at: Instant| {
            let m = raft.metrics();
            let m = m.borrow();
            ElectionView { term: m.current_term, leader: m.current_leader, since_contact: contact.since_contact(at) }
        };
        let decided = view(now);
        let last_log_id = lock().log_end.as_ref().and_then(|l| l.last_log_id());
        let granted = pre_vote(&raft, &network, id, last_log_id, &configs).await;
        let answered = Instant::now();
        let after = view(answered);
        let quorum = quorum_granted(&configs, &granted);
        let lapsed_still = still_lapsed(&decided, &after, answered - now);
        {
            let counters = &mut lock().counters;
            counters.pre_votes_asked += 1;
            counters.pre_votes_refused += u64::from(!quorum);
            counters.elections_called += u64::from(quorum && lapsed_still);
        }
        if !lapsed_still {
            info!(
                term = after.term,
                leader = ?after.leader,
                waited_ms = (answered - now).as_millis() as u64,
                "the ensemble moved on while the pre-vote was answered (a new term, a leader named or heard): \
                 not campaigning"
            );
            refused = false;
            continue;
        }
        let lapsed =
            if heard { "no word from the leader past its lease" } else { "no leader heard since this server started" };
        if !quorum {
            if !refused {
                info!(
                    silent_ms = silent.as_millis() as u64,
                    granted = ?granted,
                    "{lapsed}, but no quorum of voters would vote: not campaigning"
                );
            }
            refused = true;
            continue;
        }
        refused = false;
        info!(
            silent_ms = silent.as_millis() as u64,
            wait_ms = wait.as_millis() as u64,
            leader = ?leader,
            granted = ?granted,
            "{lapsed} and a quorum would vote: campaigning"
        );
        if let Err(e) = raft.trigger().elect().await {
            warn!("could not start an election: {e}");
            return;
        }
    }
}

/// Asks every other voter of `configs` for a pre-vote (see [`crate::staleness::pre_vote_grant`])
/// for a log ending at `last_log_id`, and returns the voters that granted it, this server
/// (`id`) among them: as soon as they are a quorum, or when every voter has answered or its
/// deadline passed. (Waiting on a voter that cannot answer, a frozen one, only widens the
/// window in which another voter's election overtakes this one.)
async fn pre_vote(
    raft: &Raft,
    network: &PeerNetwork,
    id: u64,
    last_log_id: Option<openraft::LogId<u64>>,
    configs: &[std::collections::BTreeSet<u64>],
) -> std::collections::BTreeSet<u64> {
    let mut granted = std::collections::BTreeSet::from([id]);
    let others: std::collections::BTreeSet<u64> = configs.iter().flatten().copied().filter(|v| *v != id).collect();
    let mut asks = JoinSet::new();
    for voter in others {
        let (network, raft) = (network.clone(), raft.clone());
        asks.spawn(async move {
            let reply = network.request(&raft, voter, PeerRequest::PreVote { last_log_id }, PRE_VOTE_DEADLINE).await;
            (voter, matches!(reply, Ok(PeerReply::PreVote { granted: true })))
        });
    }
    while let Some(answer) = asks.join_next().await {
        if let Ok((voter, true)) = answer {
            granted.insert(voter);
            if crate::staleness::quorum_granted(configs, &granted) {
                break;
            }
        }
    }
    granted
}

/// Logs each change of this server's Raft role, term or known leader, and when a new leader has
/// applied the first entry of its term (it serves from then on): with the servers' logs side by
/// side, a failover reads as detection, election and first commit.
async fn log_role_changes(raft: Raft, mut stop: watch::Receiver<bool>) {
    let mut role = RoleWatch::new(&raft);
    let mut last = None;
    let mut settled_term = None;
    loop {
        let (now, applied_own_term) = {
            let r = role.current();
            ((r.state, r.term, r.leader), r.settled.then_some(r.term))
        };
        if last != Some(now) {
            let (state, term, leader) = now;
            info!(state = ?state, term, leader = ?leader, "Raft role changed");
            last = Some(now);
        }
        if applied_own_term.is_some() && settled_term != applied_own_term {
            settled_term = applied_own_term;
            info!(term = now.1, "leading: the first entry of this term is applied");
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            changed = role.changed() => if changed.is_err() { return },
        }
    }
}

/// How often the snapshot task looks again whether a snapshot is wanted.
const SNAPSHOT_RECHECK: Duration = Duration::from_secs(1);
/// How soon it asks again when a snapshot it asked for has not begun; doubled on each try up
/// to [`SNAPSHOT_RECHECK`].
const SNAPSHOT_RETRY_FIRST: Duration = Duration::from_millis(5);

/// Asks openraft for a snapshot each time the state machine says one is due. Openraft ignores a
/// request that reaches it before it has taken in the end of the last build, which is exactly
/// when a build that took long finds the next one due already: while one stays wanted and none
/// is being written, the task asks again after 5 ms, then 10, 20, ... up to every
/// [`SNAPSHOT_RECHECK`], rather than letting a busy server's log grow for a second more.
async fn snapshot_when_due(raft: Raft, due: SnapshotDue, mut stop: watch::Receiver<bool>) {
    let mut again = SNAPSHOT_RECHECK;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = due.notified() => {}
            _ = tokio::time::sleep(again) => {}
        }
        if !due.wanted() {
            again = SNAPSHOT_RECHECK;
            continue;
        }
        if let Err(e) = raft.trigger().snapshot().await {
            warn!("could not ask for a snapshot: {e}");
            return;
        }
        again = if again >= SNAPSHOT_RECHECK { SNAPSHOT_RETRY_FIRST } else { (again * 2).min(SNAPSHOT_RECHECK) };
    }
}

/// A server that does not lead tells the leader, every [`crate::liveness::REPORT_EVERY`] or at
/// once when a reply waits for it, which sessions its clients were heard from since the last
/// report and how long ago, so that the leader, which alone expires sessions, keeps each for
/// its timeout from then; each acknowledged
/// report releases the replies it covers (see [`crate::liveness`]). A report that fails (no
/// leader known, the link down, no answer within half the staleness bound, the leader unable
/// to prove it still leads) is not lost: its sessions go into the next one, which waiting
/// replies ask for at once. With no session to report, an empty report is sent once a quarter
/// of the staleness bound (at most 100 ms) has passed without an acknowledged one: each
/// acknowledgement is this server's proof that the leader it follows is the ensemble's.
async fn report_liveness(shared: Arc<Shared>, network: PeerNetwork, mut stop: watch::Receiver<bool>) {
    use crate::liveness::REPORT_EVERY;
    let Some(gate) = shared.liveness.clone() else { return };
    let mut interval = tokio::time::interval(REPORT_EVERY);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let probe_every = (Duration::from_millis(shared.config.max_leader_silence_ms) / 4).min(Duration::from_millis(100));
    let reported = shared.lock().report_contact.clone();
    let mut tidied = Instant::now();
    // Whether the last report failed: a run of failures is logged once.
    let mut failing = false;
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = interval.tick() => {}
            _ = gate.report_requested() => {}
        }
        let heard = shared.lock().tracker.take_heard();
        if tidied.elapsed() >= Duration::from_secs(10) {
            tidied = Instant::now();
            let st = shared.lock();
            gate.retain(|s| st.tree.session(s).is_some());
        }
        let leader = {
            let m = shared.raft.metrics();
            let m = m.borrow();
            match (m.state, m.current_leader) {
                (openraft::ServerState::Leader, _) | (_, None) => None,
                (_, Some(l)) => Some(l),
            }
        };
        let probe_due = reported.since_contact(Instant::now()).is_none_or(|s| s >= probe_every);
        if heard.is_empty() && !probe_due {
            continue;
        }
        let Some(leader) = leader else {
            // No leader to tell yet (an election): the next report carries them.
            shared.lock().tracker.heard_again(&heard);
            continue;
        };
        let sent = Instant::now();
        // Half the bound a waiting reply may wait: a report lost on a connection that died
        // without a word is sent again in time for it.
        let deadline = Duration::from_millis(shared.config.max_leader_silence_ms) / 2;
        // A report to a leader that has since been replaced (a frozen one answers nothing) is
        // given up at once: its sessions go to the new leader with the next report, instead of
        // after this one's deadline, while every reply on this server waits for them.
        let report = heard
            .iter()
            .map(|&(session, at)| {
                let ago_ms = u32::try_from(sent.saturating_duration_since(at).as_millis()).unwrap_or(u32::MAX);
                HeardFrom { session, ago_ms }
            })
            .collect();
        let request = network.request(&shared.raft, leader, PeerRequest::Touch(report), deadline);
        let answer = tokio::select! {
            answer = request => answer,
            _ = crate::role::leader_replaced(&shared.raft, leader) => {
                debug!(leader, sessions = heard.len(), "the leader changed while a liveness report was in flight: sending it to the new one");
                shared.lock().tracker.heard_again(&heard);
                continue;
            }
        };
        let failure = match answer {
            Ok(PeerReply::Touch { expired }) => {
                gate.acknowledged(&heard, &expired, sent);
                reported.heard(sent);
                None
            }
            Ok(PeerReply::TouchRefused { why }) => Some(format!("the leader refused it: {why}")),
            Ok(_) => Some("the leader answered with another reply".to_string()),
            Err(e) => Some(e.to_string()),
        };
        match (failure, failing) {
            (Some(why), was) => {
                // Sent again with the next report, not forgotten: a reply waiting on one of
                // these sessions would otherwise wait out its bound and close its connection.
                shared.lock().tracker.heard_again(&heard);
                if !was {
                    info!(leader, sessions = heard.len(), "liveness reports do not reach the leader: {why}");
                }
                failing = true;
            }
            (None, true) => {
                info!(leader, "liveness reports reach the leader again");
                failing = false;
            }
            (None, false) => {}
        }
    }
}

/// How often a follower or observer asks its leader where its log ends: a quarter of the
/// staleness `bound`, at most 100 ms, as often as the bound is checked.
fn commit_ask_every(bound: Duration) -> Duration {
    (bound / 4).min(Duration::from_millis(100))
}

/// A server that does not lead asks its leader for a read index every
/// [`commit_ask_every`] (see [`ask_leader_commit`]), so that the staleness bound knows how
/// current its tree is (see [`crate::staleness`]).
async fn follow_leader_commit(shared: Arc<Shared>, network: PeerNetwork, stop: watch::Receiver<bool>) {
    let bound = Duration::from_millis(shared.config.max_leader_silence_ms);
    let contact = shared.lock().leader_contact.clone();
    let mut ticker = Ticker::new(commit_ask_every(bound), stop);
    while ticker.tick().await {
        ask_leader_commit(&shared, &network, &contact, bound).await;
    }
}

/// Asks the leader this server follows, if it knows one, for a read index, waiting at most
/// half the staleness `bound`, and records the answer in `contact` with when it was asked:
/// every write committed before then is at or below it (see [`crate::read_index`]). An
/// AppendEntries carries a commit index too, but openraft's replication to a follower that
/// answers slowly takes in new commits only between its calls, so it may be far older than
/// the leader's. Nothing is recorded if the leader changes meanwhile, or cannot answer.
async fn ask_leader_commit(
    shared: &Shared,
    network: &PeerNetwork,
    contact: &crate::staleness::LeaderContact,
    bound: Duration,
) {
    let leader = {
        let m = shared.raft.metrics();
        let m = m.borrow();
        match (m.state, m.current_leader) {
            (openraft::ServerState::Leader, _) | (_, None) => None,
            (_, Some(l)) => Some(l).filter(|l| *l != m.id),
        }
    };
    let Some(leader) = leader else { return };
    let asked = Instant::now();
    let answer = tokio::select! {
        answer = network.request(&shared.raft, leader, PeerRequest::ReadIndex, bound / 2) => answer,
        _ = crate::role::leader_replaced(&shared.raft, leader) => return,
    };
    if let Ok(PeerReply::ReadIndex(Ok(index))) = answer {
        let applied = shared.raft.metrics().borrow().last_applied.map(|l| l.index);
        contact.told_commit(asked, index, applied);
    }
}

/// Every `container_check_interval_ms`, the leader deletes empty containers and expired TTL
/// nodes (ZooKeeper's ContainerManager). Each deletion is a transaction that re-checks the
/// condition at apply, so a child created meanwhile keeps its container.
async fn reap_containers(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut ticker = Ticker::new(Duration::from_millis(shared.config.container_check_interval_ms), stop);
    while ticker.tick().await {
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
            match shared.proposer.write(txn).await {
                Ok(outcome) => debug!(path, result = ?outcome.result, "reaped"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_alone_runs_only_in_a_membership_of_itself() {
        use std::collections::{BTreeMap, BTreeSet};
        let set = |v: &[u64]| v.iter().copied().collect::<BTreeSet<u64>>();
        let nodes =
            |v: &[u64]| v.iter().map(|&id| (id, BasicNode { addr: format!("h:{id}") })).collect::<BTreeMap<_, _>>();
        let m = |joint: Vec<BTreeSet<u64>>, all: &[u64]| openraft::Membership::new(joint, nodes(all));
        assert_eq!(not_alone_in(1, &openraft::Membership::default()), None, "a new log: initialised alone");
        assert_eq!(not_alone_in(1, &m(vec![set(&[1])], &[1])), None);
        assert_eq!(not_alone_in(1, &m(vec![set(&[1])], &[1, 2])), None, "with an observer it cannot reach");
        assert_eq!(not_alone_in(1, &m(vec![set(&[1, 2, 3])], &[1, 2, 3])).as_deref(), Some("voters 1, 2, 3"));
        assert_eq!(not_alone_in(1, &m(vec![set(&[2])], &[2])).as_deref(), Some("voters 2"));
        assert_eq!(
            not_alone_in(1, &m(vec![set(&[1]), set(&[1, 2])], &[1, 2])).as_deref(),
            Some("voters 1 joint with voters 1, 2 (a change of voters under way)")
        );
    }

    #[test]
    fn a_wait_for_a_leader_is_reported_with_who_is_heard_and_what_a_majority_needs() {
        let voters = std::collections::BTreeSet::from([1, 2, 3]);
        let ms = Duration::from_millis;
        // Alone: itself is one of the two voters a leader needs.
        let members = voters.iter().copied().chain([4]).collect();
        let alone = leaderless_report(3, &voters, &members, [(1, None), (2, Some(ms(9_000)))].into_iter());
        assert!(
            alone.starts_with(
                "no leader yet: a leader needs 2 of the voters 1, 2, 3 running and reachable on their peer \
                 addresses, and 1 are; heard lately from servers: none; not heard from: 1, 2; still waiting"
            ),
            "{alone}"
        );
        // A peer heard lately makes a majority with it.
        let two = leaderless_report(3, &voters, &members, [(1, None), (2, Some(ms(200)))].into_iter());
        assert!(
            two.contains("2 of the voters 1, 2, 3 are reachable, a majority: an election should follow")
                && two.contains("may have been removed from the ensemble")
                && two.contains("heard lately from servers: 2 (200 ms ago); not heard from: 1;"),
            "{two}"
        );
        // An observer heard lately is no voter.
        let with_observer =
            leaderless_report(1, &voters, &members, [(2, None), (3, None), (4, Some(ms(10)))].into_iter());
        assert!(with_observer.contains("and 1 are; heard lately from servers: 4 (10 ms ago)"), "{with_observer}");
        // No membership at all: how a server gets one.
        let fresh = leaderless_report(4, &Default::default(), &Default::default(), [(1, Some(ms(100)))].into_iter());
        assert!(
            fresh.contains("holds no membership")
                && fresh.contains("`referee coordinator --config FILE --init`")
                && fresh.contains("`referee coordinator members add`"),
            "{fresh}"
        );
        // A membership without it: it was removed, and nothing it can reach changes that.
        let removed = leaderless_report(5, &voters, &members, [(1, Some(ms(10))), (2, Some(ms(10)))].into_iter());
        assert!(
            removed.contains("none will come")
                && removed.contains("not a member of the ensemble its log holds (members 1, 2, 3, 4)")
                && removed.contains("add it under a new id"),
            "{removed}"
        );
    }
}
