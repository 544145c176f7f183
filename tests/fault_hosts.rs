//! Network faults between machines, with the pair on simulated hosts (the test kit's
//! [`Hosts`], one network namespace each): the coordinator on host 1, node `a`'s master and
//! agent on host 2, node `b`'s on host 3, every process listening on its host's address
//! ([`Pair::start_on_hosts`]). Faults are the hosts' iptables drops, so packets vanish as on a
//! cut cable: nothing is refused, every side learns only from its own deadlines.
//!
//! Each scenario runs against the bundled coordinator and against Apache ZooKeeper 3.8, one
//! server either way. The masters are plain (`--no-lease-poll`): they take writes while active until someone
//! demotes them, so safety rests on the agents. Fencing between hosts is the graceful request
//! over the network, then the same demotion through a management path the faults do not cut.
//!
//! Throughout each scenario the test process, as a client on the hosts' switch, asks the masters
//! themselves (the lab's [`MasterOracle`]): each master's own `/ha/state` every few milliseconds
//! and a write to every master as fast as it answers, each acknowledgement recorded with its
//! send and receive times and its token. A test fails, printing the masters' timeline, if both
//! were certainly active at once, if a master acknowledged a write sent after the other had
//! acknowledged one under a higher token, if the old master's demotion came after the new one's
//! promotion, if (where the client still reaches it) the old master's last acknowledgement did
//! not come back before the new master's first write was sent, or if the end is anything but
//! the new master active and the old one standby.
//!
//! - **Active host cut off from the coordinator's host only**: the client and the peer still
//!   reach the old master; its agent must demote it before its session can expire.
//! - **Active host black-holed**: nothing reaches it or leaves it, the client's traffic
//!   included; the new active fences it through the management path.
//! - **Active host isolated from every other host, then healed**: the client still reaches the
//!   old master (a client on its side of the partition); after heal it rejoins as standby and
//!   the new master stays the only active.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use referee::lab::{
    coordinator_available, node_host, CoordinatorKind, MasterKind, MasterOracle, MasterRecord, Pair, PairSpec, Timings,
    COORDINATOR_HOST, NODES,
};
use referee_fencing::HaState;
use referee_testkit::{hosts_unavailable, skip, Hosts};
use serde_json::Value;
use tokio::time::Instant;

/// The faults of the scenarios, each on the active node's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Partitioned from the coordinator's host only.
    FromCoordinator,
    /// Everything to and from it dropped.
    BlackHole,
    /// Partitioned from every other host; the client still reaches it.
    Isolated,
}

fn spec(kind: CoordinatorKind) -> PairSpec {
    PairSpec {
        bin: env!("CARGO_BIN_EXE_referee").into(),
        coordinator: kind,
        timings: Timings::referee(),
        master: MasterKind::Plain,
        proxied_agents: false,
        extra_agent_yaml: Vec::new(),
        admin: false,
        journal: false,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn status(pair: &Pair, node: usize) -> Value {
    pair.agent_json(node, "/status").await.unwrap_or_default()
}

fn logs(pair: &Pair) -> String {
    format!(
        "--- coordinator ---\n{}\n--- agent a ---\n{}\n--- agent b ---\n{}",
        pair.coordinator_log_tail(10),
        pair.agent_log_tail(0),
        pair.agent_log_tail(1)
    )
}

/// Waits until the record so far satisfies `cond`; returns that record. On timeout the error
/// carries the timeline and the logs.
async fn until_record(
    pair: &Pair,
    oracle: &MasterOracle,
    limit: Duration,
    what: &str,
    cond: impl Fn(&MasterRecord) -> bool,
) -> Result<MasterRecord> {
    let deadline = Instant::now() + limit;
    loop {
        let record = oracle.snapshot();
        if cond(&record) {
            return Ok(record);
        }
        if Instant::now() >= deadline {
            bail!(
                "timed out after {limit:?} waiting for {what}\n--- masters ---\n{}\n{}",
                record.timeline(),
                logs(pair)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Master `node`'s last answer, if it was sent after `since`.
fn last_state(record: &MasterRecord, node: usize, since: Duration) -> Option<HaState> {
    record.states.iter().rev().find(|o| o.node == node).filter(|o| o.sent >= since).map(|o| o.what.state)
}

/// How long master `node` has been acknowledging writes sent after `since`.
fn acknowledging_for(record: &MasterRecord, node: usize, since: Duration) -> Duration {
    let mut acks = record.acks.iter().filter(|a| a.node == node && a.sent >= since);
    match acks.next() {
        Some(first) => acks.map(|a| a.received).max().unwrap_or(first.received) - first.received,
        None => Duration::ZERO,
    }
}

async fn fault_on_the_active_host(fault: Fault, kind: CoordinatorKind, test: &str) -> Result<()> {
    if let Some(why) = hosts_unavailable() {
        skip(test, &why);
        return Ok(());
    }
    let hosts = Hosts::new(3)?;
    let pair = Arc::new(Pair::start_on_hosts(spec(kind), &hosts).await?);
    let result = run(&hosts, &pair, fault).await;
    // Faults off before the pair stops, so its processes stop with a network; the pair goes
    // before the hosts (the hosts were made first, so they are dropped last).
    hosts.heal_all()?;
    result
}

async fn run(hosts: &Hosts, pair: &Arc<Pair>, fault: Fault) -> Result<()> {
    let old = pair.wait_for_active(Duration::from_secs(20)).await?;
    let new = 1 - old;
    let old_host = node_host(old);
    let oracle = MasterOracle::start(pair);
    until_record(pair, &oracle, Duration::from_secs(5), "the active master to take writes", |r| {
        r.acks.iter().any(|a| a.node == old)
    })
    .await?;
    let sessions_before =
        status(pair, old).await["counters"]["sessions"].as_u64().context("the old agent's sessions")?;

    let fault_at = oracle.now();
    match fault {
        Fault::FromCoordinator => hosts.partition(old_host, &[COORDINATOR_HOST])?,
        Fault::BlackHole => hosts.black_hole(old_host)?,
        Fault::Isolated => hosts.isolate(old_host)?,
    }
    let record = until_record(pair, &oracle, Duration::from_secs(30), "the other master to become active", |r| {
        r.promoted(new, None).is_some_and(|c| c.after >= fault_at)
    })
    .await?;
    let promoted = record.promoted(new, None).context("the promotion is in the record")?;
    // The fault stays while the new master takes writes for a second: a deposed master that
    // kept serving clients on its side would acknowledge writes all that time.
    let since = promoted.after;
    until_record(pair, &oracle, Duration::from_secs(15), "a second of writes on the new master", |r| {
        acknowledging_for(r, new, since) >= Duration::from_secs(1)
    })
    .await?;

    hosts.heal(old_host)?;
    let healed_at = oracle.now();
    // The old node rejoins: its agent has a session again and is standby, its master says
    // standby, and the new master is still the only active.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(pair, old).await;
        let sessions = s["counters"]["sessions"].as_u64().unwrap_or(0);
        if s["session"]["state"] == "connected" && sessions > sessions_before && s["role"] == "standby" {
            break;
        }
        if Instant::now() >= deadline {
            bail!("the old node did not rejoin as standby within 30 s after heal: {s}\n{}", logs(pair));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rejoined_at = oracle.now();
    until_record(pair, &oracle, Duration::from_secs(10), "both masters answering after the rejoin", |r| {
        last_state(r, old, rejoined_at).is_some()
            && acknowledging_for(r, new, rejoined_at) >= Duration::from_millis(500)
    })
    .await?;
    pair.wait_for_active_node(new, Duration::from_secs(5)).await?;
    let fenced = status(pair, new).await["counters"]["fences_fenced"].as_u64().unwrap_or(0);
    let record = oracle.finish().await;

    let demoted = record.demoted(old);
    eprintln!(
        "{fault:?}: fault on host {old_host} (node {}) at {:.1} ms; master {} demoted between {} ; master {} promoted \
         between {:.1} and {:.1} ms; healed at {:.1} ms, rejoined by {:.1} ms; {} fenced {fenced} time(s)\n{}",
        NODES[old],
        ms(fault_at),
        NODES[old],
        demoted.map_or("(not seen)".into(), |d| format!("{:.1} and {:.1} ms", ms(d.after), ms(d.by))),
        NODES[new],
        ms(promoted.after),
        ms(promoted.by),
        ms(healed_at),
        ms(rejoined_at),
        NODES[new],
        record.timeline()
    );
    record.check()?;
    let demoted = demoted.with_context(|| format!("master {} was never seen leaving the active role", NODES[old]))?;
    // The old master stops before the new one starts: its demotion cannot have come after the
    // new one's promotion.
    ensure!(
        demoted.after < promoted.by,
        "master {} was promoted by {:.1} ms while master {} was still active at {:.1} ms\n{}",
        NODES[new],
        ms(promoted.by),
        NODES[old],
        ms(demoted.after),
        record.timeline()
    );
    ensure!(fenced >= 1, "{} promoted without fencing {}\n{}", NODES[new], NODES[old], record.timeline());
    if fault != Fault::BlackHole {
        // The client still reached the old master, so it is seen to stop: its last
        // acknowledgement under an older token came back before the new master was first
        // asked for a write it acknowledged under its own.
        let token = promoted.to.token.0;
        let first_new = record.acks.iter().filter(|a| a.node == new && a.what == token).min_by_key(|a| a.sent);
        let last_old = record.acks.iter().filter(|a| a.node == old && a.what < token).max_by_key(|a| a.received);
        let (first_new, last_old) = first_new.zip(last_old).context("acknowledgements from both masters")?;
        ensure!(
            last_old.received < first_new.sent,
            "master {} acknowledged a write (back at {:.1} ms) after master {} was asked for its first one at {:.1} ms\n{}",
            NODES[old],
            ms(last_old.received),
            NODES[new],
            ms(first_new.sent),
            record.timeline()
        );
        eprintln!(
            "master {} stopped acknowledging {:.1} ms before master {} started",
            NODES[old],
            ms(first_new.sent - last_old.received),
            NODES[new]
        );
    }
    ensure!(
        last_state(&record, old, rejoined_at) == Some(HaState::Standby)
            && last_state(&record, new, rejoined_at) == Some(HaState::Active),
        "the end is not master {} active and master {} standby\n{}",
        NODES[new],
        NODES[old],
        record.timeline()
    );
    Ok(())
}

/// One test per fault and coordinator kind.
macro_rules! scenarios {
    ($($name:ident: $fault:expr;)*) => {
        mod bundled {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() -> Result<()> {
                    fault_on_the_active_host($fault, CoordinatorKind::Bundled, concat!("bundled::", stringify!($name))).await
                }
            )*
        }
        mod apache_zookeeper {
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() -> Result<()> {
                    let test = concat!("apache_zookeeper::", stringify!($name));
                    if !coordinator_available(CoordinatorKind::ApacheZooKeeper, test) {
                        return Ok(());
                    }
                    fault_on_the_active_host($fault, CoordinatorKind::ApacheZooKeeper, test).await
                }
            )*
        }
    };
}

scenarios! {
    active_host_cut_off_from_the_coordinator_host_hands_over_without_overlap: Fault::FromCoordinator;
    black_holed_active_host_is_fenced_and_replaced: Fault::BlackHole;
    isolated_active_host_rejoins_as_standby_after_heal: Fault::Isolated;
}
