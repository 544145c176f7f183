//! The staleness bound: how far behind the ensemble a server's answers may be.
//!
//! A follower or observer answers reads from its own tree, and a leader answers them from its
//! own. Cut off from the rest of the ensemble, either would go on answering from a tree that no
//! longer moves, and renewing sessions the ensemble may already have expired. So every server of
//! an ensemble keeps the time of its last proof of contact:
//!
//! - a follower or observer: the last AppendEntries (a heartbeat or entries) it accepted from a
//!   leader, and the last liveness report that leader acknowledged, whichever is older (a
//!   leader cut off from the majority still heartbeats the servers on its side, but
//!   acknowledges no report: see [`crate::liveness`]);
//! - a leader: the start of the last proof round a quorum of voters confirmed (see
//!   [`crate::liveness`]).
//!
//! When that is older than `max_leader_silence_ms`, the server closes its clients'
//! connections and refuses new sessions until contact resumes: its clients reconnect to a
//! server that is in contact, and nothing it answers is staler than the bound (plus a check
//! interval). A server alone is never stale.
//!
//! [`LeaderContact`] is shared, lock-free, between the peer listener that records contact and
//! the guard that acts on it; [`verdict`] is the pure decision.
//!
//! The same record decides elections ([`campaign_due`], [`pre_vote_grant`]). Openraft 0.9
//! campaigns only after the voters' lease on the leader (its `election_timeout_max`) *plus* a
//! whole election timeout, counted in 150 ms ticks: 0.9 to 1.35 s after the last heartbeat with
//! a 300 to 600 ms timeout. And it has no pre-vote: a follower cut off from the rest raises its
//! term at every timeout, and when the cut heals that term deposes the working leader (its
//! next AppendEntries is answered with the higher vote), for an election the cut-off follower,
//! behind in the log, cannot even win. So in an ensemble openraft's own timer is off, and a
//! voting follower or candidate campaigns itself:
//!
//! 1. once the leader has been silent past the voters' lease (no lease before it has heard of
//!    any leader since it started: [`lease_to_wait`]), a margin and a stagger by server id
//!    ([`campaign_wait`]), and it has not campaigned within that wait;
//! 2. after a pre-vote: it asks every other voter whether it would vote for a log ending where
//!    its own does, without raising any term. A voter says yes when it does not lead, has
//!    heard no leader for the lease either, and the asker's log is at least as up to date as
//!    its own ([`pre_vote_grant`]). Only with a quorum of yeses, itself included, in every
//!    configuration of the membership ([`quorum_granted`]), does it call the election, and
//!    only if its term and leader are still the ones it decided under and no leader was heard
//!    while it waited ([`still_lapsed`]). It stops waiting at the quorum's last yes.
//!
//! A follower cut off from the rest hears no yes, keeps its term, and rejoins the leader it
//! left when the cut heals. Elections are always safe in Raft; the pre-vote only decides when
//! one is worth its disruption, and nothing here changes the staleness bound.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When this server last had proof of contact with a leader (or, leading, with a quorum).
#[derive(Debug)]
pub struct LeaderContact {
    origin: Instant,
    /// Milliseconds from `origin` to the last contact, plus one; 0 for none yet.
    last: AtomicU64,
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact { origin: Instant::now(), last: AtomicU64::new(0) }
    }
}

impl LeaderContact {
    /// Records contact proven at `at`; an earlier instant than the one recorded is ignored.
    pub fn heard(&self, at: Instant) {
        let ms = u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX - 1) + 1;
        self.last.fetch_max(ms, Ordering::Relaxed);
    }

    /// How long before `now` the last contact was, or `None` if there has been none yet.
    pub fn since_contact(&self, now: Instant) -> Option<Duration> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(now.saturating_duration_since(self.origin).saturating_sub(Duration::from_millis(ms - 1))),
        }
    }

    /// How long before `now` the last contact was; since this server started when there has
    /// been none.
    pub fn silent_for(&self, now: Instant) -> Duration {
        let since_start = now.saturating_duration_since(self.origin);
        match self.last.load(Ordering::Relaxed) {
            0 => since_start,
            ms => since_start.saturating_sub(Duration::from_millis(ms - 1)),
        }
    }
}

/// What a server of an ensemble does with its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve them.
    Serve,
    /// Close their connections and refuse new sessions: silent this long, past the bound.
    Refuse {
        /// How long the server has been without contact.
        silent_for: Duration,
    },
}

/// The decision: a server silent for longer than `bound` refuses its clients.
pub fn verdict(silent_for: Duration, bound: Duration) -> Verdict {
    if silent_for > bound {
        Verdict::Refuse { silent_for }
    } else {
        Verdict::Serve
    }
}

/// The voters' lease on their leader: openraft 0.9 refuses every vote while its vote is
/// committed and the leader was heard within this long (it is the election timeout's maximum).
pub const LEASE: Duration = Duration::from_millis(600);

/// How long after the voters' lease the first of them campaigns (see [`campaign_wait`]): the
/// voters heard the leader's last heartbeat within a few milliseconds of each other, so each
/// one's lease has lapsed by then.
pub const CAMPAIGN_MARGIN: Duration = Duration::from_millis(50);

/// The step between the voters' campaign delays (see [`campaign_wait`]): longer than a vote's
/// round trip and the election's first commit on a loaded server, so a voter that campaigns
/// first has won (and been heard) before the next one starts. A shorter step was measured to
/// let the second campaign overtake the first one's victory on a busy machine.
pub const CAMPAIGN_STAGGER: Duration = Duration::from_millis(100);

/// How long a voting follower waits after its last contact with a leader before it campaigns:
/// the voters' `lease` on that leader (they refuse any vote before it lapses), a margin, and a
/// stagger by server id (0 to 3 steps of [`CAMPAIGN_STAGGER`]) so that two followers rarely
/// split the vote.
pub fn campaign_wait(lease: Duration, server_id: u64) -> Duration {
    lease + CAMPAIGN_MARGIN + CAMPAIGN_STAGGER * (server_id.saturating_sub(1) % 4) as u32
}

/// The lease a voting follower waits out before it campaigns ([`campaign_wait`]): the voters'
/// `lease` on their leader once this server has heard of a leader or seen an election since it
/// started (`heard`), and none before. Nobody holds a lease on a leader this server has not
/// heard: the voters that started with it read their votes back as not yet granted
/// ([`crate::log::LogStore::free_to_vote_at_start`]), and a voter that hears a leader refuses
/// the pre-vote ([`pre_vote_grant`]). So an ensemble restarted as a whole elects a leader as
/// soon as a quorum is up, and a voter restarted alone asks in vain until the leader's first
/// heartbeat reaches it, each refusal costing nobody a term.
pub fn lease_to_wait(lease: Duration, heard: bool) -> Duration {
    if heard {
        lease
    } else {
        Duration::ZERO
    }
}

/// Whether a voting follower or candidate asks for a pre-vote now: no leader has been heard
/// for `silent` (counted from this server's start if none ever was, and from the last change of
/// term seen here: an election under way must not be overtaken), at least `wait`, and this
/// server has not asked within `wait` either (`since_campaign`), so a lost or refused attempt
/// is not retried faster than openraft's own timer would.
pub fn campaign_due(silent: Duration, since_campaign: Option<Duration>, wait: Duration) -> bool {
    silent >= wait && since_campaign.is_none_or(|c| c >= wait)
}

/// Whether a server grants a pre-vote: it does not lead (`leads`), it has heard no leader for
/// the voters' `lease` (`silent`; `None` if it never has: it would grant a real vote too), and
/// the asker's log ends no earlier than its own (`asker_last >= own_last`, Raft's "at least as
/// up to date": by term, then index). Terms are not compared: a real vote brings a stale
/// candidate up to the higher term, and a pre-vote refused on terms alone could keep the
/// voter with the longest log from ever campaigning.
pub fn pre_vote_grant<L: PartialOrd>(
    leads: bool,
    silent: Option<Duration>,
    lease: Duration,
    asker_last: &L,
    own_last: &L,
) -> bool {
    !leads && silent.is_none_or(|s| s >= lease) && asker_last >= own_last
}

/// What a voter knew when it decided to ask for a pre-vote, and knows again when the answers
/// are in: its term, the leader it knew of, and when it last heard from a leader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElectionView {
    /// The Raft term the server is in.
    pub term: u64,
    /// The leader it knows of in that term, if any.
    pub leader: Option<u64>,
    /// How long before the view was taken it last heard from a leader; `None` if never.
    pub since_contact: Option<Duration>,
}

/// Whether a pre-vote granted by a quorum may still start an election: only when nothing
/// changed while the answers were awaited (`taken_apart`, the time between the two views). A
/// pre-vote waits up to its deadline on a voter that does not answer (a frozen one), and
/// meanwhile another voter may have won an election: the term moved on, or a leader was
/// named, or heard. Starting an election then deposes the leader the ensemble just elected,
/// and once more each time the same race repeats, for as long as the silent voter stays
/// silent.
pub fn still_lapsed(before: &ElectionView, after: &ElectionView, taken_apart: Duration) -> bool {
    let heard_since = after.since_contact.is_some_and(|s| s < taken_apart);
    after.term == before.term && after.leader == before.leader && !heard_since
}

/// Whether the voters in `granted` (the asker among them) are a majority of every voter set in
/// `configs` (one, or two while a membership change is joint).
pub fn quorum_granted(configs: &[std::collections::BTreeSet<u64>], granted: &std::collections::BTreeSet<u64>) -> bool {
    !configs.is_empty() && configs.iter().all(|c| c.intersection(granted).count() * 2 > c.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contact_is_the_latest_heard_and_silence_counts_from_start_without_any() {
        let c = LeaderContact::default();
        let t0 = c.origin;
        assert_eq!(c.silent_for(t0 + Duration::from_millis(700)), Duration::from_millis(700));
        c.heard(t0 + Duration::from_millis(500));
        c.heard(t0 + Duration::from_millis(300));
        assert_eq!(
            c.silent_for(t0 + Duration::from_millis(700)),
            Duration::from_millis(200),
            "an older proof is ignored"
        );
        assert_eq!(c.silent_for(t0 + Duration::from_millis(400)), Duration::ZERO, "never negative");
        assert_eq!(c.since_contact(t0 + Duration::from_millis(700)), Some(Duration::from_millis(200)));
        assert_eq!(LeaderContact::default().since_contact(t0), None, "no contact yet");
    }

    #[test]
    fn a_follower_campaigns_once_the_lease_and_its_stagger_have_passed_and_not_again_at_once() {
        let lease = Duration::from_millis(600);
        let ms = Duration::from_millis;
        let waits: Vec<Duration> = (1..=4).map(|id| campaign_wait(lease, id)).collect();
        assert_eq!(waits, [ms(650), ms(750), ms(850), ms(950)]);
        let wait = waits[1];
        assert!(!campaign_due(ms(749), None, wait), "the leader's lease may still hold");
        assert!(campaign_due(ms(750), None, wait));
        assert!(!campaign_due(ms(900), Some(ms(100)), wait), "campaigned 100 ms ago");
        assert!(campaign_due(ms(1500), Some(ms(750)), wait), "the last campaign was lost");
        // Before openraft's own timer (the lease plus a whole election timeout of at least
        // 300 ms), and never before the lease has lapsed.
        assert!(waits.iter().all(|w| *w <= lease + ms(350) && *w > lease), "{waits:?}");
    }

    #[test]
    fn a_voter_that_has_heard_no_leader_since_it_started_waits_out_no_lease() {
        let lease = Duration::from_millis(600);
        let ms = Duration::from_millis;
        for id in 1..=5 {
            let fresh = campaign_wait(lease_to_wait(lease, false), id);
            let heard = campaign_wait(lease_to_wait(lease, true), id);
            assert_eq!(heard, campaign_wait(lease, id));
            assert_eq!(heard - fresh, lease, "server {id}: only the lease is skipped, not the stagger");
            assert!(fresh >= CAMPAIGN_MARGIN, "server {id}: {fresh:?}");
        }
        // The stagger still orders a whole ensemble's first campaigns by id.
        let first: Vec<Duration> = (1..=3).map(|id| campaign_wait(lease_to_wait(lease, false), id)).collect();
        assert!(first.windows(2).all(|w| w[1] - w[0] == CAMPAIGN_STAGGER), "{first:?}");
        // And a refused one is asked again no sooner than its wait.
        let wait = first[0];
        assert!(campaign_due(wait, None, wait));
        assert!(!campaign_due(wait * 2, Some(wait - ms(1)), wait));
        assert!(campaign_due(wait * 2, Some(wait), wait));
    }

    #[test]
    fn a_pre_vote_is_granted_only_by_a_non_leader_past_the_lease_to_a_log_as_long() {
        let lease = Duration::from_millis(600);
        let ms = Duration::from_millis;
        // Logs as (term, index), ordered as Raft's log ids are.
        let own = (3u64, 10u64);
        // Table: (leads, silent, asker's last, granted, why).
        let cases = [
            (false, Some(ms(600)), (3, 10), true, "past the lease, same log"),
            (false, None, (3, 10), true, "never heard a leader"),
            (false, Some(ms(599)), (3, 10), false, "its leader's lease still holds"),
            (true, None, (9, 99), false, "it leads"),
            (false, Some(ms(900)), (3, 9), false, "the asker's log is shorter"),
            (false, Some(ms(900)), (2, 50), false, "the asker's last entry has an older term"),
            (false, Some(ms(900)), (4, 1), true, "a newer term wins over a longer log"),
            (false, Some(ms(900)), (3, 11), true, "longer, same term"),
        ];
        for (leads, silent, asker, granted, why) in cases {
            assert_eq!(pre_vote_grant(leads, silent, lease, &Some(asker), &Some(own)), granted, "{why}");
        }
        assert!(pre_vote_grant(false, None, lease, &Some((1u64, 1u64)), &None), "an empty log is behind any");
        assert!(!pre_vote_grant(false, None, lease, &None, &Some((1u64, 1u64))), "an empty asker is behind");
    }

    #[test]
    fn a_granted_pre_vote_starts_no_election_once_the_ensemble_has_moved_on() {
        let ms = Duration::from_millis;
        let view = |term, leader, since_contact| ElectionView { term, leader, since_contact };
        // Decided at term 1 under leader 1, silent 860 ms; the answers took 300 ms.
        let before = view(1, Some(1), Some(ms(860)));
        let apart = ms(300);
        // Table: (view when the answers are in, still lapsed, why).
        let cases = [
            (view(1, Some(1), Some(ms(1160))), true, "nothing changed: the leader is still silent"),
            (view(2, Some(2), Some(ms(40))), false, "another voter won the election meanwhile"),
            (view(2, None, Some(ms(1160))), false, "this voter granted another's vote: an election is under way"),
            (view(1, None, Some(ms(1160))), false, "the leader it knew is no longer named"),
            (view(1, Some(1), Some(ms(120))), false, "the leader was heard again while it waited"),
            (view(1, Some(1), Some(ms(300))), true, "heard last just before it decided"),
        ];
        for (after, lapsed, why) in cases {
            assert_eq!(still_lapsed(&before, &after, apart), lapsed, "{why}");
        }
        let never = view(0, None, None);
        assert!(still_lapsed(&never, &never, apart), "a new ensemble's first election");
    }

    #[test]
    fn a_quorum_is_a_majority_of_every_configuration() {
        let set = |v: &[u64]| v.iter().copied().collect::<std::collections::BTreeSet<u64>>();
        let three = [set(&[1, 2, 3])];
        assert!(!quorum_granted(&three, &set(&[1])), "alone of three");
        assert!(quorum_granted(&three, &set(&[1, 3])));
        assert!(!quorum_granted(&three, &set(&[1, 4, 5])), "grants from outside the voters do not count");
        let joint = [set(&[1, 2, 3]), set(&[3, 4, 5])];
        assert!(!quorum_granted(&joint, &set(&[1, 2])), "a majority of the old voters only");
        assert!(quorum_granted(&joint, &set(&[2, 3, 4])));
        assert!(quorum_granted(&[set(&[7])], &set(&[7])), "a sole voter");
        assert!(!quorum_granted(&[], &set(&[1])), "no voters, no quorum");
    }

    #[test]
    fn a_server_past_the_bound_refuses_and_one_within_serves() {
        let bound = Duration::from_millis(1000);
        assert_eq!(verdict(Duration::from_millis(1000), bound), Verdict::Serve);
        assert_eq!(
            verdict(Duration::from_millis(1001), bound),
            Verdict::Refuse { silent_for: Duration::from_millis(1001) }
        );
    }
}
