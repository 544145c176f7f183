//! Storage faults under a whole coordinator, on the log's fault-injecting filesystem: a failed
//! log fsync stops the server with one error and acknowledges nothing it could not make
//! durable; a failed snapshot neither stops service nor purges the log.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use referee_coordinator::config::CoordinatorConfig;
use referee_coordinator::log::wal::read_meta;
use referee_coordinator::log::{FaultFs, FileSystem};
use referee_coordinator::server::{Coordinator, CoordinatorError};
use referee_testkit::{connect, within_for};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zookeeper_client as zk;

struct Running {
    addr: String,
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mut cfg = CoordinatorConfig::new("/data");
    cfg.listen = addr;
    cfg.tick_ms = 50;
    cfg.min_session_timeout_ms = Some(200);
    cfg.max_session_timeout_ms = Some(30_000);
    cfg.snapshot_every_entries = snapshot_every;
    cfg.validate()?;
    let coord = Coordinator::start_on(cfg, Arc::new(fs.clone())).await.context("starting on the fault filesystem")?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(coord.serve(listener, async move {
        let _ = stopped.await;
    }));
    Ok(Running { addr: addr.to_string(), stop: Some(stop), task })
}

async fn client(r: &Running) -> Result<zk::Client> {
    connect(&r.addr, Duration::from_secs(10)).await
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
