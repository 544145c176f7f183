//! Snapshots are taken by bytes as well as by transactions (`snapshot_every_bytes`): rewriting
//! one large znode over and over keeps the tree small but the log since the last snapshot
//! large, and the log is kept on disk and in memory back to the snapshot before last. With a
//! byte threshold, 300 MB of setData to one znode leaves the `referee-coordinator` process
//! and its log directory a bounded size, far below what was written.

mod common;

use std::time::Duration;

use anyhow::{ensure, Result};
use common::child::ChildServer;
use referee_testkit::connect;
use zookeeper_client as zk;

/// The size of each write.
const VALUE_BYTES: usize = 500_000;

/// How many: 300 MB in all, under 1,000 transactions (the smallest `snapshot_every_txns` is 10,
/// the default 100,000: only the bytes can trigger a snapshot here).
const WRITES: usize = 600;

/// The threshold the server is given.
const EVERY_BYTES: u64 = 8 << 20;

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewriting_a_large_znode_takes_snapshots_by_bytes_and_bounds_the_log_and_memory() -> Result<()> {
    let server = ChildServer::start(&format!("snapshot_every_bytes: {EVERY_BYTES}\n")).await?;
    let zk = connect(&server.addr.to_string(), Duration::from_secs(10)).await?;
    zk.create("/big", &[], &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await?;
    let value = vec![b'x'; VALUE_BYTES];
    let (mut peak_rss, mut peak_log) = (0, 0);
    let log_dir = server.data_dir().join("log");
    for i in 0..WRITES {
        zk.set_data("/big", &value, None).await?;
        if i % 50 == 49 {
            peak_rss = peak_rss.max(server.rss_kib()? * 1024);
            peak_log = peak_log.max(dir_bytes(&log_dir));
        }
    }
    let written = (WRITES * VALUE_BYTES) as u64;
    let snapshots = server.log().matches("snapshot written").count();
    // The log is kept back to the snapshot before last and purged by whole segments (64 MiB,
    // preallocated): at most three segments are on disk. In memory, the entries since the
    // snapshot before last (two thresholds) and a few MiB of fresh ones.
    let seen = format!("{snapshots} snapshots; peak RSS {peak_rss} bytes, peak log directory {peak_log} bytes");
    ensure!(snapshots >= 10, "{seen} after {written} bytes of writes\n{}", server.log());
    ensure!(peak_log <= 3 * (64 << 20), "{seen}: the log directory is not bounded");
    ensure!(peak_rss <= 160 << 20, "{seen}: the process's memory is not bounded");
    eprintln!("{seen}");
    Ok(())
}
