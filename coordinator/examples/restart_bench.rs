//! Restart time of a coordinator holding 100,000 znodes of 100 bytes: from `Coordinator::start`
//! on the existing data directory to a leader that has applied everything it recovered (the
//! point where it can serve a client), once with the whole history in the log and once from a
//! snapshot plus the log after it.
//!
//! ```text
//! cargo run --release -p referee-coordinator --example restart_bench -- [DIR] [ZNODES]
//! ```
//!
//! DIR defaults to a new directory under the system temp dir (a real disk, not tmpfs, for the
//! figures to mean anything); it is removed afterwards.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use referee_coordinator::config::CoordinatorConfig;
use referee_coordinator::server::Coordinator;
use tokio::sync::oneshot;
use zookeeper_client as zk;

const DATA: [u8; 100] = [0x5a; 100];
const CLIENTS: usize = 4;
const IN_FLIGHT_PER_CLIENT: usize = 64;
const RESTARTS: usize = 3;

fn config(dir: &Path, snapshot_every: u64) -> CoordinatorConfig {
    let mut cfg = CoordinatorConfig::new(dir);
    cfg.listen = ([127, 0, 0, 1], 0).into();
    cfg.snapshot_every_txns = snapshot_every;
    cfg
}

/// Starts a server on `dir`, returning how long start took and a way to stop it.
async fn start(
    dir: &Path,
    snapshot_every: u64,
) -> anyhow::Result<(Duration, String, oneshot::Sender<()>, tokio::task::JoinHandle<()>, usize)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let t0 = Instant::now();
    let coord = Coordinator::start(config(dir, snapshot_every)).await?;
    let took = t0.elapsed();
    let nodes = coord.state().lock().unwrap().tree.node_count();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        if let Err(e) = coord
            .serve(listener, async move {
                let _ = stopped.await;
            })
            .await
        {
            eprintln!("server: {e}");
        }
    });
    Ok((took, addr, stop, task, nodes))
}

async fn populate(addr: &str, znodes: usize) -> anyhow::Result<Duration> {
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = zk::Client::connector().with_session_timeout(Duration::from_secs(30)).connect(addr).await?;
        let client = Arc::new(client);
        for lane in 0..IN_FLIGHT_PER_CLIENT {
            let client = client.clone();
            let lanes = CLIENTS * IN_FLIGHT_PER_CLIENT;
            let me = c * IN_FLIGHT_PER_CLIENT + lane;
            tasks.push(tokio::spawn(async move {
                let opts = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
                for i in (me..znodes).step_by(lanes) {
                    client.create(&format!("/n{i}"), &DATA, &opts).await?;
                }
                Ok::<_, zk::Error>(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    Ok(t0.elapsed())
}

fn files_in(dir: &Path) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().map(|m| m.len()).unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

async fn scenario(root: &Path, name: &str, snapshot_every: u64, znodes: usize) -> anyhow::Result<()> {
    let dir = root.join(name);
    let (_, addr, stop, task, _) = start(&dir, snapshot_every).await?;
    let took = populate(&addr, znodes).await?;
    println!("{name}: wrote {znodes} znodes of 100 bytes in {:.1} s", took.as_secs_f64());
    if snapshot_every <= znodes as u64 {
        // The snapshot covering the last threshold is written in the background; wait for it.
        let want = znodes as u64 / snapshot_every * snapshot_every - 1;
        let deadline = Instant::now() + Duration::from_secs(60);
        let covered = |(n, _): &(String, u64)| {
            n.strip_prefix("snapshot-").and_then(|i| i.parse::<u64>().ok()).is_some_and(|i| i >= want)
        };
        while !files_in(&dir.join("snapshots")).iter().any(covered) {
            anyhow::ensure!(Instant::now() < deadline, "no snapshot after 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let _ = stop.send(());
    task.await?;
    for (f, len) in files_in(&dir.join("snapshots")) {
        println!("  snapshots/{f}: {len} bytes");
    }
    for (f, len) in files_in(&dir.join("log")) {
        println!("  log/{f}: {len} bytes (segments are preallocated)");
    }
    for run in 1..=RESTARTS {
        let (took, _, stop, task, nodes) = start(&dir, snapshot_every).await?;
        anyhow::ensure!(nodes > znodes, "restart {run} has {nodes} znodes, fewer than written");
        println!("  restart {run}: {:.0} ms to a leader with all {nodes} znodes applied", took.as_secs_f64() * 1000.0);
        let _ = stop.send(());
        task.await?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter("warn,referee_coordinator::server=info")
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let (root, remove) = match args.next() {
        Some(d) => (PathBuf::from(d), false),
        None => (std::env::temp_dir().join(format!("referee-restart-bench-{}", std::process::id())), true),
    };
    let znodes: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(100_000);
    std::fs::create_dir_all(&root)?;
    let result = async {
        scenario(&root, "log-only", 100_000_000, znodes).await?;
        scenario(&root, "snapshot", (znodes as u64 / 2).max(10), znodes).await
    }
    .await;
    if remove {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}
