//! Linearizability with a real process through crashes: several clients drive one znode with
//! unconditional and conditional `setData` and `sync`-then-`getData` reads while the
//! `referee-coordinator` process is killed with SIGKILL and restarted on its data directory,
//! twice; the whole history, unanswered operations included, must be explained by one
//! sequential register ([`referee_testkit::linearizability`]).
//!
//! An operation that fails for any reason but `BadVersion` (a lost connection, a timeout) is
//! recorded without an answer: it may have taken effect at any later time, or never. Its client
//! then starts a new session, so nothing it does next can overtake it on the old one.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use common::child::ChildServer;
use common::PERSISTENT;
use referee_testkit::connect;
use referee_testkit::register_workload::{answered_grow, verdict, History, Keys, RegisterClient};
use tokio::time::Instant;

const PATH: &str = "/register";
const CLIENTS: usize = 4;
/// How long one operation may take before it counts as unanswered.
const OP_DEADLINE: Duration = Duration::from_secs(2);
/// How long the history may take to grow by the operations a phase waits for.
const GROW_LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conditional_writes_and_synced_reads_stay_linearizable_across_kill_9() -> Result<()> {
    // Snapshots every 100 entries, so that recovery runs through snapshot and log both.
    let mut server = ChildServer::start("snapshot_every_txns: 100\n").await?;
    let addr = server.addr.to_string();
    connect(&addr, Duration::from_secs(4)).await?.create(PATH, b"0", PERSISTENT).await?;

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history: History = Arc::default();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let client = RegisterClient {
                id,
                path: PATH.into(),
                keys: Keys::One,
                first: addr.clone(),
                then: addr.clone(),
                unconditional_writes: true,
                op_deadline: OP_DEADLINE,
            };
            tokio::spawn(client.run(started, stop.clone(), history.clone()))
        })
        .collect();
    answered_grow(&history, 300, GROW_LIMIT, "300 answered operations before the first crash").await?;
    let mut crashes = Vec::new();
    for round in 1..=2 {
        crashes.push(started.elapsed());
        server.kill9()?;
        server.restart().await.with_context(|| format!("restart {round}"))?;
        answered_grow(&history, 300, GROW_LIMIT, "300 answered operations after the restart").await?;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }

    let history = std::mem::take(&mut *history.lock().unwrap());
    verdict(&history, &format!("{CLIENTS} clients, crashes at {crashes:?}"))
}
