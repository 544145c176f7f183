//! `shell`: run a configured program, exit 0 meaning fenced.
//!
//! Unlike Hadoop's `shell(...)`, which runs `bash -e -c <string>` with no timeout, the program
//! is executed directly with its configured arguments, the target's facts arrive only as
//! environment variables (so a hostile host name or node id can never become shell syntax),
//! and it runs under the method's deadline in its own process group, which is killed when the
//! program exits or the deadline passes.

use std::collections::BTreeMap;

use crate::command::{self, last_line, CommandEnd};
use crate::config::ShellConfig;
use crate::methods::Context;
use crate::outcome::{MethodOutcome, Readiness};

/// Environment variables the fencer sets from the target; the configuration cannot set them.
pub(crate) const RESERVED_ENV: &[&str] = &[
    "TARGET_ID",
    "TARGET_HOST",
    "TARGET_PORT",
    "TARGET_PID",
    "TARGET_START_TIME",
    "TARGET_PIDFILE",
    "TARGET_HA_URL",
    "TARGET_TOKEN",
    "FENCE_TOKEN",
];

#[derive(Debug)]
pub(crate) struct Shell {
    argv: Vec<String>,
    env: BTreeMap<String, String>,
}

/// The target's facts as environment variables.
pub(crate) fn target_env(ctx: &Context<'_>) -> Vec<(String, String)> {
    let t = ctx.target;
    let mut env = vec![
        ("TARGET_ID".to_string(), t.node_id.clone()),
        ("TARGET_HOST".to_string(), t.host.clone()),
        ("TARGET_PORT".to_string(), t.port.to_string()),
        ("TARGET_HA_URL".to_string(), t.ha_base_url()),
        ("TARGET_TOKEN".to_string(), t.token.to_string()),
        ("FENCE_TOKEN".to_string(), ctx.new_token.to_string()),
    ];
    if let Some(pid) = t.pid {
        env.push(("TARGET_PID".to_string(), pid.to_string()));
    }
    if let Some(start) = t.start_time {
        env.push(("TARGET_START_TIME".to_string(), start.to_string()));
    }
    if let Some(pidfile) = &t.pidfile {
        env.push(("TARGET_PIDFILE".to_string(), pidfile.display().to_string()));
    }
    env
}

impl Shell {
    pub(crate) fn new(config: &ShellConfig) -> Self {
        let mut argv = vec![config.program.to_string_lossy().into_owned()];
        argv.extend(config.args.iter().cloned());
        Shell { argv, env: config.env.clone() }
    }

    /// The program is there and executable; running it would fence.
    pub(crate) fn check(&self) -> Readiness {
        use std::os::unix::fs::PermissionsExt;
        let program = &self.argv[0];
        match std::fs::metadata(program) {
            Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
                Readiness::Ready { detail: format!("`{program}` is an executable file (not run: running it fences)") }
            }
            Ok(_) => Readiness::Problem { reason: format!("`{program}` is not an executable file") },
            Err(e) => Readiness::Problem { reason: format!("`{program}`: {e}") },
        }
    }

    pub(crate) async fn fence(&self, ctx: &Context<'_>) -> MethodOutcome {
        // Configured variables first, target facts last: the latter win (and validation
        // already refuses configured names that collide).
        let mut env: Vec<(String, String)> = self.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.extend(target_env(ctx));
        let program = &self.argv[0];
        match command::run(&self.argv, &env, ctx.deadline).await {
            CommandEnd::Exited { code: 0, .. } => MethodOutcome::fenced(format!("`{program}` exited 0")),
            CommandEnd::Exited { code, stderr, .. } => {
                MethodOutcome::failed(format!("`{program}` exited {code}{}", suffix(&stderr)))
            }
            // Not from us (the OOM killer, an operator): it may have acted before it died.
            CommandEnd::Signalled { signal, stderr } => MethodOutcome::indeterminate(format!(
                "`{program}` was terminated by signal {signal}{}",
                suffix(&stderr)
            )),
            CommandEnd::TimedOut { stderr } => MethodOutcome::indeterminate(format!(
                "`{program}` did not finish before its deadline; its process group was killed{}",
                suffix(&stderr)
            )),
            CommandEnd::SpawnFailed { error } => MethodOutcome::failed(error),
        }
    }
}

/// ": <last stderr line>" or nothing.
pub(crate) fn suffix(stderr: &str) -> String {
    let line = last_line(stderr);
    if line.is_empty() {
        String::new()
    } else {
        format!(": {line}")
    }
}
