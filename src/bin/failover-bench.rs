//! Failover benchmark: how long from the active master's death to the first write the new
//! active acknowledges, over many runs, with Referee's default timings and with ZKFC's.
//!
//! ```text
//! cargo run --release --bin failover-bench -- --runs 100 --timings referee
//! cargo run --release --bin failover-bench -- --runs 100 --timings zkfc
//! cargo run --release --bin failover-bench -- --soak-secs 600
//! ```
//!
//! Each run: t0 = SIGKILL of the active master; t1 = the first write acknowledged by the other
//! master, which a client retries every millisecond. Then the killed master is restarted and
//! rejoins as standby before the next run. The soak mode writes steadily to the active for the
//! given time with no fault and counts failovers, which must be zero.
//!
//! After each run the agents' `/history` timelines are joined with the fault and the first
//! acknowledged write into consecutive phases; the end prints each phase's p50 and mean over
//! the runs. The phases of one run sum to its total, so the means sum to the mean total.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use nix::sys::signal::Signal;
use referee::lab::{apache_zookeeper_installed, CoordinatorKind, MasterKind, Pair, PairSpec, Timings, NODES};
use referee_failover_agent::timeline::{phases, Mark};

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Profile {
    /// Referee's default timings.
    Referee,
    /// Hadoop ZKFC's default timings (1 s health checks, 10 s session).
    Zkfc,
}

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Coord {
    /// The bundled coordinator.
    Bundled,
    /// Apache ZooKeeper from Debian's package.
    Apache,
}

#[derive(Parser, Debug)]
#[command(about = "Measure failover time of a Referee master pair on loopback")]
struct Args {
    /// Number of failovers to measure.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Timing profile.
    #[arg(long, value_enum, default_value_t = Profile::Referee)]
    timings: Profile,
    /// Coordination service.
    #[arg(long, value_enum, default_value_t = Coord::Bundled)]
    coordinator: Coord,
    /// Instead of failovers: write steadily for this many seconds with no fault, and count
    /// failovers (must be zero).
    #[arg(long)]
    soak_secs: Option<u64>,
}

fn referee_bin() -> Result<std::path::PathBuf> {
    let me = std::env::current_exe().context("locating this executable")?;
    let bin = me.with_file_name("referee");
    if !bin.exists() {
        bail!("{} not found: build it first (cargo build --release)", bin.display());
    }
    Ok(bin)
}

/// An event name with the node names of this run replaced by their roles (`old`, `new`), so the
/// same phase of different runs has one name.
fn generic(event: &str, old: usize) -> String {
    event
        .split(' ')
        .map(|w| {
            if w == NODES[old] {
                "old"
            } else if w == NODES[1 - old] {
                "new"
            } else {
                w
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn promotions(pair: &Pair) -> u64 {
    let mut total = 0;
    for i in 0..NODES.len() {
        let s = pair.agent_json(i, "/status").await.unwrap_or_default();
        total += s["counters"]["promotions"].as_u64().unwrap_or(0);
    }
    total
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> Result<()> {
    let args = Args::parse();
    let coordinator = match args.coordinator {
        Coord::Bundled => CoordinatorKind::Bundled,
        Coord::Apache if apache_zookeeper_installed() => CoordinatorKind::ApacheZooKeeper,
        Coord::Apache => bail!("Apache ZooKeeper is not installed (apt-get install zookeeper)"),
    };
    let timings = match args.timings {
        Profile::Referee => Timings::referee(),
        Profile::Zkfc => Timings::zkfc(),
    };
    let spec = PairSpec {
        bin: referee_bin()?,
        coordinator,
        timings,
        master: MasterKind::LeasePolling,
        proxied_agents: false,
        extra_agent_yaml: Vec::new(),
        admin: false,
        journal: false,
    };
    let mut pair = Pair::start(spec).await?;
    println!("# {:?} timings, {:?} coordinator: {timings:?}", args.timings, args.coordinator);

    if let Some(secs) = args.soak_secs {
        let before = promotions(&pair).await;
        let active = pair.wait_for_active(Duration::from_secs(30)).await?;
        let (mut acked, mut refused) = (0u64, 0u64);
        let end = Instant::now() + Duration::from_secs(secs);
        let mut n = 0u64;
        while Instant::now() < end {
            n += 1;
            match pair.write(active, "soak", &n.to_string()).await {
                Ok(()) => acked += 1,
                Err(_) => refused += 1,
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let failovers = promotions(&pair).await - before;
        println!("soak: {secs} s, writes acknowledged {acked}, refused {refused}, failovers {failovers}");
        if failovers != 0 {
            bail!("{failovers} failovers during a soak with no fault");
        }
        return Ok(());
    }

    let mut samples = Vec::with_capacity(args.runs);
    // Phase durations by name, and the sum of their ends' offsets from the fault (to list them
    // in the order they happen on average).
    let mut table: BTreeMap<String, (Vec<Duration>, f64)> = BTreeMap::new();
    for run in 0..args.runs {
        let active = pair.wait_for_active(Duration::from_secs(60)).await?;
        let other = 1 - active;
        // The standby must be ready (healthy, connected) before the fault.
        let ready = Instant::now() + Duration::from_secs(30);
        loop {
            let s = pair.agent_json(other, "/status").await.unwrap_or_default();
            if s["role"] == "standby" && s["session"]["state"] == "connected" {
                break;
            }
            if Instant::now() > ready {
                bail!("standby {} not ready: {s}", NODES[other]);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (t0, fault) = (Instant::now(), SystemTime::now());
        pair.masters[active].signal(Signal::SIGKILL)?;
        let took = loop {
            if pair.write(other, "bench", &run.to_string()).await.is_ok() {
                break t0.elapsed();
            }
            if t0.elapsed() > Duration::from_secs(120) {
                bail!("run {run}: no write acknowledged within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        samples.push(took);
        println!("run {run:3}: {} -> {} in {:7.1} ms", NODES[active], NODES[other], took.as_secs_f64() * 1000.0);
        let acked = Mark::at("first write acknowledged", referee_failover_agent::timeline::wall_us(fault + took));
        let marks = pair.failover_marks(active, other, fault, vec![acked], Duration::from_secs(5)).await?;
        let fault_us = referee_failover_agent::timeline::wall_us(fault);
        let mut end_us = marks.iter().map(|m| m.at_us).collect::<Vec<_>>();
        end_us.sort();
        for (p, end) in phases(&marks).into_iter().zip(end_us.into_iter().skip(1)) {
            // Node names alternate between runs; the phase is the same.
            let name = format!("{} -> {}", generic(&p.from, active), generic(&p.to, active));
            let entry = table.entry(name).or_default();
            entry.0.push(p.duration);
            entry.1 += (end - fault_us) as f64 / 1000.0;
        }
        // Bring the killed master back as a standby.
        pair.masters[active].kill_now();
        let restarted = pair.start_master(active)?;
        pair.masters[active] = restarted;
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("\nphases (each from one mark to the next, in their mean order; runs = how many runs had it):");
    println!("{:>4} {:>9} {:>9}  phase", "runs", "p50 ms", "mean ms");
    let mut mean_sum = 0.0;
    let mut rows: Vec<(String, Vec<Duration>, f64)> =
        table.into_iter().map(|(name, (d, ends))| (name, d.clone(), ends / d.len() as f64)).collect();
    rows.sort_by(|a, b| a.2.total_cmp(&b.2));
    for (name, mut d, _) in rows {
        d.sort();
        let mean = d.iter().map(|x| ms(*x)).sum::<f64>() / d.len() as f64;
        mean_sum += mean * d.len() as f64 / samples.len() as f64;
        println!("{:>4} {:>9.1} {:>9.1}  {name}", d.len(), ms(percentile(&d, 0.5)), mean);
    }
    println!("sum of the phases' means (weighted by runs): {mean_sum:.1} ms");
    let mean = samples.iter().map(|d| ms(*d)).sum::<f64>() / samples.len() as f64;
    println!(
        "failover (kill -9 of the active master -> first acknowledged write), {} runs: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, mean {:.1} ms",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().expect("at least one run")),
        mean
    );
    Ok(())
}
