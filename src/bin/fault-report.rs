//! `fault-report`: the failover timing report on simulated hosts.
//!
//! Runs the measured fault scenarios of `tests/fault_hosts.rs` (the same code, with every one
//! of their checks) many times each, on three network namespaces (five with `--coordinator
//! ensemble`: a three-server bundled ensemble on hosts 1 to 3; root, `ip`, `iptables`), and
//! records for every run the time from the fault to the first write the new active master
//! acknowledged. Writes `OUT.md` (percentiles per scenario beside ZKFC's and Patroni's figures
//! from their defaults), `OUT.svg` (every run on a log time axis) and `OUT.txt` (each run's
//! time). A run whose checks fail (two actives, a late acknowledgement, no takeover) is counted
//! as a violation and printed; the command then exits 1.
//!
//! ```sh
//! cargo build --release
//! sudo target/release/fault-report --runs 20 --out bench/failover-faults
//! ```

#[path = "../../tests/support/fault_scenarios.rs"]
mod fault_scenarios;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use fault_scenarios::{measure, Masters, Measured, PHASES, QUIET};
use referee::lab::{hosts_needed, load_average, CoordinatorKind, Timings};
use referee_testkit::{hosts_unavailable, Hosts};

#[derive(Parser, Debug)]
#[command(
    name = "fault-report",
    about = "Failover timing on simulated hosts: every measured fault scenario, many times"
)]
struct Args {
    /// Runs per scenario (1 to 1000).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    runs: u32,
    /// Scenarios to run, comma-separated (default: all): master-killed, master-frozen,
    /// agent-killed, agent-frozen, host-cut-from-coordinator, host-black-holed, host-isolated, and on
    /// an ensemble master-and-coordinator-leader-killed.
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// The coordinator: the bundled one alone, the bundled one as a three-server ensemble (five
    /// hosts), or Apache ZooKeeper 3.8 alone or as a three-server ensemble.
    #[arg(long, value_enum, default_value = "bundled")]
    coordinator: Coordinator,
    /// Output path without extension: writes OUT.md, OUT.svg and OUT.txt.
    #[arg(long, default_value = "bench/failover-faults")]
    out: PathBuf,
    /// After each network-fault run, prints where its time went: both agents' failover marks,
    /// the coordinator servers' log lines about the old session, the first acknowledged write,
    /// each in ms after the fault (and which server led and held each session).
    #[arg(long)]
    phases: bool,
    /// Runs nothing: renders OUT.md and OUT.svg again from an earlier run's OUT.txt.
    #[arg(long)]
    render: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum Coordinator {
    Bundled,
    Ensemble,
    /// The three-server ensemble with an observer beside each node, which its agent uses.
    EnsembleObservers,
    Apache,
    /// Apache ZooKeeper as a three-server ensemble (`syncLimit=2` at the lab's tick).
    ApacheEnsemble,
}

/// One scenario's runs.
struct Series {
    scenario: Measured,
    times: Vec<Duration>,
    violations: Vec<String>,
}

impl Series {
    /// The nearest-rank percentile `p` (0 to 100) of the sorted times.
    fn percentile(&self, p: f64) -> Option<Duration> {
        let mut t = self.times.clone();
        t.sort();
        if t.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * t.len() as f64).ceil().max(1.0) as usize;
        t.get(rank - 1).copied()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let path = |ext: &str| args.out.with_extension(ext);
    if args.render {
        let txt = std::fs::read_to_string(path("txt")).with_context(|| format!("reading {}", path("txt").display()))?;
        let (header, all) = parse_runs(&txt).with_context(|| format!("in {}", path("txt").display()))?;
        return write_reports(&args, &header, &all);
    }
    if let Some(why) = hosts_unavailable() {
        bail!("simulated hosts cannot run here: {why}");
    }
    let kind = match args.coordinator {
        Coordinator::Bundled => CoordinatorKind::Bundled,
        Coordinator::Ensemble => CoordinatorKind::BundledEnsemble,
        Coordinator::EnsembleObservers => CoordinatorKind::BundledEnsembleWithObservers,
        Coordinator::Apache => CoordinatorKind::ApacheZooKeeper,
        Coordinator::ApacheEnsemble => referee::lab::APACHE_ENSEMBLE,
    };
    let scenarios: Vec<Measured> = if args.scenarios.is_empty() {
        Measured::ALL.into_iter().filter(|m| m.runs_on(kind)).collect()
    } else {
        args.scenarios
            .iter()
            .map(|name| {
                Measured::ALL.into_iter().find(|m| m.name() == name).with_context(|| {
                    let known: Vec<_> = Measured::ALL.iter().map(|m| m.name()).collect();
                    format!("unknown scenario `{name}`: choose from {}", known.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    if let Some(m) = scenarios.iter().find(|m| !m.runs_on(kind)) {
        bail!(
            "scenario `{}` needs a coordinator ensemble: use --coordinator ensemble, ensemble-observers or \
             apache-ensemble",
            m.name()
        );
    }
    if kind.is_apache() && !referee::lab::apache_zookeeper_installed() {
        bail!("Apache ZooKeeper is not installed: apt-get install zookeeper, or use --coordinator bundled");
    }
    QUIET.store(true, Ordering::Relaxed);
    PHASES.store(args.phases, Ordering::Relaxed);
    let load_before = load_average();
    let mut all = Vec::new();
    for scenario in scenarios {
        let hosts = Hosts::new(hosts_needed(kind))?;
        let mut series = Series { scenario, times: Vec::new(), violations: Vec::new() };
        for run in 1..=args.runs {
            match measure(scenario, Masters::Plain, kind, &hosts).await {
                Ok(t) => {
                    eprintln!("{} run {run}: {:.1} ms", scenario.name(), ms(t));
                    series.times.push(t);
                }
                Err(e) => {
                    eprintln!("{} run {run}: FAILED: {e:#}", scenario.name());
                    series.violations.push(format!("run {run}: {e:#}"));
                }
            }
        }
        all.push(series);
    }
    let load_after = load_average();
    let label = match kind {
        CoordinatorKind::Bundled => "bundled coordinator",
        CoordinatorKind::ApacheZooKeeper => "Apache ZooKeeper 3.8",
        CoordinatorKind::BundledEnsemble => "bundled coordinator, a three-server ensemble",
        CoordinatorKind::BundledEnsembleWithObservers => {
            "bundled coordinator, a three-server ensemble and an observer beside each node"
        }
        CoordinatorKind::ApacheEnsemble { .. } => "Apache ZooKeeper 3.8, a three-server ensemble",
    };
    let header = format!(
        "fault-report --runs {} --coordinator {:?}: {label}, load average {load_before} -> {load_after}",
        args.runs, args.coordinator
    );
    let mut txt = format!("# {header}\n");
    for s in &all {
        for t in &s.times {
            let _ = writeln!(txt, "{} {:.3}", s.scenario.name(), ms(*t));
        }
        for v in &s.violations {
            let _ = writeln!(txt, "{} FAILED {}", s.scenario.name(), v.lines().next().unwrap_or_default());
        }
    }
    std::fs::write(path("txt"), &txt).with_context(|| format!("writing {}", path("txt").display()))?;
    write_reports(&args, &header, &all)
}

/// Writes OUT.md and OUT.svg and prints the table; fails if any run failed its checks.
fn write_reports(args: &Args, header: &str, all: &[Series]) -> Result<()> {
    let path = |ext: &str| args.out.with_extension(ext);
    let md = markdown(header, all);
    std::fs::write(path("md"), &md).with_context(|| format!("writing {}", path("md").display()))?;
    std::fs::write(path("svg"), svg(all)).with_context(|| format!("writing {}", path("svg").display()))?;
    print!("{md}");
    let violations: usize = all.iter().map(|s| s.violations.len()).sum();
    if violations > 0 {
        bail!("{violations} run(s) failed their checks: see above");
    }
    Ok(())
}

/// An earlier run's OUT.txt: its header line, then a line per run, `SCENARIO MS` or
/// `SCENARIO FAILED WHY`.
fn parse_runs(txt: &str) -> Result<(String, Vec<Series>)> {
    let mut lines = txt.lines();
    let header = lines.next().and_then(|l| l.strip_prefix("# ")).context("no `# ` header line")?.to_string();
    let mut all: Vec<Series> = Vec::new();
    for (n, line) in lines.enumerate() {
        let (name, rest) = line.split_once(' ').with_context(|| format!("line {}: `{line}`", n + 2))?;
        let scenario = Measured::ALL
            .into_iter()
            .find(|m| m.name() == name)
            .with_context(|| format!("line {}: unknown scenario `{name}`", n + 2))?;
        let i = match all.iter().position(|s| s.scenario == scenario) {
            Some(i) => i,
            None => {
                all.push(Series { scenario, times: Vec::new(), violations: Vec::new() });
                all.len() - 1
            }
        };
        match rest.strip_prefix("FAILED ") {
            Some(why) => all[i].violations.push(why.to_string()),
            None => {
                let value: f64 =
                    rest.parse().with_context(|| format!("line {}: `{rest}` is not a time in ms", n + 2))?;
                all[i].times.push(Duration::from_secs_f64(value / 1000.0));
            }
        }
    }
    Ok((header, all))
}

/// The granted session timeout of the agents in these runs.
fn session() -> Duration {
    Duration::from_millis(Timings::referee().session_timeout_ms)
}

/// The p99 target of a scenario, where there is one: a master crash within 300 ms, host loss
/// and partitions within the session timeout plus 300 ms. A frozen master or a lost agent has
/// none of its own.
fn target(s: Measured) -> Option<Duration> {
    use fault_scenarios::ProcessFault;
    match s {
        Measured::Process(ProcessFault::MasterKilled) => Some(Duration::from_millis(300)),
        Measured::Network(_) => Some(session() + Duration::from_millis(300)),
        Measured::Process(_) | Measured::MasterKilledWithCoordinatorLeader => None,
    }
}

fn markdown(header: &str, all: &[Series]) -> String {
    let mut out = format!("<!-- {header} -->\n\n");
    out.push_str("| scenario | runs | p50 ms | p95 ms | p99 ms | max ms | target (p99) | violations |\n");
    out.push_str("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |\n");
    let cell = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1}", ms(d)));
    for s in all {
        let p99 = s.percentile(99.0);
        let goal = match (target(s.scenario), p99) {
            (None, _) => "-".to_string(),
            (Some(t), Some(p)) if p <= t && s.violations.is_empty() => format!("≤ {:.0} ms: met", ms(t)),
            (Some(t), _) => format!("≤ {:.0} ms: **missed**", ms(t)),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {goal} | {} |",
            s.scenario.name(),
            s.times.len() + s.violations.len(),
            cell(s.percentile(50.0)),
            cell(s.percentile(95.0)),
            cell(p99),
            cell(s.percentile(100.0)),
            s.violations.len()
        );
    }
    out.push_str(
        "\nFor comparison, from the other tools' defaults (not measured here; see the reference notes):\n\n\
         | tool | master process crash | host loss or partition |\n\
         | --- | --- | --- |\n\
         | Hadoop ZKFC | next 1 s health check, then fencing and promotion: about 1 to a few s | the ZooKeeper session timeout: 5 s (docs) or 10 s (current code), then fencing |\n\
         | Patroni | next `loop_wait` (10 s) | leader key `ttl` 30 s plus up to `loop_wait` 10 s |\n",
    );
    out
}

/// Every run as a dot on a log time axis (1 ms to 60 s), one row per scenario, with its p50
/// and p99 marked and the reference times drawn across.
fn svg(all: &[Series]) -> String {
    let (left, right, top, row) = (210.0, 860.0, 40.0, 34.0);
    let height = top + row * all.len() as f64 + 60.0;
    let (lo, hi) = (1.0f64.log10(), 60_000.0f64.log10());
    let x = |t_ms: f64| left + (t_ms.max(1.0).log10() - lo) / (hi - lo) * (right - left);
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"{height:.0}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">fault to first write on the new active (log scale)</text>\n"
    );
    let bottom = top + row * all.len() as f64;
    for (t, label) in
        [(1.0, "1 ms"), (10.0, "10 ms"), (100.0, "100 ms"), (1000.0, "1 s"), (10_000.0, "10 s"), (60_000.0, "60 s")]
    {
        let _ = writeln!(
            out,
            "<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{bottom}\" stroke=\"#ddd\"/>\
             <text x=\"{0:.1}\" y=\"{1:.0}\" text-anchor=\"middle\">{label}</text>",
            x(t),
            bottom + 16.0
        );
    }
    let references = [
        (ms(session()), "session timeout (2.5 s)", "#1f77b4"),
        (10_000.0, "ZKFC session (10 s)", "#d62728"),
        (40_000.0, "Patroni ttl + loop_wait (40 s)", "#9467bd"),
    ];
    for (i, (t, label, colour)) in references.iter().enumerate() {
        let _ = writeln!(
            out,
            "<line x1=\"{0:.1}\" y1=\"{top}\" x2=\"{0:.1}\" y2=\"{bottom}\" stroke=\"{colour}\" stroke-dasharray=\"4 3\"/>\
             <text x=\"{0:.1}\" y=\"{1:.0}\" fill=\"{colour}\" text-anchor=\"middle\">{label}</text>",
            x(*t),
            bottom + 32.0 + 14.0 * i as f64
        );
    }
    for (i, s) in all.iter().enumerate() {
        let y = top + row * i as f64 + row / 2.0;
        let _ = writeln!(
            out,
            "<text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
            left - 8.0,
            y + 4.0,
            s.scenario.name()
        );
        for t in &s.times {
            let _ = writeln!(
                out,
                "<circle cx=\"{:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"#2ca02c\" fill-opacity=\"0.5\"/>",
                x(ms(*t))
            );
        }
        for (p, colour) in [(50.0, "black"), (99.0, "#ff7f0e")] {
            if let Some(d) = s.percentile(p) {
                let _ = writeln!(
                    out,
                    "<line x1=\"{0:.1}\" y1=\"{1:.1}\" x2=\"{0:.1}\" y2=\"{2:.1}\" stroke=\"{colour}\" stroke-width=\"2\"/>",
                    x(ms(d)),
                    y - 10.0,
                    y + 10.0
                );
            }
        }
        if !s.violations.is_empty() {
            let _ = writeln!(
                out,
                "<text x=\"{right}\" y=\"{:.1}\" fill=\"#d62728\">{} failed</text>",
                y + 4.0,
                s.violations.len()
            );
        }
    }
    let _ = writeln!(out, "<text x=\"{left}\" y=\"{:.0}\">dots: runs; black: p50; orange: p99</text>", height - 6.0);
    out.push_str("</svg>\n");
    out
}
