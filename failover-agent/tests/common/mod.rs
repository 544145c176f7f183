//! Shared harness of the agent's integration tests: the bundled coordinator in-process, Apache
//! ZooKeeper from Debian's package, a TCP proxy a test can cut, and deadline helpers.
//!
//! Each test file is its own crate and uses a subset of these helpers.
#![allow(dead_code)]

pub mod proxy;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use referee_coordinator::config::CoordinatorConfig;
use referee_coordinator::server::{Coordinator, CoordinatorError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any single expected event may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing with `what` if it takes longer than [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    within_for(DEADLINE, what, fut).await
}

/// Awaits `fut`, failing with `what` if it takes longer than `limit`.
pub async fn within_for<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, fut).await.map_err(|_| anyhow!("timed out after {limit:?} waiting for {what}"))
}

/// A scratch directory removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    /// A new empty directory under the system temp dir.
    pub fn new(tag: &str) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "referee-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The bundled coordinator serving on 127.0.0.1 on an ephemeral port, stopped on drop.
pub struct TestServer {
    /// Where clients connect.
    pub addr: SocketAddr,
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), CoordinatorError>>>,
    _dir: ScratchDir,
}

impl TestServer {
    /// Starts a server with test timings: 50 ms ticks, session timeouts in 200..=30000 ms.
    pub async fn start() -> Result<Self> {
        let dir = ScratchDir::new("agent-cotest")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut cfg = CoordinatorConfig::new(dir.0.clone());
        cfg.listen = addr;
        cfg.tick_ms = 50;
        cfg.min_session_timeout_ms = Some(200);
        cfg.max_session_timeout_ms = Some(30_000);
        cfg.validate().context("test configuration refused")?;
        let coord = Coordinator::start(cfg).await.context("starting the coordinator")?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(coord.serve(listener, async move {
            let _ = stop_rx.await;
        }));
        Ok(TestServer { addr, stop_tx: Some(stop_tx), task: Some(task), _dir: dir })
    }

    /// The connect string.
    pub fn connect_string(&self) -> String {
        self.addr.to_string()
    }

    /// Stops the server and checks that it shut down cleanly and in time.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().ok_or_else(|| anyhow!("server already stopped"))?;
        match within("server shutdown", task).await? {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => bail!("server returned an error: {e}"),
            Err(e) => bail!("server task failed: {e}"),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
    }
}

/// Where Debian's `zookeeper` package installs its scripts.
pub const ZK_BIN: &str = "/usr/share/zookeeper/bin";

/// Prints a loud skip line, or panics when CI requires every test to run.
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("REFEREE_REQUIRE_ALL_TESTS").is_some() {
        panic!("{test} would be skipped, but REFEREE_REQUIRE_ALL_TESTS is set: {why}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {why} (CI installs Debian's zookeeper package)");
}

/// Whether Apache ZooKeeper's scripts and a Java runtime are present.
pub fn apache_zookeeper_installed() -> bool {
    Path::new(ZK_BIN).join("zkServer.sh").exists() && which("java").is_some()
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var("PATH").ok()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.exists())
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// A standalone Apache ZooKeeper server on loopback with a 200 ms tick (session timeouts
/// 400..=10000 ms), stopped on drop.
pub struct ApacheZk {
    child: Child,
    /// Its client port.
    pub port: u16,
    dir: ScratchDir,
}

impl ApacheZk {
    /// Starts the server and waits until it serves sessions. Blocking: call it from
    /// `spawn_blocking`.
    pub fn start() -> Result<Self> {
        let dir = ScratchDir::new("agent-apache-zk")?;
        let port = free_port();
        let cfg = dir.0.join("zoo.cfg");
        std::fs::create_dir_all(dir.0.join("data"))?;
        std::fs::write(
            &cfg,
            format!(
                "tickTime=200\nminSessionTimeout=400\nmaxSessionTimeout=10000\ndataDir={}\nclientPort={port}\n\
                 clientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=*\nforceSync=no\n\
                 maxClientCnxns=0\n",
                dir.0.join("data").display()
            ),
        )?;
        let log = std::fs::File::create(dir.0.join("server.log"))?;
        let child = Command::new(Path::new(ZK_BIN).join("zkServer.sh"))
            .arg("start-foreground")
            .arg(&cfg)
            .env("ZOO_LOG_DIR", &dir.0)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting zkServer.sh")?;
        let mut zk = ApacheZk { child, port, dir };
        zk.wait_ready(Duration::from_secs(60))?;
        Ok(zk)
    }

    fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("Apache ZooKeeper exited with {status}: {}", self.log_tail());
            }
            // `ruok` answers before the server takes sessions; `srvr` has a Mode line only then.
            if four_letter(self.port, "srvr").map(|r| r.contains("Mode: ")).unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("Apache ZooKeeper was not serving within {limit:?}: {}", self.log_tail())
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.0.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `127.0.0.1:port`.
    pub fn connect_string(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for ApacheZk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends a four-letter word and reads the answer until the server closes.
pub fn four_letter(port: u16, cmd: &str) -> Result<String> {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(cmd.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
