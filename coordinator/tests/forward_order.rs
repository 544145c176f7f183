//! Writes through a follower keep each session's order: several sessions on one follower,
//! each with many writes outstanding, see them applied in the order sent (the follower has
//! several forwarded batches in flight to the leader at once, never two holding writes of one
//! connection); and when the peer link to the leader breaks under that load, what each
//! session got applied is a prefix of what it sent, with every acknowledged write in it: a
//! later write is never applied without an earlier one, whichever forwards were in flight.
//! And a session that moves to another server while a write of its old connection is still
//! on its way to the leader: that write is refused there (SessionMoved), never applied after
//! the writes the client sent on its new connection.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::ensemble::{leader_of, start_ensemble_behind_proxies, stop, Running, ThreeVoters};
use common::raw::{body, op, parse_packet, Packet, Raw};
use referee_coordinator::config::Role;
use referee_testkit::{wait_until, within_for};

const DEADLINE: Duration = Duration::from_secs(20);
/// Creates each session keeps outstanding.
const WINDOW: usize = 16;
/// A persistent sequential create.
const SEQUENTIAL: i32 = 2;

/// What one pipelining session did.
#[derive(Debug, Clone, Copy)]
struct Sent {
    /// Writes acknowledged with success, all before the first failure.
    acked: usize,
    /// Whether it ended on a failure (an error reply or its connection closed).
    failed: bool,
}

/// Opens a session on `addr` and pipelines sequential creates under `parent` (data "0", "1",
/// ...) with [`WINDOW`] outstanding, until `total` are acknowledged or the first one fails.
/// `progress` counts the acknowledgements as they come.
async fn pipeline(addr: SocketAddr, parent: String, total: usize, progress: Arc<AtomicUsize>) -> Result<Sent> {
    let mut raw = session(addr).await?;
    let child = format!("{parent}/n-");
    let mut sent = 0;
    let mut acked = 0;
    while sent < total.min(WINDOW) {
        raw.send(op::CREATE, &body::create(&child, sent.to_string().as_bytes(), SEQUENTIAL)).await?;
        sent += 1;
    }
    while acked < total {
        let Some(frame) = raw.read_frame_for(DEADLINE).await? else {
            return Ok(Sent { acked, failed: true });
        };
        let Packet::Reply(reply) = parse_packet(&frame)? else { continue };
        if reply.err != 0 {
            return Ok(Sent { acked, failed: true });
        }
        acked += 1;
        progress.fetch_add(1, Ordering::SeqCst);
        if sent < total {
            // A write whose sending fails is never answered: the read sees the close.
            if raw.send(op::CREATE, &body::create(&child, sent.to_string().as_bytes(), SEQUENTIAL)).await.is_err() {
                return Ok(Sent { acked, failed: true });
            }
            sent += 1;
        }
    }
    Ok(Sent { acked, failed: false })
}

/// The data of `parent`'s children on `server`, in the order of their sequence numbers.
fn applied(server: &Running, parent: &str) -> Result<Vec<usize>> {
    let st = server.coordinator_state.lock().unwrap_or_else(|p| p.into_inner());
    let (mut children, _) = st
        .tree
        .children(parent, &[])
        .map_err(|e| anyhow::anyhow!("listing {parent} on server {}: {e:?}", server.id))?;
    children.sort();
    children
        .iter()
        .map(|c| {
            let data = st.tree.node(&format!("{parent}/{c}")).and_then(|n| n.data().map(<[u8]>::to_vec));
            let data = data.with_context(|| format!("{parent}/{c} has no data"))?;
            String::from_utf8(data)?.parse::<usize>().with_context(|| format!("{parent}/{c}'s data"))
        })
        .collect()
}

/// Checks that what `parent`'s session got applied on `server` is its writes 0..k in order,
/// with every acknowledged one among them.
fn check_prefix(server: &Running, parent: &str, sent: Sent) -> Result<usize> {
    let seen = applied(server, parent)?;
    let expected: Vec<usize> = (0..seen.len()).collect();
    ensure!(
        seen == expected,
        "{parent} on server {}: the session's writes were applied out of order or with a gap: {seen:?}",
        server.id
    );
    ensure!(
        seen.len() >= sent.acked,
        "{parent} on server {}: {} writes acknowledged but only {} applied",
        server.id,
        sent.acked,
        seen.len()
    );
    Ok(seen.len())
}

/// A new session on `addr`. A server refuses one while it cannot reach the leader (its peer
/// link backing off after a cut, an election just ended): asked again until it grants one.
async fn session(addr: SocketAddr) -> Result<Raw> {
    within_for(DEADLINE, "a new session", async {
        loop {
            match Raw::connect(addr, 4000).await {
                Ok(raw) => return raw,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    })
    .await
}

async fn make_parents(addr: SocketAddr, parents: &[String]) -> Result<()> {
    let mut raw = session(addr).await?;
    for p in parents {
        raw.call(op::CREATE, &body::create(p, b"", 0)).await?.ok().with_context(|| format!("creating {p}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_writes_of_several_sessions_on_a_follower_keep_each_sessions_order() -> Result<()> {
    const SESSIONS: usize = 6;
    const WRITES: usize = 300;
    let ensemble = ThreeVoters::start(|_| {}).await?;
    let follower = ensemble.follower();
    let leader = ensemble.leader()?;
    let parents: Vec<String> = (0..SESSIONS).map(|i| format!("/s{i}")).collect();
    make_parents(follower.client, &parents).await?;

    let writers: Vec<_> =
        parents.iter().map(|p| tokio::spawn(pipeline(follower.client, p.clone(), WRITES, Arc::default()))).collect();
    for (p, w) in parents.iter().zip(writers) {
        let sent = within_for(DEADLINE, "a session's writes", w).await???;
        ensure!(!sent.failed && sent.acked == WRITES, "{p}: every write succeeds without faults: {sent:?}");
        // Acknowledged on the follower: applied there, and so on the leader.
        ensure!(check_prefix(follower, p, sent)? == WRITES);
        ensure!(check_prefix(leader, p, sent)? == WRITES);
    }
    ensemble.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broken_link_to_the_leader_never_applies_a_sessions_later_write_without_its_earlier_ones() -> Result<()> {
    const SESSIONS: usize = 4;
    const CUTS: usize = 3;
    let (running, _dirs, mut proxies) = start_ensemble_behind_proxies(&[Role::Voter; 3], |_| {}).await?;
    let (leader_id, _) = leader_of(&running).await?;
    let leader = running.iter().find(|r| r.id == leader_id).context("the leader runs")?;
    let follower = running.iter().find(|r| r.id != leader_id).context("a follower runs")?;
    // Every peer connection into the leader passes here, the follower's forwards among them.
    let into_leader = &mut proxies[leader_id as usize - 1];
    let parents: Vec<Vec<String>> = (0..CUTS).map(|c| (0..SESSIONS).map(|i| format!("/c{c}s{i}")).collect()).collect();
    make_parents(leader.client, &parents.concat()).await?;

    let mut results = Vec::new();
    for (cut, parents) in parents.iter().enumerate() {
        let progress: Vec<Arc<AtomicUsize>> = (0..SESSIONS).map(|_| Arc::default()).collect();
        let writers: Vec<_> = parents
            .iter()
            .zip(&progress)
            .map(|(p, n)| tokio::spawn(pipeline(follower.client, p.clone(), usize::MAX, n.clone())))
            .collect();
        // Cut while every session has writes in flight through the link.
        let started = wait_until(DEADLINE, "every session to have writes acknowledged", || {
            writers.iter().any(|w| w.is_finished()) || progress.iter().all(|n| n.load(Ordering::SeqCst) >= 50)
        })
        .await;
        if let Some(i) = writers.iter().position(|w| w.is_finished()) {
            let w = writers.into_iter().nth(i).context("a finished writer")?;
            bail!("cut {cut}: {} ended before the cut: {:?}", parents[i], w.await?);
        }
        started.with_context(|| format!("cut {cut}"))?;
        into_leader.cut();
        for (p, w) in parents.iter().zip(writers) {
            let sent = within_for(DEADLINE, "a session to see the link's loss", w).await???;
            ensure!(sent.failed, "{p}: a session writing without pause fails when the link breaks: {sent:?}");
            results.push((p.clone(), sent));
        }
        into_leader.restore().await?;
    }

    // A write through the follower after the link is back: every batch of the broken
    // connections entered the leader's log before it, or never will.
    let last = format!("/after{}", CUTS);
    let done = within_for(DEADLINE, "a write after the link is back", async {
        loop {
            let mut raw = session(follower.client).await?;
            match raw.call(op::CREATE, &body::create(&last, b"", 0)).await {
                Ok(r) if r.err == 0 => return Ok::<_, anyhow::Error>(()),
                Ok(r) => bail!("the write after the link is back failed with err {}", r.err),
                // The follower may close the connection while it still finds the link broken.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    done.await??;
    let mut applied_total = 0;
    for (p, sent) in &results {
        applied_total += check_prefix(leader, p, *sent)?;
    }
    ensure!(applied_total > 0, "the sessions got writes applied");
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

/// ZooKeeper's leader refuses a request from a server that no longer owns its session
/// (SessionMoved): the client has moved on, and what it sent through the old server, if it
/// arrives late, must not land after what it sent since. Here the follower's forward is held
/// in a black hole while the client resumes its session on the leader and writes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_left_behind_on_the_old_server_is_never_applied_after_the_moved_sessions_writes() -> Result<()> {
    let (running, _dirs, proxies) = start_ensemble_behind_proxies(&[Role::Voter; 3], |_| {}).await?;
    let (leader_id, _) = leader_of(&running).await?;
    let leader = running.iter().find(|r| r.id == leader_id).context("the leader runs")?;
    let follower = running.iter().find(|r| r.id != leader_id).context("a follower runs")?;
    let mut old = session(follower.client).await?;
    old.call(op::CREATE, &body::create("/x", b"first", 0)).await?.ok().context("creating /x")?;

    // From now on the follower's forwards to the leader are held.
    let into_leader = &proxies[leader_id as usize - 1];
    into_leader.black_hole();
    old.send(op::SET_DATA, &body::set_data("/x", b"left behind", -1)).await?;
    let outstanding = || follower.coordinator_state.lock().unwrap_or_else(|p| p.into_inner()).outstanding_requests();
    wait_until(DEADLINE, "the follower to take the write in", || outstanding() > 0).await?;

    // The client gives up on the follower and resumes its session on the leader.
    let mut moved =
        within_for(DEADLINE, "resuming on the leader", Raw::resume(leader.client, old.session_id, &old.passwd, 4000))
            .await??;
    let reply = moved.call(op::SET_DATA, &body::set_data("/x", b"moved", -1)).await?;
    reply.ok().context("the write on the new connection")?;
    let moved_at = reply.zxid;
    into_leader.heal();

    // The left-behind write reaches the leader and is given a zxid, applied or refused: the
    // only transaction after the moved session's write in this test (none else writes), so
    // the next zxid is its.
    wait_until(DEADLINE, "the black hole to let its frames through", || into_leader.held() == 0).await?;
    let last_zxid = || leader.coordinator_state.lock().unwrap_or_else(|p| p.into_inner()).tree.last_zxid().0;
    wait_until(DEADLINE, "the left-behind write to reach the leader", || last_zxid() > moved_at).await?;
    ensure!(
        last_zxid() == moved_at + 1,
        "one transaction after the moved session's write was expected (the left-behind one), the leader is at \
         zxid {:#x}, the write was {moved_at:#x}",
        last_zxid()
    );
    for server in &running {
        let data = within_for(DEADLINE, "every server to apply the leader's log", async {
            loop {
                let applied = server.coordinator_state.lock().unwrap_or_else(|p| p.into_inner()).tree.last_zxid().0;
                if applied > moved_at {
                    return server.data("/x");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await?;
        ensure!(
            data.as_deref() == Some(&b"moved"[..]),
            "server {}: /x is {:?}, not the moved session's last write (the write left behind on server {} was \
             applied after it)",
            server.id,
            data.map(|d| String::from_utf8_lossy(&d).into_owned()),
            follower.id
        );
    }
    for r in running {
        stop(r).await?;
    }
    Ok(())
}
