//! The probe server: what load balancers, orchestrators, monitoring and the master itself ask
//! the agent over HTTP. Read-only; every answer is computed from the status at answer time.
//!
//! | path        | 200 when                                                            |
//! |-------------|---------------------------------------------------------------------|
//! | `/healthz`  | the decision loop ran within three loop intervals, or is in a bounded step it tends (a fence, a promotion), seen within three tend periods |
//! | `/readyz`   | the coordinator session is connected and the master's health known  |
//! | `/active`   | this node's master is active with our lock's token and a live lease |
//! | `/standby`  | this node is a healthy standby, ready to take over; with `?max_lag=N`, also at most N behind the active's recently published position (Patroni's `/replica?lag=`) |
//! | `/readable` | `/active` or `/standby` would (with the same `?max_lag=N` for a standby): a node that may serve reads (Patroni's `/read-only`) |
//! | `/status`   | always: JSON report (role, health, lock, token, lease, decision...) |
//! | `/history`  | always: recent role changes with failover phase durations           |
//! | `/metrics`  | always: Prometheus text                                             |
//! | `/lease`    | always: `{"token": N, "valid_for_ms": M}` for the master's own lease |
//!
//! Every other answer is 503 with a JSON body saying why, as Patroni's probes do; a query this
//! server does not understand is 400, naming it (a mistyped `max_lag` must not let a load
//! balancer send reads to a standby far behind).

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use referee_fencing::FencingToken;
use serde_json::json;

use crate::clock::BootInstant;
use crate::model::{Health, LockView, SessionView};
use crate::status::{AgentStatus, Role};

/// What the probe handlers share.
#[derive(Clone)]
pub struct ProbeState {
    /// The agent's report.
    pub status: Arc<Mutex<AgentStatus>>,
    /// The decision loop's interval, to judge liveness.
    pub loop_interval: Duration,
}

impl ProbeState {
    fn read(&self) -> AgentStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

fn verdict(ok: bool, body: serde_json::Value) -> Response {
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body)).into_response()
}

async fn healthz(State(p): State<ProbeState>) -> Response {
    let (ok, body) = liveness(&p.read(), p.loop_interval);
    verdict(ok, body)
}

/// Whether the decision loop is alive: a cycle ended within three loop intervals, or the loop,
/// inside a long but bounded step (a fence may take `overall_timeout_ms`), tended the watchdog
/// within three tend periods. A step that hangs does neither. The body says how long ago each.
fn liveness(s: &AgentStatus, loop_interval: Duration) -> (bool, serde_json::Value) {
    let ran = s.last_cycle_at.map(|t| t.elapsed());
    let tended = s.loop_alive_at.map(|t| t.elapsed());
    let ok = ran.is_some_and(|a| a <= loop_interval * 3)
        || tended.is_some_and(|a| a <= crate::driver::tend_period(loop_interval) * 3);
    let ms = |a: Option<Duration>| a.map(|a| a.as_millis() as u64);
    (ok, json!({"loop_ran_ms_ago": ms(ran), "loop_alive_ms_ago": ms(tended)}))
}

async fn readyz(State(p): State<ProbeState>) -> Response {
    let s = p.read();
    let connected = matches!(s.session, SessionView::Connected { .. });
    let known = !matches!(s.health, Health::Initializing);
    verdict(connected && known, json!({"coordinator_connected": connected, "health": s.health}))
}

async fn active(State(p): State<ProbeState>) -> Response {
    let s = p.read();
    let now = BootInstant::now();
    verdict(
        s.is_serving_active(now),
        json!({"role": s.role, "token": s.token, "lease_left_ms": s.lease_left(now).as_millis() as u64}),
    )
}

/// `?max_lag=N` of `/standby` and `/readable` (the `probe` named in errors): `Ok(None)` without
/// a query.
pub fn parse_max_lag(query: Option<&str>, probe: &str) -> Result<Option<u64>, String> {
    let mut max_lag = None;
    for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("max_lag", value)) => match value.parse::<u64>() {
                Ok(n) if max_lag.is_none() => max_lag = Some(n),
                Ok(_) => return Err("max_lag is given twice; give it once".into()),
                Err(_) => {
                    return Err(format!(
                        "max_lag must be a whole number of replication positions (as election.max_lag), not {value:?}"
                    ))
                }
            },
            _ => return Err(format!("unknown query {pair:?}; {probe} takes only max_lag=N")),
        }
    }
    Ok(max_lag)
}

async fn standby(State(p): State<ProbeState>, RawQuery(query): RawQuery) -> Response {
    let max_lag = match parse_max_lag(query.as_deref(), "/standby") {
        Ok(m) => m,
        Err(error) => return (StatusCode::BAD_REQUEST, Json(json!({"error": error}))).into_response(),
    };
    let (ok, body) = standby_verdict(&p.read(), max_lag);
    verdict(ok, body)
}

/// Whether this node is a healthy standby, its master read as standby (not one still active
/// after losing the lock), within `max_lag` of the active's recently published position, and
/// the answer's body saying how it stands.
fn standby_verdict(s: &AgentStatus, max_lag: Option<u64>) -> (bool, serde_json::Value) {
    let master_standby = s.master.is_some_and(|m| m.state == referee_fencing::HaState::Standby);
    let ready = s.role == Role::Standby && s.health.is_healthy() && master_standby;
    let mut body = json!({"role": s.role, "health": s.health, "behind": s.behind_fresh});
    if s.role == Role::Standby && !master_standby {
        body["reason"] = json!("the master is not read as standby (still active, or its state unknown)");
    }
    let caught_up = match (max_lag, s.behind_fresh) {
        (None, _) => true,
        (Some(max), Some(behind)) => behind <= max,
        (Some(_), None) => {
            body["reason"] = json!("how far this node is behind is not known (no recent position from the active)");
            false
        }
    };
    (ready && caught_up, body)
}

/// `/readable`: the active while it serves, or a standby as `/standby` judges it.
async fn readable(State(p): State<ProbeState>, RawQuery(query): RawQuery) -> Response {
    let max_lag = match parse_max_lag(query.as_deref(), "/readable") {
        Ok(m) => m,
        Err(error) => return (StatusCode::BAD_REQUEST, Json(json!({"error": error}))).into_response(),
    };
    let s = p.read();
    let now = BootInstant::now();
    if s.is_serving_active(now) {
        return verdict(
            true,
            json!({"role": s.role, "token": s.token, "lease_left_ms": s.lease_left(now).as_millis() as u64}),
        );
    }
    let (ok, body) = standby_verdict(&s, max_lag);
    verdict(ok, body)
}

async fn status(State(p): State<ProbeState>) -> Response {
    let s = p.read();
    let now = BootInstant::now();
    let mut body = serde_json::to_value(&s).unwrap_or_else(|_| json!({}));
    if let Some(obj) = body.as_object_mut() {
        obj.insert("lease_left_ms".into(), json!(s.lease_left(now).as_millis() as u64));
        obj.insert("serving_active".into(), json!(s.is_serving_active(now)));
    }
    Json(body).into_response()
}

async fn history(State(p): State<ProbeState>) -> Response {
    let s = p.read();
    Json(json!({"transitions": s.history})).into_response()
}

async fn metrics(State(p): State<ProbeState>) -> Response {
    let s = p.read();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics(BootInstant::now())).into_response()
}

/// The lease a master may enforce on itself: valid only while we hold the lock, for what is
/// left of it. The master stops accepting writes at its own request's send time plus this.
async fn lease(State(p): State<ProbeState>) -> Response {
    let s = p.read();
    let now = BootInstant::now();
    let (token, valid) = match s.lock {
        LockView::Ours { token, .. } => (token, s.lease_left(now)),
        _ => (s.token.unwrap_or(FencingToken(0)), Duration::ZERO),
    };
    Json(json!({"token": token, "valid_for_ms": valid.as_millis() as u64})).into_response()
}

/// The probe routes.
pub fn router(state: ProbeState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/active", get(active))
        .route("/standby", get(standby))
        .route("/readable", get(readable))
        .route("/status", get(status))
        .route("/history", get(history))
        .route("/metrics", get(metrics))
        .route("/lease", get(lease))
        .with_state(state)
}

/// Serves the probes on `listener` until `shutdown` completes, with the bounds of
/// [`referee_http_serve`] (a request's headers within its timeout, a limit on open connections, a
/// bounded drain at shutdown).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ProbeState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with_limit(listener, state, referee_http_serve::MAX_CONNECTIONS, shutdown).await
}

/// [`serve`] with another limit on open connections.
pub async fn serve_with_limit(
    listener: tokio::net::TcpListener,
    state: ProbeState,
    max_connections: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopper = tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let served =
        referee_http_serve::serve_listener("probes", listener, router(state), None, max_connections, stop_rx).await;
    stopper.abort();
    served
}

#[cfg(test)]
mod tests {
    use super::*;

    use referee_testkit::closed_within;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    fn state() -> ProbeState {
        ProbeState {
            status: Arc::new(Mutex::new(AgentStatus::new("c", "a"))),
            loop_interval: Duration::from_millis(100),
        }
    }

    /// A client holding half a request line cannot keep the agent from stopping.
    #[tokio::test]
    async fn a_half_sent_request_does_not_hold_shutdown() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, state(), async move {
            let _ = stopped.await;
        }));
        let mut idle = TcpStream::connect(addr).await.unwrap();
        idle.write_all(b"GET /status HTTP/1.1\r\n").await.unwrap();
        // The server has the connection once a whole request on another is answered.
        let mut other = TcpStream::connect(addr).await.unwrap();
        other.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
        let answer = closed_within(&mut other, Duration::from_secs(10)).await.expect("an answer");
        assert!(answer.starts_with(b"HTTP/1.1 "), "{}", String::from_utf8_lossy(&answer));
        stop.send(()).unwrap();
        let limit = referee_http_serve::DRAIN_TIMEOUT + Duration::from_secs(5);
        let done = tokio::time::timeout(limit, server).await;
        assert!(matches!(done, Ok(Ok(Ok(())))), "the probe server did not stop within {limit:?}: {done:?}");
    }

    /// One address past its share of the limit (here 2 connections, a share of 1) has its new
    /// connections closed at once; its held one ending makes room again. (At the whole limit,
    /// new connections wait in the backlog instead: see `referee_http_serve`'s tests.)
    #[tokio::test]
    async fn connections_past_an_address_share_are_closed_and_room_comes_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_with_limit(listener, state(), 2, async move {
            let _ = stopped.await;
        }));
        assert_eq!(referee_http_serve::max_per_address(2), 1);
        let request = b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n";
        // One connection held, seen by the server once a request on it has started an answer.
        let mut first = TcpStream::connect(addr).await.unwrap();
        first.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(10), first.read(&mut buf)).await.unwrap().unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 "), "{}", String::from_utf8_lossy(&buf[..n]));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut second = TcpStream::connect(addr).await.unwrap();
        let _ = second.write_all(request).await;
        let got = closed_within(&mut second, Duration::from_secs(10)).await.expect("closed, not held");
        assert!(got.is_empty(), "a connection past the share was answered: {}", String::from_utf8_lossy(&got));
        drop(first);
        // Room comes back once the server sees the first one end.
        loop {
            let mut next = TcpStream::connect(addr).await.unwrap();
            let _ = next.write_all(request).await;
            let got = closed_within(&mut next, Duration::from_secs(10)).await.expect("closed or answered");
            if got.starts_with(b"HTTP/1.1 ") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no room after a connection ended");
            tokio::task::yield_now().await;
        }
        stop.send(()).unwrap();
        assert!(matches!(tokio::time::timeout(Duration::from_secs(15), server).await, Ok(Ok(Ok(())))));
    }

    /// A loop inside a step it tends (a long fence) is alive; one whose step hangs (neither a
    /// cycle ended nor a tend since) is not.
    #[test]
    fn healthz_takes_a_tended_step_for_a_live_loop_but_not_a_hung_one() {
        let interval = Duration::from_millis(100);
        let mut s = AgentStatus::new("c", "a");
        assert!(!liveness(&s, interval).0, "no cycle yet");
        let now = BootInstant::now();
        s.last_cycle_at = Some(now);
        assert!(liveness(&s, interval).0, "a cycle just ended");
        // In a fence for 5 s: no cycle has ended since, the loop tends every 100 ms.
        s.last_cycle_at = Some(now - Duration::from_secs(5));
        s.loop_alive_at = Some(now);
        let (ok, body) = liveness(&s, interval);
        assert!(ok, "{body}");
        assert!(body["loop_ran_ms_ago"].as_u64() >= Some(5000), "{body}");
        // The step hangs: no tend for a second.
        s.loop_alive_at = Some(now - Duration::from_secs(1));
        let (ok, body) = liveness(&s, interval);
        assert!(!ok, "{body}");
    }

    /// A node without the lock whose master still says active (its demotion keeps failing) is
    /// no standby for readers: it may hold writes the new active never got.
    #[test]
    fn a_standby_whose_master_is_still_active_is_not_offered_for_reads() {
        use crate::model::MasterStatus;
        use referee_fencing::HaState;
        let mut s = AgentStatus::new("c", "a");
        s.role = Role::Standby;
        s.health = Health::Healthy;
        s.master = Some(MasterStatus { state: HaState::Standby, token: FencingToken(4), position: None });
        assert!(standby_verdict(&s, None).0, "a standby master is offered");
        s.master = Some(MasterStatus { state: HaState::Active, token: FencingToken(4), position: None });
        let (ok, body) = standby_verdict(&s, None);
        assert!(!ok, "{body}");
        s.master = None;
        assert!(!standby_verdict(&s, None).0, "a master whose state is unknown is not offered");
    }

    #[test]
    fn the_standby_probe_takes_max_lag_and_refuses_anything_else() {
        assert_eq!(parse_max_lag(None, "/standby"), Ok(None));
        assert_eq!(parse_max_lag(Some(""), "/standby"), Ok(None));
        assert_eq!(parse_max_lag(Some("max_lag=0"), "/standby"), Ok(Some(0)));
        assert_eq!(parse_max_lag(Some("max_lag=1048576"), "/readable"), Ok(Some(1_048_576)));
        for (query, error) in [
            ("max_lag=1MB", "not \"1MB\""),
            ("max_lag=-1", "not \"-1\""),
            ("max_lag=", "not \"\""),
            ("maxlag=5", "unknown query \"maxlag=5\"; /readable takes only max_lag=N"),
            ("lag=5", "unknown query \"lag=5\""),
            ("max_lag=1&max_lag=2", "given twice"),
        ] {
            let e = parse_max_lag(Some(query), "/readable").unwrap_err();
            assert!(e.contains(error), "{query}: {e}");
        }
    }
}
