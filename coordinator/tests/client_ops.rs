//! Every data operation through the zookeeper-client crate, with exact Stat fields, error
//! variants and zxids.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use common::*;
use referee_testkit::TestServer;
use zookeeper_client as zk;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create2_returns_exact_stat_and_updates_parent() -> Result<()> {
    let server = TestServer::start().await?;
    let c = server.client().await?;
    let root_before = c.check_stat("/").await?.expect("/ exists");
    let before = now_ms();
    let (stat, seq) = c.create("/a", b"hello", PERSISTENT).await?;
    let after = now_ms();
    assert_eq!(seq.into_i64(), -1, "a non-sequential create has no sequence");
    assert_eq!(stat.czxid, server.last_zxid(), "czxid is the zxid of the create");
    assert_eq!((stat.mzxid, stat.pzxid), (stat.czxid, stat.czxid));
    assert_eq!((stat.version, stat.cversion, stat.aversion), (0, 0, 0));
    assert_eq!((stat.ephemeral_owner, stat.data_length, stat.num_children), (0, 5, 0));
    assert_eq!(stat.ctime, stat.mtime);
    assert!((before..=after).contains(&stat.ctime), "ctime {} not in [{before}, {after}]", stat.ctime);

    // Every read reports the same Stat.
    assert_eq!(c.get_data("/a").await?, (b"hello".to_vec(), stat));
    assert_eq!(c.check_stat("/a").await?, Some(stat));
    assert_eq!(c.get_children("/a").await?, (vec![], stat));

    // The parent: one more child, cversion + 1, pzxid = the create, data untouched.
    let root = c.check_stat("/").await?.expect("/ exists");
    assert_eq!(root.cversion, root_before.cversion + 1);
    assert_eq!(root.num_children, root_before.num_children + 1);
    assert_eq!(root.pzxid, stat.czxid);
    assert_eq!((root.version, root.mzxid, root.czxid), (root_before.version, root_before.mzxid, root_before.czxid));

    // Refusals change nothing.
    assert_eq!(c.create("/a", b"again", PERSISTENT).await.unwrap_err(), zk::Error::NodeExists);
    assert_eq!(c.create("/missing/child", b"", PERSISTENT).await.unwrap_err(), zk::Error::NoNode);
    assert_eq!(c.get_data("/a").await?, (b"hello".to_vec(), stat));
    let root_after = c.check_stat("/").await?.expect("/ exists");
    assert_eq!((root_after.cversion, root_after.pzxid), (root.cversion, root.pzxid));

    // Ephemerals belong to the session and cannot have children.
    let (e, _) = c.create("/a/e", b"", EPHEMERAL).await?;
    assert_eq!(e.ephemeral_owner, c.session_id().0);
    assert_eq!((e.data_length, e.czxid), (0, server.last_zxid()));
    assert_eq!(c.create("/a/e/x", b"", PERSISTENT).await.unwrap_err(), zk::Error::NoChildrenForEphemerals);
    assert_eq!(c.create("/a/e/x", b"", EPHEMERAL).await.unwrap_err(), zk::Error::NoChildrenForEphemerals);
    drop(c);
    server.stop().await
}

/// Opcode 1 (create): zookeeper-client falls back to it for a server older than 3.5, and the
/// CreateResponse then carries no Stat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_opcode_1_for_old_clients() -> Result<()> {
    let server = TestServer::start().await?;
    let old = within(
        "connect",
        zk::Client::connector()
            .with_server_version(3, 4, 0)
            .with_session_timeout(Duration::from_secs(6))
            .connect(&server.connect_string()),
    )
    .await??;
    let (stat, seq) = old.create("/old", b"v1", PERSISTENT).await?;
    assert!(stat.is_invalid(), "opcode 1 replies without a Stat, the client reports {stat:?}");
    assert_eq!(seq.into_i64(), -1);
    let (data, real) = old.get_data("/old").await?;
    assert_eq!(data, b"v1");
    assert_eq!((real.czxid, real.version), (server.last_zxid(), 0));

    let (_, s0) = old.create("/old/s-", b"", PERSISTENT_SEQ).await?;
    let (_, s1) = old.create("/old/s-", b"", PERSISTENT_SEQ).await?;
    assert_eq!((s0.into_i64(), s1.into_i64()), (0, 1));
    assert_eq!(old.list_children("/old").await?, vec!["s-0000000000", "s-0000000001"]);
    assert_eq!(old.create("/old", b"", PERSISTENT).await.unwrap_err(), zk::Error::NodeExists);
    drop(old);
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_checks_version_and_children_and_bumps_cversion_and_pzxid() -> Result<()> {
    let server = TestServer::start().await?;
    let c = server.client().await?;
    let (d, _) = c.create("/d", b"", PERSISTENT).await?;
    let (child, _) = c.create("/d/c", b"x", PERSISTENT).await?;
    c.set_data("/d/c", b"y", None).await?;

    assert_eq!(c.delete("/d", Some(d.version)).await.unwrap_err(), zk::Error::NotEmpty);
    assert_eq!(c.delete("/d/c", Some(child.version)).await.unwrap_err(), zk::Error::BadVersion);
    assert_eq!(c.delete("/d/c", Some(7)).await.unwrap_err(), zk::Error::BadVersion);
    assert!(c.check_stat("/d/c").await?.is_some(), "refused deletes delete nothing");

    c.delete("/d/c", Some(1)).await?;
    let delete_zxid = server.last_zxid();
    assert_eq!(c.check_stat("/d/c").await?, None);
    let parent = c.check_stat("/d").await?.expect("/d exists");
    assert_eq!(parent.pzxid, delete_zxid, "a delete moves the parent's pzxid");
    // Apache ZooKeeper 3.8 bumps the parent's cversion on delete too (the differential test
    // against it pins this).
    assert_eq!(parent.cversion, 2, "a delete bumps the parent's cversion");
    assert_eq!(parent.num_children, 0);
    assert_eq!(parent.mzxid, d.mzxid);

    assert_eq!(c.delete("/d/c", None).await.unwrap_err(), zk::Error::NoNode);
    c.delete("/d", Some(0)).await?;
    assert_eq!(c.check_stat("/d").await?, None);
    drop(c);
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_data_versions_and_stat() -> Result<()> {
    let server = TestServer::start().await?;
    let c = server.client().await?;
    let (created, _) = c.create("/s", b"a", PERSISTENT).await?;

    let s1 = c.set_data("/s", b"bb", Some(0)).await?;
    assert_eq!(s1.mzxid, server.last_zxid());
    assert!(s1.mzxid > created.mzxid);
    assert_eq!((s1.czxid, s1.ctime, s1.pzxid), (created.czxid, created.ctime, created.pzxid));
    assert_eq!((s1.version, s1.data_length, s1.cversion, s1.aversion), (1, 2, 0, 0));
    assert!(s1.mtime >= created.mtime);
    assert_eq!(c.get_data("/s").await?, (b"bb".to_vec(), s1));

    assert_eq!(c.set_data("/s", b"zz", Some(0)).await.unwrap_err(), zk::Error::BadVersion);
    assert_eq!(c.get_data("/s").await?, (b"bb".to_vec(), s1), "a refused setData changes nothing");

    let s2 = c.set_data("/s", b"", None).await?;
    assert_eq!((s2.version, s2.data_length, s2.mzxid), (2, 0, server.last_zxid()));
    assert_eq!(c.get_data("/s").await?, (vec![], s2));
    assert_eq!(c.set_data("/nope", b"x", None).await.unwrap_err(), zk::Error::NoNode);
    drop(c);
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exists_get_children_and_get_children2() -> Result<()> {
    let server = TestServer::start().await?;
    let c = server.client().await?;
    assert_eq!(c.check_stat("/p").await?, None);
    assert_eq!(c.list_children("/p").await.unwrap_err(), zk::Error::NoNode);
    assert_eq!(c.get_children("/p").await.unwrap_err(), zk::Error::NoNode);
    assert_eq!(c.get_data("/p").await.unwrap_err(), zk::Error::NoNode);

    c.create("/p", b"", PERSISTENT).await?;
    for name in ["b", "a", "c"] {
        c.create(&format!("/p/{name}"), name.as_bytes(), PERSISTENT).await?;
    }
    assert_eq!(c.list_children("/p").await?, vec!["a", "b", "c"]);
    let (children, stat) = c.get_children("/p").await?;
    assert_eq!(children, vec!["a", "b", "c"]);
    assert_eq!(Some(stat), c.check_stat("/p").await?);
    assert_eq!((stat.num_children, stat.cversion, stat.pzxid), (3, 3, server.last_zxid()));

    let root = c.list_children("/").await?;
    assert_eq!(root, vec!["p", "zookeeper"]);
    let mut zk_children = c.list_children("/zookeeper").await?;
    zk_children.sort();
    assert_eq!(zk_children, vec!["config", "quota"]);
    drop(c);
    server.stop().await
}

/// Sequential names are `%010d` of the parent's count of child creates; the reported cversion
/// counts creates and deletes (2 × creates − children), as Apache ZooKeeper's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_numbering_follows_parent_cversion() -> Result<()> {
    let server = TestServer::start().await?;
    let c = server.client().await?;
    c.create("/q", b"", PERSISTENT).await?;

    let (_, s) = c.create("/q/n-", b"", PERSISTENT_SEQ).await?;
    assert_eq!(s.into_i64(), 0);
    c.create("/q/plain", b"", PERSISTENT).await?; // cversion 1 -> 2
    let (st, s) = c.create("/q/n-", b"", EPHEMERAL_SEQ).await?;
    assert_eq!(s.into_i64(), 2, "plain creates advance the counter too");
    assert_eq!(st.ephemeral_owner, c.session_id().0);
    assert_eq!(c.check_stat("/q").await?.unwrap().cversion, 3);

    c.delete("/q/n-0000000000", None).await?;
    c.delete("/q/plain", None).await?;
    // As Apache ZooKeeper reports it: 2 × creates − children, creates plus deletes.
    assert_eq!(c.check_stat("/q").await?.unwrap().cversion, 5, "deletes count in the reported cversion");
    let (_, s) = c.create("/q/n-", b"", PERSISTENT_SEQ).await?;
    assert_eq!(s.into_i64(), 3, "sequence numbers count creates; a delete never makes one reusable");
    let (_, s) = c.create("/q/", b"", PERSISTENT_SEQ).await?;
    assert_eq!(s.into_i64(), 4);
    assert_eq!(c.list_children("/q").await?, vec!["0000000004", "n-0000000002", "n-0000000003"]);

    // A new parent starts at 0.
    c.create("/q2", b"", PERSISTENT).await?;
    let (_, s) = c.create("/q2/x", b"", PERSISTENT_SEQ).await?;
    assert_eq!(s.into_i64(), 0);
    assert_eq!(c.list_children("/q2").await?, vec!["x0000000000"]);
    drop(c);
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_success_returns_every_result_under_one_zxid() -> Result<()> {
    let server = TestServer::start().await?;
    let c = server.client().await?;
    let mut w = c.new_multi_writer();
    w.add_create("/m", b"m0", PERSISTENT)?;
    w.add_create("/m/a", b"a0", PERSISTENT)?;
    w.add_set_data("/m", b"m1", Some(0))?;
    w.add_check_version("/m", 1)?;
    w.add_create("/m/s-", b"", PERSISTENT_SEQ)?;
    w.add_delete("/m/a", Some(0))?;
    let results = w.commit().await?;
    let zxid = server.last_zxid();
    assert_eq!(results.len(), 6);
    let mut it = results.into_iter();
    // Inside a multi, Apache ZooKeeper 3.8 answers plain creates with the path only, whatever
    // the opcode: the client fills in an invalid Stat.
    match it.next().unwrap() {
        zk::MultiWriteResult::Create { path, stat } => assert_eq!((path.as_str(), stat.czxid), ("/m", -1)),
        other => panic!("expected Create, got {other:?}"),
    }
    match it.next().unwrap() {
        zk::MultiWriteResult::Create { path, stat } => assert_eq!((path.as_str(), stat.czxid), ("/m/a", -1)),
        other => panic!("expected Create, got {other:?}"),
    }
    match it.next().unwrap() {
        zk::MultiWriteResult::SetData { stat } => {
            assert_eq!((stat.czxid, stat.mzxid, stat.version, stat.data_length), (zxid, zxid, 1, 2))
        }
        other => panic!("expected SetData, got {other:?}"),
    }
    assert!(matches!(it.next().unwrap(), zk::MultiWriteResult::Check));
    match it.next().unwrap() {
        zk::MultiWriteResult::Create { path, .. } => assert_eq!(path, "/m/s-0000000001"),
        other => panic!("expected Create, got {other:?}"),
    }
    assert!(matches!(it.next().unwrap(), zk::MultiWriteResult::Delete));

    let (data, m) = c.get_data("/m").await?;
    assert_eq!(data, b"m1");
    // Two creates and one delete under /m: cversion 3.
    assert_eq!((m.czxid, m.mzxid, m.pzxid, m.version, m.cversion, m.num_children), (zxid, zxid, zxid, 1, 3, 1));
    assert_eq!(c.check_stat("/m/a").await?, None);
    drop(c);
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_failure_applies_nothing_and_names_the_failing_op() -> Result<()> {
    let server = TestServer::start().await?;
    let c = server.client().await?;
    let watcher_client = server.client().await?;
    let (m, _) = c.create("/m", b"m0", PERSISTENT).await?;
    let (_, _, data_watch) = watcher_client.get_and_watch_data("/m").await?;
    let (_, _, child_watch) = watcher_client.get_and_watch_children("/").await?;

    let cases: Vec<(usize, zk::Error)> =
        vec![(2, zk::Error::NodeExists), (0, zk::Error::BadVersion), (1, zk::Error::NoNode)];
    for (index, source) in cases {
        let mut w = c.new_multi_writer();
        match index {
            2 => {
                w.add_create("/f", b"", PERSISTENT)?;
                w.add_set_data("/m", b"changed", None)?;
                w.add_create("/m", b"", PERSISTENT)?;
                w.add_delete("/m", None)?;
            }
            0 => {
                w.add_check_version("/m", 5)?;
                w.add_create("/f", b"", PERSISTENT)?;
            }
            _ => {
                w.add_set_data("/m", b"changed", Some(0))?;
                w.add_delete("/nope", None)?;
                w.add_create("/f", b"", PERSISTENT)?;
            }
        }
        let err = w.commit().await.unwrap_err();
        assert_eq!(err, zk::MultiWriteError::OperationFailed { index, source });
        assert_eq!(c.check_stat("/f").await?, None, "a failed multi creates nothing");
        assert_eq!(c.get_data("/m").await?, (b"m0".to_vec(), m), "a failed multi changes nothing");
    }
    let root = c.check_stat("/").await?.unwrap();
    assert_eq!(root.pzxid, m.czxid, "failed multis leave the parent's pzxid alone");

    // A failed multi fires no watch: the first events the watcher sees are those of this write.
    let set = c.set_data("/m", b"m1", None).await?;
    let ev = oneshot_event("data watch", data_watch).await?;
    assert_eq!(ev, event(zk::EventType::NodeDataChanged, "/m", set.mzxid));
    let (f, _) = c.create("/f", b"", PERSISTENT).await?;
    let ev = oneshot_event("child watch", child_watch).await?;
    assert_eq!(ev, event(zk::EventType::NodeChildrenChanged, "/", f.czxid));
    drop((c, watcher_client));
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_read_returns_data_children_and_errors() -> Result<()> {
    let server = TestServer::start().await?;
    let c = server.client().await?;
    c.create("/r", b"r", PERSISTENT).await?;
    c.create("/r/x", b"x", PERSISTENT).await?;
    c.create("/r/y", b"", PERSISTENT).await?;
    let (_, r_stat) = c.get_data("/r").await?;
    let (_, x_stat) = c.get_data("/r/x").await?;

    let mut reader = c.new_multi_reader();
    reader.add_get_data("/r")?;
    reader.add_get_data("/nope")?;
    reader.add_get_children("/r")?;
    reader.add_get_data("/r/x")?;
    reader.add_get_children("/nope")?;
    reader.add_get_children("/r/x")?;
    let results = reader.commit().await?;
    assert_eq!(results.len(), 6);
    let mut it = results.into_iter();
    match it.next().unwrap() {
        zk::MultiReadResult::Data { data, stat } => assert_eq!((data, stat), (b"r".to_vec(), r_stat)),
        other => panic!("expected Data, got {other:?}"),
    }
    assert!(matches!(it.next().unwrap(), zk::MultiReadResult::Error { err: zk::Error::NoNode }));
    match it.next().unwrap() {
        zk::MultiReadResult::Children { children } => assert_eq!(children, vec!["x", "y"]),
        other => panic!("expected Children, got {other:?}"),
    }
    match it.next().unwrap() {
        zk::MultiReadResult::Data { data, stat } => assert_eq!((data, stat), (b"x".to_vec(), x_stat)),
        other => panic!("expected Data, got {other:?}"),
    }
    assert!(matches!(it.next().unwrap(), zk::MultiReadResult::Error { err: zk::Error::NoNode }));
    match it.next().unwrap() {
        zk::MultiReadResult::Children { children } => assert!(children.is_empty()),
        other => panic!("expected Children, got {other:?}"),
    }
    drop(c);
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_then_read_sees_another_sessions_write() -> Result<()> {
    let server = TestServer::start().await?;
    let a = server.client().await?;
    let b = server.client().await?;
    let (stat, _) = b.create("/synced", b"v", PERSISTENT).await?;
    within("sync", a.sync("/synced")).await??;
    assert_eq!(a.get_data("/synced").await?, (b"v".to_vec(), stat));
    within("sync of /", a.sync("/")).await??;
    drop((a, b));
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_ephemerals_lists_only_this_sessions_ephemerals() -> Result<()> {
    let server = TestServer::start().await?;
    let c = server.client().await?;
    let other = server.client().await?;
    assert_eq!(c.list_ephemerals("/abc").await?, Vec::<String>::new(), "no NoNode for a missing prefix");

    c.create("/abc", b"", PERSISTENT).await?;
    c.create("/abc/efg", b"", EPHEMERAL).await?;
    let mut expected = vec!["/abc/efg".to_string()];
    for prefix in ["/ephemeral-i", "/abc/ephemeral-i"] {
        for _ in 0..3 {
            let (_, s) = c.create(prefix, b"", EPHEMERAL_SEQ).await?;
            expected.push(format!("{prefix}{s}"));
        }
    }
    other.create("/abc/theirs", b"", EPHEMERAL).await?;
    other.create("/ephemeral-other", b"", EPHEMERAL).await?;
    expected.sort();

    let mut all = c.list_ephemerals("/").await?;
    all.sort();
    assert_eq!(all, expected);
    let mut under_abc = c.list_ephemerals("/abc").await?;
    under_abc.sort();
    let want: Vec<String> = expected.iter().filter(|p| p.starts_with("/abc")).cloned().collect();
    assert_eq!(under_abc, want);
    assert_eq!(c.list_ephemerals("/abc/efg").await?, vec!["/abc/efg"]);
    let mut theirs = other.list_ephemerals("/").await?;
    theirs.sort();
    assert_eq!(theirs, vec!["/abc/theirs", "/ephemeral-other"]);
    drop((c, other));
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_all_children_number_counts_descendants() -> Result<()> {
    let server = TestServer::start().await?;
    let c = server.client().await?;
    // /zookeeper, /zookeeper/quota and /zookeeper/config.
    assert_eq!(c.count_descendants_number("/").await?, 3);
    for p in ["/abc", "/abc/efg", "/abc/efg/123"] {
        assert_eq!(c.count_descendants_number(p).await.unwrap_err(), zk::Error::NoNode);
    }
    c.create("/abc", b"", PERSISTENT).await?;
    assert_eq!(c.count_descendants_number("/").await?, 4);
    assert_eq!(c.count_descendants_number("/abc").await?, 0);
    c.create("/abc/efg", b"", PERSISTENT).await?;
    c.create("/abc/efg/123", b"", PERSISTENT).await?;
    c.create("/abc/xyz", b"", EPHEMERAL).await?;
    assert_eq!(c.count_descendants_number("/").await?, 7);
    assert_eq!(c.count_descendants_number("/abc").await?, 3);
    assert_eq!(c.count_descendants_number("/abc/efg").await?, 1);
    assert_eq!(c.count_descendants_number("/abc/efg/123").await?, 0);
    drop(c);
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_who_am_i_and_acls() -> Result<()> {
    let server = TestServer::start().await?;
    let c = server.client().await?;
    let users = c.list_auth_users().await?;
    assert_eq!(users, vec![zk::AuthUser::new("ip", "127.0.0.1")]);

    within("auth", c.auth("digest", b"bob:xyz")).await??;
    let users = c.list_auth_users().await?;
    assert!(users.contains(&zk::AuthUser::new("digest", "bob")), "{users:?}");
    assert!(users.contains(&zk::AuthUser::new("ip", "127.0.0.1")), "{users:?}");

    // Auth pipelined behind the ConnectRequest.
    let authed = within(
        "connect with auth",
        zk::Client::connector()
            .with_auth("digest", b"bob:xyz")
            .with_session_timeout(Duration::from_secs(6))
            .connect(&server.connect_string()),
    )
    .await??;
    assert!(authed.list_auth_users().await?.contains(&zk::AuthUser::new("digest", "bob")));

    c.create("/secret", b"s", &zk::CreateMode::Persistent.with_acls(zk::Acls::creator_all())).await?;
    let stranger = server.client().await?;
    assert_eq!(stranger.get_data("/secret").await.unwrap_err(), zk::Error::NoAuth);
    assert_eq!(stranger.set_data("/secret", b"x", None).await.unwrap_err(), zk::Error::NoAuth);
    assert_eq!(authed.get_data("/secret").await?.0, b"s");

    let (acl, stat) = c.get_acl("/secret").await?;
    assert_eq!(acl.len(), 1);
    assert_eq!((acl[0].scheme(), acl[0].id()), ("digest", "bob:NhT/eZBWLXwGI1jisA3HxYffNgo="));
    assert_eq!(stat.aversion, 0);
    assert_eq!(c.set_acl("/secret", &zk::Acls::anyone_all(), Some(3)).await.unwrap_err(), zk::Error::BadVersion);
    let s = c.set_acl("/secret", &zk::Acls::anyone_read(), Some(0)).await?;
    assert_eq!((s.aversion, s.version, s.mzxid), (1, 0, stat.mzxid), "setACL bumps only aversion");
    // Without ADMIN any more, a further setACL is refused before its version is looked at.
    assert_eq!(c.set_acl("/secret", &zk::Acls::anyone_all(), Some(1)).await.unwrap_err(), zk::Error::NoAuth);
    assert_eq!(stranger.get_data("/secret").await?.0, b"s");
    assert_eq!(stranger.set_data("/secret", b"x", None).await.unwrap_err(), zk::Error::NoAuth);
    drop((c, authed, stranger));
    server.stop().await
}

/// closeSession (-11) is sent when the last Client of a non-detached session is dropped: the
/// ephemerals go at once, watchers see NodeDeleted, and the session cannot be resumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_session_on_drop_removes_ephemerals() -> Result<()> {
    let server = TestServer::start().await?;
    let a = server.client().await?;
    let b = server.client().await?;
    let id = a.session_id().0;
    a.create("/cs", b"", EPHEMERAL).await?;
    let (_, _, w) = b.get_and_watch_data("/cs").await?;
    let mut state = a.state_watcher();
    let session = a.into_session();
    // The client reports Closed only if the server answered its closeSession before closing
    // the connection; checked last so the other facts are checked either way.
    let first_state = within("a state change after drop", state.changed()).await?;

    let ev = oneshot_event("NodeDeleted after closeSession", w).await?;
    let root = b.check_stat("/").await?.unwrap();
    assert_eq!(ev, event(zk::EventType::NodeDeleted, "/cs", root.pzxid));
    assert_eq!(b.check_stat("/cs").await?, None);
    assert!(!server.session_ids().contains(&id), "the closed session is gone from the tree");

    let addr = server.connect_string();
    let again = zk::Client::connector().with_session(session).connect(&addr);
    assert_eq!(within("reconnect", again).await?.unwrap_err(), zk::Error::SessionExpired);
    assert_eq!(first_state, zk::SessionState::Closed, "closeSession must be answered before the server closes");
    drop(b);
    server.stop().await
}

/// Reconfiguration is disabled: the request gets an error, the session lives on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfig_is_refused_with_an_error() -> Result<()> {
    let server = TestServer::start().await?;
    let c = server.client().await?;
    let servers = ["server.1=localhost:2888:3888;2181"];
    let update = zk::EnsembleUpdate::New { ensemble: servers.iter().copied() };
    let err = within("reconfig", c.update_ensemble(update, None)).await?.unwrap_err();
    assert_eq!(err, zk::Error::ReconfigDisabled);
    assert_eq!(c.state(), zk::SessionState::SyncConnected);
    c.create("/after", b"", PERSISTENT).await?;
    drop(c);
    server.stop().await
}
