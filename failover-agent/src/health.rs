//! The health monitor: is the local master fit to be (or stay) active?
//!
//! [`HealthMonitor`] is the pure core, Hadoop ZKFC's `HealthMonitor` states with rise and fall
//! counts: it is fed each check's result and the time, and says when the verdict changes.
//! [`run_health_monitor`] is its driver: every `interval_ms` it checks the master's health and
//! reads its role and token (both bounded by `timeout_ms`), feeds the result to the core, and
//! publishes a [`HealthReport`] on a `watch` channel.
//!
//! ```text
//!                 every interval_ms, within timeout_ms
//!   MasterAdapter ── health() ──▶ HealthMonitor::record(result, now) ──▶ Option<Transition>
//!        │                                                                    │
//!        └──────── state() ──▶ Option<MasterStatus> ──┐                       │
//!                                                     ▼                       ▼
//!                                    watch::Sender<HealthReport>  (woken on a change)
//! ```
//!
//! # Rules
//!
//! - `rise` consecutive passing checks make the master [`Health::Healthy`].
//! - Once healthy, it takes `fall` consecutive failed checks to leave: one slow answer (a GC
//!   pause, a burst of load) must not cause a failover, whose new active would likely suffer
//!   the same load (HDFS-9311's flapping).
//! - **Except a refused connection, which counts at once.** A crashed master's port refuses
//!   immediately and for certain; nothing is gained by asking again, and waiting `fall`
//!   intervals would only lengthen the failover. With `master.pidfile` set, a process that
//!   exits is checked at once ([`crate::exit_watch`]), and that check is refused. Error
//!   answers (the master answered, and said it is unhealthy) are what the fall count is for.
//! - **Slow is not dead.** A check that times out, or whose connection is closed or reset
//!   before its answer is whole (**broken**), counts only once `slow_fall` consecutive checks
//!   have gone that way (default far above `fall`). Neither says the master is gone: an
//!   overloaded master answers late, and one at its connection limit, or behind a proxy or a
//!   listener that sheds connections, cuts them unanswered. It must not be failed over as fast
//!   as a crashed one, whose standby would likely drown in the same load (HDFS-9311); a flood
//!   of idle connections to its port would otherwise be enough to fail over a healthy master.
//!   A master that really died while a check was on the wire is seen at the next check,
//!   refused. Slow and broken checks neither count towards `fall` nor reset it.
//! - A master that is not healthy moves straight to whatever the latest failure says
//!   (unhealthy, not responding, monitor failed): it is already out of the running, so there
//!   is nothing for a count to protect.
//! - [`HealthProblem::CheckFailed`] (the check itself cannot be run) becomes
//!   [`Health::MonitorFailed`], under the same counts: it says nothing about the master, but
//!   a monitor that cannot look cannot vouch for it either.
//!
//! The report carries `last_check_at`: a driver stuck in a check that ignores its deadline
//! stops updating it, which the agent can notice and treat as a failed monitor.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use crate::adapter::{AdapterError, HealthProblem, MasterAdapter, NoAnswer};
use crate::clock::BootInstant;
use crate::model::{Health, MasterStatus};

/// Extra time a driver gives an adapter call beyond its deadline before abandoning it; an
/// adapter is expected to end by its deadline, this only bounds one that does not.
const OVERRUN_GRACE: Duration = Duration::from_millis(500);

/// The longest check interval or timeout accepted.
const MAX_CHECK_MS: u64 = 600_000;

fn default_interval_ms() -> u64 {
    1000
}

fn default_timeout_ms() -> u64 {
    3000
}

fn default_rise() -> u32 {
    2
}

fn default_fall() -> u32 {
    3
}

fn default_watch_exit() -> bool {
    true
}

fn default_slow_fall() -> u32 {
    20
}

/// `health:` in the agent's configuration.
///
/// ```yaml
/// health:
///   interval_ms: 1000   # time between the starts of two checks (default 1000)
///   timeout_ms: 3000    # deadline of one check (default 3000)
///   rise: 2             # consecutive passes to become healthy (default 2)
///   fall: 3             # consecutive failures to stop being healthy (default 3)
///   slow_fall: 20       # consecutive timed-out checks to stop being healthy (default 20)
///   watch_exit: true    # check at once when the master's process exits (default true)
/// ```
///
/// A check may take longer than the interval; the next one then starts when it ends. A hung
/// master is declared not responding after about `slow_fall × max(interval_ms, timeout_ms)`,
/// one that cuts every connection unanswered after `slow_fall` intervals; a crashed one
/// (connection refused) after at most one interval, or at once when the agent watches its
/// process (`master.pidfile` set, see [`crate::exit_watch`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Time between the starts of two checks.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// Deadline of one check (health and state together).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Consecutive passing checks needed to become healthy.
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failed checks needed to stop being healthy (a refusal needs only one; a
    /// timeout or a broken connection counts under `slow_fall` instead).
    #[serde(default = "default_fall")]
    pub fall: u32,
    /// Consecutive timed-out or broken checks needed to stop being healthy: a master that
    /// answers late, or cuts connections before answering, is slow, not dead, and is failed
    /// over only once it stayed so this long. At least `fall`.
    #[serde(default = "default_slow_fall")]
    pub slow_fall: u32,
    /// With `master.pidfile` set, watch the master's process and check at once when it exits
    /// ([`crate::exit_watch`]). Off, a crash is seen at the next interval's check, as
    /// Hadoop's ZKFC sees it.
    #[serde(default = "default_watch_exit")]
    pub watch_exit: bool,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval_ms: default_interval_ms(),
            timeout_ms: default_timeout_ms(),
            rise: default_rise(),
            fall: default_fall(),
            slow_fall: default_slow_fall(),
            watch_exit: default_watch_exit(),
        }
    }
}

/// A `health:` value that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("health.{field}: {reason}")]
pub struct HealthConfigError {
    /// The field, as written in the configuration.
    pub field: &'static str,
    /// What is wrong and what to change.
    pub reason: String,
}

impl HealthConfig {
    /// Checks every field; the error names the bad one.
    pub fn validate(&self) -> Result<(), HealthConfigError> {
        let err = |field, reason: &str| Err(HealthConfigError { field, reason: reason.to_string() });
        if self.interval_ms == 0 {
            return err("interval_ms", "must be greater than 0");
        }
        if self.timeout_ms == 0 {
            return err("timeout_ms", "must be greater than 0");
        }
        // Past this, a master that dies is noticed too late to speak of failover, and a value
        // typed with extra digits would check it once, at the start, and never again.
        for (field, value) in [("interval_ms", self.interval_ms), ("timeout_ms", self.timeout_ms)] {
            if value > MAX_CHECK_MS {
                return Err(HealthConfigError {
                    field,
                    reason: format!(
                        "is {value} ms, over {MAX_CHECK_MS} ms (10 minutes): a master's death would go unnoticed \
                         that long; give seconds (the default is {} ms)",
                        if field == "interval_ms" { default_interval_ms() } else { default_timeout_ms() }
                    ),
                });
            }
        }
        if self.rise == 0 {
            return err("rise", "must be at least 1");
        }
        if self.fall == 0 {
            return err("fall", "must be at least 1");
        }
        if self.slow_fall < self.fall {
            return Err(HealthConfigError {
                field: "slow_fall",
                reason: format!(
                    "is {} but fall is {}; a timed-out check must not count sooner than a failed one: make it at \
                     least fall",
                    self.slow_fall, self.fall
                ),
            });
        }
        Ok(())
    }

    /// About how long a hung master (every check timing out) takes to be declared not
    /// responding: `slow_fall` checks, each started at least an interval after the last and
    /// ending at its timeout.
    pub fn hung_detection(&self) -> Duration {
        Duration::from_millis(self.interval_ms.max(self.timeout_ms).saturating_mul(u64::from(self.slow_fall)))
    }

    /// `interval_ms` as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    /// `timeout_ms` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// A change of verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The verdict before.
    pub from: Health,
    /// The verdict now.
    pub to: Health,
    /// When the check that caused it ended.
    pub at: BootInstant,
    /// Why, as a sentence (also this type's `Display`).
    pub why: String,
}

impl fmt::Display for Transition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.why)
    }
}

/// The pure health state machine. See the module documentation for the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthMonitor {
    rise: u32,
    fall: u32,
    /// `None`: timeouts and broken connections count like any other failure (towards `fall`).
    slow_fall: Option<u32>,
    health: Health,
    successes: u32,
    failures: u32,
    /// Consecutive timed-out or broken checks ending with the last one.
    slow: u32,
    /// Failed checks since the last pass other than slow ones (unhealthy answers, checks that
    /// cannot run).
    hard: u32,
    last_check_at: Option<BootInstant>,
    last_problem: Option<HealthProblem>,
}

impl HealthMonitor {
    /// A monitor in [`Health::Initializing`], timeouts counted like other failures towards
    /// `fall` (see [`HealthMonitor::with_slow_fall`]).
    ///
    /// # Panics
    ///
    /// If `rise` or `fall` is 0 ([`HealthConfig::validate`] refuses those).
    pub fn new(rise: u32, fall: u32) -> Self {
        assert!(rise >= 1 && fall >= 1, "rise ({rise}) and fall ({fall}) must be at least 1");
        HealthMonitor {
            rise,
            fall,
            slow_fall: None,
            health: Health::Initializing,
            successes: 0,
            failures: 0,
            slow: 0,
            hard: 0,
            last_check_at: None,
            last_problem: None,
        }
    }

    /// A monitor for `config`: its rise, fall and slow fall.
    pub fn from_config(config: &HealthConfig) -> Self {
        HealthMonitor::new(config.rise, config.fall).with_slow_fall(config.slow_fall)
    }

    /// Timed-out and broken checks count only once `slow_fall` of them are consecutive.
    ///
    /// # Panics
    ///
    /// If `slow_fall` is below `fall` ([`HealthConfig::validate`] refuses that).
    pub fn with_slow_fall(mut self, slow_fall: u32) -> Self {
        assert!(slow_fall >= self.fall, "slow_fall ({slow_fall}) must be at least fall ({})", self.fall);
        self.slow_fall = Some(slow_fall);
        self
    }

    /// Consecutive timed-out or broken checks up to now.
    pub fn consecutive_slow(&self) -> u32 {
        self.slow
    }

    /// The current verdict.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// When the last check ended, if any has.
    pub fn last_check_at(&self) -> Option<BootInstant> {
        self.last_check_at
    }

    /// The last check's problem; `None` if it passed (or none has ended yet).
    pub fn last_problem(&self) -> Option<&HealthProblem> {
        self.last_problem.as_ref()
    }

    /// Consecutive passing checks up to now.
    pub fn consecutive_successes(&self) -> u32 {
        self.successes
    }

    /// Consecutive failed checks up to now.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Records a check that ended at `now`; returns the transition it caused, if any.
    pub fn record(&mut self, result: Result<(), HealthProblem>, now: BootInstant) -> Option<Transition> {
        self.last_check_at = Some(now);
        match result {
            Ok(()) => {
                self.failures = 0;
                self.slow = 0;
                self.hard = 0;
                self.successes = self.successes.saturating_add(1);
                self.last_problem = None;
                match self.health {
                    Health::Healthy => None,
                    Health::Initializing
                    | Health::Unhealthy(_)
                    | Health::NotResponding(_)
                    | Health::MonitorFailed(_) => {
                        if self.successes < self.rise {
                            return None;
                        }
                        let why = format!("master healthy after {} consecutive passing checks", self.successes);
                        Some(self.become_(Health::Healthy, now, why))
                    }
                }
            }
            Err(problem) => {
                self.successes = 0;
                self.failures = self.failures.saturating_add(1);
                let target = verdict(&problem);
                let refused = matches!(problem, HealthProblem::NotResponding { how: NoAnswer::Refused, .. });
                // No answer, but no sign the master is gone either: slow, not dead.
                let timed_out =
                    matches!(problem, HealthProblem::NotResponding { how: NoAnswer::TimedOut | NoAnswer::Broken, .. });
                if timed_out {
                    self.slow = self.slow.saturating_add(1);
                } else {
                    self.slow = 0;
                    self.hard = self.hard.saturating_add(1);
                }
                self.last_problem = Some(problem);
                if same_kind(&self.health, &target) {
                    return None;
                }
                let why = match self.health {
                    Health::Healthy if refused => {
                        format!("master {} at once (a refusal is not retried): {}", describe(&target), reason(&target))
                    }
                    Health::Healthy if timed_out && self.slow_fall.is_some_and(|sf| self.slow >= sf) => format!(
                        "master {} after {} consecutive slow checks (slow_fall {}): {}",
                        describe(&target),
                        self.slow,
                        self.slow_fall.unwrap_or(self.slow),
                        reason(&target)
                    ),
                    Health::Healthy if timed_out && self.slow_fall.is_some() => return None,
                    Health::Healthy if self.slow_fall.map_or(self.failures, |_| self.hard) >= self.fall => format!(
                        "master {} after {} consecutive failed checks: {}",
                        describe(&target),
                        self.failures,
                        reason(&target)
                    ),
                    Health::Healthy => return None,
                    Health::Initializing
                    | Health::Unhealthy(_)
                    | Health::NotResponding(_)
                    | Health::MonitorFailed(_) => format!("master {}: {}", describe(&target), reason(&target)),
                };
                Some(self.become_(target, now, why))
            }
        }
    }

    fn become_(&mut self, to: Health, at: BootInstant, why: String) -> Transition {
        let from = std::mem::replace(&mut self.health, to.clone());
        Transition { from, to, at, why }
    }
}

/// The verdict a failed check points to.
fn verdict(problem: &HealthProblem) -> Health {
    match problem {
        HealthProblem::Unhealthy { reason } => Health::Unhealthy(reason.clone()),
        HealthProblem::NotResponding { how, reason } => Health::NotResponding(format!("{how}: {reason}")),
        HealthProblem::CheckFailed { reason } => Health::MonitorFailed(reason.clone()),
    }
}

/// Whether two verdicts are the same state, whatever their reasons: a master that stays
/// unhealthy for a changing reason is not a new transition.
fn same_kind(a: &Health, b: &Health) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn describe(health: &Health) -> &'static str {
    match health {
        Health::Initializing => "initializing",
        Health::Healthy => "healthy",
        Health::Unhealthy(_) => "unhealthy",
        Health::NotResponding(_) => "not responding",
        Health::MonitorFailed(_) => "cannot be checked (monitor failed)",
    }
}

fn reason(health: &Health) -> &str {
    match health {
        Health::Initializing | Health::Healthy => "",
        Health::Unhealthy(r) | Health::NotResponding(r) | Health::MonitorFailed(r) => r,
    }
}

/// What the monitor publishes: the verdict and the latest observations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthReport {
    /// The verdict.
    pub health: Health,
    /// When the last check ended; stops moving if the monitor is stuck.
    pub last_check_at: Option<BootInstant>,
    /// The last check's problem, `None` if it passed.
    pub last_problem: Option<HealthProblem>,
    /// Consecutive failed checks up to the last one.
    pub consecutive_failures: u32,
    /// Consecutive timed-out or broken (slow) checks up to the last one.
    pub consecutive_slow: u32,
    /// When the first of those failed checks ended (`None` after a pass): the start of a
    /// failover's timeline.
    pub failing_since: Option<BootInstant>,
    /// The role and token the master reported at the last check; `None` if it could not be
    /// read then (never a stale value).
    pub master: Option<MasterStatus>,
    /// Why the master's status could not be read at the last check.
    pub master_problem: Option<String>,
    /// The last change of verdict.
    pub last_transition: Option<Transition>,
}

impl HealthReport {
    /// The report before any check: initializing, nothing known.
    pub fn initial() -> Self {
        HealthReport {
            health: Health::Initializing,
            last_check_at: None,
            last_problem: None,
            consecutive_failures: 0,
            consecutive_slow: 0,
            failing_since: None,
            master: None,
            master_problem: None,
            last_transition: None,
        }
    }
}

impl Default for HealthReport {
    fn default() -> Self {
        HealthReport::initial()
    }
}

/// Runs the health monitor until `shutdown` completes.
///
/// Every `interval_ms` (or right after the previous check, if that took longer) it calls the
/// adapter's `health` and `state` concurrently, both with the deadline `now + timeout_ms`.
/// Each check updates the value in `reports`; receivers are woken only when the verdict or
/// the master's reported status changes, so `last_check_at` moves without waking anyone.
///
/// `config` must have passed [`HealthConfig::validate`].
pub async fn run_health_monitor(
    adapter: Arc<dyn MasterAdapter>,
    config: HealthConfig,
    reports: watch::Sender<HealthReport>,
    shutdown: impl Future<Output = ()>,
) {
    run_health_monitor_woken(adapter, config, Arc::new(Notify::new()), reports, shutdown).await
}

/// As [`run_health_monitor`], also checking at once whenever `check_now` is notified (by
/// [`crate::exit_watch::watch_master_exits`] when the master's process exits). Such a check is
/// an ordinary one: its result is counted by the same rules, so an early wake-up can bring a
/// verdict sooner but never change what it is. The interval's checks go on as before.
pub async fn run_health_monitor_woken(
    adapter: Arc<dyn MasterAdapter>,
    config: HealthConfig,
    check_now: Arc<Notify>,
    reports: watch::Sender<HealthReport>,
    shutdown: impl Future<Output = ()>,
) {
    let mut monitor = HealthMonitor::from_config(&config);
    let mut ticks = tokio::time::interval(config.interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    tracing::info!(interval_ms = config.interval_ms, timeout_ms = config.timeout_ms, "health monitor started");
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = ticks.tick() => {}
            // A permit stored while a check ran is taken here, so a death during a check that
            // still passed gets a check of its own right after.
            _ = check_now.notified() => {
                tracing::debug!("health check brought forward");
                // The interval restarts from this check, as from any other.
                ticks.reset();
            }
        }
        let deadline = Instant::now() + config.timeout();
        let check = async {
            tokio::join!(
                bounded(adapter.health(deadline), deadline, |late| Err(HealthProblem::not_responding(
                    NoAnswer::TimedOut,
                    late
                ))),
                bounded(adapter.state(deadline), deadline, |late| Err(AdapterError::NotResponding {
                    how: NoAnswer::TimedOut,
                    reason: late
                })),
            )
        };
        let (health, state) = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            results = check => results,
        };
        let now = BootInstant::now();
        let transition = monitor.record(health, now);
        if let Some(t) = &transition {
            match t.to {
                Health::Healthy | Health::Initializing => tracing::info!(health = ?t.to, "{t}"),
                Health::Unhealthy(_) | Health::NotResponding(_) | Health::MonitorFailed(_) => {
                    tracing::warn!(health = ?t.to, "{t}")
                }
            }
        }
        let (master, master_problem) = match state {
            Ok(status) => (Some(status), None),
            Err(e) => (None, Some(e.to_string())),
        };
        reports.send_if_modified(|report| {
            let changed = transition.is_some() || report.master != master;
            if report.master != master {
                tracing::debug!(?master, problem = ?master_problem, "master status changed");
            }
            report.health = monitor.health().clone();
            report.last_check_at = monitor.last_check_at();
            report.last_problem = monitor.last_problem().cloned();
            report.consecutive_failures = monitor.consecutive_failures();
            report.consecutive_slow = monitor.consecutive_slow();
            report.failing_since = match monitor.consecutive_failures() {
                0 => None,
                _ => report.failing_since.or(Some(now)),
            };
            report.master = master;
            report.master_problem = master_problem;
            if let Some(t) = transition {
                report.last_transition = Some(t);
            }
            changed
        });
    }
    tracing::info!("health monitor stopped");
}

/// Runs an adapter call, abandoning it [`OVERRUN_GRACE`] after its deadline.
async fn bounded<T, E>(
    call: impl Future<Output = Result<T, E>>,
    deadline: Instant,
    late: impl FnOnce(String) -> Result<T, E>,
) -> Result<T, E> {
    match tokio::time::timeout_at(deadline + OVERRUN_GRACE, call).await {
        Ok(result) => result,
        Err(_) => late("the adapter overran its deadline".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> BootInstant {
        BootInstant::from_origin(Duration::from_millis(ms))
    }

    fn ok() -> Result<(), HealthProblem> {
        Ok(())
    }

    fn sick(reason: &str) -> Result<(), HealthProblem> {
        Err(HealthProblem::unhealthy(reason))
    }

    fn timed_out() -> Result<(), HealthProblem> {
        Err(HealthProblem::not_responding(NoAnswer::TimedOut, "no answer"))
    }

    fn broken() -> Result<(), HealthProblem> {
        Err(HealthProblem::not_responding(NoAnswer::Broken, "closed before an answer"))
    }

    fn refused() -> Result<(), HealthProblem> {
        Err(HealthProblem::not_responding(NoAnswer::Refused, "nothing listens"))
    }

    fn cannot_run() -> Result<(), HealthProblem> {
        Err(HealthProblem::CheckFailed { reason: "no such program".into() })
    }

    /// Feeds `steps` one per 100 ms and returns, per step, the verdict it moved to (if any).
    fn run(rise: u32, fall: u32, steps: Vec<Result<(), HealthProblem>>) -> Vec<Option<Health>> {
        let mut monitor = HealthMonitor::new(rise, fall);
        let mut out = Vec::new();
        for (i, step) in steps.into_iter().enumerate() {
            let now = at(100 * (i as u64 + 1));
            let t = monitor.record(step, now);
            assert_eq!(monitor.last_check_at(), Some(now));
            if let Some(t) = &t {
                assert_eq!(&t.to, monitor.health());
                assert_eq!(t.at, now);
            }
            out.push(t.map(|t| t.to));
        }
        out
    }

    fn nr(reason: &str) -> Health {
        Health::NotResponding(reason.into())
    }

    #[test]
    fn table_of_exact_transitions() {
        let healthy = Some(Health::Healthy);
        // (name, rise, fall, check results, verdict moved to after each check)
        type Case = (&'static str, u32, u32, Vec<Result<(), HealthProblem>>, Vec<Option<Health>>);
        let cases: Vec<Case> = vec![
            ("rise 2: two passes make it healthy", 2, 3, vec![ok(), ok(), ok()], vec![None, healthy.clone(), None]),
            ("rise 1: one pass is enough", 1, 1, vec![ok()], vec![healthy.clone()]),
            (
                "a failure resets the rise count",
                2,
                3,
                vec![ok(), timed_out(), ok(), ok()],
                vec![None, Some(nr("timed out: no answer")), None, healthy.clone()],
            ),
            (
                "fall 3: two failures are tolerated, the third leaves healthy",
                1,
                3,
                vec![ok(), sick("a"), sick("b"), sick("c")],
                vec![healthy.clone(), None, None, Some(Health::Unhealthy("c".into()))],
            ),
            (
                "a pass in between resets the fall count",
                1,
                2,
                vec![ok(), timed_out(), ok(), timed_out(), ok()],
                vec![healthy.clone(), None, None, None, None],
            ),
            (
                "mixed failures: the last one names the state",
                1,
                3,
                vec![ok(), sick("a"), sick("b"), timed_out()],
                vec![healthy.clone(), None, None, Some(nr("timed out: no answer"))],
            ),
            (
                "a refusal leaves healthy at once despite fall 3",
                1,
                3,
                vec![ok(), refused()],
                vec![healthy.clone(), Some(nr("connection refused: nothing listens"))],
            ),
            (
                "a refusal after tolerated failures also acts at once",
                1,
                5,
                vec![ok(), timed_out(), refused()],
                vec![healthy.clone(), None, Some(nr("connection refused: nothing listens"))],
            ),
            (
                "from initializing, the first failure is a verdict",
                2,
                3,
                vec![sick("loading")],
                vec![Some(Health::Unhealthy("loading".into()))],
            ),
            (
                "a not-healthy master follows the latest failure kind, ignoring reason changes",
                2,
                3,
                vec![sick("a"), sick("b"), timed_out(), cannot_run(), cannot_run()],
                vec![
                    Some(Health::Unhealthy("a".into())),
                    None,
                    Some(nr("timed out: no answer")),
                    Some(Health::MonitorFailed("no such program".into())),
                    None,
                ],
            ),
            (
                "a check that cannot run is held to the fall count while healthy",
                1,
                2,
                vec![ok(), cannot_run(), cannot_run()],
                vec![healthy.clone(), None, Some(Health::MonitorFailed("no such program".into()))],
            ),
            (
                "recovery needs rise passes again",
                2,
                1,
                vec![ok(), ok(), refused(), ok(), ok()],
                vec![None, healthy.clone(), Some(nr("connection refused: nothing listens")), None, healthy],
            ),
        ];
        for (name, rise, fall, steps, expected) in cases {
            assert_eq!(run(rise, fall, steps), expected, "case: {name}");
        }
    }

    /// A case name, the checks' results, and the transition each causes.
    type SlowCase = (&'static str, Vec<Result<(), HealthProblem>>, Vec<Option<Health>>);

    #[test]
    fn slow_is_not_dead_until_slow_fall_but_a_refusal_still_acts_at_once() {
        // (name, steps, the transition each step causes), rise 1, fall 2, slow_fall 4.
        let healthy = Some(Health::Healthy);
        let nr = |r: &str| Some(Health::NotResponding(r.into()));
        let cases: Vec<SlowCase> = vec![
            (
                "timeouts alone need slow_fall in a row",
                vec![ok(), timed_out(), timed_out(), timed_out(), timed_out()],
                vec![healthy.clone(), None, None, None, nr("timed out: no answer")],
            ),
            (
                "a pass resets the slow count",
                vec![ok(), timed_out(), timed_out(), timed_out(), ok(), timed_out(), timed_out(), timed_out()],
                vec![healthy.clone(), None, None, None, None, None, None, None],
            ),
            (
                "a refusal after slow checks acts at once",
                vec![ok(), timed_out(), timed_out(), refused()],
                vec![healthy.clone(), None, None, nr("connection refused: nothing listens")],
            ),
            (
                "other failures keep fall, timeouts in between do not count towards it",
                vec![ok(), sick("a"), timed_out(), sick("b")],
                vec![healthy.clone(), None, None, Some(Health::Unhealthy("b".into()))],
            ),
            (
                "broken connections count as slow, not towards fall",
                vec![ok(), broken(), broken(), broken(), broken()],
                vec![healthy.clone(), None, None, None, nr("connection broken: closed before an answer")],
            ),
            (
                "timeouts and broken connections make one slow streak",
                vec![ok(), timed_out(), broken(), timed_out(), sick("a"), broken()],
                vec![healthy.clone(), None, None, None, None, None],
            ),
            (
                "a refusal after broken connections acts at once",
                vec![ok(), broken(), refused()],
                vec![healthy.clone(), None, nr("connection refused: nothing listens")],
            ),
            (
                "an error breaks a slow streak",
                vec![ok(), timed_out(), timed_out(), timed_out(), sick("a"), timed_out()],
                vec![healthy.clone(), None, None, None, None, None],
            ),
        ];
        for (name, steps, expected) in cases {
            let mut m = HealthMonitor::new(1, 2).with_slow_fall(4);
            let got: Vec<Option<Health>> =
                steps.into_iter().enumerate().map(|(i, r)| m.record(r, at(i as u64)).map(|t| t.to)).collect();
            assert_eq!(got, expected, "case: {name}");
        }
        let mut m =
            HealthMonitor::from_config(&HealthConfig { rise: 1, fall: 1, slow_fall: 2, ..HealthConfig::default() });
        m.record(ok(), at(0));
        assert_eq!(m.record(timed_out(), at(1)), None);
        assert_eq!(m.consecutive_slow(), 1);
        let t = m.record(timed_out(), at(2)).unwrap();
        assert_eq!(
            t.to_string(),
            "master not responding after 2 consecutive slow checks (slow_fall 2): timed out: no answer"
        );
        let bad = HealthConfig { fall: 3, slow_fall: 2, ..HealthConfig::default() }.validate().unwrap_err();
        assert_eq!(bad.field, "slow_fall");
        assert!(bad.to_string().contains("make it at least fall"), "{bad}");
        assert_eq!(HealthConfig::default().slow_fall, 20, "far above the default fall (3)");
    }

    #[test]
    fn transitions_explain_themselves() {
        let mut m = HealthMonitor::new(1, 2);
        let t = m.record(ok(), at(1)).unwrap();
        assert_eq!(t.from, Health::Initializing);
        assert_eq!(t.to_string(), "master healthy after 1 consecutive passing checks");
        assert_eq!(m.record(sick("x"), at(2)), None);
        assert_eq!(m.consecutive_failures(), 1);
        let t = m.record(sick("disk full"), at(3)).unwrap();
        assert_eq!(t.from, Health::Healthy);
        assert_eq!(t.to_string(), "master unhealthy after 2 consecutive failed checks: disk full");
        assert_eq!(m.last_problem(), Some(&HealthProblem::unhealthy("disk full")));

        let mut m = HealthMonitor::new(1, 3);
        m.record(ok(), at(1));
        let t = m.record(refused(), at(2)).unwrap();
        assert_eq!(
            t.to_string(),
            "master not responding at once (a refusal is not retried): connection refused: nothing listens"
        );
        assert_eq!(m.consecutive_successes(), 0);
    }

    #[test]
    fn config_defaults_and_validation() {
        let c: HealthConfig = serde_yaml::from_str("{}").unwrap();
        assert_eq!(
            c,
            HealthConfig { interval_ms: 1000, timeout_ms: 3000, rise: 2, fall: 3, slow_fall: 20, watch_exit: true }
        );
        let c: HealthConfig = serde_yaml::from_str("watch_exit: false").unwrap();
        assert!(!c.watch_exit);
        assert!(c.validate().is_ok());
        // A timeout longer than the interval is allowed.
        let c: HealthConfig = serde_yaml::from_str("interval_ms: 100\ntimeout_ms: 500").unwrap();
        assert!(c.validate().is_ok());
        assert!(serde_yaml::from_str::<HealthConfig>("interval: 100").is_err());
        for (yaml, field) in [
            ("interval_ms: 0", "interval_ms"),
            ("timeout_ms: 0", "timeout_ms"),
            ("rise: 0", "rise"),
            ("fall: 0", "fall"),
            ("interval_ms: 86400000000", "interval_ms"),
            ("timeout_ms: 600001", "timeout_ms"),
        ] {
            let c: HealthConfig = serde_yaml::from_str(yaml).unwrap();
            assert_eq!(c.validate().unwrap_err().field, field, "{yaml}");
        }
        let c = HealthConfig { fall: 0, ..HealthConfig::default() };
        assert_eq!(c.validate().unwrap_err().to_string(), "health.fall: must be at least 1");
    }
}
