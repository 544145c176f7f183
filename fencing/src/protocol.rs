//! Wire types shared with the masters, the agents and token-enforcing resources.
//!
//! These are the JSON bodies of three small HTTP protocols. They live here, in the crate that
//! speaks them as a client, so that the agent (server of the peer protocol) and the demo master
//! (server of the HA protocol) reuse exactly the same types.
//!
//! - **Master HA protocol**: [`HA_HEALTH_PATH`], [`HA_STATE_PATH`], [`HA_ACTIVE_PATH`],
//!   [`HA_STANDBY_PATH`]. A master keeps the highest token it has seen and refuses a promotion
//!   carrying a lower one.
//! - **Agent peer protocol**: [`PEER_FENCE_PATH`], authenticated with `Authorization: Bearer`.
//! - **Token floor protocol**: a resource that enforces fencing tokens is told to raise its floor.

use serde::{Deserialize, Serialize};

use crate::outcome::MethodOutcome;
use crate::token::FencingToken;

/// `GET`: 200 when the master is healthy, 503 with an [`UnhealthyReport`] body otherwise.
pub const HA_HEALTH_PATH: &str = "/ha/health";
/// `GET`: the master's [`HaStatus`].
pub const HA_STATE_PATH: &str = "/ha/state";
/// `POST` a [`TokenRequest`]: become active with this token (refused if lower than the highest seen).
pub const HA_ACTIVE_PATH: &str = "/ha/active";
/// `POST` a [`TokenRequest`]: become standby and remember this token.
pub const HA_STANDBY_PATH: &str = "/ha/standby";
/// `POST` a [`PeerFenceRequest`] to a failover agent: fence your own master locally.
pub const PEER_FENCE_PATH: &str = "/peer/fence";

/// The role a master reports on [`HA_STATE_PATH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HaState {
    /// Serving as the active master.
    Active,
    /// Not serving writes; waiting to be promoted.
    Standby,
    /// Starting up; neither active nor ready to be promoted.
    Initializing,
}

/// Body of `GET /ha/state`, and the preferred body of the answers to `POST /ha/active` and
/// `POST /ha/standby`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HaStatus {
    /// The master's current role.
    pub state: HaState,
    /// The highest fencing token the master has seen.
    pub token: FencingToken,
}

impl HaStatus {
    /// Whether this state, reported after a step-down to `new_token`, proves the step-down took
    /// hold: standby **and** holding a token at least `new_token`. A standby that kept a lower
    /// token could still accept a delayed promotion carrying it, so it is not fenced.
    pub fn judge_step_down(&self, new_token: FencingToken) -> MethodOutcome {
        match self.state {
            HaState::Standby if self.token >= new_token => {
                MethodOutcome::fenced(format!("master confirmed standby holding token {}", self.token))
            }
            HaState::Standby => MethodOutcome::failed(format!(
                "master is standby but recorded token {} below the new token {new_token}: it could still accept a stale promotion",
                self.token
            )),
            HaState::Active => MethodOutcome::failed(format!(
                "master still reports active (token {}) after the step-down request",
                self.token
            )),
            HaState::Initializing => {
                MethodOutcome::failed(format!("master reports initializing (token {}), not standby", self.token))
            }
        }
    }
}

/// Body of `POST /ha/active` and `POST /ha/standby`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    /// The token of the node now entitled to be active. The master records it if it is the
    /// highest seen, and afterwards refuses promotions carrying anything lower.
    pub token: FencingToken,
}

/// Body of a 503 answer to `GET /ha/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnhealthyReport {
    /// Why the master considers itself unhealthy, for logs and the agent's history.
    pub reason: String,
}

/// Body of `POST /peer/fence`: "fence your own master, a new active holds this token".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerFenceRequest {
    /// The node id the caller believes the receiving agent manages. The receiver must refuse
    /// (outcome `failed`) if it is not its own, so a misrouted request fences nothing.
    pub target_node_id: String,
    /// The fencing token of the node taking over.
    pub token: FencingToken,
}

/// How a peer agent's local fence ended, as reported in [`PeerFenceResponse`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerFenceOutcome {
    /// The agent verified its master can no longer serve.
    Fenced,
    /// The agent's local fence definitely did not succeed.
    Failed,
    /// The agent could not tell whether its master is still serving.
    Indeterminate,
}

/// Body of the answer to `POST /peer/fence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerFenceResponse {
    /// How the local fence ended.
    pub outcome: PeerFenceOutcome,
    /// A sentence explaining the outcome.
    pub reason: String,
}

impl From<&MethodOutcome> for PeerFenceResponse {
    /// Lets the agent answer a peer with the outcome of its own [`crate::Fencer`] run.
    fn from(outcome: &MethodOutcome) -> Self {
        match outcome {
            MethodOutcome::Fenced { detail } => {
                PeerFenceResponse { outcome: PeerFenceOutcome::Fenced, reason: detail.clone() }
            }
            MethodOutcome::Failed { reason } => {
                PeerFenceResponse { outcome: PeerFenceOutcome::Failed, reason: reason.clone() }
            }
            MethodOutcome::Indeterminate { reason } => {
                PeerFenceResponse { outcome: PeerFenceOutcome::Indeterminate, reason: reason.clone() }
            }
        }
    }
}

/// Body POSTed by the `token` method to a resource that enforces fencing tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenFloorRequest {
    /// From now on the resource must reject every token lower than this one.
    pub token: FencingToken,
    /// The node being fenced, for the resource's own records.
    pub fenced_node_id: String,
}

/// Answer of a token-enforcing resource to a [`TokenFloorRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenFloorResponse {
    /// The lowest token the resource now accepts. The target is fenced only when this is at
    /// least the new token: every write carrying the old, lower token is then refused.
    pub floor: FencingToken,
}

#[cfg(test)]
mod tests {
    use super::*;

    // The wire formats are pinned byte for byte: masters, agents and resources built
    // separately depend on them.
    #[test]
    fn ha_status_wire_format_is_pinned() {
        let status = HaStatus { state: HaState::Standby, token: FencingToken(17) };
        assert_eq!(serde_json::to_string(&status).unwrap(), r#"{"state":"standby","token":17}"#);
        let back: HaStatus = serde_json::from_str(r#"{"state":"initializing","token":0}"#).unwrap();
        assert_eq!(back.state, HaState::Initializing);
        assert_eq!(serde_json::to_string(&TokenRequest { token: FencingToken(5) }).unwrap(), r#"{"token":5}"#);
    }

    #[test]
    fn peer_wire_format_is_pinned() {
        let request = PeerFenceRequest { target_node_id: "n1".into(), token: FencingToken(9) };
        assert_eq!(serde_json::to_string(&request).unwrap(), r#"{"target_node_id":"n1","token":9}"#);
        let response: PeerFenceResponse =
            serde_json::from_str(r#"{"outcome":"indeterminate","reason":"lost contact"}"#).unwrap();
        assert_eq!(response.outcome, PeerFenceOutcome::Indeterminate);
        assert_eq!(serde_json::to_string(&TokenFloorResponse { floor: FencingToken(3) }).unwrap(), r#"{"floor":3}"#);
    }
}
