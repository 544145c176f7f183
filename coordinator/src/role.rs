//! What a server's long-running tasks follow of its Raft role, woken only when it changes.
//!
//! openraft publishes its metrics three ways. The whole [`openraft::RaftMetrics`] is sent again
//! after every step of its core that changes anything, several times per write (appended,
//! committed, applied), and every receiver wakes each time. The server metrics (role, vote,
//! leader, membership) are sent only when one of them changes, the data metrics (last log,
//! last applied, ...) when those change.
//!
//! The server's own watchers (session expiry, the storage-failure guard, the role log, the
//! members' znode) care about the role, and about applies only in the moment after an
//! election: a leader serves once it has applied an entry of its own term. [`RoleWatch`]
//! therefore waits on the server metrics, and on the data metrics only while this server leads
//! a term it has not applied an entry of yet. Under write load that is no wake-up per write
//! instead of one per metrics report per watcher (about a dozen per write at one session, each
//! a wake of a parked thread).

use openraft::metrics::{RaftDataMetrics, RaftServerMetrics};
use openraft::{BasicNode, LogId, ServerState};
use tokio::sync::watch;

use crate::raft::Raft;

/// Raft stopped: the metrics' sender is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("replication stopped")]
pub struct RaftStopped;

/// A server's role, as its long-running tasks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// This server's id.
    pub id: u64,
    /// Leader, follower, candidate, learner (an observer) or shut down.
    pub state: ServerState,
    /// The current term.
    pub term: u64,
    /// The leader this server knows of.
    pub leader: Option<u64>,
    /// Whether this server leads and has applied an entry of its own term: from then on a
    /// majority holds everything before that entry, and the leader may serve and expire.
    pub settled: bool,
}

impl Role {
    /// The role the two metrics describe.
    pub fn of(server: &RaftServerMetrics<u64, BasicNode>, last_applied: Option<LogId<u64>>) -> Role {
        let term = server.vote.leader_id().get_term();
        let leads = server.state == ServerState::Leader;
        Role {
            id: server.id,
            state: server.state,
            term,
            leader: server.current_leader,
            settled: leads && settled_in(term, last_applied),
        }
    }

    /// Whether this server leads (settled or not).
    pub fn leads(&self) -> bool {
        self.state == ServerState::Leader
    }

    /// Whether a change of the last applied entry could change this role: only while it leads
    /// a term it has not applied an entry of.
    fn waits_on_applies(&self) -> bool {
        self.leads() && !self.settled
    }
}

/// Whether the last applied entry is of `term`: for a leader of `term`, whether it is settled.
pub(crate) fn settled_in(term: u64, last_applied: Option<LogId<u64>>) -> bool {
    last_applied.is_some_and(|a| a.leader_id.get_term() == term)
}

/// The term a server with these metrics leads, if it leads and is settled in it.
pub(crate) fn settled_term(m: &openraft::RaftMetrics<u64, BasicNode>) -> Option<u64> {
    (m.state == ServerState::Leader && settled_in(m.current_term, m.last_applied)).then_some(m.current_term)
}

/// Returns once the leader this server knows of is no longer `leader` (another one, or none
/// during an election): from then on a request in flight to `leader` is not worth waiting for.
/// A frozen leader keeps its connections open and answers nothing, so without this a request
/// to it waits out its whole deadline after the ensemble has moved on. Woken only by changes of
/// the server metrics (role, vote, leader), not by writes; never returns if Raft stops (the
/// caller's own deadline ends the wait then).
pub async fn leader_replaced(raft: &Raft, leader: u64) {
    let mut server = raft.server_metrics();
    loop {
        if server.borrow_and_update().current_leader != Some(leader) {
            return;
        }
        if server.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The term this server leads now, if it leads.
pub fn leading_term(raft: &Raft) -> Option<u64> {
    let server = raft.server_metrics();
    let m = server.borrow();
    (m.state == ServerState::Leader).then(|| m.vote.leader_id().get_term())
}

/// The leader this server knows of now.
pub fn current_leader(raft: &Raft) -> Option<u64> {
    raft.server_metrics().borrow().current_leader
}

/// Returns once this server no longer leads `term` (it stepped down, or another term began,
/// even one it leads again), with the leader it knows of then. Openraft answers an entry this
/// server proposed only once this server applies it, and one that lost its leadership and
/// installed the next leader's snapshot never applies it itself: a caller waiting for that
/// answer waits for ever unless it also waits for this. Woken only by changes of the server
/// metrics; never returns if Raft stops.
pub async fn no_longer_leading(raft: &Raft, term: u64) -> Option<u64> {
    let mut server = raft.server_metrics();
    loop {
        {
            let m = server.borrow_and_update();
            if m.state != ServerState::Leader || m.vote.leader_id().get_term() != term {
                return m.current_leader;
            }
        }
        if server.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Follows one server's [`Role`]: see the module docs.
pub struct RoleWatch {
    server: watch::Receiver<RaftServerMetrics<u64, BasicNode>>,
    data: watch::Receiver<RaftDataMetrics<u64>>,
}

impl RoleWatch {
    /// Follows `raft`'s role from now on.
    pub fn new(raft: &Raft) -> Self {
        RoleWatch { server: raft.server_metrics(), data: raft.data_metrics() }
    }

    /// The role now; the next [`RoleWatch::changed`] waits for a change after it.
    pub fn current(&mut self) -> Role {
        let applied = self.data.borrow_and_update().last_applied;
        Role::of(&self.server.borrow_and_update(), applied)
    }

    /// The members of the ensemble as this server last saw them.
    pub fn membership(&self) -> std::sync::Arc<openraft::StoredMembership<u64, BasicNode>> {
        self.server.borrow().membership_config.clone()
    }

    /// Waits until the role may have changed since the last [`RoleWatch::current`]: a change
    /// of the server metrics, or of the last applied entry while [`Role::settled`] could still
    /// become true. May return without a change of [`Role`]; callers read it again.
    pub async fn changed(&mut self) -> Result<(), RaftStopped> {
        let waits_on_applies = {
            let applied = self.data.borrow().last_applied;
            Role::of(&self.server.borrow(), applied).waits_on_applies()
        };
        if waits_on_applies {
            tokio::select! {
                r = self.server.changed() => r.map_err(|_| RaftStopped),
                r = self.data.changed() => r.map_err(|_| RaftStopped),
            }
        } else {
            self.server.changed().await.map_err(|_| RaftStopped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Membership, StoredMembership, Vote};
    use std::collections::BTreeSet;
    use std::sync::Arc;

    fn server(id: u64, state: ServerState, term: u64, leader: Option<u64>) -> RaftServerMetrics<u64, BasicNode> {
        let voters: BTreeSet<u64> = [1, 2, 3].into();
        RaftServerMetrics {
            id,
            vote: Vote::new_committed(term, leader.unwrap_or(id)),
            state,
            current_leader: leader,
            membership_config: Arc::new(StoredMembership::new(None, Membership::new(vec![voters], None))),
        }
    }

    fn applied(term: u64, index: u64) -> Option<LogId<u64>> {
        Some(LogId::new(CommittedLeaderId::new(term, 1), index))
    }

    #[test]
    fn a_leader_is_settled_only_once_it_has_applied_an_entry_of_its_own_term() {
        let leader = server(1, ServerState::Leader, 3, Some(1));
        assert!(!Role::of(&leader, None).settled, "nothing applied");
        assert!(!Role::of(&leader, applied(2, 40)).settled, "only the previous term's entries applied");
        assert!(Role::of(&leader, applied(3, 41)).settled);
        assert!(Role::of(&leader, applied(2, 40)).waits_on_applies());
        assert!(!Role::of(&leader, applied(3, 41)).waits_on_applies());
    }

    #[test]
    fn a_follower_never_waits_on_applies_and_is_never_settled() {
        for state in [ServerState::Follower, ServerState::Candidate, ServerState::Learner] {
            let s = server(2, state, 3, Some(1));
            let role = Role::of(&s, applied(3, 41));
            assert!(!role.settled, "{state:?}");
            assert!(!role.waits_on_applies(), "{state:?}");
            assert_eq!((role.term, role.leader, role.id), (3, Some(1), 2));
        }
    }
}
