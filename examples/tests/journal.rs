//! The demo master in journal mode against the bundled coordinator, in-process: two masters on
//! one journal, a failover, a deposed master made to write, lost replies, and the verdict of an
//! independent reader. Every wait has a deadline.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use referee_examples::ha_master::{self, EditAccepted, HaMasterConfig, JournalStatus, Refusal};
use referee_examples::journal::{self, EditOp, JournalConfig};
use referee_examples::namespace::{FileKind, FileStatus};
use referee_examples::verdict::{self, AckRecord, Acknowledged, Verdict};
use referee_fencing::{FencingToken, HaState, HaStatus};
use referee_testkit::{within, Proxy, ScratchDir, TestServer, Trap};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const JOURNAL: &str = "/demo/journal";
const EPOCH: &str = "/demo/epoch";

fn journal_config(connect: impl Into<String>) -> JournalConfig {
    JournalConfig { tail_interval_ms: 200, ..JournalConfig::new(connect, JOURNAL, EPOCH) }
}

/// A demo master running in-process.
struct Master {
    name: String,
    base: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    http: reqwest::Client,
    _dir: ScratchDir,
}

impl Master {
    async fn start(name: &str, journal: JournalConfig) -> Result<Master> {
        // The masters' logs, shown for failing tests.
        let _ = tracing_subscriber::fmt().with_env_filter("referee_examples=info").with_test_writer().try_init();
        let dir = ScratchDir::new(&format!("journal-{name}"))?;
        let config = HaMasterConfig {
            node_id: name.into(),
            journal: Some(journal),
            test_routes: true,
            ..HaMasterConfig::new(dir.path("state.json"))
        };
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ha_master::run(config, listener, async move {
            let _ = stopped.await;
        }));
        let master = Master {
            name: name.into(),
            base: format!("http://{addr}"),
            stop: Some(stop),
            task,
            http: reqwest::Client::new(),
            _dir: dir,
        };
        // Ready once it answers: `run` connects to the journal before serving.
        within(&format!("{name} to serve"), async {
            while master.http.get(format!("{}/ha/state", master.base)).send().await.is_err() {
                if master.task.is_finished() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await?;
        if master.task.is_finished() {
            let Master { task, .. } = master;
            bail!("{name} stopped at start: {:?}", task.await);
        }
        Ok(master)
    }

    async fn stop(mut self) -> Result<()> {
        let _ = self.stop.take().unwrap().send(());
        within(&format!("{} to stop", self.name), self.task).await??
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(StatusCode, Value)> {
        let response = within(&format!("an answer from {}", self.name), request.send()).await??;
        let status = response.status();
        let text = response.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    async fn post(&self, path: &str, body: Value) -> Result<(StatusCode, Value)> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(&body)).await
    }

    async fn get(&self, path: &str) -> Result<(StatusCode, Value)> {
        self.send(self.http.get(format!("{}{path}", self.base))).await
    }

    async fn promote(&self, token: u64) -> Result<(StatusCode, Value)> {
        self.post("/ha/active", json!({ "token": token })).await
    }

    async fn state(&self) -> Result<HaStatus> {
        let (code, body) = self.get("/ha/state").await?;
        anyhow::ensure!(code == StatusCode::OK, "GET /ha/state answered {code}: {body}");
        Ok(serde_json::from_value(body)?)
    }

    async fn journal_status(&self) -> Result<JournalStatus> {
        Ok(serde_json::from_value(self.get("/journal/status").await?.1)?)
    }

    /// A mutation that must be acknowledged.
    async fn edit(&self, path: &str, body: Value) -> Result<EditAccepted> {
        let (code, answer) = self.post(path, body.clone()).await?;
        anyhow::ensure!(code == StatusCode::OK, "{} {path} {body} answered {code}: {answer}", self.name);
        Ok(serde_json::from_value(answer)?)
    }

    async fn list(&self, path: &str) -> Result<Vec<String>> {
        let (code, body) = self.get(&format!("/fs/list?path={path}")).await?;
        anyhow::ensure!(code == StatusCode::OK, "list {path} answered {code}: {body}");
        let list: Vec<FileStatus> = serde_json::from_value(body)?;
        Ok(list.into_iter().map(|s| s.path).collect())
    }

    /// Waits until this master has applied the journal through `seq`.
    async fn applied_through(&self, seq: u64) -> Result<()> {
        within(&format!("{} to apply the journal through {seq}", self.name), async {
            loop {
                if let Ok(status) = self.journal_status().await {
                    if status.applied_seq.is_some_and(|a| a >= seq) {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }
}

fn reason(body: &Value) -> String {
    serde_json::from_value::<Refusal>(body.clone()).map(|r| r.reason).unwrap_or_else(|_| body.to_string())
}

fn acks(accepted: &[EditAccepted]) -> Vec<Acknowledged> {
    accepted.iter().map(Acknowledged::from).collect()
}

async fn verify(coordinator: &TestServer, acknowledged: &[Acknowledged]) -> Result<Verdict> {
    let v =
        within("the verdict", verdict::verify(&coordinator.addr.to_string(), JOURNAL, EPOCH, acknowledged)).await??;
    println!("{v}");
    Ok(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_hands_the_journal_over_and_the_deposed_master_is_refused() -> Result<()> {
    let coordinator = TestServer::start().await?;
    let connect = coordinator.addr.to_string();
    let a = Master::start("nn-a", journal_config(&connect)).await?;
    let b = Master::start("nn-b", journal_config(&connect)).await?;
    let mut accepted = Vec::new();

    // A standby refuses writes; A becomes active with token 10: claim, catch up, serve.
    let (code, body) = a.post("/fs/mkdir", json!({"path": "/data"})).await?;
    assert_eq!((code, reason(&body).as_str()), (StatusCode::SERVICE_UNAVAILABLE, "not active: standby"));
    let (code, body) = a.promote(10).await?;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(a.state().await?, HaStatus { state: HaState::Active, token: FencingToken(10) });
    accepted.push(a.edit("/fs/mkdir", json!({"path": "/data/logs", "write_id": "a-mkdir"})).await?);
    for i in 0..3 {
        accepted.push(a.edit("/fs/create", json!({"path": format!("/data/a{i}"), "data": "x".repeat(i + 1)})).await?);
    }
    let (code, body) = a.post("/write", json!({"key": "owner", "value": "a", "write_id": "a-put"})).await?;
    assert_eq!(code, StatusCode::OK, "{body}");
    accepted.push(EditAccepted {
        write_id: "a-put".into(),
        seq: body["seq"].as_u64().unwrap(),
        token: FencingToken(body["token"].as_u64().unwrap()),
    });
    assert!(accepted.iter().all(|ack| ack.token == FencingToken(10)));
    // Invalid edits are refused before they reach the journal.
    let (code, body) = a.post("/fs/create", json!({"path": "/data/a0", "data": "again"})).await?;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    let (code, _) = a.post("/fs/create", json!({"path": "/missing/f", "data": ""})).await?;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // A client retrying a write gets the first answer, and nothing is appended twice.
    let again = a.edit("/fs/mkdir", json!({"path": "/data/logs", "write_id": "a-mkdir"})).await?;
    assert_eq!(again, accepted[0]);
    let verdict = verify(&coordinator, &acks(&accepted)).await?;
    assert_eq!((verdict.acknowledged, verdict.found, verdict.entries), (5, 5, 6), "{verdict}");
    assert!(verdict.is_clean() && verdict.duplicates.is_empty(), "{verdict}");

    // B, standby, has tailed A's edits.
    let last = accepted.iter().map(|ack| ack.seq).max().unwrap();
    b.applied_through(last).await?;
    assert_eq!(b.list("/data").await?, ["/data/a0", "/data/a1", "/data/a2", "/data/logs"]);
    assert_eq!(b.get("/read?key=owner").await?, (StatusCode::OK, json!({"key": "owner", "value": "a"})));

    // B is promoted with token 20. Nobody tells A.
    let (code, body) = b.promote(20).await?;
    assert_eq!(code, StatusCode::OK, "{body}");
    // Caught up before serving: A's edits are all there the moment B answers.
    let status = b.journal_status().await?;
    assert_eq!((status.era_token, status.era_node.as_deref()), (Some(FencingToken(20)), Some("nn-b")));
    assert!(status.applied_seq.unwrap() > last);
    let stat: FileStatus = serde_json::from_value(b.get("/fs/stat?path=/data/a2").await?.1)?;
    assert_eq!((stat.kind, stat.length), (FileKind::File, 3));
    accepted.push(b.edit("/fs/delete", json!({"path": "/data/a0"})).await?);
    accepted.push(b.edit("/fs/create", json!({"path": "/data/b0", "data": "from b"})).await?);
    assert!(accepted[5..].iter().all(|ack| ack.token == FencingToken(20)));

    // The deposed A is made to write: its guarded append fails with BadVersion, it steps
    // down and does not acknowledge.
    let (code, body) =
        a.post("/test/force-write", json!({"key": "owner", "value": "stale a", "write_id": "a-deposed"})).await?;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let why = reason(&body);
    assert!(why.starts_with("deposed: "), "{why}");
    assert!(why.contains("held by token 20 (nn-b)"), "{why}");
    assert_eq!(a.state().await?.state, HaState::Standby);
    let (code, _) = a.post("/fs/mkdir", json!({"path": "/data/from-a"})).await?;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    // A, now a standby, follows B's journal.
    let last = accepted.iter().map(|ack| ack.seq).max().unwrap();
    a.applied_through(last).await?;
    assert_eq!(a.list("/data").await?, ["/data/a1", "/data/a2", "/data/b0", "/data/logs"]);
    assert_eq!(a.get("/read?key=owner").await?.1, json!({"key": "owner", "value": "a"}));

    // The independent reader: nothing lost, nothing stale, and the refused write is absent.
    let verdict = verify(&coordinator, &acks(&accepted)).await?;
    assert_eq!((verdict.acknowledged, verdict.found), (7, 7), "{verdict}");
    assert!(verdict.lost.is_empty() && verdict.stale.is_empty() && verdict.is_clean(), "{verdict}");
    assert_eq!((verdict.claims, verdict.epoch_token), (2, Some(FencingToken(20))));
    let refused = [AckRecord { write_id: "a-deposed".into(), token: FencingToken(10) }];
    let refused: Vec<Acknowledged> = refused.iter().map(Acknowledged::from).collect();
    assert_eq!(verify(&coordinator, &refused).await?.lost, ["a-deposed"]);

    a.stop().await?;
    b.stop().await?;
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_with_a_lower_token_than_the_epoch_is_refused() -> Result<()> {
    let coordinator = TestServer::start().await?;
    let connect = coordinator.addr.to_string();
    let b = Master::start("nn-b", journal_config(&connect)).await?;
    assert_eq!(b.promote(20).await?.0, StatusCode::OK);
    let ack = b.edit("/fs/mkdir", json!({"path": "/b"})).await?;

    // C has never seen token 20 from an agent; the epoch has.
    let c = Master::start("nn-c", journal_config(&connect)).await?;
    let (code, body) = c.promote(15).await?;
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(reason(&body).contains("held by token 20 (nn-b), higher than ours (15)"), "{body}");
    assert_eq!(c.state().await?.state, HaState::Standby);
    assert_eq!(c.post("/write", json!({"key": "k", "value": 1})).await?.0, StatusCode::SERVICE_UNAVAILABLE);
    // C never claimed, so even a forced write has nothing to write under.
    let (code, body) = c.post("/test/force-write", json!({"key": "k", "value": 1})).await?;
    assert_eq!(
        (code, reason(&body).as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "this master has never claimed the journal")
    );

    // B is untouched and keeps writing.
    assert_eq!(b.state().await?.state, HaState::Active);
    let ack2 = b.edit("/fs/create", json!({"path": "/b/f", "data": ""})).await?;
    let verdict = verify(&coordinator, &acks(&[ack, ack2])).await?;
    assert!(verdict.is_clean(), "{verdict}");
    assert_eq!((verdict.claims, verdict.epoch_token), (1, Some(FencingToken(20))));

    c.stop().await?;
    b.stop().await?;
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_tails_edits_through_its_watch() -> Result<()> {
    let coordinator = TestServer::start().await?;
    let connect = coordinator.addr.to_string();
    let a = Master::start("nn-a", journal_config(&connect)).await?;
    // With a one-minute interval, only the children watch can bring B up to date in time.
    let slow = JournalConfig { tail_interval_ms: 60_000, ..journal_config(&connect) };
    let b = Master::start("nn-b", slow).await?;
    assert_eq!(a.promote(7).await?.0, StatusCode::OK);
    let ops = [
        ("/fs/mkdir", json!({"path": "/x/y/z"})),
        ("/fs/create", json!({"path": "/x/y/file", "data": "hello"})),
        ("/fs/create", json!({"path": "/x/other", "data": ""})),
        ("/fs/delete", json!({"path": "/x/y", "recursive": true})),
        ("/fs/mkdir", json!({"path": "/x/y"})),
    ];
    for (path, body) in ops {
        let ack = a.edit(path, body).await?;
        b.applied_through(ack.seq).await?;
        assert_eq!(b.list("/x").await?, a.list("/x").await?, "after {path}");
    }
    assert_eq!(b.list("/x").await?, ["/x/other", "/x/y"]);
    // Both report the journal index they applied as their replication position.
    let last = b.journal_status().await?.applied_seq.context("b applied the edits")?;
    for m in [&a, &b] {
        let (code, body) = m.get("/ha/state").await?;
        assert_eq!((code, &body["position"]), (StatusCode::OK, &json!(last)), "{}: {body}", m.name);
    }
    let (code, body) = b.get("/fs/read?path=/x/other").await?;
    assert_eq!((code, body), (StatusCode::OK, json!({"path": "/x/other", "data": ""})));
    assert_eq!(b.get("/fs/stat?path=/x/y/z").await?.0, StatusCode::NOT_FOUND);
    a.stop().await?;
    b.stop().await?;
    coordinator.stop().await
}

/// Counts journal entries carrying `write_id`, read through a session of the test's own.
async fn copies_in_journal(coordinator: &TestServer, write_id: &str) -> Result<usize> {
    let limit = Duration::from_secs(5);
    let client = journal::connect_session(&coordinator.addr.to_string(), Duration::from_secs(10), limit).await?;
    let entries = journal::read_entries(&client, JOURNAL, None, limit).await?;
    Ok(entries.iter().filter(|e| e.edit.write_id == write_id && !matches!(e.edit.op, EditOp::Claim { .. })).count())
}

async fn lost_contact_scenario(trap: Trap) -> Result<()> {
    let coordinator = TestServer::start().await?;
    let proxy = Proxy::start(coordinator.addr).await?;
    let a = Master::start("nn-a", journal_config(proxy.addr.to_string())).await?;
    assert_eq!(a.promote(10).await?.0, StatusCode::OK);
    let before = a.edit("/fs/mkdir", json!({"path": "/d"})).await?;

    proxy.arm(trap);
    let (code, body) = a.post("/fs/create", json!({"path": "/d/f", "data": "once", "write_id": "w-cut"})).await?;
    within("the trap to spring", proxy.sprung()).await?;
    assert_eq!(code, StatusCode::OK, "{body}");
    let ack: EditAccepted = serde_json::from_value(body)?;
    assert_eq!((ack.write_id.as_str(), ack.token), ("w-cut", FencingToken(10)));
    assert_eq!(ack.seq, before.seq + 1, "the write is in the journal exactly once, right after the previous one");
    assert_eq!(copies_in_journal(&coordinator, "w-cut").await?, 1);
    assert_eq!(a.get("/fs/read?path=/d/f").await?.1, json!({"path": "/d/f", "data": "once"}));
    // The session survived the cut: the master is still active and writes on.
    assert_eq!(a.state().await?.state, HaState::Active);
    let after = a.edit("/fs/create", json!({"path": "/d/g", "data": ""})).await?;

    let verdict = verify(&coordinator, &acks(&[before, ack, after])).await?;
    assert!(verdict.is_clean() && verdict.duplicates.is_empty(), "{verdict}");
    assert_eq!(verdict.found, 3);
    a.stop().await?;
    drop(proxy);
    coordinator.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_reply_is_lost_is_read_back_and_acknowledged_once() -> Result<()> {
    lost_contact_scenario(Trap::DropMultiReply).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_lost_on_the_way_is_retried_once_and_acknowledged_once() -> Result<()> {
    lost_contact_scenario(Trap::DropMultiRequest).await
}

/// A master that has answered "standby" acknowledges nothing after it, not even a write that
/// was already on its way to the journal: the write is held in a black hole on its way to the
/// coordinator while the master steps down, then let through. (A round where the write had not
/// yet passed the master's check when it stepped down proves nothing and is run again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_in_flight_when_the_master_steps_down_is_not_acknowledged_after() -> Result<()> {
    let coordinator = TestServer::start().await?;
    let proxy = Proxy::start(coordinator.addr).await?;
    let a = Master::start("nn-a", journal_config(proxy.addr.to_string())).await?;
    a.promote(10).await?;
    a.edit("/fs/mkdir", json!({"path": "/d"})).await?;
    for round in 0..5u64 {
        assert_eq!(a.promote(10 + round).await?.0, StatusCode::OK);
        let write_id = format!("w-late-{round}");
        proxy.black_hole();
        let write = {
            let (http, url) = (a.http.clone(), format!("{}/fs/create", a.base));
            let body = json!({"path": format!("/d/late-{round}"), "data": "", "write_id": write_id});
            tokio::spawn(async move { http.post(url).json(&body).send().await })
        };
        referee_testkit::wait_until(Duration::from_secs(5), "a frame held", || proxy.held() > 0).await?;
        let (code, body) = a.post("/ha/standby", json!({"token": 10 + round})).await?;
        assert_eq!((code, a.state().await?.state), (StatusCode::OK, HaState::Standby), "{body}");
        proxy.heal();
        let answer = within("the write's answer", write).await???;
        let (code, body) = (answer.status(), answer.text().await?);
        if copies_in_journal(&coordinator, &write_id).await? == 0 {
            continue;
        }
        assert_ne!(code, StatusCode::OK, "round {round}: acknowledged after the master answered standby: {body}");
        a.stop().await?;
        drop(proxy);
        return coordinator.stop().await;
    }
    bail!("in no round did the write pass the master's check before it stepped down")
}

#[test]
fn the_journal_configuration_parses_with_defaults() {
    let yaml = "state_file: /tmp/x.json\njournal:\n  connect: 127.0.0.1:2181\n  path: /demo/journal\n  epoch_path: /demo/epoch\n";
    let config: HaMasterConfig = serde_yaml::from_str(yaml).unwrap();
    let journal = config.journal.clone().unwrap();
    assert_eq!((journal.session_timeout_ms, journal.op_timeout_ms, journal.tail_interval_ms), (10_000, 2_000, 1_000));
    assert!(config.validate().is_ok());
    let bad: HaMasterConfig = serde_yaml::from_str(&yaml.replace("/demo/epoch", "/demo/journal/epoch")).unwrap();
    assert!(bad.validate().unwrap_err().to_string().starts_with("journal.epoch_path"));
    assert!(serde_yaml::from_str::<HaMasterConfig>(&format!("{yaml}  watch: true\n")).is_err());
    // Without `journal:` the master is the in-memory one of before.
    let plain: HaMasterConfig = serde_yaml::from_str("state_file: /tmp/x.json").unwrap();
    assert_eq!(plain.journal, None);
}

/// Edits each close to half the coordinator's packet limit: several together exceed what one
/// read may answer, so the standby and the claimant must read them in smaller steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_edits_stay_readable_and_the_standby_takes_over() -> Result<()> {
    let coordinator = TestServer::start().await?;
    let connect = coordinator.addr.to_string();
    let a = Master::start("nn-a", journal_config(&connect)).await?;
    let b = Master::start("nn-b", journal_config(&connect)).await?;
    assert_eq!(a.promote(10).await?.0, StatusCode::OK);
    let mut accepted = Vec::new();
    for i in 0..3 {
        let body = json!({"path": format!("/big{i}"), "data": "x".repeat(400_000)});
        accepted.push(a.edit("/fs/create", body).await?);
    }
    let last = accepted.iter().map(|ack| ack.seq).max().unwrap();
    b.applied_through(last).await?;
    let (code, body) = b.promote(20).await?;
    assert_eq!(code, StatusCode::OK, "{body}");
    accepted.push(b.edit("/fs/mkdir", json!({"path": "/after"})).await?);
    let verdict = verify(&coordinator, &acks(&accepted)).await?;
    assert!(verdict.is_clean(), "{verdict}");
    assert_eq!(verdict.found, 4, "{verdict}");
    a.stop().await?;
    b.stop().await?;
    coordinator.stop().await
}

/// More edits than one listing of the journal's children could answer under the coordinator's
/// packet limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_longer_than_one_reply_stays_readable() -> Result<()> {
    let coordinator = TestServer::start_with(|c| c.max_packet_bytes = 4096).await?;
    let connect = coordinator.addr.to_string();
    let small = JournalConfig { max_edit_bytes: 2048, ..journal_config(&connect) };
    let a = Master::start("nn-a", small.clone()).await?;
    assert_eq!(a.promote(10).await?.0, StatusCode::OK);
    let mut accepted = Vec::new();
    for i in 0..250 {
        accepted.push(a.edit("/fs/mkdir", json!({"path": format!("/dir-{i:03}"), "write_id": format!("w{i}")})).await?);
    }
    // Too large for this coordinator: refused before it is sent.
    let (code, body) = a.post("/write", json!({"key": "big", "value": "x".repeat(3000)})).await?;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(reason(&body).contains("limit of 2048 bytes (journal.max_edit_bytes)"), "{body}");
    let b = Master::start("nn-b", small).await?;
    let (code, body) = b.promote(20).await?;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(b.get("/fs/stat?path=/dir-249").await?.0, StatusCode::OK);
    let verdict = verify(&coordinator, &acks(&accepted)).await?;
    assert!(verdict.is_clean(), "{verdict}");
    assert_eq!(verdict.found, 250, "{verdict}");
    a.stop().await?;
    b.stop().await?;
    coordinator.stop().await
}

/// A znode that is not an edit under the journal: the claimant names it and says what to do,
/// and, unable to read the journal, it leaves the epoch (and the working active) alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_znode_in_the_journal_is_named_and_deposes_nobody() -> Result<()> {
    use zookeeper_client as zk;
    let coordinator = TestServer::start().await?;
    let connect = coordinator.addr.to_string();
    let a = Master::start("nn-a", journal_config(&connect)).await?;
    let b = Master::start("nn-b", journal_config(&connect)).await?;
    assert_eq!(a.promote(10).await?.0, StatusCode::OK);
    let first = a.edit("/fs/mkdir", json!({"path": "/d"})).await?;
    b.applied_through(first.seq).await?;
    let limit = Duration::from_secs(5);
    let client = journal::connect_session(&connect, Duration::from_secs(10), limit).await?;
    let stray = format!("{JOURNAL}/notes");
    client.create(&stray, b"an operator's note", &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all())).await?;
    // An edit after the stray, so that readers meet the number it took.
    // A's own edit lands after it; how it applied cannot be known, so it is not acknowledged.
    let (code, body) = a.post("/fs/mkdir", json!({"path": "/e"})).await?;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(reason(&body).contains(&stray), "{body}");
    let (code, body) = b.promote(20).await?;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let why = reason(&body);
    assert!(why.contains(&stray) && why.contains("delete"), "{why}");
    // Nobody was deposed: the epoch is A's.
    let (epoch, _) = journal::read_epoch(&client, EPOCH, limit).await?.context("an epoch")?;
    assert_eq!(epoch.token, FencingToken(10));
    assert_eq!(a.state().await?.state, HaState::Active);
    // Once the stray is gone, the journal reads again.
    client.delete(&stray, None).await?;
    let (code, body) = b.promote(20).await?;
    assert_eq!(code, StatusCode::OK, "{body}");
    let ack = b.edit("/fs/mkdir", json!({"path": "/f"})).await?;
    let verdict = verify(&coordinator, &acks(&[first, ack])).await?;
    assert!(verdict.is_clean(), "{verdict}");
    a.stop().await?;
    b.stop().await?;
    coordinator.stop().await
}

/// An edit larger than the journal takes is refused as such, before it reaches the
/// coordinator, and disturbs no other write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_over_the_size_limit_is_refused_with_413() -> Result<()> {
    let coordinator = TestServer::start().await?;
    let a = Master::start("nn-a", journal_config(coordinator.addr.to_string())).await?;
    assert_eq!(a.promote(10).await?.0, StatusCode::OK);
    let big = {
        let (http, url) = (a.http.clone(), format!("{}/fs/create", a.base));
        let body = json!({"path": "/huge", "data": "x".repeat(1_100_000)});
        tokio::spawn(async move { http.post(url).json(&body).send().await })
    };
    let small = a.edit("/fs/mkdir", json!({"path": "/small"})).await?;
    let answer = within("the large edit's answer", big).await???;
    let code = answer.status();
    let why = answer.text().await?;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{why}");
    assert!(why.contains("max_edit_bytes"), "{why}");
    assert_eq!(a.get("/fs/stat?path=/huge").await?.0, StatusCode::NOT_FOUND);
    let verdict = verify(&coordinator, &acks(&[small])).await?;
    assert!(verdict.is_clean(), "{verdict}");
    a.stop().await?;
    coordinator.stop().await
}

/// An append whose outcome stayed unknown (its reply lost and the read-back failed) leaves the
/// master's replica behind the journal. The next edit is checked against the journal as it
/// is, not against that stale replica: a delete of a directory the lost write filled is
/// refused, not acknowledged and then skipped on replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_unknown_outcome_the_next_edit_is_checked_against_the_whole_journal() -> Result<()> {
    let coordinator = TestServer::start().await?;
    let proxy = Proxy::start(coordinator.addr).await?;
    let a = Master::start("nn-a", journal_config(proxy.addr.to_string())).await?;
    assert_eq!(a.promote(10).await?.0, StatusCode::OK);
    let before = a.edit("/fs/mkdir", json!({"path": "/d"})).await?;
    assert_eq!(a.post("/test/pause-tail", json!(null)).await?.0, StatusCode::OK);

    proxy.arm(Trap::DropMultiReply);
    let cut = {
        let (http, url) = (a.http.clone(), format!("{}/fs/create", a.base));
        let body = json!({"path": "/d/f", "data": "one", "write_id": "w-cut"});
        tokio::spawn(async move { http.post(url).json(&body).send().await })
    };
    within("the trap to spring", proxy.sprung()).await?;
    proxy.black_hole();
    let answer = within("the cut write's answer", cut).await???;
    assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE, "{}", answer.text().await?);
    proxy.heal();
    assert_eq!(copies_in_journal(&coordinator, "w-cut").await?, 1);

    // The delete must see /d/f. A 503 (the session still reconnecting) is retried.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let (code, body) = loop {
        let (code, body) = a.post("/fs/delete", json!({"path": "/d", "write_id": "w-del"})).await?;
        if code != StatusCode::SERVICE_UNAVAILABLE || std::time::Instant::now() > deadline {
            break (code, body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(a.get("/fs/read?path=/d/f").await?.1, json!({"path": "/d/f", "data": "one"}));
    let verdict = verify(&coordinator, &acks(&[before])).await?;
    assert!(verdict.is_clean(), "{verdict}");
    a.stop().await?;
    drop(proxy);
    coordinator.stop().await
}
