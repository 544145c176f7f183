//! The verdict: an independent reader of the journal judges what the masters did.
//!
//! [`verify`] opens its own coordinator session, reads the epoch znode and the whole journal,
//! and compares them with the writes clients saw acknowledged. Nothing comes from the masters
//! except those acknowledgements; [`Verdict::compute`] is the pure judgement, testable on its
//! own.
//!
//! # Definitions
//!
//! The journal is read in sequence order, which is commit order. A claim is one atomic multi
//! that sets the epoch znode and appends a claim marker (see [`crate::journal`]), so the markers
//! cut the journal into **eras**: an entry belongs to the era of the nearest claim marker
//! before it, and the epoch token in force when it was appended is that marker's token.
//!
//! - **acknowledged**: writes clients saw acknowledged ([`Acknowledged`] records given to
//!   `verify`): every write a master answered with a 2xx, by write id, with the token and
//!   sequence number of the answer when the client could read it.
//! - **found**: acknowledged writes whose write id is in the journal.
//! - **lost** (must be 0): acknowledged writes whose write id is not in the journal.
//! - **refused on replay** (must be 0): acknowledged writes that change nothing when the
//!   journal is replayed ([`Replica`]): the master said yes to an edit that the state it
//!   journaled into rejects.
//! - **misreported** (must be 0): acknowledgements whose token is not the one the write's
//!   entry was appended under in its era, or whose sequence number is not where the write
//!   first applied.
//! - **stale** (must be 0): entries appended under a token other than the one in force: a
//!   non-marker entry whose token is not its era's claimant (lower: a deposed master got an
//!   append through; higher: a master appended without claiming), any entry before the first
//!   marker, and a marker whose token is lower than the previous marker's (a claim that went
//!   backwards). Equivalently: marker tokens never decrease, and every other entry carries
//!   exactly the token of the marker that precedes it.
//! - **duplicates**: write ids present more than once (a retried append that landed twice).
//!   Not a loss and not a safety violation; reported because it shows a retry was needed.
//! - **epoch matches**: the epoch znode holds the token of the last claim marker, as the
//!   atomic claim guarantees (no journal and no epoch also matches).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use anyhow::Context;
use referee_fencing::FencingToken;
use serde::{Deserialize, Serialize};

use crate::journal::{connect_session, read_entries, read_epoch, EditOp, EpochRecord, JournalEntry};
use crate::replica::Replica;

/// A write a client saw acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AckRecord {
    /// The write id the master acknowledged.
    pub write_id: String,
    /// The token the master said it wrote under.
    pub token: FencingToken,
}

/// A write a master acknowledged, as the client knows it: the write id it sent, and what the
/// answer said when the client could read it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Acknowledged {
    /// The write id sent.
    pub write_id: String,
    /// The token the answer reported, `None` if its body could not be read.
    pub token: Option<FencingToken>,
    /// The sequence number the answer reported, `None` if unknown.
    pub seq: Option<u64>,
}

impl From<&AckRecord> for Acknowledged {
    fn from(ack: &AckRecord) -> Self {
        Acknowledged { write_id: ack.write_id.clone(), token: Some(ack.token), seq: None }
    }
}

impl From<&Acknowledged> for Acknowledged {
    fn from(ack: &Acknowledged) -> Self {
        ack.clone()
    }
}

/// An acknowledgement that disagrees with the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Misreported {
    /// The write id.
    pub write_id: String,
    /// The token and sequence number the acknowledgement reported.
    pub acked: (Option<FencingToken>, Option<u64>),
    /// The token the write was appended under and where it first applied.
    pub journal: (FencingToken, u64),
}

/// A journal entry appended under a token that was not in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleEntry {
    /// Its sequence number.
    pub seq: u64,
    /// Its write id.
    pub write_id: String,
    /// The token it carries.
    pub token: FencingToken,
    /// The token in force (the era's claimant), `None` before the first claim.
    pub in_force: Option<FencingToken>,
}

/// What the independent reader found. See the module documentation for the definitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The journal znode read.
    pub journal_path: String,
    /// The epoch's token, `None` if no master ever claimed.
    pub epoch_token: Option<FencingToken>,
    /// Entries in the journal, claim markers included.
    pub entries: usize,
    /// Claim markers among them.
    pub claims: usize,
    /// Writes acknowledged to clients.
    pub acknowledged: usize,
    /// Acknowledged writes present in the journal.
    pub found: usize,
    /// Write ids acknowledged but absent from the journal.
    pub lost: Vec<String>,
    /// Write ids acknowledged whose edit replay refuses, with why.
    pub refused: Vec<(String, String)>,
    /// Acknowledgements whose token or sequence number is not the journal's.
    pub misreported: Vec<Misreported>,
    /// Entries appended under a token not in force.
    pub stale: Vec<StaleEntry>,
    /// Write ids present more than once, with how many times.
    pub duplicates: BTreeMap<String, usize>,
    /// Whether the epoch holds the last claim marker's token.
    pub epoch_matches: bool,
}

impl Verdict {
    /// Judges `entries` (the whole journal, in sequence order) against the epoch znode and
    /// the acknowledged writes.
    pub fn compute(
        journal_path: &str,
        epoch: Option<&EpochRecord>,
        entries: &[JournalEntry],
        acknowledged: &[Acknowledged],
    ) -> Verdict {
        let mut in_force: Option<FencingToken> = None;
        let mut claims = 0;
        let mut stale = Vec::new();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for entry in entries {
            let edit = &entry.edit;
            let is_stale = match &edit.op {
                EditOp::Claim { .. } => {
                    claims += 1;
                    let backwards = in_force.is_some_and(|t| edit.token < t);
                    if !backwards {
                        in_force = Some(edit.token);
                    }
                    backwards
                }
                EditOp::Put { .. } | EditOp::Fs(_) => {
                    *counts.entry(&edit.write_id).or_default() += 1;
                    in_force != Some(edit.token)
                }
            };
            if is_stale {
                stale.push(StaleEntry { seq: entry.seq, write_id: edit.write_id.clone(), token: edit.token, in_force });
            }
        }
        let acked: HashSet<&str> = acknowledged.iter().map(|a| a.write_id.as_str()).collect();
        let mut lost: Vec<String> =
            acked.iter().filter(|id| !counts.contains_key(*id)).map(|id| id.to_string()).collect();
        lost.sort();
        // Replayed as every master replays it: what each acknowledged write did.
        let mut replica = Replica::new();
        for entry in entries {
            replica.apply(entry);
        }
        let mut refused = Vec::new();
        let mut misreported = Vec::new();
        let mut judged = HashSet::new();
        for ack in acknowledged {
            let Some(record) = replica.write_record(&ack.write_id) else { continue };
            if !judged.insert(ack.write_id.as_str()) {
                continue;
            }
            if let Some(why) = &record.refused {
                refused.push((ack.write_id.clone(), why.to_string()));
            }
            let token_wrong = ack.token.is_some_and(|t| t != record.token);
            let seq_wrong = ack.seq.is_some_and(|s| s != record.seq);
            if token_wrong || seq_wrong {
                misreported.push(Misreported {
                    write_id: ack.write_id.clone(),
                    acked: (ack.token, ack.seq),
                    journal: (record.token, record.seq),
                });
            }
        }
        let epoch_token = epoch.map(|e| e.token);
        Verdict {
            journal_path: journal_path.to_string(),
            epoch_token,
            entries: entries.len(),
            claims,
            acknowledged: acked.len(),
            found: acked.len() - lost.len(),
            lost,
            refused,
            misreported,
            stale,
            duplicates: counts.into_iter().filter(|(_, n)| *n > 1).map(|(id, n)| (id.to_string(), n)).collect(),
            epoch_matches: epoch_token == in_force,
        }
    }

    /// No loss, nothing stale, and the epoch agrees with the journal.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.refused.is_empty()
            && self.misreported.is_empty()
            && self.stale.is_empty()
            && self.epoch_matches
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let token = |t: Option<FencingToken>| t.map_or_else(|| "none".to_string(), |t| t.to_string());
        writeln!(f, "journal verdict for {} (epoch token {})", self.journal_path, token(self.epoch_token))?;
        writeln!(f, "  {:<34}{:>6}", "journal entries", self.entries)?;
        writeln!(f, "  {:<34}{:>6}", "  of which claim markers", self.claims)?;
        writeln!(f, "  {:<34}{:>6}", "writes acknowledged", self.acknowledged)?;
        writeln!(f, "  {:<34}{:>6}", "acknowledged, found in journal", self.found)?;
        writeln!(f, "  {:<34}{:>6}", "lost (must be 0)", self.lost.len())?;
        writeln!(f, "  {:<34}{:>6}", "refused on replay (must be 0)", self.refused.len())?;
        writeln!(f, "  {:<34}{:>6}", "misreported token/seq (must be 0)", self.misreported.len())?;
        writeln!(f, "  {:<34}{:>6}", "stale token (must be 0)", self.stale.len())?;
        writeln!(f, "  {:<34}{:>6}", "duplicates", self.duplicates.len())?;
        write!(f, "  {:<34}{:>6}", "epoch matches last claim", if self.epoch_matches { "yes" } else { "NO" })?;
        for id in &self.lost {
            write!(f, "\n  lost: {id}")?;
        }
        for (id, why) in &self.refused {
            write!(f, "\n  refused on replay: `{id}`: {why}")?;
        }
        for m in &self.misreported {
            let (token, seq) = m.acked;
            write!(
                f,
                "\n  misreported: `{}` acknowledged with token {} seq {}, appended under token {} at seq {}",
                m.write_id,
                token.map_or_else(|| "?".to_string(), |t| t.to_string()),
                seq.map_or_else(|| "?".to_string(), |s| s.to_string()),
                m.journal.0,
                m.journal.1
            )?;
        }
        for s in &self.stale {
            write!(f, "\n  stale: seq {} `{}` token {} (in force: {})", s.seq, s.write_id, s.token, token(s.in_force))?;
        }
        Ok(())
    }
}

/// Reads the journal at `journal_path` and the epoch at `epoch_path` through a session of its
/// own on `connect`, and judges them against `acknowledged` ([`AckRecord`]s or
/// [`Acknowledged`] records).
///
/// Fails only if the coordinator cannot be read; a verdict on a partial read would mislead.
pub async fn verify<A>(
    connect: &str,
    journal_path: &str,
    epoch_path: &str,
    acknowledged: &[A],
) -> anyhow::Result<Verdict>
where
    for<'a> &'a A: Into<Acknowledged>,
{
    let acknowledged: Vec<Acknowledged> = acknowledged.iter().map(Into::into).collect();
    let op_timeout = Duration::from_secs(5);
    let client = connect_session(connect, Duration::from_secs(10), op_timeout).await?;
    // Make this session's server as current as the leader before reading.
    tokio::time::timeout(op_timeout, client.sync(journal_path))
        .await
        .context("sync timed out")?
        .with_context(|| format!("sync {journal_path}"))?;
    let epoch = read_epoch(&client, epoch_path, op_timeout).await.context("reading the epoch")?;
    let entries = read_entries(&client, journal_path, None, op_timeout).await.context("reading the journal")?;
    Ok(Verdict::compute(journal_path, epoch.as_ref().map(|(record, _)| record), &entries, &acknowledged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Edit;
    use crate::namespace::FsOp;

    fn entry(seq: u64, write_id: &str, token: u64, claim: bool) -> JournalEntry {
        let op = if claim {
            EditOp::Claim { node_id: format!("n{token}") }
        } else {
            EditOp::Fs(FsOp::Mkdir { path: format!("/{write_id}") })
        };
        JournalEntry { seq, edit: Edit { write_id: write_id.into(), token: FencingToken(token), op } }
    }
    fn ack(write_id: &str, token: u64) -> Acknowledged {
        Acknowledged { write_id: write_id.into(), token: Some(FencingToken(token)), seq: None }
    }
    fn epoch(token: u64) -> EpochRecord {
        EpochRecord { token: FencingToken(token), node_id: format!("n{token}") }
    }

    #[test]
    fn a_clean_failover_is_clean() {
        let journal = [
            entry(0, "c10", 10, true),
            entry(1, "a1", 10, false),
            entry(2, "a2", 10, false),
            entry(3, "c20", 20, true),
            entry(4, "b1", 20, false),
            entry(5, "b1", 20, false),
        ];
        let v = Verdict::compute("/j", Some(&epoch(20)), &journal, &[ack("a1", 10), ack("a2", 10), ack("b1", 20)]);
        assert!(v.is_clean(), "{v}");
        assert_eq!((v.entries, v.claims, v.acknowledged, v.found), (6, 2, 3, 3));
        assert_eq!(v.duplicates, BTreeMap::from([("b1".to_string(), 2)]));
        let table = v.to_string();
        assert!(table.contains("lost (must be 0)                       0"), "{table}");
    }

    #[test]
    fn losses_stale_entries_and_a_lagging_epoch_are_reported() {
        let journal = [
            entry(0, "w0", 5, false),
            entry(1, "c10", 10, true),
            entry(2, "a1", 10, false),
            entry(3, "c20", 20, true),
            entry(4, "a2", 10, false),
            entry(5, "c15", 15, true),
            entry(6, "x", 30, false),
        ];
        let v = Verdict::compute("/j", Some(&epoch(10)), &journal, &[ack("a1", 10), ack("gone", 10)]);
        assert!(!v.is_clean());
        assert_eq!(v.lost, ["gone"]);
        assert_eq!(v.found, 1);
        let stale: Vec<(u64, Option<u64>)> = v.stale.iter().map(|s| (s.seq, s.in_force.map(|t| t.0))).collect();
        assert_eq!(stale, [(0, None), (4, Some(20)), (5, Some(20)), (6, Some(20))]);
        assert!(!v.epoch_matches);
        assert!(v.to_string().contains("stale: seq 4 `a2` token 10 (in force: 20)"), "{v}");
        assert!(Verdict::compute("/j", None, &[], &[]).is_clean());
    }

    #[test]
    fn acknowledged_writes_that_replay_refused_or_disagree_with_the_journal_are_reported() {
        let delete = |seq: u64, id: &str, path: &str| JournalEntry {
            seq,
            edit: Edit {
                write_id: id.into(),
                token: FencingToken(10),
                op: EditOp::Fs(FsOp::Delete { path: path.into(), recursive: false }),
            },
        };
        let journal = [
            entry(0, "c10", 10, true),
            entry(1, "d", 10, false),
            JournalEntry {
                seq: 2,
                edit: Edit {
                    write_id: "f".into(),
                    token: FencingToken(10),
                    op: EditOp::Fs(FsOp::Create { path: "/d/f".into(), data: String::new() }),
                },
            },
            delete(3, "del", "/d"),
            entry(4, "late", 10, false),
            entry(5, "late", 10, false),
        ];
        let at = |id: &str, token: Option<u64>, seq: Option<u64>| Acknowledged {
            write_id: id.into(),
            token: token.map(FencingToken),
            seq,
        };
        let acked = [
            at("d", Some(10), Some(1)),
            // Acknowledged, but the directory was not empty: replay refuses it.
            at("del", Some(10), Some(3)),
            // A write that landed twice is acknowledged with its first copy's place.
            at("late", Some(10), Some(4)),
            // Its body unread: only the write id is known, and it is found.
            at("f", None, None),
        ];
        let v = Verdict::compute("/j", Some(&epoch(10)), &journal, &acked);
        assert!(!v.is_clean(), "{v}");
        assert_eq!(v.refused.len(), 1, "{v}");
        assert_eq!(v.refused[0].0, "del");
        assert!(v.misreported.is_empty(), "{v}");
        assert_eq!((v.acknowledged, v.found), (4, 4));

        let wrong = [at("d", Some(20), Some(1)), at("f", Some(10), Some(7)), at("late", Some(10), Some(5))];
        let v = Verdict::compute("/j", Some(&epoch(10)), &journal, &wrong);
        let ids: Vec<&str> = v.misreported.iter().map(|m| m.write_id.as_str()).collect();
        assert_eq!(ids, ["d", "f", "late"], "{v}");
        assert!(
            v.to_string()
                .contains("misreported: `d` acknowledged with token 20 seq 1, appended under token 10 at seq 1"),
            "{v}"
        );
        assert!(!v.is_clean());
    }
}
