//! The ensemble's operations surface, on servers started in one process as `referee
//! coordinator` starts them, each with an admin HTTP listener (`admin_listen`):
//!
//! - the leader's `mntr` counts its followers and the synced ones as ZooKeeper's leader does,
//!   and its `/metrics` serves the same numbers and Raft's progress to Prometheus, moving with
//!   the writes;
//! - `/members` adds a server as an observer (it then applies the writes), promotes it to
//!   voter, removes another voter (writes still commit on the smaller ensemble) and adds a
//!   server as a voter at once; a follower sends the caller to the leader; bad requests are
//!   refused naming the field;
//! - `/members` refuses (409) a change whose new voters would have no majority following the
//!   leader: a voter added that never answers (left an observer), a voter removed while
//!   another is down; nothing is proposed and writes go on. A voter added from another cluster
//!   is refused naming the cluster.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use referee_coordinator::admin::{Members, RefusalBody, ADMIN_DEADLINE, PROMOTE_HEARD_WITHIN};
use referee_coordinator::config::{CoordinatorConfig, Role, ServerEntry};
use referee_coordinator::log::RealFs;
use referee_coordinator::raft::Raft;
use referee_coordinator::server::{Coordinator, CoordinatorError, Startup};
use referee_testkit::{connect, free_port, within_for, ScratchDir};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zookeeper_client as zk;

const DEADLINE: Duration = Duration::from_secs(30);

struct Running {
    id: u64,
    client: SocketAddr,
    admin: SocketAddr,
    raft: Raft,
    state: Arc<std::sync::Mutex<referee_coordinator::state::ServerState>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), CoordinatorError>>,
}

impl Running {
    fn has(&self, path: &str) -> bool {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).tree.node(path).is_some()
    }
}

/// Listeners and the `servers` entry of one server about to start.
struct Prepared {
    entry: ServerEntry,
    client: TcpListener,
    peer: TcpListener,
}

async fn prepare(id: u64, role: Role) -> Result<Prepared> {
    let (client, peer) = (TcpListener::bind("127.0.0.1:0").await?, TcpListener::bind("127.0.0.1:0").await?);
    // The admin address is configured, not handed over bound: every server's `servers` names it.
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let entry = ServerEntry { id, client: client.local_addr()?, peer: peer.local_addr()?, role, admin: Some(admin) };
    Ok(Prepared { entry, client, peer })
}

fn config_of(dir: &ScratchDir, me: &ServerEntry, servers: &[ServerEntry]) -> Result<CoordinatorConfig> {
    let mut cfg = CoordinatorConfig::new(dir.path("data"));
    cfg.cluster_id = Some(7);
    cfg.server_id = Some(me.id);
    cfg.listen = me.client;
    cfg.admin_listen = me.admin;
    cfg.servers = servers.to_vec();
    cfg.validate()?;
    Ok(cfg)
}

/// A server starting: its start-up resolves once it knows a leader.
struct Starting {
    task: JoinHandle<Result<Coordinator, CoordinatorError>>,
    client: TcpListener,
    entry: ServerEntry,
    dir: ScratchDir,
}

/// Starts `p` with `servers` in its configuration.
fn start(p: Prepared, servers: &[ServerEntry], initialise: bool) -> Result<Starting> {
    let dir = ScratchDir::new(&format!("members-{}", p.entry.id))?;
    let cfg = config_of(&dir, &p.entry, servers)?;
    let startup = Startup { initialise, peer_listener: Some(p.peer) };
    let task = tokio::spawn(Coordinator::start_with(cfg, Arc::new(RealFs), startup));
    Ok(Starting { task, client: p.client, entry: p.entry, dir })
}

/// Serves a started server's clients; returns its running handle and its data directory.
async fn serve(s: Starting) -> Result<(Running, ScratchDir)> {
    let Starting { task, client, entry, dir } = s;
    let coordinator = within_for(DEADLINE, "a server to start", task).await???;
    let admin = coordinator.admin_addr().context("admin_listen is set")?;
    assert_eq!(Some(admin), entry.admin, "the admin listener binds the configured address");
    let (stop, stopped) = oneshot::channel::<()>();
    let (raft, state) = (coordinator.raft(), coordinator.state());
    let task = tokio::spawn(coordinator.serve(client, async move {
        let _ = stopped.await;
    }));
    Ok((Running { id: entry.id, client: entry.client, admin, raft, state, stop, task }, dir))
}

/// Starts one server per role (ids 1, 2, ...), server 1 with `--init`.
async fn start_ensemble(roles: &[Role]) -> Result<(Vec<Running>, Vec<ServerEntry>, Vec<ScratchDir>)> {
    let mut prepared = Vec::new();
    for (id, &role) in (1u64..).zip(roles) {
        prepared.push(prepare(id, role).await?);
    }
    let servers: Vec<ServerEntry> = prepared.iter().map(|p| p.entry.clone()).collect();
    let starting: Vec<Starting> =
        prepared.into_iter().enumerate().map(|(i, p)| start(p, &servers, i == 0)).collect::<Result<_>>()?;
    let mut running = Vec::new();
    let mut dirs = Vec::new();
    for s in starting {
        let (r, dir) = serve(s).await?;
        running.push(r);
        dirs.push(dir);
    }
    Ok((running, servers, dirs))
}

/// The leader once it has applied an entry of its own term (so its membership is committed).
async fn leader_of(running: &[Running]) -> Result<u64> {
    let m = running[0]
        .raft
        .wait(Some(DEADLINE))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let leader = m.current_leader.context("a leader")?;
    let r = running.iter().find(|r| r.id == leader).context("the leader is running")?;
    r.raft
        .wait(Some(DEADLINE))
        .metrics(|m| m.last_applied.is_some_and(|a| a.leader_id.get_term() == m.current_term), "a settled leader")
        .await
        .map_err(|e| anyhow!("{e}"))?;
    Ok(leader)
}

fn by_id(running: &[Running], id: u64) -> Result<&Running> {
    running.iter().find(|r| r.id == id).with_context(|| format!("server {id} runs"))
}

/// Creates `path` through the leader's clients and waits until every running server has it.
async fn write_and_check(running: &[Running], leader: u64, path: &str) -> Result<()> {
    let r = by_id(running, leader)?;
    let zk = connect(&r.client.to_string(), Duration::from_secs(10)).await?;
    zk.create(path, b"x", &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await?;
    let index = r.raft.metrics().borrow().last_applied.map(|l| l.index).context("applied")?;
    for r in running {
        r.raft
            .wait(Some(DEADLINE))
            .applied_index_at_least(Some(index), "the client's write")
            .await
            .map_err(|e| anyhow!("server {} did not apply entry {index}: {e}", r.id))?;
        assert!(r.has(path), "server {} holds {path}", r.id);
    }
    Ok(())
}

async fn stop(r: Running) -> Result<()> {
    let _ = r.stop.send(());
    within_for(DEADLINE, "a server to stop", r.task).await??.map_err(|e| anyhow!("server {}: {e}", r.id))
}

/// An HTTP client that waits out the server's own deadline on a membership change, so that a
/// call the server answers late is seen with the server's answer.
fn http() -> Result<reqwest::Client> {
    Ok(reqwest::Client::builder().timeout(ADMIN_DEADLINE + Duration::from_secs(15)).build()?)
}

/// Scrapes `/metrics` into sample name (with labels) → value, checking every sample is typed.
async fn scrape(admin: SocketAddr) -> Result<BTreeMap<String, f64>> {
    let resp = http()?.get(format!("http://{admin}/metrics")).send().await?;
    let content_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let text = resp.error_for_status()?.text().await?;
    let mut typed = std::collections::BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').context("TYPE name kind")?;
            assert!(["gauge", "counter"].contains(&kind), "{line}");
            typed.insert(name.to_string());
        } else if !line.starts_with("# HELP ") {
            let (name, value) = line.rsplit_once(' ').with_context(|| format!("not a sample: {line}"))?;
            let family = name.split('{').next().unwrap_or_default();
            assert!(typed.contains(family), "sample before its TYPE: {line}");
            samples.insert(name.to_string(), value.parse().with_context(|| format!("not a number: {line}"))?);
        }
    }
    Ok(samples)
}

fn mntr(r: &Running) -> Result<BTreeMap<String, String>> {
    let text = referee_testkit::four_letter(r.client.port(), "mntr")?;
    Ok(text.lines().filter_map(|l| l.split_once('\t')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_reports_its_followers_in_mntr_and_metrics() -> Result<()> {
    let (running, _servers, _dirs) = start_ensemble(&[Role::Voter, Role::Voter, Role::Voter, Role::Observer]).await?;
    let leader = leader_of(&running).await?;
    let l = by_id(&running, leader)?;
    // Every other member caught up with the leader's log, the observer included.
    l.raft
        .wait(Some(DEADLINE))
        .metrics(
            |m| {
                m.membership_config.membership().learner_ids().any(|id| id == 4)
                    && m.replication.as_ref().is_some_and(|r| {
                        (1..=4).all(|id| r.get(&id).is_some_and(|x| x.map(|l| l.index) == m.last_log_index))
                    })
            },
            "every member to match the leader's log",
        )
        .await
        .map_err(|e| anyhow!("{e}"))?;

    let on_leader = mntr(l)?;
    for (key, want) in [
        ("zk_server_state", "leader"),
        ("zk_followers", "3"),
        ("zk_learners", "3"),
        ("zk_synced_followers", "2"),
        ("zk_synced_observers", "1"),
        ("zk_synced_non_voting_followers", "0"),
        ("zk_pending_syncs", "0"),
    ] {
        assert_eq!(on_leader.get(key).map(String::as_str), Some(want), "{key} in {on_leader:?}");
    }
    for r in running.iter().filter(|r| r.id != leader) {
        let other = mntr(r)?;
        assert!(
            !other.contains_key("zk_synced_followers") && !other.contains_key("zk_followers"),
            "server {} is no leader: {other:?}",
            r.id
        );
    }

    let before = scrape(l.admin).await?;
    assert_eq!(before.get("referee_coordinator_raft_is_leader"), Some(&1.0));
    assert_eq!(
        before.get("referee_coordinator_log_slow_fdatasyncs_total"),
        Some(&0.0),
        "no fdatasync of the log took a second"
    );
    assert_eq!(before.get("synced_followers"), Some(&2.0));
    for id in 2..=4 {
        if id != leader {
            let key = format!("referee_coordinator_raft_matched_index{{server=\"{id}\"}}");
            assert!(before.contains_key(&key), "{key} in {before:?}");
        }
    }
    write_and_check(&running, leader, "/counted").await?;
    let after = scrape(l.admin).await?;
    let moved = |k: &str| Ok::<_, anyhow::Error>((*before.get(k).context(k.to_string())?, after[k]));
    let (b, a) = moved("znode_count")?;
    assert_eq!(a, b + 1.0, "one znode more after a create");
    let (b, a) = moved("referee_coordinator_raft_applied_index")?;
    assert!(a > b, "applied index {b} -> {a}");
    let follower = running.iter().find(|r| r.id != leader && r.id != 4).context("a follower")?;
    let f = scrape(follower.admin).await?;
    assert_eq!(f.get("referee_coordinator_raft_is_leader"), Some(&0.0));
    assert_eq!(f.get("znode_count"), after.get("znode_count"), "the follower applied the same tree");
    assert!(!f.keys().any(|k| k.contains("matched_index")), "only the leader knows matched indexes");

    // The sizes of the leader's proposals (the entries it appended as leader, the create's
    // among them), as ZooKeeper's leader gives them in mntr and srvr; the others have none.
    // The leader may append entries of its own between two reads (the members' znode, a
    // session's close), so mntr, srvr and the metrics are compared from a round of reads
    // between two mntr readings that agree.
    let sizes = |m: &BTreeMap<String, String>| -> Result<(i64, i64, i64)> {
        let size = |k: &str| -> Result<i64> {
            m.get(k).with_context(|| format!("{k} in {m:?}"))?.parse().context("a proposal size")
        };
        Ok((size("zk_last_proposal_size")?, size("zk_min_proposal_size")?, size("zk_max_proposal_size")?))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let ((last, min, max), srvr, metrics) = loop {
        let first = sizes(&mntr(l)?)?;
        let srvr = referee_testkit::four_letter(l.client.port(), "srvr")?;
        let metrics = scrape(l.admin).await?;
        if sizes(&mntr(l)?)? == first {
            break (first, srvr, metrics);
        }
        if std::time::Instant::now() > deadline {
            bail!("the leader's proposal sizes changed between every two readings for 10 s");
        }
    };
    assert!(0 < min && min <= last && last <= max, "last/min/max {last}/{min}/{max}");
    let line = format!("Proposal sizes last/min/max: {last}/{min}/{max}");
    assert!(srvr.lines().any(|l| l == line), "{line:?} in {srvr}");
    assert_eq!(metrics.get("last_proposal_size"), Some(&(last as f64)), "the metrics give it too");
    for r in running.iter().filter(|r| r.id != leader) {
        assert!(!mntr(r)?.contains_key("zk_last_proposal_size"), "server {} is no leader", r.id);
        let srvr = referee_testkit::four_letter(r.client.port(), "srvr")?;
        assert!(!srvr.contains("Proposal sizes"), "server {} is no leader: {srvr}", r.id);
    }

    for r in running {
        stop(r).await?;
    }
    Ok(())
}

async fn members(admin: SocketAddr) -> Result<Members> {
    Ok(http()?.get(format!("http://{admin}/members")).send().await?.error_for_status()?.json().await?)
}

/// POSTs `body` to `/members` at `admin`, returning the status and the body as text.
async fn post(admin: SocketAddr, body: String) -> Result<(u16, String)> {
    let resp = http()?
        .post(format!("http://{admin}/members"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

async fn delete(admin: SocketAddr, id: &str) -> Result<(u16, String)> {
    let resp = http()?.delete(format!("http://{admin}/members/{id}")).send().await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

fn member_json(e: &ServerEntry, role: &str) -> String {
    let admin = e.admin.map_or("null".to_string(), |a| format!("\"{a}\""));
    format!(r#"{{"id": {}, "client": "{}", "peer": "{}", "role": "{role}", "admin": {admin}}}"#, e.id, e.client, e.peer)
}

fn refusal(status: u16, body: &str, want_status: u16) -> Result<RefusalBody> {
    if status != want_status {
        bail!("want {want_status}, got {status}: {body}");
    }
    Ok(serde_json::from_str(body)?)
}

/// The voters and whether a change is in progress, as the server at `admin` lists them.
async fn shape(admin: SocketAddr) -> Result<(Vec<u64>, bool)> {
    let m = members(admin).await?;
    Ok((m.members.iter().filter(|m| m.role == "voter").map(|m| m.id).collect(), m.changing))
}

/// Waits until the leader at `l_admin` no longer counts server `id` as heard lately (until it
/// has noticed a server stopped, it may still count it).
async fn until_unheard(l_admin: SocketAddr, id: u64) -> Result<()> {
    let heard_lately = || async {
        let v: serde_json::Value =
            http()?.get(format!("http://{l_admin}/members")).send().await?.error_for_status()?.json().await?;
        let member = v["members"].as_array().and_then(|m| m.iter().find(|m| m["id"] == id)).cloned();
        let within = PROMOTE_HEARD_WITHIN.as_millis() as u64;
        Ok::<_, anyhow::Error>(member.and_then(|m| m["heard_ms"].as_u64()).is_some_and(|ms| ms <= within))
    };
    within_for(DEADLINE, &format!("the leader to stop hearing server {id}"), async {
        while heard_lately().await.unwrap_or(true) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_join_get_promoted_and_leave_through_the_admin_api() -> Result<()> {
    let (mut running, servers, mut dirs) = start_ensemble(&[Role::Voter; 3]).await?;
    let leader = leader_of(&running).await?;
    let l_admin = by_id(&running, leader)?.admin;
    let newcomer = prepare(4, Role::Observer).await?;

    // A follower does not change the membership: it names the leader and its admin address.
    let follower = running.iter().find(|r| r.id != leader).context("a follower")?;
    let (status, body) = post(follower.admin, member_json(&newcomer.entry, "observer")).await?;
    let r = refusal(status, &body, 421)?;
    assert_eq!((r.leader, r.leader_admin), (Some(leader), Some(l_admin)), "{body}");

    // Bad requests are refused with the field at fault named.
    for (body, field, says) in [
        ("{\"id\": 4".to_string(), "body", "EOF"),
        (r#"{"id": 4, "client": "127.0.0.1:1"}"#.to_string(), "body", "missing field `peer`"),
        (member_json(&newcomer.entry, "judge"), "body", "unknown variant `judge`"),
        (member_json(&ServerEntry { id: 0, ..newcomer.entry.clone() }, "observer"), "id", "is 0"),
        (member_json(&ServerEntry { id: 2, ..newcomer.entry.clone() }, "voter"), "id", "2 is already a voter"),
        (
            member_json(&ServerEntry { peer: servers[1].peer, ..newcomer.entry.clone() }, "observer"),
            "peer",
            "the peer address of member 2",
        ),
    ] {
        let (status, text) = post(l_admin, body.clone()).await?;
        let r = refusal(status, &text, 400)?;
        assert_eq!(r.field.as_deref(), Some(field), "{body}: {text}");
        assert!(r.error.contains(says), "{body}: {text}");
    }
    for (id, says) in [("abc", "numeric"), ("9", "not a member")] {
        let (status, text) = delete(l_admin, id).await?;
        let r = refusal(status, &text, 400)?;
        assert!(r.field.as_deref() == Some("id") && r.error.contains(says), "DELETE {id}: {text}");
    }

    // Server 4 starts knowing the ensemble (and itself); the leader adds it as an observer.
    let mut all = servers.clone();
    all.push(newcomer.entry.clone());
    let entry4 = newcomer.entry.clone();
    let starting = start(newcomer, &all, false)?;
    let (status, body) = post(l_admin, member_json(&entry4, "observer")).await?;
    assert_eq!(status, 200, "{body}");
    let m: Members = serde_json::from_str(&body)?;
    let four = m.members.iter().find(|m| m.id == 4).context("server 4 is a member")?;
    assert_eq!((four.role.as_str(), four.client, four.admin), ("observer", Some(entry4.client), entry4.admin));
    let (four, dir4) = serve(starting).await?;
    running.push(four);
    dirs.push(dir4);
    write_and_check(&running, leader, "/seen-by-the-newcomer").await?;

    // Promoted to voter; the leader's view lists four voters with their lag.
    let (status, body) = post(l_admin, member_json(&entry4, "voter")).await?;
    assert_eq!(status, 200, "{body}");
    let m = members(l_admin).await?;
    let voters: Vec<u64> = m.members.iter().filter(|m| m.role == "voter").map(|m| m.id).collect();
    assert_eq!(voters, vec![1, 2, 3, 4], "{m:?}");
    assert!(m.members.iter().all(|m| m.matched.is_some() && m.lag.is_some()), "the leader knows every lag: {m:?}");
    let on_follower = members(running.iter().find(|r| r.id != leader).context("a follower")?.admin).await?;
    assert_eq!(on_follower.leader, Some(leader));

    // A voter other than the leader and the newcomer leaves; writes commit on the rest.
    let gone = running.iter().find(|r| r.id != leader && r.id != 4).context("a follower")?.id;
    let (status, body) = delete(l_admin, &gone.to_string()).await?;
    assert_eq!(status, 200, "{body}");
    let m = members(l_admin).await?;
    assert_eq!(m.members.iter().map(|m| m.id).collect::<Vec<_>>().len(), 3, "{m:?}");
    assert!(!m.members.iter().any(|m| m.id == gone), "{m:?}");
    let at = running.iter().position(|r| r.id == gone).context("it runs")?;
    stop(running.remove(at)).await?;
    write_and_check(&running, leader, "/after-the-removal").await?;

    // A fifth server joins as a voter at once: it catches up as a learner, then votes.
    let fifth = prepare(5, Role::Voter).await?;
    let mut all = all.clone();
    all.push(fifth.entry.clone());
    let entry5 = fifth.entry.clone();
    let starting = start(fifth, &all, false)?;
    let (status, body) = post(l_admin, member_json(&entry5, "voter")).await?;
    assert_eq!(status, 200, "{body}");
    let (five, dir5) = serve(starting).await?;
    running.push(five);
    dirs.push(dir5);
    let m = members(l_admin).await?;
    let voters: Vec<u64> = m.members.iter().filter(|m| m.role == "voter").map(|m| m.id).collect();
    let want: Vec<u64> = [1, 2, 3, 4, 5].into_iter().filter(|id| *id != gone).collect();
    assert_eq!(voters, want, "{m:?}");
    write_and_check(&running, leader, "/with-the-fifth").await?;

    // Servers 1 to 3 were configured before 4 and 5 existed: they know the newcomers'
    // addresses from /zookeeper/config, which the leader wrote through the log (and which
    // the write just checked came after).
    for r in running.iter().filter(|r| r.id <= 3 && r.id != leader) {
        let m = members(r.admin).await?;
        for e in [&entry4, &entry5] {
            let seen =
                m.members.iter().find(|m| m.id == e.id).with_context(|| format!("server {} lists {}", r.id, e.id))?;
            assert_eq!(
                (seen.client, seen.admin),
                (Some(e.client), e.admin),
                "server {} on server {}: {m:?}",
                e.id,
                r.id
            );
        }
        let zk = connect(&r.client.to_string(), Duration::from_secs(10)).await?;
        let (data, _) = zk.get_data("/zookeeper/config").await?;
        let text = String::from_utf8(data)?;
        assert!(
            text.contains(&format!("server.5={}:{}:participant;{}\n", entry5.peer, entry5.peer.port(), entry5.client)),
            "{text}"
        );
        assert!(!text.contains(&format!("server.{gone}=")), "the removed member is gone: {text}");
    }

    for r in running {
        stop(r).await?;
    }
    Ok(())
}

/// A server alone (no `servers`) refuses every membership change with 400 saying why: a
/// learner it added would be unreachable for good, and a promotion would leave it a joint
/// configuration it could never commit, every write held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_alone_refuses_membership_changes() -> Result<()> {
    let dir = ScratchDir::new("members-alone")?;
    let client = TcpListener::bind("127.0.0.1:0").await?;
    let mut cfg = CoordinatorConfig::new(dir.path("data"));
    cfg.listen = client.local_addr()?;
    cfg.admin_listen = Some(SocketAddr::from(([127, 0, 0, 1], free_port()?)));
    let coordinator = within_for(DEADLINE, "a server alone to start", Coordinator::start(cfg)).await??;
    let admin = coordinator.admin_addr().context("admin_listen is set")?;
    let raft = coordinator.raft();
    let (stop_tx, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(coordinator.serve(client, async move {
        let _ = stopped.await;
    }));
    let newcomer = prepare(2, Role::Voter).await?;
    for role in ["observer", "voter"] {
        let (status, body) = post(admin, member_json(&newcomer.entry, role)).await?;
        let r = refusal(status, &body, 400)?;
        assert!(r.error.contains("runs alone") && r.error.contains("`servers`"), "{role}: {body}");
    }
    for id in ["1", "2"] {
        let (status, body) = delete(admin, id).await?;
        let r = refusal(status, &body, 400)?;
        assert!(r.error.contains("runs alone"), "DELETE {id}: {body}");
    }
    let voters: Vec<u64> = raft.metrics().borrow().membership_config.membership().voter_ids().collect();
    let nodes = raft.metrics().borrow().membership_config.membership().nodes().count();
    assert_eq!((voters, nodes), (vec![1], 1), "the membership is untouched");
    let _ = stop_tx.send(());
    within_for(DEADLINE, "the server to stop", task).await??.map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// An observer the leader no longer hears from is not promoted to voter: the joint
/// configuration would need it, and every write would wait for it. The refusal (409) names
/// what the leader knows of it; the ensemble goes on writing without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_the_leader_does_not_hear_is_not_promoted() -> Result<()> {
    let (mut running, servers, _dirs) = start_ensemble(&[Role::Voter, Role::Observer]).await?;
    let leader = leader_of(&running).await?;
    assert_eq!(leader, 1, "the only voter leads");
    let l_admin = by_id(&running, 1)?.admin;
    // The observer is a learner and caught up: what is refused below is its silence.
    by_id(&running, 1)?
        .raft
        .wait(Some(DEADLINE))
        .metrics(
            |m| {
                m.membership_config.membership().learner_ids().any(|id| id == 2)
                    && m.replication
                        .as_ref()
                        .is_some_and(|r| r.get(&2).is_some_and(|x| x.map(|l| l.index) == m.last_log_index))
            },
            "the observer to match the leader's log",
        )
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let at = running.iter().position(|r| r.id == 2).context("the observer runs")?;
    stop(running.remove(at)).await?;
    until_unheard(l_admin, 2).await?;

    let (status, body) = post(l_admin, member_json(&servers[1], "voter")).await?;
    let r = refusal(status, &body, 409)?;
    assert!(r.error.contains("observer 2") && r.error.contains("matched") && r.error.contains("heard"), "{body}");
    let m = members(l_admin).await?;
    let voters: Vec<u64> = m.members.iter().filter(|m| m.role == "voter").map(|m| m.id).collect();
    assert_eq!((voters, m.changing), (vec![1], false), "{m:?}");
    write_and_check(&running, leader, "/after-the-refusal").await?;
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

/// The `servers` entry of a server that is not running: its addresses are free, and nothing
/// answers at its peer address.
async fn never_started(id: u64) -> Result<ServerEntry> {
    Ok(prepare(id, Role::Voter).await?.entry)
}

/// A voter added that never answers (not started, or at a mistyped peer address) is not made
/// a voter: with one voter before it, the joint configuration could never commit, and every
/// write would wait for good. The leader adds it as an observer, waits for it to follow, and
/// refuses (409) saying it stays an observer; the ensemble goes on writing, and the observer
/// can be removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_that_never_answers_is_left_an_observer_beside_a_single_voter() -> Result<()> {
    let (running, _servers, _dirs) = start_ensemble(&[Role::Voter, Role::Observer]).await?;
    let leader = leader_of(&running).await?;
    assert_eq!(leader, 1, "the only voter leads");
    let l_admin = by_id(&running, 1)?.admin;
    let absent = never_started(3).await?;

    let (status, body) = post(l_admin, member_json(&absent, "voter")).await?;
    let r = refusal(status, &body, 409)?;
    eprintln!("the refusal: {}", r.error);
    assert!(
        r.error.contains("server 3") && r.error.contains("observer") && r.error.contains("DELETE /members/3"),
        "{body}"
    );
    assert_eq!(shape(l_admin).await?, (vec![1], false), "server 1 stays the only voter, no change in progress");
    let m = members(l_admin).await?;
    let three = m.members.iter().find(|m| m.id == 3).context("server 3 is listed")?;
    assert_eq!(three.role, "observer", "{m:?}");
    write_and_check(&running, leader, "/after-the-absent-voter").await?;

    let (status, body) = delete(l_admin, "3").await?;
    assert_eq!(status, 200, "{body}");
    assert!(!members(l_admin).await?.members.iter().any(|m| m.id == 3), "server 3 removed");
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

/// A voter added whose server belongs to another cluster (its `cluster_id` differs) refuses
/// the leader's every dial: the refusal (409) names that cause, where it spoke only of a server
/// not heard from and sent the operator to check an address that was right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_added_from_another_cluster_is_refused_naming_the_cluster() -> Result<()> {
    let (running, servers, _dirs) = start_ensemble(&[Role::Voter, Role::Observer]).await?;
    let leader = leader_of(&running).await?;
    let l_admin = by_id(&running, leader)?.admin;
    let p = prepare(3, Role::Voter).await?;
    let entry = p.entry.clone();
    let dir = ScratchDir::new("members-3-of-another-cluster")?;
    let mut cfg = config_of(&dir, &entry, &[servers, vec![entry.clone()]].concat())?;
    cfg.cluster_id = Some(8);
    let startup = Startup { initialise: false, peer_listener: Some(p.peer) };
    let foreign = tokio::spawn(Coordinator::start_with(cfg, Arc::new(RealFs), startup));

    let (status, body) = post(l_admin, member_json(&entry, "voter")).await?;
    let r = refusal(status, &body, 409)?;
    eprintln!("the refusal: {}", r.error);
    assert!(
        r.error.contains("server 3") && r.error.contains("wrong cluster id") && r.error.contains("cluster 8"),
        "{body}"
    );
    assert_eq!(shape(l_admin).await?, (vec![1], false), "server 1 stays the only voter, no change in progress");
    write_and_check(&running, leader, "/after-the-foreign-voter").await?;
    foreign.abort();
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

/// The same on three voters: the voter that never answers is not added as one, so the
/// ensemble keeps surviving the failure of one of its three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_that_never_answers_leaves_three_voters_as_they_were() -> Result<()> {
    let (running, _servers, _dirs) = start_ensemble(&[Role::Voter; 3]).await?;
    let leader = leader_of(&running).await?;
    let l_admin = by_id(&running, leader)?.admin;
    let absent = never_started(4).await?;

    let (status, body) = post(l_admin, member_json(&absent, "voter")).await?;
    let r = refusal(status, &body, 409)?;
    eprintln!("the refusal: {}", r.error);
    assert!(r.error.contains("server 4") && r.error.contains("observer"), "{body}");
    assert_eq!(shape(l_admin).await?, (vec![1, 2, 3], false), "the voters are as they were");
    write_and_check(&running, leader, "/after-the-absent-fourth").await?;
    for r in running {
        stop(r).await?;
    }
    Ok(())
}

/// With one of three voters down, removing another one (or the leader itself) is refused: the
/// new configuration's voters would be the leader and the down one (or the other two), and
/// every write would wait until the down one is back. The refusal (409) names the voter the
/// new configuration would depend on; nothing is proposed, and the ensemble goes on writing.
/// Removing the down voter itself leaves two that follow: that is carried out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_voter_while_another_is_down_is_refused_when_the_rest_could_not_commit() -> Result<()> {
    let (mut running, _servers, _dirs) = start_ensemble(&[Role::Voter; 3]).await?;
    let leader = leader_of(&running).await?;
    let l_admin = by_id(&running, leader)?.admin;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let (kept, down) = (followers[0], followers[1]);
    let at = running.iter().position(|r| r.id == down).context("the follower runs")?;
    stop(running.remove(at)).await?;
    until_unheard(l_admin, down).await?;
    write_and_check(&running, leader, "/one-down").await?;

    for removed in [kept, leader] {
        let (status, body) = delete(l_admin, &removed.to_string()).await?;
        let r = refusal(status, &body, 409).with_context(|| format!("DELETE /members/{removed}"))?;
        eprintln!("DELETE /members/{removed} refused: {}", r.error);
        assert!(r.error.contains(&format!("server {down}")) && r.error.contains("heard"), "{body}");
        assert_eq!(shape(l_admin).await?, (vec![1, 2, 3], false), "nothing proposed after DELETE {removed}");
    }
    write_and_check(&running, leader, "/after-the-refusals").await?;

    let (status, body) = delete(l_admin, &down.to_string()).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(shape(l_admin).await?, (vec![leader.min(kept), leader.max(kept)], false));
    write_and_check(&running, leader, "/without-the-down-one").await?;
    for r in running {
        stop(r).await?;
    }
    Ok(())
}
