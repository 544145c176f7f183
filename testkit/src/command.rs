//! Running a program that must exit on its own, with a deadline.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Runs `cmd` with its stdin closed and its stdout and stderr captured, as
/// [`Command::output`] does, but fails if it has not exited within `limit`: it is then killed
/// with SIGKILL, together with every process it started (it runs in a process group of its
/// own), and reaped, and the error names it and carries what it printed so far. Its output is
/// read while it runs, so a program that prints a lot never stalls on a full pipe.
///
/// Blocking; an async test calls it as it would [`Command::output`].
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<Output> {
    let what = format!("{cmd:?}");
    let deadline = Instant::now() + limit;
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = loop {
        if let Some(status) = child.try_wait().with_context(|| format!("waiting for {what}"))? {
            break status;
        }
        if Instant::now() >= deadline {
            let group = i32::try_from(child.id()).map(Pid::from_raw);
            if group.map_or(true, |g| killpg(g, Signal::SIGKILL).is_err()) {
                let _ = child.kill();
            }
            let _ = child.wait();
            // Killed, they close their ends of the pipes: what it printed comes at once.
            let grace = Instant::now() + Duration::from_secs(1);
            let text = |r: &mpsc::Receiver<Vec<u8>>| {
                let left = grace.saturating_duration_since(Instant::now());
                String::from_utf8_lossy(&r.recv_timeout(left).unwrap_or_default()).into_owned()
            };
            let (out, err) = (text(&stdout), text(&stderr));
            bail!("{what} was still running after {limit:?}, and was killed\n--- stdout ---\n{out}\n--- stderr ---\n{err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // A child it left running may hold the pipes open: their end is waited for up to the
    // deadline too.
    let collect = |r: &mpsc::Receiver<Vec<u8>>, name: &str| {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        r.recv_timeout(left).with_context(|| format!("{what} exited ({status}), but its {name} stayed open"))
    };
    Ok(Output { status, stdout: collect(&stdout, "stdout")?, stderr: collect(&stderr, "stderr")? })
}

/// Reads `pipe` to its end on a thread of its own; the bytes arrive on the returned channel.
fn drain(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes);
        }
        let _ = tx.send(bytes);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_program_that_exits_gives_its_output_and_status() {
        let out =
            output_within(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]), Duration::from_secs(10))
                .unwrap();
        assert_eq!(out.status.code(), Some(3));
        assert_eq!((&out.stdout[..], &out.stderr[..]), (&b"out\n"[..], &b"err\n"[..]));
        // More than a pipe holds, while it runs.
        let out = output_within(Command::new("sh").args(["-c", "head -c 1000000 /dev/zero"]), Duration::from_secs(10))
            .unwrap();
        assert_eq!(out.stdout.len(), 1_000_000);
    }

    #[test]
    fn a_program_still_running_at_the_deadline_is_killed_and_named() {
        let started = Instant::now();
        let err =
            output_within(Command::new("sh").args(["-c", "echo before; exec sleep 30"]), Duration::from_millis(300))
                .unwrap_err()
                .to_string();
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(err.contains("\"sh\" \"-c\"") && err.contains("was still running after 300ms"), "{err}");
        assert!(err.contains("before"), "what it printed is kept: {err}");
        // What it started goes with it: the pipes close at once.
        let started = Instant::now();
        let err = output_within(Command::new("sh").args(["-c", "sleep 30; echo never"]), Duration::from_millis(300))
            .unwrap_err()
            .to_string();
        assert!(started.elapsed() < Duration::from_millis(1300), "{:?}: {err}", started.elapsed());
    }
}
