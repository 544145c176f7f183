//! The whole agent in process (health monitor, election, decision loop, fencing, lease guard)
//! against the in-process coordinator and two small HTTP masters that record what they are
//! told, in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use referee_failover_agent::config::AgentConfig;
use referee_fencing::{FencingToken, HaState, HaStatus, TokenRequest};
use referee_testkit::{wait_until, Proxy, TestServer};
use tokio::sync::oneshot;

/// A master speaking the HA protocol, logging every role change as `"<name> <role> <token>"`
/// into a log shared by both masters, so the order across them is known.
#[derive(Clone)]
struct FakeMaster {
    name: &'static str,
    state: Arc<Mutex<HaStatus>>,
    log: Arc<Mutex<Vec<String>>>,
    /// `GET /ha/state` never answers while set (health still passes).
    state_hangs: Arc<AtomicBool>,
    /// While set, a step-down does not record the token it came with (a master, or a wrapper
    /// around one, that does not keep tokens on standby).
    forgets_tokens: Arc<AtomicBool>,
    /// Promotions refused (503) before one is taken.
    refusals_left: Arc<std::sync::atomic::AtomicU32>,
    /// `GET /ha/health` answers 503 while set.
    unhealthy: Arc<AtomicBool>,
    /// `POST /ha/standby` never answers while set (a master hung in its step-down).
    demote_hangs: Arc<AtomicBool>,
}

impl FakeMaster {
    async fn start(
        name: &'static str,
        state: HaState,
        token: u64,
        log: Arc<Mutex<Vec<String>>>,
    ) -> Result<(Self, u16)> {
        let me = FakeMaster {
            name,
            state: Arc::new(Mutex::new(HaStatus { state, token: FencingToken(token) })),
            log,
            state_hangs: Arc::default(),
            forgets_tokens: Arc::default(),
            refusals_left: Arc::default(),
            unhealthy: Arc::default(),
            demote_hangs: Arc::default(),
        };
        let app =
            Router::new()
                .route(
                    "/ha/health",
                    get(|State(m): State<FakeMaster>| async move {
                        if m.unhealthy.load(Ordering::SeqCst) {
                            (axum::http::StatusCode::SERVICE_UNAVAILABLE, r#"{"reason": "told to fail"}"#)
                        } else {
                            (axum::http::StatusCode::OK, "ok")
                        }
                    }),
                )
                .route(
                    "/ha/state",
                    get(|State(m): State<FakeMaster>| async move {
                        if m.state_hangs.load(Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                        Json(*m.state.lock().unwrap())
                    }),
                )
                .route(
                    "/ha/active",
                    post(|State(m): State<FakeMaster>, Json(r): Json<TokenRequest>| async move {
                        m.change(HaState::Active, r)
                    }),
                )
                .route(
                    "/ha/standby",
                    post(|State(m): State<FakeMaster>, Json(r): Json<TokenRequest>| async move {
                        if m.demote_hangs.load(Ordering::SeqCst) {
                            std::future::pending::<()>().await;
                        }
                        m.change(HaState::Standby, r)
                    }),
                )
                .with_state(me.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        // Served as the demo master is, with the bounds every Referee listener has.
        tokio::spawn(referee_http_serve::serve_until("fake master", listener, app, std::future::pending()));
        Ok((me, port))
    }

    /// Promotion refuses a token below the highest seen, as a real master does.
    fn change(&self, to: HaState, request: TokenRequest) -> (axum::http::StatusCode, Json<HaStatus>) {
        let mut st = self.state.lock().unwrap();
        let refuse = |left: u32| left.checked_sub(1);
        if to == HaState::Active && self.refusals_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, refuse).is_ok()
        {
            return (axum::http::StatusCode::SERVICE_UNAVAILABLE, Json(*st));
        }
        if to == HaState::Active && request.token < st.token {
            return (axum::http::StatusCode::CONFLICT, Json(*st));
        }
        st.state = to;
        if to == HaState::Active || !self.forgets_tokens.load(Ordering::SeqCst) {
            st.token = st.token.max(request.token);
        }
        let role = if to == HaState::Active { "active" } else { "standby" };
        self.log.lock().unwrap().push(format!("{} {role} {}", self.name, request.token));
        (axum::http::StatusCode::OK, Json(*st))
    }

    fn status(&self) -> HaStatus {
        *self.state.lock().unwrap()
    }
}

/// The fencing section of [`agent_config`]: the peer's master asked to step down.
const GRACEFUL_ONLY: &str = "fencing:
  overall_timeout_ms: 3000
  levels:
    - methods:
        - {kind: graceful, timeout_ms: 1000}
";

fn agent_config(coordinator: &str, own_port: u16, peer_port: u16) -> Result<AgentConfig> {
    agent_config_fencing(coordinator, own_port, peer_port, GRACEFUL_ONLY)
}

/// [`agent_config`] with its own `fencing` section.
fn agent_config_fencing(coordinator: &str, own_port: u16, peer_port: u16, fencing: &str) -> Result<AgentConfig> {
    node_config(coordinator, ("a", own_port), ("b", peer_port, ""), fencing)
}

/// The configuration of node `me` (its master on `own_port`) beside node `peer` (its master on
/// `peer_port`, and `peer_extra` added to its `peers` entry), with `fencing` as its fencing
/// section.
fn node_config(
    coordinator: &str,
    (me, own_port): (&str, u16),
    (peer, peer_port, peer_extra): (&str, u16, &str),
    fencing: &str,
) -> Result<AgentConfig> {
    let yaml = format!(
        r#"
cluster: wiped
node_id: {me}
peers:
  - {{node_id: {peer}, host: 127.0.0.1, port: {peer_port}, ha_url: "http://127.0.0.1:{peer_port}"{peer_extra}}}
coordinator: {{connect: "{coordinator}", session_timeout_ms: 2500, op_timeout_ms: 800}}
master:
  host: 127.0.0.1
  port: {own_port}
  ha_url: "http://127.0.0.1:{own_port}"
  adapter: {{kind: http, url: "http://127.0.0.1:{own_port}"}}
health: {{interval_ms: 50, timeout_ms: 300, rise: 1, fall: 3}}
election: {{loop_interval_ms: 50}}
{fencing}probes: {{listen: "127.0.0.1:1"}}
"#
    );
    AgentConfig::from_yaml(&yaml).context("the test's agent configuration")
}

/// The agent run in process with a handle on its control channel, as the admin API has.
struct ControlledAgent {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), referee_failover_agent::driver::AgentError>>,
}

impl ControlledAgent {
    async fn start(
        cfg: AgentConfig,
    ) -> Result<(tokio::sync::mpsc::Sender<referee_failover_agent::control::ControlRequest>, ControlledAgent)> {
        let probes = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::start_on(cfg, probes).await
    }

    /// The same, serving its probes (`/history` among them) on `probes`.
    async fn start_on(
        cfg: AgentConfig,
        probes: tokio::net::TcpListener,
    ) -> Result<(tokio::sync::mpsc::Sender<referee_failover_agent::control::ControlRequest>, ControlledAgent)> {
        let (stop, stopped) = oneshot::channel::<()>();
        let (control_tx, control_rx) = tokio::sync::mpsc::channel(4);
        let task = tokio::spawn(referee_failover_agent::driver::run_with_control(
            cfg,
            probes,
            control_tx.clone(),
            control_rx,
            async move {
                let _ = stopped.await;
            },
        ));
        Ok((control_tx, ControlledAgent { stop, task }))
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task).await.context("the agent stops")???;
        Ok(())
    }
}

/// The coordinator lost everything (here: it is new) while b's master was active with token 5
/// and b's agent was hung, so neither a breadcrumb nor b's membership exists. a wins the lock
/// and must fence b, which it knows only from its configuration, before it promotes its own
/// master, with a token above b's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_without_breadcrumb_fences_the_configured_peer_first() -> Result<()> {
    let server = TestServer::start().await?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let (b, b_port) = FakeMaster::start("b", HaState::Active, 5, log.clone()).await?;
    let (a, a_port) = FakeMaster::start("a", HaState::Standby, 0, log.clone()).await?;
    let cfg = agent_config(&server.connect_string(), a_port, b_port)?;
    let probes = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(referee_failover_agent::driver::run(cfg, probes, async move {
        let _ = stopped.await;
    }));

    wait_until(Duration::from_secs(20), "a's master to be promoted", || a.status().state == HaState::Active).await?;
    let promoted = a.status().token;
    let events = log.lock().unwrap().clone();
    let fenced = events.iter().position(|e| e.starts_with("b standby "));
    let active = events.iter().position(|e| *e == format!("a active {promoted}"));
    ensure!(
        matches!((fenced, active), (Some(f), Some(p)) if f < p),
        "b was not fenced before a was promoted: {events:?}"
    );
    ensure!(b.status().state == HaState::Standby, "b's master still {:?}", b.status());
    ensure!(promoted > FencingToken(5), "a was promoted with {promoted}, not above b's 5: {events:?}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), agent).await.context("the agent stops")???;
    ensure!(a.status().state == HaState::Standby, "shutting down hands over: {:?}", a.status());
    server.stop().await
}

/// Polls the agent's `/history` until a transition matches `wanted` (within 10 s); returns the
/// latest such transition and the whole history.
async fn history_showing(
    url: &str,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> Result<(serde_json::Value, serde_json::Value)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let history: serde_json::Value = reqwest::get(url).await?.json().await?;
        let found = history["transitions"].as_array().and_then(|all| all.iter().rev().find(|t| wanted(t)).cloned());
        match found {
            Some(t) => return Ok((t, history)),
            None if tokio::time::Instant::now() > deadline => anyhow::bail!("no {what} in /history: {history}"),
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The in-process coordinator behind a proxy the test can cut, both fake masters on standby,
/// and node a's agent configuration reaching the coordinator through the proxy.
struct CutOff {
    server: TestServer,
    proxy: Proxy,
    /// Both masters' role changes, in order.
    log: Arc<Mutex<Vec<String>>>,
    a: FakeMaster,
    cfg: AgentConfig,
}

impl CutOff {
    async fn start() -> Result<CutOff> {
        let server = TestServer::start().await?;
        let proxy = Proxy::start(server.addr).await?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (_b, b_port) = FakeMaster::start("b", HaState::Standby, 0, log.clone()).await?;
        let (a, a_port) = FakeMaster::start("a", HaState::Standby, 0, log.clone()).await?;
        let cfg = agent_config(&proxy.addr.to_string(), a_port, b_port)?;
        Ok(CutOff { server, proxy, log, a, cfg })
    }
}

/// The active's master answers its health checks but not `GET /ha/state`, and the coordinator
/// becomes unreachable: the agent cannot see its master's role, yet must demote it at lease end,
/// while the coordinator still holds the agent's session (before any peer could take over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_whose_state_cannot_be_read_is_demoted_before_the_session_expires() -> Result<()> {
    let CutOff { server, mut proxy, log, a, cfg } = CutOff::start().await?;
    let probes = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(referee_failover_agent::driver::run(cfg, probes, async move {
        let _ = stopped.await;
    }));
    wait_until(Duration::from_secs(20), "a's master to be promoted", || a.status().state == HaState::Active).await?;
    let sessions = server.session_ids();
    ensure!(sessions.len() == 1, "one agent, one session: {sessions:?}");

    a.state_hangs.store(true, Ordering::SeqCst);
    proxy.cut();
    wait_until(Duration::from_secs(10), "a's master to be demoted", || a.status().state == HaState::Standby).await?;
    // The ensemble expires the session only a whole session timeout after the last request it
    // answered; the lease ended well before that.
    ensure!(server.session_ids() == sessions, "the session was gone before the master was demoted");
    ensure!(log.lock().unwrap().last().is_some_and(|e| e.starts_with("a standby ")), "{:?}", log.lock().unwrap());

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), agent).await.context("the agent stops")???;
    server.stop().await
}

/// An active cut off from the coordinator steps down at the end of its lease, and `/history`
/// says when: its role change away from active carries a `lease_ended` mark, after the cut and
/// no later than the change itself. Without it, an operator (or the demo's timeline) sees the
/// step-down but not the moment the master stopped being allowed to serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_cut_off_marks_its_lease_end_in_the_history() -> Result<()> {
    let CutOff { server, mut proxy, a, cfg, .. } = CutOff::start().await?;
    let probes = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let history_url = format!("http://{}/history", probes.local_addr()?);
    let (_control, agent) = ControlledAgent::start_on(cfg, probes).await?;
    wait_until(Duration::from_secs(20), "a's master to be promoted", || a.status().state == HaState::Active).await?;

    let wall_us = || referee_failover_agent::timeline::wall_us(std::time::SystemTime::now());
    let cut_us = wall_us();
    proxy.cut();
    wait_until(Duration::from_secs(10), "a's master to be demoted", || a.status().state == HaState::Standby).await?;
    // The step-down, as /history shows it once the decision loop has seen the master demoted.
    let (step_down, history) = history_showing(&history_url, "a step-down", |t| t["from"] == "active").await?;
    let lease_ended = step_down["timeline"]
        .as_array()
        .and_then(|marks| marks.iter().find(|m| m["event"] == "lease_ended"))
        .and_then(|m| m["at_us"].as_i64())
        .with_context(|| format!("the step-down shows no lease_ended mark: {history}"))?;
    let changed_us = step_down["at_ms"].as_i64().context("the step-down has a time")? * 1000;
    ensure!(lease_ended > cut_us, "the lease ended {} µs before the cut: {history}", cut_us - lease_ended);
    // at_ms is whole milliseconds: allow for its rounding.
    ensure!(lease_ended <= changed_us + 1000, "the lease ended after the step-down: {history}");

    agent.stop().await?;
    server.stop().await
}

/// An active asked to cede (a switchover's first half) hands over, and `/history` shows how:
/// its role change away from active carries the request, the demotion and the lock's release,
/// in that order, and the request no earlier than it was made. Without them a switchover's
/// timeline starts at the new active's cycle, with the old side's time unaccounted for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_that_cedes_shows_its_handover_in_the_history() -> Result<()> {
    use referee_failover_agent::control::ControlRequest;
    // The proxy is kept (never cut): dropping it would cut the agent off.
    let CutOff { server, proxy: _proxy, a, cfg, .. } = CutOff::start().await?;
    let probes = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let history_url = format!("http://{}/history", probes.local_addr()?);
    let (control_tx, agent) = ControlledAgent::start_on(cfg, probes).await?;
    wait_until(Duration::from_secs(20), "a's master to be promoted", || a.status().state == HaState::Active).await?;

    let asked_us = referee_failover_agent::timeline::wall_us(std::time::SystemTime::now());
    let (reply, ceded) = oneshot::channel();
    control_tx.send(ControlRequest::Cede { period: Duration::from_secs(30), reply }).await?;
    let message = tokio::time::timeout(Duration::from_secs(10), ceded)
        .await?
        .context("cede answered")?
        .map_err(anyhow::Error::msg)?;
    ensure!(message.contains("handed over"), "the handover: {message}");
    ensure!(a.status().state == HaState::Standby, "a's master after the cede: {:?}", a.status());

    let (step_down, history) = history_showing(&history_url, "a step-down", |t| t["from"] == "active").await?;
    let events: Vec<(String, i64)> = step_down["timeline"]
        .as_array()
        .map(|marks| {
            marks.iter().filter_map(|m| Some((m["event"].as_str()?.to_owned(), m["at_us"].as_i64()?))).collect()
        })
        .unwrap_or_default();
    let at = |name: &str| events.iter().find(|(e, _)| e == name).map(|(_, t)| *t);
    let order = ["cede_requested", "demote_sent", "demote_done", "lock_released"].map(at);
    let [Some(requested), Some(sent), Some(done), Some(released)] = order else {
        anyhow::bail!("the step-down's timeline lacks the handover's marks: {events:?} in {history}");
    };
    ensure!(requested >= asked_us, "the request is marked before it was made: {events:?}");
    ensure!(requested <= sent && sent <= done && done <= released, "the handover's marks out of order: {events:?}");

    agent.stop().await?;
    server.stop().await
}

/// The fencing chain is checked while nothing needs fencing: a method that would fail shows
/// in `/status` and `/metrics` within a check interval, and is cleared once it would work;
/// the peer's master is never fenced by a check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fencing_chain_is_checked_while_nothing_needs_fencing() -> Result<()> {
    let server = TestServer::start().await?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let (b, b_port) = FakeMaster::start("b", HaState::Standby, 0, log.clone()).await?;
    let (a, a_port) = FakeMaster::start("a", HaState::Standby, 0, log.clone()).await?;
    let dir = referee_testkit::ScratchDir::new("fence-checks")?;
    let program = dir.path("fence-b");
    let fencing = format!(
        "fencing:\n  overall_timeout_ms: 3000\n  check_interval_ms: 1000\n  levels:\n    - methods:\n        - {{kind: graceful, timeout_ms: 1000}}\n    - methods:\n        - {{kind: shell, timeout_ms: 1000, program: {}}}\n",
        program.display()
    );
    let cfg = agent_config_fencing(&server.connect_string(), a_port, b_port, &fencing)?;
    let probes = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", probes.local_addr()?);
    let (_control, agent) = ControlledAgent::start_on(cfg, probes).await?;
    // a takes the lock and, finding no breadcrumb, fences b once before it promotes; what b's
    // master is told from then on is the checks' doing.
    wait_until(Duration::from_secs(20), "a's master to be promoted", || a.status().state == HaState::Active).await?;
    let told_b = || log.lock().unwrap().iter().filter(|e| e.starts_with("b ")).count();
    let told_b_before = told_b();

    let checks = |pred: fn(&serde_json::Value) -> bool, what: &'static str| {
        let url = format!("{base}/status");
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let status: serde_json::Value = reqwest::get(&url).await?.json().await?;
                let checks = status["fencing_checks"].clone();
                if pred(&checks) {
                    return anyhow::Ok(checks);
                }
                ensure!(tokio::time::Instant::now() < deadline, "no {what} in /status: {status}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    // The program is missing: one problem, named, on the shell method; graceful is ready.
    let found = checks(|c| c["problems"] == 1, "fencing check problem").await?;
    let methods = found["peers"][0]["checks"].as_array().context("the checks of peer b")?.clone();
    ensure!(found["peers"][0]["node_id"] == "b", "{found}");
    ensure!(methods[0]["readiness"] == "ready", "graceful against b's master: {found}");
    ensure!(methods[0]["detail"].as_str().is_some_and(|d| d.contains("/ha/state")), "{found}");
    ensure!(methods[1]["readiness"] == "problem", "{found}");
    ensure!(methods[1]["reason"].as_str().is_some_and(|r| r.contains("fence-b")), "{found}");
    let metrics = reqwest::get(format!("{base}/metrics")).await?.text().await?;
    ensure!(metrics.contains("referee_agent_fencing_check_problems{cluster=\"wiped\",node=\"a\"} 1\n"), "{metrics}");

    // Once the program is there, the next round clears it.
    dir.script("fence-b", "#!/bin/sh\nexit 0\n")?;
    checks(|c| c["problems"] == 0, "cleared fencing check").await?;
    let metrics = reqwest::get(format!("{base}/metrics")).await?.text().await?;
    ensure!(metrics.contains("referee_agent_fencing_check_problems{cluster=\"wiped\",node=\"a\"} 0\n"), "{metrics}");
    // The checks fenced nothing: b's master was never told to step down.
    ensure!(told_b() == told_b_before, "the checks told b's master to change: {:?}", log.lock().unwrap());
    ensure!(b.status().state == HaState::Standby, "b's master: {:?}", b.status());

    agent.stop().await?;
    server.stop().await
}

/// A round of checks that runs while a fence is under way says nothing of the chain (every
/// method of the fencer gives way to the fence and reads "unchecked"): it is answered as having
/// given way, and neither published nor compared with the last, so no problem reads as gone
/// because a fence was running. Once the fence is over, a round is answered as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_asked_for_during_a_fence_gives_way_to_it() -> Result<()> {
    use referee_failover_agent::fence_checks::{run, CheckNow, Round};
    use referee_failover_agent::status::AgentStatus;
    use referee_fencing::{FenceTarget, Fencer, Readiness};

    let dir = referee_testkit::ScratchDir::new("check-during-fence")?;
    let release = dir.path("release");
    // The fence runs until the test lets it end.
    let program = dir.script(
        "slow-fence",
        &format!("#!/bin/sh\nwhile [ ! -e '{}' ]; do sleep 0.02; done\nexit 0\n", release.display()),
    )?;
    let yaml = format!(
        "overall_timeout_ms: 30000\nlevels:\n  - methods:\n      - {{kind: shell, timeout_ms: 20000, program: {}}}\n",
        program.display()
    );
    let fencer = Arc::new(Fencer::from_yaml_str(&yaml)?);
    let target = FenceTarget::new("b", "127.0.0.1", 1, FencingToken(3));
    let status = Arc::new(Mutex::new(AgentStatus::new("c", "a")));
    let (checks, asks) = CheckNow::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run(fencer.clone(), vec![target.clone()], Duration::ZERO, status.clone(), asks, async {
        let _ = stopped.await;
    }));

    let begun = fencer.acts_begun();
    let fence = tokio::spawn({
        let (fencer, target) = (fencer.clone(), target.clone());
        async move { fencer.fence(&target, FencingToken(4)).await }
    });
    wait_until(Duration::from_secs(10), "the fence to begin", || fencer.acts_begun() == begun + 1).await?;
    let during = checks.round(Duration::from_secs(10)).await?;
    ensure!(during == Round::GaveWay, "a round during the fence: {during:?}");
    ensure!(status.lock().unwrap().fencing_checks.is_none(), "a round that gave way was published");

    std::fs::write(&release, "")?;
    let report = tokio::time::timeout(Duration::from_secs(10), fence).await??;
    ensure!(report.outcome.permits_promotion(), "{report:?}");
    let Round::Done(after) = checks.round(Duration::from_secs(10)).await? else {
        anyhow::bail!("a round with no fence under way gave way")
    };
    let readiness = &after.peers[0].checks[0].readiness;
    ensure!(matches!(readiness, Readiness::Ready { .. }), "the shell method after the fence: {readiness:?}");
    ensure!(status.lock().unwrap().fencing_checks.as_ref() == Some(&after), "the round is in the status");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), task).await??;
    Ok(())
}

/// Maintenance mode stops failovers, never the end of a lease: a paused active agent whose
/// coordinator becomes unreachable still demotes its master while the session is still held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_agent_still_demotes_at_lease_end() -> Result<()> {
    use referee_failover_agent::control::ControlRequest;
    let CutOff { server, mut proxy, a, cfg, .. } = CutOff::start().await?;
    let (control_tx, agent) = ControlledAgent::start(cfg).await?;
    wait_until(Duration::from_secs(20), "a's master to be promoted", || a.status().state == HaState::Active).await?;
    let sessions = server.session_ids();
    let (reply, paused) = oneshot::channel();
    control_tx.send(ControlRequest::Pause { reply }).await?;
    tokio::time::timeout(Duration::from_secs(5), paused)
        .await?
        .context("pause answered")?
        .map_err(anyhow::Error::msg)?;

    proxy.cut();
    wait_until(Duration::from_secs(10), "a's master to be demoted", || a.status().state == HaState::Standby).await?;
    ensure!(server.session_ids() == sessions, "the session was gone before the master was demoted");

    agent.stop().await?;
    server.stop().await
}

/// A peer asks this agent to fence its master with the peer's new token: the master's
/// step-down counts only once the master has recorded that token. A master that steps down
/// but keeps an older token could still accept a delayed promotion carrying it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_fence_is_fenced_only_when_the_master_records_the_new_token() -> Result<()> {
    use referee_failover_agent::control::ControlRequest;
    use referee_fencing::MethodOutcome;
    let server = TestServer::start().await?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let (_b, b_port) = FakeMaster::start("b", HaState::Standby, 0, log.clone()).await?;
    let (a, a_port) = FakeMaster::start("a", HaState::Standby, 0, log.clone()).await?;
    let cfg = agent_config(&server.connect_string(), a_port, b_port)?;
    let (control_tx, agent) = ControlledAgent::start(cfg).await?;
    wait_until(Duration::from_secs(20), "a's master to be promoted", || a.status().state == HaState::Active).await?;
    let promoted = a.status().token;
    let peer_fence = |token: FencingToken| {
        let control_tx = control_tx.clone();
        async move {
            let (reply, answered) = oneshot::channel();
            control_tx.send(ControlRequest::PeerFence { token, reply }).await?;
            tokio::time::timeout(Duration::from_secs(5), answered).await?.context("the fence answered")
        }
    };

    a.forgets_tokens.store(true, Ordering::SeqCst);
    let newer = FencingToken(promoted.0 + 100);
    let outcome = peer_fence(newer).await?;
    ensure!(a.status() == HaStatus { state: HaState::Standby, token: promoted }, "{:?}", a.status());
    ensure!(
        matches!(&outcome, MethodOutcome::Failed { reason } if reason.contains("below the new token")),
        "a standby still holding token {promoted} reported as fenced for {newer}: {outcome:?}"
    );

    a.forgets_tokens.store(false, Ordering::SeqCst);
    let outcome = peer_fence(newer).await?;
    ensure!(matches!(outcome, MethodOutcome::Fenced { .. }), "{outcome:?}");
    ensure!(a.status() == HaStatus { state: HaState::Standby, token: newer }, "{:?}", a.status());

    agent.stop().await?;
    server.stop().await
}

/// A promotion given up after its fence: a wins the lock, fences b, writes its breadcrumb, and
/// its master refuses the promotion, so a releases the lock and backs off. Its next acquisition
/// finds its own breadcrumb and rightly fences no one. The fence that made the promotion safe
/// happened in the abandoned attempt, and `/history` must still show it: an operator reading
/// why a became active, with b's master turned off, must find who fenced it and how.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_given_up_after_its_fence_keeps_the_fence_in_the_history() -> Result<()> {
    let server = TestServer::start().await?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let (b, b_port) = FakeMaster::start("b", HaState::Active, 5, log.clone()).await?;
    let (a, a_port) = FakeMaster::start("a", HaState::Standby, 0, log.clone()).await?;
    a.refusals_left.store(1, Ordering::SeqCst);
    let mut cfg = agent_config(&server.connect_string(), a_port, b_port)?;
    cfg.election.backoff_after_failure_ms = 300;
    let probes = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let history_url = format!("http://{}/history", probes.local_addr()?);
    let (_control, agent) = ControlledAgent::start_on(cfg, probes).await?;

    wait_until(Duration::from_secs(20), "a's master to be promoted", || a.status().state == HaState::Active).await?;
    ensure!(a.refusals_left.load(Ordering::SeqCst) == 0, "the first promotion was not refused");
    ensure!(b.status().state == HaState::Standby, "b's master still {:?}", b.status());
    // The master answers active before the cycle that promoted it records the role change.
    let (_, history) = history_showing(&history_url, "a promotion", |t| t["to"] == "active").await?;
    let transitions = history["transitions"].as_array().context("/history lists transitions")?.clone();
    let promoted = transitions
        .iter()
        .rposition(|t| t["to"] == "active")
        .with_context(|| format!("no promotion in the history: {history}"))?;
    ensure!(
        transitions[promoted]["reason"].as_str().is_some_and(|r| r.contains("no fencing needed")),
        "the promotion was expected to follow an abandoned attempt of a's own: {history}"
    );
    let fence_shown = transitions[..=promoted].iter().any(|t| {
        t["timeline"].as_array().is_some_and(|marks| {
            marks.iter().any(|m| m["event"].as_str().is_some_and(|e| e.starts_with("fence b by graceful: fenced")))
        })
    });
    ensure!(fence_shown, "the history up to a's promotion does not show b fenced: {history}");

    agent.stop().await?;
    server.stop().await
}

/// Polls the agent's `/status` until `wanted` holds (within 10 s); returns it.
async fn status_showing(
    url: &str,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let status: serde_json::Value = reqwest::get(url).await?.json().await?;
        if wanted(&status) {
            return Ok(status);
        }
        ensure!(tokio::time::Instant::now() < deadline, "no {what} in /status: {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An agent with failsafe on may, before it was restarted, have promised an active cut off
/// from the coordinator not to contend; nothing of that promise survives the process. So it
/// starts as if it had promised just before it started: a free lock is not contended for
/// `failsafe.ttl_ms`, and `/status` says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failsafe_agent_stays_out_of_the_election_for_a_ttl_after_it_starts() -> Result<()> {
    let server = TestServer::start().await?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let (_b, b_port) = FakeMaster::start("b", HaState::Standby, 0, log.clone()).await?;
    let (a, a_port) = FakeMaster::start("a", HaState::Standby, 0, log.clone()).await?;
    let mut cfg = agent_config(&server.connect_string(), a_port, b_port)?;
    cfg.failsafe.enabled = true;
    cfg.failsafe.ttl_ms = 3000;
    let probes = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let status_url = format!("http://{}/status", probes.local_addr()?);
    let started = std::time::Instant::now();
    let (_control, agent) = ControlledAgent::start_on(cfg, probes).await?;

    let held = status_showing(&status_url, "the start-up promise", |s| s["blocker"]["blocker"] == "promised").await?;
    ensure!(
        held["why_not"].as_str().is_some_and(|w| w.contains("before this agent started")),
        "the reason is not given: {held}"
    );
    ensure!(a.status().state == HaState::Standby, "a's master promoted during its start-up promise");
    wait_until(Duration::from_secs(20), "a's master to be promoted", || a.status().state == HaState::Active).await?;
    ensure!(
        started.elapsed() >= Duration::from_millis(3000),
        "a contended {:?} after it started, inside its failsafe ttl",
        started.elapsed()
    );

    agent.stop().await?;
    server.stop().await
}

/// b hands over cleanly (its breadcrumb says so) and its agent stops; a wins the lock. Taking
/// b's master's word that it is standby would leave it holding b's old token, and a late
/// promotion carrying that token (sent before the handover, delivered after it) would count as
/// a retry there. So a's check of the clean claim is itself a step-down carrying a's new token:
/// b's master holds it before a's master is promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_step_down_is_verified_by_a_step_down_with_the_new_token() -> Result<()> {
    use referee_failover_agent::control::ControlRequest;
    let server = TestServer::start().await?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let (b, b_port) = FakeMaster::start("b", HaState::Standby, 0, log.clone()).await?;
    let (a, a_port) = FakeMaster::start("a", HaState::Standby, 0, log.clone()).await?;
    let b_cfg = node_config(&server.connect_string(), ("b", b_port), ("a", a_port, ""), GRACEFUL_ONLY)?;
    let (b_control, b_agent) = ControlledAgent::start(b_cfg).await?;
    wait_until(Duration::from_secs(20), "b's master to be promoted", || b.status().state == HaState::Active).await?;
    let old = b.status().token;
    let (reply, ceded) = oneshot::channel();
    b_control.send(ControlRequest::Cede { period: Duration::from_secs(60), reply }).await?;
    let message = tokio::time::timeout(Duration::from_secs(10), ceded)
        .await?
        .context("cede answered")?
        .map_err(anyhow::Error::msg)?;
    ensure!(message.contains("handed over"), "b's handover: {message}");
    b_agent.stop().await?;
    ensure!(b.status() == HaStatus { state: HaState::Standby, token: old }, "b's master: {:?}", b.status());

    let (_a_control, a_agent) = ControlledAgent::start(agent_config(&server.connect_string(), a_port, b_port)?).await?;
    wait_until(Duration::from_secs(20), "a's master to be promoted", || a.status().state == HaState::Active).await?;
    let new = a.status().token;
    ensure!(new > old, "a was promoted with {new}, not above b's {old}");
    ensure!(
        b.status() == HaStatus { state: HaState::Standby, token: new },
        "b's master still holds {:?}: a promotion carrying {old} would be taken as a retry",
        b.status()
    );
    let events = log.lock().unwrap().clone();
    let told = events.iter().position(|e| *e == format!("b standby {new}"));
    let promoted = events.iter().position(|e| *e == format!("a active {new}"));
    ensure!(
        matches!((told, promoted), (Some(t), Some(p)) if t < p),
        "b's master was not given the new token before a's was promoted: {events:?}"
    );

    a_agent.stop().await?;
    server.stop().await
}

/// An active kept by failsafe through a coordinator outage comes back to a coordinator that
/// refuses its new session for good (another agent has registered its node id). The agent
/// stops, but only after demoting its master: it leaves no master active with no agent and no
/// lease guard behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_coordinator_error_after_the_start_demotes_the_master_before_stopping() -> Result<()> {
    use referee_failover_agent::failsafe::{FailsafeResponse, PEER_FAILSAFE_PATH};
    let server = TestServer::start().await?;
    let proxy = Proxy::start(server.addr).await?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let (_b, b_port) = FakeMaster::start("b", HaState::Standby, 0, log.clone()).await?;
    let (a, a_port) = FakeMaster::start("a", HaState::Standby, 0, log.clone()).await?;
    // b's agent as a failsafe round sees it: it confirms every round.
    let peer = Router::new().route(
        PEER_FAILSAFE_PATH,
        post(|| async { Json(FailsafeResponse { node_id: "b".into(), accepted: true, reason: "not active".into() }) }),
    );
    let peer_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let peer_url = format!("http://{}", peer_listener.local_addr()?);
    tokio::spawn(async move { axum::serve(peer_listener, peer).await });
    let mut cfg = node_config(
        &proxy.addr.to_string(),
        ("a", a_port),
        ("b", b_port, &format!(", peer_url: \"{peer_url}\"")),
        GRACEFUL_ONLY,
    )?;
    cfg.failsafe.enabled = true;
    cfg.failsafe.ttl_ms = 4000;
    let (_control, agent) = ControlledAgent::start(cfg).await?;
    wait_until(Duration::from_secs(20), "a's master to be promoted", || a.status().state == HaState::Active).await?;

    proxy.black_hole();
    wait_until(Duration::from_secs(15), "a's session to expire on the ensemble", || server.session_ids().is_empty())
        .await?;
    ensure!(a.status().state == HaState::Active, "failsafe did not keep a's master active: {:?}", a.status());
    // A node id registered by someone else for good: a's next session cannot register.
    let outsider = server.client().await?;
    let persistent = zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
    outsider.create("/referee/wiped/members/a", b"{}", &persistent).await?;
    proxy.heal();

    let ended = tokio::time::timeout(Duration::from_secs(20), agent.task).await.context("the agent stops")??;
    ensure!(ended.is_err(), "the agent ran on with its node id taken: {ended:?}");
    ensure!(a.status().state == HaState::Standby, "the agent stopped with its master still active: {:?}", a.status());
    drop(agent.stop);
    server.stop().await
}

/// An active's master fails and will not step down: the agent releases the lock (the next
/// active fences it). From that moment `/lease` gives its master nothing and `/active` is not
/// 200, even while the coordinator goes silent before the agent reads the lock again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lock_is_not_shown_as_held() -> Result<()> {
    let CutOff { server, proxy, a, cfg, .. } = CutOff::start().await?;
    let probes = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", probes.local_addr()?);
    let (_control, agent) = ControlledAgent::start_on(cfg, probes).await?;
    wait_until(Duration::from_secs(20), "a's master to be promoted", || a.status().state == HaState::Active).await?;

    let watcher = server.client().await?;
    a.demote_hangs.store(true, Ordering::SeqCst);
    a.unhealthy.store(true, Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while watcher.check_stat("/referee/wiped/lock").await?.is_some() {
        ensure!(tokio::time::Instant::now() < deadline, "a never released the lock");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    proxy.black_hole();
    // For a while after the release (the agent's next lock read waits on the silent coordinator).
    let watch_until = tokio::time::Instant::now() + Duration::from_millis(400);
    while tokio::time::Instant::now() < watch_until {
        let lease: serde_json::Value = reqwest::get(format!("{base}/lease")).await?.json().await?;
        ensure!(lease["valid_for_ms"] == 0, "the released lock still gives a lease: {lease}");
        let active = reqwest::get(format!("{base}/active")).await?.status();
        ensure!(active != reqwest::StatusCode::OK, "/active answers {active} after the lock was released");
        let status: serde_json::Value = reqwest::get(format!("{base}/status")).await?.json().await?;
        ensure!(status["lock"]["holder"] != "ours", "the released lock is shown held: {}", status["lock"]);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    proxy.heal();
    a.demote_hangs.store(false, Ordering::SeqCst);
    agent.stop().await?;
    server.stop().await
}

/// An operator's failover whose cede goes unanswered is not settled, never refused: the active
/// was asked and may still cede. The cede names the node it is meant for, so another agent
/// reached at the active's published address refuses it rather than step down in its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_whose_cede_goes_unanswered_is_not_settled() -> Result<()> {
    use referee_failover_agent::control::{ControlRequest, Declined};
    use referee_failover_agent::election::{Acquired, Coordination, CoordinationConfig};
    use referee_failover_agent::model::LockRecord;
    let server = TestServer::start().await?;
    // The active's peer API: takes the cede and never answers, noting whom it was meant for.
    let addressee = Arc::new(Mutex::new(None::<String>));
    let seen = addressee.clone();
    let peer = Router::new().route(
        "/admin/cede",
        post(move |headers: axum::http::HeaderMap| async move {
            let to = headers
                .get(referee_failover_agent::admin::ADDRESSEE_HEADER)
                .map(|v| v.to_str().unwrap_or("?").to_string());
            *seen.lock().unwrap() = Some(to.unwrap_or_else(|| "(none)".into()));
            std::future::pending::<()>().await;
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let peer_url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, peer).await });
    // `a` holds the lock, publishing that peer API.
    let holder = Coordination::connect(CoordinationConfig {
        connect: server.connect_string(),
        cluster: "wiped".into(),
        node_id: "a".into(),
        session_timeout: Duration::from_secs(5),
        op_timeout: Duration::from_secs(1),
        digest: None,
    })
    .await?;
    let record = LockRecord {
        node_id: "a".into(),
        target: referee_fencing::FenceTarget::new("a", "127.0.0.1", 1, FencingToken(0)),
        peer_url: Some(peer_url),
    };
    ensure!(matches!(holder.try_acquire(&record).await?, Acquired::Won { .. }), "a takes the free lock");

    let log = Arc::new(Mutex::new(Vec::new()));
    let (_b, b_port) = FakeMaster::start("b", HaState::Standby, 0, log.clone()).await?;
    let cfg = node_config(&server.connect_string(), ("b", b_port), ("a", 1, ""), GRACEFUL_ONLY)?;
    let (control_tx, agent) = ControlledAgent::start(cfg).await?;
    // Asked once b's health and session are in: a refusal for those reasons is not the point.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let (reply, answered) = oneshot::channel();
        control_tx.send(ControlRequest::Failover { allow_data_loss: false, reply }).await?;
        let answer = tokio::time::timeout(Duration::from_secs(15), answered).await?.context("failover answered")?;
        match &answer {
            Err(Declined::Refused(why)) if std::time::Instant::now() < deadline && !why.contains("cede") => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ => break answer,
        }
    };
    ensure!(
        matches!(&answer, Err(Declined::Unsettled(why)) if why.contains("asking a to cede") && why.contains("may still cede")),
        "an unanswered cede must leave the failover unsettled: {answer:?}"
    );
    ensure!(addressee.lock().unwrap().as_deref() == Some("a"), "the cede named {:?}", addressee.lock().unwrap());
    agent.stop().await?;
    drop(holder);
    server.stop().await
}

/// A connection to `to` from 127.0.0.`host` (loopback answers on all of 127.0.0.0/8, so this
/// is another address than the agent's own 127.0.0.1).
async fn connect_from(host: u8, to: u16) -> Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::from(([127, 0, 0, host], 0)))?;
    Ok(socket.connect(std::net::SocketAddr::from(([127, 0, 0, 1], to))).await?)
}

/// More idle connections to the active's master than its listener keeps, held for 3 s, are
/// load, not a crash: the agent's health checks still get through (one address holds at most
/// its share of the connections; past the limit new ones wait rather than being cut), the
/// master stays healthy and active, and the lock's token does not change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_idle_connections_to_the_master_does_not_fail_it_over() -> Result<()> {
    let server = TestServer::start().await?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let (_b, b_port) = FakeMaster::start("b", HaState::Standby, 0, log.clone()).await?;
    let (a, a_port) = FakeMaster::start("a", HaState::Standby, 0, log.clone()).await?;
    let cfg = agent_config(&server.connect_string(), a_port, b_port)?;
    let probes = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let status_url = format!("http://{}/status", probes.local_addr()?);
    let (_control, agent) = ControlledAgent::start_on(cfg, probes).await?;
    wait_until(Duration::from_secs(20), "a's master to be promoted", || a.status().state == HaState::Active).await?;
    let before = status_showing(&status_url, "a active and healthy", |s| {
        s["role"] == "active" && s["health"]["state"] == "healthy"
    })
    .await?;
    let token = a.status().token;
    ensure!(before["token"] == token.0, "{before}");

    let mut flood = Vec::new();
    for _ in 0..referee_http_serve::MAX_CONNECTIONS + 10 {
        flood.push(connect_from(2, a_port).await?);
    }
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut looked = 0;
    while tokio::time::Instant::now() < until {
        let status: serde_json::Value = reqwest::get(&status_url).await?.json().await?;
        ensure!(
            status["role"] == "active"
                && status["health"]["state"] == "healthy"
                && status["token"] == token.0
                && a.status() == HaStatus { state: HaState::Active, token },
            "{} idle connections to a's master changed its standing after {looked} looks: master {:?}, agent \
             {status}",
            flood.len(),
            a.status()
        );
        looked += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(flood);
    ensure!(log.lock().unwrap().iter().filter(|e| e.starts_with("a ")).count() == 1, "{:?}", log.lock().unwrap());
    agent.stop().await?;
    server.stop().await
}

/// What an endless-body server sent on each connection: the request line and the bytes of
/// body written before the client went away.
type Sent = Arc<Mutex<Vec<(String, usize)>>>;

/// A peer master answering every request `200` with a 10 GB JSON body it streams until the
/// client goes away (at most 64 MiB), 64 KiB every 5 ms.
async fn endless_body_server() -> Result<(u16, Sent)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let sent: Sent = Arc::default();
    let record = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
                let headers =
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10000000000\r\n\r\n";
                if tcp.write_all(headers.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b' '; 64 << 10];
                let mut total = 0;
                let mut pace = tokio::time::interval(Duration::from_millis(5));
                while total < 64 << 20 {
                    pace.tick().await;
                    if tcp.write_all(&chunk).await.is_err() {
                        break;
                    }
                    total += chunk.len();
                }
                record.lock().unwrap().push((line, total));
            });
        }
    });
    Ok((port, sent))
}

/// A fresh cluster: the first holder sets the token base from every peer master's `/ha/state`.
/// A peer answering with an endless body is read no further than the fencing methods read (64
/// KiB) and counted as no answer; the agent goes on and promotes its master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_streaming_an_endless_answer_is_read_no_further_than_the_cap() -> Result<()> {
    let server = TestServer::start().await?;
    let (peer_port, sent) = endless_body_server().await?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let (a, a_port) = FakeMaster::start("a", HaState::Standby, 0, log.clone()).await?;
    let dir = referee_testkit::ScratchDir::new("endless-peer")?;
    let program = dir.script("fence-b", "#!/bin/sh\nexit 0\n")?;
    let fencing = format!(
        "fencing:\n  overall_timeout_ms: 3000\n  levels:\n    - methods:\n        - {{kind: shell, timeout_ms: 1000, program: {}}}\n",
        program.display()
    );
    let cfg = agent_config_fencing(&server.connect_string(), a_port, peer_port, &fencing)?;
    let (_control, agent) = ControlledAgent::start(cfg).await?;
    wait_until(Duration::from_secs(20), "a's master to be promoted", || a.status().state == HaState::Active).await?;
    wait_until(Duration::from_secs(10), "the peer's answer to end", || !sent.lock().unwrap().is_empty()).await?;
    let sent = sent.lock().unwrap().clone();
    ensure!(sent.iter().any(|(line, _)| line.starts_with("GET /ha/state")), "the peer was not asked: {sent:?}");
    for (line, bytes) in &sent {
        ensure!(*bytes < 1 << 20, "{line}: the agent took {bytes} bytes of a peer's answer before dropping it");
    }
    agent.stop().await?;
    server.stop().await
}

/// `/healthz` says whether the decision loop is alive: a long but bounded step (a fence that
/// takes a while), during which the loop keeps the watchdog fed, is not a hung agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_stays_ok_while_a_slow_fence_runs() -> Result<()> {
    let server = TestServer::start().await?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let (_b, b_port) = FakeMaster::start("b", HaState::Standby, 0, log.clone()).await?;
    let (a, a_port) = FakeMaster::start("a", HaState::Standby, 0, log.clone()).await?;
    let dir = referee_testkit::ScratchDir::new("slow-fence-healthz")?;
    let (started, release) = (dir.path("started"), dir.path("release"));
    let program = dir.script(
        "slow-fence",
        &format!(
            "#!/bin/sh\ntouch '{}'\nwhile [ ! -e '{}' ]; do sleep 0.02; done\nexit 0\n",
            started.display(),
            release.display()
        ),
    )?;
    let fencing = format!(
        "fencing:\n  overall_timeout_ms: 30000\n  levels:\n    - methods:\n        - {{kind: shell, timeout_ms: 20000, program: {}}}\n",
        program.display()
    );
    let cfg = agent_config_fencing(&server.connect_string(), a_port, b_port, &fencing)?;
    let probes = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let healthz = format!("http://{}/healthz", probes.local_addr()?);
    let (_control, agent) = ControlledAgent::start_on(cfg, probes).await?;
    wait_until(Duration::from_secs(20), "the fence of b to start", || started.exists()).await?;
    // A second of fence is several of the loop's liveness windows (3 × 50 ms).
    let until = tokio::time::Instant::now() + Duration::from_secs(1);
    while tokio::time::Instant::now() < until {
        let answer = reqwest::get(&healthz).await?;
        let code = answer.status();
        let body = answer.text().await?;
        ensure!(code == 200, "/healthz answered {code} during a fence the loop tends: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&release, "")?;
    wait_until(Duration::from_secs(20), "a's master to be promoted", || a.status().state == HaState::Active).await?;
    agent.stop().await?;
    server.stop().await
}
