//! Three coordinator servers configured as an ensemble (`servers` in their configuration),
//! started in one process as `referee coordinator` starts them, one with `--init`: they elect a
//! leader through their peer ports, and a write from a ZooKeeper client connected to the
//! leader is applied on every server's tree; with the leader stopped, the other two elect a new
//! one and its clients' writes are applied on both. An observer listed in `servers` becomes an
//! openraft learner: it applies the writes, and stopping it costs no quorum. Each server's
//! `srvr` and `mntr` name its role: leader, follower or observer. Clients of a follower or an
//! observer write through it (forwarded to the leader), read their own writes there, get the
//! watch events of writes made elsewhere, `sync`, and keep their sessions alive past their
//! timeout while connected there (the server reports them to the leader, which alone expires).
//! A server cut off from the rest closes its clients' connections and refuses new sessions
//! within its staleness bound, and still answers four-letter words. A voter restarted where it
//! cannot hear the leader asks for pre-votes at once, is refused, and deposes nobody.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::ensemble::{launch_again, leader_of, start_ensemble, start_ensemble_behind_proxies, stop, Running};
use referee_coordinator::config::{CoordinatorConfig, Role};
use referee_testkit::{connect, within_for};
use zookeeper_client as zk;

const DEADLINE: Duration = Duration::from_secs(20);

/// Creates `path` through a ZooKeeper client of server `leader`, and checks every running
/// server applies it.
async fn write_and_check(running: &[Running], leader: u64, path: &str) -> Result<()> {
    let r = running.iter().find(|r| r.id == leader).context("the leader is running")?;
    let zk = connect(&r.client.to_string(), Duration::from_secs(10)).await?;
    zk.create(path, b"replicated", &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await?;
    let index = r.raft.metrics().borrow().last_applied.map(|l| l.index).context("the leader applied the write")?;
    for r in running {
        r.applied(index, "the client's write").await?;
        assert_eq!(r.data(path).as_deref(), Some(&b"replicated"[..]), "server {} holds {path}", r.id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_receives_writes_and_losing_it_costs_no_quorum() -> Result<()> {
    let (mut running, _dirs) = start_ensemble(&[Role::Voter, Role::Voter, Role::Voter, Role::Observer]).await?;
    let (leader, _) = leader_of(&running).await?;
    // The initialising server adds the observer as a learner once it leads.
    let learners =
        |r: &Running| r.raft.metrics().borrow().membership_config.membership().learner_ids().collect::<Vec<_>>();
    running[0]
        .raft
        .wait(Some(DEADLINE))
        .metrics(|m| m.membership_config.membership().learner_ids().any(|id| id == 4), "server 4 to be a learner")
        .await?;
    let voters = running[0].raft.metrics().borrow().membership_config.membership().voter_ids().collect::<Vec<_>>();
    assert_eq!((voters, learners(&running[0])), (vec![1, 2, 3], vec![4]));
    write_and_check(&running, leader, "/seen-by-the-observer").await?;
    // The leader lists every member in /zookeeper/config, the observer added after the voters
    // among them, and every server applies it.
    let observer_line = "server.4=";
    within_for(DEADLINE, "/zookeeper/config to name the observer everywhere", async {
        let named = |r: &Running| {
            let text = String::from_utf8(r.data("/zookeeper/config").unwrap_or_default()).unwrap_or_default();
            text.lines().filter(|l| l.starts_with("server.")).count() == 4
                && text.lines().any(|l| l.starts_with(observer_line) && l.contains(":observer;"))
        };
        while !running.iter().all(named) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    // Each server names its role as ZooKeeper's servers do, so `zkServer.sh status` reads it.
    for r in &running {
        let want = match r.id {
            4 => "observer",
            id if id == leader => "leader",
            _ => "follower",
        };
        let srvr = referee_testkit::four_letter(r.client.port(), "srvr")?;
        assert!(srvr.contains(&format!("\nMode: {want}\n")), "server {}: {srvr}", r.id);
        let mntr = referee_testkit::four_letter(r.client.port(), "mntr")?;
        assert!(mntr.contains(&format!("zk_server_state\t{want}\n")), "server {}: {mntr}", r.id);
    }

    let observer = running.pop().context("the observer runs")?;
    assert_eq!(observer.id, 4);
    stop(observer).await?;
    // A voter stops too: two of three voters are a quorum, with or without the observer.
    let follower = running.iter().position(|r| r.id != leader).context("a follower runs")?;
    stop(running.remove(follower)).await?;
    write_and_check(&running, leader, "/without-the-observer").await?;
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_configured_servers_elect_a_leader_replicate_client_writes_and_survive_its_loss() -> Result<()> {
    let (mut running, _dirs) = start_ensemble(&[Role::Voter; 3]).await?;
    let (leader_id, _) = leader_of(&running).await?;
    write_and_check(&running, leader_id, "/ensemble").await?;

    // The leader stops (as on SIGTERM); the other two elect a new one, whose clients write.
    let at = running.iter().position(|r| r.id == leader_id).context("the leader is one of the servers")?;
    let old = running.remove(at);
    stop(old).await?;
    let (new_leader, took) = leader_of(&running).await?;
    assert_ne!(new_leader, leader_id, "a stopped server cannot lead");
    eprintln!("server {leader_id} stopped; server {new_leader} leads after {took:?}");
    write_and_check(&running, new_leader, "/after-leader-change").await?;
    for path in ["/ensemble", "/after-leader-change"] {
        for r in &running {
            assert!(r.data(path).is_some(), "server {} lost {path}", r.id);
        }
    }

    for r in running {
        stop(r).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_followers_and_observers_write_read_watch_sync_and_keep_their_sessions() -> Result<()> {
    const SESSION: Duration = Duration::from_millis(600);
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    let (running, _dirs) = start_ensemble(&[Role::Voter, Role::Voter, Role::Voter, Role::Observer]).await?;
    let (leader, _) = leader_of(&running).await?;
    running[0]
        .raft
        .wait(Some(DEADLINE))
        .metrics(|m| m.membership_config.membership().learner_ids().any(|id| id == 4), "server 4 to be a learner")
        .await?;
    let follower = running.iter().find(|r| r.id != leader && r.id != 4).context("a follower runs")?;
    let observer = running.iter().find(|r| r.id == 4).context("the observer runs")?;
    let at_leader = running.iter().find(|r| r.id == leader).context("the leader runs")?;

    // A session opened on a follower writes there, and reads its own writes there at once.
    let fz = within_for(DEADLINE, "a session on a follower", connect(&follower.client.to_string(), SESSION)).await??;
    let fz_id = fz.session().id().0;
    fz.create("/f", b"one", &persistent).await.context("a create through a follower")?;
    fz.create("/f/eph", b"", &ephemeral).await.context("an ephemeral through a follower")?;
    let (data, _) = fz.get_data("/f").await?;
    assert_eq!(data, b"one", "a follower's client reads its own write there");
    for i in 0..20 {
        fz.set_data("/f", format!("v{i}").as_bytes(), None).await?;
    }
    assert_eq!(fz.get_data("/f").await?.0, b"v19", "twenty pipelined writes applied in order");
    assert_eq!(at_leader.data("/f/eph").as_deref(), Some(&b""[..]), "the leader holds the follower's ephemeral");

    // An observer's client watches; a write through the leader fires the watch on the observer.
    let oz =
        within_for(DEADLINE, "a session on the observer", connect(&observer.client.to_string(), SESSION)).await??;
    let (_, _, watcher) = oz.get_and_watch_data("/f").await?;
    let lz = within_for(DEADLINE, "a session on the leader", connect(&at_leader.client.to_string(), SESSION)).await??;
    lz.set_data("/f", b"from-the-leader", None).await?;
    let event = within_for(DEADLINE, "the observer's watch to fire", watcher.changed()).await?;
    assert_eq!((event.event_type, event.path.as_str()), (zk::EventType::NodeDataChanged, "/f"));
    assert_eq!(oz.get_data("/f").await?.0, b"from-the-leader", "the watch fired after the write was applied there");

    // The observer's client writes too; after `sync`, the follower's client sees it.
    oz.create("/from-the-observer", b"o", &persistent).await.context("a create through the observer")?;
    fz.sync("/").await.context("sync on a follower")?;
    assert_eq!(fz.get_data("/from-the-observer").await?.0, b"o", "sync on a follower catches up with the leader");

    // The follower's session outlives several of its timeouts while its client pings the
    // follower only: the follower reports it to the leader, which alone expires sessions.
    let began = std::time::Instant::now();
    while began.elapsed() < SESSION * 4 {
        tokio::time::sleep(SESSION / 4).await;
        assert!(at_leader.data("/f/eph").is_some(), "the leader expired a session alive on a follower");
    }
    assert!(fz.check_stat("/f/eph").await?.is_some(), "the session and its ephemeral are alive");

    // Closing the session through the follower removes its ephemeral everywhere.
    drop(fz);
    within_for(DEADLINE, "the closed session's ephemeral to go", async {
        while running.iter().any(|r| r.data("/f/eph").is_some()) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let sessions = at_leader
        .coordinator_state
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .tree
        .session(referee_coordinator::proto::SessionId(fz_id))
        .is_some();
    assert!(!sessions, "the closed session is gone from the leader's tree");
    drop((oz, lz));
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_cut_off_from_the_rest_drops_its_clients_within_its_staleness_bound() -> Result<()> {
    let bound = Duration::from_millis(CoordinatorConfig::new("/unused").max_leader_silence_ms);
    let (mut running, _dirs) = start_ensemble(&[Role::Voter, Role::Voter, Role::Voter]).await?;
    let (leader, _) = leader_of(&running).await?;
    let at = running.iter().position(|r| r.id != leader).context("a follower runs")?;
    let follower = running.remove(at);
    let mut client = common::raw::Raw::connect(follower.client, 4000).await.context("a session on a follower")?;

    // The other two stop: the follower hears from no leader again.
    let cut = std::time::Instant::now();
    for r in running {
        stop(r).await?;
    }
    let closed = client.read_frame_for(bound + Duration::from_secs(3)).await;
    let after = cut.elapsed();
    ensure!(matches!(closed, Ok(None)), "the follower's client was not disconnected: {closed:?}");
    // Silence counts from the last heartbeat before the cut (they come every 100 ms).
    assert!(
        after + Duration::from_millis(200) >= bound,
        "disconnected after {after:?}, well before the bound of {bound:?}"
    );
    eprintln!(
        "a follower cut off dropped its client {} ms after the cut (bound {} ms)",
        after.as_millis(),
        bound.as_millis()
    );
    let refused = common::raw::Raw::connect(follower.client, 4000).await;
    assert!(refused.is_err(), "a server without contact granted a new session");
    // It answers as a ZooKeeper server that has lost its leader does (it is looking for one):
    // running, not serving. `srvr` is what `zkServer.sh status` reads.
    let ask = |word: &str| referee_testkit::four_letter(follower.client.port(), word);
    let not_serving = referee_coordinator::fourlw::NOT_SERVING;
    assert_eq!(ask("ruok")?, "imok", "ruok: the process runs");
    assert_eq!(ask("srvr")?, not_serving, "srvr of a server past its staleness bound");
    assert_eq!(ask("mntr")?, not_serving, "mntr of a server past its staleness bound");
    assert_eq!(ask("isro")?, "null", "isro of a server past its staleness bound");
    stop(follower).await
}

/// A reply from a follower is a promise to the client that the ensemble will not expire its
/// session for a session timeout after it sent the request (less a small slack): the leader
/// must have heard of the session by then. Checked on the leader's own expiry deadline after
/// each reply, with idle gaps longer than the follower's report interval between requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_reply_never_outruns_the_leaders_knowledge_of_the_session() -> Result<()> {
    const SESSION: Duration = Duration::from_millis(2000);
    let (running, _dirs) = start_ensemble(&[Role::Voter, Role::Voter, Role::Voter]).await?;
    let (leader, _) = leader_of(&running).await?;
    let follower = running.iter().find(|r| r.id != leader).context("a follower runs")?;
    let at_leader = running.iter().find(|r| r.id == leader).context("the leader runs")?;
    let fz = within_for(DEADLINE, "a session on a follower", connect(&follower.client.to_string(), SESSION)).await??;
    let session = referee_coordinator::proto::SessionId(fz.session().id().0);
    let granted = Duration::from_millis(u64::try_from(fz.session_timeout().as_millis())?);
    for i in 0..12u64 {
        // Idle for 60 to 280 ms: several report intervals, so the session is not in the
        // reports that happen to be in flight.
        tokio::time::sleep(Duration::from_millis(60 + (i * 37) % 220)).await;
        let sent = std::time::Instant::now();
        fz.check_stat("/").await?;
        let deadline = {
            let st = at_leader.coordinator_state.lock().unwrap_or_else(|p| p.into_inner());
            st.tracker.deadlines_after(None, usize::MAX).into_iter().find(|(s, _)| *s == session).map(|(_, d)| d)
        }
        .context("the leader tracks the session")?;
        let promised = sent + granted - referee_coordinator::liveness::SLACK;
        assert!(
            deadline >= promised,
            "request {i}: the leader would expire the session {:?} before the client may count on it",
            promised - deadline
        );
    }
    drop(fz);
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

/// A follower's report of the sessions it heard from that fails (its link to the leader broken
/// for a moment) is sent again once the link is back: the reply that waits on it goes out,
/// instead of waiting out the staleness bound and closing its client's connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liveness_report_lost_to_a_broken_link_is_sent_again() -> Result<()> {
    common::capture_server_logs("referee_coordinator=info");
    // A bound well beyond the cut and the link's redial, so only a report that is never sent
    // again can close the connection.
    let bound = Duration::from_millis(4000);
    let (running, _dirs, mut proxies) = start_ensemble_behind_proxies(&[Role::Voter; 3], |c| {
        c.max_leader_silence_ms = bound.as_millis() as u64;
    })
    .await?;
    let (leader, _) = leader_of(&running).await?;
    let follower = running.iter().find(|r| r.id != leader).context("a follower runs")?;
    let mut client = common::raw::Raw::connect(follower.client, 10_000).await.context("a session on a follower")?;
    let exists = common::raw::body::path_watch("/", false);
    let first = client.call(common::raw::op::EXISTS, &exists).await?;
    ensure!(first.err == 0, "exists before the cut: {first:?}");

    // Idle past the slack, so the read below needs a report of its own.
    tokio::time::sleep(referee_coordinator::liveness::SLACK * 3).await;
    // Every peer connection into the leader (the follower's reports among them) is cut; the
    // leader's heartbeats to the follower still pass. The read waits for a report, which fails.
    let into_leader = &mut proxies[leader as usize - 1];
    into_leader.cut();
    // The cut is in force once no report sent in the last 300 ms was acknowledged (the
    // follower sends one at least every 100 ms): the read's report cannot slip through before.
    let reported = follower.coordinator_state.lock().unwrap_or_else(|p| p.into_inner()).report_contact.clone();
    referee_testkit::wait_until(DEADLINE, "the follower's reports to fail", || {
        reported.since_contact(std::time::Instant::now()).is_some_and(|s| s >= Duration::from_millis(300))
    })
    .await?;
    let asked = std::time::Instant::now();
    let xid = client.send(common::raw::op::EXISTS, &exists).await?;
    // The reply is awaited from the start, beside the cut, so the instant it is read is the
    // instant it came. The cut lasts a few report intervals: the report the read asked for at
    // once is lost, and the link comes back no earlier than `restoring`.
    let reply = async {
        let answered = client.reply_to(xid).await;
        (answered, std::time::Instant::now())
    };
    let restore = async {
        tokio::time::sleep(referee_coordinator::liveness::REPORT_EVERY * 20).await;
        let restoring = std::time::Instant::now();
        into_leader.restore().await.map(|()| restoring)
    };
    let ((answered, came), restored) = tokio::join!(reply, restore);
    let restoring = restored?;
    let waited = came - asked;
    let (reply, _) =
        answered.with_context(|| format!("the read's reply, {} ms after it was sent", waited.as_millis()))?;
    ensure!(reply.err == 0, "the read after the link came back: {reply:?}");
    // Answered only once the link was back: the read waited on a report, and the one sent
    // again got through.
    ensure!(
        came > restoring,
        "the read was answered {} ms before the link into the leader came back: it did not wait on the lost report",
        (restoring - came).as_millis()
    );
    ensure!(waited < bound, "the read waited {waited:?}, the whole bound");
    eprintln!(
        "a read that waited on a lost report was answered {} ms after it was sent, {} ms after the link came back",
        waited.as_millis(),
        (came - restoring).as_millis()
    );
    drop(client);
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

/// A report that failed and is sent again later keeps the session alive from when its client
/// was last heard, not from when the report finally arrived: a client that died while its
/// server could not reach the leader loses its session (and its ephemeral lock) one timeout
/// after it was last heard, as an operator counts, not up to a cut's length later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_liveness_report_sent_again_counts_from_when_the_client_was_heard() -> Result<()> {
    common::capture_server_logs("referee_coordinator=info");
    const TIMEOUT: Duration = Duration::from_millis(10_000);
    const CUT: Duration = Duration::from_millis(1500);
    let (running, _dirs, mut proxies) = start_ensemble_behind_proxies(&[Role::Voter; 3], |c| {
        c.max_leader_silence_ms = 8000;
        c.max_session_timeout_ms = Some(30_000);
    })
    .await?;
    let (leader, _) = leader_of(&running).await?;
    let follower = running.iter().find(|r| r.id != leader).context("a follower runs")?;
    let at_leader = running.iter().find(|r| r.id == leader).context("the leader runs")?;
    let mut client = common::raw::Raw::connect(follower.client, TIMEOUT.as_millis() as i32)
        .await
        .context("a session on a follower")?;
    let exists = common::raw::body::path_watch("/", false);
    let first = client.call(common::raw::op::EXISTS, &exists).await?;
    ensure!(first.err == 0, "exists before the cut: {first:?}");
    let session = referee_coordinator::proto::SessionId(client.session_id);
    let deadline_at_leader = || {
        let st = at_leader.coordinator_state.lock().unwrap_or_else(|p| p.into_inner());
        st.tracker.deadlines_after(None, usize::MAX).into_iter().find(|(s, _)| *s == session).map(|(_, d)| d)
    };

    // Every peer connection into the leader (the follower's reports) is cut; the client's last
    // request is heard on the follower, and the reports carrying it fail for the cut's length.
    let into_leader = &mut proxies[leader as usize - 1];
    into_leader.cut();
    // The cut is in force once no report sent in the last 300 ms was acknowledged (the
    // follower sends one at least every 100 ms): the request's reports cannot slip through.
    let reported = follower.coordinator_state.lock().unwrap_or_else(|p| p.into_inner()).report_contact.clone();
    referee_testkit::wait_until(DEADLINE, "the follower's reports to fail", || {
        reported.since_contact(std::time::Instant::now()).is_some_and(|s| s >= Duration::from_millis(300))
    })
    .await?;
    let heard = std::time::Instant::now();
    let xid = client.send(common::raw::op::EXISTS, &exists).await?;
    tokio::time::sleep(CUT).await;
    into_leader.restore().await?;
    // Answered once a report carrying the request is acknowledged by the leader.
    let (reply, _) = within_for(DEADLINE, "the read's reply after the cut", client.reply_to(xid)).await??;
    ensure!(reply.err == 0, "the read after the link came back: {reply:?}");
    let deadline = deadline_at_leader().context("the leader tracks the session")?;
    eprintln!(
        "after a cut of {CUT:?}, the leader keeps the session until {:?} after its client was last heard",
        deadline - heard
    );
    let promised = heard + TIMEOUT - referee_coordinator::liveness::SLACK;
    ensure!(
        deadline >= promised,
        "the leader would expire the session {:?} before its client may count on it",
        promised - deadline
    );
    // Counted from the report's arrival, the deadline would be a whole cut later.
    let counted_from_heard = heard + TIMEOUT + CUT / 2;
    ensure!(
        deadline < counted_from_heard,
        "the leader keeps the session until {:?} after its client was last heard, not {TIMEOUT:?}: the report \
         sent again counted from its arrival",
        deadline - heard
    );
    drop(client);
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

/// A follower that falls behind the leader's purged log catches up by installing its snapshot:
/// the changes in between are never applied there one by one, so no watch of its clients
/// fires for them. As a ZooKeeper follower resynced from a snapshot does, it drops its
/// clients' connections; they reconnect and re-register their watches (SetWatches, with the
/// last zxid they saw), and the events they missed fire then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_a_follower_fires_across_a_snapshot_it_installs() -> Result<()> {
    common::capture_server_logs("referee_coordinator=info");
    let (running, _dirs, mut proxies) = start_ensemble_behind_proxies(&[Role::Voter; 3], |c| {
        c.snapshot_every_txns = 20;
        // The follower keeps its clients while the leader cannot reach it.
        c.max_leader_silence_ms = 30_000;
        c.max_session_timeout_ms = Some(60_000);
    })
    .await?;
    let (leader, _) = leader_of(&running).await?;
    let follower = running.iter().find(|r| r.id != leader).context("a follower runs")?;
    let at_leader = running.iter().find(|r| r.id == leader).context("the leader runs")?;
    let writer = connect(&at_leader.client.to_string(), Duration::from_secs(20)).await?;
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    writer.create("/w", b"watched", &persistent).await?;
    let index = at_leader.raft.metrics().borrow().last_applied.map(|l| l.index).context("applied")?;
    follower.applied(index, "/w").await?;
    // The watcher knows only the follower, so it comes back there.
    let watcher = connect(&follower.client.to_string(), Duration::from_secs(20)).await?;
    let (stat, watch) = watcher.check_and_watch_stat("/w").await?;
    ensure!(stat.is_some(), "/w exists on the follower");

    // The leader's connections to the follower are cut; meanwhile /w goes, and enough writes
    // follow for the leader to snapshot and purge its log past the follower.
    let into_follower = &mut proxies[follower.id as usize - 1];
    into_follower.cut();
    let behind = follower.raft.metrics().borrow().last_log_index.unwrap_or(0);
    writer.delete("/w", None).await?;
    for i in 0..100 {
        writer.create(&format!("/n{i}"), b"", &persistent).await?;
    }
    referee_testkit::wait_until(DEADLINE, "the leader to purge its log past the follower", || {
        at_leader.raft.metrics().borrow().purged.is_some_and(|p| p.index > behind)
    })
    .await?;
    into_follower.restore().await?;
    referee_testkit::wait_until(DEADLINE, "the follower to install the leader's snapshot", || {
        follower.data("/w").is_none() && follower.data("/n99").is_some()
    })
    .await?;
    let event = within_for(Duration::from_secs(10), "the watch's event after the snapshot", watch.changed())
        .await
        .context("a client of the follower was never told /w was deleted")?;
    ensure!(event.event_type == zk::EventType::NodeDeleted && event.path == "/w", "{event:?}");
    drop((watcher, writer));
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

/// A follower cut off from the leader (its heartbeats no longer arrive) asks the other voters
/// for a pre-vote, hears no, and campaigns not: its term stays the leader's. When the cut heals
/// it follows the same leader in the same term and catches up, instead of deposing it with a
/// higher term for an election it cannot win.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_and_healed_rejoins_without_deposing_the_leader() -> Result<()> {
    common::capture_server_logs("referee_coordinator=info");
    let (running, _dirs, mut proxies) = start_ensemble_behind_proxies(&[Role::Voter; 3], |_| {}).await?;
    let (leader, _) = leader_of(&running).await?;
    let at_leader = running.iter().find(|r| r.id == leader).context("the leader runs")?;
    let follower = running.iter().find(|r| r.id != leader).context("a follower runs")?;
    let term = at_leader.raft.metrics().borrow().current_term;
    write_and_check(&running, leader, "/before-the-cut").await?;

    // Nothing reaches the follower's peer port: no heartbeats, no entries. What it sends
    // (pre-votes, votes) still reaches the others.
    let into_follower = &mut proxies[follower.id as usize - 1];
    into_follower.cut();
    // Several campaign waits (at most 950 ms each): time for openraft's timer, or a campaign
    // without a pre-vote, to have raised the follower's term more than once.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let cut_term = follower.raft.metrics().borrow().current_term;
    // The other two go on committing.
    let zk = connect(&at_leader.client.to_string(), Duration::from_secs(10)).await?;
    zk.create("/during-the-cut", b"x", &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await?;
    drop(zk);
    into_follower.restore().await?;

    // Healed: the same leader, the same term, the follower caught up.
    within_for(DEADLINE, "the follower to catch up with the leader", async {
        loop {
            let applied = |r: &Running| r.raft.metrics().borrow().last_applied.map(|l| l.index);
            if follower.data("/during-the-cut").is_some() && applied(follower) >= applied(at_leader) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    let now = at_leader.raft.metrics().borrow().clone();
    ensure!(cut_term == term, "the cut-off follower raised its term from {term} to {cut_term}");
    ensure!(
        now.state == openraft::ServerState::Leader && now.current_term == term,
        "the leader was deposed by the healed follower: {:?} in term {} (was leader in term {term})",
        now.state,
        now.current_term
    );
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

/// A voter restarted where it cannot hear the leader (nothing reaches its peer port) has heard
/// no leader since it started, so it waits out no lease: it asks the other voters for a
/// pre-vote at once and again, the one that hears the leader refuses, and it calls no election
/// (its saved vote, read back as not yet granted, would let it grant one, but nobody asks).
/// Healed, it follows the same leader in the same term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_restarted_out_of_the_leaders_reach_asks_at_once_and_deposes_nobody() -> Result<()> {
    common::capture_server_logs("referee_coordinator=info");
    let (mut running, _dirs, mut proxies) = start_ensemble_behind_proxies(&[Role::Voter; 3], |_| {}).await?;
    let (leader, _) = leader_of(&running).await?;
    write_and_check(&running, leader, "/before-the-restart").await?;
    let term = running.iter().find(|r| r.id == leader).context("the leader runs")?.raft.metrics().borrow().current_term;
    // Stopped with a log as long as the others', so that only the leader's heartbeats, which
    // the others hear and it does not, set the voters apart.
    let last_index = |r: &Running| r.raft.metrics().borrow().last_log_index;
    within_for(DEADLINE, "every server to hold the whole log and the test's session closed", async {
        loop {
            let at_leader = running.iter().find(|r| r.id == leader).and_then(last_index);
            if running.iter().all(|r| r.session_ids().is_empty() && last_index(r) == at_leader) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    let at = running.iter().position(|r| r.id != leader).context("a follower runs")?;
    let follower = running.remove(at);
    let (id, config, peer_listen) = (follower.id, follower.config.clone(), follower.peer_listen);
    stop(follower).await?;

    proxies[id as usize - 1].cut();
    let restarted = launch_again(config, peer_listen).await?;
    let counters = |r: &Running| {
        let c = r.coordinator_state.lock().unwrap_or_else(|p| p.into_inner()).counters.clone();
        (c.pre_votes_asked, c.pre_votes_refused, c.elections_called)
    };
    within_for(DEADLINE, "the restarted voter to be refused two pre-votes, or to call an election", async {
        while counters(&restarted).1 < 2 && counters(&restarted).2 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    let (asked, refused, called) = counters(&restarted);
    ensure!(called == 0, "the restarted voter called an election: {asked} pre-votes asked, {refused} refused");
    let at_leader = running.iter().find(|r| r.id == leader).context("the leader runs")?;
    let zk = connect(&at_leader.client.to_string(), Duration::from_secs(10)).await?;
    zk.create("/while-out-of-reach", b"x", &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await?;
    drop(zk);
    proxies[id as usize - 1].restore().await?;

    within_for(DEADLINE, "the restarted voter to catch up with the leader", async {
        while restarted.data("/while-out-of-reach").is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await?;
    let (asked, refused, called) = counters(&restarted);
    let now = at_leader.raft.metrics().borrow().clone();
    let its_term = restarted.raft.metrics().borrow().current_term;
    ensure!(
        called == 0 && its_term == term,
        "the restarted voter called {called} elections ({asked} pre-votes asked, {refused} refused): term {term} -> {its_term}"
    );
    ensure!(
        now.state == openraft::ServerState::Leader && now.current_term == term,
        "the leader was deposed: {:?} in term {} (was leader in term {term})",
        now.state,
        now.current_term
    );
    running.push(restarted);
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

/// An idle session closed by its client on a follower gets its reply: the close needs no word
/// from the leader on the session's liveness (the leader no longer holds the session once the
/// close is applied, so such a word never comes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_closed_on_a_follower_gets_its_reply() -> Result<()> {
    common::capture_server_logs("referee_coordinator=info");
    let (running, _dirs) = start_ensemble(&[Role::Voter; 3]).await?;
    let (leader, _) = leader_of(&running).await?;
    let follower = running.iter().find(|r| r.id != leader).context("a follower runs")?;
    for round in 0..3 {
        let mut client = common::raw::Raw::connect(follower.client, 10_000).await.context("a session on a follower")?;
        // Idle past the slack and a few reports: no report in flight names the session.
        tokio::time::sleep(referee_coordinator::liveness::SLACK * 3).await;
        let asked = std::time::Instant::now();
        let reply = client.call(common::raw::op::CLOSE_SESSION, &[]).await.with_context(|| {
            format!("round {round}: the reply to closeSession, {} ms after it was sent", asked.elapsed().as_millis())
        })?;
        ensure!(reply.err == 0, "round {round}: closeSession: {reply:?}");
    }
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

/// A client that resumes its session on another server keeps it there, with the timeout it was
/// first granted whatever it asks for now, and the connection it left on the first server is
/// closed (ZooKeeper's SessionMoved), wherever the two are, even when it resumes before that
/// server has applied the session's creation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumed_on_another_server_closes_its_old_connection() -> Result<()> {
    let (running, _dirs) = start_ensemble(&[Role::Voter, Role::Voter, Role::Voter]).await?;
    let (leader, _) = leader_of(&running).await?;
    let followers: Vec<&Running> = running.iter().filter(|r| r.id != leader).collect();
    let at_leader = running.iter().find(|r| r.id == leader).context("the leader runs")?;
    // Resumed at once, often before the other server has applied the session's creation: it
    // must catch up with the leader rather than call the session unknown.
    let moves = [(followers[0], followers[1]), (followers[1], at_leader), (at_leader, followers[0])];
    for (round, (from, to)) in moves.into_iter().cycle().take(12).enumerate() {
        // Granted as asked (these servers grant 400 to 2000 ms), then asked for others in range.
        let mut old = common::raw::Raw::connect(from.client, 1500).await.context("a session")?;
        ensure!(old.timeout_ms == 1500, "a new session asking for 1500 ms was granted {} ms", old.timeout_ms);
        let asked = [1500, 600, 2000][round % 3];
        let new = common::raw::Raw::resume(to.client, old.session_id, &old.passwd.clone(), asked)
            .await
            .with_context(|| format!("resuming on server {}", to.id))?;
        ensure!(
            new.timeout_ms == 1500,
            "resumed on server {} asking for {asked} ms: granted {} ms, not its first grant",
            to.id,
            new.timeout_ms
        );
        let closed = old.read_frame_for(Duration::from_secs(5)).await;
        ensure!(
            matches!(closed, Ok(None)),
            "server {}'s old connection was not closed after the move to server {}: {closed:?}",
            from.id,
            to.id
        );
        drop(new);
    }
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

/// `conf` on an ensemble member answers as an Apache ZooKeeper 3.8 quorum peer's does: its own
/// `serverId` (not 0, so monitoring that labels servers by it tells them apart), then the quorum
/// keys that have a counterpart here, with this server's values (`syncLimit`: the staleness
/// bound in ticks; `electionPort` and `quorumPort`: the one peer port that carries both Raft's
/// votes and its replication; `peerType` 0 for a voter, 1 for an observer), then `membership: `
/// and the members as `/zookeeper/config` holds them. `initLimit` and `electionAlg` have no
/// counterpart and are left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conf_on_an_ensemble_member_names_its_server_id() -> Result<()> {
    let (running, _dirs) = start_ensemble(&[Role::Voter, Role::Voter, Role::Voter, Role::Observer]).await?;
    leader_of(&running).await?;
    within_for(DEADLINE, "/zookeeper/config to name every member on every server", async {
        let named = |r: &Running| {
            let text = String::from_utf8(r.data("/zookeeper/config").unwrap_or_default()).unwrap_or_default();
            text.lines().filter(|l| l.starts_with("server.")).count() == 4
        };
        while !running.iter().all(named) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    for r in &running {
        let conf = referee_testkit::four_letter(r.client.port(), "conf")?;
        let (settings, membership) =
            conf.split_once("membership: \n").with_context(|| format!("server {}: no membership: {conf}", r.id))?;
        let keys: Vec<&str> = settings.lines().filter_map(|l| l.split_once('=').map(|(k, _)| k)).collect();
        ensure!(
            keys == [
                "clientPort",
                "secureClientPort",
                "dataDir",
                "dataDirSize",
                "dataLogDir",
                "dataLogSize",
                "tickTime",
                "maxClientCnxns",
                "minSessionTimeout",
                "maxSessionTimeout",
                "clientPortListenBacklog",
                "serverId",
                "syncLimit",
                "electionPort",
                "quorumPort",
                "peerType",
            ],
            "server {}: {conf}",
            r.id
        );
        let value = |k: &str| settings.lines().find_map(|l| l.strip_prefix(&format!("{k}="))).unwrap_or("?");
        let peer_port = r.config.this_server().context("a member lists itself")?.peer.port().to_string();
        let sync_limit = (r.config.max_leader_silence_ms / r.config.tick_ms).to_string();
        let peer_type = if r.id == 4 { "1" } else { "0" };
        let got =
            [value("serverId"), value("syncLimit"), value("electionPort"), value("quorumPort"), value("peerType")];
        let want = [r.id.to_string(), sync_limit, peer_port.clone(), peer_port, peer_type.to_string()];
        ensure!(got == want.each_ref().map(String::as_str), "server {}: {got:?}, want {want:?}: {conf}", r.id);
        let published = String::from_utf8(r.data("/zookeeper/config").unwrap_or_default())?;
        ensure!(membership == published, "server {}: membership {membership:?}, /zookeeper/config {published:?}", r.id);
    }
    for r in running {
        stop(r).await?;
    }
    Ok(())
}
