//! Apache ZooKeeper from Debian's `zookeeper` package on loopback, standalone ([`ApacheZk`]: the
//! reference the coordinator is compared with, and a second coordination service for the agent)
//! or as an ensemble ([`ApacheZkEnsemble`], the reference for the bundled ensemble).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{free_port, ScratchDir};

/// Where Debian's `zookeeper` package installs its scripts.
pub const APACHE_ZK_BIN: &str = "/usr/share/zookeeper/bin";

/// The super digest ([`ApacheZkProfile::Reference`] servers and the coordinator under comparison
/// are configured with it); its password is `super`.
pub const SUPER_DIGEST: &str = "super:D/InIHSb7yEEbrWz8b9l71RjZJU=";

/// The reason to [`skip`](crate::skip) a test that needs Apache ZooKeeper where it is missing.
pub const APACHE_ZK_MISSING: &str = "Apache ZooKeeper is not installed (CI installs Debian's zookeeper package)";

/// Whether Apache ZooKeeper's scripts and a Java runtime (on `PATH`, where `zkServer.sh` looks)
/// are present.
pub fn apache_zookeeper_installed() -> bool {
    Path::new(APACHE_ZK_BIN).join("zkServer.sh").exists() && on_path("java").is_some()
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::var("PATH").ok()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.exists())
}

/// What an [`ApacheZk`] server is started for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApacheZkProfile {
    /// Side by side with the bundled coordinator: ZooKeeper's default 2 s tick, TTL nodes
    /// enabled, container reaping effectively off (so both servers keep the same containers for
    /// the length of a test) and [`SUPER_DIGEST`].
    Reference,
    /// Under the agent: a 200 ms tick, so sessions (400..=10000 ms) expire quickly.
    ShortSessions,
    /// For throughput comparisons: every setting at ZooKeeper's default (2 s tick, each
    /// transaction forced to disk before its reply: `forceSync=yes`) apart from
    /// `maxClientCnxns=0`, so that many sessions from one address are allowed.
    Stock,
}

/// A standalone Apache ZooKeeper server on loopback with every four-letter word enabled,
/// stopped on drop.
pub struct ApacheZk {
    child: Child,
    /// Its client port.
    pub port: u16,
    dir: ScratchDir,
    jvm_flags: Option<String>,
}

impl ApacheZk {
    /// Starts a server on a [`free_port`] and waits until it serves sessions. Blocking (it
    /// waits up to a minute for the JVM): call it from `spawn_blocking`.
    pub fn start(profile: ApacheZkProfile) -> Result<Self> {
        let mut zk = Self::spawn(profile)?;
        zk.wait_ready(Duration::from_secs(60))?;
        Ok(zk)
    }

    /// Starts a server like [`start`](Self::start) but returns as soon as the process is
    /// spawned, so that a caller can time how long it takes to serve.
    pub fn spawn(profile: ApacheZkProfile) -> Result<Self> {
        let (tick_ms, session_limits, jvm_flags, force_sync) = match profile {
            ApacheZkProfile::Reference => (
                2000,
                "",
                Some(format!(
                    "-Dzookeeper.extendedTypesEnabled=true -Dznode.container.checkIntervalMs=3600000 \
                     -Dzookeeper.DigestAuthenticationProvider.superDigest={SUPER_DIGEST}"
                )),
                "forceSync=no\n",
            ),
            ApacheZkProfile::ShortSessions => {
                (200, "minSessionTimeout=400\nmaxSessionTimeout=10000\n", None, "forceSync=no\n")
            }
            // ZooKeeper's default is forceSync=yes; leaving the line out keeps the default.
            ApacheZkProfile::Stock => (2000, "", None, ""),
        };
        let dir = ScratchDir::new("apache-zk")?;
        let port = free_port().context("choosing Apache ZooKeeper's port")?;
        let cfg = dir.path("zoo.cfg");
        std::fs::create_dir_all(dir.path("data"))?;
        std::fs::write(
            &cfg,
            format!(
                "tickTime={tick_ms}\n{session_limits}dataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                 admin.enableServer=false\n4lw.commands.whitelist=*\n{force_sync}maxClientCnxns=0\n",
                dir.path("data").display()
            ),
        )?;
        let child = Self::spawn_in(&dir, jvm_flags.as_deref())?;
        Ok(ApacheZk { child, port, dir, jvm_flags })
    }

    fn spawn_in(dir: &ScratchDir, jvm_flags: Option<&str>) -> Result<Child> {
        // Appended, so that the log of a restarted server keeps the first run's lines.
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.path("server.log"))?;
        let mut command = Command::new(Path::new(APACHE_ZK_BIN).join("zkServer.sh"));
        command.arg("start-foreground").arg(dir.path("zoo.cfg")).env("ZOO_LOG_DIR", &dir.0);
        if let Some(flags) = jvm_flags {
            command.env("SERVER_JVMFLAGS", flags);
        }
        command.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).spawn().context("starting zkServer.sh")
    }

    /// Stops the server (SIGKILL, as a crash) and starts it again on the same data directory
    /// and port, returning once the process is spawned; the caller waits for it to serve.
    pub fn restart(&mut self) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.child = Self::spawn_in(&self.dir, self.jvm_flags.as_deref())?;
        Ok(())
    }

    /// The server's process id (`zkServer.sh start-foreground` execs the JVM, so it is the
    /// JVM's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path("data")
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
        let text = std::fs::read_to_string(self.dir.path("server.log")).unwrap_or_default();
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

/// An Apache ZooKeeper ensemble of `n` voting servers on loopback, every setting at ZooKeeper's
/// default (as [`ApacheZkProfile::Stock`]: 2 s tick, `forceSync=yes`, `initLimit=10`,
/// `syncLimit=5`) apart from `maxClientCnxns=0`, stopped on drop.
pub struct ApacheZkEnsemble {
    servers: Vec<EnsembleMember>,
}

struct EnsembleMember {
    child: Child,
    port: u16,
    dir: ScratchDir,
}

impl ApacheZkEnsemble {
    /// Writes every server's `zoo.cfg` and `myid` and starts them all, returning as soon as the
    /// processes are spawned; [`wait_ready`](Self::wait_ready) waits until each serves.
    pub fn spawn(n: usize) -> Result<Self> {
        Self::spawn_with(&vec![String::new(); n])
    }

    /// Starts `n` servers and waits, up to 90 s, until every one serves. Blocking: call it from
    /// `spawn_blocking`.
    pub fn start(n: usize) -> Result<Self> {
        let mut ensemble = Self::spawn(n)?;
        ensemble.wait_ready(Duration::from_secs(90))?;
        Ok(ensemble)
    }

    /// Starts an ensemble of `settings.len()` servers like [`spawn`](Self::spawn), with
    /// `settings[i]` appended to server `i + 1`'s `zoo.cfg` (a later line overrides an earlier
    /// one: `tickTime=200\nmaxSessionTimeout=1500\n` gives that server a short tick and a lower
    /// bound on session timeouts than the others).
    pub fn spawn_with(settings: &[String]) -> Result<Self> {
        let n = settings.len();
        if n < 3 || n.is_multiple_of(2) {
            bail!("an Apache ZooKeeper ensemble needs an odd number of servers, at least 3 (not {n})");
        }
        let mut ports = Vec::new();
        for _ in 0..n {
            let port = || free_port().context("choosing Apache ZooKeeper's ports");
            ports.push((port()?, port()?, port()?));
        }
        let server_lines: String = ports
            .iter()
            .enumerate()
            .map(|(i, (_, quorum, election))| format!("server.{}=127.0.0.1:{quorum}:{election}\n", i + 1))
            .collect();
        let mut servers = Vec::new();
        for (i, (client, _, _)) in ports.iter().enumerate() {
            let dir = ScratchDir::new(&format!("apache-zk-{}", i + 1))?;
            std::fs::create_dir_all(dir.path("data"))?;
            std::fs::write(dir.path("data").join("myid"), format!("{}\n", i + 1))?;
            std::fs::write(
                dir.path("zoo.cfg"),
                format!(
                    "tickTime=2000\ninitLimit=10\nsyncLimit=5\ndataDir={}\nclientPort={client}\n\
                     clientPortAddress=127.0.0.1\nadmin.enableServer=false\n4lw.commands.whitelist=*\n\
                     maxClientCnxns=0\n{server_lines}{extra}",
                    dir.path("data").display(),
                    extra = settings[i],
                ),
            )?;
            let child = ApacheZk::spawn_in(&dir, None)?;
            servers.push(EnsembleMember { child, port: *client, dir });
        }
        Ok(ApacheZkEnsemble { servers })
    }

    /// Waits until every server answers `srvr` with a mode (leader or follower). Blocking: call
    /// it from `spawn_blocking`.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        for i in 0..self.servers.len() {
            loop {
                if let Some(status) = self.servers[i].child.try_wait()? {
                    bail!("Apache ZooKeeper server {} exited with {status}: {}", i + 1, self.log_tail());
                }
                let mode = four_letter(self.servers[i].port, "srvr").unwrap_or_default();
                if mode.contains("Mode: leader") || mode.contains("Mode: follower") {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("Apache ZooKeeper server {} was not serving within {limit:?}: {}", i + 1, self.log_tail());
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Stops every server at once (SIGKILL, as a power loss) and starts them again on their data
    /// directories, returning once the processes are spawned.
    pub fn restart_all(&mut self) -> Result<()> {
        for s in &mut self.servers {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
        for s in &mut self.servers {
            s.child = ApacheZk::spawn_in(&s.dir, None)?;
        }
        Ok(())
    }

    /// Stops server `i + 1` (SIGKILL, as a crash); the others go on.
    pub fn kill(&mut self, i: usize) {
        let s = &mut self.servers[i];
        let _ = s.child.kill();
        let _ = s.child.wait();
    }

    /// Every server's client port, server 1 first.
    pub fn ports(&self) -> Vec<u16> {
        self.servers.iter().map(|s| s.port).collect()
    }

    /// Every server's process id (the JVM's), server 1 first.
    pub fn pids(&self) -> Vec<u32> {
        self.servers.iter().map(|s| s.child.id()).collect()
    }

    /// Whether every server process is still running.
    pub fn running(&mut self) -> bool {
        self.servers.iter_mut().all(|s| matches!(s.child.try_wait(), Ok(None)))
    }

    /// Server 1's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.servers[0].dir.path("data")
    }

    /// The last lines of each server's log.
    pub fn log_tail(&self) -> String {
        self.servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let text = std::fs::read_to_string(s.dir.path("server.log")).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                format!("--- server {} ---\n{}", i + 1, lines[lines.len().saturating_sub(10)..].join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for ApacheZkEnsemble {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
}

/// The session timeout a `cons` answer lists for `session`'s connection (its `to=`), if it lists
/// one: what the server granted that connection.
pub fn cons_session_timeout(cons: &str, session: i64) -> Option<Duration> {
    let line = cons.lines().find(|l| l.contains(&format!("sid={session:#x},")))?;
    line.split("to=").nth(1)?.split([',', ')']).next()?.parse().ok().map(Duration::from_millis)
}

/// Sends a four-letter word to `127.0.0.1:port` and reads the answer until the server closes
/// (at most 5 s per read).
pub fn four_letter(port: u16, cmd: &str) -> Result<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(cmd.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}
