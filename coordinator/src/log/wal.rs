//! The segmented log on disk: recovery at open, appends, fsync, truncation and purging, and
//! the vote file. Synchronous and single-threaded; [`super::store`] runs it on the writer
//! thread and batches the fsyncs.
//!
//! ```text
//!  dir/
//!    log-00000000000000000001   entries 1..=k      (header, records, zeros)
//!    log-0000000000000000000k+1 entries k+1..      (the active segment, appended to)
//!    raft-meta                  vote, committed, last purged, newest segment started
//!                               (replaced atomically)
//! ```
//!
//! # Ordering, and what a crash at any point leaves
//!
//! - A new segment is written under a `.tmp` name with its header, preallocated, synced,
//!   renamed, and the directory synced, all before any entry goes into it; so a segment name
//!   that survives a crash always has a whole header, and no acknowledged entry sits in a file
//!   whose name could vanish. Leftover `.tmp` files are removed at open.
//! - A segment is synced before the next one is started, so only the last segment can hold
//!   unsynced (unacknowledged) bytes, and only its tail can be torn. Once its name is durable,
//!   `raft-meta` records it as the newest segment, so that a log whose newest segment is gone
//!   is told from one that ends where the segment before it ends; a purge or truncation that
//!   leaves no segment records that, so that the newest recorded is always there.
//! - A segment's header records the size it was preallocated to, and its file never shrinks
//!   below it: a cut clears that size in the header before it shrinks the file and writes it
//!   back once the file is preallocated again, each step synced. A file shorter than its
//!   header's size was cut after it was written, and is refused.
//! - Open makes what it reads back durable before it counts: a process killed after a write
//!   and before its sync leaves that write in the page cache, readable and not on the disk.
//!   The last segment (and any after the newest recorded) is fdatasynced and read from the
//!   disk, not the cache, and the directory is synced, before any of it is acted on.
//! - Appends are written, synced, and only then written again: the unsynced bytes are one
//!   write, the last. A power cut can keep any of its pages and lose others (a disk writes
//!   the pages of one write in any order), so its remains may have holes with intact records
//!   after them. Each record of format 4 says where its write began, which tells those
//!   remains, cut off at start, from damage to synced data, which is refused: a bad record
//!   is damage only if an intact record of a later write follows it
//!   ([`could_prove_damage`]). Damage inside the last write itself looks like its remains and
//!   is cut as they are, as a torn last record always was.
//! - Truncation records the newest segment it leaves in `raft-meta` when it removes the
//!   recorded one, then removes whole segments newest first, syncing the directory after each, then
//!   cuts the segment holding the first removed entry and syncs it. A crash part-way leaves a
//!   prefix of the old log: entries openraft will truncate again, never a hole, and never
//!   stale entries after new ones (the cut is synced before any new append goes there).
//! - Purging first persists the purge point in `raft-meta`, then removes the segments that
//!   hold only purged entries. A crash part-way leaves files that recovery recognises as
//!   purged (by the persisted point) and removes.
//! - `raft-meta` is written to a temporary file, synced, renamed over the old one, and the
//!   directory synced, so it is always either the old or the new version, whole. Its record
//!   repeats the header's version and cluster words under its checksum, so that damage there
//!   is not taken for a newer version's file or another cluster's.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{Entry, LogId, Vote};
use serde::{Deserialize, Serialize};

use super::fs::{FileSystem, LogFile};
use super::record::{self, all_zero, Read, SegmentHeader, FORMAT_VERSION, HEADER_LEN, MAX_RECORD_LEN};
use crate::raft::{upgrade_entry, TypeConfig};

/// Where the log lives and how it is cut into segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalOptions {
    /// The log's directory; created if missing.
    pub dir: PathBuf,
    /// The cluster this directory belongs to; a directory of another cluster is refused.
    pub cluster_id: u64,
    /// Size a segment is preallocated to; the next entry that does not fit starts a new one.
    pub segment_bytes: u64,
    /// The index of the log's first entry while nothing is purged: 0 in a server's log (the
    /// cluster's first membership). A log with nothing purged whose first segment starts
    /// later lost its first segments, and is refused.
    pub first_index: u64,
}

impl WalOptions {
    /// Options with segments of [`DEFAULT_SEGMENT_BYTES`], for a log that begins at entry 0.
    pub fn new(dir: impl Into<PathBuf>, cluster_id: u64) -> Self {
        WalOptions { dir: dir.into(), cluster_id, segment_bytes: DEFAULT_SEGMENT_BYTES, first_index: 0 }
    }
}

/// How far ahead of its records the active segment is written with zeros (in steps of half
/// this). A preallocated block that was never written is an unwritten extent: the first
/// fdatasync after a record lands in one also writes the extent's metadata, which made an
/// fdatasync of a 9 KB batch take about 0.24 ms instead of 0.16 ms on this project's bench
/// machine. Writing zeros ahead pays that once per 64 KiB instead of once per 4 KiB block.
pub const INITIALISE_AHEAD: u64 = 128 << 10;

/// Default segment size: ZooKeeper's default preallocation block, large enough that rolling
/// (two extra fsyncs) is rare, small enough to purge in useful steps.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// The smallest segment size accepted: a header and one small record.
pub const MIN_SEGMENT_BYTES: u64 = 256;

/// The small Raft state kept beside the log, replaced as one unit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftMeta {
    /// The last vote saved.
    pub vote: Option<Vote<u64>>,
    /// The last committed log id saved.
    pub committed: Option<LogId<u64>>,
    /// Entries up to and including this one are purged.
    pub last_purged: Option<LogId<u64>>,
}

/// Why the log cannot open or cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// The operation.
        what: &'static str,
        /// The file or directory it was on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// A write or fdatasync has not returned for longer than the configured bound: the disk
    /// hangs.
    #[error(
        "a write or fdatasync in {} has not returned for {} ms (log_sync_stall_ms is {} ms): the disk is \
         stalled, and this server stops rather than hold every write of the ensemble while it \
         still counts as up",
        dir.display(),
        waited.as_millis(),
        limit.as_millis()
    )]
    SyncStalled {
        /// The log's directory.
        dir: PathBuf,
        /// How long the write or fdatasync had been running.
        waited: std::time::Duration,
        /// The bound it passed.
        limit: std::time::Duration,
    },
    /// The log is damaged somewhere other than a torn tail; nothing is guessed or dropped.
    #[error(
        "the log is damaged in {} at byte {offset}: {reason}; refusing to start rather than lose \
         acknowledged entries",
        path.display()
    )]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// Byte offset of the damage in it.
        offset: u64,
        /// What was found there.
        reason: String,
    },
    /// The log, or a snapshot, holds entries a server can only have after saving a vote, but no
    /// vote is saved: its `raft-meta` was deleted (or the log copied in without it).
    #[error(
        "{evidence}, but {} holds no saved Raft state ({META_NAME}, with the vote this server cast and the \
         log's purge point, is missing): it was deleted, or the log was copied in without it. A server that \
         forgot its vote could vote twice in one term and help elect a leader without acknowledged writes; \
         refusing to start",
        dir.display()
    )]
    LostSavedState {
        /// The log's directory.
        dir: PathBuf,
        /// What shows that a vote was saved.
        evidence: SavedStateEvidence,
    },
    /// The directory holds another cluster's log.
    #[error(
        "{} belongs to cluster {found}, not to this cluster ({expected}); point the data \
         directory at this cluster's own",
        path.display()
    )]
    ForeignCluster {
        /// The file whose header says so.
        path: PathBuf,
        /// The cluster id found.
        found: u64,
        /// This cluster's id.
        expected: u64,
    },
    /// The directory was written by a newer format version.
    #[error(
        "{} is in log format version {found}; this build reads up to {supported}. Run the newer \
         version that wrote it",
        path.display()
    )]
    NewerFormat {
        /// The file whose header says so.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// An entry that cannot be written as a record.
    #[error("entry {index} cannot be logged: {reason}")]
    BadEntry {
        /// The entry's index.
        index: u64,
        /// Why.
        reason: String,
    },
    /// An append that does not continue the log: a bug in the caller, stopped before it can
    /// leave a hole.
    #[error("append of entry {got} out of sequence: the log continues at {expected}")]
    OutOfSequence {
        /// The index the log expects next.
        expected: u64,
        /// The index offered.
        got: u64,
    },
    /// A purge past the log's end whose snapshot was not made durable in time: purged
    /// without it, the entries up to it would be on no disk of this server.
    #[error(
        "the snapshot up to entry {index} was not on disk within {waited_ms} ms, so the log was not purged \
         past its end to it"
    )]
    SnapshotNotDurable {
        /// The purge point: the snapshot's last entry.
        index: u64,
        /// How long the purge waited for it.
        waited_ms: u128,
    },
    /// Options that cannot work.
    #[error("segment_bytes is {0}; it must be at least {MIN_SEGMENT_BYTES}")]
    SegmentTooSmall(u64),
    /// An earlier write or fsync failed; the log takes no more writes (an fsync is never
    /// retried, as a failed one may have dropped the dirty pages it was to write).
    #[error("the log stopped after an earlier failure and takes no more writes: {0}")]
    Stopped(String),
}

/// What shows that a server saved a vote ([`LogError::LostSavedState`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SavedStateEvidence {
    /// Its log holds entries up to this one, past the first membership.
    LogEntries {
        /// The last entry in it.
        last_index: u64,
    },
    /// A snapshot of its committed entries up to this one.
    Snapshot {
        /// The snapshot's file.
        path: PathBuf,
        /// Its last entry.
        index: u64,
    },
}

impl std::fmt::Display for SavedStateEvidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SavedStateEvidence::LogEntries { last_index } => write!(f, "the log holds entries up to {last_index}"),
            SavedStateEvidence::Snapshot { path, index } => write!(
                f,
                "the snapshot {} holds committed entries up to {index}, which this server applied after it saved a vote",
                path.display()
            ),
        }
    }
}

/// What `raft-meta` records of the newest segment the log started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewestSegment {
    /// Nothing: a file of a release before segments were recorded.
    Unrecorded,
    /// This segment, or nothing left: a file of the release before a log without segments was
    /// recorded, which left its last newest segment recorded when a purge removed every one.
    StartedOrPurged(u64),
    /// The log has no segment: none started yet, or every one purged or cut off.
    NoSegment,
    /// The newest segment started begins at this entry: it, or one started after it (and not
    /// yet recorded when the server stopped), holds the log's end.
    Started(u64),
}

impl NewestSegment {
    /// The first index of the newest segment recorded, if one is.
    pub fn first_index(self) -> Option<u64> {
        match self {
            NewestSegment::StartedOrPurged(first) | NewestSegment::Started(first) => Some(first),
            NewestSegment::Unrecorded | NewestSegment::NoSegment => None,
        }
    }
}

/// The segment `raft-meta` records as the newest started (`recorded`) when it is missing from a log
/// whose newest segment begins at `last_first` (`None`: no segment left): that segment held the
/// log's end, entries after the purge point of `meta` included, wherever it began. A file of
/// the release before [`NewestSegment::NoSegment`] was recorded left the segment of a purge
/// past the log's end recorded: with no segment left, that is missing only if the saved
/// commit point is past the purge point.
pub fn missing_newest_segment(recorded: NewestSegment, meta: &RaftMeta, last_first: Option<u64>) -> Option<u64> {
    let newest = recorded.first_index()?;
    if last_first.is_some_and(|last| last >= newest) {
        return None;
    }
    let purged = meta.last_purged.map(|l| l.index);
    let purged_past_the_end = matches!(recorded, NewestSegment::StartedOrPurged(_))
        && last_first.is_none()
        && purged.is_some_and(|p| newest <= p && meta.committed.is_none_or(|c| c.index <= p));
    (!purged_past_the_end).then_some(newest)
}

/// Segment files that hold only purged entries, no longer part of the log: see
/// [`Wal::purge_point`].
#[derive(Debug)]
pub struct PurgedSegments {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    upto: u64,
    paths: Vec<PathBuf>,
}

impl PurgedSegments {
    /// Whether there is nothing to remove.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Removes the files and syncs the directory.
    pub fn remove(self) -> Result<(), LogError> {
        if self.paths.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        for path in &self.paths {
            self.fs.remove(path).map_err(io_err("removing", path))?;
        }
        self.fs.sync_dir(&self.dir).map_err(io_err("syncing directory", &self.dir))?;
        tracing::info!(
            upto = self.upto,
            segments = self.paths.len(),
            took_ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
            "purged log segments removed"
        );
        Ok(())
    }
}

/// The file holding the vote, commit point and purge point.
pub const META_NAME: &str = "raft-meta";
const META_MAGIC: [u8; 4] = *b"RFMT";
const TMP_SUFFIX: &str = ".tmp";
const SEGMENT_PREFIX: &str = "log-";

fn segment_name(first_index: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_index:020}")
}

/// The first index in a segment file name, if it is one.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(SEGMENT_PREFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |source| LogError::Io { what, path: path.to_path_buf(), source }
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    first_index: u64,
    /// The format its records are in; appends go only to a segment of the current one.
    version: u32,
    path: PathBuf,
    /// Offset of the record of entry `first_index + i`.
    offsets: Vec<u64>,
    /// Where the next record goes.
    end: u64,
    /// The size its header says the file was preallocated to (0: not recorded).
    preallocated: u64,
}

impl Segment {
    fn next_index(&self) -> u64 {
        self.first_index + self.offsets.len() as u64
    }
}

/// A torn tail that open cut off (and logged as a warning).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    /// The segment it was in.
    pub path: PathBuf,
    /// Where the file now ends its records.
    pub offset: u64,
    /// What was found there.
    pub reason: &'static str,
}

/// A log entry kept encoded: its log id, and the entry as a record payload of
/// [`ENTRY_FORMAT`] ([`encode_entry`]; a record of the current format adds where its write
/// began). What recovery returns and what the store keeps in memory: one
/// allocation of about 150 bytes for a 100-byte setData, decoded only when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEntry {
    /// The entry's log id, read without decoding the rest.
    pub log_id: LogId<u64>,
    /// The entry, encoded in [`ENTRY_FORMAT`]; shared between the store's in-memory copy
    /// and the writer, and with readers while they decode it.
    pub payload: Arc<[u8]>,
}

/// The first field of an encoded entry: postcard writes a struct's fields one after the other
/// without names or lengths, so this reads an entry's log id and leaves its payload undecoded.
#[derive(Deserialize)]
struct EntryHead {
    log_id: LogId<u64>,
}

/// An encoded entry's log id and the index of its payload's variant (postcard writes an
/// enum's variant index first, as a varint, as it writes a `u32`).
#[derive(Deserialize)]
struct EntryKind {
    _log_id: LogId<u64>,
    variant: u32,
}

/// The format whose record payload is an entry as [`EncodedEntry`] holds it (postcard of the
/// entry, a batch of transactions in its normal payload); format 4's adds in front of it where
/// its write began.
pub const ENTRY_FORMAT: u32 = 3;

/// The part of a record payload of a segment in `version` (3 or later) that is the entry:
/// format 4's starts with how far back its write began (a varint), which is skipped.
fn entry_of_record(version: u32, payload: &[u8]) -> Result<&[u8], String> {
    if version == ENTRY_FORMAT {
        return Ok(payload);
    }
    postcard::take_from_bytes::<u64>(payload).map(|(_, entry)| entry).map_err(|e| format!("where its write began: {e}"))
}

/// The longest varint of how far back a record's write began.
const BACK_MAX_LEN: usize = 10;

/// Appends a record of the current format to `out`: how far `back` from the record its write
/// began, then `entry` (as [`EncodedEntry`] holds it).
///
/// # Panics
/// As [`record::encode_record`].
pub fn encode_entry_record(back: u64, entry: &[u8], out: &mut Vec<u8>) {
    let mut buf = [0u8; BACK_MAX_LEN];
    let back = postcard::to_slice(&back, &mut buf).expect("a u64 varint fits 10 bytes");
    record::encode_record_of(&[back, entry], out);
}

/// The variant index of `EntryPayload::Membership` (after `Blank` and `Normal`).
const MEMBERSHIP_VARIANT: u32 = 2;

/// Whether a record at offset `at` whose payload begins with `prefix` (up to
/// [`record::PAYLOAD_PREFIX`] bytes), if it is intact, proves that a bad record at offset
/// `bad` in a segment of format `version` is damage to synced data rather than the remains of
/// the last write before a crash. Entry `next` belonged at `bad`, after entries of terms up to
/// `term`.
///
/// - Such a record follows the bad one: it opens an entry of a term no lower, whose index is
///   above `next` by no more than the records that fit between the two offsets, since a
///   segment holds its entries in order, one after the other (a truncation zeros what it cuts
///   off), each record a header and at least a byte.
/// - In format 4, it also belongs to a later write than the bad record: its write began after
///   `bad`. The log writes, syncs, and only then writes again, so a later write means the bad
///   record's was synced. Records of the bad record's own write prove nothing: a power cut can
///   leave any of that write's pages and lose others (a disk writes them in any order), and
///   none of it was acknowledged, its sync not having returned. Where the write began must
///   look like it in `buf`: the first record of a write, one that says so and ends at or
///   before this one (which keeps stray bytes of the remains from passing for records).
/// - Formats 1 and 2 (JSON, single transactions) are not looked into: any intact record after
///   a bad one is damage, as is any of format 3, which does not say where writes began.
///
/// So the search for an intact record after a bad one ([`record::any_record_after`])
/// checksums the records of later writes (none after a crash's torn write) and the rare
/// stretch of bytes that happens to read as one, not every offset of a torn write.
pub fn could_prove_damage<'a>(
    buf: &'a [u8],
    version: u32,
    bad: usize,
    next: u64,
    term: u64,
) -> impl Fn(usize, &[u8]) -> bool + 'a {
    // Whether a write's first record could begin at `began`, before a record at `at`: its
    // payload starts with a zero "began 0 bytes back", and it ends by `at`.
    let opens_write = move |began: usize, at: usize| {
        let payload = began + record::RECORD_HEADER_LEN;
        began == at
            || record::claimed_len(buf, began)
                .zip(buf.get(payload))
                .is_some_and(|(len, &back)| back == 0 && len > 0 && payload + len as usize <= at)
    };
    move |at: usize, prefix: &[u8]| {
        let most = next.saturating_add((at.saturating_sub(bad) / (record::RECORD_HEADER_LEN + 1)) as u64);
        let follows =
            |head: EntryHead| head.log_id.leader_id.term >= term && (next + 1..=most).contains(&head.log_id.index);
        match version {
            FORMAT_VERSION => postcard::take_from_bytes::<(u64, EntryHead)>(prefix).is_ok_and(|((back, head), _)| {
                at.checked_sub(back as usize).is_some_and(|began| began > bad && opens_write(began, at))
                    && follows(head)
            }),
            3 => postcard::take_from_bytes::<EntryHead>(prefix).is_ok_and(|(head, _)| follows(head)),
            _ => true,
        }
    }
}

impl EncodedEntry {
    /// Encodes `entry` in the current format.
    pub fn encode(entry: &Entry<TypeConfig>) -> Result<EncodedEntry, String> {
        Ok(EncodedEntry { log_id: entry.log_id, payload: encode_entry(entry)?.into() })
    }

    /// Takes a record payload of a segment in `version` as it is when its entry is in the
    /// current format (reading only its log id); an older format's is decoded and encoded
    /// again.
    pub fn from_record(version: u32, payload: &[u8]) -> Result<EncodedEntry, String> {
        if version >= ENTRY_FORMAT {
            let entry = entry_of_record(version, payload)?;
            let (head, _) = postcard::take_from_bytes::<EntryHead>(entry).map_err(|e| e.to_string())?;
            Ok(EncodedEntry { log_id: head.log_id, payload: entry.into() })
        } else {
            EncodedEntry::encode(&decode_entry(version, payload)?)
        }
    }

    /// Whether the entry changes the membership, read without decoding it.
    pub fn is_membership(&self) -> bool {
        postcard::take_from_bytes::<EntryKind>(&self.payload).is_ok_and(|(k, _)| k.variant == MEMBERSHIP_VARIANT)
    }

    /// The entry, decoded.
    pub fn decode(&self) -> Result<Entry<TypeConfig>, String> {
        decode_entry(ENTRY_FORMAT, &self.payload)
    }
}

/// What open found: the entries after the purge point, the saved Raft state, and any torn
/// tail it cut off.
#[derive(Debug)]
pub struct Recovered {
    /// Every entry after the purge point, in index order, still encoded: open checks each
    /// record's checksum, length and log id, and leaves decoding to whoever reads the entry
    /// (decoding 100,000 transactions, and encoding them again for the store, took a third
    /// of a restart).
    pub entries: Vec<EncodedEntry>,
    /// Vote, committed and purge point.
    pub meta: RaftMeta,
    /// The torn tail cut from the last segment, if there was one.
    pub torn: Option<TornTail>,
}

/// The log's files. See the module documentation for the crash-safety ordering.
#[derive(Debug)]
pub struct Wal {
    fs: Arc<dyn FileSystem>,
    opts: WalOptions,
    segments: Vec<Segment>,
    /// The last segment's file, open for appends.
    active: Option<Box<dyn LogFile>>,
    /// Whether `active` has writes not yet synced.
    dirty: bool,
    /// How far the active segment's blocks are written (records or zeros), so that records
    /// land in initialised blocks: see [`INITIALISE_AHEAD`].
    initialised: u64,
    /// Where in the active segment the writes since the last sync began: the end of its
    /// records when they were last synced. Each record says how far back this is, so that
    /// recovery knows which records were written after a sync and which before it
    /// ([`could_prove_damage`]).
    write_began: u64,
    /// The state `raft-meta` holds, if the file exists.
    saved: Option<RaftMeta>,
    /// The newest segment started, which `raft-meta` records with the state (see
    /// [`Wal::open`]).
    newest_segment: NewestSegment,
}

impl Wal {
    /// Opens (or creates) the log in `opts.dir`, recovering what is there: the remains of the
    /// last segment's last write (from its first bad record on, where no intact record of a
    /// later write follows) are cut off with a warning; any other damage fails with the file
    /// and offset.
    ///
    /// What is read back counts as durable from then on, so it is made durable first: the last
    /// segment (and any started after the one `raft-meta` records as the newest, or every one
    /// where it records none) is fdatasynced before it is read, and read after the page cache
    /// let go of it, and the directory is synced. A process killed after a write and before its
    /// sync leaves that write in the page cache, readable but not on the disk; a failed sync
    /// leaves the pages it could not write readable too, marked clean, so that no later sync
    /// writes them. Counted as durable without this, a follower would acknowledge such entries
    /// to a leader that re-sends them (it finds them present and appends nothing), a roll-over
    /// would close their segment unsynced, and a power cut would then lose entries taken as
    /// durable. One fdatasync of a clean file, and the last segment's records read from the disk.
    ///
    /// A missing segment is refused at either end, as between two: with nothing purged, the
    /// first must begin at [`WalOptions::first_index`]; and the segment `raft-meta` records as the
    /// newest started must be there (or one started after it), wherever it began: it holds the
    /// log's end ([`missing_newest_segment`]). A segment file shorter than the size its header
    /// says it was preallocated to was cut after it was written, and is refused too.
    pub fn open(fs: Arc<dyn FileSystem>, opts: WalOptions) -> Result<(Wal, Recovered), LogError> {
        if opts.segment_bytes < MIN_SEGMENT_BYTES {
            return Err(LogError::SegmentTooSmall(opts.segment_bytes));
        }
        let dir = opts.dir.clone();
        fs.create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            // The directory's own entry must be durable before anything in it is.
            fs.sync_dir(parent).map_err(io_err("syncing directory", parent))?;
        }
        let names = fs.list(&dir).map_err(io_err("listing", &dir))?;
        for name in names.iter().filter(|n| n.ends_with(TMP_SUFFIX)) {
            // A segment or meta file interrupted before its rename: never acknowledged.
            let path = dir.join(name);
            fs.remove(&path).map_err(io_err("removing", &path))?;
        }
        let saved = if names.iter().any(|n| n == META_NAME) {
            Some(read_saved_meta(fs.as_ref(), &dir.join(META_NAME), Some(opts.cluster_id))?)
        } else {
            None
        };
        let recorded_newest = saved.as_ref().map_or(NewestSegment::Unrecorded, |s| s.newest_segment);
        let meta = saved.as_ref().map(|s| s.meta.clone()).unwrap_or_default();
        let purged_next = meta.last_purged.map_or(0, |l| l.index + 1);
        let mut firsts: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
        firsts.sort_unstable();

        // Segments followed by one that starts at or before the purge point hold only purged
        // entries: leftovers of a purge interrupted by a crash.
        let mut keep_from = 0;
        for (i, w) in firsts.windows(2).enumerate() {
            if meta.last_purged.is_some() && w[1] <= purged_next {
                keep_from = i + 1;
            }
        }
        for &first in &firsts[..keep_from] {
            let path = dir.join(segment_name(first));
            fs.remove(&path).map_err(io_err("removing", &path))?;
        }

        let mut wal = Wal {
            fs,
            opts,
            segments: Vec::new(),
            active: None,
            dirty: false,
            initialised: 0,
            write_began: 0,
            saved: saved.as_ref().map(|s| s.meta.clone()),
            newest_segment: recorded_newest,
        };
        let mut entries = Vec::new();
        let mut torn = None;
        let kept = &firsts[keep_from..];
        for (i, &first) in kept.iter().enumerate() {
            let last = i + 1 == kept.len();
            // Every segment before the newest was synced before the next was started; the
            // newest, and any started after the one recorded (a stop between the two), may
            // hold bytes no sync covered.
            let unsynced = last || recorded_newest.first_index().is_none_or(|newest| first >= newest);
            let before = wal.segments.last().map(|s| (s.path.clone(), s.end, s.next_index()));
            let (seg, cut) = wal.recover_segment(first, before, last, unsynced, purged_next, &mut entries)?;
            wal.segments.push(seg);
            torn = torn.or(cut);
        }
        match (meta.last_purged, wal.segments.first()) {
            (Some(purged), Some(first)) if first.first_index > purged.index + 1 => {
                return Err(LogError::Corrupt {
                    path: first.path.clone(),
                    offset: 0,
                    reason: format!(
                        "the log is purged up to {} but this first segment starts at {}: a segment is missing",
                        purged.index, first.first_index
                    ),
                });
            }
            (None, Some(first)) if first.first_index > wal.opts.first_index => {
                return Err(LogError::Corrupt {
                    path: first.path.clone(),
                    offset: 0,
                    reason: format!(
                        "nothing is purged, so the log begins at entry {}, but this first segment starts at {}: the \
                         segment holding entry {} is missing",
                        wal.opts.first_index, first.first_index, wal.opts.first_index
                    ),
                });
            }
            _ => {}
        }
        let last_first = wal.segments.last().map(|s| s.first_index);
        if let Some(newest) = missing_newest_segment(recorded_newest, &meta, last_first) {
            let end = wal.segments.last().map_or(purged_next, Segment::next_index);
            return Err(LogError::Corrupt {
                path: dir.join(segment_name(newest)),
                offset: 0,
                reason: format!(
                    "{META_NAME} records that this segment, from entry {newest} on, was started, but it is missing \
                     (the log that is left ends before entry {end})"
                ),
            });
        }
        // A last segment holding only purged entries cannot be continued at the purge point.
        if wal.segments.last().is_some_and(|s| s.next_index() < purged_next) {
            let seg = wal.segments.pop().expect("checked above");
            wal.fs.remove(&seg.path).map_err(io_err("removing", &seg.path))?;
        }
        // Removals above, and names a killed process left unsynced (a segment or `raft-meta`
        // renamed into place): durable before anything read here is acted on.
        wal.fs.sync_dir(&dir).map_err(io_err("syncing directory", &dir))?;
        if let Some(seg) = wal.segments.last() {
            wal.active = Some(wal.fs.open(&seg.path).map_err(io_err("opening", &seg.path))?);
            wal.initialised = seg.end;
            wal.write_began = seg.end;
        }
        let newest = wal.segments.last().map_or(NewestSegment::NoSegment, |s| NewestSegment::Started(s.first_index));
        if newest != recorded_newest {
            // Recorded now: a file of an earlier release, a stop between starting a segment
            // and recording it, or a last segment of purged entries removed above.
            wal.newest_segment = newest;
            if let Some(saved) = wal.saved.clone() {
                wal.save_meta(&saved)?;
            }
        }
        entries.retain(|e: &EncodedEntry| e.log_id.index >= purged_next);
        Ok((wal, Recovered { entries, meta, torn }))
    }

    /// Reads one segment, checking its header and every record, and cuts a torn tail if it is
    /// the last one. Records of purged entries (before `purged_next`) are checked but not
    /// decoded: nobody reads them again, and a segment is purged only as a whole.
    ///
    /// `before` is the segment read before this one: its file, where its records end, and the
    /// entry that this one must therefore start with.
    fn recover_segment(
        &mut self,
        first: u64,
        before: Option<(PathBuf, u64, u64)>,
        last: bool,
        unsynced: bool,
        purged_next: u64,
        entries: &mut Vec<EncodedEntry>,
    ) -> Result<(Segment, Option<TornTail>), LogError> {
        let path = self.opts.dir.join(segment_name(first));
        let corrupt =
            |offset: usize, reason: String| LogError::Corrupt { path: path.clone(), offset: offset as u64, reason };
        if unsynced {
            // Made durable, and then read from the disk rather than the page cache (see
            // `Wal::open`).
            let mut f = self.fs.open(&path).map_err(io_err("opening", &path))?;
            f.sync_data().map_err(io_err("syncing", &path))?;
            f.drop_cache().map_err(io_err("dropping the cached pages of", &path))?;
        }
        let buf = self.fs.read(&path).map_err(io_err("reading", &path))?;
        let header = SegmentHeader::decode(&buf).map_err(|e| corrupt(0, e.to_string()))?;
        if let Some(reason) = cut_short(buf.len() as u64, header.preallocated) {
            return Err(corrupt(buf.len(), reason));
        }
        if header.version > FORMAT_VERSION {
            return Err(LogError::NewerFormat { path, found: header.version, supported: FORMAT_VERSION });
        }
        if header.cluster_id != self.opts.cluster_id {
            return Err(LogError::ForeignCluster { path, found: header.cluster_id, expected: self.opts.cluster_id });
        }
        if header.first_index != first {
            return Err(corrupt(
                16,
                format!("the header says the first entry is {}, the name {first}", header.first_index),
            ));
        }
        match before {
            // Entries missing between the two: lost from the end of the one before (its last
            // records zeroed or cut), or a whole segment between them deleted.
            Some((before, end, expected)) if expected < first => {
                return Err(LogError::Corrupt { path: before, offset: end, reason: ends_early(expected, &path, first) })
            }
            Some((_, _, expected)) if expected > first => {
                return Err(corrupt(
                    0,
                    format!(
                        "this segment starts at entry {first} but the one before holds entries up to {}",
                        expected - 1
                    ),
                ))
            }
            _ => {}
        }
        let mut seg = Segment {
            first_index: first,
            version: header.version,
            path: path.clone(),
            offsets: Vec::new(),
            end: HEADER_LEN as u64,
            preallocated: u64::from(header.preallocated),
        };
        let mut at = HEADER_LEN;
        let torn = loop {
            let reason = match record::read_record(&buf, at) {
                Read::Record { next, .. } if seg.next_index() < purged_next => {
                    seg.offsets.push(at as u64);
                    at = next;
                    continue;
                }
                Read::Record { payload, next } => {
                    let entry = EncodedEntry::from_record(header.version, payload)
                        .map_err(|e| corrupt(at, format!("an intact record that is not a log entry: {e}")))?;
                    if entry.log_id.index != seg.next_index() {
                        return Err(corrupt(
                            at,
                            format!("entry {} where entry {} belongs", entry.log_id.index, seg.next_index()),
                        ));
                    }
                    seg.offsets.push(at as u64);
                    entries.push(entry);
                    at = next;
                    continue;
                }
                Read::End if all_zero(&buf[at..]) => break None,
                Read::End => "non-zero bytes after the end of the records",
                Read::Bad(reason) => reason,
            };
            // Only the last segment can hold unsynced bytes, and only in its last write; a bad
            // record followed by an intact one of a later write is damage to synced data.
            let term = entries.last().map_or(0, |e| e.log_id.leader_id.term);
            let proves = could_prove_damage(&buf, header.version, at, seg.next_index(), term);
            if !last || record::any_record_after(&buf, at, proves) {
                return Err(corrupt(at, reason.to_owned()));
            }
            break Some(reason);
        };
        seg.end = at as u64;
        if let Some(reason) = torn {
            tracing::warn!(
                file = %path.display(),
                offset = at,
                reason,
                "cutting off the torn tail of the log: the last write before the stop was not complete (a crash during \
                 it), so it was never acknowledged; damage to that write after it was synced would look the same \
                 (in an ensemble the leader sends its entries again)"
            );
            let mut f = self.fs.open(&path).map_err(io_err("opening", &path))?;
            cut_file(f.as_mut(), &path, at as u64, header.preallocated, self.opts.segment_bytes)?;
        }
        let cut = torn.map(|reason| TornTail { path, offset: at as u64, reason });
        Ok((seg, cut))
    }

    /// The index the next appended entry must have, if the log has any segment.
    pub fn next_index(&self) -> Option<u64> {
        self.segments.last().map(Segment::next_index)
    }

    /// Writes `entries` after the last one; they are durable only after [`Wal::sync`].
    pub fn append(&mut self, entries: &[Entry<TypeConfig>]) -> Result<(), LogError> {
        let encoded = entries
            .iter()
            .map(|e| EncodedEntry::encode(e).map_err(|reason| LogError::BadEntry { index: e.log_id.index, reason }))
            .collect::<Result<Vec<_>, _>>()?;
        self.append_encoded(&encoded)
    }

    /// As [`Wal::append`], for entries already encoded (the store encodes each entry once, for
    /// its in-memory copy and for this).
    pub fn append_encoded(&mut self, entries: &[EncodedEntry]) -> Result<(), LogError> {
        let mut pending = Vec::new();
        for entry in entries {
            let index = entry.log_id.index;
            let payload = &entry.payload;
            if payload.len() + BACK_MAX_LEN > MAX_RECORD_LEN as usize {
                return Err(LogError::BadEntry {
                    index,
                    reason: format!(
                        "{} bytes, over the record limit of {}",
                        payload.len(),
                        MAX_RECORD_LEN as usize - BACK_MAX_LEN
                    ),
                });
            }
            let rec_len = (record::RECORD_HEADER_LEN + BACK_MAX_LEN + payload.len()) as u64;
            match self.segments.last() {
                None => self.start_segment(index)?,
                Some(seg) if seg.next_index() != index => {
                    return Err(LogError::OutOfSequence { expected: seg.next_index(), got: index })
                }
                Some(seg) if seg.version != FORMAT_VERSION && seg.offsets.is_empty() => {
                    // An empty segment of an older format: replaced (same name) by a new one.
                    self.segments.pop();
                    self.start_segment(index)?;
                }
                Some(seg) => {
                    let end = seg.end + pending.len() as u64;
                    // A segment of an older format is closed rather than continued: a segment
                    // holds records of one format, the one its header names.
                    let older = seg.version != FORMAT_VERSION;
                    if older || (!seg.offsets.is_empty() && end + rec_len > self.opts.segment_bytes) {
                        self.write_pending(&mut pending)?;
                        // Synced before it is closed: only the last segment may hold unsynced
                        // bytes, which is what lets recovery call damage elsewhere corruption.
                        self.sync()?;
                        self.start_segment(index)?;
                    }
                }
            }
            let seg = self.segments.last_mut().expect("a segment was started above");
            let at = seg.end + pending.len() as u64;
            seg.offsets.push(at);
            encode_entry_record(at - self.write_began, payload, &mut pending);
        }
        self.write_pending(&mut pending)
    }

    fn write_pending(&mut self, pending: &mut Vec<u8>) -> Result<(), LogError> {
        if pending.is_empty() {
            return Ok(());
        }
        let seg = self.segments.last_mut().expect("pending bytes belong to a segment");
        let file = self.active.as_mut().expect("the last segment is open");
        let end = seg.end + pending.len() as u64;
        if end + INITIALISE_AHEAD / 2 > self.initialised {
            // Zeros first, past the records about to be written, never over them.
            let from = self.initialised.max(end);
            let to = (end + INITIALISE_AHEAD).next_multiple_of(4096).min(self.opts.segment_bytes);
            if to > from {
                file.initialise(from, to - from).map_err(io_err("initialising", &seg.path))?;
            }
            self.initialised = to.max(end);
        }
        file.write_at(seg.end, pending).map_err(io_err("writing", &seg.path))?;
        seg.end += pending.len() as u64;
        self.dirty = true;
        pending.clear();
        Ok(())
    }

    /// Makes every appended entry durable (one fdatasync of the last segment).
    pub fn sync(&mut self) -> Result<(), LogError> {
        if let (true, Some(file), Some(seg)) = (self.dirty, self.active.as_mut(), self.segments.last()) {
            file.sync_data().map_err(io_err("syncing", &seg.path))?;
            self.dirty = false;
        }
        // The next write begins where this sync ended, whatever it covered.
        self.write_began = self.segments.last().map_or(HEADER_LEN as u64, |s| s.end);
        Ok(())
    }

    fn start_segment(&mut self, first_index: u64) -> Result<(), LogError> {
        let started = std::time::Instant::now();
        let dir = &self.opts.dir;
        let path = dir.join(segment_name(first_index));
        let tmp = dir.join(format!("{}{TMP_SUFFIX}", segment_name(first_index)));
        // A size over 4 GiB is not recorded (nor checked at open).
        let preallocated = u32::try_from(self.opts.segment_bytes).unwrap_or(0);
        let header =
            SegmentHeader { version: FORMAT_VERSION, cluster_id: self.opts.cluster_id, first_index, preallocated };
        let mut f = self.fs.create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_at(0, &header.encode()).map_err(io_err("writing", &tmp))?;
        f.preallocate(self.opts.segment_bytes).map_err(io_err("preallocating", &tmp))?;
        f.sync_data().map_err(io_err("syncing", &tmp))?;
        self.fs.rename(&tmp, &path).map_err(io_err("renaming", &tmp))?;
        // The new name is durable before any entry written into the file is acknowledged.
        self.fs.sync_dir(dir).map_err(io_err("syncing directory", dir))?;
        self.segments.push(Segment {
            first_index,
            version: FORMAT_VERSION,
            path,
            offsets: Vec::new(),
            end: HEADER_LEN as u64,
            preallocated: u64::from(preallocated),
        });
        self.active = Some(f);
        self.dirty = false;
        self.initialised = HEADER_LEN as u64;
        self.write_began = HEADER_LEN as u64;
        // Recorded once its name is durable, before any entry goes in: a log whose newest
        // segment is gone is told from one that ends there.
        self.newest_segment = NewestSegment::Started(first_index);
        if let Some(saved) = self.saved.clone() {
            self.save_meta(&saved)?;
        }
        // Appends queued behind the writer wait for this (two fsyncs and a preallocation).
        tracing::info!(
            segment = %self.segments.last().map_or_else(String::new, |s| s.path.display().to_string()),
            took_ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
            "log segment started"
        );
        Ok(())
    }

    /// Removes entry `index` and every later one, durably. The caller syncs appends first.
    pub fn truncate(&mut self, index: u64) -> Result<(), LogError> {
        let dir = self.opts.dir.clone();
        if self.newest_segment.first_index().is_some_and(|newest| newest >= index) {
            // The newest segment left after the cut is recorded before any is removed: a
            // crash part-way leaves the recorded one and perhaps newer ones, never less.
            self.newest_segment = self
                .segments
                .iter()
                .rev()
                .find(|s| s.first_index < index)
                .map_or(NewestSegment::NoSegment, |s| NewestSegment::Started(s.first_index));
            if let Some(saved) = self.saved.clone() {
                self.save_meta(&saved)?;
            }
        }
        while self.segments.last().is_some_and(|s| s.first_index >= index) {
            let seg = self.segments.pop().expect("checked above");
            self.active = None;
            self.fs.remove(&seg.path).map_err(io_err("removing", &seg.path))?;
            // Newest first, each removal durable before the next: a crash leaves a prefix.
            self.fs.sync_dir(&dir).map_err(io_err("syncing directory", &dir))?;
        }
        let Some(seg) = self.segments.last_mut() else {
            return Ok(());
        };
        let mut file = match self.active.take() {
            Some(f) => f,
            None => self.fs.open(&seg.path).map_err(io_err("opening", &seg.path))?,
        };
        if seg.next_index() > index {
            let keep = (index - seg.first_index) as usize;
            let cut = seg.offsets[keep];
            seg.offsets.truncate(keep);
            seg.end = cut;
            // Cut and re-zero: stale records past the cut must not survive to be read after
            // the new entries that will be written there.
            let preallocated = u32::try_from(seg.preallocated).unwrap_or(0);
            cut_file(file.as_mut(), &seg.path, cut, preallocated, self.opts.segment_bytes)?;
        }
        self.active = Some(file);
        self.dirty = false;
        self.initialised = seg.end;
        self.write_began = seg.end;
        Ok(())
    }

    /// Purges every entry up to and including `meta.last_purged`, saving `meta` first.
    pub fn purge(&mut self, meta: &RaftMeta) -> Result<(), LogError> {
        self.purge_point(meta)?.remove()
    }

    /// The first half of [`Wal::purge`]: saves `meta` (with the purge point) and lets go of the
    /// segments that hold only purged entries, returning them for [`PurgedSegments::remove`].
    /// The store removes them on another thread, so appends do not wait for the removals
    /// (which took 60 ms and more for a 64 MiB segment); a crash before they are removed
    /// leaves files that open recognises as purged and removes.
    pub fn purge_point(&mut self, meta: &RaftMeta) -> Result<PurgedSegments, LogError> {
        let started = std::time::Instant::now();
        let n = meta
            .last_purged
            .map_or(0, |last| self.segments.iter().take_while(|s| s.next_index() <= last.index + 1).count());
        if n > 0 && n == self.segments.len() {
            // Purged past the log's end: recorded with the purge point, so that a log without
            // its newest segment is never taken for one purged whole.
            self.newest_segment = NewestSegment::NoSegment;
        }
        self.save_meta(meta)?;
        let mut purged = PurgedSegments {
            fs: self.fs.clone(),
            dir: self.opts.dir.clone(),
            upto: meta.last_purged.map_or(0, |l| l.index),
            paths: Vec::new(),
        };
        if n == self.segments.len() && n > 0 {
            self.active = None;
            self.dirty = false;
        }
        purged.paths = self.segments.drain(..n).map(|s| s.path).collect();
        tracing::info!(
            upto = purged.upto,
            segments_to_remove = n,
            took_ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
            "log purge point saved"
        );
        Ok(purged)
    }

    /// Replaces `raft-meta` atomically and durably.
    pub fn save_meta(&mut self, meta: &RaftMeta) -> Result<(), LogError> {
        let dir = &self.opts.dir;
        let path = dir.join(META_NAME);
        let tmp = dir.join(format!("{META_NAME}{TMP_SUFFIX}"));
        let bytes = encode_meta(meta, self.opts.cluster_id, self.newest_segment);
        let mut f = self.fs.create(&tmp).map_err(io_err("creating", &tmp))?;
        f.write_at(0, &bytes).map_err(io_err("writing", &tmp))?;
        f.sync_data().map_err(io_err("syncing", &tmp))?;
        self.fs.rename(&tmp, &path).map_err(io_err("renaming", &tmp))?;
        self.fs.sync_dir(dir).map_err(io_err("syncing directory", dir))?;
        self.saved = Some(meta.clone());
        Ok(())
    }
}

/// An entry as [`EncodedEntry`] holds it: the payload of a record of [`ENTRY_FORMAT`].
pub fn encode_entry(entry: &Entry<TypeConfig>) -> Result<Vec<u8>, String> {
    postcard::to_stdvec(entry).map_err(|e| e.to_string())
}

/// An entry from the payload of a record of a segment in format `version`: JSON of a single
/// transaction in format 1, postcard of a single transaction in format 2, postcard of a batch
/// in format 3, and in format 4 after where its write began.
pub fn decode_entry(version: u32, payload: &[u8]) -> Result<Entry<TypeConfig>, String> {
    fn postcard_whole<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
        match postcard::take_from_bytes(payload) {
            Ok((entry, [])) => Ok(entry),
            Ok((_, rest)) => Err(format!("{} bytes left over after the entry", rest.len())),
            Err(e) => Err(e.to_string()),
        }
    }
    match version {
        1 => serde_json::from_slice(payload).map(upgrade_entry).map_err(|e| e.to_string()),
        2 => postcard_whole(payload).map(upgrade_entry),
        _ => postcard_whole(entry_of_record(version, payload)?),
    }
}

/// The JSON record of `raft-meta`: the saved state, and copies of the header's words under
/// the record's checksum, with the newest segment the log started. The files of earlier
/// releases hold the state alone (the copies absent).
#[derive(Serialize, Deserialize)]
struct MetaRecord {
    #[serde(flatten)]
    meta: RaftMeta,
    /// The header's format version, checksummed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format_version: Option<u32>,
    /// The header's cluster id, checksummed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster_id: Option<u64>,
    /// The first index of the newest segment started: the log reaches at least to that
    /// segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    newest_segment: Option<u64>,
    /// Whether the log has no segment (none started, or every one purged or cut off); absent
    /// in the files of earlier releases, which said nothing when a purge left no segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    no_segment: Option<bool>,
}

impl MetaRecord {
    fn newest_segment(&self) -> NewestSegment {
        match (self.newest_segment, self.no_segment) {
            (None, None) => NewestSegment::Unrecorded,
            (Some(first), None) => NewestSegment::StartedOrPurged(first),
            (Some(first), Some(false)) => NewestSegment::Started(first),
            (_, Some(_)) => NewestSegment::NoSegment,
        }
    }
}

/// A `raft-meta` file read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedMeta {
    /// The cluster it belongs to.
    pub cluster_id: u64,
    /// The saved state.
    pub meta: RaftMeta,
    /// The newest segment the log started.
    pub newest_segment: NewestSegment,
}

/// `raft-meta`: magic, version, cluster id (16 bytes), then one record holding the JSON, which
/// repeats the version and cluster id under its checksum.
fn encode_meta(meta: &RaftMeta, cluster_id: u64, newest_segment: NewestSegment) -> Vec<u8> {
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(&META_MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&cluster_id.to_le_bytes());
    let record = MetaRecord {
        meta: meta.clone(),
        format_version: Some(FORMAT_VERSION),
        cluster_id: Some(cluster_id),
        newest_segment: newest_segment.first_index(),
        // Unrecorded only until open has read the log, and saved nothing then.
        no_segment: (newest_segment != NewestSegment::Unrecorded).then_some(newest_segment.first_index().is_none()),
    };
    let json = serde_json::to_vec(&record).expect("vote and log ids always serialise");
    record::encode_record(&json, &mut out);
    out
}

/// Refuses a log in `dir` whose entries, or the server's snapshots, outlive its saved state
/// `meta`: entries up to `last_index`, or a snapshot of entries up to past the first
/// (`newest_snapshot`: its file and last entry), with no vote, commit point or purge point
/// saved. A server saves its vote before it appends an entry of a leader's (its own included),
/// and snapshots only committed entries, so such a directory lost its `raft-meta`, and with it
/// the vote that keeps the server from voting twice in one term (and the purge point that shows
/// a missing segment). One entry is appended before any vote: the first membership, index 0, of
/// a server initialising the cluster (`--init`, or a server alone), which then saves its vote
/// as a candidate; a log (or snapshot) of that entry alone is let through.
pub fn check_saved_state(
    dir: &Path,
    meta: &RaftMeta,
    last_index: Option<u64>,
    newest_snapshot: Option<(PathBuf, u64)>,
) -> Result<(), LogError> {
    let saved = meta.vote.is_some() || meta.committed.is_some() || meta.last_purged.is_some();
    if saved {
        return Ok(());
    }
    let evidence = match (last_index, newest_snapshot) {
        (Some(last_index), _) if last_index > 0 => SavedStateEvidence::LogEntries { last_index },
        (_, Some((path, index))) if index > 0 => SavedStateEvidence::Snapshot { path, index },
        _ => return Ok(()),
    };
    Err(LogError::LostSavedState { dir: dir.to_path_buf(), evidence })
}

/// Why a segment file of `len` bytes, whose header says it was preallocated to `preallocated`
/// (0: not recorded), was cut after it was written, if it was: its file is preallocated before
/// its name appears and never shrinks below that size ([`Wal::open`]'s docs).
pub fn cut_short(len: u64, preallocated: u32) -> Option<String> {
    let preallocated = u64::from(preallocated);
    (len < preallocated).then(|| {
        format!(
            "the file ends here, {len} bytes in, short of the {preallocated} bytes its header says it was preallocated \
             to: it was cut after it was written (or the header's size word is damaged), and every entry it held \
             past this point is lost"
        )
    })
}

/// Why a segment whose records end before entry `expected` cannot be followed by `next`, a
/// segment starting at `first`: said at the end of the earlier segment's records.
pub fn ends_early(expected: u64, next: &Path, first: u64) -> String {
    format!(
        "the records of this segment end here, before entry {expected}, but the next segment, {}, starts at entry \
         {first}: entries {expected} to {} are missing, lost from the end of this segment (its last records zeroed \
         or cut off) or with a segment between the two that was deleted",
        next.display(),
        first - 1
    )
}

/// Cuts a segment's file at `cut` (past it, zeros) and preallocates it again to its size. A
/// crash between the cut and the preallocation would leave a file shorter than the
/// preallocated size its header records, which recovery takes for one cut after it was
/// written: so that size is cleared in the header (and synced) before the cut, and written back
/// once the file is preallocated again and synced. A crash in between leaves the size
/// unrecorded, as in the segments of earlier releases.
fn cut_file(
    file: &mut dyn LogFile,
    path: &Path,
    cut: u64,
    preallocated: u32,
    segment_bytes: u64,
) -> Result<(), LogError> {
    const SIZE_WORD: u64 = 28;
    if preallocated > 0 {
        file.write_at(SIZE_WORD, &0u32.to_le_bytes()).map_err(io_err("writing the header of", path))?;
        file.sync_data().map_err(io_err("syncing", path))?;
    }
    file.set_len(cut).map_err(io_err("truncating", path))?;
    let size = segment_bytes.max(u64::from(preallocated)).max(cut);
    file.preallocate(size).map_err(io_err("preallocating", path))?;
    file.sync_data().map_err(io_err("syncing", path))?;
    if preallocated > 0 {
        file.write_at(SIZE_WORD, &preallocated.to_le_bytes()).map_err(io_err("writing the header of", path))?;
        file.sync_data().map_err(io_err("syncing", path))?;
    }
    Ok(())
}

/// The purge point saved in the log directory `dir` (0 if nothing is purged, or there is no
/// log yet), read without opening the log: what the snapshot to load depends on.
pub fn saved_purge_point(fs: &dyn FileSystem, dir: &Path, cluster_id: u64) -> Result<u64, LogError> {
    let Ok(names) = fs.list(dir) else { return Ok(0) };
    if !names.iter().any(|n| n == META_NAME) {
        return Ok(0);
    }
    let (_, meta) = read_meta(fs, &dir.join(META_NAME), Some(cluster_id))?;
    Ok(meta.last_purged.map_or(0, |l| l.index))
}

/// Reads a `raft-meta` file: the cluster it belongs to and the state. With `cluster_id`, a file
/// of another cluster is refused.
pub fn read_meta(fs: &dyn FileSystem, path: &Path, cluster_id: Option<u64>) -> Result<(u64, RaftMeta), LogError> {
    read_saved_meta(fs, path, cluster_id).map(|saved| (saved.cluster_id, saved.meta))
}

/// Reads a `raft-meta` file whole (see [`read_meta`]).
///
/// The header's version and cluster words decide "a newer version" and "another cluster", so
/// they are believed only under a checksum: the record's copies of them. A header that
/// disagrees with its record's copies is damaged. A file of an earlier release has no copies:
/// its words outside the checksum are only believed when they match this build and cluster,
/// and a mismatch is reported as damage (the data directory's identity, read before the log,
/// already said whose directory this is).
pub fn read_saved_meta(fs: &dyn FileSystem, path: &Path, cluster_id: Option<u64>) -> Result<SavedMeta, LogError> {
    let buf = fs.read(path).map_err(io_err("reading", path))?;
    let corrupt = |offset: u64, reason: String| LogError::Corrupt { path: path.to_path_buf(), offset, reason };
    if buf.len() < 16 || buf[0..4] != META_MAGIC {
        return Err(corrupt(0, "not a Raft state file (bad magic)".into()));
    }
    let version = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let mut id = [0u8; 8];
    id.copy_from_slice(&buf[8..16]);
    let found = u64::from_le_bytes(id);
    let newer = || LogError::NewerFormat { path: path.to_path_buf(), found: version, supported: FORMAT_VERSION };
    let payload = match record::read_record(&buf, 16) {
        Read::Record { payload, .. } => payload,
        Read::End | Read::Bad(_) if version > FORMAT_VERSION => {
            return Err(corrupt(
                16,
                format!(
                    "the Raft state record is damaged, and the header names format version {version} (this build \
                     reads up to {FORMAT_VERSION}): the file is damaged, or a newer version wrote it"
                ),
            ))
        }
        Read::End | Read::Bad(_) => return Err(corrupt(16, "the Raft state record is damaged".into())),
    };
    let record: MetaRecord = match serde_json::from_slice(payload) {
        Ok(record) => record,
        // An intact record this build cannot read, in a file that says it is of a newer format.
        Err(_) if version > FORMAT_VERSION => return Err(newer()),
        Err(e) => return Err(corrupt(16, format!("an intact record that is not the Raft state: {e}"))),
    };
    match (record.format_version, record.cluster_id) {
        (Some(v), Some(c)) => {
            if (v, c) != (version, found) {
                return Err(corrupt(
                    4,
                    format!(
                        "the header says format version {version} and cluster {found}, its checksummed record \
                         version {v} and cluster {c}: the header is damaged"
                    ),
                ));
            }
            if version > FORMAT_VERSION {
                return Err(newer());
            }
            if let Some(expected) = cluster_id.filter(|&e| e != found) {
                return Err(LogError::ForeignCluster { path: path.to_path_buf(), found, expected });
            }
        }
        _ => {
            // An earlier release's file: every release that writes a version above this one's
            // writes the copies, so a larger word here is damage.
            if version > FORMAT_VERSION {
                return Err(corrupt(
                    4,
                    format!(
                        "the header says format version {version}, but the state is in an earlier release's layout \
                         (up to {FORMAT_VERSION}): the header is damaged"
                    ),
                ));
            }
            if let Some(expected) = cluster_id.filter(|&e| e != found) {
                return Err(corrupt(
                    8,
                    format!(
                        "the header names cluster {found}, not this cluster ({expected}), in words an earlier \
                         release's file does not checksum: the header is damaged, or the file was copied in from \
                         another cluster's data directory"
                    ),
                ));
            }
        }
    }
    let newest_segment = record.newest_segment();
    Ok(SavedMeta { cluster_id: found, meta: record.meta, newest_segment })
}
