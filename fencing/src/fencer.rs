//! The driver: runs what the [`FencePlan`] decides, under deadlines, and records every attempt.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::config::{ConfigError, FencingConfig};
use crate::methods::{Context, Method};
use crate::outcome::{
    CheckReport, FenceEvent, FenceOutcome, FenceReport, MethodCheck, MethodOutcome, Operation, Readiness,
    UnfenceOutcome, UnfenceReport,
};
use crate::plan::{FencePlan, PlannedMethod, Step};
use crate::target::FenceTarget;
use crate::token::FencingToken;

/// Time a method may overrun its deadline while it cleans up (kills its process group,
/// closes its connection) before the driver abandons it. Methods watch their deadline
/// themselves; this backstop only catches one that does not.
pub const CLEANUP_ALLOWANCE: Duration = Duration::from_millis(250);

/// Fences targets according to a validated [`FencingConfig`].
///
/// Cheap to share behind an `Arc`; [`Fencer::fence`] takes `&self` and keeps no state
/// between calls but the count of fences and unfences begun, which [`Fencer::check`] gives
/// way to.
#[derive(Debug)]
pub struct Fencer {
    config: FencingConfig,
    levels: Vec<Vec<(String, Method)>>,
    http: reqwest::Client,
    /// Fences and unfences begun so far, and how many are running.
    acts: Acts,
}

/// Fences and unfences in progress, for checks to give way to: a device busy with a check
/// (one BMC session of the few it allows, say) must never slow a fence down.
#[derive(Debug, Default)]
struct Acts {
    begun: std::sync::atomic::AtomicU64,
    running: std::sync::atomic::AtomicU64,
    started: tokio::sync::Notify,
}

/// Marks a fence or unfence as running while it lives.
struct Acting<'a>(&'a Acts);

impl Drop for Acting<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Acts {
    /// A fence or unfence begins: checks in flight are abandoned, none starts until it ends.
    fn begin(&self) -> Acting<'_> {
        use std::sync::atomic::Ordering::SeqCst;
        self.running.fetch_add(1, SeqCst);
        self.begun.fetch_add(1, SeqCst);
        self.started.notify_waiters();
        Acting(self)
    }
}

impl Fencer {
    /// Validates `config`, loads the secrets it names and prepares every method.
    pub fn new(config: FencingConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut levels = Vec::with_capacity(config.levels.len());
        for (level, level_config) in config.levels.iter().enumerate() {
            let mut methods = Vec::with_capacity(level_config.methods.len());
            for (index, method_config) in level_config.methods.iter().enumerate() {
                let kind = method_config.kind();
                let err =
                    |field: &'static str, problem: String| ConfigError::Method { level, index, kind, field, problem };
                methods.push((method_config.name(), Method::prepare(method_config, &err)?));
            }
            levels.push(methods);
        }
        // No overall client timeout: every request sets its own from the method deadline.
        // Redirects are not followed: a fencing endpoint that redirects is misconfigured, and
        // following it could send the secret elsewhere. No proxy from the environment
        // (`http_proxy`, `HTTPS_PROXY`, `ALL_PROXY`, which reqwest follows by default): an
        // agent's unit may inherit one, and through it the bearer secrets of plain-HTTP
        // devices and peers would reach the proxy, and a proxy hanging on a dead upstream would
        // turn a fast failure into an indeterminate one.
        let http =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy().build().map_err(|e| {
                ConfigError::Field { field: "levels", problem: format!("cannot build the HTTP client: {e}") }
            })?;
        Ok(Fencer { config, levels, http, acts: Acts::default() })
    }

    /// Parses, validates and prepares a YAML fencing section.
    pub fn from_yaml_str(yaml: &str) -> Result<Self, ConfigError> {
        Fencer::new(FencingConfig::from_yaml_str(yaml)?)
    }

    /// The configuration this fencer was built from.
    pub fn config(&self) -> &FencingConfig {
        &self.config
    }

    /// Makes `target` unable to serve before the node holding `new_token` is promoted.
    ///
    /// Returns within `overall_timeout_ms` (plus at most [`CLEANUP_ALLOWANCE`]). **Only
    /// [`FenceOutcome::Fenced`] permits promotion**; see [`crate::plan`] for how levels add up.
    pub async fn fence(&self, target: &FenceTarget, new_token: FencingToken) -> FenceReport {
        let _acting = self.acts.begin();
        let start = Instant::now();
        let overall = Duration::from_millis(self.config.overall_timeout_ms);
        let delay = Duration::from_millis(self.config.delay_for(&target.node_id));
        let mut plan = FencePlan::new(
            self.levels
                .iter()
                .enumerate()
                .map(|(level, methods)| {
                    methods
                        .iter()
                        .enumerate()
                        .map(|(index, (name, _))| PlannedMethod {
                            name: name.clone(),
                            timeout: Duration::from_millis(self.config.levels[level].methods[index].timeout_ms()),
                        })
                        .collect()
                })
                .collect(),
            overall,
            delay,
        );
        tracing::info!(
            target_node = %target.node_id,
            host = %target.host,
            old_token = %target.token,
            %new_token,
            "fencing old active"
        );
        let mut events = Vec::new();
        let outcome = loop {
            match plan.next(start.elapsed()) {
                Step::Delay(wait) => {
                    tracing::info!(delay_ms = wait.as_millis() as u64, "fence delay");
                    tokio::time::sleep(wait).await;
                }
                Step::Run { level, index, budget } => {
                    let (name, method) = &self.levels[level][index];
                    let event = self.attempt(Operation::Fence, level, name, method, target, new_token, budget).await;
                    plan.record(&event.outcome);
                    events.push(event);
                }
                Step::Done(outcome) => break outcome,
            }
        };
        match &outcome {
            FenceOutcome::Fenced { .. } => tracing::info!(target_node = %target.node_id, %outcome),
            FenceOutcome::Failed { .. } | FenceOutcome::Indeterminate { .. } => {
                tracing::warn!(target_node = %target.node_id, %outcome)
            }
        }
        FenceReport { outcome, events }
    }

    /// Asks every method whether it could fence `target`, without fencing anything: the
    /// master's HA endpoint answers, the ssh login works, the power device reads the node on,
    /// and so on ([`Readiness`]). Each check runs under its method's deadline, one after the
    /// other in the chain's order, all of them whatever the others found. For an operator
    /// (`referee agent --check-fencing`) and the failover agent's periodic checks, so a broken
    /// fence device shows before it is needed.
    ///
    /// A check gives way to a fence or unfence of this fencer: one in flight when either begins
    /// is abandoned (its process group killed, its request dropped), and none starts while one
    /// runs; those methods read unchecked, and [`Fencer::acts_begun`] tells a caller that a
    /// round overlapped one.
    pub async fn check(&self, target: &FenceTarget) -> CheckReport {
        use std::sync::atomic::Ordering::SeqCst;
        let mut checks = Vec::new();
        for (level, methods) in self.levels.iter().enumerate() {
            for (index, (name, method)) in methods.iter().enumerate() {
                let budget = Duration::from_millis(self.config.levels[level].methods[index].timeout_ms());
                let deadline = Instant::now() + budget;
                let ctx = Context { http: &self.http, target, new_token: target.token, deadline };
                // Registered before the count is read, so a fence that begins in between is seen.
                let started = self.acts.started.notified();
                tokio::pin!(started);
                started.as_mut().enable();
                let gave_way = || Readiness::Unchecked { why: "a fence or unfence is running; not checked now".into() };
                let readiness = if self.acts.running.load(SeqCst) > 0 {
                    gave_way()
                } else {
                    tokio::select! {
                        checked = tokio::time::timeout_at(deadline + CLEANUP_ALLOWANCE, method.check(&ctx)) => match checked {
                            Ok(readiness) => readiness,
                            Err(_) => Readiness::Problem { reason: format!("no answer within {} ms", budget.as_millis()) },
                        },
                        () = &mut started => gave_way(),
                    }
                };
                checks.push(MethodCheck { level, index, method: name.clone(), kind: method.kind(), readiness });
            }
        }
        CheckReport { node_id: target.node_id.clone(), checks }
    }

    /// How many fences and unfences this fencer has begun: a caller that reads it before and
    /// after a round of [`Fencer::check`] knows whether the round gave way to one that began
    /// during it ([`Fencer::acting`] says whether one was running when it began).
    pub fn acts_begun(&self) -> u64 {
        self.acts.begun.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether a fence or unfence of this fencer is running now.
    pub fn acting(&self) -> bool {
        self.acts.running.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// Undoes the reversible methods (firewall isolation) for `target`, so a repaired node
    /// can serve again. Every reversible method is tried, whatever the others did.
    pub async fn unfence(&self, target: &FenceTarget) -> UnfenceReport {
        let _acting = self.acts.begin();
        let mut events = Vec::new();
        let mut first_problem = None;
        for (level, methods) in self.levels.iter().enumerate() {
            for (index, (name, method)) in methods.iter().enumerate() {
                if !method.is_reversible() {
                    continue;
                }
                let budget = Duration::from_millis(self.config.levels[level].methods[index].timeout_ms());
                let event = self.attempt(Operation::Unfence, level, name, method, target, target.token, budget).await;
                if first_problem.is_none() && !event.outcome.is_fenced() {
                    first_problem = Some(format!("level {level} method `{name}`: {}", event.outcome));
                }
                events.push(event);
            }
        }
        let outcome = match first_problem {
            None => UnfenceOutcome::Unfenced,
            Some(reason) => UnfenceOutcome::Incomplete { reason },
        };
        UnfenceReport { outcome, events }
    }

    /// Runs one method under its budget and records it.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        operation: Operation,
        level: usize,
        name: &str,
        method: &Method,
        target: &FenceTarget,
        new_token: FencingToken,
        budget: Duration,
    ) -> FenceEvent {
        let started_at = SystemTime::now();
        let started = Instant::now();
        let deadline = started + budget;
        let ctx = Context { http: &self.http, target, new_token, deadline };
        let run = async {
            match operation {
                Operation::Fence => method.fence(&ctx).await,
                Operation::Unfence => method.unfence(&ctx).await,
            }
        };
        // Dropping the method's future on expiry is safe: child processes are killed by
        // their guards and HTTP requests are cancelled.
        let outcome = match tokio::time::timeout_at(deadline + CLEANUP_ALLOWANCE, run).await {
            Ok(outcome) => outcome,
            Err(_) => {
                MethodOutcome::indeterminate(format!("did not finish within its {} ms deadline", budget.as_millis()))
            }
        };
        let event = FenceEvent {
            operation,
            level,
            kind: method.kind(),
            method: name.to_string(),
            target: target.node_id.clone(),
            outcome,
            started_at,
            duration: started.elapsed(),
        };
        match &event.outcome {
            MethodOutcome::Fenced { .. } => tracing::info!(
                ?operation,
                level,
                method = %event.method,
                target_node = %event.target,
                duration_ms = event.duration.as_millis() as u64,
                outcome = %event.outcome,
                "fence method attempt"
            ),
            MethodOutcome::Failed { .. } | MethodOutcome::Indeterminate { .. } => tracing::warn!(
                ?operation,
                level,
                method = %event.method,
                target_node = %event.target,
                duration_ms = event.duration.as_millis() as u64,
                outcome = %event.outcome,
                "fence method attempt"
            ),
        }
        event
    }
}
