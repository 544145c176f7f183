//! The demo master against its protocol: tokens, persistence, writes, the lease, health.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use referee_examples::ha_master::{self, HaMasterConfig, LeaseConfig, LeaseGrant, Refusal, WriteAccepted};
use referee_fencing::{FencingToken, HaState, HaStatus};
use referee_testkit::{within_for, ScratchDir};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A master running in-process.
struct Running {
    addr: SocketAddr,
    base: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
    http: reqwest::Client,
}

impl Running {
    async fn start(config: HaMasterConfig) -> Running {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(ha_master::run(config, listener, async move {
            let _ = stopped.await;
        }));
        Running { addr, base: format!("http://{addr}"), stop: Some(stop), task, http: reqwest::Client::new() }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
        let response = self.http.post(format!("{}{path}", self.base)).json(&body).send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    async fn get(&self, path: &str) -> (StatusCode, serde_json::Value) {
        let response = self.http.get(format!("{}{path}", self.base)).send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
    }

    async fn promote(&self, token: u64) -> (StatusCode, serde_json::Value) {
        self.post("/ha/active", json!({ "token": token })).await
    }

    async fn demote(&self, token: u64) -> (StatusCode, serde_json::Value) {
        self.post("/ha/standby", json!({ "token": token })).await
    }

    async fn state(&self) -> HaStatus {
        let (code, body) = self.get("/ha/state").await;
        assert_eq!(code, StatusCode::OK);
        // Without a journal there is no replication position to report.
        assert!(body.get("position").is_none(), "{body}");
        serde_json::from_value(body).unwrap()
    }

    async fn write(&self, key: &str, value: u64) -> (StatusCode, serde_json::Value) {
        self.post("/write", json!({ "key": key, "value": value })).await
    }
}

fn status(state: HaState, token: u64) -> serde_json::Value {
    serde_json::to_value(HaStatus { state, token: FencingToken(token) }).unwrap()
}

fn reason(body: &serde_json::Value) -> String {
    serde_json::from_value::<Refusal>(body.clone()).unwrap().reason
}

#[tokio::test]
async fn lower_tokens_are_refused_and_equal_ones_are_retries() {
    let dir = ScratchDir::new("ha-master-tokens").unwrap();
    let master = Running::start(HaMasterConfig::new(dir.path("state.json"))).await;
    assert_eq!(master.state().await, HaStatus { state: HaState::Standby, token: FencingToken(0) });

    assert_eq!(master.promote(5).await, (StatusCode::OK, status(HaState::Active, 5)));
    // The same token again: a retry, answered the same way.
    assert_eq!(master.promote(5).await, (StatusCode::OK, status(HaState::Active, 5)));
    let (code, body) = master.promote(4).await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert!(reason(&body).contains("lower than the highest token seen (5)"), "{body}");
    assert_eq!(master.state().await, HaStatus { state: HaState::Active, token: FencingToken(5) });

    // A step-down carrying a newer token records it: the old holder can no longer promote.
    assert_eq!(master.demote(7).await, (StatusCode::OK, status(HaState::Standby, 7)));
    assert_eq!(master.promote(5).await.0, StatusCode::CONFLICT);
    // A step-down with a lower token still steps down, and records nothing.
    assert_eq!(master.promote(7).await, (StatusCode::OK, status(HaState::Active, 7)));
    assert_eq!(master.demote(3).await, (StatusCode::OK, status(HaState::Standby, 7)));
    // The holder of the recorded token may promote again (standby → active, same token).
    assert_eq!(master.promote(7).await, (StatusCode::OK, status(HaState::Active, 7)));
    master.stop().await;
}

/// A token above the highest usable one is no genuine token: recorded, it would refuse every
/// later promotion of this master and, copied on by a fence, of the others.
#[tokio::test]
async fn a_token_above_the_highest_usable_one_is_refused_and_never_recorded() {
    let dir = ScratchDir::new("ha-master-token-bound").unwrap();
    let master = Running::start(HaMasterConfig::new(dir.path("state.json"))).await;
    assert_eq!(master.promote(5).await, (StatusCode::OK, status(HaState::Active, 5)));
    let above = FencingToken::MAX.0 + 1;
    let (code, body) = master.promote(above).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(reason(&body).contains("above the highest usable token"), "{body}");
    assert_eq!(master.state().await, HaStatus { state: HaState::Active, token: FencingToken(5) });
    // A step-down with it still steps down, and records nothing.
    let (code, body) = master.demote(u64::MAX).await;
    assert_eq!(code, StatusCode::BAD_REQUEST);
    assert!(reason(&body).contains("stepped down") && reason(&body).contains("not recorded"), "{body}");
    assert_eq!(master.state().await, HaStatus { state: HaState::Standby, token: FencingToken(5) });
    // The highest usable token itself is a token like any other.
    assert_eq!(
        master.promote(FencingToken::MAX.0).await,
        (StatusCode::OK, status(HaState::Active, FencingToken::MAX.0))
    );
    master.stop().await;
}

#[tokio::test]
async fn the_highest_token_survives_a_restart() {
    let dir = ScratchDir::new("ha-master-restart").unwrap();
    let file = dir.path("state.json");
    let master = Running::start(HaMasterConfig::new(&file)).await;
    assert_eq!(master.promote(9).await.0, StatusCode::OK);
    master.stop().await;
    assert_eq!(std::fs::read_to_string(&file).unwrap(), r#"{"token":9}"#);

    let master = Running::start(HaMasterConfig::new(&file)).await;
    // The role is not persisted (a restarted master waits to be promoted), the token is.
    assert_eq!(master.state().await, HaStatus { state: HaState::Standby, token: FencingToken(9) });
    assert_eq!(master.promote(8).await.0, StatusCode::CONFLICT);
    assert_eq!(master.promote(9).await.0, StatusCode::OK);
    master.stop().await;

    // A corrupt state file stops the master from starting rather than forgetting the token.
    std::fs::write(&file, "{not json").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = ha_master::run(HaMasterConfig::new(&file), listener, std::future::pending()).await.unwrap_err();
    assert!(err.to_string().contains("corrupt"), "{err:#}");
}

#[tokio::test]
async fn initializing_refuses_promotion_until_it_ends_or_a_demotion_ends_it() {
    let dir = ScratchDir::new("ha-master-init").unwrap();
    let config = HaMasterConfig { init_ms: 60_000, ..HaMasterConfig::new(dir.path("state.json")) };
    let master = Running::start(config).await;
    assert_eq!(master.state().await.state, HaState::Initializing);
    let (code, body) = master.promote(3).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reason(&body).contains("initializing"), "{body}");
    // Health is about the process, not the role.
    assert_eq!(master.get("/ha/health").await.0, StatusCode::OK);
    assert_eq!(master.demote(3).await, (StatusCode::OK, status(HaState::Standby, 3)));
    assert_eq!(master.promote(3).await.0, StatusCode::OK);
    master.stop().await;
}

#[tokio::test]
async fn writes_are_taken_only_while_active() {
    let dir = ScratchDir::new("ha-master-writes").unwrap();
    let master = Running::start(HaMasterConfig::new(dir.path("state.json"))).await;
    let (code, body) = master.write("x", 1).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(reason(&body), "not active: standby");

    master.promote(2).await;
    let (code, body) = master.write("x", 1).await;
    assert_eq!(code, StatusCode::OK);
    let accepted: WriteAccepted = serde_json::from_value(body).unwrap();
    assert_eq!(accepted, WriteAccepted { key: "x".into(), seq: 1, token: FencingToken(2) });
    assert_eq!(master.write("x", 2).await.0, StatusCode::OK);
    assert_eq!(master.get("/read?key=x").await, (StatusCode::OK, json!({"key": "x", "value": 2})));
    assert_eq!(master.get("/read?key=y").await.0, StatusCode::NOT_FOUND);

    master.demote(2).await;
    assert_eq!(master.write("x", 3).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(master.get("/read?key=x").await, (StatusCode::OK, json!({"key": "x", "value": 2})));
    master.stop().await;
}

/// A step-down is never refused for its body: whatever a hand-written fence script sends (no
/// content type, not JSON, no token, a token that is no whole number in range, nothing), the
/// master steps down first; a token it can read is then recorded as usual, and a body it cannot
/// read is answered 400 naming what was wrong, with nothing recorded.
#[tokio::test]
async fn a_standby_request_with_an_unreadable_body_still_steps_down() {
    let dir = ScratchDir::new("ha-master-unreadable-standby").unwrap();
    let master = Running::start(HaMasterConfig::new(dir.path("state.json"))).await;
    let url = format!("{}/ha/standby", master.base);
    let send = |content_type: Option<&'static str>, body: &'static str| {
        let mut request = master.http.post(&url).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status(), response.text().await.unwrap())
        }
    };

    // The protocol's body without its header: a step-down like any other, the token recorded.
    assert_eq!(master.promote(5).await.0, StatusCode::OK);
    let (code, text) = send(None, r#"{"token": 9}"#).await;
    assert_eq!(code, StatusCode::OK, "no content type: {text}");
    assert_eq!(master.state().await, HaStatus { state: HaState::Standby, token: FencingToken(9) });

    let cases = [
        ("no content type, no JSON", None, "garbage", "not JSON"),
        ("a body that is no JSON", Some("application/json"), "garbage", "not JSON"),
        ("another content type", Some("text/plain"), "token=12", "not JSON"),
        ("no token", Some("application/json"), "{}", "missing field `token`"),
        ("a negative token", Some("application/json"), r#"{"token": -1}"#, "-1"),
        ("a token that is no whole number", Some("application/json"), r#"{"token": 1e30}"#, "1e30"),
        ("a token beyond 64 bits", Some("application/json"), r#"{"token": 18446744073709551616}"#, "token"),
        ("no body at all", None, "", "empty"),
    ];
    for (what, content_type, body, names) in cases {
        assert_eq!(master.promote(9).await.0, StatusCode::OK, "{what}: promoted first");
        let (code, text) = send(content_type, body).await;
        assert_eq!(
            master.state().await,
            HaStatus { state: HaState::Standby, token: FencingToken(9) },
            "{what}: stepped down, nothing recorded (answered {code} {text})"
        );
        assert_eq!(code, StatusCode::BAD_REQUEST, "{what}: {text}");
        let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{what}: {text}"));
        let why = reason(&body);
        assert!(why.contains("stepped down") && why.contains("nothing recorded"), "{what}: {why}");
        assert!(why.contains(names), "{what}: the answer names what was wrong ({names}): {why}");
    }
    master.stop().await;
}

/// A step-down is never refused: a master whose state file cannot take the new token (a
/// failed disk) steps down all the same, keeps the token in memory, and says it was not saved.
#[tokio::test]
async fn a_step_down_whose_token_cannot_be_saved_still_steps_down() {
    let dir = ScratchDir::new("ha-master-lost-disk").unwrap();
    let state_dir = dir.path("state");
    std::fs::create_dir(&state_dir).unwrap();
    let master = Running::start(HaMasterConfig::new(state_dir.join("state.json"))).await;
    assert_eq!(master.promote(10).await.0, StatusCode::OK);
    std::fs::remove_dir_all(&state_dir).unwrap();
    let (code, body) = master.demote(20).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(reason(&body).contains("stepped down") && reason(&body).contains("not saved"), "{body}");
    assert_eq!(master.state().await, HaStatus { state: HaState::Standby, token: FencingToken(20) });
    assert_eq!(master.write("x", 1).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(master.promote(10).await.0, StatusCode::CONFLICT, "the old token is refused");
    master.stop().await;
}

#[tokio::test]
async fn the_health_switch_turns_health_off_and_on() {
    let dir = ScratchDir::new("ha-master-health").unwrap();
    // Off by default: a master in service cannot be switched by anyone who can reach it.
    let plain = Running::start(HaMasterConfig::new(dir.path("plain.json"))).await;
    let (code, body) = plain.post("/test/unhealthy", json!({"reason": "disk full"})).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("test_routes: true"), "{body}");
    assert_eq!(plain.get("/ha/health").await.0, StatusCode::OK);
    plain.stop().await;
    let config = HaMasterConfig { test_routes: true, ..HaMasterConfig::new(dir.path("state.json")) };
    let master = Running::start(config).await;
    assert_eq!(master.get("/ha/health").await.0, StatusCode::OK);
    assert_eq!(master.post("/test/unhealthy", json!({"reason": "disk full"})).await.0, StatusCode::OK);
    assert_eq!(master.get("/ha/health").await, (StatusCode::SERVICE_UNAVAILABLE, json!({"reason": "disk full"})));
    master.post("/test/healthy", json!(null)).await;
    assert_eq!(master.get("/ha/health").await.0, StatusCode::OK);
    master.stop().await;
}

/// A client holding half a request line cannot keep the master from stopping: its listener
/// gives open requests a bounded drain.
#[tokio::test]
async fn a_half_sent_request_does_not_hold_the_masters_shutdown() {
    let dir = ScratchDir::new("ha-master-half-sent").unwrap();
    let master = Running::start(HaMasterConfig::new(dir.path("state.json"))).await;
    let mut idle = tokio::net::TcpStream::connect(master.addr).await.unwrap();
    idle.write_all(b"GET /ha/state HTTP/1.1\r\n").await.unwrap();
    // Connections are accepted in order: once a later one is answered, the master holds the
    // half-sent one.
    master.state().await;
    let limit = referee_http_serve::DRAIN_TIMEOUT + Duration::from_secs(5);
    within_for(limit, "the master to stop", master.stop()).await.unwrap();
}

/// A fake agent lease endpoint whose answer the test controls.
struct LeaseServer {
    valid_for_ms: AtomicU64,
    token: AtomicU64,
    /// Requests are left unanswered while set.
    hang: AtomicBool,
    /// When the last answered request arrived.
    last_answered: Mutex<Option<Instant>>,
    /// One message per request, with whether it is being answered.
    polls: mpsc::UnboundedSender<bool>,
}

async fn lease(State(server): State<Arc<LeaseServer>>) -> Json<LeaseGrant> {
    if server.hang.load(Ordering::SeqCst) {
        let _ = server.polls.send(false);
        std::future::pending::<()>().await;
    }
    *server.last_answered.lock().unwrap() = Some(Instant::now());
    let grant = LeaseGrant {
        token: FencingToken(server.token.load(Ordering::SeqCst)),
        valid_for_ms: server.valid_for_ms.load(Ordering::SeqCst),
    };
    let _ = server.polls.send(true);
    Json(grant)
}

async fn start_lease_server(
    token: u64,
    valid_for_ms: u64,
) -> (Arc<LeaseServer>, mpsc::UnboundedReceiver<bool>, SocketAddr) {
    let (polls, rx) = mpsc::unbounded_channel();
    let server = Arc::new(LeaseServer {
        valid_for_ms: AtomicU64::new(valid_for_ms),
        token: AtomicU64::new(token),
        hang: AtomicBool::new(false),
        last_answered: Mutex::new(None),
        polls,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/lease", get(lease)).with_state(server.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (server, rx, addr)
}

/// Waits until the answer to a poll made after this call has been taken in by the master:
/// polls are sequential, so once the poll after next arrives, the next one's answer is in.
async fn settle(polls: &mut mpsc::UnboundedReceiver<bool>) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while polls.try_recv().is_ok() {}
        polls.recv().await;
        polls.recv().await;
    })
    .await
    .expect("the master keeps polling its lease");
}

#[tokio::test]
async fn no_write_is_accepted_after_the_lease_ends() {
    let dir = ScratchDir::new("ha-master-lease").unwrap();
    let (server, mut polls, addr) = start_lease_server(5, 200).await;
    let config = HaMasterConfig {
        lease: Some(LeaseConfig { url: format!("http://{addr}/lease"), poll_interval_ms: 20, timeout_ms: 5000 }),
        ..HaMasterConfig::new(dir.path("state.json"))
    };
    let master = Running::start(config).await;
    settle(&mut polls).await;
    // A valid lease does not make a standby writable.
    assert_eq!(master.write("k", 1).await.0, StatusCode::SERVICE_UNAVAILABLE);

    master.promote(5).await;
    settle(&mut polls).await;
    assert_eq!(master.write("k", 1).await.0, StatusCode::OK);

    // The agent withdraws the lease (valid_for_ms 0): writes stop at once.
    server.valid_for_ms.store(0, Ordering::SeqCst);
    settle(&mut polls).await;
    let (code, body) = master.write("k", 2).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reason(&body).contains("lease expired"), "{body}");
    // The master stays active: the role is the agent's to change.
    assert_eq!(master.state().await.state, HaState::Active);

    // A lease for another token does not count.
    server.valid_for_ms.store(200, Ordering::SeqCst);
    server.token.store(4, Ordering::SeqCst);
    settle(&mut polls).await;
    let (code, body) = master.write("k", 3).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert!(reason(&body).contains("lease is for token 4"), "{body}");

    // Granted again: writes resume without a new promotion.
    server.token.store(5, Ordering::SeqCst);
    settle(&mut polls).await;
    assert_eq!(master.write("k", 4).await.0, StatusCode::OK);

    // The agent hangs. The master's last lease ends at most 200 ms after the last answered
    // request arrived (the master counts from its own, earlier, send time).
    server.hang.store(true, Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(10), async { while polls.recv().await != Some(false) {} })
        .await
        .expect("a poll reaches the hung agent");
    let lease_end = server.last_answered.lock().unwrap().unwrap() + Duration::from_millis(200);
    let mut refused_at = None;
    while Instant::now() < lease_end + Duration::from_secs(2) {
        let sent = Instant::now();
        match master.write("k", 5).await.0 {
            StatusCode::OK => {
                assert!(sent < lease_end, "a write sent {:?} after the lease end was accepted", sent - lease_end)
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                refused_at = Some(sent);
                break;
            }
            other => panic!("unexpected answer {other}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused_at = refused_at.expect("writes stop once the lease runs out");
    // Liveness, loosely bounded for slow machines; the safety property is the assertion above.
    assert!(refused_at <= lease_end + Duration::from_secs(1), "writes stopped late");
    // ...and stay stopped.
    assert_eq!(master.write("k", 6).await.0, StatusCode::SERVICE_UNAVAILABLE);
    master.stop().await;
}

fn boot_us() -> u64 {
    let ts = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).unwrap();
    ts.tv_sec() as u64 * 1_000_000 + ts.tv_nsec() as u64 / 1000
}

#[tokio::test]
async fn lease_status_reports_the_end_of_the_last_lease_that_granted_time() {
    let dir = ScratchDir::new("ha-master-lease-status").unwrap();
    let (server, mut polls, addr) = start_lease_server(5, 200).await;
    let config = HaMasterConfig {
        lease: Some(LeaseConfig { url: format!("http://{addr}/lease"), poll_interval_ms: 20, timeout_ms: 5000 }),
        ..HaMasterConfig::new(dir.path("state.json"))
    };
    let master = Running::start(config).await;
    settle(&mut polls).await;
    // A lease for a token the master was never promoted with grants it nothing.
    let (code, status) = master.get("/lease/status").await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(status["writable_until_boot_us"], serde_json::Value::Null, "{status}");
    assert_eq!(status["writable"], false, "{status}");

    master.promote(5).await;
    settle(&mut polls).await;
    let before = boot_us();
    let (_, status) = master.get("/lease/status").await;
    assert_eq!((status["role"].as_str(), status["token"].as_u64()), (Some("active"), Some(5)), "{status}");
    assert_eq!(status["writable"], true, "{status}");
    let granted = status["writable_until_boot_us"].as_u64().expect("a granted lease's end");
    // Counted from the poll's send time, so within 200 ms of now.
    assert!(granted > before && granted <= before + 200_000, "{granted} vs now {before}");

    // Withdrawn: no write any more, and the reported end stays that of the last grant with time,
    // never earlier than when the master really stopped.
    server.valid_for_ms.store(0, Ordering::SeqCst);
    settle(&mut polls).await;
    let (_, status) = master.get("/lease/status").await;
    assert_eq!(status["writable"], false, "{status}");
    let last = status["writable_until_boot_us"].as_u64().expect("the last grant's end");
    assert!(last >= granted, "{last} < {granted}");
    assert_eq!(master.write("k", 1).await.0, StatusCode::SERVICE_UNAVAILABLE);

    // Demoted with a higher token: the old lease lets nothing through and is not reported.
    master.demote(6).await;
    let (_, status) = master.get("/lease/status").await;
    assert_eq!(status["writable_until_boot_us"], serde_json::Value::Null, "{status}");
    assert_eq!((status["role"].as_str(), status["token"].as_u64()), (Some("standby"), Some(6)), "{status}");
    master.stop().await;
}

#[test]
fn configuration_parses_with_defaults_and_refuses_unknown_fields() {
    let config: HaMasterConfig =
        serde_yaml::from_str("state_file: /tmp/x.json\nlease:\n  url: http://127.0.0.1:9/lease\n").unwrap();
    assert_eq!(config.node_id, "master");
    assert_eq!(config.init_ms, 0);
    let lease = config.lease.clone().unwrap();
    assert_eq!((lease.poll_interval_ms, lease.timeout_ms), (200, 1000));
    assert!(config.validate().is_ok());
    assert!(serde_yaml::from_str::<HaMasterConfig>("state_file: /x\nlease_url: http://x/").is_err());
    let bad: HaMasterConfig = serde_yaml::from_str("state_file: /x\nlease: {url: 'nope'}").unwrap();
    assert!(bad.validate().unwrap_err().to_string().starts_with("lease.url"));
}
