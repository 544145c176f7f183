//! Coordinator benchmarks: the bundled coordinator as a real process on loopback, measured with
//! the test kit's raw ZooKeeper-wire clients, beside Apache ZooKeeper 3.8 under the same load.
//!
//! ```text
//! cargo build --release
//! cargo run --release --bin coordinator-bench -- abuse [--seconds 15] [--abusers 200] [--reference-zk]
//! ```
//!
//! `abuse`: 200 clients misbehave at once (never reading their socket while replies and watch
//! notifications pile up, flooding pipelined requests, leaking sessions, sending paths that fill
//! a packet) while 4 well-behaved clients run getData / setData / create one request at a time.
//! For each server it reports the well-behaved clients' throughput, latency percentiles, longest
//! time without a reply and errors, the server's peak RSS, whether it survived, how long it
//! took to be back to its baseline connection count, and whether a new session then connects;
//! with `--reference-zk` the same load runs against Debian's Apache ZooKeeper (standalone, stock
//! settings but `maxClientCnxns=0`) in the same run and a table gives both with their ratios.
//!
//! The coordinator runs as `referee coordinator --config <temp config>` from the release build
//! next to this binary, with its default settings apart from its port and data directory.
//! The exit status is non-zero if the coordinator failed a well-behaved request, died, kept the
//! abusers' connections or refused a new session afterwards.
//!
//! `throughput`: pipelined sessions (SESSIONSxOUTSTANDING) send one operation for a few seconds
//! per cell, against the coordinator and against Apache ZooKeeper (stock settings, its
//! transaction log forced to disk as ours is) in the same run, with the memory, start-up,
//! restart and longest-stall figures, and the CPU time per reply of each server (its
//! processes' user and system time over the cell) and of the clients; `--ensemble 3` runs both
//! as three-server ensembles on loopback instead, each cell's sessions spread over the
//! servers. The memory figures come from one server at a time; for the cells both are up, and
//! each cell runs on one and then on the other, the order swapped from cell to cell.
//!
//! `failover --ensemble 3 --kills 10`: kills the leader of an ensemble on loopback with SIGKILL,
//! again and again (the killed server restarted in between), and times from each kill until a
//! surviving server says `Mode: leader` (`srvr`), and until a create through a surviving server
//! is acknowledged: every `--retry-ms` a fresh connection (new session, raw client, no
//! reconnect logic in the way) to each survivor tries one. The servers log at `info`, with the
//! moments of their elections, in the scratch directory kept with `--keep`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use referee::ensemble::{render_config, Plan, PlannedServer, Role as EnsembleRole};
use referee_testkit::abuse::{self, AbuseReport, AbuseSpec, Misbehaviour, WellBehavedSummary};
use referee_testkit::bench::{self as tp, CellReport, Op, Shape};
use referee_testkit::{
    apache_zookeeper_installed, four_letter, free_port, ApacheZk, ApacheZkEnsemble, ApacheZkProfile, ScratchDir,
};

#[derive(Parser)]
#[command(name = "coordinator-bench", about = "Benchmarks of the bundled coordinator on loopback")]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Well-behaved clients' service while many clients misbehave at once.
    Abuse(AbuseArgs),
    /// Pipelined throughput and latency per operation and load shape, memory and start-up
    /// with many znodes, against Apache ZooKeeper 3.8 in the same run.
    Throughput(ThroughputArgs),
    /// How fast an ensemble recovers from kill -9 of its leader: until another server says it
    /// leads, and until a raw write through a surviving server is acknowledged.
    Failover(FailoverArgs),
}

#[derive(Args)]
struct ThroughputArgs {
    /// How long each cell (one operation at one load shape) runs against each server.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// The operations to measure, comma-separated (create must come with delete: delete
    /// removes what create made).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = ThroughputOp::all())]
    ops: Vec<ThroughputOp>,
    /// Load shapes, comma-separated, each SESSIONSxOUTSTANDING (requests in flight per session).
    #[arg(long, value_delimiter = ',', default_value = "1x1,1x16,16x1,16x16,64x1,64x16")]
    shapes: Vec<Shape>,
    /// Which servers to measure.
    #[arg(long, value_enum, default_value_t = Servers::Both)]
    servers: Servers,
    /// Znodes (of --data-bytes) for the memory and restart measurement; 0 skips it.
    #[arg(long, default_value_t = 100_000)]
    znodes: usize,
    /// Bytes of data per znode created or set.
    #[arg(long, default_value_t = 100)]
    data_bytes: usize,
    /// Nodes the reads and setData pick from.
    #[arg(long, default_value_t = 1_000)]
    pool: usize,
    /// Also run one long cell (--stall-op at --stall-shape, on the --znodes nodes, after the
    /// memory measurement) for this many seconds and report its longest time without a reply;
    /// 0 skips it.
    #[arg(long, default_value_t = 0)]
    stall_seconds: u64,
    /// The operation of the stall run.
    #[arg(long, value_enum, default_value_t = ThroughputOp::SetData)]
    stall_op: ThroughputOp,
    /// The load shape of the stall run.
    #[arg(long, default_value = "16x16")]
    stall_shape: Shape,
    /// Also write the markdown tables to this file.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Voting servers per coordination service: 1 (a server alone) or an ensemble of 3 or 5 on
    /// loopback, ours against Apache ZooKeeper's with the same count. The cells' sessions are
    /// spread over the servers (session i on server i mod N), memory is the sum over the
    /// servers, and the restart kills every server at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    ensemble: u8,
    /// Keep our servers' logs in this directory (created if missing) before their scratch
    /// directories are removed: `memory-*.log` (start-up, memory, the stall run, the restart)
    /// and `cells-*.log`. Set REFEREE_LOG=info to have more in them than warnings; the stall
    /// run's start is printed in seconds since the Unix epoch, to place its longest gap in them.
    #[arg(long)]
    server_logs: Option<PathBuf>,
}

/// The operations, as the command line names them.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ThroughputOp {
    /// create, persistent, fresh names.
    Create,
    /// setData on pool nodes.
    SetData,
    /// getData on pool nodes.
    GetData,
    /// exists on pool nodes.
    Exists,
    /// delete what the create cell of the same shape made.
    Delete,
    /// 90 % getData, 10 % setData.
    Mix,
    /// sync (not among the defaults, which are the targets' rows).
    Sync,
}

impl ThroughputOp {
    fn all() -> Vec<ThroughputOp> {
        use ThroughputOp::*;
        vec![Create, SetData, GetData, Exists, Delete, Mix]
    }

    fn op(self) -> Op {
        match self {
            ThroughputOp::Create => Op::Create,
            ThroughputOp::SetData => Op::SetData,
            ThroughputOp::GetData => Op::GetData,
            ThroughputOp::Exists => Op::Exists,
            ThroughputOp::Delete => Op::Delete,
            ThroughputOp::Mix => Op::Mix,
            ThroughputOp::Sync => Op::Sync,
        }
    }
}

impl std::fmt::Display for ThroughputOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = clap::ValueEnum::to_possible_value(self).map(|v| v.get_name().to_string()).unwrap_or_default();
        write!(f, "{name}")
    }
}

/// Which servers a throughput run measures.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Servers {
    /// The bundled coordinator and Apache ZooKeeper.
    Both,
    /// The bundled coordinator only.
    Referee,
    /// Apache ZooKeeper only.
    Apache,
}

#[derive(Args)]
struct AbuseArgs {
    /// How long the load runs against each server.
    #[arg(long, default_value_t = 15)]
    seconds: u64,
    /// Misbehaving clients, dealt out over the four misbehaviours.
    #[arg(long, default_value_t = 200)]
    abusers: usize,
    /// Also run the load against Apache ZooKeeper 3.8 (Debian's package) and compare.
    #[arg(long)]
    reference_zk: bool,
    /// Watches each watch-hoarding non-reader leaves (default 1000; the coordinator allows
    /// 10000 per connection), to measure what holding many watches costs a server.
    #[arg(long)]
    watches_per_connection: Option<usize>,
    /// Run only these misbehaviours (repeat the option; default: all four), to see which one
    /// hurts a server.
    #[arg(long = "only", value_enum)]
    only: Vec<Kind>,
}

/// The misbehaviours, as the command line names them.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    /// Clients that never read their socket.
    NeverReads,
    /// Clients that flood pipelined requests.
    Floods,
    /// Clients that leak sessions.
    LeaksSessions,
    /// Clients that send paths filling a packet.
    HugePaths,
}

impl From<Kind> for Misbehaviour {
    fn from(k: Kind) -> Self {
        match k {
            Kind::NeverReads => Misbehaviour::NeverReads,
            Kind::Floods => Misbehaviour::Floods,
            Kind::LeaksSessions => Misbehaviour::LeaksSessions,
            Kind::HugePaths => Misbehaviour::HugePaths,
        }
    }
}

/// How long a server may take, after the abusers are gone, to be back to its baseline number
/// of connections.
const RECOVERY: Duration = Duration::from_secs(60);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    match Cli::parse().command {
        BenchCommand::Abuse(args) => abuse_bench(args).await,
        BenchCommand::Throughput(args) => throughput_bench(args).await,
        BenchCommand::Failover(args) => failover_bench(args).await,
    }
}

/// A coordination service the load runs against: one server, or an ensemble's.
enum ServerUnderTest {
    /// `referee coordinator` as child processes (one per server, server 1 first), with their
    /// scratch directory.
    Referee { children: Vec<Child>, ports: Vec<u16>, dir: ScratchDir },
    /// Apache ZooKeeper's JVM, found by its listening port.
    Apache { zk: ApacheZk, pid: u32 },
    /// Apache ZooKeeper ensemble's JVMs.
    ApacheEnsemble { zk: ApacheZkEnsemble },
}

impl ServerUnderTest {
    fn name(&self) -> &'static str {
        match self {
            ServerUnderTest::Referee { .. } => "referee",
            ServerUnderTest::Apache { .. } | ServerUnderTest::ApacheEnsemble { .. } => "apache-zk",
        }
    }

    /// Every server's client port, server 1 first.
    fn ports(&self) -> Vec<u16> {
        match self {
            ServerUnderTest::Referee { ports, .. } => ports.clone(),
            ServerUnderTest::Apache { zk, .. } => vec![zk.port],
            ServerUnderTest::ApacheEnsemble { zk } => zk.ports(),
        }
    }

    /// Server 1's client port.
    fn port(&self) -> u16 {
        self.ports()[0]
    }

    /// Every server's address, server 1 first: where the load goes.
    fn targets(&self) -> Vec<SocketAddr> {
        self.ports().into_iter().map(|p| SocketAddr::from(([127, 0, 0, 1], p))).collect()
    }

    /// Every server's process id.
    fn pids(&self) -> Vec<u32> {
        match self {
            ServerUnderTest::Referee { children, .. } => children.iter().map(Child::id).collect(),
            ServerUnderTest::Apache { pid, .. } => vec![*pid],
            ServerUnderTest::ApacheEnsemble { zk } => zk.pids(),
        }
    }

    /// The CPU time the servers' processes have used so far, summed over them.
    fn cpu(&self) -> Option<Duration> {
        self.pids().into_iter().map(proc_cpu).sum()
    }

    /// A `kB` field of `/proc/<pid>/status` summed over the servers, in MiB.
    fn status_mib(&self, field: &str) -> Option<f64> {
        self.pids().into_iter().map(|pid| proc_status_mib(pid, field)).sum()
    }

    fn alive(&mut self) -> bool {
        match self {
            ServerUnderTest::Referee { children, .. } => children.iter_mut().all(|c| matches!(c.try_wait(), Ok(None))),
            ServerUnderTest::Apache { pid, .. } => std::path::Path::new(&format!("/proc/{pid}")).exists(),
            ServerUnderTest::ApacheEnsemble { zk } => zk.running(),
        }
    }

    fn log_tail(&self) -> String {
        match self {
            ServerUnderTest::Referee { dir, ports, .. } => (1..=ports.len())
                .map(|id| {
                    let text =
                        std::fs::read_to_string(dir.path(&referee_log_name(ports.len(), id))).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    format!("--- server {id} ---\n{}", lines[lines.len().saturating_sub(20)..].join("\n"))
                })
                .collect::<Vec<_>>()
                .join("\n"),
            ServerUnderTest::Apache { zk, .. } => zk.log_tail(),
            ServerUnderTest::ApacheEnsemble { zk } => zk.log_tail(),
        }
    }
}

impl Drop for ServerUnderTest {
    fn drop(&mut self) {
        if let ServerUnderTest::Referee { children, .. } = self {
            for child in children {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

fn referee_bin() -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating this executable")?;
    let bin = me.with_file_name("referee");
    if !bin.exists() {
        bail!("{} not found: build it first (cargo build --release --bin referee)", bin.display());
    }
    Ok(bin)
}

async fn start_referee() -> Result<ServerUnderTest> {
    let mut server = spawn_referee(ScratchDir::new("coordinator-bench")?, 1, "")?;
    let port = server.port();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if !server.alive() {
            bail!("referee coordinator exited at start-up: {}", server.log_tail());
        }
        if srvr(port).await.is_ok_and(|t| t.contains("Mode: ")) {
            return Ok(server);
        }
        if Instant::now() > deadline {
            bail!("referee coordinator was not serving within 30 s: {}", server.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `referee coordinator` with its data in `dir`, `servers` of them (1, or an ensemble
/// of 3 or 5 voters), and returns at once: the caller waits for it to serve. Their configs,
/// with `extra` settings, are written there the first time; server 1 then initialises the
/// ensemble.
fn spawn_referee(dir: ScratchDir, servers: usize, extra: &str) -> Result<ServerUnderTest> {
    let (children, ports) = spawn_referee_in(&dir, servers, extra)?;
    Ok(ServerUnderTest::Referee { children, ports, dir })
}

/// The log file of server `id` of `servers`.
fn referee_log_name(servers: usize, id: usize) -> String {
    if servers == 1 {
        "coordinator.log".into()
    } else {
        format!("coordinator-{id}.log")
    }
}

fn spawn_referee_in(dir: &ScratchDir, servers: usize, extra: &str) -> Result<(Vec<Child>, Vec<u16>)> {
    let config_of =
        |id: usize| if servers == 1 { dir.path("coordinator.yaml") } else { dir.path(&format!("server-{id}.yaml")) };
    let first_start = !config_of(1).exists();
    if first_start {
        write_referee_configs(dir, servers, extra)?;
    }
    let mut children = Vec::new();
    let mut ports = Vec::new();
    for id in 1..=servers {
        let config = config_of(id);
        let text = std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
        let port = text
            .lines()
            .find_map(|l| l.strip_prefix("listen: 127.0.0.1:"))
            .and_then(|p| p.trim().parse().ok())
            .context("reading the port back from the coordinator's config")?;
        // Appended, so that a restarted server's log follows the first run's.
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(dir.path(&referee_log_name(servers, id)))?;
        let mut command = Command::new(referee_bin()?);
        command.arg("coordinator").arg("--config").arg(&config);
        if first_start && servers > 1 && id == 1 {
            command.arg("--init");
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting referee coordinator")?;
        children.push(child);
        ports.push(port);
    }
    Ok((children, ports))
}

/// Writes the configs of `servers` servers into `dir`: defaults for everything but where each
/// listens and keeps its data; the four-letter words the bench reads are named so that a
/// narrower default list cannot hide them.
fn write_referee_configs(dir: &ScratchDir, servers: usize, extra: &str) -> Result<()> {
    let words = "four_letter_words: [ruok, srvr, mntr]\n";
    if servers == 1 {
        let port = free_port().context("choosing the coordinator's port")?;
        let data = dir.path("data");
        std::fs::write(
            dir.path("coordinator.yaml"),
            format!("listen: 127.0.0.1:{port}\ndata_dir: {}\n{words}{extra}", data.display()),
        )?;
        return Ok(());
    }
    let at = |what: &str| -> Result<SocketAddr> {
        let port = free_port().with_context(|| format!("choosing a {what} port"))?;
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    };
    let mut planned = Vec::new();
    for id in 1..=servers as u64 {
        planned.push(PlannedServer {
            id,
            role: EnsembleRole::Voter,
            client: at("client")?,
            peer: at("peer")?,
            admin: at("admin")?,
        });
    }
    let plan = Plan { voters: servers as u8, observers: 0, base_port: None, servers: planned };
    let cluster_id = u64::from(plan.servers[0].client.port()) << 16 | u64::from(std::process::id() as u16);
    for server in &plan.servers {
        let data = dir.path(&format!("data-{}", server.id));
        let config = render_config(&plan, cluster_id, server, &data);
        std::fs::write(dir.path(&format!("server-{}.yaml", server.id)), format!("{config}{words}{extra}"))?;
    }
    Ok(())
}

async fn start_apache() -> Result<ServerUnderTest> {
    if !apache_zookeeper_installed() {
        bail!("--reference-zk needs Apache ZooKeeper (apt-get install zookeeper) and java on PATH");
    }
    let zk = tokio::task::spawn_blocking(|| ApacheZk::start(ApacheZkProfile::Reference)).await??;
    let port = zk.port;
    let pid = pid_listening_on(port).with_context(|| format!("finding the process listening on port {port}"))?;
    Ok(ServerUnderTest::Apache { zk, pid })
}

async fn srvr(port: u16) -> Result<String> {
    tokio::task::spawn_blocking(move || four_letter(port, "srvr")).await?
}

/// The process with a listening TCP socket on `port`: the socket's inode from
/// `/proc/net/tcp{,6}`, then the process holding a descriptor to it.
fn pid_listening_on(port: u16) -> Result<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let Some(local) = f.get(1) else { continue };
            let listening = f.get(3) == Some(&"0A");
            let on_port = local.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok()) == Some(port);
            if listening && on_port {
                if let Some(inode) = f.get(9) {
                    inodes.push(format!("socket:[{inode}]"));
                }
            }
        }
    }
    if inodes.is_empty() {
        bail!("no listening socket on port {port}");
    }
    for proc in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = proc.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(proc.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    return Ok(pid);
                }
            }
        }
    }
    bail!("no process holds the socket listening on port {port}")
}

/// CPU time (user and system) process `pid` has used so far, its threads included, those
/// that ended too (`/proc/<pid>/stat`).
fn proc_cpu(pid: u32) -> Option<Duration> {
    let ticks = referee_fencing::procfs::read_stat(pid).ok().flatten()?.cpu_ticks;
    let ticks_per_sec = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().filter(|&t| t > 0)?;
    Some(Duration::from_secs_f64(ticks as f64 / ticks_per_sec as f64))
}

/// A `kB` field of `/proc/<pid>/status` in MiB.
fn proc_status_mib(pid: u32, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 =
        text.lines().find_map(|l| l.strip_prefix(field))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1024.0)
}

/// What one server did under the load.
struct Outcome {
    name: &'static str,
    report: AbuseReport,
    summary: WellBehavedSummary,
    /// Peak RSS of the server process (VmHWM), MiB.
    rss_peak_mib: Option<f64>,
    survived: bool,
    baseline: Option<i64>,
    /// Time from the end of the load until the connection count was back at the baseline.
    recovered_in: Result<Duration, String>,
    /// The handshake time of a new session after recovery.
    fresh_session: Result<Duration, String>,
}

async fn measure(mut server: ServerUnderTest, spec_for: impl Fn(SocketAddr) -> AbuseSpec) -> Result<Outcome> {
    let name = server.name();
    let port = server.port();
    println!("# {name}: load average before the run: {}", load_average());
    let baseline = abuse::mntr_value(port, "zk_num_alive_connections").await.ok();
    let spec = spec_for(SocketAddr::from(([127, 0, 0, 1], port)));
    eprintln!("# {name}: running the load for {:?} ...", spec.duration);
    let report = abuse::run(&spec).await.with_context(|| format!("running the load against {name}"))?;
    let summary = report.summary();
    let ended = Instant::now();
    println!("# {name}: load average after the run: {}", load_average());
    let rss_peak_mib = server.status_mib("VmHWM:");
    let mut survived = server.alive();
    let recovered_in = if !survived {
        Err("server died".to_string())
    } else {
        let mut last;
        loop {
            match abuse::mntr_value(port, "zk_num_alive_connections").await {
                Ok(alive) if baseline.is_some_and(|b| alive <= b) => break Ok(ended.elapsed()),
                Ok(alive) => last = format!("still {alive} connections"),
                Err(e) => last = format!("mntr: {e:#}"),
            }
            if ended.elapsed() > RECOVERY {
                break Err(format!("not within {RECOVERY:?}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let fresh_session =
        abuse::fresh_session(spec.target, IpAddr::V4(Ipv4Addr::LOCALHOST)).await.map_err(|e| format!("{e:#}"));
    survived &= server.alive();
    if !survived {
        eprintln!("# {name} died; its log ends:\n{}", server.log_tail());
    }
    Ok(Outcome { name, report, summary, rss_peak_mib, survived, baseline, recovered_in, fresh_session })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn print_outcome(o: &Outcome) {
    let s = &o.summary;
    println!("## {}", o.name);
    println!(
        "well-behaved: {} ops in {:.1} s = {:.0} ops/s; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms; \
         longest reply gap {:.0} ms; errors {}",
        s.ops,
        o.report.elapsed.as_secs_f64(),
        s.ops_per_sec,
        ms(s.p50),
        ms(s.p99),
        ms(s.p999),
        ms(s.max),
        ms(s.longest_gap),
        s.errors
    );
    for line in o.report.error_lines().lines() {
        println!("  {line}");
    }
    for t in &o.report.abusers {
        println!(
            "abusers ({:>14}, {:3} clients): sessions {:6}, refused {:5}, closed by server {:5}, requests {:8}, replies {:8} ({} errors)",
            t.kind.to_string(),
            t.clients,
            t.sessions,
            t.refused,
            t.closed_by_server,
            t.requests,
            t.replies,
            t.error_replies
        );
    }
    println!(
        "server: RSS peak {}; survived {}; connections back to baseline ({}) {}; new session afterwards {}",
        o.rss_peak_mib.map_or("unknown".into(), |m| format!("{m:.0} MiB")),
        if o.survived { "yes" } else { "NO" },
        o.baseline.map_or("unknown".into(), |b| b.to_string()),
        match &o.recovered_in {
            Ok(d) => format!("after {:.1} s", d.as_secs_f64()),
            Err(e) => format!("NO ({e})"),
        },
        match &o.fresh_session {
            Ok(d) => format!("ok ({:.1} ms)", ms(*d)),
            Err(e) => format!("FAILED ({e})"),
        },
    );
    println!();
}

fn print_table(ours: &Outcome, apache: &Outcome) {
    let (a, b) = (&ours.summary, &apache.summary);
    let ratio = |x: f64, y: f64| if y > 0.0 { format!("{:.3}", x / y) } else { "-".into() };
    println!("| well-behaved clients | referee | apache-zk 3.8 | referee / apache |");
    println!("| --- | ---: | ---: | ---: |");
    println!("| ops/s | {:.0} | {:.0} | {} |", a.ops_per_sec, b.ops_per_sec, ratio(a.ops_per_sec, b.ops_per_sec));
    for (label, x, y) in [
        ("p50 latency (ms)", a.p50, b.p50),
        ("p99 latency (ms)", a.p99, b.p99),
        ("p99.9 latency (ms)", a.p999, b.p999),
        ("max latency (ms)", a.max, b.max),
        ("longest reply gap (ms)", a.longest_gap, b.longest_gap),
    ] {
        println!("| {label} | {:.2} | {:.2} | {} |", ms(x), ms(y), ratio(ms(x), ms(y)));
    }
    println!("| errors | {} | {} | |", a.errors, b.errors);
    let rss = |o: &Outcome| o.rss_peak_mib.map_or("unknown".into(), |m| format!("{m:.0}"));
    let rss_ratio = match (ours.rss_peak_mib, apache.rss_peak_mib) {
        (Some(x), Some(y)) => ratio(x, y),
        _ => "-".into(),
    };
    println!("| server RSS peak (MiB) | {} | {} | {rss_ratio} |", rss(ours), rss(apache));
    let yes = |b: bool| if b { "yes" } else { "NO" };
    println!("| server survived | {} | {} | |", yes(ours.survived), yes(apache.survived));
    let back = |o: &Outcome| match &o.recovered_in {
        Ok(d) => format!("{:.1} s", d.as_secs_f64()),
        Err(_) => "NO".into(),
    };
    println!("| connections back to baseline after | {} | {} | |", back(ours), back(apache));
    println!(
        "| new session afterwards | {} | {} | |",
        yes(ours.fresh_session.is_ok()),
        yes(apache.fresh_session.is_ok())
    );
    println!();
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_string())))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores ({cpu}), {mem} RAM, Linux {}, loopback", kernel.trim())
}

/// The 1, 5 and 15 minute load averages: on a shared machine they say how much of the CPU the
/// run did not have to itself.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

async fn abuse_bench(args: AbuseArgs) -> Result<()> {
    if args.seconds == 0 || args.abusers == 0 {
        bail!("--seconds and --abusers must be at least 1");
    }
    let spec_for = |target| {
        let mut spec = AbuseSpec::new(target, Duration::from_secs(args.seconds));
        spec.abusers = args.abusers;
        if let Some(n) = args.watches_per_connection {
            spec.watches_per_connection = n;
        }
        if !args.only.is_empty() {
            spec.misbehaviours = args.only.iter().map(|k| Misbehaviour::from(*k)).collect();
        }
        spec
    };
    let shape = spec_for(SocketAddr::from(([127, 0, 0, 1], 0)));
    println!(
        "# coordinator-bench abuse --seconds {} --abusers {}{}{}{}",
        args.seconds,
        args.abusers,
        args.watches_per_connection.map(|n| format!(" --watches-per-connection {n}")).unwrap_or_default(),
        args.only
            .iter()
            .filter_map(|k| clap::ValueEnum::to_possible_value(k).map(|v| format!(" --only {}", v.get_name())))
            .collect::<String>(),
        if args.reference_zk { " --reference-zk" } else { "" }
    );
    println!("# machine: {}", machine());
    println!(
        "# load: {} abusers from {} loopback addresses ({} never read: half ask for {} MiB of replies, half leave {} \
         watches; {} flood with {} requests in flight; {} leak sessions; {} send {}-byte paths), {} well-behaved \
         clients from 127.0.0.1 (getData/setData/create, one at a time)",
        shape.abusers,
        shape.abuser_sources.len(),
        shape.clients_of(Misbehaviour::NeverReads),
        shape.unread_reply_bytes >> 20,
        shape.watches_per_connection,
        shape.clients_of(Misbehaviour::Floods),
        shape.flood_outstanding,
        shape.clients_of(Misbehaviour::LeaksSessions),
        shape.clients_of(Misbehaviour::HugePaths),
        shape.max_packet_bytes - abuse::wire::REQUEST_OVERHEAD,
        shape.well_behaved,
    );
    println!();

    let ours = measure(start_referee().await?, spec_for).await?;
    print_outcome(&ours);
    let apache = if args.reference_zk {
        let server = start_apache().await?;
        if let Ok(version) = srvr(server.port()).await {
            if let Some(line) = version.lines().next() {
                println!("# apache-zk: {line}");
            }
        }
        let outcome = measure(server, spec_for).await?;
        print_outcome(&outcome);
        Some(outcome)
    } else {
        None
    };
    if let Some(apache) = &apache {
        print_table(&ours, apache);
    }
    let p99 = ms(ours.summary.p99);
    println!(
        "target: referee's well-behaved p99 under 50 ms: {} ({p99:.2} ms)",
        if p99 < 50.0 && ours.summary.errors == 0 { "met" } else { "MISSED" }
    );
    let mut failed = Vec::new();
    if ours.summary.errors > 0 {
        failed.push(format!("{} well-behaved requests failed", ours.summary.errors));
    }
    if !ours.survived {
        failed.push("the coordinator died".to_string());
    }
    if let Err(e) = &ours.recovered_in {
        failed.push(format!("the abusers' connections stayed open: {e}"));
    }
    if let Err(e) = &ours.fresh_session {
        failed.push(format!("no new session afterwards: {e}"));
    }
    if !failed.is_empty() {
        bail!("the coordinator failed under abuse: {}", failed.join("; "));
    }
    Ok(())
}

/// The file system a path lives on: the longest mount point of `/proc/self/mounts` that
/// contains it, as (device, type).
fn file_system_of(path: &std::path::Path) -> Result<(String, String)> {
    let path = path.canonicalize().with_context(|| format!("resolving {}", path.display()))?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3).then(|| (f[0].to_string(), f[1].replace("\\040", " "), f[2].to_string()))
        })
        .filter(|(_, at, _)| path.starts_with(at))
        .max_by_key(|(_, at, _)| at.len())
        .map(|(dev, _, fs)| (dev, fs))
        .with_context(|| format!("no mount holds {}", path.display()))
}

/// Refuses a data directory on memory: a server that need not reach the disk measures
/// something other than what it would do in service.
fn on_real_disk(path: &std::path::Path) -> Result<String> {
    let (dev, fs) = file_system_of(path)?;
    if matches!(fs.as_str(), "tmpfs" | "ramfs" | "devtmpfs") {
        bail!("{} is on {fs}: the servers' data must be on a disk (set TMPDIR to a directory on one)", path.display());
    }
    let rotational = dev
        .strip_prefix("/dev/")
        .and_then(|d| std::fs::read_to_string(format!("/sys/class/block/{d}/queue/rotational")).ok())
        .map(|r| if r.trim() == "1" { ", rotational" } else { ", not rotational" })
        .unwrap_or("");
    Ok(format!("{dev} {fs}{rotational}"))
}

/// One cell on one server: what the clients saw, and the CPU time used meanwhile.
struct Cell {
    report: CellReport,
    /// CPU time of the server's processes (summed over an ensemble's) from just before the
    /// cell's sessions connect to just after they close.
    server_cpu: Option<Duration>,
    /// CPU time of this bench's own process (the clients) over the same span.
    client_cpu: Option<Duration>,
}

impl Cell {
    /// Runs `work` (one cell against `server`) and measures the CPU time both sides used.
    async fn measure(
        server: &ServerUnderTest,
        work: impl std::future::Future<Output = Result<CellReport>>,
    ) -> Result<Cell> {
        let before = (server.cpu(), proc_cpu(std::process::id()));
        let report = work.await?;
        let used = |after: Option<Duration>, before: Option<Duration>| Some(after?.saturating_sub(before?));
        Ok(Cell {
            server_cpu: used(server.cpu(), before.0),
            client_cpu: used(proc_cpu(std::process::id()), before.1),
            report,
        })
    }

    /// CPU time per reply, in µs.
    fn per_op_us(&self, cpu: Option<Duration>) -> Option<f64> {
        let cpu = cpu?;
        (self.report.ops > 0).then(|| cpu.as_secs_f64() * 1e6 / self.report.ops as f64)
    }

    fn server_us_per_op(&self) -> Option<f64> {
        self.per_op_us(self.server_cpu)
    }

    /// The cell's line: what the clients saw, then the CPU per reply of the server and of the
    /// clients.
    fn line(&self, name: &str) -> String {
        let us = |x: Option<f64>| x.map_or("unknown".to_string(), |x| format!("{x:.1} µs"));
        format!(
            "{}; CPU per reply: server {}, clients {}",
            cell_line(name, &self.report),
            us(self.server_us_per_op()),
            us(self.per_op_us(self.client_cpu))
        )
    }
}

/// What the throughput run measured of one server.
struct ServerRun {
    name: &'static str,
    cells: Vec<Cell>,
    stall: Option<Cell>,
    /// Start-up of an empty server: process start to the first reply.
    start_empty: Option<Duration>,
    rss_idle_mib: Option<f64>,
    /// RSS with the --znodes nodes, and how long creating them took.
    rss_full_mib: Option<f64>,
    fill_time: Option<Duration>,
    /// Restart with the --znodes nodes: to the first reply, and whether the last node was there.
    start_full: Option<(Duration, bool)>,
    load: Vec<String>,
}

/// Starts a fresh server of `kind` and waits for its first reply, returning the server and
/// the time from process start to that reply.
async fn spawn_and_time(referee: bool, servers: usize) -> Result<(ServerUnderTest, Duration)> {
    let spawned = Instant::now();
    let mut server = if referee {
        // No per-address connection limit, as Apache ZooKeeper is run with maxClientCnxns=0:
        // every session of a cell comes from 127.0.0.1.
        spawn_referee(ScratchDir::new("coordinator-bench")?, servers, "max_connections_per_address: 0\n")?
    } else {
        if !apache_zookeeper_installed() {
            bail!("measuring Apache ZooKeeper needs it installed (apt-get install zookeeper) with java on PATH");
        }
        if servers == 1 {
            let zk = tokio::task::spawn_blocking(|| ApacheZk::spawn(ApacheZkProfile::Stock)).await??;
            let pid = zk.pid();
            ServerUnderTest::Apache { zk, pid }
        } else {
            ServerUnderTest::ApacheEnsemble { zk: ApacheZkEnsemble::spawn(servers)? }
        }
    };
    let target = SocketAddr::from(([127, 0, 0, 1], server.port()));
    let first = tp::first_reply(target, "/", spawned, Duration::from_secs(60)).await;
    if !server.alive() {
        bail!("{} exited at start-up: {}", server.name(), server.log_tail());
    }
    let (took, _) = first.with_context(|| format!("{} did not serve: {}", server.name(), server.log_tail()))?;
    Ok((server, took))
}

/// The data directory of a server, to check where it is.
fn data_dir_of(server: &ServerUnderTest) -> PathBuf {
    match server {
        ServerUnderTest::Referee { dir, .. } => dir.0.clone(),
        ServerUnderTest::Apache { zk, .. } => zk.data_dir(),
        ServerUnderTest::ApacheEnsemble { zk } => zk.data_dir(),
    }
}

/// Kills every server as a power loss would and starts them again on their data; returns the
/// time from the new processes' start to server 1's first reply to `exists(probe)`, and
/// whether `probe` was there.
async fn restart_and_time(server: &mut ServerUnderTest, probe: &str) -> Result<(Duration, bool)> {
    let spawned;
    match server {
        ServerUnderTest::Referee { children, dir, ports } => {
            for child in children.iter_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
            spawned = Instant::now();
            (*children, *ports) = spawn_referee_in(dir, ports.len(), "")?;
        }
        ServerUnderTest::Apache { zk, pid } => {
            spawned = Instant::now();
            zk.restart()?;
            *pid = zk.pid();
        }
        ServerUnderTest::ApacheEnsemble { zk } => {
            spawned = Instant::now();
            zk.restart_all()?;
        }
    }
    let target = SocketAddr::from(([127, 0, 0, 1], server.port()));
    tp::first_reply(target, probe, spawned, Duration::from_secs(120)).await
}

fn cell_line(name: &str, c: &CellReport) -> String {
    format!(
        "{name} {} {}: {} ops in {:.2} s = {:.0} ops/s; latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms; \
         longest stall {:.1} ms (at {:.2} s); errors {}",
        c.op.name(),
        c.shape,
        c.ops,
        c.elapsed.as_secs_f64(),
        c.ops_per_sec(),
        ms(c.percentile(0.5)),
        ms(c.percentile(0.99)),
        ms(c.percentile(0.999)),
        ms(c.longest_stall),
        c.stall_at.as_secs_f64(),
        errors(c)
    )
}

/// A cell's errors, and the connections the server closed during it (each one's requests in
/// flight are among the errors): "0", or "12 (3 connections closed by the server)".
fn errors(c: &CellReport) -> String {
    match c.closed {
        0 => c.errors.to_string(),
        1 => format!("{} (1 connection closed by the server)", c.errors),
        n => format!("{} ({n} connections closed by the server)", c.errors),
    }
}

/// A server's figures before any cell: ready for [`memory_of`] and the cells.
fn new_run(referee: bool) -> ServerRun {
    ServerRun {
        name: if referee { "referee" } else { "apache-zk" },
        cells: Vec::new(),
        stall: None,
        start_empty: None,
        rss_idle_mib: None,
        rss_full_mib: None,
        fill_time: None,
        start_full: None,
        load: Vec::new(),
    }
}

/// Copies our servers' logs into `to` (if given; made at the start of the run) as
/// `{phase}-{log name}`; Apache's are not ours to keep.
fn keep_referee_logs(server: &ServerUnderTest, to: Option<&std::path::Path>, phase: &str) -> Result<()> {
    let (Some(to), ServerUnderTest::Referee { dir, ports, .. }) = (to, server) else { return Ok(()) };
    for id in 1..=ports.len() {
        let name = referee_log_name(ports.len(), id);
        let kept = to.join(format!("{phase}-{name}"));
        std::fs::copy(dir.path(&name), &kept)
            .with_context(|| format!("copying the server's log to {}", kept.display()))?;
        println!("# referee: server log kept in {}", kept.display());
    }
    Ok(())
}

/// Now, in seconds since the Unix epoch.
fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

fn print_data_dir(name: &str, server: &ServerUnderTest) -> Result<()> {
    println!("# {name}: data directory on {}", on_real_disk(&data_dir_of(server))?);
    Ok(())
}

/// Start-up, memory with --znodes nodes, the stall run on them and the restart, on a server
/// of its own that is stopped afterwards.
async fn memory_of(referee: bool, args: &ThroughputArgs, run: &mut ServerRun) -> Result<()> {
    let name = run.name;
    let data = |s: &ServerUnderTest| print_data_dir(name, s);
    let servers = usize::from(args.ensemble);
    let (mut server, took) = spawn_and_time(referee, servers).await?;
    data(&server)?;
    run.start_empty = Some(took);
    run.rss_idle_mib = server.status_mib("VmRSS:");
    println!(
        "{name} start-up, empty: {:.0} ms to the first reply; idle RSS {}",
        ms(took),
        run.rss_idle_mib.map_or("unknown".into(), |m| format!("{m:.1} MiB"))
    );
    if args.znodes > 0 {
        let targets = server.targets();
        let target = targets[0];
        let fill_shape = Shape { sessions: 16, outstanding: 16 };
        let took = tp::fill(&targets, "/mem", args.znodes, args.data_bytes, fill_shape).await?;
        run.fill_time = Some(took);
        let last = format!("/mem/n{}", args.znodes - 1);
        for &t in &targets {
            tp::await_node(t, &last, Duration::from_secs(60)).await?;
        }
        run.rss_full_mib = server.status_mib("VmRSS:");
        println!(
            "{name} with {} znodes of {} bytes (created in {:.1} s at {fill_shape}): RSS {}",
            args.znodes,
            args.data_bytes,
            took.as_secs_f64(),
            run.rss_full_mib.map_or("unknown".into(), |m| format!("{m:.1} MiB"))
        );
        if args.stall_seconds > 0 {
            // On the full tree: what a snapshot of it costs the writers shows here.
            let op = args.stall_op.op();
            if op == Op::Delete {
                bail!("--stall-op delete has nothing to delete: choose another operation");
            }
            tp::prepare(target, 0, args.data_bytes).await?;
            let pool = tp::Pool::of((0..args.znodes).map(|i| format!("/mem/n{i}")).collect(), args.data_bytes);
            println!("# {name}: load average before the stall run: {}", load_average());
            println!("# {name}: the stall run starts at {:.3} s since the Unix epoch", unix_now());
            let stall = Duration::from_secs(args.stall_seconds);
            let cell = Cell::measure(&server, async {
                tp::run_cell(&targets, op, args.stall_shape, stall, &pool, 0, None)
                    .await
                    .with_context(|| format!("{name}: the stall run"))
            })
            .await?;
            println!("{name} stall run on the {} znodes ({} s): {}", args.znodes, args.stall_seconds, cell.line(name));
            println!("# {name}: load average after the stall run: {}", load_average());
            run.stall = Some(cell);
        }
        let probe = format!("/mem/n{}", args.znodes - 1);
        let timed = restart_and_time(&mut server, &probe).await?;
        println!(
            "{name} restart with {} znodes: {:.0} ms to the first reply; the last znode {} after the restart",
            args.znodes,
            ms(timed.0),
            if timed.1 { "was there" } else { "was GONE" }
        );
        run.start_full = Some(timed);
    }
    keep_referee_logs(&server, args.server_logs.as_deref(), "memory")
}

/// A fresh server for the cells, with the pool the reads and setData pick from.
struct CellServer {
    server: ServerUnderTest,
    targets: Vec<SocketAddr>,
    pool: tp::Pool,
}

async fn cell_server(referee: bool, args: &ThroughputArgs) -> Result<CellServer> {
    let (server, _) = spawn_and_time(referee, usize::from(args.ensemble)).await?;
    print_data_dir(if referee { "referee" } else { "apache-zk" }, &server)?;
    let targets = server.targets();
    let pool = tp::prepare(targets[0], args.pool, args.data_bytes).await?;
    let last = format!("/tp/pool/n{}", args.pool - 1);
    for &t in &targets {
        tp::await_node(t, &last, Duration::from_secs(60)).await?;
    }
    Ok(CellServer { server, targets, pool })
}

/// Every cell on every server in `runs`, all of them up at once: each cell runs on one
/// server, then on the other, the order swapped from one cell to the next, so that a machine
/// that slows down or speeds up during the run weighs on both alike (one server's cells after
/// the other's would hand all of that drift to the second).
async fn run_cells(runs: &mut [(bool, ServerRun)], args: &ThroughputArgs, shapes: &[Shape], ops: &[Op]) -> Result<()> {
    let mut up = Vec::new();
    for (referee, _) in runs.iter() {
        up.push(cell_server(*referee, args).await?);
    }
    let load = load_average();
    println!("# load average before the cells: {load}");
    for (_, run) in runs.iter_mut() {
        run.load.push(load.clone());
    }
    let duration = Duration::from_secs_f64(args.seconds);
    let mut cell = 0;
    for &shape in shapes {
        let mut created: Vec<Option<Vec<Vec<String>>>> = vec![None; runs.len()];
        for &op in ops {
            cell += 1;
            let order: Vec<usize> =
                if cell % 2 == 1 { (0..runs.len()).collect() } else { (0..runs.len()).rev().collect() };
            for i in order {
                let (run, at) = (&mut runs[i].1, &mut up[i]);
                let name = run.name;
                let to_delete = if op == Op::Delete { created[i].take() } else { None };
                let measured = Cell::measure(&at.server, async {
                    tp::run_cell(&at.targets, op, shape, duration, &at.pool, cell, to_delete)
                        .await
                        .with_context(|| format!("{name}: {} at {shape}", op.name()))
                })
                .await?;
                println!("{}", measured.line(name));
                if op == Op::Create {
                    created[i] = Some(measured.report.created.clone());
                }
                run.cells.push(measured);
                if !at.server.alive() {
                    bail!("{name} died during the cells: {}", at.server.log_tail());
                }
            }
        }
    }
    let load = load_average();
    println!("# load average after the cells: {load}");
    for (_, run) in runs.iter_mut() {
        run.load.push(load.clone());
    }
    for at in &up {
        keep_referee_logs(&at.server, args.server_logs.as_deref(), "cells")?;
    }
    Ok(())
}

fn ratio(x: f64, y: f64) -> String {
    if y > 0.0 {
        format!("{:.2}", x / y)
    } else {
        "-".into()
    }
}

/// The markdown tables of a run; with both servers, side by side with ratios ours / Apache.
fn throughput_tables(runs: &[ServerRun], cell: Duration) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let (ours, theirs) = match runs {
        [a, b] => (a, Some(b)),
        [a] => (a, None),
        _ => return out,
    };
    let lat = |c: &CellReport| {
        format!("{:.2} / {:.2} / {:.2}", ms(c.percentile(0.5)), ms(c.percentile(0.99)), ms(c.percentile(0.999)))
    };
    let cpu = |c: &Cell| c.server_us_per_op().map_or("-".to_string(), |us| format!("{us:.1}"));
    match theirs {
        Some(apache) => {
            let _ = writeln!(
                out,
                "| op | sessions x in flight | {} ops/s | {} ops/s | ops/s ratio | {} p50 / p99 / p99.9 ms | {} p50 / p99 / p99.9 ms | p99 ratio | longest stall ms ({} / {}) | server CPU µs per reply ({} / {}) | CPU ratio | errors |",
                ours.name, apache.name, ours.name, apache.name, ours.name, apache.name, ours.name, apache.name
            );
            let _ =
                writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
            for (x, y) in ours.cells.iter().zip(&apache.cells) {
                let (a, b) = (&x.report, &y.report);
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {:.0} / {:.0} | {} / {} | {} | {} / {} |",
                    a.op.name(),
                    a.shape,
                    a.ops_per_sec(),
                    b.ops_per_sec(),
                    if RowFigures::of(a, b, cell).not_compared(cell) {
                        "not compared".to_string()
                    } else {
                        ratio(a.ops_per_sec(), b.ops_per_sec())
                    },
                    lat(a),
                    lat(b),
                    ratio(ms(a.percentile(0.99)), ms(b.percentile(0.99))),
                    ms(a.longest_stall),
                    ms(b.longest_stall),
                    cpu(x),
                    cpu(y),
                    match (x.server_us_per_op(), y.server_us_per_op()) {
                        (Some(p), Some(q)) => ratio(p, q),
                        _ => "-".into(),
                    },
                    errors(a),
                    errors(b)
                );
            }
        }
        None => {
            let _ = writeln!(
                out,
                "| op | sessions x in flight | {} ops/s | p50 / p99 / p99.9 ms | longest stall ms | server CPU µs per reply | errors |",
                ours.name
            );
            let _ = writeln!(out, "| --- | --- | ---: | ---: | ---: | ---: | ---: |");
            for x in &ours.cells {
                let a = &x.report;
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {} | {:.0} | {} | {} |",
                    a.op.name(),
                    a.shape,
                    a.ops_per_sec(),
                    lat(a),
                    ms(a.longest_stall),
                    cpu(x),
                    errors(a)
                );
            }
        }
    }
    let _ = writeln!(out);
    let names: Vec<&str> = runs.iter().map(|r| r.name).collect();
    let _ = writeln!(out, "| | {} |{}", names.join(" | "), if runs.len() == 2 { " ratio |" } else { "" });
    let _ = writeln!(out, "| --- |{}", " ---: |".repeat(runs.len() + usize::from(runs.len() == 2)));
    let row = |label: &str, v: &dyn Fn(&ServerRun) -> Option<f64>, digits: usize| {
        let vals: Vec<Option<f64>> = runs.iter().map(v).collect();
        let mut line = format!("| {label} |");
        for x in &vals {
            line += &x.map_or(" - |".to_string(), |x| format!(" {x:.digits$} |"));
        }
        if let [Some(a), Some(b)] = vals[..] {
            line += &format!(" {} |", ratio(a, b));
        } else if runs.len() == 2 {
            line += " - |";
        }
        line
    };
    let _ = writeln!(out, "{}", row("start-up, empty (ms to first reply)", &|r| r.start_empty.map(ms), 0));
    let _ = writeln!(out, "{}", row("RSS idle (MiB)", &|r| r.rss_idle_mib, 1));
    let _ = writeln!(out, "{}", row("RSS with the znodes (MiB)", &|r| r.rss_full_mib, 1));
    let _ = writeln!(out, "{}", row("creating the znodes (s, 16 x 16)", &|r| r.fill_time.map(|d| d.as_secs_f64()), 1));
    let _ =
        writeln!(out, "{}", row("restart with the znodes (ms to first reply)", &|r| r.start_full.map(|t| ms(t.0)), 0));
    let kept: Vec<&str> = runs
        .iter()
        .map(|r| match r.start_full {
            Some((_, true)) => "yes",
            Some((_, false)) => "NO",
            None => "-",
        })
        .collect();
    let _ = writeln!(
        out,
        "| znodes still there after the restart | {} |{}",
        kept.join(" | "),
        if runs.len() == 2 { " |" } else { "" }
    );
    if runs.iter().any(|r| r.stall.is_some()) {
        let _ = writeln!(out);
        for r in runs {
            if let Some(cell) = &r.stall {
                let c = &cell.report;
                let _ = writeln!(
                    out,
                    "- stall run, {}: {} at {} for {:.0} s: {:.0} ops/s, p99 {:.2} ms, longest time without a reply {:.1} ms (at {:.1} s), server CPU {} µs per reply",
                    r.name,
                    c.op.name(),
                    c.shape,
                    c.elapsed.as_secs_f64(),
                    c.ops_per_sec(),
                    ms(c.percentile(0.99)),
                    ms(c.longest_stall),
                    c.stall_at.as_secs_f64(),
                    cpu(cell)
                );
            }
        }
    }
    out
}

/// The coordinator's RSS with the --znodes nodes must stay under this per server, whatever
/// Apache's is.
const RSS_FULL_LIMIT_MIB: f64 = 120.0;

/// One row of the comparison: the same cell (operation and shape) on our server and on Apache's.
struct RowFigures {
    op: &'static str,
    shape: String,
    ours_ops: f64,
    theirs_ops: f64,
    ours_p99: Duration,
    theirs_p99: Duration,
    /// Apache's longest time without a reply in the cell, and when it began.
    theirs_stall: Duration,
    theirs_stall_at: Duration,
    /// From Apache's last reply to the cell's end, for a cell whose sessions run to its end (all
    /// but delete, whose sessions stop when they run out of nodes): zero when it answered to
    /// the end.
    theirs_quiet_end: Duration,
}

impl RowFigures {
    fn of(ours: &CellReport, theirs: &CellReport, cell: Duration) -> RowFigures {
        let runs_to_the_end = ours.op != Op::Delete;
        RowFigures {
            op: ours.op.name(),
            shape: ours.shape.to_string(),
            ours_ops: ours.ops_per_sec(),
            theirs_ops: theirs.ops_per_sec(),
            ours_p99: ours.percentile(0.99),
            theirs_p99: theirs.percentile(0.99),
            theirs_stall: theirs.longest_stall,
            theirs_stall_at: theirs.stall_at,
            theirs_quiet_end: if runs_to_the_end { cell.saturating_sub(theirs.elapsed) } else { Duration::ZERO },
        }
    }

    /// Whether Apache's cell measured a stall rather than the server ([`reference_stalled`]).
    fn not_compared(&self, cell: Duration) -> bool {
        reference_stalled(self.theirs_stall, self.theirs_quiet_end, cell)
    }
}

/// Whether a reference cell measured a stall rather than the server: it went longer than a
/// fifth of the cell without a single reply (an election, a follower stuck behind its leader),
/// between two replies or from its last reply to the cell's end. Its throughput is then not a
/// figure to divide by, in either direction.
fn reference_stalled(stall: Duration, quiet_end: Duration, cell: Duration) -> bool {
    stall.max(quiet_end) > cell / 5
}

/// One row's misses: under 2x Apache's throughput, a worse p99, or, when Apache's cell stalled
/// (see [`reference_stalled`]), not compared at all, which is a miss too: no ratio is claimed
/// from such a cell, and the line says to run it again.
fn row_verdict(row: &RowFigures, cell: Duration) -> Vec<String> {
    let (op, shape) = (row.op, &row.shape);
    if row.not_compared(cell) {
        let (secs, stall) = (cell.as_secs_f64(), row.theirs_stall);
        let why = if row.theirs_quiet_end > stall {
            format!(
                "Apache's last reply came {:.1} s before the end of the {secs:.0} s cell",
                row.theirs_quiet_end.as_secs_f64()
            )
        } else {
            format!(
                "Apache went {:.0} ms without a reply (from {:.1} s into a {secs:.0} s cell), so its {:.0} ops/s \
                 measure that stall",
                ms(stall),
                row.theirs_stall_at.as_secs_f64(),
                row.theirs_ops
            )
        };
        return vec![format!("{op} {shape}: not compared: {why}; run the cell again (--ops and --shapes)")];
    }
    let mut misses = Vec::new();
    let r = row.ours_ops / row.theirs_ops.max(f64::MIN_POSITIVE);
    if r < 2.0 {
        misses.push(format!(
            "{op} {shape}: {:.0} ops/s is x{r:.2} of Apache's {:.0}, not x2",
            row.ours_ops, row.theirs_ops
        ));
    }
    if row.ours_p99 > row.theirs_p99 {
        misses.push(format!(
            "{op} {shape}: p99 {:.2} ms is worse than Apache's {:.2} ms",
            ms(row.ours_p99),
            ms(row.theirs_p99)
        ));
    }
    misses
}

/// The targets: every row at least 2x Apache's throughput with a p99 no worse, and the
/// resource figures; each miss is named with its numbers. `cell` is the length of one cell.
fn throughput_verdict(ours: &ServerRun, apache: &ServerRun, servers: usize, cell: Duration) -> Vec<String> {
    let rss_limit = RSS_FULL_LIMIT_MIB * servers as f64;
    let mut misses = Vec::new();
    for (a, b) in ours.cells.iter().zip(&apache.cells).map(|(x, y)| (&x.report, &y.report)) {
        misses.extend(row_verdict(&RowFigures::of(a, b, cell), cell));
    }
    if let (Some(x), Some(y)) = (ours.rss_full_mib, apache.rss_full_mib) {
        if x > y / 5.0 {
            misses.push(format!("RSS with the znodes {x:.0} MiB is more than a fifth of Apache's {y:.0} MiB"));
        }
    }
    if let Some(x) = ours.rss_full_mib {
        if x >= rss_limit {
            misses.push(format!("RSS with the znodes {x:.0} MiB is not under {rss_limit:.0} MiB"));
        }
    }
    if let Some((t, kept)) = ours.start_full {
        if t > Duration::from_secs(1) {
            misses.push(format!("restart with the znodes took {:.0} ms, not under 1 s", ms(t)));
        }
        if !kept {
            misses.push("the znodes were gone after the restart".into());
        }
    }
    if let Some(c) = ours.stall.as_ref().map(|c| &c.report) {
        if c.longest_stall > Duration::from_millis(50) {
            misses.push(format!("the stall run went {:.0} ms without a reply, not under 50 ms", ms(c.longest_stall)));
        }
    }
    misses
}

async fn throughput_bench(args: ThroughputArgs) -> Result<()> {
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        bail!("--seconds must be a positive number of seconds");
    }
    if args.pool == 0 {
        bail!("--pool must be at least 1");
    }
    if !matches!(args.ensemble, 1 | 3 | 5) {
        bail!("--ensemble {}: give 1 (a server alone), 3 or 5 (an ensemble of voters)", args.ensemble);
    }
    // In the order a run measures them: the targets' rows, then sync.
    let ops: Vec<Op> =
        Op::ALL.into_iter().chain([Op::Sync]).filter(|op| args.ops.iter().any(|o| o.op() == *op)).collect();
    if ops.contains(&Op::Delete) && !ops.contains(&Op::Create) {
        bail!("--ops delete deletes what create made: add create");
    }
    if let Some(dir) = &args.server_logs {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--server-logs {}: cannot create that directory", dir.display()))?;
    }
    let disk = on_real_disk(&std::env::temp_dir())?;
    let command = format!(
        "coordinator-bench throughput --seconds {} --ops {} --shapes {} --servers {} --znodes {} --data-bytes {} --pool {}{}{}",
        args.seconds,
        ThroughputOp::all()
            .into_iter()
            .chain([ThroughputOp::Sync])
            .filter(|o| args.ops.contains(o))
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join(","),
        args.shapes.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(","),
        clap::ValueEnum::to_possible_value(&args.servers).map(|v| v.get_name().to_string()).unwrap_or_default(),
        args.znodes,
        args.data_bytes,
        args.pool,
        if args.stall_seconds > 0 {
            format!(" --stall-seconds {} --stall-op {} --stall-shape {}", args.stall_seconds, args.stall_op, args.stall_shape)
        } else {
            String::new()
        },
        if args.ensemble > 1 { format!(" --ensemble {}", args.ensemble) } else { String::new() }
    );
    let mut header = format!("# {command}\n# machine: {}\n# data directories: {disk}\n", machine());
    header += &format!("# load average at the start: {}\n", load_average());
    print!("{header}");
    println!();
    let mut runs = Vec::new();
    if matches!(args.servers, Servers::Both | Servers::Referee) {
        runs.push((true, new_run(true)));
    }
    if matches!(args.servers, Servers::Both | Servers::Apache) {
        runs.push((false, new_run(false)));
    }
    for (referee, run) in &mut runs {
        memory_of(*referee, &args, run).await?;
        println!();
    }
    run_cells(&mut runs, &args, &args.shapes, &ops).await?;
    println!();
    let runs: Vec<ServerRun> = runs.into_iter().map(|(_, run)| run).collect();
    let tables = throughput_tables(&runs, Duration::from_secs_f64(args.seconds));
    println!("{tables}");
    let mut verdict = String::new();
    if let [ours, apache] = &runs[..] {
        let misses =
            throughput_verdict(ours, apache, usize::from(args.ensemble), Duration::from_secs_f64(args.seconds));
        if misses.is_empty() {
            verdict = "targets: all met\n".into();
        } else {
            verdict = format!("targets missed ({}):\n", misses.len());
            for m in misses {
                verdict += &format!("- {m}\n");
            }
        }
        print!("{verdict}");
    }
    if let Some(path) = &args.markdown {
        let loads: Vec<String> = runs.first().map(|r| r.load.join(" -> ")).into_iter().collect();
        let text = format!(
            "```text\n{}```\n\nLoad average (1, 5, 15 min) before and after the cells (each cell run on one \
             server and then on the other, the order swapped from cell to cell): {}.\n\n{tables}\n{verdict}",
            header,
            loads.join("; ")
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[derive(Args)]
struct FailoverArgs {
    /// Voting servers in the ensemble.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(3..=5))]
    ensemble: u8,
    /// How many times the leader is killed (the killed server is restarted after each).
    #[arg(long, default_value_t = 10)]
    kills: u32,
    /// How often a fresh write is tried through each surviving server after a kill.
    #[arg(long, default_value_t = 10)]
    retry_ms: u64,
    /// Keep the scratch directory (configs, data, the servers' logs) and print where it is.
    #[arg(long)]
    keep: bool,
}

/// One kill's figures.
struct FailoverRound {
    killed: usize,
    /// The server that then said it leads, and when after the kill.
    leader: (usize, Duration),
    /// The server through which the first write was acknowledged, and when after the kill.
    write: (usize, Duration),
}

/// The longest a kill may take to be recovered from before the bench gives up.
const FAILOVER_LIMIT: Duration = Duration::from_secs(30);

/// Spawns server `id` of `servers` again on its config and data directory in `dir`, its log
/// appended to the first run's.
fn respawn_referee(dir: &ScratchDir, servers: usize, id: usize) -> Result<Child> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.path(&referee_log_name(servers, id)))?;
    Command::new(referee_bin()?)
        .arg("coordinator")
        .arg("--config")
        .arg(dir.path(&format!("server-{id}.yaml")))
        .env("REFEREE_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("restarting server {id}"))
}

/// The `Mode:` server at `port` reports, if it answers within a second.
async fn mode_of(port: u16) -> Option<String> {
    let answer = tokio::time::timeout(Duration::from_secs(1), srvr(port)).await.ok()?.ok()?;
    answer.lines().find_map(|l| l.strip_prefix("Mode: ")).map(str::to_string)
}

/// Waits until exactly one of the servers (1-based ids, `ports[id - 1]`) of `among` says it
/// leads and every other one follows; returns it.
async fn settled_leader(ports: &[u16], among: &[usize]) -> Result<usize> {
    let began = Instant::now();
    loop {
        let mut leaders = Vec::new();
        let mut all_answer = true;
        for &id in among {
            match mode_of(ports[id - 1]).await.as_deref() {
                Some("leader") => leaders.push(id),
                Some("follower") => {}
                _ => all_answer = false,
            }
        }
        if let ([leader], true) = (&leaders[..], all_answer) {
            return Ok(*leader);
        }
        if began.elapsed() > FAILOVER_LIMIT {
            bail!("no single leader among servers {among:?} within {FAILOVER_LIMIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `srvr` on every server of `among` every 10 ms until one says it leads; returns it and
/// when, after `killed_at`.
async fn first_leader(ports: &[u16], among: &[usize], killed_at: Instant) -> Result<(usize, Duration)> {
    loop {
        for &id in among {
            if mode_of(ports[id - 1]).await.as_deref() == Some("leader") {
                return Ok((id, killed_at.elapsed()));
            }
        }
        if killed_at.elapsed() > FAILOVER_LIMIT {
            bail!("no server of {among:?} said it leads within {FAILOVER_LIMIT:?} of the kill");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One attempt: a new session on `port` and one create of `path`; whether it was acknowledged.
async fn raw_write(port: u16, path: String) -> bool {
    let opts = abuse::ConnectOptions {
        session_timeout_ms: 4_000,
        handshake_timeout: Duration::from_secs(2),
        ..abuse::ConnectOptions::default()
    };
    let attempt = async {
        let mut c = abuse::RawClient::connect(SocketAddr::from(([127, 0, 0, 1], port)), &opts).await?;
        let (err, _) = c.call(&abuse::wire::Request::Create { path, data: b"f".to_vec(), flags: 0 }).await?;
        anyhow::Ok(err == 0)
    };
    matches!(tokio::time::timeout(Duration::from_secs(3), attempt).await, Ok(Ok(true)))
}

/// Starts a write attempt through every server of `among` every `every`, each on a fresh
/// connection and without waiting for the earlier ones, until one is acknowledged; returns the
/// server and when, after `killed_at`.
async fn first_write(
    ports: &[u16],
    among: &[usize],
    round: u32,
    every: Duration,
    killed_at: Instant,
) -> Result<(usize, Duration)> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut attempts = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(every);
    let mut n = 0u64;
    let won = loop {
        tokio::select! {
            won = rx.recv() => break won,
            _ = tick.tick() => {
                if killed_at.elapsed() > FAILOVER_LIMIT {
                    bail!("no write through {among:?} was acknowledged within {FAILOVER_LIMIT:?} of the kill");
                }
                for &id in among {
                    n += 1;
                    let (tx, port, path) = (tx.clone(), ports[id - 1], format!("/failover/k{round}-s{id}-{n}"));
                    attempts.spawn(async move {
                        if raw_write(port, path).await {
                            let _ = tx.send((id, killed_at.elapsed()));
                        }
                    });
                }
            }
        }
    };
    attempts.abort_all();
    won.context("the write attempts stopped")
}

/// Waits until restarted server `restarted` serves a write made through `leader` after its
/// restart, and then past the peers' live window: the next kill must find a whole ensemble,
/// not one still taking its restarted member back.
async fn caught_up(ports: &[u16], leader: usize, restarted: usize, round: u32) -> Result<()> {
    let path = format!("/failover/restarted-{round}");
    let mut c = tp::connect(SocketAddr::from(([127, 0, 0, 1], ports[leader - 1]))).await?;
    c.call(&abuse::wire::Request::Create { path: path.clone(), data: Vec::new(), flags: 0 }).await?;
    drop(c);
    tp::await_node(SocketAddr::from(([127, 0, 0, 1], ports[restarted - 1])), &path, FAILOVER_LIMIT).await?;
    tokio::time::sleep(RESTART_SETTLE).await;
    Ok(())
}

/// How long after a restarted server has caught up the next kill waits: longer than the peers'
/// live window (3 s), within which a new process for a server id just heard is taken for a
/// duplicate rather than a restart.
const RESTART_SETTLE: Duration = Duration::from_secs(4);

/// Minimum, median and maximum of `xs`, in milliseconds.
fn spread_ms(xs: &[Duration]) -> String {
    let mut v: Vec<f64> = xs.iter().map(|d| ms(*d)).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => "-".into(),
        n => format!("{:.0} / {:.0} / {:.0}", v[0], v[n / 2], v[n - 1]),
    }
}

async fn failover_bench(args: FailoverArgs) -> Result<()> {
    let servers = usize::from(args.ensemble);
    let every = Duration::from_millis(args.retry_ms.max(1));
    let dir = ScratchDir::new("coordinator-bench-failover")?;
    // The servers log at info (the default), elections included, for a breakdown of a kill.
    let (children, ports) = spawn_referee_in(&dir, servers, "")?;
    let mut ensemble = ServerUnderTest::Referee { children, ports: ports.clone(), dir };
    let all: Vec<usize> = (1..=servers).collect();
    println!("failover: {servers} servers on loopback, {} kills; {}", args.kills, machine());
    let mut leader = settled_leader(&ports, &all).await.with_context(|| ensemble.log_tail())?;
    // The parent of every write, made once through the first leader.
    let mut c = tp::connect(SocketAddr::from(([127, 0, 0, 1], ports[leader - 1]))).await?;
    c.call(&abuse::wire::Request::Create { path: "/failover".into(), data: Vec::new(), flags: 0 }).await?;
    drop(c);
    let mut rounds = Vec::new();
    for round in 1..=args.kills {
        let ServerUnderTest::Referee { children, dir, .. } = &mut ensemble else { unreachable!("started above") };
        let load = load_average();
        let victim = &mut children[leader - 1];
        victim.kill().with_context(|| format!("SIGKILL to server {leader}"))?;
        let killed_at = Instant::now();
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        victim.wait()?;
        let rest: Vec<usize> = all.iter().copied().filter(|&id| id != leader).collect();
        let (new_leader, write) =
            tokio::join!(first_leader(&ports, &rest, killed_at), first_write(&ports, &rest, round, every, killed_at));
        let r = FailoverRound { killed: leader, leader: new_leader?, write: write? };
        println!(
            "kill {round}: server {} killed at unix {}.{:03} (load {load}); server {} says it leads after {:.0} ms; \
             first write acknowledged through server {} after {:.0} ms",
            r.killed,
            wall.as_secs(),
            wall.subsec_millis(),
            r.leader.0,
            ms(r.leader.1),
            r.write.0,
            ms(r.write.1)
        );
        children[leader - 1] = respawn_referee(dir, servers, leader)?;
        let restarted = leader;
        leader = settled_leader(&ports, &all).await.with_context(|| ensemble.log_tail())?;
        caught_up(&ports, leader, restarted, round).await.with_context(|| ensemble.log_tail())?;
        rounds.push(r);
    }
    let leads: Vec<Duration> = rounds.iter().map(|r| r.leader.1).collect();
    let writes: Vec<Duration> = rounds.iter().map(|r| r.write.1).collect();
    println!();
    println!("| after kill -9 of the leader ({} kills), ms | min / median / max |", rounds.len());
    println!("|---|---|");
    println!("| a survivor says `Mode: leader` | {} |", spread_ms(&leads));
    println!("| first raw write acknowledged through a survivor | {} |", spread_ms(&writes));
    println!("load average after the run: {}", load_average());
    if args.keep {
        if let ServerUnderTest::Referee { dir, .. } = &mut ensemble {
            let kept = std::mem::replace(&mut dir.0, PathBuf::new());
            println!("servers' logs kept in {}", kept.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(ours_ops: f64, theirs_ops: f64, theirs_stall_ms: u64) -> RowFigures {
        RowFigures {
            op: "setData",
            shape: "1x1".into(),
            ours_ops,
            theirs_ops,
            ours_p99: Duration::from_micros(800),
            theirs_p99: Duration::from_millis(8),
            theirs_stall: Duration::from_millis(theirs_stall_ms),
            theirs_stall_at: Duration::from_millis(210),
            theirs_quiet_end: Duration::ZERO,
        }
    }

    #[test]
    fn a_row_where_apache_stalled_is_not_compared_and_never_counts_as_met() {
        let cell = Duration::from_secs(5);
        // Run 18's row: Apache answered 5 writes a second around a 30 s stall.
        let misses = row_verdict(&row(2_028.0, 5.0, 30_257), cell);
        assert_eq!(misses.len(), 1, "one line, no ratio claimed: {misses:?}");
        assert!(misses[0].contains("not compared") && misses[0].contains("30257 ms"), "{}", misses[0]);
        // The same stall excuses nothing where ours is the slower one either.
        let misses = row_verdict(&row(1.0, 5.0, 30_257), cell);
        assert!(misses[0].contains("not compared"), "{misses:?}");
    }

    #[test]
    fn a_row_where_apache_ran_normally_is_judged_on_its_ratio_and_p99() {
        let cell = Duration::from_secs(5);
        assert!(row_verdict(&row(2_028.0, 915.0, 15), cell).is_empty(), "x2.22 with a better p99 is met");
        let misses = row_verdict(&row(2_028.0, 1_164.0, 20), cell);
        assert_eq!(misses, vec!["setData 1x1: 2028 ops/s is x1.74 of Apache's 1164, not x2".to_string()]);
        let mut worse = row(3_000.0, 1_000.0, 20);
        worse.ours_p99 = Duration::from_millis(9);
        assert_eq!(
            row_verdict(&worse, cell),
            vec!["setData 1x1: p99 9.00 ms is worse than Apache's 8.00 ms".to_string()]
        );
    }

    #[test]
    fn a_row_where_apache_stopped_answering_before_the_end_is_not_compared() {
        let cell = Duration::from_secs(5);
        // A rerun of run 18's row: the server closed the session's connection, and its last
        // reply came at 2.39 s of the 5 s cell, with no gap between replies over 11 ms.
        let mut quiet = row(1_997.0, 753.0, 11);
        quiet.theirs_quiet_end = Duration::from_millis(2_610);
        let misses = row_verdict(&quiet, cell);
        assert_eq!(misses.len(), 1, "{misses:?}");
        assert!(misses[0].contains("not compared") && misses[0].contains("2.6 s before the end"), "{}", misses[0]);
        quiet.theirs_quiet_end = Duration::from_millis(40);
        assert!(row_verdict(&quiet, cell).is_empty(), "a last reply 40 ms before the end is the drain: x2.65 is met");
    }

    #[test]
    fn a_stall_counts_against_the_reference_only_past_a_fifth_of_the_cell() {
        let cell = Duration::from_secs(5);
        let ms = Duration::from_millis;
        assert!(!reference_stalled(ms(1_000), ms(0), cell), "a fifth of the cell exactly is still a figure");
        assert!(reference_stalled(ms(1_001), ms(0), cell));
        assert!(reference_stalled(ms(10), ms(1_001), cell));
        assert!(!reference_stalled(ms(110), ms(30), cell), "Apache's usual worst gap in a cell");
    }

    #[test]
    fn this_process_cpu_time_grows_while_it_computes() {
        let first = proc_cpu(std::process::id()).expect("/proc/self/stat is readable on Linux");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut x = 0u64;
        // Computes until the count moves on (a tick is 10 ms on Linux); a field that is not
        // the CPU time would stay put and run into the deadline.
        while proc_cpu(std::process::id()).expect("/proc/self/stat is readable") <= first {
            assert!(Instant::now() < deadline, "10 s of computing and the CPU time stayed at {first:?}");
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert_eq!(proc_cpu(u32::MAX), None, "no process has that pid");
    }
}
