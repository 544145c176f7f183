//! Snapshot files: the data tree at one log position, written beside the log so the log can be
//! purged, and loaded at start-up so only the entries after it are replayed.
//!
//! ```text
//!  snapshot file (little-endian)
//!   0   magic "RFSN"
//!   4   format version (u32)
//!   8   cluster id (u64)
//!  16   header record: length (u32), CRC-32C (u32), JSON { last_applied, membership }
//!   …   the data tree, postcard (a compact binary serde format)
//!  end-16  length of the tree bytes (u64)
//!  end-8   CRC-32C of every byte before this word (u32)
//!  end-4   end magic "RFSE"
//! ```
//!
//! # Ordering
//!
//! A snapshot is written under `<name>.tmp`, streamed through a buffered writer that computes
//! the trailer checksum as the bytes go out (the file is never one buffer in memory), synced,
//! renamed to its name, and the directory synced, all before [`SnapshotDir::write`] returns.
//! Openraft purges the log only after that, so a crash at any point leaves either the old
//! snapshots and the whole log, or the new snapshot durable. `.tmp` leftovers are removed at
//! open. Older files beyond `keep` are removed after a new one is durable.
//!
//! # Choosing one at start-up
//!
//! The newest file that reads back whole is used. A damaged one (bad checksum, cut short) is
//! logged and skipped for an older one, but only if the log still holds every entry after the
//! older one; otherwise start-up is refused, as replaying from it would silently drop writes.
//! The header's version and cluster words are believed only once the checksum over the file
//! matches, so a flipped bit in them is damage like any other, not a newer version's file or
//! another cluster's.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{BasicNode, LogId, StoredMembership};
use serde::{Deserialize, Serialize};

use crate::log::record::{self, Read};
use crate::log::{crc32c, FileSystem, LogFile};
use crate::tree::DataTree;

/// The first four bytes of a snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 4] = *b"RFSN";
/// The last four bytes of a whole snapshot file.
pub const SNAPSHOT_END_MAGIC: [u8; 4] = *b"RFSE";
/// The format version this build writes and the newest it reads. Version 2 added the
/// sessions' owners to the tree; version 1 trees are read as having none.
pub const SNAPSHOT_VERSION: u32 = 2;
/// Bytes before the header record.
const PREFIX_LEN: usize = 16;
/// Bytes of the trailer.
const TRAILER_LEN: usize = 16;
/// Bytes collected before each write to the file.
const WRITE_BUFFER: usize = 256 * 1024;
/// Bytes of a snapshot being written between two write-backs (the sync that makes it durable
/// comes at the end).
const WRITE_BACK_EVERY: u64 = 1 << 20;
const NAME_PREFIX: &str = "snapshot-";
const TMP_SUFFIX: &str = ".tmp";

/// What a snapshot reflects: the log position and the membership as of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The last log entry applied to the tree.
    pub last_applied: Option<LogId<u64>>,
    /// The last membership applied.
    pub membership: StoredMembership<u64, BasicNode>,
}

impl SnapshotHeader {
    /// The index of the last applied entry, 0 for none.
    pub fn index(&self) -> u64 {
        self.last_applied.map_or(0, |l| l.index)
    }
}

/// Why a snapshot cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// The operation.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The file is damaged or not a snapshot.
    #[error("the snapshot {} is damaged at byte {offset}: {reason}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Byte offset of the damage.
        offset: u64,
        /// What was found.
        reason: String,
    },
    /// The file belongs to another cluster.
    #[error(
        "the snapshot {} belongs to cluster {found}, not to this cluster ({expected}); point the \
         data directory at this cluster's own",
        path.display()
    )]
    ForeignCluster {
        /// The file.
        path: PathBuf,
        /// The cluster id found.
        found: u64,
        /// This cluster's id.
        expected: u64,
    },
    /// A newer build wrote the file.
    #[error(
        "the snapshot {} is in format version {found}; this build reads up to {supported}. Run \
         the newer version that wrote it",
        path.display()
    )]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// Every usable snapshot is older than the start of the log: entries in between are gone.
    #[error(
        "cannot restore: {damaged}; the log is purged up to entry {purged_upto}, so {fallback}. \
         Refusing to start rather than lose acknowledged writes"
    )]
    Gap {
        /// The damaged snapshots, each with why.
        damaged: String,
        /// The log's purge point.
        purged_upto: u64,
        /// Which older snapshot there is, or that there is none.
        fallback: String,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io { what, path: path.to_path_buf(), source }
}

/// The file name of the snapshot whose last applied entry is `index`.
pub fn snapshot_name(index: u64) -> String {
    format!("{NAME_PREFIX}{index:020}")
}

/// The index in a snapshot file name, if it is one.
pub fn parse_snapshot_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(NAME_PREFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())?
}

/// Streams bytes to a file at increasing offsets through a buffer, checksumming them.
struct FileWriter {
    file: Box<dyn LogFile>,
    offset: u64,
    buf: Vec<u8>,
    crc: u32,
    path: PathBuf,
    /// The first write error: the encoder reports a failed write only as "buffer full".
    failed: Option<io::Error>,
    /// Bytes written since the last write-back.
    unwritten: u64,
}

impl FileWriter {
    fn flush_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.file.write_at(self.offset, &self.buf) {
            self.failed = Some(io::Error::new(e.kind(), e.to_string()));
            return Err(e);
        }
        self.crc = crc32c::extend(self.crc, &self.buf);
        self.offset += self.buf.len() as u64;
        self.unwritten += self.buf.len() as u64;
        self.buf.clear();
        if self.unwritten >= WRITE_BACK_EVERY {
            // Written out a little at a time: the log's fdatasync shares the disk, and waiting
            // behind a whole snapshot's 16 MB of writeback stalled every write for hundreds of
            // milliseconds; behind 1 MiB it waits a few. A write-back, not a sync: each sync
            // also flushes the disk's cache, and the log's next fdatasync queued behind those
            // flushes (sixteen for a snapshot of 100,000 znodes).
            if let Err(e) = self.file.write_back(self.offset - self.unwritten, self.unwritten) {
                self.failed = Some(io::Error::new(e.kind(), format!("writing back: {e}")));
                return Err(e);
            }
            self.unwritten = 0;
        }
        Ok(())
    }

    /// Bytes handed to the writer so far.
    fn position(&self) -> u64 {
        self.offset + self.buf.len() as u64
    }
}

impl Write for FileWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= WRITE_BUFFER {
            self.flush_buf()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.flush_buf()
    }
}

/// The tree's encoder writes into the [`FileWriter`]'s buffer directly. Through `io::Write`
/// postcard hands over every varint and every byte as a call of its own, each copied with a
/// `memmove` of unknown length: that was about half of a snapshot's CPU time (100,000 znodes
/// took 84 to 96 ms to encode and checksum; 40 to 53 now, with the processor's CRC-32C), taken
/// from the writes the server answers meanwhile. The bytes are the same.
struct TreeEncoder<'a>(&'a mut FileWriter);

impl TreeEncoder<'_> {
    #[inline]
    fn written(&mut self) -> postcard::Result<()> {
        if self.0.buf.len() >= WRITE_BUFFER {
            // The error is kept in `failed`; the encoder can only say "buffer full".
            self.0.flush_buf().map_err(|_| postcard::Error::SerializeBufferFull)?;
        }
        Ok(())
    }
}

impl postcard::ser_flavors::Flavor for TreeEncoder<'_> {
    type Output = ();

    #[inline]
    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.buf.push(byte);
        self.written()
    }

    #[inline]
    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        if data.len() <= 16 {
            // Varints and short strings: byte stores the compiler can see, no library call.
            for &b in data {
                self.0.buf.push(b);
            }
        } else {
            self.0.buf.extend_from_slice(data);
        }
        self.written()
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// A snapshot read back: what it reflects, and the tree.
#[derive(Debug)]
pub struct LoadedSnapshot {
    /// Its file name.
    pub name: String,
    /// What it reflects.
    pub header: SnapshotHeader,
    /// The tree.
    pub tree: DataTree,
}

/// A snapshot file's parts, checked, without decoding the tree.
#[derive(Debug)]
pub struct SnapshotParts<'a> {
    /// The cluster it belongs to.
    pub cluster_id: u64,
    /// Its format version.
    pub version: u32,
    /// What it reflects.
    pub header: SnapshotHeader,
    /// The encoded tree.
    pub tree_bytes: &'a [u8],
}

/// Checks a snapshot file's framing and checksum and reads its header; the tree stays encoded.
pub fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SnapshotParts<'a>, SnapshotError> {
    let corrupt = |offset: usize, reason: &str| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason: reason.to_owned(),
    };
    if bytes.len() < PREFIX_LEN || bytes[0..4] != SNAPSHOT_MAGIC {
        return Err(corrupt(0, "not a snapshot file (bad magic)"));
    }
    // The version and cluster words are believed only once the checksum over them matches: a
    // flipped bit there is damage (the start falls back to an older snapshot), not a newer
    // version's file or another cluster's (which stop it).
    let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let or_newer = |reason: &str| {
        if version > SNAPSHOT_VERSION {
            format!(
                "{reason}, and its header names format version {version} (this build reads up to {SNAPSHOT_VERSION}): \
                 the file is damaged, or a newer version wrote it"
            )
        } else {
            reason.to_owned()
        }
    };
    let cluster_id = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if bytes.len() < PREFIX_LEN + TRAILER_LEN || bytes[bytes.len() - 4..] != SNAPSHOT_END_MAGIC {
        let reason = or_newer("the file is cut short (no end marker): it was not written whole");
        return Err(corrupt(bytes.len(), &reason));
    }
    let trailer = bytes.len() - TRAILER_LEN;
    let want_crc = u32::from_le_bytes(bytes[trailer + 8..trailer + 12].try_into().expect("4 bytes"));
    if crc32c::checksum(&bytes[..trailer + 8]) != want_crc {
        return Err(corrupt(trailer + 8, &or_newer("the checksum over the file does not match its contents")));
    }
    if version > SNAPSHOT_VERSION {
        return Err(SnapshotError::NewerFormat {
            path: path.to_path_buf(),
            found: version,
            supported: SNAPSHOT_VERSION,
        });
    }
    let (header_json, tree_start) = match record::read_record(&bytes[..trailer], PREFIX_LEN) {
        Read::Record { payload, next } => (payload, next),
        Read::End | Read::Bad(_) => return Err(corrupt(PREFIX_LEN, "the header record is damaged")),
    };
    let header: SnapshotHeader = serde_json::from_slice(header_json)
        .map_err(|e| corrupt(PREFIX_LEN, &format!("the header record is not a snapshot header: {e}")))?;
    let tree_len = u64::from_le_bytes(bytes[trailer..trailer + 8].try_into().expect("8 bytes"));
    if tree_len != (trailer - tree_start) as u64 {
        return Err(corrupt(trailer, "the tree length in the trailer does not match the file"));
    }
    Ok(SnapshotParts { cluster_id, version, header, tree_bytes: &bytes[tree_start..trailer] })
}

/// Decodes a whole snapshot file of cluster `cluster_id`.
pub fn decode(path: &Path, bytes: &[u8], cluster_id: u64) -> Result<(SnapshotHeader, DataTree), SnapshotError> {
    let parts = parse(path, bytes)?;
    if parts.cluster_id != cluster_id {
        return Err(SnapshotError::ForeignCluster {
            path: path.to_path_buf(),
            found: parts.cluster_id,
            expected: cluster_id,
        });
    }
    let tree_at = bytes.len() - TRAILER_LEN - parts.tree_bytes.len();
    let tree = decode_tree(parts.tree_bytes, parts.version).map_err(|reason| SnapshotError::Corrupt {
        path: path.to_path_buf(),
        offset: tree_at as u64,
        reason,
    })?;
    Ok((parts.header, tree))
}

/// Decodes the tree bytes of a snapshot in format `version`.
pub fn decode_tree(bytes: &[u8], version: u32) -> Result<DataTree, String> {
    let decoded = if version < 2 {
        postcard::take_from_bytes::<crate::tree::TreeFieldsV1>(bytes).map(|(t, rest)| (DataTree::from(t), rest))
    } else {
        postcard::take_from_bytes::<DataTree>(bytes)
    };
    match decoded {
        Ok((tree, [])) => Ok(tree),
        Ok((_, rest)) => Err(format!("{} bytes left over after the tree", rest.len())),
        Err(e) => Err(format!("the tree does not decode: {e}")),
    }
}

/// The snapshot directory of one server.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    fs: Arc<dyn FileSystem>,
    dir: PathBuf,
    cluster_id: u64,
    keep: usize,
}

impl SnapshotDir {
    /// Opens (creating) `dir`, removing leftovers of writes a crash interrupted. `keep` is how
    /// many snapshot files to keep (at least 1).
    pub fn open(fs: Arc<dyn FileSystem>, dir: PathBuf, cluster_id: u64, keep: usize) -> Result<Self, SnapshotError> {
        fs.create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs.sync_dir(parent).map_err(io_err("syncing directory", parent))?;
        }
        for name in fs.list(&dir).map_err(io_err("listing", &dir))? {
            if name.ends_with(TMP_SUFFIX) {
                let path = dir.join(&name);
                fs.remove(&path).map_err(io_err("removing", &path))?;
            }
        }
        // Synced whether or not anything was removed: a snapshot renamed into place by a
        // process killed before its directory sync is in the directory only in the cache, and
        // the log may be purged up to it once it is loaded.
        fs.sync_dir(&dir).map_err(io_err("syncing directory", &dir))?;
        Ok(SnapshotDir { fs, dir, cluster_id, keep: keep.max(1) })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The snapshot files' indexes and names, newest first.
    pub fn list(&self) -> Result<Vec<(u64, String)>, SnapshotError> {
        let mut found: Vec<(u64, String)> = self
            .fs
            .list(&self.dir)
            .map_err(io_err("listing", &self.dir))?
            .into_iter()
            .filter_map(|n| parse_snapshot_name(&n).map(|i| (i, n)))
            .collect();
        found.sort_unstable_by_key(|f| std::cmp::Reverse(f.0));
        Ok(found)
    }

    /// The bytes of the snapshot file `name`.
    pub fn read(&self, name: &str) -> Result<Vec<u8>, SnapshotError> {
        let path = self.dir.join(name);
        self.fs.read(&path).map_err(io_err("reading", &path))
    }

    /// Writes `tree` as of `header` durably (see the module documentation for the order) and
    /// removes the oldest files beyond `keep`; returns the new file's name.
    pub fn write(&self, header: &SnapshotHeader, tree: &DataTree) -> Result<String, SnapshotError> {
        let started = std::time::Instant::now();
        let name = snapshot_name(header.index());
        let tmp = self.dir.join(format!("{name}{TMP_SUFFIX}"));
        let file = self.fs.create(&tmp).map_err(io_err("creating", &tmp))?;
        let mut w = FileWriter {
            file,
            offset: 0,
            buf: Vec::with_capacity(WRITE_BUFFER + 4096),
            crc: 0,
            path: tmp.clone(),
            failed: None,
            unwritten: 0,
        };
        let body = self.write_body(&mut w, header, tree);
        let encoded = started.elapsed();
        let bytes = w.position();
        let written = body.and_then(|()| w.file.sync_data().map_err(io_err("syncing", &tmp)));
        let synced = started.elapsed();
        drop(w);
        if let Err(e) = written {
            // A half-written file must not stay to fill a disk that is already full; a crash
            // before this removal leaves it to the next open.
            if let Err(rm) = self.fs.remove(&tmp) {
                tracing::warn!(file = %tmp.display(), "could not remove a failed snapshot: {rm}");
            }
            return Err(e);
        }
        let path = self.dir.join(&name);
        self.fs.rename(&tmp, &path).map_err(io_err("renaming", &tmp))?;
        // The name is durable before openraft is told the snapshot exists and purges the log.
        self.fs.sync_dir(&self.dir).map_err(io_err("syncing directory", &self.dir))?;
        let renamed = started.elapsed();
        self.remove_old();
        let ms = |d: std::time::Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
        tracing::info!(
            snapshot = %path.display(),
            bytes,
            znodes = tree.node_count(),
            encode_write_ms = ms(encoded),
            fsync_ms = ms(synced - encoded),
            rename_ms = ms(renamed - synced),
            remove_old_ms = ms(started.elapsed() - renamed),
            "snapshot file written"
        );
        Ok(name)
    }

    fn write_body(&self, w: &mut FileWriter, header: &SnapshotHeader, tree: &DataTree) -> Result<(), SnapshotError> {
        let path = w.path.clone();
        let io = |e: io::Error| SnapshotError::Io { what: "writing", path: path.clone(), source: e };
        let mut prefix = Vec::with_capacity(256);
        prefix.extend_from_slice(&SNAPSHOT_MAGIC);
        prefix.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        prefix.extend_from_slice(&self.cluster_id.to_le_bytes());
        let json = serde_json::to_vec(header).expect("log ids and memberships always serialise");
        record::encode_record(&json, &mut prefix);
        w.write_all(&prefix).map_err(io)?;
        let tree_start = w.position();
        if let Err(e) = postcard::serialize_with_flavor(tree, TreeEncoder(&mut *w)) {
            let source = w.failed.take().unwrap_or_else(|| io::Error::other(format!("the tree did not encode: {e}")));
            return Err(SnapshotError::Io { what: "writing", path, source });
        }
        let tree_len = w.position() - tree_start;
        w.write_all(&tree_len.to_le_bytes()).map_err(io)?;
        w.flush().map_err(io)?;
        let crc = w.crc;
        let mut end = [0u8; 8];
        end[0..4].copy_from_slice(&crc.to_le_bytes());
        end[4..8].copy_from_slice(&SNAPSHOT_END_MAGIC);
        w.write_all(&end).map_err(io)?;
        w.flush().map_err(io)
    }

    /// Stores a snapshot received whole (from a leader): checked, then written atomically.
    pub fn write_bytes(&self, bytes: &[u8]) -> Result<(SnapshotHeader, DataTree, String), SnapshotError> {
        let (header, tree) = decode(Path::new("(received snapshot)"), bytes, self.cluster_id)?;
        let name = snapshot_name(header.index());
        crate::datadir::write_atomically(self.fs.as_ref(), &self.dir, &name, bytes)
            .map_err(|(what, path, source)| SnapshotError::Io { what, path, source })?;
        self.remove_old();
        Ok((header, tree, name))
    }

    /// Removes the oldest snapshot files beyond `keep`. A failure is logged, not fatal: the
    /// extra file costs disk space only.
    fn remove_old(&self) {
        let Ok(found) = self.list() else { return };
        let mut removed = false;
        for (_, name) in found.iter().skip(self.keep) {
            let path = self.dir.join(name);
            match self.fs.remove(&path) {
                Ok(()) => removed = true,
                Err(e) => tracing::warn!(file = %path.display(), "could not remove an old snapshot: {e}"),
            }
        }
        if removed {
            if let Err(e) = self.fs.sync_dir(&self.dir) {
                tracing::warn!(dir = %self.dir.display(), "could not sync the snapshot directory: {e}");
            }
        }
    }

    /// Loads the newest snapshot that reads back whole, given that the log holds every entry
    /// after `log_purged_upto` (0: nothing purged). Damaged newer files are logged and skipped
    /// if the log covers the gap; see [`SnapshotError::Gap`] otherwise.
    pub fn load_newest(&self, log_purged_upto: u64) -> Result<Option<LoadedSnapshot>, SnapshotError> {
        let mut damaged: Vec<String> = Vec::new();
        for (index, name) in self.list()? {
            let path = self.dir.join(&name);
            let bytes = self.read(&name)?;
            match decode(&path, &bytes, self.cluster_id) {
                Ok((header, tree)) => {
                    // Below the purge point whatever happened to the newer ones (damaged, or
                    // removed from outside): the entries in between are gone.
                    if index < log_purged_upto {
                        let damaged = if damaged.is_empty() {
                            "no snapshot file reaching the log's start is left".to_string()
                        } else {
                            damaged.join("; ")
                        };
                        return Err(SnapshotError::Gap {
                            damaged,
                            purged_upto: log_purged_upto,
                            fallback: format!("the older snapshot {name} (entry {index}) does not reach it"),
                        });
                    }
                    if !damaged.is_empty() {
                        tracing::warn!(
                            snapshot = %path.display(),
                            "using an older snapshot; the log replays every entry after it"
                        );
                    }
                    return Ok(Some(LoadedSnapshot { name, header, tree }));
                }
                Err(e @ SnapshotError::Corrupt { .. }) => {
                    tracing::error!("skipping a damaged snapshot: {e}");
                    damaged.push(e.to_string());
                }
                Err(e) => return Err(e),
            }
        }
        if log_purged_upto > 0 {
            return Err(SnapshotError::Gap {
                damaged: if damaged.is_empty() { "no snapshot file is left".into() } else { damaged.join("; ") },
                purged_upto: log_purged_upto,
                fallback: "no older snapshot reaches it".into(),
            });
        }
        if !damaged.is_empty() {
            tracing::warn!(
                "no usable snapshot, but nothing is purged from the log: start-up replays the whole log \
                 from its first entry"
            );
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::FaultFs;
    use crate::proto::{op, Acl, SessionId, Zxid};
    use crate::txn::{Txn, TxnOp, TxnReply, WriteOp};

    const CLUSTER: u64 = 0x5eed;

    fn dir() -> PathBuf {
        PathBuf::from("/data/snapshots")
    }

    /// A tree with a session, `n` znodes of 100 bytes and one ephemeral; last zxid `n + 2`.
    fn tree(n: u64) -> DataTree {
        let mut t = DataTree::new();
        let open = Txn {
            session: SessionId(0),
            auth: vec![],
            time_ms: 1,
            op: TxnOp::CreateSession { timeout_ms: 5000, password: [7; 16] },
        };
        let (outcome, _) = t.apply(Zxid(1), &open);
        let Ok(TxnReply::SessionCreated { session, .. }) = outcome.result else { panic!("{outcome:?}") };
        let create = |path: String, flags| Txn {
            session,
            auth: vec![],
            time_ms: 2,
            op: TxnOp::Write(WriteOp::Create {
                opcode: op::CREATE2,
                path,
                data: Some(vec![0xab; 100]),
                acl: Acl::open_unsafe(),
                flags,
                ttl_ms: 0,
            }),
        };
        for i in 0..n {
            let (o, _) = t.apply(Zxid(i as i64 + 2), &create(format!("/n{i}"), 0));
            assert!(o.result.is_ok(), "{o:?}");
        }
        let (o, _) = t.apply(Zxid(n as i64 + 2), &create("/eph".into(), 1));
        assert!(o.result.is_ok(), "{o:?}");
        t
    }

    fn header(index: u64) -> SnapshotHeader {
        SnapshotHeader {
            last_applied: Some(LogId::new(openraft::CommittedLeaderId::new(1, 1), index)),
            membership: StoredMembership::default(),
        }
    }

    fn open(fs: &FaultFs, keep: usize) -> SnapshotDir {
        SnapshotDir::open(Arc::new(fs.clone()), dir(), CLUSTER, keep).unwrap()
    }

    fn names(fs: &FaultFs) -> Vec<String> {
        let mut n = fs.list(&dir()).unwrap();
        n.sort();
        n
    }

    #[test]
    fn a_snapshot_reads_back_whole_and_survives_a_crash() {
        let fs = FaultFs::new();
        let snaps = open(&fs, 3);
        let t = tree(50);
        let name = snaps.write(&header(52), &t).unwrap();
        assert_eq!(name, "snapshot-00000000000000000052");
        fs.crash();
        let loaded = open(&fs, 3).load_newest(0).unwrap().expect("a snapshot");
        assert_eq!(loaded.header, header(52));
        assert_eq!(loaded.tree, t, "every znode, session and ephemeral is back");
        let bytes = fs.read(&dir().join(&name)).unwrap();
        assert_eq!(&bytes[0..4], b"RFSN");
        assert_eq!(&bytes[bytes.len() - 4..], b"RFSE");
        // Compact: 50 znodes of 100 bytes take little more than their data.
        assert!(bytes.len() < 50 * 100 + 50 * 80 + 1024, "{} bytes", bytes.len());
    }

    #[test]
    fn a_tree_of_several_write_buffers_is_written_as_postcard_encodes_it() {
        // About 0.7 MB: the encoder hands the buffer to the file a few times mid-tree.
        let fs = FaultFs::new();
        let snaps = open(&fs, 3);
        let t = tree(4000);
        let expected = postcard::to_stdvec(&t).unwrap();
        assert!(expected.len() > 2 * WRITE_BUFFER, "{} bytes", expected.len());
        let name = snaps.write(&header(4002), &t).unwrap();
        let b = fs.read(&dir().join(&name)).unwrap();
        let n = b.len();
        let tree_len = u64::from_le_bytes(b[n - 16..n - 8].try_into().unwrap()) as usize;
        assert_eq!(tree_len, expected.len());
        assert!(b[..n - 16].ends_with(&expected), "the tree's bytes are postcard's, in order");
        assert_eq!(open(&fs, 3).load_newest(0).unwrap().unwrap().tree, t);

        // A disk that fills while the tree is being encoded fails the snapshot with the cause.
        fs.fill_after(WRITE_BUFFER as u64 + 1000);
        let e = snaps.write(&header(4003), &t).unwrap_err().to_string();
        assert!(e.contains("snapshot-00000000000000004003.tmp") && e.contains("no space"), "{e}");
        assert_eq!(names(&fs), [name.as_str()], "the failed snapshot is removed, never named");
    }

    #[test]
    fn a_full_disk_during_a_snapshot_leaves_no_snapshot_and_the_older_ones_intact() {
        let fs = FaultFs::new();
        let snaps = open(&fs, 3);
        snaps.write(&header(10), &tree(8)).unwrap();
        fs.fill_after(2000);
        let e = snaps.write(&header(300), &tree(298)).unwrap_err().to_string();
        assert!(e.contains("snapshot-00000000000000000300.tmp") && e.contains("no space"), "{e}");
        assert_eq!(names(&fs), ["snapshot-00000000000000000010"], "the failed snapshot is removed, never named");
        fs.crash();
        let again = open(&fs, 3);
        assert_eq!(names(&fs), ["snapshot-00000000000000000010"], "the .tmp leftover is removed at open");
        assert_eq!(again.load_newest(0).unwrap().unwrap().header, header(10));
    }

    #[test]
    fn a_failed_fsync_during_a_snapshot_fails_it_before_it_is_named() {
        let fs = FaultFs::new();
        let snaps = open(&fs, 3);
        fs.fail_syncs();
        let e = snaps.write(&header(20), &tree(18)).unwrap_err().to_string();
        assert!(e.contains("syncing") && e.contains(".tmp"), "{e}");
        assert!(snaps.list().unwrap().is_empty());
        assert!(names(&fs).is_empty(), "the failed file is removed at once: {:?}", names(&fs));
    }

    /// A snapshot renamed into place by a process killed before it synced the directory is
    /// in the directory only in the page cache: the next open makes its name durable before it
    /// is loaded (and the log purged up to it).
    #[test]
    fn a_snapshot_name_a_killed_process_left_unsynced_is_made_durable_at_open() {
        let bytes = {
            let scratch = FaultFs::new();
            let name = open(&scratch, 3).write(&header(20), &tree(18)).unwrap();
            scratch.read(&dir().join(name)).unwrap()
        };
        let fs = FaultFs::new();
        open(&fs, 3).write(&header(10), &tree(8)).unwrap();
        let tmp = dir().join(format!("{}{TMP_SUFFIX}", snapshot_name(20)));
        let mut f = fs.create(&tmp).unwrap();
        f.write_at(0, &bytes).unwrap();
        f.sync_data().unwrap();
        fs.rename(&tmp, &dir().join(snapshot_name(20))).unwrap();
        fs.kill();
        assert_eq!(open(&fs, 3).load_newest(0).unwrap().unwrap().header, header(20));
        fs.crash();
        assert_eq!(open(&fs, 3).load_newest(0).unwrap().unwrap().header, header(20), "the loaded one is on disk");
    }

    #[test]
    fn only_the_newest_files_are_kept() {
        let fs = FaultFs::new();
        let snaps = open(&fs, 3);
        for i in 1..=5 {
            snaps.write(&header(i * 10), &tree(2)).unwrap();
        }
        let kept: Vec<u64> = snaps.list().unwrap().into_iter().map(|(i, _)| i).collect();
        assert_eq!(kept, [50, 40, 30]);
    }

    #[test]
    fn a_damaged_newest_snapshot_falls_back_only_if_the_log_covers_the_gap() {
        for damage in [(|b: &mut Vec<u8>| b.truncate(b.len() / 2)) as fn(&mut Vec<u8>), |b: &mut Vec<u8>| {
            let mid = b.len() / 2;
            b[mid] ^= 0x01;
        }] {
            let fs = FaultFs::new();
            let snaps = open(&fs, 3);
            snaps.write(&header(10), &tree(8)).unwrap();
            snaps.write(&header(20), &tree(18)).unwrap();
            fs.damage(&dir().join(snapshot_name(20)), damage).unwrap();
            let loaded = snaps.load_newest(10).unwrap().expect("the older snapshot");
            assert_eq!(loaded.header, header(10));
            let e = snaps.load_newest(15).unwrap_err().to_string();
            assert!(
                e.contains("snapshot-00000000000000000020") && e.contains("purged up to entry 15"),
                "names the damaged file and the gap: {e}"
            );
        }
    }

    /// A snapshot below the log's purge point is never used, damaged newer ones or not: the
    /// newer ones may have been removed by hand, and the entries between it and the purge
    /// point are gone.
    #[test]
    fn a_snapshot_the_log_does_not_reach_is_refused_even_with_nothing_damaged() {
        let fs = FaultFs::new();
        let snaps = open(&fs, 3);
        snaps.write(&header(10), &tree(8)).unwrap();
        snaps.write(&header(30), &tree(28)).unwrap();
        fs.remove(&dir().join(snapshot_name(30))).unwrap();
        let e = snaps.load_newest(20).unwrap_err().to_string();
        assert!(
            e.contains("snapshot-00000000000000000010") && e.contains("purged up to entry 20"),
            "names the snapshot that does not reach the purge point: {e}"
        );
        assert_eq!(snaps.load_newest(10).unwrap().expect("reaches it").header, header(10));
    }

    #[test]
    fn a_purged_log_without_any_snapshot_is_refused() {
        let fs = FaultFs::new();
        let e = open(&fs, 3).load_newest(7).unwrap_err().to_string();
        assert!(e.contains("no snapshot file is left") && e.contains("purged up to entry 7"), "{e}");
        assert!(open(&fs, 3).load_newest(0).unwrap().is_none(), "a fresh directory has nothing to load");
    }

    #[test]
    fn another_clusters_or_a_newer_snapshot_is_refused() {
        let fs = FaultFs::new();
        let snaps = open(&fs, 3);
        let name = snaps.write(&header(10), &tree(1)).unwrap();
        let other = SnapshotDir::open(Arc::new(fs.clone()), dir(), CLUSTER + 1, 3).unwrap();
        let e = other.load_newest(0).unwrap_err().to_string();
        assert!(e.contains("belongs to cluster") && e.contains(&name), "{e}");
        // A newer build's file: its checksum matches the version word it wrote.
        fs.damage(&dir().join(&name), |b| {
            b[4] = 9;
            let n = b.len();
            let crc = crc32c::checksum(&b[..n - 8]);
            b[n - 8..n - 4].copy_from_slice(&crc.to_le_bytes());
        })
        .unwrap();
        let e = snaps.load_newest(0).unwrap_err().to_string();
        assert!(e.contains("format version 9"), "{e}");
    }

    /// A flipped bit in the version word of the newest snapshot is damage, as a flipped bit
    /// anywhere else is: it is skipped for the older snapshot the log still covers, not taken
    /// for a newer version's file that stops the start.
    #[test]
    fn a_damaged_version_word_is_damage_not_a_newer_format() {
        for (byte, bit) in [(7, 0x80), (4, 0x04), (8, 0x01)] {
            let fs = FaultFs::new();
            let snaps = open(&fs, 3);
            snaps.write(&header(10), &tree(8)).unwrap();
            snaps.write(&header(20), &tree(18)).unwrap();
            fs.damage(&dir().join(snapshot_name(20)), |b| b[byte] ^= bit).unwrap();
            let loaded = snaps.load_newest(10).unwrap_or_else(|e| panic!("byte {byte}: {e}")).expect("the older one");
            assert_eq!(loaded.header, header(10), "byte {byte}");
            let e = snaps.load_newest(15).unwrap_err().to_string();
            assert!(e.contains("snapshot-00000000000000000020"), "byte {byte}: {e}");
        }
    }

    #[test]
    fn golden_prefix_and_trailer() {
        let fs = FaultFs::new();
        let snaps = open(&fs, 3);
        let name = snaps.write(&header(3), &DataTree::new()).unwrap();
        let b = fs.read(&dir().join(name)).unwrap();
        assert_eq!(b[0..16], [b'R', b'F', b'S', b'N', 2, 0, 0, 0, 0xed, 0x5e, 0, 0, 0, 0, 0, 0]);
        let n = b.len();
        let tree_len = u64::from_le_bytes(b[n - 16..n - 8].try_into().unwrap());
        assert_eq!(tree_len, postcard::to_stdvec(&DataTree::new()).unwrap().len() as u64);
        assert_eq!(u32::from_le_bytes(b[n - 8..n - 4].try_into().unwrap()), crc32c::checksum(&b[..n - 8]));
    }
}
