//! Session liveness: which sessions this server has heard from, and which have gone quiet for
//! longer than their timeout. Pure bookkeeping; time is passed in.
//!
//! Sessions themselves are replicated (opened and closed through the log); liveness is not, since
//! logging every ping would cost a write per client per second. The server whose clients are
//! connected touches their sessions; the leader proposes a close for every session it finds
//! expired. A leader that has just taken office resets every deadline to now + timeout, as
//! ZooKeeper's new leaders do, so no session expires for the time it took to elect one.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::proto::SessionId;

#[derive(Debug, Clone)]
struct Tracked {
    timeout: Duration,
    deadline: Instant,
    /// A close has been proposed; do not propose it again.
    closing: bool,
}

/// Deadlines of the open sessions.
#[derive(Debug, Default)]
pub struct SessionTracker {
    sessions: HashMap<SessionId, Tracked>,
}

impl SessionTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts tracking a session that was just opened (or learned from a snapshot).
    pub fn add(&mut self, id: SessionId, timeout: Duration, now: Instant) {
        self.sessions.insert(id, Tracked { timeout, deadline: now + timeout, closing: false });
    }

    /// Stops tracking a closed session.
    pub fn remove(&mut self, id: SessionId) {
        self.sessions.remove(&id);
    }

    /// Records that the session's client was heard from. False if the session is unknown or
    /// already being closed: the caller must then treat it as expired.
    pub fn touch(&mut self, id: SessionId, now: Instant) -> bool {
        match self.sessions.get_mut(&id) {
            Some(t) if !t.closing => {
                t.deadline = t.deadline.max(now + t.timeout);
                true
            }
            _ => false,
        }
    }

    /// Sets a reconnected session's renegotiated timeout and touches it.
    pub fn reopen(&mut self, id: SessionId, timeout: Duration, now: Instant) -> bool {
        match self.sessions.get_mut(&id) {
            Some(t) if !t.closing => {
                t.timeout = timeout;
                t.deadline = now + timeout;
                true
            }
            _ => false,
        }
    }

    /// Whether the session is tracked and not being closed.
    pub fn is_live(&self, id: SessionId) -> bool {
        self.sessions.get(&id).is_some_and(|t| !t.closing)
    }

    /// Sessions past their deadline, in id order, marked closing so each is returned once.
    pub fn take_expired(&mut self, now: Instant) -> Vec<SessionId> {
        let mut out: Vec<SessionId> = self
            .sessions
            .iter_mut()
            .filter(|(_, t)| !t.closing && t.deadline <= now)
            .map(|(id, t)| {
                t.closing = true;
                *id
            })
            .collect();
        out.sort();
        out
    }

    /// A proposal to close the session failed; let a later pass try again.
    pub fn close_failed(&mut self, id: SessionId) {
        if let Some(t) = self.sessions.get_mut(&id) {
            t.closing = false;
        }
    }

    /// Gives every session a full timeout from now (a new leader's grace).
    pub fn reset_all(&mut self, now: Instant) {
        for t in self.sessions.values_mut() {
            t.deadline = now + t.timeout;
        }
    }

    /// Every tracked session and its deadline, in id order (for `dump`).
    pub fn deadlines(&self) -> Vec<(SessionId, Instant)> {
        let mut out: Vec<_> = self.sessions.iter().map(|(id, t)| (*id, t.deadline)).collect();
        out.sort();
        out
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

    #[test]
    fn expires_quiet_sessions_once() {
        let t0 = Instant::now();
        let mut tr = SessionTracker::new();
        let (a, b) = (SessionId(1), SessionId(2));
        tr.add(a, Duration::from_secs(2), t0);
        tr.add(b, Duration::from_secs(2), t0);
        assert!(tr.take_expired(t0 + Duration::from_millis(1999)).is_empty());
        assert!(tr.touch(b, t0 + Duration::from_secs(1)));
        assert_eq!(tr.take_expired(t0 + Duration::from_secs(2)), vec![a]);
        assert!(tr.take_expired(t0 + Duration::from_secs(2)).is_empty(), "returned once");
        assert!(!tr.touch(a, t0 + Duration::from_secs(2)), "a closing session cannot be revived");
        assert_eq!(tr.take_expired(t0 + Duration::from_secs(3)), vec![b]);
        tr.close_failed(b);
        assert_eq!(tr.take_expired(t0 + Duration::from_secs(3)), vec![b]);
    }

    #[test]
    fn reset_all_grants_a_full_timeout() {
        let t0 = Instant::now();
        let mut tr = SessionTracker::new();
        tr.add(SessionId(1), Duration::from_secs(2), t0);
        tr.reset_all(t0 + Duration::from_secs(10));
        assert!(tr.take_expired(t0 + Duration::from_secs(11)).is_empty());
        assert_eq!(tr.take_expired(t0 + Duration::from_secs(12)).len(), 1);
    }
}
