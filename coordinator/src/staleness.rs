//! The staleness bound: how far behind the ensemble a server's answers may be.
//!
//! A follower or observer answers reads from its own tree, and a leader answers them from its
//! own. Cut off from the rest of the ensemble, either would go on answering from a tree that no
//! longer moves, and renewing sessions the ensemble may already have expired. So every server of
//! an ensemble keeps the time of its last proof of contact:
//!
//! - a follower or observer: the last AppendEntries (a heartbeat or entries) it accepted from a
//!   leader;
//! - a leader: the start of the last read-index round a quorum confirmed.
//!
//! When that is older than `max_leader_silence_ms`, the server closes its clients'
//! connections and refuses new sessions until contact resumes: its clients reconnect to a
//! server that is in contact, and nothing it answers is staler than the bound (plus a check
//! interval). A server alone is never stale.
//!
//! [`LeaderContact`] is shared, lock-free, between the peer listener that records contact and
//! the guard that acts on it; [`verdict`] is the pure decision.
//!
//! The same record tells a voting follower when its leader has gone quiet for good. Openraft
//! 0.9 campaigns only after the voters' lease on the leader (its `election_timeout_max`) *plus*
//! a whole election timeout, counted in 150 ms ticks: 0.9 to 1.35 s after the last heartbeat
//! with a 300 to 600 ms timeout. A voter may grant a vote as soon as its lease has lapsed, so
//! a follower campaigns once the lease and a stagger of its own have passed ([`campaign_due`],
//! [`campaign_wait`]). Elections are always safe in Raft; the lease still protects a live
//! leader from a disruptive candidate, and nothing here changes the staleness bound.

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
    lease + CAMPAIGN_MARGIN + CAMPAIGN_STAGGER * (server_id % 4) as u32
}

/// Whether a voting follower campaigns now: it has heard a leader (`since_contact`, `None` if
/// never: a server that has not found its ensemble yet leaves elections to openraft's own
/// timer), that leader has been silent for `wait`, and this server has not campaigned within
/// `wait` either (`since_campaign`), so a lost election is not retried faster than openraft
/// would.
pub fn campaign_due(since_contact: Option<Duration>, since_campaign: Option<Duration>, wait: Duration) -> bool {
    since_contact.is_some_and(|s| s >= wait) && since_campaign.is_none_or(|c| c >= wait)
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
        assert_eq!(waits, [ms(750), ms(850), ms(950), ms(650)]);
        let wait = waits[0];
        assert!(!campaign_due(None, None, wait), "never heard a leader: openraft's timer decides");
        assert!(!campaign_due(Some(ms(749)), None, wait), "the leader's lease may still hold");
        assert!(campaign_due(Some(ms(750)), None, wait));
        assert!(!campaign_due(Some(ms(900)), Some(ms(100)), wait), "campaigned 100 ms ago");
        assert!(campaign_due(Some(ms(1500)), Some(ms(750)), wait), "the last campaign was lost");
        // Before openraft's own timer (the lease plus a whole election timeout of at least
        // 300 ms), and never before the lease has lapsed.
        assert!(waits.iter().all(|w| *w <= lease + ms(350) && *w > lease), "{waits:?}");
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
