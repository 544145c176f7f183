//! The shared edit journal in the coordinator, and the epoch claim that guards it.
//!
//! Like HDFS with a shared journal: every namespace edit is written to the coordinator before
//! it is applied or acknowledged, the standby replays the same journal, and a master that has
//! been replaced cannot add to it.
//!
//! # Layout in the coordinator
//!
//! ```text
//! <epoch_path>                 persistent, {"token": T, "node_id": ...}; never deleted
//! <path>/                      persistent
//! <path>/edit-0000000000       persistent sequential, one Edit (JSON) each
//! <path>/edit-0000000001       ...
//! ```
//!
//! Sequence numbers are assigned by the coordinator at commit, so journal order is commit
//! order. Nothing is ever deleted, and the epoch's version only grows.
//!
//! # Reading
//!
//! The journal is read by sequence number, never listed: a listing of every child has to fit
//! in one reply, and a journal that grows for ever outgrows any reply. The parent's child
//! version (`cversion`, which counts every create and delete of a child, and from whose creates
//! sequential names are drawn) bounds the numbers in use, so a reader fetches the edits from
//! where it stands up to that bound in multi-reads sized to the reply limit: a batch the
//! coordinator refuses as too large is halved, down to a single `getData`. Every edit fits in
//! one reply on its own, as [`JournalConfig::max_edit_bytes`] keeps it well below the packet
//! limit, and an append over it is refused before it is sent ([`JournalError::TooLarge`]).
//!
//! A number below the last edit read that holds no edit was taken by some other znode created
//! under the journal. If such a znode is still there, the read fails and names it
//! ([`JournalError::Foreign`]): the journal is the masters' alone, and an operator must delete
//! it. A number whose znode is gone is skipped.
//!
//! # Protocol
//!
//! ```text
//!  catch up   read <path> after what we applied, to its end
//!  claim      read epoch -> (t, v); t > ours: refuse (Superseded)
//!             multi( setData(epoch, ours, v) | create(epoch, ours) if absent,
//!                    create(<path>/edit-, {op: claim, token: ours}) )      -> version v'
//!  tail       read <path> after the catch-up, on the same session
//!  serve      every append: multi( check(epoch, v'), create(<path>/edit-, edit) )
//!               BadVersion   -> Deposed: another master claimed since v'
//!               ConnectionLoss / timeout -> Indeterminate: read back before answering
//! ```
//!
//! The claim marker is written in the same multi as the epoch's `setData`, so the journal
//! itself records where each claimant's era starts. That is what lets an independent reader
//! ([`crate::verdict`]) tell, for every entry, which token was in force when it was appended.
//! Reading the tail after the claim on the same session is enough to see every edit of the
//! previous claimant: any append of theirs committed before our claim is visible to it, and
//! any append after it fails its `check`. The bulk of the journal is read *before* the claim,
//! so a claimant that cannot read the journal fails without having deposed anyone; what is
//! left after the claim is the few edits appended meanwhile.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use referee_fencing::FencingToken;
use serde::{Deserialize, Serialize};
use zookeeper_client as zk;

use crate::namespace::FsOp;

/// Name prefix of the journal's sequential znodes.
pub const EDIT_PREFIX: &str = "edit-";

/// At most this many edits are read in one multi-read (fewer when their replies are large).
const READ_BATCH: u64 = 256;

/// A multi-read request stays within this many bytes: the coordinator drops the connection
/// of a request over its packet limit, which no coordinator that can hold an edit sets this
/// low.
const READ_REQUEST_BYTES: usize = 2048;

/// Bytes of one getData in a multi-read request besides its path: op header, path length
/// and watch flag.
const READ_OP_BYTES: usize = 16;

/// A claim that races with other claimants is retried at most this many times.
const CLAIM_ATTEMPTS: u32 = 8;

static PERSISTENT: zk::CreateOptions<'static> = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
static SEQUENTIAL: zk::CreateOptions<'static> = zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all());

fn default_session_timeout_ms() -> u64 {
    10_000
}

fn default_op_timeout_ms() -> u64 {
    2_000
}

fn default_tail_interval_ms() -> u64 {
    1_000
}

fn default_max_edit_bytes() -> usize {
    512 * 1024
}

/// The largest `max_edit_bytes` accepted: below the coordinator's default packet limit
/// (1,048,575 bytes), with room for the request around the edit.
pub const MAX_EDIT_BYTES_CEILING: usize = 1_000_000;

/// `journal:` in the demo master's configuration.
///
/// ```yaml
/// journal:
///   connect: 127.0.0.1:2181     # the coordinator
///   path: /demo/journal         # parent of the edit znodes
///   epoch_path: /demo/epoch     # the epoch znode (outside `path`)
///   session_timeout_ms: 10000   # default 10000
///   op_timeout_ms: 2000         # deadline of one coordinator call (default 2000)
///   tail_interval_ms: 1000      # the standby re-reads at least this often (default 1000)
///   max_edit_bytes: 524288      # largest edit, encoded (default 512 KiB)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalConfig {
    /// Coordinator connect string, `host:port[,host:port...]`.
    pub connect: String,
    /// The journal znode; edits are its sequential children.
    pub path: String,
    /// The epoch znode holding the token of the master allowed to write.
    pub epoch_path: String,
    /// Session timeout asked of the coordinator.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Deadline of one coordinator call; a call that misses it has an unknown outcome.
    #[serde(default = "default_op_timeout_ms")]
    pub op_timeout_ms: u64,
    /// Longest time between two reads of the journal by the tailer, watch or no watch.
    #[serde(default = "default_tail_interval_ms")]
    pub tail_interval_ms: u64,
    /// The largest edit accepted, in bytes of its encoded form. It must stay below the
    /// coordinator's `max_packet_bytes` with room for the request around it: the coordinator
    /// drops the connection of a request over its limit, and every edit must also fit in one
    /// read reply. Larger edits are refused with `413` before anything is sent.
    #[serde(default = "default_max_edit_bytes")]
    pub max_edit_bytes: usize,
}

impl JournalConfig {
    /// A configuration with default timings.
    pub fn new(connect: impl Into<String>, path: impl Into<String>, epoch_path: impl Into<String>) -> Self {
        JournalConfig {
            connect: connect.into(),
            path: path.into(),
            epoch_path: epoch_path.into(),
            session_timeout_ms: default_session_timeout_ms(),
            op_timeout_ms: default_op_timeout_ms(),
            tail_interval_ms: default_tail_interval_ms(),
            max_edit_bytes: default_max_edit_bytes(),
        }
    }

    /// Checks every field; the error names the bad one (without the `journal.` prefix).
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.connect.trim().is_empty() {
            bail!("connect: must name at least one host:port");
        }
        check_znode_path("path", &self.path)?;
        check_znode_path("epoch_path", &self.epoch_path)?;
        if self.epoch_path == self.path || self.epoch_path.starts_with(&format!("{}/", self.path)) {
            bail!("epoch_path: `{}` must not be the journal or inside it (`{}`)", self.epoch_path, self.path);
        }
        if self.path.starts_with(&format!("{}/", self.epoch_path)) {
            bail!("path: `{}` must not be inside the epoch znode `{}`", self.path, self.epoch_path);
        }
        if self.op_timeout_ms == 0 {
            bail!("op_timeout_ms: must be greater than 0");
        }
        if self.tail_interval_ms == 0 {
            bail!("tail_interval_ms: must be greater than 0");
        }
        if !(1024..=MAX_EDIT_BYTES_CEILING).contains(&self.max_edit_bytes) {
            bail!(
                "max_edit_bytes: {} must be between 1024 and {MAX_EDIT_BYTES_CEILING}, and below the coordinator's \
                 max_packet_bytes with room for the request",
                self.max_edit_bytes
            );
        }
        if self.session_timeout_ms <= self.op_timeout_ms {
            bail!(
                "session_timeout_ms: {} must be greater than op_timeout_ms ({}), or a call could outlive the session",
                self.session_timeout_ms,
                self.op_timeout_ms
            );
        }
        Ok(())
    }

    fn op_timeout(&self) -> Duration {
        Duration::from_millis(self.op_timeout_ms)
    }
}

fn check_znode_path(field: &str, path: &str) -> anyhow::Result<()> {
    if !path.starts_with('/') || path == "/" || path.ends_with('/') || path.contains("//") {
        bail!("{field}: `{path}` must be an absolute znode path below / without a trailing /");
    }
    Ok(())
}

/// Data of the epoch znode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// The token of the master allowed to append.
    pub token: FencingToken,
    /// That master's node id, for humans.
    pub node_id: String,
}

/// One journal entry's data: who wrote it, under which token, and what it does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Edit {
    /// Unique per client write; a retried write carries the same id.
    pub write_id: String,
    /// The token the writer had claimed the epoch with.
    pub token: FencingToken,
    /// The change (its `op` tag and fields sit beside `write_id` and `token`).
    #[serde(flatten)]
    pub op: EditOp,
}

/// What an [`Edit`] does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum EditOp {
    /// The start of an era: written with the epoch's `setData`, in the same multi.
    Claim {
        /// The claimant.
        node_id: String,
    },
    /// `POST /write`: set a key of the key-value store.
    Put {
        /// The key.
        key: String,
        /// Any JSON value.
        value: serde_json::Value,
    },
    /// A namespace mutation.
    #[serde(untagged)]
    Fs(FsOp),
}

/// An edit read from the journal with its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct JournalEntry {
    /// The znode's sequence number: its position in commit order.
    pub seq: u64,
    /// The edit.
    pub edit: Edit,
}

/// A successful claim: appends are guarded by `check(epoch, version)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The token claimed with.
    pub token: FencingToken,
    /// The epoch znode's version right after the claim.
    pub version: i32,
    /// Sequence number of the claim marker that starts this era.
    pub marker_seq: u64,
}

/// Why a journal operation did not succeed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// The epoch holds a higher token than the one we claim with.
    #[error("the epoch is held by token {held} ({node}), higher than ours ({ours})")]
    Superseded {
        /// Our token.
        ours: FencingToken,
        /// The token in the epoch znode.
        held: FencingToken,
        /// Its node id.
        node: String,
    },
    /// The epoch changed since our claim: another master has claimed.
    #[error(
        "the epoch znode changed since our claim with token {token} at version {version}: another master has claimed"
    )]
    Deposed {
        /// The token we had claimed with.
        token: FencingToken,
        /// The epoch version our claim left.
        version: i32,
    },
    /// A write may or may not have been applied: no answer in time, or the connection or
    /// session was lost while waiting.
    #[error("{op}: outcome unknown ({detail})")]
    Indeterminate {
        /// What was attempted.
        op: &'static str,
        /// What happened.
        detail: String,
    },
    /// The coordinator refused the operation.
    #[error("{op}: {source}")]
    Coordinator {
        /// What was attempted.
        op: &'static str,
        /// The coordinator's answer.
        source: zk::Error,
    },
    /// A journal or epoch znode holds data that is not ours.
    #[error("{path} is unreadable: {detail}")]
    Corrupt {
        /// The znode.
        path: String,
        /// Why.
        detail: String,
    },
    /// Other claimants kept changing the epoch between our read and our write.
    #[error("the claim lost {0} races in a row with other claimants")]
    Contended(u32),
    /// An edit over the configured size: refused before anything was sent.
    #[error("the edit is {bytes} bytes encoded, over the journal's limit of {limit} bytes (journal.max_edit_bytes)")]
    TooLarge {
        /// Its encoded size.
        bytes: usize,
        /// `max_edit_bytes`.
        limit: usize,
    },
    /// Znodes other than edits live under the journal, where only the masters' edits may.
    #[error(
        "{} under the journal {journal} {} not a journal edit (edit-NNNNNNNNNN): only the masters' edits may \
         live there; delete {} to let the masters read the journal again",
        znodes.join(", "),
        if znodes.len() == 1 { "is" } else { "are" },
        if znodes.len() == 1 { "it" } else { "them" }
    )]
    Foreign {
        /// The journal znode.
        journal: String,
        /// The foreign znodes, in full.
        znodes: Vec<String>,
    },
}

impl JournalError {
    /// Whether the operation's outcome is unknown (it may have been applied).
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, JournalError::Indeterminate { .. })
    }
}

/// Maps a library error: connection and session losses leave a write's outcome unknown.
fn zk_failure(op: &'static str, e: zk::Error) -> JournalError {
    match e {
        zk::Error::ConnectionLoss | zk::Error::SessionExpired | zk::Error::SessionMoved | zk::Error::Timeout => {
            JournalError::Indeterminate { op, detail: e.to_string() }
        }
        source => JournalError::Coordinator { op, source },
    }
}

/// Awaits a coordinator call with a deadline; missing it is [`JournalError::Indeterminate`].
async fn timed<T, E>(op: &'static str, limit: Duration, call: impl Future<Output = Result<T, E>>) -> Result<T, E>
where
    E: From<JournalError>,
{
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(JournalError::Indeterminate { op, detail: format!("no answer within {limit:?}") }.into()),
    }
}

/// Result of a multi, before it is interpreted.
enum MultiFailure {
    Journal(JournalError),
    Operation { index: usize, source: zk::Error },
}

impl From<JournalError> for MultiFailure {
    fn from(e: JournalError) -> Self {
        MultiFailure::Journal(e)
    }
}

async fn commit_multi(
    op: &'static str,
    limit: Duration,
    writer: &mut zk::MultiWriter<'_>,
) -> Result<Vec<zk::MultiWriteResult>, MultiFailure> {
    let commit = writer.commit();
    timed(op, limit, async {
        commit.await.map_err(|e| match e {
            zk::MultiWriteError::OperationFailed { index, source } => MultiFailure::Operation { index, source },
            zk::MultiWriteError::RequestFailed { source } => MultiFailure::Journal(zk_failure(op, source)),
        })
    })
    .await
}

/// The sequence number of a journal child name (`edit-0000000012` is 12).
pub fn edit_sequence(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(EDIT_PREFIX)?;
    if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The sequence number of the path a sequential create answered with.
fn created_sequence(path: &str) -> Option<u64> {
    edit_sequence(path.rsplit('/').next()?)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("journal records serialize to JSON")
}

/// Opens a session with a deadline of the session timeout plus one op timeout.
///
/// A server silent for a fifth of the session timeout is given up for another, as the failover
/// agent does (`referee_failover_agent::election::connection_idle_limit`): a frozen coordinator
/// server keeps its connections open, and with the client library's default (two fifths, tried
/// twice) the journal's writes stopped for about 3 s of a 4 s session while its leader was
/// frozen, though the two other servers had elected a new one within a second.
pub async fn connect_session(
    connect: &str,
    session_timeout: Duration,
    op_timeout: Duration,
) -> anyhow::Result<zk::Client> {
    let limit = session_timeout + op_timeout;
    let idle_limit = (session_timeout / 5).max(Duration::from_millis(50));
    let connecting = zk::Client::connector()
        .with_session_timeout(session_timeout)
        .with_connection_timeout(idle_limit)
        .connect(connect);
    let client = tokio::time::timeout(limit, connecting)
        .await
        .map_err(|_| anyhow::anyhow!("no session with the coordinator at {connect} within {limit:?}"))?
        .with_context(|| format!("connecting to the coordinator at {connect}"))?;
    Ok(client)
}

/// Reads the epoch znode: `None` if it does not exist yet.
pub async fn read_epoch(
    client: &zk::Client,
    epoch_path: &str,
    limit: Duration,
) -> Result<Option<(EpochRecord, zk::Stat)>, JournalError> {
    const OP: &str = "read the epoch";
    let read = timed(OP, limit, async { client.get_data(epoch_path).await.map_err(|e| zk_failure(OP, e)) }).await;
    match read {
        Ok((data, stat)) => {
            let record = serde_json::from_slice(&data)
                .map_err(|e| JournalError::Corrupt { path: epoch_path.to_string(), detail: e.to_string() })?;
            Ok(Some((record, stat)))
        }
        Err(JournalError::Coordinator { source: zk::Error::NoNode, .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The bound of the sequence numbers in use: every edit's is lower. The journal's child
/// version counts every create and delete of a child, and sequential names are drawn from the
/// creates alone, so nothing present has a number at or above it.
async fn journal_bound(client: &zk::Client, path: &str, limit: Duration) -> Result<u64, JournalError> {
    const OP: &str = "read the journal's stat";
    let stat = timed(OP, limit, async { client.check_stat(path).await.map_err(|e| zk_failure(OP, e)) }).await?;
    match stat {
        Some(stat) => Ok(u64::try_from(stat.cversion).unwrap_or(0)),
        None => Err(JournalError::Coordinator { op: OP, source: zk::Error::NoNode }),
    }
}

/// Decodes the data of the znode numbered `seq`.
fn parse_edit(path: &str, seq: u64, data: &[u8]) -> Result<JournalEntry, JournalError> {
    let edit = serde_json::from_slice(data).map_err(|e| JournalError::Corrupt {
        path: edit_path(path, seq),
        detail: format!("not an edit written by a master ({e}); if it was put there by hand, delete it"),
    })?;
    Ok(JournalEntry { seq, edit })
}

/// Reads the `count` numbers from `from`: one multi-read, or a plain `getData` for one.
/// `None` for a number no edit holds.
async fn read_numbers(
    client: &zk::Client,
    path: &str,
    from: u64,
    count: u64,
    limit: Duration,
) -> Result<Vec<Option<JournalEntry>>, JournalError> {
    const OP: &str = "read journal edits";
    if count == 1 {
        let read =
            timed(OP, limit, async { client.get_data(&edit_path(path, from)).await.map_err(|e| zk_failure(OP, e)) });
        return match read.await {
            Ok((data, _)) => Ok(vec![Some(parse_edit(path, from, &data)?)]),
            Err(JournalError::Coordinator { source: zk::Error::NoNode, .. }) => Ok(vec![None]),
            Err(e) => Err(e),
        };
    }
    let mut reader = client.new_multi_reader();
    for seq in from..from + count {
        reader.add_get_data(&edit_path(path, seq)).map_err(|source| JournalError::Coordinator { op: OP, source })?;
    }
    let commit = reader.commit();
    let results = timed(OP, limit, async { commit.await.map_err(|e| zk_failure(OP, e)) }).await?;
    if results.len() as u64 != count {
        return Err(JournalError::Corrupt {
            path: path.to_string(),
            detail: format!("{} answers to {count} reads", results.len()),
        });
    }
    let mut read = Vec::with_capacity(results.len());
    for (seq, result) in (from..).zip(results) {
        read.push(match result {
            zk::MultiReadResult::Data { data, .. } => Some(parse_edit(path, seq, &data)?),
            zk::MultiReadResult::Error { err: zk::Error::NoNode } => None,
            zk::MultiReadResult::Error { err } => return Err(JournalError::Coordinator { op: OP, source: err }),
            // The library's enum is non-exhaustive.
            other => {
                return Err(JournalError::Corrupt {
                    path: edit_path(path, seq),
                    detail: format!("unexpected answer {other:?}"),
                })
            }
        });
    }
    Ok(read)
}

/// Reads every edit numbered from `from` up to `bound`, in batches whose request stays small
/// and whose reply is sized to the reply limit: a batch the coordinator refuses as too large
/// to answer is halved, down to one edit, which always fits (see
/// [`JournalConfig::max_edit_bytes`]).
async fn read_range(
    client: &zk::Client,
    path: &str,
    from: u64,
    bound: u64,
    limit: Duration,
) -> Result<Vec<JournalEntry>, JournalError> {
    let mut entries = Vec::new();
    let mut missing = Vec::new();
    let per_op = edit_path(path, 0).len() + READ_OP_BYTES;
    let most = READ_BATCH.min((READ_REQUEST_BYTES / per_op).max(1) as u64);
    let mut batch = most;
    let mut next = from;
    while next < bound {
        let count = batch.min(bound - next);
        match read_numbers(client, path, next, count, limit).await {
            Ok(read) => {
                for (seq, found) in (next..).zip(read) {
                    match found {
                        Some(entry) => entries.push(entry),
                        None => missing.push(seq),
                    }
                }
                next += count;
                batch = (batch * 2).min(most);
            }
            Err(JournalError::Coordinator { source: zk::Error::BadArguments(_), .. }) if count > 1 => {
                batch = count / 2;
            }
            Err(e) => return Err(e),
        }
    }
    // A number below an edit that holds none was taken by another znode (numbers past the last
    // edit may simply not be used yet).
    let last = entries.last().map(|e| e.seq);
    if missing.iter().any(|&seq| last.is_some_and(|last| seq < last)) {
        refuse_foreign(client, path, limit).await?;
        tracing::warn!(
            journal = path,
            ?missing,
            "journal numbers without an edit (taken by znodes since deleted): skipped"
        );
    }
    Ok(entries)
}

/// Fails naming the znodes under the journal that are not edits, if there are any. Only asked
/// when numbers are missing, so the listing, which can be long, stays off the normal path; a
/// listing too large to answer is not an error of its own.
async fn refuse_foreign(client: &zk::Client, path: &str, limit: Duration) -> Result<(), JournalError> {
    const OP: &str = "list the journal";
    let children =
        match timed(OP, limit, async { client.list_children(path).await.map_err(|e| zk_failure(OP, e)) }).await {
            Ok(children) => children,
            Err(JournalError::Coordinator { source: zk::Error::BadArguments(_), .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
    let mut znodes: Vec<String> =
        children.iter().filter(|name| edit_sequence(name).is_none()).map(|name| format!("{path}/{name}")).collect();
    if znodes.is_empty() {
        return Ok(());
    }
    znodes.sort();
    Err(JournalError::Foreign { journal: path.to_string(), znodes })
}

/// Path of the edit with sequence number `seq`.
pub fn edit_path(journal: &str, seq: u64) -> String {
    format!("{journal}/{EDIT_PREFIX}{seq:010}")
}

/// Reads every edit after `after` (all of them with `None`) to the end of the journal, in
/// journal order.
pub async fn read_entries(
    client: &zk::Client,
    path: &str,
    after: Option<u64>,
    limit: Duration,
) -> Result<Vec<JournalEntry>, JournalError> {
    let bound = journal_bound(client, path, limit).await?;
    read_range(client, path, after.map_or(0, |a| a + 1), bound, limit).await
}

/// Appends `edit` to the journal at `path` under `claim` on `client`:
/// `multi(check(epoch_path, claim.version), create(edit))`. The guard is the journal's own: a
/// claim the epoch no longer holds gets [`JournalError::Deposed`] whoever sends it.
pub async fn append_under(
    client: &zk::Client,
    path: &str,
    epoch_path: &str,
    claim: &Claim,
    edit: &Edit,
    limit: Duration,
) -> Result<u64, JournalError> {
    const OP: &str = "append to the journal";
    let data = encode(edit);
    let prefix = format!("{path}/{EDIT_PREFIX}");
    let mut writer = client.new_multi_writer();
    writer
        .add_check_version(epoch_path, claim.version)
        .and_then(|()| writer.add_create(&prefix, &data, &SEQUENTIAL))
        .map_err(|source| JournalError::Coordinator { op: OP, source })?;
    match commit_multi(OP, limit, &mut writer).await {
        Ok(results) => match results.get(1) {
            Some(zk::MultiWriteResult::Create { path, .. }) => created_sequence(path)
                .ok_or_else(|| JournalError::Corrupt { path: path.clone(), detail: "not an edit znode".into() }),
            other => Err(JournalError::Corrupt {
                path: path.to_string(),
                detail: format!("unexpected append answer {other:?}"),
            }),
        },
        Err(MultiFailure::Operation { index: 0, source: zk::Error::BadVersion | zk::Error::NoNode }) => {
            Err(JournalError::Deposed { token: claim.token, version: claim.version })
        }
        Err(MultiFailure::Operation { source, .. }) => Err(JournalError::Coordinator { op: OP, source }),
        Err(MultiFailure::Journal(e)) => Err(e),
    }
}

/// One master's handle on the journal: a coordinator session, re-opened if it expires.
#[derive(Debug)]
pub struct Journal {
    config: JournalConfig,
    node_id: String,
    client: tokio::sync::Mutex<zk::Client>,
    /// Makes claim marker ids unique across restarts (start time) and claims (counter).
    nonce: u128,
    claims: AtomicU64,
}

impl Journal {
    /// Opens a session and creates the journal znode and the epoch's parent if missing.
    pub async fn connect(config: JournalConfig, node_id: &str) -> anyhow::Result<Journal> {
        config.validate().context("journal")?;
        let client = Self::open(&config).await?;
        let nonce = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let journal = Journal {
            config,
            node_id: node_id.to_string(),
            client: tokio::sync::Mutex::new(client),
            nonce,
            claims: AtomicU64::new(0),
        };
        let client = journal.session().await?;
        let limit = journal.config.op_timeout();
        let epoch_parent = match journal.config.epoch_path.rfind('/') {
            Some(0) | None => None,
            Some(i) => Some(journal.config.epoch_path[..i].to_string()),
        };
        for path in std::iter::once(journal.config.path.clone()).chain(epoch_parent) {
            const OP: &str = "create the journal znodes";
            timed(OP, limit, async { client.mkdir(&path, &PERSISTENT).await.map_err(|e| zk_failure(OP, e)) })
                .await
                .with_context(|| format!("creating {path}"))?;
        }
        Ok(journal)
    }

    async fn open(config: &JournalConfig) -> anyhow::Result<zk::Client> {
        let session_timeout = Duration::from_millis(config.session_timeout_ms);
        let client = connect_session(&config.connect, session_timeout, config.op_timeout()).await?;
        let negotiated = client.session_timeout();
        if negotiated <= config.op_timeout() {
            bail!(
                "the coordinator granted a session timeout of {negotiated:?}, not above op_timeout_ms ({}); \
                 lower journal.op_timeout_ms or widen the coordinator's session bounds",
                config.op_timeout_ms
            );
        }
        Ok(client)
    }

    /// The configuration.
    pub fn config(&self) -> &JournalConfig {
        &self.config
    }

    /// The current session, re-opened first if it has expired or closed. The claim's safety
    /// does not depend on the session (the epoch znode is persistent), only catching up does,
    /// and [`Journal::claim`] keeps one handle for both steps.
    pub async fn session(&self) -> Result<zk::Client, JournalError> {
        let mut client = self.client.lock().await;
        if client.state().is_terminated() {
            tracing::warn!(node = %self.node_id, "coordinator session ended; opening a new one");
            *client = Self::open(&self.config)
                .await
                .map_err(|e| JournalError::Indeterminate { op: "re-open the session", detail: format!("{e:#}") })?;
        }
        Ok(client.clone())
    }

    /// Reads the journal after `applied` to its end, claims the epoch with `token`, then reads
    /// what was appended meanwhile on the same session. Returns the claim and the entries read,
    /// the claim marker included. A claimant that cannot read the journal fails before it
    /// claims, and so deposes nobody.
    pub async fn claim(
        &self,
        token: FencingToken,
        applied: Option<u64>,
    ) -> Result<(Claim, Vec<JournalEntry>), JournalError> {
        const OP: &str = "claim the epoch";
        let client = self.session().await?;
        let limit = self.config.op_timeout();
        let record = encode(&EpochRecord { token, node_id: self.node_id.clone() });
        let marker = encode(&Edit {
            write_id: format!(
                "claim-{}-{token}-{:x}-{}",
                self.node_id,
                self.nonce,
                self.claims.fetch_add(1, Ordering::Relaxed)
            ),
            token,
            op: EditOp::Claim { node_id: self.node_id.clone() },
        });
        let marker_prefix = format!("{}/{EDIT_PREFIX}", self.config.path);
        let mut entries = read_entries(&client, &self.config.path, applied, limit).await?;
        let caught_up = entries.last().map(|e| e.seq).or(applied);
        for _ in 0..CLAIM_ATTEMPTS {
            let current = read_epoch(&client, &self.config.epoch_path, limit).await?;
            let mut writer = client.new_multi_writer();
            let staged = match &current {
                Some((held, _)) if held.token > token => {
                    return Err(JournalError::Superseded { ours: token, held: held.token, node: held.node_id.clone() })
                }
                Some((_, stat)) => writer.add_set_data(&self.config.epoch_path, &record, Some(stat.version)),
                None => writer.add_create(&self.config.epoch_path, &record, &PERSISTENT),
            };
            staged
                .and_then(|()| writer.add_create(&marker_prefix, &marker, &SEQUENTIAL))
                .map_err(|source| JournalError::Coordinator { op: OP, source })?;
            match commit_multi(OP, limit, &mut writer).await {
                Ok(results) => {
                    let version = match results.first() {
                        Some(zk::MultiWriteResult::SetData { stat }) => stat.version,
                        Some(zk::MultiWriteResult::Create { .. }) => 0,
                        other => {
                            return Err(JournalError::Corrupt {
                                path: self.config.epoch_path.clone(),
                                detail: format!("unexpected claim answer {other:?}"),
                            })
                        }
                    };
                    let marker_seq = match results.get(1) {
                        Some(zk::MultiWriteResult::Create { path, .. }) => created_sequence(path),
                        _ => None,
                    }
                    .ok_or_else(|| JournalError::Corrupt {
                        path: self.config.path.clone(),
                        detail: format!("unexpected claim marker answer {:?}", results.get(1)),
                    })?;
                    let claim = Claim { token, version, marker_seq };
                    // The tail, on the same session: it has seen our claim, so it sees every
                    // edit committed before it.
                    entries.extend(read_entries(&client, &self.config.path, caught_up, limit).await?);
                    return Ok((claim, entries));
                }
                // Someone changed the epoch between our read and our write: read again.
                Err(MultiFailure::Operation { index: 0, source: zk::Error::BadVersion | zk::Error::NodeExists }) => {
                    continue
                }
                Err(MultiFailure::Operation { source, .. }) => {
                    return Err(JournalError::Coordinator { op: OP, source })
                }
                Err(MultiFailure::Journal(e)) => return Err(e),
            }
        }
        Err(JournalError::Contended(CLAIM_ATTEMPTS))
    }

    /// Appends `edit` under `claim`: `multi(check(epoch, claim.version), create(edit))`.
    /// Returns the edit's sequence number.
    pub async fn append(&self, claim: &Claim, edit: &Edit) -> Result<u64, JournalError> {
        let data = encode(edit);
        if data.len() > self.config.max_edit_bytes {
            return Err(JournalError::TooLarge { bytes: data.len(), limit: self.config.max_edit_bytes });
        }
        let client = self.session().await?;
        let (path, epoch_path) = (&self.config.path, &self.config.epoch_path);
        append_under(&client, path, epoch_path, claim, edit, self.config.op_timeout()).await
    }

    /// Every edit after `after`, in journal order.
    pub async fn read_after(&self, after: Option<u64>) -> Result<Vec<JournalEntry>, JournalError> {
        let client = self.session().await?;
        read_entries(&client, &self.config.path, after, self.config.op_timeout()).await
    }

    /// Every edit after `after`, and a watch on the creation of the edit that follows them, so
    /// that the next append wakes the reader. `None` instead of a watch when that edit exists
    /// already: read again at once. (A number taken by another znode can leave the watch on a
    /// number no edit gets; the reader's interval covers that.)
    pub async fn read_after_watching(
        &self,
        after: Option<u64>,
    ) -> Result<(Vec<JournalEntry>, Option<zk::OneshotWatcher>), JournalError> {
        const OP: &str = "watch the journal";
        let client = self.session().await?;
        let limit = self.config.op_timeout();
        let entries = read_entries(&client, &self.config.path, after, limit).await?;
        let next = entries.last().map(|e| e.seq).or(after).map_or(0, |s| s + 1);
        let next_path = edit_path(&self.config.path, next);
        let (stat, watcher) =
            timed(OP, limit, async { client.check_and_watch_stat(&next_path).await.map_err(|e| zk_failure(OP, e)) })
                .await?;
        Ok((entries, stat.is_none().then_some(watcher)))
    }

    /// The epoch znode's record, `None` if no master ever claimed.
    pub async fn epoch(&self) -> Result<Option<EpochRecord>, JournalError> {
        let client = self.session().await?;
        Ok(read_epoch(&client, &self.config.epoch_path, self.config.op_timeout()).await?.map(|(record, _)| record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The journal is read by masters and verdicts built separately: its format is pinned.
    #[test]
    fn edit_wire_format_is_pinned() {
        let cases = [
            (
                Edit { write_id: "w1".into(), token: FencingToken(10), op: EditOp::Claim { node_id: "a".into() } },
                r#"{"write_id":"w1","token":10,"op":"claim","node_id":"a"}"#,
            ),
            (
                Edit {
                    write_id: "w2".into(),
                    token: FencingToken(10),
                    op: EditOp::Put { key: "k".into(), value: serde_json::json!([1]) },
                },
                r#"{"write_id":"w2","token":10,"op":"put","key":"k","value":[1]}"#,
            ),
            (
                Edit {
                    write_id: "w3".into(),
                    token: FencingToken(20),
                    op: EditOp::Fs(FsOp::Create { path: "/f".into(), data: "x".into() }),
                },
                r#"{"write_id":"w3","token":20,"op":"create","path":"/f","data":"x"}"#,
            ),
        ];
        for (edit, json) in cases {
            assert_eq!(serde_json::to_string(&edit).unwrap(), json);
            assert_eq!(serde_json::from_str::<Edit>(json).unwrap(), edit);
        }
        assert!(serde_json::from_str::<Edit>(r#"{"write_id":"w","token":1,"op":"rename"}"#).is_err());
        let epoch = EpochRecord { token: FencingToken(20), node_id: "b".into() };
        assert_eq!(serde_json::to_string(&epoch).unwrap(), r#"{"token":20,"node_id":"b"}"#);
    }

    #[test]
    fn sequence_numbers_come_from_znode_names() {
        assert_eq!(edit_sequence("edit-0000000012"), Some(12));
        assert_eq!(created_sequence("/demo/journal/edit-0000000000"), Some(0));
        assert_eq!(edit_sequence("edit-12"), None);
        assert_eq!(edit_sequence("other-0000000012"), None);
        assert_eq!(edit_path("/j", 7), "/j/edit-0000000007");
    }

    #[test]
    fn configuration_is_validated() {
        let ok = JournalConfig::new("127.0.0.1:2181", "/demo/journal", "/demo/epoch");
        assert!(ok.validate().is_ok());
        let inside = JournalConfig { epoch_path: "/demo/journal/epoch".into(), ..ok.clone() };
        assert!(inside.validate().unwrap_err().to_string().starts_with("epoch_path"));
        let relative = JournalConfig { path: "demo".into(), ..ok.clone() };
        assert!(relative.validate().unwrap_err().to_string().starts_with("path"));
        let slow = JournalConfig { op_timeout_ms: 10_000, ..ok };
        assert!(slow.validate().unwrap_err().to_string().starts_with("session_timeout_ms"));
    }
}
