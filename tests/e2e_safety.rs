//! End-to-end safety of failover for masters that do not enforce a lease themselves, with real
//! processes, against the bundled coordinator (one server, and a three-server ensemble) and
//! against Apache ZooKeeper 3.8.
//!
//! A master that polls its agent's `/lease` stops taking writes on its own when its agent
//! hangs; most masters do not. These tests run the pair with three such kinds: the demo master
//! managed over HTTP with `--no-lease-poll` (a plain master), the same master managed by the
//! command adapter (`referee master-command` as its health, state, promote and demote programs,
//! and as a `shell` fencing method), and the same master managed by the OCF adapter through an
//! OCF resource agent (`examples/ocf/referee-demo-master`, as Pacemaker's agents drive their
//! services). Safety then rests on the agents alone.
//!
//! Throughout each scenario the masters themselves are asked (the lab's [`MasterOracle`]):
//! both masters' own `/ha/state` every few milliseconds, and a write to every master as fast as
//! it answers, each acknowledgement recorded with its send and receive times and its token. The
//! oracle fails if both masters were certainly active at once, or if a master acknowledged a
//! write sent after the other had acknowledged one under a higher token; on failure it prints
//! the timeline.
//!
//! - **Coordinator wiped under a paused agent**: the active's agent is SIGSTOPped (a hung
//!   process, a paused VM) while its master keeps running; the coordinator is killed, its data
//!   deleted and started again empty on the same port; the other node wins the lock; only then
//!   is the paused agent continued. No breadcrumb and no member names the old master any more,
//!   so only the configured peers tell the new active whom to fence before promoting.
//! - **Black-holed coordinator connection**: the active agent's connection to the coordinator
//!   goes through the test kit's proxy, which is switched to a black hole (connections stay
//!   open, nothing is answered). The agent must demote its master before its session can
//!   expire, that is before the lock can leave it, and for good: no answer of that master says
//!   active after then, and the margin is counted from its last step-down and printed. A
//!   variant asks the agent to stop (SIGTERM) just as its lease runs out, so that the graceful
//!   handover's own coordinator calls wait in the black hole.
//! - **Black-holed after moving to a server granting less** (an Apache ZooKeeper ensemble
//!   whose servers 2 and 3 cap sessions at 2.5 s while server 1 grants the 6 s asked for): both
//!   sessions begin on server 1, server 1 dies, the active's session moves to a follower that
//!   grants it 2.5 s, and its connection is black-holed. The agent must demote its master before
//!   the 2.5 s session can expire, not by the lease a 6 s grant would give.
//! - **Coordinator leader killed** (three-server ensemble only): the coordinator's leader is
//!   killed with SIGKILL while the active master takes writes; the pair must keep its active
//!   under the same token (no failover), and the killed server, restarted, rejoins as a follower.
//!
//! The scenarios run against one bundled server and Apache ZooKeeper; the black-hole ones and
//! the leader kill also against the bundled three-server ensemble on loopback, where each
//! agent's proxies (one per server) are black-holed together.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use referee::lab::{
    coordinator_available, CoordinatorKind, MasterKind, MasterOracle, MasterRecord, Pair, PairSpec, Timings, NODES,
};
use referee_fencing::HaState;
use serde_json::Value;
use tokio::time::Instant;

/// The lab cluster's lock znode.
const LOCK: &str = "/referee/lab/lock";

fn spec(coordinator: CoordinatorKind, master: MasterKind, proxied_agents: bool) -> PairSpec {
    PairSpec {
        bin: env!("CARGO_BIN_EXE_referee").into(),
        lean_agent: None,
        coordinator,
        timings: Timings::referee(),
        master,
        proxied_agents,
        extra_agent_yaml: Vec::new(),
        admin: false,
        journal: false,
    }
}

async fn status(pair: &Pair, node: usize) -> Value {
    pair.agent_json(node, "/status").await.unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Waits until the record so far satisfies `cond`; returns that record. On timeout the error
/// carries the timeline and both agents' logs.
async fn until_record(
    pair: &Pair,
    oracle: &MasterOracle,
    limit: Duration,
    what: &str,
    cond: impl Fn(&MasterRecord) -> bool,
) -> Result<MasterRecord> {
    let logs = || format!("--- agent a ---\n{}\n--- agent b ---\n{}", pair.agent_log_tail(0), pair.agent_log_tail(1));
    Ok(oracle.wait_for(limit, what, cond, logs).await?)
}

/// Whether master `node`'s last answer says standby.
fn reports_standby(record: &MasterRecord, node: usize) -> bool {
    record.states.iter().rev().find(|o| o.node == node).is_some_and(|o| o.what.state == HaState::Standby)
}

/// How long master `node` has been acknowledging writes (first to last acknowledgement).
fn acknowledging_for(record: &MasterRecord, node: usize, since: Duration) -> Duration {
    let mut acks = record.acks.iter().filter(|a| a.node == node && a.sent >= since);
    match acks.next() {
        Some(first) => acks.map(|a| a.received).max().unwrap_or(first.received) - first.received,
        None => Duration::ZERO,
    }
}

/// The active's agent is paused, the coordinator restarted empty, the other node takes over,
/// then the paused agent resumes: the new active must fence the old master before promoting,
/// and the old master must never acknowledge a write after the new one has.
async fn wiped_coordinator_under_a_paused_agent(kind: CoordinatorKind, master: MasterKind) -> Result<()> {
    let pair = Arc::new(Pair::start(spec(kind, master, false)).await?);
    let old = pair.wait_for_active(Duration::from_secs(20)).await?;
    let new = 1 - old;
    let oracle = MasterOracle::start(&pair);
    until_record(&pair, &oracle, Duration::from_secs(5), "the active master to take writes", |r| {
        r.acks.iter().any(|a| a.node == old)
    })
    .await?;

    let agent = pair.agents[old].as_ref().context("the active's agent runs")?;
    agent.signal(Signal::SIGSTOP)?;
    let paused_at = oracle.now();
    pair.restart_coordinator(true).await?;
    let restarted_at = oracle.now();
    // The other node wins the lock on the empty coordinator and promotes its master.
    let record = until_record(&pair, &oracle, Duration::from_secs(30), "the other master to become active", |r| {
        r.promoted(new, None).is_some_and(|c| c.after >= paused_at)
    })
    .await?;
    let promoted = record.promoted(new, None).context("the promotion is in the record")?;
    // The old agent stays paused while the new master takes writes for two seconds: a
    // master nobody fenced keeps taking writes all that time.
    let since = promoted.after;
    until_record(&pair, &oracle, Duration::from_secs(15), "two seconds of writes on the new master", |r| {
        acknowledging_for(r, new, since) >= Duration::from_secs(2)
    })
    .await?;
    agent.signal(Signal::SIGCONT)?;
    let resumed_at = oracle.now();
    // Whatever happened before, the resumed agent ends with its master standby, and the new
    // active stays the one.
    until_record(&pair, &oracle, Duration::from_secs(15), "the old master to report standby", |r| {
        reports_standby(r, old)
    })
    .await?;
    pair.wait_for_active_node(new, Duration::from_secs(15)).await?;
    let fenced = status(&pair, new).await["counters"]["fences_fenced"].as_u64().unwrap_or(0);
    let record = oracle.finish().await;

    eprintln!(
        "{kind:?}, {master:?}: agent {} paused at {:.1} ms, coordinator back empty at {:.1} ms, agent resumed at {:.1} ms; \
         {} fenced {fenced} time(s)",
        NODES[old],
        ms(paused_at),
        ms(restarted_at),
        ms(resumed_at),
        NODES[new],
    );
    record.check()?;
    eprintln!("{}", record.timeline());
    record.demoted(old).context("the old master was demoted")?;
    // Fence before promote, as the masters logged their own role changes: the old master had
    // stepped down before the new one became active.
    let handover = pair.logged_handover(old, new, promoted.to.token).with_context(|| record.timeline())?;
    eprintln!("the old master stepped down {:.1} ms before the new one became active", handover.margin_ms());
    ensure!(fenced >= 1, "{} promoted without fencing {}\n{}", NODES[new], NODES[old], record.timeline());
    Ok(())
}

/// The active agent's coordinator connection is black-holed: its master must be demoted
/// before its session can expire (before the lock can leave it), and so before the other node
/// promotes.
async fn black_holed_active_agent(kind: CoordinatorKind, master: MasterKind) -> Result<()> {
    black_holed(kind, master, false).await
}

/// As [`black_holed_active_agent`], and the agent is asked to stop (SIGTERM, a graceful
/// handover) just before its lease runs out: the handover's coordinator calls go into the black
/// hole too, and must not hold the master active past the lease.
async fn stopped_inside_a_black_hole(kind: CoordinatorKind, master: MasterKind) -> Result<()> {
    black_holed(kind, master, true).await
}

async fn black_holed(kind: CoordinatorKind, master: MasterKind, stop_at_lease_end: bool) -> Result<()> {
    let pair = Arc::new(Pair::start(spec(kind, master, true)).await?);
    black_hole_the_active(pair, kind, master, stop_at_lease_end).await
}

/// The black-hole scenario on a running pair with proxied agents.
async fn black_hole_the_active(
    pair: Arc<Pair>,
    kind: CoordinatorKind,
    master: MasterKind,
    stop_at_lease_end: bool,
) -> Result<()> {
    let old = pair.wait_for_active(Duration::from_secs(20)).await?;
    let new = 1 - old;
    // A session of the test's own, straight to the coordinator, watches who owns the lock.
    let zk = zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(&pair.coordinator_addr)
        .await?;
    let (_, stat) = zk.get_data(LOCK).await.context("the active holds the lock")?;
    let owner = stat.ephemeral_owner;
    ensure!(owner != 0, "the lock is ephemeral");
    let oracle = MasterOracle::start(&pair);
    until_record(&pair, &oracle, Duration::from_secs(5), "the active master to take writes", |r| {
        r.acks.iter().any(|a| a.node == old)
    })
    .await?;

    pair.black_hole_agent(old).await?;
    let holed_at = oracle.now();
    if stop_at_lease_end {
        // The agent's own probe server still answers: watch its lease run down.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let st = status(&pair, old).await;
            if st["lease_left_ms"].as_u64().is_some_and(|left| left <= 150) {
                break;
            }
            ensure!(Instant::now() < deadline, "the black-holed agent's lease never ran down: {st}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        pair.agents[old].as_ref().context("the active's agent runs")?.signal(Signal::SIGTERM)?;
        eprintln!("SIGTERM to agent {} at {:.1} ms, as its lease ran out", NODES[old], ms(oracle.now()));
    }
    // The lock leaves the old session when the coordinator expires it: it was still held at
    // the send time of the last `sync` whose following read found it. The session may be on a
    // follower, which can show the lock after the leader has deleted it; the `sync` brings it
    // up to the leader as of some instant after it was sent, and the read (on the same
    // session, so after the `sync`) then sees at least that.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut still_held_at = holed_at;
    loop {
        let sent = oracle.now();
        zk.sync(LOCK).await.context("syncing the observer's server with the leader")?;
        match zk.get_data(LOCK).await {
            Ok((_, stat)) if stat.ephemeral_owner == owner => still_held_at = sent,
            Ok(_) | Err(zookeeper_client::Error::NoNode) => break,
            Err(e) => bail!("reading the lock: {e}"),
        }
        ensure!(Instant::now() < deadline, "the black-holed agent's lock never left it\n{}", pair.agent_log_tail(old));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let record = until_record(&pair, &oracle, Duration::from_secs(15), "the other master to become active", |r| {
        r.promoted(new, None).is_some_and(|c| c.after >= holed_at)
    })
    .await?;
    let promoted = record.promoted(new, None).context("the promotion is in the record")?;
    // Heal: the old agent comes back, as a standby.
    pair.heal_agent(old).await?;
    pair.wait_for_active_node(new, Duration::from_secs(15)).await?;
    let record = oracle.finish().await;

    // Conservative margins: the latest the old master's last step-down can have happened (a
    // master demoted in time and then made active again under its old token is no safer than
    // one never demoted) against the earliest the session can have expired and the earliest
    // the promotion can have happened.
    let last = record.last_demoted(old);
    eprintln!(
        "{kind:?}, {master:?}: black hole at {:.1} ms; master {} last demoted by {}; lock still held at {:.1} ms; \
         master {} promoted after {:.1} ms",
        ms(holed_at),
        NODES[old],
        last.map_or("(never)".to_string(), |d| format!("{:.1} ms", ms(d.by))),
        ms(still_held_at),
        NODES[new],
        ms(promoted.after),
    );
    record.check()?;
    eprintln!("{}", record.timeline());
    // No answer of the old master saying active came after the session could have expired,
    // and its last step-down came before: the peer could not take the lock while it served.
    let demoted = record.left_active_before(old, still_held_at).with_context(|| {
        format!(
            "master {} was active when its agent's session could already have expired (lock still held at {:.1} ms)",
            NODES[old],
            ms(still_held_at)
        )
    })?;
    let before_expiry = ms(still_held_at) - ms(demoted.by);
    let before_promotion = ms(promoted.after) - ms(demoted.by);
    eprintln!(
        "  margin before the session expired: {before_expiry:.1} ms; before the promotion: {before_promotion:.1} ms"
    );
    ensure!(
        before_promotion > 0.0,
        "master {} last left the active role by {:.1} ms, after master {} was promoted (after {:.1} ms)\n{}",
        NODES[old],
        ms(demoted.by),
        NODES[new],
        ms(promoted.after),
        record.timeline()
    );
    Ok(())
}

/// Apache ZooKeeper grants a session's timeout anew each time the session moves to another
/// server, within that server's bounds, and a follower reports the session's liveness to the
/// leader with that timeout. Here server 1 admits the 6 s the agents ask for and servers 2 and
/// 3 at most 2.5 s: both sessions begin on server 1 (granted 6 s), server 1 dies, the active's
/// session moves to the follower of the two left, where it lives on 2.5 s, and its coordinator
/// connection is black-holed. A lease counted from the 6 s grant keeps the master active for 4.85 s after the
/// last answer, long after the session expired and the peer took the lock; the agent must demote
/// its master before the session can expire, as in the black-hole scenario.
async fn black_holed_after_moving_to_a_server_granting_less(master: MasterKind) -> Result<()> {
    let kind = CoordinatorKind::ApacheEnsemble { max_session_ms: [60_000, 2_500, 2_500] };
    if !coordinator_available(kind, &format!("black_holed_after_moving_to_a_server_granting_less ({master:?})")) {
        return Ok(());
    }
    // The agents are not told the ensemble's staleness (syncLimit 2 × tickTime 200 ms): they
    // must learn it from the servers.
    let unset = "coordinator:\n  max_staleness_ms: 0\n".to_string();
    let spec = PairSpec {
        timings: Timings { session_timeout_ms: 6000, ..Timings::referee() },
        extra_agent_yaml: vec![unset.clone(), unset],
        ..spec(kind, master, true)
    };
    let pair = Arc::new(Pair::start_on_first_coordinator_server(spec).await?);
    let old = pair.wait_for_active(Duration::from_secs(20)).await?;
    for (node, name) in NODES.iter().enumerate() {
        let granted = status(&pair, node).await["granted_session_timeout_ms"].clone();
        ensure!(granted == 6000, "agent {name}'s session began with a grant of {granted}, not server 1's 6000");
    }
    for (node, name) in NODES.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while status(&pair, node).await["staleness_ms"] != 400 {
            ensure!(
                Instant::now() < deadline,
                "agent {name} never counted the staleness its servers say they may have: {}",
                status(&pair, node).await
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = std::fs::read_to_string(pair.node_path(node).join("agent.log")).unwrap_or_default();
        ensure!(
            log.contains("may lag its leader by 400 ms"),
            "agent {name} did not say its setting fell short:\n{log}"
        );
    }
    // The agent has asked every server what it would grant, and counts on the lowest.
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&pair, old).await["lease_session_timeout_ms"] != 2500 {
        ensure!(
            Instant::now() < deadline,
            "agent {} never counted its lease on servers 2 and 3's grant: {}",
            NODES[old],
            status(&pair, old).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Server 1 dies, and the active's session moves to a follower among servers 2 and 3 (cut
    // from the leader if it lands there: the leader keeps a session it serves itself on the
    // timeout it was created with), which grants it 2.5 s.
    pair.kill_coordinator_server(0);
    let leader = pair.wait_for_coordinator_leader(&[1, 2], Duration::from_secs(20)).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let server = loop {
        match pair.agent_coordinator_server(old).await {
            Some(k) if k == leader => pair.cut_agent_server(old, k).await?,
            Some(k) => break k,
            None => {}
        }
        ensure!(Instant::now() < deadline, "agent {}'s session never reached the follower", NODES[old]);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let session = status(&pair, old).await["session"]["session_id"].as_i64().context("the active's session id")?;
    let cons = pair.coordinator_four_letter(server, "cons").await.unwrap_or_default();
    ensure!(
        referee_testkit::cons_session_timeout(&cons, session) == Some(Duration::from_millis(2500)),
        "the session moved to server {} with another timeout than 2500 ms:\n{cons}",
        server + 1
    );
    pair.wait_for_active_node(old, Duration::from_secs(10)).await?;
    black_hole_the_active(pair, kind, master, false).await
}

/// The coordinator ensemble's leader is killed (kill -9) while the pair runs and the active
/// master takes writes: the other two servers elect a leader and the agents move their sessions
/// there within their timeout, so the lock and its token stay where they were. The other master
/// is never promoted, never two actives, every write is acknowledged under the same token, and
/// the same master acknowledges writes again after the new leader is elected. Restarted on its
/// data directory, the killed server rejoins as a follower.
///
/// The active agent's lease (session timeout - staleness - demotion deadline - margin, 1650 ms
/// with the lab's timings) may run out while its session moves, if the election and the move
/// take longer; the agent then demotes its master and promotes it again under the same token
/// once its session answers. That is safe and is reported, not failed: what must not happen
/// is a failover.
async fn coordinator_leader_killed(master: MasterKind) -> Result<()> {
    let pair = Arc::new(Pair::start(spec(CoordinatorKind::BundledEnsemble, master, false)).await?);
    let active = pair.wait_for_active(Duration::from_secs(20)).await?;
    let all: Vec<usize> = (0..pair.coordinator_servers()).collect();
    let leader = pair.wait_for_coordinator_leader(&all, Duration::from_secs(20)).await?;
    let others: Vec<usize> = all.iter().copied().filter(|&k| k != leader).collect();
    let oracle = MasterOracle::start(&pair);
    let record = until_record(&pair, &oracle, Duration::from_secs(5), "the active master to take writes", |r| {
        r.acks.iter().any(|a| a.node == active)
    })
    .await?;
    let token = record.acks.iter().find(|a| a.node == active).map(|a| a.what).context("an acknowledged write")?;

    let killed_at = oracle.now();
    pair.kill_coordinator_server(leader);
    let successor = pair.wait_for_coordinator_leader(&others, Duration::from_secs(20)).await?;
    let elected = oracle.now();
    let record = until_record(&pair, &oracle, Duration::from_secs(10), "a second of writes after the election", |r| {
        acknowledging_for(r, active, elected) >= Duration::from_secs(1)
    })
    .await?;
    // The longest the active master went without acknowledging a write, across the kill.
    let mut acked: Vec<Duration> =
        record.acks.iter().filter(|a| a.node == active && a.sent >= killed_at).map(|a| a.received).collect();
    acked.sort();
    let mut longest_gap = acked.first().map_or(Duration::ZERO, |first| first.saturating_sub(killed_at));
    for w in acked.windows(2) {
        longest_gap = longest_gap.max(w[1] - w[0]);
    }

    // The killed server, restarted on its data directory, rejoins as a follower.
    pair.restart_coordinator_server(leader).await?;
    let leader_after = pair.wait_for_coordinator_leader(&all, Duration::from_secs(20)).await?;
    let rejoined = pair.coordinator_mode(leader).await;
    let record = oracle.finish().await;
    let blip = record.demoted(active).map_or("none".to_string(), |d| {
        format!("demoted by {:.1} ms, after the lease ran out, and promoted again under the same token", ms(d.by))
    });
    eprintln!(
        "{master:?}: coordinator server {} (the leader) killed at {:.1} ms; server {} led {:.1} ms later; master {} \
         kept token {token}, longest stretch without an acknowledged write {:.1} ms (lease blip: {blip}); \
         restarted, server {} is {rejoined:?} (server {} leads)",
        leader + 1,
        ms(killed_at),
        successor + 1,
        ms(elected - killed_at),
        NODES[active],
        ms(longest_gap),
        leader + 1,
        leader_after + 1,
    );
    record.check()?;
    ensure!(
        record.promoted(1 - active, None).is_none(),
        "master {} was promoted: the coordinator leader's crash caused a failover\n{}",
        NODES[1 - active],
        record.timeline()
    );
    let moved: Vec<_> = record.acks.iter().filter(|a| a.what != token).collect();
    ensure!(moved.is_empty(), "writes acknowledged under another token than {token}: {moved:?}");
    ensure!(pair.actives().await == vec![active], "node {} is no longer the single active", NODES[active]);
    ensure!(
        leader_after != leader && rejoined.as_deref() == Some("follower"),
        "the restarted server {} is {rejoined:?} (server {} leads); it should have rejoined as a follower",
        leader + 1,
        leader_after + 1
    );
    Ok(())
}

mod bundled_ensemble {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn coordinator_leader_killed_plain_master() -> anyhow::Result<()> {
        super::coordinator_leader_killed(super::MasterKind::Plain).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn coordinator_leader_killed_command_master() -> anyhow::Result<()> {
        super::coordinator_leader_killed(super::MasterKind::Command).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn black_holed_active_agent_plain_master() -> anyhow::Result<()> {
        super::black_holed_active_agent(super::CoordinatorKind::BundledEnsemble, super::MasterKind::Plain).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn stopped_inside_a_black_hole_command_master() -> anyhow::Result<()> {
        super::stopped_inside_a_black_hole(super::CoordinatorKind::BundledEnsemble, super::MasterKind::Command).await
    }
}

mod apache_ensemble {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn black_holed_after_moving_to_a_server_granting_less_plain_master() -> anyhow::Result<()> {
        super::black_holed_after_moving_to_a_server_granting_less(super::MasterKind::Plain).await
    }
}

macro_rules! every_case {
    ($($name:ident: $scenario:ident, $master:ident;)*) => {
        mod bundled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() -> anyhow::Result<()> {
                    super::$scenario(super::CoordinatorKind::Bundled, super::MasterKind::$master).await
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
                    super::$scenario(super::CoordinatorKind::ApacheZooKeeper, super::MasterKind::$master).await
                }
            )*
        }
    };
}

every_case! {
    wiped_coordinator_under_a_paused_agent_plain_master: wiped_coordinator_under_a_paused_agent, Plain;
    wiped_coordinator_under_a_paused_agent_command_master: wiped_coordinator_under_a_paused_agent, Command;
    black_holed_active_agent_plain_master: black_holed_active_agent, Plain;
    black_holed_active_agent_command_master: black_holed_active_agent, Command;
    stopped_inside_a_black_hole_plain_master: stopped_inside_a_black_hole, Plain;
    stopped_inside_a_black_hole_command_master: stopped_inside_a_black_hole, Command;
    wiped_coordinator_under_a_paused_agent_ocf_master: wiped_coordinator_under_a_paused_agent, Ocf;
    black_holed_active_agent_ocf_master: black_holed_active_agent, Ocf;
}
