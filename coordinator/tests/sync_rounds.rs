//! `sync` through a follower while many sessions pipeline theirs: the read-index rounds they
//! share (`coordinator/src/rounds.rs`) and the barriers a connection starts as its requests
//! arrive must still give every read behind a `sync` every write acknowledged before the
//! `sync` was sent.
//!
//! A writer on the leader sets one znode to 1, 2, 3, ... and publishes each value once it is
//! acknowledged. Readers on a follower each send, in one TCP write, `sync`, `getData`, `sync`,
//! `getData`, having noted the last value published before: both reads must return at least
//! that value, and the second at least the first. Without the `sync`s a follower answers from
//! its own tree, which trails the leader's by a heartbeat or an append; the test also counts
//! how often a plain `getData` sent the same way was behind, which shows the lag is there to
//! be hidden.

mod common;

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use common::ensemble::ThreeVoters;
use common::raw::{body, frame, op, request, Raw};

/// Values the writer sets.
const WRITES: i64 = 400;
/// Readers pipelining `sync`s on the follower at once.
const READERS: usize = 8;

fn value(reply_body: &[u8]) -> Result<i64> {
    let mut r = common::raw::Rd::new(reply_body);
    let data = r.buffer()?.context("the znode has data")?;
    Ok(String::from_utf8(data)?.parse()?)
}

/// Sends `requests` in one write and returns their replies' bodies, in order.
async fn pipelined(raw: &mut Raw, requests: &[(i32, Vec<u8>)]) -> Result<Vec<Vec<u8>>> {
    let mut bytes = Vec::new();
    let mut xids = Vec::new();
    for (opcode, body) in requests {
        let xid = raw.alloc_xid();
        bytes.extend(frame(&request(xid, *opcode, body)));
        xids.push(xid);
    }
    raw.send_bytes(&bytes).await?;
    let mut bodies = Vec::new();
    for xid in xids {
        let (reply, _) = raw.reply_to(xid).await?;
        reply.ok().with_context(|| format!("request xid {xid}"))?;
        bodies.push(reply.body);
    }
    Ok(bodies)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_syncs_through_a_follower_see_every_write_acknowledged_before_they_were_sent() -> Result<()> {
    common::capture_server_logs("referee_coordinator=info,openraft=warn");
    let ensemble = ThreeVoters::start(|_| {}).await?;
    let leader = ensemble.leader()?.client;
    let follower = ensemble.follower().client;

    let mut writer = Raw::connect(leader, 10_000).await?;
    writer.call(op::CREATE, &body::create("/synced", b"0", 0)).await?.ok()?;
    let acknowledged = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let stale_without_sync = Arc::new(AtomicUsize::new(0));

    let mut readers = tokio::task::JoinSet::new();
    for _ in 0..READERS {
        let (acknowledged, done, stale) = (acknowledged.clone(), done.clone(), stale_without_sync.clone());
        let mut raw = Raw::connect(follower, 10_000).await?;
        readers.spawn(async move {
            let (mut checked, mut round) = (0usize, 0usize);
            while done.load(Ordering::SeqCst) == 0 {
                round += 1;
                let before = acknowledged.load(Ordering::SeqCst);
                let get = (op::GET_DATA, body::path_watch("/synced", false));
                let sync = (op::SYNC, body::path("/synced"));
                if round % 4 == 0 {
                    // Now and then a plain read, to see the follower trail.
                    let bodies = pipelined(&mut raw, std::slice::from_ref(&get)).await?;
                    if value(&bodies[0])? < before {
                        stale.fetch_add(1, Ordering::SeqCst);
                    }
                    continue;
                }
                let bodies = pipelined(&mut raw, &[sync.clone(), get.clone(), sync, get]).await?;
                let (first, second) = (value(&bodies[1])?, value(&bodies[3])?);
                ensure!(
                    first >= before && second >= first,
                    "reads behind a sync went back: {before} acknowledged before the syncs were sent, \
                     then read {first} and {second}"
                );
                checked += 1;
            }
            anyhow::Ok(checked)
        });
    }

    let began = Instant::now();
    for i in 1..=WRITES {
        writer.call(op::SET_DATA, &body::set_data("/synced", i.to_string().as_bytes(), -1)).await?.ok()?;
        acknowledged.store(i, Ordering::SeqCst);
    }
    let writing = began.elapsed();
    done.store(1, Ordering::SeqCst);
    let mut checked = 0;
    while let Some(reader) = readers.join_next().await {
        checked += reader??;
    }
    let stale = stale_without_sync.load(Ordering::SeqCst);
    eprintln!(
        "{WRITES} writes in {writing:?}; {checked} pipelined sync pairs checked by {READERS} readers; \
         {stale} plain reads on the follower were behind"
    );
    ensure!(checked >= READERS * 10, "only {checked} pipelined sync pairs were checked");
    ensemble.stop().await
}
