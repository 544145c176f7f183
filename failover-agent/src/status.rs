//! What the agent reports: its current view, its last decision, the lease, counters, and the
//! history of role changes with the duration of each failover phase.
//!
//! The driver writes it after every cycle; the probe server reads it. The lease end is kept as a
//! boot-clock instant so every probe computes what is left at the moment it answers.

use std::collections::VecDeque;
use std::time::Duration;

use referee_fencing::{FencingToken, HaState};
use serde::Serialize;

use crate::clock::BootInstant;
use crate::model::{Health, LockView, MasterStatus, SessionView};
use crate::timeline::Mark;

/// How many transitions `/history` keeps.
pub const HISTORY_LEN: usize = 100;

/// This node's role as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Starting: not enough is known yet.
    Initializing,
    /// Our master is active, backed by our lock and a live lease.
    Active,
    /// We hold the lock and are fencing or promoting.
    Promoting,
    /// Another node is active, or nobody is, and our master is standby.
    Standby,
    /// Our master cannot serve (unhealthy, not responding).
    Unhealthy,
}

/// One role change, for `/history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transition {
    /// Wall-clock time of the change, ms since the Unix epoch.
    pub at_ms: i64,
    /// Role before.
    pub from: Role,
    /// Role after.
    pub to: Role,
    /// The decision that caused it.
    pub reason: String,
    /// Token held after the change, if any.
    pub token: Option<FencingToken>,
    /// For a promotion: how long each phase took.
    pub phases: Option<Phases>,
    /// For a role change a failover made (to active, away from it, or out of a promotion given
    /// up, whose fence the next attempt counts on): the instants this agent saw, from the first
    /// failed check or the lock seen free to the change ([`crate::timeline`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<Mark>,
    /// For a promotion given up: how many given up in a row before it, each a lock won and
    /// lost again the same way (a fence that keeps failing, say), folded into this one so
    /// that they do not push the rest of the history out.
    #[serde(skip_serializing_if = "is_zero")]
    pub attempts_before: u32,
    /// When the first of those was given up (ms since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_given_up_at_ms: Option<i64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Durations of a failover's phases, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Phases {
    /// From the lock being seen free (or our master going standby) to deciding to contend.
    pub detect_ms: u64,
    /// Winning the lock.
    pub elect_ms: u64,
    /// Fencing the previous active (0 when none was needed).
    pub fence_ms: u64,
    /// Writing the breadcrumb and promoting the master.
    pub promote_ms: u64,
}

/// Counters for `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    /// Decision cycles run.
    pub cycles: u64,
    /// Promotions of our master.
    pub promotions: u64,
    /// Demotions of our master.
    pub demotions: u64,
    /// Fence attempts by outcome.
    pub fences_fenced: u64,
    /// Fence attempts that failed.
    pub fences_failed: u64,
    /// Fence attempts that ended indeterminate.
    pub fences_indeterminate: u64,
    /// Of the fence attempts that failed or ended indeterminate, those an operator's
    /// confirmation that the node is down stood for (`referee admin confirm-down`).
    pub fences_confirmed: u64,
    /// Coordinator sessions opened.
    pub sessions: u64,
    /// Failsafe rounds every configured peer confirmed.
    pub failsafe_confirmed: u64,
    /// Failsafe rounds some member did not confirm.
    pub failsafe_refused: u64,
}

/// The cluster's settings as one agent sees them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterSettingsStatus {
    /// The version of `/referee/<cluster>/config` read.
    pub version: i32,
    /// Who set them.
    pub set_by: String,
    /// Whether they are in force here.
    pub applied: bool,
    /// Why not, when they are not.
    pub error: Option<String>,
}

/// The agent's report.
#[derive(Debug, Clone, Serialize)]
pub struct AgentStatus {
    /// Cluster name.
    pub cluster: String,
    /// Node id.
    pub node_id: String,
    /// Role.
    pub role: Role,
    /// Master health.
    pub health: Health,
    /// The failed checks behind it: a slow master (timeouts and broken connections, counted
    /// against `slow_fall`) is told apart from a failing one (unhealthy answers, counted against
    /// `fall`; a refusal at once).
    pub checks: CheckCounts,
    /// Master's reported role and token.
    pub master: Option<MasterStatus>,
    /// Coordinator session.
    pub session: SessionView,
    /// The session timeout the coordinator granted to the last session made (`None` before
    /// the first): what a peer waits out before it can take the lock of this node.
    pub granted_session_timeout_ms: Option<u64>,
    /// The session timeout the lease counts on: the lowest any server of the coordinator
    /// would grant the session on a reconnection, below the grant when the servers' bounds
    /// differ (`None` without a session).
    pub lease_session_timeout_ms: Option<u64>,
    /// The staleness the lease counts (S): `coordinator.max_staleness_ms`, or more where the
    /// coordinator's servers say they may lag their leader by more.
    pub staleness_ms: u64,
    /// Lock holder.
    pub lock: LockView,
    /// Our token while we hold the lock.
    pub token: Option<FencingToken>,
    /// Members of the cluster.
    pub members: Vec<String>,
    /// Whether failover is paused (by a request to this agent, or with the whole cluster).
    pub paused: bool,
    /// Who paused the whole cluster, while its pause record is there.
    pub cluster_paused_by: Option<String>,
    /// Who drained this node, when, and why, while its drain record is there.
    pub drained: Option<crate::model::DrainRecord>,
    /// The last decision's reason.
    pub last_decision: String,
    /// Why this node is not taking over now ("why not"), as the last decision named it;
    /// `None` while it is active or on its way.
    pub blocker: Option<crate::candidacy::Blocker>,
    /// The same, as a short sentence (for `referee admin status`).
    pub why_not: Option<String>,
    /// How far this node's master is behind the active's last published position (`None`
    /// while either is unknown).
    pub behind: Option<u64>,
    /// `behind`, while the active's published position is recent enough to trust (seen
    /// published within `election.position_max_age_ms`, as the lag gate asks): what
    /// `/standby?max_lag=N` judges by.
    pub behind_fresh: Option<u64>,
    /// The cluster's settings (`referee admin config`) as this agent last read them, and
    /// whether they are in force here; `None` while none are set.
    pub cluster_settings: Option<ClusterSettingsStatus>,
    /// The lag gate's limit (`election.max_lag`), if configured.
    pub max_lag: Option<u64>,
    /// The last step that failed, and why (kept until the next failure).
    pub last_failure: Option<String>,
    /// This agent's admin API base URL, when it serves one (for `referee admin`).
    pub admin_addr: Option<String>,
    /// When the last cycle ran (wall clock, ms).
    pub last_cycle_at_ms: i64,
    /// Counters.
    pub counters: Counters,
    /// The last round of fencing checks against every peer (`None` before the first, or with
    /// `fencing.check_interval_ms: 0`).
    pub fencing_checks: Option<crate::fence_checks::FencingChecks>,
    /// The watchdog, while one is configured to self-fence (`None` otherwise).
    pub watchdog: Option<WatchdogStatus>,
    /// Lease end on the boot clock; not serialised (the lease left is, at answer time).
    #[serde(skip)]
    pub lease_until: Option<BootInstant>,
    /// When the last cycle ran, on the boot clock.
    #[serde(skip)]
    pub last_cycle_at: Option<BootInstant>,
    /// When the decision loop last showed it was alive, on the boot clock: at the end of each
    /// cycle, and every tend period while it waits on a long but bounded step (a fence, a
    /// promotion, a coordinator call) that keeps the watchdog fed. A hung step stops it.
    #[serde(skip)]
    pub loop_alive_at: Option<BootInstant>,
    /// Role changes, oldest first.
    #[serde(skip)]
    pub history: VecDeque<Transition>,
    /// When this node last left the active role, on the boot clock (the preferred node's
    /// failback clock starts no earlier).
    #[serde(skip)]
    pub left_active_at: Option<BootInstant>,
    /// The handover record last read while the lock was free (its data's zxid) and when this
    /// agent first saw it, on the boot clock: the hold it gives its target counts from then.
    #[serde(skip)]
    pub handover_seen: Option<(i64, BootInstant)>,
    /// The active's token when this node asked it to cede for a failover to this node (0 when
    /// nobody was active): the pending failover has failed once another node holds the lock
    /// with a newer token.
    #[serde(skip)]
    pub failover_from: Option<FencingToken>,
}

/// A self-fencing watchdog's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WatchdogStatus {
    /// The reset time promised to the other nodes in this node's breadcrumb.
    pub self_fence_ms: u64,
    /// Whether the device is open (and so armed).
    pub armed: bool,
    /// Why it is not fed now, if it is not: once armed, the host resets within
    /// `self_fence_ms` unless that changes.
    pub starving: Option<String>,
}

/// The health monitor's counts, as the last check left them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct CheckCounts {
    /// Consecutive failed checks, of any kind.
    pub consecutive_failures: u32,
    /// Of those, the consecutive timed-out or broken (slow) ones up to the last.
    pub consecutive_slow: u32,
    /// Failed checks (other than slow ones) that end a healthy verdict (`health.fall`).
    pub fall: u32,
    /// Consecutive slow checks that end a healthy verdict (`health.slow_fall`).
    pub slow_fall: u32,
}

impl AgentStatus {
    /// A fresh report.
    pub fn new(cluster: &str, node_id: &str) -> Self {
        AgentStatus {
            cluster: cluster.into(),
            node_id: node_id.into(),
            role: Role::Initializing,
            health: Health::Initializing,
            checks: CheckCounts::default(),
            master: None,
            session: SessionView::Connecting,
            granted_session_timeout_ms: None,
            lease_session_timeout_ms: None,
            staleness_ms: 0,
            lock: LockView::Unknown,
            token: None,
            members: Vec::new(),
            paused: false,
            cluster_paused_by: None,
            drained: None,
            last_decision: "starting".into(),
            blocker: None,
            why_not: None,
            behind: None,
            behind_fresh: None,
            cluster_settings: None,
            max_lag: None,
            last_failure: None,
            admin_addr: None,
            last_cycle_at_ms: 0,
            counters: Counters::default(),
            fencing_checks: None,
            watchdog: None,
            lease_until: None,
            last_cycle_at: None,
            loop_alive_at: None,
            history: VecDeque::new(),
            left_active_at: None,
            handover_seen: None,
            failover_from: None,
        }
    }

    /// Lease left at `now` (zero when none).
    pub fn lease_left(&self, now: BootInstant) -> Duration {
        self.lease_until.map_or(Duration::ZERO, |u| u.saturating_since(now))
    }

    /// Whether this node may be sent writes now: our master is active with our lock's token and
    /// the lease has not run out. The one probe a load balancer should use.
    pub fn is_serving_active(&self, now: BootInstant) -> bool {
        let holds = matches!(self.lock, LockView::Ours { token, .. } if self.token == Some(token));
        let master_active = matches!(self.master, Some(MasterStatus { state: HaState::Active, token, .. }) if Some(token) == self.token);
        holds && master_active && self.role == Role::Active && !self.lease_left(now).is_zero()
    }

    /// Records a role change. A promotion given up right after another given up the same way
    /// (out of [`Role::Promoting`] back to the role it started from) replaces it and its start,
    /// counted in `attempts_before`: a failover stuck retrying keeps its latest attempt whole
    /// and the history before it.
    pub fn transition(&mut self, to: Role, at_ms: i64, reason: &str, phases: Option<Phases>, timeline: Vec<Mark>) {
        if to == self.role {
            return;
        }
        let mut attempts_before = 0;
        let mut first_given_up_at_ms = None;
        if self.role == Role::Promoting && to != Role::Active {
            let n = self.history.len();
            let repeats = n >= 3 && {
                let (start, given_up, earlier_start) =
                    (&self.history[n - 1], &self.history[n - 2], &self.history[n - 3]);
                start.from == to
                    && start.to == Role::Promoting
                    && given_up.from == Role::Promoting
                    && given_up.to == to
                    && earlier_start.from == to
                    && earlier_start.to == Role::Promoting
            };
            if repeats {
                let start = self.history.pop_back();
                let given_up = self.history.pop_back();
                self.history.pop_back();
                if let Some(g) = given_up {
                    attempts_before = g.attempts_before + 1;
                    first_given_up_at_ms = Some(g.first_given_up_at_ms.unwrap_or(g.at_ms));
                }
                self.history.extend(start);
            }
        }
        if self.role == Role::Active && to != Role::Active {
            self.left_active_at = Some(BootInstant::now());
        }
        self.history.push_back(Transition {
            at_ms,
            from: self.role,
            to,
            reason: reason.to_string(),
            token: self.token,
            phases,
            timeline,
            attempts_before,
            first_given_up_at_ms,
        });
        while self.history.len() > HISTORY_LEN {
            self.history.pop_front();
        }
        self.role = to;
    }

    /// Prometheus text exposition.
    pub fn metrics(&self, now: BootInstant) -> String {
        let c = &self.counters;
        let health_code = match self.health {
            Health::Initializing => 0,
            Health::Healthy => 1,
            Health::Unhealthy(_) => 2,
            Health::NotResponding(_) => 3,
            Health::MonitorFailed(_) => 4,
        };
        let node = &self.node_id;
        let cluster = &self.cluster;
        let labels = format!("cluster=\"{cluster}\",node=\"{node}\"");
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, kind: &str, value: String| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{{labels}}} {value}\n"));
        };
        gauge(
            "referee_agent_active",
            "1 while this node serves as active with a valid lease.",
            "gauge",
            u8::from(self.is_serving_active(now)).to_string(),
        );
        gauge(
            "referee_agent_health",
            "Master health: 0 initializing, 1 healthy, 2 unhealthy, 3 not responding, 4 monitor failed.",
            "gauge",
            health_code.to_string(),
        );
        gauge(
            "referee_agent_lease_remaining_seconds",
            "Lease left on the active role.",
            "gauge",
            format!("{:.3}", self.lease_left(now).as_secs_f64()),
        );
        gauge(
            "referee_agent_token",
            "Fencing token held, 0 when none.",
            "gauge",
            self.token.map_or(0, |t| t.0).to_string(),
        );
        gauge(
            "referee_agent_coordinator_connected",
            "1 while the coordinator session is connected.",
            "gauge",
            u8::from(matches!(self.session, SessionView::Connected { .. })).to_string(),
        );
        let seconds = |ms: Option<u64>| format!("{:.3}", ms.unwrap_or(0) as f64 / 1000.0);
        gauge(
            "referee_agent_granted_session_timeout_seconds",
            "Session timeout the coordinator granted the last session made (0 before the first).",
            "gauge",
            seconds(self.granted_session_timeout_ms),
        );
        gauge(
            "referee_agent_lease_session_timeout_seconds",
            "Session timeout the lease counts on: the lowest any coordinator server would grant the session on \
             a reconnection, below the grant when the servers' bounds differ (0 without a session).",
            "gauge",
            seconds(self.lease_session_timeout_ms),
        );
        gauge("referee_agent_paused", "1 while failover is paused.", "gauge", u8::from(self.paused).to_string());
        gauge(
            "referee_agent_drained",
            "1 while an operator keeps this node from promotion (referee admin drain).",
            "gauge",
            u8::from(self.drained.is_some()).to_string(),
        );
        gauge("referee_agent_cycles_total", "Decision cycles run.", "counter", c.cycles.to_string());
        gauge(
            "referee_agent_promotions_total",
            "Promotions of this node's master.",
            "counter",
            c.promotions.to_string(),
        );
        gauge("referee_agent_demotions_total", "Demotions of this node's master.", "counter", c.demotions.to_string());
        gauge(
            "referee_agent_coordinator_sessions_total",
            "Coordinator sessions opened.",
            "counter",
            c.sessions.to_string(),
        );
        if let Some(checks) = &self.fencing_checks {
            gauge(
                "referee_agent_fencing_check_problems",
                "Fencing methods whose last check against a peer found a problem (0: the chain would work).",
                "gauge",
                checks.problems.to_string(),
            );
            gauge(
                "referee_agent_fencing_check_timestamp_seconds",
                "When the last round of fencing checks ended, in seconds since the Unix epoch.",
                "gauge",
                format!("{:.3}", checks.at_ms as f64 / 1000.0),
            );
        }
        out.push_str(
            "# HELP referee_agent_blocked 1 for the blocker that keeps this node from taking over now.\n\
             # TYPE referee_agent_blocked gauge\n",
        );
        let current = self.blocker.as_ref().map(crate::candidacy::Blocker::name);
        for name in crate::candidacy::Blocker::NAMES {
            let on = u8::from(current == Some(name));
            out.push_str(&format!("referee_agent_blocked{{{labels},blocker=\"{name}\"}} {on}\n"));
        }
        if let Some(wd) = &self.watchdog {
            out.push_str(
                "# HELP referee_agent_watchdog_armed 1 while the self-fencing watchdog device is open (armed).\n\
                 # TYPE referee_agent_watchdog_armed gauge\n\
                 # HELP referee_agent_watchdog_starving 1 while it is armed and not fed: the host resets within \
                 referee_agent_watchdog_self_fence_seconds unless that changes.\n\
                 # TYPE referee_agent_watchdog_starving gauge\n\
                 # HELP referee_agent_watchdog_self_fence_seconds The reset time this node promises the others.\n\
                 # TYPE referee_agent_watchdog_self_fence_seconds gauge\n",
            );
            let starving = u8::from(wd.armed && wd.starving.is_some());
            out.push_str(&format!("referee_agent_watchdog_armed{{{labels}}} {}\n", u8::from(wd.armed)));
            out.push_str(&format!("referee_agent_watchdog_starving{{{labels}}} {starving}\n"));
            out.push_str(&format!(
                "referee_agent_watchdog_self_fence_seconds{{{labels}}} {:.3}\n",
                wd.self_fence_ms as f64 / 1000.0
            ));
        }
        out.push_str(
            "# HELP referee_agent_failsafe_rounds_total Failsafe rounds by outcome.\n\
             # TYPE referee_agent_failsafe_rounds_total counter\n",
        );
        for (outcome, n) in [("confirmed", c.failsafe_confirmed), ("refused", c.failsafe_refused)] {
            out.push_str(&format!("referee_agent_failsafe_rounds_total{{{labels},outcome=\"{outcome}\"}} {n}\n"));
        }
        out.push_str(
            "# HELP referee_agent_fences_total Fence attempts by outcome.\n# TYPE referee_agent_fences_total counter\n",
        );
        for (outcome, n) in
            [("fenced", c.fences_fenced), ("failed", c.fences_failed), ("indeterminate", c.fences_indeterminate)]
        {
            out.push_str(&format!("referee_agent_fences_total{{{labels},outcome=\"{outcome}\"}} {n}\n"));
        }
        out.push_str(
            "# HELP referee_agent_fences_confirmed_by_operator_total Failed or indeterminate fences an \
             operator's confirmation that the node is down stood for.\n\
             # TYPE referee_agent_fences_confirmed_by_operator_total counter\n",
        );
        out.push_str(&format!("referee_agent_fences_confirmed_by_operator_total{{{labels}}} {}\n", c.fences_confirmed));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn active_probe_needs_lock_master_role_and_lease() {
        let now = BootInstant::from_origin(Duration::from_secs(10));
        let mut s = AgentStatus::new("c", "a");
        s.token = Some(FencingToken(5));
        s.lock = LockView::Ours { token: FencingToken(5), version: 0 };
        s.master = Some(MasterStatus { state: HaState::Active, token: FencingToken(5), position: None });
        s.role = Role::Active;
        s.lease_until = Some(now + Duration::from_millis(300));
        assert!(s.is_serving_active(now));
        assert!(!s.is_serving_active(now + Duration::from_millis(300)), "not once the lease is out");
        s.master = Some(MasterStatus { state: HaState::Active, token: FencingToken(4), position: None });
        assert!(!s.is_serving_active(now), "not with an older token on the master");
        s.master = Some(MasterStatus { state: HaState::Active, token: FencingToken(5), position: None });
        s.lock = LockView::Peer { node_id: "b".into(), token: FencingToken(6) };
        assert!(!s.is_serving_active(now), "not when a peer holds the lock");
    }

    #[test]
    fn promotions_given_up_in_a_row_are_folded_into_the_latest() {
        let mut s = AgentStatus::new("c", "b");
        s.transition(Role::Standby, 1, "standing by", None, Vec::new());
        s.transition(Role::Active, 2, "promoted", None, Vec::new());
        s.transition(Role::Standby, 3, "handed over", None, Vec::new());
        for i in 0..500 {
            let at = 10 + 2 * i;
            s.transition(Role::Promoting, at, &format!("won the lock, attempt {i}"), None, Vec::new());
            s.transition(Role::Standby, at + 1, &format!("fencing a failed, attempt {i}"), None, Vec::new());
        }
        let shown: Vec<(Role, Role, &str)> = s.history.iter().map(|t| (t.from, t.to, t.reason.as_str())).collect();
        assert_eq!(
            shown,
            [
                (Role::Initializing, Role::Standby, "standing by"),
                (Role::Standby, Role::Active, "promoted"),
                (Role::Active, Role::Standby, "handed over"),
                (Role::Standby, Role::Promoting, "won the lock, attempt 499"),
                (Role::Promoting, Role::Standby, "fencing a failed, attempt 499"),
            ]
        );
        let last = s.history.back().unwrap();
        assert_eq!((last.attempts_before, last.first_given_up_at_ms, last.at_ms), (499, Some(11), 1009));
        // The attempt that succeeds stands on its own, and a later failure starts a new count.
        s.transition(Role::Promoting, 2000, "won the lock", None, Vec::new());
        s.transition(Role::Active, 2001, "promoted", None, Vec::new());
        s.transition(Role::Standby, 2002, "demoted", None, Vec::new());
        s.transition(Role::Promoting, 2003, "won the lock", None, Vec::new());
        s.transition(Role::Standby, 2004, "fencing failed", None, Vec::new());
        assert_eq!(s.history.len(), 10);
        assert_eq!(s.history.back().unwrap().attempts_before, 0);
        // Given up into another role (the master fell ill meanwhile): not the same failure.
        s.transition(Role::Promoting, 2005, "won the lock", None, Vec::new());
        s.transition(Role::Unhealthy, 2006, "master unhealthy", None, Vec::new());
        assert_eq!(s.history.len(), 12);
        let json = serde_json::to_value(&s.history[4]).unwrap();
        assert_eq!((json["attempts_before"].as_u64(), json["first_given_up_at_ms"].as_i64()), (Some(499), Some(11)));
        assert!(serde_json::to_value(&s.history[0]).unwrap().get("attempts_before").is_none());
    }

    #[test]
    fn history_is_bounded_and_records_changes_only() {
        let mut s = AgentStatus::new("c", "a");
        s.transition(Role::Standby, 1, "standing by", None, Vec::new());
        s.transition(Role::Standby, 2, "standing by", None, Vec::new());
        assert_eq!(s.history.len(), 1);
        for i in 0..300 {
            let to = if i % 2 == 0 { Role::Active } else { Role::Standby };
            s.transition(to, i, "flip", None, Vec::new());
        }
        assert_eq!(s.history.len(), HISTORY_LEN);
        let m = s.metrics(BootInstant::now());
        assert!(m.contains("referee_agent_active{cluster=\"c\",node=\"a\"} 0\n"), "{m}");
        assert!(m.contains("referee_agent_fences_total{cluster=\"c\",node=\"a\",outcome=\"failed\"} 0\n"), "{m}");
        assert!(m.contains("referee_agent_lease_session_timeout_seconds{cluster=\"c\",node=\"a\"} 0.000\n"), "{m}");
        s.granted_session_timeout_ms = Some(6000);
        s.lease_session_timeout_ms = Some(2500);
        let m = s.metrics(BootInstant::now());
        assert!(m.contains("referee_agent_granted_session_timeout_seconds{cluster=\"c\",node=\"a\"} 6.000\n"), "{m}");
        assert!(m.contains("referee_agent_lease_session_timeout_seconds{cluster=\"c\",node=\"a\"} 2.500\n"), "{m}");
    }

    #[test]
    fn a_self_fencing_watchdog_has_its_gauges() {
        let mut s = AgentStatus::new("c", "a");
        assert!(!s.metrics(BootInstant::now()).contains("referee_agent_watchdog"), "none without self-fencing");
        s.watchdog = Some(WatchdogStatus { self_fence_ms: 4000, armed: true, starving: Some("no lease".into()) });
        let m = s.metrics(BootInstant::now());
        assert!(m.contains("referee_agent_watchdog_armed{cluster=\"c\",node=\"a\"} 1\n"), "{m}");
        assert!(m.contains("referee_agent_watchdog_starving{cluster=\"c\",node=\"a\"} 1\n"), "{m}");
        assert!(m.contains("referee_agent_watchdog_self_fence_seconds{cluster=\"c\",node=\"a\"} 4.000\n"), "{m}");
        s.watchdog = Some(WatchdogStatus { self_fence_ms: 4000, armed: false, starving: Some("not read".into()) });
        let m = s.metrics(BootInstant::now());
        assert!(m.contains("referee_agent_watchdog_starving{cluster=\"c\",node=\"a\"} 0\n"), "not armed: {m}");
    }

    #[test]
    fn one_gauge_per_blocker_name_with_the_current_one_set() {
        let mut s = AgentStatus::new("c", "a");
        let m = s.metrics(BootInstant::now());
        for name in crate::candidacy::Blocker::NAMES {
            assert!(
                m.contains(&format!("referee_agent_blocked{{cluster=\"c\",node=\"a\",blocker=\"{name}\"}} 0\n")),
                "{m}"
            );
        }
        s.blocker = Some(crate::candidacy::Blocker::Lagging { behind: 9, max_lag: 1 });
        let m = s.metrics(BootInstant::now());
        assert!(m.contains("referee_agent_blocked{cluster=\"c\",node=\"a\",blocker=\"lagging\"} 1\n"), "{m}");
        assert_eq!(
            m.matches("referee_agent_blocked{").filter(|_| true).count(),
            crate::candidacy::Blocker::NAMES.len()
        );
        assert_eq!(
            m.lines().filter(|l| l.starts_with("referee_agent_blocked{") && l.ends_with(" 1")).count(),
            1,
            "{m}"
        );
    }
}
