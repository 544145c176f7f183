//! `referee demo`: the whole story in one command. A coordinator (by default a three-server
//! Raft ensemble, or one server with `--coordinator single`), two NameNode-style demo masters
//! whose edit journal lives in the coordinator, and two failover agents start as real processes
//! on loopback (the `referee` binary re-executes itself for every role); a client writes
//! continuously to whichever master the agents' `/active` probes name; a failure is injected
//! (a master, an agent, the active node cut off from the coordinator, the whole coordinator, or
//! the coordinator's leader alone); the timeline
//! is printed; the master that is not active is made to try to write; and an independent reader
//! of the journal (not the masters) gives the verdict.
//!
//! ```text
//!   start (coordinator servers, masters, agents) ──► client writes to whoever is /active
//!        ──► inject the scenario's failure ──► wait for the outcome, print its timeline
//!        ──► the other master forces a write (must be refused) ──► journal verdict ──► stop
//! ```

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use referee_examples::ha_master::EditAccepted;
use referee_examples::journal::{self, Claim, Edit, EditOp, JournalError};
use referee_examples::verdict::{verify, Acknowledged};
use referee_failover_agent::timeline::{self, Mark};
use thiserror::Error;

use crate::lab::{
    boot_us, CoordinatorKind, LabError, MasterKind, Pair, PairSpec, Timings, EPOCH_PATH, JOURNAL_PATH, NODES,
};

/// Why the demo stopped.
#[derive(Debug, Error)]
pub enum DemoError {
    /// Starting or driving the processes failed.
    #[error(transparent)]
    Lab(#[from] LabError),
    /// Something did not happen as the scenario expects.
    #[error("{0}")]
    Scenario(String),
    /// SIGINT or SIGTERM arrived before the verdict; every process and file of the demo was
    /// removed.
    #[error("stopped by {0} before the verdict")]
    Interrupted(&'static str),
}

/// The failure the demo injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `kill -9` of the active master.
    Crash,
    /// SIGSTOP of the active master: it hangs and must be fenced.
    Hang,
    /// `kill -9` of the active agent: takeover after its session expires.
    AgentCrash,
    /// The active node cut off from the coordinator: its agent's connections black-holed
    /// (nothing passes, nothing is refused), its agent and master still running and the master
    /// written to directly throughout. The master stops taking writes at the end of its lease,
    /// as it reports itself, and the other node takes over once the coordinator has expired the
    /// cut-off agent's session: the masters' own acknowledgements must not overlap.
    Partition,
    /// A graceful manual failover with `referee admin failover --to`.
    Switchover,
    /// `kill -9` of the coordinator (every server of an ensemble at once) under the write load,
    /// then a restart on the same data directories: every acknowledged write must still be in
    /// the journal afterwards.
    CoordinatorRestart,
    /// `kill -9` of the coordinator ensemble's leader under the write load: the other two elect
    /// a leader, the agents' sessions live on (moving off the killed server if they were on it),
    /// and the pair keeps its active (no failover); the killed server is restarted and rejoins
    /// as a follower. Ensemble only.
    CoordinatorLeaderCrash,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The `referee` binary (this executable).
    pub bin: PathBuf,
    /// The failure to inject.
    pub scenario: Scenario,
    /// The coordinator: [`CoordinatorKind::BundledEnsemble`] (three servers) or
    /// [`CoordinatorKind::Bundled`] (one).
    pub coordinator: CoordinatorKind,
    /// Exit this long after the verdict instead of waiting for Ctrl-C.
    pub exit_after: Option<Duration>,
}

/// A write a master acknowledged: which master, what it answered, when it was sent and when the
/// answer came.
struct Ack {
    node: usize,
    rec: Acknowledged,
    sent: Instant,
    received: Instant,
}

/// Every acknowledgement of the demo's clients, for the verdict.
type Acks = Arc<Mutex<Vec<Ack>>>;

struct Writer {
    stop: Arc<AtomicBool>,
    acks: Acks,
    refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Stops the client and waits for its last write.
    async fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = (&mut self.task).await;
    }
}

impl Drop for Writer {
    /// A demo stopped half-way does not leave its client writing (and holding the pair).
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// SIGINT and SIGTERM, listened for from the start: the demo stops on either at any point,
/// removing every process and file it made, not only at its final Ctrl-C.
struct StopSignals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> Result<StopSignals, DemoError> {
        use tokio::signal::unix::{signal, SignalKind};
        let listen =
            |kind| signal(kind).map_err(|e| DemoError::Scenario(format!("cannot listen for SIGINT and SIGTERM: {e}")));
        Ok(StopSignals { int: listen(SignalKind::interrupt())?, term: listen(SignalKind::terminate())? })
    }

    /// The name of the first of the two to arrive.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// Writes files continuously (`/demo/NAME-000001`, ...) to whichever master is active, or to
/// master `to` alone, recording every acknowledgement in `acks`.
fn start_writer(pair: Arc<Pair>, to: Option<usize>, name: &'static str, acks: Acks) -> Writer {
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let (stop2, acks2, refused2) = (stop.clone(), acks.clone(), refused.clone());
    let task = tokio::spawn(async move {
        let http = reqwest::Client::builder().timeout(Duration::from_millis(800)).build().expect("http client");
        let mut n = 0u64;
        let mut target: Option<usize> = to;
        while !stop2.load(Ordering::Relaxed) {
            let node = match target {
                Some(t) => t,
                None => match pair.actives().await.first() {
                    Some(t) => *t,
                    None => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
            };
            n += 1;
            let body = serde_json::json!({
                "path": format!("/demo/{name}-{n:06}"),
                "data": format!("edit {n}"),
                "write_id": format!("{name}-{n}"),
            });
            let url = format!("http://127.0.0.1:{}/fs/create", pair.ports[node].master);
            let sent = Instant::now();
            match http.post(url).json(&body).send().await {
                Ok(r) if r.status().is_success() => {
                    // Acknowledged, whatever becomes of the body: the write id is ours, and the
                    // verdict checks the token and place the answer gives when it can be read.
                    let received = Instant::now();
                    let answer = r.json::<EditAccepted>().await.ok();
                    let rec = Acknowledged {
                        write_id: format!("{name}-{n}"),
                        token: answer.as_ref().map(|a| a.token),
                        seq: answer.as_ref().map(|a| a.seq),
                    };
                    acks2.lock().unwrap_or_else(|p| p.into_inner()).push(Ack { node, rec, sent, received });
                    target = Some(node);
                }
                _ => {
                    refused2.fetch_add(1, Ordering::Relaxed);
                    target = to;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    Writer { stop, acks, refused, task }
}

async fn mkdir_demo(pair: &Pair, node: usize) -> Result<(), DemoError> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let url = format!("http://127.0.0.1:{}/fs/mkdir", pair.ports[node].master);
        let r = http.post(url).json(&serde_json::json!({"path": "/demo", "write_id": "mkdir-demo"})).send().await;
        if matches!(r, Ok(ref r) if r.status().is_success() || r.status().as_u16() == 409) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(DemoError::Scenario("the active master would not take the first write".into()));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn print_status(pair: &Pair) {
    let mut line = String::from("  ");
    for (i, node) in NODES.iter().enumerate() {
        let s = pair.agent_json(i, "/status").await.unwrap_or_default();
        line.push_str(&format!(
            "{node}: {:<9} token {:<4} health {:<8} lease {:>5} ms   ",
            s["role"].as_str().unwrap_or("down"),
            s["token"].as_u64().map_or("-".to_string(), |t| t.to_string()),
            s["health"]["state"].as_str().unwrap_or("?"),
            s["lease_left_ms"].as_u64().unwrap_or(0)
        ));
    }
    println!("{line}");
}

/// What node `i`'s agent found when it last checked its fencing chain against its peer, without
/// fencing anything (its first round runs two seconds after it starts; waited for up to five).
async fn print_fencing_checks(pair: &Pair, i: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let checks = loop {
        let s = pair.agent_json(i, "/status").await.unwrap_or_default();
        if !s["fencing_checks"].is_null() || Instant::now() > deadline {
            break s["fencing_checks"].clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let Some(peers) = checks["peers"].as_array() else {
        println!("  ({}'s agent has not checked its fencing chain yet)", NODES[i]);
        return;
    };
    for peer in peers {
        println!(
            "{}'s fencing chain against {}, checked without fencing:",
            NODES[i],
            peer["node_id"].as_str().unwrap_or("?")
        );
        for c in peer["checks"].as_array().into_iter().flatten() {
            let said = ["detail", "reason", "why"].iter().find_map(|k| c[*k].as_str()).unwrap_or("");
            println!(
                "  level {}  {:<9} {:<9} {said}",
                c["level"].as_u64().unwrap_or(0),
                c["method"].as_str().unwrap_or("?"),
                c["readiness"].as_str().unwrap_or("?")
            );
        }
    }
}

/// The coordinator servers, their addresses and modes, for the printout: `server 1 on
/// 127.0.0.1:PORT (leader), ...`, or the one server's address.
async fn describe_coordinator(pair: &Pair) -> String {
    if pair.coordinator_servers() == 1 {
        return format!("Coordinator: one server on {}", pair.coordinator_addr);
    }
    let mut servers = Vec::new();
    for k in 0..pair.coordinator_servers() {
        let mode = pair.coordinator_mode(k).await.unwrap_or_else(|| "down".into());
        servers.push(format!("server {} on {} ({mode})", k + 1, pair.coordinator_server_addr(k)));
    }
    format!("Coordinator: a {}-server ensemble: {}", pair.coordinator_servers(), servers.join(", "))
}

/// Which coordinator server (from 0) each agent's session is on, `None` when not connected.
async fn sessions(pair: &Pair) -> Vec<Option<usize>> {
    let mut on = Vec::new();
    for i in 0..NODES.len() {
        on.push(pair.agent_coordinator_server(i).await);
    }
    on
}

/// [`sessions`] as text: `a on server 2, b on server 1`.
fn describe_sessions(on: &[Option<usize>]) -> String {
    let each = NODES.iter().zip(on).map(|(node, k)| match k {
        Some(k) => format!("{node} on server {}", k + 1),
        None => format!("{node} not connected"),
    });
    each.collect::<Vec<_>>().join(", ")
}

/// Runs the demo; `Ok(true)` when the verdict holds.
pub async fn run(opts: DemoOptions) -> Result<bool, DemoError> {
    if opts.coordinator == CoordinatorKind::ApacheZooKeeper {
        return Err(DemoError::Scenario(
            "the demo runs the bundled coordinator: choose --coordinator ensemble or single".into(),
        ));
    }
    if opts.scenario == Scenario::CoordinatorLeaderCrash && opts.coordinator.servers() == 1 {
        return Err(DemoError::Scenario(
            "--scenario coordinator-leader-crash needs a coordinator ensemble: run it with --coordinator ensemble"
                .into(),
        ));
    }
    let mut stop = StopSignals::listen()?;
    let (ok, pair) = tokio::select! {
        shown = demonstrate(&opts) => shown?,
        signal = stop.next() => {
            // Dropping the demonstration drops the pair: its processes are killed, its files removed.
            println!("\n{signal}: stopping; every process and file of the demo is removed.");
            return Err(DemoError::Interrupted(signal));
        }
    };
    match opts.exit_after {
        Some(d) => tokio::select! {
            _ = tokio::time::sleep(d) => {}
            signal = stop.next() => println!("\n{signal}: stopping."),
        },
        None => {
            println!("Press Ctrl-C to stop; every process and file of the demo is then removed.");
            stop.next().await;
        }
    }
    println!("Stopping.");
    drop(pair);
    Ok(ok)
}

/// Starts the pair, injects the failure, prints the verdict; returns whether it holds, with the
/// pair still running for the operator to look at.
async fn demonstrate(opts: &DemoOptions) -> Result<(bool, Arc<Pair>), DemoError> {
    let coordinator = match opts.coordinator.servers() {
        1 => "a coordinator".to_string(),
        n => format!("a {n}-server coordinator ensemble"),
    };
    println!(
        "Referee demo: {coordinator}, two demo masters (edit journal in the coordinator) and two agents on loopback."
    );
    let spec = PairSpec {
        bin: opts.bin.clone(),
        lean_agent: None,
        coordinator: opts.coordinator,
        timings: Timings::referee(),
        master: MasterKind::LeasePolling,
        // The partition cuts the active agent's coordinator connections at its proxies.
        proxied_agents: opts.scenario == Scenario::Partition,
        extra_agent_yaml: Vec::new(),
        admin: true,
        journal: true,
    };
    let started = Instant::now();
    let pair = Pair::start(spec).await?;
    let active = pair.wait_for_active(Duration::from_secs(30)).await?;
    let all: Vec<usize> = (0..pair.coordinator_servers()).collect();
    if all.len() > 1 {
        pair.wait_for_coordinator_leader(&all, Duration::from_secs(30)).await?;
    }
    let other = 1 - active;
    println!("Started in {} ms (files in {}).", started.elapsed().as_millis(), pair.dir.0.display());
    println!("{}; {} is active.", describe_coordinator(&pair).await, NODES[active]);
    mkdir_demo(&pair, active).await?;
    let shared = Arc::new(pair);
    let mut writer = start_writer(shared.clone(), None, "file", Acks::default());
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        print_status(&shared).await;
    }
    print_fencing_checks(&shared, other).await;

    let what = match opts.scenario {
        Scenario::Crash => "killing the active master (kill -9)",
        Scenario::Hang => "hanging the active master (SIGSTOP)",
        Scenario::AgentCrash => "killing the active agent (kill -9)",
        Scenario::Partition => {
            "cutting the active node off the coordinator (its agent's connections black-holed; its master runs on, written to directly)"
        }
        Scenario::Switchover => "switching over with `referee admin failover`",
        Scenario::CoordinatorRestart if shared.coordinator_servers() > 1 => {
            "killing every coordinator server at once (kill -9) under the write load, then restarting them all"
        }
        Scenario::CoordinatorRestart => "killing the coordinator (kill -9) under the write load, then restarting it",
        Scenario::CoordinatorLeaderCrash => "killing the coordinator's leader (kill -9) under the write load",
    };
    let on = match opts.scenario {
        Scenario::CoordinatorRestart | Scenario::CoordinatorLeaderCrash => String::new(),
        Scenario::Crash | Scenario::Hang | Scenario::AgentCrash | Scenario::Partition | Scenario::Switchover => {
            format!(" on {}", NODES[active])
        }
    };
    // The active's claim on the journal, as the epoch znode holds it before the failure.
    let claim_before = epoch_claim(&shared).await?;
    println!("\n>>> {what}{on}");
    // Whether the scenario's own claim held, beside the verdict (the leader crash: no failover).
    let mut scenario_held = true;
    let final_active = match opts.scenario {
        Scenario::CoordinatorRestart => {
            let (now_active, kept) = restart_coordinator_under_load(&shared, &writer, active).await?;
            scenario_held = kept;
            now_active
        }
        Scenario::CoordinatorLeaderCrash => {
            let (now_active, kept) = crash_coordinator_leader(&shared, &writer, active).await?;
            scenario_held = kept;
            now_active
        }
        Scenario::Partition => {
            scenario_held = partition(&shared, &writer, active).await?;
            other
        }
        Scenario::Crash | Scenario::Hang | Scenario::AgentCrash | Scenario::Switchover => {
            fail_over(&shared, &writer, opts.scenario, active).await?;
            other
        }
    };

    // Keep writing a little under the new active, then stop the client.
    tokio::time::sleep(Duration::from_millis(500)).await;
    writer.stop().await;

    // After a failover, the old active's claim is written under: the journal must refuse it.
    // Without one, the claim must be the one in force still.
    let not_active = 1 - final_active;
    let deposed_refused = if final_active == active {
        let claim_after = epoch_claim(&shared).await?;
        let kept = claim_after == claim_before;
        println!(
            "\nNo master was deposed: the epoch {} {}'s claim (token {}, version {}){}",
            if kept { "still holds" } else { "NO LONGER holds" },
            NODES[active],
            claim_before.token,
            claim_before.version,
            if kept { "; the standby never claimed it" } else { "" }
        );
        kept
    } else {
        deposed_write_refused(&shared, not_active, claim_before).await?
    };

    let acks: Vec<Acknowledged> =
        writer.acks.lock().unwrap_or_else(|p| p.into_inner()).iter().map(|a| a.rec.clone()).collect();
    let verdict = verify(&shared.coordinator_addr, JOURNAL_PATH, EPOCH_PATH, &acks)
        .await
        .map_err(|e| DemoError::Scenario(format!("reading the journal for the verdict: {e:#}")))?;
    let single_active = shared.actives().await == vec![final_active];
    println!("\nVerdict from an independent reader of the journal:\n{verdict}");
    println!("  client writes refused while no master could take them: {}", writer.refused.load(Ordering::Relaxed));
    match opts.scenario {
        _ if scenario_held => {}
        Scenario::Partition => println!("  the two masters' acknowledgements overlapped, which they must not"),
        Scenario::CoordinatorRestart => println!("  the coordinator restart caused a failover, which it must not"),
        _ => println!("  the coordinator leader's crash caused a failover, which it must not"),
    }
    let ok = verdict.is_clean() && deposed_refused && single_active && scenario_held;
    println!(
        "\n{}",
        if ok {
            "VERDICT HOLDS: nothing acknowledged was lost, nothing stale was accepted, one active."
        } else {
            "VERDICT FAILED."
        }
    );

    println!(
        "\nTry, while it runs:\n  curl http://127.0.0.1:{}/status\n  curl -i http://127.0.0.1:{}/active\n  {} admin status --config {}\n  {} admin failover --to {} --config {}\n",
        shared.ports[final_active].probes,
        shared.ports[not_active].probes,
        opts.bin.display(),
        shared.node_path(final_active).join("agent.yaml").display(),
        opts.bin.display(),
        NODES[not_active],
        shared.node_path(final_active).join("agent.yaml").display(),
    );
    Ok((ok, shared))
}

/// Injects a master or agent failure (or asks for a switchover), waits until the other node is
/// active and has acknowledged a write, and prints the failover timeline.
async fn fail_over(shared: &Pair, writer: &Writer, scenario: Scenario, active: usize) -> Result<(), DemoError> {
    let other = 1 - active;
    let (t0, fault) = (Instant::now(), std::time::SystemTime::now());
    match scenario {
        Scenario::Crash => shared.masters[active].signal(Signal::SIGKILL)?,
        Scenario::Hang => shared.masters[active].signal(Signal::SIGSTOP)?,
        Scenario::Partition => shared.black_hole_agent(active).await?,
        Scenario::AgentCrash => {
            if let Some(agent) = shared.agents[active].as_ref() {
                agent.signal(Signal::SIGKILL)?;
            }
        }
        Scenario::Switchover => {
            let (code, out, err) = shared.admin(other, &["failover", "--to", NODES[other]]).await?;
            println!("  referee admin failover --to {} (exit {code}): {}", NODES[other], out.trim());
            if code != 0 {
                return Err(DemoError::Scenario(format!("the switchover was refused: {}", err.trim())));
            }
        }
        Scenario::CoordinatorRestart | Scenario::CoordinatorLeaderCrash => {
            return Err(DemoError::Scenario("a coordinator failure is not a master failover".into()));
        }
    }
    shared.wait_for_active_node(other, Duration::from_secs(20)).await?;
    let became_active = t0.elapsed();
    // The first write the new active acknowledged.
    let (_, first_ack) = first_ack_after(writer, Some(other), t0, t0, "on the new active").await?;
    print_status(shared).await;
    // Every instant both agents recorded, joined with the fault and the first acknowledged
    // write: consecutive phases that sum to the whole.
    let acked = Mark::at("first write acknowledged", timeline::wall_us(fault + first_ack));
    let marks = shared.failover_marks(active, other, fault, vec![acked], Duration::from_secs(5)).await;
    println!("\nFailover timeline ({} -> {}), from the fault:", NODES[active], NODES[other]);
    match &marks {
        Ok(marks) => {
            for (phase, took) in summary(marks) {
                let took = took.map_or_else(|| "-".to_owned(), |d| format!("{:.1}", d.as_secs_f64() * 1000.0));
                println!("  {:<12} {:>8} ms", phase, took);
            }
        }
        Err(_) => {
            // The new active's own phases, from when it saw the lock free.
            let history = shared.agent_json(other, "/history").await.unwrap_or_default();
            let phases = history["transitions"]
                .as_array()
                .and_then(|t| t.iter().rev().find(|x| x["to"] == "active"))
                .map(|x| x["phases"].clone())
                .unwrap_or_default();
            for key in ["detect_ms", "elect_ms", "fence_ms", "promote_ms"] {
                println!("  {:<12} {:>8} ms", key.trim_end_matches("_ms"), phases[key].as_u64().unwrap_or(0));
            }
        }
    }
    // When its agent saw the master promoted, where recorded; else when this demo saw it.
    let promoted = marks.as_ref().ok().and_then(|marks| {
        let at = marks.iter().find(|m| m.event == "new active's agent: promoted")?.at_us;
        Some(Duration::from_micros(at.saturating_sub(timeline::wall_us(fault)).max(0) as u64))
    });
    println!(
        "  {} active after {:.1} ms; first write acknowledged by it after {:.1} ms",
        NODES[other],
        promoted.unwrap_or(became_active).as_secs_f64() * 1000.0,
        first_ack.as_secs_f64() * 1000.0
    );
    match marks {
        Ok(marks) => {
            println!("\nEvery phase, {} -> {} (each from the mark before):", NODES[active], NODES[other]);
            let mut total = Duration::ZERO;
            for p in timeline::phases(&marks) {
                total += p.duration;
                println!("  {:>8.1} ms  {}", p.duration.as_secs_f64() * 1000.0, p.to);
            }
            println!("  {:>8.1} ms  total, from the fault", total.as_secs_f64() * 1000.0);
        }
        Err(e) => println!("  (no full timeline: {e})"),
    }

    Ok(())
}

/// A failover's joined marks ([`Pair::failover_marks`]) cut into the phases an operator asks
/// about, each from the end of the one before, so they sum to the time from the fault to the
/// first acknowledged write: detect (until the new active's agent saw the lock free: the old
/// side's detection and release, or the session's expiry), elect (the lock won), fence (the
/// old active fenced), promote (its master active) and the first write. A phase whose mark is
/// missing shows as `None`, its time counted in the next phase.
fn summary(marks: &[Mark]) -> Vec<(&'static str, Option<Duration>)> {
    let at =
        |event: &str, after: i64| marks.iter().filter(|m| m.event == event && m.at_us >= after).map(|m| m.at_us).min();
    let Some(mut from) = at("fault", i64::MIN) else { return Vec::new() };
    let steps = [
        ("detect", "new active's agent: lock_seen_free"),
        ("elect", "new active's agent: lock_acquired"),
        ("fence", "new active's agent: fence_done"),
        ("promote", "new active's agent: promoted"),
        ("first write", "first write acknowledged"),
    ];
    steps
        .iter()
        .map(|&(phase, event)| {
            let took = at(event, from).map(|end| {
                let took = Duration::from_micros(end.saturating_sub(from).max(0) as u64);
                from = end;
                took
            });
            (phase, took)
        })
        .collect()
}

/// Cuts the active node off the coordinator ([`fail_over`] with [`Scenario::Partition`], which
/// waits for the other node to take over and prints the timeline) while a second client writes
/// to the cut-off node's master directly and its lease is read off that master; then prints
/// what the two masters themselves answered, heals the cut and waits for the old node to
/// rejoin as a connected standby. Returns whether the masters' answers show no overlap: the
/// old master's last acknowledgement came before the new master's first write was sent, and so
/// did the end of the old master's lease as it reported it.
async fn partition(shared: &Arc<Pair>, writer: &Writer, active: usize) -> Result<bool, DemoError> {
    let other = 1 - active;
    let status = shared.agent_json(active, "/status").await.unwrap_or_default();
    let granted = status["granted_session_timeout_ms"].as_u64();
    let mut direct = start_writer(shared.clone(), Some(active), "direct", writer.acks.clone());
    let stop_lease = Arc::new(AtomicBool::new(false));
    let lease = {
        let (shared, stop) = (shared.clone(), stop_lease.clone());
        tokio::spawn(async move {
            let mut end: Option<u64> = None;
            while !stop.load(Ordering::Relaxed) {
                if let Some(status) = shared.master_json(active, "/lease/status").await {
                    end = end.max(status["writable_until_boot_us"].as_u64());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            end
        })
    };
    let (cut, cut_boot) = (Instant::now(), boot_us());
    let took_over = fail_over(shared, writer, Scenario::Partition, active).await;
    // A little past the takeover, so that a write the old master still took would be seen.
    tokio::time::sleep(Duration::from_millis(100)).await;
    direct.stop().await;
    stop_lease.store(true, Ordering::Relaxed);
    let lease_end = lease.await.ok().flatten();
    let old_refused = direct.refused.load(Ordering::Relaxed);
    took_over?;

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (old_after_cut, old_last, new_first) = {
        let acks = writer.acks.lock().unwrap_or_else(|p| p.into_inner());
        let old = acks.iter().filter(|a| a.node == active);
        let old_after_cut = old.clone().filter(|a| a.received > cut).count();
        let old_last = old.map(|a| a.received).max();
        let new_first = acks.iter().filter(|a| a.node == other).map(|a| a.sent).min();
        (old_after_cut, old_last, new_first)
    };
    let new_first =
        new_first.ok_or_else(|| DemoError::Scenario(format!("{}'s master acknowledged no write", NODES[other])))?;
    println!("\nWhat the two masters themselves answered (times from the cut):");
    match old_last {
        Some(last) => println!(
            "  {}'s master acknowledged {old_after_cut} writes sent to it after the cut, the last at {:.1} ms{}, \
             and refused the {old_refused} sent after that",
            NODES[active],
            ms(last.saturating_duration_since(cut)),
            if old_after_cut == 0 { " (before the cut)" } else { "" }
        ),
        None => println!("  {}'s master acknowledged no write", NODES[active]),
    }
    // The old master's lease end, on the boot clock it reports it on, counted from the cut.
    let lease_ended = lease_end.map(|end| Duration::from_micros(end.saturating_sub(cut_boot)));
    match lease_ended {
        Some(at) => {
            println!("  {}'s master's lease ended at {:.1} ms, as the master reports it", NODES[active], ms(at))
        }
        None => println!("  {}'s master reported no lease", NODES[active]),
    }
    let new_sent = new_first.saturating_duration_since(cut);
    println!(
        "  {}'s master acknowledged its first write, sent at {:.1} ms (granted session timeout {} ms)",
        NODES[other],
        ms(new_sent),
        granted.map_or("unknown".into(), |g| g.to_string())
    );
    let after_last = old_last.map_or(true, |last| last < new_first);
    let after_lease = lease_ended.is_some_and(|at| at < new_sent);
    let held = after_last && after_lease;
    if held {
        println!(
            "  {}'s first write was sent {:.1} ms after {}'s lease ended: never two masters taking writes",
            NODES[other],
            ms(new_sent - lease_ended.unwrap_or_default()),
            NODES[active]
        );
    } else {
        println!(
            "  OVERLAP: {}'s first write was sent {} {}'s last acknowledgement and {} its lease ended",
            NODES[other],
            if after_last { "after" } else { "BEFORE" },
            NODES[active],
            if after_lease { "after" } else { "BEFORE (or no lease was reported)" }
        );
    }

    let healed = Instant::now();
    shared.heal_agent(active).await?;
    shared.wait_for_connected_standby(active, Duration::from_secs(30)).await?;
    println!(
        "  the cut healed: {} back as a connected standby after {} ms",
        NODES[active],
        healed.elapsed().as_millis()
    );
    Ok(held)
}

/// The first write acknowledged after `after` (by `node`, if given): the node that acknowledged
/// it and when, counted from `t0`; an error naming `what` if none comes within 20 s of `t0`.
async fn first_ack_after(
    writer: &Writer,
    node: Option<usize>,
    after: Instant,
    t0: Instant,
    what: &str,
) -> Result<(usize, Duration), DemoError> {
    loop {
        let found = writer
            .acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|a| a.received > after && node.map_or(true, |want| a.node == want))
            .map(|a| (a.node, a.received.duration_since(t0)));
        if let Some(found) = found {
            return Ok(found);
        }
        if t0.elapsed() > Duration::from_secs(20) {
            return Err(DemoError::Scenario(format!("no master acknowledged a write {what}")));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Kills the coordinator under the write load and restarts it on the same data directory.
/// Returns the node active once writes are acknowledged again: the same one when its agent's
/// session survived the restart (the coordinator gives restored sessions a fresh timeout, so an
/// agent that reconnects in time keeps its lock), the other one after a fenced failover if not.
async fn restart_coordinator_under_load(
    shared: &Pair,
    writer: &Writer,
    active: usize,
) -> Result<(usize, bool), DemoError> {
    let token = |s: serde_json::Value| s["token"].as_u64();
    let token_before = token(shared.agent_json(active, "/status").await.unwrap_or_default());
    let acked_before = writer.acks.lock().unwrap_or_else(|p| p.into_inner()).len();
    let t0 = Instant::now();
    shared.kill_coordinator();
    let servers = shared.coordinator_servers();
    let which = if servers == 1 { "coordinator".to_string() } else { format!("all {servers} coordinator servers") };
    println!("  {which} killed with {acked_before} writes acknowledged so far");
    shared.restart_coordinator(false).await?;
    if servers > 1 {
        let all: Vec<usize> = (0..servers).collect();
        shared.wait_for_coordinator_leader(&all, Duration::from_secs(30)).await?;
    }
    let serving = t0.elapsed();
    let back = t0 + serving;
    let (node, first_ack) = first_ack_after(writer, None, back, t0, "after the coordinator restart").await?;
    let final_active = shared.wait_for_active(Duration::from_secs(20)).await?;
    let token_after = token(shared.agent_json(final_active, "/status").await.unwrap_or_default());
    print_status(shared).await;
    if servers > 1 {
        println!("  {}", describe_coordinator(shared).await);
    }
    println!(
        "  coordinator serving again after {} ms on the same data {}; first write acknowledged after {} ms, by {}",
        serving.as_millis(),
        if servers == 1 { "directory" } else { "directories" },
        first_ack.as_millis(),
        NODES[node]
    );
    let kept = final_active == active && token_after.is_some() && token_after == token_before;
    if kept {
        println!(
            "  {} kept its session, its lock and its token ({}) across the restart: no failover was needed",
            NODES[active],
            token_before.map_or("-".into(), |t| t.to_string())
        );
    } else {
        println!(
            "  the pair changed its active: {} (token {:?}) before, {} (token {:?}) after",
            NODES[active], token_before, NODES[final_active], token_after
        );
    }
    Ok((final_active, kept))
}

/// Kills the coordinator ensemble's leader under the write load, waits for a new leader, for
/// both agents' sessions on surviving servers and for writes to be acknowledged again, then
/// restarts the killed server and waits until it follows. Returns the node active at the end,
/// and whether it is the one active before under the same token (no failover happened).
async fn crash_coordinator_leader(shared: &Pair, writer: &Writer, active: usize) -> Result<(usize, bool), DemoError> {
    let all: Vec<usize> = (0..shared.coordinator_servers()).collect();
    let leader = shared.wait_for_coordinator_leader(&all, Duration::from_secs(20)).await?;
    let token = |s: serde_json::Value| s["token"].as_u64();
    let token_before = token(shared.agent_json(active, "/status").await.unwrap_or_default());
    let before = sessions(shared).await;
    println!("  agents' sessions before: {}", describe_sessions(&before));
    let acked_before = writer.acks.lock().unwrap_or_else(|p| p.into_inner()).len();
    let t0 = Instant::now();
    shared.kill_coordinator_server(leader);
    println!("  coordinator server {} (the leader) killed with {acked_before} writes acknowledged so far", leader + 1);
    let others: Vec<usize> = all.iter().copied().filter(|&k| k != leader).collect();
    let successor = shared.wait_for_coordinator_leader(&others, Duration::from_secs(20)).await?;
    let elected = t0.elapsed();
    // Both agents' sessions live on: each is connected again, on a surviving server.
    let deadline = t0 + Duration::from_secs(20);
    let (after, settled) = loop {
        let on = sessions(shared).await;
        if on.iter().all(|k| k.is_some_and(|k| k != leader)) {
            break (on, t0.elapsed());
        }
        if Instant::now() > deadline {
            return Err(DemoError::Scenario(format!(
                "the agents' sessions did not move off the killed server within 20 s: {}",
                describe_sessions(&on)
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let first_ack = first_ack_after(writer, None, t0 + elected, t0, "after the new leader was elected").await?;
    // The longest the client went without an acknowledgement, from the kill until now.
    let gap = {
        let acks = writer.acks.lock().unwrap_or_else(|p| p.into_inner());
        let mut last = t0;
        let mut longest = Duration::ZERO;
        for at in acks.iter().map(|a| a.received).filter(|at| *at > t0) {
            longest = longest.max(at.duration_since(last));
            last = at;
        }
        longest
    };
    let final_active = shared.wait_for_active(Duration::from_secs(20)).await?;
    let token_after = token(shared.agent_json(final_active, "/status").await.unwrap_or_default());
    print_status(shared).await;
    println!("  server {} leads after {} ms", successor + 1, elected.as_millis());
    let sessions: Vec<String> = NODES
        .iter()
        .enumerate()
        .map(|(i, node)| match (before[i], after[i]) {
            (Some(b), Some(a)) if b == a => format!("{node} still on server {}", a + 1),
            (Some(b), Some(a)) => format!("{node} moved from server {} to server {}", b + 1, a + 1),
            (None, Some(a)) => format!("{node} on server {}", a + 1),
            (_, None) => format!("{node} not connected"),
        })
        .collect();
    println!("  agents' sessions, both alive {} ms after the kill: {}", settled.as_millis(), sessions.join(", "));
    println!(
        "  first write acknowledged {} ms after the kill, by {}; longest stretch without an acknowledged write: {} ms",
        first_ack.1.as_millis(),
        NODES[first_ack.0],
        gap.as_millis()
    );
    let kept = final_active == active && token_after == token_before;
    if kept {
        println!(
            "  {} stayed active under token {}: no failover, the agents' sessions outlived the leader",
            NODES[active],
            token_before.map_or("-".into(), |t| t.to_string())
        );
    } else {
        println!(
            "  the pair changed its active: {} (token {:?}) before, {} (token {:?}) after",
            NODES[active], token_before, NODES[final_active], token_after
        );
    }

    let t1 = Instant::now();
    shared.restart_coordinator_server(leader).await?;
    let leader_after = shared.wait_for_coordinator_leader(&all, Duration::from_secs(30)).await?;
    let mode = shared.coordinator_mode(leader).await.unwrap_or_else(|| "down".into());
    println!(
        "  coordinator server {} restarted on its data directory: {mode} after {} ms (server {} leads)",
        leader + 1,
        t1.elapsed().as_millis(),
        leader_after + 1
    );
    Ok((final_active, kept))
}

/// The claim the epoch znode holds now, read through a session of the demo's own.
async fn epoch_claim(pair: &Pair) -> Result<Claim, DemoError> {
    let limit = Duration::from_secs(5);
    let failed = |e: String| DemoError::Scenario(format!("reading the epoch {EPOCH_PATH}: {e}"));
    let client = journal::connect_session(&pair.coordinator_addr, Duration::from_secs(10), limit)
        .await
        .map_err(|e| failed(format!("{e:#}")))?;
    match journal::read_epoch(&client, EPOCH_PATH, limit).await {
        Ok(Some((record, stat))) => Ok(Claim { token: record.token, version: stat.version, marker_seq: 0 }),
        Ok(None) => Err(failed("no master has claimed it".into())),
        Err(e) => Err(failed(e.to_string())),
    }
}

/// Writes under the deposed master's old claim, and says whether the journal itself refused.
///
/// A deposed master still running (a hung one is woken first, as it would wake by itself) is
/// made to write past its role and lease checks with `POST /test/force-write`: its guarded
/// append must come back `deposed:`, the journal's `BadVersion`. One that is gone (crashed, or
/// killed by fencing) cannot be asked, so the demo sends the append it would have sent, the
/// same `multi(check(epoch, old version), create(edit))` with its token, on a session of its
/// own. Any other answer, a refusal for another reason included, is not the journal's.
async fn deposed_write_refused(pair: &Pair, deposed: usize, old: Claim) -> Result<bool, DemoError> {
    let name = NODES[deposed];
    // A hung master wakes up with its old claim; one that was killed ignores the signal.
    let _ = pair.masters[deposed].signal(Signal::SIGCONT);
    let url = format!("http://127.0.0.1:{}/test/force-write", pair.ports[deposed].master);
    let body = serde_json::json!({"key": "deposed", "value": "must not land", "write_id": "deposed-write"});
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("http client");
    match http.post(url).json(&body).send().await {
        Ok(r) => {
            let code = r.status();
            let reason = r
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|v| v["reason"].as_str().map(str::to_string))
                .unwrap_or_default();
            let refused = code == reqwest::StatusCode::SERVICE_UNAVAILABLE && reason.starts_with("deposed:");
            println!(
                "\nThe deposed master {name} (its claim: token {}, epoch version {}) was made to write past its \
                 own checks: {}\n  it answered {code}: {reason}",
                old.token,
                old.version,
                if refused { "the journal refused it, as it must" } else { "NOT REFUSED BY THE JOURNAL" }
            );
            Ok(refused)
        }
        Err(e) => {
            let limit = Duration::from_secs(5);
            let client = journal::connect_session(&pair.coordinator_addr, Duration::from_secs(10), limit)
                .await
                .map_err(|e| DemoError::Scenario(format!("a session for the deposed write: {e:#}")))?;
            let edit = Edit {
                write_id: "deposed-write".into(),
                token: old.token,
                op: EditOp::Put { key: "deposed".into(), value: serde_json::json!("must not land") },
            };
            let appended = journal::append_under(&client, JOURNAL_PATH, EPOCH_PATH, &old, &edit, limit).await;
            let refused = matches!(appended, Err(JournalError::Deposed { .. }));
            let said = match &appended {
                Ok(seq) => format!("appended at seq {seq}"),
                Err(e) => e.to_string(),
            };
            println!(
                "\nThe deposed master {name} is gone ({e}); its append, multi(check(epoch, version {}), \
                 create(edit with token {})), sent on the demo's own session: {}\n  the coordinator answered: {said}",
                old.version,
                old.token,
                if refused { "the journal refused it, as it must" } else { "NOT REFUSED BY THE JOURNAL" }
            );
            Ok(refused)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mark(event: &str, at_ms: i64) -> Mark {
        Mark::at(event, at_ms * 1000)
    }

    #[test]
    fn the_summary_counts_from_the_fault_and_sums_to_the_first_write() {
        let marks = [
            mark("fault", 1000),
            mark("old active's agent: lease_ended", 2585),
            mark("new active's agent: standby_cycle_started", 3445),
            mark("new active's agent: lock_seen_free", 3446),
            mark("new active's agent: lock_acquired", 3448),
            mark("new active's agent: fence_done", 3451),
            mark("new active's agent: promoted", 3455),
            mark("first write acknowledged", 3467),
        ];
        let ms = |v: u64| Some(Duration::from_millis(v));
        let phases = summary(&marks);
        assert_eq!(
            phases,
            vec![("detect", ms(2446)), ("elect", ms(2)), ("fence", ms(3)), ("promote", ms(4)), ("first write", ms(12))]
        );
        let total: Duration = phases.iter().filter_map(|(_, d)| *d).sum();
        assert_eq!(total, Duration::from_millis(2467));
    }

    #[test]
    fn a_missing_mark_folds_its_phase_into_the_next() {
        // No fence was needed: the fence's time (none) and the breadcrumb's go to promote.
        let marks = [
            mark("fault", 0),
            mark("new active's agent: lock_seen_free", 20),
            mark("new active's agent: lock_acquired", 22),
            mark("new active's agent: promoted", 27),
            mark("first write acknowledged", 30),
        ];
        let phases = summary(&marks);
        assert_eq!(phases[2], ("fence", None));
        assert_eq!(phases[3], ("promote", Some(Duration::from_millis(5))));
        // Marks from before the fault (a stale recording) are never counted.
        let stale =
            [mark("new active's agent: lock_seen_free", -5), mark("fault", 0), mark("first write acknowledged", 9)];
        assert_eq!(summary(&stale)[0], ("detect", None));
        assert_eq!(summary(&stale)[4], ("first write", Some(Duration::from_millis(9))));
        assert!(summary(&[]).is_empty(), "no fault, no summary");
    }
}
