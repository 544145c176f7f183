//! The agent's driver: observes, asks [`decide`] what to do, does it, reports, and waits for
//! the next cycle. All judgement is in the decision core; this module only gathers facts and
//! carries out steps, each under a deadline.
//!
//! ```text
//!            ┌──────────── wake: timer, health change, lock watch, session change ─────────┐
//!            ▼                                                                            │
//!  observe (health report, lock, breadcrumb, members, lease) ─▶ decide ─▶ steps ─▶ report ┘
//! ```
//!
//! The coordinator session is (re)made by a background task so that cycles never stop: while
//! the coordinator is unreachable the lease still runs down and the master is still demoted in
//! time. Every answered coordinator request renews the lease ([`crate::lease`]) from the moment
//! it was *sent*, measured on the boot-time clock, and the lease guard, a task of its own,
//! demotes the master at lease end even if this loop is blocked.
//!
//! # Layout
//!
//! - this module: the loop, the memory kept between cycles, and the lease plumbing every part
//!   uses (renewal, the await limit, what the guard is told);
//! - `session`: making sessions, their end, and the lease guard;
//! - `observe`: reading everything the core looks at, and the history it needs;
//! - `execute`: carrying out the steps of a decision, and the handover;
//! - `control`: operators' and peers' requests, and shutdown.

mod control;
mod execute;
mod observe;
mod publish;
mod session;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use referee_fencing::{FenceOutcome, FenceTarget, Fencer, FencingToken, HaState, HaStatus, MethodOutcome};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::adapter::{build_adapter, AdapterContext, MasterAdapter};
use crate::clock::BootInstant;
use crate::config::AgentConfig;
use crate::control::ControlRequest;
use crate::decide::{
    decide, plan_handover, same_machine, track_promoted, Decision, Handover, Observation, Step, StepFailure,
};
use crate::election::{Acquired, Coordination, CoordinationConfig, ElectionError, LockWatch, Recovery, SessionWatch};
use crate::failsafe::{Answer, AnswerFacts, FailsafeRequest, FailsafeResponse, LockRead, RoundOutcome};
use crate::health::{run_health_monitor_woken, HealthReport};
use crate::lease::{GuardAction, GuardState, Lease};
use crate::model::{Breadcrumb, BreadcrumbView, LockRecord, LockView, Member, SessionView, TokenBase, TokenBaseView};
use crate::probes::{self, ProbeState};
use crate::status::{AgentStatus, Phases, Role};
use crate::timeline::Mark;
use crate::tokens::TokenHistory;
use session::{run_lease_guard, Connecting};

/// Why the agent stopped or could not start.
#[derive(Debug, Error)]
pub enum AgentError {
    /// The master adapter could not be built.
    #[error("master adapter: {0}")]
    Adapter(String),
    /// The fencing configuration could not be loaded (a secret file, say).
    #[error("fencing: {0}")]
    Fencing(String),
    /// The configuration is missing its fencing section.
    #[error("no fencing configured; the agent will not run without it")]
    NoFencing,
    /// Another agent runs with this node id, or credentials are refused: retrying cannot help.
    #[error("coordinator: {0}")]
    Coordinator(String),
    /// The probe server failed.
    #[error("probe server: {0}")]
    Probes(std::io::Error),
    /// The admin and peer API could not start.
    #[error("admin API: {0}")]
    Admin(String),
    /// The watchdog could not be opened.
    #[error("watchdog: {0}")]
    Watchdog(std::io::Error),
}

/// How often the loop tends the watchdog (and shows itself alive) while it waits on a step:
/// its interval, within 50 to 500 ms.
pub(crate) fn tend_period(loop_interval: Duration) -> Duration {
    loop_interval.clamp(Duration::from_millis(50), Duration::from_millis(500))
}

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// What the driver remembers between cycles. Everything here is either a measurement (when the
/// coordinator last answered) or the outcome of its own steps; none of it is a decision.
struct Memory {
    /// The session's lease, renewed from the send time of every answered request.
    lease: Lease,
    /// The warnings last logged for servers that may be staler than `max_staleness_ms`.
    staleness_warnings: Vec<String>,
    /// The most staleness any coordinator server has said it may have since the start.
    servers_staleness: Duration,
    /// The token this agent promoted its master with while the master may be active with it
    /// (see [`crate::decide::track_promoted`]).
    promoted: Option<FencingToken>,
    /// Every node seen holding the lock or named in a breadcrumb, with how to fence it; kept
    /// across sessions, at most [`SEEN_HOLDERS_KEPT`] of them.
    seen_holders: Vec<FenceTarget>,
    /// The last failed step of the current acquisition.
    failure: Option<StepFailure>,
    /// Stay out of the election until then.
    backoff_until: Option<BootInstant>,
    /// Members as last read.
    members: Vec<Member>,
    /// Cycles since the members were read.
    members_age: u32,
    /// Cycles since the scheduled switchover was read.
    schedule_age: u32,
    /// Paused by an operator's request to this agent (`/admin/pause`), until `/admin/resume`.
    operator_paused: bool,
    /// The cluster's pause record as last read (see [`crate::model::PauseRecord`]).
    cluster_pause: Option<crate::model::PauseRecord>,
    /// Cycles since the pause record was read.
    pause_age: u32,
    /// The cluster's settings last read that could be decoded: `None` before the first
    /// reading, then the record and its version, if there is one. A reload puts them over the
    /// new file.
    cluster_settings: Option<Option<(crate::model::ClusterSettingsRecord, i32)>>,
    /// This node's drain record as last read (see [`crate::model::DrainRecord`]).
    drained: Option<crate::model::DrainRecord>,
    /// Operators' confirmations that stood for a fence of this promotion (node, version), to
    /// remove once the breadcrumb names this node.
    confirmations_used: Vec<(String, i32)>,
    /// The targets (node, token of the term fenced) whose fencing chain this agent has seen
    /// end other than fenced, the latest [`CHAINS_FAILED_KEPT`].
    chains_failed: Vec<(String, FencingToken)>,
    /// Which change of the settings record was last acted on (its mzxid; `Some(None)`: there
    /// was none), so each change is applied, or refused and said, once.
    settings_seen: Option<Option<i64>>,
    /// Whether it has been read in the current session.
    pause_read: bool,
    /// When the lock was first seen free (for the detect phase).
    free_seen_at: Option<BootInstant>,
    /// Phase timing of the promotion under way.
    phases: Phases,
    /// The instants of the failover under way, for the role change it ends in.
    timeline: crate::timeline::Recorder,
    /// The lock was just won: run the next cycle (fence, breadcrumb, promote) at once instead
    /// of after the loop interval, which nothing else would cut short.
    cycle_again: bool,
    /// The last decision's reason.
    last_reason: String,
    /// The last logged decision's key, to log changes of decision only (not of its numbers).
    last_logged: crate::decide::LogKey,
    /// An operator's failover to this node, answered once this node is active or the deadline
    /// passes.
    pending_failover: Option<(Reply, BootInstant, BootInstant)>,
    /// Whether the member list has been read at least once.
    members_read: bool,
    /// The lock was given up (released, answered or not) since the cycle began: what the
    /// cycle observed of it no longer stands.
    lock_released: bool,
    /// The token history (see [`TokenHistory`]), kept across sessions.
    tokens: TokenHistory,
    /// The token the current acquisition has handed to a master.
    token_issued: Option<FencingToken>,
    /// Since when the master has been healthy without a break.
    healthy_since: Option<BootInstant>,
    /// No failback request before then.
    failback_not_before: Option<BootInstant>,
    /// Failsafe: the last confirmed round keeps the master active until then.
    failsafe_until: Option<BootInstant>,
    /// Failsafe: the round in flight and when it was sent.
    failsafe_round: Option<(BootInstant, tokio::task::JoinHandle<RoundOutcome>)>,
    /// Failsafe: when the last round was sent.
    failsafe_last_sent: Option<BootInstant>,
    /// A promise given to an active peer in failsafe mode: do not contend until then.
    promised: Option<crate::failsafe::Promise>,
    /// When this agent started: with failsafe on it keeps a promise from then
    /// ([`crate::failsafe::promise_at_start`]).
    started: BootInstant,
    /// The tokens above the usable bound the last cycle read (each is warned about once while
    /// it stays, not every cycle).
    tokens_ignored: Vec<FencingToken>,
    /// What the master answered to our last promote or demote, and when: newer than a health
    /// report whose check may have started before it.
    master_answer: Option<(crate::model::MasterStatus, BootInstant)>,
    /// The pending operator failover lifts the lag gate (`--allow-data-loss`).
    allow_data_loss: bool,
    /// The master has answered since the agent started (a self-fencing watchdog is not fed
    /// before: the master may be active from before the start).
    master_read: bool,
}

/// How many past holders the agent keeps (a bound against a coordinator that keeps handing
/// out new names).
const SEEN_HOLDERS_KEPT: usize = 64;

/// How many failed fencing chains an agent remembers (see `Memory::chains_failed`).
const CHAINS_FAILED_KEPT: usize = 16;

impl Memory {
    fn new(lease: Lease, started: BootInstant) -> Self {
        Memory {
            lease,
            staleness_warnings: Vec::new(),
            servers_staleness: Duration::ZERO,
            promoted: None,
            seen_holders: Vec::new(),
            failure: None,
            backoff_until: None,
            members: Vec::new(),
            schedule_age: 0,
            operator_paused: false,
            cluster_pause: None,
            pause_age: 0,
            cluster_settings: None,
            settings_seen: None,
            drained: None,
            confirmations_used: Vec::new(),
            chains_failed: Vec::new(),
            pause_read: false,
            members_age: 0,
            free_seen_at: None,
            phases: Phases::default(),
            timeline: crate::timeline::Recorder::default(),
            cycle_again: false,
            last_reason: String::new(),
            last_logged: crate::decide::LogKey::default(),
            pending_failover: None,
            members_read: false,
            lock_released: false,
            tokens: TokenHistory::default(),
            token_issued: None,
            healthy_since: None,
            failback_not_before: None,
            failsafe_until: None,
            failsafe_round: None,
            failsafe_last_sent: None,
            promised: None,
            started,
            tokens_ignored: Vec::new(),
            master_answer: None,
            allow_data_loss: false,
            master_read: false,
        }
    }

    /// Remembers a node seen holding the lock (or named in a breadcrumb), for fencing when the
    /// breadcrumb is lost.
    fn saw_holder(&mut self, target: &FenceTarget) {
        let mut target = target.clone();
        target.token = FencingToken(0);
        if self.seen_holders.iter().any(|t| t.node_id == target.node_id && same_machine(t, &target)) {
            return;
        }
        if self.seen_holders.len() >= SEEN_HOLDERS_KEPT {
            self.seen_holders.remove(0);
        }
        self.seen_holders.push(target);
    }
}

/// Where an operator's request is answered.
type Reply = oneshot::Sender<Result<String, crate::control::Declined>>;

/// The running agent.
struct Driver {
    /// The configuration in force: this agent's file, with the cluster's settings over it.
    cfg: AgentConfig,
    /// This agent's file as last loaded (at start or by a reload).
    file_cfg: AgentConfig,
    adapter: Arc<dyn MasterAdapter>,
    fencer: Arc<Fencer>,
    status: Arc<Mutex<AgentStatus>>,
    /// For the masters' HA endpoints.
    http: reqwest::Client,
    /// For other agents' peer API (`admin.peer_tls` when configured).
    peer_http: reqwest::Client,
    mem: Memory,
    /// This agent's admin/peer API base URL, published for peers.
    peer_url: Option<String>,
    /// The cluster's shared bearer secret for peer calls.
    peer_secret: Option<String>,
    /// Runs `on_role_change` hooks.
    role_hooks: crate::hooks::RoleChangeHooks,
    /// Fed after every cycle and during fences, as [`crate::watchdog::feed_verdict`] allows.
    watchdog: crate::watchdog::Watchdog,
    /// The health monitor's reports, for the watchdog's "monitor alive" (read during fences too).
    health_reports: watch::Receiver<HealthReport>,
    /// What the lease guard enforces: published on every renewal and after every cycle.
    guard: watch::Sender<GuardState>,
    /// Positions and candidacies read and published.
    pub_state: publish::Publication,
}

/// Runs the agent until `shutdown` completes: health monitor, probe server on `probe_listener`,
/// the coordinator session, and the decision loop. On shutdown an active agent demotes its
/// master before closing its session, so the lock is never released while the master serves.
pub async fn run(
    cfg: AgentConfig,
    probe_listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let (control_tx, control_rx) = mpsc::channel(16);
    run_with_control(cfg, probe_listener, control_tx, control_rx, shutdown).await
}

/// As [`run`], taking operator and peer requests from `control` (the admin API, when the
/// configuration has an `admin` section, sends through `control_tx`; so can the binary, for
/// SIGHUP). The admin/peer API's address is published in the lock and membership records so
/// peers can ask this agent to cede or to fence its master.
pub async fn run_with_control(
    cfg: AgentConfig,
    probe_listener: tokio::net::TcpListener,
    control_tx: mpsc::Sender<ControlRequest>,
    control: mpsc::Receiver<ControlRequest>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let context = AdapterContext {
        node_id: cfg.node_id.clone(),
        nodes: cfg.peers.len() + 1,
        monitor_interval: cfg.health.interval(),
    };
    let adapter = build_adapter(&cfg.master.adapter, &context).map_err(|e| AgentError::Adapter(e.to_string()))?;
    // Bounded by the adapter's own ceiling too (an OCF agent's timeout_ms).
    adapter
        .validate(tokio::time::Instant::now() + Duration::from_secs(60))
        .await
        .map_err(|e| AgentError::Adapter(format!("validating the master's configuration: {e}")))?;
    let fencing = cfg.fencing.clone().ok_or(AgentError::NoFencing)?;
    if cfg.failsafe.enabled {
        for (peer, _) in cfg.peer_api_urls().iter().filter(|(_, url)| url.is_none()) {
            warn!(
                peer = %peer,
                "failsafe: `peers` gives no peer_url for {peer}, so a failsafe round can ask it only at the address \
                 it registered; if it was not registered when the coordinator was last read, the round fails and \
                 the master is demoted"
            );
        }
    }
    let check_interval = Duration::from_millis(fencing.check_interval_ms);
    let fencer = Arc::new(Fencer::new(fencing).map_err(|e| AgentError::Fencing(e.to_string()))?);
    // Before anything can answer a peer: the promise kept from the start counts from here.
    let started = BootInstant::now();
    let status = Arc::new(Mutex::new(AgentStatus::new(&cfg.cluster, &cfg.node_id)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // Rounds of fencing checks: periodic unless `check_interval_ms` is 0, and asked for through
    // the admin API.
    let (ask_checks, check_asks) = crate::fence_checks::CheckNow::channel();
    // The admin and peer API: refused settings (secret, TLS) stop start-up here.
    let (peer_url, peer_secret, admin_server) = match &cfg.admin {
        None => (None, None, None),
        Some(settings) => {
            let server = crate::admin::AdminServer::new(settings, control_tx.clone(), status.clone())
                .map_err(|e| AgentError::Admin(e.to_string()))?
                .with_fence_checks(ask_checks.clone());
            let listeners = crate::admin::AdminListeners::bind(settings)
                .await
                .map_err(|e| AgentError::Admin(format!("binding {}: {e}", settings.listen)))?;
            let secret = settings.load_secret().map_err(|e| AgentError::Admin(e.to_string()))?;
            status.lock().unwrap_or_else(|p| p.into_inner()).admin_addr = Some(settings.admin_url());
            let handle = tokio::spawn(server.serve(listeners, stopped(stop_rx.clone())));
            (Some(settings.peer_url()), Some(secret.expose().to_string()), Some(handle))
        }
    };
    drop(control_tx);

    let (health_tx, health_rx) = watch::channel(HealthReport::initial());
    // With the master's pidfile known, its exit brings the next health check forward to the
    // moment it happens (the check still decides; see `exit_watch`).
    let check_now = Arc::new(tokio::sync::Notify::new());
    let exit_watch = cfg.master.pidfile.clone().filter(|_| cfg.health.watch_exit).map(|pidfile| {
        tokio::spawn(crate::exit_watch::watch_master_exits(
            pidfile,
            cfg.health.interval(),
            check_now.clone(),
            stopped(stop_rx.clone()),
        ))
    });
    let monitor = tokio::spawn(run_health_monitor_woken(
        adapter.clone(),
        cfg.health,
        check_now,
        health_tx,
        stopped(stop_rx.clone()),
    ));
    let probe_state =
        ProbeState { status: status.clone(), loop_interval: Duration::from_millis(cfg.election.loop_interval_ms) };
    let probe_server = tokio::spawn(probes::serve(probe_listener, probe_state, stopped(stop_rx.clone())));

    // Straight to the peers, never through a proxy named in the environment (the connect
    // deadline would measure the proxy, and the peer calls carry fencing decisions).
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
        .no_proxy()
        .build()
        .map_err(|e| AgentError::Adapter(e.to_string()))?;
    let peer_http = match &cfg.admin {
        Some(settings) => {
            settings.peer_client(Duration::from_millis(500)).map_err(|e| AgentError::Admin(e.to_string()))?
        }
        None => http.clone(),
    };
    let role_hooks = crate::hooks::RoleChangeHooks::start(cfg.hooks.on_role_change.clone(), &cfg.cluster, &cfg.node_id);
    let watchdog = crate::watchdog::Watchdog::open(
        &cfg.watchdog,
        std::env::var_os("NOTIFY_SOCKET").map(Into::into),
        std::env::var("WATCHDOG_USEC").ok().and_then(|v| v.parse().ok()),
    )
    .map_err(AgentError::Watchdog)?;
    let (guard_tx, guard_rx) = watch::channel(GuardState::default());
    let guard = tokio::spawn(run_lease_guard(
        adapter.clone(),
        guard_rx,
        Duration::from_millis(cfg.lease.demote_deadline_ms),
        status.clone(),
        stopped(stop_rx.clone()),
    ));
    // Only the admin API holds a handle to ask for rounds: without one and without periodic
    // rounds, there is nothing to run.
    let askable = cfg.admin.is_some();
    drop(ask_checks);
    let fence_checks = (!check_interval.is_zero() || askable).then(|| {
        tokio::spawn(crate::fence_checks::run(
            fencer.clone(),
            cfg.peer_targets(),
            check_interval,
            status.clone(),
            check_asks,
            stopped(stop_rx.clone()),
        ))
    });
    let lease = Lease::new(cfg.lease_rule());
    let mut driver = Driver {
        file_cfg: cfg.clone(),
        cfg,
        adapter,
        fencer,
        status,
        http,
        peer_http,
        mem: Memory::new(lease, started),
        peer_url,
        peer_secret,
        role_hooks,
        watchdog,
        health_reports: health_rx.clone(),
        guard: guard_tx,
        pub_state: publish::Publication::default(),
    };
    let result = driver.run_loop(health_rx, control, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = guard.await;
    let _ = monitor.await;
    if let Some(handle) = fence_checks {
        let _ = handle.await;
    }
    if let Some(handle) = exit_watch {
        let _ = handle.await;
    }
    if let Ok(Err(e)) = probe_server.await {
        warn!("probe server: {e}");
    }
    if let Some(handle) = admin_server {
        if let Ok(Err(e)) = handle.await {
            warn!("admin server: {e}");
        }
    }
    result
}

impl Driver {
    async fn run_loop(
        &mut self,
        mut health: watch::Receiver<HealthReport>,
        mut control: mpsc::Receiver<ControlRequest>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        let interval = Duration::from_millis(self.cfg.election.loop_interval_ms);
        let mut coord: Option<Coordination> = None;
        let mut session_watch: Option<SessionWatch> = None;
        let mut lock_watch: Option<LockWatch> = None;
        let mut connecting: Option<Connecting> = Some(self.start_connecting());
        let mut reconnect_at: Option<BootInstant> = None;
        let mut fatal: Option<AgentError> = None;
        loop {
            // A session that expired is gone for good: drop it and make a new one.
            if let Some(c) = &coord {
                if matches!(c.session(), SessionView::Expired) {
                    coord = None;
                    session_watch = None;
                    lock_watch = None;
                    self.session_ended();
                }
            }
            if coord.is_none() && connecting.is_none() && reconnect_at.is_none_or(|t| BootInstant::now() >= t) {
                connecting = Some(self.start_connecting());
            }

            let report = health.borrow().clone();
            // Before deciding: a cluster paused while this agent was away must stay paused.
            self.read_cluster_pause(coord.as_ref()).await;
            self.cycle(&report, coord.as_ref()).await;
            self.check_schedule(coord.as_ref()).await;
            self.tend_watchdog();

            if let (Some(c), None) = (&coord, &lock_watch) {
                // Only a wake-up: never worth outliving the lease for.
                let sent = BootInstant::now();
                let limit = self.await_limit();
                match self.tended_during(tokio::time::timeout(limit, c.watch_lock())).await {
                    Ok(Ok(w)) => {
                        self.acked(sent);
                        lock_watch = Some(w);
                    }
                    Ok(Err(e)) => debug!("could not watch the lock: {e}"),
                    Err(_) => debug!("arming the lock watch timed out"),
                }
            }

            // Each cycle decides from scratch, so an early one is always safe; after winning the
            // lock it saves the new active a whole interval before fencing and promoting.
            let wait = if std::mem::take(&mut self.mem.cycle_again) { Duration::ZERO } else { interval };
            let sleep = tokio::time::sleep(wait);
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                r = async { connecting.as_mut().expect("guarded").await }, if connecting.is_some() => {
                    connecting = None;
                    let (r, sent) = match r {
                        Ok((r, sent)) => (Ok(r), sent),
                        Err(e) => (Err(e), BootInstant::now()),
                    };
                    match r {
                        Ok(Ok(c)) => {
                            self.session_made(&c, sent);
                            session_watch = Some(c.session_watch());
                            coord = Some(c);
                            reconnect_at = None;
                        }
                        Ok(Err(e)) if e.recovery() == Recovery::Fatal => {
                            // Retrying cannot help. Once a session has been made the master may be
                            // active under this agent (a failsafe extension outlives the session):
                            // the agent stops as on shutdown, demoting it first, never leaving it
                            // with no agent and no lease guard.
                            let why = if self.status().counters.sessions == 0 {
                                format!("refusing to run: {e}")
                            } else {
                                format!("stopping: the coordinator refuses a new session for good: {e}")
                            };
                            warn!("{why}");
                            self.status().last_decision = why;
                            fatal = Some(AgentError::Coordinator(e.to_string()));
                            break;
                        }
                        Ok(Err(e)) => {
                            warn!("cannot reach the coordinator: {e}");
                            reconnect_at = Some(BootInstant::now() + interval.max(Duration::from_millis(200)) * 5);
                        }
                        Err(_) => reconnect_at = Some(BootInstant::now() + interval * 5),
                    }
                }
                Some(request) = control.recv() => self.handle_control(request, coord.as_ref()).await,
                _ = health.changed() => {}
                _ = async { lock_watch.as_mut().expect("guarded").changed().await }, if lock_watch.is_some() => {
                    lock_watch = None;
                }
                _ = async { session_watch.as_mut().expect("guarded").changed().await }, if session_watch.is_some() => {}
                _ = sleep => {}
            }
        }
        self.shut_down(coord).await;
        fatal.map_or(Ok(()), Err)
    }

    fn status(&self) -> std::sync::MutexGuard<'_, AgentStatus> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that a coordinator request sent at `sent` was answered: the lease is renewed
    /// from then, and the guard learns it at once.
    fn acked(&mut self, sent: BootInstant) {
        self.mem.lease.renew(sent);
        self.publish_guard();
    }

    /// The lease end in force: the session's, or failsafe's if later.
    fn effective_until(&self) -> Option<BootInstant> {
        self.mem.lease.until().max(self.mem.failsafe_until)
    }

    /// Whether the master may be active: seen active, or promoted by this agent and not seen
    /// to step down since.
    fn master_may_be_active(&self) -> bool {
        self.mem.promoted.is_some() || self.status().master.is_some_and(|m| m.state == HaState::Active)
    }

    /// The failsafe promise in force now: one given to a peer, or the one kept from this
    /// agent's start under the settings in force (see [`crate::failsafe::promise_in_force`]).
    fn promise_in_force(&self, now: BootInstant) -> Option<crate::failsafe::Promise> {
        let ttl = Duration::from_millis(self.cfg.failsafe.ttl_ms);
        let at_start = crate::failsafe::promise_at_start(self.cfg.failsafe.enabled, ttl, self.mem.started);
        crate::failsafe::promise_in_force(self.mem.promised.clone(), at_start, now)
    }

    /// How long an await may take now (see [`crate::lease::await_limit`]).
    fn await_limit(&self) -> Duration {
        crate::lease::await_limit(
            Duration::from_millis(self.cfg.coordinator.op_timeout_ms),
            self.effective_until(),
            BootInstant::now(),
            self.master_may_be_active(),
        )
    }

    /// What the watchdog's feeding rule looks at, now.
    fn watchdog_facts(&self) -> crate::watchdog::FeedFacts {
        let now = BootInstant::now();
        // A stuck monitor would leave the agent deciding on stale facts.
        let monitor_alive = self.health_reports.borrow().last_check_at.is_some_and(|t| {
            t.elapsed() <= Duration::from_millis(3 * self.cfg.health.interval_ms.max(self.cfg.health.timeout_ms) + 1000)
        });
        crate::watchdog::FeedFacts {
            monitor_alive,
            authority: self.mem.tokens.held.is_some() && self.effective_until().is_some_and(|u| u > now),
            master_may_be_active: self.master_may_be_active(),
            master_read: self.mem.master_read,
        }
    }

    /// Feeds the watchdog if its rule allows it now, and shows its state; and marks the loop
    /// alive for `/healthz` (fed or not: starving is the rule's verdict, not a hung loop).
    fn tend_watchdog(&mut self) {
        let facts = self.watchdog_facts();
        let now = BootInstant::now();
        self.watchdog.tend(now, facts);
        let mut st = self.status();
        st.loop_alive_at = Some(now);
        if let Some(ms) = self.watchdog.promise_ms() {
            st.watchdog = Some(crate::status::WatchdogStatus {
                self_fence_ms: ms,
                armed: self.watchdog.armed(),
                starving: self.watchdog.starving().map(|s| s.to_string()),
            });
        }
    }

    /// Runs `work` (a fence, up to its chain's overall deadline; a coordinator call, up to its
    /// await limit; a promotion or demotion, up to its deadline; a hook) while the watchdog is
    /// tended as between cycles, so a long but bounded step does not look like a hung agent.
    /// Every await of the decision loop that can last longer than a moment goes through here.
    async fn tended_during<T>(&mut self, work: impl Future<Output = T>) -> T {
        tokio::pin!(work);
        // The first tend one period in: the loop has just tended, and a short step needs none.
        let period = tend_period(Duration::from_millis(self.cfg.election.loop_interval_ms));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = tick.tick() => self.tend_watchdog(),
            }
        }
    }

    /// Tells the lease guard the lease end in force and the token the master may be active with.
    fn publish_guard(&self) {
        let state = GuardState { until: self.effective_until(), armed: self.mem.promoted };
        self.guard.send_if_modified(|g| {
            let changed = *g != state;
            *g = state;
            changed
        });
    }

    /// Runs one coordinator call under the await limit, renewing the lease if it is answered.
    async fn coordinated<T>(
        &mut self,
        what: &str,
        call: impl Future<Output = Result<T, ElectionError>>,
    ) -> Result<T, String> {
        // While the master may be active the lease left bounds the call; otherwise the election
        // layer's own deadlines do (an acquisition may take several round trips), with a cap.
        let limit = if self.master_may_be_active() {
            self.await_limit()
        } else {
            Duration::from_millis(self.cfg.coordinator.op_timeout_ms.saturating_mul(8))
        };
        let sent = BootInstant::now();
        match self.tended_during(tokio::time::timeout(limit, call)).await {
            Ok(Ok(v)) => {
                self.acked(sent);
                Ok(v)
            }
            Ok(Err(e)) => Err(format!("{what}: {e}")),
            Err(_) => Err(format!("{what}: no answer within {} ms", limit.as_millis())),
        }
    }

    /// One observe-decide-act-report cycle.
    async fn cycle(&mut self, report: &HealthReport, coord: Option<&Coordination>) {
        let woke = Mark::now("cycle_started");
        let obs = self.observe(report, coord).await;
        let observed = Mark::now("observed");
        let (now, lease_until, failsafe_until) = (obs.now, obs.lease_until, obs.failsafe_until);
        let lock = obs.lock.clone();
        let held = match &lock {
            LockView::Ours { token, .. } => Some(*token),
            _ => None,
        };
        // What the probes show: while the coordinator cannot be read, the lock this session
        // held is still ours for as long as a lease (the session's or failsafe's) covers it.
        let effective_until = lease_until.max(failsafe_until);
        self.mem.lock_released = false;
        let (mut shown_lock, mut shown_token) = match (&lock, self.mem.tokens.held) {
            (LockView::Unknown, Some((token, version))) if effective_until.is_some_and(|u| u > now) => {
                (LockView::Ours { token, version }, Some(token))
            }
            _ => (lock.clone(), held),
        };
        // Publish what was observed before acting, so the lease endpoint already names this
        // acquisition's token while the master is being promoted (it asks for the lease then).
        {
            let mut st = self.status();
            st.lock = shown_lock.clone();
            st.token = shown_token;
            st.lease_until = effective_until;
            st.session = obs.session;
        }
        let decision = decide(&obs, &self.cfg.policy());
        let key = decision.log_key();
        if key != self.mem.last_logged {
            info!("{}", decision.reason);
            self.mem.last_logged = key;
        }
        self.mem.last_reason.clone_from(&decision.reason);
        // A failover's timeline starts at the cycle that contends for a free lock (the new
        // active's side) or steps down (the old active's side, from its master's first failed
        // check): gives up a held lock, or demotes an active master with no lock it can release
        // (the coordinator lost, the lease run out).
        let role_before = self.status().role;
        let steps_down = decision.steps.iter().any(|s| match s {
            Step::ReleaseLock { .. } => true,
            Step::Demote { .. } => role_before == Role::Active,
            _ => false,
        });
        if decision.steps.iter().any(|s| matches!(s, Step::Contend)) {
            self.mem.timeline.restart([
                Mark { event: "standby_cycle_started".into(), ..woke },
                Mark { event: "lock_seen_free".into(), ..observed },
            ]);
        } else if steps_down {
            let failed = report.failing_since.map(|t| Mark::at_boot("first_failed_check", t));
            let marks = failed.into_iter().chain([
                Mark { event: "active_cycle_started".into(), ..woke },
                Mark { event: "step_down_decided".into(), ..observed },
            ]);
            // A promotion given up goes on with its own recording: its fence is part of it.
            if role_before == Role::Promoting && self.mem.timeline.recording() {
                marks.for_each(|m| self.mem.timeline.mark(m));
            } else {
                self.mem.timeline.restart(marks);
            }
        }
        let master_after = self.execute(&decision, &obs, coord).await;
        if std::mem::take(&mut self.mem.lock_released) {
            // Released by a step: whatever the observation said, the lock is not shown ours.
            (shown_lock, shown_token) = (LockView::Unknown, None);
        }
        self.publish(&obs, coord).await;
        if let Some(m) = master_after {
            self.mem.master_read = true;
            self.mem.master_answer = Some((m, BootInstant::now()));
            self.mem.promoted = track_promoted(self.mem.promoted, Some(m));
        }
        self.publish_guard();
        self.failsafe_start(obs.master, coord);

        let mut recording = std::mem::take(&mut self.mem.timeline);
        let mut st = self.status();
        st.counters.cycles += 1;
        st.health = obs.health.clone();
        st.checks = crate::status::CheckCounts {
            consecutive_failures: report.consecutive_failures,
            consecutive_slow: report.consecutive_slow,
            fall: self.cfg.health.fall,
            slow_fall: self.cfg.health.slow_fall,
        };
        st.master = master_after.or(obs.master);
        st.session = obs.session;
        st.lock = shown_lock;
        st.token = shown_token;
        st.lease_until = effective_until;
        st.members = self.mem.members.iter().map(|m| m.node_id.clone()).collect();
        st.last_decision = decision.reason.clone();
        st.why_not = decision.blocker.as_ref().map(ToString::to_string);
        st.blocker = decision.blocker.clone();
        st.behind = obs
            .candidacy
            .position
            .zip(obs.published.as_ref())
            .map(|(own, p)| crate::candidacy::lag(own, p.record.position));
        let max_age = self.cfg.policy().candidacy.position_max_age;
        st.behind_fresh = st.behind.filter(|_| {
            obs.published.as_ref().is_some_and(|p| p.renewed && obs.now.saturating_since(p.changed_at) <= max_age)
        });
        st.max_lag = self.cfg.election.max_lag;
        st.last_cycle_at_ms = wall_ms();
        st.last_cycle_at = Some(BootInstant::now());
        let role = role_of(&st);
        let phases = (role == Role::Active).then_some(self.mem.phases);
        let (previous, token_now) = (st.role, st.token);
        // A failover's marks go with the role change it ends in: to active, away from it, or
        // out of a promotion given up (whose fence the next attempt counts on and skips).
        let ends_failover = previous == Role::Active || previous == Role::Promoting || role == Role::Active;
        let mut timeline = if previous != role && ends_failover { recording.take() } else { Vec::new() };
        let left_active = previous == Role::Active && role != Role::Active;
        // Leaving the active role with the lease run out (the lease guard may have demoted the
        // master before this cycle): when the master stopped being allowed to serve.
        if let Some(until) = effective_until.filter(|until| left_active && *until <= now) {
            timeline.insert(0, Mark::at_boot("lease_ended", until));
        }
        st.transition(role, wall_ms(), &decision.reason, phases, timeline);
        drop(st);
        if left_active {
            // Leaving the active role is a change of active this agent saw, whether or not it
            // ever sees the next holder's token: anti-flap counts from it, so a node that handed
            // over or stepped down does not take the role straight back.
            self.mem.tokens.last_failover_at = Some(BootInstant::now());
        }
        self.mem.timeline = recording;
        if previous != role {
            self.role_hooks.notify(previous, role, token_now);
        }
        self.settle_failover();
    }
}

/// How often (in cycles) a standby reads the scheduled switchover: about a second at the
/// default loop interval.
const SCHEDULE_READ_EVERY: u32 = 10;

/// The role the report shows.
fn role_of(st: &AgentStatus) -> Role {
    use crate::model::Health;
    match (&st.health, &st.lock, st.master) {
        (Health::Initializing, _, _) => Role::Initializing,
        (h, _, _) if !h.is_healthy() => Role::Unhealthy,
        (_, LockView::Ours { token, .. }, Some(m)) if m.state == HaState::Active && m.token == *token => Role::Active,
        (_, LockView::Ours { .. }, _) => Role::Promoting,
        _ => Role::Standby,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use referee_testkit::{Proxy, TestServer};

    /// Node a of a pair, its coordinator at `connect`, its master nowhere (nothing here asks it).
    fn config(connect: &str) -> AgentConfig {
        let yaml = format!(
            r#"
cluster: bounded
node_id: a
peers:
  - {{node_id: b, host: 127.0.0.1, port: 1, ha_url: "http://127.0.0.1:1"}}
coordinator: {{connect: "{connect}", session_timeout_ms: 10000, op_timeout_ms: 4000}}
master:
  host: 127.0.0.1
  port: 1
  adapter: {{kind: http, url: "http://127.0.0.1:1"}}
election: {{loop_interval_ms: 50}}
fencing:
  overall_timeout_ms: 3000
  levels:
    - methods:
        - {{kind: graceful, timeout_ms: 1000}}
probes: {{listen: "127.0.0.1:1"}}
"#
        );
        AgentConfig::from_yaml(&yaml).expect("the test's configuration")
    }

    /// A driver for `cfg` with nothing running beside it: no health monitor, lease guard,
    /// probes or admin API. Enough to run one of its steps against a coordinator.
    fn bare_driver(cfg: AgentConfig) -> Driver {
        let context = AdapterContext {
            node_id: cfg.node_id.clone(),
            nodes: cfg.peers.len() + 1,
            monitor_interval: cfg.health.interval(),
        };
        let adapter = build_adapter(&cfg.master.adapter, &context).expect("the adapter");
        let fencer = Arc::new(Fencer::new(cfg.fencing.clone().expect("fencing")).expect("the fencer"));
        let (_, health_reports) = watch::channel(HealthReport::initial());
        let (guard, _) = watch::channel(GuardState::default());
        Driver {
            file_cfg: cfg.clone(),
            adapter,
            fencer,
            status: Arc::new(Mutex::new(AgentStatus::new(&cfg.cluster, &cfg.node_id))),
            http: reqwest::Client::new(),
            peer_http: reqwest::Client::new(),
            mem: Memory::new(Lease::new(cfg.lease_rule()), BootInstant::now()),
            peer_url: None,
            peer_secret: None,
            role_hooks: crate::hooks::RoleChangeHooks::start(None, &cfg.cluster, &cfg.node_id),
            watchdog: crate::watchdog::Watchdog::open(&cfg.watchdog, None, None).expect("no watchdog"),
            health_reports,
            guard,
            pub_state: publish::Publication::default(),
            cfg,
        }
    }

    /// While the master may be active, the reads made between cycles (the cluster's pause,
    /// drain and settings records; the pause on an operator's resume; the scheduled
    /// switchover) end with the lease left, as every other await of the loop does, when the
    /// coordinator goes silent: a round of failsafe, a demotion or a peer's request waits
    /// behind them no longer than that.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_between_cycles_end_with_the_lease_left() {
        let server = TestServer::start().await.expect("the coordinator");
        let proxy = Proxy::start(server.addr).await.expect("the proxy");
        let mut driver = bare_driver(config(&proxy.addr.to_string()));
        let coord = Coordination::connect(driver.coordination_config()).await.expect("a session");
        proxy.black_hole();
        let left = Duration::from_millis(300);
        // Half the 4 s each read may take by itself and over six times the lease left: the
        // bound catches a read that waits out its own deadline, not a slow machine.
        let bound = Duration::from_millis(2000);
        // The master may be active with `left` of its lease to go.
        let arm = |driver: &mut Driver| {
            driver.mem.promoted = Some(FencingToken(5));
            driver.mem.failsafe_until = Some(BootInstant::now() + left);
        };

        arm(&mut driver);
        let started = BootInstant::now();
        driver.read_cluster_pause(Some(&coord)).await;
        let took = started.elapsed();
        assert!(took < bound, "the cluster's records were read for {} ms", took.as_millis());

        arm(&mut driver);
        let (reply, _answer) = oneshot::channel();
        let started = BootInstant::now();
        driver.handle_control(ControlRequest::Resume { reply }, Some(&coord)).await;
        let took = started.elapsed();
        assert!(took < bound, "an operator's resume read the pause for {} ms", took.as_millis());

        arm(&mut driver);
        driver.status().role = Role::Standby;
        driver.mem.schedule_age = SCHEDULE_READ_EVERY;
        let started = BootInstant::now();
        driver.check_schedule(Some(&coord)).await;
        let took = started.elapsed();
        assert!(took < bound, "the scheduled switchover was read for {} ms", took.as_millis());
        proxy.heal();
    }
}
