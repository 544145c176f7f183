//! A connection that ends for any reason gives everything back at once, replies and
//! notifications leave in ZooKeeper's order, and a session the server has decided to expire is
//! told so. Raw jute frames throughout, so the tests see exactly what crosses the wire.

mod common;

use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::child::{mntr, ChildServer};
use common::raw::{body, err, ev, op, request, xid, Packet, Raw};
use common::*;
use referee_testkit::{within_for, TestServer};

/// Polls `mntr` until `key` equals `want`, failing with the last value after `limit`.
async fn wait_for_mntr(addr: std::net::SocketAddr, key: &str, want: i64, limit: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let now = mntr(addr, key).await?;
        if now == want {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("{key} is {now} after {limit:?}, expected {want}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The pattern that used to leak a connection task per round: a session with a write and a
/// ping in flight moves to a second connection (so the server closes the first while its reply
/// pipeline is busy), then both connections go. After 1,000 rounds the server must count no
/// more connections than before, and the same address must still get a session: leaked
/// connections would fill `max_connections_per_address` (60) and lock it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moved_with_requests_in_flight_leaks_no_connection() -> Result<()> {
    let server = ChildServer::start("").await?;
    let baseline = mntr(server.addr, "zk_num_alive_connections").await?;
    for round in 0..1000 {
        let step = async {
            let mut first = Raw::connect(server.addr, 5000).await?;
            first.send(op::CREATE, &body::create("/moved", b"", 0)).await?;
            first.send_frame(&request(xid::PING, op::PING, &[])).await?;
            let passwd = first.passwd.clone();
            let second = Raw::resume(server.addr, first.session_id, &passwd, 5000).await?;
            drop(first);
            drop(second);
            Ok::<_, anyhow::Error>(())
        };
        step.await.with_context(|| format!("round {round}; server log:\n{}", server.log()))?;
    }
    wait_for_mntr(server.addr, "zk_num_alive_connections", baseline, Duration::from_secs(10)).await?;
    let mut fresh = Raw::connect(server.addr, 5000).await.context("a new session after the rounds")?;
    fresh.call(op::EXISTS, &body::path_watch("/moved", false)).await?.ok()?;
    Ok(())
}

/// A read's reply precedes every notification for a change made after it: the watch it sets
/// exists only once the reply is out, and zookeeper-client drops an event for a watcher it has
/// not registered yet. One connection reads with a watch while another streams setData; after
/// each read's reply the test waits for that watch's notification and only then reads again, so
/// any notification before a reply is one the server sent out of order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_reply_precedes_notifications_of_later_changes() -> Result<()> {
    let server = TestServer::start().await?;
    let mut setup = Raw::connect(server.addr, 5000).await?;
    setup.call(op::CREATE, &body::create("/race", b"0", 0)).await?.ok()?;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let addr = server.addr;
        tokio::spawn(async move {
            let mut w = Raw::connect(addr, 5000).await?;
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Eight in flight at a time keeps changes coming faster than the reader reads.
                let mut xids = Vec::new();
                for _ in 0..8 {
                    n += 1;
                    xids.push(w.send(op::SET_DATA, &body::set_data("/race", n.to_string().as_bytes(), -1)).await?);
                }
                for x in xids {
                    w.reply_to(x).await?.0.ok()?;
                }
            }
            Ok::<_, anyhow::Error>(n)
        })
    };

    let mut reader = Raw::connect(server.addr, 5000).await?;
    for round in 0..2000 {
        let x = reader.send(op::GET_DATA, &body::path_watch("/race", true)).await?;
        let reply = match reader.packet().await? {
            Packet::Reply(r) if r.xid == x => r,
            Packet::Reply(r) => bail!("round {round}: unexpected reply {r:?}"),
            Packet::Notification(n) => {
                bail!("round {round}: notification {n:?} arrived before the reply of the read that set its watch")
            }
        };
        reply.ok()?;
        let n = reader.notification().await.with_context(|| format!("round {round}: the watch's notification"))?;
        ensure!(n.kind == ev::NODE_DATA_CHANGED && n.path == "/race", "round {round}: {n:?}");
        ensure!(
            n.zxid > reply.zxid,
            "round {round}: notification zxid {} is not after the read's zxid {}",
            n.zxid,
            reply.zxid
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = within("the writer to stop", writer).await???;
    ensure!(writes > 2000, "only {writes} writes raced the reads");
    server.stop().await
}

/// A request from a session the server has already decided to expire (its close proposed but
/// not applied) is answered SessionExpired, as ZooKeeper's touchSession makes it, and the
/// connection is closed: the agents' lease arithmetic counts on a session that is being expired
/// not being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_being_expired_is_answered_session_expired_and_closed() -> Result<()> {
    let server = TestServer::start().await?;
    let mut client = Raw::connect(server.addr, 30_000).await?;
    client.call(op::EXISTS, &body::path_watch("/", false)).await?.ok()?;
    // Drive the exact state: the tracker has handed the session out as expired (as the expiry
    // task does just before it proposes the close), and no close has been applied.
    let taken = server.state.lock().unwrap().tracker.take_expired(Instant::now() + Duration::from_secs(3600));
    ensure!(taken.iter().any(|s| s.0 == client.session_id), "the session was not taken as expired: {taken:?}");

    let x = client.send(op::GET_DATA, &body::path("/zookeeper").into_iter().chain([0]).collect::<Vec<_>>()).await?;
    let (reply, _) = client.reply_to(x).await?;
    ensure!(reply.err == err::SESSION_EXPIRED, "a session being expired was answered {reply:?}");
    let rest = within_for(DEADLINE, "the server to close the connection", client.expect_closed()).await??;
    ensure!(rest.is_empty(), "frames after SessionExpired: {rest:?}");
    server.stop().await
}

/// Server shutdown ends every connection through its own cleanup, wherever the connection is
/// waiting: a writer blocked on a client that does not read (with its reader blocked behind the
/// full reply queue), a handshake that never comes. A connection the server had to abort instead
/// would keep its entry and its address slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_connections_blocked_anywhere_and_releases_them() -> Result<()> {
    let server = TestServer::start_with(|c| c.max_outstanding_requests = 4).await?;
    let mut setup = Raw::connect(server.addr, 10_000).await?;
    setup.call(op::CREATE, &body::create("/wide", &vec![b'w'; 500_000], 0)).await?.ok()?;

    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(4096)?;
    let stream = within("connect", sock.connect(server.addr)).await??;
    let mut deaf = Raw::from_stream(stream)?;
    deaf.handshake(&common::raw::ConnectRequest::new_session(10_000)).await?;
    let session = deaf.session_id;
    for _ in 0..200 {
        deaf.send(op::GET_DATA, &body::path_watch("/wide", false)).await?;
    }
    referee_testkit::wait_until(DEADLINE, "the deaf connection to be throttled", || {
        server.state.lock().unwrap().conns.values().any(|c| c.session.0 == session && c.stats.throttled)
    })
    .await?;
    let _silent = Raw::tcp(server.addr).await?;
    referee_testkit::wait_until(DEADLINE, "the silent connection to be accepted", || {
        server.state.lock().unwrap().open_per_address.values().sum::<u32>() == 3
    })
    .await?;

    let state = server.state.clone();
    server.stop().await?;
    let st = state.lock().unwrap();
    ensure!(st.conns.is_empty(), "connections left behind by shutdown: {}", st.conns.len());
    ensure!(st.open_per_address.is_empty(), "address slots left behind: {:?}", st.open_per_address);
    Ok(())
}
