//! Human-readable listings of a data directory's log and snapshots, for `referee coordinator
//! log dump` and `snapshot dump`. Read-only: unlike start-up, a dump never cuts a torn tail or
//! removes a leftover file, so it can be run on the directory of a stopped server as evidence.

use std::io::Write;
use std::path::{Path, PathBuf};

use openraft::{Entry, EntryPayload};

use crate::datadir::{read_identity, DataDirError, Identity, DATA_DIR_VERSION, IDENTITY_NAME, SNAPSHOTS_NAME};
use crate::log::record::{self, Read, SegmentHeader, FORMAT_VERSION, HEADER_LEN};
use crate::log::wal::{
    check_saved_state, cut_short, decode_entry, ends_early, missing_newest_segment, parse_segment_name,
    read_saved_meta, NewestSegment, RaftMeta, META_NAME,
};
use crate::log::{FileSystem, LogError};
use crate::raft::TypeConfig;
use crate::snapshot::{self, parse_snapshot_name};
use crate::tree::DataTree;
use crate::txn::{Txn, TxnOp, WriteOp};

/// Why a dump could not list everything.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    /// Not a directory or file the dump knows.
    #[error("{}: {what}", path.display())]
    NotRecognised {
        /// The path given.
        path: PathBuf,
        /// What it is instead, and what to give.
        what: String,
    },
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// Damage was found (listed above the error in the output).
    #[error("{0}")]
    Damaged(String),
    /// Writing the listing failed (a closed pipe).
    #[error("cannot write the listing: {0}")]
    Output(#[from] std::io::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DumpError + '_ {
    move |source| DumpError::Io { path: path.to_path_buf(), source }
}

/// What a transaction does and the path it is about, for listings.
pub fn describe(entry: &Entry<TypeConfig>) -> Vec<(String, String)> {
    match &entry.payload {
        EntryPayload::Blank => vec![("blank".into(), String::new())],
        EntryPayload::Membership(m) => {
            let voters: Vec<String> = m.voter_ids().map(|v| v.to_string()).collect();
            vec![("membership".into(), format!("voters {}", voters.join(",")))]
        }
        EntryPayload::Normal(batch) => batch.iter().map(describe_txn).collect(),
    }
}

fn describe_txn(txn: &Txn) -> (String, String) {
    let session = format!("session 0x{:x}", txn.session.0);
    match &txn.op {
        TxnOp::CreateSession { timeout_ms, .. } => ("createSession".into(), format!("timeout {timeout_ms} ms")),
        TxnOp::CloseSession { expired: false } => ("closeSession".into(), session),
        TxnOp::CloseSession { expired: true } => ("expireSession".into(), session),
        TxnOp::MoveSession { to_server } => ("moveSession".into(), format!("{session} to server {to_server}")),
        TxnOp::ClaimSession { server } => ("moveSession".into(), format!("{session} to server {server}, its owner")),
        TxnOp::EnsembleConfig { members } => {
            let ids: Vec<String> = members.iter().map(|m| m.id.to_string()).collect();
            ("ensembleConfig".into(), format!("members {}", ids.join(",")))
        }
        TxnOp::Write(op) | TxnOp::WriteVia { op, .. } | TxnOp::ClientWrite { op, .. } => describe_write(op),
        TxnOp::Multi(ops) | TxnOp::MultiVia { ops, .. } | TxnOp::ClientMulti { ops, .. } => {
            let paths: Vec<String> = ops.iter().map(|op| describe_write(op).1).collect();
            (format!("multi({})", ops.len()), paths.join(" "))
        }
    }
}

fn describe_write(op: &WriteOp) -> (String, String) {
    let (kind, path) = match op {
        WriteOp::Create { path, .. } => ("create", path),
        WriteOp::Delete { path, .. } => ("delete", path),
        WriteOp::SetData { path, .. } => ("setData", path),
        WriteOp::SetAcl { path, .. } => ("setACL", path),
        WriteOp::DeleteContainer { path } => ("deleteContainer", path),
        WriteOp::Check { path, .. } => ("check", path),
    };
    (kind.into(), path.clone())
}

/// What a log dump found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogSummary {
    /// Segment files.
    pub segments: usize,
    /// Entries read.
    pub entries: u64,
    /// First and last index read.
    pub range: Option<(u64, u64)>,
    /// A torn tail at the end of the last segment: file and offset.
    pub torn: Option<(String, u64)>,
    /// The last intact record: file, offset, index.
    pub last_record: Option<(PathBuf, u64, u64)>,
    /// Where the records of the last segment end: file, offset.
    pub records_end: Option<(PathBuf, u64)>,
}

/// Resolves a data directory or a log directory to the log directory, printing the identity;
/// with the cluster the identity names, when given a data directory.
fn log_dir_of(fs: &dyn FileSystem, path: &Path, out: &mut dyn Write) -> Result<(PathBuf, Option<u64>), DumpError> {
    let names = fs.list(path).map_err(|e| DumpError::NotRecognised {
        path: path.to_path_buf(),
        what: format!("not a readable directory ({e}); give a coordinator data directory (data_dir)"),
    })?;
    if names.iter().any(|n| n == IDENTITY_NAME) {
        let id = identity_of(fs, path)?;
        writeln!(
            out,
            "data directory {}: cluster {} server {} (format {})",
            path.display(),
            id.cluster_id,
            id.server_id,
            id.version
        )?;
        return Ok((path.join("log"), Some(id.cluster_id)));
    }
    if names.iter().any(|n| n == META_NAME || parse_segment_name(n).is_some()) {
        return Ok((path.to_path_buf(), None));
    }
    Err(DumpError::NotRecognised {
        path: path.to_path_buf(),
        what: "neither a coordinator data directory (no identity file) nor its log directory (no raft-meta, no \
               log-* segments); give the data_dir of a coordinator's configuration"
            .into(),
    })
}

/// The identity of the data directory `dir`; one of a newer layout, which start-up refuses,
/// is reported as [`DumpError::Damaged`] before anything in it is read.
fn identity_of(fs: &dyn FileSystem, dir: &Path) -> Result<Identity, DumpError> {
    let path = dir.join(IDENTITY_NAME);
    let id = read_identity(fs, &path).map_err(|e| DumpError::Damaged(e.to_string()))?;
    if id.version > DATA_DIR_VERSION {
        let e = DataDirError::NewerVersion { path, found: id.version, supported: DATA_DIR_VERSION };
        return Err(DumpError::Damaged(e.to_string()));
    }
    Ok(id)
}

/// The newest snapshot file in `dir` and its last entry, by the files' names, as start-up
/// reads them for its saved-state check.
fn newest_snapshot_file(fs: &dyn FileSystem, dir: &Path) -> Option<(PathBuf, u64)> {
    let names = fs.list(dir).ok()?;
    let (index, name) = names.into_iter().filter_map(|n| parse_snapshot_name(&n).map(|i| (i, n))).max()?;
    Some((dir.join(name), index))
}

/// Lists every record of the log in `path` (a data directory or its `log/`): segment, offset,
/// index, term, transaction kind, path; then a summary. Damage other than a torn tail is
/// listed and returned as [`DumpError::Damaged`], and so is everything else start-up refuses
/// ([`crate::log::wal::Wal::open`], and on a data directory the saved-state check of
/// [`crate::log::wal::check_saved_state`]): a segment or `raft-meta` of another cluster than
/// the data directory's, a segment whose header does not match its name or is of a newer
/// format, a segment missing between two others, after the purge point or at the log's end, a
/// segment file shorter than its header says it was preallocated to, an entry out of sequence,
/// entries or snapshots without the saved vote, a data directory of a newer layout. Segments that hold only purged entries (left by a
/// purge a stop interrupted) are listed as what start-up removes, not as damage.
pub fn dump_log(fs: &dyn FileSystem, path: &Path, out: &mut dyn Write) -> Result<LogSummary, DumpError> {
    let (dir, identity_cluster) = log_dir_of(fs, path, out)?;
    let names = fs.list(&dir).map_err(io_err(&dir))?;
    let mut damage: Vec<String> = Vec::new();
    // The cluster the log must belong to: the identity's, else the saved state's, else that
    // of its first segment.
    let mut cluster = identity_cluster;
    let meta_path = dir.join(META_NAME);
    // The saved state; `None` when it is damaged (which is listed), and so unknown.
    let mut newest_segment = NewestSegment::Unrecorded;
    let meta = if names.iter().any(|n| n == META_NAME) {
        match read_saved_meta(fs, &meta_path, identity_cluster) {
            Ok(saved) => {
                let (found, meta) = (saved.cluster_id, saved.meta);
                newest_segment = saved.newest_segment;
                writeln!(
                    out,
                    "{META_NAME}: cluster {found}, vote {}, committed {}, purged up to {}",
                    meta.vote.map_or("none".into(), |v| v.to_string()),
                    meta.committed.map_or("none".into(), |l| l.to_string()),
                    meta.last_purged.map_or("none".into(), |l| l.to_string()),
                )?;
                match cluster {
                    Some(expected) if expected != found => {
                        let e = LogError::ForeignCluster { path: meta_path.clone(), found, expected };
                        damaged(out, &mut damage, e.to_string())?;
                    }
                    _ => cluster = Some(found),
                }
                Some(meta)
            }
            Err(e) => {
                writeln!(out, "{META_NAME}: DAMAGED: {e}")?;
                damage.push(e.to_string());
                None
            }
        }
    } else {
        writeln!(out, "{META_NAME}: absent (no vote saved yet)")?;
        Some(RaftMeta::default())
    };
    let last_purged = meta.as_ref().and_then(|m| m.last_purged);
    let purged_next = last_purged.map_or(0, |l| l.index + 1);
    let mut firsts: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    firsts.sort_unstable();
    // As start-up does: a segment followed by one that starts at or before the purge point
    // holds only purged entries.
    let mut keep_from = 0;
    for (i, w) in firsts.windows(2).enumerate() {
        if last_purged.is_some() && w[1] <= purged_next {
            keep_from = i + 1;
        }
    }
    for &first in &firsts[..keep_from] {
        writeln!(
            out,
            "segment log-{first:020}: holds only entries purged up to {} (left by a purge a stop interrupted; \
             start-up removes it)",
            purged_next.saturating_sub(1)
        )?;
    }
    let kept = &firsts[keep_from..];
    let mut summary = LogSummary { segments: firsts.len(), ..LogSummary::default() };
    // With nothing purged, a data directory's log begins at entry 0, its first membership (a
    // bare log directory may be a copy of its newest segments only).
    if let (Some(None), Some(&first), Some(_)) = (meta.as_ref().map(|m| m.last_purged), kept.first(), identity_cluster)
    {
        if first > 0 {
            let file = dir.join(format!("log-{first:020}"));
            let why = format!(
                "{} at offset 0: nothing is purged, so the log begins at entry 0, but this first segment starts at \
                 {first}: the segment holding entry 0 is missing",
                file.display()
            );
            damaged(out, &mut damage, why)?;
        }
    }
    // The newest segment the saved state says was started is there (or one after it).
    let no_meta = RaftMeta::default();
    if let Some(newest) =
        missing_newest_segment(newest_segment, meta.as_ref().unwrap_or(&no_meta), kept.last().copied())
    {
        let file = dir.join(format!("log-{newest:020}"));
        let why = format!(
            "{} at offset 0: {META_NAME} records that this segment, from entry {newest} on, was started, but it is \
             missing",
            file.display()
        );
        damaged(out, &mut damage, why)?;
    }
    if let (Some(purged), Some(&first)) = (last_purged, kept.first()) {
        if first > purged.index + 1 {
            let file = dir.join(format!("log-{first:020}"));
            let why = format!(
                "{} at offset 0: the log is purged up to {} but this first segment starts at {first}: a segment is \
                 missing",
                file.display(),
                purged.index
            );
            damaged(out, &mut damage, why)?;
        }
    }
    // The entry the next segment must start with, when the one before was read whole, and
    // where that one's records end.
    let mut expected: Option<u64> = None;
    let mut before_end: Option<(PathBuf, usize)> = None;
    for (i, &first) in kept.iter().enumerate() {
        let last = i + 1 == kept.len();
        let name = format!("log-{first:020}");
        let file = dir.join(&name);
        let buf = fs.read(&file).map_err(io_err(&file))?;
        let header = match SegmentHeader::decode(&buf) {
            Ok(h) => h,
            Err(e) => {
                writeln!(out, "segment {name}: DAMAGED at offset 0: {e}")?;
                damage.push(format!("{} at offset 0: {e}", file.display()));
                expected = None;
                before_end = None;
                continue;
            }
        };
        writeln!(
            out,
            "segment {name}: cluster {}, format {}, first entry {}",
            header.cluster_id, header.version, header.first_index
        )?;
        if header.version > FORMAT_VERSION {
            let e = LogError::NewerFormat { path: file.clone(), found: header.version, supported: FORMAT_VERSION };
            damaged(out, &mut damage, e.to_string())?;
            expected = None;
            before_end = None;
            continue;
        }
        if let Some(why) = cut_short(buf.len() as u64, header.preallocated) {
            damaged(out, &mut damage, format!("{} at offset {}: {why}", file.display(), buf.len()))?;
        }
        match cluster {
            Some(c) if c != header.cluster_id => {
                let e = LogError::ForeignCluster { path: file.clone(), found: header.cluster_id, expected: c };
                damaged(out, &mut damage, e.to_string())?;
            }
            Some(_) => {}
            None => cluster = Some(header.cluster_id),
        }
        if header.first_index != first {
            let why = format!(
                "{} at offset 16: the header says the first entry is {}, the name {first}",
                file.display(),
                header.first_index
            );
            damaged(out, &mut damage, why)?;
        }
        match (expected, &before_end) {
            (Some(e), Some((before, end))) if e < first => {
                let why = format!("{} at offset {end}: {}", before.display(), ends_early(e, &file, first));
                damaged(out, &mut damage, why)?
            }
            (Some(e), _) if e > first => damaged(
                out,
                &mut damage,
                format!(
                    "{} at offset 0: this segment starts at entry {first} but the one before holds entries up to {}",
                    file.display(),
                    e - 1
                ),
            )?,
            _ => {}
        }
        writeln!(out, "  {:>10}  {:>10}  {:>6}  {:<16} path", "offset", "index", "term", "kind")?;
        let mut at = HEADER_LEN;
        // The entry the next record holds (counted from the name, as start-up counts), and
        // the last term read: what a record after a bad one would carry (see
        // `could_prove_damage`).
        let (mut next, mut term) = (first, 0);
        loop {
            let reason = match record::read_record(&buf, at) {
                Read::Record { payload, next: after } => {
                    match decode_entry(header.version, payload) {
                        Ok(entry) => {
                            let idx = entry.log_id.index;
                            // Start-up reads the records of purged entries without decoding them.
                            if idx != next && next >= purged_next {
                                let why = format!(
                                    "{} at offset {at}: entry {idx} where entry {next} belongs",
                                    file.display()
                                );
                                damaged(out, &mut damage, why)?;
                            }
                            (next, term) = (idx + 1, entry.log_id.leader_id.term);
                            // A batch of several transactions lists each on a line of its own;
                            // the lines after the first leave the offset blank.
                            for (i, (kind, what)) in describe(&entry).into_iter().enumerate() {
                                let offset = if i == 0 { at.to_string() } else { String::new() };
                                writeln!(
                                    out,
                                    "  {offset:>10}  {:>10}  {:>6}  {kind:<16} {what}",
                                    entry.log_id.index, entry.log_id.leader_id.term
                                )?;
                            }
                            summary.entries += 1;
                            summary.last_record = Some((file.clone(), at as u64, idx));
                            summary.range = Some(summary.range.map_or((idx, idx), |(lo, _)| (lo, idx)));
                        }
                        Err(e) => {
                            let why = format!("an intact record that is not a log entry: {e}");
                            writeln!(out, "  {at:>10}  DAMAGED: {why}")?;
                            damage.push(format!("{} at offset {at}: {why}", file.display()));
                            next += 1;
                        }
                    }
                    at = after;
                    continue;
                }
                Read::End if record::all_zero(&buf[at..]) => {
                    summary.records_end = Some((file.clone(), at as u64));
                    writeln!(out, "  end of records at offset {at}; zeros to {}", buf.len())?;
                    break;
                }
                Read::End => "non-zero bytes after the end of the records",
                Read::Bad(reason) => reason,
            };
            let proves = crate::log::wal::could_prove_damage(&buf, header.version, at, next, term);
            if last && !record::any_record_after(&buf, at, proves) {
                writeln!(out, "  torn tail at offset {at}: {reason} (start-up cuts it off: a write a crash interrupted, never acknowledged, or damage to the last write)")?;
                summary.torn = Some((name.clone(), at as u64));
            } else {
                writeln!(out, "  DAMAGED at offset {at}: {reason} (start-up refuses this log)")?;
                damage.push(format!("{} at offset {at}: {reason}", file.display()));
            }
            break;
        }
        expected = Some(next);
        before_end = Some((file, at));
    }
    // Checked on what a server starts on, a data directory: a bare log directory may be a copy
    // taken apart from its saved state.
    if let (Some(meta), Some(_)) = (&meta, identity_cluster) {
        let snapshot = newest_snapshot_file(fs, &path.join(SNAPSHOTS_NAME));
        if let Err(e) = check_saved_state(&dir, meta, summary.range.map(|(_, hi)| hi), snapshot) {
            damaged(out, &mut damage, e.to_string())?;
        }
    }
    writeln!(
        out,
        "summary: {} segment(s), {} entries{}{}",
        summary.segments,
        summary.entries,
        summary.range.map_or(String::new(), |(lo, hi)| format!(" ({lo}..={hi})")),
        summary.torn.as_ref().map_or(String::new(), |(f, o)| format!(", torn tail in {f} at offset {o}")),
    )?;
    if !damage.is_empty() {
        return Err(DumpError::Damaged(format!("the log is damaged: {}", damage.join("; "))));
    }
    Ok(summary)
}

/// Lists `why`, a reason start-up refuses the log, and adds it to `damage`.
fn damaged(out: &mut dyn Write, damage: &mut Vec<String>, why: String) -> Result<(), DumpError> {
    writeln!(out, "  DAMAGED: {why} (start-up refuses this log)")?;
    damage.push(why);
    Ok(())
}

/// Lists a snapshot file (every znode and session), or every snapshot of a directory (a data
/// directory or its `snapshots/`) in one line each. A data directory without a snapshot yet (the
/// normal state until `snapshot_every_txns` transactions) is said to be so, and is no error. A
/// damaged file is reported as [`DumpError::Damaged`]; a directory that is no coordinator's and
/// holds no snapshot as [`DumpError::NotRecognised`]. As at start-up, a snapshot of a cluster
/// other than its data directory's, and a data directory of a newer layout, are damage.
pub fn dump_snapshots(fs: &dyn FileSystem, path: &Path, out: &mut dyn Write) -> Result<(), DumpError> {
    let holds_identity = |dir: &Path| fs.list(dir).is_ok_and(|names| names.iter().any(|n| n == IDENTITY_NAME));
    if let Ok(names) = fs.list(path) {
        // A data directory is known by its identity file; its snapshots/ directory by the
        // identity beside it.
        let (dir, names, recognised) = if names.iter().any(|n| n == IDENTITY_NAME) {
            let dir = path.join(SNAPSHOTS_NAME);
            let names = match fs.list(&dir) {
                Ok(names) => names,
                // Start-up makes it; a directory without it holds no snapshot either.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(io_err(&dir)(e)),
            };
            (dir, names, true)
        } else {
            let beside_identity =
                path.file_name().is_some_and(|n| n == SNAPSHOTS_NAME) && path.parent().is_some_and(holds_identity);
            (path.to_path_buf(), names, beside_identity)
        };
        let data_dir = dir.parent().filter(|_| recognised);
        let cluster = data_dir.map(|d| identity_of(fs, d)).transpose()?.map(|id| id.cluster_id);
        let mut found: Vec<(u64, String)> =
            names.into_iter().filter_map(|n| parse_snapshot_name(&n).map(|i| (i, n))).collect();
        if found.is_empty() && recognised {
            // The normal state of a server until its first snapshot: not damage, not bad input.
            let default_every = crate::config::CoordinatorConfig::new(PathBuf::new()).snapshot_every_txns;
            writeln!(
                out,
                "{}: no snapshot yet: a server takes its first after snapshot_every_txns transactions \
                 ({default_every} unless its configuration says otherwise); until then its log holds every \
                 transaction (list it with `referee coordinator log dump DIR`)",
                path.display()
            )?;
            return Ok(());
        }
        if found.is_empty() {
            return Err(DumpError::NotRecognised {
                path: path.to_path_buf(),
                what: "holds no snapshot-* files; give a coordinator data directory, its snapshots/ directory or a \
                       snapshot file"
                    .into(),
            });
        }
        found.sort_unstable();
        let mut damage = Vec::new();
        for (_, name) in found {
            let file = dir.join(&name);
            let bytes = fs.read(&file).map_err(io_err(&file))?;
            match read_one(&file, &bytes, cluster) {
                Ok((parts_line, tree)) => writeln!(
                    out,
                    "{name}: {parts_line}, {} znodes, {} sessions",
                    tree.node_count(),
                    tree.sessions().count()
                )?,
                Err(e) => {
                    writeln!(out, "{name}: DAMAGED: {e}")?;
                    damage.push(e);
                }
            }
        }
        if !damage.is_empty() {
            return Err(DumpError::Damaged(damage.join("; ")));
        }
        return Ok(());
    }
    // A file in a data directory's snapshots/ belongs to that directory's cluster.
    let data_dir = path.parent().filter(|d| d.file_name().is_some_and(|n| n == SNAPSHOTS_NAME)).and_then(Path::parent);
    let data_dir = data_dir.filter(|d| holds_identity(d));
    let cluster = data_dir.map(|d| identity_of(fs, d)).transpose()?.map(|id| id.cluster_id);
    let bytes = fs.read(path).map_err(io_err(path))?;
    let (line, tree) = read_one(path, &bytes, cluster).map_err(DumpError::Damaged)?;
    writeln!(out, "{}: {line}", path.display())?;
    writeln!(out, "sessions:")?;
    for (id, s) in tree.sessions() {
        writeln!(out, "  0x{:x} timeout {} ms, {} ephemeral(s)", id.0, s.timeout_ms, s.ephemerals.len())?;
    }
    writeln!(out, "znodes:")?;
    let mut stack = vec!["/".to_string()];
    let mut count = 0usize;
    while let Some(p) = stack.pop() {
        let Some(node) = tree.node(&p) else { continue };
        let stat = node.stat();
        writeln!(
            out,
            "  {p}  data {} bytes, version {}, mzxid {}, owner 0x{:x}",
            stat.data_length, stat.version, stat.mzxid, stat.ephemeral_owner
        )?;
        count += 1;
        for child in node.children.iter().rev() {
            stack.push(if p == "/" { format!("/{child}") } else { format!("{p}/{child}") });
        }
    }
    writeln!(out, "summary: {count} znodes, {} sessions, last zxid {}", tree.sessions().count(), tree.last_zxid().0)?;
    Ok(())
}

/// Reads a snapshot file, of cluster `cluster` when its data directory is known.
fn read_one(path: &Path, bytes: &[u8], cluster: Option<u64>) -> Result<(String, DataTree), String> {
    let parts = snapshot::parse(path, bytes).map_err(|e| e.to_string())?;
    if let Some(expected) = cluster.filter(|&c| c != parts.cluster_id) {
        let e = snapshot::SnapshotError::ForeignCluster { path: path.to_path_buf(), found: parts.cluster_id, expected };
        return Err(e.to_string());
    }
    let tree =
        snapshot::decode_tree(parts.tree_bytes, parts.version).map_err(|e| format!("{}: {e}", path.display()))?;
    let line = format!(
        "cluster {}, format {}, last applied {}, {} bytes",
        parts.cluster_id,
        parts.version,
        parts.header.last_applied.map_or("none".into(), |l| l.to_string()),
        bytes.len()
    );
    Ok((line, tree))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

    use super::*;
    use crate::datadir::DataDir;
    use crate::log::wal::{Wal, WalOptions};
    use crate::log::FaultFs;
    use crate::proto::SessionId;

    const CLUSTER: u64 = 7;

    fn log_dir() -> PathBuf {
        PathBuf::from("/data/log")
    }

    fn segment(first: u64) -> PathBuf {
        log_dir().join(format!("log-{first:020}"))
    }

    fn entry(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId { leader_id: CommittedLeaderId::new(1, 1), index },
            payload: EntryPayload::Normal(vec![Txn {
                session: SessionId(0),
                auth: Vec::new(),
                time_ms: 0,
                op: TxnOp::Write(WriteOp::Delete { path: format!("/e{index}"), version: -1 }),
            }]),
        }
    }

    /// A data directory of cluster 7 holding entries 0..=40 in segments of a few entries each,
    /// a vote saved; the segments' first indexes.
    fn data_dir(fs: &FaultFs) -> Vec<u64> {
        drop(DataDir::open(fs, Path::new("/data"), Some(CLUSTER), 1, || CLUSTER).unwrap());
        let opts = WalOptions { segment_bytes: 256, ..WalOptions::new(log_dir(), CLUSTER) };
        let (mut wal, _) = Wal::open(Arc::new(fs.clone()), opts).unwrap();
        wal.save_meta(&RaftMeta { vote: Some(Vote::new_committed(1, 1)), ..RaftMeta::default() }).unwrap();
        for i in 0..=40 {
            wal.append(&[entry(i)]).unwrap();
            wal.sync().unwrap();
        }
        let mut firsts: Vec<u64> = fs.list(&log_dir()).unwrap().iter().filter_map(|n| parse_segment_name(n)).collect();
        firsts.sort_unstable();
        assert!(firsts.len() >= 4, "several segments: {firsts:?}");
        firsts
    }

    fn rewrite_header(fs: &FaultFs, first: u64, change: impl FnOnce(&mut SegmentHeader)) {
        fs.damage(&segment(first), |b| {
            let mut h = SegmentHeader::decode(b).unwrap();
            change(&mut h);
            b[..HEADER_LEN].copy_from_slice(&h.encode());
        })
        .unwrap();
    }

    /// What the dump says is damaged (it must say something), with its listing; start-up
    /// refuses the log too.
    fn damage(fs: &FaultFs) -> (String, String) {
        let mut out = Vec::new();
        let found = match dump_log(fs, Path::new("/data"), &mut out) {
            Err(DumpError::Damaged(why)) => (why, String::from_utf8(out).unwrap()),
            other => panic!("expected damage, got {other:?}:\n{}", String::from_utf8_lossy(&out)),
        };
        let opts = WalOptions { segment_bytes: 256, ..WalOptions::new(log_dir(), CLUSTER) };
        let opened = Wal::open(Arc::new(fs.clone()), opts).and_then(|(_, rec)| {
            let last = rec.entries.last().map(|e| e.log_id.index);
            check_saved_state(&log_dir(), &rec.meta, last, None)
        });
        assert!(opened.is_err(), "start-up takes what the dump calls damaged: {}", found.0);
        found
    }

    /// Every check start-up makes before it accepts a log, the dump makes too, and reports
    /// what fails as damage (exit 1) on a line of its own.
    #[test]
    fn the_dump_finds_what_start_up_refuses() {
        let clean = FaultFs::new();
        data_dir(&clean);
        let summary = dump_log(&clean, Path::new("/data"), &mut std::io::sink()).unwrap();
        assert_eq!(summary.range, Some((0, 40)));

        // A middle segment deleted.
        let fs = FaultFs::new();
        let firsts = data_dir(&fs);
        fs.remove(&segment(firsts[2])).unwrap();
        let (why, listing) = damage(&fs);
        assert!(why.contains("missing") && why.contains(&format!("log-{:020}", firsts[3])), "{why}");
        assert!(listing.contains("DAMAGED"), "{listing}");

        // A segment of another cluster copied in.
        let fs = FaultFs::new();
        let firsts = data_dir(&fs);
        rewrite_header(&fs, firsts[1], |h| h.cluster_id = 8);
        let (why, _) = damage(&fs);
        assert!(why.contains("cluster 8") && why.contains("(7)"), "{why}");

        // A header that does not match its name.
        let fs = FaultFs::new();
        let firsts = data_dir(&fs);
        rewrite_header(&fs, firsts[1], |h| h.first_index += 1);
        let (why, _) = damage(&fs);
        assert!(why.contains(&format!("the header says the first entry is {}", firsts[1] + 1)), "{why}");

        // A newer format.
        let fs = FaultFs::new();
        let firsts = data_dir(&fs);
        rewrite_header(&fs, firsts[1], |h| h.version = FORMAT_VERSION + 1);
        let (why, _) = damage(&fs);
        assert!(why.contains(&format!("format version {}", FORMAT_VERSION + 1)), "{why}");

        // An intact record of an entry out of sequence.
        let fs = FaultFs::new();
        let firsts = data_dir(&fs);
        let last = segment(*firsts.last().unwrap());
        fs.damage(&last, |b| {
            let mut at = HEADER_LEN;
            while let Read::Record { next, .. } = record::read_record(b, at) {
                at = next;
            }
            let mut rec = Vec::new();
            let payload = crate::log::wal::encode_entry(&entry(99)).unwrap();
            crate::log::wal::encode_entry_record(0, &payload, &mut rec);
            b.resize(b.len().max(at + rec.len()), 0);
            b[at..at + rec.len()].copy_from_slice(&rec);
        })
        .unwrap();
        let (why, _) = damage(&fs);
        assert!(why.contains("entry 99 where entry 41 belongs"), "{why}");

        // Purged past the first segment there is: the one in between is gone.
        let fs = FaultFs::new();
        let firsts = data_dir(&fs);
        let opts = WalOptions { segment_bytes: 256, ..WalOptions::new(log_dir(), CLUSTER) };
        let (mut wal, _) = Wal::open(Arc::new(fs.clone()), opts).unwrap();
        let purged = LogId { leader_id: CommittedLeaderId::new(1, 1), index: 1 };
        wal.save_meta(&RaftMeta { vote: Some(Vote::new_committed(1, 1)), last_purged: Some(purged), committed: None })
            .unwrap();
        drop(wal);
        fs.remove(&segment(firsts[0])).unwrap();
        let (why, _) = damage(&fs);
        assert!(why.contains("purged up to 1") && why.contains("missing"), "{why}");

        // The first segment deleted, nothing purged.
        let fs = FaultFs::new();
        let firsts = data_dir(&fs);
        fs.remove(&segment(firsts[0])).unwrap();
        let (why, _) = damage(&fs);
        assert!(why.contains("nothing is purged") && why.contains(&format!("log-{:020}", firsts[1])), "{why}");

        // The newest segment deleted.
        let fs = FaultFs::new();
        let firsts = data_dir(&fs);
        let newest = *firsts.last().unwrap();
        fs.remove(&segment(newest)).unwrap();
        let (why, _) = damage(&fs);
        assert!(why.contains("missing") && why.contains(&format!("log-{newest:020}")), "{why}");

        // The last segment cut at a record boundary, short of its preallocated size.
        let fs = FaultFs::new();
        let firsts = data_dir(&fs);
        let newest = segment(*firsts.last().unwrap());
        let mut cut = 0;
        fs.damage(&newest, |b| {
            let mut at = HEADER_LEN;
            while let Read::Record { next, .. } = record::read_record(b, at) {
                (cut, at) = (at, next);
            }
            b.truncate(cut);
        })
        .unwrap();
        let (why, _) = damage(&fs);
        assert!(why.contains(&format!("log-{:020} at offset {cut}", firsts.last().unwrap())), "{why}");
        assert!(why.contains("preallocated"), "{why}");

        // The last record of a middle segment zeroed: blamed on that segment, at its records' end.
        let fs = FaultFs::new();
        let firsts = data_dir(&fs);
        let mut end = 0;
        fs.damage(&segment(firsts[1]), |b| {
            let (mut last, mut at) = (HEADER_LEN, HEADER_LEN);
            while let Read::Record { next, .. } = record::read_record(b, at) {
                (last, at) = (at, next);
            }
            b[last..at].fill(0);
            end = last;
        })
        .unwrap();
        let (why, _) = damage(&fs);
        assert!(why.contains(&format!("log-{:020} at offset {end}", firsts[1])), "{why}");

        // The saved vote deleted.
        let fs = FaultFs::new();
        data_dir(&fs);
        fs.remove(&log_dir().join(META_NAME)).unwrap();
        let (why, _) = damage(&fs);
        assert!(why.contains("no saved Raft state"), "{why}");
    }
}
