//! Running an external program under a deadline, with its whole process group contained.
//!
//! Used by `shell`, `ssh`, `isolate` and `fence_agent`, and by the failover agent for its command adapter and
//! hooks. The program is executed directly (never through a
//! local shell), in a new process group. When it exits, or when the deadline passes, the whole
//! group is killed with SIGKILL, so nothing it started in the background outlives the attempt.
//! If the attempt is abandoned (its future dropped), a guard kills the group too. A leader that
//! SIGKILL does not end at once (uninterruptible sleep, a frozen cgroup) is abandoned after
//! `REAP_GRACE`, so [`run`] returns within its deadline plus that grace and `PIPE_DRAIN`.
//!
//! Ordering that matters: the group is killed **before** the leader is reaped. Until the
//! leader is reaped its pid (which is the group id) cannot be reused, so `killpg` can only
//! reach processes that belong to this attempt.

use std::collections::{BTreeSet, VecDeque};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
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
/// escaped the group (e.g. with `setsid`), or one that SIGKILL has not ended yet, can hold them
/// longer; what was read by then is kept.
const PIPE_DRAIN: Duration = Duration::from_millis(200);

/// How long to wait for the leader to be reaped once the group was sent SIGKILL. A process
/// that SIGKILL cannot end at once (uninterruptible sleep, a frozen cgroup) is abandoned after
/// it, so `run` returns at most this much (plus [`PIPE_DRAIN`]) after its deadline.
const REAP_GRACE: Duration = Duration::from_secs(1);

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
    run_with_input(argv, env, None, deadline).await
}

/// Environment variables this process read a secret from (see [`hide_from_programs`]).
static HIDDEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());

/// Keeps the environment variable `name`, from which this process read a secret, from every
/// program [`run`] starts from now on: a fence's programs, the master adapter's and the hooks
/// get what their configuration gives them, not the agent's credentials.
pub fn hide_from_programs(name: &str) {
    HIDDEN.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string());
}

/// [`run`], with `input` written to the program's standard input, which is then closed (it
/// reads end of file after it). Without input, standard input is `/dev/null`. A program that
/// exits without reading all of it is not an error: what counts is how it ended.
pub async fn run_with_input(
    argv: &[String],
    env: &[(String, String)],
    input: Option<Vec<u8>>,
    deadline: Instant,
) -> CommandEnd {
    let Some((program, args)) = argv.split_first() else {
        return CommandEnd::SpawnFailed { error: "empty command".into() };
    };
    let mut command = Command::new(program);
    for name in HIDDEN.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        command.env_remove(name);
    }
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
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
    // Written from its own task, so a program that never reads cannot block this one; the
    // pipe closes when the task ends (or with the child, which owns nothing of it then).
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = stdin.write_all(&input).await;
        });
    }

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
    // The leader is dead or dying now, so reaping normally returns at once. But SIGKILL only
    // takes effect when the process next runs, and one in uninterruptible sleep (a dead NFS
    // server) or frozen by a cgroup freezer may never: the reap is bounded, and past it the
    // child is abandoned (dropping it leaves the zombie to tokio's orphan reaper).
    let reaped = tokio::time::timeout(REAP_GRACE, child.wait()).await;
    let drain_until = Instant::now() + PIPE_DRAIN;
    let stdout = collect(stdout, drain_until).await;
    let stderr = collect(stderr, drain_until).await;
    let status = match reaped {
        Ok(status) if exited => status,
        Ok(_) => return CommandEnd::TimedOut { stderr },
        Err(_) => {
            tracing::warn!(
                "`{program}` (pid {pid}) outlived SIGKILL by {REAP_GRACE:?} after its deadline (uninterruptible sleep or frozen?); abandoned"
            );
            return CommandEnd::TimedOut { stderr };
        }
    };
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

/// A pipe being read in the background, and the tail read so far.
struct TailTask {
    task: tokio::task::JoinHandle<()>,
    tail: Arc<Mutex<VecDeque<u8>>>,
}

/// Reads a pipe to its end, keeping the last [`OUTPUT_TAIL_BYTES`].
fn tail_reader<R: AsyncRead + Unpin + Send + 'static>(pipe: Option<R>) -> Option<TailTask> {
    let mut pipe = pipe?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let kept = Arc::clone(&tail);
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf).await {
            if n == 0 {
                break;
            }
            let mut tail = kept.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            tail.extend(&buf[..n]);
            let excess = tail.len().saturating_sub(OUTPUT_TAIL_BYTES);
            tail.drain(..excess);
        }
    });
    Some(TailTask { task, tail })
}

/// The tail of a pipe once it closed, or what was read of it by `until`: a process that is
/// not dead (frozen, or escaped from the group) may hold the pipe open for ever.
async fn collect(reader: Option<TailTask>, until: Instant) -> String {
    let Some(TailTask { mut task, tail }) = reader else {
        return String::new();
    };
    if tokio::time::timeout_at(until, &mut task).await.is_err() {
        task.abort();
    }
    let mut tail = tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    String::from_utf8_lossy(tail.make_contiguous()).into_owned()
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

    /// A cgroup-v1 freezer cgroup of this test's own, thawed and removed when dropped (also
    /// when the test fails), so nothing it froze is left behind.
    struct FreezerCgroup {
        path: std::path::PathBuf,
    }

    impl FreezerCgroup {
        const HIERARCHY: &'static str = "/sys/fs/cgroup/freezer";

        fn create() -> std::io::Result<FreezerCgroup> {
            static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::path::Path::new(Self::HIERARCHY).join(format!("referee-test-{}-{n}", std::process::id()));
            std::fs::create_dir(&path)?;
            Ok(FreezerCgroup { path })
        }

        fn read(&self, file: &str) -> String {
            std::fs::read_to_string(self.path.join(file)).unwrap_or_default().trim().to_string()
        }
    }

    impl Drop for FreezerCgroup {
        fn drop(&mut self) {
            let _ = std::fs::write(self.path.join("freezer.state"), "THAWED");
            // Thawed, the members die of the SIGKILL still pending for them; an empty cgroup can
            // be removed.
            let until = std::time::Instant::now() + Duration::from_secs(5);
            while !self.read("cgroup.procs").is_empty() && std::time::Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            if let Err(e) = std::fs::remove_dir(&self.path) {
                eprintln!("cannot remove test cgroup {}: {e}", self.path.display());
            }
        }
    }

    /// A frozen program (cgroup-v1 freezer; a program in uninterruptible sleep behaves alike)
    /// does not die of SIGKILL, so its leader is never reaped: `run` must still end at its
    /// deadline, plus the bounded grace for the reap, rather than hang its caller.
    #[tokio::test]
    async fn a_command_that_survives_sigkill_still_ends_by_its_deadline() {
        const TEST: &str = "command frozen by a cgroup";
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 || !std::path::Path::new(FreezerCgroup::HIERARCHY).is_dir() {
            referee_testkit::skip(TEST, &format!("needs root and a cgroup-v1 freezer at {}", FreezerCgroup::HIERARCHY));
            return;
        }
        let cgroup = FreezerCgroup::create().expect("a freezer cgroup");
        // The shell moves itself into the cgroup and freezes it, itself included.
        let script =
            "echo $$ > \"$CG/cgroup.procs\" && echo freezing >&2 && echo FROZEN > \"$CG/freezer.state\" && sleep 100";
        let env = [("CG".to_string(), cgroup.path.display().to_string())];
        let budget = Duration::from_millis(300);
        let limit = budget + REAP_GRACE + PIPE_DRAIN + Duration::from_secs(2);

        let start = Instant::now();
        let end = tokio::time::timeout(limit, run(&sh(script), &env, start + budget)).await;

        let end = end.unwrap_or_else(|_| panic!("run did not return within {limit:?} of a {budget:?} deadline"));
        // What it wrote before it froze is reported, though it still holds the pipe open.
        assert_eq!(end, CommandEnd::TimedOut { stderr: "freezing\n".into() });
        // The case under test did happen: the program was frozen and outlived its SIGKILL.
        assert_eq!(cgroup.read("freezer.state"), "FROZEN");
        assert!(!cgroup.read("cgroup.procs").is_empty(), "the frozen program is gone");
    }

    #[test]
    fn last_line_skips_blank_lines() {
        assert_eq!(last_line("a\nb\n\n  \n"), "b");
        assert_eq!(last_line(""), "");
    }
}
