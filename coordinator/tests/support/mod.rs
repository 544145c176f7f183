//! Support for the tests that compare the coordinator with Apache ZooKeeper itself: finding
//! Debian's `zookeeper` package, starting a reference server on loopback, and skipping loudly
//! (or failing, in CI) when it is not installed.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Where Debian's `zookeeper` package installs its scripts.
pub const ZK_BIN: &str = "/usr/share/zookeeper/bin";

/// The password whose digest is the super digest both servers are configured with.
pub const SUPER_DIGEST: &str = "super:D/InIHSb7yEEbrWz8b9l71RjZJU=";

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

/// A scratch directory removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    /// A new empty directory under the system temp dir.
    pub fn new(tag: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "referee-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A standalone Apache ZooKeeper server on loopback, stopped on drop.
pub struct ApacheZk {
    child: Child,
    /// Its client port.
    pub port: u16,
    dir: ScratchDir,
}

impl ApacheZk {
    /// Starts a server with TTL nodes enabled, reaping effectively off (so both servers keep
    /// the same containers for the length of a test), all four-letter words and the super digest.
    pub fn start() -> Result<Self> {
        let dir = ScratchDir::new("apache-zk")?;
        let port = free_port();
        let cfg = dir.0.join("zoo.cfg");
        std::fs::create_dir_all(dir.0.join("data"))?;
        std::fs::write(
            &cfg,
            format!(
                "tickTime=2000\ndataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n4lw.commands.whitelist=*\nforceSync=no\nmaxClientCnxns=0\n",
                dir.0.join("data").display()
            ),
        )?;
        let log = std::fs::File::create(dir.0.join("server.log"))?;
        let child = Command::new(Path::new(ZK_BIN).join("zkServer.sh"))
            .arg("start-foreground")
            .arg(&cfg)
            .env("ZOO_LOG_DIR", &dir.0)
            .env(
                "SERVER_JVMFLAGS",
                format!(
                    "-Dzookeeper.extendedTypesEnabled=true -Dznode.container.checkIntervalMs=3600000 \
                     -Dzookeeper.DigestAuthenticationProvider.superDigest={SUPER_DIGEST}"
                ),
            )
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
    pub fn address(&self) -> String {
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
