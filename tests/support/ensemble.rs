//! A coordinator ensemble of real processes: each server its own `referee coordinator --config`
//! child with its own data directory, on loopback or on a simulated host of the test kit's
//! [`Hosts`] (one network namespace each). Servers are killed with SIGKILL on drop, and can be
//! killed and restarted (on the same configuration and data directory) at any time.
//!
//! Everything a test learns about the servers it learns as a client or an operator would: the
//! four-letter words on the client port (`srvr`'s `Mode:` for "serving" and the role, as
//! `zkServer.sh status` reads it; `cons` for which server holds a session) and ZooKeeper
//! clients.
// Each including test uses a part.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use referee_coordinator::admin::Members;
use referee_testkit::{free_port, within_for, Host, ScratchDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use zookeeper_client as zk;

/// How long a server may take to start serving, or an ensemble to agree on a leader.
pub const START_DEADLINE: Duration = Duration::from_secs(30);

/// What a server logs at once when its own Raft log stops taking writes: its disk hung (the
/// reason then says "has not returned for") or a write of the log failed. With the level and
/// the target, because a follower passes a leader's reason on in lines of its own (a
/// forwarded write's error), and only this line is the server's own.
pub const LOG_STOP_SAID: &str = " ERROR referee_coordinator::log::store: the Raft log failed and takes no more writes";

/// The role a server is configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Votes and counts towards the write quorum.
    Voter,
    /// Receives the log and serves clients, never votes.
    Observer,
}

impl Role {
    fn yaml(self) -> &'static str {
        match self {
            Role::Voter => "voter",
            Role::Observer => "observer",
        }
    }
}

/// One server of the ensemble: its addresses, its configuration file and, while it runs, its
/// process.
pub struct Server {
    /// Its id (1, 2, ...).
    pub id: u64,
    /// Where its clients connect.
    pub client: SocketAddr,
    /// Where the other servers reach it.
    pub peer: SocketAddr,
    /// Its admin listener (`admin_listen`): the membership, read and changed.
    pub admin: SocketAddr,
    /// Its configured role.
    pub role: Role,
    config: PathBuf,
    log: PathBuf,
    /// The simulated host it runs on, if any.
    host: Option<Host>,
    child: Option<Child>,
}

impl Server {
    /// Whether its process is running.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn spawn(&mut self, init: bool) -> Result<()> {
        ensure!(self.child.is_none(), "server {} is already running", self.id);
        let bin = env!("CARGO_BIN_EXE_referee");
        let mut cmd = match &self.host {
            Some(host) => host.command(bin),
            None => Command::new(bin),
        };
        cmd.args(["coordinator", "--config"]).arg(&self.config);
        if init {
            cmd.arg("--init");
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        cmd.env("REFEREE_LOG", "info,openraft=warn").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        self.child = Some(cmd.spawn().with_context(|| format!("starting server {}", self.id))?);
        Ok(())
    }

    /// Kills its process with SIGKILL (no shutdown of any kind) and reaps it.
    pub fn kill9(&mut self) -> Result<()> {
        let mut child = self.child.take().with_context(|| format!("server {} is not running", self.id))?;
        child.kill().with_context(|| format!("SIGKILL to server {}", self.id))?;
        child.wait().with_context(|| format!("reaping server {}", self.id))?;
        Ok(())
    }

    /// Sends `signal` to its process: SIGSTOP freezes it as a long pause would (its sockets
    /// stay open, nothing answers), SIGCONT resumes it.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let child = self.child.as_ref().with_context(|| format!("server {} is not running", self.id))?;
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, signal).with_context(|| format!("{signal} to server {}", self.id))
    }

    /// Everything it logged so far, over all its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The addresses of one server.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// Where its clients connect.
    pub client: SocketAddr,
    /// Where the other servers reach it.
    pub peer: SocketAddr,
    /// Its admin listener.
    pub admin: SocketAddr,
}

impl Addrs {
    /// The well-known ports on `host`'s address.
    pub fn on(host: &Host) -> Addrs {
        let at = |port| SocketAddr::from((host.addr(), port));
        Addrs { client: at(2181), peer: at(2888), admin: at(8080) }
    }

    /// Its line in a configuration's `servers`, as server `id` with `role`.
    pub fn entry(&self, id: u64, role: Role) -> String {
        format!(
            "  - {{ id: {id}, client: {}, peer: {}, admin: {}, role: {} }}\n",
            self.client,
            self.peer,
            self.admin,
            role.yaml()
        )
    }
}

/// The ensemble: its servers (ids from 1) and the directory holding their configurations, data
/// and logs.
pub struct Ensemble {
    /// The servers, server 1 first.
    pub servers: Vec<Server>,
    dir: ScratchDir,
    /// YAML lines every configuration has.
    extra: String,
}

impl Ensemble {
    /// Starts one server per role on loopback, server 1 with `--init`, each configuration with
    /// `extra` YAML lines, and waits until every one serves.
    pub async fn start(roles: &[Role], extra: &str) -> Result<Ensemble> {
        Ok(Self::start_prepared(roles, extra, |_| Ok(())).await?.0)
    }

    /// [`Ensemble::start`], with `prepare` run on the ensemble's directory before any server
    /// starts (server `id`'s data goes in `data{id}` there: a filesystem may be mounted on it);
    /// returns what `prepare` made beside the ensemble.
    pub async fn start_prepared<T>(
        roles: &[Role],
        extra: &str,
        prepare: impl FnOnce(&std::path::Path) -> Result<T>,
    ) -> Result<(Ensemble, T)> {
        let at = |p| SocketAddr::from(([127, 0, 0, 1], p));
        let addrs = roles
            .iter()
            .map(|_| Ok(Addrs { client: at(free_port()?), peer: at(free_port()?), admin: at(free_port()?) }))
            .collect::<Result<Vec<_>>>()?;
        Self::start_at(roles, addrs, vec![None; roles.len()], extra, prepare).await
    }

    /// Starts one server per role, server `i` on host `i` of `hosts` listening on that host's
    /// address, as [`Ensemble::start`] does.
    pub async fn start_on_hosts(roles: &[Role], hosts: &[Host], extra: &str) -> Result<Ensemble> {
        Ok(Self::start_on_hosts_prepared(roles, hosts, extra, |_| Ok(())).await?.0)
    }

    /// [`Ensemble::start_on_hosts`], with `prepare` run as [`Ensemble::start_prepared`] runs it.
    pub async fn start_on_hosts_prepared<T>(
        roles: &[Role],
        hosts: &[Host],
        extra: &str,
        prepare: impl FnOnce(&std::path::Path) -> Result<T>,
    ) -> Result<(Ensemble, T)> {
        ensure!(hosts.len() >= roles.len(), "{} hosts for {} servers", hosts.len(), roles.len());
        let addrs = hosts.iter().map(Addrs::on);
        let hosts = hosts.iter().take(roles.len()).cloned().map(Some).collect();
        Self::start_at(roles, addrs.take(roles.len()).collect(), hosts, extra, prepare).await
    }

    async fn start_at<T>(
        roles: &[Role],
        addrs: Vec<Addrs>,
        hosts: Vec<Option<Host>>,
        extra: &str,
        prepare: impl FnOnce(&std::path::Path) -> Result<T>,
    ) -> Result<(Ensemble, T)> {
        let dir = ScratchDir::new("ensemble-proc")?;
        let prepared = prepare(&dir.0)?;
        let list: String = (1u64..).zip(roles.iter().zip(&addrs)).map(|(id, (role, a))| a.entry(id, *role)).collect();
        let mut ensemble = Ensemble { servers: Vec::new(), dir, extra: extra.to_string() };
        for ((id, (&role, a)), host) in (1u64..).zip(roles.iter().zip(addrs)).zip(hosts) {
            let server = ensemble.configure(id, role, a, host, &list)?;
            ensemble.servers.push(server);
        }
        for s in &mut ensemble.servers {
            let init = s.id == 1;
            s.spawn(init)?;
        }
        let ids: Vec<u64> = ensemble.servers.iter().map(|s| s.id).collect();
        ensemble.wait_serving(&ids).await?;
        Ok((ensemble, prepared))
    }

    /// Writes server `id`'s configuration (listing `servers`, YAML lines) and returns it,
    /// not running.
    fn configure(&self, id: u64, role: Role, a: Addrs, host: Option<Host>, servers: &str) -> Result<Server> {
        // Short ticks and sessions, so that expiry and failover fit a test's time.
        let yaml = format!(
            "listen: {}\nadmin_listen: {}\ndata_dir: {}\ncluster_id: 21\nserver_id: {id}\ntick_ms: 100\n\
             min_session_timeout_ms: 400\nmax_session_timeout_ms: 30000\nmax_connections_per_address: 0\n\
             {}servers:\n{servers}",
            a.client,
            a.admin,
            self.dir.path(&format!("data{id}")).display(),
            self.extra
        );
        let config = self.dir.path(&format!("server{id}.yaml"));
        std::fs::write(&config, yaml)?;
        let log = self.dir.path(&format!("server{id}.log"));
        Ok(Server { id, client: a.client, peer: a.peer, admin: a.admin, role, config, log, host, child: None })
    }

    /// Configures a new server `id` at `a` (on `host`, if any), its `servers` the running
    /// members' entries (`servers`) and its own, and starts it without waiting: until the
    /// ensemble adds it, it waits for a leader to reach it.
    pub fn start_new(&mut self, id: u64, role: Role, a: Addrs, host: Option<Host>, servers: &str) -> Result<()> {
        ensure!(self.servers.iter().all(|s| s.id != id), "server {id} exists");
        let list = format!("{servers}{}", a.entry(id, role));
        let server = self.configure(id, role, a, host, &list)?;
        self.servers.push(server);
        self.server(id).spawn(false)
    }

    /// Server `id`.
    pub fn server(&mut self, id: u64) -> &mut Server {
        let at = self.servers.iter().position(|s| s.id == id).unwrap_or_else(|| panic!("no server {id}"));
        &mut self.servers[at]
    }

    /// The client address of server `id`.
    pub fn client(&self, id: u64) -> SocketAddr {
        self.servers.iter().find(|s| s.id == id).unwrap_or_else(|| panic!("no server {id}")).client
    }

    /// A connect string naming servers `ids`.
    pub fn connect_string(&self, ids: &[u64]) -> String {
        ids.iter().map(|&id| self.client(id).to_string()).collect::<Vec<_>>().join(",")
    }

    /// The ids of the running servers.
    pub fn running(&mut self) -> Vec<u64> {
        self.servers.iter_mut().filter_map(|s| s.is_running().then_some(s.id)).collect()
    }

    /// Kills server `id` with SIGKILL.
    pub fn kill9(&mut self, id: u64) -> Result<()> {
        self.server(id).kill9()
    }

    /// Deletes stopped server `id`'s data directory, as a replaced disk would.
    pub fn wipe(&mut self, id: u64) -> Result<()> {
        ensure!(!self.server(id).is_running(), "server {id} is running");
        let data = self.dir.path(&format!("data{id}"));
        // What it holds, not the directory itself: a filesystem may be mounted on it.
        for entry in std::fs::read_dir(&data).with_context(|| format!("reading {}", data.display()))? {
            let path = entry?.path();
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            removed.with_context(|| format!("removing {}", path.display()))?;
        }
        Ok(())
    }

    /// Starts stopped server `id` again on its configuration (without `--init`), without
    /// waiting for it to serve: one its peers refuse never does.
    pub fn start_only(&mut self, id: u64) -> Result<()> {
        self.server(id).spawn(false)
    }

    /// Starts the stopped servers `ids` again on their configurations and data directories
    /// (without `--init`) and waits until each serves.
    pub async fn restart(&mut self, ids: &[u64]) -> Result<()> {
        for &id in ids {
            self.server(id).spawn(false)?;
        }
        self.wait_serving(ids).await
    }

    /// Waits until every server of `ids` serves: its `srvr` has a `Mode:` line, which it has
    /// once it knows a leader (before that it answers that it is not serving, and `ruok` says
    /// only that it runs).
    pub async fn wait_serving(&mut self, ids: &[u64]) -> Result<()> {
        let began = Instant::now();
        for &id in ids {
            let left = START_DEADLINE.saturating_sub(began.elapsed());
            let ready = within_for(left, &format!("server {id} to serve"), async {
                loop {
                    if !self.server(id).is_running() {
                        bail!("server {id} exited");
                    }
                    if self.mode(id).await.is_some() {
                        return Ok(());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
            match ready {
                Ok(Ok(())) => {}
                Ok(Err(e)) | Err(e) => bail!("{e}; its log:\n{}", self.server(id).log()),
            }
        }
        Ok(())
    }

    /// The role server `id` reports in `srvr` (`leader`, `follower`, `observer`), if it answers.
    pub async fn mode(&self, id: u64) -> Option<String> {
        let srvr = four_letter(self.client(id), "srvr").await.ok()?;
        srvr.lines().find_map(|l| l.strip_prefix("Mode: ")).map(str::to_string)
    }

    /// Waits until exactly one server of `among` says it leads and every other one of them
    /// answers as follower or observer; returns it and how long that took.
    pub async fn leader_among(&self, among: &[u64]) -> Result<(u64, Duration)> {
        let began = Instant::now();
        let mut last = Vec::new();
        while began.elapsed() < START_DEADLINE {
            let mut modes = Vec::new();
            for &id in among {
                modes.push((id, self.mode(id).await));
            }
            let leaders: Vec<u64> =
                modes.iter().filter(|(_, m)| m.as_deref() == Some("leader")).map(|(id, _)| *id).collect();
            let others_follow =
                modes.iter().all(|(_, m)| matches!(m.as_deref(), Some("leader" | "follower" | "observer")));
            if let ([leader], true) = (&leaders[..], others_follow) {
                return Ok((*leader, began.elapsed()));
            }
            last = modes;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("no single leader among {among:?} within {START_DEADLINE:?}; modes: {last:?}")
    }

    /// The membership as server `id`'s admin listener reports it (`GET /members`), within 2 s.
    pub async fn members(&self, id: u64) -> Result<Members> {
        let admin = self.servers.iter().find(|s| s.id == id).with_context(|| format!("no server {id}"))?.admin;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let answer = http.get(format!("http://{admin}/members")).send().await?.error_for_status()?;
        Ok(answer.json::<Members>().await?)
    }

    /// Every server's log, for a failure's explanation.
    pub fn logs(&self) -> String {
        self.servers.iter().map(|s| format!("--- server {} ---\n{}\n", s.id, s.log())).collect()
    }

    /// The directory holding the configurations, data and logs.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir.0
    }
}

/// How long one client operation of a [`Load`] may take before it counts as failed.
pub const OP_DEADLINE: Duration = Duration::from_secs(3);

/// One write a writer made: its path and data, when it was called and, if acknowledged, when.
#[derive(Debug, Clone)]
pub struct Write {
    /// The znode created.
    pub path: String,
    /// Its data.
    pub data: Vec<u8>,
    /// When the create was called, from the load's start.
    pub call: Duration,
    /// When it was acknowledged, if it was.
    pub acked: Option<Duration>,
}

/// Writers creating `/w/r{round}-s{server}-{n}` as fast as they are answered, each first
/// through its own server, after any failure through a new session on every server.
pub struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Write>>>,
    started: Instant,
}

impl Load {
    /// Starts one writer per server of `through`; `round` keeps paths apart from other loads'.
    pub async fn start(ensemble: &Ensemble, through: &[u64], round: u32) -> Result<Load> {
        let all: Vec<u64> = ensemble.servers.iter().map(|s| s.id).collect();
        let every = ensemble.connect_string(&all);
        let zk = session(&ensemble.client(through[0]).to_string(), Duration::from_secs(4)).await?;
        match zk.create("/w", b"", PERSISTENT).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(e) => bail!("creating /w: {e}"),
        }
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tasks = through
            .iter()
            .map(|&id| {
                let prefix = format!("/w/r{round}-s{id}-");
                tokio::spawn(writer(prefix, ensemble.client(id).to_string(), every.clone(), started, stop.clone()))
            })
            .collect();
        Ok(Load { stop, tasks, started })
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops the writers and returns every write they made.
    pub async fn finish(self) -> Result<Vec<Write>> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for t in self.tasks {
            all.extend(within_for(OP_DEADLINE * 4, "a writer to stop", t).await??);
        }
        Ok(all)
    }
}

/// One writer of a [`Load`].
async fn writer(prefix: String, own: String, every: String, started: Instant, stop: Arc<AtomicBool>) -> Vec<Write> {
    let mut done = Vec::new();
    let mut client: Option<zk::Client> = None;
    let mut target = own;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = &client else {
            match tokio::time::timeout(OP_DEADLINE, session(&target, Duration::from_secs(4))).await {
                Ok(Ok(c)) => client = Some(c),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
            continue;
        };
        n += 1;
        let (path, data) = (format!("{prefix}{n}"), format!("{prefix}{n}:data").into_bytes());
        let call = started.elapsed();
        let answer = tokio::time::timeout(OP_DEADLINE, c.create(&path, &data, PERSISTENT)).await;
        let acked = matches!(answer, Ok(Ok(_))).then(|| started.elapsed());
        if acked.is_none() {
            // Failed or unanswered: its effect is unknown. The next write goes on a new
            // session, on whichever server answers, so it cannot overtake this one.
            client = None;
            target = every.clone();
        }
        done.push(Write { path, data, call, acked });
    }
    done
}

/// The acknowledged writes of `writes`, as `(path, data)`.
pub fn acked(writes: &[Write]) -> Vec<(String, Vec<u8>)> {
    writes.iter().filter(|w| w.acked.is_some()).map(|w| (w.path.clone(), w.data.clone())).collect()
}

/// Waits until `/w` has `more` children more than now, as server `via` sees it after `sync`.
/// (The writers report only when stopped; the count through a server is the progress a client
/// can see.)
pub async fn writes_grow(via: SocketAddr, more: usize, what: &str) -> Result<()> {
    let zk = session(&via.to_string(), Duration::from_secs(4)).await?;
    let count = || async {
        zk.sync("/w").await?;
        Ok::<_, zk::Error>(zk.get_children("/w").await?.0.len())
    };
    let start = count().await?;
    within_for(Duration::from_secs(30), what, async {
        while count().await.unwrap_or(0) < start + more {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Checks every acknowledged write through every server of `ids`.
pub async fn check_everywhere(ensemble: &Ensemble, ids: &[u64], acked: &[(String, Vec<u8>)]) -> Result<()> {
    for &id in ids {
        check_present(ensemble.client(id), acked).await.with_context(|| format!("through server {id}"))?;
    }
    Ok(())
}

/// Sends a four-letter word to `addr` and reads the answer until the server closes, within 2 s.
pub async fn four_letter(addr: SocketAddr, word: &str) -> Result<String> {
    within_for(Duration::from_secs(2), &format!("the answer to {word} from {addr}"), async {
        let mut s = TcpStream::connect(addr).await?;
        s.write_all(word.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, anyhow::Error>(out)
    })
    .await?
}

/// A session on `connect_string` with `timeout`, established within 10 s.
pub async fn session(connect_string: &str, timeout: Duration) -> Result<zk::Client> {
    referee_testkit::connect(connect_string, timeout).await
}

/// `CreateMode::Persistent` with `world:anyone` ALL.
pub static PERSISTENT: &zk::CreateOptions<'static> = &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
/// `CreateMode::Ephemeral` with `world:anyone` ALL.
pub static EPHEMERAL: &zk::CreateOptions<'static> = &zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());

/// Checks through server `addr` alone, after a `sync`, that every `(path, data)` of `acked` is
/// there with that data; fails naming the first one missing or different.
pub async fn check_present(addr: SocketAddr, acked: &[(String, Vec<u8>)]) -> Result<()> {
    let zk = session(&addr.to_string(), Duration::from_secs(10)).await?;
    within_for(Duration::from_secs(10), "sync", zk.sync("/")).await?.with_context(|| format!("sync on {addr}"))?;
    for (path, data) in acked {
        let got = within_for(Duration::from_secs(10), "getData", zk.get_data(path)).await?;
        match got {
            Ok((d, _)) if &d == data => {}
            Ok((d, _)) => bail!("{addr}: {path} holds {d:?}, acknowledged as {data:?}"),
            Err(e) => bail!("{addr}: acknowledged {path} is missing: {e}"),
        }
    }
    Ok(())
}

/// Whether `sid` is a session held by a connection to `addr` (its `cons`).
pub async fn holds_session(addr: SocketAddr, sid: i64) -> Result<bool> {
    let cons = four_letter(addr, "cons").await?;
    Ok(cons.contains(&format!("sid=0x{sid:x},")))
}

/// Fails with `what` unless `cond` is true.
pub fn expect(cond: bool, what: impl FnOnce() -> String) -> Result<()> {
    if cond {
        Ok(())
    } else {
        Err(anyhow!(what()))
    }
}
