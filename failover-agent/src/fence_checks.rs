//! The fencing chain checked while nothing needs fencing, as Pacemaker monitors its STONITH
//! devices: every `fencing.check_interval_ms` the agent asks every method whether it could
//! fence every configured peer ([`referee_fencing::Fencer::check`], which fences nothing),
//! publishes the reports in `/status` and `/metrics`, and logs a problem when it appears and
//! again when it is gone. A dead BMC, an expired ssh key or a renamed PDU outlet then shows
//! days before the failover that would have needed it, not during it. Checks give way to
//! fences: a round that overlapped one is dropped. An operator can ask for a round at once
//! through the admin API ([`CheckNow`], `referee admin check-fencing`), also when the periodic
//! rounds are off.
//!
//! ```text
//!   every interval ──▶ Fencer::check(peer) for each peer ──▶ status.fencing_checks
//!                                   │
//!                                   └──▶ changes(previous, now) (pure) ──▶ warn / info lines
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use referee_fencing::{CheckReport, FenceTarget, Fencer, Readiness};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::status::AgentStatus;

/// How long after start-up the first check runs: soon enough to show a broken chain at
/// once, after the agent's own start has settled.
pub const FIRST_CHECK_AFTER: Duration = Duration::from_secs(2);

/// The last round of checks, as `/status` serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FencingChecks {
    /// When the round ended (wall clock, ms since the Unix epoch).
    pub at_ms: i64,
    /// Methods with a problem, over every peer.
    pub problems: usize,
    /// One report per configured peer.
    pub peers: Vec<CheckReport>,
}

/// What changed between two rounds, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A method has a problem it did not have (or another one).
    Problem {
        /// The peer.
        node_id: String,
        /// The method's name.
        method: String,
        /// What is wrong.
        reason: String,
    },
    /// A method that had a problem has none now.
    Cleared {
        /// The peer.
        node_id: String,
        /// The method's name.
        method: String,
    },
}

/// The changes from `previous` (none before the first round) to `now`: each problem once when
/// it appears or its reason changes, each recovery once.
pub fn changes(previous: Option<&[CheckReport]>, now: &[CheckReport]) -> Vec<Change> {
    let problem_of = |reports: &[CheckReport], node: &str, level: usize, index: usize| -> Option<String> {
        let report = reports.iter().find(|r| r.node_id == node)?;
        let check = report.checks.iter().find(|c| c.level == level && c.index == index)?;
        match &check.readiness {
            Readiness::Problem { reason } => Some(reason.clone()),
            Readiness::Ready { .. } | Readiness::Unchecked { .. } => None,
        }
    };
    let mut out = Vec::new();
    for report in now {
        for check in &report.checks {
            let before = previous.and_then(|p| problem_of(p, &report.node_id, check.level, check.index));
            let (node_id, method) = (report.node_id.clone(), check.method.clone());
            match (&check.readiness, before) {
                (Readiness::Problem { reason }, Some(old)) if *reason == old => {}
                (Readiness::Problem { reason }, _) => {
                    out.push(Change::Problem { node_id, method, reason: reason.clone() })
                }
                (_, Some(_)) => out.push(Change::Cleared { node_id, method }),
                (_, None) => {}
            }
        }
    }
    out
}

/// Asks the checking task for a round now (the admin API's `POST /admin/check-fencing`) and
/// waits for it: what an operator who has just repaired a BMC or replaced an ssh key runs to
/// see the chain ready again, without waiting for the next round.
#[derive(Debug, Clone)]
pub struct CheckNow {
    asks: mpsc::Sender<oneshot::Sender<Round>>,
}

/// How an asked-for round ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Round {
    /// Every method of every peer was checked; the round is in `/status` as well.
    Done(FencingChecks),
    /// A fence or unfence was running when the round began or began during it, and the
    /// checks gave way to it: the round says nothing of the chain.
    GaveWay,
}

/// Why an asked-for round has no outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckNowError {
    /// The agent is stopping (or its checking task is gone).
    #[error("the agent's fencing checks are not running (it is stopping)")]
    NotRunning,
    /// No round ended within the caller's deadline; it may still be running.
    #[error("no round of fencing checks ended within {0:?}; a method may be slow to answer")]
    TimedOut(Duration),
}

impl CheckNow {
    /// A handle and the receiving end for [`run`].
    pub fn channel() -> (CheckNow, mpsc::Receiver<oneshot::Sender<Round>>) {
        let (asks, rx) = mpsc::channel(16);
        (CheckNow { asks }, rx)
    }

    /// Runs a round that begins after this call (one already running is not taken as the
    /// answer) and returns it, within `limit`.
    pub async fn round(&self, limit: Duration) -> Result<Round, CheckNowError> {
        let (reply, answer) = oneshot::channel();
        let asked = async {
            self.asks.send(reply).await.map_err(|_| CheckNowError::NotRunning)?;
            answer.await.map_err(|_| CheckNowError::NotRunning)
        };
        tokio::time::timeout(limit, asked).await.map_err(|_| CheckNowError::TimedOut(limit))?
    }
}

/// Checks every target every `interval` (the first after [`FIRST_CHECK_AFTER`]; none when
/// `interval` is zero) and whenever `asks` brings a request, until `stopped`, publishing each
/// round in `status`. Requests that arrive during a round are answered by the next one.
pub async fn run(
    fencer: Arc<Fencer>,
    targets: Vec<FenceTarget>,
    interval: Duration,
    status: Arc<Mutex<AgentStatus>>,
    mut asks: mpsc::Receiver<oneshot::Sender<Round>>,
    stopped: impl Future<Output = ()>,
) {
    tokio::pin!(stopped);
    let periodic = !interval.is_zero();
    let mut next = tokio::time::Instant::now() + FIRST_CHECK_AFTER;
    let mut previous: Option<Vec<CheckReport>> = None;
    loop {
        let mut waiting = Vec::new();
        tokio::select! {
            () = &mut stopped => return,
            () = tokio::time::sleep_until(next), if periodic => {}
            Some(reply) = asks.recv() => waiting.push(reply),
        }
        while let Ok(reply) = asks.try_recv() {
            waiting.push(reply);
        }
        // Read before the round: an act running now, or one begun by the end, means the
        // methods gave way to it.
        let begun = fencer.acts_begun();
        let acting = fencer.acting();
        let mut peers = Vec::with_capacity(targets.len());
        for target in &targets {
            tokio::select! {
                () = &mut stopped => return,
                report = fencer.check(target) => peers.push(report),
            }
        }
        if periodic {
            next = tokio::time::Instant::now() + interval;
        }
        // A round that gave way to a fence says nothing of the chain (its methods read
        // "unchecked", and a problem would seem gone): the next one will.
        if acting || fencer.acts_begun() != begun {
            tracing::debug!("fencing checks gave way to a fence; the round is not counted");
            for reply in waiting {
                let _ = reply.send(Round::GaveWay);
            }
            continue;
        }
        for change in changes(previous.as_deref(), &peers) {
            match change {
                Change::Problem { node_id, method, reason } => {
                    warn!(peer = %node_id, %method, "fencing check: {reason}; fencing {node_id} may fail when it is needed")
                }
                Change::Cleared { node_id, method } => {
                    info!(peer = %node_id, %method, "fencing check: the problem is gone")
                }
            }
        }
        let problems = peers.iter().map(|r| r.checks.iter().filter(|c| is_problem(&c.readiness)).count()).sum();
        let at_ms = crate::timeline::wall_us(std::time::SystemTime::now()) / 1000;
        let round = FencingChecks { at_ms, problems, peers: peers.clone() };
        status.lock().unwrap_or_else(|p| p.into_inner()).fencing_checks = Some(round.clone());
        for reply in waiting {
            let _ = reply.send(Round::Done(round.clone()));
        }
        previous = Some(peers);
    }
}

fn is_problem(readiness: &Readiness) -> bool {
    matches!(readiness, Readiness::Problem { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use referee_fencing::{MethodCheck, MethodKind};

    fn report(node: &str, readiness: &[Readiness]) -> CheckReport {
        CheckReport {
            node_id: node.into(),
            checks: readiness
                .iter()
                .enumerate()
                .map(|(level, r)| MethodCheck {
                    level,
                    index: 0,
                    method: format!("m{level}"),
                    kind: MethodKind::Shell,
                    readiness: r.clone(),
                })
                .collect(),
        }
    }

    fn ready() -> Readiness {
        Readiness::Ready { detail: "ok".into() }
    }

    fn problem(why: &str) -> Readiness {
        Readiness::Problem { reason: why.into() }
    }

    #[test]
    fn a_problem_is_told_once_when_it_appears_and_once_when_it_is_gone() {
        let first = [report("b", &[ready(), problem("login refused")])];
        assert_eq!(
            changes(None, &first),
            [Change::Problem { node_id: "b".into(), method: "m1".into(), reason: "login refused".into() }]
        );
        // The same problem again: nothing new to say.
        assert!(changes(Some(&first), &first).is_empty());
        // Another reason is said; a recovery too.
        let second = [report("b", &[ready(), problem("timed out")])];
        assert_eq!(
            changes(Some(&first), &second),
            [Change::Problem { node_id: "b".into(), method: "m1".into(), reason: "timed out".into() }]
        );
        let third = [report("b", &[ready(), ready()])];
        assert_eq!(changes(Some(&second), &third), [Change::Cleared { node_id: "b".into(), method: "m1".into() }]);
        assert!(changes(Some(&third), &third).is_empty());
    }

    #[test]
    fn two_methods_of_one_name_in_a_level_are_told_apart() {
        let level = |first: Readiness, second: Readiness| {
            let check = |index, readiness| MethodCheck {
                level: 0,
                index,
                method: "shell".into(),
                kind: MethodKind::Shell,
                readiness,
            };
            [CheckReport { node_id: "b".into(), checks: vec![check(0, first), check(1, second)] }]
        };
        let before = level(ready(), problem("x"));
        let now = level(problem("x"), ready());
        assert_eq!(
            changes(Some(&before), &now),
            [
                Change::Problem { node_id: "b".into(), method: "shell".into(), reason: "x".into() },
                Change::Cleared { node_id: "b".into(), method: "shell".into() },
            ]
        );
    }

    #[test]
    fn peers_and_unchecked_methods_are_told_apart() {
        let unchecked = Readiness::Unchecked { why: "token".into() };
        let before = [report("b", &[problem("x")]), report("c", &[ready()])];
        let now = [report("b", &[problem("x")]), report("c", &[problem("x")]), report("d", &[unchecked])];
        assert_eq!(
            changes(Some(&before), &now),
            [Change::Problem { node_id: "c".into(), method: "m0".into(), reason: "x".into() }]
        );
    }
}
