//! The agent's vocabulary: what it observes, what it decides, and the records it keeps in the
//! coordinator. Shared by the pure decision core, the drivers that observe and act, and the
//! probes that report.

use referee_fencing::{FenceTarget, FencingToken, HaState};
use serde::{Deserialize, Serialize};

/// The local master's health as the monitor sees it (Hadoop ZKFC's `HealthMonitor.State`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum Health {
    /// No verdict yet: the monitor has not seen enough checks.
    Initializing,
    /// The master passes its health checks.
    Healthy,
    /// The master answers but reports itself unhealthy, or answers garbage.
    Unhealthy(String),
    /// The master does not answer (refused, timed out).
    NotResponding(String),
    /// The monitor itself cannot work (misconfiguration, internal failure).
    MonitorFailed(String),
}

impl Health {
    /// Whether the master may hold or contend for the active role.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

/// The role and token the local master reports (`GET /ha/state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterStatus {
    /// Active, standby or initializing.
    pub state: HaState,
    /// The highest token the master has accepted.
    pub token: FencingToken,
    /// Its replication position (`"position"` in `GET /ha/state`), if it reports one: an
    /// unknown position leaves the lag gate and the ranking as they were without positions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<crate::candidacy::Position>,
}

/// What this agent's session with the coordinator looks like right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum SessionView {
    /// Connecting for the first time, or after an expiry: no session yet.
    Connecting,
    /// Connected with this session.
    Connected {
        /// Session id.
        session_id: i64,
    },
    /// The connection is lost; the session may still be alive on the ensemble.
    Disconnected {
        /// The session the connection belonged to.
        session_id: i64,
    },
    /// The ensemble expired the session: every ephemeral of it is gone.
    Expired,
}

/// Who holds the active lock, as last read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "holder", rename_all = "snake_case")]
pub enum LockView {
    /// Not known (not read yet, or the coordinator is unreachable).
    Unknown,
    /// Nobody holds it.
    Free,
    /// Our current session holds it; the lock's czxid plus the token base is our fencing token.
    Ours {
        /// The lock's fencing token (czxid + token base).
        token: FencingToken,
        /// The lock znode's data version, for conditional operations.
        version: i32,
    },
    /// Another agent holds it.
    Peer {
        /// The holder's node id.
        node_id: String,
        /// The holder's token.
        token: FencingToken,
    },
    /// A lock with our node id left by an older session of ours; it goes when that session
    /// expires, and gives us nothing.
    OursFromOldSession {
        /// The old lock's token.
        token: FencingToken,
    },
}

/// What the lock znode holds: who is active and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    /// The holder's node id.
    pub node_id: String,
    /// How to fence the holder's master (host, port, HA URL, pid...), its token left 0: the
    /// token is the lock's czxid plus the token base.
    pub target: FenceTarget,
    /// The holder's agent peer API base URL, if it has one.
    pub peer_url: Option<String>,
}

/// The breadcrumb: the last node that was active, which the next winner must deal with.
/// It is persistent and never deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breadcrumb {
    /// The last active node.
    pub node_id: String,
    /// Its token.
    pub token: FencingToken,
    /// Whether it stepped down cleanly (demoted its master, confirmed, then released the lock).
    pub clean: bool,
    /// How to fence it.
    pub target: FenceTarget,
}

/// The breadcrumb as last read, with its znode version for compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "breadcrumb", rename_all = "snake_case")]
pub enum BreadcrumbView {
    /// Not read yet, or unreadable.
    Unknown,
    /// No breadcrumb: no node has ever been active (or the data was lost).
    Missing,
    /// The breadcrumb and its version.
    Present {
        /// Its content.
        crumb: Breadcrumb,
        /// Its znode version.
        version: i32,
    },
}

/// What `/referee/<cluster>/handover` holds while a graceful failover to a named node is under
/// way (an operator's `failover --to`, a scheduled switchover, a drain of the active, the
/// preferred node's failback), as Patroni's `/failover` key: the node taking over writes it
/// before it asks the active to cede, so that when the active releases the lock every other
/// standby leaves it to the named node instead of racing for it. Each of them holds back for a
/// bounded time only, counted on its own clock from when it first saw the record (a target that
/// dies costs a delay, never the cluster's availability); the record stops counting once the
/// breadcrumb names a later term than `token`, and the next holder of the lock removes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandoverRecord {
    /// The node the active role is being handed to.
    pub to: String,
    /// The active asked to cede.
    pub from: String,
    /// The token of the active's term when it was asked: the release this record is about.
    pub token: FencingToken,
    /// When it was written (wall clock, ms since the Unix epoch), for the operator.
    pub at_ms: i64,
}

/// What `/referee/<cluster>/pause` holds while the whole cluster is in maintenance mode
/// (`referee admin pause` without `--node`): every agent, restarted ones included, observes
/// and reports but makes no failover until `referee admin resume` deletes it. Kept in the
/// coordinator, as Patroni keeps its pause in the DCS, so that a restart does not end it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseRecord {
    /// Who paused the cluster (user and host, as `referee admin` names them).
    pub requested_by: String,
    /// When (wall clock, ms since the Unix epoch).
    pub at_ms: i64,
}

/// What `/referee/<cluster>/drained/<node_id>` holds while an operator keeps that node from
/// being promoted (`referee admin drain`, as Pacemaker's node standby or Patroni's `nofailover`
/// tag set live, for maintenance of its host): its agent still runs, reports and confirms, but
/// never takes the active role, automatically or by an operator's failover, until `referee admin
/// undrain` deletes it. Kept in the coordinator, so a restarted agent stays drained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRecord {
    /// Who drained the node (user and host, as `referee admin` names them).
    pub requested_by: String,
    /// When (wall clock, ms since the Unix epoch).
    pub at_ms: i64,
    /// Why, as the operator said.
    #[serde(default)]
    pub reason: Option<String>,
}

impl DrainRecord {
    /// "by WHO (REASON)", for the logs and the "why not".
    pub fn by(&self) -> String {
        match &self.reason {
            Some(reason) => format!("{} ({reason})", self.requested_by),
            None => self.requested_by.clone(),
        }
    }
}

/// What `/referee/<cluster>/confirmed-down/<node_id>` holds once an operator has confirmed
/// that node down (`referee admin confirm-down`, as Pacemaker's `stonith_admin --confirm`):
/// they have seen to it, by hand, that its master can no longer accept writes (powered off at
/// the socket, its disks pulled, its network cut), because the fencing chain cannot reach it (a
/// dead BMC, a whole rack without power). A fence of that node that does not end fenced then
/// counts as fenced, for the term the operator confirmed alone: see
/// [`ConfirmedDownRecord::applies_to`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmedDownRecord {
    /// Who confirmed it (user and host, as `referee admin` names them).
    pub requested_by: String,
    /// When (wall clock, ms since the Unix epoch).
    pub at_ms: i64,
    /// How the operator knows, as they said it.
    pub reason: String,
    /// The token of the node's term the operator confirmed down: the breadcrumb's when it named
    /// that node, 0 when there was no breadcrumb (the fence of every node that could have been
    /// active, which fences with token 0).
    pub token: FencingToken,
}

impl ConfirmedDownRecord {
    /// Whether this confirmation stands for a fence of `target` that did not end fenced:
    /// the same node (the record's path names it) fenced for the same term. A later term of the
    /// node has a higher token, so a confirmation never carries over to it: the node came back,
    /// was active again, and must be fenced (or confirmed) again.
    pub fn applies_to(&self, record_node: &str, target: &FenceTarget) -> bool {
        record_node == target.node_id && self.token == target.token
    }

    /// "by WHO (REASON)", for the logs and the timeline.
    pub fn by(&self) -> String {
        format!("{} ({})", self.requested_by, self.reason)
    }
}

/// What `/referee/<cluster>/config` holds: settings for the whole cluster, set by `referee
/// admin config set` over each agent's own (see [`crate::config::CLUSTER_SETTINGS`]), as
/// Patroni keeps its dynamic configuration in the DCS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterSettingsRecord {
    /// The settings by section: `{"election": {"max_lag": 5}, "failsafe": {"enabled": true}}`.
    pub settings: serde_json::Value,
    /// Who set them last (user and host, as `referee admin` names them).
    pub set_by: String,
    /// When (wall clock, ms since the Unix epoch).
    pub at_ms: i64,
}

/// What `/referee/<cluster>/token-base` holds: the number added to every lock's czxid to make
/// its fencing token, and why it was set to that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenBase {
    /// Added to every lock's czxid.
    pub base: u64,
    /// The highest token the setter found; every token from this base on is above it.
    pub floor: FencingToken,
    /// The node that set it.
    pub node_id: String,
}

/// The token base as last read, with its znode version for compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "token_base", rename_all = "snake_case")]
pub enum TokenBaseView {
    /// Not read yet, or unreadable.
    Unknown,
    /// Absent: no lock was ever held in this coordinator history (a new or wiped coordinator).
    Missing,
    /// Present.
    Present {
        /// The base.
        base: u64,
        /// Its znode version.
        version: i32,
    },
}

impl TokenBaseView {
    /// The base in effect (0 while it is missing or unknown).
    pub fn base(&self) -> u64 {
        match self {
            TokenBaseView::Present { base, .. } => *base,
            _ => 0,
        }
    }
}

/// An agent that has registered as a member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its node id.
    pub node_id: String,
    /// How to fence its master.
    pub target: FenceTarget,
    /// Its peer API base URL.
    pub peer_url: Option<String>,
    /// Its probe address (`host:port`), for `referee admin status`.
    pub probe_addr: Option<String>,
    /// Its candidacy, while it is a standby that publishes one (absent from agents that
    /// predate candidacies, and from the active).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidacy: Option<crate::candidacy::Candidacy>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_confirmation_stands_for_its_node_and_term_alone() {
        let record = ConfirmedDownRecord {
            requested_by: "ops@h".into(),
            at_ms: 1,
            reason: "powered off at the socket".into(),
            token: FencingToken(40),
        };
        let target = |node: &str, token: u64| FenceTarget::new(node, "10.0.0.1", 8020, FencingToken(token));
        assert!(record.applies_to("db1", &target("db1", 40)));
        // A later term of the same node: it came back and was active again.
        assert!(!record.applies_to("db1", &target("db1", 45)));
        // An earlier one (a breadcrumb cannot go back, but nothing is taken on trust).
        assert!(!record.applies_to("db1", &target("db1", 39)));
        // Another node, and a record filed under another node's name.
        assert!(!record.applies_to("db1", &target("db2", 40)));
        assert!(!record.applies_to("db2", &target("db1", 40)));
        // Without a breadcrumb every node is fenced with token 0: a record for that case.
        let none = ConfirmedDownRecord { token: FencingToken(0), ..record.clone() };
        assert!(none.applies_to("db1", &target("db1", 0)));
        assert!(!none.applies_to("db1", &target("db1", 40)));
        assert_eq!(record.by(), "ops@h (powered off at the socket)");
    }
}
