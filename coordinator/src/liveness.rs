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
//! deadline, which ends it too. The leader itself touches sessions as their requests arrive and
//! never waits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::proto::SessionId;

/// How long before a request's arrival the leader's last touch of its session may have been.
pub const SLACK: Duration = Duration::from_millis(100);
/// How often a server that does not lead reports the sessions it heard from.
pub const REPORT_EVERY: Duration = Duration::from_millis(25);

/// Which sessions the leader has confirmed alive, and when the confirming report was sent.
#[derive(Debug)]
pub struct LivenessGate {
    confirmed: Mutex<HashMap<SessionId, Instant>>,
    /// Bumped on every acknowledged report.
    acks: watch::Sender<u64>,
    /// Asks the reporter for a report now.
    report_now: Notify,
}

impl Default for LivenessGate {
    fn default() -> Self {
        LivenessGate { confirmed: Mutex::default(), acks: watch::Sender::new(0), report_now: Notify::new() }
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

    /// The leader acknowledged a report of `sessions` sent at `sent`, naming `expired` as no
    /// longer alive there.
    pub fn acknowledged(&self, sessions: &[SessionId], expired: &[SessionId], sent: Instant) {
        let mut confirmed = self.confirmed();
        for s in sessions {
            if expired.contains(s) {
                confirmed.remove(s);
            } else {
                let at = confirmed.entry(*s).or_insert(sent);
                *at = (*at).max(sent);
            }
        }
        drop(confirmed);
        self.acks.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Forgets the sessions `keep` says no: closed ones.
    pub fn retain(&self, keep: impl Fn(SessionId) -> bool) {
        self.confirmed().retain(|s, _| keep(*s));
    }

    /// Waits until [`LivenessGate::covered`] holds or `leads()` does (a leader needs no
    /// report), asking the reporter for a report at once; gives up after `limit`.
    pub async fn wait_covered(
        &self,
        session: SessionId,
        arrived: Instant,
        limit: Duration,
        leads: impl Fn() -> bool,
    ) -> Result<(), NotConfirmed> {
        let began = tokio::time::Instant::now();
        let mut acks = self.acks.subscribe();
        loop {
            if leads() || self.covered(session, arrived) {
                return Ok(());
            }
            self.report_now.notify_one();
            let left = limit.saturating_sub(began.elapsed());
            // Woken by the next acknowledged report, or at least every REPORT_EVERY (in case
            // this server was made leader meanwhile).
            let wait = left.min(REPORT_EVERY * 4);
            if left.is_zero() {
                return Err(NotConfirmed { session, waited: began.elapsed() });
            }
            let _ = tokio::time::timeout(wait, acks.changed()).await;
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

    #[test]
    fn a_reply_is_covered_only_by_a_report_sent_within_the_slack_before_its_request() {
        let gate = LivenessGate::default();
        let s = SessionId(7);
        let t0 = Instant::now();
        let arrived = t0 + Duration::from_millis(500);
        assert!(!gate.covered(s, arrived), "never reported");
        gate.acknowledged(&[s], &[], arrived - SLACK - Duration::from_millis(1));
        assert!(!gate.covered(s, arrived), "a report sent before the slack does not cover");
        gate.acknowledged(&[s], &[], arrived - SLACK);
        assert!(gate.covered(s, arrived));
        gate.acknowledged(&[s], &[], t0);
        assert!(gate.covered(s, arrived), "an older acknowledgement never moves the confirmation back");
        gate.acknowledged(&[s], &[s], arrived + Duration::from_millis(5));
        assert!(!gate.covered(s, arrived), "a session the leader no longer holds is not covered");
    }

    #[tokio::test]
    async fn a_waiting_reply_asks_for_a_report_and_goes_once_acknowledged() {
        let gate = std::sync::Arc::new(LivenessGate::default());
        let s = SessionId(9);
        let arrived = Instant::now();
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.wait_covered(s, arrived, Duration::from_secs(5), || false).await })
        };
        tokio::time::timeout(Duration::from_secs(5), gate.report_requested()).await.expect("a report was asked for");
        gate.acknowledged(&[s], &[], Instant::now());
        let released = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("released").expect("no panic");
        assert_eq!(released, Ok(()));
        let refused = gate.wait_covered(SessionId(10), Instant::now(), Duration::from_millis(30), || false).await;
        assert!(matches!(refused, Err(NotConfirmed { session: SessionId(10), .. })), "{refused:?}");
        assert_eq!(gate.wait_covered(SessionId(10), Instant::now(), Duration::from_millis(30), || true).await, Ok(()));
    }
}
