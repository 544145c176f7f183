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
