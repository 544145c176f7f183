//! End-to-end tests of what the pair survives beyond a failover, with real processes: the
//! coordinator losing all its data, a coordinator outage under failsafe mode, and the
//! preferred node taking its role back under anti-flap.
//!
//! Every wait is for an observable condition under a deadline; the oracles (never two
//! actives, never interleaved write acknowledgements) run throughout where they apply.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use referee::lab::{coordinator_available, CoordinatorKind, MasterKind, Oracles, Pair, PairSpec, Timings, NODES};
use serde_json::Value;
use tokio::time::Instant;

fn spec(coordinator: CoordinatorKind, admin: bool, extra: &str) -> PairSpec {
    PairSpec {
        bin: env!("CARGO_BIN_EXE_referee").into(),
        lean_agent: None,
        coordinator,
        timings: Timings::referee(),
        master: MasterKind::LeasePolling,
        proxied_agents: false,
        extra_agent_yaml: vec![extra.to_string(); 2],
        admin,
        journal: false,
    }
}

async fn status(pair: &Pair, node: usize) -> Value {
    pair.agent_json(node, "/status").await.unwrap_or_default()
}

/// The token node `node`'s agent holds, if any.
async fn token(pair: &Pair, node: usize) -> Option<u64> {
    status(pair, node).await["token"].as_u64()
}

/// What master `node` reports on its HA endpoint: (state, token).
async fn master_state(pair: &Pair, node: usize) -> Result<(String, u64)> {
    let url = format!("http://127.0.0.1:{}/ha/state", pair.ports[node].master);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).no_proxy().build()?;
    let v: Value = http.get(&url).send().await?.json().await?;
    Ok((v["state"].as_str().unwrap_or_default().to_string(), v["token"].as_u64().unwrap_or(0)))
}

/// Waits until exactly one node is active with a token above `above`; returns it and its token.
async fn active_above(pair: &Pair, above: u64, limit: Duration) -> Result<(usize, u64)> {
    let deadline = Instant::now() + limit;
    loop {
        let actives = pair.actives().await;
        if let [node] = actives[..] {
            if let Some(t) = token(pair, node).await.filter(|t| *t != above) {
                return Ok((node, t));
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "no node became active with a new token within {limit:?} (actives {actives:?})\n--- agent a ---\n{}\n--- agent b ---\n{}",
                pair.agent_log_tail(0),
                pair.agent_log_tail(1)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The coordinator loses everything (restarted with its data directory deleted): lock czxids
/// start from the bottom again, yet the next active's token is above every token before, the
/// token base records why, and the failover after that keeps going up.
async fn tokens_keep_increasing_after_a_wipe(kind: CoordinatorKind) -> Result<()> {
    let pair = Arc::new(Pair::start(spec(kind, false, "")).await?);
    let first = pair.wait_for_active(Duration::from_secs(20)).await?;
    let t1 = token(&pair, first).await.context("the active reports its token")?;
    let oracles = Oracles::start(&pair);

    pair.restart_coordinator(true).await?;
    let (second, t2) = active_above(&pair, t1, Duration::from_secs(30)).await?;
    ensure!(t2 > t1, "after the wipe the token went from {t1} to {t2}");
    let (state, master_token) = master_state(&pair, second).await?;
    ensure!(state == "active" && master_token == t2, "the new active's master reports {state} with {master_token}");
    // The token base says what floor it was set above.
    let zk = zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(4))
        .connect(&pair.coordinator_addr)
        .await?;
    let (data, _) = zk.get_data("/referee/lab/token-base").await.context("the token base exists after the wipe")?;
    let base: Value = serde_json::from_slice(&data)?;
    ensure!(base["floor"].as_u64().unwrap_or(0) >= t1, "the base's floor covers the old token {t1}: {base}");
    drop(zk);

    // One more failover on the new coordinator history: still going up.
    pair.masters[second].signal(Signal::SIGKILL)?;
    let (third, t3) = active_above(&pair, t2, Duration::from_secs(20)).await?;
    ensure!(third != second && t3 > t2, "the next failover went from {t2} to {t3}");
    // Nothing overlapped; the wipe itself costs the sessions, so allow a few session timeouts.
    oracles.check(Duration::from_secs(20)).await?;
    Ok(())
}

/// Failsafe mode: with the coordinator gone, the active keeps serving past its session's lease
/// while every peer confirms it is not active; once a peer stops answering, it demotes.
async fn failsafe_rides_out_a_coordinator_outage(kind: CoordinatorKind) -> Result<()> {
    // A 5 s ttl: each confirmed round keeps the master active 4.25 s past its sending (the ttl
    // less the 500 ms demotion deadline and 250 ms margin), so a round answered late on a
    // loaded machine does not end the extension before the next one is confirmed. A 4 s
    // session: the first round goes out at half the lease, and the peer's agent answers it
    // from its decision loop, which may be waiting out a coordinator call (up to its 833 ms
    // op timeout) first; with the lab's 2.5 s session that left 0.85 s, missed on a loaded
    // machine, and 1.6 s with this one.
    let failsafe = "failsafe:\n  enabled: true\n  ttl_ms: 5000\ncoordinator:\n  session_timeout_ms: 4000\n";
    let pair = Arc::new(Pair::start(spec(kind, true, failsafe)).await?);
    let active = pair.wait_for_active(Duration::from_secs(20)).await?;
    let standby = 1 - active;
    let confirmed = |v: &Value| v["counters"]["failsafe_confirmed"].as_u64().unwrap_or(0);
    let before = confirmed(&status(&pair, active).await);
    let oracles = Oracles::start(&pair);

    pair.kill_coordinator();
    let killed = Instant::now();
    // Far past the session's lease (4 s session, a lease of about 3.2 s): the active still serves,
    // because every round was confirmed; the standby never takes over.
    let mut saw_failsafe = false;
    loop {
        let st = status(&pair, active).await;
        saw_failsafe |= st["last_decision"].as_str().unwrap_or_default().starts_with("failsafe:");
        if saw_failsafe && confirmed(&st) >= before + 6 && killed.elapsed() > Duration::from_secs(6) {
            break;
        }
        ensure!(
            pair.is_active(active).await,
            "{} stopped being active {:?} into the outage: {st}",
            NODES[active],
            killed.elapsed()
        );
        ensure!(!pair.is_active(standby).await, "{} became active with no coordinator", NODES[standby]);
        pair.write(active, "k", "during-outage")
            .await
            .map_err(|e| anyhow::anyhow!("the active refused a write: {e}"))?;
        ensure!(killed.elapsed() < Duration::from_secs(20), "failsafe never confirmed six rounds: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The standby's agent stops answering: the next round fails, and the active demotes within
    // one failsafe ttl.
    let stopped = pair.agents[standby].as_ref().context("the standby's agent runs")?;
    stopped.signal(Signal::SIGSTOP)?;
    let stop_at = Instant::now();
    while pair.is_active(active).await {
        ensure!(stop_at.elapsed() < Duration::from_secs(8), "the active kept serving without a confirmation");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let demoted_after = stop_at.elapsed();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (state, _) = master_state(&pair, active).await?;
        if state == "standby" {
            break;
        }
        ensure!(Instant::now() < deadline, "the active's master is still {state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(pair.write(active, "k", "after").await.is_err(), "a demoted master refuses writes");
    // The failed round is counted (the demotion at the end of its lease then reports itself
    // as the last failure).
    let st = status(&pair, active).await;
    ensure!(st["counters"]["failsafe_refused"].as_u64().unwrap_or(0) >= 1, "the refusal is reported: {st}");
    stopped.signal(Signal::SIGCONT)?;
    eprintln!("failsafe: demoted {demoted_after:?} after the peer stopped answering");
    // No active is expected from here on: the coordinator is gone. Only the safety oracles count.
    match oracles.check(Duration::from_secs(3600)).await {
        Ok(()) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Failsafe asks a configured peer at the peer API address its `peers` entry gives, not only
/// at the one it registered: the standby's agent is down when the outage begins (so the
/// active's member list lacks it) and comes back during it, unable to register. Asked at its
/// configured address, it confirms, and the active keeps serving past its session's lease; the
/// master's own acknowledgements are the proof.
async fn failsafe_asks_a_peer_that_came_back_during_the_outage(kind: CoordinatorKind) -> Result<()> {
    // The timings of `failsafe_rides_out_a_coordinator_outage`, for the same reasons.
    let failsafe = "failsafe:\n  enabled: true\n  ttl_ms: 5000\ncoordinator:\n  session_timeout_ms: 4000\n";
    let pair = Arc::new(Pair::start(spec(kind, true, failsafe)).await?);
    let active = pair.wait_for_active(Duration::from_secs(20)).await?;
    let standby = 1 - active;
    let oracles = Oracles::start(&pair);

    // The standby's agent dies; its registration goes with its session, and the active's next
    // reading of the members no longer lists it.
    pair.agents[standby].as_ref().context("the standby's agent runs")?.signal(Signal::SIGKILL)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = status(&pair, active).await;
        let listed = st["members"].as_array().is_some_and(|m| m.iter().any(|n| n == NODES[standby]));
        if st["members"].is_array() && !listed {
            break;
        }
        ensure!(Instant::now() < deadline, "the active still lists {} as a member: {st}", NODES[standby]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The coordinator goes; the standby's agent comes back, with no coordinator to register in.
    pair.kill_coordinator();
    let killed = Instant::now();
    let _back = pair.start_agent(standby)?;
    let confirmed = |v: &Value| v["counters"]["failsafe_confirmed"].as_u64().unwrap_or(0);
    let mut first: Option<u64> = None;
    loop {
        let st = status(&pair, active).await;
        ensure!(
            pair.is_active(active).await,
            "{} stopped being active {:?} into the outage: {st}\n--- agent {} ---\n{}",
            NODES[active],
            killed.elapsed(),
            NODES[active],
            pair.agent_log_tail(active)
        );
        ensure!(!pair.is_active(standby).await, "{} became active with no coordinator", NODES[standby]);
        pair.write(active, "k", "during-outage").await.map_err(|e| {
            anyhow::anyhow!("the active's master refused a write {:?} into the outage: {e}", killed.elapsed())
        })?;
        // Rounds confirmed by the standby's agent once it is back, well past the session's lease.
        let now = confirmed(&st);
        let since = now - *first.get_or_insert(now);
        if since >= 4 && killed.elapsed() > Duration::from_secs(8) {
            break;
        }
        ensure!(killed.elapsed() < Duration::from_secs(25), "failsafe never confirmed four rounds: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match oracles.check(Duration::from_secs(3600)).await {
        Ok(()) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

macro_rules! both_coordinators {
    ($($name:ident),* $(,)?) => {
        mod bundled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::CoordinatorKind::Bundled).await
                }
            )*
        }
        mod apache_zookeeper {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() -> anyhow::Result<()> {
                    if !super::coordinator_available(super::CoordinatorKind::ApacheZooKeeper, stringify!($name)) {
                        return Ok(());
                    }
                    super::$name(super::CoordinatorKind::ApacheZooKeeper).await
                }
            )*
        }
    };
}

both_coordinators!(
    tokens_keep_increasing_after_a_wipe,
    failsafe_rides_out_a_coordinator_outage,
    failsafe_asks_a_peer_that_came_back_during_the_outage
);

/// The three-server ensemble: every server killed at once is the outage. (A wipe is not run on
/// it: an ensemble that lost every server's data is a new ensemble, not a restart.)
mod bundled_ensemble {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn failsafe_rides_out_a_coordinator_outage() -> anyhow::Result<()> {
        super::failsafe_rides_out_a_coordinator_outage(super::CoordinatorKind::BundledEnsemble).await
    }
}

/// The preferred node takes the role back gracefully once its master has been healthy for the
/// failback period, and anti-flap keeps the next failover at least the minimum interval after
/// the last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn preferred_node_fails_back_and_anti_flap_spaces_failovers() -> Result<()> {
    let interval = Duration::from_secs(4);
    let extra = format!(
        "election:\n  preferred_node: a\n  failback_after_ms: 2000\n  min_failover_interval_ms: {}\n",
        interval.as_millis()
    );
    let mut pair = Pair::start(spec(CoordinatorKind::Bundled, true, &extra)).await?;
    // Make b active: if a is, its master crashes and comes back.
    let first = pair.wait_for_active(Duration::from_secs(20)).await?;
    if first == 0 {
        pair.masters[0].signal(Signal::SIGKILL)?;
        pair.wait_for_active_node(1, Duration::from_secs(10)).await?;
        pair.masters[0] = pair.start_master(0)?;
    }
    let pair = Arc::new(pair);
    let fenced = |v: &Value| v["counters"]["fences_fenced"].as_u64().unwrap_or(0);
    let fenced_before = fenced(&status(&pair, 0).await);
    let oracles = Oracles::start(&pair);
    // a asks b to hand over once its master has been healthy for 2 s and the last failover is
    // 4 s old; b demotes, marks its breadcrumb clean and releases, a promotes without fencing.
    pair.wait_for_active_node(0, Duration::from_secs(20)).await?;
    ensure!(fenced(&status(&pair, 0).await) == fenced_before, "a failback is a graceful handover, without fencing");
    // Anti-flap counts from when an agent saw the active change (a new lock token), which it
    // cannot see before it stepped down itself: each agent's own step-down is the earliest
    // start of its interval, and the new active's promotion comes later than its lock (after
    // fencing and a lease that covers the promotion), so neither is a fair reference.
    let promoted_at = |h: &Value| -> Option<i64> {
        h["transitions"].as_array()?.iter().rev().find(|t| t["to"] == "active").and_then(|t| t["at_ms"].as_i64())
    };
    let stepped_down_at = |h: &Value| -> Option<i64> {
        h["transitions"].as_array()?.iter().rev().find(|t| t["from"] == "active").and_then(|t| t["at_ms"].as_i64())
    };
    let history = |i: usize| {
        let pair = pair.clone();
        async move { pair.agent_json(i, "/history").await.unwrap_or_default() }
    };
    let a_history = history(0).await;
    let a_active_at = promoted_at(&a_history).context("a's history shows its promotion")?;
    if first == 0 {
        // b took over from a: a waits the minimum interval after it stepped down.
        let a_left_at = stepped_down_at(&a_history).context("a's history shows its step-down")?;
        ensure!(
            a_active_at - a_left_at >= interval.as_millis() as i64 - 100,
            "the failback came {} ms after a stepped down for b, under the {interval:?} minimum",
            a_active_at - a_left_at
        );
    }

    // a's master crashes right after the failback: b holds back until the interval has passed.
    pair.masters[0].signal(Signal::SIGKILL)?;
    let mut decisions: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pair.is_active(1).await {
        let decision = status(&pair, 1).await["last_decision"].as_str().unwrap_or_default().to_string();
        if decisions.last() != Some(&decision) {
            decisions.push(decision);
        }
        ensure!(Instant::now() < deadline, "b never took over: {}", pair.agent_log_tail(1));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(
        decisions.iter().any(|d| d.contains("anti-flap")),
        "b's decisions never mentioned anti-flap: {decisions:#?}\n{}",
        pair.agent_log_tail(1)
    );
    let b_history = history(1).await;
    let b_again_at = promoted_at(&b_history).context("b's history shows its second promotion")?;
    let b_left_at = stepped_down_at(&b_history).context("b's history shows its handover")?;
    ensure!(
        b_again_at - b_left_at >= interval.as_millis() as i64 - 100,
        "b took over {} ms after it handed over to a, under the {interval:?} minimum",
        b_again_at - b_left_at
    );
    oracles.check(interval + Duration::from_secs(3)).await?;
    Ok(())
}

/// An operator's switchover away from the preferred node holds for the failback period: the
/// preferred node, active and healthy for longer than `failback_after_ms`, is moved away by
/// `referee admin failover --to b`; it asks for the role back only once the failback period
/// has passed since it left the active role, not after the anti-flap interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_switchover_away_from_the_preferred_node_holds_for_the_failback_period() -> Result<()> {
    let failback = Duration::from_secs(6);
    let extra = format!(
        "election:\n  preferred_node: a\n  failback_after_ms: {}\n  min_failover_interval_ms: 1000\n",
        failback.as_millis()
    );
    let pair = Arc::new(Pair::start(spec(CoordinatorKind::Bundled, true, &extra)).await?);
    let became_active = |h: &Value| -> Option<i64> {
        h["transitions"].as_array()?.iter().rev().find(|t| t["to"] == "active").and_then(|t| t["at_ms"].as_i64())
    };
    let wall_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    // a, the preferred node, active (it takes the role back if b got it first) for longer than
    // the failback period, its master healthy all along.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let since = match pair.is_active(0).await {
            true => became_active(&pair.agent_json(0, "/history").await.unwrap_or_default()),
            false => None,
        };
        if since.is_some_and(|at| wall_ms() - at > failback.as_millis() as i64 + 500) {
            break;
        }
        ensure!(Instant::now() < deadline, "a was not active for the failback period: {}", pair.agent_log_tail(0));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, out, err) = pair.admin(0, &["failover", "--to", NODES[1], "--dry-run"]).await?;
    ensure!(code == 0, "failover --to b --dry-run exited {code}: {out} {err}");
    ensure!(out.contains("note: a is the preferred node"), "the dry run says a will ask for the role back: {out}");
    let (code, out, err) = pair.admin(0, &["failover", "--to", NODES[1]]).await?;
    ensure!(code == 0, "failover --to b exited {code}: {out} {err}");
    ensure!(out.contains("note: a is the preferred node"), "the failover says a will ask for the role back: {out}");
    let a_left_at = pair.agent_json(0, "/history").await.unwrap_or_default()["transitions"]
        .as_array()
        .and_then(|ts| ts.iter().rev().find(|t| t["from"] == "active").and_then(|t| t["at_ms"].as_i64()))
        .context("a's history shows it left the active role")?;
    // a asks for the role back at the end of the failback period (with a cycle's slack), not
    // earlier: until then b stays the single active.
    let deadline = Instant::now() + failback + Duration::from_secs(15);
    while !pair.is_active(0).await {
        ensure!(Instant::now() < deadline, "a never took the role back: {}", pair.agent_log_tail(0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let a_back_at = became_active(&pair.agent_json(0, "/history").await.unwrap_or_default())
        .context("a's history shows its promotion")?;
    ensure!(
        a_back_at - a_left_at >= failback.as_millis() as i64 - 100,
        "a took the role back {} ms after the operator moved it to b, under the {failback:?} failback period\n{}",
        a_back_at - a_left_at,
        pair.agent_log_tail(0)
    );
    Ok(())
}
