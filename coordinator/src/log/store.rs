//! The durable log store openraft talks to: [`LogStore`] queues appends to one writer thread,
//! which writes them, fdatasyncs once for everything that queued meanwhile, and only then
//! reports them flushed.
//!
//! ```text
//!  openraft ── append(entries, LogFlushed) ──▶ cache (readable at once) ──▶ queue
//!                                                                            │
//!   writer thread: take everything queued ─▶ write records ─▶ one fdatasync ─┤
//!                                                                            ▼
//!  openraft ◀── LogFlushed::log_io_completed(Ok) for every entry of the batch
//! ```
//!
//! This is ZooKeeper's `SyncRequestProcessor` batching: while one fdatasync runs, new appends
//! queue, and the next fdatasync covers all of them. Truncation, purging and saving the vote
//! go through the same queue, so they are ordered with the appends, and each first flushes
//! the appends queued before it.
//!
//! When appends come one at a time the queue costs more than it saves: the thread and then
//! openraft's task are each woken on an idle core (about 90 µs of a setData's 250 µs on a
//! server alone on this project's two-core bench machine). So an append that finds the thread
//! idle, nothing queued before it and its caller's runtime with a worker to spare
//! ([`SpareWorker`]) is written and synced by its caller, which waits for the fdatasync
//! (`LogStore::append_if_idle`); whatever arrives meanwhile queues for the thread as before.
//! A leader's own entries do so only on a server alone with no other batch on its way
//! ([`LogStore::syncing_own_entries_inline`]).
//!
//! A leader's own entries are an exception to "flushed only after the fdatasync": see
//! [`LogStore::pipelining_as_leader`]. The store then keeps the durability promise one step
//! later, at the two places where a commit becomes visible, through [`Durable`]: the state
//! machine applies an entry only once it is durable here, and the commit index sent to the
//! followers never passes this server's durable log.
//!
//! A failed write or fsync stops the store for good: the failing batch and every later call
//! get an error, which openraft treats as fatal. An fsync is never retried, because after a
//! failed one the kernel may already have dropped the dirty pages it could not write.
//!
//! Entries are also kept in memory from the purge point on, for openraft's reads; the state
//! machine's snapshots bound how many that is (back to the snapshot before the newest: at most
//! two `snapshot_every_txns` of transactions, 200,000 by default). They are kept encoded, as the records' payloads, and decoded when read: one
//! allocation of about 150 bytes for a 100-byte setData instead of the decoded entry's eight or
//! so (path, data, ACL and identity strings), which took about 400 bytes more per entry, most
//! of the server's memory with 100,000 znodes. Only the newest entries, until their first read,
//! are also kept as openraft appended them (`Fresh`), so that the state machine does not decode
//! what it was just handed.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::RangeBounds;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{AnyError, Entry, LogId, LogState, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use tokio::sync::oneshot;

use super::fs::FileSystem;
use super::wal::{EncodedEntry, LogError, PurgedSegments, RaftMeta, Wal, WalOptions};
use crate::raft::TypeConfig;

/// Called once an append is durable (`Ok`) or has failed for good (`Err`).
pub type AppendDone = Box<dyn FnOnce(Result<(), io::Error>) + Send>;

/// At most this many queued commands are written under one fdatasync, as ZooKeeper's
/// `maxBatchSize`; it bounds how long the first of them waits for the rest to be written.
const MAX_BATCH: usize = 1000;

/// An fdatasync of the log that takes this long is logged.
const SLOW_SYNC: std::time::Duration = std::time::Duration::from_millis(20);
/// An fdatasync this long is counted (`referee_coordinator_log_slow_fdatasyncs_total` on
/// `/metrics`) and warned of, as ZooKeeper's `fsync.warningthresholdms` does at its default.
pub const SYNC_WARNING: std::time::Duration = std::time::Duration::from_millis(1000);

enum Command {
    Append { entries: Vec<EncodedEntry>, done: AppendDone },
    Truncate { index: u64, reply: oneshot::Sender<Result<(), LogError>> },
    Purge { meta: RaftMeta, reply: oneshot::Sender<Result<(), LogError>> },
    SaveMeta { meta: RaftMeta, reply: oneshot::Sender<Result<(), LogError>> },
}

#[derive(Debug, Default)]
struct Cache {
    entries: BTreeMap<u64, EncodedEntry>,
    meta: RaftMeta,
    /// The latest entries as openraft appended them, decoded, until a reader takes them.
    fresh: Fresh,
    /// The sizes of the entries this server appended as the leader.
    proposals: ProposalSizes,
}

impl Cache {
    /// The id of the last entry, or of the last purged one when none is left after it.
    fn last_log_id(&self) -> Option<LogId<u64>> {
        self.entries.values().next_back().map(|c| c.log_id).or(self.meta.last_purged)
    }
}

/// The sizes of the entries a server appended as the leader of its current term: its
/// proposals, in ZooKeeper's word, which its leader reports in `srvr` (`Proposal sizes
/// last/min/max`) and `mntr` (`zk_last_proposal_size`, ...). In bytes of the entry as logged
/// and replicated (its record's payload); -1 before the first, as ZooKeeper reports them. A
/// new term starts them afresh, as each of ZooKeeper's leaderships does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProposalSizes {
    /// The term these are of; 0 before any.
    pub term: u64,
    /// The last entry's size.
    pub last: i64,
    /// The smallest.
    pub min: i64,
    /// The largest.
    pub max: i64,
}

impl Default for ProposalSizes {
    fn default() -> Self {
        ProposalSizes { term: 0, last: -1, min: -1, max: -1 }
    }
}

impl ProposalSizes {
    /// Counts an entry of `bytes` appended as the leader of `term`.
    pub fn record(&mut self, term: u64, bytes: usize) {
        if term != self.term {
            *self = ProposalSizes { term, ..ProposalSizes::default() };
        }
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.last = bytes;
        self.min = if self.min < 0 { bytes } else { self.min.min(bytes) };
        self.max = self.max.max(bytes);
    }
}

/// The most entries [`Fresh`] keeps.
pub(super) const FRESH_ENTRIES: usize = 64;
/// The most bytes (of their encoded size) [`Fresh`] keeps.
const FRESH_BYTES: usize = 8 << 20;

/// Entries just appended, kept decoded until their first read, which takes them instead of
/// decoding the in-memory copy.
///
/// Why: the first reader of an entry is, on a server alone and on a follower, the state
/// machine, which applies it within a few milliseconds; decoding a batch there (a path, data
/// and identities allocated per transaction) lay between the fdatasync and the replies. On a
/// leader of an ensemble a replication stream usually reads it first, and the state machine
/// decodes it as before. Bounded by [`FRESH_ENTRIES`] and [`FRESH_BYTES`], the oldest dropped
/// first (they are decoded when read, as every entry was); cut with the log on a truncation
/// and a purge, so an entry here is always the one the in-memory copy holds at its index.
#[derive(Debug, Default)]
struct Fresh {
    entries: BTreeMap<u64, (Entry<TypeConfig>, usize)>,
    bytes: usize,
}

impl Fresh {
    fn insert(&mut self, entry: Entry<TypeConfig>, bytes: usize) {
        if let Some((_, old)) = self.entries.insert(entry.log_id.index, (entry, bytes)) {
            self.bytes -= old;
        }
        self.bytes += bytes;
        while self.entries.len() > FRESH_ENTRIES || self.bytes > FRESH_BYTES {
            let Some((_, (_, dropped))) = self.entries.pop_first() else { break };
            self.bytes -= dropped;
        }
    }

    fn take(&mut self, index: u64) -> Option<Entry<TypeConfig>> {
        let (entry, bytes) = self.entries.remove(&index)?;
        self.bytes -= bytes;
        Some(entry)
    }

    /// Drops the entries from `index` on, as a truncation does.
    fn truncate_from(&mut self, index: u64) {
        let _ = self.entries.split_off(&index);
        self.recount();
    }

    /// Drops the entries before `index`, as a purge does.
    fn purge_before(&mut self, index: u64) {
        self.entries = self.entries.split_off(&index);
        self.recount();
    }

    fn recount(&mut self) {
        self.bytes = self.entries.values().map(|(_, b)| b).sum();
    }
}

/// How far the log is durable: every entry below `end` is on disk (fdatasynced), unless
/// `stopped`, after which nothing more ever becomes durable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Durability {
    end: u64,
    stopped: bool,
}

#[derive(Debug)]
struct Shared {
    cache: Mutex<Cache>,
    /// Advanced by the writer after each fdatasync, lowered by truncation.
    durable_tx: tokio::sync::watch::Sender<Durability>,
    /// Why the store stopped taking writes, once it has.
    stopped: Mutex<Option<String>>,
    /// Tells watchers (the server, which then stops) why the store stopped.
    stop_tx: tokio::sync::watch::Sender<Option<String>>,
    /// Commands sent to the writer thread and not yet written by it.
    queued: AtomicUsize,
    /// When the write or fdatasync of the files running now began, in nanoseconds after
    /// `epoch` plus one; 0 while none runs. Read by [`StallWatch`].
    io_began: AtomicU64,
    epoch: Instant,
    /// fdatasyncs of the log that took [`SYNC_WARNING`] or longer.
    slow_syncs: AtomicU64,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            cache: Mutex::default(),
            durable_tx: tokio::sync::watch::channel(Durability::default()).0,
            stopped: Mutex::default(),
            stop_tx: tokio::sync::watch::channel(None).0,
            queued: AtomicUsize::new(0),
            io_began: AtomicU64::new(0),
            epoch: Instant::now(),
            slow_syncs: AtomicU64::new(0),
        }
    }
}

impl Shared {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stopped(&self) -> Option<String> {
        self.stopped.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Runs `io` (a write to the files, or an operation that ends in an fsync) with its start
    /// marked for [`StallWatch`].
    fn timing_io<T>(&self, io: impl FnOnce() -> T) -> T {
        let began = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1;
        self.io_began.store(began, Ordering::Release);
        let out = io();
        self.io_began.store(0, Ordering::Release);
        out
    }

    /// How long the write or fdatasync running now has been running, if one is.
    fn io_running_for(&self) -> Option<Duration> {
        match self.io_began.load(Ordering::Acquire) {
            0 => None,
            began => Some(self.epoch.elapsed().saturating_sub(Duration::from_nanos(began - 1))),
        }
    }

    fn stop(&self, why: &LogError) {
        let mut stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        if stopped.is_none() {
            tracing::error!(error = %why, "the Raft log failed and takes no more writes");
            *stopped = Some(why.to_string());
            self.durable_tx.send_modify(|d| d.stopped = true);
            self.stop_tx.send_replace(Some(why.to_string()));
        }
    }
}

/// The durable Raft log: openraft's [`RaftLogStorage`] over a [`Wal`] and a writer thread.
pub struct LogStore {
    shared: Arc<Shared>,
    /// The log's directory, for messages.
    dir: PathBuf,
    files: Arc<Mutex<Files>>,
    tx: Option<mpsc::Sender<Command>>,
    writer: Option<JoinHandle<()>>,
    /// Purges lag one request behind (see [`LogStore::purging_one_snapshot_late`]).
    lagging_purge: bool,
    /// The purge asked for last and not yet carried out, when purges lag.
    deferred_purge: Option<LogId<u64>>,
    /// The last entry of the newest snapshot on disk, and how long a purge past the log's end
    /// waits for it to reach the purge point (see [`LogStore::purging_past_its_end_after`]).
    snapshots: Option<(tokio::sync::watch::Receiver<u64>, Duration)>,
    /// This server's id, when its own entries as leader are reported flushed at once.
    pipelining_as: Option<u64>,
    /// Whether one of this server's own entries as leader, about to be appended, is the only
    /// one on its way, when they may be synced by their caller (see
    /// [`LogStore::syncing_own_entries_inline`]).
    own_inline: Option<Box<dyn Fn() -> bool + Send + Sync>>,
    /// Whether the caller's runtime has had a worker to spare lately (see [`SpareWorker`]).
    load: Mutex<SpareWorker>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("stopped", &self.shared.stopped()).finish_non_exhaustive()
    }
}

/// Reads entries for openraft, beside the store.
#[derive(Debug, Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl LogReader {
    /// The id of the last entry in the log (appended, durable or not), or of the last purged
    /// one when the log is empty after a snapshot: where the log ends, as a vote compares it.
    pub fn last_log_id(&self) -> Option<LogId<u64>> {
        self.shared.cache().last_log_id()
    }

    /// The sizes of the entries this server appended as the leader of its latest term.
    pub fn proposal_sizes(&self) -> ProposalSizes {
        self.shared.cache().proposals
    }

    /// How many fdatasyncs of the log took [`SYNC_WARNING`] or longer since the server started.
    pub fn slow_syncs(&self) -> u64 {
        self.shared.slow_syncs.load(Ordering::Relaxed)
    }
}

/// Whether entries with ids `ids` are server `me`'s own as the elected leader of `vote` (the
/// vote in force): `vote` is committed (a quorum granted it), names `me`, is of a real term
/// (term 0 is the first entry of a new ensemble, written before any election), and every entry
/// was made under it. Anything else (a follower's entries, a candidate's, the entries of an
/// earlier term of `me` sent back by another leader) is not.
pub fn leaders_own_entries(me: u64, vote: Option<Vote<u64>>, mut ids: impl Iterator<Item = LogId<u64>>) -> bool {
    let Some(vote) = vote else { return false };
    own_leadership(&vote, me) && vote.leader_id().term > 0 && ids.all(|id| id.leader_id == *vote.leader_id())
}

/// Whether `vote` is server `me`'s own elected leadership: committed (a quorum granted it) and
/// naming `me`.
fn own_leadership(vote: &Vote<u64>, me: u64) -> bool {
    vote.is_committed() && vote.leader_id().voted_for() == Some(me)
}

/// How far a [`LogStore`] is durable. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Durable {
    rx: tokio::sync::watch::Receiver<Durability>,
    shared: Arc<Shared>,
}

impl Durable {
    /// Every entry below this index is durable.
    pub fn end(&self) -> u64 {
        self.rx.borrow().end
    }

    /// Waits until the entry at `index` is durable; an error if the log stopped first (the
    /// entry may never be).
    pub async fn wait_past(&self, index: u64) -> Result<(), LogError> {
        let mut rx = self.rx.clone();
        let reached = rx.wait_for(|d| d.end > index || d.stopped).await.map(|d| *d);
        match reached {
            Ok(d) if d.end > index => Ok(()),
            _ => Err(LogError::Stopped(self.shared.stopped().unwrap_or_else(|| "the log is gone".into()))),
        }
    }

    /// The commit index a leader may send its followers when its own is `committed`: that one
    /// once the entry is durable here, waiting at most `patience` for it (the entry's fdatasync
    /// is normally under way), else the last durable entry's id, at most. A follower takes a
    /// lower commit index than it knows as no news.
    pub async fn commit_to_send(
        &self,
        committed: Option<LogId<u64>>,
        patience: std::time::Duration,
    ) -> Option<LogId<u64>> {
        let c = committed?;
        if self.end() > c.index {
            return Some(c);
        }
        if tokio::time::timeout(patience, self.wait_past(c.index)).await.is_ok_and(|r| r.is_ok()) {
            return Some(c);
        }
        let end = self.end();
        let last = end.checked_sub(1)?;
        let cache = self.shared.cache();
        let id = cache.entries.get(&last).map(|e| e.log_id).or(cache.meta.last_purged.filter(|p| p.index >= last));
        // A purge point past the durable end cannot be (purges follow applies, which follow
        // durability); `min` keeps the answer no higher than asked regardless.
        id.map(|id| if id.index > c.index { c } else { id })
    }
}

fn stopped_io(why: &str) -> io::Error {
    io::Error::other(format!("the Raft log stopped after an earlier failure: {why}"))
}

impl LogStore {
    /// Opens the log in `opts.dir` (recovering it, see [`Wal::open`]) and starts its writer
    /// thread. Blocks on file I/O: call it at start-up, before serving.
    pub fn open(fs: Arc<dyn FileSystem>, opts: WalOptions) -> Result<LogStore, LogError> {
        let dir = opts.dir.clone();
        let (wal, recovered) = Wal::open(fs, opts)?;
        let shared = Arc::new(Shared::default());
        {
            let entries: BTreeMap<u64, EncodedEntry> =
                recovered.entries.into_iter().map(|e| (e.log_id.index, e)).collect();
            let mut cache = shared.cache();
            cache.meta = recovered.meta;
            cache.entries = entries;
            // What was read back from the files counts as durable, as it does for ZooKeeper.
            let end = cache.last_log_id().map_or(0, |l| l.index + 1);
            shared.durable_tx.send_replace(Durability { end, stopped: false });
        }
        let (tx, rx) = mpsc::channel();
        let writer_shared = Arc::clone(&shared);
        let files = Arc::new(Mutex::new(Files { wal, waiting: Vec::new() }));
        let writer_files = Arc::clone(&files);
        let writer = std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || run_writer(&writer_files, rx, &writer_shared))
            .map_err(|source| LogError::Io { what: "starting the writer thread for", path: dir.clone(), source })?;
        Ok(LogStore {
            shared,
            dir,
            files,
            tx: Some(tx),
            writer: Some(writer),
            lagging_purge: false,
            deferred_purge: None,
            snapshots: None,
            pipelining_as: None,
            own_inline: None,
            load: Mutex::default(),
        })
    }

    /// Why the store stopped taking writes, if it has.
    pub fn stopped(&self) -> Option<String> {
        self.shared.stopped()
    }

    /// Watches the store: the value becomes `Some(why)` once it stops taking writes.
    pub fn stop_watch(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.shared.stop_tx.subscribe()
    }

    /// A handle that stops the store once a write or fdatasync has run too long (see
    /// [`StallWatch`]).
    pub fn stall_watch(&self) -> StallWatch {
        StallWatch { shared: Arc::clone(&self.shared), dir: self.dir.clone() }
    }

    /// The index of the last entry, if the log holds any after its purge point.
    pub fn last_index(&self) -> Option<u64> {
        self.shared.cache().last_log_id().map(|l| l.index)
    }

    /// The entries after `index` (every one for `None`), still encoded, in index order.
    pub fn encoded_after(&self, index: Option<u64>) -> Vec<EncodedEntry> {
        let from = index.map_or(0, |i| i.saturating_add(1));
        self.shared.cache().entries.range(from..).map(|(_, e)| e.clone()).collect()
    }

    /// Lets this store, on server `node_id`, report a leader's own entries flushed as soon as
    /// they are queued, rather than after their fdatasync.
    ///
    /// Why: openraft 0.9's core awaits each append's flush before it takes its next step, so
    /// until the leader's own fdatasync was done it took in no acknowledgement from a
    /// follower, committed nothing and appended nothing more. With this, the leader's
    /// fdatasync runs while its followers store the entries and answer, as a ZooKeeper leader
    /// logs a proposal while it sends it. Measured on three servers (setData, one session, one
    /// request in flight): about 1.8k writes a second before, 2.3k after.
    ///
    /// Which entries: those whose leader id is this server's committed vote, that is the
    /// entries this server makes as the elected leader of the current term. Every other append
    /// (a follower's, a candidate's, the first entry of a new ensemble) is reported only after
    /// its fdatasync, so a follower never acknowledges an entry it has not made durable.
    ///
    /// What keeps the promise: openraft may now count the leader's own copy toward a quorum
    /// before it is on disk, so the commit is kept from being seen until it is:
    /// - the state machine applies an entry (and so answers its client) only once it is durable
    ///   here ([`Durable::wait_past`], called by [`crate::raft::StateMachine`]);
    /// - the commit index sent to followers is held to this server's durable log
    ///   ([`Durable::commit_to_send`], called by [`crate::peer::PeerNetwork`]).
    ///
    /// So whatever a client is told, and whatever a follower applies, is on this server's disk
    /// and on a quorum's: a leader that crashes before its fdatasync has acknowledged nothing
    /// that depends on it.
    ///
    /// What it costs at a restart: the followers may hold entries of this server's term that
    /// its own disk lost (made, sent and stored by them, its fdatasync cut short by the crash).
    /// Openraft restores a server whose saved vote is its own committed one as the leader of
    /// that term, at once; it would then write different entries under the log ids of the lost
    /// ones, which the followers take for those they hold, and the servers' trees would part.
    /// So a saved vote of this server's own leadership is read back as a vote for itself not
    /// yet granted: the server campaigns for a new term, and a new leader's first entry settles
    /// the old term's entries wherever they are.
    pub fn pipelining_as_leader(mut self, node_id: u64) -> Self {
        self.pipelining_as = Some(node_id);
        let mut cache = self.shared.cache();
        let led = cache.meta.vote.filter(|v| own_leadership(v, node_id));
        if let Some(vote) = led {
            let term = vote.leader_id().term;
            cache.meta.vote = Some(Vote::new(term, node_id));
            tracing::info!(
                term,
                "this server led term {term} when it stopped: it campaigns for a new term rather than lead that one again"
            );
        }
        drop(cache);
        self
    }

    /// Reads a saved vote for another server's leadership back as a vote for that server not
    /// yet granted, for a voter of an ensemble.
    ///
    /// Openraft refuses every vote while its vote is a granted one and it has heard that
    /// leader within the voters' lease ([`crate::staleness::LEASE`]), and at a start, not
    /// knowing when it last heard the leader, it counts as if it had heard it at that very
    /// instant. When a whole ensemble restarts, no voter would then vote for anybody until
    /// the lease ran out after its own start: 600 ms of the restart's 1.2 s with 100,000
    /// znodes, with the leader long gone.
    ///
    /// Nothing needs that lease here. Safety never rests on it (a leader's word counts only
    /// under a quorum's confirmation, see [`crate::liveness`]), and what it is for, that a
    /// voter who cannot hear a working leader does not depose it, the pre-vote does already:
    /// a candidate calls an election only once a quorum of voters has heard no leader for the
    /// lease, or none at all since it started ([`crate::staleness::pre_vote_grant`]). The
    /// vote keeps its term and its candidate, so this server still votes for no other
    /// candidate of that term than openraft allows, and the leader's next AppendEntries
    /// carries its granted vote back. Until then this server names no leader.
    pub fn free_to_vote_at_start(self, node_id: u64) -> Self {
        let mut cache = self.shared.cache();
        if let Some(vote) = cache.meta.vote.as_mut().filter(|v| v.is_committed() && !own_leadership(v, node_id)) {
            vote.committed = false;
        }
        drop(cache);
        self
    }

    /// Lets this server's own entries as leader be written and synced by their caller when the
    /// writer thread is idle, as every other append is (see [`LogStore::submit`]), and when
    /// `alone` says no other of them is on its way (the proposer has one batch in flight).
    ///
    /// For a server alone, whose commits wait for no one else: a leader of an ensemble keeps
    /// handing its entries to the thread, so that its fdatasync runs while openraft sends them
    /// to the followers (measured on three servers, setData at one session with one request in
    /// flight: about 2,000 writes a second through the thread, 1,600 synced by the caller).
    /// And only one at a time: with more batches coming, a caller that syncs each in turn
    /// gives up what the thread does, one fdatasync for all that queued during the last, and
    /// the apply of one batch overlapping the fdatasync of the next.
    pub fn syncing_own_entries_inline(mut self, alone: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.own_inline = Some(Box::new(alone));
        self
    }

    /// How far this log is durable, for those who must not act on more.
    pub fn durable(&self) -> Durable {
        Durable { rx: self.shared.durable_tx.subscribe(), shared: Arc::clone(&self.shared) }
    }

    /// Whether `entries` are this server's own as the elected leader of the vote in force.
    fn own_as_leader(&self, entries: &[Entry<TypeConfig>]) -> bool {
        let Some(me) = self.pipelining_as else { return false };
        let vote = self.shared.cache().meta.vote;
        leaders_own_entries(me, vote, entries.iter().map(|e| e.log_id))
    }

    /// A reader of the entries.
    pub fn reader(&self) -> LogReader {
        LogReader { shared: Arc::clone(&self.shared) }
    }

    /// The indexes of the entries kept decoded for their first read (see `Fresh`).
    #[cfg(test)]
    pub(super) fn fresh_indexes(&self) -> Vec<u64> {
        self.shared.cache().fresh.entries.keys().copied().collect()
    }

    /// The saved Raft state as of the last call (durable once that call returned).
    pub fn meta(&self) -> RaftMeta {
        self.shared.cache().meta.clone()
    }

    fn send(&self, cmd: Command) -> Result<(), LogError> {
        if let Some(why) = self.shared.stopped() {
            return Err(LogError::Stopped(why));
        }
        let tx = self.tx.as_ref().expect("the queue lives as long as the store");
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        tx.send(cmd).map_err(|_| {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            LogError::Stopped("the writer thread is gone".into())
        })
    }

    /// Appends `entries` after the last ones; `done` is called after the fdatasync that makes
    /// them durable, or with the error that stopped the store. The entries are readable at
    /// once, as openraft replicates entries before they are flushed locally. They are queued
    /// for the writer thread, or, when it is idle with nothing queued, written and synced
    /// before this returns (`done` included).
    pub fn submit_append(&self, entries: Vec<Entry<TypeConfig>>, done: AppendDone) -> Result<(), LogError> {
        self.submit(entries, done, false)
    }

    /// [`LogStore::submit_append`] of entries this server appends as the leader, as openraft's
    /// `append` hands them over when [`LogStore::pipelining_as_leader`] finds them its own.
    #[cfg(test)]
    pub(super) fn submit_own(&self, entries: Vec<Entry<TypeConfig>>, done: AppendDone) -> Result<(), LogError> {
        self.submit(entries, done, true)
    }

    /// Whether the writer thread has nothing queued and does not hold the files: an append now
    /// may be synced by its caller. (The thread calls a batch's appends back before it lets
    /// the files go.)
    #[cfg(test)]
    pub(super) fn writer_idle(&self) -> bool {
        self.shared.queued.load(Ordering::Acquire) == 0 && self.files.try_lock().is_ok()
    }

    /// [`LogStore::submit_append`]; `own` says the entries are this server's as the leader,
    /// counted in its [`ProposalSizes`].
    fn submit(&self, entries: Vec<Entry<TypeConfig>>, done: AppendDone, own: bool) -> Result<(), LogError> {
        if let Some(why) = self.shared.stopped() {
            return Err(LogError::Stopped(why));
        }
        // Encoded once, before the lock is taken, for the in-memory copy and the writer both;
        // an entry that cannot be encoded cannot be logged either, and stops the store as a
        // failed write would.
        let encoded = entries
            .iter()
            .map(|e| EncodedEntry::encode(e).map_err(|reason| LogError::BadEntry { index: e.log_id.index, reason }))
            .collect::<Result<Vec<_>, _>>()
            .inspect_err(|e| self.shared.stop(e))?;
        {
            let mut cache = self.shared.cache();
            for (c, entry) in encoded.iter().zip(entries) {
                if own {
                    cache.proposals.record(c.log_id.leader_id.term, c.payload.len());
                }
                cache.entries.insert(c.log_id.index, c.clone());
                cache.fresh.insert(entry, c.payload.len());
            }
        }
        // A leader of an ensemble (no `own_inline`) always queues: its fdatasync runs while the
        // entries go to the followers.
        let may_inline = !own || self.own_inline.as_ref().is_some_and(|alone| alone());
        let queued = if may_inline { self.append_if_idle(&encoded, done) } else { Some(done) };
        let Some(done) = queued else { return Ok(()) };
        self.send(Command::Append { entries: encoded, done })
    }

    /// Writes and syncs `entries` here and now if the writer thread is idle with nothing queued
    /// and the caller's runtime has a worker to spare, and gives `done` back otherwise (see the
    /// module docs for why).
    ///
    /// Safe as the queue is: the append is written in its order (nothing is queued before it,
    /// and the thread, which holds the files for each batch and counts a command out of
    /// `queued` only once it is written, cannot write meanwhile) and is durable before `done`
    /// runs. What arrives while it runs queues for the thread, which group-commits it as before.
    fn append_if_idle(&self, entries: &[EncodedEntry], done: AppendDone) -> Option<AppendDone> {
        if self.shared.queued.load(Ordering::Acquire) != 0 || !self.worker_to_spare() {
            return Some(done);
        }
        let mut files = match self.files.try_lock() {
            Ok(f) => f,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Some(done),
        };
        // Checked again under the lock: the thread takes it before it lowers the count.
        if self.shared.queued.load(Ordering::Acquire) != 0 {
            return Some(done);
        }
        files.append(&self.shared, entries, done);
        files.flush(&self.shared);
        None
    }

    /// Whether the caller's Tokio runtime has had a worker's worth of idle time lately, so that
    /// one of its workers waiting on an fdatasync holds up nothing else. False outside a
    /// runtime (openraft always calls from one; a caller outside has no such measure).
    fn worker_to_spare(&self) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return false };
        let m = runtime.metrics();
        let busy = (0..m.num_workers()).map(|w| m.worker_total_busy_duration(w)).sum();
        self.load.lock().unwrap_or_else(|p| p.into_inner()).observe(Instant::now(), busy, m.num_workers())
    }

    async fn request(
        &self,
        cmd: impl FnOnce(oneshot::Sender<Result<(), LogError>>) -> Command,
    ) -> Result<(), LogError> {
        let (reply, rx) = oneshot::channel();
        self.send(cmd(reply))?;
        rx.await.map_err(|_| LogError::Stopped("the writer thread is gone".into()))?
    }

    /// Removes entry `index` and all later ones, durably.
    pub async fn truncate_from(&self, index: u64) -> Result<(), LogError> {
        {
            let mut cache = self.shared.cache();
            let _ = cache.entries.split_off(&index);
            cache.fresh.truncate_from(index);
        }
        self.request(|reply| Command::Truncate { index, reply }).await
    }

    /// Makes openraft's purges lag one request behind: openraft purges up to each new
    /// snapshot, and this store then purges only up to the one before. So the log always
    /// reaches back to the snapshot before the newest (a damaged newest snapshot can be skipped
    /// for it), however many transactions each entry holds, and no further: a count of entries
    /// to keep would be millions of transactions when entries are large batches. A purge past
    /// the log's end, after a snapshot installed from the leader, is done at once.
    pub fn purging_one_snapshot_late(mut self) -> Self {
        self.lagging_purge = true;
        self
    }

    /// Makes a purge past the log's end wait, at most `patience`, until `snapshots` (the last
    /// entry of the newest snapshot on disk) reaches its point.
    ///
    /// Why: on a follower, openraft asks for the purge up to a snapshot received from the
    /// leader as soon as it has handed the snapshot to the state machine, not once the state
    /// machine has written it. Purged before the snapshot is durable, a crash between the two
    /// would leave the server with neither the entries nor the snapshot holding them: it could
    /// not start again on its data directory. A purge within the log waits for nothing: the
    /// entries it removes are already in a snapshot on disk (openraft purges behind snapshots
    /// the state machine built and wrote, and the store lags one snapshot behind those).
    pub fn purging_past_its_end_after(
        mut self,
        snapshots: tokio::sync::watch::Receiver<u64>,
        patience: Duration,
    ) -> Self {
        self.snapshots = Some((snapshots, patience));
        self
    }

    /// Purges entries up to and including `upto`, durably.
    pub async fn purge_upto(&self, upto: LogId<u64>) -> Result<(), LogError> {
        let meta = {
            let mut cache = self.shared.cache();
            cache.entries = cache.entries.split_off(&(upto.index + 1));
            cache.fresh.purge_before(upto.index + 1);
            cache.meta.last_purged = Some(upto);
            cache.meta.clone()
        };
        self.request(|reply| Command::Purge { meta, reply }).await
    }

    /// Waits until the newest snapshot on disk reaches entry `index`, if this store was told
    /// where to look (see [`LogStore::purging_past_its_end_after`]).
    async fn snapshot_on_disk(&self, index: u64) -> Result<(), LogError> {
        let Some((snapshots, patience)) = &self.snapshots else { return Ok(()) };
        let mut rx = snapshots.clone();
        let started = Instant::now();
        let reached = tokio::time::timeout(*patience, async { rx.wait_for(|&on_disk| on_disk >= index).await.is_ok() });
        if reached.await.unwrap_or(false) {
            Ok(())
        } else {
            Err(LogError::SnapshotNotDurable { index, waited_ms: started.elapsed().as_millis() })
        }
    }

    /// Changes the saved Raft state with `f` and returns once the change is durable.
    pub async fn update_meta(&self, f: impl FnOnce(&mut RaftMeta)) -> Result<(), LogError> {
        let meta = {
            let mut cache = self.shared.cache();
            f(&mut cache.meta);
            cache.meta.clone()
        };
        self.request(|reply| Command::SaveMeta { meta, reply }).await
    }
}

impl Drop for LogStore {
    /// Waits for the writer to write and sync what is queued (at most one batch's fsyncs),
    /// unless the store has stopped: its writer may then be stuck in a stalled fdatasync, and
    /// ends on its own once that returns, writing nothing more.
    fn drop(&mut self) {
        // Closing the queue ends the writer once it has written (and synced) what is queued.
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            if self.shared.stopped().is_none() {
                let _ = writer.join();
            }
        }
    }
}

/// Whether the write or fdatasync running now has hung, from a watch's own looks at it: it must
/// have been seen running at more than `looks` looks in a row, and for longer than `limit`. A
/// pause of the whole process (SIGSTOP, a virtual machine paused) stops the looks as well, so
/// a write caught in one is not taken for a hung disk once the process runs again.
#[derive(Debug, Default)]
pub struct Sightings {
    /// Which write (its start, as `Shared::io_began` has it) was seen, and how many times.
    began: u64,
    seen: u32,
}

impl Sightings {
    /// One look: `began` is the running write's start (0: none runs), `running_for` how long it
    /// has run. Returns how long it has run once it counts as hung.
    pub fn look(&mut self, began: u64, running_for: Option<Duration>, looks: u32, limit: Duration) -> Option<Duration> {
        if began == 0 {
            *self = Sightings::default();
            return None;
        }
        if began == self.began {
            self.seen = self.seen.saturating_add(1);
        } else {
            *self = Sightings { began, seen: 1 };
        }
        running_for.filter(|&r| self.seen > looks && r > limit)
    }
}

/// Stops a log store whose write or fdatasync has not returned for too long: a disk that
/// hangs instead of failing (a frozen filesystem blocks the write already). Once stopped, the store fails every write as after a failed fsync, and the
/// server stops (see [`LogStore::stop_watch`]). Cheap to clone.
#[derive(Clone)]
pub struct StallWatch {
    shared: Arc<Shared>,
    dir: PathBuf,
}

impl StallWatch {
    /// How long the write or fdatasync running now has been running, if one is.
    pub fn io_running_for(&self) -> Option<Duration> {
        self.shared.io_running_for()
    }

    /// Watches on a thread of its own, every tenth of `limit` (50 ms to 1 s), until the store
    /// stops or is dropped. Not a task: a runtime one of whose workers waits in a hung write
    /// (a follower's appends are written by the task that receives them) may not fire its
    /// timers until that write returns.
    pub fn watch_on_a_thread(&self, limit: Duration) -> io::Result<()> {
        let every = (limit / 10).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let looks = u32::try_from(limit.as_millis() / every.as_millis().max(1)).unwrap_or(u32::MAX);
        let (shared, dir) = (Arc::downgrade(&self.shared), self.dir.clone());
        let mut sightings = Sightings::default();
        let watch = move || loop {
            std::thread::sleep(every);
            let Some(shared) = shared.upgrade() else { return };
            let watch = StallWatch { shared, dir: dir.clone() };
            if watch.shared.stopped().is_some() || watch.look(&mut sightings, looks, limit) {
                return;
            }
        };
        std::thread::Builder::new().name("raft-log-stall-watch".into()).spawn(watch).map(drop)
    }

    /// One look at the write or fdatasync running now (see [`Sightings`]): stops the store
    /// once it counts as hung, and says whether it did.
    pub fn look(&self, sightings: &mut Sightings, looks: u32, limit: Duration) -> bool {
        let began = self.shared.io_began.load(Ordering::Acquire);
        let Some(waited) = sightings.look(began, self.shared.io_running_for(), looks, limit) else { return false };
        self.shared.stop(&LogError::SyncStalled { dir: self.dir.clone(), waited, limit });
        true
    }
}

/// How long [`SpareWorker`] measures a runtime's load over before it judges again.
pub(super) const LOAD_WINDOW: Duration = Duration::from_millis(5);

/// Judges whether a Tokio runtime has a worker to spare: whether it has two or more and, over
/// the last window of at least [`LOAD_WINDOW`], they were idle for at least one whole worker's
/// time. Fed the workers' total busy time and the clock as inputs; the judgement holds until
/// the next window.
///
/// Why: an append synced by its caller blocks the caller's worker for an fdatasync. With one
/// request at a time the runtime is mostly idle and that costs nothing; under a read-heavy
/// load it took that worker from the reads (a 90/10 mix at 16 sessions x 16 in flight lost a
/// sixth of its throughput on the two-core bench machine), so a busy runtime hands its appends
/// to the writer thread.
#[derive(Debug, Default)]
pub(super) struct SpareWorker {
    /// When the current window began, and the busy time then.
    window: Option<(Instant, Duration)>,
    /// The last judgement: none of a window yet counts as spare.
    busy: bool,
}

impl SpareWorker {
    /// `busy`: the runtime's workers' busy time in total so far; `workers`: how many it has.
    /// A runtime of one worker never has one to spare: blocking it would stop everything else.
    pub(super) fn observe(&mut self, now: Instant, busy: Duration, workers: usize) -> bool {
        if workers < 2 {
            return false;
        }
        let Some((began, busy_then)) = self.window else {
            self.window = Some((now, busy));
            return !self.busy;
        };
        let elapsed = now.saturating_duration_since(began);
        if elapsed < LOAD_WINDOW {
            return !self.busy;
        }
        let capacity = elapsed.saturating_mul(u32::try_from(workers).unwrap_or(u32::MAX));
        let idle = capacity.saturating_sub(busy.saturating_sub(busy_then));
        self.busy = idle < elapsed;
        self.window = Some((now, busy));
        !self.busy
    }
}

/// The log's files and the appends written to them since their last fdatasync. The writer
/// thread holds them while it writes and syncs a batch; an append that finds the thread idle
/// and nothing queued before it is written and synced by its caller (see [`LogStore::submit`]).
struct Files {
    wal: Wal,
    waiting: Vec<AppendDone>,
}

impl Files {
    /// Writes one append's records; `done` waits for the next [`Files::flush`].
    fn append(&mut self, shared: &Shared, entries: &[EncodedEntry], done: AppendDone) {
        if let Some(why) = shared.stopped() {
            done(Err(stopped_io(&why)));
            return;
        }
        self.waiting.push(done);
        if let Err(e) = shared.timing_io(|| self.wal.append_encoded(entries)) {
            shared.stop(&e);
            self.fail_all(&e.to_string());
        }
    }

    fn fail_all(&mut self, why: &str) {
        for done in self.waiting.drain(..) {
            done(Err(stopped_io(why)));
        }
    }

    /// One fdatasync for every append written since the last, then their callbacks: never before.
    fn flush(&mut self, shared: &Shared) {
        if self.waiting.is_empty() {
            return;
        }
        if let Some(why) = shared.stopped() {
            self.fail_all(&why);
            return;
        }
        let started = Instant::now();
        let synced = shared.timing_io(|| self.wal.sync());
        let took = started.elapsed();
        if took >= SYNC_WARNING {
            shared.slow_syncs.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                appends = self.waiting.len(),
                "fdatasync of the log took over {SYNC_WARNING:?}: every write waited for it; the disk may be failing"
            );
        } else if took >= SLOW_SYNC {
            // Every write waiting for this fsync waits this long: a cause of reply stalls.
            tracing::info!(
                took_ms = took.as_millis() as u64,
                appends = self.waiting.len(),
                "slow fdatasync of the log"
            );
        }
        // Stopped meanwhile (the fdatasync stalled past its bound): nothing more is
        // acknowledged, even what this fdatasync covered in the end.
        let synced = match (synced, shared.stopped()) {
            (Ok(()), Some(why)) => Err(LogError::Stopped(why)),
            (synced, _) => synced,
        };
        match synced {
            Ok(()) => {
                if let Some(end) = self.wal.next_index() {
                    // Everything the files hold is on disk now.
                    shared.durable_tx.send_if_modified(|d| {
                        let moved = end != d.end;
                        d.end = end;
                        moved
                    });
                }
                for done in self.waiting.drain(..) {
                    done(Ok(()));
                }
            }
            Err(e) => {
                shared.stop(&e);
                self.fail_all(&e.to_string());
            }
        }
    }

    /// Flushes what is written, then runs `op` on the files unless the store has stopped.
    fn after_flush<T>(
        &mut self,
        shared: &Shared,
        op: impl FnOnce(&mut Wal) -> Result<T, LogError>,
    ) -> Result<T, LogError> {
        self.flush(shared);
        if let Some(why) = shared.stopped() {
            return Err(LogError::Stopped(why));
        }
        shared.timing_io(|| op(&mut self.wal)).inspect_err(|e| shared.stop(e))
    }
}

fn lock_files(files: &Mutex<Files>) -> MutexGuard<'_, Files> {
    files.lock().unwrap_or_else(|p| p.into_inner())
}

/// The writer thread: batches, writes, syncs, reports.
fn run_writer(files: &Mutex<Files>, rx: mpsc::Receiver<Command>, shared: &Shared) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        // Everything that queued while the last fdatasync ran joins this one.
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(cmd) => batch.push(cmd),
                Err(_) => break,
            }
        }
        let taken = batch.len();
        let mut files = lock_files(files);
        for cmd in batch {
            match cmd {
                Command::Append { entries, done } => files.append(shared, &entries, done),
                Command::Truncate { index, reply } => {
                    let truncated = files.after_flush(shared, |w| w.truncate(index));
                    if truncated.is_ok() {
                        shared.durable_tx.send_modify(|d| d.end = d.end.min(index));
                    }
                    let _ = reply.send(truncated);
                }
                Command::Purge { meta, reply } => {
                    let purged = files.after_flush(shared, |w| w.purge_point(&meta));
                    let _ = reply.send(purged.map(remove_aside));
                }
                Command::SaveMeta { meta, reply } => {
                    let _ = reply.send(files.after_flush(shared, |w| w.save_meta(&meta)));
                }
            }
        }
        // Written, under the lock: an append that finds nothing queued may now go ahead
        // itself, after this batch's fdatasync.
        shared.queued.fetch_sub(taken, Ordering::AcqRel);
        files.flush(shared);
    }
    lock_files(files).flush(shared);
}

/// Removes purged segments on a thread of their own, so the appends queued behind the purge
/// do not wait for it. A failure costs disk space only (open removes purged segments it finds)
/// and is logged.
fn remove_aside(purged: PurgedSegments) {
    if purged.is_empty() {
        return;
    }
    let remove = move || {
        if let Err(e) = purged.remove() {
            tracing::warn!("could not remove purged log segments (the next start removes them): {e}");
        }
    };
    if let Err(e) = std::thread::Builder::new().name("raft-log-purge".into()).spawn(remove) {
        tracing::warn!("could not start a thread to remove purged log segments (the next start removes them): {e}");
    }
}

type SErr = StorageError<u64>;

fn write_err(e: &LogError) -> SErr {
    StorageIOError::write_logs(AnyError::new(e)).into()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        // Taken decoded where a fresh entry waits (see `Fresh`); the rest decoded outside the
        // lock (the copies share the bytes): the writer and the appender take it meanwhile.
        let cached: Vec<Result<Entry<TypeConfig>, EncodedEntry>> = {
            let mut cache = self.shared.cache();
            let Cache { entries, fresh, .. } = &mut *cache;
            entries.range(range).map(|(&i, c)| fresh.take(i).ok_or_else(|| c.clone())).collect()
        };
        let mut out = Vec::with_capacity(cached.len());
        for c in cached {
            out.push(match c {
                Ok(entry) => entry,
                Err(c) => c.decode().map_err(|reason| {
                    let e = LogError::BadEntry {
                        index: c.log_id.index,
                        reason: format!("the in-memory copy is unreadable: {reason}"),
                    };
                    SErr::from(StorageIOError::read_logs(AnyError::new(&e)))
                })?,
            });
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        self.reader().try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let last_purged = self.shared.cache().meta.last_purged;
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: self.reader().last_log_id() })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), SErr> {
        let vote = *vote;
        self.update_meta(|m| m.vote = Some(vote))
            .await
            .map_err(|e| StorageIOError::write_vote(AnyError::new(&e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SErr> {
        Ok(self.shared.cache().meta.vote)
    }

    /// Remembers the commit point without syncing it: it becomes durable with the next vote or
    /// purge. Openraft awaits this on every commit, and the commit point is only a hint for
    /// replay at start-up (a leader recomputes it, and the state machine's snapshot bounds it
    /// from below), so two fsyncs per commit would buy nothing and cost every write.
    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), SErr> {
        if let Some(why) = self.shared.stopped() {
            return Err(write_err(&LogError::Stopped(why)));
        }
        self.shared.cache().meta.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, SErr> {
        Ok(self.shared.cache().meta.committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<_> = entries.into_iter().collect();
        if self.own_as_leader(&entries) {
            // Durable later (see `pipelining_as_leader`); a failure stops the store, and the
            // server with it.
            self.submit(entries, Box::new(|_| {}), true).map_err(|e| write_err(&e))?;
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        self.submit(entries, Box::new(move |r| callback.log_io_completed(r)), false).map_err(|e| write_err(&e))
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        self.truncate_from(log_id.index).await.map_err(|e| write_err(&e))
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        let upto = if self.lagging_purge {
            let previous = self.deferred_purge.replace(log_id);
            // A purge past the log's end (a snapshot from the leader that reaches beyond what
            // this server holds, installed or found at a start) is done at once: openraft's next
            // append comes right after it, and nothing of the log before it is worth keeping (it
            // could not replay up to the snapshot anyway).
            let past_end = self.shared.cache().last_log_id().is_none_or(|last| log_id.index > last.index);
            if past_end {
                self.snapshot_on_disk(log_id.index).await.map_err(|e| write_err(&e))?;
            }
            match previous {
                _ if past_end => log_id,
                Some(previous) if previous.index < log_id.index => previous,
                _ => return Ok(()),
            }
        } else {
            log_id
        };
        self.purge_upto(upto).await.map_err(|e| write_err(&e))
    }
}
