//! [`CommandAdapter`]: configured programs for health, state, promote and demote.
//!
//! Programs are executed directly from their argv (never through a shell, so no quoting or
//! injection questions), each in a new process group, with:
//!
//! - `REFEREE_NODE_ID`: this agent's node id (every program);
//! - `FENCE_TOKEN` and `REFEREE_TOKEN`: the fencing token (promote and demote).
//!
//! Meanings: health exits 0 when healthy, non-zero when not (the last line of stderr is the
//! reason). State prints `{"state": ..., "token": N}` on stdout, like `GET /ha/state`. Promote
//! and demote exit 0 when done and may print the new status; when they print none, the state
//! program is asked.
//!
//! Each run is bounded by its deadline and goes through the fencing crate's runner
//! ([`referee_fencing::command`]): when the program exits **or** the deadline passes, its whole
//! process group is killed with SIGKILL (before the program is reaped, so the group id cannot
//! have been reused), so nothing it started in the background outlives the call.

use std::time::Duration;

pub(crate) use referee_fencing::command::{run, CommandEnd};
use referee_fencing::FencingToken;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{
    confirm_demoted, confirm_promoted, short_reason, AdapterConfigError, AdapterError, AdapterFuture, HealthProblem,
    MasterAdapter, NoAnswer,
};
use crate::model::MasterStatus;

fn default_timeout_ms() -> u64 {
    10_000
}

/// `adapter: {kind: command, ...}`: one argv per operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandAdapterConfig {
    /// Exits 0 when the master is healthy.
    pub health: Vec<String>,
    /// Prints the master's status as JSON on stdout.
    pub state: Vec<String>,
    /// Promotes the master with `FENCE_TOKEN`.
    pub promote: Vec<String>,
    /// Demotes the master, telling it `FENCE_TOKEN`.
    pub demote: Vec<String>,
    /// Ceiling for one run; a caller's deadline can only shorten it.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

impl CommandAdapterConfig {
    /// Checks every argv and the timeout.
    pub fn validate(&self) -> Result<(), AdapterConfigError> {
        for (field, argv) in
            [("health", &self.health), ("state", &self.state), ("promote", &self.promote), ("demote", &self.demote)]
        {
            let Some(program) = argv.first() else {
                return Err(AdapterConfigError::new(field, "is empty; give the program and its arguments as a list"));
            };
            if program.trim().is_empty() {
                return Err(AdapterConfigError::new(format!("{field}[0]"), "the program name is blank"));
            }
            if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
                return Err(AdapterConfigError::new(format!("{field}[{i}]"), "contains a NUL byte"));
            }
        }
        if self.timeout_ms == 0 {
            return Err(AdapterConfigError::new("timeout_ms", "must be greater than 0"));
        }
        Ok(())
    }
}

/// Manages a master through configured programs.
#[derive(Debug, Clone)]
pub struct CommandAdapter {
    config: CommandAdapterConfig,
    node_id: String,
    timeout: Duration,
}

impl CommandAdapter {
    /// Validates `config`; `node_id` is passed to every program as `REFEREE_NODE_ID`.
    pub fn new(config: &CommandAdapterConfig, node_id: &str) -> Result<Self, AdapterConfigError> {
        config.validate()?;
        Ok(CommandAdapter {
            config: config.clone(),
            node_id: node_id.to_string(),
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }

    fn effective(&self, deadline: Instant) -> Instant {
        deadline.min(Instant::now() + self.timeout)
    }

    fn env(&self, token: Option<FencingToken>) -> Vec<(String, String)> {
        let mut env = vec![("REFEREE_NODE_ID".to_string(), self.node_id.clone())];
        if let Some(token) = token {
            env.push(("FENCE_TOKEN".into(), token.to_string()));
            env.push(("REFEREE_TOKEN".into(), token.to_string()));
        }
        env
    }

    async fn read_state(&self, deadline: Instant) -> Result<MasterStatus, AdapterError> {
        let argv = &self.config.state;
        match run(argv, &self.env(None), deadline).await {
            CommandEnd::Exited { code: 0, stdout, .. } => {
                parse_status(&stdout).ok_or_else(|| AdapterError::BadAnswer {
                    reason: format!("`{}` printed no valid status: {}", argv[0], output_snippet(&stdout)),
                })
            }
            end => Err(failure(&argv[0], end)),
        }
    }

    /// Runs promote or demote; returns the status the master reports afterwards.
    async fn transition(
        &self,
        argv: &[String],
        token: FencingToken,
        deadline: Instant,
    ) -> Result<MasterStatus, AdapterError> {
        match run(argv, &self.env(Some(token)), deadline).await {
            CommandEnd::Exited { code: 0, stdout, .. } => match parse_status(&stdout) {
                Some(status) => Ok(status),
                None => self.read_state(deadline).await,
            },
            CommandEnd::Exited { code, stderr, .. } => Err(AdapterError::Rejected {
                reason: format!("`{}` exited with code {code}: {}", argv[0], output_snippet(&stderr)),
            }),
            end => Err(failure(&argv[0], end)),
        }
    }
}

impl MasterAdapter for CommandAdapter {
    fn health(&self, deadline: Instant) -> AdapterFuture<'_, Result<(), HealthProblem>> {
        Box::pin(async move {
            let argv = &self.config.health;
            match run(argv, &self.env(None), self.effective(deadline)).await {
                CommandEnd::Exited { code: 0, .. } => Ok(()),
                CommandEnd::Exited { code, stderr, .. } => Err(HealthProblem::unhealthy(format!(
                    "`{}` exited with code {code}: {}",
                    argv[0],
                    output_snippet(&stderr)
                ))),
                CommandEnd::Signalled { signal, stderr } => Err(HealthProblem::unhealthy(format!(
                    "`{}` was killed by signal {signal}: {}",
                    argv[0],
                    output_snippet(&stderr)
                ))),
                CommandEnd::TimedOut { stderr } => Err(HealthProblem::not_responding(
                    NoAnswer::TimedOut,
                    format!("`{}` did not finish before its deadline: {}", argv[0], output_snippet(&stderr)),
                )),
                CommandEnd::SpawnFailed { error } => Err(HealthProblem::CheckFailed { reason: error }),
            }
        })
    }

    fn state(&self, deadline: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
        Box::pin(async move { self.read_state(self.effective(deadline)).await })
    }

    fn promote(&self, token: FencingToken, deadline: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
        Box::pin(async move {
            let reported = self.transition(&self.config.promote, token, self.effective(deadline)).await?;
            confirm_promoted(reported, token)
        })
    }

    fn demote(&self, token: FencingToken, deadline: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
        Box::pin(async move {
            let reported = self.transition(&self.config.demote, token, self.effective(deadline)).await?;
            confirm_demoted(reported)
        })
    }
}

/// The error for a run that did not exit 0 (state, promote, demote).
fn failure(program: &str, end: CommandEnd) -> AdapterError {
    match end {
        CommandEnd::Exited { code, stderr, .. } => AdapterError::BadAnswer {
            reason: format!("`{program}` exited with code {code}: {}", output_snippet(&stderr)),
        },
        // Killed by someone else mid-run: it may or may not have acted.
        CommandEnd::Signalled { signal, stderr } => AdapterError::BadAnswer {
            reason: format!("`{program}` was killed by signal {signal}: {}", output_snippet(&stderr)),
        },
        CommandEnd::TimedOut { stderr } => AdapterError::NotResponding {
            how: NoAnswer::TimedOut,
            reason: format!("`{program}` did not finish before its deadline: {}", output_snippet(&stderr)),
        },
        CommandEnd::SpawnFailed { error } => AdapterError::CannotRun { reason: error },
    }
}

fn parse_status(stdout: &str) -> Option<MasterStatus> {
    super::parse_state(stdout.trim().as_bytes())
}

fn output_snippet(text: &str) -> String {
    let short = short_reason(text);
    if short.is_empty() {
        "(no output)".into()
    } else {
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    fn config() -> CommandAdapterConfig {
        CommandAdapterConfig {
            health: argv(&["/bin/true"]),
            state: argv(&["/bin/echo", "{}"]),
            promote: argv(&["/bin/true"]),
            demote: argv(&["/bin/true"]),
            timeout_ms: 1000,
        }
    }

    #[test]
    fn validation_names_the_bad_field() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.promote.clear();
        assert_eq!(c.validate().unwrap_err().field, "promote");
        let mut c = config();
        c.state[0] = " ".into();
        assert_eq!(c.validate().unwrap_err().field, "state[0]");
        let mut c = config();
        c.demote.push("a\0b".into());
        assert_eq!(c.validate().unwrap_err().field, "demote[1]");
        let mut c = config();
        c.timeout_ms = 0;
        assert_eq!(c.validate().unwrap_err().field, "timeout_ms");
    }

    #[tokio::test]
    async fn runs_report_exit_codes_output_and_spawn_failures() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let sh = |s: &str| argv(&["/bin/sh", "-c", s]);
        let end = run(&sh("echo out; echo err >&2; exit 3"), &[], deadline).await;
        assert_eq!(end, CommandEnd::Exited { code: 3, stdout: "out\n".into(), stderr: "err\n".into() });
        let end = run(&sh("printf %s \"$X\""), &[("X".into(), "v".into())], deadline).await;
        assert!(matches!(end, CommandEnd::Exited { code: 0, ref stdout, .. } if stdout == "v"), "{end:?}");
        let end = run(&sh("kill -TERM $$"), &[], deadline).await;
        assert!(matches!(end, CommandEnd::Signalled { signal: 15, .. }), "{end:?}");
        let end = run(&argv(&["/nonexistent/program"]), &[], deadline).await;
        assert!(matches!(end, CommandEnd::SpawnFailed { .. }), "{end:?}");
    }
}
