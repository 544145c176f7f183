//! Containers and TTL nodes on a live server (`container_check_interval_ms = 50`, extended types
//! on): a container goes once its last child is deleted, never while it has children and never
//! if it never had one; a TTL node goes once its TTL has passed without a change and without
//! children, not before. Without extended types a TTL create is `Unimplemented`, as in Apache
//! ZooKeeper 3.8.
//!
//! "Never" is proven without sleeping on hope: a control node, made due *after* the node under
//! test is in the state that must keep it, is waited for until the reaper deletes it; the reaper
//! looks at every candidate on each pass, so the pass that took the control also passed over the
//! node under test.

mod common;

use std::time::{Duration, Instant};

use anyhow::Result;
use common::raw::{body, err, op, Jute, Raw};
use common::*;
use referee_testkit::{within_for, TestServer};
use zookeeper_client as zk;

static CONTAINER: &zk::CreateOptions<'static> = &zk::CreateMode::Container.with_acls(zk::Acls::anyone_all());

fn ttl(ms: u64) -> zk::CreateOptions<'static> {
    zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()).with_ttl(Duration::from_millis(ms))
}

async fn reaping_server() -> Result<TestServer> {
    TestServer::start_with(|c| {
        c.container_check_interval_ms = 50;
        c.extended_types_enabled = true;
    })
    .await
}

/// Waits until `path` is gone, polling.
async fn gone(client: &zk::Client, path: &str, limit: Duration) -> Result<()> {
    within_for(limit, &format!("{path} to be reaped"), async {
        loop {
            if client.check_stat(path).await?.is_none() {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?
}

/// Makes a control container due now and waits until the reaper takes it: proof that at least one
/// reaping pass ran after this call started.
async fn reaper_pass(client: &zk::Client, name: &str) -> Result<()> {
    let path = format!("/control-{name}");
    client.create(&path, b"", CONTAINER).await?;
    client.create(&format!("{path}/x"), b"", PERSISTENT).await?;
    client.delete(&format!("{path}/x"), None).await?;
    gone(client, &path, DEADLINE).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_goes_after_its_last_child_and_watchers_see_it() -> Result<()> {
    let server = reaping_server().await?;
    let a = server.client().await?;
    let b = server.client().await?;
    let (stat, _) = a.create("/c", b"data", CONTAINER).await?;
    assert_eq!(stat.ephemeral_owner, 0, "clients see no owner on a container");
    a.create("/c/one", b"", PERSISTENT).await?;
    a.create("/c/two", b"", PERSISTENT).await?;

    // With children it stays, across reaping passes; one child left is still a child.
    reaper_pass(&a, "1").await?;
    assert!(a.check_stat("/c").await?.is_some());
    a.delete("/c/one", None).await?;
    reaper_pass(&a, "2").await?;
    assert_eq!(a.get_children("/c").await?.0, vec!["two".to_string()]);

    // Watchers of every kind on the container.
    let (_, exist_w) = b.check_and_watch_stat("/c").await?;
    let (_, _, data_w) = b.get_and_watch_data("/c").await?;
    let mut persistent = b.watch("/c", zk::AddWatchMode::Persistent).await?;
    a.delete("/c/two", None).await?;
    let mut children_changed = next_event("child delete on the persistent watch", &mut persistent).await?;
    assert_eq!(children_changed.event_type, zk::EventType::NodeChildrenChanged);
    children_changed = next_event("the container's deletion", &mut persistent).await?;
    assert_eq!(children_changed.event_type, zk::EventType::NodeDeleted);
    assert_eq!(children_changed.path, "/c");
    let root_pzxid = a.check_stat("/").await?.map(|s| s.pzxid).unwrap_or(-1);
    assert_eq!(children_changed.zxid, root_pzxid, "the reaping delete's zxid");
    let expected = event(zk::EventType::NodeDeleted, "/c", root_pzxid);
    assert_eq!(oneshot_event("exists watch", exist_w).await?, expected);
    assert_eq!(oneshot_event("data watch", data_w).await?, expected);
    assert!(matches!(a.get_data("/c").await, Err(zk::Error::NoNode)));
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_that_never_had_a_child_stays() -> Result<()> {
    let server = reaping_server().await?;
    let a = server.client().await?;
    a.create("/empty", b"", CONTAINER).await?;
    a.set_data("/empty", b"changed", None).await?;
    reaper_pass(&a, "1").await?;
    reaper_pass(&a, "2").await?;
    assert_eq!(a.get_data("/empty").await?.0, b"changed");
    // Nested: an inner container's reaping makes the outer one empty, which then goes too.
    a.create("/outer", b"", CONTAINER).await?;
    a.create("/outer/inner", b"", CONTAINER).await?;
    a.create("/outer/inner/leaf", b"", PERSISTENT).await?;
    a.delete("/outer/inner/leaf", None).await?;
    gone(&a, "/outer/inner", DEADLINE).await?;
    gone(&a, "/outer", DEADLINE).await?;
    assert!(a.check_stat("/empty").await?.is_some());
    server.stop().await
}

/// The lock recipe's shape (Curator): a container parent holding ephemeral sequential children.
/// When the last holder's session ends, its ephemeral goes and then the container.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_goes_after_its_last_ephemeral_child_goes_with_its_session() -> Result<()> {
    let server = reaping_server().await?;
    let a = server.client().await?;
    let holder = server.client().await?;
    a.create("/lock", b"", CONTAINER).await?;
    let (_, seq) = holder.create("/lock/member-", b"", EPHEMERAL_SEQ).await?;
    let member = format!("/lock/member-{seq}");
    reaper_pass(&a, "held").await?;
    assert!(a.check_stat("/lock").await?.is_some(), "held by {member}");
    let (_, w) = a.check_and_watch_stat("/lock").await?;
    drop(holder);
    let ev = within_for(Duration::from_secs(10), "the container's deletion", w.changed()).await?;
    assert_eq!((ev.event_type, ev.path.as_str()), (zk::EventType::NodeDeleted, "/lock"));
    assert!(a.check_stat(&member).await?.is_none());
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_node_goes_after_its_ttl_and_not_before() -> Result<()> {
    let server = reaping_server().await?;
    let a = server.client().await?;
    let sent = Instant::now();
    let (stat, _) = a.create("/t", b"v", &ttl(400)).await?;
    assert_eq!(stat.ephemeral_owner, 0, "clients see no owner on a TTL node");
    let (_, w) = a.check_and_watch_stat("/t").await?;
    let ev = within_for(Duration::from_secs(5), "the TTL node's deletion", w.changed()).await?;
    let elapsed = sent.elapsed();
    assert_eq!((ev.event_type, ev.path.as_str()), (zk::EventType::NodeDeleted, "/t"));
    assert!(elapsed >= Duration::from_millis(400), "deleted {elapsed:?} after its create, before its 400 ms TTL");

    // A sequential TTL node (mode 6) too.
    let seq_ttl =
        zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all()).with_ttl(Duration::from_millis(100));
    let (_, seq) = a.create("/ts-", b"", &seq_ttl).await?;
    let name = format!("/ts-{seq}");
    assert_eq!(name.len(), "/ts-".len() + 10, "{name}");
    gone(&a, &name, DEADLINE).await?;
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_and_children_keep_a_ttl_node() -> Result<()> {
    let server = reaping_server().await?;
    let a = server.client().await?;
    // Every change restarts the TTL: set every 100 ms for 2.5 s, far past the 1 s TTL.
    a.create("/busy", b"0", &ttl(1000)).await?;
    let start = Instant::now();
    let mut i = 0;
    let mut last_change = start;
    while start.elapsed() < Duration::from_millis(2500) {
        i += 1;
        // Sent before the server stamps the change's mtime.
        last_change = Instant::now();
        a.set_data("/busy", i.to_string().as_bytes(), None)
            .await
            .map_err(|e| anyhow::anyhow!("set {i} at {:?}: {e} (reaped while being changed?)", start.elapsed()))?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gone(&a, "/busy", Duration::from_secs(5)).await?;
    assert!(
        last_change.elapsed() >= Duration::from_millis(1000),
        "reaped {:?} after the last change, before its 1 s TTL",
        last_change.elapsed()
    );

    // A TTL node with a child is kept past its TTL, and goes once the child is deleted.
    a.create("/parent", b"", &ttl(100)).await?;
    a.create("/parent/kid", b"", PERSISTENT).await?;
    let created = Instant::now();
    // A later TTL node with the same TTL: once it is reaped, /parent was due in that pass too.
    a.create("/later", b"", &ttl(100)).await?;
    gone(&a, "/later", DEADLINE).await?;
    assert!(created.elapsed() > Duration::from_millis(100));
    reaper_pass(&a, "kept").await?;
    assert!(a.check_stat("/parent").await?.is_some(), "a TTL node with a child must stay");
    a.delete("/parent/kid", None).await?;
    gone(&a, "/parent", DEADLINE).await?;
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_nodes_are_unimplemented_without_extended_types() -> Result<()> {
    let server = TestServer::start_with(|c| c.container_check_interval_ms = 50).await?;
    let a = server.client().await?;
    assert!(matches!(a.create("/t", b"", &ttl(1000)).await, Err(zk::Error::Unimplemented)));
    assert!(a.check_stat("/t").await?.is_none());
    // Containers need no extended types.
    a.create("/c", b"", CONTAINER).await?;
    a.create("/c/x", b"", PERSISTENT).await?;
    a.delete("/c/x", None).await?;
    gone(&a, "/c", DEADLINE).await?;

    let mut raw = Raw::connect(server.addr, 5000).await?;
    let create_ttl = |path: &str, flags: i32, ttl: i64| {
        Jute::new().string(path).buffer(Some(b"")).open_acl().int(flags).long(ttl).into_vec()
    };
    assert_eq!(raw.call(op::CREATE_TTL, &create_ttl("/t", 5, 1000)).await?.err, err::UNIMPLEMENTED);
    assert_eq!(raw.call(op::CREATE_TTL, &create_ttl("/t", 6, 1000)).await?.err, err::UNIMPLEMENTED);
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_create_ttl_arguments_are_checked() -> Result<()> {
    let server = reaping_server().await?;
    let mut raw = Raw::connect(server.addr, 5000).await?;
    let create_ttl = |path: &str, flags: i32, ttl: i64| {
        Jute::new().string(path).buffer(Some(b"")).open_acl().int(flags).long(ttl).into_vec()
    };
    assert_eq!(raw.call(op::CREATE_TTL, &create_ttl("/t", 5, 0)).await?.err, err::BAD_ARGUMENTS);
    assert_eq!(raw.call(op::CREATE_TTL, &create_ttl("/t", 5, -5)).await?.err, err::BAD_ARGUMENTS);
    assert_eq!(raw.call(op::CREATE_TTL, &create_ttl("/t", 5, 0x0100_0000_0000_0000)).await?.err, err::BAD_ARGUMENTS);
    // ZooKeeper encodes a TTL in the owner field's low 40 bits.
    assert_eq!(raw.call(op::CREATE_TTL, &create_ttl("/t", 5, 1 << 40)).await?.err, err::BAD_ARGUMENTS);
    assert_eq!(raw.call(op::CREATE_TTL, &create_ttl("/longest", 5, (1 << 40) - 1)).await?.err, err::OK);
    assert_eq!(raw.call(op::CREATE_TTL, &create_ttl("/t", 0, 1000)).await?.err, err::BAD_ARGUMENTS);
    assert_eq!(raw.call(op::CREATE_TTL, &create_ttl("/t", 1, 1000)).await?.err, err::BAD_ARGUMENTS);
    // A TTL mode through plain create carries no TTL: refused too.
    assert_eq!(raw.call(op::CREATE, &body::create("/t", b"", 5)).await?.err, err::BAD_ARGUMENTS);
    // A good one answers with a Create2Response: path then Stat.
    let reply = raw.call(op::CREATE_TTL, &create_ttl("/t", 5, 60_000)).await?;
    let mut r = reply.rd();
    assert_eq!(r.string()?, "/t");
    let stat = r.stat()?;
    r.end()?;
    assert_eq!((stat.ephemeral_owner, stat.czxid), (0, reply.zxid));
    assert_eq!(raw.call(op::EXISTS, &body::path_watch("/t", false)).await?.err, err::OK);
    server.stop().await
}
