//! Storage faults under a whole coordinator, on the log's fault-injecting filesystem: a failed
//! log fsync stops the server with one error and acknowledges nothing it could not make
//! durable; a failed snapshot neither stops service nor purges the log. Writes that queue
//! behind one fdatasync share the next log entry, each under its own zxid, in each session's
//! order, snapshots come every so many transactions however they are batched, and a restart
//! replays them to the same zxids. A session's applied write is answered while its next write
//! still waits for its own fdatasync.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use referee_coordinator::config::CoordinatorConfig;
use referee_coordinator::log::wal::read_meta;
use referee_coordinator::log::{FaultFs, FileSystem};
use referee_coordinator::propose::{Proposer, ProposerStats, MAX_IN_FLIGHT};
use referee_coordinator::raft::Raft;
use referee_coordinator::server::{Coordinator, CoordinatorError};
use referee_testkit::{connect, within_for};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zookeeper_client as zk;

struct Running {
    addr: String,
    proposer: Proposer,
    raft: Raft,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), CoordinatorError>>,
}

impl Running {
    async fn stop(mut self) -> Result<(), CoordinatorError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("the server task does not panic")
    }
}

async fn start(fs: &FaultFs, snapshot_every: u64) -> Result<Running> {
    start_with(fs, snapshot_every, |_| {}).await
}

async fn start_with(fs: &FaultFs, snapshot_every: u64, adjust: impl Fn(&mut CoordinatorConfig)) -> Result<Running> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut cfg = CoordinatorConfig::new("/data");
    cfg.listen = addr;
    cfg.tick_ms = 50;
    cfg.min_session_timeout_ms = Some(200);
    cfg.max_session_timeout_ms = Some(30_000);
    cfg.snapshot_every_txns = snapshot_every;
    adjust(&mut cfg);
    cfg.validate()?;
    let coord = Coordinator::start_on(cfg, Arc::new(fs.clone())).await.context("starting on the fault filesystem")?;
    let (proposer, raft) = (coord.proposer(), coord.raft());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(coord.serve(listener, async move {
        let _ = stopped.await;
    }));
    Ok(Running { addr: addr.to_string(), proposer, raft, stop: Some(stop), task })
}

async fn client(r: &Running) -> Result<zk::Client> {
    connect(&r.addr, Duration::from_secs(10)).await
}

/// Waits until the proposer has cut `n` batches since `before`.
async fn batches_cut(server: &Running, before: &ProposerStats, n: u64) -> Result<()> {
    within("the proposer to cut a batch", async {
        while server.proposer.stats().batches - before.batches < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Waits until `n` writes submitted since `before` are in the proposer (queued or batched).
async fn reached_proposer(server: &Running, before: &ProposerStats, n: u64) -> Result<()> {
    within("the writes to reach the proposer", async {
        loop {
            let now = server.proposer.stats();
            if now.queued + (now.txns - before.txns) >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Whether an fsync is held on `fs` within 10 s (the wait blocks, so it runs off the runtime).
async fn one_sync_held(fs: &FaultFs) -> Result<bool> {
    let fs = fs.clone();
    Ok(tokio::task::spawn_blocking(move || fs.wait_for_held_syncs(1, Duration::from_secs(10))).await?)
}

/// Finished snapshots only: a `.tmp` is one still being written, or one whose fsync failed
/// (removed at the next open).
fn snapshot_files(fs: &FaultFs) -> Vec<String> {
    let mut names: Vec<String> = fs
        .list(Path::new("/data/snapshots"))
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with("snapshot-") && !n.ends_with(".tmp"))
        .collect();
    names.sort();
    names
}

fn purged_upto(fs: &FaultFs) -> Option<u64> {
    let (_, meta) = read_meta(fs, Path::new("/data/log/raft-meta"), None).expect("raft-meta reads back");
    meta.last_purged.map(|l| l.index)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_log_fsync_stops_the_server_and_nothing_unsynced_was_acknowledged() -> Result<()> {
    let fs = FaultFs::new();
    let server = start(&fs, 100_000).await?;
    let c = client(&server).await?;
    c.create("/before", b"1", PERSISTENT).await?;
    fs.fail_syncs_under("/data/log");
    let after =
        within_for(Duration::from_secs(10), "the write after the failure to end", c.create("/after", b"2", PERSISTENT))
            .await?;
    assert!(after.is_err(), "a write whose fsync failed was acknowledged: {after:?}");
    let result = within_for(Duration::from_secs(10), "the server to stop by itself", server.task).await??;
    let e = result.expect_err("the server stops with an error").to_string();
    assert!(
        e.contains("injected fsync failure")
            && e.contains("/data/log")
            && e.contains("No write was acknowledged without being durable")
            && e.contains("restart"),
        "one message with what failed, where, and what to do: {e}"
    );

    // Power loss, then a start on what the disk kept: the acknowledged write is there.
    fs.crash();
    let server = start(&fs, 100_000).await?;
    let c = client(&server).await?;
    assert!(c.check_stat("/before").await?.is_some(), "the acknowledged write survived");
    assert!(c.check_stat("/after").await?.is_none(), "the unacknowledged write was never durable");
    server.stop().await?;
    Ok(())
}

/// A disk that hangs rather than fails: a lone server's write is synced by the task that
/// appends it (its runtime has a worker to spare), so that task waits in the fdatasync. Past
/// `log_sync_stall_ms` the server stops all the same, with one message, and acknowledges
/// nothing more, even once the fdatasync returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_server_whose_disk_stalls_stops_within_its_bound() -> Result<()> {
    let fs = FaultFs::new();
    let server = start_with(&fs, 100_000, |c| c.log_sync_stall_ms = 500).await?;
    let c = client(&server).await?;
    c.create("/before", b"1", PERSISTENT).await?;
    fs.hold_syncs();
    let stalled = tokio::time::Instant::now();
    let after = tokio::spawn(async move { c.create("/after", b"2", PERSISTENT).await });
    let ended = within_for(Duration::from_secs(20), "the server to stop by itself", server.task).await;
    let took = stalled.elapsed();
    fs.release_syncs();
    let e = ended??.expect_err("the server stops with an error").to_string();
    assert!(
        e.contains("has not returned for") && e.contains("log_sync_stall_ms is 500 ms") && e.contains("restart"),
        "one message naming the stall and what to do: {e}"
    );
    assert!(took >= Duration::from_millis(500), "stopped {took:?} into the stall, before its bound");
    let after = within_for(Duration::from_secs(10), "the write during the stall to end", after).await??;
    assert!(after.is_err(), "a write whose fsync stalled was acknowledged: {after:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_snapshot_neither_stops_service_nor_purges_the_log() -> Result<()> {
    let fs = FaultFs::new();
    let server = start(&fs, 10).await?;
    fs.fail_syncs_under("/data/snapshots");
    let c = client(&server).await?;
    for i in 0..60 {
        c.create(&format!("/n{i}"), b"x", PERSISTENT)
            .await
            .with_context(|| format!("write {i} while snapshots fail"))?;
    }
    assert!(snapshot_files(&fs).is_empty(), "no snapshot could be made durable: {:?}", snapshot_files(&fs));
    assert_eq!(purged_upto(&fs), None, "the log was purged without a durable snapshot");
    server.stop().await?;

    // Power loss clears the fault; a start on what the disk kept has every write, and from
    // now on snapshots succeed and the log is purged behind them.
    fs.crash();
    let server = start(&fs, 10).await?;
    let c = client(&server).await?;
    for i in 0..60 {
        assert!(c.check_stat(&format!("/n{i}")).await?.is_some(), "/n{i} is there");
    }
    for i in 60..100 {
        c.create(&format!("/n{i}"), b"x", PERSISTENT).await?;
    }
    within("a snapshot and a purge once the disk works", async {
        while snapshot_files(&fs).is_empty() || purged_upto(&fs).is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    server.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_behind_one_fdatasync_share_the_next_entry_in_session_order() -> Result<()> {
    const CLIENTS: usize = 4;
    const EACH: usize = 25;
    // Snapshots are counted in transactions: the 100 writes are a handful of entries, and
    // still make two snapshots due.
    let fs = FaultFs::new();
    let server = start(&fs, 40).await?;
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(client(&server).await?);
    }
    clients[0].create("/q", b"", PERSISTENT).await?;
    let before = server.proposer.stats();
    let entries_before = server.raft.metrics().borrow().last_log_index.unwrap_or(0);
    let syncs_before = fs.data_syncs();

    // Every fdatasync waits. One write from each client in turn, each cut into a batch of its
    // own before the next is sent, fills every batch Raft may hold unapplied; the rest of the
    // clients' pipelined creates then queue behind them. The client sends requests in call
    // order.
    fs.hold_syncs();
    let _release = ReleaseSyncs(fs.clone());
    let prefixes: Vec<String> = (0..CLIENTS).map(|c| format!("/q/c{c}-")).collect();
    let mut writes = Vec::new();
    for (c, (cl, prefix)) in clients.iter().zip(&prefixes).enumerate().take(MAX_IN_FLIGHT) {
        writes.push((c, 0, cl.create(prefix, b"", PERSISTENT_SEQ)));
        batches_cut(&server, &before, c as u64 + 1).await?;
    }
    let first_wave = writes.len();
    for (c, (cl, prefix)) in clients.iter().zip(&prefixes).enumerate() {
        let from = usize::from(c < first_wave);
        writes.extend((from..EACH).map(|i| (c, i, cl.create(prefix, b"", PERSISTENT_SEQ))));
    }
    reached_proposer(&server, &before, (CLIENTS * EACH) as u64).await?;
    let held = server.proposer.stats();
    assert_eq!(held.batches - before.batches, MAX_IN_FLIGHT as u64, "every batch Raft may hold is in flight");
    let behind = (CLIENTS * EACH - first_wave) as u64;
    assert_eq!(held.queued, behind, "the rest queue behind the held fdatasync");
    fs.release_syncs();
    let mut made = Vec::new();
    for (c, i, w) in writes {
        let (stat, sequence) = within("a queued write", w).await?.with_context(|| format!("client {c} write {i}"))?;
        made.push((c, i, format!("/q/c{c}-{sequence}"), stat.czxid));
    }

    let after = server.proposer.stats();
    let batches = after.batches - before.batches;
    let entries = server.raft.metrics().borrow().last_log_index.unwrap_or(0) - entries_before;
    assert_eq!(after.txns - before.txns, (CLIENTS * EACH) as u64);
    assert_eq!(
        after.batches - held.batches,
        1,
        "the {behind} writes queued behind the held fdatasync share one batch (largest batch {})",
        after.largest_batch
    );
    assert_eq!(after.largest_batch, behind, "the batch after the release holds every queued write");
    assert_eq!(entries, batches, "one log entry per batch");
    assert!(
        fs.data_syncs() - syncs_before <= batches + 2,
        "{} fdatasyncs for {batches} batches",
        fs.data_syncs() - syncs_before
    );
    // Each transaction has a zxid of its own, dense across the batches.
    let mut zxids: Vec<i64> = made.iter().map(|m| m.3).collect();
    zxids.sort_unstable();
    zxids.dedup();
    assert_eq!(zxids.len(), CLIENTS * EACH, "every write has its own zxid");
    assert_eq!(zxids[zxids.len() - 1] - zxids[0], (CLIENTS * EACH - 1) as i64, "the zxids are dense: {zxids:?}");
    // A session's writes were applied in the order it sent them.
    for c in 0..CLIENTS {
        let mine: Vec<&(usize, usize, String, i64)> = made.iter().filter(|m| m.0 == c).collect();
        assert!(mine.windows(2).all(|w| w[0].3 < w[1].3 && w[0].2 < w[1].2), "client {c} out of order: {mine:?}");
    }

    within("a snapshot after 40 transactions in a few entries", async {
        while snapshot_files(&fs).is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;

    // Power loss, then a start on what the disk kept: the snapshot and the batches after it
    // replay to the same zxids.
    server.stop().await?;
    fs.crash();
    let server = start(&fs, 100_000).await?;
    let c = client(&server).await?;
    for (_, _, path, czxid) in &made {
        let stat = c.check_stat(path).await?.with_context(|| format!("{path} survived"))?;
        assert_eq!(stat.czxid, *czxid, "{path} replayed to another zxid");
    }
    let (stat, _) = c.create("/after", b"", PERSISTENT).await?;
    assert!(stat.czxid > zxids[zxids.len() - 1], "zxids go on from where the log left off");
    server.stop().await?;
    Ok(())
}

/// Lets every held fsync go when a test ends, however it ends: a server whose log writer
/// waits on a held fsync forever would keep the test's runtime from shutting down.
struct ReleaseSyncs(FaultFs);

impl Drop for ReleaseSyncs {
    fn drop(&mut self) {
        self.0.release_syncs();
    }
}

/// A client that pipelines is answered as far as its writes are applied: the reply to a write
/// goes out while the session's next write, a batch behind it, still waits for its fdatasync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_applied_write_is_answered_while_its_next_write_waits_for_the_disk() -> Result<()> {
    let fs = FaultFs::new();
    let server = start(&fs, 1_000_000).await?;
    let c = client(&server).await?;
    c.create("/p", b"", PERSISTENT).await?;
    let before = server.proposer.stats();

    // The first write's batch is in its fdatasync when the second arrives, so the second is a
    // batch of its own, behind it.
    fs.hold_syncs();
    let _release = ReleaseSyncs(fs.clone());
    let first = c.create("/p/first", b"1", PERSISTENT);
    anyhow::ensure!(one_sync_held(&fs).await?, "the first write never reached its fdatasync");
    let second = c.create("/p/second", b"2", PERSISTENT);
    reached_proposer(&server, &before, 2).await?;

    // The first batch's fdatasync completes; the second's is held.
    fs.let_held_syncs_through(1);
    let (stat, _) = within_for(Duration::from_secs(5), "the reply to the applied first write", first)
        .await?
        .context("the first write")?;
    anyhow::ensure!(one_sync_held(&fs).await?, "the second write is not waiting for its fdatasync");

    fs.release_syncs();
    let (later, _) =
        within_for(Duration::from_secs(10), "the second write", second).await?.context("the second write")?;
    anyhow::ensure!(stat.czxid < later.czxid, "the writes were applied out of order: {stat:?} then {later:?}");
    drop(c);
    server.stop().await?;
    Ok(())
}

/// A lone server comes back leading, having applied its whole log before its start returns.
/// It leads a new term, won at once with nobody else to ask, never the one it led before the
/// stop (its disk may have lost entries of that term that observers hold: see
/// `LogStore::pipelining_as_leader`); and one stopped in the middle of a campaign (its saved
/// vote for itself not yet committed) campaigns again and leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_server_restarts_leading_with_its_log_applied_before_it_answers() -> Result<()> {
    use referee_coordinator::log::{LogStore, WalOptions};
    let fs = FaultFs::new();
    let server = start(&fs, 100_000).await?;
    let c = client(&server).await?;
    for i in 0..50 {
        c.create(&format!("/n{i}"), b"x", PERSISTENT).await?;
    }
    let before = server.raft.metrics().borrow().clone();
    drop(c);
    server.stop().await?;
    fs.crash();

    let server = start(&fs, 100_000).await?;
    let after = server.raft.metrics().borrow().clone();
    assert_eq!(after.state, openraft::ServerState::Leader);
    assert!(after.current_term > before.current_term, "leads a new term, not its old one again: {after:?}");
    assert!(
        after.last_applied >= before.last_applied,
        "the log was applied before the start returned: {:?} < {:?}",
        after.last_applied,
        before.last_applied
    );
    let c = client(&server).await?;
    for i in 0..50 {
        assert!(c.check_stat(&format!("/n{i}")).await?.is_some(), "/n{i} is gone after the restart");
    }
    drop(c);
    server.stop().await?;

    // A vote for itself in a later term, not committed: what a crash mid-campaign leaves.
    let (cluster_id, _) = read_meta(&fs, Path::new("/data/log/raft-meta"), None)?;
    {
        let store = LogStore::open(Arc::new(fs.clone()), WalOptions::new("/data/log", cluster_id))?;
        let term = after.current_term + 1;
        store.update_meta(|m| m.vote = Some(openraft::Vote::new(term, after.id))).await?;
    }
    let server = start(&fs, 100_000).await?;
    let campaigned = server.raft.metrics().borrow().clone();
    assert_eq!(campaigned.state, openraft::ServerState::Leader);
    assert!(campaigned.current_term > after.current_term + 1, "a new campaign: {campaigned:?}");
    let c = client(&server).await?;
    assert!(c.check_stat("/n49").await?.is_some(), "/n49 is gone after the campaign");
    drop(c);
    server.stop().await?;
    Ok(())
}
