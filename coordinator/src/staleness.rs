//! The staleness bound: how far behind the ensemble a server's answers may be.
//!
//! A follower or observer answers reads from its own tree, and a leader answers them from its
//! own. Cut off from the rest of the ensemble, either would go on answering from a tree that no
//! longer moves, and renewing sessions the ensemble may already have expired. Heard from its
//! leader but slow to apply (a slow disk holds every entry it appends), a follower would go on
//! answering from a tree further behind every second. So every server of an ensemble keeps
//! the time of its last proof of contact, and of a tree that was current then:
//!
//! - a follower or observer: the older of two times. First, the last time it asked its leader
//!   for a read index (the end of the leader's log, under a proof that it still leads: see
//!   [`crate::read_index`]) that it has since applied up to: its tree then holds every write
//!   committed before it asked. It asks every quarter of the bound, at most every 100 ms, and
//!   an AppendEntries does not serve, as the commit index it carries may be older than the
//!   leader's (openraft's replication to a slow follower takes in new commits only between
//!   calls). Second, the last liveness report that leader acknowledged (a leader cut off from
//!   the majority still heartbeats the servers on its side, but acknowledges no report: see
//!   [`crate::liveness`]). Any AppendEntries accepted from a leader counts as contact for
//!   elections ([`LeaderContact::heard`]), not for the bound ([`LeaderContact::current_since`]);
//! - a leader: the start of the last proof round a quorum of voters confirmed (see
//!   [`crate::liveness`]).
//!
//! When that is older than `max_leader_silence_ms`, the server closes its clients'
//! connections and refuses new sessions until it is current again; it takes none at start
//! before it is ([`crate::server`]'s wait for a leader), as a ZooKeeper follower syncs with its
//! leader before it serves. What is bounded, then: a read a follower or observer answers at
//! time `r` reflects every write the ensemble had committed before `r − max_leader_silence_ms −
//! one check` (the check runs every quarter of the bound, at most every 100 ms); a server
//! further behind, cut off or merely slow to apply, refuses instead. A server alone is never
//! stale.
//!
//! [`LeaderContact`] is shared between the peer listener that records contact and the guard
//! that acts on it; [`CommitsTold`] and [`verdict`] are the pure decisions.
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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When this server last had proof of contact with a leader (or, leading, with a quorum), and
/// when it last had it with a tree as current as the leader said then.
#[derive(Debug)]
pub struct LeaderContact {
    origin: Instant,
    /// Milliseconds from `origin` to the last contact, plus one; 0 for none yet.
    last: AtomicU64,
    /// The same, for the last contact whose commit index this server has applied.
    current: AtomicU64,
    /// The commit indexes told and not applied up to yet.
    told: Mutex<CommitsTold>,
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact {
            origin: Instant::now(),
            last: AtomicU64::new(0),
            current: AtomicU64::new(0),
            told: Mutex::new(CommitsTold::default()),
        }
    }
}

impl LeaderContact {
    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.origin).as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    fn since(&self, mark: &AtomicU64, now: Instant) -> Option<Duration> {
        match mark.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(now.saturating_duration_since(self.origin).saturating_sub(Duration::from_millis(ms - 1))),
        }
    }

    /// Records contact proven at `at`; an earlier instant than the one recorded is ignored.
    /// Contact for elections and for a leader's bound; a follower's tree is current only
    /// through [`LeaderContact::told_commit`].
    pub fn heard(&self, at: Instant) {
        self.last.fetch_max(self.ms(at), Ordering::Relaxed);
    }

    /// Records a leader's proof, at `at`, that a quorum still follows it: contact, and a tree as
    /// current as the ensemble's (a leader holds every committed entry), should this server
    /// follow another from now on.
    pub fn proven_leading(&self, at: Instant) {
        self.heard(at);
        self.current.fetch_max(self.ms(at), Ordering::Relaxed);
    }

    /// Records that every write committed before `at` is at or below `index` (a read index
    /// the leader answered to a request sent at `at`), with this server having applied up to
    /// `applied`: its tree is current as of `at` once `applied` reaches `index` (see
    /// [`LeaderContact::caught_up`]).
    pub fn told_commit(&self, at: Instant, index: u64, applied: Option<u64>) {
        self.told.lock().unwrap_or_else(|p| p.into_inner()).told(at, index);
        self.caught_up(applied);
    }

    /// Takes in that this server has applied up to `applied`: every commit index told at or
    /// below it makes the tree current as of its arrival.
    pub fn caught_up(&self, applied: Option<u64>) {
        let resolved = self.told.lock().unwrap_or_else(|p| p.into_inner()).applied(applied);
        if let Some(at) = resolved {
            self.current.fetch_max(self.ms(at), Ordering::Relaxed);
        }
    }

    /// How long before `now` the last contact was, or `None` if there has been none yet.
    pub fn since_contact(&self, now: Instant) -> Option<Duration> {
        self.since(&self.last, now)
    }

    /// How long before `now` the last contact was; since this server started when there has
    /// been none.
    pub fn silent_for(&self, now: Instant) -> Duration {
        self.since_contact(now).unwrap_or_else(|| now.saturating_duration_since(self.origin))
    }

    /// How long before `now` the last contact was whose commit index this server has applied
    /// (as of the last [`LeaderContact::caught_up`]), or `None` if there has been none yet.
    pub fn current_since(&self, now: Instant) -> Option<Duration> {
        self.since(&self.current, now)
    }

    /// As [`LeaderContact::current_since`]; since this server started when there has been none.
    pub fn current_silent_for(&self, now: Instant) -> Duration {
        self.current_since(now).unwrap_or_else(|| now.saturating_duration_since(self.origin))
    }
}

/// The read indexes a follower's leader told it, each with when the follower asked, that the
/// follower has not applied up to yet: once it has applied up to one, its tree holds every
/// write committed before it asked.
///
/// Only the ones that can still matter are kept: one told later needing no more is always
/// the better proof, so the list rises in both arrival and index. It is bounded by
/// [`CommitsTold::KEPT`]; past it, the two oldest merge into the older arrival with the higher
/// index, which is proven later than either would have been: never sooner.
#[derive(Debug, Default)]
pub struct CommitsTold {
    told: VecDeque<(Instant, u64)>,
}

impl CommitsTold {
    /// How many commit indexes are kept at most.
    pub const KEPT: usize = 128;

    /// Takes in `commit`, told in answer to a request sent at `at` (answers may come back out
    /// of order).
    pub fn told(&mut self, at: Instant, commit: u64) {
        // Made useless by one that arrived no earlier and needs no more.
        if self.told.iter().any(|&(t, c)| t >= at && c <= commit) {
            return;
        }
        // Those it makes useless in turn.
        self.told.retain(|&(t, c)| !(t <= at && c >= commit));
        let place = self.told.iter().position(|&(t, _)| t > at).unwrap_or(self.told.len());
        self.told.insert(place, (at, commit));
        if self.told.len() > Self::KEPT {
            if let (Some((older, _)), Some((_, higher))) = (self.told.pop_front(), self.told.pop_front()) {
                self.told.push_front((older, higher));
            }
        }
    }

    /// Takes in that `applied` is the last index applied; the latest arrival whose commit index
    /// that covers, if any, which is then forgotten with every earlier one.
    pub fn applied(&mut self, applied: Option<u64>) -> Option<Instant> {
        let applied = applied?;
        let mut latest = None;
        while let Some(&(at, commit)) = self.told.front() {
            if commit > applied {
                break;
            }
            latest = Some(at);
            self.told.pop_front();
        }
        latest
    }

    /// How many are kept now.
    pub fn len(&self) -> usize {
        self.told.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.told.is_empty()
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
    fn a_follower_is_current_as_of_the_last_commit_told_that_it_has_applied() {
        let ms = Duration::from_millis;
        let c = LeaderContact::default();
        let t0 = c.origin;
        // Asked under steady writes: each index is applied a few ms after the answer.
        c.told_commit(t0 + ms(100), 10, Some(9));
        assert_eq!(c.current_since(t0 + ms(100)), None, "not current before entry 10 is applied");
        c.caught_up(Some(10));
        assert_eq!(c.current_since(t0 + ms(130)), Some(ms(30)));
        // A slow follower hears its leader on time and falls behind: contact, but no newer tree.
        for (i, index) in [(2, 50), (3, 90), (4, 130), (5, 170)] {
            c.heard(t0 + ms(100 * i));
            c.told_commit(t0 + ms(100 * i), index, Some(40));
        }
        assert_eq!(c.since_contact(t0 + ms(600)), Some(ms(100)), "contact, for elections");
        assert_eq!(c.current_silent_for(t0 + ms(600)), ms(500), "current as of the ask at 100 ms");
        // It applies up to 95: current as of the ask answered with 90.
        c.caught_up(Some(95));
        assert_eq!(c.current_since(t0 + ms(600)), Some(ms(300)));
        // A leader's proof is both.
        c.proven_leading(t0 + ms(700));
        assert_eq!(c.current_since(t0 + ms(700)), Some(ms(0)));
        assert_eq!(c.since_contact(t0 + ms(700)), Some(ms(0)));
        let fresh = LeaderContact::default();
        assert_eq!(fresh.current_silent_for(fresh.origin + ms(5)), ms(5), "since start without any");
    }

    #[test]
    fn commits_told_keep_only_what_can_still_prove_a_tree_current_and_never_too_soon() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut told = CommitsTold::default();
        assert_eq!(told.applied(Some(100)), None, "nothing told");
        told.told(t0 + ms(10), 5);
        told.told(t0 + ms(20), 5);
        assert_eq!(told.len(), 1, "the later arrival needing no more replaces the earlier");
        told.told(t0 + ms(15), 7);
        assert_eq!(told.len(), 1, "an earlier arrival needing more is useless");
        told.told(t0 + ms(30), 9);
        told.told(t0 + ms(40), 8);
        assert_eq!(told.len(), 2, "a new leader's lower commit index makes the higher one useless");
        assert_eq!(told.applied(None), None);
        assert_eq!(told.applied(Some(4)), None);
        assert_eq!(told.applied(Some(5)), Some(t0 + ms(20)));
        assert_eq!(told.applied(Some(8)), Some(t0 + ms(40)));
        assert!(told.is_empty());
        // Bounded: the oldest merge, proven no sooner than either.
        for i in 0..(CommitsTold::KEPT as u64 + 10) {
            told.told(t0 + ms(100 + i), 100 + i);
        }
        assert_eq!(told.len(), CommitsTold::KEPT);
        assert_eq!(told.applied(Some(100)), None, "the first merged into a higher index");
        assert_eq!(told.applied(Some(110)), Some(t0 + ms(100)), "at the oldest arrival");
        assert_eq!(told.applied(Some(111)), Some(t0 + ms(111)));
        assert_eq!(told.applied(Some(1000)), Some(t0 + ms(100 + CommitsTold::KEPT as u64 + 9)));
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
