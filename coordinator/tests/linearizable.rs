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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::child::ChildServer;
use common::PERSISTENT;
use referee_testkit::connect;
use referee_testkit::linearizability::{check, Operation, Register, RegisterInput, RegisterOutput, Verdict};
use tokio::time::Instant;
use zookeeper_client as zk;

const PATH: &str = "/register";
const CLIENTS: usize = 4;
/// How long one operation may take before it counts as unanswered.
const OP_DEADLINE: Duration = Duration::from_secs(2);

type History = Arc<Mutex<Vec<Operation<RegisterInput, RegisterOutput>>>>;

/// One client: a session, then a random operation after another until `stop`; a new session
/// after any operation without an answer.
async fn client_loop(id: usize, addr: String, started: Instant, stop: Arc<AtomicBool>, history: History) {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let mut session: Option<zk::Client> = None;
    let mut seen_version = 0i32;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let client = match &session {
            Some(c) => c,
            None => {
                match tokio::time::timeout(OP_DEADLINE, connect(&addr, Duration::from_secs(4))).await {
                    Ok(Ok(c)) => session = Some(c),
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                continue;
            }
        };
        n += 1;
        let value = (id as u64) << 32 | n;
        let input = match rand(3) {
            0 => RegisterInput::Read,
            1 => RegisterInput::Write(value),
            // Mostly the version this client last saw, sometimes one that is surely stale (never
            // -1, which ZooKeeper reads as "any version").
            _ => RegisterInput::CompareAndSet {
                value,
                expected: if rand(4) == 0 && seen_version > 0 { seen_version - 1 } else { seen_version },
            },
        };
        let call = started.elapsed();
        let answer = tokio::time::timeout(OP_DEADLINE, run(client, input)).await;
        let returned = started.elapsed();
        let output = match answer {
            Ok(Ok(output)) => output,
            Ok(Err(_)) | Err(_) => {
                // No answer: recorded as such (a read without one explains nothing and is
                // left out); the next operation goes on a new session.
                if input != RegisterInput::Read {
                    history.lock().unwrap().push(Operation { client: id, call, returned: None, input });
                }
                session = None;
                continue;
            }
        };
        match output {
            RegisterOutput::Read { version, .. } | RegisterOutput::Set { version } => seen_version = version,
            RegisterOutput::BadVersion => {}
        }
        history.lock().unwrap().push(Operation { client: id, call, returned: Some((returned, output)), input });
    }
}

async fn run(client: &zk::Client, input: RegisterInput) -> Result<RegisterOutput, zk::Error> {
    match input {
        RegisterInput::Read => {
            client.sync(PATH).await?;
            let (data, stat) = client.get_data(PATH).await?;
            let value = std::str::from_utf8(&data).ok().and_then(|t| t.parse().ok()).unwrap_or(u64::MAX);
            Ok(RegisterOutput::Read { value, version: stat.version })
        }
        RegisterInput::Write(value) => {
            let stat = client.set_data(PATH, value.to_string().as_bytes(), None).await?;
            Ok(RegisterOutput::Set { version: stat.version })
        }
        RegisterInput::CompareAndSet { value, expected } => {
            match client.set_data(PATH, value.to_string().as_bytes(), Some(expected)).await {
                Ok(stat) => Ok(RegisterOutput::Set { version: stat.version }),
                Err(zk::Error::BadVersion) => Ok(RegisterOutput::BadVersion),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until the history has grown by `more` answered operations.
async fn answered_grow(history: &History, more: usize, what: &str) -> Result<()> {
    let answered = |h: &History| h.lock().unwrap().iter().filter(|o| o.returned.is_some()).count();
    let target = answered(history) + more;
    referee_testkit::within_for(Duration::from_secs(30), what, async {
        while answered(history) < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

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
        .map(|id| tokio::spawn(client_loop(id, addr.clone(), started, stop.clone(), history.clone())))
        .collect();
    answered_grow(&history, 300, "300 answered operations before the first crash").await?;
    let mut crashes = Vec::new();
    for round in 1..=2 {
        crashes.push(started.elapsed());
        server.kill9()?;
        server.restart().await.with_context(|| format!("restart {round}"))?;
        answered_grow(&history, 300, "300 answered operations after the restart").await?;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await?;
    }

    let history = std::mem::take(&mut *history.lock().unwrap());
    let unanswered = history.iter().filter(|o| o.returned.is_none()).count();
    let count = |f: fn(&RegisterOutput) -> bool| {
        history.iter().filter(|o| o.returned.as_ref().is_some_and(|(_, out)| f(out))).count()
    };
    let (reads, sets, refused) = (
        count(|o| matches!(o, RegisterOutput::Read { .. })),
        count(|o| matches!(o, RegisterOutput::Set { .. })),
        count(|o| matches!(o, RegisterOutput::BadVersion)),
    );
    eprintln!(
        "{} operations from {CLIENTS} clients, crashes at {crashes:?}: {reads} reads, {sets} sets, {refused} BadVersion, \
         {unanswered} without an answer",
        history.len()
    );
    ensure!(sets > 0 && refused > 0 && reads > 0, "the history lacks a kind of operation: nothing to check");
    match check(&Register { initial: 0 }, &history) {
        Verdict::Linearizable => Ok(()),
        Verdict::Violation(text) => anyhow::bail!("{text}"),
        Verdict::Undecided { steps } => anyhow::bail!("the checker gave up after {steps} steps"),
    }
}
