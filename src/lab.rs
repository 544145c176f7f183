//! A master pair on loopback, as real processes: the coordinator (bundled, or Apache ZooKeeper),
//! two demo masters and two failover agents, each a child process of the `referee` binary (or
//! of Debian's `zkServer.sh`), with generated configurations in a scratch directory.
//!
//! The end-to-end tests, the failover benchmark and the demo all stand on it. Children are
//! killed and reaped when the pair is dropped, so nothing outlives it.
//!
//! The coordinator is one bundled server, Apache ZooKeeper, or
//! ([`CoordinatorKind::BundledEnsemble`]) three bundled servers forming a Raft ensemble, each
//! killable, freezable and restartable on its own ([`Pair::kill_coordinator_server`],
//! [`Pair::restart_coordinator_server`]; [`Pair::coordinator_mode`] and
//! [`Pair::wait_for_coordinator_leader`] for which one leads). On loopback every server has its
//! own client and peer port on 127.0.0.1, and the agents and journals connect to all three.
//! [`Pair::start_on_hosts`] runs the same pair on simulated hosts (the test kit's [`Hosts`]):
//! the coordinator on one, each node's master and agent on another, for faults of the network
//! between machines; or, with an ensemble, the servers on hosts 1 to 3 and the nodes on hosts
//! 4 and 5.
//!
//! The masters come in three kinds ([`MasterKind`]): lease-polling, plain, and managed by the
//! command adapter. On loopback each agent's coordinator connections may go through the test
//! kit's proxies, one per server, which a test can cut or black-hole together
//! ([`Pair::cut_agent`], [`Pair::black_hole_agent`]). The oracles: [`Oracles`] (both agents'
//! `/active` probes and a token-aware writer) and [`MasterOracle`], which asks the masters
//! themselves (their own `/ha/state`, and a write to each with its send and receive times) and
//! judges the record ([`MasterRecord::check`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use referee_examples::verdict::AckRecord;
use referee_failover_agent::timeline::{self, Mark};
use referee_fencing::{FencingToken, HaState, HaStatus};
use thiserror::Error;

/// Why the lab could not do something.
#[derive(Debug, Error)]
pub enum LabError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// Something did not happen in time.
    #[error("{0}")]
    Timeout(String),
    /// A child process died or misbehaved.
    #[error("{0}")]
    Child(String),
    /// An oracle saw what must never happen (two actives, interleaved acknowledgements) or a
    /// stretch without an active over its budget.
    #[error("{0}")]
    Oracle(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

pub mod haproxy;

use referee_testkit::{Host, Hosts, Proxy};
// The kit's, re-exported: the end-to-end tests and `failover-bench` import them from here.
pub use referee_testkit::{apache_zookeeper_installed, free_port};

/// A [`free_port`] for a child of the pair.
fn child_port() -> Result<u16, LabError> {
    free_port().map_err(io("choosing a loopback port"))
}

/// A child process with its log file; killed and reaped on drop.
pub struct Proc {
    /// Short name for messages.
    pub name: String,
    child: Child,
    /// Its combined stdout and stderr.
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `program args` with output to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: PathBuf,
    ) -> Result<Proc, LabError> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn_command(name, cmd, log)
    }

    /// Spawns `cmd` (its program and arguments set, e.g. to run inside a simulated host) with
    /// no stdin and its output to `log`.
    pub fn spawn_command(name: &str, mut cmd: Command, log: PathBuf) -> Result<Proc, LabError> {
        let file = std::fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
        let err = file.try_clone().map_err(io("cloning a log handle"))?;
        cmd.stdin(Stdio::null()).stdout(file).stderr(err);
        let child = cmd.spawn().map_err(io(format!("starting {name} ({:?})", cmd.get_program())))?;
        Ok(Proc { name: name.into(), child, log })
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal.
    pub fn signal(&self, sig: Signal) -> Result<(), LabError> {
        kill(Pid::from_raw(self.child.id() as i32), sig)
            .map_err(|e| LabError::Child(format!("signalling {} with {sig}: {e}", self.name)))
    }

    /// Whether it still runs (stopped counts as running; exited but not yet reaped does not).
    pub fn alive(&self) -> bool {
        referee_fencing::procfs::read_stat(self.child.id()).ok().flatten().is_some_and(|s| !s.is_exited())
    }

    /// Whether it has exited (reaping it if so).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Kills it with SIGKILL and reaps it.
    pub fn kill_now(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits until it exits, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Result<std::process::ExitStatus, LabError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().map_err(io("waiting for a child"))? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout(format!("{} did not exit within {limit:?}", self.name)));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// How it stands, for failure messages: running (with its state letter), or how it ended
    /// (read from its unreaped zombie: nothing reaps a child before `Drop` or `wait_exit`), so
    /// a process that died unexpectedly says whether a signal or its own exit ended it.
    pub fn fate(&self) -> String {
        let pid = self.child.id();
        match referee_fencing::procfs::read_stat(pid) {
            Ok(None) => format!("pid {pid}: reaped"),
            Err(e) => format!("pid {pid}: unreadable ({e})"),
            Ok(Some(stat)) if !stat.is_exited() => format!("pid {pid}: running (state {})", stat.state),
            Ok(Some(stat)) => match stat.exit_code {
                Some(code) if code & 0x7f != 0 => format!("pid {pid}: killed by signal {}", code & 0x7f),
                Some(code) => format!("pid {pid}: exited with code {}", (code >> 8) & 0xff),
                None => format!("pid {pid}: exited"),
            },
        }
    }

    /// The last lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process must be continued to die of SIGTERM; SIGKILL needs no help.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A scratch directory, removed on drop unless `REFEREE_KEEP_LAB` is set.
pub struct LabDir(pub PathBuf);

impl LabDir {
    /// A new directory under the system temp dir.
    pub fn new(tag: &str) -> Result<LabDir, LabError> {
        LabDir::under(&std::env::temp_dir(), tag)
    }

    /// A new directory in memory (`/dev/shm`, where the machine has it; else as [`LabDir::new`]).
    /// For files whose fsyncs must not wait on the disk.
    pub fn in_memory(tag: &str) -> Result<LabDir, LabError> {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            LabDir::under(shm, tag).or_else(|_| LabDir::new(tag))
        } else {
            LabDir::new(tag)
        }
    }

    fn under(base: &Path, tag: &str) -> Result<LabDir, LabError> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = base.join(format!("referee-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(io(format!("creating {}", dir.display())))?;
        Ok(LabDir(dir))
    }
}

impl Drop for LabDir {
    fn drop(&mut self) {
        if std::env::var_os("REFEREE_KEEP_LAB").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Which coordination service the pair uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CoordinatorKind {
    /// `referee coordinator`.
    Bundled,
    /// Apache ZooKeeper from Debian's package, standalone.
    ApacheZooKeeper,
    /// `referee coordinator` as an ensemble of [`ENSEMBLE_SERVERS`] voters, each agent and
    /// journal given every server's client address: on loopback (each server its own client and
    /// peer port on 127.0.0.1), or one simulated host per server ([`Pair::start_on_hosts`]).
    BundledEnsemble,
    /// The same voters, and beside each node a coordinator observer (on the node's host, on
    /// simulated hosts) that the node's agent and journal connect to alone, as clients at a
    /// site away from the voters use a local observer: it serves their reads, forwards their
    /// writes and reports their sessions' liveness, and never votes.
    BundledEnsembleWithObservers,
    /// Apache ZooKeeper from Debian's package as an ensemble of [`ENSEMBLE_SERVERS`] servers
    /// on loopback (the lab's tick, `syncLimit=2`), server `k` granting sessions at most
    /// `max_session_ms[k]`: servers with different bounds, over which a session's timeout is
    /// granted anew each time it moves.
    ApacheEnsemble {
        /// Each server's `maxSessionTimeout`, server 1's first.
        max_session_ms: [u64; ENSEMBLE_SERVERS],
    },
}

/// The servers of a [`CoordinatorKind::BundledEnsemble`] or [`CoordinatorKind::ApacheEnsemble`].
pub const ENSEMBLE_SERVERS: usize = 3;

/// An Apache ZooKeeper ensemble whose servers all have the lab's session bounds (as the one
/// server of [`CoordinatorKind::ApacheZooKeeper`]).
pub const APACHE_ENSEMBLE: CoordinatorKind =
    CoordinatorKind::ApacheEnsemble { max_session_ms: [60_000; ENSEMBLE_SERVERS] };

/// The `syncLimit` of a [`CoordinatorKind::ApacheEnsemble`]: how many ticks a follower may lag.
const APACHE_SYNC_LIMIT: u64 = 2;

impl CoordinatorKind {
    /// How many coordinator servers the kind runs.
    pub fn servers(self) -> usize {
        match self {
            CoordinatorKind::Bundled | CoordinatorKind::ApacheZooKeeper => 1,
            CoordinatorKind::BundledEnsemble
            | CoordinatorKind::BundledEnsembleWithObservers
            | CoordinatorKind::ApacheEnsemble { .. } => ENSEMBLE_SERVERS,
        }
    }

    /// How many observers the kind runs beside `nodes` nodes (one each, or none).
    pub fn observers(self, nodes: usize) -> usize {
        match self {
            CoordinatorKind::BundledEnsembleWithObservers => nodes,
            _ => 0,
        }
    }

    /// The agents' `coordinator.max_staleness_ms`: on an ensemble a follower holds each reply
    /// until the leader knew the session alive within 100 ms, so the agents count that much
    /// staleness into their lease; a server alone answers from what it knows. An Apache
    /// ZooKeeper follower may lag its leader by `syncLimit` ticks.
    fn max_staleness_ms(self, tick_ms: u64) -> u64 {
        match self {
            CoordinatorKind::Bundled | CoordinatorKind::ApacheZooKeeper => 0,
            CoordinatorKind::BundledEnsemble | CoordinatorKind::BundledEnsembleWithObservers => 100,
            CoordinatorKind::ApacheEnsemble { .. } => APACHE_SYNC_LIMIT * tick_ms.min(1000),
        }
    }

    /// Whether the kind is Apache ZooKeeper's.
    pub fn is_apache(self) -> bool {
        matches!(self, CoordinatorKind::ApacheZooKeeper | CoordinatorKind::ApacheEnsemble { .. })
    }
}

/// The timings of a pair: the shipped configuration's (`config/agent-db1.yaml`), or ZKFC's
/// defaults for comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Health check interval.
    pub health_interval_ms: u64,
    /// Health check deadline.
    pub health_timeout_ms: u64,
    /// Failed checks before a hung master counts as down (timed-out checks included: the lab
    /// sets `health.slow_fall` to the same count, so a hung master is failed over as fast as
    /// the timings say).
    pub health_fall: u32,
    /// Requested coordinator session timeout.
    pub session_timeout_ms: u64,
    /// Decision loop interval.
    pub loop_interval_ms: u64,
    /// Coordinator tick (ours) or tickTime (Apache's).
    pub tick_ms: u64,
    /// Graceful fence deadline.
    pub graceful_fence_ms: u64,
    /// Whether the agents watch their master's process and check at once when it exits
    /// (`health.watch_exit`); ZKFC has no such thing and sees a crash at its next check.
    pub watch_exit: bool,
}

impl Timings {
    /// The shipped configuration's timings (`config/agent-db1.yaml`: 100 ms health checks):
    /// sub-second failover on a master crash.
    pub fn referee() -> Timings {
        Timings {
            health_interval_ms: 100,
            health_timeout_ms: 300,
            health_fall: 3,
            session_timeout_ms: 2500,
            loop_interval_ms: 100,
            tick_ms: 200,
            graceful_fence_ms: 500,
            watch_exit: true,
        }
    }

    /// Hadoop ZKFC's defaults (1 s health interval, 10 s session, 5 s graceful fence), the
    /// baseline the benchmark compares with.
    pub fn zkfc() -> Timings {
        Timings {
            health_interval_ms: 1000,
            health_timeout_ms: 45_000,
            health_fall: 1,
            session_timeout_ms: 10_000,
            loop_interval_ms: 1000,
            tick_ms: 2000,
            graceful_fence_ms: 5000,
            watch_exit: false,
        }
    }
}

/// How each master of the pair is run and managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MasterKind {
    /// The demo master, managed over HTTP, enforcing the lease itself: it polls its agent's
    /// `/lease` and stops taking writes when that runs out, even if its agent hangs.
    LeasePolling,
    /// The demo master, managed over HTTP, with `--no-lease-poll`: a plain master that takes
    /// writes while active until someone demotes it, as most real masters do.
    Plain,
    /// The demo master with `--no-lease-poll`, managed by the command adapter: its agent drives
    /// it only through `referee master-command health|state|promote|demote` runs, and peers
    /// fence it with the same program as a `shell` method (then `kill`).
    Command,
    /// The demo master with `--no-lease-poll`, managed by the OCF adapter through the OCF
    /// resource agent `examples/ocf/referee-demo-master` (which runs `referee master-command`),
    /// as Pacemaker's agents drive their services; fenced as [`MasterKind::Command`]'s is.
    Ocf,
}

/// The OCF resource agent of the demo master, in this repository.
pub const DEMO_MASTER_OCF_AGENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ocf/referee-demo-master");

impl MasterKind {
    /// Whether the master polls its agent's `/lease`.
    pub fn polls_lease(self) -> bool {
        match self {
            MasterKind::LeasePolling => true,
            MasterKind::Plain | MasterKind::Command | MasterKind::Ocf => false,
        }
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct PairSpec {
    /// The `referee` binary.
    pub bin: PathBuf,
    /// The lean `referee-agent` executable to run the agents with (`referee-agent --config`);
    /// `None` runs them as `referee agent --config`. Both run the same agent.
    pub lean_agent: Option<PathBuf>,
    /// The coordinator.
    pub coordinator: CoordinatorKind,
    /// Timings.
    pub timings: Timings,
    /// The masters' kind.
    pub master: MasterKind,
    /// Route each agent's coordinator connection through a proxy the test can cut.
    pub proxied_agents: bool,
    /// YAML merged into each node's agent configuration (`a` then `b`), e.g. hooks; in it
    /// `{master_url}` stands for the node's master's HA URL.
    pub extra_agent_yaml: Vec<String>,
    /// Give each agent an admin/peer API (bearer token in `admin-token` in the lab directory).
    pub admin: bool,
    /// Masters journal their edits in the coordinator (under `/demo`), guarded by an epoch.
    pub journal: bool,
}

/// The ports of one coordinator server.
#[derive(Debug, Clone, Copy)]
struct CoordinatorPorts {
    /// Where its clients connect.
    client: u16,
    /// Where the other servers of an ensemble reach it (unused by a server alone).
    peer: u16,
    /// Where an Apache ZooKeeper ensemble's servers elect their leader (unused otherwise).
    election: u16,
}

/// The ports of one node.
#[derive(Debug, Clone, Copy)]
pub struct NodePorts {
    /// The master's HTTP port (HA protocol and client API).
    pub master: u16,
    /// The agent's probe port.
    pub probes: u16,
    /// The agent's admin/peer API port (used when the spec asks for it).
    pub admin: u16,
}

/// A running pair.
pub struct Pair {
    /// Scratch directory with configs, logs and state.
    pub dir: LabDir,
    /// The masters' token files, in memory: see [`Pair::start_master`].
    master_state: LabDir,
    /// The coordinator's processes, one per server (each replaced when it is restarted).
    coordinators: Vec<std::sync::Mutex<Proc>>,
    /// How many times a coordinator server was started, all servers counted (names its logs).
    coordinator_starts: std::sync::atomic::AtomicUsize,
    /// Each coordinator server's client and peer ports, server 1 first.
    coordinator_ports: Vec<CoordinatorPorts>,
    /// The connect string of the coordinator: `host:port` of a server alone, every voter's
    /// `host:port` comma-separated for an ensemble.
    pub coordinator_addr: String,
    /// What each node's agent and journal connect to: its observer where the kind has them,
    /// else [`Pair::coordinator_addr`].
    node_connect: Vec<String>,
    /// The masters, `a` then `b`.
    pub masters: Vec<Proc>,
    /// The agents, `a` then `b`.
    pub agents: Vec<Option<Proc>>,
    /// Ports per node.
    pub ports: Vec<NodePorts>,
    /// Per-agent proxies to the coordinator, when the spec asks for them ([`Pair::cut_agent`],
    /// [`Pair::black_hole_agent`] and their inverses): one per coordinator server each.
    proxies: Vec<AgentProxies>,
    spec: PairSpec,
    http: reqwest::Client,
    /// Where each process runs: loopback, or a simulated host each.
    placement: Placement,
}

/// One agent's proxies to the coordinator, one per server (server 1's first), and the connect
/// string naming them, stable across cut and restore.
struct AgentProxies {
    connect: String,
    each: Vec<tokio::sync::Mutex<Proxy>>,
}

impl AgentProxies {
    fn new(each: Vec<Proxy>) -> AgentProxies {
        let connect = each.iter().map(|p| p.addr.to_string()).collect::<Vec<_>>().join(",");
        AgentProxies { connect, each: each.into_iter().map(tokio::sync::Mutex::new).collect() }
    }
}

/// The demo journal znode.
pub const JOURNAL_PATH: &str = "/demo/journal";
/// The demo epoch znode.
pub const EPOCH_PATH: &str = "/demo/epoch";

/// Node ids of the pair.
pub const NODES: [&str; 2] = ["a", "b"];

/// Node ids of a cluster started with [`Pair::start_cluster`], in order (a pair is its first
/// two).
pub const CLUSTER_NODES: [&str; 5] = ["a", "b", "c", "d", "e"];

impl Pair {
    /// Starts the coordinator, both masters and both agents, and waits until one node is
    /// active.
    pub async fn start(spec: PairSpec) -> Result<Pair, LabError> {
        Pair::start_placed(spec, Placement::Loopback).await
    }

    /// Like [`Pair::start`], with `nodes` masters and agents (2 to 5, named after
    /// [`CLUSTER_NODES`]) on loopback: one active and the rest standbys. `extra_agent_yaml`
    /// applies per node in that order. The split-brain watchers ([`Pair::watch_split_brain`],
    /// [`MasterOracle`]) look at the first two nodes only.
    pub async fn start_cluster(spec: PairSpec, nodes: usize) -> Result<Pair, LabError> {
        if !(2..=CLUSTER_NODES.len()).contains(&nodes) {
            return Err(LabError::Child(format!("a lab cluster has 2 to {} nodes, not {nodes}", CLUSTER_NODES.len())));
        }
        Pair::start_n(spec, Placement::Loopback, nodes).await
    }

    /// How many nodes this cluster has.
    pub fn node_count(&self) -> usize {
        self.ports.len()
    }

    /// Like [`Pair::start`] with proxied agents, every session beginning on coordinator server
    /// 1: each agent's proxies to the other servers refuse connections until a node is active,
    /// and are restored before this returns. So every agent's first grant is server 1's, and a
    /// session moves to the others only when a test makes it.
    pub async fn start_on_first_coordinator_server(spec: PairSpec) -> Result<Pair, LabError> {
        if !spec.proxied_agents {
            return Err(LabError::Child("starting on the first coordinator server needs proxied_agents".into()));
        }
        Pair::start_full(spec, Placement::Loopback, NODES.len(), true).await
    }

    /// [`Pair::start`], with each process where `placement` puts it.
    async fn start_placed(spec: PairSpec, placement: Placement) -> Result<Pair, LabError> {
        Pair::start_n(spec, placement, NODES.len()).await
    }

    /// The start of every kind of cluster: `nodes` nodes, each process where `placement` puts it.
    async fn start_n(spec: PairSpec, placement: Placement, nodes: usize) -> Result<Pair, LabError> {
        Pair::start_full(spec, placement, nodes, false).await
    }

    /// [`Pair::start_n`], the agents reaching coordinator server 1 alone until a node is
    /// active when `first_server_only`.
    async fn start_full(
        spec: PairSpec,
        placement: Placement,
        nodes: usize,
        first_server_only: bool,
    ) -> Result<Pair, LabError> {
        let dir = LabDir::new("pair")?;
        let voters = spec.coordinator.servers();
        // Voters first, then one observer beside each node (when the kind has them).
        let servers = voters + spec.coordinator.observers(nodes);
        let mut coordinator_ports = Vec::new();
        for _ in 0..servers {
            coordinator_ports.push(CoordinatorPorts {
                client: child_port()?,
                peer: child_port()?,
                election: child_port()?,
            });
        }
        let addrs: Vec<String> = (0..servers)
            .map(|k| format!("{}:{}", placement.ip(Role::Coordinator(k)), coordinator_ports[k].client))
            .collect();
        let coordinator_addr = addrs[..voters].join(",");
        let node_connect: Vec<String> =
            (0..nodes).map(|i| addrs.get(voters + i).cloned().unwrap_or_else(|| coordinator_addr.clone())).collect();
        // Every server starts before any is waited for: an ensemble serves only once a
        // majority runs. Server 1 alone initialises the ensemble.
        let mut coordinators = Vec::new();
        for k in 0..servers {
            coordinators.push(start_coordinator(&spec, &dir.0, &coordinator_ports, k, 1, k == 0, &placement)?);
        }
        for (k, addr) in addrs.iter().enumerate() {
            if let Err(e) = wait_for_serving(addr, Duration::from_secs(60)).await {
                return Err(LabError::Child(format!(
                    "{e}\n--- {} log ---\n{}",
                    coordinators[k].name,
                    coordinators[k].log_tail(15)
                )));
            }
        }
        let coordinators = coordinators.into_iter().map(std::sync::Mutex::new).collect();
        let mut ports = Vec::new();
        for _ in 0..nodes {
            ports.push(NodePorts { master: child_port()?, probes: child_port()?, admin: child_port()? });
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(500))
            .build()
            .map_err(|e| LabError::Child(format!("http client: {e}")))?;
        let mut pair = Pair {
            dir,
            master_state: LabDir::in_memory("master-state")?,
            coordinators,
            coordinator_starts: std::sync::atomic::AtomicUsize::new(1),
            coordinator_ports,
            coordinator_addr,
            node_connect,
            masters: Vec::new(),
            agents: Vec::new(),
            ports,
            proxies: Vec::new(),
            spec,
            http,
            placement,
        };
        if pair.spec.proxied_agents {
            // One proxy per agent and server: the agent's connect string lists its own proxies,
            // so cutting them all cuts it from the whole ensemble, wherever its session lives.
            for i in 0..nodes {
                let mut targets = Vec::new();
                for addr in pair.node_connect[i].split(',') {
                    let target: std::net::SocketAddr =
                        addr.parse().map_err(|e| LabError::Child(format!("the coordinator address {addr}: {e}")))?;
                    targets.push(target);
                }
                let mut each = Vec::new();
                for &target in &targets {
                    let proxy =
                        Proxy::start(target).await.map_err(|e| LabError::Child(format!("starting a proxy: {e:#}")))?;
                    each.push(proxy);
                }
                pair.proxies.push(AgentProxies::new(each));
            }
        }
        if first_server_only {
            for i in 0..nodes {
                for k in 1..pair.proxies_of(i)?.len() {
                    pair.cut_agent_server(i, k).await?;
                }
            }
        }
        for i in 0..nodes {
            let m = pair.start_master(i)?;
            pair.masters.push(m);
        }
        for i in 0..nodes {
            let addr = format!("{}:{}", pair.node_ip(i), pair.ports[i].master);
            if let Err(e) = wait_for_port(&addr, Duration::from_secs(20), "a master").await {
                // A child that fails to start: say why, from its own log; dropping the pair
                // then stops every other child.
                return Err(LabError::Child(format!(
                    "{e}\n--- {} log ---\n{}",
                    pair.masters[i].name,
                    pair.masters[i].log_tail(15)
                )));
            }
        }
        for i in 0..nodes {
            let a = pair.start_agent(i)?;
            pair.agents.push(Some(a));
        }
        pair.wait_for_active(Duration::from_secs(30)).await?;
        if first_server_only {
            for i in 0..nodes {
                for k in 1..pair.proxies_of(i)?.len() {
                    pair.restore_agent_server(i, k).await?;
                }
            }
        }
        // Every scenario starts from live masters. The first holder fences every other node
        // (no breadcrumb yet); one that was slow to confirm its demotion was killed for it.
        if let Some(i) = (0..nodes).find(|&i| !pair.masters[i].alive()) {
            return Err(LabError::Child(format!(
                "master {} stopped during start-up, before any fault: the first holder's fence of it must have \
                 escalated past the graceful level\n--- agent logs (fencing) ---\n{}\n--- {} log ---\n{}",
                CLUSTER_NODES[i],
                (0..nodes).map(|j| pair.agent_fence_lines(j)).collect::<Vec<_>>().join("\n"),
                pair.masters[i].name,
                pair.masters[i].log_tail(15)
            )));
        }
        Ok(pair)
    }

    /// Agent `i`'s log lines about fencing.
    pub fn agent_fence_lines(&self, i: usize) -> String {
        let log = std::fs::read_to_string(self.node_dir(i).join("agent.log")).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("fenc"))
            .map(|l| format!("{}: {l}", CLUSTER_NODES[i]))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Agent `i`'s proxies, one per coordinator server.
    fn proxies_of(&self, i: usize) -> Result<&[tokio::sync::Mutex<Proxy>], LabError> {
        self.proxies.get(i).map(|p| &p.each[..]).ok_or_else(|| {
            LabError::Child(format!("agent {} has no proxy: start the pair with proxied_agents", CLUSTER_NODES[i]))
        })
    }

    /// Cuts agent `i` off the coordinator (every server of an ensemble): its connections drop
    /// and new ones are refused.
    pub async fn cut_agent(&self, i: usize) -> Result<(), LabError> {
        for proxy in self.proxies_of(i)? {
            proxy.lock().await.cut();
        }
        Ok(())
    }

    /// Cuts agent `i` off coordinator server `k` (from 0) alone: its connection there drops and
    /// new ones are refused, so its session moves to another server.
    pub async fn cut_agent_server(&self, i: usize, k: usize) -> Result<(), LabError> {
        let proxy =
            self.proxies_of(i)?.get(k).ok_or_else(|| LabError::Child(format!("no coordinator server {}", k + 1)))?;
        proxy.lock().await.cut();
        Ok(())
    }

    /// Undoes [`Pair::cut_agent_server`].
    pub async fn restore_agent_server(&self, i: usize, k: usize) -> Result<(), LabError> {
        let proxy =
            self.proxies_of(i)?.get(k).ok_or_else(|| LabError::Child(format!("no coordinator server {}", k + 1)))?;
        proxy
            .lock()
            .await
            .restore()
            .await
            .map_err(|e| LabError::Child(format!("restoring agent {}'s proxy: {e:#}", CLUSTER_NODES[i])))
    }

    /// Undoes [`Pair::cut_agent`].
    pub async fn restore_agent(&self, i: usize) -> Result<(), LabError> {
        for proxy in self.proxies_of(i)? {
            proxy
                .lock()
                .await
                .restore()
                .await
                .map_err(|e| LabError::Child(format!("restoring agent {}'s proxy: {e:#}", CLUSTER_NODES[i])))?;
        }
        Ok(())
    }

    /// Black-holes agent `i`'s coordinator connections (to every server of an ensemble):
    /// connections stay open and new ones are accepted, but nothing passes either way, so the
    /// agent learns only from its deadlines.
    pub async fn black_hole_agent(&self, i: usize) -> Result<(), LabError> {
        for proxy in self.proxies_of(i)? {
            proxy.lock().await.black_hole();
        }
        Ok(())
    }

    /// Undoes [`Pair::black_hole_agent`].
    pub async fn heal_agent(&self, i: usize) -> Result<(), LabError> {
        for proxy in self.proxies_of(i)? {
            proxy.lock().await.heal();
        }
        Ok(())
    }

    /// Kills every coordinator server with SIGKILL: every connection to them drops at once.
    pub fn kill_coordinator(&self) {
        for k in 0..self.coordinators.len() {
            self.kill_coordinator_server(k);
        }
    }

    /// Stops the coordinator if it runs, deletes its data directory when `wipe` (it then
    /// knows no session, no lock, no breadcrumb and no token base, as after losing its disk),
    /// starts it again on the same address and waits until it serves. An ensemble is stopped
    /// and started whole; `wipe` is refused for it (the servers would have to be initialised
    /// afresh, which is not a restart).
    pub async fn restart_coordinator(&self, wipe: bool) -> Result<(), LabError> {
        self.kill_coordinator();
        if wipe {
            if self.coordinators.len() > 1 {
                return Err(LabError::Child("wiping an ensemble's data is not a restart: start a new pair".into()));
            }
            let data = self.dir.0.join("coordinator").join("data");
            if data.exists() {
                std::fs::remove_dir_all(&data).map_err(io("wiping the coordinator's data"))?;
            }
        }
        for k in 0..self.coordinators.len() {
            self.spawn_coordinator_server(k)?;
        }
        for k in 0..self.coordinators.len() {
            self.wait_coordinator_server(k).await?;
        }
        Ok(())
    }

    /// How many voting coordinator servers the pair has (1, or [`ENSEMBLE_SERVERS`]): servers
    /// 0 to this less one. Observers, where the kind has them, come after them
    /// ([`Pair::coordinator_observer`]).
    pub fn coordinator_servers(&self) -> usize {
        self.spec.coordinator.servers()
    }

    /// How many coordinator servers the pair runs, observers included.
    pub fn coordinator_count(&self) -> usize {
        self.coordinators.len()
    }

    /// The coordinator server (from 0) of the observer beside node `i`, if the kind has them.
    pub fn coordinator_observer(&self, i: usize) -> Option<usize> {
        let k = self.coordinator_servers() + i;
        (k < self.coordinators.len()).then_some(k)
    }

    /// The client address (`host:port`) of coordinator server `k` (from 0).
    pub fn coordinator_server_addr(&self, k: usize) -> String {
        format!("{}:{}", self.placement.ip(Role::Coordinator(k)), self.coordinator_ports[k].client)
    }

    /// Kills coordinator server `k` with SIGKILL and reaps it (nothing if it is not running).
    pub fn kill_coordinator_server(&self, k: usize) {
        self.coordinators[k].lock().unwrap_or_else(|p| p.into_inner()).kill_now();
    }

    /// Sends `sig` to coordinator server `k` (SIGSTOP freezes it, SIGCONT resumes it).
    pub fn signal_coordinator_server(&self, k: usize, sig: Signal) -> Result<(), LabError> {
        self.coordinators[k].lock().unwrap_or_else(|p| p.into_inner()).signal(sig)
    }

    /// Kills coordinator server `k` if it runs, starts it again on its configuration and data
    /// directory (never initialising anything) and waits until it serves.
    pub async fn restart_coordinator_server(&self, k: usize) -> Result<(), LabError> {
        self.kill_coordinator_server(k);
        self.spawn_coordinator_server(k)?;
        self.wait_coordinator_server(k).await
    }

    fn spawn_coordinator_server(&self, k: usize) -> Result<(), LabError> {
        let start = self.coordinator_starts.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let proc =
            start_coordinator(&self.spec, &self.dir.0, &self.coordinator_ports, k, start, false, &self.placement)?;
        *self.coordinators[k].lock().unwrap_or_else(|p| p.into_inner()) = proc;
        Ok(())
    }

    async fn wait_coordinator_server(&self, k: usize) -> Result<(), LabError> {
        if let Err(e) = wait_for_serving(&self.coordinator_server_addr(k), Duration::from_secs(60)).await {
            // A server waits on its peers to serve: their logs say why as often as its own.
            let tails: String = (0..self.coordinators.len())
                .map(|j| {
                    let tail = self.coordinators[j].lock().unwrap_or_else(|p| p.into_inner()).log_tail(15);
                    format!("\n--- coordinator server {} log ---\n{tail}", j + 1)
                })
                .collect();
            return Err(LabError::Child(format!("{e}{tails}")));
        }
        Ok(())
    }

    /// The `Mode:` coordinator server `k` reports in `srvr` (`leader`, `follower`,
    /// `standalone`, ...), if it answers within a second.
    pub async fn coordinator_mode(&self, k: usize) -> Option<String> {
        let srvr = self.coordinator_four_letter(k, "srvr").await?;
        srvr.lines().find_map(|l| l.strip_prefix("Mode: ")).map(|m| m.trim().to_string())
    }

    /// Waits until exactly one coordinator server of `among` says it leads and every other one
    /// of them answers as a follower; returns the leader.
    pub async fn wait_for_coordinator_leader(&self, among: &[usize], limit: Duration) -> Result<usize, LabError> {
        let deadline = Instant::now() + limit;
        loop {
            let mut modes = Vec::new();
            for &k in among {
                modes.push((k, self.coordinator_mode(k).await));
            }
            let leaders: Vec<usize> =
                modes.iter().filter(|(_, m)| m.as_deref() == Some("leader")).map(|(k, _)| *k).collect();
            let others_follow = modes.iter().all(|(_, m)| matches!(m.as_deref(), Some("leader" | "follower")));
            if let ([leader], true) = (&leaders[..], others_follow) {
                return Ok(*leader);
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout(format!(
                    "no single coordinator leader among servers {:?} within {limit:?}; modes: {modes:?}",
                    among.iter().map(|k| k + 1).collect::<Vec<_>>()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The coordinator server (from 0, observers included) agent `i`'s session is connected to: its session id, from
    /// the agent's `/status`, looked up in each server's `cons`. `None` when the agent has no
    /// connected session or no server lists it.
    pub async fn agent_coordinator_server(&self, i: usize) -> Option<usize> {
        let status = self.agent_json(i, "/status").await?;
        if status["session"]["state"] != "connected" {
            return None;
        }
        // `cons` prints a session id as the hex of its 64 bits, as `{:x}` does for an i64.
        let needle = format!("sid=0x{:x},", status["session"]["session_id"].as_i64()?);
        for k in 0..self.coordinators.len() {
            if self.coordinator_four_letter(k, "cons").await.is_some_and(|cons| cons.contains(&needle)) {
                return Some(k);
            }
        }
        None
    }

    /// The four-letter word `word`'s answer from coordinator server `k`, if it answers within a
    /// second (an empty answer when it closes the connection without one).
    pub async fn coordinator_four_letter(&self, k: usize, word: &str) -> Option<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let ask = async {
            let mut s = tokio::net::TcpStream::connect(self.coordinator_server_addr(k)).await.ok()?;
            s.write_all(word.as_bytes()).await.ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).await.ok()?;
            Some(out)
        };
        tokio::time::timeout(Duration::from_secs(1), ask).await.ok().flatten()
    }

    /// The last lines of the coordinator's log (every server's, for an ensemble).
    pub fn coordinator_log_tail(&self, lines: usize) -> String {
        let tail = |k: usize| self.coordinators[k].lock().unwrap_or_else(|p| p.into_inner()).log_tail(lines);
        if self.coordinators.len() == 1 {
            return tail(0);
        }
        (0..self.coordinators.len())
            .map(|k| format!("--- coordinator server {} ---\n{}", k + 1, tail(k)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Coordinator server `k`'s whole log so far.
    pub fn coordinator_server_log(&self, k: usize) -> String {
        let log = self.coordinators[k].lock().unwrap_or_else(|p| p.into_inner()).log.clone();
        std::fs::read_to_string(log).unwrap_or_default()
    }

    fn node_dir(&self, i: usize) -> PathBuf {
        self.dir.0.join(CLUSTER_NODES[i])
    }

    /// Starts (or restarts) master `i`.
    ///
    /// Its token file lives in memory, where the machine has it. A master persists each new
    /// token with two fsyncs before it confirms a demotion, and a shared test machine's disk
    /// can stall an fsync for most of a second: then the first holder's precautionary fence
    /// of the standby at start-up (no breadcrumb yet) outlasts the 500 ms graceful level and
    /// rightly kills a healthy standby, which leaves a scenario one master short before its
    /// fault. The fsyncs still run; only the disk's latency is left out. The shipped agent
    /// configs tell operators to size the graceful level to their master's slowest demotion.
    pub fn start_master(&self, i: usize) -> Result<Proc, LabError> {
        let node = self.node_dir(i);
        std::fs::create_dir_all(&node).map_err(io("creating a node directory"))?;
        // Every master is configured with the lease; `--no-lease-poll` makes a plain one
        // ignore it.
        let ip = self.node_ip(i);
        let lease = format!("lease:\n  url: \"http://{ip}:{}/lease\"\n  poll_interval_ms: 50\n", self.ports[i].probes);
        let journal = if self.spec.journal {
            format!(
                "journal:\n  connect: \"{}\"\n  path: {JOURNAL_PATH}\n  epoch_path: {EPOCH_PATH}\n  session_timeout_ms: 4000\n  op_timeout_ms: 1000\n",
                self.node_connect[i]
            )
        } else {
            String::new()
        };
        // The lab's tests and the demo drive the masters' `/test/...` endpoints.
        let cfg = format!(
            "node_id: {}\nstate_file: {}\ntest_routes: true\n{lease}{journal}",
            CLUSTER_NODES[i],
            self.master_state.0.join(format!("{}-master-state.json", CLUSTER_NODES[i])).display()
        );
        let path = node.join("master.yaml");
        std::fs::write(&path, cfg).map_err(io("writing a master config"))?;
        let mut args = vec![
            "demo-master".into(),
            "--config".into(),
            path.display().to_string(),
            "--listen".into(),
            format!("{ip}:{}", self.ports[i].master),
            "--pidfile".into(),
            node.join("master.pid").display().to_string(),
        ];
        if !self.spec.master.polls_lease() {
            args.push("--no-lease-poll".into());
        }
        self.placement.spawn(
            Role::Node(i),
            &format!("master {}", CLUSTER_NODES[i]),
            &self.spec.bin,
            &args,
            &[("REFEREE_LOG", "info".into())],
            node.join("master.log"),
        )
    }

    /// Starts (or restarts) agent `i`.
    pub fn start_agent(&self, i: usize) -> Result<Proc, LabError> {
        let t = self.spec.timings;
        let node = self.node_dir(i);
        let p = self.ports[i];
        let max_staleness = self.spec.coordinator.max_staleness_ms(self.spec.timings.tick_ms);
        let htimeout = t.health_timeout_ms.min(t.session_timeout_ms / 2);
        let ip = self.node_ip(i);
        let url = format!("http://{ip}:{}", p.master);
        // A run of a program, or of a resource agent that runs `master-command` (twice for a
        // monitor), starts processes: a roomier deadline than an HTTP call.
        let run_timeout = match self.spec.master {
            MasterKind::LeasePolling | MasterKind::Plain => htimeout,
            MasterKind::Command => htimeout.max(1000).min(t.session_timeout_ms / 2),
            MasterKind::Ocf => htimeout.max(2000).min(t.session_timeout_ms / 2),
        };
        let bin = self.spec.bin.display().to_string();
        // A master the agent drives through programs is fenced by the same program, as a shell
        // method: it demotes the master `TARGET_HA_URL` names with the new token and succeeds
        // only on standby.
        let shell_fence = format!(
            "        - kind: shell\n          program: {}\n          args: [\"master-command\", \"demote\"]\n          \
             timeout_ms: {}\n",
            serde_json::json!(bin),
            t.graceful_fence_ms.max(1000)
        );
        let (adapter, first_fence) = match self.spec.master {
            MasterKind::LeasePolling | MasterKind::Plain => (
                format!(
                    "  ha_url: \"{url}\"\n  adapter:\n    kind: http\n    url: \"{url}\"\n    timeout_ms: {htimeout}\n    \
                     connect_timeout_ms: {}\n",
                    htimeout.min(1000)
                ),
                format!("        - kind: graceful\n          timeout_ms: {}\n", t.graceful_fence_ms),
            ),
            MasterKind::Ocf => {
                let params = serde_json::json!({
                    "url": url,
                    "referee": bin,
                    "pidfile": node.join("master.pid").display().to_string(),
                    "timeout_ms": (run_timeout / 2).to_string(),
                });
                (
                    format!(
                        "  adapter:\n    kind: ocf\n    agent: {}\n    instance: demo-master-{}\n    params: {params}\n    \
                         token_file: {}\n    timeout_ms: {run_timeout}\n",
                        serde_json::json!(DEMO_MASTER_OCF_AGENT),
                        CLUSTER_NODES[i],
                        serde_json::json!(node.join("ocf.token").display().to_string()),
                    ),
                    shell_fence,
                )
            }
            MasterKind::Command => {
                // The agent never speaks HTTP to its master: each operation is a program run.
                let argv = |action: &str| {
                    serde_json::json!([
                        bin,
                        "master-command",
                        action,
                        "--url",
                        url,
                        "--timeout-ms",
                        run_timeout.to_string()
                    ])
                    .to_string()
                };
                (
                    format!(
                        "  adapter:\n    kind: command\n    health: {}\n    state: {}\n    promote: {}\n    demote: {}\n    \
                         timeout_ms: {run_timeout}\n",
                        argv("health"),
                        argv("state"),
                        argv("promote"),
                        argv("demote")
                    ),
                    shell_fence,
                )
            }
        };
        let cfg = format!(
            r#"cluster: lab
node_id: {id}
coordinator:
  connect: "{coord}"
  session_timeout_ms: {session}
  op_timeout_ms: {op}
  max_staleness_ms: {max_staleness}
master:
  host: {ip}
  port: {mport}
  pidfile: {pidfile}
{adapter}health:
  interval_ms: {hinterval}
  timeout_ms: {htimeout}
  rise: 1
  fall: {fall}
  slow_fall: {fall}
  watch_exit: {watch_exit}
lease:
  demote_deadline_ms: 500
  margin_ms: 250
election:
  loop_interval_ms: {loop_ms}
  backoff_after_failure_ms: 500
fencing:
  overall_timeout_ms: {overall}
  levels:
    - methods:
{first_fence}    - methods:
        - kind: kill
          timeout_ms: 3000
          grace_ms: 1000
probes:
  listen: {ip}:{probes}
"#,
            id = CLUSTER_NODES[i],
            coord = self.proxies.get(i).map_or(&self.node_connect[i], |p| &p.connect),
            session = t.session_timeout_ms,
            op = (t.session_timeout_ms / 3).min(1000),
            mport = p.master,
            pidfile = self.node_dir(i).join("master.pid").display(),
            htimeout = run_timeout,
            hinterval = t.health_interval_ms,
            fall = t.health_fall,
            watch_exit = t.watch_exit,
            loop_ms = t.loop_interval_ms,
            overall = t.graceful_fence_ms.max(1000) + 5000,
            probes = p.probes,
        );
        let admin = if self.spec.admin {
            let token = self.admin_token_file();
            if !token.exists() {
                std::fs::write(&token, "lab-admin-secret\n").map_err(io("writing the admin token"))?;
            }
            format!("admin:\n  listen: {ip}:{}\n  token_file: {}\n", p.admin, token.display())
        } else {
            String::new()
        };
        let cfg = format!("{cfg}{admin}{}", self.peers_yaml(i));
        let cfg = match self.spec.extra_agent_yaml.get(i) {
            Some(extra) => merge_yaml(&cfg, &extra.replace("{master_url}", &url))?,
            None => cfg,
        };
        let path = node.join("agent.yaml");
        std::fs::create_dir_all(&node).map_err(io("creating a node directory"))?;
        std::fs::write(&path, cfg).map_err(io("writing an agent config"))?;
        let (program, args) = self.agent_command(&path);
        self.placement.spawn(
            Role::Node(i),
            &format!("agent {}", CLUSTER_NODES[i]),
            program,
            &args,
            &[("REFEREE_LOG", "info".into())],
            node.join("agent.log"),
        )
    }

    /// The program and arguments that run an agent on the configuration at `config`, as the
    /// spec asks: the lean `referee-agent`, or `referee agent`.
    pub fn agent_command(&self, config: &Path) -> (&Path, Vec<String>) {
        let config = config.display().to_string();
        match &self.spec.lean_agent {
            Some(lean) => (lean, vec!["--config".into(), config]),
            None => (&self.spec.bin, vec!["agent".into(), "--config".into(), config]),
        }
    }

    /// Agent `i`'s `peers` section: every other node, with how to fence its master (its HA
    /// URL for the HTTP kinds; host and port otherwise), its pidfile and, with the admin API
    /// on, its agent's peer API address.
    fn peers_yaml(&self, i: usize) -> String {
        let mut out = String::from("peers:\n");
        for (j, node) in CLUSTER_NODES.iter().enumerate().take(self.node_count()).filter(|(j, _)| *j != i) {
            let (port, ip) = (self.ports[j].master, self.node_ip(j));
            out.push_str(&format!("  - node_id: {node}\n    host: {ip}\n    port: {port}\n"));
            match self.spec.master {
                MasterKind::LeasePolling | MasterKind::Plain => {
                    out.push_str(&format!("    ha_url: \"http://{ip}:{port}\"\n"))
                }
                MasterKind::Command | MasterKind::Ocf => {}
            }
            out.push_str(&format!("    pidfile: {}\n", self.node_dir(j).join("master.pid").display()));
            if self.spec.admin {
                // Where its agent's peer API listens (the admin listener), for failsafe rounds.
                out.push_str(&format!("    peer_url: \"http://{ip}:{}\"\n", self.ports[j].admin));
            }
        }
        out
    }

    /// The coordinator connect string node `i`'s agent is given.
    pub fn coordinator_connect(&self, i: usize) -> &str {
        &self.node_connect[i]
    }

    /// Whether node `i`'s agent answers `/active` with 200.
    pub async fn is_active(&self, i: usize) -> bool {
        let url = format!("http://{}:{}/active", self.node_ip(i), self.ports[i].probes);
        matches!(self.http.get(url).send().await, Ok(r) if r.status().is_success())
    }

    /// Which nodes answer `/active` with 200 right now.
    pub async fn actives(&self) -> Vec<usize> {
        let (a, b) = tokio::join!(self.is_active(0), self.is_active(1));
        let mut each = vec![a, b];
        for i in 2..self.node_count() {
            each.push(self.is_active(i).await);
        }
        each.iter().enumerate().filter(|(_, x)| **x).map(|(i, _)| i).collect()
    }

    /// Waits until exactly one node is active; returns it.
    pub async fn wait_for_active(&self, limit: Duration) -> Result<usize, LabError> {
        let deadline = Instant::now() + limit;
        loop {
            let actives = self.actives().await;
            if actives.len() == 1 {
                return Ok(actives[0]);
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout(format!(
                    "no single active node within {limit:?} (active: {actives:?})\n--- agent a ---\n{}\n--- agent b ---\n{}",
                    self.agent_log_tail(0),
                    self.agent_log_tail(1)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `node` is the single active node.
    pub async fn wait_for_active_node(&self, node: usize, limit: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + limit;
        loop {
            if self.actives().await == vec![node] {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout(format!(
                    "node {} did not become the single active node within {limit:?}\n--- processes ---\n{}\n--- agent a ---\n{}\n--- agent b ---\n{}",
                    CLUSTER_NODES[node],
                    self.fates(),
                    self.agent_log_tail(0),
                    self.agent_log_tail(1)
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until node `i`'s agent is a standby with a connected session (back from a cut, or
    /// restarted, and ready to take over).
    pub async fn wait_for_connected_standby(&self, i: usize, limit: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + limit;
        loop {
            let s = self.agent_json(i, "/status").await.unwrap_or_default();
            if s["role"] == "standby" && s["session"]["state"] == "connected" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout(format!(
                    "agent {} was not a connected standby within {limit:?}: {s}",
                    CLUSTER_NODES[i]
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// How every master and agent stands (see [`Proc::fate`]), with the end of each master's log.
    pub fn fates(&self) -> String {
        let mut out = Vec::new();
        for (i, m) in self.masters.iter().enumerate() {
            out.push(format!("master {}: {}; its log ends:\n{}", CLUSTER_NODES[i], m.fate(), m.log_tail(5)));
        }
        for (i, a) in self.agents.iter().enumerate() {
            out.push(format!(
                "agent {}: {}",
                CLUSTER_NODES[i],
                a.as_ref().map_or("not running".to_string(), Proc::fate)
            ));
        }
        out.join("\n")
    }

    /// The tail of agent `i`'s log.
    pub fn agent_log_tail(&self, i: usize) -> String {
        std::fs::read_to_string(self.node_dir(i).join("agent.log"))
            .map(|t| t.lines().rev().take(25).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n"))
            .unwrap_or_default()
    }

    /// Sends a write to master `i`: `Ok` when acknowledged, else the refusal or error.
    pub async fn write(&self, i: usize, key: &str, value: &str) -> Result<(), String> {
        self.write_token(i, key, value).await.map(|_| ())
    }

    /// Writes `key = value` to master `i`; returns the token it acknowledged the write under.
    pub async fn write_token(&self, i: usize, key: &str, value: &str) -> Result<u64, String> {
        self.write_with_id(i, key, value, None).await
    }

    /// Writes `key = value` to master `i` under the client's `write_id` (a journalling master
    /// records it with the edit, so an independent reader can find the write); returns the token
    /// it acknowledged the write under.
    pub async fn write_with_id(&self, i: usize, key: &str, value: &str, write_id: Option<&str>) -> Result<u64, String> {
        self.master_endpoint(i).write(key, value, write_id).await
    }

    /// Where master `i` answers, for the oracles: they hold this, not the pair.
    fn master_endpoint(&self, i: usize) -> MasterEndpoint {
        let base = format!("http://{}:{}", self.node_ip(i), self.ports[i].master);
        MasterEndpoint {
            http: self.http.clone(),
            state_url: format!("{base}/ha/state"),
            write_url: format!("{base}/write"),
        }
    }

    /// Retries a write on master `i` until it is acknowledged or `limit` passes.
    pub async fn write_within(&self, i: usize, key: &str, value: &str, limit: Duration) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            match self.write(i, key, value).await {
                Ok(()) => return Ok(started.elapsed()),
                Err(e) if started.elapsed() >= limit => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        }
    }

    /// The HTTP status of `GET path` on node `i`'s agent probe server.
    pub async fn probe_status(&self, i: usize, path: &str) -> Option<u16> {
        let url = format!("http://{}:{}{path}", self.node_ip(i), self.ports[i].probes);
        Some(self.http.get(url).send().await.ok()?.status().as_u16())
    }

    /// The body of `GET path` on node `i`'s agent probe server.
    pub async fn probe_text(&self, i: usize, path: &str) -> Option<String> {
        let url = format!("http://{}:{}{path}", self.node_ip(i), self.ports[i].probes);
        self.http.get(url).send().await.ok()?.text().await.ok()
    }

    /// The file holding the agents' admin bearer secret.
    pub fn admin_token_file(&self) -> PathBuf {
        self.dir.0.join("admin-token")
    }

    /// Runs `referee admin ARGS --config <agent i's config>` and returns (exit code, stdout,
    /// stderr).
    pub async fn admin(&self, i: usize, args: &[&str]) -> Result<(i32, String, String), LabError> {
        let mut cmd = tokio::process::Command::new(&self.spec.bin);
        cmd.arg("admin").args(args).arg("--config").arg(self.node_dir(i).join("agent.yaml")).kill_on_drop(true);
        // The longest wait `referee admin` takes (a failover's, 60 s by default) and a margin.
        let limit = Duration::from_secs(90);
        let out = tokio::time::timeout(limit, cmd.output())
            .await
            .map_err(|_| LabError::Timeout(format!("referee admin {args:?} did not finish within {limit:?}")))?
            .map_err(io("running referee admin"))?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// The directory of node `i` (configs, logs, state).
    pub fn node_path(&self, i: usize) -> PathBuf {
        self.node_dir(i)
    }

    /// The `referee` binary the pair runs.
    pub fn bin(&self) -> &Path {
        &self.spec.bin
    }

    /// `GET` on node `i`'s agent probe server, as JSON.
    pub async fn agent_json(&self, i: usize, path: &str) -> Option<serde_json::Value> {
        let url = format!("http://{}:{}{path}", self.node_ip(i), self.ports[i].probes);
        self.http.get(url).send().await.ok()?.json().await.ok()
    }

    /// The failover timeline after a fault at `fault` that moved the active role from node
    /// `old` to node `new`: the marks both agents recorded in `/history` (the new one's first
    /// role change to active made after the fault; the old one's role changes made after the
    /// fault, all of them, since a master whose state cannot be read goes from active to
    /// promoting and only then steps down), plus the fault itself and `extra` marks the caller
    /// measured (the first acknowledged write). Waits up to `limit` for the new agent's marks,
    /// which it records at the end of the cycle that promoted.
    pub async fn failover_marks(
        &self,
        old: usize,
        new: usize,
        fault: SystemTime,
        extra: Vec<Mark>,
        limit: Duration,
    ) -> Result<Vec<Mark>, LabError> {
        let fault_ms = fault.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        let marks_of = |history: Option<serde_json::Value>, promoted: bool| -> Vec<Mark> {
            let history = history.unwrap_or_default();
            let Some(all) = history["transitions"].as_array() else { return Vec::new() };
            let after_fault = all.iter().filter(|t| t["at_ms"].as_i64().is_some_and(|at| at >= fault_ms));
            let timeline = |t: &serde_json::Value| serde_json::from_value::<Vec<Mark>>(t["timeline"].clone()).ok();
            if promoted {
                after_fault.into_iter().find(|t| t["to"] == "active").and_then(timeline).unwrap_or_default()
            } else {
                // Each recording is handed to one role change, so none is counted twice.
                after_fault.take_while(|t| t["to"] != "active").filter_map(timeline).flatten().collect()
            }
        };
        let end = Instant::now() + limit;
        let promoted = loop {
            let marks = marks_of(self.agent_json(new, "/history").await, true);
            if !marks.is_empty() {
                break marks;
            }
            if Instant::now() > end {
                return Err(LabError::Timeout(format!(
                    "{}'s /history shows no timeline of its promotion",
                    CLUSTER_NODES[new]
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut marks = vec![Mark::at("fault", timeline::wall_us(fault))];
        marks.extend(
            marks_of(self.agent_json(old, "/history").await, false)
                .into_iter()
                .map(|m| Mark { event: format!("old active's agent: {}", m.event), ..m }),
        );
        marks.extend(promoted.into_iter().map(|m| Mark { event: format!("new active's agent: {}", m.event), ..m }));
        marks.extend(extra);
        Ok(marks)
    }

    /// Master `i`'s role changes from its own log ([`logged_role_changes`]), since it was last
    /// started.
    pub fn master_role_changes(&self, i: usize) -> Vec<LoggedRoleChange> {
        logged_role_changes(&std::fs::read_to_string(&self.masters[i].log).unwrap_or_default())
    }

    /// Checks on the masters' own logs ([`logged_handover`]) that master `old` had left the
    /// active role before master `new` became active under `token`.
    pub fn logged_handover(&self, old: usize, new: usize, token: FencingToken) -> Result<LoggedHandover, LabError> {
        logged_handover(&self.master_role_changes(old), &self.master_role_changes(new), token.0).map_err(|e| {
            LabError::Oracle(format!("master {} to master {}: {e}", CLUSTER_NODES[old], CLUSTER_NODES[new]))
        })
    }

    /// `GET` on master `i`'s HTTP API (`/lease/status`, say), as JSON.
    pub async fn master_json(&self, i: usize, path: &str) -> Option<serde_json::Value> {
        let url = format!("http://{}:{}{path}", self.node_ip(i), self.ports[i].master);
        let response = self.http.get(url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// Switches master `i`'s health check answer (the demo master's `/test/unhealthy` and
    /// `/test/healthy`).
    pub async fn set_master_healthy(&self, i: usize, healthy: bool) -> Result<(), LabError> {
        let which = if healthy { "healthy" } else { "unhealthy" };
        let url = format!("http://{}:{}/test/{which}", self.node_ip(i), self.ports[i].master);
        match self.http.post(url).send().await {
            Ok(r) if r.status().is_success() => Ok(()),
            Ok(r) => Err(LabError::Child(format!("master {} refused /test/{which}: {}", NODES[i], r.status()))),
            Err(e) => Err(LabError::Child(format!("master {} did not take /test/{which}: {e}", NODES[i]))),
        }
    }

    /// Agent `i`'s resident memory now and at its peak, from `/proc/PID/status`.
    pub fn agent_memory(&self, i: usize) -> Option<ResidentMemory> {
        let pid = self.agents.get(i)?.as_ref()?.pid();
        ResidentMemory::of(pid)
    }

    /// Spawns a watcher that polls both `/active` probes every `every` and records any moment
    /// when both answered 200.
    pub fn watch_split_brain(self: &Arc<Self>, every: Duration) -> SplitBrainWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(WatchLog::default()));
        let (pair, stop2, seen2) = (self.clone(), stop.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut none_since: Option<Instant> = None;
            while !stop2.load(Ordering::Relaxed) {
                let actives = pair.actives().await;
                let now = Instant::now();
                {
                    let mut log = seen2.lock().unwrap_or_else(|p| p.into_inner());
                    if actives.len() > 1 {
                        log.both_active_at.push(started.elapsed());
                    }
                    if actives.is_empty() {
                        let since = *none_since.get_or_insert(now);
                        log.longest_without_active = log.longest_without_active.max(now - since);
                    } else {
                        none_since = None;
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
        SplitBrainWatch { stop, seen, tasks: vec![task] }
    }
}

/// A process's resident memory (`VmRSS`, `VmHWM`, `RssAnon`, `RssFile` in `/proc/PID/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidentMemory {
    /// Resident now, in KiB.
    pub rss_kib: u64,
    /// The peak resident size, in KiB.
    pub peak_kib: u64,
    /// Of `rss_kib`, anonymous memory (heap, stacks): the process's own.
    pub anon_kib: u64,
    /// Of `rss_kib`, pages of mapped files (the executable's code, libraries), shared with
    /// every process that maps the same files.
    pub file_kib: u64,
}

impl ResidentMemory {
    /// Reads it for `pid`; `None` if the process is gone or the kernel shows no such lines.
    pub fn of(pid: u32) -> Option<ResidentMemory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        };
        Some(ResidentMemory {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
            anon_kib: field("RssAnon:")?,
            file_kib: field("RssFile:")?,
        })
    }
}

/// Now on `CLOCK_BOOTTIME`, in microseconds: the clock the demo masters state their leases on
/// (`writable_until_boot_us` in their `/lease/status`).
pub fn boot_us() -> u64 {
    use referee_failover_agent::clock::BootInstant;
    BootInstant::now().saturating_since(BootInstant::from_origin(Duration::ZERO)).as_micros() as u64
}

/// The load averages over 1, 5 and 15 minutes, as `/proc/loadavg` shows them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// How the oracles reach one master: its `/ha/state` and `/write` on the lab's HTTP client.
/// It holds no part of the [`Pair`], so an oracle running beside a scenario neither keeps the
/// pair's processes alive nor stops the scenario from changing the pair (restarting an agent
/// through [`Arc::get_mut`], say).
#[derive(Clone)]
struct MasterEndpoint {
    http: reqwest::Client,
    state_url: String,
    write_url: String,
}

impl MasterEndpoint {
    /// Writes `key = value` (under the client's `write_id`, if any); returns the token the
    /// master acknowledged it under, or its refusal or the error.
    async fn write(&self, key: &str, value: &str, write_id: Option<&str>) -> Result<u64, String> {
        let mut body = serde_json::json!({"key": key, "value": value});
        if let Some(id) = write_id {
            body["write_id"] = id.into();
        }
        match self.http.post(&self.write_url).json(&body).send().await {
            Ok(r) if r.status().is_success() => {
                let v: serde_json::Value = r.json().await.map_err(|e| format!("unreadable acknowledgement: {e}"))?;
                v["token"].as_u64().ok_or_else(|| format!("an acknowledgement without a token: {v}"))
            }
            Ok(r) => Err(format!("{}: {}", r.status(), r.text().await.unwrap_or_default())),
            Err(e) => Err(e.to_string()),
        }
    }

    /// `GET /ha/state`: what the master says it is, or `None` without an answer.
    async fn state(&self) -> Option<HaStatus> {
        match self.http.get(&self.state_url).send().await {
            Ok(r) if r.status().is_success() => r.json::<HaStatus>().await.ok(),
            _ => None,
        }
    }
}

/// Writes to every master, each in its own loop as fast as it answers (so a master that times
/// out never slows the sampling of the other), and records every acknowledgement with its
/// request's send time, its reply's receive time and its token: the ground truth of split
/// brain is a master acknowledging a write sent after another had acknowledged one under a
/// higher token, judged as [`MasterRecord::late_acks`] judges it.
pub struct WriteProbe {
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<MasterRecord>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl WriteProbe {
    /// Starts writing, to every master of the pair.
    pub fn start(pair: &Pair) -> WriteProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Mutex::new(MasterRecord::default()));
        let started = Instant::now();
        let probe = WRITERS.fetch_add(1, Ordering::Relaxed);
        let tasks = (0..pair.node_count())
            .map(|node| {
                let ids = format!("probe{probe}-{}", CLUSTER_NODES[node]);
                spawn_writer(pair.master_endpoint(node), node, "probe", ids, stop.clone(), record.clone(), started)
            })
            .collect();
        WriteProbe { stop, record, tasks }
    }

    /// Stops writing; returns the acknowledgements (a record with no `/ha/state` answers).
    pub async fn finish(mut self) -> MasterRecord {
        stop_loops(&self.stop, &mut self.tasks).await;
        let record = self.record.lock().unwrap_or_else(|p| p.into_inner());
        record.clone()
    }
}

/// Dropped without [`WriteProbe::finish`] (a scenario that failed on the way), the writers stop
/// where they are.
impl Drop for WriteProbe {
    fn drop(&mut self) {
        abort_loops(&self.stop, &mut self.tasks);
    }
}

/// Tells loops to stop and waits for each to finish its iteration.
async fn stop_loops(stop: &AtomicBool, tasks: &mut Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for t in std::mem::take(tasks) {
        let _ = t.await;
    }
}

/// Tells loops to stop and cancels them where they are, for a drop: a loop must not outlive
/// the scenario it watches (and a [`SplitBrainWatch`]'s holds the pair, which must not outlive
/// its owner).
fn abort_loops(stop: &AtomicBool, tasks: &mut Vec<tokio::task::JoinHandle<()>>) {
    stop.store(true, Ordering::Relaxed);
    for t in std::mem::take(tasks) {
        t.abort();
    }
}

/// Numbers the writers of one process, so their write ids never collide.
static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Writes `key` to master `node` (at `master`) as fast as it answers until `stop`, each write
/// under the id `{ids}-{n}`; pushes every acknowledgement to `record` (its send and receive
/// times since `started`, its token, and its write id for a journal verdict).
fn spawn_writer(
    master: MasterEndpoint,
    node: usize,
    key: &'static str,
    ids: String,
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<MasterRecord>>,
    started: Instant,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let sent = started.elapsed();
            let id = format!("{ids}-{n}");
            if let Ok(token) = master.write(key, &id, Some(&id)).await {
                let received = started.elapsed();
                let seen = Observed { node, sent, received, what: token };
                let mut record = record.lock().unwrap_or_else(|p| p.into_inner());
                record.acks.push(seen);
                record.acked.push(AckRecord { write_id: id, token: FencingToken(token) });
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
}

/// What a [`SplitBrainWatch`] saw.
#[derive(Debug, Clone, Default)]
pub struct WatchLog {
    /// Times (since the watch started) at which two nodes answered `/active` with 200.
    pub both_active_at: Vec<Duration>,
    /// The longest stretch with no node answering 200.
    pub longest_without_active: Duration,
}

/// Watches a pair's `/active` probes for two simultaneous actives and for gaps with none.
pub struct SplitBrainWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<WatchLog>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl SplitBrainWatch {
    /// Stops watching and returns what it saw.
    pub async fn finish(mut self) -> WatchLog {
        stop_loops(&self.stop, &mut self.tasks).await;
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.clone()
    }
}

/// Dropped without [`SplitBrainWatch::finish`], the watch stops and lets go of the pair.
impl Drop for SplitBrainWatch {
    fn drop(&mut self) {
        abort_loops(&self.stop, &mut self.tasks);
    }
}

/// One answer of master `node` and when the question was sent and the answer received, both
/// since the oracle started: whatever the answer says held at some instant in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed<T> {
    /// The master, `0` for `a`.
    pub node: usize,
    /// When the request was sent.
    pub sent: Duration,
    /// When the answer arrived.
    pub received: Duration,
    /// What it said.
    pub what: T,
}

/// A master's role changing between two of its `/ha/state` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoleChange {
    /// The master.
    pub node: usize,
    /// What it reported before.
    pub from: HaStatus,
    /// What it reported after.
    pub to: HaStatus,
    /// The change happened after this (the send time of the last answer showing `from`).
    pub after: Duration,
    /// ... and no later than this (the receive time of the first answer showing `to`).
    pub by: Duration,
}

/// A write a master acknowledged, with the lower token, after another master had already
/// acknowledged one with a higher token: the deposed master still taking writes beside its
/// successor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LateAck {
    /// The stale acknowledgement (its request was sent after `successor` was received).
    pub stale: Observed<u64>,
    /// The successor's first acknowledgement under its token.
    pub successor: Observed<u64>,
}

/// What the masters themselves said during a scenario: every `/ha/state` answer and every
/// acknowledged write, from each, in the order received.
#[derive(Debug, Clone, Default)]
pub struct MasterRecord {
    /// Answers to `GET /ha/state`.
    pub states: Vec<Observed<HaStatus>>,
    /// Acknowledged writes, with the token each was acknowledged under.
    pub acks: Vec<Observed<u64>>,
    /// The same acknowledgements by write id, for a journal verdict
    /// ([`referee_examples::verdict::verify`]) when the masters journal their edits.
    pub acked: Vec<AckRecord>,
}

impl MasterRecord {
    /// The answers of master `node`, in order.
    fn states_of(&self, node: usize) -> impl Iterator<Item = &Observed<HaStatus>> {
        self.states.iter().filter(move |o| o.node == node)
    }

    /// The masters the record has answers or acknowledgements of: `0` up to the highest.
    fn nodes(&self) -> std::ops::Range<usize> {
        let highest = self.states.iter().map(|o| o.node).chain(self.acks.iter().map(|a| a.node)).max();
        0..highest.map_or(0, |n| n + 1)
    }

    /// Every change of a master's reported role or token.
    pub fn role_changes(&self) -> Vec<RoleChange> {
        let mut changes = Vec::new();
        for node in self.nodes() {
            let polls: Vec<_> = self.states_of(node).collect();
            for w in polls.windows(2) {
                if w[0].what != w[1].what {
                    changes.push(RoleChange {
                        node,
                        from: w[0].what,
                        to: w[1].what,
                        after: w[0].sent,
                        by: w[1].received,
                    });
                }
            }
        }
        changes.sort_by_key(|c| c.by);
        changes
    }

    /// Stretches in which master `node` was certainly active: through a run of consecutive
    /// answers saying active under the same token it was active from the first's receipt to
    /// the last's sending (a master does not leave the role and regain it under the same token
    /// between polls a few milliseconds apart).
    pub fn certainly_active(&self, node: usize) -> Vec<(Duration, Duration, FencingToken)> {
        let mut stretches = Vec::new();
        let mut run: Option<(&Observed<HaStatus>, &Observed<HaStatus>)> = None;
        for poll in self.states_of(node) {
            run = match run {
                Some((first, _)) if poll.what.state == HaState::Active && poll.what == first.what => {
                    Some((first, poll))
                }
                _ => {
                    if let Some((first, last)) = run.filter(|(f, l)| f.received < l.sent) {
                        stretches.push((first.received, last.sent, first.what.token));
                    }
                    (poll.what.state == HaState::Active).then_some((poll, poll))
                }
            };
        }
        if let Some((first, last)) = run.filter(|(f, l)| f.received < l.sent) {
            stretches.push((first.received, last.sent, first.what.token));
        }
        stretches
    }

    /// Stretches in which two masters (of a pair, both) were certainly active at once.
    pub fn both_active(&self) -> Vec<(Duration, Duration)> {
        self.two_active().into_iter().map(|(_, _, from, to)| (from, to)).collect()
    }

    /// As [`MasterRecord::both_active`], each stretch with the two masters: (one, other, from,
    /// to).
    fn two_active(&self) -> Vec<(usize, usize, Duration, Duration)> {
        let stretches: Vec<_> = self.nodes().map(|node| self.certainly_active(node)).collect();
        let mut both = Vec::new();
        for (one, a) in stretches.iter().enumerate() {
            for (other, b) in stretches.iter().enumerate().skip(one + 1) {
                for &(a_from, a_to, _) in a {
                    for &(b_from, b_to, _) in b {
                        let (from, to) = (a_from.max(b_from), a_to.min(b_to));
                        if from < to {
                            both.push((one, other, from, to));
                        }
                    }
                }
            }
        }
        both
    }

    /// Every acknowledgement sent after another master had acknowledged a write under a higher
    /// token (or, under the same token, at any time: one token is one master's).
    pub fn late_acks(&self) -> Vec<LateAck> {
        // Each master's first acknowledgement under each token.
        let mut firsts: Vec<Observed<u64>> = Vec::new();
        for ack in &self.acks {
            match firsts.iter_mut().find(|f| f.node == ack.node && f.what == ack.what) {
                Some(f) if ack.received < f.received => *f = *ack,
                Some(_) => {}
                None => firsts.push(*ack),
            }
        }
        let mut late = Vec::new();
        for ack in &self.acks {
            let successor = firsts
                .iter()
                .filter(|f| f.node != ack.node)
                .filter(|f| f.what == ack.what || (f.what > ack.what && f.received < ack.sent))
                .min_by_key(|f| f.received);
            if let Some(successor) = successor {
                late.push(LateAck { stale: *ack, successor: *successor });
            }
        }
        late
    }

    /// Time of the first `/ha/state` answer showing master `node` active under a token other
    /// than `not`, with the send time of the answer before it: the promotion happened in
    /// between.
    pub fn promoted(&self, node: usize, not: Option<FencingToken>) -> Option<RoleChange> {
        self.role_changes()
            .into_iter()
            .find(|c| c.node == node && c.to.state == HaState::Active && Some(c.to.token) != not)
    }

    /// The first change of master `node` out of the active role.
    pub fn demoted(&self, node: usize) -> Option<RoleChange> {
        self.role_changes().into_iter().find(|c| c.node == node && c.from.state == HaState::Active)
    }

    /// Checks that master `node` was seen promoted after `after` (its first promotion received
    /// later): the proof that an oracle which found it never active before then would have seen
    /// it if it had been.
    pub fn promoted_after(&self, node: usize, after: Duration) -> Result<RoleChange, LabError> {
        match self.promoted(node, None) {
            Some(c) if c.by > after => Ok(c),
            promoted => Err(LabError::Oracle(format!(
                "master {} was not seen promoted after {:.1} ms: {promoted:?}\n{}",
                CLUSTER_NODES[node],
                after.as_secs_f64() * 1000.0,
                self.timeline()
            ))),
        }
    }

    /// Checks that master `node` was not active and took no write from `from` to `to`: none of
    /// its answers asked and received in that stretch says active, and it acknowledged no write
    /// sent and acknowledged in it (an answer or an acknowledgement straddling an end may belong
    /// outside). Returns how many of its answers the stretch holds; fails if it holds none, as
    /// a master nobody heard from was checked for nothing.
    pub fn check_not_active(&self, node: usize, from: Duration, to: Duration) -> Result<usize, LabError> {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let name = CLUSTER_NODES[node];
        let inside = |sent: Duration, received: Duration| sent >= from && received <= to;
        let stretch = format!("from {:.1} to {:.1} ms", ms(from), ms(to));
        let fail = |what: String| LabError::Oracle(format!("{what}\n{}", self.timeline()));
        let answers: Vec<&Observed<HaStatus>> = self.states_of(node).filter(|o| inside(o.sent, o.received)).collect();
        if let Some(active) = answers.iter().find(|o| o.what.state == HaState::Active) {
            return Err(fail(format!(
                "master {name} answered active under token {} (asked at {:.1} ms, answered at {:.1} ms), in the \
                 stretch {stretch} in which it must not be",
                active.what.token,
                ms(active.sent),
                ms(active.received)
            )));
        }
        let acks: Vec<&Observed<u64>> =
            self.acks.iter().filter(|a| a.node == node && inside(a.sent, a.received)).collect();
        if let Some(first) = acks.first() {
            return Err(fail(format!(
                "master {name} acknowledged {} writes {stretch}, in which it must not be active, the first under token \
                 {} at {:.1} ms",
                acks.len(),
                first.what,
                ms(first.received)
            )));
        }
        if answers.is_empty() {
            return Err(fail(format!("master {name} gave no answer {stretch}: nothing shows what it was")));
        }
        Ok(answers.len())
    }

    /// The last change of master `node` out of the active role: from its last answer saying
    /// active to the answer after it. `None` if it never answered active, or if its last answer
    /// still says active.
    pub fn last_demoted(&self, node: usize) -> Option<RoleChange> {
        let polls: Vec<&Observed<HaStatus>> = self.states_of(node).collect();
        let last = polls.iter().rposition(|o| o.what.state == HaState::Active)?;
        let next = polls.get(last + 1)?;
        Some(RoleChange { node, from: polls[last].what, to: next.what, after: polls[last].sent, by: next.received })
    }

    /// Checks that master `node` had left the active role for good before `deadline` (the
    /// earliest instant its agent's session can have expired, say) and returns that step-down,
    /// its last ([`MasterRecord::last_demoted`]): a master demoted in time and then promoted
    /// again under its old token (its agent cut off from the coordinator all along) is as
    /// active as one never demoted. Fails if any answer of `node` received after `deadline`
    /// says active, or if the last step-down is not certainly before it (the first answer after
    /// it received by then).
    pub fn left_active_before(&self, node: usize, deadline: Duration) -> Result<RoleChange, LabError> {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let name = CLUSTER_NODES[node];
        let fail = |what: String| LabError::Oracle(format!("{what}\n{}", self.timeline()));
        let polls: Vec<&Observed<HaStatus>> = self.states_of(node).collect();
        if let Some(late) = polls.iter().find(|o| o.what.state == HaState::Active && o.received > deadline) {
            return Err(fail(format!(
                "master {name} answered active at {:.1} ms (under token {}), after the deadline of {:.1} ms: it was \
                 active when its agent could already have lost the lock, and may have served beside a successor",
                ms(late.received),
                late.what.token,
                ms(deadline)
            )));
        }
        let Some(demoted) = self.last_demoted(node) else {
            return Err(fail(if polls.last().is_some_and(|o| o.what.state == HaState::Active) {
                format!("master {name} was still active at its last answer")
            } else {
                format!("master {name} never answered active: nothing to check")
            }));
        };
        if demoted.by >= deadline {
            return Err(fail(format!(
                "master {name} left the active role for the last time by {:.1} ms, not certainly before {:.1} ms",
                ms(demoted.by),
                ms(deadline)
            )));
        }
        Ok(demoted)
    }

    /// The scenario as the masters told it: role changes, and per master and token how many
    /// writes were acknowledged from when to when; then the first and last late
    /// acknowledgement and how many there were.
    pub fn timeline(&self) -> String {
        let ms = |d: Duration| format!("{:>9.1} ms", d.as_secs_f64() * 1000.0);
        let name = |s: HaStatus| {
            let role = match s.state {
                HaState::Active => "active",
                HaState::Standby => "standby",
                HaState::Initializing => "initializing",
            };
            format!("{role} (token {})", s.token)
        };
        let mut lines: Vec<(Duration, String)> = Vec::new();
        for c in self.role_changes() {
            lines.push((
                c.by,
                format!(
                    "{}  master {} /ha/state: {} -> {} (changed after {})",
                    ms(c.by),
                    CLUSTER_NODES[c.node],
                    name(c.from),
                    name(c.to),
                    ms(c.after).trim()
                ),
            ));
        }
        let mut runs: Vec<(usize, u64, Duration, Duration, usize)> = Vec::new();
        for a in &self.acks {
            match runs.iter_mut().find(|r| r.0 == a.node && r.1 == a.what) {
                Some(r) => {
                    r.3 = r.3.max(a.received);
                    r.4 += 1;
                }
                None => runs.push((a.node, a.what, a.received, a.received, 1)),
            }
        }
        for (node, token, first, last, n) in runs {
            lines.push((
                first,
                format!(
                    "{}  master {} acknowledged {n} writes under token {token}, the last at {}",
                    ms(first),
                    CLUSTER_NODES[node],
                    ms(last).trim()
                ),
            ));
        }
        lines.sort_by_key(|l| l.0);
        let mut out: Vec<String> = lines.into_iter().map(|l| l.1).collect();
        let late = self.late_acks();
        if let (Some(first), Some(last)) = (late.first(), late.last()) {
            out.push(format!(
                "{} late acknowledgements: master {} acknowledged writes under token {} from {} to {} \
                 (requests sent after master {} had acknowledged one under token {} at {})",
                late.len(),
                CLUSTER_NODES[first.stale.node],
                first.stale.what,
                ms(first.stale.received).trim(),
                ms(last.stale.received).trim(),
                CLUSTER_NODES[first.successor.node],
                first.successor.what,
                ms(first.successor.received).trim()
            ));
        }
        for (one, other, from, to) in self.two_active() {
            out.push(format!(
                "masters {} and {} both reported active from {} to {}",
                CLUSTER_NODES[one],
                CLUSTER_NODES[other],
                ms(from).trim(),
                ms(to).trim()
            ));
        }
        out.join("\n")
    }

    /// Fails, with the timeline, if both masters were ever certainly active at once or a master
    /// acknowledged a write after another had acknowledged one under a higher token.
    pub fn check(&self) -> Result<(), LabError> {
        let both = self.both_active();
        let late = self.late_acks();
        if both.is_empty() && late.is_empty() {
            return Ok(());
        }
        Err(LabError::Oracle(format!(
            "split brain seen by the masters themselves ({} stretches with two actives, {} late acknowledgements):\n{}",
            both.len(),
            late.len(),
            self.timeline()
        )))
    }
}

/// Asks every master of the pair directly, each in its own loop so a slow one never delays
/// another: its `/ha/state` every 2 ms, and a write as fast as it answers. The record is the
/// ground truth a probe cannot give: what each master said about itself and which writes it
/// took. It holds no part of the pair ([`MasterEndpoint`]), so it may run across a change of
/// the pair's processes.
pub struct MasterOracle {
    stop: Arc<AtomicBool>,
    record: Arc<Mutex<MasterRecord>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    started: Instant,
}

impl MasterOracle {
    /// Starts asking.
    pub fn start(pair: &Pair) -> MasterOracle {
        let stop = Arc::new(AtomicBool::new(false));
        let record = Arc::new(Mutex::new(MasterRecord::default()));
        let started = Instant::now();
        let oracle = WRITERS.fetch_add(1, Ordering::Relaxed);
        let mut tasks = Vec::new();
        for (node, name) in CLUSTER_NODES.iter().enumerate().take(pair.node_count()) {
            let master = pair.master_endpoint(node);
            let (stop2, record2, master2) = (stop.clone(), record.clone(), master.clone());
            tasks.push(tokio::spawn(async move {
                while !stop2.load(Ordering::Relaxed) {
                    let sent = started.elapsed();
                    if let Some(what) = master2.state().await {
                        let received = started.elapsed();
                        let seen = Observed { node, sent, received, what };
                        record2.lock().unwrap_or_else(|p| p.into_inner()).states.push(seen);
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
            let ids = format!("oracle{oracle}-{name}");
            tasks.push(spawn_writer(master, node, "oracle", ids, stop.clone(), record.clone(), started));
        }
        MasterOracle { stop, record, tasks, started }
    }

    /// Time since the oracle started, on the record's clock.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Waits until the record so far satisfies `cond`, checking every 10 ms; returns that
    /// record. On timeout the error names `what` and carries the masters' timeline and
    /// `context()` (the caller's logs, say).
    pub async fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        cond: impl Fn(&MasterRecord) -> bool,
        context: impl Fn() -> String,
    ) -> Result<MasterRecord, LabError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let record = self.snapshot();
            if cond(&record) {
                return Ok(record);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(LabError::Timeout(format!(
                    "timed out after {limit:?} waiting for {what}\n--- masters ---\n{}\n{}",
                    record.timeline(),
                    context()
                )));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A copy of what has been recorded so far.
    pub fn snapshot(&self) -> MasterRecord {
        self.record.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops asking; returns the record.
    pub async fn finish(mut self) -> MasterRecord {
        stop_loops(&self.stop, &mut self.tasks).await;
        let record = self.record.lock().unwrap_or_else(|p| p.into_inner());
        record.clone()
    }
}

/// Dropped without [`MasterOracle::finish`] (a scenario that failed on the way), the oracle
/// stops asking where it is.
impl Drop for MasterOracle {
    fn drop(&mut self) {
        abort_loops(&self.stop, &mut self.tasks);
    }
}

/// A role change as a demo master logged it itself: the wall-clock instant stamped on the line
/// and the role it went to. The master changes its role and logs the line holding the one lock
/// that its writes and its `/ha/state` answers take, so a promotion's line is stamped before
/// anyone can see the master active or have a write taken under the new role, and a
/// step-down's after the last write it took as active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedRoleChange {
    /// Microseconds since the Unix epoch, as stamped on the line. Every process of the lab, on
    /// a simulated host or not, reads the one system clock.
    pub at_us: i64,
    /// The role it went to.
    pub to: HaState,
    /// The token named on the line (for a promotion, the one it became active under).
    pub token: Option<u64>,
    /// The line.
    pub line: String,
}

/// The role changes a demo master logged, in order: `became active`, and every way it leaves
/// the active role (`became standby`; with a journal, `stepped down`, `deposed` and a refused
/// promotion, each of which leaves it standby).
pub fn logged_role_changes(log: &str) -> Vec<LoggedRoleChange> {
    const TARGET: &str = " referee_examples::ha_master: ";
    const STEP_DOWNS: [&str; 4] = ["became standby", "stepped down", "deposed: ", "promotion refused"];
    log.lines()
        .filter_map(|line| {
            let (_, message) = line.split_once(TARGET)?;
            let to = if message.starts_with("became active") {
                HaState::Active
            } else if STEP_DOWNS.iter().any(|m| message.starts_with(m)) {
                HaState::Standby
            } else {
                return None;
            };
            let at_us = log_stamp_us(line.split_whitespace().next()?)?;
            let token = message.split_whitespace().find_map(|w| w.strip_prefix("token=")?.parse().ok());
            Some(LoggedRoleChange { at_us, to, token, line: line.to_string() })
        })
        .collect()
}

/// A log line's stamp, `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC), as microseconds since the Unix
/// epoch.
pub fn log_stamp_us(stamp: &str) -> Option<i64> {
    let (date, time) = stamp.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(str::parse::<i64>);
    let (year, month, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hour, minute) = (t.next()?.parse::<i64>().ok()?, t.next()?.parse::<i64>().ok()?);
    let seconds = t.next()?;
    let (secs, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
    let secs = secs.parse::<i64>().ok()?;
    let digits: String = fraction.chars().chain(std::iter::repeat('0')).take(6).collect();
    let micros = digits.parse::<i64>().ok()?;
    // Days since the epoch of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some((days * 86_400 + hour * 3600 + minute * 60 + secs) * 1_000_000 + micros)
}

/// A handover as two masters' own logs tell it: when the old one left the active role, and
/// when the new one became active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedHandover {
    /// The old master's first step-down after its last promotion before `promoted_us`, in
    /// microseconds since the Unix epoch.
    pub demoted_us: i64,
    /// The new master's promotion under the token asked about.
    pub promoted_us: i64,
}

impl LoggedHandover {
    /// How long before the promotion the old master had stepped down.
    pub fn margin_ms(&self) -> f64 {
        (self.promoted_us - self.demoted_us) as f64 / 1000.0
    }
}

/// Checks, on two masters' own logs, that the old master had left the active role before the
/// new one became active under `token` and did not come back: the old one's last role change
/// logged before the promotion is a step-down, after a promotion of its own, and it logged no
/// promotion under a token up to `token` from the new one's on. Fails, saying which, if the new
/// master logged no promotion under `token`, if the old one logged no active period before it
/// (nothing to have fenced), if it was still active by its own log, or if it became active
/// again.
pub fn logged_handover(
    old: &[LoggedRoleChange],
    new: &[LoggedRoleChange],
    token: u64,
) -> Result<LoggedHandover, String> {
    let promoted = new
        .iter()
        .find(|c| c.to == HaState::Active && c.token == Some(token))
        .ok_or_else(|| format!("the new master logged no promotion under token {token}"))?;
    let before: Vec<&LoggedRoleChange> = old.iter().take_while(|c| c.at_us < promoted.at_us).collect();
    let last_active = before
        .iter()
        .rposition(|c| c.to == HaState::Active)
        .ok_or_else(|| "the old master logged no promotion before the new one's: nothing to check".to_string())?;
    let demoted = before[last_active + 1..].iter().find(|c| c.to == HaState::Standby).ok_or_else(|| {
        format!(
            "the old master was still active by its own log when the new one became active under token {token}:\n  \
             old: {}\n  new: {}",
            before[last_active].line, promoted.line
        )
    })?;
    // Stopped is not enough: it must stay stopped. A promotion under a token no higher than
    // the new master's, at or after the new one's, is the old term (or the new one's) come
    // back beside the new master, whether or not it stepped down again before anyone looked.
    if let Some(back) = old
        .iter()
        .find(|c| c.at_us >= promoted.at_us && c.to == HaState::Active && c.token.map_or(true, |t| t <= token))
    {
        return Err(format!(
            "the old master became active again by its own log, at or after the new one became active under token \
             {token}:\n  new: {}\n  old: {}",
            promoted.line, back.line
        ));
    }
    Ok(LoggedHandover { demoted_us: demoted.at_us, promoted_us: promoted.at_us })
}

/// `extra` merged into `base`: mappings key by key (so `election: {preferred_node: a}` adds to
/// the generated `election` section), anything else replaced.
fn merge_yaml(base: &str, extra: &str) -> Result<String, LabError> {
    fn merge(into: &mut serde_yaml::Value, from: serde_yaml::Value) {
        match (into, from) {
            (serde_yaml::Value::Mapping(a), serde_yaml::Value::Mapping(b)) => {
                for (k, v) in b {
                    match a.get_mut(&k) {
                        Some(slot) => merge(slot, v),
                        None => {
                            a.insert(k, v);
                        }
                    }
                }
            }
            (slot, v) => *slot = v,
        }
    }
    let parse = |text: &str, what: &str| {
        serde_yaml::from_str::<serde_yaml::Value>(text).map_err(|e| LabError::Child(format!("{what} YAML: {e}")))
    };
    let mut merged = parse(base, "the generated agent")?;
    if !extra.trim().is_empty() {
        merge(&mut merged, parse(extra, "the extra agent")?);
    }
    serde_yaml::to_string(&merged).map_err(|e| LabError::Child(format!("agent YAML: {e}")))
}

/// Starts the coordinator on `port`; `start` numbers its log (the first start is 1).
/// Starts coordinator server `k` of `ports` (server `k + 1` of an ensemble), the `start`th
/// coordinator start of the pair; `init` makes it initialise a new ensemble (server 1's first
/// start only).
fn start_coordinator(
    spec: &PairSpec,
    dir: &Path,
    ports: &[CoordinatorPorts],
    k: usize,
    start: usize,
    init: bool,
    placement: &Placement,
) -> Result<Proc, LabError> {
    let ip = placement.ip(Role::Coordinator(k));
    let port = ports[k].client;
    let addr = format!("{ip}:{port}");
    let log = if start == 1 { String::new() } else { format!("-{start}") };
    let cdir = dir.join("coordinator");
    std::fs::create_dir_all(&cdir).map_err(io("creating the coordinator directory"))?;
    match spec.coordinator {
        CoordinatorKind::BundledEnsemble | CoordinatorKind::BundledEnsembleWithObservers => {
            let tick = spec.timings.tick_ms.min(1000);
            let voters = spec.coordinator.servers();
            let servers: String = ports
                .iter()
                .enumerate()
                .map(|(j, p)| {
                    let host = placement.ip(Role::Coordinator(j));
                    format!(
                        "  - {{ id: {}, client: \"{host}:{}\", peer: \"{host}:{}\", role: {} }}\n",
                        j + 1,
                        p.client,
                        p.peer,
                        if j < voters { "voter" } else { "observer" }
                    )
                })
                .collect();
            let id = k + 1;
            let cfg = format!(
                "listen: {addr}\ndata_dir: {}\ncluster_id: 7\nserver_id: {id}\ntick_ms: {tick}\nmin_session_timeout_ms: {}\n\
                 max_session_timeout_ms: 60000\nmax_connections_per_address: 0\nservers:\n{servers}",
                cdir.join(format!("data{id}")).display(),
                (tick * 2).min(spec.timings.session_timeout_ms),
            );
            let path = cdir.join(format!("coordinator{id}.yaml"));
            std::fs::write(&path, cfg).map_err(io("writing a coordinator server's config"))?;
            let mut args = vec!["coordinator".into(), "--config".into(), path.display().to_string()];
            if init {
                args.push("--init".into());
            }
            placement.spawn(
                Role::Coordinator(k),
                &format!("coordinator server {id}"),
                &spec.bin,
                &args,
                // The leader's session expiries at debug: the fault report's phase breakdown
                // reads them.
                &[("REFEREE_LOG", "info,openraft=warn,referee_coordinator::server=debug".into())],
                cdir.join(format!("coordinator{id}{log}.log")),
            )
        }
        CoordinatorKind::Bundled => {
            let cfg = format!(
                "listen: {addr}\ndata_dir: {}\ntick_ms: {}\nmin_session_timeout_ms: {}\nmax_session_timeout_ms: 60000\n",
                cdir.join("data").display(),
                spec.timings.tick_ms.min(1000),
                (spec.timings.tick_ms.min(1000) * 2).min(spec.timings.session_timeout_ms),
            );
            let path = cdir.join("coordinator.yaml");
            std::fs::write(&path, cfg).map_err(io("writing the coordinator config"))?;
            let p = placement.spawn(
                Role::Coordinator(k),
                "coordinator",
                &spec.bin,
                &["coordinator".into(), "--config".into(), path.display().to_string()],
                &[("REFEREE_LOG", "info".into())],
                cdir.join(format!("coordinator{log}.log")),
            )?;
            Ok(p)
        }
        CoordinatorKind::ApacheEnsemble { max_session_ms } => {
            let tick = spec.timings.tick_ms.min(1000);
            let id = k + 1;
            let servers: String = ports
                .iter()
                .enumerate()
                .map(|(j, p)| {
                    format!("server.{}={}:{}:{}\n", j + 1, placement.ip(Role::Coordinator(j)), p.peer, p.election)
                })
                .collect();
            let data = cdir.join(format!("data{id}"));
            std::fs::create_dir_all(&data).map_err(io("creating the data directory"))?;
            std::fs::write(data.join("myid"), format!("{id}\n")).map_err(io("writing myid"))?;
            let cfg = format!(
                "tickTime={tick}\ninitLimit=10\nsyncLimit={APACHE_SYNC_LIMIT}\ndataDir={}\nclientPort={port}\n\
                 clientPortAddress={ip}\nadmin.enableServer=false\n4lw.commands.whitelist=*\nforceSync=no\n\
                 maxClientCnxns=0\nminSessionTimeout={}\nmaxSessionTimeout={}\n{servers}",
                data.display(),
                (tick * 2).min(spec.timings.session_timeout_ms),
                max_session_ms[k],
            );
            let path = cdir.join(format!("zoo{id}.cfg"));
            std::fs::write(&path, cfg).map_err(io("writing zoo.cfg"))?;
            let logs = cdir.join(format!("zk{id}"));
            std::fs::create_dir_all(&logs).map_err(io("creating a log directory"))?;
            placement.spawn(
                Role::Coordinator(k),
                &format!("apache zookeeper server {id}"),
                &Path::new(referee_testkit::APACHE_ZK_BIN).join("zkServer.sh"),
                &["start-foreground".into(), path.display().to_string()],
                &[("ZOO_LOG_DIR", logs.display().to_string())],
                cdir.join(format!("zookeeper{id}{log}.log")),
            )
        }
        CoordinatorKind::ApacheZooKeeper => {
            let tick = spec.timings.tick_ms.min(1000);
            let cfg = format!(
                "tickTime={tick}\ndataDir={}\nclientPort={port}\nclientPortAddress={ip}\nadmin.enableServer=false\n\
                 4lw.commands.whitelist=*\nforceSync=no\nmaxClientCnxns=0\nminSessionTimeout={}\nmaxSessionTimeout=60000\n",
                cdir.join("data").display(),
                (tick * 2).min(spec.timings.session_timeout_ms)
            );
            let path = cdir.join("zoo.cfg");
            std::fs::create_dir_all(cdir.join("data")).map_err(io("creating the data directory"))?;
            std::fs::write(&path, cfg).map_err(io("writing zoo.cfg"))?;
            let env: HashMap<&str, String> = HashMap::from([("ZOO_LOG_DIR", cdir.display().to_string())]);
            let p = placement.spawn(
                Role::Coordinator(k),
                "apache zookeeper",
                &Path::new(referee_testkit::APACHE_ZK_BIN).join("zkServer.sh"),
                &["start-foreground".into(), path.display().to_string()],
                &env.into_iter().collect::<Vec<_>>(),
                cdir.join(format!("zookeeper{log}.log")),
            )?;
            Ok(p)
        }
    }
}

/// How long one connect of a wait may take.
const CONNECT_ATTEMPT: Duration = Duration::from_secs(1);

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: &str, limit: Duration, what: &str) -> Result<(), LabError> {
    let deadline = Instant::now() + limit;
    loop {
        // One attempt bounded too: a host that drops SYNs holds a connect for minutes.
        if let Ok(Ok(_)) = tokio::time::timeout(CONNECT_ATTEMPT, tokio::net::TcpStream::connect(addr)).await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout(format!("{what} did not listen on {addr} within {limit:?}")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the coordinator (ours or Apache's) answers `srvr` with a `Mode:` line: Apache
/// ZooKeeper accepts connections before it serves sessions.
pub async fn wait_for_serving(addr: &str, limit: Duration) -> Result<(), LabError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Ok(mut s)) = tokio::time::timeout(CONNECT_ATTEMPT, tokio::net::TcpStream::connect(addr)).await {
            let mut out = String::new();
            if s.write_all(b"srvr").await.is_ok()
                && tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut out)).await.is_ok()
                && out.contains("Mode: ")
            {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(LabError::Timeout(format!("the coordinator on {addr} was not serving within {limit:?}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a test can run against `kind`; when it cannot, the test is
/// [`skip`](referee_testkit::skip)ped loudly, or fails when `CI` or `REFEREE_REQUIRE_ALL_TESTS`
/// is set.
pub fn coordinator_available(kind: CoordinatorKind, test: &str) -> bool {
    if kind.is_apache() && !apache_zookeeper_installed() {
        referee_testkit::skip(&format!("{test} against Apache ZooKeeper"), referee_testkit::APACHE_ZK_MISSING);
        return false;
    }
    true
}

/// The oracles of a scenario: both `/active` probes polled every 5 ms, and a [`WriteProbe`]
/// writing to both masters.
pub struct Oracles {
    probes: SplitBrainWatch,
    writes: WriteProbe,
}

impl Oracles {
    /// Starts both.
    pub fn start(pair: &Arc<Pair>) -> Oracles {
        Oracles { probes: pair.watch_split_brain(Duration::from_millis(5)), writes: WriteProbe::start(pair) }
    }

    /// Stops both and checks them: never two actives, no late acknowledgement
    /// ([`MasterRecord::late_acks`]), and no stretch without an active longer than `budget`.
    pub async fn check(self, budget: Duration) -> Result<(), LabError> {
        self.verdict(budget).await.map(|_| ())
    }

    /// As [`Oracles::check`], and returns the longest stretch without an active, for the
    /// caller to print: a budget generous enough to catch only a hang says nothing of how long
    /// the failover took.
    pub async fn verdict(self, budget: Duration) -> Result<Duration, LabError> {
        let log = self.probes.finish().await;
        let writes = self.writes.finish().await;
        if !log.both_active_at.is_empty() {
            return Err(LabError::Oracle(format!("two nodes answered /active at {:?}", log.both_active_at)));
        }
        let late = writes.late_acks();
        if !late.is_empty() {
            return Err(LabError::Oracle(format!(
                "split brain: {} acknowledgements of writes sent after another master had acknowledged one under a \
                 higher (or the same) token:\n{}",
                late.len(),
                writes.timeline()
            )));
        }
        if log.longest_without_active > budget {
            return Err(LabError::Oracle(format!(
                "no node was active for {:?}, over the budget of {budget:?}",
                log.longest_without_active
            )));
        }
        Ok(log.longest_without_active)
    }
}

// ---------------------------------------------------------------------------------------------
// The pair on simulated hosts.

/// The host the coordinator runs on, in [`Pair::start_on_hosts`] with a coordinator alone.
pub const COORDINATOR_HOST: usize = 1;

/// The host node `i` (its master and its agent) runs on, in [`Pair::start_on_hosts`] with a
/// coordinator alone: `a` on host 2, `b` on host 3. [`Pair::node_host`] answers for every kind.
pub fn node_host(i: usize) -> usize {
    i + 2
}

/// The host coordinator server `k` (from 0) runs on, in [`Pair::start_on_hosts`] with
/// `kind`: host 1, then for an ensemble hosts 2 and 3; an observer on its node's host.
pub fn coordinator_host_of(kind: CoordinatorKind, k: usize) -> usize {
    let voters = kind.servers();
    debug_assert!(k < voters + kind.observers(NODES.len()), "{kind:?} has no coordinator server {}", k + 1);
    if k < voters {
        COORDINATOR_HOST + k
    } else {
        // An observer lives on the host of the node it serves.
        node_host_of(kind, k - voters)
    }
}

/// The host node `i` runs on, in [`Pair::start_on_hosts`] with `kind`: after the coordinator's
/// hosts (`a` on host 2 and `b` on host 3 with a server alone; hosts 4 and 5 with an ensemble).
pub fn node_host_of(kind: CoordinatorKind, i: usize) -> usize {
    COORDINATOR_HOST + kind.servers() + i
}

/// How many hosts [`Pair::start_on_hosts`] needs with `kind`.
pub fn hosts_needed(kind: CoordinatorKind) -> usize {
    node_host_of(kind, NODES.len() - 1)
}

/// One of the pair's places: coordinator server `k`, or node `i`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Coordinator server `k` (from 0; only 0 for a server alone).
    Coordinator(usize),
    /// Node `i`'s master and agent.
    Node(usize),
}

/// Where the pair's processes run and listen.
#[derive(Debug, Clone)]
enum Placement {
    /// Every process in the test's own network namespace, on 127.0.0.1.
    Loopback,
    /// Each coordinator server on a simulated host, each node on another, each process
    /// listening on its host's address; the test reaches them as the hosts' client.
    Hosts {
        /// Each coordinator server's host, server 1's first.
        coordinators: Vec<Host>,
        /// Node `a`'s host, then `b`'s.
        nodes: Vec<Host>,
    },
}

impl Placement {
    /// The address `role`'s processes listen on.
    fn ip(&self, role: Role) -> String {
        match (self, role) {
            (Placement::Loopback, _) => "127.0.0.1".into(),
            (Placement::Hosts { coordinators, .. }, Role::Coordinator(k)) => coordinators[k].addr().to_string(),
            (Placement::Hosts { nodes, .. }, Role::Node(i)) => nodes[i].addr().to_string(),
        }
    }

    /// [`Proc::spawn`], inside `role`'s host when there is one.
    fn spawn(
        &self,
        role: Role,
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, String)],
        log: PathBuf,
    ) -> Result<Proc, LabError> {
        let mut cmd = match (self, role) {
            (Placement::Loopback, _) => Command::new(program),
            (Placement::Hosts { coordinators, .. }, Role::Coordinator(k)) => coordinators[k].command(program),
            (Placement::Hosts { nodes, .. }, Role::Node(i)) => nodes[i].command(program),
        };
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn_command(name, cmd, log)
    }
}

impl Pair {
    /// Starts the pair on simulated hosts, one process group per host as on separate
    /// machines: the coordinator on host [`COORDINATOR_HOST`] (1), node `a`'s master and agent
    /// on host 2 and node `b`'s on host 3 ([`node_host`]), each listening on its host's address.
    /// With [`CoordinatorKind::BundledEnsemble`], five hosts: the coordinator's servers on
    /// hosts 1, 2 and 3 ([`Pair::coordinator_host`]), node `a` on host 4 and node `b` on host 5
    /// ([`Pair::node_host`]); the agents and the journals connect to all three servers.
    /// The test process reaches every one of them as the hosts' client, so the oracles work as
    /// on loopback, and the faults are the hosts' ([`Hosts::partition`], [`Hosts::black_hole`],
    /// [`Hosts::isolate`]).
    ///
    /// Fencing, as between machines: first what the loopback pair does first (the graceful
    /// request, or for [`MasterKind::Command`] the `master-command demote` program), over the
    /// hosts' network; then, instead of `kill` (which refuses a target on another host), the
    /// same demotion through a management path that faults never cut: `referee master-command
    /// demote` run inside the peer's host with `ip netns exec`, as IPMI or a console server
    /// reaches a machine its network does not. That fence demotes rather than kills, so a
    /// fenced master can rejoin as standby when its host heals. A master that answers neither
    /// (crashed, or frozen by SIGSTOP) is turned off last by the lab's power switch
    /// ([`POWER_SWITCH`]), as STONITH would.
    ///
    /// Drop the pair before `hosts`: its processes are then stopped while they still have a
    /// network. `spec.proxied_agents` is refused: the hosts' faults replace the proxy.
    pub async fn start_on_hosts(mut spec: PairSpec, hosts: &Hosts) -> Result<Pair, LabError> {
        if spec.proxied_agents {
            return Err(LabError::Child(
                "a pair on simulated hosts takes no proxies: cut its links with the hosts' faults instead".into(),
            ));
        }
        let kind = spec.coordinator;
        let needed = hosts_needed(kind);
        if hosts.len() < needed {
            return Err(LabError::Child(format!(
                "a pair on simulated hosts with {kind:?} needs {needed} hosts (one per coordinator server, then one \
                 per node), not {}",
                hosts.len()
            )));
        }
        let nodes: Vec<Host> = (0..NODES.len()).map(|i| hosts.host(node_host_of(kind, i)).clone()).collect();
        // The fencing of a pair on hosts, under whatever the caller merges in.
        let mut extra = Vec::new();
        for (i, own) in nodes.iter().enumerate() {
            let peer = &nodes[1 - i];
            debug_assert_ne!(own, peer, "each node has a host of its own");
            let fencing = fencing_on_hosts(&spec, peer)?;
            extra.push(match spec.extra_agent_yaml.get(i) {
                Some(caller) => merge_yaml(&fencing, caller)?,
                None => fencing,
            });
        }
        spec.extra_agent_yaml = extra;
        let servers = kind.servers() + kind.observers(NODES.len());
        let coordinators = (0..servers).map(|k| hosts.host(coordinator_host_of(kind, k)).clone()).collect();
        let placement = Placement::Hosts { coordinators, nodes };
        Pair::start_placed(spec, placement).await
    }

    /// The address node `i`'s master and agent listen on.
    pub fn node_ip(&self, i: usize) -> String {
        self.placement.ip(Role::Node(i))
    }

    /// The host node `i` runs on, for a pair started with [`Pair::start_on_hosts`].
    pub fn node_host(&self, i: usize) -> usize {
        node_host_of(self.spec.coordinator, i)
    }

    /// The host coordinator server `k` (from 0) runs on, for a pair started with
    /// [`Pair::start_on_hosts`].
    pub fn coordinator_host(&self, k: usize) -> usize {
        coordinator_host_of(self.spec.coordinator, k)
    }

    /// The hosts of every coordinator server, for a pair started with [`Pair::start_on_hosts`].
    pub fn coordinator_hosts(&self) -> Vec<usize> {
        (0..self.coordinator_servers()).map(|k| self.coordinator_host(k)).collect()
    }
}

/// The lab's power switch: what a PDU or IPMI "power off" does to a machine, done to the target
/// master's process. It kills the process the fencer names (`TARGET_PID`, else the pid in
/// `TARGET_PIDFILE`), unless that pid now belongs to another process (`TARGET_START_TIME`, in
/// clock ticks since boot, differs),
/// and reports fenced only once the process is gone or a zombie; a process that outlives three
/// seconds of waiting is a failed fence. SIGKILL works on a stopped (SIGSTOP) process too.
const POWER_SWITCH: &str = r#"
pid="${TARGET_PID:-}"
if [ -z "$pid" ] && [ -n "${TARGET_PIDFILE:-}" ]; then
  pid=$(cat "$TARGET_PIDFILE") || exit 1
fi
if [ -z "$pid" ]; then echo "no pid or pidfile for the target: cannot tell which machine to turn off" >&2; exit 1; fi
fields() { sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null; }
s=$(fields) || exit 0
set -- $s
if [ -n "${TARGET_START_TIME:-}" ] && [ "${20}" != "$TARGET_START_TIME" ]; then exit 0; fi
kill -KILL "$pid" 2>/dev/null
i=0
while [ "$i" -lt 300 ]; do
  s=$(fields) || exit 0
  set -- $s
  [ "$1" = Z ] && exit 0
  sleep 0.01
  i=$((i + 1))
done
echo "process $pid is still there after SIGKILL" >&2
exit 1
"#;

/// The `fencing` section of a node on hosts whose peer lives on `peer`: see
/// [`Pair::start_on_hosts`].
fn fencing_on_hosts(spec: &PairSpec, peer: &Host) -> Result<String, LabError> {
    let t = spec.timings;
    let bin = spec.bin.display().to_string();
    let program_timeout = t.graceful_fence_ms.max(1000);
    let first = match spec.master {
        MasterKind::LeasePolling | MasterKind::Plain => {
            serde_json::json!({"kind": "graceful", "timeout_ms": t.graceful_fence_ms})
        }
        MasterKind::Command | MasterKind::Ocf => serde_json::json!({
            "kind": "shell", "program": bin, "args": ["master-command", "demote"], "timeout_ms": program_timeout,
        }),
    };
    let ip = program_path("ip")?;
    let management = serde_json::json!({
        "kind": "shell",
        "name": "management",
        "program": ip,
        "args": ["netns", "exec", peer.netns(), bin, "master-command", "demote"],
        "timeout_ms": program_timeout,
    });
    let sh = program_path("sh")?;
    let power = serde_json::json!({
        "kind": "shell",
        "name": "power",
        "program": sh,
        "args": ["-c", POWER_SWITCH],
        "timeout_ms": program_timeout,
    });
    let fencing = serde_json::json!({"fencing": {"levels": [
        {"methods": [first]}, {"methods": [management]}, {"methods": [power]},
    ]}});
    serde_yaml::to_string(&fencing).map_err(|e| LabError::Child(format!("fencing YAML: {e}")))
}

/// The absolute path of `program` on `PATH` (the `shell` fencing method takes no bare names).
fn program_path(program: &str) -> Result<PathBuf, LabError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| LabError::Child(format!("`{program}` is not on PATH: install it")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits until `p`'s fate says `want`, up to 10 s.
    fn fate_becomes(p: &Proc, want: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let fate = p.fate();
            if fate.contains(want) || Instant::now() >= deadline {
                return fate;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_process_fate_tells_a_signal_from_its_own_exit() {
        let dir = LabDir::new("lab-fate").unwrap();
        let mut sleeper = Command::new("sleep");
        sleeper.arg("30");
        let sleeper = Proc::spawn_command("sleeper", sleeper, dir.0.join("sleep.log")).unwrap();
        assert!(sleeper.fate().contains("running"), "{}", sleeper.fate());
        sleeper.signal(Signal::SIGKILL).unwrap();
        let fate = fate_becomes(&sleeper, "killed by signal 9");
        assert!(fate.ends_with("killed by signal 9"), "{fate}");
        let mut quitter = Command::new("sh");
        quitter.args(["-c", "exit 3"]);
        let quitter = Proc::spawn_command("quitter", quitter, dir.0.join("exit.log")).unwrap();
        let fate = fate_becomes(&quitter, "exited");
        assert!(fate.ends_with("exited with code 3"), "{fate}");
    }

    #[test]
    fn acknowledgements_may_change_hands_many_times_but_never_go_back_in_epoch() {
        let ms = Duration::from_millis;
        // b, then a, then b again: three terms, each with a higher token.
        let fine = MasterRecord {
            acks: vec![ack(1, 1, 11), ack(1, 3, 11), ack(0, 5, 12), ack(1, 7, 13)],
            ..Default::default()
        };
        assert!(fine.late_acks().is_empty());
        // A stale acknowledgement whose request was in flight when the successor's first
        // acknowledgement came back (sent at 4, before that reply at 6) proves nothing, in
        // whichever order the two were recorded and whichever master was the old one.
        for (old, new) in [(0, 1), (1, 0)] {
            let straddling = Observed { node: old, sent: ms(4), received: ms(8), what: 11 };
            let record = MasterRecord { acks: vec![ack(new, 5, 12), straddling], ..Default::default() };
            assert!(record.late_acks().is_empty(), "{old} then {new}: {:?}", record.late_acks());
            let record = MasterRecord { acks: vec![straddling, ack(new, 5, 12)], ..Default::default() };
            assert!(record.late_acks().is_empty(), "{old} then {new}, recorded the other way round");
        }
        // b acknowledges under its old token a write sent after a's first acknowledgement came
        // back (at 3).
        let stale = MasterRecord { acks: vec![ack(1, 1, 11), ack(0, 2, 12), ack(1, 4, 11)], ..Default::default() };
        let late = stale.late_acks();
        assert_eq!(late.len(), 1, "{late:?}");
        assert_eq!((late[0].stale, late[0].successor), (ack(1, 4, 11), ack(0, 2, 12)));
        // Two nodes under one token.
        let shared = MasterRecord { acks: vec![ack(0, 1, 12), ack(1, 2, 12)], ..Default::default() };
        assert_eq!(shared.late_acks().len(), 2);
    }

    #[test]
    fn a_log_stamp_reads_as_microseconds_since_the_epoch() {
        assert_eq!(log_stamp_us("1970-01-01T00:00:01.000002Z"), Some(1_000_002));
        assert_eq!(log_stamp_us("2000-03-01T00:00:00Z"), Some(951_868_800_000_000));
        assert_eq!(log_stamp_us("2026-12-07T10:03:30.674613Z"), Some(1_796_637_810_674_613));
        assert_eq!(log_stamp_us("2024-02-29T23:59:59.5Z"), Some(1_709_251_199_500_000));
        assert_eq!(log_stamp_us("INFO"), None);
    }

    /// Lines as the demo master logs them.
    const OLD_LOG: &str = "\
2026-12-07T10:03:29.952058Z  INFO referee_examples::ha_master: demo master started node=\"a\" addr=Some(10.0.0.4:1) role=Standby token=0
2026-12-07T10:03:30.100000Z  INFO referee_examples::ha_master: became active node=\"a\" token=5
2026-12-07T10:03:30.200000Z  INFO referee_examples::ha_master: lease granted node=\"a\" token=5 valid_for_ms=900
2026-12-07T10:03:33.000000Z  INFO referee_examples::ha_master: became standby node=\"a\" token=6 was=Active
";

    #[test]
    fn a_handover_is_read_from_both_masters_own_logs() {
        let old = logged_role_changes(OLD_LOG);
        assert_eq!(
            old.iter().map(|c| (c.to, c.token)).collect::<Vec<_>>(),
            vec![(HaState::Active, Some(5)), (HaState::Standby, Some(6))]
        );
        let promoted = |at: &str| {
            logged_role_changes(&format!(
                "2026-12-07T10:03:{at}Z  INFO referee_examples::ha_master: became active node=\"b\" token=6\n"
            ))
        };
        let fine = logged_handover(&old, &promoted("33.000100"), 6).expect("demoted 100 us before");
        assert_eq!(fine.promoted_us - fine.demoted_us, 100);
        // Promoted while the old master was still active, or at the very microsecond it stepped
        // down: not proven fenced first.
        for at in ["32.999000", "33.000000"] {
            let err = logged_handover(&old, &promoted(at), 6).expect_err(at);
            assert!(err.contains("still active by its own log"), "{err}");
        }
        // No promotion under the token asked about, or nothing active on the old side before it.
        assert!(logged_handover(&old, &promoted("34.0"), 7).unwrap_err().contains("no promotion under token 7"));
        assert!(logged_handover(&old, &promoted("30.0"), 6).unwrap_err().contains("logged no promotion before"));
        // A journal's step-down counts as one.
        let deposed = OLD_LOG.replace(
            "became standby node=\"a\" token=6 was=Active",
            "deposed: the epoch moved on; stepped down to standby node=\"a\"",
        );
        assert!(logged_handover(&logged_role_changes(&deposed), &promoted("33.5"), 6).is_ok());
    }

    #[test]
    fn a_handover_fails_when_the_old_master_logs_a_promotion_after_the_new_one() {
        let promoted = logged_role_changes(
            "2026-12-07T10:03:33.000100Z  INFO referee_examples::ha_master: became active node=\"b\" token=6\n",
        );
        // Stepped down in time, then active again under its old token while the new master
        // served, and down again before anyone looked.
        let again = |at: &str, token: u64| {
            logged_role_changes(&format!(
                "{OLD_LOG}2026-12-07T10:03:{at}Z  INFO referee_examples::ha_master: became active node=\"a\" \
                 token={token}\n2026-12-07T10:03:35.000000Z  INFO referee_examples::ha_master: became standby \
                 node=\"a\" token=7 was=Active\n"
            ))
        };
        for at in ["33.500000", "33.000100"] {
            let err = logged_handover(&again(at, 5), &promoted, 6).expect_err(at);
            assert!(err.contains("became active again") && err.contains("token=5"), "{err}");
        }
        // Promoted under a higher token later: a failover of its own, not the old term back.
        let handover = logged_handover(&again("34.000000", 7), &promoted, 6).expect("a later term");
        assert_eq!(handover.margin_ms(), 0.1);
    }

    #[test]
    fn a_master_promoted_again_after_a_timely_demotion_fails_the_black_hole_margin() {
        use HaState::{Active, Standby};
        let ms = Duration::from_millis;
        let still_held_at = ms(500);
        // Demoted by 100 ms, well before the lock can have left its agent's session.
        let timely =
            vec![poll(0, 0, Active, 5), poll(0, 50, Active, 5), poll(0, 99, Standby, 5), poll(0, 300, Standby, 5)];
        let record = MasterRecord { states: timely.clone(), ..Default::default() };
        let demoted = record.left_active_before(0, still_held_at).expect("demoted in time");
        assert_eq!((demoted.after, demoted.by), (ms(50), ms(100)));
        // Then active again under the same token from 150 ms, and demoted only at 900 ms: the
        // first demotion was in time, the master was not.
        let mut states = timely[..3].to_vec();
        states.extend([
            poll(0, 150, Active, 5),
            poll(0, 450, Active, 5),
            poll(0, 600, Active, 5),
            poll(0, 899, Standby, 5),
        ]);
        let record = MasterRecord { states, ..Default::default() };
        let err = record.left_active_before(0, still_held_at).expect_err("active past the deadline").to_string();
        assert!(err.contains("answered active at 601.0 ms"), "{err}");
        // Its last answer active: never left the role at all.
        let record = MasterRecord { states: timely[..2].to_vec(), ..Default::default() };
        let err = record.left_active_before(0, still_held_at).expect_err("still active").to_string();
        assert!(err.contains("still active at its last answer"), "{err}");
    }

    #[test]
    fn a_master_that_must_not_be_active_is_caught_by_its_own_answers_and_acknowledgements() {
        use HaState::{Active, Standby};
        let ms = Duration::from_millis;
        // c (node 2) standby, then active from 60 to 80, taking a write sent at 70.
        let record = MasterRecord {
            states: vec![
                poll(2, 0, Standby, 5),
                poll(2, 20, Standby, 5),
                poll(2, 40, Standby, 5),
                poll(2, 60, Active, 6),
                poll(2, 80, Standby, 7),
                poll(0, 30, Active, 5),
            ],
            acks: vec![ack(2, 70, 6), ack(0, 30, 5)],
            ..Default::default()
        };
        assert_eq!(record.check_not_active(2, ms(10), ms(50)).expect("standby from 10 to 50 ms"), 2);
        let err = record.check_not_active(2, ms(10), ms(100)).expect_err("active at 60 ms").to_string();
        assert!(err.contains("master c answered active under token 6 (asked at 60.0 ms"), "{err}");
        // The answer straddles the stretch's start, the write does not.
        let err = record.check_not_active(2, ms(61), ms(100)).expect_err("a write at 70 ms").to_string();
        assert!(err.contains("master c acknowledged 1 writes from 61.0 to 100.0 ms"), "{err}");
        let err = record.check_not_active(2, ms(100), ms(200)).expect_err("no answer").to_string();
        assert!(err.contains("master c gave no answer"), "{err}");
        // Three masters: a's stretches are read like anyone's, and node names follow the
        // cluster's.
        assert!(record.check_not_active(0, ms(0), ms(100)).unwrap_err().to_string().contains("master a answered"));
        // Two of three masters active at once is split brain as it is for a pair.
        let split = MasterRecord {
            states: vec![poll(0, 0, Active, 5), poll(2, 0, Active, 6), poll(0, 10, Active, 5), poll(2, 10, Active, 6)],
            ..Default::default()
        };
        assert_eq!(split.both_active(), vec![(ms(1), ms(10))]);
        assert!(split.timeline().contains("masters a and c both reported active from 1.0 ms to 10.0 ms"));
    }

    fn poll(node: usize, sent: u64, state: HaState, token: u64) -> Observed<HaStatus> {
        let ms = Duration::from_millis;
        Observed { node, sent: ms(sent), received: ms(sent + 1), what: HaStatus { state, token: FencingToken(token) } }
    }

    fn ack(node: usize, sent: u64, token: u64) -> Observed<u64> {
        let ms = Duration::from_millis;
        Observed { node, sent: ms(sent), received: ms(sent + 1), what: token }
    }

    #[test]
    fn a_clean_handover_shows_one_active_at_a_time_and_no_late_acknowledgement() {
        use HaState::{Active, Standby};
        let ms = Duration::from_millis;
        // a active under 5 until demoted with 6 between 20 and 31; b promoted with 6 after that.
        let record = MasterRecord {
            states: vec![
                poll(0, 0, Active, 5),
                poll(1, 0, Standby, 5),
                poll(0, 10, Active, 5),
                poll(1, 10, Standby, 5),
                poll(0, 20, Active, 5),
                poll(1, 20, Standby, 5),
                poll(0, 30, Standby, 6),
                poll(1, 30, Standby, 5),
                poll(1, 40, Active, 6),
                poll(0, 40, Standby, 6),
                poll(1, 50, Active, 6),
            ],
            acks: vec![ack(0, 5, 5), ack(0, 25, 5), ack(1, 45, 6), ack(1, 55, 6)],
            ..Default::default()
        };
        assert_eq!(record.certainly_active(0), vec![(ms(1), ms(20), FencingToken(5))]);
        assert_eq!(record.certainly_active(1), vec![(ms(41), ms(50), FencingToken(6))]);
        assert!(record.both_active().is_empty());
        assert!(record.late_acks().is_empty());
        assert!(record.check().is_ok());
        let demoted = record.demoted(0).expect("a was demoted");
        assert_eq!((demoted.after, demoted.by), (ms(20), ms(31)));
        let promoted = record.promoted(1, None).expect("b was promoted");
        assert_eq!((promoted.after, promoted.by), (ms(30), ms(41)));
        assert!(record.promoted(1, Some(FencingToken(6))).is_none());
    }

    #[test]
    fn a_deposed_master_that_keeps_serving_is_caught_on_both_counts() {
        use HaState::{Active, Standby};
        let ms = Duration::from_millis;
        let record = MasterRecord {
            states: vec![
                poll(0, 0, Active, 5),
                poll(1, 0, Standby, 5),
                poll(1, 10, Active, 6),
                poll(0, 10, Active, 5),
                poll(1, 20, Active, 6),
                poll(0, 20, Active, 5),
                poll(0, 30, Standby, 5),
            ],
            // a's write sent at 12 went out after b's first acknowledgement arrived (at 9):
            // late. a's write sent at 7 may have been taken before b's: not late.
            acks: vec![ack(0, 1, 5), ack(1, 8, 6), ack(0, 7, 5), ack(0, 12, 5)],
            ..Default::default()
        };
        assert_eq!(record.both_active(), vec![(ms(11), ms(20))]);
        let late = record.late_acks();
        assert_eq!(late.len(), 1, "{late:?}");
        assert_eq!((late[0].stale, late[0].successor), (ack(0, 12, 5), ack(1, 8, 6)));
        let err = record.check().expect_err("split brain").to_string();
        assert!(err.contains("1 stretches with two actives, 1 late acknowledgements"), "{err}");
        assert!(err.contains("master a acknowledged writes under token 5"), "{err}");
        // One token acknowledged by two masters is split brain whatever the times.
        let shared = MasterRecord { states: vec![], acks: vec![ack(0, 0, 7), ack(1, 50, 7)], ..Default::default() };
        assert_eq!(shared.late_acks().len(), 2);
    }

    #[test]
    fn a_single_active_answer_proves_no_stretch() {
        use HaState::{Active, Standby};
        // Polls straddling a handover can each see one active: no certain overlap.
        let record = MasterRecord {
            states: vec![
                poll(0, 0, Standby, 5),
                poll(1, 0, Active, 6),
                poll(0, 10, Active, 5),
                poll(1, 10, Standby, 6),
            ],
            acks: vec![],
            ..Default::default()
        };
        assert!(record.certainly_active(0).is_empty() && record.certainly_active(1).is_empty());
        assert!(record.both_active().is_empty());
    }
}
