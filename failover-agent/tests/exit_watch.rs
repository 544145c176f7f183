//! The master's exit, seen through a pidfd, brings the health check forward, with a real
//! process killed under the watcher. The adapter stands in for the master's protocol: it
//! answers for the process (`/proc/PID/stat`), so the only thing that can make a check happen
//! before the ten-minute interval is the exit watch.

use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use referee_failover_agent::adapter::{AdapterError, AdapterFuture, HealthProblem, MasterAdapter, NoAnswer};
use referee_failover_agent::exit_watch::{watch_master_exits, PidFdError, ProcessExit};
use referee_failover_agent::health::{run_health_monitor_woken, HealthConfig, HealthReport};
use referee_failover_agent::model::{Health, MasterStatus};
use referee_fencing::{FencingToken, HaState};
use referee_testkit::{skip, wait_until, within, ScratchDir, DEADLINE};
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

/// Far longer than any deadline here: a check that happens in time was not the interval's.
const NEVER: Duration = Duration::from_secs(600);

/// Whether `pid` runs (a zombie has exited: it runs no code and holds no sockets).
fn runs(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, None | Some('Z') | Some('X'))
}

/// Answers health for a process: healthy while it runs, else `dead` (how the real protocol
/// would fail: refused for a crash, timed out for a hang).
struct ProcessAdapter {
    pid: std::sync::Mutex<u32>,
    dead: NoAnswer,
}

impl MasterAdapter for ProcessAdapter {
    fn health(&self, _deadline: Instant) -> AdapterFuture<'_, Result<(), HealthProblem>> {
        let pid = *self.pid.lock().unwrap();
        let result = if runs(pid) { Ok(()) } else { Err(HealthProblem::not_responding(self.dead, "process exited")) };
        Box::pin(async move { result })
    }

    fn state(&self, _deadline: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
        Box::pin(async { Ok(MasterStatus { state: HaState::Standby, token: FencingToken(1) }) })
    }

    fn promote(&self, _: FencingToken, _: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
        unreachable!("the monitor never promotes")
    }

    fn demote(&self, _: FencingToken, _: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
        unreachable!("the monitor never demotes")
    }
}

/// A long-running child standing in for the master, written to `pidfile` as a master does.
fn spawn_master(pidfile: &std::path::Path) -> Result<Child> {
    let child = Command::new("sleep").arg("600").spawn().context("spawning sleep")?;
    std::fs::write(pidfile, format!("{}\n", child.id()))?;
    Ok(child)
}

/// Whether this kernel gives pidfds; skips the test (by name) when it does not.
fn pidfds_work(test: &str) -> bool {
    match ProcessExit::open(std::process::id()) {
        Ok(_) => true,
        Err(PidFdError::Unsupported(e)) => {
            skip(test, &format!("the kernel refuses pidfds: {e}"));
            false
        }
        Err(e) => panic!("pidfd_open on this process: {e}"),
    }
}

struct Running {
    reports: watch::Receiver<HealthReport>,
    stop: Vec<oneshot::Sender<()>>,
}

fn start(adapter: Arc<ProcessAdapter>, config: HealthConfig, pidfile: std::path::PathBuf) -> Running {
    config.validate().unwrap();
    let (tx, reports) = watch::channel(HealthReport::initial());
    let check_now = Arc::new(Notify::new());
    let (stop_monitor, monitor_stopped) = oneshot::channel::<()>();
    let (stop_watch, watch_stopped) = oneshot::channel::<()>();
    tokio::spawn(run_health_monitor_woken(adapter, config, check_now.clone(), tx, async move {
        let _ = monitor_stopped.await;
    }));
    // The pidfile is re-read every 20 ms, so a replaced master is followed quickly.
    tokio::spawn(watch_master_exits(pidfile, Duration::from_millis(20), check_now, async move {
        let _ = watch_stopped.await;
    }));
    Running { reports, stop: vec![stop_monitor, stop_watch] }
}

impl Running {
    fn report(&self) -> HealthReport {
        self.reports.borrow().clone()
    }

    fn stop(self) {
        for s in self.stop {
            let _ = s.send(());
        }
    }
}

#[tokio::test]
async fn a_killed_master_is_checked_at_once_not_at_the_next_interval() -> Result<()> {
    if !pidfds_work("a_killed_master_is_checked_at_once_not_at_the_next_interval") {
        return Ok(());
    }
    let dir = ScratchDir::new("exit-watch-crash")?;
    let pidfile = dir.path("master.pid");
    let mut master = spawn_master(&pidfile)?;
    let adapter = Arc::new(ProcessAdapter { pid: std::sync::Mutex::new(master.id()), dead: NoAnswer::Refused });
    let config =
        HealthConfig { interval_ms: NEVER.as_millis() as u64, timeout_ms: 1000, rise: 1, fall: 3, watch_exit: true };
    let mut running = start(adapter, config, pidfile);
    // The first check runs at start.
    within("the first check", running.reports.wait_for(|r| r.health == Health::Healthy)).await??;

    let killed = Instant::now();
    master.kill()?;
    let report = within(
        "a check soon after the kill",
        running.reports.wait_for(|r| matches!(r.health, Health::NotResponding(_))),
    )
    .await??
    .clone();
    assert!(killed.elapsed() < NEVER, "the interval's check cannot have run");
    let why = report.last_transition.as_ref().map(|t| t.why.clone()).unwrap_or_default();
    // Decided by the monitor's rule for a refusal, on a real check.
    assert_eq!(why, "master not responding at once (a refusal is not retried): connection refused: process exited");
    assert_eq!(report.consecutive_failures, 1);
    running.stop();
    master.wait()?;
    Ok(())
}

#[tokio::test]
async fn an_exit_brings_one_check_forward_and_fall_still_counts() -> Result<()> {
    if !pidfds_work("an_exit_brings_one_check_forward_and_fall_still_counts") {
        return Ok(());
    }
    let dir = ScratchDir::new("exit-watch-fall")?;
    let pidfile = dir.path("master.pid");
    let mut first = spawn_master(&pidfile)?;
    // An ambiguous failure (a timeout) is held to the fall count: the wake-up must not change
    // that, only when the check happens.
    let adapter = Arc::new(ProcessAdapter { pid: std::sync::Mutex::new(first.id()), dead: NoAnswer::TimedOut });
    let config =
        HealthConfig { interval_ms: NEVER.as_millis() as u64, timeout_ms: 1000, rise: 1, fall: 3, watch_exit: true };
    let mut running = start(adapter.clone(), config, pidfile.clone());
    within("the first check", running.reports.wait_for(|r| r.health == Health::Healthy)).await??;

    first.kill()?;
    // Failure counts move without waking receivers; the report is read until it shows one.
    wait_until(DEADLINE, "one failed check after the first exit", || running.report().consecutive_failures == 1)
        .await?;
    assert_eq!(running.report().health, Health::Healthy, "one failed check of fall 3 must not leave healthy");

    // The master is restarted under a new pid: the watcher follows the pidfile to it, and its
    // exit brings one more check forward.
    let mut second = spawn_master(&pidfile)?;
    *adapter.pid.lock().unwrap() = second.id();
    second.kill()?;
    wait_until(DEADLINE, "a second failed check after the restarted master's exit", || {
        running.report().consecutive_failures == 2
    })
    .await?;
    assert_eq!(running.report().health, Health::Healthy, "two failed checks of fall 3 must not leave healthy");
    running.stop();
    first.wait()?;
    second.wait()?;
    Ok(())
}
