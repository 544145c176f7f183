//! The admin and peer API over real HTTP (and TLS), and `referee admin` against the bundled
//! coordinator. The only stand-in is a tiny driver that answers the control channel as each
//! test scripts it and records what it was asked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::routing::get;
use axum::{Json, Router};
use clap::Parser;
use referee_failover_agent::admin::{
    AdminError, AdminListeners, AdminServer, AdminSettings, TlsSettings, ADDRESSEE_HEADER,
};
use referee_failover_agent::admin_cli::{execute, AdminArgs, Exit, Outcome};
use referee_failover_agent::control::{ControlRequest, Declined};
use referee_failover_agent::election::{Acquired, Coordination, CoordinationConfig};
use referee_failover_agent::failsafe::{FailsafeRequest, FailsafeResponse, PEER_FAILSAFE_PATH};
use referee_failover_agent::fence_checks::{CheckNow, FencingChecks, Round};
use referee_failover_agent::model::{Health, LockRecord, Member, SessionView};
use referee_failover_agent::status::{AgentStatus, Role};
use referee_fencing::config::ClientTlsConfig;
use referee_fencing::{
    FenceOutcome, FenceTarget, Fencer, FencingConfig, FencingToken, MethodOutcome, PeerFenceOutcome, PeerFenceResponse,
};
use referee_testkit::{within, ScratchDir, TestServer};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use zookeeper_client as zk;

const SECRET: &str = "s3cret-admin-token";

// ----- a scripted driver ------------------------------------------------------------------

/// What the stub driver was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    Pause,
    Resume,
    Cede(Duration),
    /// With `allow_data_loss`.
    Failover(bool),
    /// Who asked, as the API stamped it.
    Unblock(String),
    PeerFence(FencingToken),
    Failsafe(FailsafeRequest),
}

/// How the stub driver answers.
enum Answer {
    Text(Result<String, String>),
    /// A failover that is neither done nor refused: the active was asked, say.
    Unsettled(String),
    Fence(MethodOutcome),
    Failsafe(FailsafeResponse),
    /// Keep the reply channel open and never answer.
    Hold,
}

/// The reply channel of a request answered with text.
enum TextReply {
    Plain(oneshot::Sender<Result<String, String>>),
    Failover(oneshot::Sender<Result<String, Declined>>),
}

impl TextReply {
    fn send(self, answer: Result<String, Declined>) {
        match self {
            TextReply::Plain(r) => {
                let _ = r.send(answer.map_err(|d| d.reason().to_string()));
            }
            TextReply::Failover(r) => {
                let _ = r.send(answer);
            }
        }
    }
}

/// A driver that answers each request with `script` and reports it on the returned receiver.
fn stub_driver(
    script: impl Fn(&Seen) -> Answer + Send + 'static,
) -> (mpsc::Sender<ControlRequest>, mpsc::UnboundedReceiver<Seen>) {
    let (control_tx, mut control_rx) = mpsc::channel::<ControlRequest>(4);
    let (seen_tx, seen_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held_text = Vec::new();
        let mut held_fence = Vec::new();
        let mut held_failsafe = Vec::new();
        while let Some(request) = control_rx.recv().await {
            let (seen, text_reply, fence_reply, failsafe_reply) = match request {
                ControlRequest::Pause { reply } => (Seen::Pause, Some(TextReply::Plain(reply)), None, None),
                ControlRequest::Resume { reply } => (Seen::Resume, Some(TextReply::Plain(reply)), None, None),
                ControlRequest::Cede { period, reply } => {
                    (Seen::Cede(period), Some(TextReply::Plain(reply)), None, None)
                }
                ControlRequest::Failover { allow_data_loss, reply } => {
                    (Seen::Failover(allow_data_loss), Some(TextReply::Failover(reply)), None, None)
                }
                ControlRequest::Unblock { by, reply } => (Seen::Unblock(by), Some(TextReply::Plain(reply)), None, None),
                ControlRequest::PeerFence { token, reply } => (Seen::PeerFence(token), None, Some(reply), None),
                ControlRequest::Failsafe { request, reply } => (Seen::Failsafe(request), None, None, Some(reply)),
                other => panic!("the admin API sent an unexpected request: {other:?}"),
            };
            let answer = script(&seen);
            let _ = seen_tx.send(seen);
            match (answer, text_reply, fence_reply, failsafe_reply) {
                (Answer::Text(t), Some(reply), _, _) => reply.send(t.map_err(Declined::Refused)),
                (Answer::Unsettled(why), Some(reply), _, _) => reply.send(Err(Declined::Unsettled(why))),
                (Answer::Fence(o), _, Some(reply), _) => {
                    let _ = reply.send(o);
                }
                (Answer::Failsafe(r), _, _, Some(reply)) => {
                    let _ = reply.send(r);
                }
                (Answer::Hold, text, fence, failsafe) => {
                    held_text.extend(text);
                    held_fence.extend(fence);
                    held_failsafe.extend(failsafe);
                }
                _ => panic!("the script answered a request with the wrong kind of answer"),
            }
        }
    });
    (control_tx, seen_rx)
}

fn ok_everything(seen: &Seen) -> Answer {
    match seen {
        Seen::Pause => Answer::Text(Ok("paused".into())),
        Seen::Resume => Answer::Text(Ok("resumed".into())),
        Seen::Cede(p) => Answer::Text(Ok(format!("ceded for {} ms", p.as_millis()))),
        Seen::Failover(_) => Answer::Text(Ok("active now".into())),
        Seen::Unblock(_) => Answer::Text(Ok("anti-flap block cleared".into())),
        Seen::PeerFence(t) => Answer::Fence(MethodOutcome::fenced(format!("demoted with {t}"))),
        Seen::Failsafe(r) => Answer::Failsafe(FailsafeResponse {
            node_id: "db1".into(),
            accepted: true,
            reason: format!("not active; will not contend for {} ms", r.ttl_ms),
        }),
    }
}

// ----- a running admin server -------------------------------------------------------------

struct Running {
    admin: SocketAddr,
    peer: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: ScratchDir,
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        within("admin server shutdown", &mut self.task).await?.context("joining")?.context("serving")?;
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

fn settings(dir: &ScratchDir) -> AdminSettings {
    let token = dir.0.join("admin-token");
    std::fs::write(&token, format!("{SECRET}\n")).unwrap();
    let mut s = AdminSettings::with_token_file(token);
    s.request_timeout_ms = 400;
    s.failover_timeout_ms = 800;
    s
}

async fn start_with(
    mut settings: AdminSettings,
    dir: ScratchDir,
    separate_peer: bool,
    control: mpsc::Sender<ControlRequest>,
    status: Arc<Mutex<AgentStatus>>,
    checks: Option<CheckNow>,
) -> Result<Running> {
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    settings.listen = admin.local_addr()?;
    let peer = if separate_peer {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        settings.peer_listen = Some(l.local_addr()?);
        Some(l)
    } else {
        None
    };
    let peer_addr = settings.peer_listen;
    let mut server = AdminServer::new(&settings, control, status)?;
    if let Some(checks) = checks {
        server = server.with_fence_checks(checks);
    }
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let addr = settings.listen;
    let task = tokio::spawn(server.serve(AdminListeners { admin, peer }, async move {
        let _ = stop_rx.await;
    }));
    Ok(Running { admin: addr, peer: peer_addr, stop: Some(stop_tx), task, _dir: dir })
}

async fn start(node: &str, control: mpsc::Sender<ControlRequest>) -> Result<Running> {
    let dir = ScratchDir::new("admin")?;
    let s = settings(&dir);
    start_with(s, dir, false, control, Arc::new(Mutex::new(AgentStatus::new("c", node))), None).await
}

fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap()
}

async fn post(url: &str, token: Option<&str>, body: Option<Value>) -> Result<(u16, Value)> {
    let mut req = http().post(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let code = resp.status().as_u16();
    Ok((code, resp.json().await.unwrap_or(Value::Null)))
}

// ----- authentication ---------------------------------------------------------------------

#[tokio::test]
async fn missing_or_wrong_credentials_get_401_and_reach_nothing() -> Result<()> {
    let (control, mut seen) = stub_driver(ok_everything);
    let server = start("db1", control).await?;
    let fence = json!({"target_node_id": "db1", "token": 5});
    for path in [
        "/admin/failover",
        "/admin/cede",
        "/admin/pause",
        "/admin/resume",
        "/admin/check-fencing",
        "/peer/fence",
        "/no/such/path",
    ] {
        for token in [None, Some("wrong"), Some(""), Some("s3cret-admin-toke"), Some("s3cret-admin-token-and-more")] {
            let (code, body) = post(&server.url(path), token, Some(fence.clone())).await?;
            assert_eq!(code, 401, "{path} with {token:?}: {body}");
            assert_eq!(body["ok"], json!(false), "{body}");
        }
        // Another scheme carrying the right secret is still refused.
        let resp = http().post(server.url(path)).header("Authorization", format!("Basic {SECRET}")).send().await?;
        assert_eq!(resp.status().as_u16(), 401);
        assert_eq!(resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"));
    }
    for path in ["/admin/status", "/admin/history"] {
        assert_eq!(http().get(server.url(path)).send().await?.status().as_u16(), 401, "{path}");
    }
    // The stub answers in order; a request that got through would be seen before this one.
    let (code, _) = post(&server.url("/admin/pause"), Some(SECRET), None).await?;
    assert_eq!(code, 200);
    assert_eq!(seen.recv().await, Some(Seen::Pause));
    assert!(seen.try_recv().is_err(), "only the authenticated request reached the driver");
    // The scheme name is case-insensitive, as RFC 7235 says.
    let resp =
        http().post(server.url("/admin/resume")).header("Authorization", format!("bearer {SECRET}")).send().await?;
    assert_eq!(resp.status().as_u16(), 200);
    server.stop().await
}

/// `POST /admin/check-fencing` answers the round the agent's checking task ran for it: 200 with
/// the round, 409 when the checks gave way to a fence, 503 without a checking task (or with
/// one that stopped), 504 when no round ends within `failover_timeout_ms`.
#[tokio::test]
async fn a_round_of_fencing_checks_is_answered_as_it_ended() -> Result<()> {
    let path = "/admin/check-fencing";
    let (control, _seen) = stub_driver(ok_everything);
    let server = start("db1", control).await?;
    let (code, body) = post(&server.url(path), Some(SECRET), None).await?;
    assert_eq!(code, 503, "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| r.contains("no fencing checks")), "{body}");
    server.stop().await?;

    // A checking task that answers the asks in turn as the script says; `None`: no answer.
    let rounds =
        [Some(Round::Done(FencingChecks { at_ms: 7, problems: 1, peers: Vec::new() })), Some(Round::GaveWay), None];
    let (checks, mut asks) = CheckNow::channel();
    tokio::spawn(async move {
        let mut kept = Vec::new();
        for round in rounds {
            let Some(reply) = asks.recv().await else { return };
            match round {
                Some(round) => drop(reply.send(round)),
                None => kept.push(reply),
            }
        }
        // The unanswered ask is kept until the next one comes; then the task stops, and that
        // one finds nobody to answer it.
        let _ = asks.recv().await;
        drop(kept);
    });
    let dir = ScratchDir::new("admin-checks")?;
    let status = Arc::new(Mutex::new(AgentStatus::new("c", "db1")));
    let (control, _seen) = stub_driver(ok_everything);
    let server = start_with(settings(&dir), dir, false, control, status, Some(checks)).await?;
    let (code, body) = post(&server.url(path), Some(SECRET), None).await?;
    assert_eq!((code, &body["at_ms"], &body["problems"]), (200, &json!(7), &json!(1)), "{body}");
    let (code, body) = post(&server.url(path), Some(SECRET), None).await?;
    assert_eq!(code, 409, "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| r.contains("gave way")), "{body}");
    let (code, body) = post(&server.url(path), Some(SECRET), None).await?;
    assert_eq!(code, 504, "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| r.contains("800ms")), "{body}");
    let (code, body) = post(&server.url(path), Some(SECRET), None).await?;
    assert_eq!(code, 503, "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| r.contains("not running")), "{body}");
    server.stop().await
}

/// The admin token read from the environment authorises failovers and peer fences: the
/// programs the agent runs (fence programs, the command adapter, hooks) do not inherit it, so
/// a script that dumps its environment cannot leak it.
#[tokio::test]
async fn an_admin_token_from_the_environment_is_hidden_from_the_programs_the_agent_runs() -> Result<()> {
    const NAME: &str = "REFEREE_TEST_ADMIN_TOKEN_HIDDEN";
    // Read by this test alone.
    std::env::set_var(NAME, "s3cret-admin-token");
    let s: AdminSettings = serde_yaml::from_str(&format!("listen: 127.0.0.1:8400\ntoken_env: {NAME}\n"))?;
    s.load_secret()?;
    let argv = ["sh".to_string(), "-c".to_string(), format!("printenv {NAME} || echo unset")];
    let end = referee_fencing::command::run(&argv, &[], tokio::time::Instant::now() + Duration::from_secs(10)).await;
    let referee_fencing::command::CommandEnd::Exited { stdout, .. } = end else {
        anyhow::bail!("the program did not exit: {end:?}")
    };
    anyhow::ensure!(stdout.trim() == "unset", "a program the agent ran saw the admin token: {stdout:?}");
    Ok(())
}

#[tokio::test]
async fn settings_refuse_empty_secrets_and_name_the_field() -> Result<()> {
    let dir = ScratchDir::new("admin-settings")?;
    let empty = dir.0.join("empty");
    std::fs::write(&empty, "  \n")?;
    let e = AdminSettings::with_token_file(&empty).load_secret().unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    let yaml = "listen: 127.0.0.1:8400\ntoken_env: REFEREE_TEST_NEVER_SET_ADMIN\n";
    let s: AdminSettings = serde_yaml::from_str(yaml)?;
    s.validate()?;
    assert!(s.load_secret().unwrap_err().to_string().contains("REFEREE_TEST_NEVER_SET_ADMIN"));
    let both: AdminSettings = serde_yaml::from_str("token_env: X\ntoken_file: /x\n")?;
    assert!(both.validate().unwrap_err().to_string().contains("admin.token_file"));
    let neither: AdminSettings = serde_yaml::from_str("listen: 127.0.0.1:1\n")?;
    assert!(neither.validate().unwrap_err().to_string().contains("admin.token_file"));
    let typo = serde_yaml::from_str::<AdminSettings>("token_env: X\nlisten_addr: 127.0.0.1:1\n").unwrap_err();
    assert!(typo.to_string().contains("listen_addr"), "{typo}");
    let wildcard: AdminSettings = serde_yaml::from_str("token_env: X\npeer_listen: 0.0.0.0:8401\n")?;
    assert!(wildcard.validate().unwrap_err().to_string().contains("admin.peer_advertise"));
    let advertised: AdminSettings =
        serde_yaml::from_str("token_env: X\npeer_listen: 0.0.0.0:8401\npeer_advertise: db1.example:8401\n")?;
    advertised.validate()?;
    assert_eq!(advertised.peer_url(), "http://db1.example:8401");
    assert_eq!(advertised.admin_url(), "http://127.0.0.1:8400", "loopback by default");
    // The secret never shows in debug output.
    let secret = settings(&dir).load_secret()?;
    assert!(!format!("{secret:?}").contains(SECRET));
    Ok(())
}

// ----- operator endpoints -----------------------------------------------------------------

#[tokio::test]
async fn each_endpoint_forwards_its_request_and_maps_the_reply() -> Result<()> {
    let (control, mut seen) = stub_driver(|s| match s {
        Seen::Pause => Answer::Text(Ok("paused: observing only".into())),
        Seen::Resume => Answer::Text(Err("not paused".into())),
        Seen::Cede(p) => Answer::Text(Ok(format!("ceded for {} ms", p.as_millis()))),
        Seen::Failover(false) => Answer::Text(Err("refusing a failover to this node: it is paused".into())),
        Seen::Failover(true) => Answer::Unsettled("asking db2 to cede: operation timed out; it may still cede".into()),
        Seen::Unblock(_) => Answer::Text(Ok("anti-flap block cleared (900 ms were left)".into())),
        Seen::PeerFence(_) | Seen::Failsafe(_) => Answer::Hold,
    });
    let server = start("db1", control).await?;
    let url = |p: &str| server.url(p);

    let (code, body) = post(&url("/admin/pause"), Some(SECRET), None).await?;
    assert_eq!((code, &body), (200, &json!({"ok": true, "message": "paused: observing only"})));
    assert_eq!(seen.recv().await, Some(Seen::Pause));

    let (code, body) = post(&url("/admin/resume"), Some(SECRET), None).await?;
    assert_eq!((code, &body), (409, &json!({"ok": false, "reason": "not paused"})));
    assert_eq!(seen.recv().await, Some(Seen::Resume));

    let (code, body) = post(&url("/admin/cede"), Some(SECRET), None).await?;
    assert_eq!((code, body["message"].as_str()), (200, Some("ceded for 30000 ms")), "default period");
    assert_eq!(seen.recv().await, Some(Seen::Cede(Duration::from_secs(30))));
    let (code, _) = post(&url("/admin/cede"), Some(SECRET), Some(json!({"period_ms": 86_400_000u64}))).await?;
    assert_eq!(code, 200, "a day at most");
    assert_eq!(seen.recv().await, Some(Seen::Cede(Duration::from_secs(86_400))));
    let (code, _) = post(&url("/admin/cede"), Some(SECRET), Some(json!({"period_ms": 1234}))).await?;
    assert_eq!(code, 200);
    assert_eq!(seen.recv().await, Some(Seen::Cede(Duration::from_millis(1234))));
    for bad in [json!({"period_ms": 0}), json!({"period_ms": 86_400_001u64}), json!({"period": 5}), json!("soon")] {
        let (code, body) = post(&url("/admin/cede"), Some(SECRET), Some(bad.clone())).await?;
        assert_eq!(code, 400, "{bad}: {body}");
    }

    let (code, body) = post(&url("/admin/failover"), Some(SECRET), None).await?;
    assert_eq!(code, 409);
    assert!(body["reason"].as_str().unwrap().contains("paused"), "{body}");
    assert_eq!(seen.recv().await, Some(Seen::Failover(false)));
    // Neither done nor refused (the active was asked to cede, no answer came): 504, never
    // "refused", since the cluster may still change.
    let (code, body) = post(&url("/admin/failover"), Some(SECRET), Some(json!({"allow_data_loss": true}))).await?;
    assert_eq!(code, 504, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("it may still cede"), "{body}");
    assert_eq!(seen.recv().await, Some(Seen::Failover(true)));
    for bad in [json!({"allow_data_loss": "yes"}), json!({"force": true})] {
        let (code, body) = post(&url("/admin/failover"), Some(SECRET), Some(bad.clone())).await?;
        assert_eq!(code, 400, "{bad}: {body}");
    }

    let (code, body) = post(&url("/admin/unblock"), Some(SECRET), Some(json!({"by": "alice"}))).await?;
    assert_eq!((code, body["message"].as_str()), (200, Some("anti-flap block cleared (900 ms were left)")));
    match seen.recv().await {
        Some(Seen::Unblock(by)) => assert!(by.starts_with("alice from 127.0.0.1:"), "{by}"),
        other => panic!("expected an unblock, got {other:?}"),
    }
    let (code, _) = post(&url("/admin/unblock"), Some(SECRET), None).await?;
    assert_eq!(code, 200);
    assert!(matches!(seen.recv().await, Some(Seen::Unblock(by)) if by.starts_with("(unnamed) from ")));
    let (code, _) = post(&url("/admin/unblock"), None, Some(json!({"by": "mallory"}))).await?;
    assert_eq!(code, 401, "unblock needs the secret");
    assert!(seen.try_recv().is_err(), "the bad cede and failover bodies never reached the driver");

    let status: Value = http().get(url("/admin/status")).bearer_auth(SECRET).send().await?.json().await?;
    assert_eq!((status["node_id"].as_str(), status["role"].as_str()), (Some("db1"), Some("initializing")));
    assert_eq!(status["serving_active"], json!(false));
    let history: Value = http().get(url("/admin/history")).bearer_auth(SECRET).send().await?.json().await?;
    assert_eq!(history, json!({"transitions": []}));
    server.stop().await
}

#[tokio::test]
async fn a_silent_or_stopped_driver_is_reported_not_waited_on() -> Result<()> {
    let (control, mut seen) = stub_driver(|_| Answer::Hold);
    let server = start("db1", control).await?;
    let (code, body) = post(&server.url("/admin/pause"), Some(SECRET), None).await?;
    assert_eq!(code, 504, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("may still be carried out"), "{body}");
    assert_eq!(seen.recv().await, Some(Seen::Pause));
    let (code, body) =
        post(&server.url("/peer/fence"), Some(SECRET), Some(json!({"target_node_id": "db1", "token": 3}))).await?;
    assert_eq!(code, 200);
    assert_eq!(body["outcome"], json!("indeterminate"), "no outcome in time is not a failure: {body}");
    server.stop().await?;

    // No driver at all: nothing can be done, and the API says so.
    let (control, rx) = mpsc::channel(1);
    drop(rx);
    let server = start("db1", control).await?;
    let (code, body) = post(&server.url("/admin/resume"), Some(SECRET), None).await?;
    assert_eq!(code, 503, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("nothing was done"), "{body}");
    server.stop().await
}

// ----- the peer endpoint ------------------------------------------------------------------

#[tokio::test]
async fn peer_fence_refuses_another_node_and_maps_outcomes() -> Result<()> {
    let outcomes = Arc::new(Mutex::new(vec![
        MethodOutcome::indeterminate("demote timed out"),
        MethodOutcome::failed("master refused"),
        MethodOutcome::fenced("master demoted"),
    ]));
    let script = outcomes.clone();
    let (control, mut seen) = stub_driver(move |s| match s {
        Seen::PeerFence(_) => Answer::Fence(script.lock().unwrap().pop().expect("scripted outcome")),
        _ => Answer::Hold,
    });
    let server = start("db1", control).await?;
    let url = server.url("/peer/fence");

    let (code, body) = post(&url, Some(SECRET), Some(json!({"target_node_id": "db2", "token": 9}))).await?;
    assert_eq!(code, 403);
    let answer: PeerFenceResponse = serde_json::from_value(body)?;
    assert_eq!(answer.outcome, PeerFenceOutcome::Failed);
    assert!(answer.reason.contains("db1") && answer.reason.contains("db2"), "{}", answer.reason);

    for (token, expected) in
        [(10, PeerFenceOutcome::Fenced), (11, PeerFenceOutcome::Failed), (12, PeerFenceOutcome::Indeterminate)]
    {
        let (code, body) = post(&url, Some(SECRET), Some(json!({"target_node_id": "db1", "token": token}))).await?;
        assert_eq!(code, 200);
        let answer: PeerFenceResponse = serde_json::from_value(body)?;
        assert_eq!(answer.outcome, expected);
        assert_eq!(seen.recv().await, Some(Seen::PeerFence(FencingToken(token))), "the misrouted one was never sent");
    }
    let (code, body) = post(&url, Some(SECRET), Some(json!({"node": "db1"}))).await?;
    assert_eq!((code, body["outcome"].as_str()), (400, Some("failed")));
    assert!(seen.try_recv().is_err());
    server.stop().await
}

/// `POST /peer/failsafe` reaches the driver with the asker's request and returns its answer;
/// a malformed or zero-ttl request is refused before it reaches the driver, and without the
/// secret nothing happens.
#[tokio::test]
async fn peer_failsafe_forwards_the_request_and_refuses_bad_ones() -> Result<()> {
    let (control, mut seen) = stub_driver(|s| match s {
        Seen::Failsafe(r) if r.node_id == "db2" => ok_everything(s),
        _ => Answer::Hold,
    });
    let server = start("db1", control).await?;
    let url = server.url(PEER_FAILSAFE_PATH);
    let ask = json!({"node_id": "db2", "token": 42, "ttl_ms": 3000});

    let (code, _) = post(&url, None, Some(ask.clone())).await?;
    assert_eq!(code, 401);
    let (code, body) = post(&url, Some(SECRET), Some(ask)).await?;
    assert_eq!(code, 200, "{body}");
    let answer: FailsafeResponse = serde_json::from_value(body)?;
    assert!(answer.accepted && answer.node_id == "db1", "{answer:?}");
    let expected = FailsafeRequest { node_id: "db2".into(), token: FencingToken(42), ttl_ms: 3000 };
    assert_eq!(seen.recv().await, Some(Seen::Failsafe(expected)), "the 401 one was never sent");

    for bad in [json!({"node_id": "db2", "token": 1, "ttl_ms": 0}), json!({"node": "db2"}), json!("x")] {
        let (code, body) = post(&url, Some(SECRET), Some(bad.clone())).await?;
        assert_eq!((code, body["accepted"].as_bool()), (400, Some(false)), "{bad} -> {body}");
    }
    assert!(seen.try_recv().is_err(), "refused requests reach nothing");
    server.stop().await
}

/// The fencing crate's own `agent` method against this server: the contract end to end.
#[tokio::test]
async fn the_agent_fencing_method_fences_through_the_peer_listener() -> Result<()> {
    let (control, mut seen) = stub_driver(ok_everything);
    let dir = ScratchDir::new("admin-peer")?;
    let s = settings(&dir);
    let secret_file = s.token_file.clone().unwrap();
    let server = start_with(s, dir, true, control, Arc::new(Mutex::new(AgentStatus::new("c", "db1"))), None).await?;
    let peer = server.peer.expect("a peer listener");
    let yaml = format!(
        "overall_timeout_ms: 3000\nlevels:\n  - methods:\n      - kind: agent\n        timeout_ms: 1000\n        \
         peers: {{db1: 'http://{peer}', db2: 'http://{peer}'}}\n        secret_file: {}\n",
        secret_file.display()
    );
    let fencer = Fencer::new(FencingConfig::from_yaml_str(&yaml)?)?;
    let report = fencer.fence(&FenceTarget::new("db1", "127.0.0.1", 1, FencingToken(0)), FencingToken(21)).await;
    assert!(report.outcome.permits_promotion(), "{report:#?}");
    assert_eq!(seen.recv().await, Some(Seen::PeerFence(FencingToken(21))));
    // Routed to the wrong agent: refused, so it fences nothing and says so.
    let report = fencer.fence(&FenceTarget::new("db2", "127.0.0.1", 1, FencingToken(0)), FencingToken(22)).await;
    assert!(matches!(report.outcome, FenceOutcome::Failed { .. }), "{report:#?}");

    // The peer listener serves what peers need, and not the operator's routes.
    let peer_url = |p: &str| format!("http://{peer}{p}");
    let (code, _) = post(&peer_url("/admin/cede"), Some(SECRET), Some(json!({"period_ms": 500}))).await?;
    assert_eq!(code, 200);
    assert_eq!(seen.recv().await, Some(Seen::Cede(Duration::from_millis(500))));
    for path in ["/admin/pause", "/admin/failover"] {
        let (code, _) = post(&peer_url(path), Some(SECRET), None).await?;
        assert_eq!(code, 404, "{path} is not on the peer listener");
    }
    assert!(seen.try_recv().is_err());
    server.stop().await
}

// ----- TLS --------------------------------------------------------------------------------

struct Pki {
    ca_pem: String,
    server_cert: PathBuf,
    server_key: PathBuf,
    ca_file: PathBuf,
    client_pem: String,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn make_pki(dir: &ScratchDir) -> Result<Pki> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "referee test CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let leaf = |sans: Vec<String>, usage: ExtendedKeyUsagePurpose| -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans)?;
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) =
        leaf(vec!["127.0.0.1".into(), "localhost".into()], ExtendedKeyUsagePurpose::ServerAuth)?;
    let (client_cert, client_key) = leaf(vec!["operator".into()], ExtendedKeyUsagePurpose::ClientAuth)?;
    let pki = Pki {
        ca_pem: ca.pem(),
        server_cert: dir.0.join("server.pem"),
        server_key: dir.0.join("server.key"),
        ca_file: dir.0.join("ca.pem"),
        client_pem: format!("{client_cert}\n{client_key}"),
        client_cert: dir.0.join("client.pem"),
        client_key: dir.0.join("client.key"),
    };
    std::fs::write(&pki.client_cert, client_cert)?;
    std::fs::write(&pki.client_key, client_key)?;
    std::fs::write(&pki.server_cert, server_cert)?;
    std::fs::write(&pki.server_key, server_key)?;
    std::fs::write(&pki.ca_file, &pki.ca_pem)?;
    Ok(pki)
}

fn tls_client(pki: &Pki, with_cert: bool) -> Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .add_root_certificate(reqwest::Certificate::from_pem(pki.ca_pem.as_bytes())?);
    if with_cert {
        b = b.identity(reqwest::Identity::from_pem(pki.client_pem.as_bytes())?);
    }
    Ok(b.build()?)
}

#[tokio::test]
async fn tls_round_trip_and_required_client_certificates() -> Result<()> {
    let dir = ScratchDir::new("admin-tls")?;
    let pki = make_pki(&dir)?;
    let mut s = settings(&dir);
    s.tls = Some(TlsSettings {
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key.clone(),
        client_ca_file: None,
    });
    let (control, mut seen) = stub_driver(ok_everything);
    let status = Arc::new(Mutex::new(AgentStatus::new("c", "db1")));
    let server =
        start_with(s.clone(), ScratchDir::new("admin-tls-1")?, false, control.clone(), status.clone(), None).await?;
    let https = format!("https://{}", server.admin);
    let resp = tls_client(&pki, false)?.post(format!("{https}/admin/pause")).bearer_auth(SECRET).send().await?;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(seen.recv().await, Some(Seen::Pause));
    assert!(http().post(server.url("/admin/pause")).bearer_auth(SECRET).send().await.is_err(), "no plain HTTP");
    let resp = tls_client(&pki, false)?.post(format!("{https}/admin/pause")).send().await?;
    assert_eq!(resp.status().as_u16(), 401, "TLS does not replace the bearer secret");
    server.stop().await?;

    // With a client CA, a client must present a certificate it signed.
    s.tls.as_mut().unwrap().client_ca_file = Some(pki.ca_file.clone());
    let server = start_with(s, ScratchDir::new("admin-tls-2")?, false, control, status, None).await?;
    let https = format!("https://{}", server.admin);
    let refused = tls_client(&pki, false)?.post(format!("{https}/admin/resume")).bearer_auth(SECRET).send().await;
    assert!(refused.is_err(), "a client without a certificate must be refused: {refused:?}");
    let resp = tls_client(&pki, true)?.post(format!("{https}/admin/resume")).bearer_auth(SECRET).send().await?;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(seen.recv().await, Some(Seen::Resume));
    assert!(seen.try_recv().is_err());
    server.stop().await
}

/// An error and its sources on one line: reqwest's own message hides the TLS cause.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

fn peer_tls(ca: Option<&PathBuf>, identity: Option<(&PathBuf, &PathBuf)>) -> ClientTlsConfig {
    ClientTlsConfig {
        ca_file: ca.cloned(),
        cert_file: identity.map(|(c, _)| c.clone()),
        key_file: identity.map(|(_, k)| k.clone()),
    }
}

/// The client side: this agent calling a peer whose listener speaks TLS and requires client
/// certificates, as a graceful failover's cede does.
#[tokio::test]
async fn peer_client_with_peer_tls_reaches_a_peer_listener_requiring_client_certificates() -> Result<()> {
    let dir = ScratchDir::new("admin-peer-tls")?;
    let pki = make_pki(&dir)?;
    let mut s = settings(&dir);
    s.tls = Some(TlsSettings {
        cert_file: pki.server_cert.clone(),
        key_file: pki.server_key.clone(),
        client_ca_file: Some(pki.ca_file.clone()),
    });
    let (control, mut seen) = stub_driver(ok_everything);
    let status = Arc::new(Mutex::new(AgentStatus::new("c", "db1")));
    let server = start_with(s.clone(), ScratchDir::new("admin-peer-tls-1")?, true, control, status, None).await?;
    let peer = format!("https://{}", server.peer.expect("a peer listener"));
    let caller = |tls: Option<ClientTlsConfig>| -> Result<reqwest::Client> {
        let mut me = settings(&dir);
        me.peer_tls = tls;
        Ok(me.peer_client(Duration::from_secs(2))?)
    };
    let get_status = |client: reqwest::Client| {
        let url = format!("{peer}/admin/status");
        async move { within("GET /admin/status", client.get(url).bearer_auth(SECRET).send()).await }
    };

    // The cluster's CA and a client certificate it signed: through, and the bearer still counts.
    let full = caller(Some(peer_tls(Some(&pki.ca_file), Some((&pki.client_cert, &pki.client_key)))))?;
    let resp = get_status(full.clone()).await??;
    assert_eq!(resp.status().as_u16(), 200);
    let body: Value = resp.json().await?;
    assert_eq!(body["node_id"], json!("db1"), "{body}");
    let resp = full.post(format!("{peer}/admin/cede")).bearer_auth(SECRET).send().await?;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(seen.recv().await, Some(Seen::Cede(Duration::from_secs(30))));

    // No client certificate: refused in the TLS handshake.
    let refused = get_status(caller(Some(peer_tls(Some(&pki.ca_file), None)))?).await?;
    let e = chain(&refused.expect_err("a client without a certificate must be refused"));
    assert!(e.contains("CertificateRequired"), "{e}");
    // No `ca_file`: the system's roots do not know the cluster's CA.
    let refused = get_status(caller(Some(peer_tls(None, Some((&pki.client_cert, &pki.client_key)))))?).await?;
    let e = chain(&refused.expect_err("the peer's certificate must not verify"));
    assert!(e.contains("UnknownIssuer"), "{e}");
    // Nor does the plain client used without `peer_tls`.
    assert!(get_status(caller(None)?).await?.is_err());
    // With `peer_tls`, a peer published as plain HTTP is not sent the secret.
    let plain = full.get(format!("http://{}/admin/status", server.admin)).bearer_auth(SECRET).send().await;
    assert!(plain.as_ref().is_err_and(reqwest::Error::is_builder), "{plain:?}");

    // The fencing `agent` method's `tls` takes the same files to the same listener.
    let yaml = format!(
        "overall_timeout_ms: 3000\nlevels:\n  - methods:\n      - kind: agent\n        timeout_ms: 1000\n        \
         peers: {{db1: '{peer}'}}\n        secret_file: {}\n        tls: {{ca_file: {}, cert_file: {}, key_file: {}}}\n",
        s.token_file.as_ref().unwrap().display(),
        pki.ca_file.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let fencer = Fencer::new(FencingConfig::from_yaml_str(&yaml)?)?;
    let report = fencer.fence(&FenceTarget::new("db1", "127.0.0.1", 1, FencingToken(0)), FencingToken(31)).await;
    assert!(report.outcome.permits_promotion(), "{report:#?}");
    assert_eq!(seen.recv().await, Some(Seen::PeerFence(FencingToken(31))));
    assert!(seen.try_recv().is_err());
    server.stop().await
}

#[tokio::test]
async fn peer_tls_settings_are_checked_and_bad_files_named() -> Result<()> {
    let dir = ScratchDir::new("admin-peer-tls-settings")?;
    let pki = make_pki(&dir)?;
    let refused = |yaml: &str| -> Result<String> {
        let s: AdminSettings = serde_yaml::from_str(&format!("token_env: X\npeer_tls: {yaml}\n"))?;
        Ok(s.validate().unwrap_err().to_string())
    };
    let e = refused("{cert_file: /c.pem}")?;
    assert_eq!(e, "invalid agent config: `admin.peer_tls.key_file` is missing; `cert_file` needs its private key");
    assert!(refused("{key_file: /c.key}")?.contains("`admin.peer_tls.cert_file` is missing"));
    assert!(refused("{}")?.contains("`admin.peer_tls.ca_file`"));
    let typo = serde_yaml::from_str::<AdminSettings>("token_env: X\npeer_tls: {ca: /ca.pem}\n").unwrap_err();
    assert!(typo.to_string().contains("unknown field `ca`"), "{typo}");
    let s: AdminSettings = serde_yaml::from_str("token_env: X\npeer_tls: {ca_file: /ca.pem}\n")?;
    s.validate()?;

    // peer_client checks the keys too, then reads the files and names the one at fault.
    let mut s = settings(&dir);
    s.peer_tls = Some(ClientTlsConfig { cert_file: Some(pki.client_cert.clone()), ..peer_tls(None, None) });
    let e = s.peer_client(Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, AdminError::Invalid { key: "peer_tls.key_file", .. }), "{e}");
    let missing = dir.0.join("no-such-ca.pem");
    s.peer_tls = Some(peer_tls(Some(&missing), None));
    let e = s.peer_client(Duration::from_secs(1)).unwrap_err();
    assert!(matches!(e, AdminError::Tls(_)), "{e:?}");
    let e = e.to_string();
    assert!(e.contains("`admin.peer_tls.ca_file`: cannot read") && e.contains(&missing.display().to_string()), "{e}");
    s.peer_tls = Some(peer_tls(Some(&pki.ca_file), Some((&pki.client_cert, &pki.server_key))));
    let e = s.peer_client(Duration::from_secs(1)).unwrap_err().to_string();
    assert!(e.contains("`admin.peer_tls.key_file`") && e.contains("does the key belong to the certificate"), "{e}");
    s.peer_tls = Some(peer_tls(Some(&pki.client_key), None));
    let e = s.peer_client(Duration::from_secs(1)).unwrap_err().to_string();
    assert!(e.contains("`admin.peer_tls.ca_file`") && e.contains("holds no PEM certificate"), "{e}");
    // Without `peer_tls`, a plain client.
    s.peer_tls = None;
    s.peer_client(Duration::from_secs(1))?;
    Ok(())
}

// ----- referee admin ----------------------------------------------------------------------

/// Parses `referee admin` arguments as the binary would.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    admin: AdminArgs,
}

async fn cli(args: &[&str]) -> Outcome {
    let argv = std::iter::once("referee-admin").chain(args.iter().copied());
    let parsed = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"));
    execute(&parsed.admin).await
}

/// A member as `referee admin` sees it: registered in the coordinator, its probe `/status` and
/// `/history` served by the test, its admin API by the real server over a stub driver.
struct FakeMember {
    _coord: Coordination,
    status: Arc<Mutex<Value>>,
    history: Arc<Mutex<Value>>,
    seen: mpsc::UnboundedReceiver<Seen>,
    probe_addr: SocketAddr,
    _admin: Running,
}

fn coordination(server: &TestServer, cluster: &str, node: &str, digest: Option<&str>) -> CoordinationConfig {
    CoordinationConfig {
        connect: server.connect_string(),
        cluster: cluster.into(),
        node_id: node.into(),
        session_timeout: Duration::from_secs(5),
        op_timeout: Duration::from_secs(1),
        digest: digest.map(str::to_string),
    }
}

async fn serve_router(router: Router) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok(addr)
}

fn report(node: &str, role: Role, health: Health, admin_url: &str) -> Value {
    let mut st = AgentStatus::new("c", node);
    st.role = role;
    st.health = health;
    st.session = SessionView::Connected { session_id: 0x77 };
    st.last_decision = format!("{node}: standing by");
    let mut v = serde_json::to_value(&st).unwrap();
    v["lease_left_ms"] = json!(0);
    v["serving_active"] = json!(false);
    v["admin_addr"] = json!(admin_url);
    v
}

async fn fake_member(
    server: &TestServer,
    node: &str,
    role: Role,
    health: Health,
    script: impl Fn(&Seen, &Arc<Mutex<Value>>, &Arc<Mutex<Value>>) -> Answer + Send + 'static,
) -> Result<FakeMember> {
    let status = Arc::new(Mutex::new(Value::Null));
    let history = Arc::new(Mutex::new(json!({"transitions": []})));
    let (st, hi) = (status.clone(), history.clone());
    let (control, seen) = stub_driver(move |s| script(s, &st, &hi));
    let admin = start(node, control).await?;
    *status.lock().unwrap() = report(node, role, health, &format!("http://{}", admin.admin));
    let (st, hi) = (status.clone(), history.clone());
    let probes = Router::new()
        .route("/status", get(move || async move { Json(st.lock().unwrap().clone()) }))
        .route("/history", get(move || async move { Json(hi.lock().unwrap().clone()) }));
    let probe_addr = serve_router(probes).await?;
    let coord = Coordination::connect(coordination(server, "c", node, None)).await?;
    coord
        .register_member(&Member {
            node_id: node.into(),
            target: FenceTarget::new(node, "127.0.0.1", 1, FencingToken(0)),
            peer_url: None,
            probe_addr: Some(probe_addr.to_string()),
            candidacy: None,
        })
        .await?;
    Ok(FakeMember { _coord: coord, status, history, seen, probe_addr, _admin: admin })
}

/// Takes the free lock of cluster `c` as `node`, through the election layer itself.
async fn hold_lock(server: &TestServer, node: &str) -> Result<(Coordination, FencingToken)> {
    let holder = Coordination::connect(coordination(server, "c", node, None)).await?;
    let record = LockRecord {
        node_id: node.into(),
        target: FenceTarget::new(node, "127.0.0.1", 1, FencingToken(0)),
        peer_url: None,
    };
    let Acquired::Won { token } = holder.try_acquire(&record).await? else {
        anyhow::bail!("{node} must win the free lock")
    };
    Ok((holder, token))
}

/// `referee admin` against cluster `c` of one coordinator, with the admin token in a file.
struct AdminCli {
    base: Vec<String>,
}

impl AdminCli {
    fn new(connect: &str, token_file: &std::path::Path) -> Self {
        let base = ["--coordinator", connect, "--cluster", "c", "--token-file", &token_file.display().to_string()]
            .map(String::from)
            .to_vec();
        AdminCli { base }
    }

    async fn run(&self, extra: &[&str]) -> Outcome {
        let args: Vec<&str> = self.base.iter().map(String::as_str).chain(extra.iter().copied()).collect();
        cli(&args).await
    }
}

fn transition(at_ms: i64, from: &str, to: &str, token: Option<u64>, reason: &str) -> Value {
    json!({"at_ms": at_ms, "from": from, "to": to, "reason": reason, "token": token,
           "phases": if to == "active" { json!({"detect_ms": 1, "elect_ms": 2, "fence_ms": 30, "promote_ms": 4}) } else { Value::Null }})
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A member whose published addresses reach another node's agent (a wildcard or loopback
/// address read from another host) is shown unreachable, never with that agent's report, and
/// nothing is asked of that agent in its name.
#[tokio::test]
async fn a_member_whose_addresses_reach_another_agent_is_not_taken_for_it() -> Result<()> {
    let zk_server = TestServer::start().await?;
    let dir = ScratchDir::new("admin-cli-misdirected")?;
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, SECRET)?;
    let mut db1 = fake_member(&zk_server, "db1", Role::Active, Health::Healthy, |s, _, _| ok_everything(s)).await?;
    // db2 registered with db1's probe address, as `0.0.0.0:8301` would read on db1's host.
    let db2 = Coordination::connect(coordination(&zk_server, "c", "db2", None)).await?;
    db2.register_member(&Member {
        node_id: "db2".into(),
        target: FenceTarget::new("db2", "127.0.0.1", 1, FencingToken(0)),
        peer_url: None,
        probe_addr: Some(db1.probe_addr.to_string()),
        candidacy: None,
    })
    .await?;
    let admin = AdminCli::new(&zk_server.connect_string(), &token_file);

    let out = admin.run(&["status"]).await;
    let row = out.stdout.lines().find(|l| l.split_whitespace().take(2).any(|w| w == "db2")).unwrap_or_default();
    assert!(!row.contains("active") && row.contains("answered by db1's agent"), "{out:?}");
    let out = admin.run(&["check-health", "db2"]).await;
    assert_eq!(out.exit, Exit::Unreachable, "db1's health is not db2's: {out:?}");
    assert!(out.stderr.contains("probes.advertise"), "{out:?}");
    let out = admin.run(&["pause", "--node", "db2"]).await;
    assert_ne!(out.exit, Exit::Ok, "{out:?}");
    assert!(db1.seen.try_recv().is_err(), "db1's agent was asked in db2's name");

    // An admin request that reaches the wrong agent anyway is refused there, nothing done.
    let url = format!("{}/admin/pause", db1.status.lock().unwrap()["admin_addr"].as_str().unwrap());
    let response = http().post(&url).bearer_auth(SECRET).header(ADDRESSEE_HEADER, "db2").send().await?;
    let code = response.status().as_u16();
    let body: Value = response.json().await?;
    assert_eq!(code, 421, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("this is db1's agent, not db2's"), "{body}");
    assert!(db1.seen.try_recv().is_err(), "a misdirected pause reached the driver");
    let response = http().post(&url).bearer_auth(SECRET).header(ADDRESSEE_HEADER, "db1").send().await?;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(db1.seen.recv().await, Some(Seen::Pause));
    Ok(())
}

#[tokio::test]
async fn referee_admin_status_failover_health_pause_and_history() -> Result<()> {
    let zk_server = TestServer::start().await?;
    let dir = ScratchDir::new("admin-cli")?;
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, SECRET)?;

    let mut db1 = fake_member(&zk_server, "db1", Role::Active, Health::Healthy, |s, _, _| ok_everything(s)).await?;
    // db2 becomes active when asked, recording the handover in the histories.
    let db1_history = db1.history.clone();
    let mut db2 = fake_member(&zk_server, "db2", Role::Standby, Health::Healthy, move |s, st, hi| {
        if matches!(s, Seen::Failover(_)) {
            let now = now_ms();
            db1_history.lock().unwrap()["transitions"] =
                json!([transition(now - 5, "active", "standby", Some(5), "ceded to db2")]);
            hi.lock().unwrap()["transitions"] =
                json!([transition(now, "standby", "active", Some(9), "won the lock; fenced db1; promoted")]);
            let mut st = st.lock().unwrap();
            st["role"] = json!("active");
            st["serving_active"] = json!(true);
            st["token"] = json!(9);
        }
        ok_everything(s)
    })
    .await?;
    let mut db3 =
        fake_member(&zk_server, "db3", Role::Unhealthy, Health::Unhealthy("replication lag 9 GB".into()), |s, _, _| {
            ok_everything(s)
        })
        .await?;
    // db1 holds the lock, through the election layer itself.
    let (holder, token) = hold_lock(&zk_server, "db1").await?;
    {
        let mut st = db1.status.lock().unwrap();
        st["token"] = json!(token.0);
        st["lease_left_ms"] = json!(1750);
        st["serving_active"] = json!(true);
    }

    let connect = zk_server.connect_string();
    let admin = AdminCli::new(&connect, &token_file);
    let run = |extra: &'static [&'static str]| admin.run(extra);

    // status: a table with every member, the holder marked.
    let out = run(&["status"]).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");
    assert!(out.stdout.contains(&format!("lock held by db1 (token {token})")), "{}", out.stdout);
    let line = |node: &str| {
        let row = out.stdout.lines().skip(1).find(|l| l.split_whitespace().take(2).any(|w| w == node));
        row.unwrap_or_default().to_string()
    };
    assert!(
        line("db1").starts_with('*') && line("db1").contains("active") && line("db1").contains("1750 ms"),
        "{}",
        out.stdout
    );
    assert!(line("db2").contains("standby") && line("db2").contains("healthy") && !line("db2").starts_with('*'));
    assert!(line("db3").contains("unhealthy: replication lag 9 GB"), "{}", out.stdout);
    assert!(out.stdout.contains("connected 0x77"), "{}", out.stdout);

    let out = run(&["status", "--json"]).await;
    assert_eq!(out.exit, Exit::Ok);
    let v: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(v["lock"], json!({"node_id": "db1", "token": token.0}));
    let names: Vec<&str> = v["members"].as_array().unwrap().iter().map(|m| m["node_id"].as_str().unwrap()).collect();
    assert_eq!(names, ["db1", "db2", "db3"]);
    assert_eq!(v["members"][0]["holds_lock"], json!(true));
    assert_eq!(v["members"][1]["status"]["role"], json!("standby"));

    // check-health: exit 0 healthy, 1 not.
    assert_eq!(run(&["check-health", "db2"]).await.exit, Exit::Ok);
    let out = run(&["check-health", "db3"]).await;
    assert_eq!(out.exit, Exit::CheckFailed);
    assert!(out.stdout.contains("replication lag"), "{out:?}");
    assert_eq!(run(&["check-health", "db9"]).await.exit, Exit::Usage);

    // failover: refused for an unknown or unfit node, with why, and nothing sent.
    let out = run(&["failover", "--to", "db9"]).await;
    assert_eq!(out.exit, Exit::Usage, "{out:?}");
    assert!(out.stderr.contains("unknown node `db9`") && out.stderr.contains("db1, db2, db3"), "{}", out.stderr);
    let out = run(&["failover", "--to", "db3", "--json"]).await;
    assert_eq!(out.exit, Exit::Refused, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(v["exit_code"], json!(3));
    assert!(v["reason"].as_str().unwrap().contains("not healthy (unhealthy: replication lag 9 GB)"), "{v}");
    assert!(db3.seen.try_recv().is_err());
    let out = run(&["failover", "--to", "db1"]).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");
    assert!(out.stdout.contains("already active"));

    // status shows positions and each node's "why not".
    db1.status.lock().unwrap()["master"] = json!({"state": "active", "token": token.0, "position": 5000});
    {
        let mut st = db2.status.lock().unwrap();
        st["master"] = json!({"state": "standby", "token": token.0, "position": 3800});
        st["behind"] = json!(1200);
        st["max_lag"] = json!(1000);
        st["why_not"] = json!("db1 is active and its lease has not expired");
    }
    // ... and what each member's fencing checks found: none yet, all well, or the problems.
    db1.status.lock().unwrap()["fencing_checks"] = json!({"at_ms": 1, "problems": 0, "peers": []});
    db3.status.lock().unwrap()["fencing_checks"] = json!({"at_ms": 1, "problems": 1, "peers": [
        {"node_id": "db1", "checks": [
            {"level": 0, "method": "graceful", "kind": "graceful", "readiness": "ready", "detail": "answers"},
            {"level": 1, "method": "ssh", "kind": "ssh", "readiness": "problem", "reason": "ssh could not reach db1"}
        ]}
    ]});
    let out = run(&["status"]).await;
    let row = |node: &str| {
        let row = out.stdout.lines().skip(1).find(|l| l.split_whitespace().take(2).any(|w| w == node));
        row.unwrap_or_default().to_string()
    };
    assert!(out.stdout.lines().next().is_some_and(|_| out.stdout.contains("WHY NOT")), "{}", out.stdout);
    assert!(out.stdout.contains("FENCING"), "{}", out.stdout);
    let db2_row = row("db2");
    assert!(
        db2_row.contains("3800 (-1200)") && db2_row.contains("db1 is active and its lease has not expired"),
        "{db2_row}"
    );
    assert!(row("db1").contains(" ok ") && row("db3").contains(" 1 problem "), "{}", out.stdout);
    assert!(
        out.stdout.contains("db3 may not be able to fence db1: level 1 ssh: ssh could not reach db1"),
        "{}",
        out.stdout
    );

    // failover to a lagging standby: refused with the lag (exit 3), nothing sent ...
    let out = run(&["failover", "--to", "db2"]).await;
    assert_eq!(out.exit, Exit::Refused, "{out:?}");
    assert!(
        out.stderr.contains("db2 is 1200 behind the active (max_lag 1000)") && out.stderr.contains("--allow-data-loss"),
        "{}",
        out.stderr
    );
    assert!(db2.seen.try_recv().is_err(), "a refused failover reaches no agent");
    // A dry run checks the same and is refused the same, ...
    let out = run(&["failover", "--to", "db2", "--dry-run"]).await;
    assert_eq!(out.exit, Exit::Refused, "{out:?}");
    assert!(out.stderr.contains("db2 is 1200 behind the active (max_lag 1000)"), "{}", out.stderr);
    // ... and where the failover would go ahead, it prints the plan and sends nothing.
    let out = run(&["failover", "--to", "db2", "--allow-data-loss", "--dry-run", "--json"]).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!((v["dry_run"].clone(), v["data_loss_allowed"].clone()), (json!(true), json!(true)), "{v}");
    assert_eq!(v["active"], json!({"node_id": "db1", "token": token.0}), "{v}");
    assert!(v["steps"][0].as_str().unwrap().starts_with("db1 (active, token"), "{v}");
    let out = run(&["failover", "--to", "db2", "--allow-data-loss", "--dry-run"]).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");
    assert!(
        out.stdout.contains("dry run: a failover to db2 would go ahead; nothing was sent")
            && out.stdout.contains("what db2 lacks of the active's data is lost"),
        "{}",
        out.stdout
    );
    assert!(db2.seen.try_recv().is_err() && db1.seen.try_recv().is_err(), "a dry run reaches no agent");
    // ... and with --allow-data-loss, it says how far behind and asks the agent to lift the gate.
    let out = run(&["failover", "--to", "db2", "--allow-data-loss", "--json"]).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!((v["behind"].clone(), v["data_loss_allowed"].clone()), (json!(1200), json!(true)), "{v}");
    assert_eq!(db2.seen.recv().await, Some(Seen::Failover(true)));
    {
        let mut st = db2.status.lock().unwrap();
        st["role"] = json!("standby");
        st["serving_active"] = json!(false);
        st["master"]["position"] = json!(4900);
    }

    // unblock reaches the named node, which is told who asked.
    let out = run(&["unblock", "--node", "db2"]).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");
    assert!(out.stdout.contains("db2: anti-flap block cleared"), "{}", out.stdout);
    assert!(
        matches!(db2.seen.recv().await, Some(Seen::Unblock(by)) if by.contains("(referee admin unblock) from 127.0.0.1:"))
    );

    // failover to the healthy standby: it is asked, becomes active, and the timeline shows it.
    let out = run(&["failover", "--to", "db2"]).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");
    assert_eq!(db2.seen.recv().await, Some(Seen::Failover(false)));
    assert!(out.stdout.contains("failover to db2: active now"), "{}", out.stdout);
    let ceded = out.stdout.find("db1  active -> standby").expect("db1 stepped down in the timeline");
    let promoted = out.stdout.find("db2  standby -> active  token 9").expect("db2 promoted in the timeline");
    assert!(ceded < promoted, "{}", out.stdout);
    assert!(out.stdout.contains("fence 30 ms"), "{}", out.stdout);

    // history: both nodes' transitions, merged in time order.
    let out = run(&["history"]).await;
    assert_eq!(out.exit, Exit::Ok);
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    let out = run(&["history", "--node", "db2", "--json"]).await;
    let v: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(v["transitions"].as_array().unwrap().len(), 1);
    assert_eq!(v["transitions"][0]["node"], json!("db2"));

    // pause reaches every member and is recorded in the coordinator; one member cannot be
    // resumed alone while the whole cluster is paused (exit 3, nothing sent); resume reaches
    // every member and removes the record; one member alone is paused and resumed in its agent.
    let out = run(&["pause"]).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");
    assert!(out.stdout.contains("cluster c: paused (/referee/c/pause)"), "{}", out.stdout);
    for m in [&mut db1, &mut db2, &mut db3] {
        assert_eq!(m.seen.recv().await, Some(Seen::Pause));
    }
    let record = Coordination::connect(coordination(&zk_server, "c", "reader", None)).await?.read_pause().await?;
    assert!(record.is_some_and(|r| !r.requested_by.is_empty() && r.at_ms > 0), "the cluster's pause is recorded");
    let out = run(&["resume", "--node", "db3"]).await;
    assert_eq!(out.exit, Exit::Refused, "{out:?}");
    assert!(out.stderr.contains("the whole cluster is paused"), "{}", out.stderr);
    assert!(db3.seen.try_recv().is_err(), "nothing was sent");
    let out = run(&["resume"]).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");
    for m in [&mut db1, &mut db2, &mut db3] {
        assert_eq!(m.seen.recv().await, Some(Seen::Resume));
    }
    let record = Coordination::connect(coordination(&zk_server, "c", "reader", None)).await?.read_pause().await?;
    assert!(record.is_none(), "resume removes the record");
    assert_eq!(run(&["pause", "--node", "db3"]).await.exit, Exit::Ok);
    assert_eq!(db3.seen.recv().await, Some(Seen::Pause));
    assert_eq!(run(&["resume", "--node", "db3"]).await.exit, Exit::Ok);
    assert_eq!(db3.seen.recv().await, Some(Seen::Resume));
    std::fs::write(&token_file, "not-the-secret")?;
    let out = run(&["pause", "--json"]).await;
    assert_eq!(out.exit, Exit::Refused, "{out:?}");
    assert!(out.stdout.contains("401"), "{}", out.stdout);
    // The record, which the coordinator's ACL guards, is made: the agents read it within a
    // second, and the output says so.
    let v: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!((&v["cluster_paused"], &v["record"]), (&json!(true), &json!("/referee/c/pause")), "{v}");
    assert!(db1.seen.try_recv().is_err() && db2.seen.try_recv().is_err());

    // An unreachable coordinator is exit 4.
    let out = cli(&["--coordinator", "127.0.0.1:1", "--cluster", "c", "--timeout-ms", "500", "status"]).await;
    assert_eq!(out.exit, Exit::Unreachable, "{out:?}");
    drop(holder);
    zk_server.stop().await
}

/// `failover --at` checks the target now, records the switchover for its agent and sends
/// nothing; `status` shows it; a second is refused while it stands, and so is an unfit target
/// or a bad time; `--cancel` withdraws it. An agent takes a record once, and only at the
/// version it read.
#[tokio::test]
async fn referee_admin_schedules_shows_and_cancels_a_switchover() -> Result<()> {
    let zk_server = TestServer::start().await?;
    let dir = ScratchDir::new("admin-cli-schedule")?;
    let token_file = dir.0.join("token");
    std::fs::write(&token_file, SECRET)?;
    let mut db1 = fake_member(&zk_server, "db1", Role::Active, Health::Healthy, |s, _, _| ok_everything(s)).await?;
    let mut db2 = fake_member(&zk_server, "db2", Role::Standby, Health::Healthy, |s, _, _| ok_everything(s)).await?;
    let _db3 = fake_member(&zk_server, "db3", Role::Unhealthy, Health::Unhealthy("disk full".into()), |s, _, _| {
        ok_everything(s)
    })
    .await?;
    let (holder, _) = hold_lock(&zk_server, "db1").await?;
    let connect = zk_server.connect_string();
    let admin = AdminCli::new(&connect, &token_file);
    let run = |extra: &'static [&'static str]| admin.run(extra);

    let asked = now_ms();
    let out = run(&["failover", "--to", "db2", "--at", "+1h"]).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");
    assert!(
        out.stdout.contains("switchover to db2 scheduled for") && out.stdout.contains("--cancel"),
        "{}",
        out.stdout
    );
    assert!(db1.seen.try_recv().is_err() && db2.seen.try_recv().is_err(), "scheduling asks no agent to act");
    let (scheduled, version) = holder.read_switchover().await?.context("the record is in the coordinator")?;
    assert_eq!(scheduled.to, "db2");
    assert!((scheduled.at_ms - asked - 3_600_000).abs() < 10_000, "at {} for a request at {asked}", scheduled.at_ms);

    let out = run(&["status", "--json"]).await;
    let v: Value = serde_json::from_str(&out.stdout)?;
    assert_eq!(v["switchover"]["to"], json!("db2"), "{v}");
    let out = run(&["status"]).await;
    assert!(out.stdout.contains("switchover to db2 scheduled for"), "{}", out.stdout);

    // One at a time; an unfit target or a bad time is refused before anything is recorded.
    let out = run(&["failover", "--to", "db2", "--at", "+2h"]).await;
    assert_eq!(out.exit, Exit::Refused, "{out:?}");
    assert!(out.stderr.contains("withdraw it first"), "{}", out.stderr);
    let out = run(&["failover", "--to", "db3", "--at", "+2h"]).await;
    assert_eq!(out.exit, Exit::Refused, "{out:?}");
    assert!(out.stderr.contains("not healthy (unhealthy: disk full)"), "{}", out.stderr);
    for bad in [&["failover", "--to", "db2", "--at", "tomorrow"][..], &["failover", "--to", "db2", "--at", "+9d"][..]] {
        let out = run(bad).await;
        assert_eq!(out.exit, Exit::Usage, "{bad:?}: {out:?}");
        assert!(out.stderr.contains("--at"), "{}", out.stderr);
    }
    assert_eq!(holder.read_switchover().await?.map(|(r, v)| (r.at_ms, v)), Some((scheduled.at_ms, version)));

    // An agent takes the record only at the version it read, and only once.
    assert!(!holder.take_switchover(version + 1).await?, "a record changed since the read is left alone");
    assert!(holder.take_switchover(version).await?);
    assert!(!holder.take_switchover(version).await?, "taken once");

    // --cancel withdraws one; with none it says so.
    let out = run(&["failover", "--to", "db2", "--at", "+30m"]).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");
    let out = run(&["failover", "--cancel"]).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");
    assert!(out.stdout.contains("cancelled: switchover to db2"), "{}", out.stdout);
    assert!(holder.read_switchover().await?.is_none());
    let out = run(&["failover", "--cancel"]).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");
    assert!(out.stdout.contains("nothing to cancel"), "{}", out.stdout);

    // A record nobody can read is shown, refuses another, and --cancel removes it.
    let raw = zk::Client::connect(&connect).await?;
    raw.create("/referee/c/switchover", b"garbage", &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all()))
        .await?;
    let out = run(&["status"]).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");
    assert!(out.stdout.contains("unreadable scheduled switchover"), "{}", out.stdout);
    let out = run(&["failover", "--to", "db2", "--at", "+30m"]).await;
    assert_eq!(out.exit, Exit::Refused, "{out:?}");
    let out = run(&["failover", "--cancel"]).await;
    assert!(out.exit == Exit::Ok && out.stdout.contains("an unreadable scheduled switchover"), "{out:?}");
    assert_eq!(raw.check_stat("/referee/c/switchover").await?, None);
    drop(holder);
    zk_server.stop().await
}

#[tokio::test]
async fn referee_admin_reads_an_agent_config_with_an_admin_section() -> Result<()> {
    let zk_server = TestServer::start().await?;
    let dir = ScratchDir::new("admin-cli-config")?;
    let token = dir.0.join("token");
    std::fs::write(&token, SECRET)?;
    let mut db1 = fake_member(&zk_server, "db1", Role::Standby, Health::Healthy, |s, _, _| ok_everything(s)).await?;
    let config = dir.0.join("agent.yaml");
    std::fs::write(
        &config,
        format!(
            "cluster: c\nnode_id: db1\npeers: [{{node_id: db2, host: 127.0.0.2, port: 9002}}]\ncoordinator: {{connect: \"{}\"}}\nmaster:\n  host: 127.0.0.1\n  port: 9001\n  \
             adapter: {{kind: http, url: \"http://127.0.0.1:9001\"}}\nfencing:\n  overall_timeout_ms: 3000\n  levels:\n    \
             - methods:\n        - {{kind: graceful, timeout_ms: 500}}\nprobes: {{listen: \"127.0.0.1:8301\"}}\n\
             admin:\n  listen: 127.0.0.1:8400\n  token_file: {}\n",
            zk_server.connect_string(),
            token.display()
        ),
    )?;
    let out = cli(&["--config", config.to_str().unwrap(), "pause", "--node", "db1"]).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");
    assert_eq!(db1.seen.recv().await, Some(Seen::Pause));
    zk_server.stop().await
}

#[tokio::test]
async fn referee_admin_format_secures_the_cluster_tree() -> Result<()> {
    let zk_server = TestServer::start().await?;
    let connect = zk_server.connect_string();
    let base = ["--coordinator", connect.as_str(), "--cluster", "fmt"];
    let with = |extra: &[&'static str]| base.iter().copied().chain(extra.iter().copied()).collect::<Vec<_>>();

    let out = cli(&with(&["format"])).await;
    assert_eq!(out.exit, Exit::Usage, "a digest is required: {out:?}");
    let out = cli(&with(&["--digest", "ops:pw", "format"])).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");
    assert!(out.stdout.contains("/referee/fmt/members: created"), "{}", out.stdout);

    let anonymous = zk::Client::connect(&connect).await?;
    let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    assert_eq!(anonymous.create("/referee/fmt/lock", b"x", &open).await.unwrap_err(), zk::Error::NoAuth);
    assert_eq!(anonymous.create("/referee/fmt/members/x", b"x", &open).await.unwrap_err(), zk::Error::NoAuth);
    assert!(anonymous.list_children("/referee/fmt/members").await?.is_empty(), "everyone may read");
    let wrong = zk::Client::connector().with_auth("digest", b"ops:other").connect(&connect).await?;
    assert_eq!(wrong.create("/referee/fmt/lock", b"x", &open).await.unwrap_err(), zk::Error::NoAuth);
    let authed = zk::Client::connector().with_auth("digest", b"ops:pw").connect(&connect).await?;
    authed.create("/referee/fmt/lock", b"x", &open).await?;
    authed.delete("/referee/fmt/lock", None).await?;
    // Other clusters can still be formatted under /referee.
    let out = cli(&["--coordinator", connect.as_str(), "--cluster", "other", "--digest", "ops2:pw", "format"]).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");

    // An agent with the credential works in the secured tree; one without is refused.
    let agent = Coordination::connect(coordination(&zk_server, "fmt", "a1", Some("ops:pw"))).await?;
    let record = LockRecord {
        node_id: "a1".into(),
        target: FenceTarget::new("a1", "127.0.0.1", 1, FencingToken(0)),
        peer_url: None,
    };
    assert!(matches!(agent.try_acquire(&record).await?, Acquired::Won { .. }));
    let intruder = Coordination::connect(coordination(&zk_server, "fmt", "a2", None)).await?;
    let member = Member {
        node_id: "a2".into(),
        target: FenceTarget::new("a2", "127.0.0.1", 1, FencingToken(0)),
        peer_url: None,
        probe_addr: None,
        candidacy: None,
    };
    assert!(intruder.register_member(&member).await.is_err(), "an agent without the credential may not register");

    // Formatting again is refused unless forced.
    let out = cli(&with(&["--digest", "ops:pw", "format"])).await;
    assert_eq!(out.exit, Exit::Refused, "{out:?}");
    assert!(out.stderr.contains("--force"), "{}", out.stderr);
    let out = cli(&with(&["--digest", "ops:pw", "format", "--force"])).await;
    assert_eq!(out.exit, Exit::Ok, "{out:?}");
    let out = cli(&with(&["--digest", "intruder:pw", "format", "--force"])).await;
    assert_eq!(out.exit, Exit::Refused, "another credential cannot take the tree over: {out:?}");
    drop((agent, intruder));
    zk_server.stop().await
}
