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
//! - **acknowledged**: writes clients saw acknowledged ([`AckRecord`]s given to `verify`).
//! - **found**: acknowledged writes whose write id is in the journal.
//! - **lost** (must be 0): acknowledged writes whose write id is not in the journal.
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

/// A write a client saw acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AckRecord {
    /// The write id the master acknowledged.
    pub write_id: String,
    /// The token the master said it wrote under.
    pub token: FencingToken,
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
        acknowledged: &[AckRecord],
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
        let epoch_token = epoch.map(|e| e.token);
        Verdict {
            journal_path: journal_path.to_string(),
            epoch_token,
            entries: entries.len(),
            claims,
            acknowledged: acked.len(),
            found: acked.len() - lost.len(),
            lost,
            stale,
            duplicates: counts.into_iter().filter(|(_, n)| *n > 1).map(|(id, n)| (id.to_string(), n)).collect(),
            epoch_matches: epoch_token == in_force,
        }
    }

    /// No loss, nothing stale, and the epoch agrees with the journal.
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty() && self.stale.is_empty() && self.epoch_matches
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
        writeln!(f, "  {:<34}{:>6}", "stale token (must be 0)", self.stale.len())?;
        writeln!(f, "  {:<34}{:>6}", "duplicates", self.duplicates.len())?;
        write!(f, "  {:<34}{:>6}", "epoch matches last claim", if self.epoch_matches { "yes" } else { "NO" })?;
        for id in &self.lost {
            write!(f, "\n  lost: {id}")?;
        }
        for s in &self.stale {
            write!(f, "\n  stale: seq {} `{}` token {} (in force: {})", s.seq, s.write_id, s.token, token(s.in_force))?;
        }
        Ok(())
    }
}

/// Reads the journal at `journal_path` and the epoch at `epoch_path` through a session of its
/// own on `connect`, and judges them against `acknowledged`.
///
/// Fails only if the coordinator cannot be read; a verdict on a partial read would mislead.
pub async fn verify(
    connect: &str,
    journal_path: &str,
    epoch_path: &str,
    acknowledged: &[AckRecord],
) -> anyhow::Result<Verdict> {
    let op_timeout = Duration::from_secs(5);
    let client = connect_session(connect, Duration::from_secs(10), op_timeout).await?;
    // Make this session's server as current as the leader before reading.
    tokio::time::timeout(op_timeout, client.sync(journal_path))
        .await
        .context("sync timed out")?
        .with_context(|| format!("sync {journal_path}"))?;
    let epoch = read_epoch(&client, epoch_path, op_timeout).await.context("reading the epoch")?;
    let entries = read_entries(&client, journal_path, None, op_timeout).await.context("reading the journal")?;
    Ok(Verdict::compute(journal_path, epoch.as_ref().map(|(record, _)| record), &entries, acknowledged))
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
    fn ack(write_id: &str, token: u64) -> AckRecord {
        AckRecord { write_id: write_id.into(), token: FencingToken(token) }
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
}
