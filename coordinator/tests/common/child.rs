//! The coordinator as a child process (the `referee-coordinator` binary), for tests that
//! measure the process from outside (its RSS) or that must see it exactly as a deployment runs.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use referee_testkit::{free_port, ScratchDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Starts the `referee-coordinator` binary with `flags` and the configuration at `config`, its
/// log (info, openraft's warnings) going to `log`.
pub fn spawn_coordinator(flags: &[&str], config: &Path, log: std::fs::File) -> Result<Child> {
    Command::new(env!("CARGO_BIN_EXE_referee-coordinator"))
        .args(flags)
        .arg(config)
        .env("REFEREE_LOG", "info,openraft=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting referee-coordinator")
}

/// A running `referee-coordinator`, killed on drop.
pub struct ChildServer {
    /// Where clients connect.
    pub addr: SocketAddr,
    child: Child,
    dir: ScratchDir,
}

impl ChildServer {
    /// Starts the binary with test timings (50 ms ticks, session timeouts 200..=30000 ms) plus
    /// `extra` YAML lines, and waits until it answers `ruok`.
    pub async fn start(extra: &str) -> Result<Self> {
        Self::start_prepared(extra, |_| Ok(())).await
    }

    /// As [`ChildServer::start`], with `prepare` run on the scratch directory first (the data
    /// directory is its `data`).
    pub async fn start_prepared(extra: &str, prepare: impl FnOnce(&ScratchDir) -> Result<()>) -> Result<Self> {
        let dir = ScratchDir::new("cochild")?;
        prepare(&dir)?;
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let config = format!(
            "listen: {addr}\ndata_dir: {}\ntick_ms: 50\nmin_session_timeout_ms: 200\nmax_session_timeout_ms: 30000\n{extra}",
            dir.path("data").display()
        );
        let config_path = dir.path("coordinator.yaml");
        std::fs::write(&config_path, config)?;
        let child = Self::spawn(&dir)?;
        let mut server = ChildServer { addr, child, dir };
        server.wait_ready().await?;
        Ok(server)
    }

    fn spawn(dir: &ScratchDir) -> Result<Child> {
        let log = std::fs::File::create(dir.path("coordinator.log"))?;
        spawn_coordinator(&[], &dir.path("coordinator.yaml"), log)
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let ready = referee_testkit::within_for(Duration::from_secs(20), "referee-coordinator to answer ruok", async {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Err(anyhow!("referee-coordinator exited with {status}"));
                }
                if self.four_letter("ruok").await.is_ok_and(|a| a == "imok") {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        match ready {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) | Err(e) => bail!("{e}; its log:\n{}", self.log()),
        }
    }

    /// Kills the server with SIGKILL (no shutdown of any kind) and reaps it.
    pub fn kill9(&mut self) -> Result<()> {
        self.child.kill().context("SIGKILL")?;
        self.child.wait().context("reaping the killed server")?;
        Ok(())
    }

    /// Waits up to `limit` for the server to exit on its own; its exit status.
    pub async fn exited_within(&mut self, limit: Duration) -> Result<std::process::ExitStatus> {
        let began = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if began.elapsed() > limit {
                bail!("referee-coordinator still runs after {limit:?}; its log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops a running server (SIGKILL) and starts it again on the same configuration, data
    /// directory and port; fails with its log if it does not come up.
    pub async fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            self.kill9()?;
        }
        self.child = Self::spawn(&self.dir)?;
        self.wait_ready().await
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path("data")
    }

    /// Appends YAML lines to the configuration, for the next restart.
    pub fn append_config(&self, lines: &str) -> Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(self.dir.path("coordinator.yaml"))?;
        f.write_all(lines.as_bytes())?;
        Ok(())
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's resident set size in KiB (VmRSS of /proc/PID/status).
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS line in /proc/{}/status", self.pid()))
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path("coordinator.log")).unwrap_or_default()
    }

    /// Sends a four-letter word and reads the answer until the server closes.
    pub async fn four_letter(&self, cmd: &str) -> Result<String> {
        four_letter(self.addr, cmd).await
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a four-letter word to `addr` and reads the answer until the server closes.
pub async fn four_letter(addr: SocketAddr, cmd: &str) -> Result<String> {
    super::within(&format!("the answer to {cmd}"), async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(cmd.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, anyhow::Error>(out)
    })
    .await?
}

/// One `mntr` value (`zk_<key>\t<value>`) as a number.
pub async fn mntr(addr: SocketAddr, key: &str) -> Result<i64> {
    let text = four_letter(addr, "mntr").await?;
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|rest| rest.strip_prefix('\t')))
        .ok_or_else(|| anyhow!("mntr has no {key}: {text}"))?
        .trim()
        .parse()
        .with_context(|| format!("mntr's {key} is not a number"))
}
