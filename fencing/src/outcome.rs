//! How fence attempts end: per method, per level and overall, and the events recorded for each.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Serialize, Serializer};

/// The kind of a fencing method, as written in the configuration's `kind` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MethodKind {
    /// Ask the old master to step down over its HA endpoint.
    Graceful,
    /// Ask the old host's failover agent to fence its master locally.
    Agent,
    /// Signal the master process on this host until it is verified gone.
    Kill,
    /// Run a configured kill-and-verify command on the target over `ssh`.
    Ssh,
    /// Run a configured program with the target's facts in its environment.
    Shell,
    /// Ask a STONITH, PDU or cloud API to power the target off.
    Http,
    /// Cut the master's port off the network with firewall rules on its host.
    Isolate,
    /// Raise the token floor of a resource that enforces fencing tokens.
    Token,
    /// Power the target off with a Pacemaker / Red Hat cluster fence agent.
    #[serde(rename = "fence_agent")]
    FenceAgent,
    /// Wait out the old active's own watchdog, which resets its host (self-fencing).
    Watchdog,
}

impl MethodKind {
    /// The configuration spelling of this kind.
    pub fn as_str(self) -> &'static str {
        match self {
            MethodKind::Graceful => "graceful",
            MethodKind::Agent => "agent",
            MethodKind::Kill => "kill",
            MethodKind::Ssh => "ssh",
            MethodKind::Shell => "shell",
            MethodKind::Http => "http",
            MethodKind::Isolate => "isolate",
            MethodKind::Token => "token",
            MethodKind::FenceAgent => "fence_agent",
            MethodKind::Watchdog => "watchdog",
        }
    }
}

impl fmt::Display for MethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one method attempt ended. Never a bare `bool`: "don't know" is its own answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum MethodOutcome {
    /// The method verified that the target can no longer serve.
    Fenced {
        /// What was verified, e.g. "pid 4242 gone after SIGKILL".
        detail: String,
    },
    /// The method definitely did not fence the target (refused, not reachable before anything
    /// was done, command exited non-zero).
    Failed {
        /// Why, in a sentence.
        reason: String,
    },
    /// The method cannot tell whether the target is fenced: it timed out or lost contact after
    /// the action may have started.
    Indeterminate {
        /// Why, in a sentence.
        reason: String,
    },
}

impl MethodOutcome {
    /// A [`MethodOutcome::Fenced`] with this detail.
    pub fn fenced(detail: impl Into<String>) -> Self {
        MethodOutcome::Fenced { detail: detail.into() }
    }

    /// A [`MethodOutcome::Failed`] with this reason.
    pub fn failed(reason: impl Into<String>) -> Self {
        MethodOutcome::Failed { reason: reason.into() }
    }

    /// A [`MethodOutcome::Indeterminate`] with this reason.
    pub fn indeterminate(reason: impl Into<String>) -> Self {
        MethodOutcome::Indeterminate { reason: reason.into() }
    }

    /// Whether this is [`MethodOutcome::Fenced`].
    pub fn is_fenced(&self) -> bool {
        matches!(self, MethodOutcome::Fenced { .. })
    }
}

impl fmt::Display for MethodOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MethodOutcome::Fenced { detail } => write!(f, "fenced: {detail}"),
            MethodOutcome::Failed { reason } => write!(f, "failed: {reason}"),
            MethodOutcome::Indeterminate { reason } => write!(f, "indeterminate: {reason}"),
        }
    }
}

/// One method attempt, for the agent's history and metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FenceEvent {
    /// Whether this attempt fenced or unfenced.
    pub operation: Operation,
    /// Index of the level in the configuration (0-based).
    pub level: usize,
    /// The method's kind.
    pub kind: MethodKind,
    /// The method's configured `name`, or its kind when none was given.
    pub method: String,
    /// The node id of the target.
    pub target: String,
    /// How the attempt ended.
    #[serde(flatten)]
    pub outcome: MethodOutcome,
    /// Wall-clock time the attempt started (serialised as milliseconds since the Unix epoch).
    #[serde(serialize_with = "serialize_unix_ms")]
    pub started_at: SystemTime,
    /// How long the attempt took (serialised as milliseconds).
    #[serde(rename = "duration_ms", serialize_with = "serialize_duration_ms")]
    pub duration: Duration,
}

/// Which operation an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Making the target unable to serve.
    Fence,
    /// Undoing a fence that left state behind (firewall rules).
    Unfence,
}

fn serialize_unix_ms<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let ms = t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    s.serialize_u64(ms)
}

fn serialize_duration_ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

/// The overall result of fencing one target. **Only [`FenceOutcome::Fenced`] permits promotion.**
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum FenceOutcome {
    /// A level fenced the target: every method in it verified success.
    Fenced {
        /// Index of the level that fenced (0-based).
        level: usize,
        /// Names of that level's methods, in order.
        methods: Vec<String>,
    },
    /// Every level definitely failed; the target may well still be serving.
    Failed {
        /// Why, in a sentence naming the last failure.
        reason: String,
    },
    /// No level fenced and at least one could not tell, or the overall deadline ran out.
    Indeterminate {
        /// Why, in a sentence.
        reason: String,
    },
}

impl FenceOutcome {
    /// Whether the caller may promote: true only for [`FenceOutcome::Fenced`].
    pub fn permits_promotion(&self) -> bool {
        match self {
            FenceOutcome::Fenced { .. } => true,
            FenceOutcome::Failed { .. } | FenceOutcome::Indeterminate { .. } => false,
        }
    }
}

impl fmt::Display for FenceOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FenceOutcome::Fenced { level, methods } => {
                write!(f, "fenced by level {level} ({})", methods.join(" + "))
            }
            FenceOutcome::Failed { reason } => write!(f, "fencing failed: {reason}"),
            FenceOutcome::Indeterminate { reason } => {
                write!(f, "fencing indeterminate: {reason}")
            }
        }
    }
}

/// Everything one [`crate::Fencer::fence`] call did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FenceReport {
    /// The overall outcome.
    pub outcome: FenceOutcome,
    /// Every method attempt, in the order they ran.
    pub events: Vec<FenceEvent>,
}

impl FenceReport {
    /// The graceful step-down that went unanswered before a later level fenced the target, if
    /// there was one: the target's master took the connection but did not confirm in time, and
    /// a stronger method (a kill, say) did the job. A hung master is fenced rightly this way;
    /// so is a healthy one that is merely slow to step down (its fsync of the new token on a
    /// slow disk), which a longer graceful timeout would have spared.
    pub fn graceful_unanswered(&self) -> Option<&FenceEvent> {
        let FenceOutcome::Fenced { level, .. } = self.outcome else { return None };
        self.events.iter().find(|e| {
            e.operation == Operation::Fence
                && e.kind == MethodKind::Graceful
                && e.level < level
                && matches!(e.outcome, MethodOutcome::Indeterminate { .. })
        })
    }
}

/// Everything one [`crate::Fencer::unfence`] call did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnfenceReport {
    /// Whether every reversible method removed what it had put in place.
    pub outcome: UnfenceOutcome,
    /// Every unfence attempt, in the order they ran.
    pub events: Vec<FenceEvent>,
}

/// The overall result of [`crate::Fencer::unfence`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum UnfenceOutcome {
    /// Every reversible method verified its fence removed (or none is configured).
    Unfenced,
    /// At least one reversible method could not verify its fence removed.
    Incomplete {
        /// Why, naming the first method that did not succeed.
        reason: String,
    },
}

/// What a method's check found, asked without fencing anything ([`crate::Fencer::check`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "readiness", rename_all = "lowercase")]
pub enum Readiness {
    /// What the method needs answered: the device, host or endpoint it would act through.
    Ready {
        /// What was seen, e.g. "ssh login to db2 as referee works".
        detail: String,
    },
    /// The method would not work as configured, or not for this target.
    Problem {
        /// What is wrong, and what to change where known.
        reason: String,
    },
    /// Nothing can be tried without doing it (raising a token floor).
    Unchecked {
        /// Why.
        why: String,
    },
}

/// One method's check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MethodCheck {
    /// Level index, from 0.
    pub level: usize,
    /// The method's index within its level, from 0.
    pub index: usize,
    /// The method's name.
    pub method: String,
    /// The method's kind.
    pub kind: MethodKind,
    /// What the check found (`readiness` and its `detail`, `reason` or `why`, beside the rest).
    #[serde(flatten)]
    pub readiness: Readiness,
}

/// Every method's check for one target, in the order the chain would run them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The node checked.
    pub node_id: String,
    /// One per method.
    pub checks: Vec<MethodCheck>,
}

impl CheckReport {
    /// Whether some method would not work.
    pub fn has_problem(&self) -> bool {
        self.checks.iter().any(|c| matches!(c.readiness, Readiness::Problem { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(level: usize, kind: MethodKind, outcome: MethodOutcome) -> FenceEvent {
        FenceEvent {
            operation: Operation::Fence,
            level,
            kind,
            method: kind.as_str().into(),
            target: "b".into(),
            outcome,
            started_at: UNIX_EPOCH,
            duration: Duration::from_millis(500),
        }
    }

    #[test]
    fn a_graceful_step_down_left_unanswered_before_a_kill_is_named() {
        let slow = attempt(0, MethodKind::Graceful, MethodOutcome::indeterminate("no answer before the deadline"));
        let kill = attempt(1, MethodKind::Kill, MethodOutcome::fenced("pid 7 exited after SIGTERM"));
        let report = |outcome: FenceOutcome, events: Vec<FenceEvent>| FenceReport { outcome, events };
        let by_kill = FenceOutcome::Fenced { level: 1, methods: vec!["kill".into()] };

        let r = report(by_kill.clone(), vec![slow.clone(), kill.clone()]);
        assert_eq!(r.graceful_unanswered(), Some(&slow));
        // A refused connection is a master that is down, not a slow one.
        let refused = attempt(0, MethodKind::Graceful, MethodOutcome::failed("connection refused"));
        assert_eq!(report(by_kill.clone(), vec![refused, kill.clone()]).graceful_unanswered(), None);
        // Fenced by the graceful level itself, or not fenced at all: nothing to name.
        let answered = attempt(0, MethodKind::Graceful, MethodOutcome::fenced("standby holding token 9"));
        let by_graceful = FenceOutcome::Fenced { level: 0, methods: vec!["graceful".into()] };
        assert_eq!(report(by_graceful, vec![answered]).graceful_unanswered(), None);
        let undecided = FenceOutcome::Indeterminate { reason: "every level timed out".into() };
        assert_eq!(report(undecided, vec![slow.clone()]).graceful_unanswered(), None);
        // Another kind that timed out is not a graceful step-down.
        let ssh = attempt(0, MethodKind::Ssh, MethodOutcome::indeterminate("ssh timed out"));
        assert_eq!(report(by_kill, vec![ssh, kill]).graceful_unanswered(), None);
    }

    // The event is what the agent stores in its history and serves over its API: pin it.
    #[test]
    fn events_serialise_flat_with_millisecond_times() {
        let event = FenceEvent {
            operation: Operation::Fence,
            level: 1,
            kind: MethodKind::Kill,
            method: "kill-local".into(),
            target: "n1".into(),
            outcome: MethodOutcome::failed("no pid"),
            started_at: UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
            duration: Duration::from_millis(42),
        };
        assert_eq!(
            serde_json::to_string(&event).unwrap(),
            r#"{"operation":"fence","level":1,"kind":"kill","method":"kill-local","target":"n1","outcome":"failed","reason":"no pid","started_at":1700000000123,"duration_ms":42}"#
        );
        let outcome = FenceOutcome::Fenced { level: 0, methods: vec!["graceful".into()] };
        assert_eq!(
            serde_json::to_string(&outcome).unwrap(),
            r#"{"outcome":"fenced","level":0,"methods":["graceful"]}"#
        );
        assert_eq!(outcome.to_string(), "fenced by level 0 (graceful)");
        assert!(outcome.permits_promotion());
    }
}
