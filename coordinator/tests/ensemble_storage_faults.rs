//! Storage faults under an ensemble, each server on the log's fault-injecting filesystem.
//!
//! - **The leader's disk stalls**: its fdatasyncs stop returning. Nothing is applied anywhere
//!   before the leader's own fdatasync of an entry (see `peer_raft.rs`), and the leader still
//!   sends heartbeats, so the others would never elect another: every write of the ensemble
//!   would wait for that disk. Past `log_sync_stall_ms` the leader stops as on a failed
//!   fsync, with one message naming the stalled disk; the others elect one of them, the
//!   writes go on through them, and every acknowledged write is on both.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::ensemble::{leader_of, start_ensemble_on, stop, Running};
use common::PERSISTENT;
use referee_coordinator::config::Role;
use referee_coordinator::log::{FaultFs, FileSystem};
use referee_testkit::{connect, within_for};
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(20);
/// The stall bound the servers run with in these tests.
const STALL_MS: u64 = 1_000;

/// Creates `/w-N` for N = 1, 2, ... through `connect` until stopped, each create given 2 s; the
/// paths acknowledged, in order.
struct Writer {
    acked: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: JoinHandle<()>,
}

impl Writer {
    fn start(connect_to: String) -> Writer {
        let acked: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (a, s) = (acked.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut client = None;
            let mut n = 0u64;
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let Some(zk) = &client else {
                    client = connect(&connect_to, Duration::from_secs(10)).await.ok();
                    if client.is_none() {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    continue;
                };
                n += 1;
                let path = format!("/w-{n}");
                match tokio::time::timeout(Duration::from_secs(2), zk.create(&path, b"w", PERSISTENT)).await {
                    Ok(Ok(_)) => a.lock().unwrap().push(path),
                    _ if zk.state().is_terminated() => client = None,
                    _ => {}
                }
            }
        });
        Writer { acked, stop, task }
    }

    fn count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    async fn grown(&self, by: usize, what: &str) -> Result<()> {
        let target = self.count() + by;
        within_for(DEADLINE, what, async {
            while self.count() < target {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    async fn finish(self) -> Result<Vec<String>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        within_for(DEADLINE, "the writer to stop", self.task).await??;
        Ok(std::mem::take(&mut *self.acked.lock().unwrap()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_disk_stalls_stops_and_another_leads_with_every_acknowledged_write() -> Result<()> {
    let disks: Vec<FaultFs> = (0..3).map(|_| FaultFs::new()).collect();
    let (mut running, _dirs) = start_ensemble_on(&[Role::Voter; 3], |c| c.log_sync_stall_ms = STALL_MS, &|i| {
        Arc::new(disks[i].clone()) as Arc<dyn FileSystem>
    })
    .await?;
    let (leader, _) = leader_of(&running).await?;
    let others: Vec<String> = running.iter().filter(|r| r.id != leader).map(|r| r.client.to_string()).collect();
    let writer = Writer::start(others.join(","));
    writer.grown(20, "20 writes before the stall").await?;

    // The leader's disk stalls: its fdatasyncs wait until released.
    let disk = &disks[usize::try_from(leader)? - 1];
    disk.hold_syncs();
    let stalled = tokio::time::Instant::now();
    let at = running.iter().position(|r| r.id == leader).context("the leader runs")?;
    let old = running.remove(at);
    let stopped = old.stopped_by_itself(Duration::from_millis(STALL_MS) + DEADLINE).await;
    let checked = async {
        let why = stopped.context("the leader whose disk stalled")?.to_string();
        ensure!(
            why.contains("has not returned for") && why.contains("log_sync_stall_ms") && why.contains("restart"),
            "one message naming the stall and what to do: {why}"
        );
        let took = stalled.elapsed();
        eprintln!("the leader stopped {took:?} into the stall");
        ensure!(
            took >= Duration::from_millis(STALL_MS),
            "the leader stopped {took:?} into the stall, before log_sync_stall_ms"
        );

        // The other two elect one of them, and the writes go on through them.
        let (next, _) = leader_of(&running).await?;
        ensure!(next != leader, "server {leader} still leads");
        eprintln!("server {next} leads {:?} into the stall", stalled.elapsed());
        writer.grown(20, "20 writes after the stall").await?;
        eprintln!("20 more writes {:?} into the stall", stalled.elapsed());
        Ok(())
    };
    let checked = checked.await;
    // Released whatever happened, or the stalled server's log writer would never end.
    disk.release_syncs();
    checked?;
    let acked = writer.finish().await?;
    every_write_on(&running, &acked).await?;
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

/// Every path of `acked` is on every server of `running`, once each has applied what the
/// leader had.
async fn every_write_on(running: &[Running], acked: &[String]) -> Result<()> {
    let (leader, _) = leader_of(running).await?;
    let l = running.iter().find(|r| r.id == leader).context("the leader runs")?;
    let index = l.raft.metrics().borrow().last_applied.map(|a| a.index).context("the leader applied entries")?;
    for r in running {
        r.applied(index, "the leader's last entry").await?;
        let lost: Vec<&String> = acked.iter().filter(|p| r.data(p).is_none()).collect();
        ensure!(lost.is_empty(), "server {} lacks {} acknowledged writes: {lost:?}", r.id, lost.len());
    }
    Ok(())
}

/// The staleness bound the slow-disk test runs with: the smallest the configuration takes, so
/// that the wait of an entry for the slow disk, with the leader's retries, can pass it.
const BOUND_MS: u64 = 300;
/// How long each fdatasync of the slow disk takes: under the bound, so the slow server hears
/// from its leader within it.
const SLOW_SYNC: Duration = Duration::from_millis(250);

/// **A follower's disk is slow**: each of its fdatasyncs takes 250 ms (held, then let through
/// one at a time), under `log_sync_stall_ms`, so nothing stops it. It answers every
/// AppendEntries, late, while the leader commits with the other follower at its own pace: the
/// slow one hears its leader all the time, and its tree falls behind. Whatever it answers a
/// client is at least as recent as what the leader had acknowledged the staleness bound (and
/// one check) before the read began; otherwise it refuses. Once its disk is fast again it
/// catches up and serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_whose_disk_is_slow_serves_no_tree_older_than_the_bound() -> Result<()> {
    let disks: Vec<FaultFs> = (0..3).map(|_| FaultFs::new()).collect();
    let (running, _dirs) = start_ensemble_on(&[Role::Voter; 3], |c| c.max_leader_silence_ms = BOUND_MS, &|i| {
        Arc::new(disks[i].clone()) as Arc<dyn FileSystem>
    })
    .await?;
    let (leader, _) = leader_of(&running).await?;
    let l = running.iter().find(|r| r.id == leader).context("the leader runs")?;
    let slow = running.iter().rfind(|r| r.id != leader).context("a follower runs")?;
    let writer = connect(&l.client.to_string(), Duration::from_secs(10)).await?;
    writer.create("/x", b"0", PERSISTENT).await?;
    within_for(DEADLINE, "/x on the slow follower", async {
        while slow.data("/x").is_none() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;

    let slow_addr = slow.client.to_string();
    let reader = connect(&slow_addr, Duration::from_secs(10)).await?;
    let disk = disks[usize::try_from(slow.id)? - 1].clone();
    disk.hold_syncs();
    let halt = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickle = {
        let (disk, halt) = (disk.clone(), halt.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(SLOW_SYNC);
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                every.tick().await;
                disk.let_held_syncs_through(1);
            }
        })
    };
    // The leader's counter: each value with when its write was acknowledged.
    let acked: Arc<Mutex<Vec<(tokio::time::Instant, u64)>>> =
        Arc::new(Mutex::new(vec![(tokio::time::Instant::now(), 0)]));
    let writes = {
        let (acked, halt) = (acked.clone(), halt.clone());
        tokio::spawn(async move {
            let mut n = 0u64;
            while !halt.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                writer.set_data("/x", n.to_string().as_bytes(), None).await?;
                acked.lock().unwrap().push((tokio::time::Instant::now(), n));
            }
            anyhow::Ok(())
        })
    };
    // Reads on the slow follower, on a session it took before its disk slowed (a new one is a
    // write it applies before answering): each value with when its read began; refusals
    // counted, after which a new session is tried.
    let checked = async {
        let (mut reads, mut refused) = (Vec::new(), 0u32);
        let mut client = Some(reader);
        let mut every = tokio::time::interval(Duration::from_millis(50));
        let end = tokio::time::Instant::now() + Duration::from_secs(6);
        while tokio::time::Instant::now() < end {
            every.tick().await;
            let Some(zk) = &client else {
                let fut = connect(&slow_addr, Duration::from_secs(10));
                match tokio::time::timeout(Duration::from_secs(1), fut).await {
                    Ok(Ok(c)) => client = Some(c),
                    _ => refused += 1,
                }
                continue;
            };
            let began = tokio::time::Instant::now();
            match tokio::time::timeout(Duration::from_secs(1), zk.get_data("/x")).await {
                Ok(Ok((data, _))) => reads.push((began, std::str::from_utf8(&data)?.parse::<u64>()?)),
                _ => {
                    refused += 1;
                    client = None;
                }
            }
        }
        anyhow::Ok((reads, refused))
    };
    let checked = checked.await;
    halt.store(true, std::sync::atomic::Ordering::Relaxed);
    disk.release_syncs();
    within_for(DEADLINE, "the sync trickle to stop", trickle).await??;
    within_for(DEADLINE, "the writer to stop", writes).await???;
    let (reads, refused) = checked?;

    // A read may reflect the leader's state as of the bound and one check (a quarter of it)
    // before it began, and the leader's message that told the slow server its commit index
    // may have taken a while to arrive on a loaded machine.
    let allowed = Duration::from_millis(BOUND_MS + BOUND_MS / 4 + 75);
    let acked = acked.lock().unwrap().clone();
    let last = acked.last().map_or(0, |a| a.1);
    let mut stale = Vec::new();
    let mut worst = Duration::ZERO;
    for &(began, value) in &reads {
        if let Some((at, _)) = acked.iter().find(|(_, n)| *n > value) {
            worst = worst.max(began.saturating_duration_since(*at));
        }
        let due = acked.iter().rev().find(|(at, _)| *at + allowed <= began).map_or(0, |a| a.1);
        if value < due {
            let behind = acked.iter().find(|(_, n)| *n > value).map(|(at, _)| began - *at);
            stale.push(format!("read {value} where {due} was due ({behind:?} behind)"));
        }
    }
    eprintln!(
        "{} reads served, {refused} refused, {last} writes, {} too stale; the oldest read lacked a write acknowledged {worst:?} before it",
        reads.len(),
        stale.len()
    );
    ensure!(stale.is_empty(), "the slow follower served reads older than the bound: {stale:?}");

    // Fast again, it catches up and serves the latest value.
    within_for(DEADLINE, "the slow follower to serve the last write", async {
        loop {
            let fut = connect(&slow_addr, Duration::from_secs(10));
            if let Ok(Ok(c)) = tokio::time::timeout(Duration::from_millis(500), fut).await {
                if let Ok((data, _)) = c.get_data("/x").await {
                    if data == last.to_string().as_bytes() {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    for r in running {
        stop(r).await?;
    }
    Ok(())
}
