//! Failover benchmark: how long from the active master's death to the first write the new
//! active acknowledges, over many runs, with the timings of Referee's shipped configuration
//! (`config/agent-db1.yaml`) and with ZKFC's defaults.
//!
//! ```text
//! cargo run --release --bin failover-bench -- --runs 100 --timings referee
//! cargo run --release --bin failover-bench -- --runs 100 --timings zkfc
//! cargo run --release --bin failover-bench -- --runs 20 --fault partition
//! cargo run --release --bin failover-bench -- --soak-secs 600 --cpu-load 2
//! cargo run --release --bin failover-bench -- --runs 30 --haproxy config/haproxy.cfg
//! cargo run --release --bin failover-bench -- --runs 30 --timings zkfc --haproxy bench/haproxy-common.cfg
//! ```
//!
//! Each run: t0 = SIGKILL of the active master; t1 = the first write acknowledged by the other
//! master, which a client retries every millisecond. Then the killed master is restarted and
//! rejoins as standby before the next run. The soak mode writes steadily to the active for the
//! given time with no fault and counts failovers, which must be zero; `--cpu-load N` runs N
//! busy loops beside the pair meanwhile (and only meanwhile).
//!
//! `--haproxy FILE` puts Debian's HAProxy in front of the pair, running FILE (a configuration
//! for the example hosts, as `config/haproxy.cfg`) with the lab's addresses: t1 is then the
//! first write acknowledged by the other master **through HAProxy's write address**, from a
//! client that keeps its connection alive and retries every millisecond, as an application
//! behind a load balancer sees a failover. Before each run HAProxy must have the active alone
//! in its write backend and the standby in its read backend.
//!
//! `--fault partition` cuts the active node off the coordinator instead: its agent's
//! connections are black-holed (packets dropped, nothing refused), while its master keeps
//! running and a client keeps writing to it. t1 is again the new active's first acknowledged
//! write; the bench compares it with the session timeout the coordinator granted, and checks
//! what the masters themselves say: the new master's first acknowledged write must have been
//! sent no earlier than the end of the old master's lease, as the old master reports it
//! (`GET /lease/status`), and than the old master's last acknowledgement. A violation fails the
//! command. The partition is healed after each run and the old node rejoins as standby.
//!
//! Every mode prints the load average before and after, and the agents' resident memory.
//!
//! After each run the agents' `/history` timelines are joined with the fault and the first
//! acknowledged write into consecutive phases; the end prints each phase's p50 and mean over
//! the runs. The phases of one run sum to its total, so the means sum to the mean total.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use nix::sys::signal::Signal;
use referee::lab::haproxy::{haproxy_bin, Haproxy, HAPROXY_MISSING};
use referee::lab::{
    apache_zookeeper_installed, boot_us, load_average, CoordinatorKind, MasterKind, Pair, PairSpec, Timings, NODES,
};
use referee_failover_agent::timeline::{phases, Mark};
use referee_testkit::bench::Picker;

#[derive(Clone, Copy, ValueEnum, Debug)]
enum Profile {
    /// The shipped configuration's timings (config/agent-db1.yaml: 100 ms health checks,
    /// master exit watch, 2.5 s session).
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
    /// The fault each run injects.
    #[arg(long, value_enum, default_value_t = Fault::MasterCrash)]
    fault: Fault,
    /// Instead of failovers: write steadily for this many seconds with no fault, and count
    /// failovers (must be zero).
    #[arg(long)]
    soak_secs: Option<u64>,
    /// With `--soak-secs`: this many busy loops run beside the pair for the soak's length.
    #[arg(long, default_value_t = 0)]
    cpu_load: usize,
    /// Measure through HAProxy running this configuration (for the example hosts db1 and db2,
    /// as `config/haproxy.cfg`); with the master crash fault only.
    #[arg(long, value_name = "FILE")]
    haproxy: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, ValueEnum, Debug, PartialEq, Eq)]
enum Fault {
    /// SIGKILL of the active master.
    MasterCrash,
    /// The active agent's coordinator connections black-holed; its master keeps running.
    Partition,
}

fn referee_bin() -> Result<std::path::PathBuf> {
    beside_me("referee")
}

/// The agents run as the lean `referee-agent`, as an operator deploys them: the resident memory
/// printed is that executable's.
fn lean_agent_bin() -> Result<std::path::PathBuf> {
    beside_me("referee-agent")
}

fn beside_me(name: &str) -> Result<std::path::PathBuf> {
    let me = std::env::current_exe().context("locating this executable")?;
    let bin = me.with_file_name(name);
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
        lean_agent: Some(lean_agent_bin()?),
        coordinator,
        timings,
        master: MasterKind::LeasePolling,
        proxied_agents: args.fault == Fault::Partition,
        extra_agent_yaml: Vec::new(),
        admin: false,
        journal: false,
    };
    if args.haproxy.is_some() && (args.fault != Fault::MasterCrash || args.soak_secs.is_some()) {
        bail!("--haproxy measures the master crash fault only");
    }
    let haproxy_bin = match &args.haproxy {
        Some(_) => Some(haproxy_bin().context(HAPROXY_MISSING)?),
        None => None,
    };
    let load_before = load_average();
    let mut pair = Pair::start(spec).await?;
    // With the client that writes through it, kept alive across the attempts as an
    // application's connection pool.
    let lb = match (&args.haproxy, &haproxy_bin) {
        (Some(config), Some(bin)) => {
            let lb = Haproxy::start(bin, &pair, config)?;
            println!("# through HAProxy running {}", config.display());
            Some((lb, reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?))
        }
        _ => None,
    };
    println!("# {:?} timings, {:?} coordinator: {timings:?}", args.timings, args.coordinator);
    println!("# load average (1, 5, 15 min) at start: {load_before}");
    memory(&pair, "after start");

    if let Some(secs) = args.soak_secs {
        // Bounded: the loops stop when the soak ends, whatever happens.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let burners: Vec<_> = (0..args.cpu_load)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                    }
                })
            })
            .collect();
        if args.cpu_load > 0 {
            println!("# {} busy loops running beside the pair for the soak", args.cpu_load);
        }
        let result = soak(&pair, secs).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for b in burners {
            let _ = b.join();
        }
        memory(&pair, "at the end");
        println!("# load average at the end: {}", load_average());
        return result;
    }
    if args.fault == Fault::Partition {
        let result = partitions(&pair, args.runs).await;
        memory(&pair, "at the end");
        println!("# load average at the end: {}", load_average());
        return result;
    }
    let mut samples = Vec::with_capacity(args.runs);
    // Phase durations by name, and the sum of their ends' offsets from the fault (to list them
    // in the order they happen on average).
    let mut table: BTreeMap<String, (Vec<Duration>, f64)> = BTreeMap::new();
    let seed = SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    let mut phase = Picker::new(seed);
    for run in 0..args.runs {
        let active = pair.wait_for_active(Duration::from_secs(60)).await?;
        let other = 1 - active;
        // The standby must be ready (healthy, connected) before the fault, and HAProxy must
        // have the roles as they are.
        standby_ready(&pair, other).await?;
        let old_token = pair.agent_json(active, "/status").await.and_then(|s| s["token"].as_u64()).unwrap_or(0);
        if let Some((lb, _)) = &lb {
            lb.wait_for_view(active, true, Duration::from_secs(60)).await?;
        }
        // A crash comes at no particular moment of the active agent's health-check cycle: the
        // fault waits a random part of one check interval, so the runs sample every phase of it.
        // Without this, the loop fell into step with the checks: every run with ZKFC's timings
        // (no exit watch, a check a second) waited a whole interval, 998 ms at the median.
        tokio::time::sleep(fault_phase(&mut phase, Duration::from_millis(timings.health_interval_ms))).await;
        let (t0, fault) = (Instant::now(), SystemTime::now());
        pair.masters[active].signal(Signal::SIGKILL)?;
        let took = loop {
            let acked = match &lb {
                None => pair.write(other, "bench", &run.to_string()).await.is_ok(),
                // Through HAProxy: an acknowledgement from the new master, by its token.
                Some((lb, client)) => {
                    let body = serde_json::json!({"key": "bench", "value": run.to_string()});
                    match client.post(lb.write_url()).json(&body).send().await {
                        Ok(r) if r.status().is_success() => r
                            .json::<serde_json::Value>()
                            .await
                            .ok()
                            .and_then(|v| v["token"].as_u64())
                            .is_some_and(|t| t > old_token),
                        _ => false,
                    }
                }
            };
            if acked {
                break t0.elapsed();
            }
            if t0.elapsed() > Duration::from_secs(120) {
                bail!("run {run}: no write acknowledged within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        samples.push(took);
        println!("run {run:3}: {} -> {} in {:7.1} ms", NODES[active], NODES[other], took.as_secs_f64() * 1000.0);
        let what = if lb.is_some() { "first write acknowledged through HAProxy" } else { "first write acknowledged" };
        let acked = Mark::at(what, referee_failover_agent::timeline::wall_us(fault + took));
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
    let through = if lb.is_some() { " through HAProxy" } else { "" };
    println!(
        "failover (kill -9 of the active master -> first acknowledged write{through}), {} runs: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, mean {:.1} ms",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().expect("at least one run")),
        mean
    );
    memory(&pair, "at the end");
    println!("# load average at the end: {}", load_average());
    Ok(())
}

/// Prints both agents' resident memory.
fn memory(pair: &Pair, when: &str) {
    for (i, node) in NODES.iter().enumerate() {
        match pair.agent_memory(i) {
            Some(m) => println!(
                "# agent {node} resident memory {when}: {:.1} MiB (peak {:.1} MiB): anonymous {:.1} MiB, \
                 mapped files {:.1} MiB",
                m.rss_kib as f64 / 1024.0,
                m.peak_kib as f64 / 1024.0,
                m.anon_kib as f64 / 1024.0,
                m.file_kib as f64 / 1024.0
            ),
            None => println!("# agent {node} resident memory {when}: unknown (not running)"),
        }
    }
}

/// Writes steadily to the active for `secs` with no fault; fails if any failover happened.
async fn soak(pair: &Pair, secs: u64) -> Result<()> {
    let before = promotions(pair).await;
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
    let failovers = promotions(pair).await - before;
    println!("soak: {secs} s, writes acknowledged {acked}, refused {refused}, failovers {failovers}");
    if failovers != 0 {
        bail!("{failovers} failovers during a soak with no fault");
    }
    Ok(())
}

/// What one partition run saw, all on `CLOCK_BOOTTIME` in microseconds.
#[derive(Debug, Default)]
struct PartitionRun {
    /// When the active agent was cut off.
    fault: u64,
    /// The latest lease end the old master reported.
    old_lease_end: Option<u64>,
    /// The old master's last acknowledged write: (sent, answer received, token).
    old_last_ack: Option<(u64, u64, u64)>,
    /// The new master's first acknowledged write: (sent, answer received, token).
    new_first_ack: Option<(u64, u64, u64)>,
}

/// The partition runs: see the module documentation.
async fn partitions(pair: &Pair, runs: usize) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    let ms = |us: i64| us as f64 / 1000.0;
    let (mut totals, mut margins) = (Vec::new(), Vec::new());
    let mut violations = Vec::new();
    let mut granted_seen = std::collections::BTreeSet::new();
    for run in 0..runs {
        let active = pair.wait_for_active(Duration::from_secs(60)).await?;
        let other = 1 - active;
        standby_ready(pair, other).await?;
        let granted = pair.agent_json(active, "/status").await.unwrap_or_default()["granted_session_timeout_ms"]
            .as_u64()
            .context("the active agent's /status shows no granted session timeout")?;
        granted_seen.insert(granted);
        pair.write_within(active, "partition", "before", Duration::from_secs(5))
            .await
            .map_err(|e| anyhow::anyhow!("the active master takes no write before the fault: {e}"))?;

        let seen = Arc::new(Mutex::new(PartitionRun::default()));
        let stop = Arc::new(AtomicBool::new(false));
        // The old master, written to and asked for its lease throughout, so that its last
        // acknowledgement and its final lease end are both known.
        let old_writes = async {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sent = boot_us();
                if let Ok(token) = pair.write_token(active, "partition-old", &n.to_string()).await {
                    seen.lock().unwrap_or_else(|p| p.into_inner()).old_last_ack = Some((sent, boot_us(), token));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let old_lease = async {
            while !stop.load(Ordering::Relaxed) {
                if let Some(status) = pair.master_json(active, "/lease/status").await {
                    if let Some(until) = status["writable_until_boot_us"].as_u64() {
                        let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                        s.old_lease_end = s.old_lease_end.max(Some(until));
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        };
        let new_writes = async {
            let started = Instant::now();
            let result = loop {
                let sent = boot_us();
                if let Ok(token) = pair.write_token(other, "partition-new", &run.to_string()).await {
                    seen.lock().unwrap_or_else(|p| p.into_inner()).new_first_ack = Some((sent, boot_us(), token));
                    break Ok(());
                }
                if started.elapsed() > Duration::from_secs(60) {
                    break Err(anyhow::anyhow!("run {run}: no write acknowledged by {} within 60 s", NODES[other]));
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            };
            // Let the old side's loops see a little past the takeover, then stop them.
            tokio::time::sleep(Duration::from_millis(50)).await;
            stop.store(true, Ordering::Relaxed);
            result
        };
        seen.lock().unwrap_or_else(|p| p.into_inner()).fault = boot_us();
        pair.black_hole_agent(active).await?;
        let ((), (), result) = tokio::join!(old_writes, old_lease, new_writes);
        result?;
        let r = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
        let (new_sent, new_received, new_token) = r.new_first_ack.context("no first acknowledgement recorded")?;
        let total = new_received as i64 - r.fault as i64;
        totals.push(total);
        let lease_end = r.old_lease_end.context("the old master never reported a lease")?;
        // The new master accepted its first write after this write was sent; the old one
        // accepted nothing after its lease end. So the margin is a lower bound of the real one.
        let margin = new_sent as i64 - lease_end as i64;
        margins.push(margin);
        let mut line = format!(
            "run {run:3}: {} cut off -> {} took its first write in {:7.1} ms (granted session timeout {granted} ms, \
             over it by {:6.1} ms); old lease ended {:6.1} ms after the cut, margin {:6.1} ms",
            NODES[active],
            NODES[other],
            ms(total),
            ms(total - granted as i64 * 1000),
            ms(lease_end as i64 - r.fault as i64),
            ms(margin),
        );
        if margin < 0 {
            violations.push(format!(
                "run {run}: {} took a write (token {new_token}) sent {:.1} ms before {}'s lease ended",
                NODES[other],
                ms(-margin),
                NODES[active]
            ));
        }
        if let Some((_, old_received, old_token)) = r.old_last_ack {
            line.push_str(&format!(
                "; old master's last ack {:6.1} ms after the cut",
                ms(old_received as i64 - r.fault as i64)
            ));
            if old_received > new_sent {
                violations.push(format!(
                    "run {run}: {} acknowledged a write (token {old_token}) {:.1} ms after {} took one (token {new_token})",
                    NODES[active],
                    ms(old_received as i64 - new_sent as i64),
                    NODES[other]
                ));
            }
        }
        println!("{line}");
        // Heal, and wait for the old node to rejoin as a connected standby.
        pair.heal_agent(active).await?;
        standby_ready(pair, active).await?;
    }
    totals.sort();
    margins.sort();
    let pct = |v: &[i64], p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    let granted = granted_seen.iter().map(|g| g.to_string()).collect::<Vec<_>>().join(", ");
    println!(
        "partition of the active agent -> first write acknowledged by the new active, {} runs: p50 {:.1} ms, \
         p99 {:.1} ms, max {:.1} ms (granted session timeout {granted} ms)",
        totals.len(),
        ms(pct(&totals, 0.5)),
        ms(pct(&totals, 0.99)),
        ms(*totals.last().expect("at least one run")),
    );
    println!(
        "margin between the old master's lease end and the new master's first write: min {:.1} ms, p50 {:.1} ms, \
         max {:.1} ms",
        ms(margins[0]),
        ms(pct(&margins, 0.5)),
        ms(*margins.last().expect("at least one run")),
    );
    if !violations.is_empty() {
        bail!("{} violations:\n{}", violations.len(), violations.join("\n"));
    }
    println!("no violations: every new active took its first write after the old master's lease ended");
    Ok(())
}

/// A moment drawn evenly from `[0, interval)`, to spread the faults over the health-check
/// cycle: unrelated to the agents' timers is all it needs to be.
fn fault_phase(picker: &mut Picker, interval: Duration) -> Duration {
    Duration::from_micros(picker.next(usize::try_from(interval.as_micros()).unwrap_or(usize::MAX)) as u64)
}

/// Waits until node `i` is a standby with a connected session.
async fn standby_ready(pair: &Pair, i: usize) -> Result<()> {
    Ok(pair.wait_for_connected_standby(i, Duration::from_secs(30)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_spread_over_the_whole_check_interval() {
        let mut phase = Picker::new(0x1234_5678_9abc_def1);
        let interval = Duration::from_millis(1000);
        let mut tenths = [0u32; 10];
        for _ in 0..2000 {
            let d = fault_phase(&mut phase, interval);
            assert!(d < interval, "{d:?} is not within {interval:?}");
            tenths[(d.as_millis() / 100) as usize] += 1;
        }
        // Evenly spread: every tenth of the interval gets about 200 of the 2,000.
        assert!(tenths.iter().all(|&n| (120..=280).contains(&n)), "{tenths:?}");
        assert_eq!(fault_phase(&mut phase, Duration::ZERO), Duration::ZERO);
    }
}
