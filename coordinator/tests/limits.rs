//! The per-connection limits, one test each: what a client over the limit gets (ZooKeeper's
//! answer where it has one, else an error or a close naming the limit) and that everyone else
//! is served meanwhile.
//!
//! | limit                        | over it                                             |
//! |------------------------------|-----------------------------------------------------|
//! | `max_packet_bytes` (replies) | the read is answered BadArguments, connection goes on; a multi whose reply could pass it is refused so before it is proposed |
//! | `max_outstanding_requests`   | the server stops reading until replies go out        |
//! | `max_outstanding_request_bytes` | the same, counted in bytes of waiting requests    |
//! | `max_queued_outbound_bytes`  | the connection is closed                             |
//! | `max_watches_per_connection` | the read is answered QuotaExceeded, nothing registered (SetWatches: see its test) |
//! | `max_path_bytes`             | the request is answered BadArguments (SetWatches: see its test) |

mod common;

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::child::ChildServer;
use common::raw::{body, err, ev, op, xid, Jute, Raw};
use common::*;
use referee_testkit::{wait_until, within_for, TestServer};
use tokio::net::TcpSocket;

const QUOTA_EXCEEDED: i32 = -125;

/// A multiRead of `n` getData of `path`.
fn multi_read(path: &str, n: usize) -> Vec<u8> {
    let ops: Vec<(i32, Vec<u8>)> = (0..n).map(|_| (op::GET_DATA, body::path_watch(path, false))).collect();
    body::multi(&ops)
}

/// One small request (7 KB) asking for a 400 MB reply: 400 getData of a 1 MB znode. The server
/// must refuse it without building it (its RSS stays under 100 MB, where building it took
/// 800 MB), answer BadArguments, keep the connection, and serve a second client meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_multiread_is_refused_without_being_built() -> Result<()> {
    let mut server = ChildServer::start("").await?;
    let mut hog = Raw::connect(server.addr, 10_000).await?;
    let big = vec![b'x'; 1_000_000];
    hog.call(op::CREATE, &body::create("/big", &big, 0)).await?.ok()?;
    let rss_before = server.rss_kib()?;

    // The second client writes and reads throughout.
    let addr = server.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut c = Raw::connect(addr, 10_000).await?;
            c.call(op::CREATE, &body::create("/other", b"0", 0)).await?.ok()?;
            let mut rounds = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || rounds < 20 {
                rounds += 1;
                c.call(op::SET_DATA, &body::set_data("/other", rounds.to_string().as_bytes(), -1)).await?.ok()?;
                let r = c.call(op::GET_DATA, &body::path_watch("/other", false)).await?;
                let data = r.rd().buffer()?.unwrap_or_default();
                ensure!(data == rounds.to_string().as_bytes(), "read {data:?} after writing {rounds}");
            }
            Ok::<_, anyhow::Error>(rounds)
        })
    };

    let mut peak = rss_before;
    for (round, n) in [400usize, 400, 20_000, 400, 50_000].into_iter().enumerate() {
        let reply = hog.call(op::MULTI_READ, &multi_read("/big", n)).await.with_context(|| format!("round {round}"))?;
        ensure!(
            reply.err == err::BAD_ARGUMENTS,
            "round {round}: a {n}-op multiRead of a 1 MB znode was answered {}",
            reply.err
        );
        peak = peak.max(server.rss_kib()?);
        ensure!(server.is_running(), "the server died");
    }
    // The connection goes on: a multiRead that fits is answered.
    let fits = hog.call(op::MULTI_READ, &multi_read("/big", 1)).await?;
    fits.ok()?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = within("the second client", other).await???;
    peak = peak.max(server.rss_kib()?);
    println!(
        "RSS before {rss_before} KiB, peak {peak} KiB; the second client did {rounds} write+read rounds meanwhile"
    );
    ensure!(peak < 100 * 1024, "the server's RSS reached {peak} KiB (limit 100 MiB); before: {rss_before} KiB");
    let log = server.log();
    ensure!(log.contains("max_packet_bytes"), "no log line names the limit:\n{log}");
    Ok(())
}

/// A multi is answered by what happened to it: an applied multi with a definite error would
/// tell its client nothing changed, and a retry would apply it twice. One of 40,000 setData
/// (960 KB, within `max_packet_bytes`) would have a 3 MB reply (a Stat per op): it is either
/// answered as applied or refused with nothing applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_answered_with_an_error_applied_nothing() -> Result<()> {
    let server = TestServer::start().await?;
    let mut raw = Raw::connect(server.addr, 20_000).await?;
    raw.call(op::CREATE, &body::create("/m", b"", 0)).await?.ok()?;
    let ops: Vec<(i32, Vec<u8>)> = (0..40_000).map(|_| (op::SET_DATA, body::set_data("/m", b"", -1))).collect();
    let request = body::multi(&ops);
    ensure!(request.len() + 8 < 0xfffff, "the request ({} bytes) must fit max_packet_bytes", request.len() + 8);
    let xid = raw.send(op::MULTI, &request).await?;
    let answer = within_for(Duration::from_secs(30), "the multi's answer", raw.reply_to(xid)).await?;
    // A reply could not have been read anyway (it would pass the client's own packet limit):
    // the connection closing is an answer too, "outcome unknown".
    let answered = match answer {
        Ok((r, _)) => Some(r.err),
        Err(e) => {
            println!("the multi's connection ended: {e:#}");
            None
        }
    };
    let mut check = Raw::connect(server.addr, 10_000).await?;
    let version = check.call(op::EXISTS, &body::path_watch("/m", false)).await?.rd().stat()?.version;
    if let Some(err) = answered {
        ensure!(err == 0 || version == 0, "the multi was answered {err} but applied ({version} versions of /m)");
    }
    server.stop().await
}

/// A multi whose reply could pass `max_packet_bytes` (each result's largest size counted from
/// its op before anything is proposed) is refused with BadArguments and applies nothing: the
/// tree and its zxid are as they were. One op fewer fits and is applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_whose_reply_would_pass_max_packet_bytes_is_refused_before_it_is_proposed() -> Result<()> {
    common::capture_server_logs("referee_coordinator=info");
    const MAX_PACKET: usize = 16 * 1024;
    let server = TestServer::start_with(|c| {
        c.max_packet_bytes = MAX_PACKET;
        c.max_outstanding_request_bytes = MAX_PACKET;
    })
    .await?;
    let mut raw = Raw::connect(server.addr, 10_000).await?;
    raw.call(op::CREATE, &body::create("/m", b"", 0)).await?.ok()?;
    // A reply header (16), a setData result per op (a 9-byte result header and a 68-byte Stat),
    // the 9-byte terminator.
    let fitting = (MAX_PACKET - 16 - 9) / 77;
    let set_data = |n: usize| -> Vec<u8> {
        let ops: Vec<(i32, Vec<u8>)> = (0..n).map(|_| (op::SET_DATA, body::set_data("/m", b"", -1))).collect();
        body::multi(&ops)
    };
    // Containers (a multi answers them with their Stat): 9 + 4 + 8 + 68 bytes each.
    let containers = |n: usize| -> Vec<u8> {
        let ops: Vec<(i32, Vec<u8>)> =
            (0..n).map(|i| (op::CREATE, body::create(&format!("/m/c{i:04}"), b"", 4))).collect();
        body::multi(&ops)
    };
    let fitting_containers = (MAX_PACKET - 16 - 9) / (9 + 4 + 8 + 68);
    let before = server.last_zxid();
    for (what, request) in
        [("setData", set_data(fitting + 1)), ("container create", containers(fitting_containers + 1))]
    {
        let r = raw.call(op::MULTI, &request).await?;
        ensure!(r.err == err::BAD_ARGUMENTS, "a multi of {what} one op past the bound was answered {}", r.err);
    }
    ensure!(server.last_zxid() == before, "a refused multi took a zxid: {before} then {}", server.last_zxid());
    let stat = raw.call(op::GET_CHILDREN2, &body::path_watch("/m", false)).await?;
    let mut rd = stat.rd();
    ensure!(rd.strings()?.is_empty(), "a refused multi created nodes");
    ensure!(rd.stat()?.version == 0, "a refused multi set data");

    // At the bound both are applied, and answered in full.
    let r = raw.call(op::MULTI, &set_data(fitting)).await?;
    ensure!(r.err == 0, "a multi of {fitting} setData, whose reply fits, was answered {}", r.err);
    ensure!(r.body.len() == 77 * fitting + 9, "the reply's body is {} bytes", r.body.len());
    let r = raw.call(op::MULTI, &containers(fitting_containers)).await?;
    ensure!(r.err == 0, "a multi of {fitting_containers} container creates, whose reply fits, was answered {}", r.err);
    ensure!(r.body.len() == 89 * fitting_containers + 9, "the reply's body is {} bytes", r.body.len());
    server.stop().await
}

/// A client that sends and does not read is throttled at its own socket: once
/// `max_outstanding_requests` of its requests wait for replies the server stops reading from
/// it, and when it reads again every reply arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_too_many_outstanding_requests_is_not_read() -> Result<()> {
    const LIMIT: usize = 8;
    let server = TestServer::start_with(|c| c.max_outstanding_requests = LIMIT).await?;
    let mut setup = Raw::connect(server.addr, 10_000).await?;
    setup.call(op::CREATE, &body::create("/wide", &vec![b'w'; 500_000], 0)).await?.ok()?;

    // A small receive buffer, so the server's writer blocks after a few 500 KB replies.
    let sock = TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(4096)?;
    let stream = within("connect", sock.connect(server.addr)).await??;
    let mut flooder = Raw::from_stream(stream)?;
    flooder.handshake(&common::raw::ConnectRequest::new_session(10_000)).await?;
    let session = flooder.session_id;
    const SENT: usize = 400;
    let mut xids = Vec::new();
    for _ in 0..SENT {
        xids.push(flooder.send(op::GET_DATA, &body::path_watch("/wide", false)).await?);
    }
    let stats = |server: &TestServer| {
        let st = server.state.lock().unwrap();
        st.conns.values().find(|c| c.session.0 == session).map(|c| (c.stats.throttled, c.stats.received))
    };
    wait_until(DEADLINE, "the server to stop reading the flooding connection", || {
        stats(&server).is_some_and(|(throttled, _)| throttled)
    })
    .await?;
    let (_, received) = stats(&server).context("the connection is gone")?;
    ensure!(received < 100, "the server had read {received} of {SENT} requests when it stopped reading");
    // mntr reports the waiting requests.
    let outstanding = common::child::mntr(server.addr, "zk_outstanding_requests").await?;
    ensure!(outstanding as usize >= LIMIT, "mntr's zk_outstanding_requests is {outstanding} while throttled");
    // Others are served meanwhile.
    setup.call(op::SET_DATA, &body::set_data("/wide", b"small", -1)).await?.ok()?;
    // Reading again: every reply, in order.
    for (i, x) in xids.into_iter().enumerate() {
        let (r, _) = within_for(Duration::from_secs(30), "a reply", flooder.reply_to(x)).await??;
        ensure!(r.err == 0, "reply {i}: err {}", r.err);
    }
    server.stop().await
}

/// A client that sends large requests and reads no replies holds at most
/// `max_outstanding_request_bytes` of them in the server: past it the server stops reading from
/// that connection, long before `max_outstanding_requests` would, and serves others meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_requests_waiting_for_replies_are_bounded_in_bytes() -> Result<()> {
    let server = TestServer::start_with(|c| c.max_outstanding_request_bytes = 2 * 1024 * 1024).await?;
    let mut setup = Raw::connect(server.addr, 10_000).await?;
    setup.call(op::CREATE, &body::create("/wide", &vec![b'w'; 500_000], 0)).await?.ok()?;

    let sock = TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(4096)?;
    let stream = within("connect", sock.connect(server.addr)).await??;
    let mut flooder = Raw::from_stream(stream)?;
    flooder.handshake(&common::raw::ConnectRequest::new_session(10_000)).await?;
    let session = flooder.session_id;
    // Each request is about 525 KB (one getData of the 500 KB node and 25,000 of a missing one)
    // and its reply about 825 KB, within max_packet_bytes.
    let mut ops = vec![(op::GET_DATA, body::path_watch("/wide", false))];
    ops.extend((0..25_000).map(|_| (op::GET_DATA, body::path_watch("/absent", false))));
    let request = body::multi(&ops);
    const SENT: usize = 60;
    let stats = |server: &TestServer| {
        let st = server.state.lock().unwrap();
        st.conns.values().find(|c| c.session.0 == session).map(|c| (c.stats.throttled, c.stats.received))
    };
    let sending = async {
        for _ in 0..SENT {
            flooder.send(op::MULTI_READ, &request).await?;
        }
        Ok::<_, anyhow::Error>(())
    };
    let throttled =
        wait_until(DEADLINE, "the server to stop reading", || stats(&server).is_some_and(|(throttled, _)| throttled));
    tokio::select! {
        sent = sending => {
            sent?;
            bail!("the server read all {SENT} requests ({} MB) without stopping", SENT * request.len() / 1_000_000);
        }
        waited = throttled => waited?,
    }
    let (_, received) = stats(&server).context("the connection is gone")?;
    ensure!(received < 30, "the server had read {received} of the {SENT} large requests when it stopped reading");
    setup.call(op::SET_DATA, &body::set_data("/wide", b"small", -1)).await?.ok()?;
    server.stop().await
}

/// A client that never reads while its watches fire is disconnected once the notifications
/// waiting for it pass `max_queued_outbound_bytes`; the server and other clients carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_its_notifications_is_disconnected() -> Result<()> {
    let server = TestServer::start_with(|c| c.max_queued_outbound_bytes = 64 * 1024).await?;
    let mut writer = Raw::connect(server.addr, 10_000).await?;
    writer.call(op::CREATE, &body::create("/flood", b"", 0)).await?.ok()?;

    let sock = TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(4096)?;
    let stream = within("connect", sock.connect(server.addr)).await??;
    let mut deaf = Raw::from_stream(stream)?;
    deaf.handshake(&common::raw::ConnectRequest::new_session(30_000)).await?;
    deaf.call(op::ADD_WATCH, &Jute::new().string("/flood").int(1).into_vec()).await?.ok()?;
    let deaf_session = deaf.session_id;
    let connected =
        |server: &TestServer| server.state.lock().unwrap().conns.values().any(|c| c.session.0 == deaf_session);

    // Each create fires a ~3 KB NodeCreated at the deaf client; it reads none of them.
    let name = "n".repeat(3000);
    let mut created = 0;
    while connected(&server) {
        created += 1;
        if created > 20_000 {
            bail!("still connected after {created} notifications");
        }
        let x = writer.send(op::CREATE, &body::create(&format!("/flood/{name}{created}"), b"", 0)).await?;
        writer.reply_to(x).await?.0.ok()?;
    }
    println!("the deaf client was disconnected after {created} notifications");
    // Its session is not closed by this (the client may reconnect and re-register).
    ensure!(server.session_ids().contains(&deaf_session), "the session went with the connection");
    writer.call(op::EXISTS, &body::path_watch("/flood", false)).await?.ok()?;
    server.stop().await
}

/// A connection holds at most `max_watches_per_connection` watches: the read that would leave
/// one more is answered QuotaExceeded and registers nothing; watches it already holds, and
/// room made by a fired watch, are fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_per_connection_are_limited() -> Result<()> {
    let server = TestServer::start_with(|c| c.max_watches_per_connection = 3).await?;
    let mut c = Raw::connect(server.addr, 10_000).await?;
    for p in ["/a", "/b", "/c", "/d"] {
        c.call(op::CREATE, &body::create(p, b"", 0)).await?.ok()?;
    }
    for p in ["/a", "/b", "/c"] {
        c.call(op::GET_DATA, &body::path_watch(p, true)).await?.ok()?;
    }
    let watches = |server: &TestServer| server.state.lock().unwrap().watches.watch_count();
    assert_eq!(watches(&server), 3);
    let r = c.call(op::GET_DATA, &body::path_watch("/d", true)).await?;
    ensure!(r.err == QUOTA_EXCEEDED, "a fourth watch was answered {}", r.err);
    let r = c.call(op::EXISTS, &body::path_watch("/nonexistent", true)).await?;
    ensure!(r.err == QUOTA_EXCEEDED, "a fourth exists watch was answered {}", r.err);
    let r = c.call(op::GET_CHILDREN, &body::path_watch("/", true)).await?;
    ensure!(r.err == QUOTA_EXCEEDED, "a fourth child watch was answered {}", r.err);
    let r = c.call(op::ADD_WATCH, &Jute::new().string("/").int(1).into_vec()).await?;
    ensure!(r.err == QUOTA_EXCEEDED, "a fourth persistent watch was answered {}", r.err);
    // SetWatches, whose answer clients do not read, sends an event for the watch it cannot
    // keep instead (see `set_watches_past_the_watch_limit_leaves_no_watch_silently_unset`).
    let (r, notes) =
        c.call_collect(op::SET_WATCHES, &body::set_watches(server.last_zxid(), &["/d"], &[], &[], None)).await?;
    r.ok()?;
    let notes: Vec<(i32, &str)> = notes.iter().map(|n| (n.kind, n.path.as_str())).collect();
    assert_eq!(notes, vec![(ev::NODE_DATA_CHANGED, "/d")]);
    assert_eq!(watches(&server), 3, "refused reads registered nothing");
    // Reads without a watch, and a watch the connection already holds, go on.
    c.call(op::GET_DATA, &body::path_watch("/d", false)).await?.ok()?;
    c.call(op::GET_DATA, &body::path_watch("/a", true)).await?.ok()?;
    // A fired watch makes room.
    let (r, notes) = c.call_collect(op::SET_DATA, &body::set_data("/a", b"1", -1)).await?;
    r.ok()?;
    ensure!(notes.len() == 1, "expected the /a notification before the reply: {notes:?}");
    c.call(op::GET_DATA, &body::path_watch("/d", true)).await?.ok()?;
    assert_eq!(watches(&server), 3);
    // Another connection has its own allowance.
    let mut other = Raw::connect(server.addr, 10_000).await?;
    other.call(op::GET_DATA, &body::path_watch("/a", true)).await?.ok()?;
    assert_eq!(watches(&server), 4);
    server.stop().await
}

/// Paths longer than `max_path_bytes` are refused with BadArguments before anything is stored
/// (reads used to keep paths of up to 1 MB in the watch registry), and watches are never
/// registered on invalid paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_and_invalid_paths_leave_nothing_behind() -> Result<()> {
    let server = TestServer::start().await?;
    let mut c = Raw::connect(server.addr, 10_000).await?;
    let long = format!("/{}", "p".repeat(5000));
    let fits = format!("/{}", "p".repeat(4000));
    let watches = |server: &TestServer| server.state.lock().unwrap().watches.watch_count();
    for (opcode, b) in [
        (op::GET_DATA, body::path_watch(&long, true)),
        (op::EXISTS, body::path_watch(&long, true)),
        (op::GET_CHILDREN, body::path_watch(&long, true)),
        (op::CREATE, body::create(&long, b"", 0)),
    ] {
        let r = c.call(opcode, &b).await?;
        ensure!(r.err == err::BAD_ARGUMENTS, "opcode {opcode} with a 5001-byte path was answered {}", r.err);
    }
    let r = c.call(op::MULTI_READ, &multi_read(&long, 1)).await?;
    ensure!(r.err == err::BAD_ARGUMENTS, "multiRead with a 5001-byte path was answered {}", r.err);
    assert_eq!(watches(&server), 0);
    // Within the limit all is as before.
    c.call(op::CREATE, &body::create(&fits, b"", 0)).await?.ok()?;
    c.call(op::GET_DATA, &body::path_watch(&fits, true)).await?.ok()?;
    assert_eq!(watches(&server), 1);
    // An invalid path names no node (NoNode, as Apache ZooKeeper answers) and leaves no watch:
    // none could ever fire.
    for bad in ["/a/", "/a//b", "/a/./b", "relative"] {
        let r = c.call(op::EXISTS, &body::path_watch(bad, true)).await?;
        ensure!(r.err == err::NO_NODE, "exists({bad:?}) was answered {}", r.err);
    }
    assert_eq!(watches(&server), 1);
    server.stop().await
}

/// A SetWatches naming a path longer than `max_path_bytes` (set on a server whose limit was
/// higher, then resumed after the limit was lowered, or on another server of an ensemble whose
/// members differ) leaves no watch silently unset: the others are registered as usual, each
/// one-shot watch on a path past the limit is sent the event of a change, so its client reads
/// again and hears BadArguments where it sees it, and a persistent watch on one, which no event
/// could stand for, closes the connection. (It answered the whole SetWatches BadArguments,
/// which clients never read, and kept none of its watches.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_watches_naming_a_path_past_max_path_bytes_leaves_no_watch_silently_unset() -> Result<()> {
    let server = TestServer::start_with(|c| c.max_path_bytes = 128).await?;
    let mut c = Raw::connect(server.addr, 10_000).await?;
    for p in ["/short", "/kid"] {
        c.call(op::CREATE, &body::create(p, b"", 0)).await?.ok()?;
    }
    let seen = server.last_zxid();
    let long = format!("/{}", "l".repeat(200));
    let mut a = Raw::connect(server.addr, 10_000).await?;
    let sw = body::set_watches(seen, &["/short", long.as_str()], &[long.as_str()], &["/kid"], None);
    a.send_frame(&common::raw::request(xid::SET_WATCHES, op::SET_WATCHES, &sw)).await?;
    let (r, notes) = a.reply_to(xid::SET_WATCHES).await?;
    ensure!(r.err == 0, "a SetWatches naming a path past max_path_bytes was answered {}", r.err);
    let notes: Vec<(i32, String)> = notes.into_iter().map(|n| (n.kind, n.path)).collect();
    assert_eq!(
        notes,
        vec![(ev::NODE_DELETED, long.clone()), (ev::NODE_CREATED, long.clone())],
        "the data watch on a node that is not there ends as any does; the exist watch, left over, is sent an event"
    );
    let r = a.call(op::EXISTS, &body::path_watch(&long, true)).await?;
    ensure!(r.err == err::BAD_ARGUMENTS, "setting the long watch anew was answered {}", r.err);
    // The watches within the limit were kept, and fire.
    c.call(op::SET_DATA, &body::set_data("/short", b"1", -1)).await?.ok()?;
    let n = a.notification().await?;
    assert_eq!((n.kind, n.path.as_str()), (ev::NODE_DATA_CHANGED, "/short"));
    c.call(op::CREATE, &body::create("/kid/a", b"", 0)).await?.ok()?;
    let n = a.notification().await?;
    assert_eq!((n.kind, n.path.as_str()), (ev::NODE_CHILDREN_CHANGED, "/kid"));

    // A persistent watch on a path past the limit: nothing could tell the client, so it is cut off.
    let mut b = Raw::connect(server.addr, 10_000).await?;
    let sw = body::set_watches(seen, &["/short"], &[], &[], Some((&[long.as_str()], &[])));
    b.send_frame(&common::raw::request(xid::SET_WATCHES, op::SET_WATCHES2, &sw)).await?;
    let sent = b.expect_closed().await?;
    ensure!(sent.is_empty(), "the connection was closed after {} frames, not at once", sent.len());
    server.stop().await
}

/// A SetWatches that would pass `max_watches_per_connection` (a client moving from a server
/// with a higher limit) leaves no watch silently unset, as clients send it without looking at
/// the answer: every notification owed for a change the client missed is sent; persistent
/// watches are registered first, then one-shot watches up to the limit; and each one-shot
/// watch left over is sent the event of a change, so its client reads again and hears
/// QuotaExceeded when it sets the watch anew. No event can tell a client that a persistent
/// watch is gone, so one whose persistent watches alone pass the limit is disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_watches_past_the_watch_limit_leaves_no_watch_silently_unset() -> Result<()> {
    let server = TestServer::start_with(|c| c.max_watches_per_connection = 3).await?;
    let mut c = Raw::connect(server.addr, 10_000).await?;
    for p in ["/a", "/b", "/c", "/d", "/gone"] {
        c.call(op::CREATE, &body::create(p, b"", 0)).await?.ok()?;
    }
    let seen = server.last_zxid();
    c.call(op::DELETE, &Jute::new().string("/gone").int(-1).into_vec()).await?.ok()?;

    let mut a = Raw::connect(server.addr, 10_000).await?;
    let sw = body::set_watches(seen, &["/a", "/b", "/c", "/gone"], &["/e"], &["/d"], Some((&["/p"], &[])));
    a.send_frame(&common::raw::request(xid::SET_WATCHES, op::SET_WATCHES2, &sw)).await?;
    let (r, notes) = a.reply_to(xid::SET_WATCHES).await?;
    ensure!(r.err == 0, "SetWatches past the limit was answered {}", r.err);
    let notes: Vec<(i32, String)> = notes.into_iter().map(|n| (n.kind, n.path)).collect();
    assert_eq!(
        notes,
        vec![
            (ev::NODE_DELETED, "/gone".to_string()),
            (ev::NODE_DATA_CHANGED, "/c".to_string()),
            (ev::NODE_CREATED, "/e".to_string()),
            (ev::NODE_CHILDREN_CHANGED, "/d".to_string()),
        ],
        "the change missed, then an event for each watch left over"
    );
    let watches = |server: &TestServer| server.state.lock().unwrap().watches.watch_count();
    assert_eq!(watches(&server), 3, "/p, /a and /b");
    // Setting a left-over watch again is refused where the client sees it.
    let r = a.call(op::GET_DATA, &body::path_watch("/c", true)).await?;
    ensure!(r.err == QUOTA_EXCEEDED, "re-setting a watch past the limit was answered {}", r.err);
    // The registered ones fire.
    c.call(op::SET_DATA, &body::set_data("/a", b"1", -1)).await?.ok()?;
    let n = a.notification().await?;
    assert_eq!((n.kind, n.path.as_str()), (ev::NODE_DATA_CHANGED, "/a"));
    c.call(op::CREATE, &body::create("/p", b"", 0)).await?.ok()?;
    let n = a.notification().await?;
    assert_eq!((n.kind, n.path.as_str()), (ev::NODE_CREATED, "/p"));

    // Persistent watches alone past the limit: nothing could tell the client, so it is cut off.
    let mut b = Raw::connect(server.addr, 10_000).await?;
    let sw = body::set_watches(seen, &[], &[], &[], Some((&["/p1", "/p2"], &["/r1", "/r2"])));
    b.send_frame(&common::raw::request(xid::SET_WATCHES, op::SET_WATCHES2, &sw)).await?;
    let sent = b.expect_closed().await?;
    ensure!(sent.is_empty(), "the connection was closed after {} frames, not at once", sent.len());
    assert_eq!(watches(&server), 2, "/p and /b are left (/a fired), nothing of the closed connection's");
    server.stop().await
}
