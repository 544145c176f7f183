//! A follower that falls behind on large znodes catches up without costing the ensemble its
//! leader: three `referee-coordinator` processes, a client rewriting a 500 KB znode through the
//! leader back to back, one follower stopped (SIGSTOP) for seconds while hundreds of those
//! writes pile up behind it, then resumed. The leader sends it the backlog in batches small
//! enough to be written, synced and answered within openraft's deadline for one AppendEntries
//! (its heartbeat interval), so the follower catches up within seconds, every write goes on
//! succeeding, and nobody calls an election.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use common::processes::Processes;
use referee_testkit::{connect, within_for};
use zookeeper_client as zk;

/// The size of each write: half of ZooKeeper's default packet limit.
const VALUE_BYTES: usize = 500_000;

/// How long the follower is stopped.
const STOPPED: Duration = Duration::from_secs(10);

/// How long the follower may take to apply what the leader held when it was resumed.
const CATCH_UP: Duration = Duration::from_secs(20);

/// The longest a single write may take while the follower is stopped or catching up: the two
/// others are a quorum throughout.
const SLOWEST_WRITE: Duration = Duration::from_secs(3);

/// Writes done by the writer task: when each finished, how long it took, and its error if any.
type Done = Arc<Mutex<Vec<(Instant, Duration, Option<String>)>>>;

async fn sum_over(p: &Processes, ids: &[u64], series: &str) -> Result<f64> {
    let mut total = 0.0;
    for &id in ids {
        total += p.metrics(id).await?.get(series).copied().with_context(|| format!("server {id}: no {series}"))?;
    }
    Ok(total)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_stopped_behind_large_writes_catches_up_without_an_election() -> Result<()> {
    let p = Processes::start(3, "")?;
    let leader = p.leader(1).await?;
    let follower = (1..=3).find(|&id| id != leader).context("a follower")?;
    let all = [1, 2, 3];

    let zk = connect(&p.at(leader)?.client.to_string(), Duration::from_secs(10)).await?;
    zk.create("/big", &[], &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await?;
    let done: Done = Arc::default();
    let stop_writing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (done, stop_writing) = (done.clone(), stop_writing.clone());
        tokio::spawn(async move {
            let value = vec![b'x'; VALUE_BYTES];
            while !stop_writing.load(std::sync::atomic::Ordering::Relaxed) {
                let began = Instant::now();
                let r = tokio::time::timeout(Duration::from_secs(10), zk.set_data("/big", &value, None)).await;
                let err = match r {
                    Ok(Ok(_)) => None,
                    Ok(Err(e)) => Some(e.to_string()),
                    Err(_) => Some("no answer within 10 s".to_string()),
                };
                let failed = err.is_some();
                done.lock().unwrap().push((Instant::now(), began.elapsed(), err));
                if failed {
                    return;
                }
            }
        })
    };

    // The follower stops while the writes go on; the leader and the other follower commit them.
    p.signal(follower, "STOP")?;
    let stopped_at = Instant::now();
    tokio::time::sleep(STOPPED).await;
    let behind = p.metrics(leader).await?.get("referee_coordinator_raft_last_log_index").copied().unwrap_or(0.0);
    let term = sum_over(&p, &[leader], "referee_coordinator_raft_term").await?;
    let written_while_stopped = done.lock().unwrap().len();
    ensure!(
        written_while_stopped as f64 * VALUE_BYTES as f64 > 20e6,
        "only {written_while_stopped} writes while the follower was stopped: too few to test a catch-up"
    );
    p.signal(follower, "CONT")?;
    let resumed = Instant::now();

    // The follower applies everything the leader held at the resume, while the writes go on.
    let caught_up = within_for(CATCH_UP, "the resumed follower to catch up", async {
        loop {
            if let Ok(m) = p.metrics(follower).await {
                if m.get("referee_coordinator_raft_applied_index").is_some_and(|&a| a >= behind) {
                    return resumed.elapsed();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    // Writes go on a little after the catch-up: a late election would show in them too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_writing.store(true, std::sync::atomic::Ordering::Relaxed);
    within_for(Duration::from_secs(15), "the writer to stop", writer).await??;
    let caught_up = caught_up.with_context(|| format!("{behind} entries to apply; {}", p.logs()))?;

    let done = done.lock().unwrap().clone();
    let failed: Vec<_> = done.iter().filter_map(|(_, _, e)| e.clone()).collect();
    ensure!(failed.is_empty(), "writes failed: {failed:?}\n{}", p.logs());
    let slow = done.iter().filter(|(_, took, _)| *took > SLOWEST_WRITE).count();
    let after_resume = done.iter().filter(|(at, _, _)| *at > resumed).count();
    ensure!(slow == 0, "{slow} of {} writes took over {SLOWEST_WRITE:?}\n{}", done.len(), p.logs());
    ensure!(after_resume > 0, "no write finished after the resume");
    // Every server, the resumed one too, is still in the leader's term: nobody called an
    // election (a call takes a new term, won or not), and the leader leads on.
    let mut terms_after = Vec::new();
    for id in all {
        terms_after.push(sum_over(&p, &[id], "referee_coordinator_raft_term").await?);
    }
    ensure!(
        terms_after.iter().all(|&t| t == term),
        "the leader's term was {term} at the resume; servers 1 to 3 are in terms {terms_after:?}\n{}",
        p.logs()
    );
    ensure!(p.leader(follower).await? == leader, "another leader than {leader}\n{}", p.logs());
    eprintln!(
        "{} writes of {VALUE_BYTES} bytes, {written_while_stopped} while the follower was stopped for {:?}; \
         it caught up {caught_up:?} after the resume",
        done.len(),
        resumed - stopped_at
    );
    Ok(())
}
