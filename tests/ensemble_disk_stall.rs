//! A coordinator ensemble of real processes (`support/ensemble.rs`) whose leader's disk hangs:
//! each server's data directory on a filesystem of its own (an ext4 image mounted through a
//! loop device, so this needs root and skips loudly without it), and the leader's frozen with
//! `fsfreeze`, which blocks every write to it in the kernel, as a disk that stops answering
//! does (the process then sits in uninterruptible sleep, and not even SIGKILL ends it).
//!
//! Nothing is applied before the leader's own log holds it, and the leader's heartbeats go on
//! from its other threads: without a bound on how long a write of the log may take, the
//! ensemble holds every write for as long as the disk hangs, and no election comes. With
//! `log_sync_stall_ms`, the leader stops on its own with one message naming the stall, another
//! voter leads, the writes go on through it, and every acknowledged write is on both; thawed,
//! the old leader's process ends.
//!
//! A disk filled to its last block instead: a follower goes on appending to the log segment
//! it allocated ahead, and at the next election cannot save its vote, without which it may
//! not take part. It stops with one message naming the file and the full disk; the other two
//! elect and go on; given room, it starts again and catches up, every acknowledged write kept.

#[path = "support/disks.rs"]
mod disks;
#[path = "support/ensemble.rs"]
mod ensemble;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use disks::Disks;
use ensemble::{acked, check_everywhere, writes_grow, Ensemble, Load, Role, LOG_STOP_SAID};
use referee_testkit::{running_as_root, skip, within_for};

/// The servers' bound on a hung write or fdatasync of the log.
const STALL_MS: u64 = 1_000;

/// Starts three voters, each on a disk of its own, and a writer through each of `through`
/// (chosen once the leader is known); `None` when not root (the test then skips, loudly).
async fn start(test: &str, through: impl Fn(u64) -> Vec<u64>) -> Result<Option<(Ensemble, Disks, u64, Load)>> {
    if !running_as_root() {
        skip(test, "it mounts a filesystem per server and freezes one, which needs root");
        return Ok(None);
    }
    let extra = format!("log_sync_stall_ms: {STALL_MS}\n");
    let (ens, disks) = Ensemble::start_prepared(&[Role::Voter; 3], &extra, |dir| Disks::mount(dir, 1..=3)).await?;
    let (leader, _) = ens.leader_among(&[1, 2, 3]).await?;
    let load = Load::start(&ens, &through(leader), 1).await?;
    writes_grow(ens.client(through(leader)[0]), 20, "20 writes before a disk hangs").await?;
    Ok(Some((ens, disks, leader, load)))
}

/// Freezes server `id`'s disk, waits until it says its disk hangs, then runs `after` (what
/// must happen meanwhile) and thaws the disk whatever happened; how long it took to say so.
async fn hang_until_it_stops(
    ens: &Ensemble,
    disks: &Disks,
    id: u64,
    after: impl std::future::Future<Output = Result<()>>,
) -> Result<Duration> {
    // Timed from before the freeze: writes block from when it begins, before it returns.
    let frozen = tokio::time::Instant::now();
    disks.freeze(id)?;
    let checked = async {
        let server = ens.servers.iter().find(|s| s.id == id).with_context(|| format!("no server {id}"))?;
        within_for(Duration::from_secs(20), "the server to say its disk hangs", async {
            let said = |l: &str| l.contains(LOG_STOP_SAID) && l.contains("has not returned for");
            while !server.log().lines().any(said) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .with_context(|| server.log())?;
        let said = frozen.elapsed();
        ensure!(said >= Duration::from_millis(STALL_MS), "server {id} stopped {said:?} into the freeze, too early");
        after.await?;
        eprintln!(
            "server {id} said its disk hung {said:?} into the freeze; the rest went on by {:?}",
            frozen.elapsed()
        );
        Ok(said)
    }
    .await;
    // Thawed whatever happened: the frozen server cannot even be killed before.
    disks.thaw(id)?;
    checked
}

/// Stops `load` and checks every acknowledged write through `ids`; then waits for server `id`,
/// thawed, to end with its last words naming the bound and what to do.
async fn every_write_kept_and_ended(ens: &mut Ensemble, load: Load, ids: &[u64], id: u64) -> Result<()> {
    let writes = load.finish().await?;
    let acked = acked(&writes);
    ensure!(acked.len() >= 40, "only {} writes acknowledged", acked.len());
    check_everywhere(ens, ids, &acked).await?;
    let server = ens.server(id);
    within_for(Duration::from_secs(20), "the stalled server's process to end", async {
        while server.is_running() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let log = server.log();
    ensure!(
        log.contains("log_sync_stall_ms is 1000 ms") && log.contains("restart"),
        "its last words name the bound and what to do:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_disk_hangs_stops_and_another_voter_leads_with_every_acknowledged_write() -> Result<()> {
    const TEST: &str = "a_leader_whose_disk_hangs_stops_and_another_voter_leads_with_every_acknowledged_write";
    let others = |leader: u64| [1, 2, 3].into_iter().filter(|&s| s != leader).collect::<Vec<u64>>();
    let Some((mut ens, disks, leader, load)) = start(TEST, others).await? else { return Ok(()) };
    let rest = others(leader);
    let led = {
        let (ens, rest) = (&ens, &rest);
        async move {
            let (next, _) = ens.leader_among(rest).await?;
            writes_grow(ens.client(next), 20, "20 writes after the leader's disk hung").await
        }
    };
    hang_until_it_stops(&ens, &disks, leader, led).await?;
    every_write_kept_and_ended(&mut ens, load, &rest, leader).await?;
    drop(ens);
    drop(disks);
    Ok(())
}

/// A follower's appends are written by the task that receives them, which then sits in the
/// frozen write on one of the server's two runtime workers: the bound is kept all the same, its
/// clients move, and the leader and the other follower go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_whose_disk_hangs_stops_while_the_others_go_on() -> Result<()> {
    const TEST: &str = "a_follower_whose_disk_hangs_stops_while_the_others_go_on";
    let Some((mut ens, disks, leader, load)) = start(TEST, |_| vec![1, 2, 3]).await? else { return Ok(()) };
    let follower = if leader == 1 { 2 } else { 1 };
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&s| s != follower).collect();
    let on = {
        let via = ens.client(leader);
        async move { writes_grow(via, 20, "20 writes while a follower's disk hangs").await }
    };
    hang_until_it_stops(&ens, &disks, follower, on).await?;
    every_write_kept_and_ended(&mut ens, load, &rest, follower).await?;
    drop(ens);
    drop(disks);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_whose_disk_fills_stops_at_the_next_vote_and_comes_back_with_room() -> Result<()> {
    const TEST: &str = "a_follower_whose_disk_fills_stops_at_the_next_vote_and_comes_back_with_room";
    let others = |leader: u64| vec![leader, if leader == 1 { 3 } else { 1 }];
    let Some((mut ens, disks, leader, load)) = start(TEST, others).await? else { return Ok(()) };
    let full = [1, 2, 3].into_iter().find(|s| !others(leader).contains(s)).context("a follower")?;
    // Following the leader (its vote of this term saved) before its disk fills.
    writes_grow(ens.client(full), 10, "10 writes seen through the follower before its disk fills").await?;
    let filled = disks.fill(full)?;
    eprintln!("server {full}'s disk filled with {} MiB", filled >> 20);
    writes_grow(ens.client(leader), 20, "20 writes with a follower's disk full").await?;
    ensure!(ens.running().contains(&full), "server {full} stopped before any vote:\n{}", ens.server(full).log());

    // An election: the leader killed and started again. The full follower must save a vote
    // (its own, or one it grants) before it takes part.
    ens.kill9(leader)?;
    ens.start_only(leader)?;
    let server = ens.server(full);
    within_for(Duration::from_secs(20), "the full follower to stop", async {
        while server.is_running() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .with_context(|| server.log())?;
    let log = server.log();
    let last = log.lines().rev().find(|l| l.starts_with("referee: ")).unwrap_or_default();
    for needed in ["storage failed, the server stopped", "No space left on device", "raft-meta", "restart the server"] {
        ensure!(last.contains(needed), "its last words do not say {needed:?}: {last:?}; its log:\n{log}");
    }
    let rest = others(leader);
    let (next, _) = ens.leader_among(&rest).await?;
    writes_grow(ens.client(next), 20, "20 writes after the full follower stopped").await?;

    // Room again: it starts on the same directory, catches up and holds every write.
    disks.unfill(full)?;
    ens.kill9(full)?;
    ens.start_only(full)?;
    ens.wait_serving(&[full]).await?;
    let writes = load.finish().await?;
    let acked = acked(&writes);
    ensure!(acked.len() >= 60, "only {} writes acknowledged", acked.len());
    check_everywhere(&ens, &[1, 2, 3], &acked).await?;
    drop(ens);
    drop(disks);
    Ok(())
}
