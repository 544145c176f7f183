//! `fence_agent`: power the target off with a fence agent of the Pacemaker and Red Hat cluster
//! suites (`fence_ipmilan`, `fence_idrac`, `fence_ilo`, `fence_virsh`, `fence_aws`,
//! `fence_gce`, `fence_vmware_rest`, `fence_apc`, ... : every STONITH device they drive).
//!
//! The agents' standard interface: options arrive on standard input, one `name=value` a line
//! (`action`, `nodename`, then the device's own: `ip`, `username`, `plug`, ...), so the
//! password is never in the arguments or the environment; the exit code is the answer. For
//! `off` and `reboot`, 0 is done (an agent confirms the power state itself before it says so);
//! for `status`, 0 is on and 2 is off.
//!
//! ```text
//!  action=off ──▶ exit 0 ──▶ action=status ──▶ exit 2 (off) ──▶ fenced
//!      │                         ├─ exit 0 (on), other ──▶ asked again until the deadline,
//!      │                         │                         then indeterminate
//!      ├─ exit 2, 3, 10, 11 (bad arguments, login refused, no password, no privileges):
//!      │        nothing was done ──▶ failed
//!      └─ any other exit, a signal, the deadline ──▶ indeterminate (it may have acted)
//! ```
//!
//! Each run is bounded by the method's deadline, in its own process group (see
//! [`crate::command`]).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::command::{self, CommandEnd};
use crate::config::{ConfigError, FenceAgentAction, FenceAgentConfig};
use crate::methods::shell::suffix;
use crate::methods::{load_secret, problem, Context, Secret};
use crate::outcome::{MethodOutcome, Readiness};

/// Options the method sets itself, which the configuration cannot (names with `-` read as
/// `_`): the action from `action`, the password from `secret_file` or `secret_env`, the
/// node's name from the target.
pub(crate) const SET_BY_METHOD: &[&str] = &["action", "password", "passwd", "nodename"];

/// How long to wait between two `status` questions while the device does not yet say off.
const STATUS_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub(crate) struct FenceAgent {
    agent: String,
    action: FenceAgentAction,
    options: BTreeMap<String, String>,
    nodes: BTreeMap<String, BTreeMap<String, String>>,
    verify: bool,
    password: Option<Secret>,
}

/// The exit codes the fence agents share (their library's `EC_*`), for the reasons given.
fn exit_meaning(code: i32) -> &'static str {
    match code {
        1 => "generic error",
        2 => "bad arguments",
        3 => "login refused",
        4 => "connection lost",
        5 => "timed out",
        6 => "power-on not confirmed",
        7 => "power-off not confirmed",
        8 | 9 => "status unreadable",
        10 => "password missing",
        11 => "insufficient privileges",
        _ => "unknown exit code",
    }
}

/// What an exit code of `off` or `reboot` says: `None` for done, else the outcome. Only the
/// codes for a request refused before it reached the power (bad arguments, login refused,
/// password missing, no privileges) mean nothing was done; any other failure may have come
/// after the device acted.
fn judge_action(agent: &str, action: &str, code: i32, stderr: &str) -> Option<MethodOutcome> {
    let why = format!("`{agent}` action={action} exited {code} ({}){}", exit_meaning(code), suffix(stderr));
    match code {
        0 => None,
        2 | 3 | 10 | 11 => Some(MethodOutcome::failed(why)),
        _ => Some(MethodOutcome::indeterminate(why)),
    }
}

/// Replaces `{node_id}` and `{host}` in a configured value.
fn expand(value: &str, node_id: &str, host: &str) -> String {
    value.replace("{node_id}", node_id).replace("{host}", host)
}

impl FenceAgent {
    pub(crate) fn new(
        config: &FenceAgentConfig,
        err: &dyn Fn(&'static str, String) -> ConfigError,
    ) -> Result<Self, ConfigError> {
        Ok(FenceAgent {
            agent: config.agent.to_string_lossy().into_owned(),
            action: config.action,
            options: config.options.clone(),
            nodes: config.nodes.clone(),
            verify: config.verify,
            password: match load_secret(config.secret_file.as_deref(), config.secret_env.as_deref(), err)? {
                Some(p) if p.expose().contains(['\n', '\r', '\0']) => {
                    let field = if config.secret_file.is_some() { "secret_file" } else { "secret_env" };
                    return Err(err(field, "the password must be one line (the agent reads one option a line)".into()));
                }
                p => p,
            },
        })
    }

    /// The agent's standard input for `action` on the target: the action, the node's name,
    /// the options (the node's own over the common ones, placeholders replaced), the password
    /// last. `Err` names a value that would break its line (a target fact with a line break).
    fn input(&self, action: &str, ctx: &Context<'_>) -> Result<Vec<u8>, String> {
        let t = ctx.target;
        // Configured values were checked at start-up; the target's facts are checked here.
        if [&t.node_id, &t.host].iter().any(|fact| fact.contains(['\n', '\r', '\0'])) {
            return Err(format!(
                "refusing to run `{}`: the target's node id or host ({:?}, {:?}) would break the agent's input lines",
                self.agent, t.node_id, t.host
            ));
        }
        let mut options = self.options.clone();
        if let Some(own) = self.nodes.get(&t.node_id) {
            options.extend(own.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let mut text = format!("action={action}\nnodename={}\n", t.node_id);
        for (name, value) in options {
            text.push_str(&format!("{name}={}\n", expand(&value, &t.node_id, &t.host)));
        }
        if let Some(password) = &self.password {
            text.push_str(&format!("password={}\n", password.expose()));
        }
        Ok(text.into_bytes())
    }

    async fn run(&self, action: &str, ctx: &Context<'_>) -> Result<CommandEnd, MethodOutcome> {
        let input = self.input(action, ctx).map_err(MethodOutcome::failed)?;
        Ok(command::run_with_input(std::slice::from_ref(&self.agent), &[], Some(input), ctx.deadline).await)
    }

    /// Runs `action` (`off`, `reboot`, `on`): `None` once it exited 0, else the outcome.
    async fn act(&self, action: &str, ctx: &Context<'_>) -> Option<MethodOutcome> {
        let agent = &self.agent;
        match self.run(action, ctx).await {
            Err(refused) => Some(refused),
            Ok(CommandEnd::Exited { code, stderr, .. }) => judge_action(agent, action, code, &stderr),
            Ok(CommandEnd::Signalled { signal, stderr }) => Some(MethodOutcome::indeterminate(format!(
                "`{agent}` action={action} was terminated by signal {signal}{}",
                suffix(&stderr)
            ))),
            Ok(CommandEnd::TimedOut { stderr }) => Some(MethodOutcome::indeterminate(format!(
                "`{agent}` action={action} did not finish before its deadline; its process group was killed{}",
                suffix(&stderr)
            ))),
            Ok(CommandEnd::SpawnFailed { error }) => Some(MethodOutcome::failed(error)),
        }
    }

    pub(crate) async fn fence(&self, ctx: &Context<'_>) -> MethodOutcome {
        let (agent, action) = (&self.agent, self.action.as_str());
        if let Some(outcome) = self.act(action, ctx).await {
            return outcome;
        }
        if self.action == FenceAgentAction::Reboot || !self.verify {
            return MethodOutcome::fenced(format!("`{agent}` action={action} exited 0"));
        }
        self.confirm_off(ctx).await
    }

    /// The device answers `action=status` for the target, and reads it on: a node whose
    /// device reads off is not the one running the master (the wrong plug or address?).
    pub(crate) async fn check(&self, ctx: &Context<'_>) -> Readiness {
        let agent = &self.agent;
        match self.run("status", ctx).await {
            Ok(CommandEnd::Exited { code: 0, .. }) => {
                Readiness::Ready { detail: format!("`{agent}` action=status: the device reads the power on") }
            }
            Ok(CommandEnd::Exited { code: 2, .. }) => Readiness::Problem {
                reason: format!(
                    "`{agent}` action=status: the device reads the power OFF for a node that should be running: \
                     check its address or plug"
                ),
            },
            Ok(CommandEnd::Exited { code, stderr, .. }) => Readiness::Problem {
                reason: format!("`{agent}` action=status exited {code} ({}){}", exit_meaning(code), suffix(&stderr)),
            },
            Ok(CommandEnd::Signalled { signal, .. }) => {
                Readiness::Problem { reason: format!("`{agent}` action=status was terminated by signal {signal}") }
            }
            Ok(CommandEnd::TimedOut { stderr }) => Readiness::Problem {
                reason: format!("`{agent}` action=status did not finish before its deadline{}", suffix(&stderr)),
            },
            Ok(CommandEnd::SpawnFailed { error }) => Readiness::Problem { reason: error },
            Err(refused) => problem(refused),
        }
    }

    /// Whether [`FenceAgent::unfence`] does anything: a node powered off stays off until it is
    /// powered on; a rebooted one came back by itself.
    pub(crate) fn is_reversible(&self) -> bool {
        self.action == FenceAgentAction::Off
    }

    /// Powers the target back on (`action=on`), confirmed by `action=status` reading on
    /// (exit 0) when `verify` is set, as Pacemaker unfences a node. `Fenced` here means
    /// "verified on".
    pub(crate) async fn unfence(&self, ctx: &Context<'_>) -> MethodOutcome {
        let agent = &self.agent;
        if let Some(outcome) = self.act("on", ctx).await {
            return outcome;
        }
        if !self.verify {
            return MethodOutcome::fenced(format!("`{agent}` action=on exited 0"));
        }
        match self.run("status", ctx).await {
            Ok(CommandEnd::Exited { code: 0, .. }) => MethodOutcome::fenced(format!(
                "`{agent}` action=on exited 0, and action=status confirms the power is on (exit 0)"
            )),
            Ok(CommandEnd::Exited { code, stderr, .. }) => MethodOutcome::indeterminate(format!(
                "`{agent}` action=on exited 0, but action=status exited {code} ({}){}",
                exit_meaning(code),
                suffix(&stderr)
            )),
            Ok(_) => {
                MethodOutcome::indeterminate(format!("`{agent}` action=on exited 0, but its status could not be read"))
            }
            Err(refused) => refused,
        }
    }

    /// Asks `action=status` until the device says off (exit 2) or the deadline passes.
    async fn confirm_off(&self, ctx: &Context<'_>) -> MethodOutcome {
        let agent = &self.agent;
        let mut last;
        loop {
            last = match self.run("status", ctx).await {
                Ok(CommandEnd::Exited { code: 2, .. }) => {
                    return MethodOutcome::fenced(format!(
                        "`{agent}` action=off exited 0, and action=status confirms the power is off (exit 2)"
                    ))
                }
                Ok(CommandEnd::Exited { code: 0, .. }) => "action=status says the power is on (exit 0)".to_string(),
                Ok(CommandEnd::Exited { code, stderr, .. }) => {
                    format!("action=status exited {code} ({}){}", exit_meaning(code), suffix(&stderr))
                }
                Ok(CommandEnd::Signalled { signal, .. }) => format!("action=status was terminated by signal {signal}"),
                Ok(CommandEnd::TimedOut { .. }) => "action=status did not finish before the deadline".to_string(),
                Ok(CommandEnd::SpawnFailed { error }) => error,
                Err(refused) => return refused,
            };
            let next = tokio::time::Instant::now() + STATUS_INTERVAL;
            if next >= ctx.deadline {
                return MethodOutcome::indeterminate(format!(
                    "`{agent}` action=off exited 0, but the power-off was not confirmed before the deadline: {last}"
                ));
            }
            tokio::time::sleep_until(next).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::FenceTarget;
    use crate::token::FencingToken;

    fn agent(options: &[(&str, &str)], nodes: &[(&str, &[(&str, &str)])], password: Option<&str>) -> FenceAgent {
        let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        FenceAgent {
            agent: "/usr/sbin/fence_test".into(),
            action: FenceAgentAction::Off,
            options: map(options),
            nodes: nodes.iter().map(|(n, o)| (n.to_string(), map(o))).collect(),
            verify: true,
            password: password.map(|p| Secret(p.to_string())),
        }
    }

    fn input_for(agent: &FenceAgent, node_id: &str, host: &str) -> Result<String, String> {
        let target = FenceTarget::new(node_id, host, 8020, FencingToken(3));
        let http = reqwest::Client::new();
        let ctx = Context {
            http: &http,
            target: &target,
            new_token: FencingToken(7),
            deadline: tokio::time::Instant::now() + Duration::from_secs(1),
        };
        agent.input("off", &ctx).map(|b| String::from_utf8(b).unwrap())
    }

    #[tokio::test]
    async fn the_input_carries_the_action_the_node_its_options_and_the_password_last() {
        let a = agent(
            &[("username", "admin"), ("ip", "bmc-{node_id}.example"), ("plug", "{host}")],
            &[("db2", &[("ip", "10.0.0.12"), ("lanplus", "1")])],
            Some("s3cret"),
        );
        assert_eq!(
            input_for(&a, "db1", "h1").unwrap(),
            "action=off\nnodename=db1\nip=bmc-db1.example\nplug=h1\nusername=admin\npassword=s3cret\n"
        );
        // The node's own options win over the common ones.
        assert_eq!(
            input_for(&a, "db2", "h2").unwrap(),
            "action=off\nnodename=db2\nip=10.0.0.12\nlanplus=1\nplug=h2\nusername=admin\npassword=s3cret\n"
        );
    }

    #[tokio::test]
    async fn a_target_fact_that_would_break_a_line_is_refused() {
        let a = agent(&[("plug", "{host}")], &[], None);
        let refused = input_for(&a, "db1", "h1\naction=on").unwrap_err();
        assert!(refused.contains("would break"), "{refused}");
        assert!(input_for(&agent(&[], &[], None), "db\n1", "h").is_err());
    }

    #[test]
    fn only_refusals_before_the_power_was_touched_are_failures() {
        assert_eq!(judge_action("a", "off", 0, ""), None);
        for code in [2, 3, 10, 11] {
            assert!(matches!(judge_action("a", "off", code, ""), Some(MethodOutcome::Failed { .. })), "{code}");
        }
        for code in [1, 4, 5, 7, 8, 99] {
            assert!(matches!(judge_action("a", "off", code, ""), Some(MethodOutcome::Indeterminate { .. })), "{code}");
        }
        let Some(MethodOutcome::Failed { reason }) = judge_action("/x/fence_ipmilan", "off", 3, "Unable to connect\n")
        else {
            panic!("login refused is a failure")
        };
        assert!(reason.contains("login refused") && reason.contains("Unable to connect"), "{reason}");
    }
}
