//! Sessions: timeout negotiation, pings, expiry with ephemeral cleanup, resumption,
//! closeSession, session moves, and refusal of expired sessions and of clients ahead of the
//! server.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use common::raw::{body, op, xid, ConnectRequest, Raw};
use common::*;
use referee_testkit::{connect, wait_until, within_for, TestServer};
use zookeeper_client as zk;

/// Reads the ConnectResponse ZooKeeper gives an expired or unknown session: timeout 0, session
/// 0, 16 zero bytes of password; then the connection must close.
async fn expect_expired_answer(addr: std::net::SocketAddr, session_id: i64, passwd: &[u8]) -> Result<()> {
    let mut raw = Raw::tcp(addr).await?;
    let resp = raw.handshake(&ConnectRequest::resume(session_id, passwd, 5000)).await?;
    ensure!(
        (resp.protocol_version, resp.timeout_ms, resp.session_id, resp.passwd.as_slice()) == (0, 0, 0, &[0u8; 16][..]),
        "expected the expired-session answer, got {resp:?}"
    );
    let rest = raw.expect_closed().await?;
    ensure!(rest.is_empty(), "the server sent {} frames after refusing the session", rest.len());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn negotiated_timeout_is_clamped_to_the_configured_range() -> Result<()> {
    let server = TestServer::start().await?;
    for (asked, granted) in [(50, 200), (-5, 200), (200, 200), (5000, 5000), (100_000, 30_000), (i32::MAX, 30_000)] {
        let mut raw = Raw::tcp(server.addr).await?;
        let resp = raw.handshake(&ConnectRequest::new_session(asked)).await?;
        assert_eq!(resp.timeout_ms, granted, "asked for {asked} ms");
        assert_eq!((resp.protocol_version, resp.passwd.len()), (0, 16));
        assert!(resp.session_id > 0, "session ids are positive: {resp:?}");
    }
    let c = connect(&server.connect_string(), Duration::from_millis(50)).await?;
    assert_eq!(c.session_timeout(), Duration::from_millis(200), "zookeeper-client sees the clamped timeout");
    drop(c);
    server.stop().await
}

/// A ping (xid -2, opcode 11) is answered with xid -2, the server's last zxid and no body, and
/// keeps its session alive past the timeout that expires a silent twin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_keep_a_session_alive_and_silence_expires_it() -> Result<()> {
    let server = TestServer::start().await?;
    let observer = server.client().await?;
    // The pinger's deadline comes first: without pings it would expire before the silent one.
    let mut pinger = Raw::connect(server.addr, 400).await?;
    let mut silent = Raw::connect(server.addr, 400).await?;
    pinger.call(op::CREATE, &body::create("/pinger", b"", 1)).await?.ok()?;
    silent.call(op::CREATE, &body::create("/silent", b"", 1)).await?.ok()?;
    let last_contact = Instant::now();
    let (_, _, w) = observer.get_and_watch_data("/silent").await?;
    let deleted = w.changed();
    tokio::pin!(deleted);

    let mut pings = 0;
    let ev = within_for(Duration::from_secs(5), "the silent session to expire", async {
        loop {
            tokio::select! {
                ev = &mut deleted => return Ok::<_, anyhow::Error>(ev),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    // The ping answers with the last zxid when it is answered: between the one
                    // before it was sent and the one after its reply (the silent session's
                    // expiry may land in between).
                    let before = server.last_zxid();
                    pinger.send_frame(&common::raw::request(xid::PING, op::PING, &[])).await?;
                    let f = pinger.read_frame().await?.ok_or_else(|| anyhow::anyhow!("pinger closed"))?;
                    let after = server.last_zxid();
                    ensure!(f.len() == 16, "ping reply is a bare 16-byte header, got {} bytes", f.len());
                    let r = common::raw::parse_packet(&f)?;
                    let common::raw::Packet::Reply(r) = r else { anyhow::bail!("expected the ping reply, got {r:?}") };
                    ensure!((r.xid, r.err) == (xid::PING, 0), "ping reply {r:?}");
                    ensure!(
                        (before..=after).contains(&r.zxid),
                        "ping reply zxid {} outside the server's last zxid before ({before}) and after ({after})",
                        r.zxid
                    );
                    pings += 1;
                }
            }
        }
    })
    .await??;
    let elapsed = last_contact.elapsed();
    let root_pzxid = observer.check_stat("/").await?.unwrap().pzxid;
    assert_eq!(ev, event(zk::EventType::NodeDeleted, "/silent", root_pzxid));
    assert!(elapsed >= Duration::from_millis(350), "expired after {elapsed:?}, before its 400 ms timeout");
    assert!(pings >= 3, "the pinger pinged {pings} times");

    let p = observer.check_stat("/pinger").await?.expect("the pinging session's ephemeral is still there");
    assert_eq!(p.ephemeral_owner, pinger.session_id);
    assert!(server.session_ids().contains(&pinger.session_id));
    assert!(!server.session_ids().contains(&silent.session_id));
    // The expired session's connection is closed by the server, with nothing sent first.
    let frames = silent.expect_closed().await?;
    assert!(frames.is_empty(), "expired connection got {} frames", frames.len());
    pinger.call(op::EXISTS, &body::path_watch("/pinger", false)).await?.ok()?;
    drop(observer);
    server.stop().await
}

/// The scenario with zookeeper-client: a session whose client stops pinging loses its
/// ephemerals after the timeout, their watchers get NodeDeleted, and reconnecting with the
/// expired session id gives SessionExpired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_session_loses_ephemerals_and_cannot_reconnect() -> Result<()> {
    let server = TestServer::start().await?;
    let observer = server.client().await?;
    let a = within(
        "connect",
        zk::Client::connector()
            .with_session_timeout(Duration::from_millis(1000))
            .with_detached()
            .connect(&server.connect_string()),
    )
    .await??;
    let timeout = a.session_timeout();
    assert_eq!(timeout, Duration::from_millis(1000));
    let id = a.session_id().0;
    a.create("/exp", b"", PERSISTENT).await?;
    a.create("/exp/e1", b"", EPHEMERAL).await?;
    let (_, seq) = a.create("/exp/s-", b"", EPHEMERAL_SEQ).await?;
    let seq_path = format!("/exp/s-{seq}");
    let (_, _, data_w) = observer.get_and_watch_data("/exp/e1").await?;
    let (_, seq_w) = observer.check_and_watch_stat(&seq_path).await?;
    let (_, _, child_w) = observer.get_and_watch_children("/exp").await?;

    // Detached: dropping the client closes the connection without closeSession.
    let session = a.into_session();
    let dropped = Instant::now();
    let ev = within_for(Duration::from_secs(5), "expiry", data_w.changed()).await?;
    let elapsed = dropped.elapsed();
    let pzxid = observer.check_stat("/exp").await?.unwrap().pzxid;
    assert_eq!(ev, event(zk::EventType::NodeDeleted, "/exp/e1", pzxid));
    assert_eq!(
        oneshot_event("sequential ephemeral", seq_w).await?,
        event(zk::EventType::NodeDeleted, &seq_path, pzxid)
    );
    assert_eq!(oneshot_event("child watch", child_w).await?, event(zk::EventType::NodeChildrenChanged, "/exp", pzxid));
    // The client pings after 3/20 of the timeout idle, so its last contact is at most that old.
    assert!(elapsed >= timeout * 8 / 10, "expired {elapsed:?} after the client went away, timeout {timeout:?}");
    assert_eq!(observer.list_children("/exp").await?, Vec::<String>::new());
    assert!(!server.session_ids().contains(&id));

    let addr = server.connect_string();
    let again = zk::Client::connector().with_session(session).connect(&addr);
    assert_eq!(within("reconnect", again).await?.unwrap_err(), zk::Error::SessionExpired);
    drop(observer);
    server.stop().await
}

/// A detached session can be resumed by id and password while it lives, keeping its
/// ephemerals; a wrong password gets the expired answer without harming the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_session_keeps_its_ephemerals() -> Result<()> {
    let server = TestServer::start().await?;
    let a = within(
        "connect",
        zk::Client::connector()
            .with_detached()
            .with_session_timeout(Duration::from_secs(6))
            .connect(&server.connect_string()),
    )
    .await??;
    let id = a.session_id();
    let (e, _) = a.create("/mine", b"", EPHEMERAL).await?;
    let session = a.into_session();

    let mut wrong = Raw::tcp(server.addr).await?;
    let resp = wrong.handshake(&ConnectRequest::resume(id.0, &[7; 16], 6000)).await?;
    assert_eq!((resp.session_id, resp.timeout_ms, resp.passwd), (0, 0, vec![0; 16]), "wrong password");
    assert!(wrong.expect_closed().await?.is_empty());

    let b = within("resume", zk::Client::connector().with_session(session).connect(&server.connect_string())).await??;
    assert_eq!(b.session_id(), id);
    assert_eq!(b.check_stat("/mine").await?, Some(e));
    assert_eq!(b.list_ephemerals("/").await?, vec!["/mine"]);
    b.delete("/mine", None).await?;
    assert_eq!(b.list_ephemerals("/").await?, Vec::<String>::new());
    drop(b);
    server.stop().await
}

/// closeSession (-11) on the wire: the reply (same xid, err 0, no body) comes before the server
/// closes the connection; the ephemerals are gone and the session cannot be resumed. Requests
/// pipelined behind it get no reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_session_is_answered_then_the_connection_closes() -> Result<()> {
    let server = TestServer::start().await?;
    let observer = server.client().await?;
    let mut raw = Raw::connect(server.addr, 5000).await?;
    raw.call(op::CREATE, &body::create("/bye", b"", 1)).await?.ok()?;
    let (_, _, w) = observer.get_and_watch_data("/bye").await?;

    let close_xid = raw.send(op::CLOSE_SESSION, &[]).await?;
    raw.send(op::EXISTS, &body::path_watch("/", false)).await?;
    let frames = raw.expect_closed().await?;
    let ev = oneshot_event("NodeDeleted after closeSession", w).await?;
    let pzxid = observer.check_stat("/").await?.unwrap().pzxid;
    assert_eq!(ev, event(zk::EventType::NodeDeleted, "/bye", pzxid));
    assert!(!server.session_ids().contains(&raw.session_id));
    expect_expired_answer(server.addr, raw.session_id, &raw.passwd).await?;

    let replies: Vec<_> = frames.iter().map(|f| common::raw::parse_packet(f)).collect::<Result<_>>()?;
    assert_eq!(
        replies,
        vec![common::raw::Packet::Reply(common::raw::Reply { xid: close_xid, zxid: pzxid, err: 0, body: vec![] })],
        "exactly the closeSession reply, then close"
    );
    drop(observer);
    server.stop().await
}

/// A second connection resuming a session takes it over: the first connection is closed, the
/// session and its ephemerals live on through the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_connection_takes_the_session_over() -> Result<()> {
    let server = TestServer::start().await?;
    let mut first = Raw::connect(server.addr, 5000).await?;
    first.call(op::CREATE, &body::create("/moved", b"", 1)).await?.ok()?;
    let mut second = Raw::resume(server.addr, first.session_id, &first.passwd.clone(), 5000).await?;
    assert_eq!(second.timeout_ms, 5000);
    assert!(first.expect_closed().await?.is_empty(), "the old connection is closed without replies");
    let r = second.call(op::EXISTS, &body::path_watch("/moved", false)).await?;
    assert_eq!(r.rd().stat()?.ephemeral_owner, first.session_id);
    assert!(server.session_ids().contains(&first.session_id));
    server.stop().await
}

/// A resumed session keeps the timeout it was created with, whatever the reconnecting client
/// asks for: the ConnectResponse grants it again, and the session expires by it. (Apache
/// ZooKeeper renegotiates it with the server reconnected to; a lease computed from the first
/// grant, as the failover agent's is, would then no longer bound the session's life.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_keeps_the_timeout_it_was_created_with() -> Result<()> {
    let server = TestServer::start().await?;
    let first = Raw::connect(server.addr, 1000).await?;
    assert_eq!(first.timeout_ms, 1000);
    let (id, passwd) = (first.session_id, first.passwd.clone());
    for asked in [20_000, 200] {
        let again = Raw::resume(server.addr, id, &passwd, asked).await?;
        assert_eq!(again.timeout_ms, 1000, "resumed asking for {asked} ms");
    }
    let mut last = Raw::resume(server.addr, id, &passwd, 20_000).await?;
    last.call(op::CREATE, &body::create("/kept-timeout", b"", 1)).await?.ok()?;
    drop((first, last));
    // Expired by the 1 s it was created with (with room for a loaded machine), long before the
    // 20 s the last connection asked for.
    wait_until(Duration::from_secs(8), "the session expired by its first timeout", || {
        !server.session_ids().contains(&id)
    })
    .await?;
    server.stop().await
}

/// A client that has seen a zxid ahead of this server must try another server: the connection
/// is closed without a ConnectResponse and without creating or touching a session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ahead_of_the_server_is_turned_away() -> Result<()> {
    let server = TestServer::start().await?;
    let mut known = Raw::connect(server.addr, 5000).await?;
    known.call(op::CREATE, &body::create("/known", b"", 1)).await?.ok()?;
    let sessions = server.session_ids();

    let mut ahead = Raw::tcp(server.addr).await?;
    let mut req = ConnectRequest::new_session(5000);
    req.last_zxid_seen = server.last_zxid() + 1000;
    ahead.send_frame(&req.encode()).await?;
    assert!(ahead.expect_closed().await?.is_empty(), "no ConnectResponse for a client ahead of the server");
    assert_eq!(server.session_ids(), sessions, "no session was created");

    // Resuming an existing session while ahead is refused the same way; the session survives.
    let mut ahead = Raw::tcp(server.addr).await?;
    let mut req = ConnectRequest::resume(known.session_id, &known.passwd, 5000);
    req.last_zxid_seen = server.last_zxid() + 1;
    ahead.send_frame(&req.encode()).await?;
    assert!(ahead.expect_closed().await?.is_empty());
    let r = known.call(op::EXISTS, &body::path_watch("/known", false)).await?;
    assert_eq!((r.err, r.rd().stat()?.ephemeral_owner), (0, known.session_id));

    // Exactly the last zxid is fine.
    let mut req = ConnectRequest::new_session(5000);
    req.last_zxid_seen = server.last_zxid();
    let mut ok = Raw::tcp(server.addr).await?;
    assert!(ok.handshake(&req).await?.session_id > 0);
    server.stop().await
}

/// A connected but silent client: at expiry the server closes its connection, and the session
/// id is answered as expired afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed_at_expiry() -> Result<()> {
    let server = TestServer::start().await?;
    let mut raw = Raw::connect(server.addr, 300).await?;
    let (id, passwd) = (raw.session_id, raw.passwd.clone());
    // Silent: wait for the server to close the connection at expiry.
    within_for(Duration::from_secs(5), "expiry closes the connection", raw.expect_closed()).await??;
    wait_until(DEADLINE, "the session to leave the tree", || !server.session_ids().contains(&id)).await?;
    expect_expired_answer(server.addr, id, &passwd).await?;
    server.stop().await
}
