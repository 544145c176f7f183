//! The agent's YAML configuration, validated before anything starts.
//!
//! Unknown keys are refused; durations carry their unit in the key (`_ms`); timing rules that
//! decide safety are checked together and explained when they fail, never adjusted: an agent
//! whose timings leave its master no lease, or that has no way to fence, does not start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use referee_fencing::{FenceTarget, FencingConfig, FencingToken};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::adapter::AdapterConfig;
use crate::health::HealthConfig;

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read agent config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML does not parse, or has an unknown key or a value of the wrong type.
    #[error("invalid agent config: {0}")]
    Parse(String),
    /// A value is out of range or contradicts another.
    #[error("invalid agent config: `{key}` {problem}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The fencing section was refused.
    #[error("invalid agent config: `fencing`: {0}")]
    Fencing(String),
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, problem: problem.into() }
}

/// The whole agent configuration (`config/agent-*.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Cluster name: the agents of one master pair share it; znodes live under `/referee/<cluster>`.
    pub cluster: String,
    /// This node's id, unique in the cluster.
    pub node_id: String,
    /// Every other node of the cluster, as ZKFC's HA configuration names its NameNodes. A
    /// holder of the lock that finds no breadcrumb (the coordinator lost its data, or no node was
    /// ever active) fences every node listed here before it promotes. Required, at least one.
    #[serde(default)]
    pub peers: Vec<PeerSettings>,
    /// The coordination service.
    pub coordinator: CoordinatorSettings,
    /// The local master.
    pub master: MasterSettings,
    /// How the master's health is checked.
    #[serde(default)]
    pub health: HealthConfig,
    /// The active role's lease.
    #[serde(default)]
    pub lease: LeaseSettings,
    /// Fencing levels; required.
    pub fencing: Option<FencingConfig>,
    /// Probe and status HTTP server.
    pub probes: ProbeSettings,
    /// Decision loop settings.
    #[serde(default)]
    pub election: ElectionSettings,
    /// Operator hooks (`pre_promote`, `on_role_change`).
    #[serde(default)]
    pub hooks: crate::hooks::HooksConfig,
    /// Watchdog fed while the decision loop is healthy.
    #[serde(default)]
    pub watchdog: crate::watchdog::WatchdogConfig,
    /// The authenticated admin and peer API (`referee admin`, graceful failover, the `agent`
    /// fencing method). Without it the agent takes no remote requests.
    #[serde(default)]
    pub admin: Option<crate::admin::AdminSettings>,
    /// Failsafe mode: keep an active master through a coordinator outage while every peer
    /// confirms it is not active.
    #[serde(default)]
    pub failsafe: FailsafeSettings,
}

/// The settings an operator may set for the whole cluster, kept in the coordinator (`referee
/// admin config set`, as Patroni's dynamic configuration): those a reload applies live, and that
/// belong to the cluster rather than to one node (a node's `priority`, `zone` and `nofailover`
/// are its own, as Patroni's tags are).
pub const CLUSTER_SETTINGS: &[(&str, &[&str])] = &[
    ("lease", &["demote_deadline_ms", "margin_ms"]),
    (
        "election",
        &[
            "loop_interval_ms",
            "backoff_after_failure_ms",
            "promote_timeout_ms",
            "min_failover_interval_ms",
            "preferred_node",
            "failback_after_ms",
            "max_lag",
            "position_publish_interval_ms",
            "position_max_age_ms",
            "rank_delay_ms",
            "cross_zone",
        ],
    ),
    ("failsafe", &["enabled", "ttl_ms"]),
];

/// Checks that `section.key` is a cluster setting ([`CLUSTER_SETTINGS`]); the error says why not.
pub fn cluster_setting(section: &str, key: &str) -> Result<(), String> {
    let Some((_, keys)) = CLUSTER_SETTINGS.iter().find(|(s, _)| *s == section) else {
        let sections: Vec<&str> = CLUSTER_SETTINGS.iter().map(|(s, _)| *s).collect();
        return Err(format!(
            "`{section}.{key}`: `{section}` has no settings for the whole cluster; those are in {}",
            sections.join(", ")
        ));
    };
    if keys.contains(&key) {
        return Ok(());
    }
    let node_own = ["priority", "zone", "nofailover"];
    Err(if section == "election" && node_own.contains(&key) {
        format!("`election.{key}` is each node's own (set it in that node's configuration), not the cluster's")
    } else {
        format!("`{section}.{key}` is not a setting for the whole cluster; `{section}` has {}", keys.join(", "))
    })
}

/// Another node of the cluster: its id and how to fence its master (the same keys as
/// `master`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSettings {
    /// Its node id (its agent's `node_id`).
    pub node_id: String,
    /// The host its master runs on.
    pub host: String,
    /// Its master's service port.
    pub port: u16,
    /// Its master's HA endpoint base URL, if it speaks the HTTP protocol.
    #[serde(default)]
    pub ha_url: Option<String>,
    /// Its master's pidfile on its host.
    #[serde(default)]
    pub pidfile: Option<PathBuf>,
    /// Its agent's peer API base URL, as that agent publishes it (`admin.peer_advertise`, or
    /// the scheme and address of `admin.peer_listen`, else `admin.listen`). Optional: a failsafe
    /// round asks each peer at the address it registered with the coordinator and at this one,
    /// so a peer the active never saw registered (its agent was down when the outage began, and
    /// came back unable to register) or that registered elsewhere can still confirm. Unset, the
    /// URL an `agent` fencing method lists for the node is used, if there is one.
    #[serde(default)]
    pub peer_url: Option<String>,
}

impl PeerSettings {
    /// How to fence this peer's master.
    pub fn target(&self) -> FenceTarget {
        let mut t = FenceTarget::new(&self.node_id, &self.host, self.port, FencingToken(0));
        t.ha_url = self.ha_url.clone();
        t.pidfile = self.pidfile.clone();
        t
    }
}

/// Failsafe mode (off by default).
///
/// When the coordinator cannot be reached and the session's lease has run out, an active agent
/// normally demotes its master. With failsafe on, it instead asks every configured peer's agent,
/// over the peer API, to confirm that it is not active; each that confirms also promises not to
/// contend for `ttl_ms`. While every member confirms, the master stays active for
/// `ttl_ms − lease.demote_deadline_ms − lease.margin_ms` after each round was sent; one
/// member missing or refusing, and the master is demoted when that runs out. Every configured
/// peer is asked, at the peer API address it registered and at its `peers` entry's `peer_url`;
/// one with neither refuses the round.
///
/// An expired session does not end failsafe by itself: the client library also declares a
/// session expired when it could not renew it in time, which in an outage says nothing about the
/// lock, and every node that could take the lock has promised not to contend for longer than
/// the confirmed extension. Failsafe ends when a lock read answers (the lock, or its absence,
/// decides then) or when a round is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FailsafeSettings {
    /// Turn failsafe mode on. Needs the `admin` section (the peer API) on every agent.
    #[serde(default)]
    pub enabled: bool,
    /// How long a peer's confirmation holds: the peer does not contend for this long after
    /// answering. Rounds are sent every quarter of it.
    #[serde(default = "default_failsafe_ttl_ms")]
    pub ttl_ms: u64,
}

impl Default for FailsafeSettings {
    fn default() -> Self {
        FailsafeSettings { enabled: false, ttl_ms: default_failsafe_ttl_ms() }
    }
}

fn default_failsafe_ttl_ms() -> u64 {
    10_000
}

/// Where and how to reach the coordinator.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorSettings {
    /// `host:port[,host:port...][/chroot]`: the bundled coordinator or an Apache ZooKeeper
    /// ensemble. With a chroot (`zk1:2181,zk2:2181/ha`) the agent's tree is
    /// `<chroot>/referee/<cluster>`; the chroot must exist.
    pub connect: String,
    /// Requested session timeout; the lease is computed from the one the server grants.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Deadline of each coordinator request.
    #[serde(default = "default_op_timeout_ms")]
    pub op_timeout_ms: u64,
    /// How stale the server this agent talks to may be behind the ensemble's leader (S in the
    /// lease formula): for Apache ZooKeeper `syncLimit × tickTime`; 0 for a single server.
    #[serde(default)]
    pub max_staleness_ms: u64,
    /// Digest credentials `user:password` for the cluster's znodes, if they are secured.
    #[serde(default)]
    pub digest: Option<String>,
}

fn default_session_timeout_ms() -> u64 {
    2500
}
fn default_op_timeout_ms() -> u64 {
    1000
}

/// The local master.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MasterSettings {
    /// Host peers use to reach (and fence) this master.
    pub host: String,
    /// The master's service port.
    pub port: u16,
    /// Its HA endpoint base URL, if it speaks the HTTP protocol.
    #[serde(default)]
    pub ha_url: Option<String>,
    /// Its pidfile, for the `kill` fencing method on this host. The agent also watches the
    /// process it names and runs a health check the moment it exits
    /// ([`crate::exit_watch`]), so a crash is seen at once rather than at the next check.
    #[serde(default)]
    pub pidfile: Option<PathBuf>,
    /// How the agent talks to it.
    pub adapter: AdapterConfig,
}

/// Lease timing (see [`AgentConfig::lease_budget`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseSettings {
    /// D: how long demoting the master may take.
    #[serde(default = "default_demote_deadline_ms")]
    pub demote_deadline_ms: u64,
    /// Extra safety margin for clock rate differences and scheduling.
    #[serde(default = "default_margin_ms")]
    pub margin_ms: u64,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        LeaseSettings { demote_deadline_ms: default_demote_deadline_ms(), margin_ms: default_margin_ms() }
    }
}

fn default_demote_deadline_ms() -> u64 {
    500
}

/// The least `lease.demote_deadline_ms` accepted: every demotion (the lease guard's, a
/// step-down's, a peer's fence) is sent with this deadline, and one of a few milliseconds is
/// never sent at all (an HTTP master is not asked, a program is killed as it starts), which
/// turns the lease's protection off without a word.
pub const MIN_DEMOTE_DEADLINE_MS: u64 = 50;
fn default_margin_ms() -> u64 {
    250
}

/// The probe server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSettings {
    /// Address to serve `/healthz`, `/active`, `/status`, ... on.
    pub listen: SocketAddr,
    /// The `host:port` this node publishes for its probes, where `referee admin` on another
    /// host reads its status. Unset: `listen`, or with a wildcard `listen`, `master.host` and
    /// the listen port (the agent runs on its master's host).
    #[serde(default)]
    pub advertise: Option<String>,
}

/// Decision loop settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ElectionSettings {
    /// A cycle runs at least this often; watches and health changes wake it earlier.
    #[serde(default = "default_loop_interval_ms")]
    pub loop_interval_ms: u64,
    /// How long to stay out of the election after a failed promotion.
    #[serde(default = "default_backoff_ms")]
    pub backoff_after_failure_ms: u64,
    /// Deadline for promoting the master. With the `pre_promote` hook's timeout and one loop
    /// interval it must fit inside the lease: a promotion is only started while the lease left
    /// covers it.
    #[serde(default = "default_promote_timeout_ms")]
    pub promote_timeout_ms: u64,
    /// Anti-flap: the least time between two failovers. A free lock is not contended until this
    /// long after this agent last saw the active change; an operator's `referee admin failover`
    /// is exempt. 0 turns it off.
    #[serde(default)]
    pub min_failover_interval_ms: u64,
    /// The node that should be active when it can: once its master has been healthy for
    /// `failback_after_ms` while another node is active (and the last failover is at least
    /// `min_failover_interval_ms` ago), its agent asks the active to hand over gracefully.
    /// Give every agent of the cluster the same value.
    #[serde(default)]
    pub preferred_node: Option<String>,
    /// How long the preferred node's master must stay healthy before it takes the role back;
    /// also the least time between two such requests.
    #[serde(default = "default_failback_after_ms")]
    pub failback_after_ms: u64,
    /// The lag gate: the most this node's master may be behind the active's published position
    /// (in the master's own units: bytes of WAL, transactions, journal entries) and still take
    /// over automatically. Absent: no gate. `referee admin failover --allow-data-loss` overrides
    /// it. Only applies while both positions are known (a master that reports none is not
    /// gated, as before positions existed).
    #[serde(default)]
    pub max_lag: Option<u64>,
    /// How often the active's agent publishes its master's position in the coordinator.
    #[serde(default = "default_position_publish_interval_ms")]
    pub position_publish_interval_ms: u64,
    /// The staleness bound of the lag gate: a published position this agent has not seen
    /// renewed for longer is not trusted, and the gate blocks an automatic takeover.
    #[serde(default = "default_position_max_age_ms")]
    pub position_max_age_ms: u64,
    /// The head start per rank: a standby with `r` better eligible candidates (more caught up,
    /// or as caught up with a higher priority) contends only once the lock has been free this
    /// long times `r`, so a dead best candidate delays the rest by a bounded time.
    #[serde(default = "default_rank_delay_ms")]
    pub rank_delay_ms: u64,
    /// Whether a standby in another zone than the last active's may take over automatically.
    #[serde(default)]
    pub cross_zone: crate::candidacy::CrossZone,
    /// This node's priority: among equally caught-up candidates the higher wins.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// This node's zone (datacenter, availability zone), for `cross_zone: deny`.
    #[serde(default)]
    pub zone: Option<String>,
    /// Never take over automatically nor by an operator's failover.
    #[serde(default)]
    pub nofailover: bool,
}

impl Default for ElectionSettings {
    fn default() -> Self {
        ElectionSettings {
            loop_interval_ms: default_loop_interval_ms(),
            backoff_after_failure_ms: default_backoff_ms(),
            promote_timeout_ms: default_promote_timeout_ms(),
            min_failover_interval_ms: 0,
            preferred_node: None,
            failback_after_ms: default_failback_after_ms(),
            max_lag: None,
            position_publish_interval_ms: default_position_publish_interval_ms(),
            position_max_age_ms: default_position_max_age_ms(),
            rank_delay_ms: default_rank_delay_ms(),
            cross_zone: crate::candidacy::CrossZone::Allow,
            priority: default_priority(),
            zone: None,
            nofailover: false,
        }
    }
}

fn default_position_publish_interval_ms() -> u64 {
    1000
}
fn default_position_max_age_ms() -> u64 {
    30_000
}
fn default_rank_delay_ms() -> u64 {
    1000
}
fn default_priority() -> u32 {
    1
}

fn default_failback_after_ms() -> u64 {
    300_000
}

fn default_loop_interval_ms() -> u64 {
    100
}
fn default_backoff_ms() -> u64 {
    1000
}
fn default_promote_timeout_ms() -> u64 {
    // With the default lease (1750 ms), a promotion and a loop interval fit inside it with
    // room for a 1 s `pre_promote` hook.
    600
}

impl AgentConfig {
    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let cfg: AgentConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_yaml(&text)
    }

    /// The lease an active master gets after each answered coordinator request, for a granted
    /// session timeout: `timeout − S − D − margin`. `None` if nothing is left.
    ///
    /// Why this is safe: the coordinator expires our session no earlier than `timeout` after
    /// the last request it answered, which it received after we sent it; a server up to `S`
    /// behind the leader may have answered for a session the leader had already expired; and
    /// demoting takes up to `D`. So a master that stops accepting writes at
    /// `send time + lease` has stopped before any peer can hold the lock.
    pub fn lease_budget(&self, granted_timeout: Duration) -> Option<Duration> {
        self.lease_rule().budget(granted_timeout)
    }

    /// The lease formula's terms.
    pub fn lease_rule(&self) -> crate::lease::LeaseRule {
        crate::lease::LeaseRule {
            staleness: Duration::from_millis(self.coordinator.max_staleness_ms),
            demote_deadline: Duration::from_millis(self.lease.demote_deadline_ms),
            margin: Duration::from_millis(self.lease.margin_ms),
        }
    }

    /// The `host:port` this node publishes for its probes ([`ProbeSettings::advertise`]).
    pub fn probe_address(&self) -> String {
        if let Some(a) = &self.probes.advertise {
            return a.clone();
        }
        let listen = self.probes.listen;
        if !listen.ip().is_unspecified() {
            return listen.to_string();
        }
        let host = &self.master.host;
        match host.contains(':') && !host.starts_with('[') {
            true => format!("[{host}]:{}", listen.port()),
            false => format!("{host}:{}", listen.port()),
        }
    }

    /// The longest a promotion may take: the `pre_promote` hook's deadline plus the master's.
    pub fn promote_budget(&self) -> Duration {
        let hook = self.hooks.pre_promote.as_ref().map_or(0, |h| h.timeout_ms);
        Duration::from_millis(hook.saturating_add(self.election.promote_timeout_ms))
    }

    /// This configuration with the cluster's settings over its own (`{"election": {"max_lag":
    /// 5}, ...}`, as `referee admin config set` keeps them), checked as a whole: a key that is
    /// not a cluster setting, a value of the wrong type, or a result the timing rules refuse is
    /// an error saying so.
    pub fn with_cluster_settings(&self, settings: &serde_json::Value) -> Result<AgentConfig, String> {
        let sections = settings.as_object().ok_or("the cluster's settings are not a mapping of sections")?;
        let own = |v: Result<serde_json::Value, serde_json::Error>| v.map_err(|e| e.to_string());
        let mut lease = own(serde_json::to_value(&self.lease))?;
        let mut election = own(serde_json::to_value(&self.election))?;
        let mut failsafe = own(serde_json::to_value(self.failsafe))?;
        for (section, keys) in sections {
            let keys = keys.as_object().ok_or_else(|| format!("`{section}` is not a mapping of settings"))?;
            for (key, value) in keys {
                cluster_setting(section, key)?;
                let target = match section.as_str() {
                    "lease" => &mut lease,
                    "election" => &mut election,
                    _ => &mut failsafe,
                };
                target[key.as_str()] = value.clone();
            }
        }
        let mut merged = self.clone();
        merged.lease = serde_json::from_value(lease).map_err(|e| format!("lease: {e}"))?;
        merged.election = serde_json::from_value(election).map_err(|e| format!("election: {e}"))?;
        merged.failsafe = serde_json::from_value(failsafe).map_err(|e| format!("failsafe: {e}"))?;
        merged.validate().map_err(|e| e.to_string())?;
        Ok(merged)
    }

    /// How to fence every configured peer.
    pub fn peer_targets(&self) -> Vec<FenceTarget> {
        self.peers.iter().map(PeerSettings::target).collect()
    }

    /// Every configured peer's id with the peer API URL the configuration gives for it: its
    /// `peer_url`, else the first URL an `agent` fencing method lists for it.
    pub fn peer_api_urls(&self) -> Vec<(String, Option<String>)> {
        let fencing_url = |node: &str| {
            self.fencing.iter().flat_map(|f| &f.levels).flat_map(|l| &l.methods).find_map(|m| match m {
                referee_fencing::MethodConfig::Agent(agent) => agent.peers.get(node).cloned(),
                _ => None,
            })
        };
        self.peers.iter().map(|p| (p.node_id.clone(), p.peer_url.clone().or_else(|| fencing_url(&p.node_id)))).collect()
    }

    /// How peers fence this node's master (its token is filled in per acquisition).
    pub fn own_target(&self) -> FenceTarget {
        let mut t = FenceTarget::new(&self.node_id, &self.master.host, self.master.port, FencingToken(0));
        t.ha_url = self.master.ha_url.clone();
        t.pidfile = self.master.pidfile.clone();
        t.self_fence_ms = self.watchdog.self_fence_ms();
        t
    }

    /// Checks ranges and the timing rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 64
                && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        };
        if !name_ok(&self.cluster) {
            return Err(invalid(
                "cluster",
                format!("is {:?}; use 1-64 letters, digits, '-', '_' or '.'", self.cluster),
            ));
        }
        if !name_ok(&self.node_id) {
            return Err(invalid(
                "node_id",
                format!("is {:?}; use 1-64 letters, digits, '-', '_' or '.'", self.node_id),
            ));
        }
        self.validate_peers(&name_ok)?;
        self.validate_master_address()?;
        self.watchdog.validate(self.election.loop_interval_ms).map_err(|(key, problem)| invalid(key, problem))?;
        if let Some(problem) = crate::election::connect_string_problem(&self.coordinator.connect) {
            return Err(invalid("coordinator.connect", problem));
        }
        if let Some(d) = &self.coordinator.digest {
            if d.split_once(':').is_none_or(|(u, p)| u.is_empty() || p.is_empty()) {
                return Err(invalid("coordinator.digest", "must be user:password"));
            }
        }
        if self.coordinator.op_timeout_ms == 0 {
            return Err(invalid("coordinator.op_timeout_ms", "is 0; give coordinator requests some ms"));
        }
        self.master.adapter.validate().map_err(|e| invalid("master.adapter", e.to_string()))?;
        self.health.validate().map_err(|e| invalid("health", e.to_string()))?;
        let Some(fencing) = &self.fencing else {
            return Err(invalid(
                "fencing",
                "is missing; an agent without fencing could promote while the old active still serves. \
                 Configure at least one level (see fencing/fencing.example.yaml)",
            ));
        };
        fencing.validate().map_err(|e| ConfigError::Fencing(e.to_string()))?;
        if self.lease.demote_deadline_ms < MIN_DEMOTE_DEADLINE_MS {
            return Err(invalid(
                "lease.demote_deadline_ms",
                format!(
                    "is {} ms; a demotion needs time to be sent and done (at least {MIN_DEMOTE_DEADLINE_MS} ms): give \
                     it how long the master takes to step down",
                    self.lease.demote_deadline_ms
                ),
            ));
        }
        let timeout = Duration::from_millis(self.coordinator.session_timeout_ms);
        let Some(lease) = self.lease_budget(timeout) else {
            return Err(invalid(
                "coordinator.session_timeout_ms",
                format!(
                    "is {} ms, which leaves no lease after max_staleness_ms ({}) + lease.demote_deadline_ms ({}) + \
                     lease.margin_ms ({}); raise the session timeout or lower those",
                    self.coordinator.session_timeout_ms,
                    self.coordinator.max_staleness_ms,
                    self.lease.demote_deadline_ms,
                    self.lease.margin_ms
                ),
            ));
        };
        let loop_interval = Duration::from_millis(self.election.loop_interval_ms);
        if loop_interval.is_zero() || loop_interval * 2 >= lease {
            return Err(invalid(
                "election.loop_interval_ms",
                format!(
                    "is {} ms but the lease is {} ms; the loop renews the lease, so it must run at least twice per lease",
                    self.election.loop_interval_ms,
                    lease.as_millis()
                ),
            ));
        }
        if self.coordinator.op_timeout_ms >= self.coordinator.session_timeout_ms {
            return Err(invalid(
                "coordinator.op_timeout_ms",
                "must be below coordinator.session_timeout_ms, or one slow request outlives the session",
            ));
        }
        self.hooks.validate().map_err(|e| invalid("hooks", e))?;
        if let Some(a) = &self.probes.advertise {
            let ok = a.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok || a.contains('/') {
                return Err(invalid("probes.advertise", format!("is {a:?}, which is not host:port")));
            }
        }
        if let Some(admin) = &self.admin {
            admin.validate().map_err(|e| invalid("admin", e.to_string()))?;
            if admin.listen == self.probes.listen || admin.peer_listen == Some(self.probes.listen) {
                return Err(invalid("admin.listen", "must differ from probes.listen"));
            }
        }
        if self.election.promote_timeout_ms == 0 {
            return Err(invalid("election.promote_timeout_ms", "is 0; give the master time to promote"));
        }
        // A promotion starts only while the lease left covers it; one that could never fit
        // would leave the lock held and the master standby for good.
        let promote = self.promote_budget();
        if promote.saturating_add(loop_interval) >= lease {
            let hook = self.hooks.pre_promote.as_ref().map_or(0, |h| h.timeout_ms);
            return Err(invalid(
                "election.promote_timeout_ms",
                format!(
                    "is {} ms; with hooks.pre_promote.timeout_ms ({hook} ms) and one loop interval ({} ms) it must fit \
                     inside the lease ({} ms at coordinator.session_timeout_ms {}): lower them, or raise the session \
                     timeout",
                    self.election.promote_timeout_ms,
                    self.election.loop_interval_ms,
                    lease.as_millis(),
                    self.coordinator.session_timeout_ms
                ),
            ));
        }
        if let Some(preferred) = &self.election.preferred_node {
            if !name_ok(preferred) {
                return Err(invalid("election.preferred_node", format!("is {preferred:?}, which is not a node id")));
            }
            if self.election.failback_after_ms < self.election.loop_interval_ms {
                return Err(invalid(
                    "election.failback_after_ms",
                    "is shorter than election.loop_interval_ms; give the preferred node's master time to prove healthy",
                ));
            }
            if *preferred == self.node_id && self.admin.is_none() {
                return Err(invalid(
                    "election.preferred_node",
                    "names this node, which then asks the active to hand over through the peer API; configure `admin`",
                ));
            }
        }
        self.validate_candidacy(&name_ok)?;
        if self.failsafe.enabled {
            if self.admin.is_none() {
                return Err(invalid(
                    "failsafe.enabled",
                    "needs the `admin` section: failsafe asks every peer's agent through the peer API",
                ));
            }
            let spent = self.lease.demote_deadline_ms + self.lease.margin_ms;
            if self.failsafe.ttl_ms < 2 * spent || self.failsafe.ttl_ms < 4 * self.election.loop_interval_ms {
                return Err(invalid(
                    "failsafe.ttl_ms",
                    format!(
                        "is {} ms; it must be at least twice lease.demote_deadline_ms + lease.margin_ms ({spent} ms) and \
                         four loop intervals, so a confirmed round leaves a lease",
                        self.failsafe.ttl_ms
                    ),
                ));
            }
            let most = crate::failsafe::MAX_PROMISE.as_millis();
            if u128::from(self.failsafe.ttl_ms) > most {
                return Err(invalid(
                    "failsafe.ttl_ms",
                    format!(
                        "is {} ms; a peer promises to stay out of the election for at most {most} ms, and an \
                         extension longer than its promise could outlast it: set at most {most}",
                        self.failsafe.ttl_ms
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks the lag gate, the ranking and the node tags of the `election` section.
    fn validate_candidacy(&self, name_ok: &dyn Fn(&str) -> bool) -> Result<(), ConfigError> {
        let e = &self.election;
        if e.position_publish_interval_ms < e.loop_interval_ms {
            return Err(invalid(
                "election.position_publish_interval_ms",
                format!(
                    "is {} ms, shorter than election.loop_interval_ms ({} ms); the position is published from the \
                     decision loop, so raise it",
                    e.position_publish_interval_ms, e.loop_interval_ms
                ),
            ));
        }
        // After the active dies its last position is at most one publish interval old, and the
        // lock is free at most a session timeout later; the lowest-ranked standby then waits
        // its head start. The gate must still trust the position by then, or every failover
        // would need an operator. (A hung master's detection is added where the policy is
        // made: see `position_max_age`.)
        let needed = self.position_age_needed(self.coordinator.session_timeout_ms);
        if e.position_max_age_ms < needed {
            return Err(invalid(
                "election.position_max_age_ms",
                format!(
                    "is {} ms; it must be at least coordinator.session_timeout_ms + twice \
                     election.position_publish_interval_ms + election.rank_delay_ms per peer ({needed} ms), or the \
                     position would go stale before a failover could use it",
                    e.position_max_age_ms
                ),
            ));
        }
        if let Some(zone) = &e.zone {
            if !name_ok(zone) {
                return Err(invalid(
                    "election.zone",
                    format!("is {zone:?}; use 1-64 letters, digits, '-', '_' or '.'"),
                ));
            }
        }
        if e.cross_zone == crate::candidacy::CrossZone::Deny && e.zone.is_none() {
            return Err(invalid(
                "election.cross_zone",
                "is deny but election.zone is not set; give this node its zone (on every node), or allow",
            ));
        }
        if e.nofailover && e.preferred_node.as_deref() == Some(self.node_id.as_str()) {
            return Err(invalid(
                "election.nofailover",
                "is true on the preferred node; a node that must never be promoted cannot be preferred",
            ));
        }
        Ok(())
    }

    /// Checks `peers`: at least one, ids unique and not this node's, each reachable.
    fn validate_peers(&self, name_ok: &dyn Fn(&str) -> bool) -> Result<(), ConfigError> {
        if self.peers.is_empty() {
            return Err(invalid(
                "peers",
                "is missing or empty; list every other node of the cluster (node_id, host, port, and ha_url and \
                 pidfile as in `master`), so that a node that wins the lock with no breadcrumb can fence them all",
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for peer in &self.peers {
            if !name_ok(&peer.node_id) {
                return Err(invalid(
                    "peers",
                    format!("has node_id {:?}; use 1-64 letters, digits, '-', '_' or '.'", peer.node_id),
                ));
            }
            if peer.node_id == self.node_id {
                return Err(invalid(
                    "peers",
                    format!("lists {:?}, this node's own id; list only the other nodes", peer.node_id),
                ));
            }
            if !seen.insert(peer.node_id.as_str()) {
                return Err(invalid("peers", format!("lists {:?} twice; give each node once", peer.node_id)));
            }
            if peer.host.trim().is_empty() || peer.port == 0 {
                return Err(invalid(
                    "peers",
                    format!("entry {:?} needs a host and a non-zero port to fence its master", peer.node_id),
                ));
            }
            if let Some(url) = &peer.peer_url {
                let parsed = reqwest::Url::parse(url).ok();
                if !parsed.is_some_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some()) {
                    return Err(invalid(
                        "peers",
                        format!(
                            "entry {:?} has peer_url {url:?}, not an http(s) URL with a host; give its agent's peer \
                             API base URL, e.g. \"http://db2.example.internal:8444\", or leave it out",
                            peer.node_id
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The master's published address: a host, a non-zero port and, if given, an http(s) HA
    /// URL; none of them an address every host calls its own (loopback, a wildcard,
    /// `localhost`) unless every peer is on this host too. Peers fence this master at what it
    /// publishes (the breadcrumb carries it): at 127.0.0.1, a winner on another host would
    /// step down, kill or cut off its own master and count the old active fenced.
    fn validate_master_address(&self) -> Result<(), ConfigError> {
        if self.master.host.trim().is_empty() {
            return Err(invalid("master.host", "is empty; give the host other nodes reach this master at"));
        }
        if self.master.port == 0 {
            return Err(invalid("master.port", "is 0; give the port the master serves on"));
        }
        let ha_host = match &self.master.ha_url {
            None => None,
            Some(url) => match reqwest::Url::parse(url).ok().filter(|u| matches!(u.scheme(), "http" | "https")) {
                Some(u) => u.host_str().map(str::to_string),
                None => {
                    return Err(invalid(
                        "master.ha_url",
                        format!(
                            "is {url:?}, not an http(s) URL with a host; give the master's HA endpoint base URL as \
                             other hosts reach it, e.g. \"http://db1.example.internal:8080\", or leave it out"
                        ),
                    ))
                }
            },
        };
        let Some(remote) = self.peers.iter().find(|p| !names_this_host(&p.host)) else { return Ok(()) };
        for (key, host) in [("master.host", Some(self.master.host.as_str())), ("master.ha_url", ha_host.as_deref())] {
            if let Some(host) = host.filter(|h| names_this_host(h)) {
                return Err(invalid(
                    key,
                    format!(
                        "names {host}, which every host takes for itself, while peer {} is at {}: peers fence this \
                         master at the address it publishes, and at {host} they would reach their own; give the \
                         address other hosts reach this master at (as the peers' entries give theirs)",
                        remote.node_id, remote.host
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The decision core's policy from the `election` section.
    pub fn policy(&self) -> crate::decide::Policy {
        crate::decide::Policy {
            backoff_after_failure: Duration::from_millis(self.election.backoff_after_failure_ms),
            min_failover_interval: Duration::from_millis(self.election.min_failover_interval_ms),
            failback_after: (self.election.preferred_node.as_deref() == Some(self.node_id.as_str()))
                .then(|| Duration::from_millis(self.election.failback_after_ms)),
            promote_budget: self.promote_budget(),
            candidacy: crate::candidacy::CandidacyPolicy {
                max_lag: self.election.max_lag,
                position_max_age: self.position_max_age(),
                cross_zone: self.election.cross_zone,
                rank_delay: Duration::from_millis(self.election.rank_delay_ms),
            },
        }
    }

    /// This node's tags, with its master's position (the driver's to add).
    pub fn own_candidacy(&self) -> crate::candidacy::OwnCandidacy {
        crate::candidacy::OwnCandidacy {
            position: None,
            priority: self.election.priority,
            zone: self.election.zone.clone(),
            nofailover: self.election.nofailover,
            drained: None,
            state_unread: false,
        }
    }

    /// How old a published position may be and still be trusted, from `lock_free_after` (how
    /// long after the active's last publication its lock may be freed): that, twice the
    /// publish interval, and every lower rank's head start.
    fn position_age_needed(&self, lock_free_after: u64) -> u64 {
        let others = u64::try_from(self.peers.len()).unwrap_or(u64::MAX);
        lock_free_after
            .saturating_add(self.election.position_publish_interval_ms.saturating_mul(2))
            .saturating_add(self.election.rank_delay_ms.saturating_mul(others))
    }

    /// The lag gate's staleness bound: `position_max_age_ms`, raised with the gate on to cover
    /// a hung master's detection (its agent keeps the lock, publishing nothing, until the
    /// master is declared not responding: `health.slow_fall` × the longer of `interval_ms` and
    /// `timeout_ms`), so that the position is still trusted when the lock is freed and an
    /// automatic failover of a hung master can happen. Raised, not refused: a cluster's
    /// `max_lag` set live must never be dropped (and the gate with it) over a node's health
    /// settings.
    pub fn position_max_age(&self) -> Duration {
        let hung = u64::try_from(self.health.hung_detection().as_millis()).unwrap_or(u64::MAX);
        let needed = if self.election.max_lag.is_some() { self.position_age_needed(hung) } else { 0 };
        Duration::from_millis(self.election.position_max_age_ms.max(needed))
    }

    /// How long a failsafe round that every peer confirmed keeps the master active, counted
    /// from when the round was sent: `ttl − D − margin`.
    pub fn failsafe_lease(&self) -> Duration {
        Duration::from_millis(self.failsafe.ttl_ms.saturating_sub(self.lease.demote_deadline_ms + self.lease.margin_ms))
    }
}

/// Whether `host` names whichever host reads it: a loopback or wildcard address, or
/// `localhost`.
fn names_this_host(host: &str) -> bool {
    let host = host.trim().trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.is_unspecified())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHIPPED: [&str; 2] =
        [include_str!("../../config/agent-db1.yaml"), include_str!("../../config/agent-db2.yaml")];

    fn minimal() -> String {
        r#"
cluster: c
node_id: a
peers:
  - {node_id: b, host: 127.0.0.2, port: 9002, ha_url: "http://127.0.0.2:9002"}
coordinator: {connect: "127.0.0.1:2181"}
master:
  host: 127.0.0.1
  port: 9001
  adapter: {kind: http, url: "http://127.0.0.1:9001"}
fencing:
  overall_timeout_ms: 3000
  levels:
    - methods:
        - {kind: graceful, timeout_ms: 500}
probes: {listen: "127.0.0.1:8301"}
"#
        .to_string()
    }

    fn refused(yaml: &str) -> String {
        AgentConfig::from_yaml(yaml).expect_err("must be refused").to_string()
    }

    /// Where `referee admin` on another host reads a node's status: never a wildcard or the
    /// reader's own loopback unless the node listens there.
    #[test]
    fn the_published_probe_address_is_one_other_hosts_can_reach() {
        for (text, host) in SHIPPED.iter().zip(["db1.example.internal:8301", "db2.example.internal:8301"]) {
            let cfg = AgentConfig::from_yaml(text).unwrap();
            assert_eq!(cfg.probe_address(), host, "a wildcard listen publishes the master's host");
        }
        let with = |probes: &str| {
            AgentConfig::from_yaml(&minimal().replace("probes: {listen: \"127.0.0.1:8301\"}", probes))
                .map(|c| c.probe_address())
        };
        assert_eq!(with("probes: {listen: \"127.0.0.1:8301\"}").unwrap(), "127.0.0.1:8301");
        assert_eq!(with("probes: {listen: \"0.0.0.0:8301\"}").unwrap(), "127.0.0.1:8301", "master.host");
        let advertised = "probes: {listen: \"0.0.0.0:8301\", advertise: \"a.example:8301\"}";
        assert_eq!(with(advertised).unwrap(), "a.example:8301");
        let e = with("probes: {listen: \"0.0.0.0:8301\", advertise: \"a.example\"}").unwrap_err().to_string();
        assert!(e.contains("probes.advertise") && e.contains("host:port"), "{e}");
    }

    /// Peers fence this master at the address it publishes (the breadcrumb carries it): one
    /// that means "this host" everywhere would make a winner on another host step down, kill
    /// or cut off its own master and count the old active fenced.
    #[test]
    fn a_master_address_that_every_host_calls_its_own_is_refused_unless_the_cluster_is_on_one_host() {
        let remote_peer = |m: &str| {
            minimal()
                .replace(
                    "host: 127.0.0.2, port: 9002, ha_url: \"http://127.0.0.2:9002\"",
                    "host: db2.example, port: 9002",
                )
                .replace("  host: 127.0.0.1\n  port: 9001\n", m)
        };
        for (master, key) in [
            ("  host: 127.0.0.1\n  port: 9001\n", "master.host"),
            ("  host: localhost\n  port: 9001\n", "master.host"),
            ("  host: \"::1\"\n  port: 9001\n", "master.host"),
            ("  host: 0.0.0.0\n  port: 9001\n", "master.host"),
            ("  host: db1.example\n  port: 9001\n  ha_url: \"http://127.0.0.1:9001\"\n", "master.ha_url"),
            ("  host: db1.example\n  port: 9001\n  ha_url: \"http://[::1]:9001\"\n", "master.ha_url"),
        ] {
            let e = refused(&remote_peer(master));
            assert!(e.contains(key) && e.contains("db2"), "{master:?}: {e}");
        }
        AgentConfig::from_yaml(&remote_peer(
            "  host: db1.example\n  port: 9001\n  ha_url: \"http://db1.example:9001\"\n",
        ))
        .expect("addresses other hosts reach");
        // Every node on this host (a demo, a test): loopback is right.
        AgentConfig::from_yaml(&minimal()).expect("a cluster on one host");
        // And the master's own entry is checked as a peer's is.
        for (master, key) in [
            ("  host: \"\"\n  port: 9001\n", "master.host"),
            ("  host: 127.0.0.1\n  port: 0\n", "master.port"),
            ("  host: 127.0.0.1\n  port: 9001\n  ha_url: garbage\n", "master.ha_url"),
        ] {
            let e = refused(&minimal().replace("  host: 127.0.0.1\n  port: 9001\n", master));
            assert!(e.contains(key), "{master:?}: {e}");
        }
    }

    #[test]
    fn shipped_configs_are_valid() {
        for text in SHIPPED {
            let cfg = AgentConfig::from_yaml(text).unwrap_or_else(|e| panic!("{e}"));
            // 2500 ms granted, less the ensemble's 100 ms staleness, the 500 ms demotion
            // deadline and the 250 ms margin.
            assert_eq!(cfg.lease_budget(Duration::from_millis(2500)), Some(Duration::from_millis(1650)));
        }
        let cfg = AgentConfig::from_yaml(&minimal()).unwrap();
        assert_eq!(cfg.own_target().port, 9001);
    }

    #[test]
    fn lease_formula() {
        let cfg = AgentConfig::from_yaml(&minimal()).unwrap();
        // 2500 - 0 - 500 - 250
        assert_eq!(cfg.lease_budget(Duration::from_millis(2500)), Some(Duration::from_millis(1750)));
        assert_eq!(cfg.lease_budget(Duration::from_millis(750)), None, "nothing left");
    }

    /// A chroot after the last server (`zk1:2181,zk2:2181/ha`) puts the agent's tree under it, as
    /// Apache ZooKeeper's clients read a connect string; one that is not a plain znode path is
    /// refused naming it.
    #[test]
    fn a_chroot_connect_string_is_accepted_or_refused_naming_the_chroot() {
        let with = |connect: &str| minimal().replace("connect: \"127.0.0.1:2181\"", &format!("connect: {connect:?}"));
        for good in ["zk1:2181,zk2:2181,zk3:2181/ha", "127.0.0.1:2181/ha/referee-prod", "zk1:2181/a.b_c-d"] {
            let cfg = AgentConfig::from_yaml(&with(good)).unwrap_or_else(|e| panic!("{good:?} refused: {e}"));
            assert_eq!(cfg.coordinator.connect, good);
        }
        for (bad, named) in [
            ("zk1:2181/ha/", "/ha/"),
            ("zk1:2181/", "\"/\""),
            ("zk1:2181/ha//x", "/ha//x"),
            ("zk1:2181/ha/../x", "/ha/../x"),
            ("zk1:2181/./x", "/./x"),
            ("zk1:2181/ha,zk2:2181", "/ha,zk2:2181"),
            ("zk1:2181/zookeeper", "/zookeeper"),
        ] {
            let e = refused(&with(bad));
            assert!(e.contains("coordinator.connect") && e.contains("chroot") && e.contains(named), "{bad:?}: {e}");
        }
        let e = refused(&with("zk1:2181,zk2/ha"));
        assert!(e.contains("\"zk2\"") && e.contains("host:port"), "{e}");
    }

    #[test]
    fn refuses_with_the_key_and_the_fix() {
        let no_fencing = minimal().replace(
            "fencing:\n  overall_timeout_ms: 3000\n  levels:\n    - methods:\n        - {kind: graceful, timeout_ms: 500}\n",
            "",
        );
        assert!(refused(&no_fencing).contains("`fencing` is missing"), "{}", refused(&no_fencing));
        let typo = minimal().replace("cluster: c", "cluster: c\nclustr: d");
        assert!(refused(&typo).contains("clustr"), "{}", refused(&typo));
        let no_lease =
            minimal().replace("connect: \"127.0.0.1:2181\"", "connect: \"127.0.0.1:2181\", session_timeout_ms: 700");
        let e = refused(&no_lease);
        assert!(e.contains("coordinator.session_timeout_ms") && e.contains("leaves no lease"), "{e}");
        let bad_host = minimal().replace("127.0.0.1:2181", "nohostport");
        assert!(refused(&bad_host).contains("coordinator.connect"), "{}", refused(&bad_host));
        let slow_loop = minimal().replace("probes:", "election: {loop_interval_ms: 1000}\nprobes:");
        assert!(refused(&slow_loop).contains("election.loop_interval_ms"), "{}", refused(&slow_loop));
        let bad_node = minimal().replace("node_id: a", "node_id: \"a/b\"");
        assert!(refused(&bad_node).contains("node_id"), "{}", refused(&bad_node));
        let bad_adapter = minimal().replace("http://127.0.0.1:9001\"}", "ftp://x\"}");
        assert!(refused(&bad_adapter).contains("master.adapter"), "{}", refused(&bad_adapter));
        let bad_fence = minimal().replace("{kind: graceful, timeout_ms: 500}", "{kind: ssh, timeout_ms: 500}");
        assert!(refused(&bad_fence).contains("fencing"), "{}", refused(&bad_fence));
        let failsafe_alone = minimal().replace("probes:", "failsafe: {enabled: true}\nprobes:");
        assert!(refused(&failsafe_alone).contains("`failsafe.enabled` needs the `admin` section"));
        let preferred_alone = minimal().replace("probes:", "election: {preferred_node: a}\nprobes:");
        assert!(refused(&preferred_alone).contains("`election.preferred_node` names this node"));
        let bad_preferred = minimal().replace("probes:", "election: {preferred_node: \"x/y\"}\nprobes:");
        assert!(refused(&bad_preferred).contains("election.preferred_node"));
        for ms in [0, 49] {
            let no_demote = minimal().replace("probes:", &format!("lease: {{demote_deadline_ms: {ms}}}\nprobes:"));
            let e = refused(&no_demote);
            assert!(e.contains(&format!("`lease.demote_deadline_ms` is {ms} ms")), "{e}");
        }
        let least = minimal().replace("probes:", "lease: {demote_deadline_ms: 50}\nprobes:");
        assert!(AgentConfig::from_yaml(&least).is_ok());
    }

    #[test]
    fn peers_are_required_unique_and_other_than_this_node() {
        let peers = "peers:\n  - {node_id: b, host: 127.0.0.2, port: 9002, ha_url: \"http://127.0.0.2:9002\"}\n";
        let without = minimal().replace(peers, "");
        let e = refused(&without);
        assert!(e.contains("`peers` is missing or empty; list every other node of the cluster"), "{e}");
        let empty = minimal().replace(peers, "peers: []\n");
        assert!(refused(&empty).contains("`peers` is missing or empty"), "{}", refused(&empty));
        let own = minimal().replace("node_id: b,", "node_id: a,");
        assert!(refused(&own).contains("this node's own id"), "{}", refused(&own));
        let twice = minimal().replace(peers, &format!("{peers}  - {{node_id: b, host: h, port: 1}}\n"));
        assert!(refused(&twice).contains("lists \"b\" twice"), "{}", refused(&twice));
        let no_port = minimal().replace("port: 9002,", "port: 0,");
        assert!(refused(&no_port).contains("non-zero port"), "{}", refused(&no_port));
        let unknown = minimal().replace("port: 9002,", "port: 9002, role: x,");
        assert!(refused(&unknown).contains("role"), "{}", refused(&unknown));
        let cfg = AgentConfig::from_yaml(&minimal()).unwrap();
        let targets = cfg.peer_targets();
        assert_eq!(targets.len(), 1);
        assert_eq!((targets[0].node_id.as_str(), targets[0].host.as_str(), targets[0].port), ("b", "127.0.0.2", 9002));
        assert_eq!(targets[0].ha_url.as_deref(), Some("http://127.0.0.2:9002"));
    }

    #[test]
    fn a_peers_api_url_is_its_peer_url_or_the_agent_fencing_methods() {
        let cfg = AgentConfig::from_yaml(&minimal()).unwrap();
        assert_eq!(cfg.peer_api_urls(), vec![("b".to_string(), None)]);
        let given = minimal().replace("port: 9002,", "port: 9002, peer_url: \"https://b.example:8444\",");
        let cfg = AgentConfig::from_yaml(&given).unwrap();
        assert_eq!(cfg.peer_api_urls(), vec![("b".to_string(), Some("https://b.example:8444".to_string()))]);
        // Unset: the address the `agent` fencing method asks the node at; a `peer_url` wins.
        let agent_method = "{kind: graceful, timeout_ms: 500}\n        - {kind: agent, timeout_ms: 500, \
                            secret_env: S, peers: {b: \"http://b.example:8444\"}}";
        let fenced = minimal().replace("{kind: graceful, timeout_ms: 500}", agent_method);
        let cfg = AgentConfig::from_yaml(&fenced).unwrap();
        assert_eq!(cfg.peer_api_urls(), vec![("b".to_string(), Some("http://b.example:8444".to_string()))]);
        let both = given.replace("{kind: graceful, timeout_ms: 500}", agent_method);
        let cfg = AgentConfig::from_yaml(&both).unwrap();
        assert_eq!(cfg.peer_api_urls(), vec![("b".to_string(), Some("https://b.example:8444".to_string()))]);
        for bad in ["b.example:8444", "ftp://b.example", "http://", "not a url"] {
            let yaml = minimal().replace("port: 9002,", &format!("port: 9002, peer_url: \"{bad}\","));
            let e = refused(&yaml);
            assert!(e.contains(&format!("entry \"b\" has peer_url {bad:?}, not an http(s) URL with a host")), "{e}");
        }
    }

    #[test]
    fn the_clusters_settings_go_over_the_file_and_are_checked_as_a_whole() {
        // A hung master declared not responding soon enough for the lag gate's default age.
        let gated = "election: {max_lag: 9}\nhealth: {interval_ms: 100, timeout_ms: 300}\nprobes:";
        let cfg = AgentConfig::from_yaml(&minimal().replace("probes:", gated)).unwrap();
        let merged = cfg
            .with_cluster_settings(&serde_json::json!({
                "election": {"max_lag": 5, "min_failover_interval_ms": 1000, "rank_delay_ms": 700},
                "lease": {"margin_ms": 200},
            }))
            .unwrap();
        assert_eq!(merged.election.max_lag, Some(5));
        assert_eq!(merged.election.min_failover_interval_ms, 1000);
        assert_eq!(merged.election.rank_delay_ms, 700);
        assert_eq!(merged.lease.margin_ms, 200);
        // What the settings do not name stays as the file has it; null clears an optional one.
        assert_eq!(merged.election.promote_timeout_ms, cfg.election.promote_timeout_ms);
        let cleared = cfg.with_cluster_settings(&serde_json::json!({"election": {"max_lag": null}})).unwrap();
        assert_eq!(cleared.election.max_lag, None);
        for (settings, says) in [
            (serde_json::json!({"election": {"zone": "x"}}), "`election.zone` is each node's own"),
            (
                serde_json::json!({"election": {"max_lagg": 1}}),
                "`election.max_lagg` is not a setting for the whole cluster",
            ),
            (
                serde_json::json!({"coordinator": {"connect": "x:1"}}),
                "`coordinator` has no settings for the whole cluster",
            ),
            (serde_json::json!({"election": {"max_lag": "lots"}}), "election: invalid type"),
            (serde_json::json!({"election": {"cross_zone": "deny"}}), "election.zone is not set"),
            (serde_json::json!({"election": {"promote_timeout_ms": 60000}}), "must fit inside the lease"),
            (serde_json::json!({"failsafe": {"enabled": true}}), "`failsafe.enabled` needs the `admin` section"),
            (serde_json::json!(["election"]), "not a mapping"),
        ] {
            let e = cfg.with_cluster_settings(&settings).unwrap_err();
            assert!(e.contains(says), "{settings}: {e}");
        }
    }

    #[test]
    fn a_promotion_must_fit_inside_the_lease() {
        // The default promote timeout fits the default lease (1750 ms).
        let cfg = AgentConfig::from_yaml(&minimal()).unwrap();
        assert!(cfg.promote_budget() + Duration::from_millis(100) < Duration::from_millis(1750), "{cfg:?}");
        let slow = minimal().replace("probes:", "election: {promote_timeout_ms: 2000}\nprobes:");
        let e = refused(&slow);
        assert!(
            e.contains(
                "`election.promote_timeout_ms` is 2000 ms; with hooks.pre_promote.timeout_ms (0 ms) and one loop \
                        interval (100 ms) it must fit inside the lease (1750 ms"
            ),
            "{e}"
        );
        let hook = "hooks:\n  pre_promote: {command: [/bin/true], timeout_ms: 1100}\nprobes:";
        let e = refused(&minimal().replace("probes:", hook));
        assert!(e.contains("hooks.pre_promote.timeout_ms (1100 ms)"), "{e}");
        let fits = "hooks:\n  pre_promote: {command: [/bin/true], timeout_ms: 1000}\nprobes:";
        let cfg = AgentConfig::from_yaml(&minimal().replace("probes:", fits)).unwrap();
        assert_eq!(cfg.promote_budget(), Duration::from_millis(1600));
        assert_eq!(cfg.policy().promote_budget, Duration::from_millis(1600));
    }

    #[test]
    fn policy_and_failsafe_lease_follow_the_settings() {
        let with = |extra: &str| AgentConfig::from_yaml(&minimal().replace("probes:", &format!("{extra}\nprobes:")));
        let cfg = with("election: {preferred_node: b, min_failover_interval_ms: 30000}").unwrap();
        let policy = cfg.policy();
        assert_eq!(policy.min_failover_interval, Duration::from_secs(30));
        assert_eq!(policy.failback_after, None, "b is preferred, this is a");
        let cfg = with("election: {preferred_node: a, failback_after_ms: 60000}\nadmin: {token_env: X}").unwrap();
        assert_eq!(cfg.policy().failback_after, Some(Duration::from_secs(60)));
        let cfg = with("failsafe: {enabled: true, ttl_ms: 4000}\nadmin: {token_env: X}").unwrap();
        // 4000 - 500 - 250
        assert_eq!(cfg.failsafe_lease(), Duration::from_millis(3250));
        let e = with("failsafe: {enabled: true, ttl_ms: 1000}\nadmin: {token_env: X}").unwrap_err().to_string();
        assert!(e.contains("failsafe.ttl_ms"), "{e}");
        // A peer promises at most `failsafe::MAX_PROMISE`: a longer extension would outlast it.
        let e = with("failsafe: {enabled: true, ttl_ms: 900000}\nadmin: {token_env: X}").unwrap_err().to_string();
        assert!(e.contains("failsafe.ttl_ms") && e.contains("600000"), "{e}");
        let cfg = with("failsafe: {enabled: true, ttl_ms: 600000}\nadmin: {token_env: X}").unwrap();
        assert!(cfg.failsafe_lease() < crate::failsafe::MAX_PROMISE);
    }

    #[test]
    fn candidacy_settings_default_validate_and_reach_the_policy() {
        let with = |extra: &str| AgentConfig::from_yaml(&minimal().replace("probes:", &format!("{extra}\nprobes:")));
        let cfg = AgentConfig::from_yaml(&minimal()).unwrap();
        let p = cfg.policy().candidacy;
        assert_eq!(p.max_lag, None, "no gate unless configured");
        assert_eq!(p.cross_zone, crate::candidacy::CrossZone::Allow);
        assert_eq!((p.rank_delay, p.position_max_age), (Duration::from_secs(1), Duration::from_secs(30)));
        assert_eq!(cfg.own_candidacy(), crate::candidacy::OwnCandidacy { priority: 1, ..Default::default() });
        let cfg = with(
            "election: {max_lag: 1048576, cross_zone: deny, zone: east, priority: 7, nofailover: true, \
             position_max_age_ms: 63000}",
        )
        .unwrap();
        assert_eq!(cfg.policy().candidacy.max_lag, Some(1_048_576));
        assert_eq!(cfg.policy().candidacy.cross_zone, crate::candidacy::CrossZone::Deny);
        let own = cfg.own_candidacy();
        assert_eq!((own.priority, own.zone.as_deref(), own.nofailover), (7, Some("east"), true));
        let table = [
            ("election: {cross_zone: deny}", "`election.cross_zone` is deny but election.zone is not set"),
            ("election: {cross_zone: maybe}", "cross_zone"),
            ("election: {zone: \"a b\"}", "`election.zone` is \"a b\""),
            ("election: {max_lag: -1}", "max_lag"),
            ("election: {position_publish_interval_ms: 50}", "`election.position_publish_interval_ms` is 50 ms"),
            // 2500 + 2 × 1000 + 1 peer × 1000
            ("election: {position_max_age_ms: 5000}", "must be at least coordinator.session_timeout_ms"),
            (
                "election: {preferred_node: a, nofailover: true}\nadmin: {token_env: X}",
                "`election.nofailover` is true on the preferred node",
            ),
        ];
        for (extra, expected) in table {
            let e = with(extra).expect_err(extra).to_string();
            assert!(e.contains(expected), "{extra}: {e}");
        }
        assert!(with("election: {position_max_age_ms: 5500}").is_ok());
    }

    /// A hung active's agent keeps the lock, publishing nothing, until its master is declared
    /// not responding (20 timed-out checks of 3 s with the default health settings): with the
    /// lag gate on, a position that went stale before that would block every automatic
    /// failover of a hung master. The bound is raised to cover it, never refused: a refusal
    /// would drop a cluster's `max_lag` set live, and the gate with it.
    #[test]
    fn with_the_lag_gate_on_the_position_outlasts_a_hung_masters_detection() {
        let with =
            |extra: &str| AgentConfig::from_yaml(&minimal().replace("probes:", &format!("{extra}\nprobes:"))).unwrap();
        let age = |extra: &str| with(extra).policy().candidacy.position_max_age;
        // 20 × 3000 ms, + 2 × 1000 ms publish interval + 1 peer × 1000 ms.
        assert_eq!(age("election: {max_lag: 100}"), Duration::from_millis(63_000));
        assert_eq!(age("election: {max_lag: 100, position_max_age_ms: 90000}"), Duration::from_millis(90_000));
        // Detected sooner (20 × 300 ms), the configured age is enough.
        assert_eq!(
            age("election: {max_lag: 100}\nhealth: {interval_ms: 100, timeout_ms: 300}"),
            Duration::from_secs(30)
        );
        // Without the gate, no position is judged.
        assert_eq!(age("election: {position_max_age_ms: 5500}"), Duration::from_millis(5500));
        // A cluster's max_lag is taken whatever this node's health settings.
        let merged = with("").with_cluster_settings(&serde_json::json!({"election": {"max_lag": 7}})).unwrap();
        assert_eq!(merged.policy().candidacy.max_lag, Some(7));
        assert_eq!(merged.policy().candidacy.position_max_age, Duration::from_millis(63_000));
    }
}
