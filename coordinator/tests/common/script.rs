//! A client program in another language (kazoo's Python, Curator's Java) run as a child process
//! that reports its checks line by line: `ok <check>` for each that passed, `FAIL <why>` for the
//! first that did not (then it exits 1), `done` last. A scenario that needs the test to act midway
//! prints a line the test waits for ([`Script::until`]) and reads the test's answer on its stdin
//! ([`Script::say`]).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use referee_testkit::{
    apache_zookeeper_installed, connect, skip, within_for, ApacheZk, ApacheZkEnsemble, ApacheZkProfile,
    APACHE_ZK_MISSING,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long a script may wait for its next line (its own waits are 20 s each at most).
pub const LINE: Duration = Duration::from_secs(120);

/// One run of a scenario.
pub struct Script {
    name: String,
    child: Child,
    stdin: ChildStdin,
    stdout: tokio::io::Lines<BufReader<ChildStdout>>,
    /// Every line it printed so far.
    transcript: Vec<String>,
}

impl Script {
    /// Starts `command`, the scenario called `name`, with its standard streams piped.
    pub fn start(name: &str, mut command: Command) -> Result<Script> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting scenario {name}: {command:?}"))?;
        let stdin = child.stdin.take().context("the scenario's stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("the scenario's stdout")?).lines();
        Ok(Script { name: name.to_owned(), child, stdin, stdout, transcript: Vec::new() })
    }

    /// The script's next line.
    async fn line(&mut self) -> Result<Option<String>> {
        let line = within_for(LINE, "the scenario's next line", self.stdout.next_line()).await??;
        if let Some(l) = &line {
            self.transcript.push(l.clone());
        }
        Ok(line)
    }

    /// Reads lines until one starts with `prefix`; that line.
    pub async fn until(&mut self, prefix: &str) -> Result<String> {
        loop {
            match self.line().await? {
                Some(l) if l.starts_with(prefix) => return Ok(l),
                Some(l) if l.starts_with("FAIL") => {
                    let stderr = self.stderr_tail().await;
                    bail!("{}: {l}\n{}\nstderr:\n{stderr}", self.name, self.transcript.join("\n"))
                }
                Some(_) => {}
                None => {
                    let stderr = self.stderr_tail().await;
                    bail!("{}: ended before `{prefix}`:\n{}\nstderr:\n{stderr}", self.name, self.transcript.join("\n"))
                }
            }
        }
    }

    /// Writes one line to the script's stdin.
    pub async fn say(&mut self, line: &str) -> Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// The last lines of the script's stderr, once it has closed it.
    async fn stderr_tail(&mut self) -> String {
        let mut stderr = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = within_for(LINE, "the scenario's stderr", e.read_to_string(&mut stderr)).await;
        }
        let lines: Vec<&str> = stderr.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Waits for the script to end; fails unless it ended with `done` and exit status 0. The
    /// checks that passed.
    pub async fn finish(mut self) -> Result<Vec<String>> {
        while self.line().await?.is_some() {}
        let status = within_for(LINE, "the scenario to exit", self.child.wait()).await??;
        let ok: Vec<String> = self.transcript.iter().filter_map(|l| l.strip_prefix("ok ")).map(str::to_owned).collect();
        if !(status.success() && self.transcript.last().is_some_and(|l| l == "done")) {
            let stderr = self.stderr_tail().await;
            bail!("scenario `{}` failed ({status}):\n{}\nstderr:\n{stderr}", self.name, self.transcript.join("\n"));
        }
        Ok(ok)
    }
}

/// Reads `path` through this crate's client, as `server` holds it.
pub async fn data_of(server: SocketAddr, path: &str) -> Result<Vec<u8>> {
    let client = connect(&server.to_string(), Duration::from_secs(10)).await?;
    let (data, _) = client.get_data(path).await.with_context(|| format!("reading {path}"))?;
    Ok(data)
}

/// Tells a `move` scenario (waiting after `ready <session>`) that its server is gone, waits for
/// at least `least` checks and its end, then checks on `read_on` that it wrote its session id
/// in hex to `result`, as it does last.
pub async fn finish_move(
    mut script: Script,
    session: &str,
    least: usize,
    result: &str,
    read_on: SocketAddr,
) -> Result<()> {
    script.say("gone").await?;
    let ok = script.finish().await?;
    ensure!(ok.len() >= least, "the move scenario made {} checks, at least {least} expected: {ok:?}", ok.len());
    let written = data_of(read_on, result).await?;
    ensure!(
        written == session.as_bytes(),
        "the move scenario's result names session {:?}, not {session}",
        String::from_utf8_lossy(&written)
    );
    Ok(())
}

/// Apache ZooKeeper alone, started to run a scenario against as the reference, with its client
/// address; `None` after saying loudly that `test` is skipped when it is not installed.
pub async fn apache_or_skip(test: &str) -> Result<Option<(ApacheZk, SocketAddr)>> {
    if !apache_zookeeper_installed() {
        skip(test, APACHE_ZK_MISSING);
        return Ok(None);
    }
    let apache = tokio::task::spawn_blocking(|| ApacheZk::start(ApacheZkProfile::Reference)).await??;
    let addr = apache.connect_string().parse()?;
    Ok(Some((apache, addr)))
}

/// A three-server Apache ZooKeeper ensemble, serving; `None` after saying loudly that `test` is
/// skipped when it is not installed.
pub async fn apache_ensemble_or_skip(test: &str) -> Result<Option<ApacheZkEnsemble>> {
    if !apache_zookeeper_installed() {
        skip(test, APACHE_ZK_MISSING);
        return Ok(None);
    }
    Ok(Some(tokio::task::spawn_blocking(|| ApacheZkEnsemble::start(3)).await??))
}

/// Runs `command` to its end and checks it made at least `least` checks; those checks.
pub async fn run(name: &str, command: Command, least: usize) -> Result<Vec<String>> {
    let ok = Script::start(name, command)?.finish().await?;
    ensure!(ok.len() >= least, "scenario `{name}` made {} checks, at least {least} expected: {ok:?}", ok.len());
    Ok(ok)
}
