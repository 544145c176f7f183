//! How the agent talks to its master: health, role and token, promotion and demotion.
//!
//! Three adapters implement [`MasterAdapter`]: [`HttpAdapter`] speaks the master HA protocol
//! over HTTP, [`CommandAdapter`] runs configured programs, [`OcfAdapter`] runs an OCF resource
//! agent (Pacemaker's) as a promotable resource. [`build_adapter`] makes the one an
//! [`AdapterConfig`] names. Every call takes a deadline and never outlives it.
//!
//! # The master HA protocol
//!
//! A master managed over HTTP serves four endpoints (paths in [`referee_fencing::protocol`]):
//!
//! - `GET /ha/health`: `200` when healthy; `503` with a reason (JSON `{"reason": "..."}`, or
//!   plain text) when not. Any other answer counts as unhealthy.
//! - `GET /ha/state`: `{"state": "active" | "standby" | "initializing", "token": N}`, where
//!   `N` is the highest fencing token the master has seen.
//! - `POST /ha/active` with `{"token": N}`: become active. The master keeps the highest token it
//!   has seen **across restarts** (persisted, and synced to disk, before it answers). It refuses
//!   a promotion carrying a lower token (`409` with a reason) and treats an equal one as a retry
//!   (`200`, idempotent). It answers its new status.
//! - `POST /ha/standby` with `{"token": N}`: become standby; record `N` if it is higher than
//!   the highest seen. It answers its new status.
//!
//! A master may also enforce a lease by itself: it polls its agent's `GET <agent>/lease`
//! (`{"token": N, "valid_for_ms": M}`, `M` possibly 0) and accepts no write after *the time it
//! sent that request* + `M`, so it stops serving even if its agent hangs.
//!
//! # What counts as success
//!
//! A promotion succeeds only when the master's answer says `active` with exactly the token
//! asked for; a demotion only when it says `standby`. When a `2xx` answer (or a program's exit
//! 0) carries no readable status, the adapter asks for the state, within the same deadline, and
//! judges by that. Anything else is an [`AdapterError`] saying why.

mod command;
mod http;
mod ocf;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use referee_fencing::FencingToken;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::model::MasterStatus;

pub(crate) use command::{run as run_program, CommandEnd};
pub use command::{CommandAdapter, CommandAdapterConfig};
pub use ocf::{ocf_code_name, OcfAdapter, OcfAdapterConfig};

/// Parses a master's state answer: `{"state", "token"}` as [`referee_fencing::HaStatus`],
/// with an optional `"position"` (a non-negative integer that only grows; absent or `null`:
/// unknown, and the agent behaves as before positions existed). `None` if it does not parse.
pub fn parse_state(body: &[u8]) -> Option<MasterStatus> {
    serde_json::from_slice(body).ok()
}
pub use http::{HttpAdapter, HttpAdapterConfig};

/// A boxed future borrowing the adapter: keeps [`MasterAdapter`] object-safe.
pub type AdapterFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Talks to the local master. Every call ends by its `deadline` (a tokio instant).
///
/// Implemented by [`HttpAdapter`], [`CommandAdapter`] and [`OcfAdapter`]; tests implement it
/// with fakes.
pub trait MasterAdapter: Send + Sync {
    /// Checks the master's health.
    fn health(&self, deadline: Instant) -> AdapterFuture<'_, Result<(), HealthProblem>>;
    /// Reads the master's role and highest token.
    fn state(&self, deadline: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>>;
    /// Makes the master active with `token`. `Ok` only when it reports `active` with `token`.
    fn promote(&self, token: FencingToken, deadline: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>>;
    /// Makes the master standby, telling it `token`. `Ok` only when it reports `standby`.
    fn demote(&self, token: FencingToken, deadline: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>>;
    /// Checks once, as the agent starts, that the master can be managed as configured (an OCF
    /// resource agent's `validate-all`); `Err` stops the agent with the reason. Nothing to
    /// check by default.
    fn validate(&self, _deadline: Instant) -> AdapterFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

/// Why the master did not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoAnswer {
    /// Nothing listens: the connection was refused. Known at once, and near-certain evidence
    /// that the master process is gone (or not started yet).
    Refused,
    /// No answer before the deadline: the master may be hung, overloaded, or unreachable.
    TimedOut,
    /// The exchange broke off (connection reset, closed before or mid-answer, unreachable
    /// network). Ambiguous: a master at its connection limit, or behind a proxy, looks the same,
    /// so the health monitor counts it as slow, as a timeout (see [`crate::health`]).
    Broken,
}

impl fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoAnswer::Refused => "connection refused",
            NoAnswer::TimedOut => "timed out",
            NoAnswer::Broken => "connection broken",
        })
    }
}

/// Why a health check did not pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum HealthProblem {
    /// The master answered, and the answer says it is not healthy (or is not a valid answer).
    #[error("unhealthy: {reason}")]
    Unhealthy {
        /// The master's reason, or what was wrong with its answer.
        reason: String,
    },
    /// The master did not answer.
    #[error("not responding ({how}): {reason}")]
    NotResponding {
        /// Refused, timed out or broken off.
        how: NoAnswer,
        /// Details for logs.
        reason: String,
    },
    /// The check could not be made at all (the health program cannot be started): a fault of
    /// the agent's configuration or host, not evidence about the master.
    #[error("health check cannot run: {reason}")]
    CheckFailed {
        /// Why.
        reason: String,
    },
}

impl HealthProblem {
    /// Shorthand for [`HealthProblem::Unhealthy`].
    pub fn unhealthy(reason: impl Into<String>) -> Self {
        HealthProblem::Unhealthy { reason: reason.into() }
    }

    /// Shorthand for [`HealthProblem::NotResponding`].
    pub fn not_responding(how: NoAnswer, reason: impl Into<String>) -> Self {
        HealthProblem::NotResponding { how, reason: reason.into() }
    }
}

/// Why a state, promote or demote call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdapterError {
    /// The master did not answer. For promote and demote the outcome is **unknown**: the
    /// master may have acted before the answer was lost.
    #[error("master not responding ({how}): {reason}")]
    NotResponding {
        /// Refused, timed out or broken off.
        how: NoAnswer,
        /// Details.
        reason: String,
    },
    /// The master answered with a refusal (e.g. `409`: a higher token was already seen), or
    /// the program exited non-zero. The master did not act.
    #[error("master refused: {reason}")]
    Rejected {
        /// The master's reason.
        reason: String,
    },
    /// The master answered something that is not a valid answer.
    #[error("unreadable answer from the master: {reason}")]
    BadAnswer {
        /// What was wrong with it.
        reason: String,
    },
    /// The master answered, but its status is not the one asked for (not active with our
    /// token after a promotion, not standby after a demotion).
    #[error("master reports {} with token {} instead of {wanted}", state_name(reported.state), reported.token)]
    Unconfirmed {
        /// What the master reports.
        reported: MasterStatus,
        /// What was asked for, as a phrase ("active with token 7").
        wanted: String,
    },
    /// The program could not be run (command adapter only).
    #[error("cannot run the master command: {reason}")]
    CannotRun {
        /// Why.
        reason: String,
    },
}

impl AdapterError {
    /// Whether the master may have carried out the request although the call failed (no
    /// answer, or an answer we could not read).
    pub fn outcome_unknown(&self) -> bool {
        match self {
            AdapterError::NotResponding { .. } | AdapterError::BadAnswer { .. } => true,
            AdapterError::Rejected { .. } | AdapterError::Unconfirmed { .. } | AdapterError::CannotRun { .. } => false,
        }
    }
}

fn state_name(state: referee_fencing::HaState) -> &'static str {
    match state {
        referee_fencing::HaState::Active => "active",
        referee_fencing::HaState::Standby => "standby",
        referee_fencing::HaState::Initializing => "initializing",
    }
}

/// Judges a promotion's answer: success only when active with exactly `token`.
pub(crate) fn confirm_promoted(status: MasterStatus, token: FencingToken) -> Result<MasterStatus, AdapterError> {
    match status.state {
        referee_fencing::HaState::Active if status.token == token => Ok(status),
        referee_fencing::HaState::Active
        | referee_fencing::HaState::Standby
        | referee_fencing::HaState::Initializing => {
            Err(AdapterError::Unconfirmed { reported: status, wanted: format!("active with token {token}") })
        }
    }
}

/// Judges a demotion's answer: success only when standby.
pub(crate) fn confirm_demoted(status: MasterStatus) -> Result<MasterStatus, AdapterError> {
    match status.state {
        referee_fencing::HaState::Standby => Ok(status),
        referee_fencing::HaState::Active | referee_fencing::HaState::Initializing => {
            Err(AdapterError::Unconfirmed { reported: status, wanted: "standby".into() })
        }
    }
}

/// Which adapter to use and how (`adapter:` in the agent's configuration).
///
/// ```yaml
/// adapter:
///   kind: http
///   url: http://127.0.0.1:8080      # base URL; /ha/... is appended
///   timeout_ms: 5000                # ceiling for one call (default 5000)
///   connect_timeout_ms: 1000        # ceiling for connecting (default 1000)
/// ```
///
/// ```yaml
/// adapter:
///   kind: command
///   health: ["/usr/local/bin/db-ha", "health"]    # exit 0: healthy
///   state: ["/usr/local/bin/db-ha", "state"]      # stdout: {"state": ..., "token": N}
///   promote: ["/usr/local/bin/db-ha", "promote"]  # FENCE_TOKEN / REFEREE_TOKEN set
///   demote: ["/usr/local/bin/db-ha", "demote"]
///   timeout_ms: 10000                             # ceiling for one run (default 10000)
/// ```
///
/// ```yaml
/// adapter:
///   kind: ocf
///   agent: heartbeat:pgsql                        # or the agent's absolute path
///   ocf_root: /usr/lib/ocf                        # default
///   instance: orders-db                           # OCF_RESOURCE_INSTANCE (default: the type)
///   params: {pgdata: /var/lib/postgresql/15/main} # OCF_RESKEY_<name>
///   token_file: /var/lib/referee/orders-db.token  # the highest token handed to the resource
///   timeout_ms: 20000                             # ceiling for one run (default 20000)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AdapterConfig {
    /// The master HA protocol over HTTP.
    Http(HttpAdapterConfig),
    /// Configured programs, run without a shell.
    Command(CommandAdapterConfig),
    /// An OCF resource agent, run as Pacemaker runs a promotable resource's.
    Ocf(OcfAdapterConfig),
}

impl AdapterConfig {
    /// Checks every field; the error names the bad one.
    pub fn validate(&self) -> Result<(), AdapterConfigError> {
        match self {
            AdapterConfig::Http(c) => c.validate(),
            AdapterConfig::Command(c) => c.validate(),
            AdapterConfig::Ocf(c) => c.validate(),
        }
    }
}

/// A configuration value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("adapter.{field}: {reason}")]
pub struct AdapterConfigError {
    /// The field, as written in the configuration (`timeout_ms`, `health[0]`...).
    pub field: String,
    /// What is wrong and what to change.
    pub reason: String,
}

impl AdapterConfigError {
    pub(crate) fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        AdapterConfigError { field: field.into(), reason: reason.into() }
    }
}

/// What an adapter is told about the agent that runs it.
#[derive(Debug, Clone)]
pub struct AdapterContext {
    /// This node's id, passed to programs as `REFEREE_NODE_ID`.
    pub node_id: String,
    /// How many nodes the cluster has (an OCF agent's `clone_max`).
    pub nodes: usize,
    /// The health check's interval (an OCF agent's monitor interval).
    pub monitor_interval: std::time::Duration,
}

impl AdapterContext {
    /// A context naming `node_id` alone: one node, a one-second monitor interval.
    pub fn node(node_id: &str) -> Self {
        AdapterContext { node_id: node_id.to_string(), nodes: 1, monitor_interval: std::time::Duration::from_secs(1) }
    }
}

/// Builds the adapter `config` names, after validating it.
pub fn build_adapter(
    config: &AdapterConfig,
    context: &AdapterContext,
) -> Result<Arc<dyn MasterAdapter>, AdapterConfigError> {
    Ok(match config {
        AdapterConfig::Http(c) => Arc::new(HttpAdapter::new(c)?),
        AdapterConfig::Command(c) => Arc::new(CommandAdapter::new(c, &context.node_id)?),
        AdapterConfig::Ocf(c) => Arc::new(OcfAdapter::new(c, context)?),
    })
}

/// Shortens a reason taken from a master's answer or a program's output to its last
/// non-blank line, at most 300 characters, so one bad answer cannot flood logs and reports.
pub(crate) fn short_reason(text: &str) -> String {
    referee_fencing::command::last_line(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use referee_fencing::HaState;

    #[test]
    fn the_state_answer_may_carry_a_position() {
        use crate::candidacy::Position;
        let table: [(&str, Option<MasterStatus>); 6] = [
            (r#"{"state":"standby","token":4}"#, Some(status(HaState::Standby, 4))),
            (
                r#"{"state":"active","token":4,"position":1234}"#,
                Some(MasterStatus { state: HaState::Active, token: FencingToken(4), position: Some(Position(1234)) }),
            ),
            (r#"{"state":"standby","token":4,"position":null}"#, Some(status(HaState::Standby, 4))),
            (r#"{"state":"standby","token":4,"lag":7}"#, Some(status(HaState::Standby, 4))),
            (r#"{"state":"standby","token":4,"position":-1}"#, None),
            (r#"{"state":"standby","token":4,"position":"12"}"#, None),
        ];
        for (body, expected) in table {
            assert_eq!(parse_state(body.as_bytes()), expected, "{body}");
        }
    }

    fn status(state: HaState, token: u64) -> MasterStatus {
        MasterStatus { state, token: FencingToken(token), position: None }
    }

    #[test]
    fn promotion_is_confirmed_only_by_active_with_the_same_token() {
        assert!(confirm_promoted(status(HaState::Active, 7), FencingToken(7)).is_ok());
        for reported in [status(HaState::Active, 8), status(HaState::Standby, 7), status(HaState::Initializing, 7)] {
            let err = confirm_promoted(reported, FencingToken(7)).unwrap_err();
            assert_eq!(err, AdapterError::Unconfirmed { reported, wanted: "active with token 7".into() });
        }
        assert_eq!(
            confirm_promoted(status(HaState::Active, 8), FencingToken(7)).unwrap_err().to_string(),
            "master reports active with token 8 instead of active with token 7"
        );
    }

    #[test]
    fn demotion_is_confirmed_only_by_standby() {
        assert!(confirm_demoted(status(HaState::Standby, 3)).is_ok());
        assert!(confirm_demoted(status(HaState::Active, 3)).is_err());
        assert!(confirm_demoted(status(HaState::Initializing, 3)).is_err());
    }

    #[test]
    fn reasons_are_shortened_to_the_last_line() {
        assert_eq!(short_reason("first\nsecond\n\n"), "second");
        assert_eq!(short_reason(&"x".repeat(400)).chars().count(), 301);
        assert_eq!(short_reason(""), "");
    }
}
