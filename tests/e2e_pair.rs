//! End-to-end tests of a master pair as real processes: the coordinator, two demo masters and
//! two failover agents on loopback, against the bundled coordinator (one server, and a
//! three-server ensemble) and against Apache ZooKeeper 3.8. Throughout each scenario two oracles run: both agents' `/active` probes are
//! polled (never 200 on both), and both masters are written to continuously (acknowledgements
//! never interleave between masters).

use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{ensure, Result};
use nix::sys::signal::Signal;
use referee::lab::{
    coordinator_available as available, CoordinatorKind, MasterKind, MasterOracle, Oracles, Pair, PairSpec, Timings,
    NODES,
};
use referee_failover_agent::timeline::phases;

fn spec(coordinator: CoordinatorKind, proxied_agents: bool) -> PairSpec {
    PairSpec {
        bin: env!("CARGO_BIN_EXE_referee").into(),
        // The lean executable an operator deploys beside a master (the same agent as `referee agent`).
        lean_agent: Some(env!("CARGO_BIN_EXE_referee-agent").into()),
        coordinator,
        timings: Timings::referee(),
        master: MasterKind::LeasePolling,
        proxied_agents,
        extra_agent_yaml: Vec::new(),
        admin: false,
        journal: false,
    }
}

async fn start(kind: CoordinatorKind, proxied: bool) -> Result<(Arc<Pair>, usize)> {
    let pair = Arc::new(Pair::start(spec(kind, proxied)).await?);
    let first = pair.wait_for_active(Duration::from_secs(20)).await?;
    pair.write_within(first, "k", "v1", Duration::from_secs(2)).await.map_err(anyhow::Error::msg)?;
    ensure!(pair.write(1 - first, "k", "v2").await.is_err(), "the standby must refuse writes");
    Ok((pair, first))
}

/// Checks the oracles (never two actives, no late acknowledgement) and how long no node was
/// active, against four session timeouts. That budget is no speed target (the benchmark
/// measures failover time) and no safety check: it is there to catch a failover that hangs,
/// not one slowed by a loaded machine, so it is generous; the figure measured is printed.
async fn check_oracles(oracles: Oracles, what: &str) -> Result<()> {
    let budget = Duration::from_millis(4 * Timings::referee().session_timeout_ms);
    let gap = oracles.verdict(budget).await?;
    eprintln!("{what}: the longest stretch with no node active was {gap:?} (budget {budget:?})");
    Ok(())
}

async fn fences_by(pair: &Pair, node: usize) -> u64 {
    let status = pair.agent_json(node, "/status").await.unwrap_or_default();
    status["counters"]["fences_fenced"].as_u64().unwrap_or(0)
}

async fn master_crash(kind: CoordinatorKind) -> Result<()> {
    if !available(kind, "master_crash") {
        return Ok(());
    }
    let (pair, first) = start(kind, false).await?;
    let other = 1 - first;
    let oracles = Oracles::start(&pair);
    let fault = SystemTime::now();
    pair.masters[first].signal(Signal::SIGKILL)?;
    pair.wait_for_active_node(other, Duration::from_secs(10)).await?;
    pair.write_within(other, "k", "v3", Duration::from_secs(2)).await.map_err(anyhow::Error::msg)?;
    check_oracles(oracles, &format!("master crash, {kind:?}")).await?;
    ensure!(fences_by(&pair, other).await >= 1, "the new active must have fenced the old one before promoting");
    let history = pair.agent_json(other, "/history").await.unwrap_or_default();
    let last = history["transitions"].as_array().and_then(|t| t.last()).cloned().unwrap_or_default();
    ensure!(last["to"] == "active", "{history}");
    eprintln!("master crash failover {} -> {}: phases {}", NODES[first], NODES[other], last["phases"]);

    // The timeline: both agents' marks in /history cover the failover in its causal order,
    // and its phases add up to the whole span.
    let marks = pair.failover_marks(first, other, fault, Vec::new(), Duration::from_secs(5)).await?;
    let at = |event: &str| marks.iter().find(|m| m.event.ends_with(event)).map(|m| m.at_us);
    // The old agent marks the release when its reply arrives; the new agent may see the lock
    // free and take it before that (the deletion is visible to every session once applied),
    // so the release is ordered after the failed check only, and the lock itself proves it
    // came before the acquisition.
    let chains: [&[&str]; 2] = [
        &["fault", "old active's agent: first_failed_check", "old active's agent: lock_released"],
        &[
            "old active's agent: first_failed_check",
            "new active's agent: lock_acquired",
            ": fenced",
            "new active's agent: breadcrumb_written",
            "new active's agent: promoted",
        ],
    ];
    for order in chains {
        let times: Vec<Option<i64>> = order.iter().map(|e| at(e)).collect();
        ensure!(times.iter().all(Option::is_some), "marks missing from {marks:#?}");
        ensure!(times.windows(2).all(|w| w[0] <= w[1]), "marks out of causal order: {marks:#?}");
    }
    let total: Duration = phases(&marks).iter().map(|p| p.duration).sum();
    let (first_at, last_at) = (marks.iter().map(|m| m.at_us).min(), marks.iter().map(|m| m.at_us).max());
    ensure!(
        Some(total.as_micros() as i64) == first_at.zip(last_at).map(|(a, b)| b - a),
        "phases do not sum to the span: {marks:#?}"
    );
    for p in phases(&marks) {
        eprintln!("  {:>8.1} ms  {}", p.duration.as_secs_f64() * 1000.0, p.to);
    }
    Ok(())
}

async fn master_hang(kind: CoordinatorKind) -> Result<()> {
    if !available(kind, "master_hang") {
        return Ok(());
    }
    let (mut pair, first) = start(kind, false).await?;
    let other = 1 - first;
    let oracles = Oracles::start(&pair);
    let fault = SystemTime::now();
    pair.masters[first].signal(Signal::SIGSTOP)?;
    pair.wait_for_active_node(other, Duration::from_secs(15)).await?;
    check_oracles(oracles, &format!("master hang, {kind:?}")).await?;
    ensure!(fences_by(&pair, other).await >= 1, "the hung master must have been fenced");
    // The old agent's side of the timeline: its master's state unreadable, it went from active
    // to promoting and only then stepped down; its demotion of the stopped master failed, and
    // says so, before it released the lock.
    let marks = pair.failover_marks(first, other, fault, Vec::new(), Duration::from_secs(5)).await?;
    let at = |event: &str| marks.iter().find(|m| m.event == event).map(|m| m.at_us);
    let old_side = ["first_failed_check", "demote_sent", "demote_failed", "lock_released"]
        .map(|e| at(&format!("old active's agent: {e}")));
    ensure!(old_side.iter().all(Option::is_some), "the old agent's step-down is missing from {marks:#?}");
    ensure!(old_side.windows(2).all(|w| w[0] <= w[1]), "the old agent's marks out of order: {marks:#?}");
    ensure!(at("old active's agent: demote_done").is_none(), "a failed demotion marked done: {marks:#?}");
    // The new active says why the graceful level did not do it, and what to raise if the
    // master was only slow.
    let fencing = pair.agent_fence_lines(other);
    ensure!(
        fencing.contains("did not confirm within") && fencing.contains("raise that method's timeout_ms"),
        "the new active's log does not say the graceful step-down went unanswered:\n{fencing}"
    );
    // The kill fencing method ended the stopped process.
    let pair_mut = Arc::get_mut(&mut pair).expect("oracles stopped");
    let status = pair_mut.masters[first].wait_exit(Duration::from_secs(5))?;
    eprintln!("hung master {} was fenced and exited with {status}", NODES[first]);
    Ok(())
}

async fn agent_crash(kind: CoordinatorKind) -> Result<()> {
    if !available(kind, "agent_crash") {
        return Ok(());
    }
    let (pair, first) = start(kind, false).await?;
    let other = 1 - first;
    let oracles = Oracles::start(&pair);
    if let Some(agent) = pair.agents[first].as_ref() {
        agent.signal(Signal::SIGKILL)?;
    }
    // The standby takes over once the dead agent's session expires (2.5 s), after fencing.
    pair.wait_for_active_node(other, Duration::from_secs(15)).await?;
    pair.write_within(other, "k", "v4", Duration::from_secs(2)).await.map_err(anyhow::Error::msg)?;
    check_oracles(oracles, &format!("agent crash, {kind:?}")).await?;
    ensure!(fences_by(&pair, other).await >= 1, "the orphaned master must have been fenced");
    Ok(())
}

async fn agent_partitioned(kind: CoordinatorKind) -> Result<()> {
    if !available(kind, "agent_partitioned") {
        return Ok(());
    }
    let (pair, first) = start(kind, true).await?;
    let other = 1 - first;
    let oracles = Oracles::start(&pair);
    pair.cut_agent(first).await?;
    pair.wait_for_active_node(other, Duration::from_secs(15)).await?;
    pair.write_within(other, "k", "v5", Duration::from_secs(2)).await.map_err(anyhow::Error::msg)?;
    check_oracles(oracles, &format!("agent partitioned, {kind:?}")).await?;
    // The cut-off agent demoted its own master (lease), before the peer promoted.
    let old = pair.agent_json(first, "/history").await.unwrap_or_default();
    let new = pair.agent_json(other, "/history").await.unwrap_or_default();
    let left = old["transitions"]
        .as_array()
        .and_then(|t| t.iter().rev().find(|x| x["from"] == "active"))
        .and_then(|x| x["at_ms"].as_i64());
    let took = new["transitions"]
        .as_array()
        .and_then(|t| t.iter().rev().find(|x| x["to"] == "active"))
        .and_then(|x| x["at_ms"].as_i64());
    match (left, took) {
        (Some(l), Some(t)) => {
            ensure!(l <= t, "the old active stepped down at {l} ms, after the new one took over at {t} ms")
        }
        other => anyhow::bail!("missing transitions {other:?}: old {old} new {new}"),
    }
    // Healing the partition brings the old agent back as a standby.
    pair.restore_agent(first).await?;
    pair.wait_for_active_node(other, Duration::from_secs(5)).await?;
    Ok(())
}

macro_rules! every_coordinator {
    ($name:ident, $bundled:ident, $apache:ident, $ensemble:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $bundled() -> Result<()> {
            $name(CoordinatorKind::Bundled).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $apache() -> Result<()> {
            $name(CoordinatorKind::ApacheZooKeeper).await
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $ensemble() -> Result<()> {
            $name(CoordinatorKind::BundledEnsemble).await
        }
    };
}

every_coordinator!(master_crash, master_crash_bundled, master_crash_apache_zookeeper, master_crash_bundled_ensemble);
every_coordinator!(master_hang, master_hang_bundled, master_hang_apache_zookeeper, master_hang_bundled_ensemble);
every_coordinator!(agent_crash, agent_crash_bundled, agent_crash_apache_zookeeper, agent_crash_bundled_ensemble);
every_coordinator!(
    agent_partitioned,
    agent_partitioned_bundled,
    agent_partitioned_apache_zookeeper,
    agent_partitioned_bundled_ensemble
);

/// A crashed master is seen when its process exits, not at the next health check: with checks
/// a minute apart, the other node still takes over within the deadline, because the old agent
/// watches its master's pid (its pidfile) and checks at once when it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_master_is_seen_without_waiting_for_the_check_interval() -> Result<()> {
    if !available(CoordinatorKind::Bundled, "a_crashed_master_is_seen_without_waiting_for_the_check_interval") {
        return Ok(());
    }
    let interval = Duration::from_secs(60);
    let mut spec = spec(CoordinatorKind::Bundled, false);
    spec.timings.health_interval_ms = interval.as_millis() as u64;
    let pair = Arc::new(Pair::start(spec).await?);
    let first = pair.wait_for_active(Duration::from_secs(20)).await?;
    pair.write_within(first, "k", "v1", Duration::from_secs(2)).await.map_err(anyhow::Error::msg)?;
    let other = 1 - first;
    let oracles = Oracles::start(&pair);
    let killed = std::time::Instant::now();
    pair.masters[first].signal(Signal::SIGKILL)?;
    pair.wait_for_active_node(other, Duration::from_secs(10)).await?;
    pair.write_within(other, "k", "v2", Duration::from_secs(2)).await.map_err(anyhow::Error::msg)?;
    ensure!(killed.elapsed() < interval, "the failover cannot have waited for a health check interval");
    check_oracles(oracles, "crash seen without a check").await?;
    // The old agent's verdict came from a check, under the refusal rule.
    let old = pair.agent_json(first, "/status").await.unwrap_or_default();
    ensure!(old["health"].to_string().contains("connection refused"), "old agent's status: {old}");
    Ok(())
}

/// The probes answer as documented on the active and on the standby, and a second agent with
/// an existing node id refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn probes_and_duplicate_node_id() -> Result<()> {
    let (pair, active) = start(CoordinatorKind::Bundled, false).await?;
    let standby = 1 - active;
    for (node, path, code) in [
        (active, "/healthz", 200),
        (active, "/readyz", 200),
        (active, "/active", 200),
        (active, "/standby", 503),
        (standby, "/healthz", 200),
        (standby, "/readyz", 200),
        (standby, "/active", 503),
        (standby, "/standby", 200),
        (active, "/status", 200),
        (active, "/history", 200),
        (active, "/metrics", 200),
    ] {
        let got = pair.probe_status(node, path).await;
        ensure!(got == Some(code), "{path} on {}: {got:?}, wanted {code}", NODES[node]);
    }
    let metrics = pair.probe_text(active, "/metrics").await.unwrap_or_default();
    ensure!(
        metrics.contains(&format!("referee_agent_active{{cluster=\"lab\",node=\"{}\"}} 1\n", NODES[active])),
        "{metrics}"
    );
    let lease = pair.agent_json(active, "/lease").await.unwrap_or_default();
    let status = pair.agent_json(active, "/status").await.unwrap_or_default();
    ensure!(lease["valid_for_ms"].as_u64().unwrap_or(0) > 0, "{lease}");
    ensure!(lease["token"] == status["token"], "lease {lease} vs status {status}");
    // Every server grants what the session was granted, so the lease counts on the grant.
    ensure!(
        status["lease_session_timeout_ms"].as_u64().is_some()
            && status["lease_session_timeout_ms"] == status["granted_session_timeout_ms"],
        "status {status}"
    );
    let standby_lease = pair.agent_json(standby, "/lease").await.unwrap_or_default();
    ensure!(standby_lease["valid_for_ms"] == 0, "{standby_lease}");

    // A second agent configured as node `a` (its own probe port) must refuse to start.
    let config = std::fs::read_to_string(pair.node_path(0).join("agent.yaml"))?;
    let port = referee::lab::free_port()?;
    let dup =
        config.replace(&format!("listen: 127.0.0.1:{}", pair.ports[0].probes), &format!("listen: 127.0.0.1:{port}"));
    let path = pair.node_path(0).join("agent-duplicate.yaml");
    std::fs::write(&path, dup)?;
    let (program, args) = pair.agent_command(&path);
    let mut second = referee::lab::Proc::spawn(
        "duplicate agent",
        program,
        &args,
        &[],
        pair.node_path(0).join("agent-duplicate.log"),
    )?;
    let exit = second.wait_exit(Duration::from_secs(20))?;
    ensure!(!exit.success(), "the duplicate agent must fail, it exited {exit}");
    let log = second.log_tail(5);
    ensure!(log.contains("node id"), "the refusal must say why: {log}");
    // The original pair is unaffected.
    ensure!(pair.actives().await == vec![active], "the original active is still the only one");

    // Oracles dropped unfinished (a scenario that failed on the way) let go of the pair, so
    // its processes end with it rather than run beside whatever comes next.
    drop((Oracles::start(&pair), MasterOracle::start(&pair)));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while Arc::strong_count(&pair) > 1 {
        ensure!(std::time::Instant::now() < deadline, "{} holders of the pair left", Arc::strong_count(&pair) - 1);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// SIGTERM on the active agent hands over cleanly: its master is demoted and confirmed, the
/// breadcrumb marked clean and the lock released, so the other node promotes without fencing.
async fn sigterm_hands_over(kind: CoordinatorKind) -> Result<()> {
    if !available(kind, "sigterm_hands_over") {
        return Ok(());
    }
    let (mut pair, first) = start(kind, false).await?;
    let other = 1 - first;
    let oracles = Oracles::start(&pair);
    if let Some(agent) = pair.agents[first].as_ref() {
        agent.signal(Signal::SIGTERM)?;
    }
    pair.wait_for_active_node(other, Duration::from_secs(10)).await?;
    pair.write_within(other, "k", "v6", Duration::from_secs(2)).await.map_err(anyhow::Error::msg)?;
    check_oracles(oracles, &format!("SIGTERM handover, {kind:?}")).await?;
    ensure!(fences_by(&pair, other).await == 0, "a clean handover needs no fencing");
    let pair_mut = Arc::get_mut(&mut pair).expect("oracles stopped");
    let agent = pair_mut.agents[first].as_mut().expect("agent");
    let status = agent.wait_exit(Duration::from_secs(10))?;
    ensure!(status.success(), "the agent exits cleanly after handing over: {status}");
    let log = agent.log_tail(20);
    ensure!(log.contains("handed over"), "{log}");
    Ok(())
}

every_coordinator!(
    sigterm_hands_over,
    sigterm_hands_over_bundled,
    sigterm_hands_over_apache_zookeeper,
    sigterm_hands_over_bundled_ensemble
);

/// A `pre_promote` hook that fails vetoes the promotion: the node that won the lock releases it
/// and backs off instead of promoting; with the hook allowing it again, it promotes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pre_promote_hook_vetoes_a_promotion() -> Result<()> {
    let dir = referee::lab::LabDir::new("hook")?;
    let gate = dir.0.join("allow-promotion");
    // Node b's hook: succeeds only while the gate file exists (`test -e FILE`, no shell).
    let hook = format!(
        "hooks:\n  pre_promote:\n    command: [\"/usr/bin/test\", \"-e\", \"{}\"]\n    timeout_ms: 1000\n",
        gate.display()
    );
    let mut s = spec(CoordinatorKind::Bundled, false);
    s.extra_agent_yaml = vec![String::new(), hook];
    // Make sure `a` becomes active first: b's hook vetoes until the gate exists.
    let pair = Arc::new(Pair::start(s).await?);
    pair.wait_for_active_node(0, Duration::from_secs(10)).await?;
    pair.masters[0].signal(Signal::SIGKILL)?;
    // b wins the lock, fences a, then its hook vetoes: it must not become active.
    let vetoed = async {
        loop {
            let st = pair.agent_json(1, "/status").await.unwrap_or_default();
            if st["last_failure"].as_str().is_some_and(|d| d.contains("pre_promote hook vetoed")) {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let st = tokio::time::timeout(Duration::from_secs(10), vetoed).await?;
    ensure!(st["role"] != "active", "{st}");
    ensure!(!pair.is_active(1).await, "a vetoed node must not be active");
    // Lift the veto: b promotes on its next attempt.
    std::fs::write(&gate, b"yes")?;
    pair.wait_for_active_node(1, Duration::from_secs(10)).await?;
    Ok(())
}

/// A handover whose demotion fails leaves the breadcrumb unclean: the next winner fences.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_demote_during_handover_leads_to_fencing() -> Result<()> {
    let (mut pair, first) = start(CoordinatorKind::Bundled, false).await?;
    let other = 1 - first;
    let oracles = Oracles::start(&pair);
    // The master hangs, then its agent is asked to stop: the handover's demotion times out.
    pair.masters[first].signal(Signal::SIGSTOP)?;
    if let Some(agent) = pair.agents[first].as_ref() {
        agent.signal(Signal::SIGTERM)?;
    }
    pair.wait_for_active_node(other, Duration::from_secs(15)).await?;
    check_oracles(oracles, "failed demotion in a handover").await?;
    ensure!(fences_by(&pair, other).await >= 1, "the unclean breadcrumb must make the next active fence");
    let pair_mut = Arc::get_mut(&mut pair).expect("oracles stopped");
    // Fenced in fact, not only by the new active's count: the kill method ended the stopped
    // master.
    let status = pair_mut.masters[first].wait_exit(Duration::from_secs(5))?;
    ensure!(status.signal() == Some(Signal::SIGKILL as i32), "the frozen master ended with {status}, not SIGKILL");
    let agent = pair_mut.agents[first].as_mut().expect("agent");
    agent.wait_exit(Duration::from_secs(10))?;
    let log = agent.log_tail(30);
    ensure!(log.contains("demoting the master failed") && log.contains("breadcrumb unclean"), "{log}");
    Ok(())
}
