//! Running an external program under a deadline, with its whole process group contained.
//!
//! Used by `shell`, `ssh` and `isolate`, and by the failover agent for its command adapter and
//! hooks. The program is executed directly (never through a
//! local shell), in a new process group. When it exits, or when the deadline passes, the whole
//! group is killed with SIGKILL, so nothing it started in the background outlives the attempt.
//! If the attempt is abandoned (its future dropped), a guard kills the group too.
//!
//! Ordering that matters: the group is killed **before** the leader is reaped. Until the
//! leader is reaped its pid (which is the group id) cannot be reused, so `killpg` can only
//! reach processes that belong to this attempt.

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::time::Instant;

use crate::pidfd::PidFd;

/// How much of stdout and stderr is kept (the tail), for reasons and parsing.
const OUTPUT_TAIL_BYTES: usize = 16 * 1024;

/// How long to wait for output pipes to close once the group is dead. Only a process that
/// escaped the group (e.g. with `setsid`) can hold them longer.
const PIPE_DRAIN: Duration = Duration::from_millis(200);

/// How a command run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandEnd {
    /// The program exited with this code.
    Exited {
        /// Exit code.
        code: i32,
        /// Tail of standard output.
        stdout: String,
        /// Tail of standard error.
        stderr: String,
    },
    /// The program was terminated by a signal it did not get from us.
    Signalled {
        /// Signal number.
        signal: i32,
        /// Tail of standard error.
        stderr: String,
    },
    /// The deadline passed; the whole group was killed.
    TimedOut {
        /// Tail of standard error up to that point.
        stderr: String,
    },
    /// The program could not be started.
    SpawnFailed {
        /// Why.
        error: String,
    },
}

/// Kills a process group when dropped, unless disarmed.
struct GroupGuard {
    pgid: Option<Pid>,
}

impl GroupGuard {
    fn kill(&mut self) {
        if let Some(pgid) = self.pgid.take() {
            // ESRCH (group already empty) is the expected case after a clean exit.
            let _ = killpg(pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `argv` with extra environment `env` until it exits or `deadline` passes.
pub async fn run(argv: &[String], env: &[(String, String)], deadline: Instant) -> CommandEnd {
    let Some((program, args)) = argv.split_first() else {
        return CommandEnd::SpawnFailed { error: "empty command".into() };
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => return CommandEnd::SpawnFailed { error: format!("cannot run `{program}`: {e}") },
    };
    let Some(pid) = child.id() else {
        return CommandEnd::SpawnFailed { error: format!("`{program}` exited before it could be tracked") };
    };
    let mut group = GroupGuard { pgid: Some(Pid::from_raw(pid as i32)) };
    let stdout = tail_reader(child.stdout.take());
    let stderr = tail_reader(child.stderr.take());

    // Wait for the leader's exit without reaping it (see the module comment).
    let exited = match PidFd::open(pid) {
        Ok(pidfd) => pidfd.exited_by(deadline).await,
        Err(_) => {
            // No pidfd (old kernel): wait by reaping. The group is then killed after the
            // leader is reaped; its id stays reserved while any member lives, which is the
            // case that matters (background children).
            tokio::select! {
                _ = child.wait() => true,
                _ = tokio::time::sleep_until(deadline) => false,
            }
        }
    };
    group.kill();
    // The leader is dead or dying now; reaping returns promptly.
    let status = child.wait().await;
    let drain_until = Instant::now() + PIPE_DRAIN;
    let stdout = collect(stdout, drain_until).await;
    let stderr = collect(stderr, drain_until).await;
    if !exited {
        return CommandEnd::TimedOut { stderr };
    }
    match status {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt;
            match (status.code(), status.signal()) {
                (Some(code), _) => CommandEnd::Exited { code, stdout, stderr },
                (None, Some(signal)) => CommandEnd::Signalled { signal, stderr },
                (None, None) => CommandEnd::SpawnFailed { error: format!("`{program}` ended with an unknown status") },
            }
        }
        Err(e) => CommandEnd::SpawnFailed { error: format!("cannot collect the exit status of `{program}`: {e}") },
    }
}

type TailTask = Option<tokio::task::JoinHandle<String>>;

/// Reads a pipe to its end, keeping the last [`OUTPUT_TAIL_BYTES`].
fn tail_reader<R: AsyncRead + Unpin + Send + 'static>(pipe: Option<R>) -> TailTask {
    let mut pipe = pipe?;
    Some(tokio::spawn(async move {
        let mut tail: VecDeque<u8> = VecDeque::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            tail.extend(&buf[..n]);
            let excess = tail.len().saturating_sub(OUTPUT_TAIL_BYTES);
            tail.drain(..excess);
        }
        String::from_utf8_lossy(tail.make_contiguous()).into_owned()
    }))
}

async fn collect(task: TailTask, until: Instant) -> String {
    let Some(mut task) = task else {
        return String::new();
    };
    tokio::select! {
        out = &mut task => out.unwrap_or_default(),
        _ = tokio::time::sleep_until(until) => {
            task.abort();
            String::new()
        }
    }
}

/// The last line of `text` that is not blank, shortened, for use in a reason sentence.
pub fn last_line(text: &str) -> String {
    let line = text.lines().rev().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    let mut short: String = line.chars().take(300).collect();
    if short.len() < line.len() {
        short.push('…');
    }
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn exit_codes_and_output_are_reported() {
        let deadline = Instant::now() + Duration::from_secs(10);
        let end = run(&sh("echo out; echo err >&2; exit 3"), &[], deadline).await;
        assert_eq!(end, CommandEnd::Exited { code: 3, stdout: "out\n".into(), stderr: "err\n".into() });
        let end = run(&sh("printf %s \"$X\""), &[("X".into(), "v".into())], deadline).await;
        assert!(matches!(end, CommandEnd::Exited { code: 0, ref stdout, .. } if stdout == "v"));
        let end = run(&["/nonexistent/program".to_string()], &[], deadline).await;
        assert!(matches!(end, CommandEnd::SpawnFailed { .. }));
    }

    #[tokio::test]
    async fn a_hanging_command_is_cut_off_at_its_deadline() {
        let start = Instant::now();
        let end = run(&sh("sleep 30"), &[], start + Duration::from_millis(300)).await;
        assert!(matches!(end, CommandEnd::TimedOut { .. }), "{end:?}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn last_line_skips_blank_lines() {
        assert_eq!(last_line("a\nb\n\n  \n"), "b");
        assert_eq!(last_line(""), "");
    }
}
