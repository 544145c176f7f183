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

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use referee_testkit::abuse::{self, AbuseReport, AbuseSpec, Misbehaviour, WellBehavedSummary};
use referee_testkit::{apache_zookeeper_installed, four_letter, free_port, ApacheZk, ApacheZkProfile, ScratchDir};

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
    }
}

/// A server the load runs against.
enum ServerUnderTest {
    /// `referee coordinator` as a child process, with its scratch directory.
    Referee { child: Child, port: u16, dir: ScratchDir },
    /// Apache ZooKeeper's JVM, found by its listening port.
    Apache { zk: ApacheZk, pid: u32 },
}

impl ServerUnderTest {
    fn name(&self) -> &'static str {
        match self {
            ServerUnderTest::Referee { .. } => "referee",
            ServerUnderTest::Apache { .. } => "apache-zk",
        }
    }

    fn port(&self) -> u16 {
        match self {
            ServerUnderTest::Referee { port, .. } => *port,
            ServerUnderTest::Apache { zk, .. } => zk.port,
        }
    }

    fn pid(&self) -> u32 {
        match self {
            ServerUnderTest::Referee { child, .. } => child.id(),
            ServerUnderTest::Apache { pid, .. } => *pid,
        }
    }

    fn alive(&mut self) -> bool {
        match self {
            ServerUnderTest::Referee { child, .. } => matches!(child.try_wait(), Ok(None)),
            ServerUnderTest::Apache { pid, .. } => std::path::Path::new(&format!("/proc/{pid}")).exists(),
        }
    }

    fn log_tail(&self) -> String {
        match self {
            ServerUnderTest::Referee { dir, .. } => {
                let text = std::fs::read_to_string(dir.path("coordinator.log")).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(20)..].join("\n")
            }
            ServerUnderTest::Apache { zk, .. } => zk.log_tail(),
        }
    }
}

impl Drop for ServerUnderTest {
    fn drop(&mut self) {
        if let ServerUnderTest::Referee { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
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
    let dir = ScratchDir::new("coordinator-bench")?;
    let port = free_port().context("choosing the coordinator's port")?;
    let config = dir.path("coordinator.yaml");
    // Defaults for everything but where it listens and keeps its data; the four-letter words
    // the bench reads are named so that a narrower default list cannot hide them.
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\ndata_dir: {}\nfour_letter_words: [ruok, srvr, mntr]\n",
            dir.path("data").display()
        ),
    )?;
    let log = std::fs::File::create(dir.path("coordinator.log"))?;
    let child = Command::new(referee_bin()?)
        .arg("coordinator")
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting referee coordinator")?;
    let mut server = ServerUnderTest::Referee { child, port, dir };
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
    let rss_peak_mib = proc_status_mib(server.pid(), "VmHWM:");
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
