//! The master adapters against real masters: a local HTTP master with fault knobs, and real
//! programs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use referee_failover_agent::adapter::{
    build_adapter, AdapterConfig, AdapterContext, AdapterError, CommandAdapter, CommandAdapterConfig, HealthProblem,
    HttpAdapter, HttpAdapterConfig, MasterAdapter, NoAnswer,
};
use referee_failover_agent::model::MasterStatus;
use referee_fencing::{FencingToken, HaState, HaStatus, TokenRequest};
use tokio::time::Instant;

/// How the fake master answers `GET /ha/health`.
#[derive(Debug, Clone)]
enum HealthMode {
    Healthy,
    /// 503 with `{"reason": ...}`.
    UnhealthyJson(&'static str),
    /// 503 with a plain-text reason.
    UnhealthyText(&'static str),
    /// Some other status.
    Status(u16),
    /// Never answers.
    Hang,
}

/// How the fake master answers promotions and demotions that it accepts.
#[derive(Debug, Clone, Copy)]
enum AnswerMode {
    /// With its new status.
    Status,
    /// 200 with an empty body.
    Empty,
    /// 200 claiming it stayed standby.
    StayStandby,
}

struct Fake {
    health: HealthMode,
    answer: AnswerMode,
    status: HaStatus,
    garbage_state: bool,
}

type Shared = Arc<Mutex<Fake>>;

async fn health(State(fake): State<Shared>) -> Response {
    let mode = fake.lock().unwrap().health.clone();
    match mode {
        HealthMode::Healthy => "ok".into_response(),
        HealthMode::UnhealthyJson(r) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({ "reason": r }))).into_response()
        }
        HealthMode::UnhealthyText(r) => (StatusCode::SERVICE_UNAVAILABLE, r).into_response(),
        HealthMode::Status(code) => (StatusCode::from_u16(code).unwrap(), "boom").into_response(),
        HealthMode::Hang => std::future::pending().await,
    }
}

async fn state(State(fake): State<Shared>) -> Response {
    let fake = fake.lock().unwrap();
    if fake.garbage_state {
        return "<html>not a status</html>".into_response();
    }
    Json(fake.status).into_response()
}

async fn transition(fake: Shared, token: FencingToken, to: HaState) -> Response {
    let mut fake = fake.lock().unwrap();
    if to == HaState::Active && token < fake.status.token {
        return (StatusCode::CONFLICT, Json(serde_json::json!({"reason": "token is stale"}))).into_response();
    }
    fake.status.token = fake.status.token.max(token);
    fake.status.state = match fake.answer {
        AnswerMode::StayStandby => HaState::Standby,
        AnswerMode::Status | AnswerMode::Empty => to,
    };
    match fake.answer {
        AnswerMode::Status | AnswerMode::StayStandby => Json(fake.status).into_response(),
        AnswerMode::Empty => StatusCode::OK.into_response(),
    }
}

async fn active(State(fake): State<Shared>, Json(r): Json<TokenRequest>) -> Response {
    transition(fake, r.token, HaState::Active).await
}

async fn standby(State(fake): State<Shared>, Json(r): Json<TokenRequest>) -> Response {
    transition(fake, r.token, HaState::Standby).await
}

async fn start_fake() -> (Shared, String) {
    let fake = Arc::new(Mutex::new(Fake {
        health: HealthMode::Healthy,
        answer: AnswerMode::Status,
        status: HaStatus { state: HaState::Standby, token: FencingToken(0) },
        garbage_state: false,
    }));
    let app = Router::new()
        .route("/ha/health", get(health))
        .route("/ha/state", get(state))
        .route("/ha/active", post(active))
        .route("/ha/standby", post(standby))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (fake, format!("http://{addr}"))
}

fn http(url: &str, timeout_ms: u64) -> HttpAdapter {
    HttpAdapter::new(&HttpAdapterConfig { url: url.into(), timeout_ms, connect_timeout_ms: timeout_ms.min(1000) })
        .unwrap()
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn status(state: HaState, token: u64) -> MasterStatus {
    MasterStatus { state, token: FencingToken(token), position: None }
}

#[tokio::test]
async fn http_health_tells_healthy_from_unhealthy_with_the_masters_reason() {
    let (fake, url) = start_fake().await;
    let adapter = http(&url, 5000);
    assert_eq!(adapter.health(soon()).await, Ok(()));

    fake.lock().unwrap().health = HealthMode::UnhealthyJson("disk full");
    assert_eq!(adapter.health(soon()).await, Err(HealthProblem::unhealthy("disk full")));
    fake.lock().unwrap().health = HealthMode::UnhealthyText("overloaded\n");
    assert_eq!(adapter.health(soon()).await, Err(HealthProblem::unhealthy("overloaded")));
    // Not the protocol's answer: unhealthy, saying what came back.
    fake.lock().unwrap().health = HealthMode::Status(500);
    match adapter.health(soon()).await {
        Err(HealthProblem::Unhealthy { reason }) => {
            assert!(reason.contains("500") && reason.contains("boom"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn http_refusal_is_reported_at_once_not_at_the_deadline() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let adapter = http(&format!("http://{addr}"), 10_000);
    let start = Instant::now();
    match adapter.health(soon()).await {
        Err(HealthProblem::NotResponding { how: NoAnswer::Refused, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(1), "took {:?}", start.elapsed());
    match adapter.state(soon()).await {
        Err(AdapterError::NotResponding { how: NoAnswer::Refused, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn http_calls_end_by_the_callers_deadline_or_the_configured_ceiling() {
    let (fake, url) = start_fake().await;
    fake.lock().unwrap().health = HealthMode::Hang;
    // The caller's deadline is the shorter.
    let adapter = http(&url, 5000);
    let start = Instant::now();
    match adapter.health(start + Duration::from_millis(300)).await {
        Err(HealthProblem::NotResponding { how: NoAnswer::TimedOut, .. }) => {}
        other => panic!("{other:?}"),
    }
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(290) && took < Duration::from_secs(3), "took {took:?}");
    // The adapter's timeout_ms is the shorter.
    let adapter = http(&url, 200);
    let start = Instant::now();
    match adapter.health(soon()).await {
        Err(HealthProblem::NotResponding { how: NoAnswer::TimedOut, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
}

#[tokio::test]
async fn http_state_is_parsed_and_garbage_is_a_bad_answer() {
    let (fake, url) = start_fake().await;
    let adapter = http(&url, 5000);
    assert_eq!(adapter.state(soon()).await, Ok(status(HaState::Standby, 0)));
    fake.lock().unwrap().garbage_state = true;
    match adapter.state(soon()).await {
        Err(e @ AdapterError::BadAnswer { .. }) => {
            assert!(e.to_string().contains("not a status"), "{e}");
            assert!(e.outcome_unknown());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn http_promotion_succeeds_only_when_active_with_the_token() {
    let (fake, url) = start_fake().await;
    let adapter = http(&url, 5000);
    assert_eq!(adapter.promote(FencingToken(5), soon()).await, Ok(status(HaState::Active, 5)));
    // A stale token: the master's 409 and reason come back as a rejection.
    match adapter.promote(FencingToken(4), soon()).await {
        Err(e @ AdapterError::Rejected { .. }) => {
            assert!(e.to_string().contains("409") && e.to_string().contains("token is stale"), "{e}");
            assert!(!e.outcome_unknown());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(adapter.demote(FencingToken(6), soon()).await, Ok(status(HaState::Standby, 6)));

    // 200 without a body: confirmed by asking for the state.
    fake.lock().unwrap().answer = AnswerMode::Empty;
    assert_eq!(adapter.promote(FencingToken(7), soon()).await, Ok(status(HaState::Active, 7)));
    assert_eq!(adapter.demote(FencingToken(7), soon()).await, Ok(status(HaState::Standby, 7)));

    // 200, but the master says it is not active: not a success.
    fake.lock().unwrap().answer = AnswerMode::StayStandby;
    assert_eq!(
        adapter.promote(FencingToken(8), soon()).await,
        Err(AdapterError::Unconfirmed { reported: status(HaState::Standby, 8), wanted: "active with token 8".into() })
    );
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

fn sh(script: &str) -> Vec<String> {
    argv(&["/bin/sh", "-c", script])
}

fn command_config() -> CommandAdapterConfig {
    CommandAdapterConfig {
        health: argv(&["/bin/true"]),
        state: sh(r#"printf '{"state":"standby","token":3}'"#),
        promote: sh(r#"[ "$REFEREE_TOKEN" = "$FENCE_TOKEN" ] && [ "$REFEREE_NODE_ID" = n1 ] || exit 3
               printf '{"state":"active","token":%s}' "$FENCE_TOKEN""#),
        demote: sh(r#"printf '{"state":"standby","token":%s}' "$FENCE_TOKEN""#),
        timeout_ms: 10_000,
    }
}

#[tokio::test]
async fn command_health_uses_exit_codes_and_stderr() {
    let mut config = command_config();
    assert_eq!(CommandAdapter::new(&config, "n1").unwrap().health(soon()).await, Ok(()));
    config.health = sh("echo checking; echo 'replica lagging by 40 s' >&2; exit 1");
    match CommandAdapter::new(&config, "n1").unwrap().health(soon()).await {
        Err(HealthProblem::Unhealthy { reason }) => {
            assert!(reason.contains("code 1") && reason.contains("replica lagging by 40 s"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    config.health = argv(&["/nonexistent/health-check"]);
    match CommandAdapter::new(&config, "n1").unwrap().health(soon()).await {
        Err(HealthProblem::CheckFailed { reason }) => assert!(reason.contains("/nonexistent/health-check"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

/// Whether `pid` is gone (or a zombie: dead, waiting to be reaped).
fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn command_timeout_kills_the_whole_process_group() {
    let dir = std::env::temp_dir().join(format!("referee-adapter-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pid_file = dir.join("bg.pid");
    let mut config = command_config();
    config.health = sh(&format!("sleep 30 & echo $! > {}; wait", pid_file.display()));
    let adapter = CommandAdapter::new(&config, "n1").unwrap();
    let start = Instant::now();
    match adapter.health(start + Duration::from_millis(500)).await {
        Err(HealthProblem::NotResponding { how: NoAnswer::TimedOut, .. }) => {}
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    // The kill is synchronous; the orphan may take a moment to be reaped by init.
    let gone_by = Instant::now() + Duration::from_secs(5);
    while !is_dead(pid) && Instant::now() < gone_by {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(is_dead(pid), "the background child {pid} survived the timeout");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn command_state_promote_and_demote() {
    let mut config = command_config();
    let adapter = CommandAdapter::new(&config, "n1").unwrap();
    assert_eq!(adapter.state(soon()).await, Ok(status(HaState::Standby, 3)));
    // The token and node id reach the program through its environment.
    assert_eq!(adapter.promote(FencingToken(7), soon()).await, Ok(status(HaState::Active, 7)));
    assert_eq!(adapter.demote(FencingToken(8), soon()).await, Ok(status(HaState::Standby, 8)));
    // Wrong node id: the promote program refuses (exit 3).
    let other_node = CommandAdapter::new(&config, "n2").unwrap();
    match other_node.promote(FencingToken(7), soon()).await {
        Err(e @ AdapterError::Rejected { .. }) => assert!(e.to_string().contains("code 3"), "{e}"),
        other => panic!("{other:?}"),
    }
    // Exit 0 without output: the state program decides, and here says standby.
    config.promote = argv(&["/bin/true"]);
    let adapter = CommandAdapter::new(&config, "n1").unwrap();
    assert_eq!(
        adapter.promote(FencingToken(7), soon()).await,
        Err(AdapterError::Unconfirmed { reported: status(HaState::Standby, 3), wanted: "active with token 7".into() })
    );
    // Non-zero exit: rejected with stderr.
    config.demote = sh("echo 'cannot demote: replication broken' >&2; exit 2");
    match CommandAdapter::new(&config, "n1").unwrap().demote(FencingToken(9), soon()).await {
        Err(e @ AdapterError::Rejected { .. }) => assert!(e.to_string().contains("replication broken"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn command_arguments_never_go_through_a_shell() {
    let mut config = command_config();
    config.state = argv(&["/bin/echo", "$(echo pwned); exit 7"]);
    match CommandAdapter::new(&config, "n1").unwrap().state(soon()).await {
        // Echoed verbatim: no shell expanded it; and it is not a status.
        Err(AdapterError::BadAnswer { reason }) => assert!(reason.contains("$(echo pwned); exit 7"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn configuration_shapes_parse_validate_and_build() {
    let http: AdapterConfig = serde_yaml::from_str("kind: http\nurl: http://127.0.0.1:8080\n").unwrap();
    assert_eq!(
        http,
        AdapterConfig::Http(HttpAdapterConfig {
            url: "http://127.0.0.1:8080".into(),
            timeout_ms: 5000,
            connect_timeout_ms: 1000
        })
    );
    let command: AdapterConfig = serde_yaml::from_str(
        "kind: command\nhealth: [/bin/true]\nstate: [/bin/cat, /tmp/s]\npromote: [/bin/p]\ndemote: [/bin/d]\ntimeout_ms: 2000\n",
    )
    .unwrap();
    assert!(
        matches!(&command, AdapterConfig::Command(c) if c.state == argv(&["/bin/cat", "/tmp/s"]) && c.timeout_ms == 2000)
    );
    assert!(build_adapter(&http, &AdapterContext::node("n1")).is_ok());
    assert!(build_adapter(&command, &AdapterContext::node("n1")).is_ok());

    // Unknown fields and kinds are refused, not ignored.
    assert!(serde_yaml::from_str::<AdapterConfig>("kind: http\nurl: http://h:1\ntimeout: 5\n").is_err());
    assert!(serde_yaml::from_str::<AdapterConfig>("kind: grpc\nurl: http://h:1\n").is_err());
    // A missing program list is a parse error naming it.
    let err = serde_yaml::from_str::<AdapterConfig>("kind: command\nhealth: [/bin/true]\n").unwrap_err();
    assert!(err.to_string().contains("state"), "{err}");

    let bad: AdapterConfig =
        serde_yaml::from_str("kind: command\nhealth: []\nstate: [a]\npromote: [b]\ndemote: [c]\n").unwrap();
    assert_eq!(
        bad.validate().unwrap_err().to_string(),
        "adapter.health: is empty; give the program and its arguments as a list"
    );
    assert!(build_adapter(&bad, &AdapterContext::node("n1")).is_err());
    let bad: AdapterConfig = serde_yaml::from_str("kind: http\nurl: localhost:8080\n").unwrap();
    assert_eq!(bad.validate().unwrap_err().field, "url");
}
