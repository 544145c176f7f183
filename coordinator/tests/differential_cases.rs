//! Fixed requests sent to this coordinator and to Apache ZooKeeper 3.8 (Debian's `zookeeper`
//! package) on loopback, where the random histories of `differential.rs` would rarely go: the
//! order of replies and notifications when a session pipelines writes around a sync or a
//! request answered at once, and the error codes of requests that decode but make no sense.
//! Skipped where Apache ZooKeeper is not installed.

mod common;

use std::net::SocketAddr;

use anyhow::{Context, Result};
use common::raw::{body, op, Jute, Raw, Rd};
use referee_coordinator::config::CoordinatorConfig;
use referee_testkit::{apache_zookeeper_installed, skip, ApacheZk, ApacheZkProfile, TestServer, APACHE_ZK_MISSING};

/// Our server configured as Apache ZooKeeper's reference profile is.
fn configure(c: &mut CoordinatorConfig) {
    c.extended_types_enabled = true;
    c.super_digest = Some(referee_testkit::SUPER_DIGEST.to_string());
}

/// Starts both servers, runs `f` on each address (ours first) and stops them.
async fn on_both<T, F, Fut>(test: &str, f: F) -> Result<Option<[T; 2]>>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    common::capture_server_logs("referee_coordinator=info,openraft=warn");
    if !apache_zookeeper_installed() {
        skip(test, APACHE_ZK_MISSING);
        return Ok(None);
    }
    let apache = tokio::task::spawn_blocking(|| ApacheZk::start(ApacheZkProfile::Reference)).await??;
    let ours = TestServer::start_with(configure).await?;
    let theirs = f(apache.connect_string().parse()?).await.context("against Apache ZooKeeper");
    let mine = f(ours.addr).await.context("against this coordinator");
    ours.stop().await?;
    Ok(Some([mine?, theirs?]))
}

/// One frame as the client reads it: a reply's xid, zxid and error (its body aside: Apache
/// ZooKeeper sends one after some errors), or a notification's zxid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    Reply { xid: i32, zxid: i64, err: i32 },
    Notification { zxid: i64 },
}

async fn frame(raw: &mut Raw) -> Result<Frame> {
    let f = raw.read_frame().await?.context("the server closed the connection")?;
    let mut r = Rd::new(&f);
    let (xid, zxid, err) = (r.int()?, r.long()?, r.int()?);
    Ok(if xid == -1 { Frame::Notification { zxid } } else { Frame::Reply { xid, zxid, err } })
}

/// A request pipelined between two writes of the same session.
struct Between {
    what: &'static str,
    opcode: i32,
    body: Vec<u8>,
}

fn betweens() -> Vec<Between> {
    let mixed =
        body::multi(&[(op::GET_DATA, body::path_watch("/", false)), (op::DELETE, body::path_int("/absent", -1))]);
    vec![
        Between { what: "sync", opcode: op::SYNC, body: body::path("/") },
        Between { what: "getData", opcode: op::GET_DATA, body: body::path_watch("/", false) },
        // No watch flag: refused as malformed, without closing the connection.
        Between { what: "a truncated getData", opcode: op::GET_DATA, body: body::path("/") },
        Between { what: "a multi mixing a read and a write", opcode: op::MULTI, body: mixed },
    ]
}

/// A session with a persistent watch on /n pipelines, twice, setData /n, the request in
/// between, setData /n. Apache ZooKeeper holds a session's later requests until the earlier
/// ones are done, so each write's notification comes just before its reply and the request in
/// between is answered before the next write's notification. Ours must do the same (a write
/// sent after a sync used to be applied while the sync waited, its event and reply overtaking
/// the sync's), and its reply zxids never go back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_notifications_around_a_sync_or_an_answer_come_in_apache_zookeepers_order() -> Result<()> {
    let cases = betweens();
    let run = |addr: SocketAddr| {
        let cases = &cases;
        async move {
            let mut seen = Vec::new();
            for (i, case) in cases.iter().enumerate() {
                let mut raw = Raw::connect(addr, 10_000).await?;
                let path = format!("/n{i}");
                raw.call(op::CREATE, &body::create(&path, b"", 0)).await?.ok()?;
                raw.call(op::ADD_WATCH, &body::path_int(&path, 0)).await?.ok()?;
                let mut xids = Vec::new();
                for _ in 0..2 {
                    xids.push(raw.send(op::SET_DATA, &body::set_data(&path, b"a", -1)).await?);
                    xids.push(raw.send(case.opcode, &case.body).await?);
                    xids.push(raw.send(op::SET_DATA, &body::set_data(&path, b"b", -1)).await?);
                }
                let mut frames = Vec::new();
                while frames.iter().filter(|f| matches!(f, Frame::Reply { .. })).count() < xids.len() {
                    frames.push(frame(&mut raw).await.with_context(|| format!("around {}", case.what))?);
                }
                seen.push(frames);
            }
            Ok(seen)
        }
    };
    let Some([ours, theirs]) =
        on_both("replies_and_notifications_around_a_sync_or_an_answer_come_in_apache_zookeepers_order", run).await?
    else {
        return Ok(());
    };
    let mut problems = Vec::new();
    for ((case, ours), theirs) in cases.iter().zip(ours).zip(theirs) {
        // The shape: which reply or notification comes when, with each reply's error. Zxids
        // are compared on our side only (Apache ZooKeeper 3.8 sends notifications with -1).
        let shape = |frames: &[Frame]| -> Vec<String> {
            let first = frames.iter().find_map(|f| match f {
                Frame::Reply { xid, .. } => Some(*xid),
                Frame::Notification { .. } => None,
            });
            frames
                .iter()
                .map(|f| match f {
                    Frame::Reply { xid, err, .. } => format!("R{}:{err}", xid - first.unwrap_or(0)),
                    Frame::Notification { .. } => "N".to_string(),
                })
                .collect()
        };
        let (a, b) = (shape(&ours), shape(&theirs));
        if a != b {
            problems.push(format!("around {}: ours {}, Apache's {}", case.what, a.join(" "), b.join(" ")));
        }
        let (mut last_reply, mut last_event) = (0, 0);
        for f in &ours {
            match *f {
                Frame::Reply { zxid, .. } if zxid < last_reply || zxid < last_event => {
                    problems.push(format!(
                        "around {}: a reply with zxid {zxid} after a reply with {last_reply} or an event with {last_event}: {ours:?}",
                        case.what
                    ));
                    break;
                }
                Frame::Reply { zxid, .. } => last_reply = zxid,
                Frame::Notification { zxid } => last_event = zxid,
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// Requests that decode but make no sense, answered with Apache ZooKeeper 3.8's error codes
/// (measured): MarshallingError for a multi mixing reads and writes, a multiRead holding a
/// write, an unknown addWatch mode and an unknown watcher type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_make_no_sense_get_apache_zookeepers_error_codes() -> Result<()> {
    let delete = (op::DELETE, body::path_int("/absent", -1));
    let get = (op::GET_DATA, body::path_watch("/", false));
    let cases: Vec<(&str, i32, Vec<u8>)> = vec![
        ("a multi mixing getData and delete", op::MULTI, body::multi(&[get.clone(), delete.clone()])),
        ("a multi of a delete then a getData", op::MULTI, body::multi(&[delete.clone(), get.clone()])),
        ("a multiRead holding a delete", op::MULTI_READ, body::multi(std::slice::from_ref(&delete))),
        ("a multiRead of a getData and a delete", op::MULTI_READ, body::multi(&[get, delete])),
        ("addWatch mode 2", op::ADD_WATCH, body::path_int("/", 2)),
        ("addWatch mode -1", op::ADD_WATCH, body::path_int("/", -1)),
        ("removeWatches type 9", op::REMOVE_WATCHES, body::path_int("/", 9)),
        ("checkWatches type 9", op::CHECK_WATCHES, body::path_int("/", 9)),
        ("removeWatches type 0", op::REMOVE_WATCHES, Jute::new().string("/").int(0).into_vec()),
    ];
    let run = |addr: SocketAddr| {
        let cases = &cases;
        async move {
            let mut raw = Raw::connect(addr, 10_000).await?;
            let mut errs = Vec::new();
            for (what, opcode, body) in cases {
                let xid = raw.send(*opcode, body).await?;
                match frame(&mut raw).await.with_context(|| what.to_string())? {
                    Frame::Reply { xid: got, err, .. } if got == xid => errs.push(err),
                    other => anyhow::bail!("{what}: {other:?} instead of the reply"),
                }
            }
            Ok(errs)
        }
    };
    let Some([ours, theirs]) = on_both("requests_that_make_no_sense_get_apache_zookeepers_error_codes", run).await?
    else {
        return Ok(());
    };
    let differ: Vec<String> = cases
        .iter()
        .zip(ours.iter().zip(&theirs))
        .filter(|(_, (a, b))| a != b)
        .map(|((what, ..), (a, b))| format!("{what}: ours {a}, Apache's {b}"))
        .collect();
    assert!(differ.is_empty(), "error codes differ from Apache ZooKeeper's:\n{}", differ.join("\n"));
    Ok(())
}
