//! `referee coordinator ensemble up` and `down` hold an exclusive lock on
//! `DIR/.ensemble.lock` for their whole run: a second run on the same directory waits for the
//! first, saying so, rather than drawing a second cluster id or removing the other's pidfiles.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use referee_testkit::{free_port, output_within, ScratchDir};

const DEADLINE: Duration = Duration::from_secs(30);

fn ensemble(action: &str, dir: &Path, extra: &[&str]) -> Result<std::process::Output> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_referee"));
    cmd.args(["coordinator", "ensemble", action, "--dir"]).arg(dir).args(extra);
    output_within(&mut cmd, DEADLINE)
}

/// Stops whatever `up` started in the directory, even when the test fails half-way.
struct Cleanup<'a>(&'a Path);

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if self.0.join("ensemble.yaml").exists() {
            let _ = ensemble("down", self.0, &["--purge"]);
        }
    }
}

#[test]
fn up_waits_for_another_run_holding_the_directory() -> Result<()> {
    let scratch = ScratchDir::new("ensemble-lock")?;
    let dir = scratch.path("e");
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup(&dir);
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(".ensemble.lock"))?;
    let held = Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| e).context("locking")?;

    let base = free_port()?.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_referee"))
        .args(["coordinator", "ensemble", "up", "--servers", "1", "--base-port", &base, "--dir"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (tx, lines) = mpsc::channel::<String>();
    let stdout = child.stdout.take().context("stdout")?;
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut said = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("waiting for it to finish") => break,
            Ok(line) => said.push(line),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait()?;
                let mut err = String::new();
                std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut err)?;
                bail!("up did not wait for the lock ({status}):\n{}\n{err}", said.join("\n"));
            }
        }
    }
    assert!(!dir.join("ensemble.yaml").exists(), "nothing is decided while another run holds the directory");

    drop(held);
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("up did not finish within {DEADLINE:?} once the lock was let go");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = reader.join();
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().context("stderr")?, &mut err)?;
    // Its ports may have been taken meanwhile by something else on the machine: what is
    // checked is that it went on once the lock was free.
    assert!(status.success() || err.contains("is taken"), "up after the wait: {status}\n{err}");
    if status.success() {
        let out = ensemble("down", &dir, &["--purge"])?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(!dir.exists(), "down --purge removes the directory, its lock file included");
    }
    Ok(())
}
