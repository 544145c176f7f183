//! The admin and peer API: authenticated HTTP calls that become [`ControlRequest`]s for the
//! driver, which carries them out between cycles and answers on the enclosed channel.
//!
//! ```text
//!  referee admin ──▶ admin listener (loopback by default) ─┐
//!                                                          ├─▶ bearer check ─▶ ControlRequest ─▶ driver
//!  peer agents   ──▶ peer listener (or the admin one) ─────┘         │                              │
//!                                                             401, nothing sent       reply (oneshot, deadline)
//! ```
//!
//! | method and path        | listener      | what it does                                                        |
//! |------------------------|---------------|---------------------------------------------------------------------|
//! | `POST /admin/failover` | admin         | graceful failover to this node; answers when it is active; body     |
//! |                        |               | `{"allow_data_loss": true}` lifts the lag gate                      |
//! | `POST /admin/unblock`  | admin         | clear an anti-flap block `{"by": "who asked"}`, logged with it      |
//! | `POST /admin/cede`     | admin, peer   | hand over if active and stay out `{"period_ms": N}` (default 30 s)  |
//! | `POST /admin/pause`    | admin         | maintenance: keep observing and reporting, take no action           |
//! | `POST /admin/resume`   | admin         | leave maintenance                                                   |
//! | `GET /admin/status`    | admin, peer   | the agent's report, as the probes' `/status`                        |
//! | `GET /admin/history`   | admin         | recent role changes with failover phase durations                   |
//! | `POST /admin/check-fencing` | admin    | a round of fencing checks now, fencing nothing; answers the round   |
//! | `POST /peer/fence`     | admin, peer   | [`PEER_FENCE_PATH`]: fence the local master with the new token      |
//! | `POST /peer/failsafe`  | admin, peer   | confirm this node is not active and promise not to contend a while  |
//!
//! `/admin/cede` is on the peer listener because a node taking over gracefully asks the current
//! active to cede through the `peer_url` it publishes. When `peer_listen` is not set, one
//! listener serves every route.
//!
//! Every request needs `Authorization: Bearer <secret>`, compared in constant time. A missing or
//! wrong secret is answered 401 before the body is read, and nothing reaches the driver.
//!
//! Answers: `200 {"ok": true, "message": ...}` when done; `409 {"ok": false, "reason": ...}`
//! when the driver refused (with why); `503` when the driver is not running or did not take the
//! request in time (nothing was done); `504` when it took the request but did not answer in time
//! (it may still be carried out: check the status). `/peer/fence` always answers a
//! [`PeerFenceResponse`]: 403 `failed` for another node's id, 200 `indeterminate` when the
//! local outcome is not known in time.
//!
//! With `tls` configured, both listeners speak TLS only (rustls, ring provider); with
//! `tls.client_ca_file`, clients must also present a certificate signed by that CA. The
//! other side, this agent calling its peers, is [`AdminSettings::peer_client`], configured by
//! `peer_tls` (the CA to trust, the certificate to present).

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use referee_fencing::config::ClientTlsConfig;
use referee_fencing::protocol::PEER_FENCE_PATH;
use referee_fencing::{MethodOutcome, PeerFenceOutcome, PeerFenceRequest, PeerFenceResponse};
use referee_http_serve::{serve_listener, MAX_CONNECTIONS};
use serde::Deserialize;
use serde_json::json;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};

use crate::clock::BootInstant;
use crate::control::{ControlRequest, Declined};
use crate::failsafe::{FailsafeRequest, FailsafeResponse, PEER_FAILSAFE_PATH};
use crate::fence_checks::{CheckNow, CheckNowError, Round};
use crate::status::AgentStatus;

/// The admin listener's default address: loopback, so only local operators reach it.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8400);
/// The header naming the node a request is meant for. An agent refuses one meant for another
/// node (421): an address that reaches another agent than the one published (a loopback or
/// wildcard address read from another host) never acts in its place.
pub const ADDRESSEE_HEADER: &str = "x-referee-node";
/// How long a cede keeps this node out of the election when the request names no period.
pub const DEFAULT_CEDE_PERIOD: Duration = Duration::from_secs(30);
/// The longest a cede may keep this node out of the election (a longer one is refused: a
/// mistyped period would keep it out until its agent restarts).
pub const MAX_CEDE_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// Why the admin settings, the secret or the TLS material were refused.
#[derive(Debug, Error)]
pub enum AdminError {
    /// A value is missing, out of range or contradicts another.
    #[error("invalid agent config: `admin.{key}` {problem}")]
    Invalid {
        /// The offending key under `admin`.
        key: &'static str,
        /// What is wrong and what to do.
        problem: String,
    },
    /// The bearer secret could not be read, or is empty.
    #[error("admin bearer secret: {0}")]
    Secret(String),
    /// A certificate, key or CA file could not be read or used.
    #[error("admin TLS: {0}")]
    Tls(String),
}

fn invalid(key: &'static str, problem: impl Into<String>) -> AdminError {
    AdminError::Invalid { key, problem: problem.into() }
}

/// The `admin:` section of the agent configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Where the admin API listens. Loopback by default: operators run `referee admin` on the
    /// agent's host unless this is opened up deliberately.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where the peer API (`/peer/fence`, `/admin/cede`, `/admin/status`) listens for other
    /// agents. When absent, the admin listener serves it too.
    #[serde(default)]
    pub peer_listen: Option<SocketAddr>,
    /// `host:port` peers use to reach the peer API, published as this node's `peer_url`.
    /// Required when the peer API listens on a wildcard address (0.0.0.0 or ::).
    #[serde(default)]
    pub peer_advertise: Option<String>,
    /// File holding the bearer secret (surrounding whitespace trimmed). Exactly one of
    /// `token_file` and `token_env`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the bearer secret.
    #[serde(default)]
    pub token_env: Option<String>,
    /// TLS for both listeners; plain HTTP when absent.
    #[serde(default)]
    pub tls: Option<TlsSettings>,
    /// TLS for this agent's own calls to peers' APIs (a graceful failover's cede, failsafe
    /// rounds): needed when peers listen with TLS under a private CA or require client
    /// certificates; then peers are called over HTTPS only. When absent, peers are called with
    /// the system's roots and no certificate.
    #[serde(default)]
    pub peer_tls: Option<ClientTlsConfig>,
    /// How long pause, resume, cede and peer fence requests wait for the driver's answer.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How long a failover request waits for this node to become active.
    #[serde(default = "default_failover_timeout_ms")]
    pub failover_timeout_ms: u64,
}

/// TLS material for the admin and peer listeners.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates; when set, every client must present a certificate they signed.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// A [`referee_fencing::config::ClientTlsError`] field as a key under `admin`.
fn peer_tls_key(field: &'static str) -> &'static str {
    match field {
        "ca_file" => "peer_tls.ca_file",
        "cert_file" => "peer_tls.cert_file",
        "key_file" => "peer_tls.key_file",
        _ => "peer_tls",
    }
}

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
}
fn default_request_timeout_ms() -> u64 {
    15_000
}
fn default_failover_timeout_ms() -> u64 {
    60_000
}

impl AdminSettings {
    /// Settings with the defaults and the secret in `token_file`.
    pub fn with_token_file(token_file: impl Into<PathBuf>) -> Self {
        AdminSettings {
            listen: DEFAULT_LISTEN,
            peer_listen: None,
            peer_advertise: None,
            token_file: Some(token_file.into()),
            token_env: None,
            tls: None,
            peer_tls: None,
            request_timeout_ms: default_request_timeout_ms(),
            failover_timeout_ms: default_failover_timeout_ms(),
        }
    }

    /// Checks the fields, naming the one to change. Does not read any file.
    pub fn validate(&self) -> Result<(), AdminError> {
        match (&self.token_file, &self.token_env) {
            (Some(_), Some(_)) => return Err(invalid("token_file", "and `admin.token_env` are both set; keep one")),
            (None, None) => {
                return Err(invalid(
                    "token_file",
                    "is missing; give `token_file` or `token_env` with the bearer secret",
                ))
            }
            (None, Some(name)) if name.trim().is_empty() => return Err(invalid("token_env", "is empty")),
            _ => {}
        }
        if self.peer_listen == Some(self.listen) {
            return Err(invalid("peer_listen", "equals `admin.listen`; leave it out to share the admin listener"));
        }
        match &self.peer_advertise {
            Some(a) => {
                let ok = a.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
                if !ok || a.contains('/') {
                    return Err(invalid("peer_advertise", format!("is {a:?}, which is not host:port")));
                }
            }
            None if self.peer_addr().ip().is_unspecified() => {
                return Err(invalid(
                    "peer_advertise",
                    format!(
                        "is missing, and the peer API listens on the wildcard address {}; name the host:port peers \
                         should use",
                        self.peer_addr()
                    ),
                ))
            }
            None => {}
        }
        self.validate_peer_tls()?;
        if self.request_timeout_ms == 0 {
            return Err(invalid("request_timeout_ms", "is 0; give the driver time to answer"));
        }
        if self.failover_timeout_ms < self.request_timeout_ms {
            return Err(invalid(
                "failover_timeout_ms",
                "is below `admin.request_timeout_ms`; a failover includes a cede",
            ));
        }
        Ok(())
    }

    fn validate_peer_tls(&self) -> Result<(), AdminError> {
        match &self.peer_tls {
            Some(tls) => tls.validate().map_err(|e| invalid(peer_tls_key(e.field), e.problem)),
            None => Ok(()),
        }
    }

    /// The client for this agent's calls to peers, connecting within `connect_timeout`; each
    /// request sets its own overall timeout. Reads the `peer_tls` files: build it at start-up
    /// so a missing or unusable one stops the agent there.
    pub fn peer_client(&self, connect_timeout: Duration) -> Result<reqwest::Client, AdminError> {
        // The peer API never redirects; following one could carry the secret elsewhere, as a
        // proxy named in the environment would.
        let builder = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none());
        match &self.peer_tls {
            None => builder.build().map_err(|e| AdminError::Tls(format!("cannot build the peer client: {e}"))),
            Some(tls) => {
                self.validate_peer_tls()?;
                tls.build_client(builder)
                    .map_err(|e| AdminError::Tls(format!("`admin.{}`: {}", peer_tls_key(e.field), e.problem)))
            }
        }
    }

    /// The address the peer API listens on.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_listen.unwrap_or(self.listen)
    }

    fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The base URL this node publishes as its `peer_url` (lock and membership records).
    pub fn peer_url(&self) -> String {
        let host = self.peer_advertise.clone().unwrap_or_else(|| self.peer_addr().to_string());
        format!("{}://{host}", self.scheme())
    }

    /// The base URL of the admin API, for `referee admin` (publish it as `admin_addr` in the
    /// status). A wildcard listen address is reported as the loopback address of its family.
    pub fn admin_url(&self) -> String {
        let mut addr = self.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        format!("{}://{addr}", self.scheme())
    }

    /// Reads the bearer secret. Refuses an unreadable or empty one.
    pub fn load_secret(&self) -> Result<BearerSecret, AdminError> {
        let (text, source) = match (&self.token_file, &self.token_env) {
            (Some(path), _) => (
                std::fs::read_to_string(path)
                    .map_err(|e| AdminError::Secret(format!("cannot read `{}`: {e}", path.display())))?,
                format!("file `{}`", path.display()),
            ),
            (None, Some(name)) => {
                let text = std::env::var(name)
                    .map_err(|_| AdminError::Secret(format!("environment variable `{name}` is not set")))?;
                // The token authorises failovers and peer fences: the fence programs, the
                // command adapter and the hooks this agent runs must not inherit it (a script
                // that dumps its environment would put it in a fence event's reason).
                referee_fencing::command::hide_from_programs(name);
                (text, format!("environment variable `{name}`"))
            }
            (None, None) => return Err(AdminError::Secret("neither `token_file` nor `token_env` is set".into())),
        };
        let secret = text.trim();
        if secret.is_empty() {
            return Err(AdminError::Secret(format!("{source} is empty; an empty secret would let anyone in")));
        }
        Ok(BearerSecret(secret.to_string()))
    }

    /// Builds the TLS acceptor, if TLS is configured.
    pub fn tls_acceptor(&self) -> Result<Option<TlsAcceptor>, AdminError> {
        let Some(tls) = &self.tls else { return Ok(None) };
        let certs = read_certs(&tls.cert_file)?;
        let key = PrivateKeyDer::from_pem_file(&tls.key_file)
            .map_err(|e| AdminError::Tls(format!("no usable private key in `{}`: {e}", tls.key_file.display())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| AdminError::Tls(e.to_string()))?;
        let builder = match &tls.client_ca_file {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in read_certs(ca)? {
                    roots.add(cert).map_err(|e| AdminError::Tls(format!("`{}`: {e}", ca.display())))?;
                }
                // Built without `allow_unauthenticated`: a client without a certificate is refused.
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| AdminError::Tls(format!("client CA `{}`: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let config = builder.with_single_cert(certs, key).map_err(|e| {
            AdminError::Tls(format!(
                "`{}` and `{}` do not make a key pair: {e}",
                tls.cert_file.display(),
                tls.key_file.display()
            ))
        })?;
        Ok(Some(TlsAcceptor::from(Arc::new(config))))
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, AdminError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| AdminError::Tls(format!("cannot read certificates from `{}`: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(AdminError::Tls(format!("`{}` holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

/// The bearer secret; never printed.
#[derive(Clone)]
pub struct BearerSecret(String);

impl BearerSecret {
    /// Whether `presented` is the secret, in time independent of where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        // Only the length can be learnt from the timing, and a length check alone gives nothing.
        let mut diff = u8::from(expected.len() != presented.len());
        for (i, e) in expected.iter().enumerate() {
            diff |= e ^ presented.get(i).copied().unwrap_or(0);
        }
        std::hint::black_box(diff) == 0
    }

    /// The secret itself, for a client's `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for BearerSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerSecret(redacted)")
    }
}

/// Which routes a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The operator's routes and the peer routes: the admin listener.
    Admin,
    /// Only what peers need: `/peer/fence`, `/peer/failsafe`, `/admin/cede`, `/admin/status`.
    Peer,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// Requests to the driver.
    pub control: mpsc::Sender<ControlRequest>,
    /// The agent's report (for the node id and `/admin/status`).
    pub status: Arc<Mutex<AgentStatus>>,
    /// The bearer secret every request must carry.
    pub secret: BearerSecret,
    /// Deadline for pause, resume, cede and peer fence answers.
    pub request_timeout: Duration,
    /// Deadline for a failover's answer, and for a round of fencing checks asked for.
    pub failover_timeout: Duration,
    /// Asks the agent's fencing checks for a round (`POST /admin/check-fencing`); `None` where
    /// the agent runs none.
    pub check_now: Option<CheckNow>,
}

impl AdminState {
    fn read(&self) -> AgentStatus {
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A request that reached the driver and came back, or did not.
enum Asked<T> {
    /// The driver answered.
    Answered(T),
    /// The channel is closed: the driver is not running. Nothing was done.
    NotRunning,
    /// The channel stayed full until the deadline: the request was never queued.
    Busy,
    /// The driver dropped the reply without answering: it stopped mid-request.
    Dropped,
    /// Queued, but no answer by the deadline: it may still be carried out.
    NoAnswer,
}

impl AdminState {
    async fn ask<T>(&self, limit: Duration, make: impl FnOnce(oneshot::Sender<T>) -> ControlRequest) -> Asked<T> {
        let deadline = Instant::now() + limit;
        let (tx, rx) = oneshot::channel();
        match tokio::time::timeout_at(deadline, self.control.send(make(tx))).await {
            Err(_) => return Asked::Busy,
            Ok(Err(_)) => return Asked::NotRunning,
            Ok(Ok(())) => {}
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => Asked::Answered(answer),
            Ok(Err(_)) => Asked::Dropped,
            Err(_) => Asked::NoAnswer,
        }
    }

    /// Sends an operator request and turns its outcome into the API's answer: 409 for a
    /// refusal (nothing changed), 504 for an outcome not settled (it may still happen).
    async fn operate<E: Into<Declined>>(
        &self,
        what: &str,
        limit: Duration,
        make: impl FnOnce(oneshot::Sender<Result<String, E>>) -> ControlRequest,
    ) -> Response {
        let (code, body) = match self.ask(limit, make).await {
            Asked::Answered(Ok(message)) => {
                info!("admin {what}: {message}");
                (StatusCode::OK, json!({"ok": true, "message": message}))
            }
            Asked::Answered(Err(declined)) => match declined.into() {
                Declined::Refused(reason) => {
                    info!("admin {what} refused: {reason}");
                    (StatusCode::CONFLICT, json!({"ok": false, "reason": reason}))
                }
                Declined::Unsettled(reason) => {
                    warn!("admin {what} not settled: {reason}");
                    (StatusCode::GATEWAY_TIMEOUT, refusal(format!("{what}: {reason}; check the status")))
                }
            },
            Asked::NotRunning => (
                StatusCode::SERVICE_UNAVAILABLE,
                refusal(format!("{what}: the agent's decision loop is not running; nothing was done")),
            ),
            Asked::Busy => (
                StatusCode::SERVICE_UNAVAILABLE,
                refusal(format!("{what}: the agent did not take the request within {limit:?}; nothing was done")),
            ),
            Asked::Dropped => (
                StatusCode::SERVICE_UNAVAILABLE,
                refusal(format!("{what}: the agent stopped before answering; check its status")),
            ),
            Asked::NoAnswer => {
                warn!("admin {what}: no answer within {limit:?}");
                (
                    StatusCode::GATEWAY_TIMEOUT,
                    refusal(format!(
                        "{what}: no answer within {limit:?}; it may still be carried out, check the status"
                    )),
                )
            }
        };
        (code, Json(body)).into_response()
    }
}

fn refusal(reason: String) -> serde_json::Value {
    json!({"ok": false, "reason": reason})
}

/// Lets a request through only with the right bearer secret. Runs before any extractor, so a
/// refused request's body is never read and nothing reaches the driver.
async fn require_bearer(State(s): State<AdminState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .and_then(|v| v.get(..7).filter(|p| p.eq_ignore_ascii_case(b"bearer ")).map(|_| &v[7..]));
    if presented.is_some_and(|p| s.secret.matches(p)) {
        // Checked past the secret, so the node's id is told to its operators alone.
        let me = s.read().node_id;
        return match request.headers().get(ADDRESSEE_HEADER).map(|v| v.to_str().unwrap_or("?")) {
            Some(meant) if meant != me => {
                let path = request.uri().path().to_string();
                warn!(%path, meant, "admin API: a request meant for another node; refused");
                (
                    StatusCode::MISDIRECTED_REQUEST,
                    Json(refusal(format!(
                        "this is {me}'s agent, not {meant}'s: the address used for {meant} reaches {me} (a loopback or \
                         wildcard address read from another host?); nothing was done. Run the command on {meant}'s \
                         host, or have {meant} listen on and publish an address this host reaches"
                    ))),
                )
                    .into_response()
            }
            _ => next.run(request).await,
        };
    }
    let remote = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.to_string());
    let why = if presented.is_none() { "missing bearer token" } else { "wrong bearer token" };
    warn!(remote = remote.as_deref().unwrap_or("?"), path = %request.uri().path(), "admin API: {why}; refused");
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(refusal(format!("{why}: send `Authorization: Bearer <secret>` with the admin secret"))),
    )
        .into_response()
}

async fn pause(State(s): State<AdminState>) -> Response {
    s.operate("pause", s.request_timeout, |reply| ControlRequest::Pause { reply }).await
}

async fn resume(State(s): State<AdminState>) -> Response {
    s.operate("resume", s.request_timeout, |reply| ControlRequest::Resume { reply }).await
}

/// Body of `POST /admin/cede`; it may be empty.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CedeBody {
    #[serde(default)]
    period_ms: Option<u64>,
}

async fn cede(State(s): State<AdminState>, body: Bytes) -> Response {
    let period = if body.iter().all(u8::is_ascii_whitespace) {
        DEFAULT_CEDE_PERIOD
    } else {
        match serde_json::from_slice::<CedeBody>(&body) {
            Ok(CedeBody { period_ms: None }) => DEFAULT_CEDE_PERIOD,
            Ok(CedeBody { period_ms: Some(0) }) => {
                return (StatusCode::BAD_REQUEST, Json(refusal("period_ms must be above 0".into()))).into_response()
            }
            Ok(CedeBody { period_ms: Some(ms) }) if ms > MAX_CEDE_PERIOD.as_millis() as u64 => {
                let why = format!(
                    "period_ms is {ms}, above the most a cede may last ({} ms, a day); for longer, drain the node",
                    MAX_CEDE_PERIOD.as_millis()
                );
                return (StatusCode::BAD_REQUEST, Json(refusal(why))).into_response();
            }
            Ok(CedeBody { period_ms: Some(ms) }) => Duration::from_millis(ms),
            Err(e) => {
                return (StatusCode::BAD_REQUEST, Json(refusal(format!("expected {{\"period_ms\": N}}: {e}"))))
                    .into_response()
            }
        }
    };
    s.operate("cede", s.request_timeout, |reply| ControlRequest::Cede { period, reply }).await
}

/// Body of `POST /admin/failover`; it may be empty.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FailoverBody {
    #[serde(default)]
    allow_data_loss: bool,
}

/// Body of `POST /admin/unblock`; it may be empty.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnblockBody {
    #[serde(default)]
    by: Option<String>,
}

/// An optional JSON body: empty is the default, anything else must parse (else why not).
fn optional_body<T: Default + serde::de::DeserializeOwned>(body: &Bytes, shape: &str) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("expected {shape}: {e}"))
}

fn bad_request(reason: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(refusal(reason))).into_response()
}

async fn failover(State(s): State<AdminState>, body: Bytes) -> Response {
    let FailoverBody { allow_data_loss } = match optional_body(&body, "{\"allow_data_loss\": true|false}") {
        Ok(b) => b,
        Err(why) => return bad_request(why),
    };
    s.operate("failover", s.failover_timeout, |reply| ControlRequest::Failover { allow_data_loss, reply }).await
}

async fn unblock(State(s): State<AdminState>, request: Request) -> Response {
    let remote = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.to_string());
    let body = match axum::body::to_bytes(request.into_body(), 4096).await {
        Ok(b) => b,
        Err(e) => return bad_request(format!("unreadable body: {e}")),
    };
    let UnblockBody { by } = match optional_body(&body, "{\"by\": \"who asks\"}") {
        Ok(b) => b,
        Err(why) => return bad_request(why),
    };
    let by = format!(
        "{} from {}",
        by.map_or_else(|| "(unnamed)".to_string(), |b| b.chars().take(128).collect()),
        remote.as_deref().unwrap_or("?")
    );
    s.operate("unblock", s.request_timeout, |reply| ControlRequest::Unblock { by, reply }).await
}

async fn status(State(s): State<AdminState>) -> Response {
    let st = s.read();
    let now = BootInstant::now();
    let mut body = serde_json::to_value(&st).unwrap_or_else(|_| json!({}));
    if let Some(obj) = body.as_object_mut() {
        obj.insert("lease_left_ms".into(), json!(st.lease_left(now).as_millis() as u64));
        obj.insert("serving_active".into(), json!(st.is_serving_active(now)));
    }
    Json(body).into_response()
}

async fn history(State(s): State<AdminState>) -> Response {
    Json(json!({"transitions": s.read().history})).into_response()
}

/// `POST /admin/check-fencing`: a round of fencing checks now, against every configured peer,
/// fencing nothing. 200 with the round (as `/status` shows it under `fencing_checks`); 409 when
/// a fence began during it (the checks gave way; ask again); 503 when the agent runs no checks
/// or is stopping; 504 when no round ended within `admin.failover_timeout_ms`.
async fn check_fencing(State(s): State<AdminState>) -> Response {
    let Some(checks) = &s.check_now else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(refusal("this agent runs no fencing checks (it has no fencing chain to check)".into())),
        )
            .into_response();
    };
    match checks.round(s.failover_timeout).await {
        Ok(Round::Done(round)) => Json(round).into_response(),
        Ok(Round::GaveWay) => (
            StatusCode::CONFLICT,
            Json(refusal(
                "a fence began during the round and the checks gave way to it; ask again once it is over".into(),
            )),
        )
            .into_response(),
        Err(e @ CheckNowError::NotRunning) => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(refusal(e.to_string()))).into_response()
        }
        Err(e @ CheckNowError::TimedOut(_)) => {
            (StatusCode::GATEWAY_TIMEOUT, Json(refusal(e.to_string()))).into_response()
        }
    }
}

fn fence_answer(code: StatusCode, outcome: PeerFenceOutcome, reason: String) -> Response {
    (code, Json(PeerFenceResponse { outcome, reason })).into_response()
}

/// `POST /peer/fence`: a peer that won the lock asks us to fence our own master.
async fn peer_fence(State(s): State<AdminState>, body: Bytes) -> Response {
    let request: PeerFenceRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return fence_answer(StatusCode::BAD_REQUEST, PeerFenceOutcome::Failed, format!("unreadable request: {e}"))
        }
    };
    let me = s.read().node_id;
    if request.target_node_id != me {
        // A misrouted request fences nothing: the caller must learn it reached the wrong agent.
        warn!(target = %request.target_node_id, "peer fence for another node refused");
        return fence_answer(
            StatusCode::FORBIDDEN,
            PeerFenceOutcome::Failed,
            format!("this agent manages node `{me}`, not `{}`; nothing was fenced", request.target_node_id),
        );
    }
    let token = request.token;
    let limit = s.request_timeout;
    match s.ask(limit, |reply| ControlRequest::PeerFence { token, reply }).await {
        Asked::Answered(outcome) => {
            let code = StatusCode::OK;
            match &outcome {
                MethodOutcome::Fenced { .. } => info!(%token, "peer fence: fenced"),
                MethodOutcome::Failed { .. } | MethodOutcome::Indeterminate { .. } => {
                    warn!(%token, "peer fence: {outcome:?}")
                }
            }
            (code, Json(PeerFenceResponse::from(&outcome))).into_response()
        }
        Asked::NotRunning => fence_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            PeerFenceOutcome::Failed,
            "the agent's decision loop is not running; nothing was done".into(),
        ),
        Asked::Busy => fence_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            PeerFenceOutcome::Failed,
            format!("the agent did not take the request within {limit:?}; nothing was done"),
        ),
        Asked::Dropped => fence_answer(
            StatusCode::OK,
            PeerFenceOutcome::Indeterminate,
            "the agent stopped while fencing; the master may or may not be fenced".into(),
        ),
        Asked::NoAnswer => fence_answer(
            StatusCode::OK,
            PeerFenceOutcome::Indeterminate,
            format!("no local outcome within {limit:?}; the master may or may not be fenced"),
        ),
    }
}

/// `POST /peer/failsafe`: an active peer that cannot reach the coordinator asks whether this
/// node is not active, and for a promise not to contend for a while (see [`crate::failsafe`]).
async fn peer_failsafe(State(s): State<AdminState>, body: Bytes) -> Response {
    let me = s.read().node_id;
    let answer = |code: StatusCode, reason: String| {
        (code, Json(FailsafeResponse { node_id: me.clone(), accepted: false, reason })).into_response()
    };
    let request: FailsafeRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return answer(StatusCode::BAD_REQUEST, format!("unreadable failsafe request: {e}")),
    };
    if request.ttl_ms == 0 {
        return answer(StatusCode::BAD_REQUEST, "ttl_ms must be above 0".into());
    }
    let limit = s.request_timeout;
    match s.ask(limit, |reply| ControlRequest::Failsafe { request, reply }).await {
        Asked::Answered(response) => (StatusCode::OK, Json(response)).into_response(),
        Asked::NotRunning | Asked::Dropped => {
            answer(StatusCode::SERVICE_UNAVAILABLE, "the agent's decision loop is not running".into())
        }
        Asked::Busy | Asked::NoAnswer => {
            answer(StatusCode::SERVICE_UNAVAILABLE, format!("the agent did not answer within {limit:?}"))
        }
    }
}

/// The routes of one listener, behind the bearer check.
pub fn router(state: AdminState, surface: Surface) -> Router {
    let mut routes = Router::new()
        .route(PEER_FENCE_PATH, post(peer_fence))
        .route(PEER_FAILSAFE_PATH, post(peer_failsafe))
        .route("/admin/cede", post(cede))
        .route("/admin/status", get(status));
    match surface {
        Surface::Admin => {
            routes = routes
                .route("/admin/failover", post(failover))
                .route("/admin/unblock", post(unblock))
                .route("/admin/pause", post(pause))
                .route("/admin/resume", post(resume))
                .route("/admin/history", get(history))
                .route("/admin/check-fencing", post(check_fencing));
        }
        Surface::Peer => {}
    }
    // A layer on the whole router: unknown paths need the secret too, so they reveal nothing.
    routes.layer(middleware::from_fn_with_state(state.clone(), require_bearer)).with_state(state)
}

/// The listeners the admin server runs on, bound by the caller.
#[derive(Debug)]
pub struct AdminListeners {
    /// The admin listener (bound to `listen`).
    pub admin: TcpListener,
    /// The peer listener (bound to `peer_listen`), when the settings have one.
    pub peer: Option<TcpListener>,
}

impl AdminListeners {
    /// Binds `listen` and, if set, `peer_listen`.
    pub async fn bind(settings: &AdminSettings) -> io::Result<Self> {
        let admin = TcpListener::bind(settings.listen).await?;
        let peer = match settings.peer_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        Ok(AdminListeners { admin, peer })
    }
}

/// The admin server, ready to serve: settings checked, secret read, TLS material loaded.
/// Build it before starting the agent so bad settings stop it at start-up.
#[derive(Clone)]
pub struct AdminServer {
    state: AdminState,
    tls: Option<TlsAcceptor>,
    separate_peer: bool,
}

impl fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdminServer")
            .field("tls", &self.tls.is_some())
            .field("separate_peer", &self.separate_peer)
            .finish()
    }
}

impl AdminServer {
    /// Validates `settings`, reads the secret and the TLS material.
    pub fn new(
        settings: &AdminSettings,
        control: mpsc::Sender<ControlRequest>,
        status: Arc<Mutex<AgentStatus>>,
    ) -> Result<Self, AdminError> {
        settings.validate()?;
        let secret = settings.load_secret()?;
        let tls = settings.tls_acceptor()?;
        let state = AdminState {
            control,
            status,
            secret,
            request_timeout: Duration::from_millis(settings.request_timeout_ms),
            failover_timeout: Duration::from_millis(settings.failover_timeout_ms),
            check_now: None,
        };
        Ok(AdminServer { state, tls, separate_peer: settings.peer_listen.is_some() })
    }

    /// Serves `POST /admin/check-fencing` through `checks` (without it, that request is
    /// answered 503: the agent checks no fencing).
    pub fn with_fence_checks(mut self, checks: CheckNow) -> Self {
        self.state.check_now = Some(checks);
        self
    }

    /// Serves until `shutdown` completes, then stops accepting and gives open requests
    /// [`referee_http_serve::DRAIN_TIMEOUT`] to finish.
    pub async fn serve(
        self,
        listeners: AdminListeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        if self.separate_peer != listeners.peer.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "admin: bind a peer listener exactly when `admin.peer_listen` is set",
            ));
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let stopper = tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let admin = serve_listener(
            "admin API",
            listeners.admin,
            router(self.state.clone(), Surface::Admin),
            self.tls.clone(),
            MAX_CONNECTIONS,
            stop_rx.clone(),
        );
        let result = match listeners.peer {
            Some(peer) => {
                let peer = serve_listener(
                    "peer API",
                    peer,
                    router(self.state.clone(), Surface::Peer),
                    self.tls.clone(),
                    MAX_CONNECTIONS,
                    stop_rx,
                );
                tokio::try_join!(admin, peer).map(|_| ())
            }
            None => admin.await,
        };
        stopper.abort();
        result
    }
}

/// Checks `settings`, then serves the admin API (and the peer API) on `listeners` until
/// `shutdown` completes. Refused settings come back as [`io::ErrorKind::InvalidInput`]; prefer
/// [`AdminServer::new`] at start-up to get them as [`AdminError`].
pub async fn serve_admin(
    settings: &AdminSettings,
    listeners: AdminListeners,
    control: mpsc::Sender<ControlRequest>,
    status: Arc<Mutex<AgentStatus>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let server =
        AdminServer::new(settings, control, status).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    server.serve(listeners, shutdown).await
}
