//! The election layer against real servers: every scenario runs against the bundled coordinator
//! in-process (one test each) and, when Debian's `zookeeper` package is installed, against
//! Apache ZooKeeper 3.8 (one test running them all on one server, a cluster name each).
//!
//! Nothing sleeps and hopes: every wait is for an observable event, bounded by a deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use referee_failover_agent::candidacy::{ActivePosition, Candidacy, Position};
use referee_failover_agent::election::{
    Acquired, Coordination, CoordinationConfig, ElectionError, LockEvent, Recovery, Released,
};
use referee_failover_agent::model::{
    Breadcrumb, BreadcrumbView, HandoverRecord, LockRecord, LockView, Member, SessionView, TokenBase, TokenBaseView,
};
use referee_failover_agent::staleness::Implied;
use referee_fencing::{FenceTarget, FencingToken};
use referee_testkit::{
    apache_zookeeper_installed, cons_session_timeout, four_letter, skip, wait_until, within, ApacheZk,
    ApacheZkEnsemble, ApacheZkProfile, Proxy, TestServer, Trap, APACHE_ZK_MISSING,
};

/// Settings for a handle on `cluster` as `node`: 4 s sessions, 2 s calls.
fn cfg(addr: SocketAddr, cluster: &str, node: &str) -> CoordinationConfig {
    CoordinationConfig {
        connect: addr.to_string(),
        cluster: cluster.to_string(),
        node_id: node.to_string(),
        session_timeout: Duration::from_secs(4),
        op_timeout: Duration::from_secs(2),
        digest: None,
    }
}

/// Settings with a short session, for tests that wait for an expiry.
fn short_cfg(addr: SocketAddr, cluster: &str, node: &str) -> CoordinationConfig {
    CoordinationConfig {
        session_timeout: Duration::from_millis(1000),
        op_timeout: Duration::from_millis(400),
        ..cfg(addr, cluster, node)
    }
}

async fn connect(cfg: CoordinationConfig) -> Result<Coordination> {
    let what = format!("connecting {} to {}", cfg.node_id, cfg.connect);
    Ok(within(&what, Coordination::connect(cfg)).await??)
}

fn target(node: &str) -> FenceTarget {
    FenceTarget::new(node, "127.0.0.1", 9000, FencingToken::NONE)
}

fn record(node: &str) -> LockRecord {
    LockRecord { node_id: node.to_string(), target: target(node), peer_url: Some(format!("http://{node}:7000")) }
}

fn member(node: &str) -> Member {
    Member {
        node_id: node.to_string(),
        target: target(node),
        peer_url: None,
        probe_addr: Some("127.0.0.1:7001".into()),
        candidacy: None,
    }
}

fn crumb(node: &str, token: FencingToken, clean: bool) -> Breadcrumb {
    Breadcrumb { node_id: node.to_string(), token, clean, target: FenceTarget { token, ..target(node) } }
}

async fn win(h: &Coordination) -> Result<FencingToken> {
    match h.try_acquire(&record(h.node_id())).await? {
        Acquired::Won { token } => Ok(token),
        other => bail!("{} expected to win the lock, got {other:?}", h.node_id()),
    }
}

/// Two handles race for a free lock: exactly one wins, the other sees the winner and its token.
async fn race_for_the_lock(addr: SocketAddr) -> Result<()> {
    let a = connect(cfg(addr, "race", "a")).await?;
    let b = connect(cfg(addr, "race", "b")).await?;
    let (rec_a, rec_b) = (record("a"), record("b"));
    let (ra, rb) = tokio::join!(a.try_acquire(&rec_a), b.try_acquire(&rec_b));
    let (winner, loser, token, seen) = match (ra?, rb?) {
        (Acquired::Won { token }, seen @ Acquired::HeldBy { .. }) => (&a, &b, token, seen),
        (seen @ Acquired::HeldBy { .. }, Acquired::Won { token }) => (&b, &a, token, seen),
        other => bail!("expected exactly one winner, got {other:?}"),
    };
    ensure!(seen == Acquired::HeldBy { node_id: winner.node_id().to_string(), token }, "loser saw {seen:?}");
    ensure!(winner.read_lock().await? == LockView::Ours { token, version: 0 });
    ensure!(loser.read_lock().await? == LockView::Peer { node_id: winner.node_id().to_string(), token });
    // Trying again changes nothing for either side.
    ensure!(winner.try_acquire(&record(winner.node_id())).await? == Acquired::Won { token });
    ensure!(
        loser.try_acquire(&record(loser.node_id())).await?
            == Acquired::HeldBy { node_id: winner.node_id().to_string(), token }
    );
    Ok(())
}

/// Each acquisition's token is larger than every earlier one.
async fn tokens_strictly_increase(addr: SocketAddr) -> Result<()> {
    let a = connect(cfg(addr, "tokens", "a")).await?;
    let b = connect(cfg(addr, "tokens", "b")).await?;
    let t1 = win(&a).await?;
    ensure!(a.release(t1).await? == Released::Deleted);
    let t2 = win(&b).await?;
    ensure!(b.release(t2).await? == Released::Deleted);
    let t3 = win(&a).await?;
    ensure!(FencingToken::NONE < t1 && t1 < t2 && t2 < t3, "tokens {t1} {t2} {t3} do not increase");
    Ok(())
}

/// `read_lock` tells Free, Ours, Peer and OursFromOldSession apart by the owning session.
async fn lock_views(addr: SocketAddr) -> Result<()> {
    let a = connect(cfg(addr, "views", "a")).await?;
    let b = connect(cfg(addr, "views", "b")).await?;
    ensure!(a.read_lock().await? == LockView::Free);
    ensure!(a.read_lock_record().await?.is_none());
    let token = win(&a).await?;
    ensure!(a.read_lock().await? == LockView::Ours { token, version: 0 });
    ensure!(b.read_lock().await? == LockView::Peer { node_id: "a".into(), token });
    // A second handle with a's node id is a's next incarnation: the lock is not its.
    let a2 = connect(cfg(addr, "views", "a")).await?;
    ensure!(a2.session_id() != a.session_id());
    ensure!(a2.read_lock().await? == LockView::OursFromOldSession { token });
    ensure!(a2.try_acquire(&record("a")).await? == Acquired::HeldBy { node_id: "a".into(), token });
    let (rec, meta) = b.read_lock_record().await?.context("the lock should be held")?;
    ensure!(rec == record("a"), "record {rec:?}");
    ensure!(meta.token == token && meta.version == 0 && meta.owner_session == a.session_id(), "meta {meta:?}");
    Ok(())
}

/// `release` deletes only this session's lock with this token.
async fn release_deletes_only_our_lock(addr: SocketAddr) -> Result<()> {
    let a = connect(cfg(addr, "release", "a")).await?;
    let b = connect(cfg(addr, "release", "b")).await?;
    let a2 = connect(cfg(addr, "release", "a")).await?;
    ensure!(a.release(FencingToken(1)).await? == Released::AlreadyFree);
    let token = win(&a).await?;
    let not_ours = Released::NotOurs { token, owner_session: a.session_id() };
    ensure!(b.release(token).await? == not_ours, "a peer released our lock");
    ensure!(a2.release(token).await? == not_ours, "a newer session of the same node released the lock");
    ensure!(a.release(FencingToken(token.0 + 1)).await? == not_ours, "another acquisition's token released it");
    ensure!(b.read_lock().await? == LockView::Peer { node_id: "a".into(), token });
    ensure!(a.release(token).await? == Released::Deleted);
    ensure!(a.release(token).await? == Released::AlreadyFree);
    ensure!(b.read_lock().await? == LockView::Free);
    Ok(())
}

/// The breadcrumb is written only through the session holding the lock, compare-and-set on its
/// version; without the lock, or with a stale version, the write fails with a typed error.
async fn breadcrumb_needs_the_lock(addr: SocketAddr) -> Result<()> {
    let a = connect(cfg(addr, "crumb", "a")).await?;
    let b = connect(cfg(addr, "crumb", "b")).await?;
    ensure!(a.read_breadcrumb().await? == BreadcrumbView::Missing);
    let t1 = win(&a).await?;
    let c1 = crumb("a", t1, false);
    ensure!(a.write_breadcrumb(&c1, 0, None).await? == 0);
    ensure!(b.read_breadcrumb().await? == BreadcrumbView::Present { crumb: c1.clone(), version: 0 });
    ensure!(a.write_breadcrumb(&c1, 0, Some(0)).await? == 1);
    match a.write_breadcrumb(&c1, 0, Some(0)).await {
        Err(ElectionError::BreadcrumbChanged { expected: Some(0) }) => {}
        other => bail!("a stale breadcrumb version was accepted: {other:?}"),
    }
    match a.write_breadcrumb(&c1, 0, None).await {
        Err(e @ ElectionError::BreadcrumbChanged { expected: None }) => ensure!(e.recovery() == Recovery::Reread),
        other => bail!("creating over an existing breadcrumb was accepted: {other:?}"),
    }
    // A standby cannot write it, even with the holder's token and lock version.
    match b.write_breadcrumb(&crumb("b", t1, false), 0, Some(1)).await {
        Err(ElectionError::LockNotHeld { .. }) => {}
        other => bail!("a peer wrote the breadcrumb without the lock: {other:?}"),
    }
    // After losing the lock, the old holder cannot write it either.
    ensure!(a.release(t1).await? == Released::Deleted);
    let t2 = win(&b).await?;
    match a.write_breadcrumb(&c1, 0, Some(1)).await {
        Err(e @ ElectionError::LockNotHeld { .. }) => ensure!(e.recovery() == Recovery::Reread),
        other => bail!("the old holder wrote the breadcrumb: {other:?}"),
    }
    let c2 = crumb("b", t2, false);
    ensure!(b.write_breadcrumb(&c2, 0, Some(1)).await? == 2);
    // Closing the holder's session frees the lock at once; its breadcrumb stays.
    b.close().await?;
    ensure!(a.read_lock().await? == LockView::Free);
    ensure!(a.read_breadcrumb().await? == BreadcrumbView::Present { crumb: c2, version: 2 });
    match a.write_breadcrumb(&c1, 0, Some(2)).await {
        Err(ElectionError::LockNotHeld { .. }) => {}
        other => bail!("wrote the breadcrumb with a free lock: {other:?}"),
    }
    Ok(())
}

/// A clean step-down marks the breadcrumb clean and frees the lock in one transaction, or does
/// nothing at all.
async fn step_down_cleanly_is_atomic(addr: SocketAddr) -> Result<()> {
    let a = connect(cfg(addr, "stepdown", "a")).await?;
    let b = connect(cfg(addr, "stepdown", "b")).await?;
    let t = win(&a).await?;
    let dirty = crumb("a", t, false);
    ensure!(a.write_breadcrumb(&dirty, 0, None).await? == 0);
    let clean = crumb("a", t, true);
    match a.step_down_cleanly(&dirty, t, 0, 0).await {
        Err(ElectionError::InvalidArgument(_)) => {}
        other => bail!("stepped down with an unclean breadcrumb: {other:?}"),
    }
    match a.step_down_cleanly(&clean, t, 0, 7).await {
        Err(ElectionError::BreadcrumbChanged { expected: Some(7) }) => {}
        other => bail!("stepped down against a wrong breadcrumb version: {other:?}"),
    }
    // The failed multi changed nothing.
    ensure!(a.read_lock().await? == LockView::Ours { token: t, version: 0 });
    ensure!(b.read_breadcrumb().await? == BreadcrumbView::Present { crumb: dirty, version: 0 });
    match b.step_down_cleanly(&clean, t, 0, 0).await {
        Err(ElectionError::LockNotHeld { .. }) => {}
        other => bail!("a peer stepped down for the holder: {other:?}"),
    }
    a.step_down_cleanly(&clean, t, 0, 0).await?;
    ensure!(b.read_lock().await? == LockView::Free);
    ensure!(b.read_breadcrumb().await? == BreadcrumbView::Present { crumb: clean, version: 1 });
    Ok(())
}

/// Members register once per node id; a second agent with a live duplicate id is refused after
/// waiting out the session timeout, and registers once the first has gone.
async fn members_and_duplicate_node_ids(addr: SocketAddr) -> Result<()> {
    let a = connect(cfg(addr, "members", "a")).await?;
    let b = connect(cfg(addr, "members", "b")).await?;
    ensure!(a.members().await?.is_empty());
    a.register_member(&member("a")).await?;
    // Registering again through the same session is idempotent.
    a.register_member(&member("a")).await?;
    b.register_member(&member("b")).await?;
    ensure!(b.members().await? == vec![member("a"), member("b")]);
    match a.register_member(&member("b")).await {
        Err(ElectionError::InvalidArgument(_)) => {}
        other => bail!("registered under another node id: {other:?}"),
    }

    let dup = connect(short_cfg(addr, "members", "a")).await?;
    let started = Instant::now();
    match within("the duplicate's refusal", dup.register_member(&member("a"))).await? {
        Err(e @ ElectionError::DuplicateNodeId { .. }) => {
            ensure!(e.recovery() == Recovery::Fatal);
            let ElectionError::DuplicateNodeId { node_id, owner_session } = e else { unreachable!() };
            ensure!(node_id == "a" && owner_session == a.session_id(), "{node_id} {owner_session:#x}");
        }
        other => bail!("a duplicate node id was accepted: {other:?}"),
    }
    ensure!(
        started.elapsed() >= dup.negotiated_timeout(),
        "refused after {:?}, before the old session could have expired",
        started.elapsed()
    );
    a.close().await?;
    dup.register_member(&member("a")).await?;
    ensure!(b.members().await? == vec![member("a"), member("b")]);
    Ok(())
}

/// The membership left by a crashed previous incarnation is waited out: the new agent starts
/// once the old session expires.
async fn leftover_member_is_waited_out(addr: SocketAddr) -> Result<()> {
    let mut proxy = Proxy::start(addr).await?;
    let old = connect(short_cfg(proxy.addr, "leftover", "a")).await?;
    old.register_member(&member("a")).await?;
    let observer = connect(cfg(addr, "leftover", "b")).await?;
    ensure!(observer.members().await? == vec![member("a")]);
    // The old agent "crashes": its session is no longer kept alive.
    proxy.cut();
    let new = connect(short_cfg(addr, "leftover", "a")).await?;
    within("registration after the old session expired", new.register_member(&member("a"))).await??;
    ensure!(observer.members().await? == vec![member("a")]);
    drop(old);
    Ok(())
}

/// A session that can no longer reach the ensemble expires: its lock and membership vanish,
/// watchers see the deletion, its view becomes Expired, and its lease evidence stops moving.
async fn session_expiry_frees_the_lock(addr: SocketAddr) -> Result<()> {
    let mut proxy = Proxy::start(addr).await?;
    let a = connect(short_cfg(proxy.addr, "expiry", "a")).await?;
    let b = connect(cfg(addr, "expiry", "b")).await?;
    a.register_member(&member("a")).await?;
    let token = win(&a).await?;
    let mut session = a.session_watch();
    ensure!(session.current() == SessionView::Connected { session_id: a.session_id() });
    ensure!(a.session() == SessionView::Connected { session_id: a.session_id() });
    let mut lock_watch = b.watch_lock().await?;
    ensure!(b.read_lock().await? == LockView::Peer { node_id: "a".into(), token });

    proxy.cut();
    match a.read_lock().await {
        Err(e @ (ElectionError::Timeout { .. } | ElectionError::ConnectionLoss { .. })) => {
            ensure!(e.recovery() == Recovery::Retry)
        }
        other => bail!("read the lock without a connection: {other:?}"),
    }

    ensure!(within("the lock's deletion", lock_watch.changed()).await? == LockEvent::Deleted);
    ensure!(lock_watch.changed().await == LockEvent::Deleted, "a fired watch reports its event again");
    ensure!(b.read_lock().await? == LockView::Free);
    ensure!(b.members().await?.is_empty(), "the expired member is still listed");

    within("a's session to expire", async {
        while session.current() != SessionView::Expired {
            session.changed().await;
        }
    })
    .await?;
    ensure!(a.session() == SessionView::Expired);
    match a.try_acquire(&record("a")).await {
        Err(e) => ensure!(e.recovery() == Recovery::Reconnect, "expired handle failed with {e:?}"),
        Ok(won) => bail!("an expired handle acquired: {won:?}"),
    }
    Ok(())
}

/// A create whose reply is lost with the connection was applied all the same: `try_acquire`
/// reads the lock back and wins by its owner, not by the error.
async fn lost_create_reply_is_settled_by_owner(addr: SocketAddr) -> Result<()> {
    let proxy = Proxy::start(addr).await?;
    let a = connect(cfg(proxy.addr, "lostreply", "a")).await?;
    let b = connect(cfg(addr, "lostreply", "b")).await?;
    proxy.arm(Trap::DropNextReply);
    let outcome = within("the acquisition", a.try_acquire(&record("a"))).await??;
    ensure!(proxy.has_sprung(), "the proxy dropped no reply");
    let Acquired::Won { token } = outcome else { bail!("lost the lock we created: {outcome:?}") };
    ensure!(b.read_lock().await? == LockView::Peer { node_id: "a".into(), token });
    ensure!(a.read_lock().await? == LockView::Ours { token, version: 0 });
    Ok(())
}

/// The handle reports the timeout the server granted, and a digest credential is accepted.
async fn negotiated_timeout_and_digest(addr: SocketAddr) -> Result<()> {
    let asked = Duration::from_secs(60);
    let h = connect(CoordinationConfig { session_timeout: asked, ..cfg(addr, "negotiate", "a") }).await?;
    let granted = h.negotiated_timeout();
    ensure!(granted < asked && !granted.is_zero(), "granted {granted:?} for {asked:?}");
    let d =
        connect(CoordinationConfig { digest: Some("referee:secret".into()), ..cfg(addr, "negotiate", "b") }).await?;
    ensure!(d.read_lock().await? == LockView::Free);
    ensure!(win(&d).await? > FencingToken::NONE);
    d.close().await?;
    ensure!(h.read_lock().await? == LockView::Free, "closing did not delete the lock");
    Ok(())
}

/// The token is the czxid plus the token base; only the lock holder sets the base, it only
/// goes up, and every later token (whoever wins) includes it.
async fn token_base_lifts_every_later_token(addr: SocketAddr) -> Result<()> {
    let a = connect(cfg(addr, "token-base", "a")).await?;
    let b = connect(cfg(addr, "token-base", "b")).await?;
    let t1 = win(&a).await?;
    let (view, base) = a.read_lock_state().await?;
    ensure!(base == TokenBaseView::Missing, "a new cluster has no token base: {base:?}");
    ensure!(view == LockView::Ours { token: t1, version: 0 });
    let czxid = t1.0;
    let floor = FencingToken(czxid + 1_000_000);
    let record = TokenBase { base: 1_000_001, floor, node_id: "a".into() };
    // Only the holder may set it.
    match b.set_token_base(&record, czxid, 0, None).await {
        Err(ElectionError::LockNotHeld { .. }) => {}
        other => bail!("a non-holder set the token base: {other:?}"),
    }
    let t2 = a.set_token_base(&record, czxid, 0, None).await?;
    ensure!(t2 == FencingToken(czxid + 1_000_001) && t2 > floor, "token {t2} after setting the base");
    let (view, base) = a.read_lock_state().await?;
    let TokenBaseView::Present { base: value, version } = base else { bail!("no base after setting it: {base:?}") };
    ensure!(value == 1_000_001 && view == LockView::Ours { token: t2, version: 0 }, "{view:?} {base:?}");
    // Creating it again is refused (it exists), lowering it is refused before anything is sent.
    match a.set_token_base(&record, czxid, 0, None).await {
        Err(ElectionError::TokenBaseChanged { expected: None }) => {}
        other => bail!("a second create of the base: {other:?}"),
    }
    let lower = TokenBase { base: 5, ..record.clone() };
    ensure!(matches!(
        a.set_token_base(&lower, czxid, 0, Some((value, version))).await,
        Err(ElectionError::InvalidArgument(_))
    ));
    // The peer sees the same token, and the next acquisition is above it.
    ensure!(b.read_lock().await? == LockView::Peer { node_id: "a".into(), token: t2 });
    ensure!(a.release(t2).await? == Released::Deleted);
    let t3 = win(&b).await?;
    ensure!(t3 > t2, "token {t3} after {t2}");
    // Raising by the new holder, against the version read.
    let raised = TokenBase { base: value + 10, floor: t3, node_id: "b".into() };
    let t4 = b.set_token_base(&raised, t3.0 - value, 0, Some((value, version))).await?;
    ensure!(t4 == FencingToken(t3.0 + 10), "raised token {t4}");
    Ok(())
}

/// With a digest credential, the agent's znodes carry the cluster's ACL: a session without
/// the credential can read them but not delete the lock or rewrite the breadcrumb.
async fn digest_credential_secures_every_znode(addr: SocketAddr) -> Result<()> {
    let secured = CoordinationConfig { digest: Some("agents:s3cret".into()), ..cfg(addr, "secured", "a") };
    let a = connect(secured).await?;
    a.register_member(&member("a")).await?;
    let token = win(&a).await?;
    a.write_breadcrumb(&crumb("a", token, false), 0, None).await?;
    a.write_handover(&HandoverRecord { to: "b".into(), from: "a".into(), token, at_ms: 0 }).await?;
    let outsider = zookeeper_client::Client::connector()
        .with_session_timeout(Duration::from_secs(4))
        .connect(&addr.to_string())
        .await?;
    for path in [
        "/referee/secured/lock",
        "/referee/secured/breadcrumb",
        "/referee/secured/handover",
        "/referee/secured/members/a",
    ] {
        let (acl, _) = outsider.get_acl(path).await?;
        ensure!(
            acl.iter().any(|e| e.scheme() == "digest" && e.id().starts_with("agents:")),
            "{path} has no digest entry: {acl:?}"
        );
        ensure!(
            acl.iter().all(|e| e.scheme() != "world" || e.permission() == zookeeper_client::Permission::READ),
            "{path} is open: {acl:?}"
        );
        ensure!(outsider.get_data(path).await.is_ok(), "{path} must stay readable");
    }
    ensure!(
        matches!(outsider.delete("/referee/secured/lock", None).await, Err(zookeeper_client::Error::NoAuth)),
        "an outsider deleted the lock"
    );
    ensure!(
        matches!(
            outsider.set_data("/referee/secured/breadcrumb", b"{}", None).await,
            Err(zookeeper_client::Error::NoAuth)
        ),
        "an outsider rewrote the breadcrumb"
    );
    ensure!(
        matches!(outsider.delete("/referee/secured/handover", None).await, Err(zookeeper_client::Error::NoAuth)),
        "an outsider removed the handover record"
    );
    ensure!(a.read_lock().await? == LockView::Ours { token, version: 0 });
    Ok(())
}

/// Only the lock holder publishes the active's position; every publication moves the znode's
/// mzxid, even of the same position; a standby's candidacy is rewritten into its member znode
/// and read back by the others.
async fn positions_and_candidacies(addr: SocketAddr) -> Result<()> {
    let a = connect(cfg(addr, "positions", "a")).await?;
    let b = connect(cfg(addr, "positions", "b")).await?;
    ensure!(b.read_position().await?.is_none(), "nothing published yet");
    let token = win(&a).await?;
    let at = |n: u64| ActivePosition { node_id: "a".into(), zone: Some("east".into()), position: Position(n), token };
    a.publish_position(&at(10), 0).await?;
    let (read, first) = b.read_position().await?.context("published")?;
    ensure!(read == at(10), "{read:?}");
    a.publish_position(&at(10), 0).await?;
    let (read, second) = b.read_position().await?.context("published")?;
    ensure!(read == at(10) && second > first, "a republication moves the mzxid: {first} then {second}");
    // A standby cannot publish, even with the holder's lock version.
    match b.publish_position(&at(99), 0).await {
        Err(ElectionError::LockNotHeld { .. }) => {}
        other => bail!("a standby published a position: {other:?}"),
    }
    ensure!(b.read_position().await?.context("published")?.0 == at(10));

    b.register_member(&member("b")).await?;
    a.register_member(&member("a")).await?;
    let candidacy =
        Candidacy { node_id: "b".into(), position: Some(Position(9)), priority: 3, zone: None, eligible: true };
    b.publish_member(&Member { candidacy: Some(candidacy.clone()), ..member("b") }).await?;
    let members = a.members().await?;
    let read: Vec<Option<Candidacy>> = members.iter().map(|m| m.candidacy.clone()).collect();
    ensure!(read == vec![None, Some(candidacy)], "{members:?}");
    // A handle publishes only its own member.
    ensure!(matches!(a.publish_member(&member("b")).await, Err(ElectionError::InvalidArgument(_))));
    Ok(())
}

/// A server alone says it answers from what it knows: no staleness to count.
async fn a_server_alone_says_it_is_not_stale(addr: SocketAddr) -> Result<()> {
    let h = connect(cfg(addr, "staleness", "a")).await?;
    let server = addr.to_string();
    wait_until(Duration::from_secs(10), "the server to say what it is", || {
        h.staleness_reports() == vec![(server.clone(), Implied::Standalone)]
    })
    .await
    .with_context(|| format!("reports: {:?}", h.staleness_reports()))?;
    Ok(())
}

/// A session as an operator's tool makes it: no credential, or `digest` (`user:password`).
async fn raw_client(addr: SocketAddr, digest: Option<&str>) -> Result<zookeeper_client::Client> {
    let mut connector = zookeeper_client::Client::connector().with_session_timeout(Duration::from_secs(4));
    if let Some(d) = digest {
        connector = connector.with_auth("digest", d.as_bytes());
    }
    Ok(within("a raw client's session", connector.connect(&addr.to_string())).await??)
}

/// Creates `path` with `acls`, or leaves it as it is if it exists.
async fn create_if_missing(
    client: &zookeeper_client::Client,
    path: &str,
    acls: zookeeper_client::Acls<'_>,
) -> Result<()> {
    let options = zookeeper_client::CreateMode::Persistent.with_acls(acls);
    match client.create(path, b"", &options).await {
        Ok(_) | Err(zookeeper_client::Error::NodeExists) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {path}")),
    }
}

/// With a chroot after the last server (`host:port/ha`), the agent's tree lives under it: the
/// lock of cluster `chrooted` is `/ha/referee/chrooted/lock` and nothing appears at
/// `/referee/chrooted`. The servers asked for their grants and staleness are named without the
/// chroot, and a chroot that does not exist is refused naming it.
async fn an_agent_under_a_chroot_keeps_its_tree_under_it(addr: SocketAddr) -> Result<()> {
    let raw = raw_client(addr, None).await?;
    let missing = CoordinationConfig { connect: format!("{addr}/no-such-chroot"), ..cfg(addr, "chrooted", "a") };
    match Coordination::connect(missing).await {
        Err(e) => ensure!(
            e.recovery() == Recovery::Fatal && e.to_string().contains("/no-such-chroot"),
            "a missing chroot: {e} ({:?})",
            e.recovery()
        ),
        Ok(_) => bail!("an agent connected under a chroot that does not exist"),
    }
    create_if_missing(&raw, "/ha", zookeeper_client::Acls::anyone_all()).await?;
    let h = connect(CoordinationConfig { connect: format!("{addr}/ha"), ..cfg(addr, "chrooted", "a") }).await?;
    h.register_member(&member("a")).await?;
    let token = win(&h).await?;
    ensure!(h.read_lock().await? == LockView::Ours { token, version: 0 });
    for path in ["/ha/referee/chrooted/lock", "/ha/referee/chrooted/members/a"] {
        ensure!(raw.check_stat(path).await?.is_some(), "{path} is missing");
    }
    ensure!(raw.check_stat("/referee/chrooted").await?.is_none(), "the tree was made outside the chroot");
    let server = addr.to_string();
    wait_until(Duration::from_secs(10), "the server, named without the chroot, to say what it is", || {
        h.staleness_reports() == vec![(server.clone(), Implied::Standalone)]
    })
    .await
    .with_context(|| format!("reports: {:?}", h.staleness_reports()))?;
    Ok(())
}

/// A cluster znode another credential owns (created by `bob`, with `bob` alone in its ACL) stops
/// the agent at start-up with a refusal that names the znode it could not create, its parent,
/// the digest user the agent used (never its password) and what to do.
async fn a_cluster_znode_owned_by_another_credential_is_refused_naming_it(addr: SocketAddr) -> Result<()> {
    let bob = raw_client(addr, Some("bob:bobs-secret")).await?;
    create_if_missing(&bob, "/referee", zookeeper_client::Acls::anyone_all()).await?;
    create_if_missing(&bob, "/referee/locked", zookeeper_client::Acls::creator_all()).await?;
    let secured = CoordinationConfig { digest: Some("referee:s3cret".into()), ..cfg(addr, "locked", "a") };
    let anonymous = cfg(addr, "locked", "b");
    for (settings, who) in [(secured, "digest user `referee`"), (anonymous, "no digest credential")] {
        let e = match Coordination::connect(settings).await {
            Err(e) => e,
            Ok(_) => bail!("an agent as {who} created its znodes under bob's cluster node"),
        };
        let text = e.to_string();
        for part in ["/referee/locked/members", "/referee/locked ", who, "referee admin format"] {
            ensure!(text.contains(part), "{part:?} missing from: {text}");
        }
        ensure!(!text.contains("s3cret"), "the password is shown: {text}");
        ensure!(e.recovery() == Recovery::Fatal, "{text} is not fatal");
    }
    // A cluster formatted with bob's credential (its members znode included, everyone may read):
    // the agent's session is made, and its registration is refused naming its member znode.
    let read = [
        zookeeper_client::Acl::new(zookeeper_client::Permission::ALL, zookeeper_client::AuthId::authed()),
        zookeeper_client::Acl::new(zookeeper_client::Permission::READ, zookeeper_client::AuthId::anyone()),
    ];
    let formatted = zookeeper_client::Acls::new(&read);
    create_if_missing(&bob, "/referee/bobs", formatted).await?;
    create_if_missing(&bob, "/referee/bobs/members", formatted).await?;
    let h = connect(CoordinationConfig { digest: Some("referee:s3cret".into()), ..cfg(addr, "bobs", "a") }).await?;
    let e = match h.register_member(&member("a")).await {
        Err(e) => e,
        Ok(()) => bail!("an agent registered under bob's members znode"),
    };
    let text = e.to_string();
    for part in ["/referee/bobs/members/a", "/referee/bobs/members ", "digest user `referee`", "referee admin format"] {
        ensure!(text.contains(part), "{part:?} missing from: {text}");
    }
    ensure!(e.recovery() == Recovery::Fatal, "{text} is not fatal");
    Ok(())
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        /// Each scenario against its own bundled coordinator.
        mod bundled {
            $(
                #[tokio::test]
                async fn $name() -> anyhow::Result<()> {
                    let server = super::TestServer::start().await?;
                    super::$name(server.addr).await?;
                    server.stop().await
                }
            )*
        }

        /// Every scenario against one Apache ZooKeeper server.
        #[tokio::test]
        async fn apache_zookeeper_runs_every_scenario() -> Result<()> {
            if !apache_zookeeper_installed() {
                skip("apache_zookeeper_runs_every_scenario", APACHE_ZK_MISSING);
                return Ok(());
            }
            let zk = tokio::task::spawn_blocking(|| ApacheZk::start(ApacheZkProfile::ShortSessions)).await??;
            let addr: SocketAddr = zk.connect_string().parse()?;
            $(
                $name(addr)
                    .await
                    .with_context(|| format!("{} against Apache ZooKeeper; server log:\n{}", stringify!($name), zk.log_tail()))?;
            )*
            Ok(())
        }
    };
}

scenarios!(
    race_for_the_lock,
    tokens_strictly_increase,
    lock_views,
    release_deletes_only_our_lock,
    breadcrumb_needs_the_lock,
    step_down_cleanly_is_atomic,
    members_and_duplicate_node_ids,
    leftover_member_is_waited_out,
    session_expiry_frees_the_lock,
    lost_create_reply_is_settled_by_owner,
    negotiated_timeout_and_digest,
    token_base_lifts_every_later_token,
    digest_credential_secures_every_znode,
    positions_and_candidacies,
    a_server_alone_says_it_is_not_stale,
    an_agent_under_a_chroot_keeps_its_tree_under_it,
    a_cluster_znode_owned_by_another_credential_is_refused_naming_it,
);

/// Apache ZooKeeper grants a session's timeout anew, within its own bounds, each time the client
/// reconnects, and expires the session on the timeout of the connection it holds: a session
/// granted 6 s by one server lives on 1.5 s once it moves to a server whose
/// `maxSessionTimeout` is 1.5 s. The lease must never count on more than the session lives on,
/// whichever server of the ensemble the client moves to. A new session learns it before it holds
/// anything and is made again asking for 1.5 s, so that its connection gives a silent server up
/// within a fifth of that; one that cannot be (1.5 s is not above its op timeout, so answers
/// could come too late to count) keeps its 6 s, and its lease counts on 1.5 s all the same.
#[tokio::test]
async fn the_lease_counts_on_the_lowest_timeout_any_server_would_grant() -> Result<()> {
    const NAME: &str = "the_lease_counts_on_the_lowest_timeout_any_server_would_grant";
    if !apache_zookeeper_installed() {
        skip(NAME, APACHE_ZK_MISSING);
        return Ok(());
    }
    // Server 1 admits the 6 s asked for; servers 2 and 3 at most 1.5 s.
    let generous = "tickTime=200\nminSessionTimeout=400\nmaxSessionTimeout=20000\n".to_string();
    let strict = "tickTime=200\nminSessionTimeout=400\nmaxSessionTimeout=1500\n".to_string();
    let mut zk = tokio::task::spawn_blocking(move || -> Result<ApacheZkEnsemble> {
        let mut zk = ApacheZkEnsemble::spawn_with(&[generous, strict.clone(), strict])?;
        zk.wait_ready(Duration::from_secs(90))?;
        Ok(zk)
    })
    .await??;
    let ports = zk.ports();
    let servers = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let asked = Duration::from_secs(6);
    let settings = CoordinationConfig {
        connect: servers,
        session_timeout: asked,
        op_timeout: Duration::from_secs(1),
        ..cfg("127.0.0.1:1".parse()?, "renegotiate", "a")
    };
    // Each server says it may lag its leader by syncLimit (5) × tickTime (200 ms).
    let each = ports.iter().map(|p| (format!("127.0.0.1:{p}"), Implied::Member(Duration::from_millis(1000))));
    let expected: Vec<(String, Implied)> = each.collect();
    let first = connect(settings.clone()).await?;
    wait_until(Duration::from_secs(10), "every server to say how stale it may be", || {
        first.staleness_reports() == expected
    })
    .await
    .with_context(|| format!("reports: {:?}", first.staleness_reports()))?;
    // Wherever the first session landed, the handle ends up asking for what servers 2 and 3
    // grant, and its connection gives a silent server up after a fifth of it.
    let lowest = Duration::from_millis(1500);
    ensure!(
        first.negotiated_timeout() == lowest && first.lease_timeout() == lowest,
        "granted {:?}, the lease counts on {:?}",
        first.negotiated_timeout(),
        first.lease_timeout()
    );
    ensure!(first.idle_limit() == lowest / 5, "a silent server is given up after {:?}", first.idle_limit());
    first.close().await?;
    // A session whose op timeout is not below 1.5 s is not asked again: it keeps what server 1
    // grants. The client picks a server at random: connect until the session lands on server 1.
    let settings = CoordinationConfig { op_timeout: lowest, ..settings };
    let mut tries = 0;
    let h = loop {
        match within("connecting a to server 1", Coordination::connect(settings.clone())).await? {
            Ok(h) if cons_session_timeout(&four_letter(ports[0], "cons")?, h.session_id()).is_some() => break h,
            Ok(h) => h.close().await?,
            // On server 2 or 3, whose 1.5 s is not above the op timeout: refused.
            Err(ElectionError::Config(_)) => {}
            Err(e) => return Err(e.into()),
        }
        tries += 1;
        ensure!(tries < 60, "no session landed on server 1 in {tries} tries");
    };
    ensure!(h.negotiated_timeout() == asked, "server 1 granted {:?}", h.negotiated_timeout());
    // The handle asks every server before the session moves, and counts on the lowest.
    wait_until(Duration::from_secs(10), "the lease to count on server 2's and 3's grant", || {
        h.lease_timeout() == Duration::from_millis(1500)
    })
    .await
    .with_context(|| format!("the lease counts on {:?}", h.lease_timeout()))?;

    // Server 1 dies; the client moves to server 2 or 3, which grants the session 1.5 s.
    zk.kill(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let lives_on = loop {
        let held = ports[1..].iter().find_map(|p| cons_session_timeout(&four_letter(*p, "cons").ok()?, h.session_id()));
        if let Some(to) = held {
            break to;
        }
        ensure!(Instant::now() < deadline, "the session reached neither server 2 nor 3: {}", zk.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(lives_on == Duration::from_millis(1500), "the session moved with a timeout of {lives_on:?}");
    ensure!(
        h.lease_timeout() <= lives_on,
        "the lease counts on a session timeout of {:?}, but the session now lives on {lives_on:?}",
        h.lease_timeout()
    );
    Ok(())
}

/// Apache ZooKeeper clamps the session timeout asked for into `maxSessionTimeout`, and the lease
/// is cut from what it grants. The connection's idle limit (how long the agent waits on a silent
/// server before it moves its session) must follow the grant too: computed from the 4 s asked,
/// it was 800 ms, past the 750 ms lease a 1.5 s grant buys with the lease's defaults. The handle
/// settles on a fifth of the grant: a frozen follower is given up within that (and a tick of the
/// client), and the session reaches a live server within twice it, the client's pause before
/// its next server and a round trip.
#[tokio::test]
async fn a_frozen_follower_is_given_up_after_a_fifth_of_a_grant_below_the_request_apache_zookeeper() -> Result<()> {
    const NAME: &str = "a_frozen_follower_is_given_up_after_a_fifth_of_a_grant_below_the_request_apache_zookeeper";
    if !apache_zookeeper_installed() {
        skip(NAME, APACHE_ZK_MISSING);
        return Ok(());
    }
    let strict = "tickTime=200\nminSessionTimeout=400\nmaxSessionTimeout=1500\n".to_string();
    let zk = tokio::task::spawn_blocking(move || -> Result<ApacheZkEnsemble> {
        let mut zk = ApacheZkEnsemble::spawn_with(&[strict.clone(), strict.clone(), strict])?;
        zk.wait_ready(Duration::from_secs(90))?;
        Ok(zk)
    })
    .await??;
    let (ports, pids) = (zk.ports(), zk.pids());
    let servers = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
    let (granted, fifth) = (Duration::from_millis(1500), Duration::from_millis(300));
    let settings = CoordinationConfig {
        connect: servers,
        session_timeout: Duration::from_secs(4),
        op_timeout: Duration::from_millis(800),
        ..cfg("127.0.0.1:1".parse()?, "frozen-follower", "a")
    };
    // The client picks a server at random: connect until the session is on a follower (a frozen
    // leader would take the ensemble's quorum with it).
    let mut tries = 0;
    let (h, holder) = loop {
        let h = connect(settings.clone()).await?;
        let holder = ports.iter().position(|p| {
            four_letter(*p, "cons").is_ok_and(|cons| cons_session_timeout(&cons, h.session_id()).is_some())
        });
        if let Some(i) = holder.filter(|&i| four_letter(ports[i], "srvr").is_ok_and(|s| s.contains("Mode: follower"))) {
            break (h, i);
        }
        h.close().await?;
        tries += 1;
        ensure!(tries < 30, "no session landed on a follower in {tries} tries");
    };
    ensure!(h.negotiated_timeout() == granted, "granted {:?}", h.negotiated_timeout());
    ensure!(
        h.idle_limit() == fifth,
        "the connection gives a silent server up after {:?}, not a fifth of the {granted:?} granted",
        h.idle_limit()
    );
    let cons = four_letter(ports[holder], "cons")?;
    ensure!(cons_session_timeout(&cons, h.session_id()) == Some(granted), "cons: {cons}");

    let mut states = h.session_watch();
    h.read_lock().await?;
    let answered = Instant::now();
    let frozen = nix::unistd::Pid::from_raw(pids[holder] as i32);
    nix::sys::signal::kill(frozen, nix::sys::signal::Signal::SIGSTOP)?;
    let (mut given_up, mut moved) = (None, None);
    let watched = tokio::time::timeout(Duration::from_secs(10), async {
        while moved.is_none() {
            match states.changed().await {
                SessionView::Disconnected { .. } => given_up = given_up.or(Some(answered.elapsed())),
                SessionView::Connected { .. } => moved = Some(answered.elapsed()),
                SessionView::Connecting => {}
                SessionView::Expired => bail!("the session expired while its server was frozen"),
            }
        }
        Ok(())
    })
    .await;
    nix::sys::signal::kill(frozen, nix::sys::signal::Signal::SIGCONT)?;
    watched.context("the session did not move within 10 s")??;
    let (given_up, moved) = (given_up.context("never disconnected")?, moved.context("never moved")?);
    // The client checks for silence every eighth of the idle limit.
    let bound = fifth + fifth / 8 + Duration::from_millis(150);
    ensure!(given_up <= bound, "the frozen server was given up {given_up:?} after the last answer, over {bound:?}");
    let bound = 2 * (fifth + fifth / 8) + Duration::from_millis(300);
    ensure!(moved <= bound, "the session moved {moved:?} after its last answer, over {bound:?}");
    ensure!(h.read_lock().await? == LockView::Free, "the session answers again");
    Ok(())
}
