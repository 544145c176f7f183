//! What a master derives from the journal: the namespace, the key-value store of `POST
//! /write`, and the bookkeeping that makes replay idempotent.
//!
//! Pure code: [`Replica::apply`] takes one [`JournalEntry`] and says what it did. Active and
//! standby masters replay the same journal through it, in sequence order, and so hold the same
//! state. Replay is idempotent twice over: an entry at or below the last applied sequence is
//! skipped (the tailer and the writer may both see the same entry), and an edit whose write id
//! was already applied is skipped (a retried append that landed twice).
//!
//! Replay also enforces the eras the claim markers delimit (see [`crate::journal`]): an edit
//! whose token is not the current era's claimant is not applied. With the guarded append such
//! an entry cannot exist; refusing it on the reading side as well means a replica never shows
//! a write the verdict would call stale.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use referee_fencing::FencingToken;

use crate::journal::{EditOp, JournalEntry};
use crate::namespace::{FsError, Namespace};

/// The era in force: the last claim marker applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Era {
    /// The claimant's token.
    pub token: FencingToken,
    /// The claimant's node id.
    pub node_id: String,
    /// Sequence number of the claim marker.
    pub seq: u64,
}

/// What [`Replica::apply`] did with one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The entry's sequence number was already applied: nothing to do.
    AlreadyApplied,
    /// A claim marker: a new era starts with this token.
    Claimed {
        /// The claimant's token.
        token: FencingToken,
        /// The claimant.
        node_id: String,
    },
    /// The edit changed the state.
    Changed,
    /// The edit's write id was already applied at `first_seq`: a write that landed twice.
    Duplicate {
        /// Where the write id was first applied.
        first_seq: u64,
    },
    /// The edit is in the journal but cannot apply (a namespace check failed); it changes
    /// nothing, on every replica alike.
    Refused {
        /// Why.
        reason: String,
    },
    /// The edit's token is not the era's claimant (or a claim went backwards): not applied.
    StaleToken {
        /// The edit's token.
        token: FencingToken,
        /// The era's token, `None` before the first claim.
        era: Option<FencingToken>,
    },
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Applied::AlreadyApplied => write!(f, "already applied"),
            Applied::Claimed { token, node_id } => write!(f, "era of token {token} ({node_id}) begins"),
            Applied::Changed => write!(f, "applied"),
            Applied::Duplicate { first_seq } => write!(f, "duplicate of the write applied at {first_seq}; skipped"),
            Applied::Refused { reason } => write!(f, "journaled but not applicable: {reason}"),
            Applied::StaleToken { token, era: Some(era) } => {
                write!(f, "token {token} is not the era's claimant ({era}); not applied")
            }
            Applied::StaleToken { token, era: None } => write!(f, "token {token} precedes every claim; not applied"),
        }
    }
}

/// Where a write id was first applied, under which token, and whether it changed anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRecord {
    /// The sequence number of its first copy in the journal.
    pub seq: u64,
    /// The token it was appended under.
    pub token: FencingToken,
    /// Why it changed nothing, if it could not apply (`Applied::Refused`).
    pub refused: Option<FsError>,
}

/// State replayed from the journal.
#[derive(Debug, Clone, Default)]
pub struct Replica {
    applied: Option<u64>,
    era: Option<Era>,
    namespace: Namespace,
    store: BTreeMap<String, serde_json::Value>,
    /// Write id → where it was applied, under which token and how (the retry cache).
    writes: HashMap<String, WriteRecord>,
}

impl Replica {
    /// An empty replica: nothing applied.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last sequence number applied, `None` before the first entry.
    pub fn applied(&self) -> Option<u64> {
        self.applied
    }

    /// Whether `seq` directly follows the last applied entry (the journal is dense).
    pub fn is_next(&self, seq: u64) -> bool {
        self.applied.map_or(seq == 0, |a| a + 1 == seq)
    }

    /// The era in force.
    pub fn era(&self) -> Option<&Era> {
        self.era.as_ref()
    }

    /// Where the write `write_id` was applied, if it was.
    pub fn write_seq(&self, write_id: &str) -> Option<u64> {
        self.writes.get(write_id).map(|w| w.seq)
    }

    /// Where the write `write_id` was applied and the token it was appended under.
    pub fn write_ack(&self, write_id: &str) -> Option<(u64, FencingToken)> {
        self.writes.get(write_id).map(|w| (w.seq, w.token))
    }

    /// How the write `write_id` applied, if it is in the journal under the token in force.
    pub fn write_record(&self, write_id: &str) -> Option<&WriteRecord> {
        self.writes.get(write_id)
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// A value of the key-value store.
    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.store.get(key)
    }

    /// Applies `entry` if it is after the last applied one; entries must come in order.
    pub fn apply(&mut self, entry: &JournalEntry) -> Applied {
        if self.applied.is_some_and(|a| entry.seq <= a) {
            return Applied::AlreadyApplied;
        }
        self.applied = Some(entry.seq);
        let edit = &entry.edit;
        let era_token = self.era.as_ref().map(|e| e.token);
        if let EditOp::Claim { node_id } = &edit.op {
            // An equal token is the same claimant claiming again (a retried promotion).
            if era_token.is_some_and(|t| edit.token < t) {
                return Applied::StaleToken { token: edit.token, era: era_token };
            }
            self.era = Some(Era { token: edit.token, node_id: node_id.clone(), seq: entry.seq });
            return Applied::Claimed { token: edit.token, node_id: node_id.clone() };
        }
        if era_token != Some(edit.token) {
            return Applied::StaleToken { token: edit.token, era: era_token };
        }
        if let Some(first) = self.writes.get(&edit.write_id) {
            return Applied::Duplicate { first_seq: first.seq };
        }
        let refused = match &edit.op {
            EditOp::Put { key, value } => {
                self.store.insert(key.clone(), value.clone());
                None
            }
            EditOp::Fs(op) => self.namespace.apply(op, entry.seq).err(),
            EditOp::Claim { .. } => unreachable!("claim markers are handled above"),
        };
        // Recorded even when refused: the write is in the journal, and a client retrying it
        // must get the same answer, not a second append.
        let applied = match &refused {
            None => Applied::Changed,
            Some(e) => Applied::Refused { reason: e.to_string() },
        };
        self.writes.insert(edit.write_id.clone(), WriteRecord { seq: entry.seq, token: edit.token, refused });
        applied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Edit;
    use crate::namespace::FsOp;

    fn entry(seq: u64, write_id: &str, token: u64, op: EditOp) -> JournalEntry {
        JournalEntry { seq, edit: Edit { write_id: write_id.into(), token: FencingToken(token), op } }
    }
    fn claim(seq: u64, token: u64, node: &str) -> JournalEntry {
        entry(seq, &format!("claim-{seq}"), token, EditOp::Claim { node_id: node.into() })
    }
    fn mkdir(seq: u64, write_id: &str, token: u64, path: &str) -> JournalEntry {
        entry(seq, write_id, token, EditOp::Fs(FsOp::Mkdir { path: path.into() }))
    }
    fn put(seq: u64, write_id: &str, token: u64, key: &str) -> JournalEntry {
        entry(seq, write_id, token, EditOp::Put { key: key.into(), value: serde_json::json!(seq) })
    }

    #[test]
    fn replay_follows_eras_and_is_idempotent() {
        let mut r = Replica::new();
        let journal = [
            (mkdir(0, "w0", 10, "/early"), Applied::StaleToken { token: FencingToken(10), era: None }),
            (claim(1, 10, "a"), Applied::Claimed { token: FencingToken(10), node_id: "a".into() }),
            (mkdir(2, "w1", 10, "/a"), Applied::Changed),
            (put(3, "w2", 10, "k"), Applied::Changed),
            (mkdir(4, "w1", 10, "/a"), Applied::Duplicate { first_seq: 2 }),
            (claim(5, 20, "b"), Applied::Claimed { token: FencingToken(20), node_id: "b".into() }),
            (
                mkdir(6, "w3", 10, "/deposed"),
                Applied::StaleToken { token: FencingToken(10), era: Some(FencingToken(20)) },
            ),
            (claim(7, 15, "c"), Applied::StaleToken { token: FencingToken(15), era: Some(FencingToken(20)) }),
            (
                entry(8, "w4", 20, EditOp::Fs(FsOp::Delete { path: "/nope".into(), recursive: false })),
                Applied::Refused { reason: "no such file or directory: /nope".into() },
            ),
            (put(9, "w5", 20, "k"), Applied::Changed),
        ];
        for (e, want) in &journal {
            assert_eq!(&r.apply(e), want, "entry {}", e.seq);
        }
        assert_eq!(r.apply(&journal[2].0), Applied::AlreadyApplied);
        assert_eq!(r.applied(), Some(9));
        assert!(r.is_next(10));
        assert_eq!(r.era().unwrap().token, FencingToken(20));
        assert_eq!(r.write_seq("w1"), Some(2));
        assert_eq!(r.write_seq("w4"), Some(8));
        assert_eq!(r.write_seq("w3"), None);
        assert_eq!(r.write_ack("w5"), Some((9, FencingToken(20))));
        let refused = r.write_record("w4").unwrap();
        assert_eq!((refused.seq, refused.token), (8, FencingToken(20)));
        assert!(matches!(refused.refused, Some(FsError::NotFound { .. })), "{refused:?}");
        assert_eq!(r.write_record("w1").unwrap().refused, None);
        assert_eq!(r.get("k"), Some(&serde_json::json!(9)));
        assert!(r.namespace().stat("/a").is_ok());
        assert!(r.namespace().stat("/early").is_err());
        assert!(r.namespace().stat("/deposed").is_err());
    }
}
