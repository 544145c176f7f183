//! Watches: one-shot, persistent and recursive, checkWatches/removeWatches, SetWatches and
//! SetWatches2 re-registration, and watches across a dropped connection. Notifications carry
//! the zxid of the change (czxid for a create, mzxid for a setData, the parent's pzxid for a
//! delete or a child change).

mod common;

use std::time::Duration;

use anyhow::{ensure, Result};
use common::raw::{body, err, ev, op, xid, Notification, Raw};
use common::*;
use referee_testkit::{connect, wait_until, within_for, Proxy, TestServer, Trap};
use zookeeper_client as zk;

fn note(kind: i32, path: &str, zxid: i64) -> Notification {
    Notification { zxid, kind, state: 3, path: path.to_string() }
}

/// Reads notifications until `sentinel` arrives (which the test caused last) and returns those
/// before it; anything after the expected events would show up as a wrong sequence.
async fn notes_until(raw: &mut Raw, sentinel: &Notification) -> Result<Vec<Notification>> {
    let mut out = Vec::new();
    loop {
        let n = raw.notification().await?;
        if &n == sentinel {
            return Ok(out);
        }
        ensure!(out.len() < 100, "too many notifications: {out:?}");
        out.push(n);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_exist_and_child_watches_fire_once_with_the_change_zxid() -> Result<()> {
    let server = TestServer::start().await?;
    let a = server.client().await?;
    let b = server.client().await?;

    // exists on a missing node leaves a watch: NodeCreated with the czxid.
    let (none, w) = a.check_and_watch_stat("/w").await?;
    assert_eq!(none, None);
    let (created, _) = b.create("/w", b"0", PERSISTENT).await?;
    assert_eq!(oneshot_event("NodeCreated", w).await?, event(zk::EventType::NodeCreated, "/w", created.czxid));

    // getData and exists watches: NodeDataChanged with the mzxid.
    let (_, _, w1) = a.get_and_watch_data("/w").await?;
    let (_, w2) = a.check_and_watch_stat("/w").await?;
    let set = b.set_data("/w", b"1", None).await?;
    let expected = event(zk::EventType::NodeDataChanged, "/w", set.mzxid);
    assert_eq!(oneshot_event("getData watch", w1).await?, expected);
    assert_eq!(oneshot_event("exists watch", w2).await?, expected);

    // getChildren2 watch: NodeChildrenChanged with the new child's czxid (= parent's pzxid).
    let (_, _, cw) = a.get_and_watch_children("/w").await?;
    let (child, _) = b.create("/w/c", b"", PERSISTENT).await?;
    assert_eq!(oneshot_event("child watch", cw).await?, event(zk::EventType::NodeChildrenChanged, "/w", child.czxid));

    // getChildren (opcode 8) watch on a child delete: the parent's pzxid.
    let (_, cw) = a.list_and_watch_children("/w").await?;
    b.delete("/w/c", None).await?;
    let pzxid = b.check_stat("/w").await?.unwrap().pzxid;
    assert_eq!(oneshot_event("list child watch", cw).await?, event(zk::EventType::NodeChildrenChanged, "/w", pzxid));

    // Deleting the node fires its data, exist and child watches with NodeDeleted.
    let (_, _, dw) = a.get_and_watch_data("/w").await?;
    let (_, ew) = a.check_and_watch_stat("/w").await?;
    let (_, _, cw) = a.get_and_watch_children("/w").await?;
    b.delete("/w", None).await?;
    let root_pzxid = b.check_stat("/").await?.unwrap().pzxid;
    let expected = event(zk::EventType::NodeDeleted, "/w", root_pzxid);
    assert_eq!(oneshot_event("data watch on delete", dw).await?, expected);
    assert_eq!(oneshot_event("exist watch on delete", ew).await?, expected);
    assert_eq!(oneshot_event("child watch on delete", cw).await?, expected);
    drop((a, b));
    server.stop().await
}

/// On the wire: a one-shot watch fires exactly once, and the notification reaches the client
/// before the reply of the write that caused it, with that write's zxid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_fires_once_and_precedes_the_reply_of_its_write() -> Result<()> {
    let server = TestServer::start().await?;
    let b = server.client().await?;
    b.create("/o", b"", PERSISTENT).await?;
    let mut a = Raw::connect(server.addr, 5000).await?;
    a.call(op::GET_DATA, &body::path_watch("/o", true)).await?.ok()?;

    // A's own write: the notification first, then the reply, both with the write's zxid.
    let (reply, notes) = a.call_collect(op::SET_DATA, &body::set_data("/o", b"1", -1)).await?;
    let stat = reply.rd().stat()?;
    assert_eq!(reply.zxid, stat.mzxid);
    assert_eq!(notes, vec![note(ev::NODE_DATA_CHANGED, "/o", stat.mzxid)]);

    // No watch is left: two more writes, then a sentinel from a fresh watch.
    b.set_data("/o", b"2", None).await?;
    b.set_data("/o", b"3", None).await?;
    assert_eq!(a.call(op::EXISTS, &body::path_watch("/sentinel", true)).await?.err, err::NO_NODE);
    let (s, _) = b.create("/sentinel", b"", PERSISTENT).await?;
    let before = notes_until(&mut a, &note(ev::NODE_CREATED, "/sentinel", s.czxid)).await?;
    assert_eq!(before, vec![], "a fired one-shot watch must not fire again");
    drop(b);
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_watch_sees_every_event_on_its_node() -> Result<()> {
    let server = TestServer::start().await?;
    let a = server.client().await?;
    let b = server.client().await?;
    let mut w = a.watch("/pw", zk::AddWatchMode::Persistent).await?;

    let (created, _) = b.create("/pw", b"", PERSISTENT).await?;
    assert_eq!(next_event("created", &mut w).await?, event(zk::EventType::NodeCreated, "/pw", created.czxid));
    let set = b.set_data("/pw", b"x", None).await?;
    assert_eq!(next_event("data", &mut w).await?, event(zk::EventType::NodeDataChanged, "/pw", set.mzxid));
    let (child, _) = b.create("/pw/c", b"", PERSISTENT).await?;
    assert_eq!(next_event("child", &mut w).await?, event(zk::EventType::NodeChildrenChanged, "/pw", child.czxid));
    b.set_data("/pw/c", b"ignored", None).await?; // not this node
    b.delete("/pw/c", None).await?;
    let pzxid = b.check_stat("/pw").await?.unwrap().pzxid;
    assert_eq!(next_event("child delete", &mut w).await?, event(zk::EventType::NodeChildrenChanged, "/pw", pzxid));
    b.delete("/pw", None).await?;
    let root = b.check_stat("/").await?.unwrap().pzxid;
    assert_eq!(next_event("deleted", &mut w).await?, event(zk::EventType::NodeDeleted, "/pw", root));
    let (again, _) = b.create("/pw", b"", PERSISTENT).await?;
    assert_eq!(next_event("re-created", &mut w).await?, event(zk::EventType::NodeCreated, "/pw", again.czxid));
    drop((a, b));
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_watch_sees_descendants() -> Result<()> {
    let server = TestServer::start().await?;
    let a = server.client().await?;
    let b = server.client().await?;
    let mut w = a.watch("/rw", zk::AddWatchMode::PersistentRecursive).await?;

    let (s, _) = b.create("/rw", b"", PERSISTENT).await?;
    assert_eq!(next_event("created", &mut w).await?, event(zk::EventType::NodeCreated, "/rw", s.czxid));
    let (s, _) = b.create("/rw/a", b"", PERSISTENT).await?;
    assert_eq!(next_event("child created", &mut w).await?, event(zk::EventType::NodeCreated, "/rw/a", s.czxid));
    let (s, _) = b.create("/rw/a/b", b"", PERSISTENT).await?;
    assert_eq!(next_event("grandchild", &mut w).await?, event(zk::EventType::NodeCreated, "/rw/a/b", s.czxid));
    let s = b.set_data("/rw/a/b", b"x", None).await?;
    assert_eq!(next_event("data", &mut w).await?, event(zk::EventType::NodeDataChanged, "/rw/a/b", s.mzxid));
    b.delete("/rw/a/b", None).await?;
    let p = b.check_stat("/rw/a").await?.unwrap().pzxid;
    assert_eq!(next_event("deleted", &mut w).await?, event(zk::EventType::NodeDeleted, "/rw/a/b", p));
    b.create("/rwx", b"", PERSISTENT).await?; // a sibling with a common prefix is not below /rw
    let s = b.set_data("/rw", b"y", None).await?;
    assert_eq!(next_event("own data", &mut w).await?, event(zk::EventType::NodeDataChanged, "/rw", s.mzxid));
    drop((a, b));
    server.stop().await
}

/// The exact notification stream on the wire: a recursive watch gets descendants' events but
/// never NodeChildrenChanged; a persistent watch gets its node's events including child changes
/// and nothing about its children's data. addWatch answers with an int 0, and refuses an
/// invalid path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_and_recursive_wire_sequence() -> Result<()> {
    let server = TestServer::start().await?;
    let b = server.client().await?;
    let mut a = Raw::connect(server.addr, 5000).await?;
    let r = a.call(op::ADD_WATCH, &body::path_int("/r", 1)).await?;
    assert_eq!((r.err, r.body.as_slice()), (0, &[0u8, 0, 0, 0][..]), "addWatch replies ErrorResponse(0)");
    a.call(op::ADD_WATCH, &body::path_int("/p", 0)).await?.ok()?;
    // An unknown mode: Apache ZooKeeper 3.8's answer (see differential_cases.rs).
    assert_eq!(a.call(op::ADD_WATCH, &body::path_int("/p", 2)).await?.err, err::MARSHALLING_ERROR);
    // A path no node can have is refused, as every other request's is (Apache ZooKeeper 3.8
    // registers a watch on it that can never fire; its clients check paths before sending).
    for bad in ["/p/", "p", "/a//b", "/a/./b"] {
        assert_eq!(a.call(op::ADD_WATCH, &body::path_int(bad, 0)).await?.err, err::BAD_ARGUMENTS, "addWatch({bad})");
    }

    let mut want = Vec::new();
    let (s, _) = b.create("/r", b"", PERSISTENT).await?;
    want.push(note(ev::NODE_CREATED, "/r", s.czxid));
    let (s, _) = b.create("/r/a", b"", PERSISTENT).await?;
    want.push(note(ev::NODE_CREATED, "/r/a", s.czxid));
    let (s, _) = b.create("/r/a/b", b"", PERSISTENT).await?;
    want.push(note(ev::NODE_CREATED, "/r/a/b", s.czxid));
    let s = b.set_data("/r/a", b"1", None).await?;
    want.push(note(ev::NODE_DATA_CHANGED, "/r/a", s.mzxid));
    b.delete("/r/a/b", None).await?;
    want.push(note(ev::NODE_DELETED, "/r/a/b", b.check_stat("/r/a").await?.unwrap().pzxid));
    let (s, _) = b.create("/p", b"", PERSISTENT).await?;
    want.push(note(ev::NODE_CREATED, "/p", s.czxid));
    let (s, _) = b.create("/p/c", b"", PERSISTENT).await?;
    want.push(note(ev::NODE_CHILDREN_CHANGED, "/p", s.czxid));
    b.set_data("/p/c", b"not for /p", None).await?;
    let s = b.set_data("/p", b"1", None).await?;
    want.push(note(ev::NODE_DATA_CHANGED, "/p", s.mzxid));
    b.delete("/p/c", None).await?;
    want.push(note(ev::NODE_CHILDREN_CHANGED, "/p", b.check_stat("/p").await?.unwrap().pzxid));
    let s = b.set_data("/r", b"last", None).await?;
    let sentinel = note(ev::NODE_DATA_CHANGED, "/r", s.mzxid);

    let got = notes_until(&mut a, &sentinel).await?;
    assert_eq!(got, want);
    drop(b);
    server.stop().await
}

/// checkWatches (17) and removeWatches (18) by watcher type: 1 children, 2 data, 3 any,
/// 4 persistent, 5 persistent recursive; NoWatcher when absent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_remove_watches() -> Result<()> {
    let server = TestServer::start().await?;
    let b = server.client().await?;
    b.create("/cw", b"", PERSISTENT).await?;
    let mut a = Raw::connect(server.addr, 5000).await?;
    let check = |ty| body::path_int("/cw", ty);

    for ty in 1..=5 {
        assert_eq!(a.call(op::CHECK_WATCHES, &check(ty)).await?.err, err::NO_WATCHER, "type {ty} before any watch");
    }
    a.call(op::GET_DATA, &body::path_watch("/cw", true)).await?.ok()?;
    a.call(op::GET_CHILDREN, &body::path_watch("/cw", true)).await?.ok()?;
    for (ty, want) in [(1, 0), (2, 0), (3, 0), (4, err::NO_WATCHER), (5, err::NO_WATCHER)] {
        let r = a.call(op::CHECK_WATCHES, &check(ty)).await?;
        assert_eq!((r.err, r.body.len()), (want, 0), "checkWatches type {ty}");
    }
    assert_eq!(a.call(op::CHECK_WATCHES, &body::path_int("/other", 3)).await?.err, err::NO_WATCHER);
    // An unknown type: Apache ZooKeeper 3.8's answer (see differential_cases.rs).
    assert_eq!(a.call(op::CHECK_WATCHES, &check(9)).await?.err, err::MARSHALLING_ERROR);
    assert_eq!(a.call(op::REMOVE_WATCHES, &check(0)).await?.err, err::MARSHALLING_ERROR);

    // Remove the data watch only: the child watch still fires, the data watch does not.
    let r = a.call(op::REMOVE_WATCHES, &check(2)).await?;
    assert_eq!((r.err, r.body.len()), (0, 0));
    assert_eq!(a.call(op::REMOVE_WATCHES, &check(2)).await?.err, err::NO_WATCHER);
    assert_eq!(a.call(op::CHECK_WATCHES, &check(2)).await?.err, err::NO_WATCHER);
    assert_eq!(a.call(op::CHECK_WATCHES, &check(1)).await?.err, 0);
    b.set_data("/cw", b"1", None).await?;
    let (c, _) = b.create("/cw/x", b"", PERSISTENT).await?;
    assert_eq!(a.notification().await?, note(ev::NODE_CHILDREN_CHANGED, "/cw", c.czxid));

    // Persistent and recursive watches are checked and removed by their own types.
    a.call(op::ADD_WATCH, &body::path_int("/cw", 0)).await?.ok()?;
    a.call(op::ADD_WATCH, &body::path_int("/cw", 1)).await?.ok()?;
    assert_eq!(a.call(op::CHECK_WATCHES, &check(4)).await?.err, 0);
    assert_eq!(a.call(op::CHECK_WATCHES, &check(5)).await?.err, 0);
    assert_eq!(a.call(op::REMOVE_WATCHES, &check(4)).await?.err, 0);
    assert_eq!(a.call(op::CHECK_WATCHES, &check(4)).await?.err, err::NO_WATCHER);
    assert_eq!(a.call(op::CHECK_WATCHES, &check(3)).await?.err, 0, "the recursive one is left");
    assert_eq!(a.call(op::REMOVE_WATCHES, &check(3)).await?.err, 0);
    assert_eq!(a.call(op::CHECK_WATCHES, &check(3)).await?.err, err::NO_WATCHER);

    // Nothing is left: a later change reaches only a new sentinel watch.
    b.set_data("/cw", b"2", None).await?;
    assert_eq!(a.call(op::EXISTS, &body::path_watch("/cw-sentinel", true)).await?.err, err::NO_NODE);
    let (s, _) = b.create("/cw-sentinel", b"", PERSISTENT).await?;
    assert_eq!(notes_until(&mut a, &note(ev::NODE_CREATED, "/cw-sentinel", s.czxid)).await?, vec![]);
    drop(b);
    server.stop().await
}

/// zookeeper-client removes a dropped watcher with removeWatches; the server stops notifying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_watchers_are_removed_on_the_server() -> Result<()> {
    let server = TestServer::start().await?;
    let a = server.client().await?;
    let b = server.client().await?;
    b.create("/dw", b"", PERSISTENT).await?;
    let (_, _, w) = a.get_and_watch_data("/dw").await?;
    drop(w);
    let pw = a.watch("/dw", zk::AddWatchMode::PersistentRecursive).await?;
    drop(pw);
    // A later request of the same session is answered after the removals were processed.
    a.sync("/").await?;
    wait_until(DEADLINE, "the server to drop the watches", || server.state.lock().unwrap().watches.watch_count() == 0)
        .await?;
    drop((a, b));
    server.stop().await
}

/// SetWatches (101) after a reconnect, relative to the zxid the client has seen: a data watch
/// fires NodeDataChanged if mzxid > relativeZxid and NodeDeleted if the node is gone; an exist
/// watch fires NodeCreated if the node exists; a child watch fires NodeChildrenChanged if
/// pzxid > relativeZxid and NodeDeleted if gone; the others are registered. The reply has xid -8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_watches_applies_the_relative_zxid_rule() -> Result<()> {
    let server = TestServer::start().await?;
    let b = server.client().await?;
    for p in ["/d1", "/d2", "/gone", "/c1", "/c2", "/gone2", "/e1"] {
        b.create(p, b"", PERSISTENT).await?;
    }
    let seen = server.last_zxid();
    b.set_data("/d1", b"changed", None).await?;
    b.delete("/gone", None).await?;
    b.delete("/gone2", None).await?;
    b.create("/c1/new", b"", PERSISTENT).await?;

    let mut a = Raw::connect(server.addr, 5000).await?;
    let sw = body::set_watches(seen, &["/d1", "/d2", "/gone"], &["/e1", "/nope"], &["/c1", "/c2", "/gone2"], None);
    a.send_frame(&common::raw::request(xid::SET_WATCHES, op::SET_WATCHES, &sw)).await?;
    let (reply, fired) = a.reply_to(xid::SET_WATCHES).await?;
    assert_eq!((reply.err, reply.body.len()), (0, 0));
    let fired: Vec<(i32, String)> = fired.into_iter().map(|n| (n.kind, n.path)).collect();
    assert_eq!(
        fired,
        vec![
            (ev::NODE_DATA_CHANGED, "/d1".to_string()),
            (ev::NODE_DELETED, "/gone".to_string()),
            (ev::NODE_CREATED, "/e1".to_string()),
            (ev::NODE_CHILDREN_CHANGED, "/c1".to_string()),
            (ev::NODE_DELETED, "/gone2".to_string()),
        ]
    );

    // The watches that did not fire are registered and fire on the next change; the fired
    // ones are not.
    assert_eq!(a.call(op::EXISTS, &body::path_watch("/sw-sentinel", true)).await?.err, err::NO_NODE);
    b.set_data("/d1", b"again", None).await?;
    b.create("/c1/again", b"", PERSISTENT).await?;
    let mut want = Vec::new();
    let s = b.set_data("/d2", b"x", None).await?;
    want.push(note(ev::NODE_DATA_CHANGED, "/d2", s.mzxid));
    let (s, _) = b.create("/nope", b"", PERSISTENT).await?;
    want.push(note(ev::NODE_CREATED, "/nope", s.czxid));
    let (s, _) = b.create("/c2/x", b"", PERSISTENT).await?;
    want.push(note(ev::NODE_CHILDREN_CHANGED, "/c2", s.czxid));
    let (s, _) = b.create("/sw-sentinel", b"", PERSISTENT).await?;
    assert_eq!(notes_until(&mut a, &note(ev::NODE_CREATED, "/sw-sentinel", s.czxid)).await?, want);
    drop(b);
    server.stop().await
}

/// SetWatches2 (105): persistent and recursive watches registered before a connection dropped
/// keep firing on the resumed session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_watches2_restores_persistent_watches_on_a_resumed_session() -> Result<()> {
    let server = TestServer::start().await?;
    let b = server.client().await?;
    let mut a = Raw::connect(server.addr, 5000).await?;
    a.call(op::ADD_WATCH, &body::path_int("/pp", 0)).await?.ok()?;
    a.call(op::ADD_WATCH, &body::path_int("/rr", 1)).await?.ok()?;
    let seen = server.last_zxid();
    let (id, passwd) = (a.session_id, a.passwd.clone());
    drop(a); // the connection drops, the session stays
    wait_until(DEADLINE, "the server to notice the dropped connection", || server.connection_count() == 1).await?;

    let (pp, _) = b.create("/pp", b"", PERSISTENT).await?; // while disconnected: lost, as in ZooKeeper
    let mut a = Raw::resume(server.addr, id, &passwd, 5000).await?;
    let sw = body::set_watches(seen, &[], &[], &[], Some((&["/pp"], &["/rr"])));
    a.send_frame(&common::raw::request(xid::SET_WATCHES, op::SET_WATCHES2, &sw)).await?;
    let (reply, fired) = a.reply_to(xid::SET_WATCHES).await?;
    assert_eq!((reply.err, reply.body.len(), fired), (0, 0, vec![]), "persistent watches are just registered");

    let mut want = Vec::new();
    let s = b.set_data("/pp", b"1", None).await?;
    want.push(note(ev::NODE_DATA_CHANGED, "/pp", s.mzxid));
    let (s, _) = b.create("/pp/c", b"", PERSISTENT).await?;
    want.push(note(ev::NODE_CHILDREN_CHANGED, "/pp", s.czxid));
    let (s, _) = b.create("/rr", b"", PERSISTENT).await?;
    want.push(note(ev::NODE_CREATED, "/rr", s.czxid));
    let (s, _) = b.create("/rr/deep", b"", PERSISTENT).await?;
    want.push(note(ev::NODE_CREATED, "/rr/deep", s.czxid));
    let s = b.set_data("/pp", b"2", None).await?;
    want.push(note(ev::NODE_DATA_CHANGED, "/pp", s.mzxid));
    let sentinel = want.pop().unwrap();
    assert_eq!(notes_until(&mut a, &sentinel).await?, want);
    assert!(pp.czxid > seen);
    drop(b);
    server.stop().await
}

/// The issue's scenario: client A watches /x through a proxy; the proxy is cut; client B sets
/// /x; the proxy comes back on the same port; A resumes its session and its SetWatches
/// re-registration must deliver NodeDataChanged for /x. A watch on a node that did not change
/// meanwhile is re-registered and fires later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_through_a_cut_proxy_redelivers_missed_changes() -> Result<()> {
    let server = TestServer::start().await?;
    let mut proxy = Proxy::start(server.addr).await?;
    let a = connect(&proxy.addr.to_string(), Duration::from_secs(6)).await?;
    let b = server.client().await?;
    b.create("/x", b"0", PERSISTENT).await?;
    b.create("/y", b"0", PERSISTENT).await?;
    a.create("/a-eph", b"", EPHEMERAL).await?;
    let (_, _, wx) = a.get_and_watch_data("/x").await?;
    let (_, _, wy) = a.get_and_watch_data("/y").await?;
    let mut states = a.state_watcher();

    proxy.cut();
    assert_eq!(within("Disconnected", states.changed()).await?, zk::SessionState::Disconnected);
    let set = b.set_data("/x", b"1", None).await?;
    proxy.restore().await?;
    assert_eq!(
        within_for(Duration::from_secs(10), "SyncConnected", states.changed()).await?,
        zk::SessionState::SyncConnected
    );

    let ev = oneshot_event("NodeDataChanged for /x after the reconnect", wx).await?;
    assert_eq!((ev.event_type, ev.path.as_str()), (zk::EventType::NodeDataChanged, "/x"));
    assert_eq!(a.get_data("/x").await?.1, set);
    // Same session: its ephemeral survived.
    assert_eq!(b.check_stat("/a-eph").await?.map(|s| s.ephemeral_owner), Some(a.session_id().0));

    let set_y = b.set_data("/y", b"1", None).await?;
    assert_eq!(
        oneshot_event("/y after the reconnect", wy).await?,
        event(zk::EventType::NodeDataChanged, "/y", set_y.mzxid)
    );
    drop((a, b));
    server.stop().await
}

/// The connection drops between a write and its notification (the proxy swallows the first
/// notification and cuts): after the reconnect, every watch the multi fired is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_lost_with_the_connection_is_redelivered() -> Result<()> {
    let server = TestServer::start().await?;
    let proxy = Proxy::start(server.addr).await?;
    let a = connect(&proxy.addr.to_string(), Duration::from_secs(6)).await?;
    let mut w = a.new_multi_writer();
    for p in ["/a", "/b", "/c"] {
        w.add_create(p, b"0", PERSISTENT)?;
    }
    w.commit().await?;
    let (_, _, wa) = a.get_and_watch_data("/a").await?;
    let (_, _, wb) = a.get_and_watch_data("/b").await?;
    let (_, _, wc) = a.get_and_watch_data("/c").await?;
    let mut states = a.state_watcher();

    proxy.arm(Trap::CutAtNotification);
    let mut w = a.new_multi_writer();
    for p in ["/a", "/b", "/c"] {
        w.add_set_data(p, b"1", None)?;
    }
    let commit = w.commit(); // its reply is lost with the connection
                             // The state watcher reports the latest state: under load the reconnect may already have
                             // replaced Disconnected by the time it is read. The proxy's flag proves the cut.
    let first = within("a state change", states.changed()).await?;
    assert!(
        matches!(first, zk::SessionState::Disconnected | zk::SessionState::SyncConnected),
        "after the cut: {first:?}"
    );
    assert!(proxy.has_sprung(), "the proxy cut at a notification");
    drop(commit);
    if first == zk::SessionState::Disconnected {
        assert_eq!(
            within_for(Duration::from_secs(10), "SyncConnected", states.changed()).await?,
            zk::SessionState::SyncConnected
        );
    }
    for (p, w) in [("/a", wa), ("/b", wb), ("/c", wc)] {
        let ev = oneshot_event(p, w).await?;
        assert_eq!((ev.event_type, ev.path.as_str()), (zk::EventType::NodeDataChanged, p));
    }
    drop(a);
    server.stop().await
}
