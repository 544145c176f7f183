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
