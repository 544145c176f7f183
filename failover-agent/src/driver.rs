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
//! time. Every successful coordinator request renews the lease from the moment it was *sent*,
//! measured on the boot-time clock.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use referee_fencing::{FenceOutcome, FenceTarget, Fencer, FencingToken, HaState, HaStatus, MethodOutcome};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};

use crate::adapter::{build_adapter, MasterAdapter};
use crate::clock::BootInstant;
use crate::config::AgentConfig;
use crate::control::ControlRequest;
use crate::decide::{
    decide, plan_handover, same_machine, track_promoted, Decision, Handover, Observation, Step, StepFailure,
};
use crate::election::{Acquired, Coordination, CoordinationConfig, ElectionError, LockWatch, Recovery, SessionWatch};
use crate::failsafe::{Answer, AnswerFacts, FailsafeRequest, FailsafeResponse, LockRead, RoundOutcome};
use crate::health::{run_health_monitor, HealthReport};
use crate::lease::{GuardAction, GuardState, Lease};
use crate::model::{Breadcrumb, BreadcrumbView, LockRecord, LockView, Member, SessionView, TokenBase, TokenBaseView};
use crate::probes::{self, ProbeState};
use crate::status::{AgentStatus, Phases, Role};

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
}

fn wall_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// What the driver remembers between cycles. Everything here is either a measurement (when the
/// coordinator last answered) or the outcome of its own steps; none of it is a decision.
struct Memory {
    /// The session's lease, renewed from the send time of every answered request.
    lease: Lease,
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
    /// When the lock was first seen free (for the detect phase).
    free_seen_at: Option<BootInstant>,
    /// Phase timing of the promotion under way.
    phases: Phases,
    /// The last decision's reason, to log changes only.
    last_reason: String,
    /// An operator's failover to this node, answered once this node is active or the deadline
    /// passes.
    pending_failover: Option<(Reply, BootInstant, BootInstant)>,
    /// Whether the member list has been read at least once.
    members_read: bool,
    /// The highest token seen from any acquisition other than the one held now: other
    /// holders', breadcrumbs', masters', and our own finished ones. Kept across sessions, so a
    /// coordinator that lost its data cannot hand out a token below it.
    highest_seen: FencingToken,
    /// The lock this session holds (token, version), as last read; kept while the coordinator
    /// cannot be read, dropped when the lock or the session is known gone.
    held: Option<(FencingToken, i32)>,
    /// The token the current acquisition has handed to a master.
    token_issued: Option<FencingToken>,
    /// The lock token last seen, whoever held it, and when it last changed (anti-flap).
    last_lock_token: Option<FencingToken>,
    last_failover_at: Option<BootInstant>,
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
    promised: Option<(String, BootInstant)>,
    /// What the master answered to our last promote or demote, and when: newer than a health
    /// report whose check may have started before it.
    master_answer: Option<(crate::model::MasterStatus, BootInstant)>,
}

/// How many past holders the agent keeps (a bound against a coordinator that keeps handing
/// out new names).
const SEEN_HOLDERS_KEPT: usize = 64;

impl Memory {
    fn new(lease: Lease) -> Self {
        Memory {
            lease,
            promoted: None,
            seen_holders: Vec::new(),
            failure: None,
            backoff_until: None,
            members: Vec::new(),
            members_age: 0,
            free_seen_at: None,
            phases: Phases::default(),
            last_reason: String::new(),
            pending_failover: None,
            members_read: false,
            highest_seen: FencingToken(0),
            held: None,
            token_issued: None,
            last_lock_token: None,
            last_failover_at: None,
            healthy_since: None,
            failback_not_before: None,
            failsafe_until: None,
            failsafe_round: None,
            failsafe_last_sent: None,
            promised: None,
            master_answer: None,
        }
    }

    /// Remembers a token from another acquisition. A token above the usable bound is refused
    /// where it is found (see [`crate::tokens`]), never remembered: it would block every later
    /// promotion of this agent.
    fn saw(&mut self, token: FencingToken) {
        if crate::tokens::within_limit(token) {
            self.highest_seen = self.highest_seen.max(token);
        } else {
            warn!(%token, "ignoring a token above the highest usable token");
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

    /// The lock this session held is gone (or its token changed): it becomes history.
    fn forget_held(&mut self) {
        if let Some((token, _)) = self.held.take() {
            self.saw(token);
        }
    }
}

/// Where an operator's request is answered.
type Reply = oneshot::Sender<Result<String, String>>;

/// The running agent.
struct Driver {
    cfg: AgentConfig,
    adapter: Arc<dyn MasterAdapter>,
    fencer: Fencer,
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
    /// Fed after every cycle while the health monitor is alive.
    watchdog: crate::watchdog::Watchdog,
    /// What the lease guard enforces: published on every renewal and after every cycle.
    guard: watch::Sender<GuardState>,
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
    let adapter = build_adapter(&cfg.master.adapter, &cfg.node_id).map_err(|e| AgentError::Adapter(e.to_string()))?;
    let fencing = cfg.fencing.clone().ok_or(AgentError::NoFencing)?;
    let fencer = Fencer::new(fencing).map_err(|e| AgentError::Fencing(e.to_string()))?;
    let status = Arc::new(Mutex::new(AgentStatus::new(&cfg.cluster, &cfg.node_id)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    // The admin and peer API: refused settings (secret, TLS) stop start-up here.
    let (peer_url, peer_secret, admin_server) = match &cfg.admin {
        None => (None, None, None),
        Some(settings) => {
            let server = crate::admin::AdminServer::new(settings, control_tx.clone(), status.clone())
                .map_err(|e| AgentError::Admin(e.to_string()))?;
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
    let monitor = tokio::spawn(run_health_monitor(adapter.clone(), cfg.health, health_tx, stopped(stop_rx.clone())));
    let probe_state =
        ProbeState { status: status.clone(), loop_interval: Duration::from_millis(cfg.election.loop_interval_ms) };
    let probe_server = tokio::spawn(probes::serve(probe_listener, probe_state, stopped(stop_rx.clone())));

    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_millis(500))
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
    .map_err(|e| AgentError::Adapter(format!("watchdog: {e}")))?;
    let (guard_tx, guard_rx) = watch::channel(GuardState::default());
    let guard = tokio::spawn(run_lease_guard(
        adapter.clone(),
        guard_rx,
        Duration::from_millis(cfg.lease.demote_deadline_ms),
        status.clone(),
        stopped(stop_rx.clone()),
    ));
    let lease = Lease::new(cfg.lease_rule());
    let mut driver = Driver {
        cfg,
        adapter,
        fencer,
        status,
        http,
        peer_http,
        mem: Memory::new(lease),
        peer_url,
        peer_secret,
        role_hooks,
        watchdog,
        guard: guard_tx,
    };
    let result = driver.run_loop(health_rx, control, shutdown).await;
    let _ = stop_tx.send(true);
    let _ = guard.await;
    let _ = monitor.await;
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

/// A coordinator session being made in the background, and when its connect was sent.
type Connecting = oneshot::Receiver<(Result<Coordination, ElectionError>, BootInstant)>;

/// Demotes the master at lease end even if the decision loop is blocked (in a slow fence, a
/// hung coordinator call, a stuck hook): the driver publishes the lease end and the token its
/// master may be active with, and this task alone watches the clock.
async fn run_lease_guard(
    adapter: Arc<dyn MasterAdapter>,
    mut published: watch::Receiver<GuardState>,
    demote_deadline: Duration,
    status: Arc<Mutex<AgentStatus>>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    // The state a demotion was last made for: not repeated until something new is published.
    let mut demoted_for: Option<GuardState> = None;
    loop {
        let state = *published.borrow_and_update();
        let wait = match crate::lease::guard_action(state, BootInstant::now()) {
            GuardAction::Demote(_) if demoted_for == Some(state) => None,
            GuardAction::Demote(token) => {
                warn!(%token, "the lease ran out while the master may be active: the lease guard demotes it");
                let deadline = tokio::time::Instant::now() + demote_deadline;
                match adapter.demote(token, deadline).await {
                    Ok(s) => {
                        demoted_for = Some(state);
                        let mut st = status.lock().unwrap_or_else(|p| p.into_inner());
                        st.counters.demotions += 1;
                        st.last_failure =
                            Some(format!("the lease guard demoted the master at lease end (token {token})"));
                        info!(%token, state = ?s.state, "the lease guard demoted the master");
                        None
                    }
                    Err(e) => {
                        warn!("the lease guard could not demote the master (retrying): {e}");
                        Some(crate::lease::GUARD_TICK)
                    }
                }
            }
            GuardAction::Idle => None,
            GuardAction::WaitFor(d) => Some(d),
        };
        let sleep = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut stop => return,
            changed = published.changed() => if changed.is_err() { return },
            _ = sleep => {}
        }
    }
}

impl Driver {
    fn coordination_config(&self) -> CoordinationConfig {
        CoordinationConfig {
            connect: self.cfg.coordinator.connect.clone(),
            cluster: self.cfg.cluster.clone(),
            node_id: self.cfg.node_id.clone(),
            session_timeout: Duration::from_millis(self.cfg.coordinator.session_timeout_ms),
            op_timeout: Duration::from_millis(self.cfg.coordinator.op_timeout_ms),
            digest: self.cfg.coordinator.digest.clone(),
        }
    }

    fn member(&self) -> Member {
        Member {
            node_id: self.cfg.node_id.clone(),
            target: self.cfg.own_target(),
            peer_url: self.peer_url.clone(),
            probe_addr: Some(self.cfg.probes.listen.to_string()),
        }
    }

    /// Starts making a session: connect, then register as a member.
    fn start_connecting(&self) -> Connecting {
        let (tx, rx) = oneshot::channel();
        let cfg = self.coordination_config();
        let member = self.member();
        tokio::spawn(async move {
            // The session is created after this instant: the connect's answer renews the lease
            // from it.
            let sent = BootInstant::now();
            let result = async {
                let coord = Coordination::connect(cfg).await?;
                coord.register_member(&member).await?;
                Ok(coord)
            }
            .await;
            let _ = tx.send((result, sent));
        });
        rx
    }

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
        loop {
            // A session that expired is gone for good: drop it and make a new one.
            if let Some(c) = &coord {
                if matches!(c.session(), SessionView::Expired) {
                    warn!("coordinator session expired; making a new one");
                    coord = None;
                    session_watch = None;
                    lock_watch = None;
                    self.mem.lease.session_ended();
                    let keep = crate::failsafe::after_session_end(self.cfg.failsafe.enabled);
                    if !keep.keep_held {
                        self.mem.forget_held();
                    }
                    if !keep.keep_failsafe {
                        self.mem.failsafe_until = None;
                    }
                    self.publish_guard();
                }
            }
            if coord.is_none() && connecting.is_none() && reconnect_at.is_none_or(|t| BootInstant::now() >= t) {
                connecting = Some(self.start_connecting());
            }

            let report = health.borrow().clone();
            self.cycle(&report, coord.as_ref()).await;
            // Feed the watchdog only while the health monitor is alive too: a stuck monitor
            // would leave the agent deciding on stale facts.
            let monitor_alive = report.last_check_at.is_some_and(|t| {
                t.elapsed()
                    <= Duration::from_millis(3 * self.cfg.health.interval_ms.max(self.cfg.health.timeout_ms) + 1000)
            });
            if monitor_alive {
                self.watchdog.feed(BootInstant::now());
            }

            if let (Some(c), None) = (&coord, &lock_watch) {
                // Only a wake-up: never worth outliving the lease for.
                let sent = BootInstant::now();
                match tokio::time::timeout(self.await_limit(), c.watch_lock()).await {
                    Ok(Ok(w)) => {
                        self.acked(sent);
                        lock_watch = Some(w);
                    }
                    Ok(Err(e)) => debug!("could not watch the lock: {e}"),
                    Err(_) => debug!("arming the lock watch timed out"),
                }
            }

            let sleep = tokio::time::sleep(interval);
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
                            self.mem.lease.connected(c.negotiated_timeout(), sent);
                            self.publish_guard();
                            info!(session = format!("0x{:x}", c.session_id()), timeout_ms = c.negotiated_timeout().as_millis() as u64, "coordinator session established");
                            self.status().counters.sessions += 1;
                            if self.cfg.lease_budget(c.negotiated_timeout()).is_none() {
                                warn!("the coordinator granted a session timeout of {} ms, which leaves no lease: this node will never stay active", c.negotiated_timeout().as_millis());
                            }
                            session_watch = Some(c.session_watch());
                            coord = Some(c);
                            reconnect_at = None;
                        }
                        Ok(Err(e)) if e.recovery() == Recovery::Fatal => {
                            self.status().last_decision = format!("refusing to run: {e}");
                            return Err(AgentError::Coordinator(e.to_string()));
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
        Ok(())
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

    /// How long an await may take now (see [`crate::lease::await_limit`]).
    fn await_limit(&self) -> Duration {
        crate::lease::await_limit(
            Duration::from_millis(self.cfg.coordinator.op_timeout_ms),
            self.effective_until(),
            BootInstant::now(),
            self.master_may_be_active(),
        )
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
        match tokio::time::timeout(limit, call).await {
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
        let master = self.master_view(report);
        self.mem.promoted = track_promoted(self.mem.promoted, master);
        if let Some(c) = coord {
            // The grant of the connection in use (see `Lease::connected`).
            self.mem.lease.set_granted(c.negotiated_timeout());
        }
        self.publish_guard();
        let session = coord.map_or(SessionView::Connecting, |c| c.session());
        let connected = matches!(session, SessionView::Connected { .. });
        // While our master may be active, no read may outlast what is left of its lease, or the
        // demotion would come late.
        let read_limit = self.await_limit();
        self.failsafe_start(master, coord);
        let mut lock = LockView::Unknown;
        let mut breadcrumb = BreadcrumbView::Unknown;
        let mut token_base = TokenBaseView::Unknown;
        if let (Some(c), true) = (coord, connected) {
            let sent = BootInstant::now();
            match tokio::time::timeout(read_limit, c.read_lock_with_record()).await {
                Ok(Ok((v, base, record))) => {
                    self.acked(sent);
                    if let (LockView::Peer { .. } | LockView::OursFromOldSession { .. }, Some(r)) = (&v, &record) {
                        self.mem.saw_holder(&r.target);
                    }
                    lock = v;
                    token_base = base;
                }
                Ok(Err(e)) => debug!("reading the lock failed: {e}"),
                Err(_) => debug!("reading the lock took longer than {read_limit:?}"),
            }
            if !matches!(lock, LockView::Unknown) {
                let sent = BootInstant::now();
                match tokio::time::timeout(read_limit, c.read_breadcrumb()).await {
                    Ok(Ok(b)) => {
                        self.acked(sent);
                        if let BreadcrumbView::Present { crumb, .. } = &b {
                            self.mem.saw_holder(&crumb.target);
                        }
                        breadcrumb = b;
                    }
                    Ok(Err(e)) => debug!("reading the breadcrumb failed: {e}"),
                    Err(_) => debug!("reading the breadcrumb took longer than {read_limit:?}"),
                }
            }
            let need_members = !self.mem.members_read
                || (matches!(lock, LockView::Ours { .. }) && matches!(breadcrumb, BreadcrumbView::Missing))
                || self.mem.members_age >= 50;
            if need_members && !matches!(lock, LockView::Unknown) {
                let sent = BootInstant::now();
                if let Ok(Ok(m)) = tokio::time::timeout(read_limit, c.members()).await {
                    self.acked(sent);
                    self.mem.members = m;
                    self.mem.members_age = 0;
                    self.mem.members_read = true;
                }
            }
            self.mem.members_age += 1;
        }
        let now = BootInstant::now();
        self.failsafe_collect().await;
        self.remember_tokens(&lock, &breadcrumb, master, session, now);
        // The lease: only while the session can still be alive on the ensemble.
        let lease_until = self.mem.lease.until();
        // Failsafe applies only while the coordinator cannot be read, never after it answered.
        let failsafe_until = match &lock {
            LockView::Unknown => self.mem.failsafe_until,
            _ => {
                self.mem.failsafe_until = None;
                None
            }
        };
        // A failure belongs to one acquisition; a new lock (or none) forgets it.
        let held = match &lock {
            LockView::Ours { token, .. } => Some(*token),
            _ => None,
        };
        if self.mem.failure.as_ref().is_some_and(|f| Some(f.token) != held) && !matches!(lock, LockView::Unknown) {
            self.mem.failure = None;
        }
        if matches!(lock, LockView::Free) {
            self.mem.free_seen_at.get_or_insert(now);
        } else if !matches!(lock, LockView::Ours { .. }) {
            self.mem.free_seen_at = None;
        }
        if report.health.is_healthy() {
            self.mem.healthy_since.get_or_insert(now);
        } else {
            self.mem.healthy_since = None;
        }
        if self.mem.promised.as_ref().is_some_and(|(_, until)| *until <= now) {
            self.mem.promised = None;
        }

        let obs = Observation {
            now,
            node_id: self.cfg.node_id.clone(),
            own_target: self.cfg.own_target(),
            health: report.health.clone(),
            master,
            session,
            lock: lock.clone(),
            breadcrumb,
            members: self.mem.members.clone(),
            peers: self.cfg.peer_targets(),
            seen_holders: self.mem.seen_holders.clone(),
            promoted: self.mem.promoted,
            lease_until,
            paused: self.status().paused,
            backoff_until: self.mem.backoff_until,
            failure: self.mem.failure.clone(),
            token_base,
            token_floor: self.mem.highest_seen,
            token_issued: self.mem.token_issued,
            failsafe_until,
            last_failover_at: self.mem.last_failover_at,
            healthy_since: self.mem.healthy_since,
            failover_requested: self.mem.pending_failover.is_some(),
            failback_not_before: self.mem.failback_not_before,
            promised: self.mem.promised.clone(),
        };
        // What the probes show: while the coordinator cannot be read, the lock this session
        // held is still ours for as long as a lease (the session's or failsafe's) covers it.
        let effective_until = lease_until.max(failsafe_until);
        let (shown_lock, shown_token) = match (&lock, self.mem.held) {
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
        if decision.reason != self.mem.last_reason {
            info!("{}", decision.reason);
            self.mem.last_reason = decision.reason.clone();
        }
        let master_after = self.execute(&decision, &obs, coord).await;
        if let Some(m) = master_after {
            self.mem.master_answer = Some((m, BootInstant::now()));
            self.mem.promoted = track_promoted(self.mem.promoted, Some(m));
        }
        self.publish_guard();
        self.failsafe_start(master, coord);

        let mut st = self.status();
        st.counters.cycles += 1;
        st.health = obs.health.clone();
        st.master = master_after.or(obs.master);
        st.session = obs.session;
        st.lock = shown_lock;
        st.token = shown_token;
        st.lease_until = effective_until;
        st.members = self.mem.members.iter().map(|m| m.node_id.clone()).collect();
        st.last_decision = decision.reason.clone();
        st.last_cycle_at_ms = wall_ms();
        st.last_cycle_at = Some(BootInstant::now());
        let role = role_of(&st);
        let phases = (role == Role::Active).then_some(self.mem.phases);
        let (previous, token_now) = (st.role, st.token);
        st.transition(role, wall_ms(), &decision.reason, phases);
        drop(st);
        if previous != role {
            self.role_hooks.notify(previous, role, token_now);
        }
        self.settle_failover();
    }

    /// The master's state: what it answered to our last promote or demote, until a health
    /// report is known to be newer (a check ends at most one health timeout after it starts, so
    /// one that ended later than that after our call began after it).
    fn master_view(&mut self, report: &HealthReport) -> Option<crate::model::MasterStatus> {
        let check_span = Duration::from_millis(self.cfg.health.timeout_ms);
        match self.mem.master_answer {
            Some((m, at)) if report.last_check_at.is_none_or(|t| t <= at + check_span) => Some(m),
            _ => {
                self.mem.master_answer = None;
                report.master
            }
        }
    }

    /// Keeps the token history and the anti-flap clock from what this cycle read.
    fn remember_tokens(
        &mut self,
        lock: &LockView,
        breadcrumb: &BreadcrumbView,
        master: Option<crate::model::MasterStatus>,
        session: SessionView,
        now: BootInstant,
    ) {
        match lock {
            LockView::Ours { token, version } => {
                if self.mem.held.is_some_and(|(t, _)| t != *token) {
                    self.mem.forget_held();
                }
                self.mem.held = Some((*token, *version));
            }
            // Unreadable: the lock may still be ours (with failsafe, even after the library
            // gave the session up: only a lock read that answers says it is gone).
            LockView::Unknown
                if self.cfg.failsafe.enabled
                    || matches!(session, SessionView::Connected { .. } | SessionView::Disconnected { .. }) => {}
            _ => self.mem.forget_held(),
        }
        let held = self.mem.held.map(|(t, _)| t);
        match lock {
            LockView::Peer { token, .. } | LockView::OursFromOldSession { token } => self.mem.saw(*token),
            _ => {}
        }
        if let BreadcrumbView::Present { crumb, .. } = breadcrumb {
            if Some(crumb.token) != held {
                self.mem.saw(crumb.token);
            }
        }
        if let Some(m) = master {
            if Some(m.token) != held {
                self.mem.saw(m.token);
            }
        }
        let holder = match lock {
            LockView::Ours { token, .. } | LockView::Peer { token, .. } | LockView::OursFromOldSession { token } => {
                Some(*token)
            }
            LockView::Free | LockView::Unknown => None,
        };
        if let Some(token) = holder {
            if self.mem.last_lock_token.is_some_and(|t| t != token) {
                self.mem.last_failover_at = Some(now);
            }
            self.mem.last_lock_token = Some(token);
        }
    }

    /// Takes in a finished failsafe round.
    async fn failsafe_collect(&mut self) {
        let finished = self.mem.failsafe_round.as_ref().is_some_and(|(_, task)| task.is_finished());
        if !finished {
            return;
        }
        let Some((sent, task)) = self.mem.failsafe_round.take() else { return };
        // Finished, so this does not wait.
        match task.await.ok() {
            Some(RoundOutcome::Confirmed { members }) => {
                let until = sent + self.cfg.failsafe_lease();
                self.mem.failsafe_until = Some(self.mem.failsafe_until.map_or(until, |u| u.max(until)));
                self.status().counters.failsafe_confirmed += 1;
                debug!(members, "failsafe: every other member confirmed it is not active");
            }
            Some(RoundOutcome::Refused(why)) => {
                warn!("failsafe: {why}; the master will be demoted when the current lease runs out");
                let mut st = self.status();
                st.counters.failsafe_refused += 1;
                st.last_failure = Some(format!("failsafe: {why}"));
            }
            None => warn!("failsafe: a round ended without an outcome"),
        }
    }

    /// Starts a failsafe round when failsafe is on, this session held the lock, our master is
    /// active with its token, and the coordinator has not answered for half a lease.
    fn failsafe_start(&mut self, master: Option<crate::model::MasterStatus>, coord: Option<&Coordination>) {
        if !self.cfg.failsafe.enabled || self.mem.failsafe_round.is_some() {
            return;
        }
        let Some((token, _)) = self.mem.held else { return };
        if !master.is_some_and(|m| m.state == HaState::Active && m.token == token) {
            return;
        }
        let now = BootInstant::now();
        let granted =
            coord.map_or(Duration::from_millis(self.cfg.coordinator.session_timeout_ms), |c| c.negotiated_timeout());
        let Some(budget) = self.cfg.lease_budget(granted) else { return };
        // Quiet: half the lease has passed since the last answered request (or there is none).
        let quiet = self.mem.lease.left(now) <= budget / 2;
        let ttl = Duration::from_millis(self.cfg.failsafe.ttl_ms);
        let every = ttl / 4;
        if !quiet || self.mem.failsafe_last_sent.is_some_and(|t| now.saturating_since(t) < every) {
            return;
        }
        let peers: Vec<String> = self.cfg.peers.iter().map(|p| p.node_id.clone()).collect();
        let targets = crate::failsafe::round_targets(&self.cfg.node_id, &peers, &self.mem.members);
        let (http, secret, me) = (self.peer_http.clone(), self.peer_secret.clone(), self.cfg.node_id.clone());
        let task = tokio::spawn(async move {
            crate::failsafe::run_round(&http, secret.as_deref(), &me, token, ttl, targets, every).await
        });
        self.mem.failsafe_round = Some((now, task));
        self.mem.failsafe_last_sent = Some(now);
    }

    /// Carries out a decision's steps in order. Returns the master's status if a step changed it.
    async fn execute(
        &mut self,
        decision: &Decision,
        obs: &Observation,
        coord: Option<&Coordination>,
    ) -> Option<crate::model::MasterStatus> {
        let token_held = match obs.lock {
            LockView::Ours { token, .. } => token,
            _ => FencingToken(0),
        };
        let mut master_after = None;
        for step in &decision.steps {
            let started = BootInstant::now();
            let result: Result<(), String> = match step {
                Step::Contend => match coord {
                    None => Err("no coordinator session".into()),
                    Some(c) => {
                        let record = LockRecord {
                            node_id: self.cfg.node_id.clone(),
                            target: self.cfg.own_target(),
                            peer_url: self.peer_url.clone(),
                        };
                        match self.coordinated("contending", c.try_acquire(&record)).await {
                            Ok(Acquired::Won { token }) => {
                                let now = BootInstant::now();
                                self.mem.phases = Phases {
                                    detect_ms: self
                                        .mem
                                        .free_seen_at
                                        .map_or(0, |t| started.saturating_since(t).as_millis() as u64),
                                    elect_ms: now.saturating_since(started).as_millis() as u64,
                                    ..Phases::default()
                                };
                                info!(token = %token, "won the lock");
                                Ok(())
                            }
                            Ok(Acquired::HeldBy { node_id, token }) => {
                                debug!(%node_id, token = %token, "lost the race for the lock");
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                },
                Step::Fence { targets, new_token, clean_claim } => {
                    self.mem.token_issued = Some(*new_token);
                    let r = self.fence_all(targets, *new_token, *clean_claim).await;
                    self.mem.phases.fence_ms = started.elapsed().as_millis() as u64;
                    r
                }
                Step::WriteBreadcrumb { token, lock_version, expected_version } => match coord {
                    None => Err("no coordinator session".into()),
                    Some(c) => {
                        let mut target = self.cfg.own_target();
                        target.token = *token;
                        let crumb =
                            Breadcrumb { node_id: self.cfg.node_id.clone(), token: *token, clean: false, target };
                        self.coordinated(
                            "writing the breadcrumb",
                            c.write_breadcrumb(&crumb, *lock_version, *expected_version),
                        )
                        .await
                        .map(|_| ())
                    }
                },
                Step::Promote { token } => {
                    // The fence before this may have taken a while: the lease left must still
                    // cover the whole promotion, or it waits for the next cycle's renewal (not a
                    // failure: the breadcrumb is written, the next cycle promotes).
                    let budget = self.cfg.promote_budget();
                    let now = BootInstant::now();
                    if !self.mem.lease.may_promote_for(now, budget) {
                        info!(
                            token = %token,
                            "the lease left ({} ms) no longer covers a promotion ({} ms); promoting after it is renewed",
                            self.mem.lease.left(now).as_millis(),
                            budget.as_millis()
                        );
                        break;
                    }
                    if let Some(hook) = &self.cfg.hooks.pre_promote {
                        if let Err(veto) =
                            crate::hooks::pre_promote(hook, &self.cfg.cluster, &self.cfg.node_id, *token).await
                        {
                            warn!("{veto}");
                            self.status().last_failure = Some(veto.clone());
                            self.mem.failure = Some(StepFailure { token: token_held, reason: veto });
                            break;
                        }
                    }
                    let deadline =
                        tokio::time::Instant::now() + Duration::from_millis(self.cfg.election.promote_timeout_ms);
                    self.mem.token_issued = Some(*token);
                    // From the moment the request goes out the master may be active with this
                    // token: the guard enforces the lease on it even if the answer is lost.
                    self.mem.promoted = Some(self.mem.promoted.map_or(*token, |p| p.max(*token)));
                    self.publish_guard();
                    match self.adapter.promote(*token, deadline).await {
                        Ok(status) => {
                            master_after = Some(status);
                            self.mem.phases.promote_ms = started.elapsed().as_millis() as u64;
                            self.status().counters.promotions += 1;
                            info!(token = %token, "promoted the master");
                            Ok(())
                        }
                        Err(e) => Err(format!("promoting the master: {e}")),
                    }
                }
                Step::Demote { token, best_effort } => {
                    if *token == token_held {
                        self.mem.token_issued = Some(*token);
                    }
                    let deadline =
                        tokio::time::Instant::now() + Duration::from_millis(self.cfg.lease.demote_deadline_ms);
                    match self.adapter.demote(*token, deadline).await {
                        Ok(status) => {
                            master_after = Some(status);
                            self.status().counters.demotions += 1;
                            info!(token = %token, "demoted the master");
                            Ok(())
                        }
                        Err(e) if *best_effort => {
                            warn!("demoting the master failed (continuing): {e}");
                            Ok(())
                        }
                        Err(e) => Err(format!("demoting the master: {e}")),
                    }
                }
                Step::SetTokenBase { czxid, floor, lock_version, current, consult_peers } => match coord {
                    None => Err("no coordinator session".into()),
                    Some(c) => {
                        let mut floor = *floor;
                        if *consult_peers {
                            let (found, from) = self.peer_master_tokens().await;
                            if found > floor {
                                info!(token = %found, "a peer's master has seen a higher token: {from}");
                                floor = found;
                            }
                        }
                        // czxid + base must be above the floor; the base never goes down; all
                        // of it checked (an overflow refuses, never wraps).
                        match crate::tokens::base_above(*czxid, floor, current.map(|(b, _)| b)) {
                            Err(e) => Err(format!("setting the token base: {e}")),
                            Ok(base) => {
                                let record = TokenBase { base, floor, node_id: self.cfg.node_id.clone() };
                                let set = c.set_token_base(&record, *czxid, *lock_version, *current);
                                match self.coordinated("setting the token base", set).await {
                                    Ok(token) => {
                                        info!(%token, base, %floor, "token base set: this acquisition's token is above every token found");
                                        Ok(())
                                    }
                                    Err(e) => Err(e),
                                }
                            }
                        }
                    }
                },
                Step::RequestHandover { from } => {
                    let period = Duration::from_millis(self.cfg.election.failback_after_ms);
                    self.mem.failback_not_before = Some(BootInstant::now() + period);
                    match coord {
                        None => Err("no coordinator session".into()),
                        Some(c) => match self.ask_to_cede(c).await {
                            Ok(()) => {
                                info!(node = %from, "asked the active to hand over to the preferred node");
                                Ok(())
                            }
                            Err(e) => Err(format!("asking {from} to hand over: {e}")),
                        },
                    }
                }
                Step::ReleaseLock { token, backoff } => {
                    if !backoff.is_zero() {
                        self.mem.backoff_until = Some(BootInstant::now() + *backoff);
                    }
                    match coord {
                        None => Err("no coordinator session".into()),
                        Some(c) => self.coordinated("releasing the lock", c.release(*token)).await.map(|_| ()),
                    }
                }
            };
            if let Err(reason) = result {
                warn!("step failed: {reason}");
                self.status().last_failure = Some(reason.clone());
                if token_held.0 != 0 {
                    self.mem.failure = Some(StepFailure { token: token_held, reason });
                }
                break;
            }
        }
        master_after
    }

    /// Fences every target; a target that claims a clean step-down is first checked on its
    /// master, and fenced only if the claim cannot be confirmed.
    async fn fence_all(
        &mut self,
        targets: &[FenceTarget],
        new_token: FencingToken,
        clean_claim: Option<FencingToken>,
    ) -> Result<(), String> {
        for target in targets {
            if let Some(claim) = clean_claim {
                if self.verify_standby(target, claim).await {
                    info!(node = %target.node_id, "verified a clean step-down on its master; no fencing needed");
                    continue;
                }
            }
            let report = self.fencer.fence(target, new_token).await;
            {
                let mut st = self.status();
                match &report.outcome {
                    FenceOutcome::Fenced { .. } => st.counters.fences_fenced += 1,
                    FenceOutcome::Failed { .. } => st.counters.fences_failed += 1,
                    FenceOutcome::Indeterminate { .. } => st.counters.fences_indeterminate += 1,
                }
            }
            if !report.outcome.permits_promotion() {
                return Err(format!("fencing {}: {:?}", target.node_id, report.outcome));
            }
            info!(node = %target.node_id, "fenced: {:?}", report.outcome);
        }
        Ok(())
    }

    /// The highest token any other member's master reports (asked at once, each within
    /// 500 ms; a master that cannot be asked is skipped), and who reported it.
    async fn peer_master_tokens(&self) -> (FencingToken, String) {
        let mut asks = tokio::task::JoinSet::new();
        // Every node that could have been active: configured peers, members, past holders.
        let mut targets: Vec<FenceTarget> = Vec::new();
        let candidates = self
            .cfg
            .peer_targets()
            .into_iter()
            .chain(self.mem.members.iter().map(|m| m.target.clone()))
            .chain(self.mem.seen_holders.iter().cloned());
        for t in candidates {
            let own = t.node_id == self.cfg.node_id && same_machine(&t, &self.cfg.own_target());
            if !own && !targets.iter().any(|x| x.node_id == t.node_id && same_machine(x, &t)) {
                targets.push(t);
            }
        }
        for target in targets {
            let http = self.http.clone();
            asks.spawn(async move { ha_state(&http, &target).await.map(|s| (s.token, target.node_id)) });
        }
        let mut best = (FencingToken(0), String::from("none"));
        while let Some(joined) = asks.join_next().await {
            if let Ok(Some((token, node))) = joined {
                // Anyone can answer `/ha/state`: a token above the usable bound is ignored, so
                // it cannot raise the base for good (see `crate::tokens`).
                let Some(token) = crate::tokens::from_peer(token) else {
                    warn!(node = %node, %token, "ignoring a peer master's token above the highest usable token");
                    continue;
                };
                if token > best.0 {
                    best = (token, format!("{node}'s master reports token {token}"));
                }
            }
        }
        best
    }

    /// Whether the target's master reports standby with at least `claim`.
    async fn verify_standby(&self, target: &FenceTarget, claim: FencingToken) -> bool {
        ha_state(&self.http, target).await.is_some_and(|s| s.state == HaState::Standby && s.token >= claim)
    }

    /// On shutdown an active agent hands over cleanly (demote, confirm, then mark the breadcrumb
    /// clean and release the lock in one multi), so the lock never frees while its master serves
    /// and the next active need not fence; then the session closes.
    async fn shut_down(&mut self, coord: Option<Coordination>) {
        if self.status().token.is_some() || self.mem.promoted.is_some() {
            match self.hand_over(coord.as_ref(), Duration::from_secs(3600)).await {
                Ok(msg) => info!("{msg}"),
                Err(e) => warn!("handover on shutdown: {e}"),
            }
        }
        if let Some(c) = coord {
            if let Err(e) = c.close().await {
                debug!("closing the coordinator session: {e}");
            }
        }
        if let Some((reply, _, _)) = self.mem.pending_failover.take() {
            let _ = reply.send(Err("the agent is shutting down".into()));
        }
        self.watchdog.stop();
        info!("agent stopped");
    }

    /// Carries out an operator's or a peer's request.
    async fn handle_control(&mut self, request: ControlRequest, coord: Option<&Coordination>) {
        match request {
            ControlRequest::Pause { reply } => {
                self.status().paused = true;
                info!("paused by an operator: observing only");
                let _ = reply.send(Ok("paused: the agent keeps reporting but takes no action".into()));
            }
            ControlRequest::Resume { reply } => {
                self.status().paused = false;
                info!("resumed by an operator");
                let _ = reply.send(Ok("resumed".into()));
            }
            ControlRequest::Cede { period, reply } => {
                let result = self.hand_over(coord, period).await;
                match &result {
                    Ok(m) => info!("{m}"),
                    Err(e) => warn!("cede: {e}"),
                }
                let _ = reply.send(result);
            }
            ControlRequest::Failover { reply } => {
                if let Err(why) = self.start_take_over(coord).await {
                    let _ = reply.send(Err(why));
                    return;
                }
                let now = BootInstant::now();
                let deadline = now + Duration::from_millis(self.cfg.coordinator.session_timeout_ms * 4 + 10_000);
                if let Some((old, _, _)) = self.mem.pending_failover.replace((reply, now, deadline)) {
                    let _ = old.send(Err("superseded by a newer failover request".into()));
                }
            }
            ControlRequest::Reload { config, reply } => {
                let _ = reply.send(Ok(self.reload(*config)));
            }
            ControlRequest::Failsafe { request, reply } => {
                let response = self.answer_failsafe(request, coord).await;
                let _ = reply.send(response);
            }
            ControlRequest::PeerFence { token, reply } if !crate::tokens::within_limit(token) => {
                // Recorded by the master, such a token would refuse every later promotion here.
                let reason = format!("refusing to fence with token {token}, above the highest usable token");
                warn!("{reason}");
                let _ = reply.send(MethodOutcome::Failed { reason });
            }
            ControlRequest::PeerFence { token, reply } => {
                let deadline = tokio::time::Instant::now() + Duration::from_millis(self.cfg.lease.demote_deadline_ms);
                let outcome = match self.adapter.demote(token, deadline).await {
                    Ok(s) => MethodOutcome::Fenced {
                        detail: format!("master demoted locally; it reports {:?} with token {}", s.state, s.token),
                    },
                    Err(e) if e.outcome_unknown() => {
                        MethodOutcome::Indeterminate { reason: format!("demoting the master locally: {e}") }
                    }
                    Err(e) => MethodOutcome::Failed { reason: format!("demoting the master locally: {e}") },
                };
                info!(token = %token, "a peer asked to fence this node's master: {outcome:?}");
                let _ = reply.send(outcome);
            }
        }
    }

    /// Answers an active peer's failsafe round: confirms only if this node's master is not
    /// active, this node holds no lock, and the coordinator (when it answers) does not name a
    /// third node as active; then promises not to contend for the requested time.
    async fn answer_failsafe(&mut self, request: FailsafeRequest, coord: Option<&Coordination>) -> FailsafeResponse {
        let lock = match coord.filter(|c| matches!(c.session(), SessionView::Connected { .. })) {
            None => LockRead::NoSession,
            Some(c) => match self.coordinated("reading the lock", c.read_lock()).await {
                Ok(v) => LockRead::Read(v),
                Err(e) => LockRead::Failed(e),
            },
        };
        let facts = AnswerFacts {
            me: &self.cfg.node_id,
            request: &request,
            master: self.status().master,
            promoted: self.mem.promoted.is_some(),
            held: self.mem.held.map(|(t, _)| t),
            lock,
        };
        let answer = crate::failsafe::answer(&facts);
        let me = self.cfg.node_id.clone();
        match answer {
            Answer::Refuse(reason) => {
                info!(asker = %request.node_id, "failsafe confirmation refused: {reason}");
                FailsafeResponse { node_id: me, accepted: false, reason }
            }
            Answer::Confirm { period } => {
                let until = BootInstant::now() + period;
                self.mem.promised = Some(crate::failsafe::promise(self.mem.promised.take(), &request.node_id, until));
                debug!(asker = %request.node_id, token = %request.token, "failsafe: confirmed; not contending for {} ms", period.as_millis());
                FailsafeResponse {
                    node_id: me,
                    accepted: true,
                    reason: format!("not active; will not contend for {} ms", period.as_millis()),
                }
            }
        }
    }

    /// Applies a new configuration: timing of the loop, lease and backoff change live; the
    /// sections that bind resources (coordinator, master, health monitor, fencing, probes,
    /// identity) need a restart and are left as they are.
    fn reload(&mut self, new: AgentConfig) -> String {
        let mut restart = Vec::new();
        let old = &self.cfg;
        if old.cluster != new.cluster || old.node_id != new.node_id {
            restart.push("cluster/node_id");
        }
        if format!("{:?}", old.coordinator) != format!("{:?}", new.coordinator) {
            restart.push("coordinator");
        }
        if format!("{:?}", old.master) != format!("{:?}", new.master) {
            restart.push("master");
        }
        if old.health != new.health {
            restart.push("health");
        }
        if format!("{:?}", old.fencing) != format!("{:?}", new.fencing) {
            restart.push("fencing");
        }
        if old.probes.listen != new.probes.listen {
            restart.push("probes");
        }
        let live_changed = format!("{:?}{:?}{:?}", old.lease, old.election, old.failsafe)
            != format!("{:?}{:?}{:?}", new.lease, new.election, new.failsafe);
        let (cluster, node_id, coordinator, master, health, fencing, probes) = (
            old.cluster.clone(),
            old.node_id.clone(),
            old.coordinator.clone(),
            old.master.clone(),
            old.health,
            old.fencing.clone(),
            old.probes.clone(),
        );
        let merged = AgentConfig { cluster, node_id, coordinator, master, health, fencing, probes, ..new };
        // The live settings must still satisfy the timing rules with the settings kept.
        if let Err(e) = merged.validate() {
            let message = format!("configuration reload refused: {e}");
            warn!("{message}");
            return message;
        }
        self.cfg = merged;
        let applied = if live_changed {
            "applied the new lease, election and failsafe settings"
        } else {
            "no live setting changed"
        };
        let message = if restart.is_empty() {
            format!("configuration reloaded: {applied}")
        } else {
            format!(
                "configuration reloaded: {applied}; changes to {} need a restart and were not applied",
                restart.join(", ")
            )
        };
        info!("{message}");
        message
    }

    /// Hands the active role over gracefully and stays out of the election for `period`.
    ///
    /// Order matters: the master is demoted and confirms standby first; only then are the
    /// breadcrumb marked clean and the lock released, in one multi through the lock's session.
    /// If the demotion fails, the lock is released with the breadcrumb left unclean, so the next
    /// winner fences this node.
    async fn hand_over(&mut self, coord: Option<&Coordination>, period: Duration) -> Result<String, String> {
        self.mem.backoff_until = Some(BootInstant::now() + period);
        // The first read is bounded by the lease left like every other await while the master
        // may be active; if it fails, the plan still demotes a master that may be active.
        let lock = match coord {
            Some(c) => self.coordinated("reading the lock", c.read_lock()).await.ok(),
            None => None,
        };
        let master = self.status().master;
        let demote_deadline = Duration::from_millis(self.cfg.lease.demote_deadline_ms);
        let (c, token, lock_version) = match plan_handover(lock.as_ref(), self.mem.promoted, master) {
            Handover::NotActive => {
                return Ok(format!("not active; staying out of the election for {} ms", period.as_millis()))
            }
            Handover::DemoteOnly { token } => {
                let deadline = tokio::time::Instant::now() + demote_deadline;
                let demoted = self.adapter.demote(token, deadline).await;
                return match demoted {
                    Ok(s) => {
                        self.master_stepped(s);
                        Ok(format!(
                            "the lock is not held by this session (or could not be read): demoted the master with \
                             token {token}; staying out for {} ms",
                            period.as_millis()
                        ))
                    }
                    Err(e) => Err(format!("the lock could not be confirmed and demoting the master failed: {e}")),
                };
            }
            Handover::StepDown { token, lock_version } => (coord.ok_or("no coordinator session")?, token, lock_version),
        };
        let deadline = tokio::time::Instant::now() + demote_deadline;
        match self.adapter.demote(token, deadline).await {
            Ok(s) => self.master_stepped(s),
            Err(e) => {
                let _ = self.coordinated("releasing the lock", c.release(token)).await;
                return Err(format!(
                    "demoting the master failed ({e}); released the lock with the breadcrumb unclean, so the next active will fence this node"
                ));
            }
        }
        self.status().counters.demotions += 1;
        let crumb_version = match self.coordinated("reading the breadcrumb", c.read_breadcrumb()).await {
            Ok(BreadcrumbView::Present { crumb, version })
                if crumb.node_id == self.cfg.node_id && crumb.token == token =>
            {
                version
            }
            other => {
                let _ = self.coordinated("releasing the lock", c.release(token)).await;
                return Err(format!(
                    "the breadcrumb is not ours ({other:?}); released the lock, the next active will fence"
                ));
            }
        };
        let mut target = self.cfg.own_target();
        target.token = token;
        let crumb = Breadcrumb { node_id: self.cfg.node_id.clone(), token, clean: true, target };
        let stepped = c.step_down_cleanly(&crumb, token, lock_version, crumb_version);
        match self.coordinated("marking the breadcrumb clean", stepped).await {
            Ok(()) => Ok(format!(
                "handed over: master demoted with token {token}, breadcrumb marked clean and lock released; staying out for {} ms",
                period.as_millis()
            )),
            Err(e) => {
                let _ = self.coordinated("releasing the lock", c.release(token)).await;
                Err(format!("{e}; released the lock, the next active will fence"))
            }
        }
    }

    /// Records what the master answered to a demotion made outside a cycle.
    fn master_stepped(&mut self, status: crate::model::MasterStatus) {
        self.mem.master_answer = Some((status, BootInstant::now()));
        self.mem.promoted = track_promoted(self.mem.promoted, Some(status));
        self.status().master = Some(status);
        self.publish_guard();
    }

    /// Starts a graceful failover to this node: checks it can take over, then asks the current
    /// active (through its peer API) to cede. The reply waits for this node to become active.
    async fn start_take_over(&mut self, coord: Option<&Coordination>) -> Result<(), String> {
        let (health, paused) = {
            let st = self.status();
            (st.health.clone(), st.paused)
        };
        if !health.is_healthy() {
            return Err(format!("refusing a failover to this node: its master is not healthy ({health:?})"));
        }
        if paused {
            return Err("refusing a failover to this node: it is paused".into());
        }
        let c = coord.ok_or("refusing a failover: this node has no coordinator session")?;
        self.mem.backoff_until = None;
        self.ask_to_cede(c).await
    }

    /// Asks the current active (through the peer API address it publishes) to hand over and
    /// stay out for a while. Nothing to do when nobody, or this node, is active.
    async fn ask_to_cede(&mut self, c: &Coordination) -> Result<(), String> {
        let Some((record, _meta)) = self.coordinated("reading the lock", c.read_lock_record()).await? else {
            return Ok(()); // nobody is active: this node will contend on its next cycle
        };
        if record.node_id == self.cfg.node_id {
            return Ok(());
        }
        let url = record.peer_url.ok_or_else(|| {
            format!("the active node {} publishes no peer API address to ask it to cede", record.node_id)
        })?;
        // The active stays out just long enough for this node to notice the free lock and win
        // it; should this node fail to, the cluster is not left without an active for long.
        let period_ms = self.cfg.coordinator.op_timeout_ms * 2 + self.cfg.election.loop_interval_ms * 5;
        let mut request = self
            .peer_http
            .post(format!("{}/admin/cede", url.trim_end_matches('/')))
            .json(&serde_json::json!({ "period_ms": period_ms }));
        if let Some(secret) = &self.cfg_peer_secret() {
            request = request.bearer_auth(secret);
        }
        let answer = request
            .timeout(Duration::from_millis(self.cfg.lease.demote_deadline_ms + self.cfg.coordinator.op_timeout_ms * 4))
            .send()
            .await
            .map_err(|e| format!("asking {} to cede: {e}", record.node_id))?;
        if !answer.status().is_success() {
            let body = answer.text().await.unwrap_or_default();
            return Err(format!("{} refused to cede: {body}", record.node_id));
        }
        Ok(())
    }

    /// The shared secret of the peer API, if configured.
    fn cfg_peer_secret(&self) -> Option<String> {
        self.peer_secret.clone()
    }

    /// Answers a pending failover once this node is active, or when its deadline passes.
    fn settle_failover(&mut self) {
        let Some((_, started, deadline)) = &self.mem.pending_failover else { return };
        let (started, deadline) = (*started, *deadline);
        let (role, token, phases) = {
            let st = self.status();
            (st.role, st.token, st.history.back().and_then(|t| t.phases))
        };
        let now = BootInstant::now();
        let result = if role == Role::Active {
            Ok(format!(
                "{} is active with token {} after {} ms{}",
                self.cfg.node_id,
                token.map_or(0, |t| t.0),
                now.saturating_since(started).as_millis(),
                phases.map_or(String::new(), |p| format!(
                    " (detect {} ms, elect {} ms, fence {} ms, promote {} ms)",
                    p.detect_ms, p.elect_ms, p.fence_ms, p.promote_ms
                ))
            ))
        } else if now >= deadline {
            Err(format!("{} did not become active in time; last decision: {}", self.cfg.node_id, self.mem.last_reason))
        } else {
            return;
        };
        if let Some((reply, _, _)) = self.mem.pending_failover.take() {
            let _ = reply.send(result);
        }
    }
}

/// What a target's master answers on `GET /ha/state` within 500 ms, if it answers.
async fn ha_state(http: &reqwest::Client, target: &FenceTarget) -> Option<HaStatus> {
    let url = format!("{}/ha/state", target.ha_base_url());
    match http.get(&url).timeout(Duration::from_millis(500)).send().await {
        Ok(r) if r.status().is_success() => r.json::<HaStatus>().await.ok(),
        _ => None,
    }
}

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
