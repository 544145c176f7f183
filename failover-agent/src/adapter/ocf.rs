//! [`OcfAdapter`]: a master managed by an OCF resource agent, as Pacemaker manages a promotable
//! resource.
//!
//! Pacemaker's resource agents (Debian's `resource-agents` and `pacemaker-resource-agents`, or
//! an operator's own) know how to monitor, promote and demote their service. This adapter runs
//! an agent's `monitor`, `promote` and `demote` actions the way Pacemaker's executor runs them for
//! a promotable clone with one promoted instance, so the same agent can stand behind Referee:
//!
//! - the program is `<ocf_root>/resource.d/<provider>/<type>` (`agent: heartbeat:pgsql`, an
//!   `ocf:` prefix allowed) or an absolute path, run with the action as its one argument, never
//!   through a shell, in a process group of its own that is killed with it at the deadline;
//! - its environment: `OCF_ROOT`, `OCF_RA_VERSION_MAJOR=1`, `OCF_RA_VERSION_MINOR=1`,
//!   `OCF_RESOURCE_INSTANCE`, `OCF_RESOURCE_TYPE`, `OCF_RESOURCE_PROVIDER`, an `OCF_RESKEY_<name>`
//!   for each of `params`, the meta attributes of a promotable clone (`OCF_RESKEY_CRM_meta_`
//!   `promotable=true`, `promoted_max=1` and its older name `master_max`, `clone_max` (the nodes
//!   of the cluster), `clone_node_max=1`, `notify=false`, `globally_unique=false`, `on_node`),
//!   `OCF_RESKEY_CRM_meta_timeout` (the run's deadline in ms) and `OCF_RESKEY_CRM_meta_interval`
//!   (for `monitor` the agent's health interval, a recurring monitor and not a probe; 0
//!   otherwise), any of which `meta` may override; `OCF_CHECK_LEVEL` for `monitor` when
//!   `check_level` is set; and `REFEREE_NODE_ID`, with `FENCE_TOKEN` and `REFEREE_TOKEN` for
//!   promote and demote;
//! - the exit codes of the OCF standard: `monitor` 0 running unpromoted (standby), 8 running
//!   promoted (active), 7 not running, 9 failed while promoted, 190 and 191 degraded (unpromoted,
//!   promoted: healthy, logged); any other code is a failure, reported with its name and the
//!   agent's `ocf-exit-reason:` line (else the last line of its standard error);
//! - one operation of the resource at a time, as under Pacemaker: the health check's health and
//!   state share one `monitor` run; no monitor starts while a promote or demote runs, and a
//!   promote or demote stops the monitor running instead of waiting behind it (a demotion at
//!   the end of the lease must not wait on a slow query); a promotion or demotion is confirmed
//!   by a run that starts after it.
//!
//! # Tokens
//!
//! A resource agent knows nothing of fencing tokens, yet a master must report the highest token
//! it has been given: the agent's rules that keep tokens increasing depend on it. The adapter
//! keeps that number for the resource in `token_file` (one decimal line), raised and made durable
//! (a temporary file, fsynced, renamed, its directory fsynced) **before** a promote or demote
//! action runs, so it survives a restart of the agent or of the host; a promotion with a token
//! below it is refused without running anything, as a master of the HTTP protocol refuses a
//! stale token. The resource itself cannot refuse a writer with an old token: with an OCF master,
//! split brain is kept out by the lease (the agent demotes at its end, even with its decision
//! loop blocked) and by fencing the old active before a promotion, as under Pacemaker.
//!
//! # Start and stop
//!
//! The adapter never starts or stops the resource; its service manager does (an OCF resource
//! always starts unpromoted, which is what the agent expects of a master it has not promoted),
//! as ZKFC leaves the NameNode's lifecycle to its own service. A resource that is not running is
//! unhealthy at once, and counts as demoted.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use referee_fencing::{FencingToken, HaState};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::command::{run, CommandEnd};
use super::{
    confirm_demoted, confirm_promoted, AdapterConfigError, AdapterContext, AdapterError, AdapterFuture, HealthProblem,
    MasterAdapter, NoAnswer,
};
use crate::model::MasterStatus;

/// OCF_SUCCESS: for `monitor`, running unpromoted.
const OCF_SUCCESS: i32 = 0;
/// OCF_NOT_RUNNING.
const OCF_NOT_RUNNING: i32 = 7;
/// OCF_RUNNING_PROMOTED (OCF_RUNNING_MASTER before 1.1).
const OCF_RUNNING_PROMOTED: i32 = 8;
/// OCF_FAILED_PROMOTED (OCF_FAILED_MASTER before 1.1).
const OCF_FAILED_PROMOTED: i32 = 9;
/// OCF_DEGRADED: running unpromoted, degraded.
const OCF_DEGRADED: i32 = 190;
/// OCF_DEGRADED_PROMOTED.
const OCF_DEGRADED_PROMOTED: i32 = 191;

/// The name the OCF standard gives an exit code.
pub fn ocf_code_name(code: i32) -> &'static str {
    match code {
        0 => "OCF_SUCCESS",
        1 => "OCF_ERR_GENERIC",
        2 => "OCF_ERR_ARGS",
        3 => "OCF_ERR_UNIMPLEMENTED",
        4 => "OCF_ERR_PERM",
        5 => "OCF_ERR_INSTALLED",
        6 => "OCF_ERR_CONFIGURED",
        7 => "OCF_NOT_RUNNING",
        8 => "OCF_RUNNING_PROMOTED",
        9 => "OCF_FAILED_PROMOTED",
        190 => "OCF_DEGRADED",
        191 => "OCF_DEGRADED_PROMOTED",
        _ => "not an OCF code",
    }
}

fn default_ocf_root() -> PathBuf {
    PathBuf::from("/usr/lib/ocf")
}

fn default_timeout_ms() -> u64 {
    // Pacemaker's default operation timeout.
    20_000
}

/// `adapter: {kind: ocf, ...}`: an OCF resource agent's monitor, promote and demote actions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OcfAdapterConfig {
    /// The resource agent: `provider:type` (`heartbeat:pgsql`, `ocf:pacemaker:Stateful`), found
    /// under `ocf_root`, or the absolute path of the program.
    pub agent: String,
    /// `OCF_ROOT`, where the agents and their shell library live (default `/usr/lib/ocf`).
    #[serde(default = "default_ocf_root")]
    pub ocf_root: PathBuf,
    /// `OCF_RESOURCE_INSTANCE`, the resource's name (Pacemaker's resource id; default: the
    /// agent's type). Agents name their state files after it.
    #[serde(default)]
    pub instance: Option<String>,
    /// The instance parameters: each becomes `OCF_RESKEY_<name>`.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Meta attributes: each becomes `OCF_RESKEY_CRM_meta_<name>`, over the defaults.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Where the highest fencing token handed to the resource is kept (an absolute path in a
    /// directory that exists; the file is created at the first promotion).
    pub token_file: PathBuf,
    /// Ceiling for one run of the agent (default 20000, Pacemaker's default operation timeout);
    /// a caller's deadline (the health check's timeout, a promotion's) can only shorten it.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// `OCF_CHECK_LEVEL` for `monitor` runs, as Pacemaker sets it from a monitor operation's
    /// attribute: how thorough the agent's check is (by convention 0, 10 or 20; each agent
    /// documents its own). Unset: the agent's default, its quickest.
    #[serde(default)]
    pub check_level: Option<u32>,
}

/// The resource agent `agent` names: (program, provider, type).
fn resolve(agent: &str, ocf_root: &Path) -> Result<(PathBuf, String, String), String> {
    let part_ok = |p: &str| !p.is_empty() && p != "." && p != ".." && !p.contains(['/', ':', '\0']);
    if agent.starts_with('/') {
        let path = PathBuf::from(agent);
        let kind = path.file_name().and_then(|f| f.to_str()).unwrap_or_default().to_string();
        let provider =
            path.parent().and_then(|p| p.file_name()).and_then(|f| f.to_str()).unwrap_or_default().to_string();
        if !part_ok(&kind) || agent.contains('\0') {
            return Err(format!("{agent:?} is not the path of a program"));
        }
        return Ok((path, provider, kind));
    }
    let spec = agent.strip_prefix("ocf:").unwrap_or(agent);
    match spec.split_once(':') {
        Some((provider, kind)) if part_ok(provider) && part_ok(kind) => {
            Ok((ocf_root.join("resource.d").join(provider).join(kind), provider.to_string(), kind.to_string()))
        }
        _ => Err(format!(
            "{agent:?} names no resource agent; give `provider:type` (e.g. `heartbeat:pgsql`, found under \
             ocf_root's resource.d) or the agent's absolute path"
        )),
    }
}

impl OcfAdapterConfig {
    /// Checks every field; the error names the bad one.
    pub fn validate(&self) -> Result<(), AdapterConfigError> {
        resolve(&self.agent, &self.ocf_root).map_err(|why| AdapterConfigError::new("agent", why))?;
        if !self.ocf_root.is_absolute() {
            return Err(AdapterConfigError::new("ocf_root", "must be an absolute path (e.g. /usr/lib/ocf)"));
        }
        if let Some(instance) = &self.instance {
            if instance.trim().is_empty() || instance.contains(['\0', '/']) {
                return Err(AdapterConfigError::new(
                    "instance",
                    format!("{instance:?} is not a resource name; use letters, digits, '-', '_' or '.'"),
                ));
            }
        }
        for (section, map) in [("params", &self.params), ("meta", &self.meta)] {
            for (name, value) in map {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(AdapterConfigError::new(
                        format!("{section}.{name}"),
                        "is not a parameter name an environment variable can carry; use letters, digits and '_'",
                    ));
                }
                if value.contains('\0') {
                    return Err(AdapterConfigError::new(format!("{section}.{name}"), "contains a NUL byte"));
                }
            }
        }
        if !self.token_file.is_absolute() || self.token_file.file_name().is_none() {
            return Err(AdapterConfigError::new(
                "token_file",
                "must be the absolute path of a file (e.g. /var/lib/referee/orders-db.token)",
            ));
        }
        if self.timeout_ms == 0 {
            return Err(AdapterConfigError::new("timeout_ms", "must be greater than 0"));
        }
        Ok(())
    }
}

/// Manages a master through an OCF resource agent.
#[derive(Debug)]
pub struct OcfAdapter {
    program: Vec<String>,
    /// The environment common to every run.
    env: Vec<(String, String)>,
    monitor_interval: Duration,
    /// `OCF_CHECK_LEVEL` for monitor runs.
    check_level: Option<u32>,
    timeout: Duration,
    token_file: PathBuf,
    /// The highest token recorded in `token_file`, read without waiting on a disk.
    highest: std::sync::atomic::AtomicU64,
    /// Held while the token file is rewritten, so that raises never interleave.
    raising: tokio::sync::Mutex<()>,
    /// Held for the whole of each run of the resource agent (monitor, promote, demote,
    /// validate-all): one operation of the resource at a time, as Pacemaker's executor runs them.
    op: tokio::sync::Mutex<()>,
    /// How many promotes and demotes are waiting for [`OcfAdapter::op`] or running: while any
    /// is, no monitor starts, and the one running is stopped (its process group killed), so a
    /// role change (a demotion at the end of the lease above all) never waits behind a slow
    /// monitor.
    role_changes: tokio::sync::watch::Sender<u32>,
    /// The monitor runs: how many started, whether one is running, the last one's end.
    monitors: std::sync::Mutex<Monitors>,
}

/// Counts a role change in [`OcfAdapter::role_changes`] while it lives (also when its future
/// is dropped).
struct RoleChange<'a>(&'a tokio::sync::watch::Sender<u32>);

impl<'a> RoleChange<'a> {
    fn begin(counter: &'a tokio::sync::watch::Sender<u32>) -> Self {
        counter.send_modify(|n| *n += 1);
        RoleChange(counter)
    }
}

impl Drop for RoleChange<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The bookkeeping of [`OcfAdapter::monitor_end`].
#[derive(Debug, Default)]
struct Monitors {
    started: u64,
    running: bool,
    last: Option<(u64, CommandEnd)>,
}

impl OcfAdapter {
    /// Validates `config`, checks that the resource agent is an executable file, and reads
    /// `token_file` (a missing file is token 0; an unreadable or damaged one is refused: the
    /// resource must not forget a token it was given).
    pub fn new(config: &OcfAdapterConfig, context: &AdapterContext) -> Result<Self, AdapterConfigError> {
        config.validate()?;
        let (program, provider, kind) =
            resolve(&config.agent, &config.ocf_root).map_err(|why| AdapterConfigError::new("agent", why))?;
        let runnable = std::fs::metadata(&program).map(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        });
        match runnable {
            Ok(true) => {}
            Ok(false) => {
                return Err(AdapterConfigError::new(
                    "agent",
                    format!("{} is not an executable file", program.display()),
                ))
            }
            Err(e) => {
                return Err(AdapterConfigError::new(
                    "agent",
                    format!(
                        "{}: {e}; install the resource agent (Debian: resource-agents, pacemaker-resource-agents) or \
                         correct `agent` and `ocf_root`",
                        program.display()
                    ),
                ))
            }
        }
        let highest = load_token(&config.token_file).map_err(|why| AdapterConfigError::new("token_file", why))?;
        let mut meta: BTreeMap<String, String> = [
            ("promotable", "true".to_string()),
            ("promoted_max", "1".into()),
            ("master_max", "1".into()),
            ("promoted_node_max", "1".into()),
            ("master_node_max", "1".into()),
            ("clone_max", context.nodes.max(1).to_string()),
            ("clone_node_max", "1".into()),
            ("notify", "false".into()),
            ("globally_unique", "false".into()),
            ("on_node", context.node_id.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        meta.extend(config.meta.clone());
        let mut env = vec![
            ("OCF_ROOT".to_string(), config.ocf_root.display().to_string()),
            ("OCF_RA_VERSION_MAJOR".into(), "1".into()),
            ("OCF_RA_VERSION_MINOR".into(), "1".into()),
            ("OCF_RESOURCE_INSTANCE".into(), config.instance.clone().unwrap_or_else(|| kind.clone())),
            ("OCF_RESOURCE_TYPE".into(), kind),
            ("OCF_RESOURCE_PROVIDER".into(), provider),
            ("REFEREE_NODE_ID".into(), context.node_id.clone()),
        ];
        env.extend(meta.into_iter().map(|(k, v)| (format!("OCF_RESKEY_CRM_meta_{k}"), v)));
        env.extend(config.params.iter().map(|(k, v)| (format!("OCF_RESKEY_{k}"), v.clone())));
        Ok(OcfAdapter {
            program: vec![program.display().to_string()],
            env,
            monitor_interval: context.monitor_interval,
            check_level: config.check_level,
            timeout: Duration::from_millis(config.timeout_ms),
            token_file: config.token_file.clone(),
            highest: std::sync::atomic::AtomicU64::new(highest.0),
            raising: tokio::sync::Mutex::new(()),
            op: tokio::sync::Mutex::new(()),
            role_changes: tokio::sync::watch::Sender::new(0),
            monitors: std::sync::Mutex::new(Monitors::default()),
        })
    }

    /// Runs `action` until `deadline` (shortened to the configured ceiling).
    async fn action(&self, action: &str, token: Option<FencingToken>, deadline: Instant) -> CommandEnd {
        let deadline = deadline.min(Instant::now() + self.timeout);
        let mut env = self.env.clone();
        let interval = if action == "monitor" { self.monitor_interval.as_millis() } else { 0 };
        let timeout = deadline.saturating_duration_since(Instant::now()).as_millis();
        // Set after the defaults so that they win, unless `meta` gave them.
        if !env.iter().any(|(k, _)| k == "OCF_RESKEY_CRM_meta_interval") {
            env.push(("OCF_RESKEY_CRM_meta_interval".into(), interval.to_string()));
        }
        if !env.iter().any(|(k, _)| k == "OCF_RESKEY_CRM_meta_timeout") {
            env.push(("OCF_RESKEY_CRM_meta_timeout".into(), timeout.to_string()));
        }
        if let (Some(level), "monitor") = (self.check_level, action) {
            env.push(("OCF_CHECK_LEVEL".into(), level.to_string()));
        }
        if let Some(token) = token {
            env.push(("FENCE_TOKEN".into(), token.to_string()));
            env.push(("REFEREE_TOKEN".into(), token.to_string()));
        }
        let mut argv = self.program.clone();
        argv.push(action.to_string());
        run(&argv, &env, deadline).await
    }

    /// How a `monitor` run ended. With `share`, a caller that arrives while a run is in flight
    /// takes that run's end instead of starting another once it is over (the health monitor asks
    /// for the health and the state at once, and one run answers both); otherwise, and between
    /// runs, the caller gets a run that starts after it asked (a promotion's confirmation must
    /// not be a run that began before the promotion ended). Runs never overlap one another nor a
    /// promote or demote: a resource agent's monitor can be costly (a database query), and
    /// Pacemaker runs one operation of a resource at a time. A run that a role change stops
    /// counts for nothing: its callers wait for the role change and take a run that starts
    /// after it, a verdict on the resource as the role change left it.
    async fn monitor_end(&self, deadline: Instant, share: bool) -> CommandEnd {
        let lock = || self.monitors.lock().unwrap_or_else(|p| p.into_inner());
        let mut accept_from = {
            let m = lock();
            if m.running && share {
                m.started
            } else {
                m.started + 1
            }
        };
        let busy = |what: &str| CommandEnd::TimedOut {
            stderr: format!("the deadline passed while the resource was busy with {what}"),
        };
        loop {
            let mut changes = self.role_changes.subscribe();
            if tokio::time::timeout_at(deadline, changes.wait_for(|n| *n == 0)).await.is_err() {
                return busy("a promote or demote");
            }
            let Ok(_op) = tokio::time::timeout_at(deadline, self.op.lock()).await else {
                return busy("another operation");
            };
            // A role change that began meanwhile goes first.
            if *changes.borrow_and_update() > 0 {
                continue;
            }
            let number = {
                let mut m = lock();
                if let Some((n, end)) = &m.last {
                    if *n >= accept_from {
                        return end.clone();
                    }
                }
                m.started += 1;
                m.running = true;
                m.started
            };
            let end = tokio::select! {
                biased;
                _ = changes.wait_for(|n| *n > 0) => None,
                end = self.action("monitor", None, deadline) => Some(end),
            };
            let mut m = lock();
            m.running = false;
            match end {
                Some(end) => {
                    m.last = Some((number, end.clone()));
                    return end;
                }
                None => {
                    tracing::debug!("a monitor run was stopped for a promote or demote; taking the next one");
                    accept_from = number + 1;
                }
            }
        }
    }

    /// Runs `promote` or `demote` as the resource's one operation: the monitor running is
    /// stopped, none starts until it ends.
    async fn role_change(&self, action: &str, token: FencingToken, deadline: Instant) -> CommandEnd {
        let _counted = RoleChange::begin(&self.role_changes);
        let Ok(_op) = tokio::time::timeout_at(deadline, self.op.lock()).await else {
            return CommandEnd::TimedOut {
                stderr: format!("`{action}` did not start before its deadline: another operation held the resource"),
            };
        };
        self.action(action, Some(token), deadline).await
    }

    /// `monitor`, read as the master's state; `Ok(None)` when the resource is not running.
    /// `share` as for [`OcfAdapter::monitor_end`].
    async fn monitor(&self, deadline: Instant, share: bool) -> Result<Option<MasterStatus>, AdapterError> {
        let end = self.monitor_end(deadline, share).await;
        let token = self.highest();
        let status = |state| Ok(Some(MasterStatus { state, token, position: None }));
        match end {
            CommandEnd::Exited { code: OCF_SUCCESS | OCF_DEGRADED, .. } => status(HaState::Standby),
            // Failed while promoted: it may still be serving, so it counts as active (and the
            // rules that end an active master apply to it).
            CommandEnd::Exited { code: OCF_RUNNING_PROMOTED | OCF_DEGRADED_PROMOTED | OCF_FAILED_PROMOTED, .. } => {
                status(HaState::Active)
            }
            CommandEnd::Exited { code: OCF_NOT_RUNNING, .. } => Ok(None),
            end => Err(self.failure("monitor", end)),
        }
    }

    /// The error for a run that did not end as wanted. A non-zero exit of promote or demote
    /// leaves the outcome unknown (the agent may have acted before it failed), except the codes
    /// that say it could not act at all (bad arguments, not implemented, no permission, not
    /// installed, not configured).
    fn failure(&self, action: &str, end: CommandEnd) -> AdapterError {
        let what = format!("`{} {action}`", self.program[0]);
        match end {
            CommandEnd::Exited { code, stderr, .. } if (2..=6).contains(&code) => AdapterError::Rejected {
                reason: format!("{what} exited with {code} ({}): {}", ocf_code_name(code), exit_reason(&stderr)),
            },
            CommandEnd::Exited { code, stderr, .. } => AdapterError::BadAnswer {
                reason: format!("{what} exited with {code} ({}): {}", ocf_code_name(code), exit_reason(&stderr)),
            },
            CommandEnd::Signalled { signal, stderr } => AdapterError::BadAnswer {
                reason: format!("{what} was killed by signal {signal}: {}", exit_reason(&stderr)),
            },
            CommandEnd::TimedOut { stderr } => AdapterError::NotResponding {
                how: NoAnswer::TimedOut,
                reason: format!("{what} did not finish before its deadline: {}", exit_reason(&stderr)),
            },
            CommandEnd::SpawnFailed { error } => AdapterError::CannotRun { reason: error },
        }
    }

    /// The highest token recorded.
    fn highest(&self) -> FencingToken {
        FencingToken(self.highest.load(std::sync::atomic::Ordering::Acquire))
    }

    /// Raises the recorded token to `token` and makes it durable, before anything acts on it.
    async fn raise(&self, token: FencingToken) -> Result<FencingToken, AdapterError> {
        let _raising = self.raising.lock().await;
        if token > self.highest() {
            let path = self.token_file.clone();
            tokio::task::spawn_blocking(move || persist_token(&path, token))
                .await
                .map_err(|e| AdapterError::CannotRun { reason: format!("recording the token: {e}") })?
                .map_err(|e| AdapterError::CannotRun {
                    reason: format!("cannot record token {token} in {}: {e}", self.token_file.display()),
                })?;
            self.highest.store(token.0, std::sync::atomic::Ordering::Release);
        }
        Ok(self.highest())
    }
}

impl MasterAdapter for OcfAdapter {
    fn health(&self, deadline: Instant) -> AdapterFuture<'_, Result<(), HealthProblem>> {
        Box::pin(async move {
            match self.monitor_end(deadline, true).await {
                CommandEnd::Exited { code: OCF_SUCCESS | OCF_RUNNING_PROMOTED, .. } => Ok(()),
                CommandEnd::Exited { code: code @ (OCF_DEGRADED | OCF_DEGRADED_PROMOTED), stderr, .. } => {
                    tracing::debug!("the resource is degraded ({}): {}", ocf_code_name(code), exit_reason(&stderr));
                    Ok(())
                }
                // As certain as a refused connection: nothing runs, and waiting for more failed
                // checks would only delay the failover.
                CommandEnd::Exited { code: OCF_NOT_RUNNING, stderr, .. } => Err(HealthProblem::not_responding(
                    NoAnswer::Refused,
                    format!("the resource is not running (OCF_NOT_RUNNING): {}", exit_reason(&stderr)),
                )),
                CommandEnd::Exited { code, stderr, .. } => Err(HealthProblem::unhealthy(format!(
                    "`{} monitor` exited with {code} ({}): {}",
                    self.program[0],
                    ocf_code_name(code),
                    exit_reason(&stderr)
                ))),
                CommandEnd::Signalled { signal, stderr } => Err(HealthProblem::unhealthy(format!(
                    "`{} monitor` was killed by signal {signal}: {}",
                    self.program[0],
                    exit_reason(&stderr)
                ))),
                CommandEnd::TimedOut { stderr } => Err(HealthProblem::not_responding(
                    NoAnswer::TimedOut,
                    format!(
                        "`{} monitor` did not finish before its deadline: {}",
                        self.program[0],
                        exit_reason(&stderr)
                    ),
                )),
                CommandEnd::SpawnFailed { error } => Err(HealthProblem::CheckFailed { reason: error }),
            }
        })
    }

    fn state(&self, deadline: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
        Box::pin(async move {
            // Not running: neither active nor ready to be promoted.
            let token = self.highest();
            Ok(self.monitor(deadline, true).await?.unwrap_or(MasterStatus {
                state: HaState::Initializing,
                token,
                position: None,
            }))
        })
    }

    fn promote(&self, token: FencingToken, deadline: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
        Box::pin(async move {
            let seen = self.highest();
            if token < seen {
                return Err(AdapterError::Rejected {
                    reason: format!("the resource was given token {seen}, above {token}; a promotion never goes back"),
                });
            }
            // The token must be on disk before the agent acts on it, and by the deadline: a
            // hung disk must not hold the caller's decision loop past it.
            match tokio::time::timeout_at(deadline, self.raise(token)).await {
                Ok(raised) => raised?,
                Err(_) => {
                    return Err(AdapterError::CannotRun {
                        reason: format!(
                            "recording token {token} in {} did not finish by the promotion's deadline, so the \
                             resource was not promoted; check the disk under it",
                            self.token_file.display()
                        ),
                    })
                }
            };
            match self.role_change("promote", token, deadline).await {
                CommandEnd::Exited { code: OCF_SUCCESS, .. } => {}
                end => return Err(self.failure("promote", end)),
            }
            let reported = self.monitor(deadline, false).await?.unwrap_or(MasterStatus {
                state: HaState::Initializing,
                token,
                position: None,
            });
            confirm_promoted(reported, token)
        })
    }

    /// `validate-all`: 0 passes, and so does 3 (not implemented: many agents have none);
    /// 2, 5 and 6 (bad arguments, not installed, not configured) say the configuration cannot
    /// work, and stop the agent; anything else is reported as a failure too.
    fn validate(&self, deadline: Instant) -> AdapterFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let end = match tokio::time::timeout_at(deadline, self.op.lock()).await {
                Ok(_op) => self.action("validate-all", None, deadline).await,
                Err(_) => CommandEnd::TimedOut { stderr: "another operation held the resource".into() },
            };
            match end {
                CommandEnd::Exited { code: 0 | 3, .. } => Ok(()),
                CommandEnd::Exited { code, stderr, .. } => Err(format!(
                    "`{} validate-all` exited with {code} ({}): {}",
                    self.program[0],
                    ocf_code_name(code),
                    exit_reason(&stderr)
                )),
                end => Err(self.failure("validate-all", end).to_string()),
            }
        })
    }

    fn demote(&self, token: FencingToken, deadline: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
        Box::pin(async move {
            // A demotion goes ahead even when the token cannot be recorded, or not soon (a hung
            // disk gets a quarter of the time left): stepping down is what keeps two masters
            // from serving, and the lease guard's demotion must not wait on a disk. The master
            // then reports the lower token it holds, which is no proof of a step-down to a peer
            // fencing it with the new one.
            let budget = deadline.saturating_duration_since(Instant::now()) / 4;
            let highest = match tokio::time::timeout(budget, self.raise(token)).await {
                Ok(Ok(highest)) => highest,
                Ok(Err(e)) => {
                    tracing::warn!("demoting the resource without recording token {token}: {e}");
                    self.highest()
                }
                Err(_) => {
                    tracing::warn!(
                        "demoting the resource without recording token {token}: the token file took over {budget:?}"
                    );
                    self.highest()
                }
            };
            match self.role_change("demote", token, deadline).await {
                // Not running is as demoted as it gets.
                CommandEnd::Exited { code: OCF_SUCCESS | OCF_NOT_RUNNING, .. } => {}
                end => return Err(self.failure("demote", end)),
            }
            let reported = self.monitor(deadline, false).await?.unwrap_or(MasterStatus {
                state: HaState::Standby,
                token: highest,
                position: None,
            });
            confirm_demoted(reported)
        })
    }
}

/// The agent's reason: its last `ocf-exit-reason:` line (what `ocf_exit_reason` prints), else
/// the last line of its standard error.
fn exit_reason(stderr: &str) -> String {
    let reason = stderr.lines().rev().find_map(|l| l.trim().strip_prefix("ocf-exit-reason:")).map(str::trim);
    let short = super::short_reason(reason.unwrap_or(stderr));
    if short.is_empty() {
        "(no output)".into()
    } else {
        short
    }
}

/// Reads the recorded token: missing is 0; anything but one decimal number is refused.
fn load_token(path: &Path) -> Result<FencingToken, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => text.trim().parse::<u64>().map(FencingToken).map_err(|_| {
            format!(
                "{} holds {:?}, not a token; it keeps the highest fencing token handed to the resource: restore it \
                 (a larger number is safe), or remove it only if the resource was never promoted",
                path.display(),
                super::short_reason(&text)
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = path.parent().unwrap_or(Path::new("/"));
            if dir.is_dir() {
                Ok(FencingToken(0))
            } else {
                Err(format!(
                    "its directory {} does not exist; create it (the file is made at the first promotion)",
                    dir.display()
                ))
            }
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Writes the token file atomically and durably: temporary file, fsync, rename, fsync of the
/// directory. Only then may the token be acted on.
fn persist_token(path: &Path, token: FencingToken) -> std::io::Result<()> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        let mut file = std::fs::File::create(&tmp)?;
        writeln!(file, "{token}")?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(path.parent().unwrap_or(Path::new("/")))?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OcfAdapterConfig {
        OcfAdapterConfig {
            agent: "pacemaker:Stateful".into(),
            ocf_root: default_ocf_root(),
            instance: None,
            params: BTreeMap::new(),
            meta: BTreeMap::new(),
            token_file: "/var/lib/referee/t.token".into(),
            timeout_ms: 1000,
            check_level: None,
        }
    }

    #[test]
    fn an_agent_is_named_by_provider_and_type_or_by_path() {
        let root = Path::new("/usr/lib/ocf");
        let stateful =
            (PathBuf::from("/usr/lib/ocf/resource.d/pacemaker/Stateful"), "pacemaker".into(), "Stateful".into());
        assert_eq!(resolve("pacemaker:Stateful", root), Ok(stateful.clone()));
        assert_eq!(resolve("ocf:pacemaker:Stateful", root), Ok(stateful));
        assert_eq!(
            resolve("/opt/ra/acme/orders", root),
            Ok((PathBuf::from("/opt/ra/acme/orders"), "acme".into(), "orders".into()))
        );
        for bad in ["pgsql", "heartbeat:", ":pgsql", "heartbeat:../x", "ocf:a:b:c", "../x/y", "/"] {
            assert!(resolve(bad, root).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_names_the_bad_field() {
        assert!(config().validate().is_ok());
        let field = |c: OcfAdapterConfig| c.validate().unwrap_err().field;
        assert_eq!(field(OcfAdapterConfig { agent: "pgsql".into(), ..config() }), "agent");
        assert_eq!(field(OcfAdapterConfig { ocf_root: "ocf".into(), ..config() }), "ocf_root");
        assert_eq!(field(OcfAdapterConfig { instance: Some(" ".into()), ..config() }), "instance");
        assert_eq!(field(OcfAdapterConfig { token_file: "t.token".into(), ..config() }), "token_file");
        assert_eq!(field(OcfAdapterConfig { timeout_ms: 0, ..config() }), "timeout_ms");
        let mut c = config();
        c.params.insert("pg-data".into(), "/x".into());
        assert_eq!(field(c), "params.pg-data");
        let mut c = config();
        c.meta.insert("notify".into(), "a\0b".into());
        assert_eq!(field(c), "meta.notify");
    }

    #[test]
    fn codes_have_their_standard_names_and_reasons_come_from_the_agent() {
        assert_eq!(ocf_code_name(8), "OCF_RUNNING_PROMOTED");
        assert_eq!(ocf_code_name(42), "not an OCF code");
        assert_eq!(exit_reason("noise\nocf-exit-reason:disk full\nmore noise\n"), "disk full");
        assert_eq!(exit_reason("first\nlast\n"), "last");
        assert_eq!(exit_reason(""), "(no output)");
    }
}
