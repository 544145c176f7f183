//! Wire-level facts checked with the raw jute client: handshake layouts, refused and unknown
//! opcodes, pipelining, reply bodies of create (1) / create2 (15) / check (13) / multi (14),
//! and reply order.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::raw::{body, err, frame, op, parse_multi, request, xid, ConnectRequest, Jute, MultiResult, Packet, Raw};
use common::*;
use referee_testkit::TestServer;
use zookeeper_client as zk;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_response_has_the_read_only_byte_only_if_the_request_had_it() -> Result<()> {
    let server = TestServer::start().await?;
    let mut old = Raw::tcp(server.addr).await?;
    let mut req = ConnectRequest::new_session(5000);
    req.read_only = None;
    assert_eq!(req.encode().len(), 44);
    let resp = old.handshake(&req).await?;
    assert_eq!((resp.payload_len, resp.read_only), (36, None), "an old client gets no readOnly byte");
    assert_eq!((resp.protocol_version, resp.timeout_ms, resp.passwd.len()), (0, 5000, 16));
    assert!(resp.session_id > 0);
    // The session works.
    assert_eq!(old.call(op::EXISTS, &body::path_watch("/", false)).await?.err, 0);

    let mut new = Raw::tcp(server.addr).await?;
    let resp = new.handshake(&ConnectRequest::new_session(5000)).await?;
    assert_eq!((resp.payload_len, resp.read_only), (37, Some(false)));
    assert_ne!(resp.session_id, old.session_id);
    server.stop().await
}

/// The trailing byte of a ConnectResponse says whether the *server* is read-only (ZooKeeper
/// writes `this instanceof ReadOnlyZooKeeperServer`); it is not an echo of the client's flag.
/// A client that allows read-only mode must still learn that this server is read-write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_byte_reports_the_server_mode() -> Result<()> {
    let server = TestServer::start().await?;
    let mut raw = Raw::tcp(server.addr).await?;
    let mut req = ConnectRequest::new_session(5000);
    req.read_only = Some(true);
    let resp = raw.handshake(&req).await?;
    let c = within(
        "connect with read-only allowed",
        zk::Client::connector()
            .with_readonly(true)
            .with_session_timeout(Duration::from_secs(6))
            .connect(&server.connect_string()),
    )
    .await??;
    let state = c.state();
    let readonly = c.session().is_readonly();
    drop(c);
    assert_eq!((resp.payload_len, resp.read_only), (37, Some(false)), "a read-write server answers readOnly=false");
    assert_eq!((state, readonly), (zk::SessionState::SyncConnected, false));
    server.stop().await
}

/// An unknown opcode gets Unimplemented (-6) with the request's xid and zxid -1, and the
/// connection carries on; opcodes the server knows but refuses get their error, never a hang
/// or a dropped connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_refused_opcodes_get_an_error_and_the_connection_lives() -> Result<()> {
    let server = TestServer::start().await?;
    let mut raw = Raw::connect(server.addr, 5000).await?;
    for (i, opcode) in [55, 0, 10, 23, 99, 108, 1000, -10, -1, i32::MAX, i32::MIN].into_iter().enumerate() {
        let x = 100 + i as i32;
        raw.send_frame(&request(x, opcode, b"junk")).await?;
        let f = raw.read_frame().await?.expect("a reply, not a close");
        let mut want = x.to_be_bytes().to_vec();
        want.extend((-1i64).to_be_bytes());
        want.extend(err::UNIMPLEMENTED.to_be_bytes());
        assert_eq!(f, want, "opcode {opcode}: exactly ReplyHeader(xid, -1, -6)");
        assert_eq!(raw.call(op::EXISTS, &body::path_watch("/", false)).await?.err, 0, "alive after opcode {opcode}");
    }
    // Without a SASL mechanism, sasl (102) is answered OK with a null token.
    let r = raw.call(op::SASL, &Jute::new().buffer(Some(b"token")).into_vec()).await?;
    assert_eq!((r.err, r.body.as_slice()), (0, &[0xffu8; 4][..]), "sasl answer {r:?}");
    // Known but refused: reconfig (disabled), deleteContainer (internal).
    for opcode in [op::RECONFIG, op::DELETE_CONTAINER] {
        let r = raw.call(opcode, &Jute::new().string("x").into_vec()).await?;
        assert!(r.err < 0 && r.body.is_empty(), "opcode {opcode} answered {r:?}");
        assert_eq!(raw.call(op::EXISTS, &body::path_watch("/", false)).await?.err, 0, "alive after opcode {opcode}");
    }
    // A multiRead holding a write, and a multi holding a read, are refused (MarshallingError,
    // as Apache ZooKeeper 3.8 answers: see differential_cases.rs).
    let bad_read = body::multi(&[(op::DELETE, body::path_int("/x", -1))]);
    assert_eq!(raw.call(op::MULTI_READ, &bad_read).await?.err, err::MARSHALLING_ERROR);
    let bad_write = body::multi(&[(op::GET_DATA, body::path_watch("/", false))]);
    assert_eq!(raw.call(op::MULTI, &bad_write).await?.err, err::MARSHALLING_ERROR);
    assert_eq!(raw.call(op::EXISTS, &body::path_watch("/", false)).await?.err, 0);
    server.stop().await
}

/// The Java client pipelines auth (xid -4) and SetWatches (xid -8) behind its ConnectRequest
/// before the ConnectResponse arrives: the server answers them in order after the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_set_watches_pipelined_behind_the_connect_request() -> Result<()> {
    let server = TestServer::start().await?;
    let b = server.client().await?;
    b.create("/changed", b"", PERSISTENT).await?;
    b.set_data("/changed", b"1", None).await?;
    let seen = server.last_zxid() - 1; // before the setData

    let mut raw = Raw::tcp(server.addr).await?;
    let mut bytes = frame(&ConnectRequest::new_session(5000).encode());
    bytes.extend(frame(&request(xid::AUTH, op::AUTH, &body::auth("digest", b"carol:pw"))));
    let sw = body::set_watches(seen, &["/changed"], &["/later"], &[], None);
    bytes.extend(frame(&request(xid::SET_WATCHES, op::SET_WATCHES, &sw)));
    raw.send_bytes(&bytes).await?;

    let resp = common::raw::ConnectResponse::decode(&raw.read_frame().await?.expect("ConnectResponse"))?;
    assert!(resp.session_id > 0 && resp.timeout_ms == 5000, "{resp:?}");
    match raw.packet().await? {
        Packet::Reply(r) => assert_eq!((r.xid, r.zxid, r.err, r.body.len()), (xid::AUTH, 0, 0, 0), "auth reply"),
        other => panic!("expected the auth reply, got {other:?}"),
    }
    let (r, fired) = raw.reply_to(xid::SET_WATCHES).await?;
    assert_eq!((r.err, r.body.len()), (0, 0));
    let fired: Vec<_> = fired.into_iter().map(|n| (n.kind, n.path)).collect();
    assert_eq!(fired, vec![(3, "/changed".to_string())]);

    // The auth took effect and the exist watch is registered.
    let who = raw.call(op::WHO_AM_I, &[]).await?;
    let mut rd = who.rd();
    let n = rd.int()?;
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push((rd.string()?, rd.string()?));
    }
    rd.end()?;
    assert!(ids.contains(&("digest".to_string(), "carol".to_string())), "{ids:?}");
    let (s, _) = b.create("/later", b"", PERSISTENT).await?;
    let n = raw.notification().await?;
    assert_eq!((n.kind, n.path.as_str(), n.zxid), (1, "/later", s.czxid));
    drop(b);
    server.stop().await
}

/// 50 requests written at once, without waiting: the replies come back in request order, and
/// each read sees the writes of its own session sent before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_pipelined_requests_are_answered_in_order() -> Result<()> {
    let server = TestServer::start().await?;
    let mut raw = Raw::connect(server.addr, 5000).await?;
    raw.call(op::CREATE, &body::create("/pl", b"", 0)).await?.ok()?;
    let mut bytes = Vec::new();
    let mut kinds = Vec::new();
    for i in 0..10 {
        let p = format!("/pl/n{i}");
        for (opcode, b) in [
            (op::CREATE2, body::create(&p, format!("d{i}").as_bytes(), 0)),
            (op::GET_DATA, body::path_watch(&p, false)),
            (op::SET_DATA, body::set_data(&p, b"new", 0)),
            (op::EXISTS, body::path_watch(&p, false)),
            (op::GET_CHILDREN2, body::path_watch("/pl", false)),
        ] {
            let x = raw.alloc_xid();
            bytes.extend(frame(&request(x, opcode, &b)));
            kinds.push((x, opcode, i));
        }
    }
    assert_eq!(kinds.len(), 50);
    raw.send_bytes(&bytes).await?;
    let mut last_zxid = 0;
    for (x, opcode, i) in kinds {
        let r = match raw.packet().await? {
            Packet::Reply(r) => r,
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!((r.xid, r.err), (x, 0), "reply order (opcode {opcode}, node {i})");
        assert!(r.zxid >= last_zxid, "reply zxids never go back");
        last_zxid = r.zxid;
        let mut rd = r.rd();
        match opcode {
            op::CREATE2 => {
                assert_eq!(rd.string()?, format!("/pl/n{i}"));
                assert_eq!(rd.stat()?.czxid, r.zxid);
            }
            op::GET_DATA => {
                assert_eq!(rd.buffer()?.unwrap(), format!("d{i}").into_bytes(), "read-your-writes");
                assert_eq!(rd.stat()?.version, 0);
            }
            op::SET_DATA => assert_eq!(rd.stat()?.version, 1),
            op::EXISTS => assert_eq!(rd.stat()?.data_length, 3),
            _ => {
                assert_eq!(rd.strings()?.len(), i + 1);
                assert_eq!(rd.stat()?.num_children, i as i32 + 1);
            }
        }
        rd.end()?;
    }
    assert_eq!(last_zxid, server.last_zxid());
    server.stop().await
}

/// Reply bodies: create (1) = CreateResponse(path); create2 (15) = path + Stat; an error reply
/// is the 16-byte header alone; ping is xid -2 with the last zxid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_and_create2_reply_bodies() -> Result<()> {
    let server = TestServer::start().await?;
    let mut raw = Raw::connect(server.addr, 5000).await?;
    let r = raw.call(op::CREATE, &body::create("/one", b"1", 0)).await?;
    assert_eq!((r.err, r.zxid), (0, server.last_zxid()));
    assert_eq!(r.body, Jute::new().string("/one").into_vec(), "CreateResponse is the path alone");

    let r = raw.call(op::CREATE, &body::create("/one/s-", b"", 2)).await?;
    assert_eq!(r.body, Jute::new().string("/one/s-0000000000").into_vec());

    let r = raw.call(op::CREATE2, &body::create("/two", b"22", 0)).await?;
    let mut rd = r.rd();
    assert_eq!(rd.string()?, "/two");
    let st = rd.stat()?;
    rd.end()?;
    assert_eq!((st.czxid, st.mzxid, st.pzxid, st.data_length, st.version), (r.zxid, r.zxid, r.zxid, 2, 0));

    let r = raw.call(op::CREATE2, &body::create("/two", b"", 0)).await?;
    assert_eq!((r.err, r.body.len()), (err::NODE_EXISTS, 0));
    let r = raw.call(op::GET_DATA, &body::path_watch("/none", false)).await?;
    assert_eq!((r.err, r.body.len(), r.zxid), (err::NO_NODE, 0, server.last_zxid()));
    let r = raw.call(op::CREATE2, &body::create("bad", b"", 0)).await?;
    assert_eq!(r.err, err::BAD_ARGUMENTS);
    let r = raw.call(op::CREATE2, &body::create("/flags", b"", 42)).await?;
    assert_eq!(r.err, err::BAD_ARGUMENTS);

    raw.send_frame(&request(xid::PING, op::PING, &[])).await?;
    let f = raw.read_frame().await?.unwrap();
    let mut want = xid::PING.to_be_bytes().to_vec();
    want.extend(server.last_zxid().to_be_bytes());
    want.extend(0i32.to_be_bytes());
    assert_eq!(f, want, "ping reply");
    server.stop().await
}

/// check (13) on its own, outside a multi.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_check_version() -> Result<()> {
    let server = TestServer::start().await?;
    let mut raw = Raw::connect(server.addr, 5000).await?;
    raw.call(op::CREATE, &body::create("/c", b"", 0)).await?.ok()?;
    raw.call(op::SET_DATA, &body::set_data("/c", b"1", -1)).await?.ok()?;
    assert_eq!(raw.call(op::CHECK, &body::path_int("/c", 1)).await?.err, 0);
    assert_eq!(raw.call(op::CHECK, &body::path_int("/c", -1)).await?.err, 0);
    assert_eq!(raw.call(op::CHECK, &body::path_int("/c", 0)).await?.err, err::BAD_VERSION);
    assert_eq!(raw.call(op::CHECK, &body::path_int("/missing", -1)).await?.err, err::NO_NODE);
    server.stop().await
}

/// multi (14) on the wire: success lists every result under one zxid; failure answers with
/// header err 0 (as ZooKeeper 3.8's FinalRequestProcessor), 0 for the ops before the failing
/// one, its code, then -2 RuntimeInconsistency, and applies nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_results_on_the_wire() -> Result<()> {
    let server = TestServer::start().await?;
    let mut raw = Raw::connect(server.addr, 5000).await?;
    let ok = body::multi(&[
        (op::CREATE, body::create("/mw", b"", 0)),
        (op::CREATE2, body::create("/mw/a", b"a", 0)),
        (op::SET_DATA, body::set_data("/mw", b"x", 0)),
        (op::CHECK, body::path_int("/mw", 1)),
        (op::DELETE, body::path_int("/mw/a", 0)),
    ]);
    let r = raw.call(op::MULTI, &ok).await?;
    assert_eq!((r.err, r.zxid), (0, server.last_zxid()));
    let results = parse_multi(&r.body)?;
    assert_eq!(results.len(), 5);
    // Plain creates come back as create results (path only) whatever their opcode, as Apache
    // ZooKeeper 3.8 answers them inside a multi.
    assert_eq!(results[0], MultiResult::Create("/mw".into()));
    assert_eq!(results[1], MultiResult::Create("/mw/a".into()));
    match &results[2] {
        MultiResult::SetData(st) => assert_eq!((st.mzxid, st.version), (r.zxid, 1)),
        other => panic!("{other:?}"),
    }
    assert_eq!(results[3..], [MultiResult::Check, MultiResult::Delete]);

    let before = raw.call(op::EXISTS, &body::path_watch("/mw", false)).await?.rd().stat()?;
    let failing = body::multi(&[
        (op::CREATE, body::create("/mf", b"", 0)),
        (op::CREATE, body::create("/mf", b"", 0)),
        (op::DELETE, body::path_int("/nonexistent", -1)),
    ]);
    let r = raw.call(op::MULTI, &failing).await?;
    assert_eq!(r.err, 0, "a failed multi is answered with header err 0 and per-op errors");
    assert_eq!(
        parse_multi(&r.body)?,
        vec![
            MultiResult::Error(0),
            MultiResult::Error(err::NODE_EXISTS),
            MultiResult::Error(err::RUNTIME_INCONSISTENCY)
        ]
    );
    assert_eq!(raw.call(op::EXISTS, &body::path_watch("/mf", false)).await?.err, err::NO_NODE);
    let after = raw.call(op::EXISTS, &body::path_watch("/mw", false)).await?.rd().stat()?;
    assert_eq!(before, after);

    // multiRead (22).
    let reads = body::multi(&[
        (op::GET_DATA, body::path_watch("/mw", false)),
        (op::GET_CHILDREN, body::path_watch("/zz", false)),
    ]);
    let r = raw.call(op::MULTI_READ, &reads).await?;
    let mut rd = r.rd();
    assert_eq!((rd.int()?, rd.boolean()?, rd.int()?), (op::GET_DATA, false, 0));
    assert_eq!(rd.buffer()?.unwrap(), b"x");
    assert_eq!(rd.stat()?, after);
    assert_eq!((rd.int()?, rd.boolean()?, rd.int()?, rd.int()?), (op::ERROR, false, err::NO_NODE, err::NO_NODE));
    assert_eq!((rd.int()?, rd.boolean()?, rd.int()?), (-1, true, -1));
    rd.end()?;
    server.stop().await
}
