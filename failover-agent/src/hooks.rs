//! Operator hooks, as Patroni's callbacks: `pre_promote` runs synchronously after this node
//! won the lock and fenced the old active, just before its master is promoted, and can veto the
//! promotion (a non-zero exit: the agent releases the lock and backs off, as after any failed
//! promotion); `on_role_change` runs asynchronously after every role change, one at a time.
//!
//! Hooks are argv arrays run without a shell, in their own process group, under a deadline
//! after which the whole group is killed. They receive `REFEREE_NODE_ID`, `REFEREE_CLUSTER`,
//! `REFEREE_TOKEN` and, for role changes, `REFEREE_ROLE` and `REFEREE_PREVIOUS_ROLE`.

use std::time::Duration;

use referee_fencing::FencingToken;
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::adapter::{run_program, CommandEnd};
use crate::status::Role;

/// One hook.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// Deadline; the process group is killed when it passes.
    pub timeout_ms: u64,
}

/// The `hooks:` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksConfig {
    /// Runs before a promotion; a failure vetoes it.
    #[serde(default)]
    pub pre_promote: Option<HookConfig>,
    /// Runs after each role change, asynchronously.
    #[serde(default)]
    pub on_role_change: Option<HookConfig>,
}

impl HooksConfig {
    /// Checks every hook; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, hook) in [("hooks.pre_promote", &self.pre_promote), ("hooks.on_role_change", &self.on_role_change)] {
            let Some(h) = hook else { continue };
            if h.command.first().is_none_or(|p| p.trim().is_empty()) {
                return Err(format!("{name}.command is empty; give a program and its arguments"));
            }
            if h.command.iter().any(|a| a.contains('\0')) {
                return Err(format!("{name}.command has an argument with a NUL byte"));
            }
            if h.timeout_ms == 0 {
                return Err(format!("{name}.timeout_ms is 0; give the hook time to run"));
            }
        }
        Ok(())
    }
}

fn describe(end: &CommandEnd) -> String {
    match end {
        CommandEnd::Exited { code, stderr, .. } => format!("exited {code}{}", tail(stderr)),
        CommandEnd::Signalled { signal, stderr } => format!("killed by signal {signal}{}", tail(stderr)),
        CommandEnd::TimedOut { .. } => "timed out; its process group was killed".to_string(),
        CommandEnd::SpawnFailed { error } => error.clone(),
    }
}

fn tail(stderr: &str) -> String {
    let t = stderr.trim();
    if t.is_empty() {
        String::new()
    } else {
        format!(": {}", t.lines().last().unwrap_or_default())
    }
}

/// Runs `pre_promote`; `Err` (with why) vetoes the promotion.
pub async fn pre_promote(hook: &HookConfig, cluster: &str, node_id: &str, token: FencingToken) -> Result<(), String> {
    let env = vec![
        ("REFEREE_NODE_ID".to_string(), node_id.to_string()),
        ("REFEREE_CLUSTER".to_string(), cluster.to_string()),
        ("REFEREE_TOKEN".to_string(), token.0.to_string()),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_millis(hook.timeout_ms);
    match run_program(&hook.command, &env, deadline).await {
        CommandEnd::Exited { code: 0, .. } => Ok(()),
        end => Err(format!("the pre_promote hook vetoed the promotion: {}", describe(&end))),
    }
}

/// Runs `on_role_change` hooks one at a time in the background.
pub struct RoleChangeHooks {
    tx: Option<mpsc::Sender<(Role, Role, Option<FencingToken>)>>,
}

impl RoleChangeHooks {
    /// Starts the worker (if a hook is configured).
    pub fn start(hook: Option<HookConfig>, cluster: &str, node_id: &str) -> RoleChangeHooks {
        let Some(hook) = hook else { return RoleChangeHooks { tx: None } };
        let (tx, mut rx) = mpsc::channel::<(Role, Role, Option<FencingToken>)>(16);
        let (cluster, node_id) = (cluster.to_string(), node_id.to_string());
        tokio::spawn(async move {
            while let Some((from, to, token)) = rx.recv().await {
                let name = |r: Role| {
                    serde_json::to_value(r).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
                };
                let env = vec![
                    ("REFEREE_NODE_ID".to_string(), node_id.clone()),
                    ("REFEREE_CLUSTER".to_string(), cluster.clone()),
                    ("REFEREE_TOKEN".to_string(), token.map_or(0, |t| t.0).to_string()),
                    ("REFEREE_ROLE".to_string(), name(to)),
                    ("REFEREE_PREVIOUS_ROLE".to_string(), name(from)),
                ];
                let deadline = tokio::time::Instant::now() + Duration::from_millis(hook.timeout_ms);
                match run_program(&hook.command, &env, deadline).await {
                    CommandEnd::Exited { code: 0, .. } => info!(role = %name(to), "on_role_change hook ran"),
                    end => warn!(role = %name(to), "on_role_change hook: {}", describe(&end)),
                }
            }
        });
        RoleChangeHooks { tx: Some(tx) }
    }

    /// Queues a role change; never blocks the decision loop (a full queue drops it, logged).
    pub fn notify(&self, from: Role, to: Role, token: Option<FencingToken>) {
        if let Some(tx) = &self.tx {
            if tx.try_send((from, to, token)).is_err() {
                warn!("on_role_change hooks are falling behind; dropped the change to {to:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(cmd: &[&str], timeout_ms: u64) -> HookConfig {
        HookConfig { command: cmd.iter().map(|s| s.to_string()).collect(), timeout_ms }
    }

    #[tokio::test]
    async fn pre_promote_allows_vetoes_and_is_bounded() {
        assert_eq!(pre_promote(&hook(&["/bin/true"], 1000), "c", "a", FencingToken(7)).await, Ok(()));
        let veto = pre_promote(&hook(&["/bin/false"], 1000), "c", "a", FencingToken(7)).await.unwrap_err();
        assert!(veto.contains("exited 1"), "{veto}");
        let started = std::time::Instant::now();
        let slow = pre_promote(&hook(&["/bin/sleep", "10"], 200), "c", "a", FencingToken(7)).await.unwrap_err();
        assert!(slow.contains("timed out"), "{slow}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let missing = pre_promote(&hook(&["/nonexistent/hook"], 200), "c", "a", FencingToken(7)).await.unwrap_err();
        assert!(missing.contains("cannot run"), "{missing}");
    }

    #[test]
    fn validation_names_the_field() {
        let bad = HooksConfig { pre_promote: Some(hook(&[], 10)), on_role_change: None };
        assert!(bad.validate().unwrap_err().contains("hooks.pre_promote.command"));
        let bad = HooksConfig { pre_promote: None, on_role_change: Some(hook(&["/bin/true"], 0)) };
        assert!(bad.validate().unwrap_err().contains("hooks.on_role_change.timeout_ms"));
    }
}
