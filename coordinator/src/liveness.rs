//! Session liveness on a server that does not lead: no reply renews a client's idea of its
//! session beyond what the leader knows.
//!
//! Only the leader expires sessions, and it learns that a session connected elsewhere is alive
//! from that server's reports ([`crate::peer::wire::PeerRequest::Touch`]). A client (a failover
//! agent) reasons from its replies: "my session was alive when the server took my request, so the
//! ensemble cannot expire it for a session timeout after I sent it". For that to hold on a
//! follower or observer, the leader must have been told of the session *after* the request
//! arrived, or at most [`SLACK`] before. So before a reply goes out, the writer waits until a
//! report naming the session, sent no earlier than `arrival − SLACK`, has been acknowledged by
//! the leader ([`LivenessGate::wait_covered`]):
//!
//! ```text
//!  request ─▶ reader: heard(session) ─▶ … ─▶ writer: covered? ──no──▶ report now, wait for an ack
//!                                                   │ yes
//!                                                   ▼
//!                                                 reply
//!  reporter (every REPORT_EVERY, or at once when asked): Touch(heard) ─▶ leader ─▶ ack: covered
//! ```
//!
//! A busy session is reported every [`REPORT_EVERY`] and so always covered; an idle one waits
//! one report round trip for its next reply. An agent therefore counts a staleness of
//! [`SLACK`] for a bundled ensemble (`coordinator.max_staleness_ms`). A session the leader no
//! longer holds (expired, or being expired) is never covered: its reply waits until the close
//! reaches this server through the log, which ends the connection, or until the wait's
//! deadline, which ends it too.
//!
//! "The leader" must still be the ensemble's. A leader cut off from the majority goes on
//! believing it leads (Raft lets it), and its heartbeats keep the followers on its side of the
//! cut believing it too, while the majority elects another leader that expires every session
//! it hears nothing of. So a leader's word counts only under a [`Proof`]: the start of a
//! round of empty AppendEntries carrying its vote, which a quorum of voters accepted (a voter
//! accepts it only while it holds no newer vote). No later leader can have
//! been elected before that instant (the quorum that elects one shares a voter with the quorum
//! that confirmed, and that voter confirmed first), and a new leader gives every session a
//! fresh timeout when it takes over. Hence:
//!
//! - the leader acknowledges a report only under a confirmed round that started no more than
//!   [`PROOF_AGE`] before the report arrived ([`QuorumProof::wait_proven`]; the leader proves
//!   itself every [`PROVE_EVERY`], so it usually has one at once), and refuses it if it does
//!   not lead or no such round succeeds in time. The reporter counts the report as sent
//!   [`PROOF_AGE`] earlier than it was: a report it sent at `s` proves the session alive to
//!   no later leader than one elected after `s − PROOF_AGE`. The report says how long before
//!   `s` each session was last heard, at `h`, and the leader keeps it from `h` (a report sent
//!   again after a broken link adds nothing for the outage); so it covers the requests that
//!   arrived until `min(h, s − PROOF_AGE) + SLACK`. A busy session is heard within a report
//!   interval of `s`, and the bound is `s − PROOF_AGE + SLACK`;
//! - the leader's own replies wait, as a follower's do, until a round that started no earlier
//!   than `arrival − SLACK` has been confirmed in its current term ([`proves`]). A new leader
//!   proves nothing before it has applied an entry of its own term, so it does not serve
//!   before it is settled either.
//!
//! A reply from any server of an ensemble thus promises no more than the ensemble keeps: the
//! session outlives the request's sending by its timeout less [`SLACK`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::proto::SessionId;

/// How long before a request's arrival the leader's last touch of its session may have been.
pub const SLACK: Duration = Duration::from_millis(100);
/// How often a server that does not lead reports the sessions it heard from.
pub const REPORT_EVERY: Duration = Duration::from_millis(25);
/// How long before a liveness report arrived the leader's proof may have started for the
/// leader to acknowledge it (see the module docs): two proof intervals, so that a report is
/// acknowledged at once, and a report still covers the requests of the half [`SLACK`] after it.
pub const PROOF_AGE: Duration = Duration::from_millis(50);
/// How often a leader of an ensemble runs a proof round to show it still leads. A round
/// is one heartbeat round trip to the voters; a reply waits for one only when the last
/// confirmed round started more than [`SLACK`] before its request arrived.
pub const PROVE_EVERY: Duration = Duration::from_millis(25);

/// A leader's proof that it led at an instant: a quorum of voters confirmed its `term` in a
/// proof round that started at `started` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proof {
    /// The term confirmed.
    pub term: u64,
    /// When the confirmed round started.
    pub started: Instant,
}

/// Whether `proof` shows that this server, leading `term` now, still led at `since`: no later
/// leader can have been elected before then.
pub fn proves(proof: Option<Proof>, term: u64, since: Instant) -> bool {
    proof.is_some_and(|p| p.term == term && p.started >= since)
}

/// Why a leader could not prove it led after an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unproven {
    /// This server does not lead (any more).
    #[error("this server does not lead")]
    NotLeading,
    /// No proof round was confirmed by a quorum in time.
    #[error("no quorum confirmed this leader within {0:?}")]
    NoQuorum(Duration),
}

/// A leader's latest [`Proof`], shared by the task that proves it and everyone who relies on
/// it; a waiter is woken by each new proof.
#[derive(Debug)]
pub struct QuorumProof {
    last: watch::Sender<Option<Proof>>,
}

impl Default for QuorumProof {
    fn default() -> Self {
        QuorumProof { last: watch::Sender::new(None) }
    }
}

impl QuorumProof {
    /// A quorum confirmed `term` in a round that started at `started`. A proof of an older
    /// term, or an earlier start, never replaces a newer one.
    pub fn confirmed(&self, term: u64, started: Instant) {
        self.last.send_if_modified(|last| {
            let newer = last.is_none_or(|p| (term, started) > (p.term, p.started));
            if newer {
                *last = Some(Proof { term, started });
            }
            newer
        });
    }

    /// The latest proof.
    pub fn last(&self) -> Option<Proof> {
        *self.last.borrow()
    }

    /// Waits until a proof shows that this server, leading in the term `leading()` gives
    /// (`None` when it does not lead), led at `since`; gives up when it does not lead, or after
    /// `limit`.
    pub async fn wait_proven(
        &self,
        leading: impl Fn() -> Option<u64>,
        since: Instant,
        limit: Duration,
    ) -> Result<(), Unproven> {
        let mut proofs = self.last.subscribe();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let Some(term) = leading() else { return Err(Unproven::NotLeading) };
            if proves(*proofs.borrow_and_update(), term, since) {
                return Ok(());
            }
            // Woken by each new proof, and every round's interval in case the role changed.
            let wake = deadline.min(tokio::time::Instant::now() + PROVE_EVERY * 4);
            if tokio::time::Instant::now() >= deadline {
                return Err(Unproven::NoQuorum(limit));
            }
            let _ = tokio::time::timeout_at(wake, proofs.changed()).await;
        }
    }
}

/// Which sessions the leader has confirmed alive, and when the confirming report was sent.
#[derive(Debug)]
pub struct LivenessGate {
    confirmed: Mutex<HashMap<SessionId, Instant>>,
    /// Bumped on every acknowledged report.
    acks: watch::Sender<u64>,
    /// Asks the reporter for a report now.
    report_now: Notify,
    /// This server's proof of leadership, for its replies while it leads.
    proof: std::sync::Arc<QuorumProof>,
}

impl LivenessGate {
    /// A gate whose replies, while this server leads, rest on `proof`.
    pub fn new(proof: std::sync::Arc<QuorumProof>) -> Self {
        LivenessGate { confirmed: Mutex::default(), acks: watch::Sender::new(0), report_now: Notify::new(), proof }
    }
}

/// Why a reply could not be released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the leader has not confirmed session {session} alive within {waited:?}")]
pub struct NotConfirmed {
    /// The session.
    pub session: SessionId,
    /// How long the reply waited.
    pub waited: Duration,
}

impl LivenessGate {
    fn confirmed(&self) -> std::sync::MutexGuard<'_, HashMap<SessionId, Instant>> {
        self.confirmed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a reply to a request of `session` that arrived at `arrived` may go out: the
    /// leader acknowledged a report naming the session sent no earlier than `arrived − SLACK`.
    pub fn covered(&self, session: SessionId, arrived: Instant) -> bool {
        let floor = arrived.checked_sub(SLACK).unwrap_or(arrived);
        self.confirmed().get(&session).is_some_and(|sent| *sent >= floor)
    }

    /// The leader acknowledged a report sent at `sent` of `sessions`, each with when it was
    /// last heard, naming `expired` as no longer alive there. The report counts as sent
    /// [`PROOF_AGE`] earlier, and a session as confirmed no later than it was heard (the
    /// leader keeps it from then: see the module docs).
    pub fn acknowledged(&self, sessions: &[(SessionId, Instant)], expired: &[SessionId], sent: Instant) {
        let sent = sent.checked_sub(PROOF_AGE).unwrap_or(sent);
        let mut confirmed = self.confirmed();
        for &(s, heard) in sessions {
            if expired.contains(&s) {
                confirmed.remove(&s);
            } else {
                let alive = sent.min(heard);
                let at = confirmed.entry(s).or_insert(alive);
                *at = (*at).max(alive);
            }
        }
        drop(confirmed);
        self.acks.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Forgets the sessions `keep` says no: closed ones.
    pub fn retain(&self, keep: impl Fn(SessionId) -> bool) {
        self.confirmed().retain(|s, _| keep(*s));
    }

    /// Whether a reply to a request that arrived at `arrived` may go out from a leader of
    /// `term`: it proved it led no earlier than `arrival − SLACK`.
    pub fn leader_covers(&self, term: u64, arrived: Instant) -> bool {
        proves(self.proof.last(), term, arrived.checked_sub(SLACK).unwrap_or(arrived))
    }

    /// Waits until the reply may go out: while this server leads (`leading()` gives its term),
    /// until [`LivenessGate::leader_covers`] holds; otherwise until [`LivenessGate::covered`]
    /// does, asking the reporter for a report at once. Gives up after `limit`.
    pub async fn wait_covered(
        &self,
        session: SessionId,
        arrived: Instant,
        limit: Duration,
        leading: impl Fn() -> Option<u64>,
    ) -> Result<(), NotConfirmed> {
        let covered = |leading: Option<u64>| match leading {
            Some(term) => self.leader_covers(term, arrived),
            None => self.covered(session, arrived),
        };
        if covered(leading()) {
            return Ok(());
        }
        let began = tokio::time::Instant::now();
        let mut acks = self.acks.subscribe();
        let mut proofs = self.proof.last.subscribe();
        loop {
            match leading() {
                Some(term) if self.leader_covers(term, arrived) => return Ok(()),
                Some(_) => {}
                None if self.covered(session, arrived) => return Ok(()),
                None => self.report_now.notify_one(),
            }
            let left = limit.saturating_sub(began.elapsed());
            // Woken by the next acknowledged report or proof, or at least every REPORT_EVERY
            // × 4 (in case this server's role changed meanwhile).
            let wait = left.min(REPORT_EVERY * 4);
            if left.is_zero() {
                return Err(NotConfirmed { session, waited: began.elapsed() });
            }
            let _ = tokio::time::timeout(wait, async {
                tokio::select! {
                    _ = acks.changed() => {}
                    _ = proofs.changed() => {}
                }
            })
            .await;
        }
    }

    /// Completes when some waiting reply asks for a report now.
    pub async fn report_requested(&self) {
        self.report_now.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate() -> LivenessGate {
        LivenessGate::new(std::sync::Arc::default())
    }

    #[test]
    fn a_reply_is_covered_only_by_a_report_sent_within_the_slack_before_its_request() {
        let gate = gate();
        let s = SessionId(7);
        let t0 = Instant::now();
        let arrived = t0 + Duration::from_millis(500);
        assert!(!gate.covered(s, arrived), "never reported");
        // A report counts as sent PROOF_AGE before it was (the leader's proof may be that old).
        let earliest = arrived - SLACK + PROOF_AGE;
        let now = arrived + Duration::from_millis(5);
        gate.acknowledged(&[(s, earliest - Duration::from_millis(1))], &[], earliest - Duration::from_millis(1));
        assert!(!gate.covered(s, arrived), "a report sent before the slack, less the proof's age, does not cover");
        gate.acknowledged(&[(s, arrived - SLACK - Duration::from_millis(1))], &[], now);
        assert!(
            !gate.covered(s, arrived),
            "a report sent after the request, of a hearing before the slack (sent again after a failure), does not \
             cover: the leader keeps the session from that hearing"
        );
        gate.acknowledged(&[(s, earliest)], &[], earliest);
        assert!(gate.covered(s, arrived));
        gate.acknowledged(&[(s, t0)], &[], t0);
        assert!(gate.covered(s, arrived), "an older acknowledgement never moves the confirmation back");
        gate.acknowledged(&[(s, now)], &[s], now);
        assert!(!gate.covered(s, arrived), "a session the leader no longer holds is not covered");
    }

    #[tokio::test]
    async fn a_waiting_reply_asks_for_a_report_and_goes_once_acknowledged() {
        let gate = std::sync::Arc::new(gate());
        let s = SessionId(9);
        let arrived = Instant::now();
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.wait_covered(s, arrived, Duration::from_secs(5), || None).await })
        };
        tokio::time::timeout(Duration::from_secs(5), gate.report_requested()).await.expect("a report was asked for");
        let now = Instant::now();
        gate.acknowledged(&[(s, now)], &[], now);
        let released = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("released").expect("no panic");
        assert_eq!(released, Ok(()));
        let refused = gate.wait_covered(SessionId(10), Instant::now(), Duration::from_millis(30), || None).await;
        assert!(matches!(refused, Err(NotConfirmed { session: SessionId(10), .. })), "{refused:?}");
    }

    #[test]
    fn a_proof_covers_only_its_own_term_from_its_start_on_and_never_moves_back() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let proof = QuorumProof::default();
        assert!(!proves(proof.last(), 1, t0), "no round confirmed yet: a new leader is not settled");
        proof.confirmed(3, t0 + ms(100));
        assert!(proves(proof.last(), 3, t0 + ms(100)));
        assert!(!proves(proof.last(), 3, t0 + ms(101)), "a round that started before the instant proves nothing of it");
        assert!(!proves(proof.last(), 4, t0), "a proof of an earlier term says nothing of this one");
        proof.confirmed(3, t0 + ms(50));
        assert_eq!(proof.last(), Some(Proof { term: 3, started: t0 + ms(100) }), "an older round is ignored");
        proof.confirmed(2, t0 + ms(900));
        assert_eq!(proof.last(), Some(Proof { term: 3, started: t0 + ms(100) }), "an older term is ignored");
        proof.confirmed(4, t0 + ms(60));
        assert_eq!(proof.last(), Some(Proof { term: 4, started: t0 + ms(60) }), "a newer term replaces it");
    }

    #[tokio::test]
    async fn a_leaders_reply_waits_for_a_proof_no_older_than_the_slack_before_its_request() {
        let proof = std::sync::Arc::new(QuorumProof::default());
        let gate = std::sync::Arc::new(LivenessGate::new(proof.clone()));
        let s = SessionId(11);
        let arrived = Instant::now();
        // A proof from before the slack, or of the term this server led before, covers nothing.
        proof.confirmed(5, arrived - SLACK - Duration::from_millis(1));
        assert!(!gate.leader_covers(5, arrived));
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.wait_covered(s, arrived, Duration::from_secs(5), || Some(6)).await })
        };
        proof.confirmed(6, arrived - SLACK);
        let released = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("released").expect("no panic");
        assert_eq!(released, Ok(()), "a proof of the current term within the slack releases the reply");
        // A leader that cannot prove itself (cut off from the quorum) holds its replies.
        let later = Instant::now() + SLACK + Duration::from_millis(1);
        let held = gate.wait_covered(s, later, Duration::from_millis(60), || Some(6)).await;
        assert!(matches!(held, Err(NotConfirmed { .. })), "{held:?}");
    }

    #[tokio::test]
    async fn a_report_is_acknowledged_only_after_a_round_that_started_after_it_arrived() {
        let proof = std::sync::Arc::new(QuorumProof::default());
        let received = Instant::now();
        proof.confirmed(2, received - Duration::from_millis(1));
        let waiter = {
            let proof = proof.clone();
            tokio::spawn(async move { proof.wait_proven(|| Some(2), received, Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a round that started before the report proves nothing of it");
        proof.confirmed(2, received + Duration::from_millis(3));
        let proven = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("answered").expect("no panic");
        assert_eq!(proven, Ok(()));
        assert_eq!(proof.wait_proven(|| None, received, Duration::from_secs(5)).await, Err(Unproven::NotLeading));
        let late = Instant::now() + Duration::from_secs(1);
        let unproven = proof.wait_proven(|| Some(2), late, Duration::from_millis(40)).await;
        assert!(matches!(unproven, Err(Unproven::NoQuorum(_))), "{unproven:?}");
    }
}
