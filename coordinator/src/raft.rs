//! Replication: the openraft type configuration, the log store, and the state machine that
//! applies committed transactions to the shared [`ServerState`].
//!
//! ```text
//!  connection ──Txn──▶ Proposer ──TxnBatch──▶ Raft ──▶ log store (append, fdatasync)
//!                                                          │ committed
//!                                                          ▼
//!  connection ◀──TxnOutcome── state machine: ServerState::apply, one zxid per Txn
//!                                                          └──▶ watch notifications
//! ```
//!
//! Zxids are dense: every transaction, and every entry without one (a leader's blank entry, a
//! membership change), takes the zxid after the tree's last. Every server applies the same
//! entries in the same order from the same snapshot, so every server computes the same zxids.
//! A log written when each entry held one transaction (zxid = log index) replays to the same
//! zxids under this rule.
//!
//! Every write, on every server, is applied here and only here, so the ensemble adds voters
//! and learners to the same path rather than a second one. The log is [`crate::log::LogStore`];
//! the state machine's snapshots are files of [`crate::snapshot`], written without stopping
//! the writers (from an O(1) copy of the tree, on a thread of lower CPU priority) and loaded at
//! start-up. A server that is the only voter applies its recovered log at start-up through
//! [`StateMachine::replay`], before openraft starts, so each entry is decoded once.

use std::io::Cursor;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::storage::RaftStateMachine;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, Membership, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};

use crate::log::store::Durable;
use crate::proto::Zxid;
use crate::snapshot::{SnapshotDir, SnapshotError, SnapshotHeader};
use crate::state::ServerState;
use crate::txn::{BatchOutcome, Txn, TxnBatch, TxnOutcome};

openraft::declare_raft_types!(
    /// Raft types of the coordinator: batches of transactions in, their outcomes out.
    pub TypeConfig:
        D = TxnBatch,
        R = BatchOutcome,
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

openraft::declare_raft_types!(
    /// The Raft types of log formats 1 and 2, whose entries held one transaction each: what
    /// their records decode as, before [`upgrade_entry`].
    pub SingleTxnConfig:
        D = Txn,
        R = TxnOutcome,
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<SingleTxnConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// An entry of log formats 1 and 2 as an entry of today's: its transaction as a batch of one.
pub fn upgrade_entry(old: Entry<SingleTxnConfig>) -> Entry<TypeConfig> {
    let payload = match old.payload {
        EntryPayload::Blank => EntryPayload::Blank,
        EntryPayload::Normal(txn) => EntryPayload::Normal(vec![txn]),
        EntryPayload::Membership(m) => EntryPayload::Membership(m),
    };
    Entry { log_id: old.log_id, payload }
}

/// An apply that holds the state lock this long is logged: every request waits behind it.
const SLOW_APPLY: std::time::Duration = std::time::Duration::from_millis(20);

/// Entries applied under one taking of the state lock at start-up.
const REPLAY_CHUNK: usize = 256;

/// The Raft handle of a coordinator server.
pub type Raft = openraft::Raft<TypeConfig>;

type SErr = StorageError<u64>;

#[derive(Debug, Default)]
struct SmMeta {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    /// The newest snapshot on disk, and its file name.
    snapshot: Option<(SnapshotMeta<u64, BasicNode>, String)>,
    /// Transactions applied since the tree was last copied for a snapshot (an entry without
    /// transactions counts as one).
    txns_since: u64,
    /// A snapshot is asked for once `txns_since` reaches this.
    due_at: u64,
    /// Bytes of transactions ([`Txn::approx_len`]) applied since the tree was last copied for
    /// a snapshot: what the log since then holds, on disk and in memory.
    bytes_since: u64,
    /// A snapshot is asked for once `bytes_since` reaches this.
    bytes_due_at: u64,
    /// One has been asked for and has not finished.
    requested: bool,
    /// A snapshot's file is being written.
    building: bool,
}

impl SmMeta {
    /// Whether the policy wants a snapshot that is not being written already.
    fn snapshot_wanted(&self) -> bool {
        !self.building && (self.txns_since >= self.due_at || self.bytes_since >= self.bytes_due_at)
    }

    /// Notifies `due` if a snapshot is wanted and none is asked for yet.
    fn ask_if_wanted(&mut self, due: &tokio::sync::Notify) {
        if !self.requested && self.snapshot_wanted() {
            self.requested = true;
            due.notify_one();
        }
    }
}

/// What the server's snapshot task waits on (see [`StateMachine::snapshot_due`]).
#[derive(Debug, Clone)]
pub struct SnapshotDue {
    meta: Arc<Mutex<SmMeta>>,
    notify: Arc<tokio::sync::Notify>,
}

impl SnapshotDue {
    /// Completes when the state machine asks for a snapshot (one notification is kept if
    /// nobody waits).
    pub async fn notified(&self) {
        self.notify.notified().await
    }

    /// Whether the policy wants a snapshot now and none is being written: openraft ignores
    /// a request that reaches it while it still counts the last build as running, so the
    /// task asks again while this holds.
    pub fn wanted(&self) -> bool {
        self.meta.lock().unwrap_or_else(|p| p.into_inner()).snapshot_wanted()
    }
}

/// The state machine: applies committed entries to the shared [`ServerState`] and keeps its
/// snapshots on disk.
#[derive(Debug, Clone)]
pub struct StateMachine {
    state: Arc<Mutex<ServerState>>,
    meta: Arc<Mutex<SmMeta>>,
    snapshots: Arc<SnapshotDir>,
    policy: SnapshotPolicy,
    /// Notified when a snapshot is due; see [`StateMachine::snapshot_due`].
    due: Arc<tokio::sync::Notify>,
    /// When set, an entry is applied only once the log holds it durably (see
    /// [`crate::log::LogStore::pipelining_as_leader`]).
    durable: Option<Durable>,
    /// The last entry of the newest snapshot on disk (0 for none).
    on_disk: Arc<tokio::sync::watch::Sender<u64>>,
}

/// When the state machine asks for snapshots. Counted in transactions, as ZooKeeper's snapCount
/// is, not in log entries: an entry carries a batch of anywhere from one to thousands; and in
/// bytes of transactions, as ZooKeeper's snapSizeLimitInKb is, so that rewriting a large znode
/// over and over does not keep `every_txns` large transactions in the log (and in memory:
/// the log store keeps its entries there back to the snapshot before last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// A snapshot after this many transactions.
    pub every_txns: u64,
    /// After a failed snapshot, this many more transactions before the next attempt.
    pub retry_gap_txns: u64,
    /// A snapshot after this many bytes of transactions ([`Txn::approx_len`]);
    /// `u64::MAX` for never.
    pub every_bytes: u64,
}

impl SnapshotPolicy {
    /// Snapshots only when openraft or a test asks for one.
    pub const NEVER: SnapshotPolicy =
        SnapshotPolicy { every_txns: u64::MAX, retry_gap_txns: u64::MAX, every_bytes: u64::MAX };

    /// After a failed snapshot, this many more bytes of transactions before the next attempt
    /// (unless the transactions' gap comes first).
    fn retry_gap_bytes(&self) -> u64 {
        (self.every_bytes / 10).max(1)
    }
}

impl StateMachine {
    /// A state machine over the server's shared state, restored from the newest usable snapshot
    /// in `snapshots` (see [`SnapshotDir::load_newest`]; `log_purged_upto` is the log's purge
    /// point, 0 for none), asking for snapshots as `policy` says (see
    /// [`StateMachine::snapshot_due`]). Blocks on file I/O: call it at start-up.
    pub fn open(
        state: Arc<Mutex<ServerState>>,
        snapshots: SnapshotDir,
        log_purged_upto: u64,
        policy: SnapshotPolicy,
    ) -> Result<Self, SnapshotError> {
        let mut meta =
            SmMeta { due_at: policy.every_txns.max(1), bytes_due_at: policy.every_bytes.max(1), ..SmMeta::default() };
        let mut on_disk = 0;
        if let Some(loaded) = snapshots.load_newest(log_purged_upto)? {
            on_disk = loaded.header.last_applied.map_or(0, |l| l.index);
            let nodes = loaded.tree.node_count();
            state.lock().unwrap_or_else(|p| p.into_inner()).install_tree(loaded.tree, Instant::now());
            meta.last_applied = loaded.header.last_applied;
            meta.membership = loaded.header.membership.clone();
            meta.snapshot = Some((snapshot_meta(&loaded.header, &loaded.name), loaded.name.clone()));
            tracing::info!(snapshot = %snapshots.dir().join(&loaded.name).display(), nodes, "restored the tree from a snapshot");
        }
        Ok(StateMachine {
            state,
            meta: Arc::new(Mutex::new(meta)),
            snapshots: Arc::new(snapshots),
            policy: SnapshotPolicy {
                every_txns: policy.every_txns.max(1),
                retry_gap_txns: policy.retry_gap_txns.max(1),
                every_bytes: policy.every_bytes.max(1),
            },
            due: Arc::default(),
            durable: None,
            on_disk: Arc::new(tokio::sync::watch::channel(on_disk).0),
        })
    }

    /// The last entry of the newest snapshot on disk (0 for none), updated as each snapshot,
    /// built here or installed from the leader, is written durably.
    pub fn snapshots_on_disk(&self) -> tokio::sync::watch::Receiver<u64> {
        self.on_disk.subscribe()
    }

    /// Records that a snapshot up to `last` is on disk.
    fn snapshot_on_disk(&self, last: Option<LogId<u64>>) {
        let index = last.map_or(0, |l| l.index);
        self.on_disk.send_if_modified(|on_disk| {
            let newer = index > *on_disk;
            *on_disk = (*on_disk).max(index);
            newer
        });
    }

    /// Applies entries only once `durable` says the log holds them on disk: required when the
    /// log store reports a leader's entries flushed before their fdatasync.
    pub fn applying_only_durable(mut self, durable: Durable) -> Self {
        self.durable = Some(durable);
        self
    }

    /// Notified each time the policy says a snapshot is due: as transactions are applied,
    /// and as a snapshot finishes if those applied while it was written already make the next
    /// one due. The server then asks openraft for one (`raft.trigger().snapshot()`), which
    /// calls [`RaftSnapshotBuilder::build_snapshot`] and purges the log behind it.
    pub fn snapshot_due(&self) -> SnapshotDue {
        SnapshotDue { meta: self.meta.clone(), notify: self.due.clone() }
    }

    /// Applies `entries` in order under the state lock; returns each entry's outcomes, the
    /// number of transactions applied and how long taking the locks took. Asks for a snapshot
    /// when the policy says one is due.
    fn apply_entries(
        &self,
        entries: impl IntoIterator<Item = Entry<TypeConfig>>,
    ) -> (Vec<BatchOutcome>, u64, std::time::Duration) {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut txns = 0u64;
        let mut meta = self.meta();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let locked = now.elapsed();
        for entry in entries {
            meta.last_applied = Some(entry.log_id);
            let outcomes = match entry.payload {
                EntryPayload::Normal(ref batch) => {
                    let mut outcomes = Vec::with_capacity(batch.len());
                    for txn in batch {
                        let zxid = next_zxid(st.tree.last_zxid());
                        outcomes.push(st.apply(zxid, txn, now));
                    }
                    outcomes
                }
                EntryPayload::Blank => {
                    let zxid = next_zxid(st.tree.last_zxid());
                    st.tree.apply_empty(zxid);
                    Vec::new()
                }
                EntryPayload::Membership(ref m) => {
                    let zxid = next_zxid(st.tree.last_zxid());
                    st.tree.apply_empty(zxid);
                    meta.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Vec::new()
                }
            };
            meta.txns_since = meta.txns_since.saturating_add(outcomes.len().max(1) as u64);
            if let EntryPayload::Normal(batch) = &entry.payload {
                let bytes: usize = batch.iter().map(Txn::approx_len).sum();
                meta.bytes_since = meta.bytes_since.saturating_add(bytes as u64);
            }
            txns += outcomes.len() as u64;
            out.push(outcomes);
        }
        meta.ask_if_wanted(&self.due);
        (out, txns, locked)
    }

    /// The last entry applied, if any.
    pub fn last_applied(&self) -> Option<LogId<u64>> {
        self.meta().last_applied
    }

    /// Whether the membership as of the last applied entry, or as of `newer` (a membership entry
    /// after it) has exactly one voter, `me`, and no configuration change under way.
    pub fn sole_voter(&self, me: u64, newer: Option<&Membership<u64, BasicNode>>) -> bool {
        let meta = self.meta();
        let m = newer.unwrap_or_else(|| meta.membership.membership());
        m.get_joint_config().len() == 1 && m.voter_ids().eq([me])
    }

    /// Applies entries recovered from the log before Raft starts, in chunks, returning how many
    /// entries and transactions were applied.
    ///
    /// Only for entries known committed: on a server that is the only voter, every entry in
    /// its log (openraft commits them all as soon as it leads again, which it does at once,
    /// with nobody to ask). Applied here, they are decoded once; left to openraft, each was
    /// decoded twice (its search of the log for membership changes reads every entry after
    /// the last applied one) and applied only after leadership.
    pub fn replay(&self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) -> (u64, u64) {
        let mut applied = (0, 0);
        let mut chunk = Vec::with_capacity(REPLAY_CHUNK);
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            chunk.extend(entries.by_ref().take(REPLAY_CHUNK));
            let (out, txns, _) = self.apply_entries(chunk.drain(..));
            applied.0 += out.len() as u64;
            applied.1 += txns;
        }
        applied
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, SmMeta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn io_err(e: impl std::error::Error + 'static, verb: openraft::ErrorVerb) -> SErr {
        StorageIOError::new(openraft::ErrorSubject::StateMachine, verb, openraft::AnyError::new(&e)).into()
    }

    /// The snapshot openraft already knows, or an empty one: what a skipped or failed build
    /// reports, so that openraft neither moves its snapshot point nor purges the log.
    fn unchanged(meta: &mut SmMeta) -> Snapshot<TypeConfig> {
        meta.requested = false;
        let meta = match &meta.snapshot {
            Some((m, _)) => m.clone(),
            None => SnapshotMeta {
                last_log_id: None,
                last_membership: StoredMembership::default(),
                snapshot_id: String::new(),
            },
        };
        Snapshot { meta, snapshot: Box::new(Cursor::new(Vec::new())) }
    }
}

fn snapshot_meta(header: &SnapshotHeader, name: &str) -> SnapshotMeta<u64, BasicNode> {
    SnapshotMeta {
        last_log_id: header.last_applied,
        last_membership: header.membership.clone(),
        snapshot_id: name.to_owned(),
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// Writes the tree as of now to a snapshot file and returns once it is durable: openraft
    /// purges the log only after this returns a newer snapshot.
    ///
    /// A failure (full disk, failed fsync) must neither stop the service nor purge the log:
    /// it is logged, the snapshot openraft already has is returned (so its snapshot point does
    /// not move and nothing is purged), and the next attempt waits the policy's retry gap.
    /// Openraft treats an error returned from here as fatal, which is why none is.
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        // Copy under the locks, write outside them: applying goes on meanwhile. The copy is
        // O(1): the tree's maps are persistent and share every node with the live tree, which
        // copies a node only when it next changes it.
        let asked = Instant::now();
        let (tree, header, taken) = {
            let mut meta = self.meta();
            let done = meta.snapshot.as_ref().and_then(|(m, _)| m.last_log_id);
            if meta.last_applied.is_none() || meta.last_applied == done {
                return Ok(Self::unchanged(&mut meta));
            }
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let header = SnapshotHeader { last_applied: meta.last_applied, membership: meta.membership.clone() };
            meta.building = true;
            (st.tree.clone(), header, (meta.txns_since, meta.bytes_since))
        };
        let (taken, taken_bytes) = taken;
        let copied = asked.elapsed();
        let dir = self.snapshots.clone();
        let written = {
            let header = header.clone();
            let (tx, rx) = tokio::sync::oneshot::channel();
            let writer = std::thread::Builder::new().name("snapshot-writer".into()).spawn(move || {
                lower_thread_priority();
                let _ = tx.send(dir.write(&header, &tree));
            });
            match writer {
                Ok(_) => rx.await.map_err(|_| "the snapshot writer thread panicked".to_string()),
                Err(e) => Err(format!("could not start the snapshot writer thread: {e}")),
            }
        };
        let mut meta = self.meta();
        meta.building = false;
        let retry_at = meta.txns_since.saturating_add(self.policy.retry_gap_txns);
        let retry_bytes_at = meta.bytes_since.saturating_add(self.policy.retry_gap_bytes());
        let built = match written {
            Ok(Ok(name)) => {
                let smeta = snapshot_meta(&header, &name);
                tracing::info!(
                    snapshot = %self.snapshots.dir().join(&name).display(),
                    txns = taken,
                    txn_bytes = taken_bytes,
                    copy_under_lock_ms = format!("{:.2}", copied.as_secs_f64() * 1e3),
                    total_ms = asked.elapsed().as_millis() as u64,
                    "snapshot written"
                );
                self.snapshot_on_disk(smeta.last_log_id);
                // A leader's snapshot installed while this one was written is newer: it stays
                // the one this server sends (the log before it is gone).
                let current = meta.snapshot.as_ref().and_then(|(m, _)| m.last_log_id);
                if current <= smeta.last_log_id {
                    meta.snapshot = Some((smeta.clone(), name));
                }
                // What was applied while the file was written counts toward the next one.
                meta.txns_since -= taken.min(meta.txns_since);
                meta.due_at = self.policy.every_txns;
                meta.bytes_since -= taken_bytes.min(meta.bytes_since);
                meta.bytes_due_at = self.policy.every_bytes;
                meta.requested = false;
                // Openraft keeps only the meta of a snapshot it built; the data is the file,
                // read back by `get_current_snapshot` when a follower needs it.
                Snapshot { meta: smeta, snapshot: Box::new(Cursor::new(Vec::new())) }
            }
            Ok(Err(e)) => {
                tracing::error!(
                    index = header.index(),
                    retry_after_txns = self.policy.retry_gap_txns,
                    "snapshot failed: {e}; the log is kept whole (nothing is purged) and service goes on"
                );
                meta.due_at = retry_at;
                meta.bytes_due_at = retry_bytes_at;
                Self::unchanged(&mut meta)
            }
            Err(join) => {
                tracing::error!("the snapshot writer did not finish: {join}; the log is kept whole");
                meta.due_at = retry_at;
                meta.bytes_due_at = retry_bytes_at;
                Self::unchanged(&mut meta)
            }
        };
        // What was applied while the file was written may make the next one due already: no
        // later apply need come to ask for it (with no writes, none would).
        meta.ask_if_wanted(&self.due);
        Ok(built)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), SErr> {
        let meta = self.meta();
        Ok((meta.last_applied, meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchOutcome>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if let (Some(durable), Some(last)) = (&self.durable, entries.last()) {
            // A leader's own entries may be committed before its own fdatasync has finished;
            // nobody hears of them from here before it has.
            durable.wait_past(last.log_id.index).await.map_err(|e| Self::io_err(e, openraft::ErrorVerb::Write))?;
        }
        let started = Instant::now();
        let (out, txns, lock_wait) = self.apply_entries(entries);
        let took = started.elapsed();
        if took >= SLOW_APPLY {
            // Replies wait this long: a cause of reply stalls to look for. Waiting for the lock
            // points at whoever held it; applying a few transactions slowly points at the
            // thread not getting a core.
            tracing::info!(
                entries = out.len(),
                txns,
                took_ms = took.as_millis() as u64,
                lock_wait_ms = lock_wait.as_millis() as u64,
                "slow apply"
            );
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    /// Installs a snapshot file received whole from the leader: checked, written durably
    /// beside the others, then the tree is replaced.
    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        let dir = self.snapshots.clone();
        let (header, tree, name) = tokio::task::spawn_blocking(move || dir.write_bytes(&data))
            .await
            .map_err(|e| Self::io_err(e, openraft::ErrorVerb::Write))?
            .map_err(|e| Self::io_err(e, openraft::ErrorVerb::Write))?;
        let mut m = self.meta();
        let nodes = tree.node_count();
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.install_tree(tree, Instant::now());
        }
        self.snapshot_on_disk(header.last_applied);
        tracing::info!(
            snapshot = %self.snapshots.dir().join(&name).display(),
            last_applied = ?header.last_applied.map(|l| l.index),
            nodes,
            "installed a snapshot from the leader"
        );
        m.last_applied = header.last_applied;
        m.membership = header.membership.clone();
        m.snapshot = Some((SnapshotMeta { snapshot_id: name.clone(), ..meta.clone() }, name));
        m.txns_since = 0;
        m.due_at = self.policy.every_txns;
        m.bytes_since = 0;
        m.bytes_due_at = self.policy.every_bytes;
        Ok(())
    }

    /// The snapshot to send a follower that lags behind the purged log, read on a blocking
    /// thread: a large file's read would otherwise hold one of the runtime's few threads, and
    /// every connection task scheduled on it, for its length.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        let Some((smeta, name)) = self.meta().snapshot.clone() else { return Ok(None) };
        let dir = self.snapshots.clone();
        let data = tokio::task::spawn_blocking(move || dir.read(&name))
            .await
            .map_err(|e| Self::io_err(e, openraft::ErrorVerb::Read))?
            .map_err(|e| Self::io_err(e, openraft::ErrorVerb::Read))?;
        Ok(Some(Snapshot { meta: smeta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// Lowers the calling thread's CPU priority to nice 10. Encoding a snapshot of 100,000 znodes
/// is a few hundred milliseconds of CPU; on a machine with few cores it should give way to the
/// threads answering requests, not take a core from them (Linux keeps a nice value per thread).
fn lower_thread_priority() {
    // SAFETY: setpriority takes plain integers and touches no memory of ours; `who` 0 is the
    // calling thread.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    if rc != 0 {
        tracing::debug!("could not lower the snapshot writer's priority: {}", std::io::Error::last_os_error());
    }
}

/// The zxid after `last`. Zxids past i64::MAX cannot occur (one a nanosecond would take 292
/// years); saturate rather than wrap if one ever did.
fn next_zxid(last: Zxid) -> Zxid {
    Zxid(last.0.saturating_add(1))
}

/// Network of a single-voter cluster: there is nobody to talk to. The ensemble replaces it with
/// a real transport; a one-voter cluster never calls it.
#[derive(Debug, Clone, Default)]
pub struct LoneNetwork;

impl openraft::RaftNetworkFactory<TypeConfig> for LoneNetwork {
    type Network = LoneNetwork;

    async fn new_client(&mut self, _target: u64, _node: &BasicNode) -> Self::Network {
        LoneNetwork
    }
}

fn unreachable_peer<E: std::error::Error>() -> openraft::error::RPCError<u64, BasicNode, E> {
    openraft::error::RPCError::Unreachable(openraft::error::Unreachable::new(&std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "this server runs alone and has no peers",
    )))
}

impl openraft::RaftNetwork<TypeConfig> for LoneNetwork {
    async fn append_entries(
        &mut self,
        _rpc: openraft::raft::AppendEntriesRequest<TypeConfig>,
        _option: openraft::network::RPCOption,
    ) -> Result<
        openraft::raft::AppendEntriesResponse<u64>,
        openraft::error::RPCError<u64, BasicNode, openraft::error::RaftError<u64>>,
    > {
        Err(unreachable_peer())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: openraft::raft::InstallSnapshotRequest<TypeConfig>,
        _option: openraft::network::RPCOption,
    ) -> Result<
        openraft::raft::InstallSnapshotResponse<u64>,
        openraft::error::RPCError<
            u64,
            BasicNode,
            openraft::error::RaftError<u64, openraft::error::InstallSnapshotError>,
        >,
    > {
        Err(unreachable_peer())
    }

    async fn vote(
        &mut self,
        _rpc: openraft::raft::VoteRequest<u64>,
        _option: openraft::network::RPCOption,
    ) -> Result<
        openraft::raft::VoteResponse<u64>,
        openraft::error::RPCError<u64, BasicNode, openraft::error::RaftError<u64>>,
    > {
        Err(unreachable_peer())
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Waker};
    use std::time::Duration;

    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::*;
    use crate::log::fs::RealFs;

    fn blanks(from: u64, n: u64) -> Vec<Entry<TypeConfig>> {
        (from..from + n)
            .map(|i| Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), i), payload: EntryPayload::Blank })
            .collect()
    }

    async fn notified_within(due: &SnapshotDue, wait: Duration) -> bool {
        tokio::time::timeout(wait, due.notified()).await.is_ok()
    }

    /// Transactions applied while a snapshot is written count toward the next one. When they
    /// already make it due as that snapshot finishes, it is asked for then: waiting for the
    /// next apply would take no snapshot (and purge nothing) for as long as no write comes.
    #[tokio::test]
    async fn a_snapshot_already_due_when_the_last_one_finishes_is_asked_for_at_once() {
        let scratch = referee_testkit::ScratchDir::new("sm-policy").expect("scratch dir");
        let snapshots = SnapshotDir::open(Arc::new(RealFs), scratch.path("snapshots"), 7, 3).expect("snapshot dir");
        let state = Arc::new(Mutex::new(ServerState::new(false, Duration::from_millis(100))));
        let policy = SnapshotPolicy { every_txns: 10, retry_gap_txns: 1, every_bytes: u64::MAX };
        let mut sm = StateMachine::open(state, snapshots, 0, policy).expect("open");
        let due = sm.snapshot_due();

        sm.apply(blanks(1, 10)).await.expect("apply");
        assert!(notified_within(&due, Duration::from_secs(5)).await, "due after 10 transactions");

        // The tree is copied on the build's first poll; 30 more are applied while it is written.
        let mut builder = sm.get_snapshot_builder().await;
        let mut build = std::pin::pin!(builder.build_snapshot());
        let first = build.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        assert!(first.is_pending(), "the file is written on its own thread");
        sm.apply(blanks(11, 30)).await.expect("apply");
        assert!(!due.wanted(), "no second snapshot while one is written");
        let built = build.await.expect("snapshot built");
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(10), "the snapshot holds the copy's entries");

        assert!(due.wanted(), "30 transactions since the copy, every 10 asked for");
        assert!(notified_within(&due, Duration::from_secs(5)).await, "the next snapshot is asked for without a write");
    }

    /// Rewriting a large znode takes few transactions and many bytes: a snapshot is asked for
    /// by bytes, long before the transactions' threshold.
    #[tokio::test]
    async fn a_snapshot_is_asked_for_after_enough_bytes_of_transactions() {
        let scratch = referee_testkit::ScratchDir::new("sm-bytes").expect("scratch dir");
        let snapshots = SnapshotDir::open(Arc::new(RealFs), scratch.path("snapshots"), 7, 3).expect("snapshot dir");
        let state = Arc::new(Mutex::new(ServerState::new(false, Duration::from_millis(100))));
        let policy = SnapshotPolicy { every_txns: 1000, retry_gap_txns: 1, every_bytes: 250_000 };
        let mut sm = StateMachine::open(state, snapshots, 0, policy).expect("open");
        let due = sm.snapshot_due();
        let set = |i: u64| {
            let op = crate::txn::WriteOp::SetData { path: "/big".into(), data: Some(vec![0; 100_000]), version: -1 };
            let txn = Txn {
                session: crate::proto::SessionId(0),
                auth: Vec::new(),
                time_ms: 0,
                op: crate::txn::TxnOp::Write(op),
            };
            Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), i), payload: EntryPayload::Normal(vec![txn]) }
        };
        sm.apply([set(1), set(2)]).await.expect("apply");
        assert!(!due.wanted(), "200 KB applied, 2 transactions: not due");
        sm.apply([set(3)]).await.expect("apply");
        assert!(due.wanted(), "300 KB applied: due by bytes");
        assert!(notified_within(&due, Duration::from_secs(5)).await, "and asked for");
        let built = sm.get_snapshot_builder().await.build_snapshot().await.expect("snapshot built");
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(3));
        assert!(!due.wanted(), "the bytes count again from the snapshot");
    }

    /// Openraft may install a leader's snapshot while one of this server's is being written:
    /// the older one, finished last, must not replace it as the snapshot this server sends (its
    /// log was cut at the newer one, so a follower sent the older one could never catch up).
    #[tokio::test]
    async fn a_snapshot_built_during_an_install_does_not_replace_the_newer_installed_one() {
        let scratch = referee_testkit::ScratchDir::new("sm-install").expect("scratch dir");
        let policy = SnapshotPolicy { every_txns: 1000, retry_gap_txns: 1, every_bytes: u64::MAX };
        let open = |name: &str| {
            let snapshots = SnapshotDir::open(Arc::new(RealFs), scratch.path(name), 7, 3).expect("snapshot dir");
            let state = Arc::new(Mutex::new(ServerState::new(false, Duration::from_millis(100))));
            StateMachine::open(state, snapshots, 0, policy).expect("open")
        };
        // The leader's snapshot at entry 50.
        let mut leader = open("leader");
        leader.apply(blanks(1, 50)).await.expect("apply");
        leader.get_snapshot_builder().await.build_snapshot().await.expect("leader's snapshot");
        let theirs = leader.get_current_snapshot().await.expect("read").expect("a snapshot");

        let mut sm = open("follower");
        sm.apply(blanks(1, 10)).await.expect("apply");
        let mut builder = sm.get_snapshot_builder().await;
        let mut build = std::pin::pin!(builder.build_snapshot());
        let first = build.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        assert!(first.is_pending(), "the file is written on its own thread");
        sm.install_snapshot(&theirs.meta, theirs.snapshot).await.expect("install");
        let built = build.await.expect("snapshot built");
        assert_eq!(built.meta.last_log_id.map(|l| l.index), Some(10));
        let current = sm.get_current_snapshot().await.expect("read").expect("a snapshot");
        assert_eq!(current.meta.last_log_id.map(|l| l.index), Some(50), "the installed snapshot stays current");
    }
}
