//! End-to-end tests of the operator side, with real processes: `referee admin` against a pair
//! whose agents serve the authenticated admin and peer API.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use nix::sys::signal::Signal;
use referee::lab::{
    coordinator_available, CoordinatorKind, MasterKind, MasterOracle, MasterRecord, Pair, PairSpec, Timings, NODES,
};
use zookeeper_client as zk;

/// The lab cluster's lock znode.
const LOCK: &str = "/referee/lab/lock";

async fn pair() -> Result<(Arc<Pair>, usize)> {
    pair_with(Vec::new()).await
}

/// As [`pair`], each agent's generated configuration merged with its entry of `extra_agent_yaml`.
async fn pair_with(extra_agent_yaml: Vec<String>) -> Result<(Arc<Pair>, usize)> {
    pair_on(CoordinatorKind::Bundled, extra_agent_yaml).await
}

/// As [`pair_with`], on the coordinator `kind`.
async fn pair_on(kind: CoordinatorKind, extra_agent_yaml: Vec<String>) -> Result<(Arc<Pair>, usize)> {
    let spec = PairSpec {
        bin: env!("CARGO_BIN_EXE_referee").into(),
        lean_agent: None,
        coordinator: kind,
        timings: Timings::referee(),
        master: MasterKind::LeasePolling,
        proxied_agents: false,
        extra_agent_yaml,
        admin: true,
        journal: false,
    };
    let pair = Arc::new(Pair::start(spec).await?);
    let active = pair.wait_for_active(Duration::from_secs(20)).await?;
    Ok((pair, active))
}

/// What the masters themselves said over a stretch in which master `node` must not be active:
/// never two actives at once, no late acknowledgement, and from `from` to `to` no answer of
/// `node` saying active and no write it acknowledged (what its agent reports is checked
/// beside, by the caller); then, as proof the oracle would have seen it, `node` promoted after
/// `to`, when the stretch was over.
fn not_active_until_allowed(record: &MasterRecord, node: usize, from: Duration, to: Duration) -> Result<()> {
    record.check()?;
    let answers = record.check_not_active(node, from, to)?;
    record.promoted_after(node, to)?;
    eprintln!(
        "master {} answered {answers} times from {:.1} to {:.1} ms, never active and taking no write; promoted after",
        NODES[node],
        from.as_secs_f64() * 1000.0,
        to.as_secs_f64() * 1000.0
    );
    Ok(())
}

async fn fenced(pair: &Pair, node: usize) -> u64 {
    pair.agent_json(node, "/status").await.unwrap_or_default()["counters"]["fences_fenced"].as_u64().unwrap_or(0)
}

/// `referee admin failover --to` swaps the roles without a remote fence and prints the
/// timeline (with `--dry-run` it only prints the plan); `status` shows both members; a failover
/// to an unknown node is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_failover_swaps_roles_without_fencing() -> Result<()> {
    let (pair, active) = pair().await?;
    let standby = 1 - active;
    let (code, out, err) = pair.admin(active, &["status"]).await?;
    ensure!(code == 0, "status exited {code}: {out} {err}");
    for node in NODES {
        ensure!(out.contains(node), "status lists {node}: {out}");
    }
    // A dry run prints the plan and changes nothing (a failover sent would have returned only
    // once the standby served as active).
    let (code, out, err) = pair.admin(active, &["failover", "--to", NODES[standby], "--dry-run"]).await?;
    ensure!(code == 0, "failover --dry-run exited {code}: {out} {err}");
    ensure!(out.contains("would go ahead; nothing was sent") && out.contains(NODES[active]), "the plan: {out}");
    ensure!(pair.is_active(active).await && !pair.is_active(standby).await, "a dry run moves nothing");
    pair.write_within(active, "k", "dry", Duration::from_secs(2)).await.map_err(anyhow::Error::msg)?;

    let (code, out, err) = pair.admin(active, &["failover", "--to", NODES[standby]]).await?;
    ensure!(code == 0, "failover exited {code}: {out} {err}");
    pair.wait_for_active_node(standby, Duration::from_secs(10)).await?;
    ensure!(out.contains(NODES[standby]), "the timeline names the new active: {out}");
    ensure!(fenced(&pair, standby).await == 0, "a graceful switchover needs no remote fence");
    pair.write_within(standby, "k", "after", Duration::from_secs(2)).await.map_err(anyhow::Error::msg)?;
    ensure!(pair.write(active, "k", "old").await.is_err(), "the old active refuses writes");

    let (code, out, err) = pair.admin(active, &["failover", "--to", "nosuchnode"]).await?;
    ensure!(code == 2, "a failover to an unknown node is refused with exit 2, got {code}: {out} {err}");
    Ok(())
}

/// `referee admin failover --at` leaves the switchover to the standby's agent: `status` shows
/// it meanwhile, the agent starts it once its time has come (never before), gracefully (no
/// remote fence), and takes the record so nothing is left scheduled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_switchover_runs_at_its_time() -> Result<()> {
    let (pair, active) = pair().await?;
    let standby = 1 - active;
    let asked = std::time::Instant::now();
    let (code, out, err) = pair.admin(active, &["failover", "--to", NODES[standby], "--at", "+3s"]).await?;
    ensure!(code == 0, "failover --at exited {code}: {out} {err}");
    let (code, out, err) = pair.admin(standby, &["status"]).await?;
    ensure!(
        code == 0 && out.contains(&format!("switchover to {} scheduled for", NODES[standby])),
        "status: {out} {err}"
    );
    pair.wait_for_active_node(standby, Duration::from_secs(20)).await?;
    // Its time is 3 s after the request was made, which was after `asked`.
    ensure!(
        asked.elapsed() >= Duration::from_secs(3),
        "the switchover ran {:?} after it was asked for 3 s",
        asked.elapsed()
    );
    ensure!(fenced(&pair, standby).await == 0, "a scheduled switchover is graceful: no remote fence");
    pair.write_within(standby, "k", "scheduled", Duration::from_secs(2)).await.map_err(anyhow::Error::msg)?;
    ensure!(pair.write(active, "k", "old").await.is_err(), "the old active refuses writes");
    let (code, out, err) = pair.admin(standby, &["status"]).await?;
    ensure!(code == 0 && !out.contains("scheduled for"), "nothing is left scheduled: {out} {err}");

    // One found past its window (its agent was down) is cleared by a standby, never run late.
    let zk = zk::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(pair.coordinator_connect(active))
        .await?;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
    let missed = serde_json::json!({"to": NODES[active], "at_ms": now_ms - 120_000, "allow_data_loss": false,
        "requested_by": "test", "requested_at_ms": now_ms - 180_000});
    let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    zk.create("/referee/lab/switchover", &serde_json::to_vec(&missed)?, &open).await?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while zk.check_stat("/referee/lab/switchover").await?.is_some() {
        ensure!(std::time::Instant::now() < deadline, "a missed switchover was not cleared within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(pair.is_active(standby).await && !pair.is_active(active).await, "a missed switchover moves nothing");
    Ok(())
}

/// Pause stops automatic failover; resume restores it. Calls without the token are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_stops_failover_and_resume_restores_it() -> Result<()> {
    let (pair, active) = pair().await?;
    let standby = 1 - active;
    // Without the bearer token nothing happens.
    let url = format!("http://127.0.0.1:{}/admin/pause", pair.ports[standby].admin);
    let refused = reqwest::Client::new().post(&url).send().await?;
    ensure!(refused.status() == 401, "no token: {}", refused.status());
    let st = pair.agent_json(standby, "/status").await.unwrap_or_default();
    ensure!(st["paused"] == false, "a refused call changes nothing: {st}");

    let (code, out, err) = pair.admin(active, &["pause"]).await?;
    ensure!(code == 0, "pause exited {code}: {out} {err}");
    let oracle = MasterOracle::start(&pair);
    let killed_at = oracle.now();
    pair.masters[active].signal(Signal::SIGKILL)?;
    // Paused: the standby keeps reporting but does not take over. Observe for a while (three
    // health-check rounds and two loop intervals over the normal failover time).
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < deadline {
        ensure!(!pair.is_active(standby).await, "a paused standby must not take over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = pair.agent_json(standby, "/status").await.unwrap_or_default();
    ensure!(st["paused"] == true && st["last_decision"].as_str().unwrap_or("").contains("paused"), "{st}");
    let resumed_at = oracle.now();

    let (code, out, err) = pair.admin(standby, &["resume"]).await?;
    ensure!(code == 0, "resume exited {code}: {out} {err}");
    pair.wait_for_active_node(standby, Duration::from_secs(10)).await?;
    // The standby's master itself says so: not active while paused, active once resumed.
    let record = oracle.finish().await;
    not_active_until_allowed(&record, standby, killed_at, resumed_at)
        .context("a paused standby must not take over, as its master tells it")?;
    Ok(())
}

/// `referee admin check-fencing` has each agent check its fencing chain at once, also with the
/// periodic rounds off: exit 0 and a line per method while the chain would work; exit 1 naming
/// the method that would not (the standby's master stopped: the graceful level gets no answer
/// from it); exit 0 again once it is repaired. Nothing is fenced on the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn check_fencing_asks_each_agent_for_a_round_now() -> Result<()> {
    let no_periodic = "fencing:\n  check_interval_ms: 0\n".to_string();
    let (pair, active) = pair_with(vec![no_periodic.clone(), no_periodic]).await?;
    let standby = 1 - active;
    let fences_before = fenced(&pair, 0).await + fenced(&pair, 1).await;
    for i in 0..2 {
        let st = pair.agent_json(i, "/status").await.context("an agent's /status")?;
        ensure!(st["fencing_checks"].is_null(), "no periodic round, none asked for yet: {st}");
    }

    let (code, out, err) = pair.admin(active, &["check-fencing"]).await?;
    ensure!(code == 0, "check-fencing exited {code}: {out} {err}");
    for (i, node) in NODES.iter().enumerate() {
        let peer = NODES[1 - i];
        ensure!(out.contains(&format!("{node}: no problem")), "{out}");
        for method in ["level 0  graceful", "level 1  kill"] {
            let line = out.lines().find(|l| l.contains(&format!("-> {peer}  {method}")));
            ensure!(line.is_some_and(|l| l.contains(" ready ")), "{node}'s {method} against {peer}: {out}");
        }
        let st = pair.agent_json(i, "/status").await.context("an agent's /status")?;
        ensure!(st["fencing_checks"]["problems"] == 0, "the round asked for is in {node}'s status: {st}");
    }

    // The standby's master stops answering: the active's graceful level could not fence it.
    pair.masters[standby].signal(Signal::SIGSTOP)?;
    let (code, out, err) = pair.admin(active, &["check-fencing", "--node", NODES[active], "--json"]).await?;
    pair.masters[standby].signal(Signal::SIGCONT)?;
    ensure!(code == 1, "check-fencing with a problem exited {code}: {out} {err}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let results = v["results"].as_array().map_or(0, Vec::len);
    ensure!(results == 1 && v["results"][0]["node"] == NODES[active], "only the node asked: {v}");
    let graceful = &v["results"][0]["checks"]["peers"][0]["checks"][0];
    ensure!(graceful["method"] == "graceful" && graceful["readiness"] == "problem", "{v}");

    // Repaired: the next round asked for is clean again.
    let (code, out, err) = pair.admin(active, &["check-fencing", "--node", NODES[active]]).await?;
    ensure!(code == 0, "check-fencing after the repair exited {code}: {out} {err}");
    let fences_after = fenced(&pair, 0).await + fenced(&pair, 1).await;
    ensure!(fences_after == fences_before, "checks fenced something: {fences_before} fences, then {fences_after}");
    ensure!(pair.is_active(active).await, "the active stayed active");
    Ok(())
}

/// The whole cluster's pause is kept in the coordinator: an agent restarted during maintenance
/// comes back paused and makes no failover, not even with the lock free for the taking (the
/// active's agent killed meanwhile, its session expired); resuming it alone is refused while
/// the cluster is paused; `resume` ends the pause for every member, and the failover follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_pause_outlives_an_agent_restart() -> Result<()> {
    let (mut pair, active) = pair().await?;
    let standby = 1 - active;
    let (code, out, err) = pair.admin(active, &["pause"]).await?;
    ensure!(code == 0 && out.contains("paused"), "pause exited {code}: {out} {err}");
    // The masters are asked throughout the maintenance (the oracle holds no part of the pair,
    // so the agent can be restarted beside it).
    let oracle = MasterOracle::start(&pair);
    let paused_at = oracle.now();

    // The standby's agent is restarted during the maintenance.
    {
        let lab = Arc::get_mut(&mut pair).context("the pair has one owner")?;
        let agent = lab.agents[standby].as_mut().context("the standby's agent")?;
        agent.signal(Signal::SIGKILL)?;
        agent.wait_exit(Duration::from_secs(10))?;
        lab.agents[standby] = Some(lab.start_agent(standby)?);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = pair.agent_json(standby, "/status").await.unwrap_or_default();
        if st["paused"] == true && st["cluster_paused_by"].is_string() {
            break;
        }
        ensure!(tokio::time::Instant::now() < deadline, "the restarted agent is not paused: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The active's agent dies (a paused one keeps its lock whatever its master does), and the
    // coordinator expires its session: the lock is free.
    let zk = zk::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(pair.coordinator_connect(standby))
        .await?;
    ensure!(zk.check_stat(LOCK).await?.is_some(), "the active holds the lock");
    pair.agents[active].as_ref().context("the active's agent")?.signal(Signal::SIGKILL)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while zk.check_stat(LOCK).await?.is_some() {
        ensure!(tokio::time::Instant::now() < deadline, "the dead agent's lock was never released");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Paused, the standby leaves it free: watched for longer than a session timeout (an unpaused
    // standby takes a free lock within a loop interval), it neither takes the lock nor promotes,
    // and says why.
    let session = Duration::from_millis(Timings::referee().session_timeout_ms);
    let watch_until = tokio::time::Instant::now() + session + Duration::from_millis(500);
    while tokio::time::Instant::now() < watch_until {
        ensure!(!pair.is_active(standby).await, "an agent restarted during a cluster pause took over");
        ensure!(zk.check_stat(LOCK).await?.is_none(), "an agent restarted during a cluster pause took the lock");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let st = pair.agent_json(standby, "/status").await.unwrap_or_default();
    ensure!(st["last_decision"].as_str().unwrap_or_default().contains("paused"), "the standby says why it waits: {st}");

    let (code, out, err) = pair.admin(standby, &["resume", "--node", NODES[standby]]).await?;
    ensure!(code == 3 && err.contains("whole cluster is paused"), "resume of one member exited {code}: {out} {err}");
    let resumed_at = oracle.now();
    let (code, out, err) = pair.admin(standby, &["resume"]).await?;
    ensure!(code == 0 && out.contains("resumed"), "resume exited {code}: {out} {err}");
    pair.wait_for_active_node(standby, Duration::from_secs(10)).await?;
    let st = pair.agent_json(standby, "/status").await.unwrap_or_default();
    ensure!(st["paused"] == false && st["cluster_paused_by"].is_null(), "{st}");
    let record = oracle.finish().await;
    not_active_until_allowed(&record, standby, paused_at, resumed_at)
        .context("an agent restarted during a cluster pause must not take over, as its master tells it")?;
    Ok(())
}

/// Waits until every agent's `/status` satisfies `ok`, or fails naming the first that does not.
async fn every_agent(pair: &Pair, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> Result<()> {
    for (i, node) in NODES.iter().enumerate() {
        until_status(pair, i, &format!("{what} on {node}"), &ok).await?;
    }
    Ok(())
}

/// The cluster's settings (Patroni's dynamic configuration): `config set` writes them to the
/// coordinator after checking them against the agent's configuration, every agent puts them in
/// force over its own file (a restarted one too), `config show` says who has them, a node's
/// own setting or one the timing rules refuse is refused before anything is written, and
/// `config unset` gives each agent its own value back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_settings_reach_every_agent_and_survive_a_restart() -> Result<()> {
    let (mut pair, active) = pair().await?;
    let standby = 1 - active;
    let (code, out, err) =
        pair.admin(active, &["config", "set", "election.max_lag=7", "election.min_failover_interval_ms=1500"]).await?;
    ensure!(code == 0 && out.contains("election.max_lag = 7"), "config set exited {code}: {out} {err}");
    every_agent(&pair, "max_lag 7 in force", |st| {
        st["max_lag"] == 7 && st["cluster_settings"]["applied"] == true && st["cluster_settings"]["version"] == 0
    })
    .await?;
    let (code, out, err) = pair.admin(standby, &["config"]).await?;
    ensure!(code == 0, "config show exited {code}: {out} {err}");
    for node in NODES {
        ensure!(out.contains(&format!("{node}: in force")), "{out}");
    }
    ensure!(out.contains("election.min_failover_interval_ms = 1500"), "{out}");

    // Refused before anything is written: a node's own setting, a key that does not exist, a
    // value of the wrong type, and a promotion that would not fit inside the lease.
    for (setting, says) in [
        ("election.priority=5", "is each node's own"),
        ("election.max_lagg=5", "is not a setting for the whole cluster"),
        ("election.max_lag=lots", "election: invalid type"),
        ("election.promote_timeout_ms=60000", "must fit inside the lease"),
        ("coordinator.session_timeout_ms=9000", "has no settings for the whole cluster"),
    ] {
        let (code, out, err) = pair.admin(active, &["config", "set", setting]).await?;
        ensure!(code == 3 && err.contains(says), "config set {setting} exited {code}: {out} {err}");
    }

    // A restarted agent reads them at once.
    {
        let lab = Arc::get_mut(&mut pair).context("the pair has one owner")?;
        let agent = lab.agents[standby].as_mut().context("the standby's agent")?;
        agent.signal(Signal::SIGKILL)?;
        agent.wait_exit(Duration::from_secs(10))?;
        lab.agents[standby] = Some(lab.start_agent(standby)?);
    }
    every_agent(&pair, "max_lag 7 after a restart", |st| st["max_lag"] == 7).await?;
    // A reload of the file keeps them over it.
    pair.agents[active].as_ref().context("the active's agent")?.signal(Signal::SIGHUP)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !pair.agent_log_tail(active).contains("configuration reloaded") {
        ensure!(tokio::time::Instant::now() < deadline, "no reload logged: {}", pair.agent_log_tail(active));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    every_agent(&pair, "max_lag 7 after a reload", |st| st["max_lag"] == 7).await?;

    // Removed: each agent's own value (none for max_lag) again.
    let (code, out, err) =
        pair.admin(active, &["config", "unset", "election.max_lag", "election.min_failover_interval_ms"]).await?;
    ensure!(code == 0 && out.contains("no settings for the whole cluster"), "config unset exited {code}: {out} {err}");
    every_agent(&pair, "its own max_lag back", |st| st["max_lag"].is_null() && st["cluster_settings"].is_null())
        .await?;

    // A reload the rules refuse leaves nothing of its file behind: neither now, nor when the
    // cluster's settings are later removed and each agent goes back to its own. This file is
    // valid alone (a longer session, a longer promotion), but its session timeout needs a
    // restart, and the promotion does not fit in the session that runs.
    let path = pair.dir.0.join(NODES[active]).join("agent.yaml");
    let mut file: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    file["coordinator"]["session_timeout_ms"] = 10_000.into();
    file["election"]["promote_timeout_ms"] = 5_000.into();
    file["election"]["max_lag"] = 5.into();
    std::fs::write(&path, serde_yaml::to_string(&file)?)?;
    pair.agents[active].as_ref().context("the active's agent")?.signal(Signal::SIGHUP)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !pair.agent_log_tail(active).contains("configuration reload refused") {
        ensure!(tokio::time::Instant::now() < deadline, "no refused reload logged: {}", pair.agent_log_tail(active));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, out, err) = pair.admin(standby, &["config", "set", "election.max_lag=9"]).await?;
    ensure!(code == 0, "config set exited {code}: {out} {err}");
    every_agent(&pair, "max_lag 9 in force", |st| st["max_lag"] == 9).await?;
    let (code, out, err) = pair.admin(standby, &["config", "unset", "election.max_lag"]).await?;
    ensure!(code == 0, "config unset exited {code}: {out} {err}");
    every_agent(&pair, "its own max_lag back, not the refused file's", |st| {
        st["max_lag"].is_null() && st["cluster_settings"].is_null()
    })
    .await?;
    ensure!(pair.is_active(active).await, "the active stayed active throughout");
    Ok(())
}

/// The cluster's settings removed and set again at once (their znode deleted and created anew,
/// at version 0 again) reach every agent, even one that never saw them absent; a record that
/// cannot be read leaves each agent with the settings it has in force and saying why in its
/// status, and the CLI names it and removes it with `config unset --all`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_settings_set_anew_or_unreadable() -> Result<()> {
    let (pair, active) = pair().await?;
    let admin = |args: &'static [&'static str]| {
        let pair = pair.clone();
        async move { pair.admin(active, args).await }
    };
    let (code, out, err) = admin(&["config", "set", "election.max_lag=3"]).await?;
    ensure!(code == 0, "config set exited {code}: {out} {err}");
    every_agent(&pair, "max_lag 3 in force", |st| st["max_lag"] == 3 && st["cluster_settings"]["version"] == 0).await?;

    // Removed (the znode goes) and set again straight after: version 0 once more.
    let (code, out, err) = admin(&["config", "unset", "election.max_lag"]).await?;
    ensure!(code == 0, "config unset exited {code}: {out} {err}");
    let (code, out, err) = admin(&["config", "set", "election.max_lag=4"]).await?;
    ensure!(code == 0, "config set exited {code}: {out} {err}");
    every_agent(&pair, "max_lag 4 in force", |st| st["max_lag"] == 4 && st["cluster_settings"]["applied"] == true)
        .await?;

    // Damaged: not a settings record at all.
    let zk = zk::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(&pair.coordinator_addr)
        .await
        .context("connecting to the coordinator")?;
    zk.set_data("/referee/lab/config", b"{\"settings\": 12", None).await.context("damaging the record")?;
    every_agent(&pair, "max_lag 4 kept, the record named unreadable", |st| {
        st["max_lag"] == 4
            && st["cluster_settings"]["applied"] == false
            && st["cluster_settings"]["error"].as_str().is_some_and(|e| e.contains("/referee/lab/config"))
    })
    .await?;
    for args in
        [&["config"][..], &["config", "set", "election.max_lag=5"][..], &["config", "unset", "election.max_lag"][..]]
    {
        let (code, out, err) = pair.admin(active, args).await?;
        ensure!(code == 3 && err.contains("config unset --all"), "{args:?} exited {code}: {out} {err}");
    }
    let (code, out, err) = admin(&["config", "unset", "--all"]).await?;
    ensure!(
        code == 0 && out.contains("no settings for the whole cluster"),
        "config unset --all exited {code}: {out} {err}"
    );
    every_agent(&pair, "its own max_lag back", |st| st["max_lag"].is_null() && st["cluster_settings"].is_null())
        .await?;
    Ok(())
}

/// `referee admin drain` (Pacemaker's node standby): draining the active hands its role to the
/// other node first; the drained node then takes no failover, is not promoted when the new
/// active's master dies, stays drained across a restart of its agent, and is promoted once
/// undrained. An unknown node is refused before anything is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_node_hands_over_and_is_never_promoted_until_undrained() -> Result<()> {
    drain_and_undrain(CoordinatorKind::Bundled).await
}

/// The same against Apache ZooKeeper.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drained_node_hands_over_and_is_never_promoted_until_undrained_apache() -> Result<()> {
    if !coordinator_available(CoordinatorKind::ApacheZooKeeper, "drain and undrain") {
        return Ok(());
    }
    drain_and_undrain(CoordinatorKind::ApacheZooKeeper).await
}

async fn drain_and_undrain(kind: CoordinatorKind) -> Result<()> {
    let (mut pair, drained) = pair_on(kind, Vec::new()).await?;
    let other = 1 - drained;
    let (code, out, err) = pair.admin(other, &["drain", "zz"]).await?;
    ensure!(code == 2 && err.contains("unknown node `zz`"), "drain zz exited {code}: {out} {err}");

    let (code, out, err) = pair.admin(other, &["drain", NODES[drained], "--reason", "kernel update"]).await?;
    ensure!(
        code == 0 && out.contains(&format!("handing over to {}", NODES[other])) && out.contains("is serving as active"),
        "drain exited {code}: {out} {err}"
    );
    pair.wait_for_active_node(other, Duration::from_secs(10)).await?;
    // From here until it is undrained, the drained node's master itself must never be active.
    let oracle = MasterOracle::start(&pair);
    // `drain` returned once the node's agent had it in force.
    ensure!(out.contains(&format!("{}'s agent has the drain in force", NODES[drained])), "{out}");
    let st = pair.agent_json(drained, "/status").await.unwrap_or_default();
    ensure!(st["drained"]["reason"] == "kernel update", "{st}");
    // Its "why not", with the other node holding the lock, is its drain, not the lease.
    until_status(&pair, drained, "the drained standby's why-not naming the drain", |st| {
        st["blocker"]["blocker"] == "drained" && st["lock"]["holder"] == "peer"
    })
    .await?;
    let gauge = |on: u8| format!("\nreferee_agent_drained{{cluster=\"lab\",node=\"{}\"}} {on}\n", NODES[drained]);
    let metrics = pair.probe_text(drained, "/metrics").await.unwrap_or_default();
    ensure!(metrics.contains(&gauge(1)), "{metrics}");
    let (code, out, err) = pair.admin(other, &["status"]).await?;
    ensure!(code == 0 && out.contains(&format!("{} drained by", NODES[drained])), "status exited {code}: {out} {err}");
    let (code, out, err) = pair.admin(other, &["failover", "--to", NODES[drained]]).await?;
    ensure!(code == 3 && err.contains("drained"), "failover to the drained node exited {code}: {out} {err}");

    // The new active's master dies: the lock is free, and the drained node says why it does
    // not take it; then its agent restarts and still does not.
    pair.masters[other].signal(Signal::SIGKILL)?;
    let blocked = |st: &serde_json::Value| st["blocker"]["blocker"] == "drained" && st["role"] != "active";
    until_status(&pair, drained, "the drained node blocked by its drain with the lock free", blocked).await?;
    {
        let lab = Arc::get_mut(&mut pair).context("the pair has one owner")?;
        let agent = lab.agents[drained].as_mut().context("the drained node's agent")?;
        agent.signal(Signal::SIGKILL)?;
        agent.wait_exit(Duration::from_secs(10))?;
        lab.agents[drained] = Some(lab.start_agent(drained)?);
    }
    until_status(&pair, drained, "the restarted agent blocked by its drain", |st| {
        blocked(st) && st["counters"]["cycles"].as_u64().is_some_and(|c| c > 20)
    })
    .await?;
    ensure!(pair.actives().await.is_empty(), "nobody may be active: the only live master is drained");

    let undrained_at = oracle.now();
    let (code, out, err) = pair.admin(drained, &["undrain", NODES[drained]]).await?;
    ensure!(
        code == 0 && out.contains("undrained") && out.contains("no longer counts itself drained"),
        "undrain exited {code}: {out} {err}"
    );
    let metrics = pair.probe_text(drained, "/metrics").await.unwrap_or_default();
    ensure!(metrics.contains(&gauge(0)), "{metrics}");
    pair.wait_for_active_node(drained, Duration::from_secs(10)).await?;
    let record = oracle.finish().await;
    not_active_until_allowed(&record, drained, Duration::ZERO, undrained_at)
        .context("a drained node must never be promoted until undrained, as its master tells it")?;

    // A record that is not a drain (written by hand) drains its node too, named as unreadable,
    // until `undrain` removes it.
    let zk = zk::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(&pair.coordinator_addr)
        .await
        .context("connecting to the coordinator")?;
    let path = format!("/referee/lab/drained/{}", NODES[other]);
    zk.create(&path, b"maintenance", &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()))
        .await
        .context("writing a damaged drain record")?;
    until_status(&pair, other, "the damaged record in force as a drain", |st| {
        st["drained"]["requested_by"].as_str().is_some_and(|by| by.contains("an unreadable record at"))
    })
    .await?;
    let (code, out, err) = pair.admin(drained, &["undrain", NODES[other]]).await?;
    ensure!(code == 0 && out.contains("no longer counts itself drained"), "undrain exited {code}: {out} {err}");
    Ok(())
}

/// A host whose fencing cannot reach it (here the whole chain fails: the master is gone, so
/// the graceful step-down is not answered, and the power switch's program fails) leaves the
/// cluster without an active, the standby fencing again and again; an operator's
/// `confirm-down` for the node's last term lets the standby through, and one for another term
/// does not. Refused for an unknown node, the lock's holder and a node that is not the last
/// active. What the masters say: the promoted master reports active with a higher token than
/// the downed node's, and acknowledges writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_confirmed_down_by_an_operator_lets_a_stuck_failover_through() -> Result<()> {
    confirm_down(CoordinatorKind::Bundled).await
}

/// The same against Apache ZooKeeper.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_confirmed_down_by_an_operator_lets_a_stuck_failover_through_apache() -> Result<()> {
    if !coordinator_available(CoordinatorKind::ApacheZooKeeper, "confirm-down") {
        return Ok(());
    }
    confirm_down(CoordinatorKind::ApacheZooKeeper).await
}

async fn confirm_down(kind: CoordinatorKind) -> Result<()> {
    // Graceful first (it fences the other node at the first start, when nothing is recorded),
    // then a power switch that cannot be reached.
    // A failed attempt backs off for 3 s, long enough to pause the standby between two.
    let chain = r#"
election:
  backoff_after_failure_ms: 3000
fencing:
  overall_timeout_ms: 4000
  levels:
    - methods:
        - kind: graceful
          timeout_ms: 1000
    - methods:
        - kind: shell
          timeout_ms: 1000
          program: /usr/bin/false
"#;
    let (mut pair, down) = pair_on(kind, vec![chain.to_string(); 2]).await?;
    let other = 1 - down;
    let (down_id, other_id) = (NODES[down], NODES[other]);
    let term = pair.agent_json(down, "/status").await.unwrap_or_default()["token"].as_u64().context("the token")?;

    let (code, out, err) = pair.admin(other, &["confirm-down", "zz", "--reason", "x"]).await?;
    ensure!(code == 2 && err.contains("unknown node `zz`"), "confirm-down zz exited {code}: {out} {err}");
    let (code, out, err) = pair.admin(other, &["confirm-down", down_id, "--reason", "x"]).await?;
    ensure!(code == 3 && err.contains("holds the lock"), "confirm-down of the active exited {code}: {out} {err}");
    let (code, out, err) = pair.admin(other, &["confirm-down", other_id, "--reason", "x"]).await?;
    ensure!(
        code == 3 && err.contains(&format!("the last active recorded is {down_id}")),
        "confirm-down of the standby exited {code}: {out} {err}"
    );
    let (code, out, err) = pair.admin(other, &["confirm-down", down_id]).await?;
    ensure!(code == 2 && err.contains("--reason"), "confirm-down without a reason exited {code}: {out} {err}");

    // From before the power loss until the operator's confirmation, the masters are asked
    // what they are: the standby's must never be active (the oracle holds no part of the pair,
    // so the downed agent can be taken out of it beside it).
    let oracle = MasterOracle::start(&pair);
    // The active's host loses power: its agent first (the lock lapses with its session and the
    // breadcrumb stays unclean), then its master.
    {
        let lab = Arc::get_mut(&mut pair).context("the pair has one owner")?;
        let agent = lab.agents[down].as_mut().context("the active's agent")?;
        agent.signal(Signal::SIGKILL)?;
        agent.wait_exit(Duration::from_secs(10))?;
        lab.agents[down] = None;
    }
    pair.masters[down].signal(Signal::SIGKILL)?;
    until_status(&pair, other, "two fences of the downed node failed", |st| {
        st["counters"]["fences_failed"].as_u64().is_some_and(|n| n >= 2) && st["role"] != "active"
    })
    .await?;
    ensure!(pair.actives().await.is_empty(), "nobody may be active while the downed node cannot be fenced");
    let (code, out, err) = pair.admin(other, &["status"]).await?;
    ensure!(
        code == 0 && out.contains(&format!("{other_id} cannot fence {down_id}")) && out.contains("confirm-down"),
        "status names the way out: {out} {err}"
    );

    // A confirmation for another term of the node (written by hand) does not stand for this one.
    let zk = zk::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(&pair.coordinator_addr)
        .await
        .context("connecting to the coordinator")?;
    let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let _ = zk.create("/referee/lab/confirmed-down", b"", &open).await;
    let path = format!("/referee/lab/confirmed-down/{down_id}");
    let stale = serde_json::json!({"requested_by": "test", "at_ms": 1, "reason": "an older term", "token": term - 1});
    zk.create(&path, &serde_json::to_vec(&stale)?, &open).await.context("writing a confirmation of another term")?;
    let failed =
        pair.agent_json(other, "/status").await.unwrap_or_default()["counters"]["fences_failed"].as_u64().unwrap_or(0);
    until_status(&pair, other, "a fence failed after the stale confirmation, naming it", |st| {
        st["counters"]["fences_failed"].as_u64().is_some_and(|n| n >= failed + 2)
            && st["last_failure"].as_str().is_some_and(|f| f.contains("confirm it down again"))
    })
    .await?;
    ensure!(pair.actives().await.is_empty(), "a confirmation of another term lets nobody through");
    let (code, out, err) = pair.admin(other, &["status"]).await?;
    ensure!(
        code == 0
            && out.contains(&format!(
                "{down_id} confirmed down by test (an older term) for its term with token {}: stale",
                term - 1
            )),
        "status names the confirmation, stale: {out} {err}"
    );
    // Withdrawn (made by mistake), it is gone; withdrawing again says there is none.
    let (code, out, err) = pair.admin(other, &["confirm-down", down_id, "--cancel", "--reason", "x"]).await?;
    ensure!(code == 2, "--cancel with --reason exited {code}: {out} {err}");
    let (code, out, err) = pair.admin(other, &["confirm-down", down_id, "--cancel"]).await?;
    ensure!(code == 0 && out.contains("confirmation withdrawn"), "--cancel exited {code}: {out} {err}");
    ensure!(zk.check_stat(&path).await?.is_none(), "the confirmation is gone");
    let (code, out, err) = pair.admin(other, &["confirm-down", down_id, "--cancel"]).await?;
    ensure!(code == 0 && out.contains("no confirmation to withdraw"), "--cancel again exited {code}: {out} {err}");

    // Confirmed between two attempts (the standby paused, no attempt in flight), the next
    // attempt does not run the chain it has seen failing again: the confirmation stands at once.
    let mut tries = 0;
    loop {
        until_status(&pair, other, "the standby backing off after a failed attempt", |st| {
            st["blocker"]["blocker"] == "backing_off" && st["blocker"]["left_ms"].as_u64().is_some_and(|l| l >= 1500)
        })
        .await?;
        let (code, out, err) = pair.admin(other, &["pause", "--node", other_id]).await?;
        ensure!(code == 0, "pause exited {code}: {out} {err}");
        let st = pair.agent_json(other, "/status").await.unwrap_or_default();
        if st["paused"] == true && st["role"] == "standby" && st["lock"]["holder"] != "ours" {
            break;
        }
        // Paused once the next attempt had begun: let it go on, and pause at the next backoff.
        tries += 1;
        ensure!(tries < 5, "never paused between two attempts: {st}");
        let (code, out, err) = pair.admin(other, &["resume", "--node", other_id]).await?;
        ensure!(code == 0, "resume exited {code}: {out} {err}");
    }
    let args = ["confirm-down", down_id, "--reason", "powered off at the socket"];
    let confirmed_at = oracle.now();
    let confirm = pair.admin(other, &args);
    let resume = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while zk.check_stat(&path).await?.is_none() {
            ensure!(std::time::Instant::now() < deadline, "the confirmation was not recorded within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (code, out, err) = pair.admin(other, &["resume", "--node", other_id]).await?;
        ensure!(code == 0, "resume exited {code}: {out} {err}");
        anyhow::Ok(())
    };
    let (confirmed, resumed) = tokio::join!(confirm, resume);
    resumed?;
    let (code, out, err) = confirmed?;
    ensure!(
        code == 0 && out.contains(&format!("{other_id} is active (token")) && out.contains(&format!("token {term}")),
        "confirm-down exited {code}: {out} {err}"
    );
    pair.wait_for_active_node(other, Duration::from_secs(10)).await?;
    let record = oracle.finish().await;
    not_active_until_allowed(&record, other, Duration::ZERO, confirmed_at)
        .context("nobody may be active while the downed node cannot be fenced, as the masters tell it")?;
    let master = pair.master_json(other, "/ha/state").await.context("the promoted master's state")?;
    ensure!(
        master["state"] == "active" && master["token"].as_u64().is_some_and(|t| t > term),
        "the promoted master reports active with a token above {term}: {master}"
    );
    pair.write_within(other, "k", "after", Duration::from_secs(2)).await.map_err(anyhow::Error::msg)?;
    let st = pair.agent_json(other, "/status").await.unwrap_or_default();
    ensure!(st["counters"]["fences_confirmed"] == 1, "one fence stood on the confirmation: {st}");
    let history = pair.agent_json(other, "/history").await.unwrap_or_default();
    ensure!(history.to_string().contains("confirmed down by"), "the history names the confirmation: {history}");
    let transitions = history["transitions"].as_array().context("the transitions")?;
    // The promotion stood on the confirmation without running the chain again.
    let promoted = transitions.iter().rev().find(|t| t["to"] == "active").context("the promotion")?;
    let marks = promoted["timeline"].to_string();
    ensure!(
        marks.contains(&format!("fence {down_id} confirmed down by"))
            && !marks.contains(&format!("fence {down_id} by "))
            && !marks.contains(&format!("fence_started {down_id}")),
        "the promotion's marks: {promoted}"
    );
    // The attempts given up while the fence could not succeed are folded into one entry.
    let given_up: Vec<&serde_json::Value> =
        transitions.iter().filter(|t| t["from"] == "promoting" && t["to"] == "standby").collect();
    ensure!(
        given_up.len() == 1 && given_up[0]["attempts_before"].as_u64().is_some_and(|n| n >= 3),
        "one entry for the promotions given up, counting the ones before it: {history}"
    );
    let metrics = pair.probe_text(other, "/metrics").await.unwrap_or_default();
    let line = format!("referee_agent_fences_confirmed_by_operator_total{{cluster=\"lab\",node=\"{other_id}\"}} 1\n");
    ensure!(metrics.contains(&line), "{metrics}");
    // It has served: removed once the breadcrumb names the new active.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while zk.check_stat(&path).await?.is_some() {
        ensure!(std::time::Instant::now() < deadline, "the confirmation was not removed within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Waits until node `node`'s `/status` satisfies `ok`, for up to 20 s.
async fn until_status(pair: &Pair, node: usize, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let st = pair.agent_json(node, "/status").await.unwrap_or_default();
        if ok(&st) {
            return Ok(());
        }
        ensure!(tokio::time::Instant::now() < deadline, "never saw {what}: {st}\n{}", pair.agent_log_tail(node));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The active's master hangs (SIGSTOP; `health.slow_fall` long enough that the hang alone
/// makes no failover): `failover --to` the standby asks the active to cede, whose demotion
/// times out, so it releases the lock with the breadcrumb unclean and answers that it did not
/// cede cleanly. The lock is released all the same: the standby fences the hung master and
/// takes over, and the operator is told so (exit 0), not "refused" (exit 3, "nothing changed").
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failover_whose_cede_fails_after_the_release_is_not_reported_refused() -> Result<()> {
    let slow = "health:\n  slow_fall: 200\n".to_string();
    let (pair, active) = pair_with(vec![slow.clone(), slow]).await?;
    let standby = 1 - active;
    until_status(&pair, standby, "the standby healthy", |st| st["role"] == "standby").await?;
    pair.masters[active].signal(Signal::SIGSTOP)?;
    let (code, out, err) = pair.admin(active, &["failover", "--to", NODES[standby]]).await?;
    let actives = pair.actives().await;
    let _ = pair.masters[active].signal(Signal::SIGCONT);
    ensure!(code != 3, "a cede that released the lock is not a refusal, got exit 3: {out} {err}");
    ensure!(code == 0, "failover exited {code} (active now: {actives:?}): {out} {err}");
    ensure!(actives == vec![standby], "{} is the single active: {actives:?}", NODES[standby]);
    Ok(())
}

/// `drain` of the active hands over; when the handover fails after the active let go (here
/// the target's `pre_promote` hook vetoes its promotion, and the drained node takes the role
/// back for nobody), the command says who is active now, read after the failure, instead of
/// claiming that the drained node stays active.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn draining_the_active_says_who_is_active_after_a_failed_handover() -> Result<()> {
    let veto = "hooks:\n  pre_promote:\n    command: [\"/bin/false\"]\n    timeout_ms: 1000\n".to_string();
    // b vetoes every promotion of its own: a is the active.
    let (pair, active) = pair_with(vec![String::new(), veto]).await?;
    ensure!(active == 0, "a is active (b vetoes its own promotions), got {}", NODES[active]);
    until_status(&pair, 1, "b standing by", |st| st["role"] == "standby").await?;
    let (code, out, err) = pair.admin(0, &["drain", NODES[0], "--reason", "disk swap"]).await?;
    let actives = pair.actives().await;
    ensure!(code != 0, "the drain's handover failed, yet it exited 0 (active: {actives:?}): {out} {err}");
    ensure!(actives.is_empty(), "nobody is active: {actives:?}");
    ensure!(!err.contains("a stays active"), "a is not active, the command must not say it stays so: {err}");
    // Read once, after the failure: nobody holds the lock, or b does while it tries (and fails)
    // to promote its master again. Either way the command names it, and never a as active.
    ensure!(
        err.contains("no node is active now") || err.contains("b holds the lock now"),
        "the command says who holds the role now: {err}"
    );
    Ok(())
}

/// Two operators ask for the same failover at once: both are told its outcome (exit 0, the
/// node active), neither is told that the other's request superseded its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_operators_asking_the_same_failover_both_get_its_outcome() -> Result<()> {
    let (pair, active) = pair().await?;
    let standby = 1 - active;
    until_status(&pair, standby, "the standby standing by", |st| st["role"] == "standby").await?;
    let args = ["failover", "--to", NODES[standby]];
    let (one, two) = tokio::join!(pair.admin(active, &args), pair.admin(active, &args));
    let (one, two) = (one?, two?);
    for (code, out, err) in [&one, &two] {
        ensure!(*code == 0, "each operator is told the outcome; got exit {code}: {out} {err}");
        ensure!(!err.contains("superseded"), "{err}");
    }
    ensure!(pair.actives().await == vec![standby], "{} is the single active", NODES[standby]);
    Ok(())
}
