//! Human-readable listings of a data directory's log and snapshots, for `referee coordinator
//! log dump` and `snapshot dump`. Read-only: unlike start-up, a dump never cuts a torn tail or
//! removes a leftover file, so it can be run on the directory of a stopped server as evidence.

use std::io::Write;
use std::path::{Path, PathBuf};

use openraft::{Entry, EntryPayload};

use crate::datadir::{read_identity, IDENTITY_NAME};
use crate::log::record::{self, Read, SegmentHeader, HEADER_LEN};
use crate::log::wal::{decode_entry, parse_segment_name, read_meta, META_NAME};
use crate::log::FileSystem;
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

/// Resolves a data directory or a log directory to the log directory, printing the identity.
fn log_dir_of(fs: &dyn FileSystem, path: &Path, out: &mut dyn Write) -> Result<PathBuf, DumpError> {
    let names = fs.list(path).map_err(|e| DumpError::NotRecognised {
        path: path.to_path_buf(),
        what: format!("not a readable directory ({e}); give a coordinator data directory (data_dir)"),
    })?;
    if names.iter().any(|n| n == IDENTITY_NAME) {
        let id = read_identity(fs, &path.join(IDENTITY_NAME)).map_err(|e| DumpError::Damaged(e.to_string()))?;
        writeln!(
            out,
            "data directory {}: cluster {} server {} (format {})",
            path.display(),
            id.cluster_id,
            id.server_id,
            id.version
        )?;
        return Ok(path.join("log"));
    }
    if names.iter().any(|n| n == META_NAME || parse_segment_name(n).is_some()) {
        return Ok(path.to_path_buf());
    }
    Err(DumpError::NotRecognised {
        path: path.to_path_buf(),
        what: "neither a coordinator data directory (no identity file) nor its log directory (no raft-meta, no \
               log-* segments); give the data_dir of a coordinator's configuration"
            .into(),
    })
}

/// Lists every record of the log in `path` (a data directory or its `log/`): segment, offset,
/// index, term, transaction kind, path; then a summary. Damage other than a torn tail is
/// listed and returned as [`DumpError::Damaged`].
pub fn dump_log(fs: &dyn FileSystem, path: &Path, out: &mut dyn Write) -> Result<LogSummary, DumpError> {
    let dir = log_dir_of(fs, path, out)?;
    let names = fs.list(&dir).map_err(io_err(&dir))?;
    let mut damage: Vec<String> = Vec::new();
    if names.iter().any(|n| n == META_NAME) {
        match read_meta(fs, &dir.join(META_NAME), None) {
            Ok((cluster, meta)) => writeln!(
                out,
                "{META_NAME}: cluster {cluster}, vote {}, committed {}, purged up to {}",
                meta.vote.map_or("none".into(), |v| v.to_string()),
                meta.committed.map_or("none".into(), |l| l.to_string()),
                meta.last_purged.map_or("none".into(), |l| l.to_string()),
            )?,
            Err(e) => {
                writeln!(out, "{META_NAME}: DAMAGED: {e}")?;
                damage.push(e.to_string());
            }
        }
    } else {
        writeln!(out, "{META_NAME}: absent (no vote saved yet)")?;
    }
    let mut firsts: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    firsts.sort_unstable();
    let mut summary = LogSummary { segments: firsts.len(), ..LogSummary::default() };
    for (i, &first) in firsts.iter().enumerate() {
        let last = i + 1 == firsts.len();
        let name = format!("log-{first:020}");
        let file = dir.join(&name);
        let buf = fs.read(&file).map_err(io_err(&file))?;
        let header = match SegmentHeader::decode(&buf) {
            Ok(h) => h,
            Err(e) => {
                writeln!(out, "segment {name}: DAMAGED at offset 0: {e}")?;
                damage.push(format!("{} at offset 0: {e}", file.display()));
                continue;
            }
        };
        writeln!(
            out,
            "segment {name}: cluster {}, format {}, first entry {}",
            header.cluster_id, header.version, header.first_index
        )?;
        writeln!(out, "  {:>10}  {:>10}  {:>6}  {:<16} path", "offset", "index", "term", "kind")?;
        let mut at = HEADER_LEN;
        // The entry the next record holds, and the last term read: what a record after a bad
        // one would carry (see `could_prove_damage`).
        let (mut next, mut term) = (header.first_index, 0);
        loop {
            let reason = match record::read_record(&buf, at) {
                Read::Record { payload, next: after } => {
                    match decode_entry(header.version, payload) {
                        Ok(entry) => {
                            (next, term) = (entry.log_id.index + 1, entry.log_id.leader_id.term);
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
                            let idx = entry.log_id.index;
                            summary.last_record = Some((file.clone(), at as u64, idx));
                            summary.range = Some(summary.range.map_or((idx, idx), |(lo, _)| (lo, idx)));
                        }
                        Err(e) => {
                            let why = format!("an intact record that is not a log entry: {e}");
                            writeln!(out, "  {at:>10}  DAMAGED: {why}")?;
                            damage.push(format!("{} at offset {at}: {why}", file.display()));
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

/// Lists a snapshot file (every znode and session), or every snapshot of a directory (a data
/// directory or its `snapshots/`) in one line each. A damaged file is reported as
/// [`DumpError::Damaged`].
pub fn dump_snapshots(fs: &dyn FileSystem, path: &Path, out: &mut dyn Write) -> Result<(), DumpError> {
    if let Ok(names) = fs.list(path) {
        let (dir, names) = if names.iter().any(|n| n == IDENTITY_NAME) {
            let dir = path.join("snapshots");
            let names = fs.list(&dir).map_err(io_err(&dir))?;
            (dir, names)
        } else {
            (path.to_path_buf(), names)
        };
        let mut found: Vec<(u64, String)> =
            names.into_iter().filter_map(|n| parse_snapshot_name(&n).map(|i| (i, n))).collect();
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
            match read_one(&file, &bytes) {
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
    let bytes = fs.read(path).map_err(io_err(path))?;
    let (line, tree) = read_one(path, &bytes).map_err(DumpError::Damaged)?;
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

fn read_one(path: &Path, bytes: &[u8]) -> Result<(String, DataTree), String> {
    let parts = snapshot::parse(path, bytes).map_err(|e| e.to_string())?;
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
