//! `graceful`, `agent`, `http` and `token` against real local HTTP servers.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::{fencer, never, serve, serve_tls, target, Pki};
use referee_fencing::{
    FenceReport, Fencer, FencingToken, HaState, HaStatus, MethodOutcome, PeerFenceOutcome, PeerFenceRequest,
    PeerFenceResponse, Readiness, TokenFloorRequest, TokenFloorResponse, TokenRequest,
};
use referee_testkit::ScratchDir;

fn only_outcome(report: &FenceReport) -> &MethodOutcome {
    assert_eq!(report.events.len(), 1, "{report:#?}");
    &report.events[0].outcome
}

// ----- graceful -------------------------------------------------------------------------

/// How the test master answers a step-down request.
#[derive(Clone, Copy)]
enum Master {
    /// Steps down, records the token, answers with its new state.
    Confirms,
    /// Steps down and records the token but answers 204; the state must be queried.
    ConfirmsOnQuery,
    /// Answers 409 and stays active.
    Refuses,
    /// Answers 200 but stays active.
    Lies,
    /// Never answers.
    Hangs,
}

#[derive(Clone)]
struct MasterState {
    behaviour: Master,
    status: Arc<Mutex<HaStatus>>,
    received: Arc<Mutex<Vec<FencingToken>>>,
}

async fn master(behaviour: Master) -> (String, MasterState) {
    let state = MasterState {
        behaviour,
        status: Arc::new(Mutex::new(HaStatus { state: HaState::Active, token: FencingToken(7) })),
        received: Arc::default(),
    };
    async fn standby(
        State(s): State<MasterState>,
        Json(req): Json<TokenRequest>,
    ) -> Result<(StatusCode, Json<Option<HaStatus>>), StatusCode> {
        s.received.lock().unwrap().push(req.token);
        let step_down = |s: &MasterState| {
            let mut st = s.status.lock().unwrap();
            // A master keeps the highest token it has seen.
            st.token = st.token.max(req.token);
            st.state = HaState::Standby;
            *st
        };
        match s.behaviour {
            Master::Confirms => Ok((StatusCode::OK, Json(Some(step_down(&s))))),
            Master::ConfirmsOnQuery => {
                step_down(&s);
                Ok((StatusCode::NO_CONTENT, Json(None)))
            }
            Master::Refuses => Err(StatusCode::CONFLICT),
            Master::Lies => Ok((StatusCode::OK, Json(Some(*s.status.lock().unwrap())))),
            Master::Hangs => {
                never().await;
                unreachable!()
            }
        }
    }
    async fn state_of(State(s): State<MasterState>) -> Json<HaStatus> {
        Json(*s.status.lock().unwrap())
    }
    let router =
        Router::new().route("/ha/standby", post(standby)).route("/ha/state", get(state_of)).with_state(state.clone());
    (format!("http://{}", serve(router).await), state)
}

const GRACEFUL: &str =
    "overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: graceful\n        timeout_ms: 600\n";

async fn graceful_against(behaviour: Master) -> (FenceReport, MasterState, Duration) {
    let (url, state) = master(behaviour).await;
    let mut t = target("n1", "127.0.0.1", 1);
    t.ha_url = Some(url);
    let started = Instant::now();
    let report = fencer(GRACEFUL).fence(&t, FencingToken(12)).await;
    (report, state, started.elapsed())
}

#[tokio::test]
async fn graceful_is_fenced_when_the_master_confirms_standby_with_the_new_token() {
    for behaviour in [Master::Confirms, Master::ConfirmsOnQuery] {
        let (report, state, _) = graceful_against(behaviour).await;
        assert!(report.outcome.permits_promotion(), "{report:#?}");
        assert_eq!(*state.received.lock().unwrap(), [FencingToken(12)]);
        // The master now holds the new token, so a stale promotion with 7 is refused.
        assert_eq!(state.status.lock().unwrap().token, FencingToken(12));
    }
}

#[tokio::test]
async fn graceful_fails_when_the_master_refuses_or_stays_active() {
    let (report, state, _) = graceful_against(Master::Refuses).await;
    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("409"), "{reason}");
    assert_eq!(*state.received.lock().unwrap(), [FencingToken(12)]);

    let (report, _, _) = graceful_against(Master::Lies).await;
    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("still reports active"), "{reason}");
}

#[tokio::test]
async fn graceful_against_a_hanging_master_is_indeterminate_at_its_deadline() {
    let (report, state, elapsed) = graceful_against(Master::Hangs).await;
    assert!(matches!(only_outcome(&report), MethodOutcome::Indeterminate { .. }), "{report:#?}");
    assert!(elapsed >= Duration::from_millis(600));
    assert!(elapsed < Duration::from_millis(1500), "{elapsed:?}");
    assert_eq!(*state.received.lock().unwrap(), [FencingToken(12)]);
}

#[tokio::test]
async fn graceful_against_a_closed_port_fails() {
    let t = target("n1", "127.0.0.1", common::closed_port());
    let report = fencer(GRACEFUL).fence(&t, FencingToken(12)).await;
    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("cannot connect"), "{reason}");
}

/// A port whose listener's accept queue is full, so the kernel drops further connection
/// requests unanswered, as a black-holed or dead host does. Returns the port and what holds it.
async fn port_dropping_connection_requests() -> (u16, tokio::net::TcpListener, Vec<tokio::net::TcpStream>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => held.push(stream),
            _ => return (addr.port(), listener, held),
        }
    }
    panic!("the accept queue of a listener with backlog 0 never filled after {} connections", held.len());
}

#[tokio::test]
async fn graceful_against_a_host_that_drops_the_connection_request_fails_at_the_connect_timeout() {
    let (port, _listener, _held) = port_dropping_connection_requests().await;
    let t = target("n1", "127.0.0.1", port);
    // A method timeout far above the connection deadlines (the default 100 ms, and 300 ms).
    let graceful = GRACEFUL.replace("timeout_ms: 600\n", "timeout_ms: 4000\n");
    for (yaml, at_least) in [
        (graceful.clone(), Duration::ZERO),
        (
            graceful.replace("timeout_ms: 4000\n", "timeout_ms: 4000\n        connect_timeout_ms: 300\n"),
            Duration::from_millis(300),
        ),
    ] {
        let started = Instant::now();
        let report = fencer(&yaml).fence(&t, FencingToken(12)).await;
        let elapsed = started.elapsed();
        // Failed, not indeterminate: the request was never delivered, so it fenced nothing.
        let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{yaml}\n{report:#?}") };
        assert!(reason.contains("no answer to the connection request"), "{reason}");
        // Given up at the connection deadline, not at the method's 4 s: the bound, five times
        // the longer deadline, catches a connect left to the method's timeout, not a slow
        // machine.
        assert!(
            elapsed >= at_least && elapsed < Duration::from_millis(1500),
            "given up after {elapsed:?}, not at the connection deadline\n{yaml}"
        );
    }
}

/// A master that answers one `GET /ha/state` on a kept-alive connection and then goes dark as a
/// host that lost power does: nothing more comes back on that connection (no FIN, no RST), and
/// new connections are refused (its listener is closed). Returns the port.
async fn master_that_goes_dark_after_one_answer() -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        drop(listener);
        let mut request = Vec::new();
        let mut buf = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the client closed before sending its request");
            request.extend_from_slice(&buf[..n]);
        }
        let body = serde_json::to_string(&HaStatus { state: HaState::Active, token: FencingToken(7) }).unwrap();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
        // Dark: whatever arrives now is read and never answered, and the connection stays open
        // until the test's runtime ends.
        while stream.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        std::future::pending::<()>().await;
    });
    port
}

/// The periodic checks keep the master's HA endpoint busy on the graceful client; a connection
/// they leave idle must not carry the step-down once the master's host is gone, or the request
/// waits out the whole timeout (indeterminate) on a socket whose peer is dead instead of failing
/// at once on a connection that cannot be made.
#[tokio::test]
async fn graceful_does_not_send_the_step_down_on_a_connection_left_by_a_check() {
    let port = master_that_goes_dark_after_one_answer().await;
    let mut t = target("n1", "127.0.0.1", port);
    t.ha_url = Some(format!("http://127.0.0.1:{port}"));
    // A method timeout far above the connection deadline (the default 100 ms).
    let f = fencer(&GRACEFUL.replace("timeout_ms: 600\n", "timeout_ms: 4000\n"));
    let check = f.check(&t).await;
    let Readiness::Ready { detail } = &check.checks[0].readiness else { panic!("{check:#?}") };
    assert!(detail.contains("the master is Active"), "{detail}");

    let started = Instant::now();
    let report = f.fence(&t, FencingToken(12)).await;
    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("cannot connect"), "{reason}");
    // Failed at the connection, not after the method's 4 s on the dead socket: the bound,
    // fifteen times the connection deadline, catches that, not a slow machine.
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_millis(1500), "failed after {elapsed:?}, not at the connection deadline");
}

#[test]
fn graceful_connect_timeout_of_zero_is_refused() {
    let yaml = GRACEFUL.replace("timeout_ms: 600\n", "timeout_ms: 600\n        connect_timeout_ms: 0\n");
    let e = Fencer::from_yaml_str(&yaml).unwrap_err().to_string();
    assert!(e.contains("connect_timeout_ms") && e.contains("greater than 0"), "{e}");
}

// ----- agent ----------------------------------------------------------------------------

#[derive(Clone)]
struct Peer {
    secret: &'static str,
    answer: Option<PeerFenceResponse>,
    received: Arc<Mutex<Vec<PeerFenceRequest>>>,
}

async fn peer(secret: &'static str, answer: Option<PeerFenceResponse>) -> (String, Peer) {
    let (router, state) = peer_router(secret, answer);
    (format!("http://{}", serve(router).await), state)
}

fn peer_router(secret: &'static str, answer: Option<PeerFenceResponse>) -> (Router, Peer) {
    let state = Peer { secret, answer, received: Arc::default() };
    async fn fence(
        State(p): State<Peer>,
        headers: HeaderMap,
        Json(req): Json<PeerFenceRequest>,
    ) -> Result<Json<PeerFenceResponse>, StatusCode> {
        let expected = format!("Bearer {}", p.secret);
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
            return Err(StatusCode::UNAUTHORIZED);
        }
        p.received.lock().unwrap().push(req);
        match &p.answer {
            Some(answer) => Ok(Json(answer.clone())),
            None => {
                never().await;
                unreachable!()
            }
        }
    }
    (Router::new().route("/peer/fence", post(fence)).with_state(state.clone()), state)
}

fn agent_yaml(peer_url: &str, secret_file: &std::path::Path) -> String {
    format!(
        "overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: agent\n        timeout_ms: 600\n        peers: {{n1: '{peer_url}/'}}\n        secret_file: {}\n",
        secret_file.display()
    )
}

fn answer(outcome: PeerFenceOutcome, reason: &str) -> Option<PeerFenceResponse> {
    Some(PeerFenceResponse { outcome, reason: reason.into() })
}

#[tokio::test]
async fn agent_is_fenced_when_the_authenticated_peer_fences_with_the_new_token() {
    let dir = ScratchDir::new("agent").unwrap();
    std::fs::write(dir.path("secret"), "s3cret\n").unwrap();
    let (url, state) = peer("s3cret", answer(PeerFenceOutcome::Fenced, "master stopped")).await;
    // Checked first: the peer answers, and is asked to fence nothing.
    let check = fencer(&agent_yaml(&url, &dir.path("secret"))).check(&target("n1", "127.0.0.1", 1)).await;
    let Readiness::Ready { detail } = &check.checks[0].readiness else { panic!("{check:#?}") };
    assert!(detail.contains("peer API") && detail.contains("answers"), "{detail}");
    assert!(state.received.lock().unwrap().is_empty(), "the check fenced");
    let check = fencer(&agent_yaml(&url, &dir.path("secret"))).check(&target("n9", "127.0.0.1", 1)).await;
    let Readiness::Problem { reason } = &check.checks[0].readiness else { panic!("{check:#?}") };
    assert!(reason.contains("no peer URL configured for node `n9`"), "{reason}");
    let report =
        fencer(&agent_yaml(&url, &dir.path("secret"))).fence(&target("n1", "127.0.0.1", 1), FencingToken(21)).await;
    assert!(report.outcome.permits_promotion(), "{report:#?}");
    assert_eq!(
        *state.received.lock().unwrap(),
        [PeerFenceRequest { target_node_id: "n1".into(), token: FencingToken(21) }]
    );
    // The secret never appears in the report.
    assert!(!format!("{report:?}").contains("s3cret"));
}

#[tokio::test]
async fn agent_outcomes_map_and_a_wrong_secret_fails() {
    let dir = ScratchDir::new("agent-outcomes").unwrap();
    std::fs::write(dir.path("secret"), "s3cret").unwrap();
    let (url, _) = peer("s3cret", answer(PeerFenceOutcome::Failed, "kill refused")).await;
    let report =
        fencer(&agent_yaml(&url, &dir.path("secret"))).fence(&target("n1", "127.0.0.1", 1), FencingToken(21)).await;
    assert!(matches!(only_outcome(&report), MethodOutcome::Failed { reason } if reason.contains("kill refused")));

    let (url, _) = peer("s3cret", answer(PeerFenceOutcome::Indeterminate, "lost it")).await;
    let report =
        fencer(&agent_yaml(&url, &dir.path("secret"))).fence(&target("n1", "127.0.0.1", 1), FencingToken(21)).await;
    assert!(matches!(only_outcome(&report), MethodOutcome::Indeterminate { reason } if reason.contains("lost it")));

    let (url, state) = peer("other", answer(PeerFenceOutcome::Fenced, "x")).await;
    let report =
        fencer(&agent_yaml(&url, &dir.path("secret"))).fence(&target("n1", "127.0.0.1", 1), FencingToken(21)).await;
    assert!(matches!(only_outcome(&report), MethodOutcome::Failed { reason } if reason.contains("401")), "{report:#?}");
    assert!(state.received.lock().unwrap().is_empty());

    // A node with no configured peer URL.
    let report =
        fencer(&agent_yaml(&url, &dir.path("secret"))).fence(&target("n2", "127.0.0.1", 1), FencingToken(21)).await;
    assert!(matches!(only_outcome(&report), MethodOutcome::Failed { reason } if reason.contains("no peer URL")));
}

#[tokio::test]
async fn agent_against_a_hanging_peer_is_indeterminate_at_its_deadline() {
    let dir = ScratchDir::new("agent-hang").unwrap();
    std::fs::write(dir.path("secret"), "s3cret").unwrap();
    let (url, state) = peer("s3cret", None).await;
    let started = Instant::now();
    let report =
        fencer(&agent_yaml(&url, &dir.path("secret"))).fence(&target("n1", "127.0.0.1", 1), FencingToken(21)).await;
    assert!(matches!(only_outcome(&report), MethodOutcome::Indeterminate { .. }), "{report:#?}");
    assert!(started.elapsed() < Duration::from_millis(1500));
    assert_eq!(state.received.lock().unwrap().len(), 1);
}

// ----- agent over TLS -------------------------------------------------------------------

/// `agent_yaml` with a `tls` section of the given `key: path` lines.
fn agent_tls_yaml(peer_url: &str, secret_file: &std::path::Path, tls: &[(&str, &std::path::Path)]) -> String {
    let mut yaml = agent_yaml(peer_url, secret_file);
    if !tls.is_empty() {
        yaml.push_str("        tls:\n");
        for (key, path) in tls {
            yaml.push_str(&format!("          {key}: {}\n", path.display()));
        }
    }
    yaml
}

#[tokio::test]
async fn agent_with_tls_fences_through_a_peer_that_requires_client_certificates() {
    let dir = ScratchDir::new("agent-tls").unwrap();
    std::fs::write(dir.path("secret"), "s3cret").unwrap();
    let pki = Pki::new();
    let (router, state) = peer_router("s3cret", answer(PeerFenceOutcome::Fenced, "master stopped"));
    let url = format!("https://{}", serve_tls(router, pki.server_config(true)).await);
    let secret = dir.path("secret");
    let full = [("ca_file", pki.ca_file.as_path()), ("cert_file", &pki.client_cert), ("key_file", &pki.client_key)];

    let report =
        fencer(&agent_tls_yaml(&url, &secret, &full)).fence(&target("n1", "127.0.0.1", 1), FencingToken(21)).await;
    assert!(report.outcome.permits_promotion(), "{report:#?}");
    assert_eq!(
        *state.received.lock().unwrap(),
        [PeerFenceRequest { target_node_id: "n1".into(), token: FencingToken(21) }]
    );

    // The CA alone is not enough: the peer refuses a client without a certificate, at the TLS
    // layer, before any request reaches it. (With TLS 1.3 the refusal comes after the client
    // wrote its request, so the method reads it as indeterminate, not failed: no promotion.)
    let report =
        fencer(&agent_tls_yaml(&url, &secret, &full[..1])).fence(&target("n1", "127.0.0.1", 1), FencingToken(22)).await;
    assert!(!report.outcome.permits_promotion(), "{report:#?}");
    assert!(report.outcome.to_string().contains("Certificate"), "the reason says why: {}", report.outcome);
    // Without `tls` the shared client trusts only public roots, so the private CA's server
    // certificate is refused: nothing connects, nothing is fenced.
    let report =
        fencer(&agent_tls_yaml(&url, &secret, &[])).fence(&target("n1", "127.0.0.1", 1), FencingToken(23)).await;
    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("cannot connect") && reason.contains("certificate"), "{reason}");
    assert_eq!(state.received.lock().unwrap().len(), 1, "only the request with a client certificate got through");
}

#[tokio::test]
async fn agent_tls_files_are_read_at_start_up_and_a_bad_one_is_named() {
    let dir = ScratchDir::new("agent-tls-files").unwrap();
    std::fs::write(dir.path("secret"), "s3cret").unwrap();
    let secret = dir.path("secret");
    let pki = Pki::new();
    let refused = |tls: &[(&str, &std::path::Path)]| {
        Fencer::from_yaml_str(&agent_tls_yaml("https://127.0.0.1:1", &secret, tls)).unwrap_err().to_string()
    };
    let missing = dir.path("no-such-ca.pem");
    let e = refused(&[("ca_file", &missing)]);
    assert!(
        e.starts_with("fencing level 0, method 0 (agent): field `tls.ca_file`: cannot read `")
            && e.contains(&missing.display().to_string()),
        "{e}"
    );
    // A file without a certificate where one is expected.
    let e = refused(&[("ca_file", &pki.client_key)]);
    assert!(e.contains("field `tls.ca_file`") && e.contains("holds no PEM certificate"), "{e}");
    let e = refused(&[("cert_file", &pki.client_key), ("key_file", &pki.client_key)]);
    assert!(e.contains("field `tls.cert_file`") && e.contains("holds no PEM certificate"), "{e}");
    // A key file without a key, and a key that is not the certificate's.
    let e = refused(&[("cert_file", &pki.client_cert), ("key_file", &pki.ca_file)]);
    assert!(e.contains("field `tls.key_file`") && e.contains(&pki.ca_file.display().to_string()), "{e}");
    let e = refused(&[("cert_file", &pki.client_cert), ("key_file", &pki.stray_key)]);
    assert!(e.contains("field `tls.key_file`") && e.contains("does the key belong to the certificate"), "{e}");
    // The same files, correct, are accepted.
    Fencer::from_yaml_str(&agent_tls_yaml(
        "https://127.0.0.1:1",
        &secret,
        &[("ca_file", &pki.ca_file), ("cert_file", &pki.client_cert), ("key_file", &pki.client_key)],
    ))
    .unwrap();
}

// ----- http (STONITH / PDU / cloud) -----------------------------------------------------

/// (route, the secret header received, body)
type PduRequest = (String, Option<String>, String);

#[derive(Clone, Default)]
struct Pdu {
    /// Status polls answered "on" before answering "off"; `u32::MAX` = never off.
    on_polls: u32,
    polls: Arc<AtomicU32>,
    requests: Arc<Mutex<Vec<PduRequest>>>,
}

async fn pdu(on_polls: u32) -> (String, Pdu) {
    let (router, state) = pdu_router(on_polls);
    (format!("http://{}", serve(router).await), state)
}

fn pdu_router(on_polls: u32) -> (Router, Pdu) {
    let state = Pdu { on_polls, ..Pdu::default() };
    fn record(p: &Pdu, path: &str, headers: &HeaderMap, body: String) {
        let auth = headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::to_string);
        p.requests.lock().unwrap().push((path.to_string(), auth, body));
    }
    async fn sync_off(State(p): State<Pdu>, h: HeaderMap, body: String) -> StatusCode {
        record(&p, "sync", &h, body);
        StatusCode::OK
    }
    async fn broken(State(p): State<Pdu>, h: HeaderMap, body: String) -> (StatusCode, &'static str) {
        record(&p, "broken", &h, body);
        (StatusCode::SERVICE_UNAVAILABLE, "controller offline")
    }
    async fn accepted(
        State(p): State<Pdu>,
        h: HeaderMap,
        body: String,
    ) -> (StatusCode, [(&'static str, &'static str); 1]) {
        record(&p, "async", &h, body);
        (StatusCode::ACCEPTED, [("location", "/status/n1")])
    }
    async fn status(State(p): State<Pdu>) -> Json<serde_json::Value> {
        let n = p.polls.fetch_add(1, Ordering::SeqCst);
        let state = if n >= p.on_polls { "off" } else { "on" };
        Json(serde_json::json!({"outlet": {"power": state}}))
    }
    async fn hang() {
        never().await
    }
    let router = Router::new()
        .route("/sync/:node", post(sync_off))
        .route("/broken/:node", post(broken))
        .route("/async/:node", post(accepted))
        .route("/status/:node", get(status))
        .route("/hang/:node", post(hang))
        .with_state(state.clone());
    (router, state)
}

fn http_yaml(url: &str, status: bool, timeout_ms: u64) -> String {
    let status = if status {
        "        status:\n          interval_ms: 50\n          pointer: /outlet/power\n          off_value: \"off\"\n"
    } else {
        ""
    };
    format!(
        "overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: http\n        timeout_ms: {timeout_ms}\n        url: '{url}'\n        body: '{{\"action\": \"off\"}}'\n        secret_env: RFENCE_TEST_PDU_KEY\n        secret_header: X-Api-Key\n        secret_prefix: ''\n{status}"
    )
}

fn set_pdu_key() {
    // Every test sets the same value, so concurrent tests cannot disagree.
    std::env::set_var("RFENCE_TEST_PDU_KEY", "pdu-key");
}

/// An API whose 200 means "off" (`trust_2xx`): fenced on its answer alone.
#[tokio::test]
async fn http_trusted_2xx_is_fenced_and_carries_body_and_secret() {
    set_pdu_key();
    let (base, state) = pdu(0).await;
    let report =
        fencer(&format!("{}        trust_2xx: true\n", http_yaml(&format!("{base}/sync/{{node_id}}"), false, 1000)))
            .fence(&target("n1", "127.0.0.1", 1), FencingToken(3))
            .await;
    assert!(report.outcome.permits_promotion(), "{report:#?}");
    assert_eq!(
        *state.requests.lock().unwrap(),
        [("sync".to_string(), Some("pdu-key".to_string()), "{\"action\": \"off\"}".to_string())]
    );
}

/// An API may answer 200 for "accepted, not done" (a task id, an operation still pending) or
/// for a failure in its body (`{"success": false}`): without a status URL to read, a 2xx does
/// not show the target off, so it ends indeterminate, and the check calls the configuration a
/// problem, unless the operator says this API's 2xx means off (`trust_2xx`).
#[tokio::test]
async fn http_2xx_without_a_status_url_is_indeterminate_unless_trusted() {
    set_pdu_key();
    let api = Router::new()
        .route("/off/:node", post(|| async { Json(serde_json::json!({"success": false, "error": "outlet locked"})) }));
    let base = format!("http://{}", serve(api).await);
    let yaml = http_yaml(&format!("{base}/off/{{node_id}}"), false, 1000);
    let t = target("n1", "127.0.0.1", 1);
    let report = fencer(&yaml).fence(&t, FencingToken(3)).await;
    let MethodOutcome::Indeterminate { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("200 OK") && reason.contains("outlet locked"), "{reason}");
    assert!(reason.contains("status.url") && reason.contains("trust_2xx"), "{reason}");
    let check = fencer(&yaml).check(&t).await;
    let Readiness::Problem { reason } = &check.checks[0].readiness else { panic!("{check:#?}") };
    assert!(reason.contains("nothing confirms") && reason.contains("trust_2xx"), "{reason}");

    // Opted in: the answer is taken at its word, and the detail says on what.
    let trusted = format!("{yaml}        trust_2xx: true\n");
    let report = fencer(&trusted).fence(&t, FencingToken(3)).await;
    let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(detail.contains("200 OK") && detail.contains("trust_2xx"), "{detail}");
    let check = fencer(&trusted).check(&t).await;
    assert!(matches!(check.checks[0].readiness, Readiness::Unchecked { .. }), "{check:#?}");
}

#[tokio::test]
async fn http_with_tls_powers_off_through_an_api_requiring_client_certificates() {
    set_pdu_key();
    let pki = Pki::new();
    let (router, state) = pdu_router(1);
    let base = format!("https://{}", serve_tls(router, pki.server_config(true)).await);
    let tls = format!(
        "        tls:\n          ca_file: {}\n          cert_file: {}\n          key_file: {}\n",
        pki.ca_file.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    // 202 then one "on" poll: the request and every poll go through the method's TLS client.
    let yaml = http_yaml(&format!("{base}/async/{{node_id}}"), true, 2000) + &tls;
    let report = fencer(&yaml).fence(&target("n1", "127.0.0.1", 1), FencingToken(3)).await;
    assert!(report.outcome.permits_promotion(), "{report:#?}");
    assert_eq!(state.polls.load(Ordering::SeqCst), 2);
    assert_eq!(state.requests.lock().unwrap().len(), 1);

    // The shared client does not trust the private CA.
    let report = fencer(&http_yaml(&format!("{base}/sync/{{node_id}}"), false, 1000))
        .fence(&target("n1", "127.0.0.1", 1), FencingToken(3))
        .await;
    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("certificate"), "{reason}");
    assert_eq!(state.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn http_5xx_fails_with_the_api_message() {
    set_pdu_key();
    let (base, _) = pdu(0).await;
    let report = fencer(&http_yaml(&format!("{base}/broken/{{node_id}}"), false, 1000))
        .fence(&target("n1", "127.0.0.1", 1), FencingToken(3))
        .await;
    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("503") && reason.contains("controller offline"), "{reason}");
}

#[tokio::test]
async fn http_accepted_is_fenced_only_once_the_status_reports_off() {
    set_pdu_key();
    let (base, state) = pdu(3).await;
    let report = fencer(&http_yaml(&format!("{base}/async/{{node_id}}"), true, 3000))
        .fence(&target("n1", "127.0.0.1", 1), FencingToken(3))
        .await;
    let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(detail.contains("confirmed"), "{detail}");
    assert_eq!(state.polls.load(Ordering::SeqCst), 4, "three 'on' answers, then 'off'");

    // Accepted, but the status never reports off: indeterminate at the deadline.
    let (base, _) = pdu(u32::MAX).await;
    let started = Instant::now();
    let report = fencer(&http_yaml(&format!("{base}/async/{{node_id}}"), true, 600))
        .fence(&target("n1", "127.0.0.1", 1), FencingToken(3))
        .await;
    let MethodOutcome::Indeterminate { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("last status: /outlet/power is \"on\""), "{reason}");
    assert!(started.elapsed() < Duration::from_millis(1500));

    // Accepted, with no way to confirm: indeterminate, never fenced.
    let report = fencer(&http_yaml(&format!("{base}/async/{{node_id}}"), false, 600))
        .fence(&target("n1", "127.0.0.1", 1), FencingToken(3))
        .await;
    assert!(matches!(only_outcome(&report), MethodOutcome::Indeterminate { .. }), "{report:#?}");
}

/// A device that answers 200 at once may still switch off later (or not at all): with a
/// status URL configured, the answer is confirmed like a 202's, as fence agents check the
/// outlet's state after "off".
#[tokio::test]
async fn http_2xx_with_a_status_url_is_fenced_only_once_the_status_reports_off() {
    set_pdu_key();
    let with_status_url = |base: &str, timeout_ms| {
        http_yaml(&format!("{base}/sync/{{node_id}}"), true, timeout_ms)
            .replace("        status:\n", &format!("        status:\n          url: '{base}/status/{{node_id}}'\n"))
    };
    let (base, state) = pdu(2).await;
    let report = fencer(&with_status_url(&base, 3000)).fence(&target("n1", "127.0.0.1", 1), FencingToken(3)).await;
    let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(detail.contains("confirmed"), "{detail}");
    assert_eq!(state.polls.load(Ordering::SeqCst), 3, "two 'on' answers, then 'off'");

    let (base, _) = pdu(u32::MAX).await;
    let report = fencer(&with_status_url(&base, 600)).fence(&target("n1", "127.0.0.1", 1), FencingToken(3)).await;
    let MethodOutcome::Indeterminate { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("last status: /outlet/power is \"on\""), "{reason}");
}

#[tokio::test]
async fn http_timeout_is_indeterminate_at_the_deadline() {
    set_pdu_key();
    let (base, _) = pdu(0).await;
    let started = Instant::now();
    let report = fencer(&http_yaml(&format!("{base}/hang/{{node_id}}"), false, 500))
        .fence(&target("n1", "127.0.0.1", 1), FencingToken(3))
        .await;
    assert!(matches!(only_outcome(&report), MethodOutcome::Indeterminate { .. }), "{report:#?}");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(500) && elapsed < Duration::from_millis(1400), "{elapsed:?}");
}

// ----- token ----------------------------------------------------------------------------

/// A resource enforcing fencing tokens: it keeps a floor and rejects writes below it.
#[derive(Clone, Default)]
struct Resource {
    floor: Arc<Mutex<FencingToken>>,
    /// When set, the resource answers with this floor instead of raising its own.
    stuck_at: Option<FencingToken>,
}

async fn resource(stuck_at: Option<FencingToken>) -> (String, Resource) {
    let state = Resource { stuck_at, ..Resource::default() };
    async fn raise(State(r): State<Resource>, Json(req): Json<TokenFloorRequest>) -> Json<TokenFloorResponse> {
        assert_eq!(req.fenced_node_id, "n1");
        if let Some(floor) = r.stuck_at {
            return Json(TokenFloorResponse { floor });
        }
        let mut floor = r.floor.lock().unwrap();
        *floor = (*floor).max(req.token);
        Json(TokenFloorResponse { floor: *floor })
    }
    async fn write(State(r): State<Resource>, Json(req): Json<TokenRequest>) -> StatusCode {
        if req.token < *r.floor.lock().unwrap() {
            StatusCode::CONFLICT
        } else {
            StatusCode::OK
        }
    }
    let router = Router::new().route("/floor", post(raise)).route("/write", post(write)).with_state(state.clone());
    (format!("http://{}", serve(router).await), state)
}

fn token_yaml(base: &str) -> String {
    format!("overall_timeout_ms: 5000\nlevels:\n  - methods:\n      - kind: token\n        timeout_ms: 1000\n        url: '{base}/floor'\n")
}

#[tokio::test]
async fn token_is_fenced_once_the_resource_rejects_older_tokens() {
    let (base, _) = resource(None).await;
    let report = fencer(&token_yaml(&base)).fence(&target("n1", "127.0.0.1", 1), FencingToken(30)).await;
    assert!(report.outcome.permits_promotion(), "{report:#?}");
    // The old active's token (7) is now refused; the new one is accepted.
    let client = reqwest::Client::new();
    let write = |token| client.post(format!("{base}/write")).json(&TokenRequest { token: FencingToken(token) }).send();
    assert_eq!(write(7).await.unwrap().status(), reqwest::StatusCode::CONFLICT);
    assert_eq!(write(30).await.unwrap().status(), reqwest::StatusCode::OK);
}

#[tokio::test]
async fn token_fails_when_the_resource_floor_stays_below_the_new_token() {
    let (base, _) = resource(Some(FencingToken(10))).await;
    let report = fencer(&token_yaml(&base)).fence(&target("n1", "127.0.0.1", 1), FencingToken(30)).await;
    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("floor is 10"), "{reason}");
}

// ----- what a fence exposes -------------------------------------------------------------

/// A master (or whatever holds its port now) that answers a step-down with an endless body
/// cannot make the fencing agent read it all: the answer is refused past a small bound.
#[tokio::test]
async fn graceful_refuses_an_answer_too_long_to_be_a_state() {
    async fn endless() -> (StatusCode, String) {
        let pad = "x".repeat(8 << 20);
        (StatusCode::OK, format!("{{\"state\": \"standby\", \"token\": 12, \"pad\": \"{pad}\"}}"))
    }
    let router = Router::new().route("/ha/standby", post(endless)).route("/ha/state", get(endless));
    let mut t = target("n1", "127.0.0.1", 1);
    t.ha_url = Some(format!("http://{}", serve(router).await));
    let report = fencer(GRACEFUL).fence(&t, FencingToken(12)).await;
    let MethodOutcome::Indeterminate { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("longer than"), "{reason}");
}

/// A device's 202 may name where to poll; a Location on another host is not followed, or the
/// secret sent with every poll would go there.
#[tokio::test]
async fn http_does_not_poll_a_location_on_another_host() {
    set_pdu_key();
    let (elsewhere, other) = pdu(0).await;
    let redirect = Router::new().route(
        "/async/:node",
        post(move || {
            let location = format!("{elsewhere}/status/n1");
            async move { (StatusCode::ACCEPTED, [("location", location)]) }
        }),
    );
    let base = format!("http://{}", serve(redirect).await);
    let report = fencer(&http_yaml(&format!("{base}/async/{{node_id}}"), true, 1000))
        .fence(&target("n1", "127.0.0.1", 1), FencingToken(3))
        .await;
    let MethodOutcome::Indeterminate { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("another host"), "{reason}");
    assert_eq!(other.polls.load(Ordering::SeqCst), 0, "the other host was polled");
}

/// A secret a method reads from the environment does not reach the programs a fence runs.
#[tokio::test]
async fn a_secret_read_from_the_environment_is_not_passed_to_programs() {
    set_pdu_key();
    let (base, _) = pdu(0).await;
    let yaml = format!(
        "{}  - methods:\n      - kind: shell\n        timeout_ms: 2000\n        program: /bin/sh\n        args: [\"-c\", \"test -z \\\"${{RFENCE_TEST_PDU_KEY+set}}\\\" || {{ echo the key reached the program; exit 1; }}\"]\n",
        http_yaml(&format!("{base}/broken/{{node_id}}"), false, 1000)
    );
    let report = fencer(&yaml).fence(&target("n1", "127.0.0.1", 1), FencingToken(3)).await;
    assert_eq!(report.events.len(), 2, "{report:#?}");
    assert!(report.outcome.permits_promotion(), "{report:#?}");
}

// ----- proxies --------------------------------------------------------------------------

const THROUGH_PROXY_ENV: &str = "RFENCE_TEST_FENCE_WITH_PROXY_ENV";

/// Not a test of its own: when re-executed with `THROUGH_PROXY_ENV` set to a JSON `(config,
/// target)`, this process fences the target and prints each method's outcome as `OUTCOME:
/// {json}`. [`fencing_clients_ignore_proxies_in_the_environment`] runs it with proxy variables
/// set, which a process reads once (and which must not leak into the other tests' clients).
#[test]
fn helper_fence_with_proxy_variables() {
    let Ok(spec) = std::env::var(THROUGH_PROXY_ENV) else {
        return;
    };
    let (yaml, t): (String, referee_fencing::FenceTarget) = serde_json::from_str(&spec).expect("helper spec");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let report = runtime.block_on(fencer(&yaml).fence(&t, FencingToken(12)));
    let outcomes: Vec<&MethodOutcome> = report.events.iter().map(|e| &e.outcome).collect();
    println!("OUTCOME: {}", serde_json::to_string(&outcomes).unwrap());
}

/// An agent that inherits `http_proxy` and the like (from a unit's `EnvironmentFile`, a
/// corporate default) must still talk to fence devices, peers and masters directly: through a
/// proxy the bearer secrets of plain-HTTP devices would go to the proxy, and the connection
/// deadline would time the connection to the proxy, not to the master. Every client is
/// covered: the graceful method's own, the shared one (`http` without `tls`) and a method's
/// TLS client.
#[tokio::test]
async fn fencing_clients_ignore_proxies_in_the_environment() {
    // A "proxy" that counts the connections it gets and drops them.
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_url = format!("http://{}", proxy.local_addr().unwrap());
    let proxied = Arc::new(AtomicU32::new(0));
    let counted = Arc::clone(&proxied);
    tokio::spawn(async move {
        while let Ok((stream, _)) = proxy.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let (master_url, master_state) = master(Master::Confirms).await;
    let (pdu_base, pdu_state) = pdu(0).await;
    let pki = Pki::new();
    let (router, tls_state) = pdu_router(0);
    let tls_base = format!("https://{}", serve_tls(router, pki.server_config(true)).await);
    let http = |name: &str, base: &str| {
        format!(
            "      - kind: http\n        name: {name}\n        timeout_ms: 1500\n        url: '{base}/sync/{{node_id}}'\n        trust_2xx: true\n        secret_env: RFENCE_TEST_PDU_KEY\n        secret_header: X-Api-Key\n        secret_prefix: ''\n"
        )
    };
    let yaml = format!(
        "overall_timeout_ms: 8000\nlevels:\n  - methods:\n      - kind: graceful\n        timeout_ms: 1500\n{}{}        tls:\n          ca_file: {}\n          cert_file: {}\n          key_file: {}\n",
        http("http", &pdu_base),
        http("http-tls", &tls_base),
        pki.ca_file.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let mut t = target("n1", "127.0.0.1", 1);
    t.ha_url = Some(master_url);

    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "helper_fence_with_proxy_variables", "--nocapture", "--test-threads=1"])
        .env(THROUGH_PROXY_ENV, serde_json::to_string(&(&yaml, &t)).unwrap())
        .env("RFENCE_TEST_PDU_KEY", "pdu-key")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for name in ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"] {
        command.env(name, &proxy_url);
    }
    let output = referee_testkit::within("the fencer with proxy variables", command.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.split_once("OUTCOME: ").map(|(_, json)| json)) else {
        panic!("the helper printed no outcome: {output:?}");
    };
    let outcomes: Vec<serde_json::Value> = serde_json::from_str(line).unwrap();
    assert_eq!(proxied.load(Ordering::SeqCst), 0, "requests went to the proxy: {outcomes:#?}");
    assert_eq!(outcomes.len(), 3, "{outcomes:#?}");
    assert!(outcomes.iter().all(|o| o["outcome"] == "fenced"), "{outcomes:#?}");
    assert_eq!(*master_state.received.lock().unwrap(), [FencingToken(12)]);
    assert_eq!(pdu_state.requests.lock().unwrap().len(), 1);
    assert_eq!(tls_state.requests.lock().unwrap().len(), 1);
}
