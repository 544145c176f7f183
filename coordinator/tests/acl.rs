//! Authentication and ACLs, through zookeeper-client and the raw client: what each permission
//! guards, the `auth`, `digest`, `ip` and `world` schemes, invalid ACLs, the super digest,
//! getACL's masking, whoAmI, failed auth, SASL on a server without it, and notifications, which
//! must never reach a connection that may not read the node they are about.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use base64::Engine;
use common::raw::{body, op, parse_multi, xid, Jute, MultiResult, Notification, Packet, Raw};
use common::*;
use referee_testkit::{
    apache_zookeeper_installed, connect, skip, ApacheZk, ApacheZkProfile, TestServer, APACHE_ZK_MISSING, SUPER_DIGEST,
};
use zookeeper_client as zk;

const NO_AUTH: i32 = -102;
const INVALID_ACL: i32 = -114;
const AUTH_FAILED: i32 = -115;

/// `user:base64(sha1("user:password"))`, as ZooKeeper's DigestAuthenticationProvider makes it.
fn digest_id(user: &str, password: &str) -> String {
    let hash = sha1_smol::Sha1::from(format!("{user}:{password}")).digest().bytes();
    format!("{user}:{}", base64::engine::general_purpose::STANDARD.encode(hash))
}

async fn server() -> Result<TestServer> {
    TestServer::start_with(|c| c.super_digest = Some(SUPER_DIGEST.to_string())).await
}

/// A zookeeper-client session without auth.
async fn anon(addr: SocketAddr) -> Result<zk::Client> {
    connect(&addr.to_string(), Duration::from_secs(10)).await
}

/// Runs a scenario against this server, then against Apache ZooKeeper 3.8 (same super digest)
/// where it is installed, so every expectation is known to be Apache's behaviour too.
async fn on_both<F, Fut>(test: &str, scenario: F) -> Result<()>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let server = server().await?;
    scenario(server.addr).await.context("against this server")?;
    server.stop().await?;
    if !apache_zookeeper_installed() {
        skip(&format!("{test} (against Apache ZooKeeper)"), APACHE_ZK_MISSING);
        return Ok(());
    }
    let apache = tokio::task::spawn_blocking(|| ApacheZk::start(ApacheZkProfile::Reference)).await??;
    scenario(apache.connect_string().parse()?).await.context("against Apache ZooKeeper")
}

/// A zookeeper-client session authenticated with `digest user:password`.
async fn client_as(addr: SocketAddr, user: &str, password: &str) -> Result<zk::Client> {
    let c = anon(addr).await?;
    within("digest auth", c.auth("digest", format!("{user}:{password}").as_bytes())).await??;
    Ok(c)
}

/// A raw session authenticated with `digest user:password`.
async fn raw_as(addr: SocketAddr, user: &str, password: &str) -> Result<Raw> {
    let mut r = Raw::connect(addr, 5000).await?;
    r.call(op::AUTH, &body::auth("digest", format!("{user}:{password}").as_bytes())).await?.ok()?;
    Ok(r)
}

fn acl(perms: zk::Permission, scheme: &str, id: &str) -> zk::Acl {
    zk::Acl::new(perms, zk::AuthId::new(scheme, id))
}

/// A raw create body with the given ACL entries.
fn create_with_acl(path: &str, entries: &[(i32, &str, &str)]) -> Vec<u8> {
    let mut j = Jute::new().string(path).buffer(Some(b"d")).int(entries.len() as i32);
    for (perms, scheme, id) in entries {
        j = j.int(*perms).string(scheme).string(id);
    }
    j.int(0).into_vec()
}

fn set_acl_body(path: &str, entries: &[(i32, &str, &str)], version: i32) -> Vec<u8> {
    let mut j = Jute::new().string(path).int(entries.len() as i32);
    for (perms, scheme, id) in entries {
        j = j.int(*perms).string(scheme).string(id);
    }
    j.int(version).into_vec()
}

/// What an error-or-success comes down to, for comparing tables of outcomes.
fn outcome<T>(r: std::result::Result<T, zk::Error>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_permission_guards_exactly_its_operations() -> Result<()> {
    on_both("each_permission_guards_exactly_its_operations", each_permission_guards_exactly_its_operations_on).await
}

async fn each_permission_guards_exactly_its_operations_on(addr: SocketAddr) -> Result<()> {
    let alice = client_as(addr, "alice", "pw").await?;
    let anon = anon(addr).await?;
    let alice_id = digest_id("alice", "pw");
    let perms = [
        ("READ", zk::Permission::READ),
        ("WRITE", zk::Permission::WRITE),
        ("CREATE", zk::Permission::CREATE),
        ("DELETE", zk::Permission::DELETE),
        ("ADMIN", zk::Permission::ADMIN),
    ];
    let mut actual = Vec::new();
    let mut expected = Vec::new();
    for (name, perm) in perms {
        let p = format!("/p-{name}");
        let node_acl = [acl(zk::Permission::ALL, "digest", &alice_id), acl(perm, "world", "anyone")];
        alice.create(&p, b"data", &zk::CreateMode::Persistent.with_acls(zk::Acls::new(&node_acl))).await?;
        alice.create(&format!("{p}/kid"), b"", PERSISTENT).await?;
        let allowed = |needs: &[&str]| if needs.contains(&name) { "ok".to_string() } else { "NoAuth".to_string() };

        let checks: Vec<(&str, String, String)> = vec![
            ("exists", outcome(anon.check_stat(&p).await), "ok".into()),
            ("getData", outcome(anon.get_data(&p).await), allowed(&["READ"])),
            ("getChildren", outcome(anon.list_children(&p).await), allowed(&["READ"])),
            ("getChildren2", outcome(anon.get_children(&p).await), allowed(&["READ"])),
            ("getAllChildrenNumber", outcome(anon.count_descendants_number(&p).await), allowed(&["READ"])),
            ("getACL", outcome(anon.get_acl(&p).await), allowed(&["READ", "ADMIN"])),
            ("setData", outcome(anon.set_data(&p, b"new", None).await), allowed(&["WRITE"])),
            ("create child", outcome(anon.create(&format!("{p}/new"), b"", PERSISTENT).await), allowed(&["CREATE"])),
            ("delete child", outcome(anon.delete(&format!("{p}/kid"), None).await), allowed(&["DELETE"])),
            ("setACL", outcome(anon.set_acl(&p, &node_acl, None).await), allowed(&["ADMIN"])),
        ];
        for (op, got, want) in checks {
            actual.push(format!("{name} {op}: {got}"));
            expected.push(format!("{name} {op}: {want}"));
        }
    }
    assert_eq!(actual, expected);

    // The CREATE-only parent: the child made through it exists, and cannot be deleted through it.
    assert!(anon.check_stat("/p-CREATE/new").await?.is_some());
    assert!(matches!(anon.delete("/p-CREATE/new", None).await, Err(zk::Error::NoAuth)));
    // A node's own delete is governed by its parent (`/`, open), not by its ACL.
    alice.delete("/p-READ/kid", None).await?;
    anon.delete("/p-READ", None).await?;
    drop((alice, anon));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_check_needs_read_and_fails_the_whole_multi() -> Result<()> {
    on_both("a_multi_check_needs_read_and_fails_the_whole_multi", a_multi_check_needs_read_and_fails_the_whole_multi_on)
        .await
}

async fn a_multi_check_needs_read_and_fails_the_whole_multi_on(addr: SocketAddr) -> Result<()> {
    let alice = client_as(addr, "alice", "pw").await?;
    let only_alice = [acl(zk::Permission::ALL, "digest", &digest_id("alice", "pw"))];
    alice.create("/private", b"", &zk::CreateMode::Persistent.with_acls(zk::Acls::new(&only_alice))).await?;
    let mut raw = Raw::connect(addr, 5000).await?;
    let ops = [
        (op::CREATE, body::create("/made", b"", 0)),
        (op::CHECK, body::path_int("/private", -1)),
        (op::SET_DATA, body::set_data("/private", b"x", -1)),
    ];
    let reply = raw.call(op::MULTI, &body::multi(&ops)).await?;
    assert_eq!(reply.err, 0);
    assert_eq!(
        parse_multi(&reply.body)?,
        vec![MultiResult::Error(0), MultiResult::Error(NO_AUTH), MultiResult::Error(-2)]
    );
    assert_eq!(raw.call(op::EXISTS, &body::path_watch("/made", false)).await?.err, -101, "rolled back");
    drop(alice);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_acls_are_refused() -> Result<()> {
    on_both("invalid_acls_are_refused", invalid_acls_are_refused_on).await
}

async fn invalid_acls_are_refused_on(addr: SocketAddr) -> Result<()> {
    let mut raw = Raw::connect(addr, 5000).await?;
    raw.call(op::CREATE, &body::create("/n", b"", 0)).await?.ok()?;
    // Schemes without an authentication provider (ZooKeeper registers `ip` and `digest` unless
    // configured otherwise, and never one called `super`) cannot be checked: refused too.
    let cases: [&[(i32, &str, &str)]; 11] = [
        &[],
        &[(31, "world", "nobody")],
        &[(31, "auth", "")],
        &[(31, "digest", "alice")],
        &[(31, "ip", "300.1.2.3")],
        &[(31, "ip", "10.0.0.0/33")],
        &[(31, "kerberos", "alice")],
        &[(31, "world", "anyone"), (31, "world", "nobody")],
        &[(31, "super", "x")],
        &[(31, "sasl", "kafka")],
        &[(31, "x509", "CN=client")],
    ];
    for entries in cases {
        let got = raw.call(op::CREATE, &create_with_acl("/bad", entries)).await?.err;
        assert_eq!(got, INVALID_ACL, "create with {entries:?}");
        let got = raw.call(op::SET_ACL, &set_acl_body("/n", entries, -1)).await?.err;
        assert_eq!(got, INVALID_ACL, "setACL with {entries:?}");
    }
    assert_eq!(raw.call(op::EXISTS, &body::path_watch("/bad", false)).await?.err, -101);
    // zookeeper-client: world:nobody.
    let c = anon(addr).await?;
    let nobody = [acl(zk::Permission::ALL, "world", "nobody")];
    let r = c.create("/bad", b"", &zk::CreateMode::Persistent.with_acls(zk::Acls::new(&nobody))).await;
    assert!(matches!(r, Err(zk::Error::InvalidAcl)), "{r:?}");
    // `auth` without any authenticated identity (the ip identity does not count).
    let r = c.create("/bad", b"", &zk::CreateMode::Persistent.with_acls(zk::Acls::creator_all())).await;
    assert!(matches!(r, Err(zk::Error::InvalidAcl)), "{r:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_scheme_expands_to_the_creators_digests() -> Result<()> {
    on_both("the_auth_scheme_expands_to_the_creators_digests", the_auth_scheme_expands_to_the_creators_digests_on).await
}

async fn the_auth_scheme_expands_to_the_creators_digests_on(addr: SocketAddr) -> Result<()> {
    let alice = client_as(addr, "alice", "pw").await?;
    alice.create("/a", b"", &zk::CreateMode::Persistent.with_acls(zk::Acls::creator_all())).await?;
    let (got, _) = alice.get_acl("/a").await?;
    assert_eq!(got, vec![acl(zk::Permission::ALL, "digest", &digest_id("alice", "pw"))]);

    // Two digests: both; the address identity never.
    within("second auth", alice.auth("digest", b"bob:secret")).await??;
    let read_admin = [acl(zk::Permission::READ | zk::Permission::ADMIN, "auth", "")];
    alice.create("/ab", b"", &zk::CreateMode::Persistent.with_acls(zk::Acls::new(&read_admin))).await?;
    let (mut got, _) = alice.get_acl("/ab").await?;
    got.sort_by(|x, y| x.id().cmp(y.id()));
    assert_eq!(
        got,
        vec![
            acl(zk::Permission::READ | zk::Permission::ADMIN, "digest", &digest_id("alice", "pw")),
            acl(zk::Permission::READ | zk::Permission::ADMIN, "digest", &digest_id("bob", "secret")),
        ]
    );

    // A wrong password is not an auth failure: it is another identity, which reads nothing.
    let mallory = client_as(addr, "alice", "wrong").await?;
    assert!(matches!(mallory.get_data("/a").await, Err(zk::Error::NoAuth)));
    let bob = client_as(addr, "bob", "secret").await?;
    assert!(matches!(bob.get_data("/a").await, Err(zk::Error::NoAuth)));
    assert_eq!(bob.get_data("/ab").await?.0, b"");
    assert!(matches!(bob.set_data("/ab", b"x", None).await, Err(zk::Error::NoAuth)));
    drop((alice, mallory, bob));
    Ok(())
}

/// kazoo writes an empty string as a null one (length -1), so its `CREATOR_ALL_ACL`
/// (`auth` with an empty id) reaches the server with a null id; Apache ZooKeeper reads it as the
/// creator's identities, as it does an empty one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_acl_whose_id_is_a_null_string_is_read_as_kazoo_sends_it() -> Result<()> {
    on_both("an_auth_acl_whose_id_is_a_null_string_is_read_as_kazoo_sends_it", an_auth_acl_with_a_null_id_on).await
}

async fn an_auth_acl_with_a_null_id_on(addr: SocketAddr) -> Result<()> {
    let null_id_acl = |j: Jute| j.int(1).int(31).string("auth").int(-1);
    // Without an authenticated identity: the meaningful refusal, not a decoding one.
    let mut anonymous = Raw::connect(addr, 5000).await?;
    let create = null_id_acl(Jute::new().string("/c").buffer(Some(b"d"))).int(0).into_vec();
    assert_eq!(anonymous.call(op::CREATE, &create).await?.err, INVALID_ACL, "create, no auth");

    let mut alice = raw_as(addr, "alice", "pw").await?;
    alice.call(op::CREATE, &create).await?.ok()?;
    alice.call(op::CREATE, &body::create("/s", b"", 0)).await?.ok()?;
    let set = null_id_acl(Jute::new().string("/s")).int(-1).into_vec();
    alice.call(op::SET_ACL, &set).await?.ok()?;
    let c = client_as(addr, "alice", "pw").await?;
    let expected = vec![acl(zk::Permission::ALL, "digest", &digest_id("alice", "pw"))];
    assert_eq!(c.get_acl("/c").await?.0, expected, "created with kazoo's CREATOR_ALL_ACL");
    assert_eq!(c.get_acl("/s").await?.0, expected, "set to kazoo's CREATOR_ALL_ACL");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ip_scheme_matches_the_client_address() -> Result<()> {
    on_both("the_ip_scheme_matches_the_client_address", the_ip_scheme_matches_the_client_address_on).await
}

async fn the_ip_scheme_matches_the_client_address_on(addr: SocketAddr) -> Result<()> {
    let setup = anon(addr).await?;
    let anon = anon(addr).await?;
    for (path, id) in [("/ip-exact", "127.0.0.1"), ("/ip-net", "127.0.0.0/8"), ("/ip-other", "10.0.0.0/8")] {
        let entries = [acl(zk::Permission::READ, "ip", id), acl(zk::Permission::ADMIN, "world", "anyone")];
        setup.create(path, b"x", &zk::CreateMode::Persistent.with_acls(zk::Acls::new(&entries))).await?;
    }
    assert_eq!(anon.get_data("/ip-exact").await?.0, b"x");
    assert_eq!(anon.get_data("/ip-net").await?.0, b"x");
    assert!(matches!(anon.get_data("/ip-other").await, Err(zk::Error::NoAuth)));
    // The ip identity is one of the connection's, listed by whoAmI.
    let users = anon.list_auth_users().await?;
    assert_eq!(users, vec![zk::AuthUser::new("ip", "127.0.0.1")]);
    drop((setup, anon));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_super_digest_bypasses_every_acl() -> Result<()> {
    on_both("the_super_digest_bypasses_every_acl", the_super_digest_bypasses_every_acl_on).await
}

async fn the_super_digest_bypasses_every_acl_on(addr: SocketAddr) -> Result<()> {
    let alice = client_as(addr, "alice", "pw").await?;
    let root = client_as(addr, "super", "test").await?;
    let only_alice = [acl(zk::Permission::ALL, "digest", &digest_id("alice", "pw"))];
    alice.create("/locked", b"secret", &zk::CreateMode::Persistent.with_acls(zk::Acls::new(&only_alice))).await?;
    alice.create("/locked/kid", b"", &zk::CreateMode::Persistent.with_acls(zk::Acls::new(&only_alice))).await?;
    let far = [acl(zk::Permission::ALL, "ip", "10.0.0.0/8")];
    alice.create("/far", b"", &zk::CreateMode::Persistent.with_acls(zk::Acls::new(&far))).await?;

    assert_eq!(root.get_data("/locked").await?.0, b"secret");
    assert_eq!(root.list_children("/locked").await?, vec!["kid".to_string()]);
    root.set_data("/locked", b"mine", None).await?;
    root.create("/locked/new", b"", PERSISTENT).await?;
    root.delete("/locked/kid", None).await?;
    // Super sees digests unmasked without being named in the ACL.
    assert_eq!(root.get_acl("/locked").await?.0, only_alice.to_vec());
    root.set_acl("/far", &[acl(zk::Permission::READ, "world", "anyone")], None).await?;
    assert_eq!(alice.get_data("/far").await?.0, b"");
    root.delete("/locked/new", None).await?;
    root.delete("/locked", None).await?;
    let mut users = root.list_auth_users().await?;
    users.sort_by(|a, b| a.scheme().cmp(b.scheme()));
    assert_eq!(
        users,
        vec![
            zk::AuthUser::new("digest", "super"),
            zk::AuthUser::new("ip", "127.0.0.1"),
            zk::AuthUser::new("super", "")
        ]
    );
    // A wrong super password is just a digest user called super.
    let not_root = client_as(addr, "super", "guess").await?;
    assert!(not_root.get_data("/far").await.is_ok(), "world-readable now");
    assert!(matches!(not_root.set_data("/far", b"x", None).await, Err(zk::Error::NoAuth)));
    drop((alice, root, not_root));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_acl_without_admin_masks_digests() -> Result<()> {
    on_both("get_acl_without_admin_masks_digests", get_acl_without_admin_masks_digests_on).await
}

async fn get_acl_without_admin_masks_digests_on(addr: SocketAddr) -> Result<()> {
    let alice = client_as(addr, "alice", "pw").await?;
    let alice_id = digest_id("alice", "pw");
    let entries = [acl(zk::Permission::ALL, "digest", &alice_id), acl(zk::Permission::READ, "world", "anyone")];
    alice.create("/m", b"", &zk::CreateMode::Persistent.with_acls(zk::Acls::new(&entries))).await?;
    let anon = anon(addr).await?;
    let (seen, stat) = anon.get_acl("/m").await?;
    assert_eq!(seen, vec![acl(zk::Permission::ALL, "digest", "alice:x"), acl(zk::Permission::READ, "world", "anyone")]);
    assert_eq!(stat.aversion, 0);
    assert_eq!(alice.get_acl("/m").await?.0, entries.to_vec());
    drop((alice, anon));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn who_am_i_lists_the_address_and_digest_users() -> Result<()> {
    on_both("who_am_i_lists_the_address_and_digest_users", who_am_i_lists_the_address_and_digest_users_on).await
}

async fn who_am_i_lists_the_address_and_digest_users_on(addr: SocketAddr) -> Result<()> {
    let c = anon(addr).await?;
    assert_eq!(c.list_auth_users().await?, vec![zk::AuthUser::new("ip", "127.0.0.1")]);
    within("auth", c.auth("digest", b"alice:pw")).await??;
    within("auth", c.auth("digest", b"bob:pw2")).await??;
    // The same identity twice is listed once (in no particular order: Apache's is a hash set's).
    within("auth", c.auth("digest", b"alice:pw")).await??;
    let mut users = c.list_auth_users().await?;
    users.sort_by(|a, b| (a.scheme(), a.user()).cmp(&(b.scheme(), b.user())));
    assert_eq!(
        users,
        vec![
            zk::AuthUser::new("digest", "alice"),
            zk::AuthUser::new("digest", "bob"),
            zk::AuthUser::new("ip", "127.0.0.1"),
        ]
    );
    Ok(())
}

/// Sends an auth packet as the Java client does (xid -4) and returns the reply's (xid, zxid,
/// err, body length) and whether the server then closed the connection.
async fn auth_outcome(addr: SocketAddr, scheme: &str, credentials: &[u8]) -> Result<((i32, i64, i32, usize), bool)> {
    let mut raw = Raw::connect(addr, 5000).await?;
    raw.call(op::EXISTS, &body::path_watch("/", false)).await?.ok()?;
    raw.send_frame(&common::raw::request(xid::AUTH, op::AUTH, &body::auth(scheme, credentials))).await?;
    let reply = match raw.packet().await? {
        Packet::Reply(r) => (r.xid, r.zxid, r.err, r.body.len()),
        other => return Err(anyhow!("{scheme}: {other:?}")),
    };
    // Closed, or still serving: a ping tells.
    let closed = match raw.send_frame(&common::raw::request(xid::PING, op::PING, &[])).await {
        Err(_) => true,
        Ok(()) => match raw.read_frame().await? {
            None => true,
            Some(f) => match common::raw::parse_packet(&f)? {
                Packet::Reply(r) if r.xid == xid::PING && r.err == 0 => false,
                other => return Err(anyhow!("{scheme}: after auth, {other:?}")),
            },
        },
    };
    Ok((reply, closed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_auth_scheme_answers_auth_failed_and_closes_the_connection() -> Result<()> {
    on_both("an_unknown_auth_scheme_answers_auth_failed_and_closes_the_connection", unknown_scheme_on).await
}

async fn unknown_scheme_on(addr: SocketAddr) -> Result<()> {
    for scheme in ["kerberos", "x509", "world", ""] {
        let got = auth_outcome(addr, scheme, b"alice").await?;
        assert_eq!(got, ((xid::AUTH, 0, AUTH_FAILED, 0), true), "auth with scheme {scheme:?}");
    }
    // zookeeper-client sees AuthFailed.
    let c = anon(addr).await?;
    assert!(matches!(within("auth", c.auth("kerberos", b"x")).await?, Err(zk::Error::AuthFailed)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_auths_are_counted() -> Result<()> {
    let server = server().await?;
    auth_outcome(server.addr, "kerberos", b"x").await?;
    auth_outcome(server.addr, "kerberos", b"y").await?;
    assert_eq!(server.state.lock().unwrap().counters.auth_failed, 2);
    server.stop().await
}

/// Credentials Apache ZooKeeper's providers accept although they look odd: the `ip` provider
/// takes any auth packet (it authenticates the connection's address), and the digest provider
/// hashes whatever bytes it gets, with or without a colon (the user is what precedes the first
/// colon, or everything).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_but_valid_credentials_are_accepted_as_apache_accepts_them() -> Result<()> {
    on_both("odd_but_valid_credentials_are_accepted_as_apache_accepts_them", odd_credentials_on).await
}

async fn odd_credentials_on(addr: SocketAddr) -> Result<()> {
    let cases: [(&str, &[u8]); 5] = [
        ("digest", b"alice:pw"),
        ("digest", b"alice:pw:with:colons"),
        ("digest", b"no-colon"),
        ("digest", b""),
        ("ip", b"10.1.2.3"),
    ];
    let mut got = Vec::new();
    for (scheme, credentials) in cases {
        let (reply, closed) = auth_outcome(addr, scheme, credentials).await?;
        got.push(format!("{scheme} {:?}: err {} closed {closed}", String::from_utf8_lossy(credentials), reply.2));
    }
    let expected: Vec<String> = cases
        .iter()
        .map(|(scheme, c)| format!("{scheme} {:?}: err 0 closed false", String::from_utf8_lossy(c)))
        .collect();
    assert_eq!(got, expected);
    // The digest user without a colon is the whole string.
    let c = anon(addr).await?;
    within("auth", c.auth("digest", b"no-colon")).await??;
    let mut users = c.list_auth_users().await?;
    users.sort_by(|a, b| a.scheme().cmp(b.scheme()));
    assert_eq!(users, vec![zk::AuthUser::new("digest", "no-colon"), zk::AuthUser::new("ip", "127.0.0.1")]);
    Ok(())
}

/// SASL (opcode 102) on a server with no SASL mechanism: OK with a null token, as Apache 3.8.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_is_answered_ok_with_a_null_token() -> Result<()> {
    let server = server().await?;
    let addr = server.addr;
    let token = Jute::new().buffer(Some(b"\x01\x02token")).into_vec();
    let mut raw = Raw::connect(addr, 5000).await?;
    let reply = raw.call(op::SASL, &token).await?;
    assert_eq!((reply.err, reply.zxid, reply.body.clone()), (0, 0, vec![0xff; 4]));
    raw.call(op::EXISTS, &body::path_watch("/", false)).await?.ok()?;
    if apache_zookeeper_installed() {
        let apache = tokio::task::spawn_blocking(|| ApacheZk::start(ApacheZkProfile::Reference)).await??;
        let mut theirs = Raw::connect(apache.connect_string().parse()?, 5000).await?;
        let r = theirs.call(op::SASL, &token).await?;
        assert_eq!((r.err, r.zxid, r.body), (reply.err, reply.zxid, reply.body), "as Apache ZooKeeper answers");
    } else {
        skip("sasl_is_answered_ok_with_a_null_token (Apache comparison)", APACHE_ZK_MISSING);
    }
    server.stop().await
}

fn note(kind: i32, path: &str) -> (i32, String) {
    (kind, path.to_string())
}

/// Reads notifications until `control` arrives, returning them all (control included), then
/// checks that nothing else follows within a short window.
async fn notes_through(raw: &mut Raw, control: &(i32, String)) -> Result<Vec<(i32, String)>> {
    let mut out = Vec::new();
    loop {
        let n: Notification = raw.notification().await?;
        out.push((n.kind, n.path));
        if out.last() == Some(control) {
            break;
        }
        if out.len() > 50 {
            return Err(anyhow!("no control event among {out:?}"));
        }
    }
    match raw.read_frame_for(Duration::from_millis(200)).await {
        Err(_) => Ok(out),
        Ok(f) => Err(anyhow!("unexpected frame after the control event: {f:02x?} (after {out:?})")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_never_reach_a_connection_without_read() -> Result<()> {
    let server = server().await?;
    let addr = server.addr;
    let alice_id = digest_id("alice", "pw");
    let b = client_as(addr, "alice", "pw").await?;
    let only_alice = [acl(zk::Permission::ALL, "digest", &alice_id)];
    let private = zk::CreateMode::Persistent.with_acls(zk::Acls::new(&only_alice));
    b.create("/secret", b"0", &private).await?;
    b.create("/open", b"0", PERSISTENT).await?;

    // Three anonymous watchers and three of alice's, each with a watch on /open as control.
    // 1: exists (needs no READ) on /secret, 2: persistent recursive on /secret, 3: persistent.
    let mut watchers = Vec::new();
    for authed in [false, true] {
        for kind in 1..=3 {
            let mut r = if authed { raw_as(addr, "alice", "pw").await? } else { Raw::connect(addr, 5000).await? };
            match kind {
                1 => {
                    r.call(op::EXISTS, &body::path_watch("/secret", true)).await?.ok()?;
                    r.call(op::EXISTS, &body::path_watch("/open", true)).await?.ok()?;
                }
                mode => {
                    let m = if mode == 2 { 1 } else { 0 };
                    r.call(op::ADD_WATCH, &body::path_int("/secret", m)).await?.ok()?;
                    r.call(op::ADD_WATCH, &body::path_int("/open", 0)).await?.ok()?;
                }
            }
            if !authed {
                // Without READ, data and child watches cannot even be set.
                assert_eq!(r.call(op::GET_DATA, &body::path_watch("/secret", true)).await?.err, NO_AUTH);
                assert_eq!(r.call(op::GET_CHILDREN, &body::path_watch("/secret", true)).await?.err, NO_AUTH);
            }
            watchers.push((authed, kind, r));
        }
    }

    b.set_data("/secret", b"1", None).await?;
    b.create("/secret/kid", b"", &private).await?;
    b.set_data("/secret/kid", b"k", None).await?;
    b.delete("/secret/kid", None).await?;
    b.delete("/secret", None).await?;
    b.set_data("/open", b"control", None).await?;

    let control = note(3, "/open");
    for (authed, kind, mut r) in watchers {
        let got = notes_through(&mut r, &control).await?;
        let expected = match (authed, kind) {
            (false, _) => vec![control.clone()],
            (true, 1) => vec![note(3, "/secret"), control.clone()],
            (true, 2) => vec![
                note(3, "/secret"),
                note(1, "/secret/kid"),
                note(3, "/secret/kid"),
                note(2, "/secret/kid"),
                note(2, "/secret"),
                control.clone(),
            ],
            (true, _) => {
                vec![note(3, "/secret"), note(4, "/secret"), note(4, "/secret"), note(2, "/secret"), control.clone()]
            }
        };
        assert_eq!(got, expected, "watcher {kind}, authenticated as alice: {authed}");
    }
    drop(b);
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_follow_the_acl_at_the_time_of_the_event() -> Result<()> {
    let server = server().await?;
    let addr = server.addr;
    let alice_id = digest_id("alice", "pw");
    let b = client_as(addr, "alice", "pw").await?;
    b.create("/n", b"0", PERSISTENT).await?;
    let anon = anon(addr).await?;
    let mut w = anon.watch("/n", zk::AddWatchMode::Persistent).await?;
    b.set_data("/n", b"1", None).await?;
    assert_eq!(next_event("open node", &mut w).await?.event_type, zk::EventType::NodeDataChanged);
    // Locked: the change is not told; unlocked again: the next one is.
    b.set_acl("/n", &[acl(zk::Permission::ALL, "digest", &alice_id)], None).await?;
    b.set_data("/n", b"2", None).await?;
    b.set_acl("/n", &[acl(zk::Permission::ALL, "world", "anyone")], None).await?;
    let s = b.set_data("/n", b"3", None).await?;
    assert_eq!(next_event("unlocked node", &mut w).await?, event(zk::EventType::NodeDataChanged, "/n", s.mzxid));
    drop((b, anon));
    server.stop().await
}

/// A connection's authenticated identities are bounded (every write it makes carries them
/// into the log): an auth past the bound fails and closes the connection, as a failed auth does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connections_identities_are_bounded() -> Result<()> {
    let server = server().await?;
    let mut raw = Raw::connect(server.addr, 5000).await?;
    let user = |i: usize| format!("{}{i}:pw", "u".repeat(20_000));
    let mut refused = None;
    for i in 0..8 {
        let reply = raw.call(op::AUTH, &body::auth("digest", user(i).as_bytes())).await;
        match reply {
            Ok(r) if r.err == 0 => {}
            Ok(r) => {
                refused = Some((i, r.err));
                break;
            }
            Err(e) => return Err(e.context(format!("auth {i}"))),
        }
    }
    let (at, err) = refused.context("eight identities of 20 KB each were all taken")?;
    assert_eq!(err, AUTH_FAILED);
    assert!(at >= 2, "refused at the {at}th identity already");
    assert!(raw.call(op::EXISTS, &body::path_watch("/", false)).await.is_err(), "the connection is closed");
    // The server and other sessions carry on.
    let c = anon(server.addr).await?;
    c.create("/after", b"", &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await?;
    server.stop().await
}
