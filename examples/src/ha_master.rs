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
//! - `GET /ha/state`: `{"state": "active" | "standby" | "initializing", "token": N}`, and
//!   with a journal `"position": P`, the last journal sequence number applied (the replication
//!   position the agents' lag gate and ranking compare; absent before the first).
//! - `POST /ha/active {"token": N}`: become active. Refused with `409` if `N` is lower than
//!   the highest token seen, with `503` while initializing; an equal token is a retry and
//!   answers `200` again. A higher token is written to the state file and synced to disk
//!   **before** the master answers or becomes active, so it survives a restart. A token above
//!   the highest usable one (`FencingToken::MAX`, `i64::MAX / 2`) is refused with `400`.
//! - `POST /ha/standby {"token": N}`: become standby (also ends the initializing phase: a
//!   demoted master is standby by definition); record `N` if higher, persisted the same way
//!   (one above the highest usable token steps down all the same, is not recorded, and is
//!   answered `400`). Never refused its step-down: the body is read as bytes whatever its
//!   content type, and one without a readable token (not JSON, no `token`, not a whole number
//!   from 0) steps down all the same and is answered `400` naming what was wrong, nothing
//!   recorded. Answers the new status.
//!
//! For tests and demos, served only with `test_routes: true` in the configuration (off by
//! default; every other `/test/...` request is answered `404` saying so):
//!
//! - `POST /test/unhealthy` (optional body `{"reason": ...}` or text), `POST /test/healthy`:
//!   the health switch.
//! - `POST /write {"key": ..., "value": ...}`: store a value; `200 {"key", "seq", "token"}`
//!   only when the master is active **and** its self-enforced lease (if configured) is valid,
//!   otherwise `503 {"reason": ...}`. `seq` counts accepted writes since start, `token` is the
//!   token the master was active under, for split-brain checks.
//! - `GET /read?key=K`: `200 {"key", "value"}` or `404 {"reason": ...}`.
//! - `GET /lease/status`: the lease as this master holds it ([`LeaseStatus`]): the token it is
//!   for and the instant, on `CLOCK_BOOTTIME` in microseconds, after which the master takes no
//!   write. A checker on the same host compares it with when another master took its first
//!   write.
//!
//! # Journal mode: a small NameNode
//!
//! With `journal:` configured, the master keeps nothing it has not journaled. Every edit goes
//! first to a shared journal in the coordinator ([`crate::journal`]), guarded by the epoch
//! znode, and is applied to the in-memory state ([`crate::replica`]) only once the append
//! succeeded. A write is acknowledged only once it is in the journal.
//!
//! - `POST /ha/active {"token": N}`: after the checks above, **claim, then catch up, then
//!   serve**: claim the epoch with `N` (refused with `409` if the epoch holds a higher token;
//!   the master stays standby), read the journal to its end on the same session and apply it,
//!   and only then become active and answer `200`.
//! - `POST /fs/mkdir {"path", "write_id"?}`, `POST /fs/create {"path", "data", "write_id"?}`,
//!   `POST /fs/delete {"path", "recursive"?, "write_id"?}`: namespace edits
//!   ([`crate::namespace`]), gated like `POST /write` (active, lease valid). An edit that
//!   cannot apply is refused before it is journaled (`400`, `404` or `409`). Accepted:
//!   `200 {"write_id", "seq", "token"}` ([`EditAccepted`]), `seq` being the journal sequence
//!   number. A `write_id` already in the journal answers its first acknowledgement again.
//! - `POST /write {"key", "value", "write_id"?}` is an edit too; its `seq` is the journal's.
//! - `GET /fs/list?path=`, `GET /fs/stat?path=`, `GET /fs/read?path=`, `GET /read?key=`:
//!   served from the replayed state by active and standby alike (a standby's may lag by its
//!   tailing delay).
//! - `GET /journal/status`: `{"applied_seq", "era_token", "era_node"}` ([`JournalStatus`]).
//! - `POST /test/slow {"delay_ms", "count"}`: the next `count` `/ha/health` answers come
//!   `delay_ms` late (a slow master, not a dead one).
//! - `POST /test/pause-tail`, `POST /test/resume-tail`: stop and restart tailing the journal,
//!   so a standby falls behind (its `position` stops) while the active goes on; a claim on
//!   promotion still reads the journal to its end.
//! - `POST /test/force-write {"key", "value", "write_id"?}`: a put that skips the role and
//!   lease checks but not the journal's guard, so a test can make a deposed master try.
//!
//! Every append is `multi(check(epoch, claimed version), create(sequential edit))`:
//!
//! - **BadVersion**: another master has claimed. The master steps down to standby (unlike a
//!   lapsed lease, this is proof that it is no longer the active) and answers
//!   `503 {"reason": "deposed: ..."}`; the write is not acknowledged.
//! - **ConnectionLoss or timeout**: the outcome is unknown. The master reads the journal back
//!   from the last applied entry and acknowledges if the write id is there; if not, it retries
//!   the append once (same write id), reads back again after another unknown outcome, and
//!   otherwise answers `503 "indeterminate: ..."` without acknowledging. A first attempt that
//!   lands after its read-back leaves a duplicate, which replay skips by write id.
//!
//! A tailer replays the journal in every role: each cycle reads every edit after the last one
//! applied, then waits on a children watch of the journal znode or `tail_interval_ms`,
//! whichever comes first. On a standby it keeps the namespace warm; on an active that reads a
//! claim marker with a higher token than its own it steps down before its next append would
//! be refused.
//!
//! Appends and claims are serialised by one lock, held across the coordinator calls (at most
//! two appends and two read-backs per write, each bounded by `op_timeout_ms`), so a promotion
//! waits for the write in flight.
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
//! test_routes: false           # serve the /test/... endpoints (default false: tests and demos only)
//! lease:                       # optional self-enforced lease
//!   url: http://127.0.0.1:9100/lease
//!   poll_interval_ms: 200      # default 200
//!   timeout_ms: 1000           # per poll (default 1000)
//! journal:                     # optional shared journal (see crate::journal::JournalConfig)
//!   connect: 127.0.0.1:2181    # the coordinator
//!   path: /demo/journal        # edits are its sequential children
//!   epoch_path: /demo/epoch    # the epoch znode, outside `path`; never deleted
//!   session_timeout_ms: 10000  # default 10000
//!   op_timeout_ms: 2000        # deadline of one coordinator call (default 2000)
//!   tail_interval_ms: 1000     # the tailer re-reads at least this often (default 1000)
//! ```
//!
//! Without `journal:` the master keeps writes in memory as described above, and the `/fs`,
//! `/journal` and `/test/force-write` endpoints are not served.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
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
use tokio::task::JoinHandle;

use crate::journal::{Claim, Edit, EditOp, Journal, JournalConfig, JournalEntry, JournalError};
use crate::namespace::{FileStatus, FsError, FsOp};
use crate::replica::{Applied, Replica, WriteRecord};
use crate::verdict::{AckRecord, Acknowledged};

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
    /// The shared journal in the coordinator; without it, writes are kept in memory only and
    /// the namespace API is not served.
    #[serde(default)]
    pub journal: Option<JournalConfig>,
    /// Serve the `/test/...` endpoints, which switch health off, slow it down, pause the
    /// tailer and force writes past the role checks. For tests and demos only: off by default.
    #[serde(default)]
    pub test_routes: bool,
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
        HaMasterConfig {
            node_id: default_node_id(),
            state_file: state_file.into(),
            init_ms: 0,
            lease: None,
            journal: None,
            test_routes: false,
        }
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
        if let Some(journal) = &self.journal {
            journal.validate().map_err(|e| anyhow::anyhow!("journal.{e}"))?;
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
    /// With a journal: the client's id for this write, the same on a retry (generated if
    /// absent). Ignored without a journal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<String>,
}

/// Answer to an accepted `POST /write`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteAccepted {
    /// The key written.
    pub key: String,
    /// How many writes this master has accepted since it started, this one included; with a
    /// journal, the edit's sequence number in the journal.
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

/// Answer to `GET /lease/status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// The master's role now.
    pub role: HaState,
    /// The token the master was last promoted with (the highest it has seen).
    pub token: FencingToken,
    /// The token of the lease held, if any.
    pub lease_token: Option<FencingToken>,
    /// End, on `CLOCK_BOOTTIME` in microseconds, of the last lease that granted time for the
    /// token the master holds: no write has been or will be accepted at or after it unless a
    /// later lease moves it. A lease answer of zero ends the lease at once, so it grants no
    /// write and leaves this as it was (the end it reports is then later than the real one,
    /// never earlier). `None` while no lease has granted time for this token.
    pub writable_until_boot_us: Option<u64>,
    /// Whether a write would be accepted now.
    pub writable: bool,
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
    /// The end of the last lease that granted time for `token` (see [`LeaseStatus`]).
    granted_until: Option<BootTime>,
    store: BTreeMap<String, serde_json::Value>,
    seq: u64,
    /// Counts every change to standby, so that a promotion can tell it was demoted while it
    /// was claiming the journal.
    demotions: u64,
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

    fn become_standby(&mut self) {
        self.role = HaState::Standby;
        self.lease = None;
        self.demotions += 1;
    }

    /// Why the master may not take a write now, if it may not: it must be active, with a valid
    /// lease when one is configured. Every such refusal is a `503`.
    fn unwritable(&mut self, now: BootTime, config: &HaMasterConfig) -> Option<String> {
        match self.role(now, &config.node_id) {
            HaState::Active => {}
            HaState::Standby => return Some("not active: standby".into()),
            HaState::Initializing => return Some("not active: initializing".into()),
        }
        // Without a configured lease, the role alone decides.
        let _configured = config.lease.as_ref()?;
        match self.lease {
            None => Some("active, but no lease from the agent yet".into()),
            Some(lease) if lease.token != self.token => {
                Some(format!("active with token {}, but the agent's lease is for token {}", self.token, lease.token))
            }
            Some(lease) if now >= lease.writable_until => Some("active, but the lease expired: refusing writes".into()),
            Some(_) => None,
        }
    }
}

struct Master {
    config: HaMasterConfig,
    inner: Mutex<Inner>,
    /// Wakes the lease poller early (after a promotion).
    poll_now: Notify,
    /// Journal mode (`journal:` configured).
    journaled: Option<Journaled>,
    /// `POST /test/slow`: delay the next this-many `/ha/health` answers by this long.
    slow_health: std::sync::Mutex<(Duration, u32)>,
}

impl Master {
    fn node(&self) -> &str {
        &self.config.node_id
    }

    /// Records `token` as the highest seen: on disk first, then in memory.
    async fn raise_token(&self, inner: &mut Inner, token: FencingToken) -> Result<(), Response> {
        self.save_token(inner, token)
            .await
            .map_err(|e| refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot persist token {token}: {e}")))
    }

    /// Records a higher token, saved first; the error says why it could not be saved.
    async fn save_token(&self, inner: &mut Inner, token: FencingToken) -> Result<(), String> {
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
                // A lease for the old token lets no write through any more.
                inner.granted_until = None;
                Ok(())
            }
            Err(e) => {
                tracing::error!(node = self.node(), %token, "cannot persist the token: {e}");
                Err(e.to_string())
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

/// Serves the demo master on `listener` until `shutdown` completes, then gives open requests
/// [`referee_http_serve::DRAIN_TIMEOUT`] to finish.
///
/// Fails at start if the configuration is invalid, the state file is unreadable, or (with a
/// journal) the coordinator cannot be reached within the session timeout plus one op timeout.
pub async fn run(
    config: HaMasterConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    let token = load_token(&config.state_file)?;
    let journaled = match &config.journal {
        Some(journal) => Some(Journaled::connect(journal.clone(), &config.node_id).await?),
        None => None,
    };
    let now = BootTime::now();
    let role = if config.init_ms == 0 { HaState::Standby } else { HaState::Initializing };
    let master = Arc::new(Master {
        inner: Mutex::new(Inner {
            role,
            init_until: now.plus(Duration::from_millis(config.init_ms)),
            token,
            unhealthy: None,
            lease: None,
            granted_until: None,
            store: BTreeMap::new(),
            seq: 0,
            demotions: 0,
        }),
        poll_now: Notify::new(),
        journaled,
        config,
        slow_health: std::sync::Mutex::new((Duration::ZERO, 0)),
    });
    let addr = listener.local_addr().ok();
    tracing::info!(node = master.node(), ?addr, ?role, %token, "demo master started");
    let poller = master.config.lease.clone().map(|lease| tokio::spawn(poll_lease(master.clone(), lease)));
    let tailer = master.journaled.is_some().then(|| tokio::spawn(tail_journal(master.clone())));
    let mut app = Router::new()
        .route(HA_HEALTH_PATH, get(health))
        .route(HA_STATE_PATH, get(state))
        .route(HA_ACTIVE_PATH, post(become_active))
        .route(HA_STANDBY_PATH, post(become_standby))
        .route("/write", post(write))
        .route("/read", get(read))
        .route("/lease/status", get(lease_status));
    if master.journaled.is_some() {
        app = app
            .route("/fs/mkdir", post(fs_mkdir))
            .route("/fs/create", post(fs_create))
            .route("/fs/delete", post(fs_delete))
            .route("/fs/list", get(fs_list))
            .route("/fs/stat", get(fs_stat))
            .route("/fs/read", get(fs_read))
            .route("/journal/status", get(journal_status));
    }
    if master.config.test_routes {
        app = app
            .route("/test/unhealthy", post(switch_unhealthy))
            .route("/test/slow", post(switch_slow))
            .route("/test/healthy", post(switch_healthy));
        if master.journaled.is_some() {
            app = app
                .route("/test/force-write", post(force_write))
                .route("/test/pause-tail", post(pause_tail))
                .route("/test/resume-tail", post(resume_tail));
        }
    } else {
        app = app.route("/test/*rest", axum::routing::any(test_routes_off));
    }
    let app = app.with_state(master.clone());
    // Served with the bounds of every Referee listener (a request's headers within 10 s, at
    // most 256 connections): clients holding connections idle must neither hold the master's
    // shutdown nor take the file descriptors its journal session and state file need.
    let served = referee_http_serve::serve_until("demo master", listener, app, shutdown).await;
    for task in [poller, tailer].into_iter().flatten() {
        task.abort();
        let _ = task.await;
    }
    tracing::info!(node = master.node(), "demo master stopped");
    served.context("serving the demo master")
}

async fn test_routes_off() -> Response {
    refuse(
        StatusCode::NOT_FOUND,
        "the /test/... endpoints are off: set `test_routes: true` in the configuration to serve them",
    )
}

async fn health(State(m): State<Arc<Master>>) -> Response {
    let delay = {
        let mut slow = m.slow_health.lock().unwrap_or_else(PoisonError::into_inner);
        if slow.1 > 0 {
            slow.1 -= 1;
            Some(slow.0)
        } else {
            None
        }
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    match &m.inner.lock().await.unhealthy {
        Some(reason) => refuse(StatusCode::SERVICE_UNAVAILABLE, reason.clone()),
        None => (StatusCode::OK, "ok").into_response(),
    }
}

/// The body of `GET /ha/state`: the protocol's status and the optional replication position.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StateReport {
    /// Role and token.
    #[serde(flatten)]
    pub status: HaStatus,
    /// The last journal sequence number applied; absent without a journal or before the first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

async fn state(State(m): State<Arc<Master>>) -> Response {
    let status = {
        let mut inner = m.inner.lock().await;
        inner.role(BootTime::now(), m.node());
        inner.status()
    };
    let position = with_replica(&m, |r| r.applied()).flatten();
    Json(StateReport { status, position }).into_response()
}

async fn become_active(State(m): State<Arc<Master>>, Json(TokenRequest { token }): Json<TokenRequest>) -> Response {
    if token > FencingToken::MAX {
        return refuse(StatusCode::BAD_REQUEST, above_max(token));
    }
    if let Some(j) = &m.journaled {
        return become_active_journaled(&m, j, token).await;
    }
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

/// Why `token`, above [`FencingToken::MAX`], is refused.
fn above_max(token: FencingToken) -> String {
    format!(
        "token {token} is above the highest usable token {}; a genuine token is never that high (look for who sent it)",
        FencingToken::MAX
    )
}

/// `POST /ha/standby`. Never refused its step-down: the body is taken as bytes whatever its
/// content type (a JSON extractor would answer 415 or 422 before this ran, leaving an active
/// master active), the master steps down first, and only then is the token read. A body with no
/// readable token, or one above [`FencingToken::MAX`], is answered 400 saying what was wrong,
/// with nothing recorded; the step-down stands. The step-down and the recording happen under
/// one hold of the master's lock, so no promotion slips in between them.
async fn become_standby(State(m): State<Arc<Master>>, body: Result<Bytes, BytesRejection>) -> Response {
    let mut inner = m.inner.lock().await;
    let was = inner.role(BootTime::now(), m.node());
    // Stepping down is always allowed, first; only a higher token is recorded. One that cannot
    // be saved is still kept in memory (refusing older tokens while this process runs), and
    // the answer says so: the step-down did happen.
    inner.become_standby();
    if was != HaState::Standby {
        tracing::info!(node = m.node(), ?was, "became standby");
    }
    let token = match body.map_err(|e| format!("the body could not be read ({e})")).and_then(|b| standby_token(&b)) {
        Ok(token) => token,
        Err(why) => {
            tracing::warn!(node = m.node(), "a step-down request without a usable token: {why}");
            return refuse(StatusCode::BAD_REQUEST, format!("stepped down, but {why}: nothing recorded"));
        }
    };
    if token > FencingToken::MAX {
        return refuse(StatusCode::BAD_REQUEST, format!("stepped down, but {}: not recorded", above_max(token)));
    }
    if let Err(why) = m.save_token(&mut inner, token).await {
        inner.token = inner.token.max(token);
        inner.granted_until = None;
        return refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("stepped down, but token {token} was not saved ({why}): it is held in memory only"),
        );
    }
    Json(inner.status()).into_response()
}

/// The token of a `POST /ha/standby` body (`{"token": N}`, N a whole number from 0), or why
/// it has none, naming the body.
fn standby_token(body: &[u8]) -> Result<FencingToken, String> {
    const SHOWN: usize = 100;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(r#"the body is empty (send {"token": N})"#.into());
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(SHOWN)]);
    let shown = if body.len() > SHOWN { format!("`{text}...`") } else { format!("`{text}`") };
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| format!(r#"the body {shown} is not JSON ({e}); send {{"token": N}}"#))?;
    let TokenRequest { token } = serde_json::from_value(value).map_err(|e| {
        format!(r#"the body {shown} is not {{"token": N}} with N a whole number from 0 to {} ({e})"#, FencingToken::MAX)
    })?;
    Ok(token)
}

async fn lease_status(State(m): State<Arc<Master>>) -> Json<LeaseStatus> {
    let now = BootTime::now();
    let mut inner = m.inner.lock().await;
    let writable = inner.unwritable(now, &m.config).is_none();
    Json(LeaseStatus {
        role: inner.role(now, m.node()),
        token: inner.token,
        lease_token: inner.lease.map(|l| l.token),
        writable_until_boot_us: inner.granted_until.map(|t| t.0.as_micros() as u64),
        writable,
    })
}

/// Body of `POST /test/slow`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SlowRequest {
    delay_ms: u64,
    count: u32,
}

/// `POST /test/slow {"delay_ms", "count"}`: the next `count` health answers come `delay_ms`
/// late (an overloaded master, not a dead one).
async fn switch_slow(
    State(m): State<Arc<Master>>,
    Json(SlowRequest { delay_ms, count }): Json<SlowRequest>,
) -> Response {
    tracing::warn!(node = m.node(), delay_ms, count, "health answers slowed down");
    *m.slow_health.lock().unwrap_or_else(PoisonError::into_inner) = (Duration::from_millis(delay_ms), count);
    StatusCode::OK.into_response()
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
    if let Some(j) = &m.journaled {
        let op = EditOp::Put { key: request.key.clone(), value: request.value };
        return match submit(&m, j, op, request.write_id, Gate::RoleAndLease).await {
            Ok(ack) => Json(WriteAccepted { key: request.key, seq: ack.seq, token: ack.token }).into_response(),
            Err(response) => response,
        };
    }
    let mut inner = m.inner.lock().await;
    // Read the clock under the lock: a lease update cannot slip between check and write.
    if let Some(reason) = inner.unwritable(BootTime::now(), &m.config) {
        return refuse(StatusCode::SERVICE_UNAVAILABLE, reason);
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
    if let Some(j) = &m.journaled {
        return match j.replica().get(&key) {
            Some(value) => Json(ReadAnswer { key, value: value.clone() }).into_response(),
            None => refuse(StatusCode::NOT_FOUND, format!("no value for key `{key}`")),
        };
    }
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
                if valid {
                    inner.granted_until = Some(writable_until);
                }
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

// ---------------------------------------------------------------------------------------------
// Journal mode
// ---------------------------------------------------------------------------------------------

/// Body of `POST /fs/mkdir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MkdirRequest {
    /// The directory (missing parents are created too).
    pub path: String,
    /// The client's id for this write, the same on a retry (generated if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<String>,
}

/// Body of `POST /fs/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRequest {
    /// The file; its parent must be a directory.
    pub path: String,
    /// Its content.
    pub data: String,
    /// The client's id for this write, the same on a retry (generated if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<String>,
}

/// Body of `POST /fs/delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteRequest {
    /// What to delete.
    pub path: String,
    /// Whether a non-empty directory may be deleted.
    #[serde(default)]
    pub recursive: bool,
    /// The client's id for this write, the same on a retry (generated if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_id: Option<String>,
}

/// Answer to an acknowledged journaled write: it is in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditAccepted {
    /// The write id, as given or generated.
    pub write_id: String,
    /// The edit's sequence number in the journal.
    pub seq: u64,
    /// The token the edit was appended under.
    pub token: FencingToken,
}

impl From<&EditAccepted> for AckRecord {
    fn from(ack: &EditAccepted) -> Self {
        AckRecord { write_id: ack.write_id.clone(), token: ack.token }
    }
}

impl From<&EditAccepted> for Acknowledged {
    fn from(ack: &EditAccepted) -> Self {
        Acknowledged { write_id: ack.write_id.clone(), token: Some(ack.token), seq: Some(ack.seq) }
    }
}

/// `GET /fs/list?path=` and the others.
#[derive(Debug, Deserialize)]
struct PathQuery {
    path: String,
}

/// Answer to `GET /fs/read`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileData {
    /// The file.
    pub path: String,
    /// Its content.
    pub data: String,
}

/// Answer to `GET /journal/status`: how far this master has replayed the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalStatus {
    /// The last sequence number applied, `None` before the first.
    pub applied_seq: Option<u64>,
    /// The token of the era in force (the last claim marker applied).
    pub era_token: Option<FencingToken>,
    /// The node that claimed that era.
    pub era_node: Option<String>,
}

/// The journal, the state replayed from it, and this master's claim.
struct Journaled {
    journal: Journal,
    /// Serialises claims and appends: an append never interleaves with a claim and its
    /// catch-up, and this master's edits are applied in the order they were appended.
    writer: Mutex<Writer>,
    /// The state replayed from the journal; a std mutex, never held across an await.
    replica: std::sync::Mutex<Replica>,
    /// Generated write ids: node, start time, counter.
    nonce: u128,
    next_write: AtomicU64,
    /// The tailer skips its cycles while set (`POST /test/pause-tail`).
    tail_paused: std::sync::atomic::AtomicBool,
    /// Set while the replica may miss an edit of this master's that is in the journal: from
    /// each append until its outcome is applied (an unknown outcome, a gap that could not be
    /// read, or a handler dropped half-way leave it set). The next write reads the journal to
    /// its end before it is checked. Changed under the writer lock only.
    behind: std::sync::atomic::AtomicBool,
}

#[derive(Debug, Default)]
struct Writer {
    /// The last successful claim. Kept after a demotion, so that `POST /test/force-write` can
    /// show the journal refusing it once another master has claimed.
    claim: Option<Claim>,
}

/// Which checks a journaled write passes before reaching the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Active, with a valid lease if one is configured.
    RoleAndLease,
    /// None: `POST /test/force-write`. Only the journal's guard stands in the way.
    JournalOnly,
}

impl Journaled {
    async fn connect(config: JournalConfig, node_id: &str) -> anyhow::Result<Journaled> {
        let journal = Journal::connect(config, node_id).await?;
        Ok(Journaled {
            journal,
            writer: Mutex::new(Writer::default()),
            replica: std::sync::Mutex::new(Replica::new()),
            nonce: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()),
            next_write: AtomicU64::new(0),
            tail_paused: std::sync::atomic::AtomicBool::new(false),
            behind: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn replica(&self) -> std::sync::MutexGuard<'_, Replica> {
        self.replica.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn new_write_id(&self, node: &str) -> String {
        format!("{node}-{:x}-{}", self.nonce, self.next_write.fetch_add(1, Ordering::Relaxed))
    }
}

impl Master {
    /// Replays `entries` (in journal order) into the replica. A claim by a higher token than
    /// ours means another master owns the journal now: an active master steps down at once
    /// rather than at its next refused append.
    async fn take_in(&self, j: &Journaled, entries: &[JournalEntry]) {
        let mut newer: Option<(FencingToken, String)> = None;
        {
            let mut replica = j.replica();
            for entry in entries {
                let applied = replica.apply(entry);
                match &applied {
                    Applied::AlreadyApplied | Applied::Changed => {}
                    Applied::Claimed { token, node_id } => {
                        tracing::info!(node = self.node(), seq = entry.seq, "journal: {applied}");
                        newer = Some((*token, node_id.clone()));
                    }
                    Applied::Duplicate { .. } | Applied::Refused { .. } => {
                        tracing::info!(node = self.node(), seq = entry.seq, write_id = %entry.edit.write_id, "journal: {applied}")
                    }
                    Applied::StaleToken { .. } => {
                        tracing::error!(node = self.node(), seq = entry.seq, write_id = %entry.edit.write_id, "journal: {applied}")
                    }
                }
            }
        }
        if let Some((token, claimant)) = newer {
            let mut inner = self.inner.lock().await;
            if token > inner.token && inner.role == HaState::Active {
                inner.become_standby();
                tracing::warn!(node = self.node(), %token, %claimant, ours = %inner.token, "stepped down: a higher token claimed the journal");
            }
        }
    }

    /// Applies this master's own edit just appended at `seq`; if the replica is behind (a
    /// retried append landed twice, or an earlier outcome stayed unknown), reads the journal
    /// to its end first so that order is kept.
    async fn absorb_own(&self, j: &Journaled, seq: u64, edit: &Edit) -> Result<(), JournalError> {
        let next = {
            let replica = j.replica();
            if replica.applied().is_some_and(|a| a >= seq) {
                return Ok(());
            }
            replica.is_next(seq)
        };
        if next {
            self.take_in(j, &[JournalEntry { seq, edit: edit.clone() }]).await;
            return Ok(());
        }
        self.catch_up(j).await
    }

    /// Reads the journal from the last applied entry to its end and applies it.
    async fn catch_up(&self, j: &Journaled) -> Result<(), JournalError> {
        let after = j.replica().applied();
        let entries = j.journal.read_after(after).await?;
        self.take_in(j, &entries).await;
        Ok(())
    }

    /// The journal refused our append: another master has claimed. Step down; never
    /// acknowledge.
    async fn deposed(&self, j: &Journaled, e: &JournalError) -> Response {
        let holder = match j.journal.epoch().await {
            Ok(Some(record)) => format!("; the epoch is now held by token {} ({})", record.token, record.node_id),
            Ok(None) | Err(_) => String::new(),
        };
        let mut inner = self.inner.lock().await;
        if inner.role == HaState::Active {
            inner.become_standby();
        }
        tracing::warn!(node = self.node(), "deposed: {e}{holder}; stepped down to standby");
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("deposed: {e}{holder}; stepped down to standby, write not acknowledged"),
        )
    }
}

fn fs_refusal(e: FsError) -> Response {
    let code = match &e {
        FsError::InvalidPath { .. } | FsError::DeleteRoot => StatusCode::BAD_REQUEST,
        FsError::NotFound { .. } => StatusCode::NOT_FOUND,
        FsError::AlreadyExists { .. } | FsError::NotADirectory { .. } | FsError::NotEmpty { .. } => {
            StatusCode::CONFLICT
        }
    };
    refuse(code, e.to_string())
}

/// Claim → catch up → serve, before answering.
async fn become_active_journaled(m: &Master, j: &Journaled, token: FencingToken) -> Response {
    // Held to the end: no append of ours runs between the claim and the catch-up.
    let mut writer = j.writer.lock().await;
    let demotions = {
        let mut inner = m.inner.lock().await;
        let role = inner.role(BootTime::now(), m.node());
        if token < inner.token {
            tracing::warn!(node = m.node(), %token, highest = %inner.token, "refused a promotion with a stale token");
            return refuse(
                StatusCode::CONFLICT,
                format!(
                    "token {token} is lower than the highest token seen ({}); refusing to become active",
                    inner.token
                ),
            );
        }
        match role {
            HaState::Initializing => {
                return refuse(StatusCode::SERVICE_UNAVAILABLE, "still initializing; cannot become active yet");
            }
            HaState::Active if token == inner.token && writer.claim.is_some_and(|c| c.token == token) => {
                tracing::debug!(node = m.node(), %token, "promotion retried: already active");
                return Json(inner.status()).into_response();
            }
            HaState::Active | HaState::Standby => {}
        }
        if let Err(response) = m.raise_token(&mut inner, token).await {
            return response;
        }
        inner.demotions
    };
    // Claim and catch up on one session (`Journal::claim`).
    let applied = j.replica().applied();
    let refusal = match j.journal.claim(token, applied).await {
        Ok((claim, entries)) => {
            m.take_in(j, &entries).await;
            tracing::info!(node = m.node(), %token, version = claim.version, marker = claim.marker_seq, caught_up_to = ?j.replica().applied(), "claimed the journal");
            writer.claim = Some(claim);
            // Read to the end: nothing of ours can be missing.
            j.behind.store(false, Ordering::SeqCst);
            None
        }
        Err(e @ JournalError::Superseded { .. }) => {
            Some((StatusCode::CONFLICT, format!("{e}; refusing to become active")))
        }
        Err(e) => Some((StatusCode::SERVICE_UNAVAILABLE, format!("cannot claim the journal: {e}; staying standby"))),
    };
    let mut inner = m.inner.lock().await;
    if let Some((code, reason)) = refusal {
        // Whatever we held before, the epoch has moved on or may have.
        if inner.role == HaState::Active {
            inner.become_standby();
        }
        tracing::warn!(node = m.node(), %token, "promotion refused: {reason}");
        return refuse(code, reason);
    }
    if inner.demotions != demotions || inner.token != token {
        // The claim stands, harmlessly: writes need the active role, and the next claimant
        // supersedes it.
        return refuse(StatusCode::CONFLICT, "demoted while claiming the journal; staying standby");
    }
    inner.role = HaState::Active;
    tracing::info!(node = m.node(), %token, "became active");
    m.poll_now.notify_one();
    Json(inner.status()).into_response()
}

/// Journals one write and acknowledges it only once it is in the journal.
///
/// The order: gate (role and lease), validate against the replica, append with the guarded
/// multi, apply, answer. On an unknown outcome the journal is read back for the write id;
/// the append is retried once if the write is not there, and refused (never acknowledged) if
/// it is still unknown after that.
async fn submit(
    m: &Master,
    j: &Journaled,
    op: EditOp,
    write_id: Option<String>,
    gate: Gate,
) -> Result<EditAccepted, Response> {
    let writer = j.writer.lock().await;
    if gate == Gate::RoleAndLease {
        let mut inner = m.inner.lock().await;
        if let Some(reason) = inner.unwritable(BootTime::now(), &m.config) {
            return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, reason));
        }
    }
    let claim = writer
        .claim
        .ok_or_else(|| refuse(StatusCode::SERVICE_UNAVAILABLE, "this master has never claimed the journal"))?;
    let write_id = match write_id {
        Some(id) if id.is_empty() || id.len() > 256 => {
            return Err(refuse(StatusCode::BAD_REQUEST, "write_id: must be 1 to 256 bytes"))
        }
        Some(id) => id,
        None => j.new_write_id(m.node()),
    };
    // An edit is checked against the journal as it is, never against a replica that may miss
    // one of our own edits: checked against less, an edit could be acknowledged here and then
    // do nothing on replay.
    if j.behind.load(Ordering::SeqCst) {
        if let Err(e) = m.catch_up(j).await {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the journal could not be read to its end to check this edit ({e}); write not acknowledged"),
            ));
        }
        j.behind.store(false, Ordering::SeqCst);
    }
    {
        let replica = j.replica();
        // A client retrying a write that is already in the journal gets the same answer.
        if let Some(record) = replica.write_record(&write_id) {
            return answer(record, write_id).map_err(fs_refusal);
        }
        if let EditOp::Fs(op) = &op {
            replica.namespace().check(op).map_err(fs_refusal)?;
        }
    }
    let edit = Edit { write_id, token: claim.token, op };
    for attempt in 1..=2 {
        // Until this append's outcome is applied, the replica may miss it.
        j.behind.store(true, Ordering::SeqCst);
        let failure = match j.journal.append(&claim, &edit).await {
            Ok(seq) => {
                if attempt > 1 {
                    tracing::info!(node = m.node(), write_id = %edit.write_id, seq, "the retried append landed");
                }
                if let Err(e) = m.absorb_own(j, seq, &edit).await {
                    tracing::warn!(node = m.node(), seq, "cannot read the journal before our edit: {e}");
                    return Err(refuse(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "indeterminate: the write reached the journal (seq {seq}), but the journal before it \
                             could not be read ({e}), so how it applied is unknown; write not acknowledged"
                        ),
                    ));
                }
                j.behind.store(false, Ordering::SeqCst);
                let accepted = acknowledge_own(j, &edit.write_id, seq).await?;
                still_writable(m, gate, seq).await?;
                return Ok(accepted);
            }
            Err(e @ JournalError::TooLarge { .. }) => {
                j.behind.store(false, Ordering::SeqCst);
                return Err(refuse(StatusCode::PAYLOAD_TOO_LARGE, format!("{e}; write not acknowledged")));
            }
            Err(e @ JournalError::Deposed { .. }) => return Err(m.deposed(j, &e).await),
            Err(e) if e.is_indeterminate() => e,
            Err(e) => {
                tracing::error!(node = m.node(), write_id = %edit.write_id, "append failed: {e}");
                return Err(refuse(StatusCode::SERVICE_UNAVAILABLE, format!("journal: {e}; write not acknowledged")));
            }
        };
        tracing::warn!(node = m.node(), write_id = %edit.write_id, attempt, "append outcome unknown ({failure}); reading back");
        if let Err(e) = m.catch_up(j).await {
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("indeterminate: {failure}; reading back failed too ({e}); write not acknowledged"),
            ));
        }
        let found = j.replica().write_seq(&edit.write_id);
        if let Some(seq) = found {
            // Read to the end with our write in it: nothing of ours is missing. (A first
            // attempt landing later is a duplicate, which changes nothing.)
            j.behind.store(false, Ordering::SeqCst);
            tracing::info!(node = m.node(), write_id = %edit.write_id, seq, "read back: the append had landed");
            let accepted = acknowledge_own(j, &edit.write_id, seq).await?;
            still_writable(m, gate, seq).await?;
            return Ok(accepted);
        }
    }
    // `behind` stays set: an attempt may still land.
    Err(refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        "indeterminate: the append's outcome stayed unknown and the write was not found in the journal; \
         write not acknowledged",
    ))
}

/// The answer for a write id the replica has applied: acknowledged with where it first applied
/// (a write that landed twice reports its first copy), or refused as replay refused it.
fn answer(record: &WriteRecord, write_id: String) -> Result<EditAccepted, FsError> {
    match &record.refused {
        None => Ok(EditAccepted { write_id, seq: record.seq, token: record.token }),
        Some(e) => Err(e.clone()),
    }
}

/// How this master's own edit, applied through `seq`, turned out: `None` if replay did not
/// apply it at all (it reached the journal after another master's claim).
fn own_outcome(j: &Journaled, write_id: &str) -> Option<Result<EditAccepted, FsError>> {
    j.replica().write_record(write_id).map(|record| answer(record, write_id.to_string()))
}

/// [`own_outcome`] as the answer to the client.
async fn acknowledge_own(j: &Journaled, write_id: &str, seq: u64) -> Result<EditAccepted, Response> {
    match own_outcome(j, write_id) {
        Some(outcome) => outcome.map_err(fs_refusal),
        None => Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the write reached the journal (seq {seq}) after another master's claim; not acknowledged"),
        )),
    }
}

/// A write that reached the journal is acknowledged only if this master may still acknowledge
/// writes: one that stepped down, or whose lease ended, while the write was on its way
/// acknowledges nothing after it (the active reads the write from the journal).
async fn still_writable(m: &Master, gate: Gate, seq: u64) -> Result<(), Response> {
    if gate != Gate::RoleAndLease {
        return Ok(());
    }
    let mut inner = m.inner.lock().await;
    match inner.unwritable(BootTime::now(), &m.config) {
        None => Ok(()),
        Some(reason) => Err(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "indeterminate: the write reached the journal (seq {seq}), but meanwhile this master stopped \
                 taking writes ({reason}); not acknowledged here"
            ),
        )),
    }
}

async fn journaled_edit(m: &Master, op: EditOp, write_id: Option<String>, gate: Gate) -> Response {
    let Some(j) = &m.journaled else {
        return refuse(StatusCode::NOT_FOUND, "no journal configured");
    };
    match submit(m, j, op, write_id, gate).await {
        Ok(ack) => Json(ack).into_response(),
        Err(response) => response,
    }
}

async fn fs_mkdir(State(m): State<Arc<Master>>, Json(r): Json<MkdirRequest>) -> Response {
    journaled_edit(&m, EditOp::Fs(FsOp::Mkdir { path: r.path }), r.write_id, Gate::RoleAndLease).await
}

async fn fs_create(State(m): State<Arc<Master>>, Json(r): Json<CreateRequest>) -> Response {
    journaled_edit(&m, EditOp::Fs(FsOp::Create { path: r.path, data: r.data }), r.write_id, Gate::RoleAndLease).await
}

async fn fs_delete(State(m): State<Arc<Master>>, Json(r): Json<DeleteRequest>) -> Response {
    let op = EditOp::Fs(FsOp::Delete { path: r.path, recursive: r.recursive });
    journaled_edit(&m, op, r.write_id, Gate::RoleAndLease).await
}

/// `POST /test/force-write {key, value, write_id?}`: a put that skips the role and lease
/// checks, so a test can make a deposed master try to write. The journal's guard still
/// applies.
async fn force_write(State(m): State<Arc<Master>>, Json(r): Json<WriteRequest>) -> Response {
    journaled_edit(&m, EditOp::Put { key: r.key, value: r.value }, r.write_id, Gate::JournalOnly).await
}

/// Runs `f` on the replica; reads are served by active and standby alike (a standby's may
/// lag the journal by its tailing delay).
fn with_replica<T>(m: &Master, f: impl FnOnce(&Replica) -> T) -> Option<T> {
    m.journaled.as_ref().map(|j| f(&j.replica()))
}

async fn fs_list(State(m): State<Arc<Master>>, Query(PathQuery { path }): Query<PathQuery>) -> Response {
    match with_replica(&m, |r| r.namespace().list(&path)) {
        Some(Ok(list)) => Json::<Vec<FileStatus>>(list).into_response(),
        Some(Err(e)) => fs_refusal(e),
        None => refuse(StatusCode::NOT_FOUND, "no journal configured"),
    }
}

async fn fs_stat(State(m): State<Arc<Master>>, Query(PathQuery { path }): Query<PathQuery>) -> Response {
    match with_replica(&m, |r| r.namespace().stat(&path)) {
        Some(Ok(status)) => Json(status).into_response(),
        Some(Err(e)) => fs_refusal(e),
        None => refuse(StatusCode::NOT_FOUND, "no journal configured"),
    }
}

async fn fs_read(State(m): State<Arc<Master>>, Query(PathQuery { path }): Query<PathQuery>) -> Response {
    match with_replica(&m, |r| r.namespace().read(&path).map(str::to_string)) {
        Some(Ok(data)) => Json(FileData { path, data }).into_response(),
        Some(Err(e)) => fs_refusal(e),
        None => refuse(StatusCode::NOT_FOUND, "no journal configured"),
    }
}

async fn journal_status(State(m): State<Arc<Master>>) -> Response {
    let status = with_replica(&m, |r| JournalStatus {
        applied_seq: r.applied(),
        era_token: r.era().map(|e| e.token),
        era_node: r.era().map(|e| e.node_id.clone()),
    });
    match status {
        Some(status) => Json(status).into_response(),
        None => refuse(StatusCode::NOT_FOUND, "no journal configured"),
    }
}

/// Aborts a watch task when dropped, so that it never outlives the tailer (and the session).
struct WatchTask(JoinHandle<()>);

impl Drop for WatchTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn pause_tail(State(m): State<Arc<Master>>) -> Response {
    set_tail_paused(&m, true)
}

async fn resume_tail(State(m): State<Arc<Master>>) -> Response {
    set_tail_paused(&m, false)
}

fn set_tail_paused(m: &Master, paused: bool) -> Response {
    match &m.journaled {
        Some(j) => {
            j.tail_paused.store(paused, Ordering::SeqCst);
            tracing::info!(node = m.node(), paused, "journal tailing switched by a test");
            Json(serde_json::json!({"tail_paused": paused})).into_response()
        }
        None => refuse(StatusCode::NOT_FOUND, "no journal configured"),
    }
}

/// Tails the journal forever (aborted at shutdown): each cycle reads every edit after the
/// last applied one and applies it, then waits for the children watch or `tail_interval_ms`,
/// whichever comes first. The interval guarantees the next cycle if a watch event is lost.
/// It runs in every role: on a standby it keeps the namespace warm; on an active it notices
/// a newer claim before the next append would.
async fn tail_journal(m: Arc<Master>) {
    let Some(j) = m.journaled.as_ref() else { return };
    let interval = Duration::from_millis(j.journal.config().tail_interval_ms);
    let mut watch: Option<WatchTask> = None;
    loop {
        if j.tail_paused.load(Ordering::SeqCst) {
            // Paused by a test: the journal is not read, the next check comes an interval on.
            tokio::time::sleep(interval.min(Duration::from_millis(100))).await;
            continue;
        }
        let after = j.replica().applied();
        // The next edit exists already: read again without waiting.
        let mut again = false;
        let read = if watch.is_none() {
            j.journal.read_after_watching(after).await.map(|(entries, watcher)| {
                match watcher {
                    // In its own task: the library may panic on a watch whose session vanished.
                    Some(watcher) => {
                        watch = Some(WatchTask(tokio::spawn(async move {
                            watcher.changed().await;
                        })))
                    }
                    None => again = true,
                }
                entries
            })
        } else {
            j.journal.read_after(after).await
        };
        match read {
            Ok(entries) => m.take_in(j, &entries).await,
            Err(e) => tracing::warn!(node = m.node(), "cannot tail the journal: {e}"),
        }
        if again {
            continue;
        }
        let sleep = tokio::time::sleep(interval);
        match watch.as_mut() {
            Some(task) => tokio::select! {
                _ = &mut task.0 => watch = None,
                _ = sleep => {}
            },
            None => sleep.await,
        }
    }
}
