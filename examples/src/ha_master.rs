//! A demo master that speaks the master HA protocol: what a failover agent's HTTP adapter
//! (`referee_failover_agent::adapter::HttpAdapter`) manages.
//!
//! Run it in-process with [`run`] (a bound listener, a [`HaMasterConfig`], a shutdown future),
//! or as `referee demo-master`.
//!
//! # Endpoints
//!
//! The HA protocol (paths and bodies from [`referee_fencing::protocol`]):
//!
//! - `GET /ha/health`: `200` when healthy, `503 {"reason": ...}` when switched unhealthy.
//! - `GET /ha/state`: `{"state": "active" | "standby" | "initializing", "token": N}`.
//! - `POST /ha/active {"token": N}`: become active. Refused with `409` if `N` is lower than
//!   the highest token seen, with `503` while initializing; an equal token is a retry and
//!   answers `200` again. A higher token is written to the state file and synced to disk
//!   **before** the master answers or becomes active, so it survives a restart.
//! - `POST /ha/standby {"token": N}`: become standby (also ends the initializing phase: a
//!   demoted master is standby by definition); record `N` if higher, persisted the same way.
//!   Answers the new status.
//!
//! For tests and demos:
//!
//! - `POST /test/unhealthy` (optional body `{"reason": ...}` or text), `POST /test/healthy`:
//!   the health switch.
//! - `POST /write {"key": ..., "value": ...}`: store a value; `200 {"key", "seq", "token"}`
//!   only when the master is active **and** its self-enforced lease (if configured) is valid,
//!   otherwise `503 {"reason": ...}`. `seq` counts accepted writes since start, `token` is the
//!   token the master was active under, for split-brain checks.
//! - `GET /read?key=K`: `200 {"key", "value"}` or `404 {"reason": ...}`.
//!
//! # The self-enforced lease
//!
//! With `lease:` configured, the master polls its agent's `GET <lease.url>` every
//! `poll_interval_ms` (and at once after a promotion). An answer `{"token": N,
//! "valid_for_ms": M}` sets `writable_until = (time this poll was sent) + M`. The send time,
//! not the receive time, is used because the agent's `M` counts from when it answered, which
//! is later: the master's lease therefore always ends before the agent's. Each answer replaces
//! the previous one (`M = 0` ends the lease at once). A lease only counts if its `N` is the
//! token the master was promoted with.
//!
//! When the lease runs out, the master **stays `active` but refuses every write** (`503`,
//! "lease expired"). It does not step down by itself: the role is the agent's to change, and
//! when the agent's lease answers resume, writes resume without a new promotion. The property
//! that matters holds either way: no write is accepted after the lease's end, even if the
//! agent hangs or is gone (an unanswered poll extends nothing).
//!
//! Lease time is measured on `CLOCK_BOOTTIME`, which keeps counting while the machine is
//! suspended; a clock that stops during suspend would let a lease outlive itself.
//!
//! # Configuration
//!
//! ```yaml
//! node_id: db1                 # for logs (default "master")
//! state_file: /var/lib/demo/ha-state.json   # highest token seen: {"token": N}
//! init_ms: 0                   # initializing phase before standby (default 0: straight standby)
//! lease:                       # optional self-enforced lease
//!   url: http://127.0.0.1:9100/lease
//!   poll_interval_ms: 200      # default 200
//!   timeout_ms: 1000           # per poll (default 1000)
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use referee_fencing::protocol::{HA_ACTIVE_PATH, HA_HEALTH_PATH, HA_STANDBY_PATH, HA_STATE_PATH};
use referee_fencing::{FencingToken, HaState, HaStatus, TokenRequest};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::{Mutex, Notify};

fn default_node_id() -> String {
    "master".into()
}

fn default_poll_interval_ms() -> u64 {
    200
}

fn default_poll_timeout_ms() -> u64 {
    1000
}

/// The demo master's configuration (see the module documentation for the YAML shape).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HaMasterConfig {
    /// A name for logs.
    #[serde(default = "default_node_id")]
    pub node_id: String,
    /// Where the highest token seen is kept across restarts.
    pub state_file: PathBuf,
    /// How long to report `initializing` after start before becoming standby; 0: at once.
    #[serde(default)]
    pub init_ms: u64,
    /// The self-enforced lease; without it, an active master accepts writes until demoted.
    #[serde(default)]
    pub lease: Option<LeaseConfig>,
}

/// `lease:`: where and how often to ask the agent for the lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// The agent's lease endpoint, in full (`http://127.0.0.1:9100/lease`).
    pub url: String,
    /// Time between two polls.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Deadline of one poll.
    #[serde(default = "default_poll_timeout_ms")]
    pub timeout_ms: u64,
}

impl HaMasterConfig {
    /// A configuration with defaults: no initializing phase, no lease.
    pub fn new(state_file: impl Into<PathBuf>) -> Self {
        HaMasterConfig { node_id: default_node_id(), state_file: state_file.into(), init_ms: 0, lease: None }
    }

    /// Checks every field; the error names the bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.node_id.trim().is_empty() {
            bail!("node_id: must not be blank");
        }
        if self.state_file.as_os_str().is_empty() {
            bail!("state_file: must name a file");
        }
        if let Some(lease) = &self.lease {
            let url =
                reqwest::Url::parse(&lease.url).with_context(|| format!("lease.url: `{}` is not a URL", lease.url))?;
            if !matches!(url.scheme(), "http" | "https") {
                bail!("lease.url: `{}` must be an http:// or https:// URL", lease.url);
            }
            if lease.poll_interval_ms == 0 {
                bail!("lease.poll_interval_ms: must be greater than 0");
            }
            if lease.timeout_ms == 0 {
                bail!("lease.timeout_ms: must be greater than 0");
            }
        }
        Ok(())
    }
}

/// The agent's answer to `GET <lease.url>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// The token the agent holds the active lock with.
    pub token: FencingToken,
    /// How long from the agent's answer the master may keep accepting writes (may be 0).
    pub valid_for_ms: u64,
}

/// Body of `POST /write`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteRequest {
    /// The key.
    pub key: String,
    /// Any JSON value.
    pub value: serde_json::Value,
}

/// Answer to an accepted `POST /write`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteAccepted {
    /// The key written.
    pub key: String,
    /// How many writes this master has accepted since it started, this one included.
    pub seq: u64,
    /// The token the master was active under when it accepted the write.
    pub token: FencingToken,
}

/// Answer to `GET /read`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReadAnswer {
    /// The key.
    pub key: String,
    /// Its value.
    pub value: serde_json::Value,
}

/// Body of every refusal: `{"reason": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Why.
    pub reason: String,
}

/// Content of the state file.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct StateFile {
    token: FencingToken,
}

/// A point on `CLOCK_BOOTTIME` (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct BootTime(Duration);

impl BootTime {
    fn now() -> Self {
        use nix::time::{clock_gettime, ClockId};
        let ts = clock_gettime(ClockId::CLOCK_BOOTTIME)
            .or_else(|_| clock_gettime(ClockId::CLOCK_MONOTONIC))
            .expect("the kernel provides a monotonic clock");
        BootTime(Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32))
    }

    fn plus(self, d: Duration) -> Self {
        BootTime(self.0 + d)
    }
}

/// The lease as last answered.
#[derive(Debug, Clone, Copy)]
struct Lease {
    token: FencingToken,
    writable_until: BootTime,
}

/// Everything that changes, behind one lock: a write is checked and applied under the same
/// lock as promotions and lease updates, so no write slips in after a demotion or a lease end
/// that the master has already seen.
#[derive(Debug)]
struct Inner {
    role: HaState,
    /// When the initializing phase ends (meaningful while `role` is initializing).
    init_until: BootTime,
    /// The highest token seen; on disk before it is acted on.
    token: FencingToken,
    /// `Some(reason)` when switched unhealthy.
    unhealthy: Option<String>,
    lease: Option<Lease>,
    store: BTreeMap<String, serde_json::Value>,
    seq: u64,
}

impl Inner {
    /// The role now, ending the initializing phase if its time has come.
    fn role(&mut self, now: BootTime, node: &str) -> HaState {
        if self.role == HaState::Initializing && now >= self.init_until {
            self.role = HaState::Standby;
            tracing::info!(node, "initialized: standby");
        }
        self.role
    }

    fn status(&self) -> HaStatus {
        HaStatus { state: self.role, token: self.token }
    }
}

struct Master {
    config: HaMasterConfig,
    inner: Mutex<Inner>,
    /// Wakes the lease poller early (after a promotion).
    poll_now: Notify,
}

impl Master {
    fn node(&self) -> &str {
        &self.config.node_id
    }

    /// Records `token` as the highest seen: on disk first, then in memory.
    async fn raise_token(&self, inner: &mut Inner, token: FencingToken) -> Result<(), Response> {
        if token <= inner.token {
            return Ok(());
        }
        let path = self.config.state_file.clone();
        let written = tokio::task::spawn_blocking(move || persist_token(&path, token))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r);
        match written {
            Ok(()) => {
                inner.token = token;
                Ok(())
            }
            Err(e) => {
                tracing::error!(node = self.node(), %token, "cannot persist the token: {e}");
                Err(refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot persist token {token}: {e}")))
            }
        }
    }
}

fn refuse(code: StatusCode, reason: impl Into<String>) -> Response {
    (code, Json(Refusal { reason: reason.into() })).into_response()
}

/// Writes the state file atomically and durably: temporary file, fsync, rename, fsync of the
/// directory. Only then may the token be acted on.
fn persist_token(path: &Path, token: FencingToken) -> std::io::Result<()> {
    let file_name = path.file_name().ok_or_else(|| std::io::Error::other("the state file path has no file name"))?;
    let mut tmp_name = file_name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(&StateFile { token }).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)?.sync_all()
}

/// Reads the highest token seen. A missing file means none; an unreadable one is an error: a
/// master must not forget a token it has promised to honour.
fn load_token(path: &Path) -> anyhow::Result<FencingToken> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let state: StateFile = serde_json::from_slice(&bytes)
                .with_context(|| format!("state file {} is corrupt; refusing to start", path.display()))?;
            Ok(state.token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FencingToken::NONE),
        Err(e) => Err(e).with_context(|| format!("cannot read state file {}", path.display())),
    }
}

/// Serves the demo master on `listener` until `shutdown` completes, then drains connections.
///
/// Fails at start if the configuration is invalid or the state file is unreadable.
pub async fn run(
    config: HaMasterConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    let token = load_token(&config.state_file)?;
    let now = BootTime::now();
    let role = if config.init_ms == 0 { HaState::Standby } else { HaState::Initializing };
    let master = Arc::new(Master {
        inner: Mutex::new(Inner {
            role,
            init_until: now.plus(Duration::from_millis(config.init_ms)),
            token,
            unhealthy: None,
            lease: None,
            store: BTreeMap::new(),
            seq: 0,
        }),
        poll_now: Notify::new(),
        config,
    });
    let addr = listener.local_addr().ok();
    tracing::info!(node = master.node(), ?addr, ?role, %token, "demo master started");
    let poller = master.config.lease.clone().map(|lease| tokio::spawn(poll_lease(master.clone(), lease)));
    let app = Router::new()
        .route(HA_HEALTH_PATH, get(health))
        .route(HA_STATE_PATH, get(state))
        .route(HA_ACTIVE_PATH, post(become_active))
        .route(HA_STANDBY_PATH, post(become_standby))
        .route("/test/unhealthy", post(switch_unhealthy))
        .route("/test/healthy", post(switch_healthy))
        .route("/write", post(write))
        .route("/read", get(read))
        .with_state(master.clone());
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    if let Some(poller) = poller {
        poller.abort();
        let _ = poller.await;
    }
    tracing::info!(node = master.node(), "demo master stopped");
    served.context("serving the demo master")
}

async fn health(State(m): State<Arc<Master>>) -> Response {
    match &m.inner.lock().await.unhealthy {
        Some(reason) => refuse(StatusCode::SERVICE_UNAVAILABLE, reason.clone()),
        None => (StatusCode::OK, "ok").into_response(),
    }
}

async fn state(State(m): State<Arc<Master>>) -> Response {
    let mut inner = m.inner.lock().await;
    inner.role(BootTime::now(), m.node());
    Json(inner.status()).into_response()
}

async fn become_active(State(m): State<Arc<Master>>, Json(TokenRequest { token }): Json<TokenRequest>) -> Response {
    let mut inner = m.inner.lock().await;
    let role = inner.role(BootTime::now(), m.node());
    if token < inner.token {
        tracing::warn!(node = m.node(), %token, highest = %inner.token, "refused a promotion with a stale token");
        return refuse(
            StatusCode::CONFLICT,
            format!("token {token} is lower than the highest token seen ({}); refusing to become active", inner.token),
        );
    }
    match role {
        HaState::Initializing => {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, "still initializing; cannot become active yet");
        }
        HaState::Active if token == inner.token => {
            tracing::debug!(node = m.node(), %token, "promotion retried: already active");
            return Json(inner.status()).into_response();
        }
        HaState::Active | HaState::Standby => {}
    }
    // Persist before becoming active: after a crash the token must still be known.
    if let Err(response) = m.raise_token(&mut inner, token).await {
        return response;
    }
    inner.role = HaState::Active;
    tracing::info!(node = m.node(), %token, "became active");
    // A lease granted for another token does not count; ask for a fresh one now.
    m.poll_now.notify_one();
    Json(inner.status()).into_response()
}

async fn become_standby(State(m): State<Arc<Master>>, Json(TokenRequest { token }): Json<TokenRequest>) -> Response {
    let mut inner = m.inner.lock().await;
    let was = inner.role(BootTime::now(), m.node());
    // Stepping down is always allowed; only a higher token is recorded.
    if let Err(response) = m.raise_token(&mut inner, token).await {
        return response;
    }
    inner.role = HaState::Standby;
    inner.lease = None;
    if was != HaState::Standby {
        tracing::info!(node = m.node(), %token, highest = %inner.token, ?was, "became standby");
    }
    Json(inner.status()).into_response()
}

async fn switch_unhealthy(State(m): State<Arc<Master>>, body: String) -> Response {
    let reason = match serde_json::from_str::<Refusal>(&body) {
        Ok(r) => r.reason,
        Err(_) if !body.trim().is_empty() => body.trim().to_string(),
        Err(_) => "switched unhealthy by POST /test/unhealthy".to_string(),
    };
    tracing::warn!(node = m.node(), %reason, "health switched off");
    m.inner.lock().await.unhealthy = Some(reason);
    StatusCode::OK.into_response()
}

async fn switch_healthy(State(m): State<Arc<Master>>) -> Response {
    tracing::info!(node = m.node(), "health switched on");
    m.inner.lock().await.unhealthy = None;
    StatusCode::OK.into_response()
}

async fn write(State(m): State<Arc<Master>>, Json(request): Json<WriteRequest>) -> Response {
    let mut inner = m.inner.lock().await;
    // Read the clock under the lock: a lease update cannot slip between check and write.
    let now = BootTime::now();
    match inner.role(now, m.node()) {
        HaState::Active => {}
        HaState::Standby => return refuse(StatusCode::SERVICE_UNAVAILABLE, "not active: standby"),
        HaState::Initializing => return refuse(StatusCode::SERVICE_UNAVAILABLE, "not active: initializing"),
    }
    if m.config.lease.is_some() {
        match inner.lease {
            None => return refuse(StatusCode::SERVICE_UNAVAILABLE, "active, but no lease from the agent yet"),
            Some(lease) if lease.token != inner.token => {
                return refuse(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("active with token {}, but the agent's lease is for token {}", inner.token, lease.token),
                )
            }
            Some(lease) if now >= lease.writable_until => {
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "active, but the lease expired: refusing writes")
            }
            Some(_) => {}
        }
    }
    inner.seq += 1;
    inner.store.insert(request.key.clone(), request.value);
    Json(WriteAccepted { key: request.key, seq: inner.seq, token: inner.token }).into_response()
}

/// `GET /read?key=`.
#[derive(Debug, Deserialize)]
struct ReadQuery {
    key: String,
}

async fn read(State(m): State<Arc<Master>>, Query(ReadQuery { key }): Query<ReadQuery>) -> Response {
    match m.inner.lock().await.store.get(&key) {
        Some(value) => Json(ReadAnswer { key, value: value.clone() }).into_response(),
        None => refuse(StatusCode::NOT_FOUND, format!("no value for key `{key}`")),
    }
}

/// Polls the agent's lease endpoint forever (the task is aborted at shutdown).
async fn poll_lease(m: Arc<Master>, config: LeaseConfig) {
    let http = match reqwest::Client::builder().timeout(Duration::from_millis(config.timeout_ms)).build() {
        Ok(client) => client,
        Err(e) => {
            // Without a client no lease is ever granted: writes stay refused, which is safe.
            tracing::error!(node = m.node(), "cannot build the lease client: {e}");
            return;
        }
    };
    let interval = Duration::from_millis(config.poll_interval_ms);
    let mut was_valid = false;
    loop {
        // Taken before sending: see the module documentation.
        let sent = BootTime::now();
        let answer = match http.get(&config.url).send().await {
            Ok(response) if response.status().is_success() => {
                response.json::<LeaseGrant>().await.map_err(|e| format!("unreadable lease answer: {e}"))
            }
            Ok(response) => Err(format!("lease endpoint answered {}", response.status())),
            Err(e) => Err(format!("lease endpoint unreachable: {e}")),
        };
        match answer {
            Ok(grant) => {
                let mut inner = m.inner.lock().await;
                let writable_until = sent.plus(Duration::from_millis(grant.valid_for_ms));
                inner.lease = Some(Lease { token: grant.token, writable_until });
                let valid = grant.valid_for_ms > 0 && grant.token == inner.token;
                if valid != was_valid {
                    tracing::info!(node = m.node(), token = %grant.token, valid_for_ms = grant.valid_for_ms, "lease {}", if valid { "granted" } else { "withdrawn" });
                }
                was_valid = valid;
            }
            // The previous lease stays as it was: it ends by itself.
            Err(reason) => tracing::warn!(node = m.node(), "{reason}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = m.poll_now.notified() => {}
        }
    }
}
