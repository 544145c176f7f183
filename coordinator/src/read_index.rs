//! How the leader of an ensemble proves it still leads, and answers a `sync` with a read index.
//!
//! ZooKeeper's `sync` promises that a read after it sees every write committed before it. A
//! leader of an ensemble keeps that promise in three steps:
//!
//! 1. it notes where its log ends, and the term it leads, from one view of its state
//!    ([`index_to_prove`]);
//! 2. it proves, in a round that starts after that, that a quorum of every voter configuration
//!    still takes its vote ([`prove_once`]): no leader of a later term can have been elected, and
//!    so no write committed in one, before the round started;
//! 3. the caller waits until its server has applied up to that index.
//!
//! Every write committed before step 1 is in this leader's log then (a leader holds every
//! entry committed before its term, and commits nothing it has not logged), at an index no
//! higher than the end noted. Once a server has applied up to that index it has applied them
//! all, whatever entries fill the log up to it meanwhile: committed entries are never replaced.
//! Where the log ends is read from the log store as well as from openraft's metrics: the store
//! holds an entry from the moment openraft appends it, before any follower is sent it, while the
//! metrics are published once per turn of openraft's loop.
//!
//! openraft's own read-index round (`Raft::ensure_linearizable`) does the same, but logs an
//! error for every voter that fails before the quorum answers. A voter that is frozen fills
//! its link's queue, after which every call to it fails at once: the leader logged an error for
//! nearly every `sync` it served, thousands a second under load. Here a link that is down is
//! the link's to report, once, and a round that fails is the caller's error to return.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::{BasicNode, RaftMetrics, ServerState};
use thiserror::Error;
use tokio::task::JoinSet;

use crate::log::LogReader;
use crate::peer::wire::{PeerReply, PeerRequest};
use crate::peer::PeerNetwork;
use crate::raft::Raft;
use crate::rounds::Rounds;

/// How long a leader's proof round may take before it counts as failed: a heartbeat round
/// trip, with room for a loaded server.
pub const PROVE_DEADLINE: Duration = Duration::from_secs(1);

/// Why a leader could not answer a read index.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReadIndexError {
    /// This server does not lead (or not yet with a vote a quorum granted).
    #[error("this server does not lead{}", .leader.map(|l| format!(" (server {l} does)")).unwrap_or_default())]
    NotLeader {
        /// The leader it knows of, if any.
        leader: Option<u64>,
    },
    /// No quorum confirmed it in time.
    #[error("no quorum confirms this leader: {0}")]
    NotConfirmed(String),
    /// It was elected again, in a newer term, while it proved the older one.
    #[error("this server's term changed from {noted} to {proven} while it proved its leadership")]
    TermChanged {
        /// The term noted with the index.
        noted: u64,
        /// The term the round proved.
        proven: u64,
    },
}

/// What a leader proves a read index with: the term it leads and where its log ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// The term this server leads.
    pub term: u64,
    /// The index every write committed so far is at or below.
    pub index: u64,
}

/// Step 1: the term a server with metrics `m` leads and the index its read index must reach,
/// `logged` being the last index in its log store; refused unless it leads under a vote a
/// quorum granted.
pub fn index_to_prove(m: &RaftMetrics<u64, BasicNode>, logged: Option<u64>) -> Result<Reading, ReadIndexError> {
    let leads = m.state == ServerState::Leader && m.vote.is_committed() && m.vote.leader_id().voted_for() == Some(m.id);
    if !leads {
        let leader = m.current_leader.filter(|l| *l != m.id);
        return Err(ReadIndexError::NotLeader { leader });
    }
    let index = m.last_log_index.max(logged).unwrap_or(0);
    Ok(Reading { term: m.vote.leader_id().get_term(), index })
}

/// How a server of an ensemble answers read indexes while it leads: its peers to prove its
/// leadership to, its log store to read where its log ends, and its proof rounds, shared by
/// the read indexes asked while one is under way ([`Rounds`]).
#[derive(Debug, Clone)]
pub struct ReadIndex {
    network: PeerNetwork,
    log: LogReader,
    proofs: Rounds<Result<u64, String>>,
}

impl ReadIndex {
    /// The read index of the server with these peers and this log.
    pub fn new(network: PeerNetwork, log: LogReader) -> Self {
        ReadIndex { network, log, proofs: Rounds::new() }
    }

    /// Steps 1 and 2: the index `raft`'s server must have applied before a read reflects every
    /// write committed before this call, once a quorum has confirmed it still leads in a round
    /// that started after the index was noted. The round under way when this is called, if
    /// any, cannot serve; the next one, shared with every read index asked meanwhile, does:
    /// within twice [`PROVE_DEADLINE`]. The caller waits for the index to be applied (step 3)
    /// on its server.
    pub async fn at_leader(&self, raft: &Raft) -> Result<u64, ReadIndexError> {
        let logged = self.log.last_log_id().map(|l| l.index);
        let reading = index_to_prove(&raft.metrics().borrow(), logged)?;
        let (raft, network) = (raft.clone(), self.network.clone());
        let round = move || {
            let (raft, network) = (raft.clone(), network.clone());
            async move {
                match tokio::time::timeout(PROVE_DEADLINE, prove_once(&raft, &network)).await {
                    Ok(proven) => proven,
                    Err(_) => Err(format!("no quorum answered within {PROVE_DEADLINE:?}")),
                }
            }
        };
        match self.proofs.next(round).await {
            Some(Ok(proven)) if proven == reading.term => Ok(reading.index),
            Some(Ok(proven)) => Err(ReadIndexError::TermChanged { noted: reading.term, proven }),
            Some(Err(why)) => Err(ReadIndexError::NotConfirmed(why)),
            None => Err(ReadIndexError::NotConfirmed("the proof round ended without an answer".into())),
        }
    }
}

/// One proof round: this leader's vote, sent to every other voter as an empty AppendEntries
/// (no previous entry, no commit index: it changes nothing in a follower's log or commit, as a
/// heartbeat does not), until a quorum of every voter configuration, this server included,
/// has accepted it; the term proven. A voter accepts it only while it holds no newer vote, so
/// no leader of a later term can have been elected before the round started (the voters that
/// elect one would include one that accepted this vote first, and a vote never goes back).
/// Each voter's answer is awaited at most [`PROVE_DEADLINE`].
///
/// Refused, with nothing sent, unless this server leads under a granted vote of its own
/// ([`index_to_prove`]'s test, read from the same view as the vote sent). A round may start a
/// second after its callers were admitted, and this server may follow another leader by then:
/// sent under that leader's vote, the round would renew the voters' lease on a leader that did
/// not send it, and reach that leader itself as an AppendEntries of its own term, which
/// openraft takes as from a leader it must follow while it leads.
pub async fn prove_once(raft: &Raft, network: &PeerNetwork) -> Result<u64, String> {
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
    let (id, vote, configs) = {
        let m = raft.metrics();
        let m = m.borrow();
        if let Err(e) = index_to_prove(&m, None) {
            return Err(e.to_string());
        }
        (m.id, m.vote, m.membership_config.membership().get_joint_config().clone())
    };
    let term = vote.leader_id().get_term();
    let mut granted: BTreeSet<u64> = [id].into();
    if crate::staleness::quorum_granted(&configs, &granted) {
        return Ok(term);
    }
    let voters: BTreeSet<u64> = configs.iter().flatten().copied().filter(|v| *v != id).collect();
    let mut answers = JoinSet::new();
    for target in voters {
        let (network, raft, rpc) = (
            network.clone(),
            raft.clone(),
            AppendEntriesRequest { vote, prev_log_id: None, entries: Vec::new(), leader_commit: None },
        );
        answers.spawn(async move {
            let request = PeerRequest::AppendEntries(rpc);
            (target, network.request(&raft, target, request, PROVE_DEADLINE).await)
        });
    }
    let mut failed = Vec::new();
    while let Some(answer) = answers.join_next().await {
        let Ok((target, reply)) = answer else { continue };
        match reply {
            Ok(PeerReply::AppendEntries(Ok(AppendEntriesResponse::HigherVote(newer)))) => {
                return Err(format!("voter {target} holds a newer vote ({newer})"));
            }
            Ok(PeerReply::AppendEntries(Ok(_))) => {
                granted.insert(target);
                if crate::staleness::quorum_granted(&configs, &granted) {
                    return Ok(term);
                }
            }
            Ok(PeerReply::AppendEntries(Err(e))) => failed.push(format!("voter {target}: {e}")),
            Ok(_) => failed.push(format!("voter {target} answered with another reply")),
            Err(e) => failed.push(format!("voter {target}: {e}")),
        }
    }
    Err(format!("confirmed by {granted:?} only; {}", failed.join("; ")))
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId, Vote};

    use super::*;

    fn metrics(state: ServerState, vote: Vote<u64>, last_log_index: Option<u64>) -> RaftMetrics<u64, BasicNode> {
        let mut m = RaftMetrics::new_initial(1);
        m.state = state;
        m.current_term = vote.leader_id().get_term();
        m.vote = vote;
        m.last_log_index = last_log_index;
        m.last_applied = last_log_index.map(|i| LogId::new(CommittedLeaderId::new(vote.leader_id().get_term(), 1), i));
        m
    }

    #[test]
    fn a_leader_under_a_granted_vote_proves_where_its_log_ends_in_its_term() {
        let m = metrics(ServerState::Leader, Vote::new_committed(7, 1), Some(40));
        assert_eq!(index_to_prove(&m, Some(40)), Ok(Reading { term: 7, index: 40 }));
    }

    #[test]
    fn the_log_store_counts_when_openrafts_metrics_have_not_caught_up_with_an_append() {
        let m = metrics(ServerState::Leader, Vote::new_committed(7, 1), Some(40));
        assert_eq!(index_to_prove(&m, Some(43)).map(|r| r.index), Ok(43));
        // And the metrics when the store reads behind them (a purge left no entry to name).
        assert_eq!(index_to_prove(&m, None).map(|r| r.index), Ok(40));
    }

    #[test]
    fn a_server_that_does_not_lead_or_has_no_granted_vote_is_refused_naming_the_leader_it_knows() {
        let mut follower = metrics(ServerState::Follower, Vote::new_committed(7, 2), Some(40));
        follower.current_leader = Some(2);
        assert_eq!(index_to_prove(&follower, Some(40)), Err(ReadIndexError::NotLeader { leader: Some(2) }));
        let candidate = metrics(ServerState::Candidate, Vote::new(8, 1), Some(40));
        assert_eq!(index_to_prove(&candidate, Some(40)), Err(ReadIndexError::NotLeader { leader: None }));
        // Leader in openraft's state but under a vote not granted yet: not proven to lead.
        let ungranted = metrics(ServerState::Leader, Vote::new(8, 1), Some(40));
        assert_eq!(index_to_prove(&ungranted, Some(40)), Err(ReadIndexError::NotLeader { leader: None }));
        // A committed vote for another server, as the metrics of a deposed leader may show.
        let deposed = metrics(ServerState::Leader, Vote::new_committed(8, 2), Some(40));
        assert!(matches!(index_to_prove(&deposed, Some(40)), Err(ReadIndexError::NotLeader { .. })));
    }

    #[test]
    fn errors_say_who_leads_when_known() {
        assert_eq!(
            ReadIndexError::NotLeader { leader: Some(3) }.to_string(),
            "this server does not lead (server 3 does)"
        );
        assert_eq!(ReadIndexError::NotLeader { leader: None }.to_string(), "this server does not lead");
    }
}
