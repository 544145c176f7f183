//! End-to-end tests of a master pair as real processes: the coordinator, two demo masters and
//! two failover agents on loopback, against the bundled coordinator and Apache ZooKeeper 3.8.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use nix::sys::signal::Signal;
use referee::lab::{apache_zookeeper_installed, CoordinatorKind, Pair, PairSpec, Timings, NODES};

fn spec(coordinator: CoordinatorKind) -> PairSpec {
    PairSpec { bin: env!("CARGO_BIN_EXE_referee").into(), coordinator, timings: Timings::referee(), master_lease: true }
}

/// Whether the test can run against this coordinator; says so loudly when it cannot.
fn available(kind: CoordinatorKind, test: &str) -> bool {
    if kind == CoordinatorKind::ApacheZooKeeper && !apache_zookeeper_installed() {
        if std::env::var_os("REFEREE_REQUIRE_ALL_TESTS").is_some() {
            panic!("{test} needs Apache ZooKeeper, but it is not installed and REFEREE_REQUIRE_ALL_TESTS is set");
        }
        eprintln!("SKIPPED: {test} against Apache ZooKeeper: not installed (CI installs Debian's zookeeper package)");
        return false;
    }
    true
}

async fn killing_the_active_master_promotes_the_standby(kind: CoordinatorKind) -> Result<()> {
    if !available(kind, "killing_the_active_master_promotes_the_standby") {
        return Ok(());
    }
    let pair = Arc::new(Pair::start(spec(kind)).await?);
    let first = pair.wait_for_active(Duration::from_secs(20)).await?;
    let other = 1 - first;
    pair.write(first, "k", "v1").await.expect("the active master takes writes");
    pair.write(other, "k", "v2").await.expect_err("the standby refuses writes");
    let watch = pair.watch_split_brain(Duration::from_millis(5));
    pair.masters[first].signal(Signal::SIGKILL)?;
    pair.wait_for_active_node(other, Duration::from_secs(10)).await?;
    pair.write_within(other, "k", "v3", Duration::from_secs(2)).await.expect("the new active takes writes");
    let both = watch.finish().await;
    assert!(both.is_empty(), "two actives at {both:?}");
    let status = pair.agent_json(other, "/status").await.expect("status");
    assert_eq!(status["role"], "active", "{status}");
    let history = pair.agent_json(other, "/history").await.expect("history");
    let last = history["transitions"].as_array().and_then(|t| t.last()).cloned().expect("a transition");
    assert_eq!(last["to"], "active", "{history}");
    eprintln!("failover of {} -> {}: {}", NODES[first], NODES[other], last["phases"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn master_crash_bundled() -> Result<()> {
    killing_the_active_master_promotes_the_standby(CoordinatorKind::Bundled).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn master_crash_apache_zookeeper() -> Result<()> {
    killing_the_active_master_promotes_the_standby(CoordinatorKind::ApacheZooKeeper).await
}
