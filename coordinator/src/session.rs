//! Session liveness: which sessions this server has heard from, and which have gone quiet for
//! longer than their timeout. Pure bookkeeping; time is passed in.
//!
//! Sessions themselves are replicated (opened and closed through the log); liveness is not, since
//! logging every ping would cost a write per client per second. The server whose clients are
//! connected touches their sessions; the leader proposes a close for every session it finds
//! expired. A leader that has just taken office resets every deadline to now + timeout, as
//! ZooKeeper's new leaders do, so no session expires for the time it took to elect one.
//!
//! Deadlines live in buckets, as in ZooKeeper's `ExpiryQueue`: a session's deadline is rounded
//! up to the next bucket boundary and the session filed under it, a touch moves it to a later
//! bucket, and finding the expired sessions takes the due buckets off the front of an ordered
//! map. So the cost of an expiry pass is the number of sessions it expires, not the number of
//! sessions open, however many a connect/disconnect loop mints; and no session ever expires
//! before its deadline (rounding only goes later).
//!
//! A bucket is [`RESOLUTION`] wide, not a tick as in ZooKeeper: the rounding is added to every
//! host-loss failover (a lost client's lock goes when its session expires), and a tick-wide
//! bucket added up to a whole tick (2 s by default, 200 ms in a failover-tuned ensemble) on top
//! of the session timeout. Finer buckets only mean a busy session is re-filed more often.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::proto::SessionId;

/// The widest a deadline bucket gets, whatever the tick: a session expires at most this long
/// after its deadline (plus the time to the leader's next expiry pass).
pub const RESOLUTION: Duration = Duration::from_millis(10);

#[derive(Debug, Clone)]
struct Tracked {
    timeout: Duration,
    /// The bucket (bucket number since `origin`) the session expires at.
    bucket: u64,
    /// A close has been proposed; do not propose it again.
    closing: bool,
}

/// Deadlines of the open sessions.
#[derive(Debug)]
pub struct SessionTracker {
    /// Bucket width: the tick, at most [`RESOLUTION`].
    tick: Duration,
    /// Bucket 0. Instants before it count as it.
    origin: Instant,
    sessions: HashMap<SessionId, Tracked>,
    /// Sessions by the bucket they expire at. Sessions being closed are in none.
    buckets: BTreeMap<u64, BTreeSet<SessionId>>,
    /// Sessions heard from since [`SessionTracker::take_heard`] last ran, with when each was
    /// last heard: what a follower reports to the leader, which alone expires sessions.
    heard: BTreeMap<SessionId, Instant>,
}

impl SessionTracker {
    /// An empty tracker for a server with this tick, counting from `origin`; its buckets are
    /// the tick wide, or [`RESOLUTION`] if that is narrower.
    pub fn new(tick: Duration, origin: Instant) -> Self {
        SessionTracker {
            tick: tick.clamp(Duration::from_millis(1), RESOLUTION),
            origin,
            sessions: HashMap::new(),
            buckets: BTreeMap::new(),
            heard: BTreeMap::new(),
        }
    }

    /// The width of the buckets (a tick for [`SessionTracker::new`] that keeps them so).
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// When the earliest deadline falls (rounded up to its bucket), if any session is not
    /// already being closed: an expiry pass before then finds nothing, so a driver may sleep
    /// until it.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.buckets.keys().next().map(|b| self.bucket_instant(*b))
    }

    /// The whole buckets from `origin` to `t` (0 for earlier instants).
    fn ticks(&self, t: Instant) -> u64 {
        let elapsed = t.saturating_duration_since(self.origin).as_nanos();
        u64::try_from(elapsed / self.tick.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The bucket of a deadline `timeout` after `now`: the first bucket boundary at or after it.
    fn bucket_for(&self, now: Instant, timeout: Duration) -> u64 {
        let deadline = now.saturating_duration_since(self.origin).saturating_add(timeout).as_nanos();
        let tick = self.tick.as_nanos();
        u64::try_from(deadline.div_ceil(tick)).unwrap_or(u64::MAX)
    }

    fn file(&mut self, id: SessionId, bucket: u64) {
        self.buckets.entry(bucket).or_default().insert(id);
    }

    fn unfile(&mut self, id: SessionId, bucket: u64) {
        if let Some(set) = self.buckets.get_mut(&bucket) {
            set.remove(&id);
            if set.is_empty() {
                self.buckets.remove(&bucket);
            }
        }
    }

    /// Starts tracking a session that was just opened (or learned from a snapshot).
    pub fn add(&mut self, id: SessionId, timeout: Duration, now: Instant) {
        self.remove(id);
        let bucket = self.bucket_for(now, timeout);
        self.sessions.insert(id, Tracked { timeout, bucket, closing: false });
        self.file(id, bucket);
    }

    /// Stops tracking a closed session.
    pub fn remove(&mut self, id: SessionId) {
        if let Some(t) = self.sessions.remove(&id) {
            if !t.closing {
                self.unfile(id, t.bucket);
            }
        }
    }

    /// Moves a live session to the bucket `timeout` after `now`, never to an earlier one.
    fn extend(&mut self, id: SessionId, timeout: Option<Duration>, now: Instant) -> bool {
        let Some(t) = self.sessions.get(&id) else { return false };
        if t.closing {
            return false;
        }
        let (old, timeout) = (t.bucket, timeout.unwrap_or(t.timeout));
        let new = self.bucket_for(now, timeout);
        if let Some(t) = self.sessions.get_mut(&id) {
            t.timeout = timeout;
            t.bucket = new;
        }
        if new != old {
            self.unfile(id, old);
            self.file(id, new);
        }
        true
    }

    /// Records that the session's client was heard from. False if the session is unknown or
    /// already being closed: the caller must then treat it as expired (ZooKeeper's
    /// `touchSession` answers SessionExpired then).
    pub fn touch(&mut self, id: SessionId, now: Instant) -> bool {
        let later = match self.sessions.get(&id) {
            Some(t) if !t.closing => self.bucket_for(now, t.timeout) > t.bucket,
            _ => return false,
        };
        if later {
            self.extend(id, None, now);
        }
        self.note_heard(id, now);
        true
    }

    fn note_heard(&mut self, id: SessionId, at: Instant) {
        let last = self.heard.entry(id).or_insert(at);
        *last = (*last).max(at);
    }

    /// Sets a reconnected session's renegotiated timeout and gives it that long from now.
    pub fn reopen(&mut self, id: SessionId, timeout: Duration, now: Instant) -> bool {
        let open = self.extend(id, Some(timeout), now);
        if open {
            self.note_heard(id, now);
        }
        open
    }

    /// The sessions heard from since the last call, each with when it was last heard,
    /// forgetting them.
    pub fn take_heard(&mut self) -> Vec<(SessionId, Instant)> {
        std::mem::take(&mut self.heard).into_iter().collect()
    }

    /// Puts back sessions taken by [`SessionTracker::take_heard`] whose report did not reach
    /// the leader, so the next report carries them: the replies waiting on the leader's
    /// knowledge of them are released by that one. Each keeps when it was last heard (a later
    /// hearing meanwhile wins), so the report that finally arrives keeps the session alive from
    /// then, not from its own arrival. Sessions closed meanwhile are left out.
    pub fn heard_again(&mut self, sessions: &[(SessionId, Instant)]) {
        for &(id, at) in sessions {
            if self.is_live(id) {
                self.note_heard(id, at);
            }
        }
    }

    /// Whether the session is tracked and not being closed.
    pub fn is_live(&self, id: SessionId) -> bool {
        self.sessions.get(&id).is_some_and(|t| !t.closing)
    }

    /// Sessions whose deadline has passed at `now`, in id order, marked closing so each is
    /// returned once. Only the due buckets are looked at.
    pub fn take_expired(&mut self, now: Instant) -> Vec<SessionId> {
        let due = self.ticks(now);
        let mut out = Vec::new();
        while let Some(entry) = self.buckets.first_entry() {
            if *entry.key() > due {
                break;
            }
            out.extend(entry.remove());
        }
        for id in &out {
            if let Some(t) = self.sessions.get_mut(id) {
                t.closing = true;
            }
        }
        out.sort();
        out
    }

    /// A proposal to close the session failed; let the next pass try again.
    pub fn close_failed(&mut self, id: SessionId, now: Instant) {
        let bucket = self.ticks(now);
        let Some(t) = self.sessions.get_mut(&id) else { return };
        if !t.closing {
            return;
        }
        t.closing = false;
        t.bucket = bucket;
        self.file(id, bucket);
    }

    /// Gives every session that is not being closed a full timeout from now (a new leader's
    /// grace).
    pub fn reset_all(&mut self, now: Instant) {
        self.buckets.clear();
        let live: Vec<(SessionId, Duration)> =
            self.sessions.iter().filter(|(_, t)| !t.closing).map(|(id, t)| (*id, t.timeout)).collect();
        for (id, timeout) in live {
            let bucket = self.bucket_for(now, timeout);
            if let Some(t) = self.sessions.get_mut(&id) {
                t.bucket = bucket;
            }
            self.file(id, bucket);
        }
    }

    /// Up to `max` tracked sessions after `after` in id order, each with the instant it expires
    /// at (for `dump`, which walks them a few at a time).
    pub fn deadlines_after(&self, after: Option<SessionId>, max: usize) -> Vec<(SessionId, Instant)> {
        let mut ids: Vec<SessionId> =
            self.sessions.keys().copied().filter(|id| after.is_none_or(|a| *id > a)).collect();
        ids.sort();
        ids.truncate(max);
        ids.into_iter().filter_map(|id| self.sessions.get(&id).map(|t| (id, self.bucket_instant(t.bucket)))).collect()
    }

    fn bucket_instant(&self, bucket: u64) -> Instant {
        let nanos = u64::try_from(self.tick.as_nanos()).unwrap_or(u64::MAX).saturating_mul(bucket);
        self.origin.checked_add(Duration::from_nanos(nanos)).unwrap_or(self.origin)
    }

    /// Number of tracked sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether no session is tracked.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(100);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn expires_quiet_sessions_once() {
        let t0 = Instant::now();
        let mut tr = SessionTracker::new(TICK, t0);
        let (a, b) = (SessionId(1), SessionId(2));
        tr.add(a, ms(2000), t0);
        tr.add(b, ms(2000), t0);
        assert!(tr.take_expired(t0 + ms(1999)).is_empty());
        assert!(tr.touch(b, t0 + ms(1000)));
        assert_eq!(tr.take_expired(t0 + ms(2000)), vec![a]);
        assert!(tr.take_expired(t0 + ms(2000)).is_empty(), "returned once");
        assert!(!tr.touch(a, t0 + ms(2000)), "a closing session cannot be revived");
        assert!(!tr.is_live(a));
        assert_eq!(tr.take_expired(t0 + ms(3000)), vec![b]);
        tr.close_failed(b, t0 + ms(3000));
        assert_eq!(tr.take_expired(t0 + ms(3000)), vec![b], "a failed close is retried on the next pass");
        tr.remove(a);
        tr.remove(b);
        assert!(tr.is_empty());
        assert!(tr.buckets.is_empty());
    }

    #[test]
    fn sessions_of_a_failed_report_go_into_the_next_one_unless_closed_meanwhile() {
        let t0 = Instant::now();
        let mut tr = SessionTracker::new(TICK, t0);
        let (a, b, c) = (SessionId(1), SessionId(2), SessionId(3));
        for s in [a, b, c] {
            tr.add(s, ms(2000), t0);
        }
        assert!(tr.touch(a, t0 + ms(5)) && tr.touch(a, t0 + ms(10)) && tr.touch(b, t0 + ms(10)));
        let report = tr.take_heard();
        assert_eq!(report, [(a, t0 + ms(10)), (b, t0 + ms(10))], "each with when it was last heard");
        assert!(tr.take_heard().is_empty(), "taken");
        // The report failed; meanwhile c was heard and b expired.
        assert!(tr.touch(c, t0 + ms(20)));
        tr.remove(b);
        tr.heard_again(&report);
        assert_eq!(tr.take_heard(), [(a, t0 + ms(10)), (c, t0 + ms(20))], "a goes again, as heard, with c; b is gone");
        // Failed again, while a was heard once more: the later hearing is reported.
        assert!(tr.touch(a, t0 + ms(30)));
        tr.heard_again(&[(a, t0 + ms(10))]);
        assert_eq!(tr.take_heard(), [(a, t0 + ms(30))]);
    }

    #[test]
    fn deadlines_round_up_to_the_next_bucket_never_down() {
        // Table: (timeout, when added, earliest instant it may expire, first instant it must
        // have expired), all in ms after t0. Rounding goes up to the next 10 ms boundary.
        let cases = [(1000, 0, 1000, 1000), (1055, 0, 1055, 1060), (1000, 33, 1033, 1040), (999, 1, 1000, 1000)];
        for (timeout, added, earliest, due) in cases {
            let t0 = Instant::now();
            let mut tr = SessionTracker::new(TICK, t0);
            tr.add(SessionId(7), ms(timeout), t0 + ms(added));
            assert!(
                tr.take_expired(t0 + ms(earliest - 1)).is_empty(),
                "timeout {timeout} added at {added}: expired before {earliest}"
            );
            let expired_by_due = !tr.take_expired(t0 + ms(due)).is_empty();
            assert!(expired_by_due, "timeout {timeout} added at {added}: not expired at {due}");
        }
    }

    #[test]
    fn a_coarse_tick_does_not_delay_expiry_beyond_the_resolution() {
        // A lost client's session must go within RESOLUTION of its timeout, whatever the tick:
        // rounding to a 2 s (or 200 ms) tick boundary delayed every host-loss failover by up to
        // a tick. Table: (tick, timeout, when last heard), in ms after t0.
        let cases = [(2000, 2500, 0), (2000, 2500, 1130), (200, 2500, 7), (200, 2500, 1943), (5, 2500, 3)];
        for (tick, timeout, heard) in cases {
            let t0 = Instant::now();
            let mut tr = SessionTracker::new(ms(tick), t0);
            let s = SessionId(5);
            tr.add(s, ms(timeout), t0);
            assert!(tr.touch(s, t0 + ms(heard)));
            let deadline = t0 + ms(heard + timeout);
            assert!(
                tr.take_expired(deadline - ms(1)).is_empty(),
                "tick {tick}, heard at {heard}: expired before the timeout"
            );
            let next = tr.next_deadline().expect("a deadline");
            assert!(next >= deadline && next <= deadline + RESOLUTION, "tick {tick}, heard at {heard}: next deadline");
            assert_eq!(
                tr.take_expired(deadline + RESOLUTION),
                vec![s],
                "tick {tick}, heard at {heard}: not expired within {RESOLUTION:?} of the timeout"
            );
            assert_eq!(tr.next_deadline(), None, "a closing session has no deadline");
        }
    }

    #[test]
    fn touch_moves_a_session_later_only() {
        let t0 = Instant::now();
        let mut tr = SessionTracker::new(TICK, t0);
        let s = SessionId(3);
        tr.add(s, ms(1000), t0);
        for k in 1..=10 {
            assert!(tr.touch(s, t0 + ms(500 * k)));
        }
        assert!(tr.take_expired(t0 + ms(5999)).is_empty());
        assert_eq!(tr.take_expired(t0 + ms(6000)), vec![s]);
        // A reopen with a shorter timeout applies from now.
        let mut tr = SessionTracker::new(TICK, t0);
        tr.add(s, ms(10_000), t0);
        assert!(tr.reopen(s, ms(1000), t0 + ms(100)));
        assert_eq!(tr.take_expired(t0 + ms(1100)), vec![s]);
        assert!(!tr.reopen(SessionId(99), ms(1000), t0), "unknown sessions cannot be reopened");
        assert!(!tr.touch(SessionId(99), t0), "unknown sessions are expired");
    }

    #[test]
    fn an_expiry_pass_looks_only_at_due_buckets() {
        let t0 = Instant::now();
        let mut tr = SessionTracker::new(TICK, t0);
        for i in 0..10_000 {
            tr.add(SessionId(i + 1), ms(1000 + (i as u64 % 50) * 100), t0);
        }
        assert_eq!(tr.buckets.len(), 50, "sessions share buckets");
        assert!(tr.take_expired(t0 + ms(999)).is_empty());
        assert_eq!(tr.take_expired(t0 + ms(1000)).len(), 200);
        assert_eq!(tr.buckets.len(), 49, "the due bucket is gone, the others untouched");
    }

    #[test]
    fn reset_all_grants_a_full_timeout() {
        let t0 = Instant::now();
        let mut tr = SessionTracker::new(TICK, t0);
        tr.add(SessionId(1), ms(2000), t0);
        tr.add(SessionId(2), ms(2000), t0);
        assert_eq!(tr.take_expired(t0 + ms(2000)).len(), 2);
        tr.add(SessionId(3), ms(2000), t0);
        tr.reset_all(t0 + ms(10_000));
        assert!(tr.take_expired(t0 + ms(11_999)).is_empty());
        assert_eq!(tr.take_expired(t0 + ms(12_000)), vec![SessionId(3)], "closing sessions stay closing");
        let dl = tr.deadlines_after(None, 10);
        assert_eq!(dl.len(), 3);
        assert_eq!(tr.deadlines_after(Some(SessionId(1)), 1).len(), 1);
    }
}
