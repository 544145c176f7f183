//! Requests from operators and peers to the running agent: the admin API and the peer API
//! turn authenticated HTTP calls into these, and the driver carries them out between cycles,
//! answering on the enclosed channel.

use std::time::Duration;

use referee_fencing::{FencingToken, MethodOutcome};
use tokio::sync::oneshot;

/// Why a request was not carried out, and whether the cluster may still change because of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Declined {
    /// Refused before anything was asked of anyone: the cluster is as it was.
    Refused(String),
    /// Not done, and not known not to happen: another node was asked (a cede whose answer
    /// never came may still be carried out), or the wait for the outcome ran out.
    Unsettled(String),
}

impl Declined {
    /// What went wrong.
    pub fn reason(&self) -> &str {
        match self {
            Declined::Refused(r) | Declined::Unsettled(r) => r,
        }
    }
}

impl std::fmt::Display for Declined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl From<String> for Declined {
    fn from(reason: String) -> Self {
        Declined::Refused(reason)
    }
}

impl From<&str> for Declined {
    fn from(reason: &str) -> Self {
        Declined::Refused(reason.to_string())
    }
}

/// A request to the driver.
#[derive(Debug)]
pub enum ControlRequest {
    /// Maintenance mode: keep observing and reporting, take no action.
    Pause {
        /// Answered once the agent has paused.
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Leave maintenance mode.
    Resume {
        /// Answered once the agent has resumed.
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// If active, hand over gracefully (demote, confirm, then mark the breadcrumb clean and
    /// release the lock in one multi) and stay out of the election for `period`.
    Cede {
        /// How long to stay out.
        period: Duration,
        /// Answered when the handover is done (or refused, with why).
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Become active gracefully: ask the current active to cede, then win the lock. Refused
    /// with why if this node is unhealthy or paused.
    Failover {
        /// The operator accepts promoting this node even if it lags beyond `election.max_lag`
        /// (`--allow-data-loss`): the lag gate is lifted for this failover only.
        allow_data_loss: bool,
        /// Answered with the timeline when this node is active, or with why not, and whether
        /// anything may still change ([`Declined`]).
        reply: oneshot::Sender<Result<String, Declined>>,
    },
    /// Clear an anti-flap block: this node may contend for a free lock at once, as if the
    /// active had not changed recently.
    Unblock {
        /// Who asked (as the operator's command says, and the address it came from), for the log.
        by: String,
        /// Answered with what was cleared.
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// A new configuration (already validated): settings that can change live are applied,
    /// the answer names those that need a restart.
    Reload {
        /// The new configuration.
        config: Box<crate::config::AgentConfig>,
        /// Answered with what was applied and what needs a restart.
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// A peer that won the lock asks this node to fence its own master locally.
    PeerFence {
        /// The new active's token, recorded by the master.
        token: FencingToken,
        /// Answered with the outcome.
        reply: oneshot::Sender<MethodOutcome>,
    },
    /// An active peer that cannot reach the coordinator asks whether this node is not active
    /// and, if so, for a promise not to contend for `ttl` (failsafe mode).
    Failsafe {
        /// The request.
        request: crate::failsafe::FailsafeRequest,
        /// Answered with the confirmation or the refusal.
        reply: oneshot::Sender<crate::failsafe::FailsafeResponse>,
    },
}
