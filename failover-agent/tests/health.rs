//! The health monitor's driver against a real local HTTP master (and, where exact call
//! counting matters, a fake adapter).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use referee_failover_agent::adapter::{
    AdapterError, AdapterFuture, HealthProblem, HttpAdapter, HttpAdapterConfig, MasterAdapter,
};
use referee_failover_agent::health::{run_health_monitor, HealthConfig, HealthReport};
use referee_failover_agent::model::{Health, MasterStatus};
use referee_fencing::{FencingToken, HaState, HaStatus};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

const HEALTHY: u8 = 0;
const UNHEALTHY: u8 = 1;
const HANG: u8 = 2;

/// A master whose health the test switches; it can be stopped so its port refuses.
struct Master {
    knobs: Arc<Knobs>,
    url: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// What the test controls and observes.
#[derive(Default)]
struct Knobs {
    /// [`HEALTHY`], [`UNHEALTHY`] or [`HANG`].
    mode: AtomicU8,
    /// Signalled when a health request starts hanging.
    hung: Notify,
}

async fn health(State(knobs): State<Arc<Knobs>>) -> Response {
    match knobs.mode.load(Ordering::SeqCst) {
        HEALTHY => "ok".into_response(),
        UNHEALTHY => {
            (StatusCode::SERVICE_UNAVAILABLE, Json(serde_json::json!({"reason": "disk full"}))).into_response()
        }
        _ => {
            knobs.hung.notify_one();
            std::future::pending().await
        }
    }
}

async fn state() -> Json<HaStatus> {
    Json(HaStatus { state: HaState::Standby, token: FencingToken(4) })
}

impl Master {
    async fn start() -> Master {
        let knobs = Arc::new(Knobs::default());
        let app =
            Router::new().route("/ha/health", get(health)).route("/ha/state", get(state)).with_state(knobs.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap()
        });
        Master { knobs, url, stop: Some(stop), task }
    }

    fn set(&self, mode: u8) {
        self.knobs.mode.store(mode, Ordering::SeqCst);
    }

    /// Stops serving and closes the listener: connections are refused from then on.
    async fn crash(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.task).await.unwrap();
    }
}

/// A running monitor.
struct Monitor {
    reports: watch::Receiver<HealthReport>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

fn start_monitor(adapter: Arc<dyn MasterAdapter>, config: HealthConfig) -> Monitor {
    config.validate().unwrap();
    let (tx, reports) = watch::channel(HealthReport::initial());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(run_health_monitor(adapter, config, tx, async move {
        let _ = stopped.await;
    }));
    Monitor { reports, stop: Some(stop), task }
}

impl Monitor {
    /// Waits (bounded) for a report matching `pred`, and returns it.
    async fn wait_for(&mut self, pred: impl Fn(&HealthReport) -> bool) -> HealthReport {
        tokio::time::timeout(Duration::from_secs(10), self.reports.wait_for(|r| pred(r)))
            .await
            .expect("the expected report in time")
            .expect("the monitor is running")
            .clone()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(2), self.task).await.expect("the monitor stops promptly").unwrap();
    }
}

fn http(url: &str) -> Arc<dyn MasterAdapter> {
    Arc::new(
        HttpAdapter::new(&HttpAdapterConfig { url: url.into(), timeout_ms: 5000, connect_timeout_ms: 1000 }).unwrap(),
    )
}

fn fast(rise: u32, fall: u32) -> HealthConfig {
    HealthConfig { interval_ms: 20, timeout_ms: 1000, rise, fall, slow_fall: fall, watch_exit: true }
}

fn why(report: &HealthReport) -> String {
    report.last_transition.as_ref().map(|t| t.why.clone()).unwrap_or_default()
}

#[tokio::test]
async fn becomes_healthy_after_rise_checks_and_publishes_the_masters_status() {
    let master = Master::start().await;
    let mut monitor = start_monitor(http(&master.url), fast(2, 3));
    assert_eq!(monitor.reports.borrow().health, Health::Initializing);
    let report = monitor.wait_for(|r| r.health == Health::Healthy).await;
    assert_eq!(why(&report), "master healthy after 2 consecutive passing checks");
    assert_eq!(report.master, Some(MasterStatus { state: HaState::Standby, token: FencingToken(4), position: None }));
    assert!(report.last_check_at.is_some());
    assert_eq!(report.last_problem, None);
    monitor.stop().await;
}

#[tokio::test]
async fn leaves_healthy_after_fall_failures_and_comes_back_after_rise_passes() {
    let master = Master::start().await;
    let mut monitor = start_monitor(http(&master.url), fast(2, 3));
    monitor.wait_for(|r| r.health == Health::Healthy).await;

    master.set(UNHEALTHY);
    let report = monitor.wait_for(|r| matches!(r.health, Health::Unhealthy(_))).await;
    assert_eq!(report.health, Health::Unhealthy("disk full".into()));
    assert_eq!(why(&report), "master unhealthy after 3 consecutive failed checks: disk full");
    // The master still answers its state while unhealthy.
    assert!(report.master.is_some());

    master.set(HEALTHY);
    let report = monitor.wait_for(|r| r.health == Health::Healthy).await;
    assert_eq!(report.last_transition.unwrap().from, Health::Unhealthy("disk full".into()));
    monitor.stop().await;
}

#[tokio::test]
async fn a_crashed_master_is_not_responding_at_once_despite_a_large_fall() {
    let mut master = Master::start().await;
    let mut monitor = start_monitor(http(&master.url), fast(1, 1000));
    monitor.wait_for(|r| r.health == Health::Healthy).await;

    master.crash().await;
    let report = monitor.wait_for(|r| matches!(r.health, Health::NotResponding(_))).await;
    // With fall 1000 only the refusal rule can explain this transition.
    assert!(why(&report).contains("at once"), "{}", why(&report));
    assert!(
        matches!(&report.health, Health::NotResponding(r) if r.starts_with("connection refused")),
        "{:?}",
        report.health
    );
    // The state read fails too: no stale status is published.
    assert_eq!(report.master, None);
    assert!(report.master_problem.is_some());
    monitor.stop().await;
}

#[tokio::test]
async fn a_hung_master_is_not_responding_after_fall_timeouts() {
    let master = Master::start().await;
    let config = HealthConfig { interval_ms: 20, timeout_ms: 100, rise: 1, fall: 2, slow_fall: 2, watch_exit: true };
    let mut monitor = start_monitor(http(&master.url), config);
    monitor.wait_for(|r| r.health == Health::Healthy).await;

    master.set(HANG);
    let start = Instant::now();
    let report = monitor.wait_for(|r| matches!(r.health, Health::NotResponding(_))).await;
    assert!(
        why(&report).starts_with("master not responding after 2 consecutive slow checks (slow_fall 2): timed out"),
        "{}",
        why(&report)
    );
    // Two checks of 100 ms each, not one.
    assert!(start.elapsed() >= Duration::from_millis(150), "{:?}", start.elapsed());
    monitor.stop().await;
}

#[tokio::test]
async fn a_slow_master_stays_healthy_until_slow_fall_timeouts() {
    let master = Master::start().await;
    let config = HealthConfig { interval_ms: 20, timeout_ms: 60, rise: 1, fall: 2, slow_fall: 1000, watch_exit: true };
    let mut monitor = start_monitor(http(&master.url), config);
    monitor.wait_for(|r| r.health == Health::Healthy).await;

    master.set(HANG);
    // Slow checks do not wake the receiver (the verdict does not change): look at the latest
    // report until well past `fall` timeouts have been counted.
    let slow = |r: &HealthReport| r.consecutive_slow;
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow(&monitor.reports.borrow()) < 4 {
        assert!(Instant::now() < deadline, "no slow checks counted: {:?}", *monitor.reports.borrow());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = monitor.reports.borrow().clone();
    assert_eq!(report.health, Health::Healthy, "4 timeouts with fall 2 but slow_fall 1000: {report:?}");
    assert!(report.consecutive_failures >= 4, "{report:?}");

    // Answering again ends the slow streak.
    master.set(HEALTHY);
    let deadline = Instant::now() + Duration::from_secs(10);
    while slow(&monitor.reports.borrow()) != 0 {
        assert!(Instant::now() < deadline, "the slow count never reset");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(monitor.reports.borrow().health, Health::Healthy);
    monitor.stop().await;
}

#[tokio::test]
async fn shutdown_stops_the_monitor_even_during_a_hung_check() {
    let master = Master::start().await;
    master.set(HANG);
    let config = HealthConfig { interval_ms: 20, timeout_ms: 60_000, rise: 1, fall: 1, slow_fall: 1, watch_exit: true };
    let monitor = start_monitor(http(&master.url), config);
    tokio::time::timeout(Duration::from_secs(10), master.knobs.hung.notified()).await.expect("a check hangs");
    // Well within the hung check's own 60 s timeout: the stop cancels it, not waits for it.
    tokio::time::timeout(Duration::from_secs(5), monitor.stop())
        .await
        .expect("the monitor stops during a hung check instead of waiting for it");
}

/// An always-healthy adapter that reports each health call.
struct CountingAdapter {
    calls: mpsc::UnboundedSender<()>,
}

impl MasterAdapter for CountingAdapter {
    fn health(&self, _deadline: Instant) -> AdapterFuture<'_, Result<(), HealthProblem>> {
        let _ = self.calls.send(());
        Box::pin(async { Ok(()) })
    }

    fn state(&self, _deadline: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
        Box::pin(async { Ok(MasterStatus { state: HaState::Standby, token: FencingToken(1), position: None }) })
    }

    fn promote(&self, _: FencingToken, _: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
        unreachable!("the monitor never promotes")
    }

    fn demote(&self, _: FencingToken, _: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
        unreachable!("the monitor never demotes")
    }
}

#[tokio::test]
async fn last_check_at_moves_without_waking_receivers_when_nothing_changes() {
    let (calls, mut called) = mpsc::unbounded_channel();
    let mut monitor = start_monitor(Arc::new(CountingAdapter { calls }), fast(1, 1));
    let first = monitor.wait_for(|r| r.health == Health::Healthy).await.last_check_at.unwrap();
    monitor.reports.borrow_and_update();
    // Checks are sequential: when the second call after this point starts, the first has
    // been recorded and published.
    while called.try_recv().is_ok() {}
    called.recv().await;
    called.recv().await;
    let later = monitor.reports.borrow().last_check_at.unwrap();
    assert!(later > first, "last_check_at did not move");
    assert!(!monitor.reports.has_changed().unwrap(), "an unchanged verdict must not wake receivers");
    monitor.stop().await;
}

/// A master's port that accepts each connection and, while `cut` is set, closes it before
/// answering a byte (a listener at a connection cap, a proxy whose backend is away); otherwise
/// answers every request `200 ok`.
async fn cutting_master(cut: Arc<std::sync::atomic::AtomicBool>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else { return };
            if cut.load(Ordering::SeqCst) {
                drop(tcp);
                continue;
            }
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
            });
        }
    });
    url
}

/// A connection accepted and closed before any answer is ambiguous: a master at its connection
/// cap or behind a proxy looks like that, alive. It counts under `slow_fall`, as a timeout
/// does, not under `fall` as a crash would (a crashed master's port refuses).
#[tokio::test]
async fn connections_cut_before_an_answer_count_as_slow_not_as_failed() {
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let url = cutting_master(cut.clone()).await;
    let config =
        HealthConfig { interval_ms: 20, timeout_ms: 1000, rise: 1, fall: 2, slow_fall: 1000, watch_exit: true };
    let mut monitor = start_monitor(http(&url), config);
    monitor.wait_for(|r| r.health == Health::Healthy).await;

    cut.store(true, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let report = monitor.reports.borrow().clone();
        assert_eq!(
            report.health,
            Health::Healthy,
            "cut connections ended a healthy verdict (fall 2, slow_fall 1000): {}",
            why(&report)
        );
        if report.consecutive_slow >= 5 {
            assert!(
                matches!(
                    report.last_problem,
                    Some(HealthProblem::NotResponding { how: referee_failover_agent::adapter::NoAnswer::Broken, .. })
                ),
                "{report:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "no cut checks counted as slow: {report:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    monitor.stop().await;
}
