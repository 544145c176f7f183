//! Nothing a client sends can panic the server or break other clients: random and truncated
//! frames, valid headers with garbage bodies for every opcode, bad lengths and garbage
//! handshakes, thrown at a live server across many connections while a normal
//! zookeeper-client session keeps working.
//!
//! The fuzz is seeded (`REFEREE_FUZZ_SEED=<u64>` replays a run; the seed is printed).

mod common;

use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use common::raw::{body, err, ev, frame, op, parse_packet, request, xid, ConnectRequest, Jute, Packet, Raw};
use common::*;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use referee_testkit::{wait_until, within_for, TestServer};
use zookeeper_client as zk;

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Records every panic in the process: the server runs in-process, and a panic in one of its
/// connection tasks would otherwise be swallowed by its task set.
fn record_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.lock().unwrap_or_else(|p| p.into_inner()).push(info.to_string());
            prev(info);
        }));
    });
}

fn panics() -> Vec<String> {
    PANICS.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

const OPCODES: [i32; 34] = [
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    11,
    12,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    100,
    101,
    102,
    103,
    104,
    105,
    106,
    107,
    -11,
    0,
    55,
    -10,
    i32::MIN,
];

fn rand_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let n = rng.gen_range(0..=max);
    let mut v = vec![0u8; n];
    rng.fill_bytes(&mut v);
    v
}

fn rand_path(rng: &mut StdRng) -> String {
    match rng.gen_range(0..10) {
        0 => "/".to_string(),
        1 => "/fz//bad".to_string(),
        2 => "relative".to_string(),
        3 => "/fz/".to_string(),
        4 => String::new(),
        _ => format!("/fz/n{}", rng.gen_range(0..8)),
    }
}

/// A well-formed body for `opcode` (paths and flags may still be refused by the server).
fn valid_body(rng: &mut StdRng, opcode: i32) -> Vec<u8> {
    let p = rand_path(rng);
    match opcode {
        op::CREATE | op::CREATE2 => body::create(&p, &rand_bytes(rng, 8), rng.gen_range(-1..8)),
        op::CREATE_CONTAINER => body::create(&p, b"", 4),
        op::CREATE_TTL => {
            let mut b = body::create(&p, b"", rng.gen_range(5..=6));
            b.extend(rng.gen_range(-5i64..100_000).to_be_bytes());
            b
        }
        op::DELETE | op::CHECK => body::path_int(&p, rng.gen_range(-2..3)),
        op::EXISTS | op::GET_DATA | op::GET_CHILDREN | op::GET_CHILDREN2 => body::path_watch(&p, rng.gen()),
        op::SET_DATA => body::set_data(&p, &rand_bytes(rng, 16), rng.gen_range(-1..3)),
        op::GET_ACL | op::SYNC | op::GET_EPHEMERALS | op::GET_ALL_CHILDREN_NUMBER | op::DELETE_CONTAINER => {
            body::path(&p)
        }
        op::SET_ACL => Jute::new().string(&p).open_acl().int(-1).into_vec(),
        op::MULTI => {
            let ops: Vec<(i32, Vec<u8>)> = (0..rng.gen_range(0..4))
                .map(|_| {
                    let o = [op::CREATE, op::CREATE2, op::DELETE, op::SET_DATA, op::CHECK][rng.gen_range(0..5)];
                    (o, valid_body(rng, o))
                })
                .collect();
            body::multi(&ops)
        }
        op::MULTI_READ => {
            let ops: Vec<(i32, Vec<u8>)> = (0..rng.gen_range(0..4))
                .map(|_| {
                    let o = [op::GET_DATA, op::GET_CHILDREN][rng.gen_range(0..2)];
                    (o, body::path_watch(&rand_path(rng), false))
                })
                .collect();
            body::multi(&ops)
        }
        op::RECONFIG => Jute::new().string("a").string("b").string("c").long(-1).into_vec(),
        op::CHECK_WATCHES | op::REMOVE_WATCHES => body::path_int(&p, rng.gen_range(0..7)),
        op::AUTH => body::auth("digest", b"fuzz:pw"),
        op::SASL => Jute::new().buffer(Some(&rand_bytes(rng, 8))).into_vec(),
        op::SET_WATCHES | op::SET_WATCHES2 => {
            let q = rand_path(rng);
            let lists = [p.as_str(), q.as_str()];
            let persistent = (opcode == op::SET_WATCHES2).then_some((&lists[..1], &lists[1..]));
            body::set_watches(rng.gen_range(-1..1000), &lists[..rng.gen_range(0..3)], &lists[1..], &[], persistent)
        }
        op::ADD_WATCH => body::path_int(&p, rng.gen_range(-1..3)),
        _ => Vec::new(),
    }
}

#[derive(Default, Debug)]
struct Stats {
    frames: usize,
    connections: usize,
    answered_final_ping: usize,
    closed_by_design: usize,
}

/// An established connection receiving a stream of hostile-but-framed requests, then a ping.
/// Unless a frame may legitimately end the connection (closeSession, a failed auth, a header
/// shorter than 8 bytes), every frame must be answered and the final ping last.
async fn session_fuzz(addr: std::net::SocketAddr, mut rng: StdRng, stats: &Mutex<Stats>) -> Result<()> {
    let mut raw = Raw::connect(addr, 2000).await?;
    let mut bytes = Vec::new();
    let mut may_close = false;
    let n = rng.gen_range(5..40);
    // One connection in five also gets a frame that may end it: closeSession, an auth packet
    // (a refused scheme closes the connection) or a frame shorter than a request header.
    let ender_at = rng.gen_bool(0.2).then(|| rng.gen_range(0..n));
    for i in 0..n {
        if ender_at == Some(i) {
            let payload = match rng.gen_range(0..4) {
                0 => request(rng.gen(), op::CLOSE_SESSION, &[]),
                1 => request(rng.gen(), op::AUTH, &body::auth("nosuchscheme", b"x")),
                2 => request(rng.gen(), op::AUTH, &rand_bytes(&mut rng, 40)),
                _ => rand_bytes(&mut rng, 7),
            };
            may_close = true;
            bytes.extend(frame(&payload));
            continue;
        }
        let opcode = loop {
            let o = OPCODES[rng.gen_range(0..OPCODES.len())];
            if o != op::CLOSE_SESSION && o != op::AUTH {
                break o;
            }
        };
        let x = rng.gen_range(1..1_000_000);
        let payload = match rng.gen_range(0..10) {
            // Valid header, random body.
            0..=2 => request(x, opcode, &rand_bytes(&mut rng, 80)),
            // Valid header, valid body cut short.
            3..=4 => {
                let b = valid_body(&mut rng, opcode);
                let cut = rng.gen_range(0..=b.len());
                request(x, opcode, &b[..cut])
            }
            // Valid header, valid body with a few bytes changed.
            5..=6 => {
                let mut b = valid_body(&mut rng, opcode);
                for _ in 0..rng.gen_range(1..4) {
                    if !b.is_empty() {
                        let i = rng.gen_range(0..b.len());
                        b[i] = rng.gen();
                    }
                }
                request(x, opcode, &b)
            }
            // Fully random frame, header included.
            7 => {
                let mut f = rand_bytes(&mut rng, 60);
                f.resize(f.len().max(8), 0xa5);
                f
            }
            // A valid request.
            _ => request(x, opcode, &valid_body(&mut rng, opcode)),
        };
        if payload.len() < 8 {
            may_close = true; // a frame without a full header ends the connection
        } else {
            let o = i32::from_be_bytes(payload[4..8].try_into()?);
            if o == op::CLOSE_SESSION || o == op::AUTH {
                may_close = true;
            }
        }
        bytes.extend(frame(&payload));
    }
    bytes.extend(frame(&request(xid::PING, op::PING, &[])));
    raw.send_bytes(&bytes).await.ok(); // the server may already have closed
    raw.shutdown_write().await.ok();
    let frames = within_for(Duration::from_secs(10), "the fuzzed connection to close", raw.expect_closed()).await??;
    for f in &frames {
        parse_packet(f).with_context(|| format!("malformed frame from the server: {f:02x?}"))?;
    }
    let pinged = frames.last().map(|f| f.len() == 16 && f[..4] == xid::PING.to_be_bytes() && f[12..16] == [0; 4]);
    let mut st = stats.lock().unwrap();
    st.frames += n + 1;
    st.connections += 1;
    if pinged == Some(true) {
        st.answered_final_ping += 1;
    } else if may_close {
        st.closed_by_design += 1;
    } else {
        bail!("the connection closed before answering its final ping; {} frames came back", frames.len());
    }
    Ok(())
}

/// Garbage as the first frame, random bytes with no framing, bad lengths, truncated frames.
async fn handshake_fuzz(addr: std::net::SocketAddr, mut rng: StdRng, stats: &Mutex<Stats>) -> Result<()> {
    let mut raw = Raw::tcp(addr).await?;
    let kind = rng.gen_range(0..5);
    let mut frames_sent = 1;
    match kind {
        // A garbage ConnectRequest, maybe followed by more garbage.
        0 => {
            let mut b = frame(&rand_bytes(&mut rng, 100));
            if rng.gen() {
                b.extend(rand_bytes(&mut rng, 100));
                frames_sent += 1;
            }
            raw.send_bytes(&b).await.ok();
            raw.shutdown_write().await.ok();
        }
        // A ConnectRequest with a mutated byte.
        1 => {
            let mut b = ConnectRequest::new_session(2000).encode();
            let i = rng.gen_range(0..b.len());
            b[i] = rng.gen();
            if rng.gen() {
                b.truncate(rng.gen_range(0..b.len()));
            }
            raw.send_frame(&b).await.ok();
            raw.shutdown_write().await.ok();
        }
        // A length out of 0..=1048575 before or after the handshake: the server closes on the
        // prefix alone, without waiting for a body or for our EOF.
        2 | 3 => {
            if kind == 3 {
                raw.handshake(&ConnectRequest::new_session(2000)).await?;
            }
            let len: i32 = match rng.gen_range(0..3) {
                0 => rng.gen_range(i32::MIN..0),
                1 => rng.gen_range(0x10_0000..=i32::MAX),
                _ => 0x10_0000,
            };
            raw.send_bytes(&len.to_be_bytes()).await.ok();
            let rest = within_for(Duration::from_secs(5), "a close after a bad length", raw.expect_closed()).await??;
            ensure!(rest.is_empty(), "frames after a bad length {len}: {rest:?}");
        }
        // Valid requests, then a frame cut short and EOF: the earlier requests are answered.
        _ => {
            raw.handshake(&ConnectRequest::new_session(2000)).await?;
            let mut b = frame(&request(7, op::EXISTS, &body::path_watch("/", false)));
            let cut = frame(&request(8, op::GET_DATA, &body::path_watch("/fz", false)));
            b.extend(&cut[..rng.gen_range(1..cut.len())]);
            frames_sent = 2;
            raw.send_bytes(&b).await?;
            raw.shutdown_write().await?;
            let got =
                within_for(Duration::from_secs(5), "a close after a truncated frame", raw.expect_closed()).await??;
            ensure!(got.len() == 1, "expected the one reply before the truncated frame, got {got:02x?}");
            match parse_packet(&got[0])? {
                Packet::Reply(r) if (r.xid, r.err) == (7, 0) => {}
                other => bail!("unexpected {other:?}"),
            }
        }
    }
    if kind <= 1 {
        let frames =
            within_for(Duration::from_secs(5), "a close after a garbage handshake", raw.expect_closed()).await??;
        ensure!(frames.len() <= 1, "more than a ConnectResponse after a garbage handshake: {frames:02x?}");
    }
    let mut st = stats.lock().unwrap();
    st.frames += frames_sent;
    st.connections += 1;
    Ok(())
}

/// The normal client's round of work between batches.
async fn good_round(c: &zk::Client, round: usize) -> Result<()> {
    let p = format!("/good/r{round}");
    let (st, _) = c.create(&p, format!("v{round}").as_bytes(), PERSISTENT).await?;
    let s2 = c.set_data(&p, b"updated", Some(0)).await?;
    ensure!(s2.version == 1 && s2.czxid == st.czxid);
    let (data, s3) = c.get_data(&p).await?;
    ensure!(data == b"updated" && s3 == s2);
    ensure!(c.list_children("/good").await?.len() == round + 1);
    let (_, _, w) = c.get_and_watch_data(&p).await?;
    let s4 = c.set_data(&p, b"again", None).await?;
    let ev = within("the good client's watch", w.changed()).await?;
    ensure!(ev == event(zk::EventType::NodeDataChanged, &p, s4.mzxid), "{ev:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_truncated_frames_never_break_the_server() -> Result<()> {
    record_panics();
    let seed: u64 = match std::env::var("REFEREE_FUZZ_SEED") {
        Ok(s) => s.parse().context("REFEREE_FUZZ_SEED must be a u64")?,
        Err(_) => rand::random(),
    };
    println!("hostile input seed: {seed} (replay with REFEREE_FUZZ_SEED={seed})");
    let started = Instant::now();
    let server = TestServer::start().await?;
    let good = server.client().await?;
    good.create("/good", b"", PERSISTENT).await?;
    good.create("/fz", b"", PERSISTENT).await?;
    let stats = std::sync::Arc::new(Mutex::new(Stats::default()));
    let mut rng = StdRng::seed_from_u64(seed);

    let result = within_for(Duration::from_secs(50), "the fuzz run", async {
        let mut round = 0;
        while stats.lock().unwrap().frames < 10_000 {
            let mut set = tokio::task::JoinSet::new();
            for i in 0..8 {
                let conn_rng = StdRng::seed_from_u64(rng.next_u64());
                let stats = stats.clone();
                let addr = server.addr;
                set.spawn(async move {
                    let r = if i < 6 {
                        session_fuzz(addr, conn_rng, &stats).await
                    } else {
                        handshake_fuzz(addr, conn_rng, &stats).await
                    };
                    r.with_context(|| format!("connection {i}"))
                });
            }
            while let Some(r) = set.join_next().await {
                r??;
            }
            good_round(&good, round).await.with_context(|| format!("good client, round {round}"))?;
            ensure!(panics().is_empty(), "panics: {:?}", panics());
            round += 1;
        }
        Ok::<_, anyhow::Error>(round)
    })
    .await;
    let rounds = result.with_context(|| format!("seed {seed}"))?.with_context(|| format!("seed {seed}"))?;
    let st = std::mem::take(&mut *stats.lock().unwrap());
    println!("{st:?} in {rounds} rounds, {:?}", started.elapsed());
    assert!(st.frames >= 10_000 && st.connections >= 250, "{st:?}");
    assert!(st.answered_final_ping > st.connections / 2, "too few connections survived to their ping: {st:?}");

    // Afterwards: the normal client still works, a new one connects, every fuzz connection is
    // gone, nothing panicked, and the server shuts down cleanly.
    good_round(&good, rounds).await?;
    let fresh = server.client().await?;
    assert_eq!(fresh.list_children("/good").await?.len(), rounds + 1);
    drop(fresh);
    wait_until(Duration::from_secs(10), "fuzz connections to close", || server.connection_count() == 1).await?;
    assert_eq!(panics(), Vec::<String>::new(), "seed {seed}");
    drop(good);
    server.stop().await
}

/// Packet length limit: a frame of exactly 1,048,575 bytes is read and answered; a prefix
/// announcing 1,048,576 bytes, or a negative length, closes the connection at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_length_limit_is_jute_maxbuffer() -> Result<()> {
    record_panics();
    let server = TestServer::start().await?;
    let mut raw = Raw::connect(server.addr, 5000).await?;
    let head = request(1, op::SET_DATA, &Jute::new().string("/none").into_vec());
    // header + path + buffer length + data + version = 0xfffff
    let data_len = 0xfffff - head.len() - 4 - 4;
    let b = Jute::new().string("/none").buffer(Some(&vec![7u8; data_len])).int(-1).into_vec();
    let payload = request(1, op::SET_DATA, &b);
    assert_eq!(payload.len(), 0xfffff);
    raw.send_frame(&payload).await?;
    let (r, _) = raw.reply_to(1).await?;
    assert_eq!(r.err, err::NO_NODE, "a maximal frame is read and decoded");

    raw.send_bytes(&0x10_0000i32.to_be_bytes()).await?;
    assert!(raw.expect_closed().await?.is_empty());

    let mut raw = Raw::connect(server.addr, 5000).await?;
    raw.send_bytes(&(-1i32).to_be_bytes()).await?;
    assert!(raw.expect_closed().await?.is_empty());

    let mut raw = Raw::tcp(server.addr).await?;
    let sessions = server.session_ids();
    raw.send_bytes(&0x7fff_ffffi32.to_be_bytes()).await?;
    assert!(raw.expect_closed().await?.is_empty(), "a huge first frame is refused");
    assert_eq!(server.session_ids(), sessions);
    assert_eq!(panics(), Vec::<String>::new());
    server.stop().await
}

/// Every proper prefix of a valid body, for every opcode that has one, is answered with
/// MarshallingError (-5) under the request's xid, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_bodies_get_marshalling_errors() -> Result<()> {
    record_panics();
    let server = TestServer::start().await?;
    let mut raw = Raw::connect(server.addr, 5000).await?;
    let mut rng = StdRng::seed_from_u64(7);
    let mut checked = 0;
    for opcode in [1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 14, 15, 17, 18, 19, 21, 22, 100, 101, 103, 104, 105, 106] {
        let full = valid_body(&mut rng, opcode);
        let mut bytes = Vec::new();
        let mut xids = Vec::new();
        for cut in 0..full.len() {
            let x = raw.alloc_xid();
            bytes.extend(frame(&request(x, opcode, &full[..cut])));
            xids.push(x);
        }
        raw.send_bytes(&bytes).await?;
        for x in xids {
            match raw.packet().await? {
                Packet::Reply(r) => {
                    assert_eq!((r.xid, r.err, r.body.len()), (x, err::MARSHALLING_ERROR, 0), "opcode {opcode}")
                }
                other => panic!("opcode {opcode}: unexpected {other:?}"),
            }
            checked += 1;
        }
        assert_eq!(raw.call(op::EXISTS, &body::path_watch("/", false)).await?.err, 0, "alive after opcode {opcode}");
    }
    assert!(checked > 300, "{checked}");
    assert_eq!(panics(), Vec::<String>::new());
    server.stop().await
}

/// SetWatches fires a notification for each path it names whose node changed: one SetWatches
/// of a few hundred kilobytes could make the server build megabytes of them. A path named many
/// times fires once, and what one SetWatches fires counts against `max_queued_outbound_bytes`:
/// past it the connection is closed, as one whose client does not read its notifications is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_watches_fires_each_change_once_and_within_the_outbound_limit() -> Result<()> {
    record_panics();
    let server = TestServer::start_with(|c| c.max_queued_outbound_bytes = 64 * 1024).await?;
    let mut raw = Raw::connect(server.addr, 5000).await?;
    // An invalid path names no node (NodeDeleted for a data or child watch); the root exists
    // (NodeCreated for an exist watch).
    let invalid = vec!["a"; 20_000];
    let root = vec!["/"; 20_000];
    let sw = body::set_watches(server.last_zxid(), &invalid, &root, &invalid, None);
    let (r, fired) = raw.call_collect(op::SET_WATCHES, &sw).await?;
    r.ok()?;
    ensure!(fired.len() == 2, "expected one notification per change, got {}", fired.len());
    let fired: Vec<(i32, String)> = fired.into_iter().map(|n| (n.kind, n.path)).collect();
    assert_eq!(fired, vec![(ev::NODE_DELETED, "a".to_string()), (ev::NODE_CREATED, "/".to_string())]);

    // 8,000 distinct paths gone, about 44 bytes of notification each: past four times 64 KiB
    // (the bound of notifications waiting behind a reply).
    let gone: Vec<String> = (0..8000).map(|i| format!("/gone/{i:06}")).collect();
    let gone: Vec<&str> = gone.iter().map(String::as_str).collect();
    raw.send(op::SET_WATCHES, &body::set_watches(server.last_zxid(), &gone, &[], &[], None)).await?;
    let sent = raw.expect_closed().await?;
    ensure!(sent.is_empty(), "the connection was closed after {} frames, not at once", sent.len());

    // Everyone else is served.
    let mut other = Raw::connect(server.addr, 5000).await?;
    assert_eq!(other.call(op::EXISTS, &body::path_watch("/", false)).await?.err, 0);
    assert_eq!(panics(), Vec::<String>::new());
    server.stop().await
}
