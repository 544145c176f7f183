//! Self-fencing through the watchdog, end to end with real processes: a node without any fence
//! device is fenced by its own watchdog, and the other node's `watchdog` method waits for it.
//!
//! Each node's agent runs with `watchdog: {kind: device, self_fence: true, timeout_ms: 4000}`
//! on a device emulated by the test: a FIFO read by a thread that acts as the Linux watchdog
//! core does (opening arms it; every write feeds it; `V` and then a close disarms it; a close
//! without `V` leaves it running) and, when it is not fed for its timeout, "resets the host":
//! kills the node's master and agent with SIGKILL. The only fencing method is `watchdog`.
//!
//! Two faults of the active node, each while its master, which does not poll the lease, goes on
//! acknowledging writes:
//!
//! - **Cut off and undemotable**: the active agent's coordinator connection is black-holed, and
//!   demoting its master fails (its demote program exits 1). Its lease runs out, the agent stops
//!   feeding the device, and the emulated watchdog resets the host.
//! - **Hung agent**: the active's agent is stopped (SIGSTOP), so nothing feeds the device.
//! - **Restarted beside a hung master**: the active's agent is killed, its master stopped
//!   (SIGSTOP, so it cannot be read), and the agent started again. The device its predecessor
//!   armed stays armed (closed without `V`); the new agent must not open or feed it while it
//!   cannot tell whether the master is active. Once the other node is active, the old master
//!   is continued: left alive, it would take writes under its old token.
//!
//! Meanwhile the other node wins the lock and waits out the promise the old active published in
//! its breadcrumb before it promotes.
//!
//! And one case without a fault: a promotion slower than the watchdog's timeout (within its own
//! deadline and the lease) must not reset the host; the agent is busy, not hung.
//!
//! Before the first fault, the active's configuration is reloaded with `self_fence: false`: the
//! agent must keep its promise (the section needs a restart).
//!
//! The masters themselves are asked throughout ([`MasterOracle`]): neither may acknowledge a
//! write sent after the other acknowledged one under a higher token. The test also checks that
//! the old agent starved its device only after its lease ran out, that the host was reset before
//! the promotion, and that the promotion's marks name the watchdog method.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use referee::lab::{coordinator_available, CoordinatorKind, MasterKind, MasterOracle, Pair, PairSpec, Timings, NODES};
use referee_testkit::ScratchDir;

/// The watchdog's timeout, and so the reset time each node promises.
const WATCHDOG_MS: u64 = 4000;
/// How much of the promise the `watchdog` method waits.
const WAIT_PERCENT: u64 = 150;

/// One node's emulated watchdog device.
struct EmulatedWatchdog {
    /// Where the agent writes.
    fifo: PathBuf,
    /// The processes a reset kills (the node's master and agent), set once they run.
    victims: Arc<Mutex<Vec<u32>>>,
    /// When the host was reset, if it was.
    reset_at: Arc<Mutex<Option<Instant>>>,
    /// When the device was first armed, if it was.
    armed_at: Arc<Mutex<Option<Instant>>>,
    /// Set at the end of the test: a reset after it kills nothing.
    done: Arc<AtomicBool>,
}

/// What the FIFO's reader saw.
enum Seen {
    Bytes(Vec<u8>),
    Closed,
}

impl EmulatedWatchdog {
    fn start(dir: &Path, node: &str, timeout: Duration) -> Result<EmulatedWatchdog> {
        let fifo = dir.join(format!("watchdog-{node}"));
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).context("making the FIFO")?;
        let wd = EmulatedWatchdog {
            fifo: fifo.clone(),
            victims: Arc::default(),
            reset_at: Arc::default(),
            armed_at: Arc::default(),
            done: Arc::default(),
        };
        let (tx, rx) = mpsc::channel();
        // The reader: a writer's open pairs with this open; each writer's close is an end of file.
        std::thread::spawn(move || loop {
            let Ok(mut file) = std::fs::File::open(&fifo) else { return };
            let mut buf = [0u8; 256];
            loop {
                match std::io::Read::read(&mut file, &mut buf) {
                    Ok(0) | Err(_) => {
                        if tx.send(Seen::Closed).is_err() {
                            return;
                        }
                        break;
                    }
                    Ok(n) => {
                        if tx.send(Seen::Bytes(buf[..n].to_vec())).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        // The timer: the watchdog core's rules, and the reset.
        let (victims, reset_at, armed_at, done) =
            (wd.victims.clone(), wd.reset_at.clone(), wd.armed_at.clone(), wd.done.clone());
        std::thread::spawn(move || {
            let (mut armed, mut expect_close, mut last_feed) = (false, false, Instant::now());
            while !done.load(Ordering::SeqCst) {
                let wait = if armed { timeout.saturating_sub(last_feed.elapsed()) } else { Duration::from_millis(100) };
                match rx.recv_timeout(wait) {
                    Ok(Seen::Bytes(bytes)) => {
                        if !armed {
                            armed_at.lock().unwrap().get_or_insert_with(Instant::now);
                        }
                        armed = true;
                        last_feed = Instant::now();
                        expect_close = bytes.last() == Some(&b'V');
                    }
                    Ok(Seen::Closed) => {
                        if expect_close {
                            armed = false;
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) if armed && last_feed.elapsed() >= timeout => {
                        *reset_at.lock().unwrap() = Some(Instant::now());
                        for pid in victims.lock().unwrap().iter() {
                            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
                        }
                        return;
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
            }
        });
        Ok(wd)
    }

    /// One device per node in `dir`, each with the watchdog timeout [`WATCHDOG_MS`].
    fn one_per_node(dir: &Path) -> Result<Vec<EmulatedWatchdog>> {
        NODES.iter().map(|node| EmulatedWatchdog::start(dir, node, Duration::from_millis(WATCHDOG_MS))).collect()
    }

    fn reset_at(&self) -> Option<Instant> {
        *self.reset_at.lock().unwrap()
    }
}

impl Drop for EmulatedWatchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        // Wakes a reader waiting for a writer, so that it sees the end and stops.
        let _ =
            std::fs::OpenOptions::new().write(true).custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits()).open(&self.fifo);
    }
}

/// Each node's agent: its own emulated device with self-fencing, the `watchdog` method alone,
/// and a demote program that fails while `demote-fails-<node>` exists in `dir`. With
/// `slow_promotion`, the promote program takes that long first (and the adapter's and the
/// election's deadlines allow it).
fn agent_yaml(dir: &Path, node: &str, bin: &str, slow_promotion: Option<Duration>) -> String {
    let flag = dir.join(format!("demote-fails-{node}"));
    let demote = format!(
        "test -e {} && exit 1; exec {bin} master-command demote --url {{master_url}} --timeout-ms 1000",
        flag.display()
    );
    let promote = match slow_promotion {
        None => String::new(),
        Some(d) => {
            let program = format!(
                "sleep {}; exec {bin} master-command promote --url {{master_url}} --timeout-ms 1000",
                d.as_secs_f64()
            );
            let allowed = d.as_millis() + 2000;
            format!(
                "    promote: [\"/bin/sh\", \"-c\", {}]\n    timeout_ms: {allowed}\nelection:\n  promote_timeout_ms: {allowed}\n",
                serde_json::json!(program)
            )
        }
    };
    format!(
        r#"watchdog:
  kind: device
  path: {fifo}
  timeout_ms: {WATCHDOG_MS}
  self_fence: true
master:
  adapter:
    demote: ["/bin/sh", "-c", {demote}]
{promote}fencing:
  overall_timeout_ms: 20000
  levels:
    - methods:
        - kind: watchdog
          timeout_ms: 15000
          wait_percent: {WAIT_PERCENT}
"#,
        fifo = dir.join(format!("watchdog-{node}")).display(),
        demote = serde_json::json!(demote),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// What happens to the active node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Its agent's coordinator connection black-holed, its master's demotion failing.
    CutOffAndUndemotable,
    /// Its agent stopped.
    HungAgent,
    /// Its agent killed, its master hung (stopped), and the agent started again beside it: the
    /// new agent cannot read the master, so it must not feed the device its predecessor armed.
    /// Once the other node is active, the old master is continued.
    RestartedBesideAHungMaster,
}

async fn self_fenced_by_the_watchdog(kind: CoordinatorKind, fault: Fault) -> Result<()> {
    let dir = ScratchDir::new("watchdog")?;
    let devices = EmulatedWatchdog::one_per_node(&dir.0)?;
    let bin = env!("CARGO_BIN_EXE_referee");
    let spec = PairSpec {
        bin: bin.into(),
        lean_agent: None,
        coordinator: kind,
        timings: Timings::referee(),
        master: MasterKind::Command,
        proxied_agents: true,
        extra_agent_yaml: NODES.iter().map(|node| agent_yaml(&dir.0, node, bin, None)).collect(),
        admin: false,
        journal: false,
    };
    let pair = Arc::new(Pair::start(spec).await?);
    let old = pair.wait_for_active(Duration::from_secs(20)).await?;
    let new = 1 - old;
    for (i, device) in devices.iter().enumerate() {
        let agent = pair.agents[i].as_ref().context("the agents run")?;
        *device.victims.lock().unwrap() = vec![pair.masters[i].pid(), agent.pid()];
    }
    let st = pair.agent_json(old, "/status").await.unwrap_or_default();
    ensure!(
        st["watchdog"]["armed"] == true && st["watchdog"]["self_fence_ms"] == WATCHDOG_MS,
        "the active's watchdog is armed with its promise: {st}"
    );
    ensure!(devices[old].armed_at.lock().unwrap().is_some(), "the active's device was opened");
    let oracle = MasterOracle::start(&pair);
    let logs = || format!("--- agent a ---\n{}\n--- agent b ---\n{}", pair.agent_log_tail(0), pair.agent_log_tail(1));
    oracle
        .wait_for(
            Duration::from_secs(5),
            "the active master to take writes",
            |r| r.acks.iter().any(|a| a.node == old),
            logs,
        )
        .await?;

    // The restarted agent of the last fault, kept running to the end.
    let mut restarted = None;
    let (holed_at, holed) = match fault {
        Fault::CutOffAndUndemotable => {
            // A reload cannot take the promise back: the watchdog section needs a restart.
            let path = pair.dir.0.join(NODES[old]).join("agent.yaml");
            let cfg = std::fs::read_to_string(&path)?;
            ensure!(cfg.contains("self_fence: true"), "the agent's configuration self-fences:\n{cfg}");
            std::fs::write(&path, cfg.replace("self_fence: true", "self_fence: false"))?;
            pair.agents[old].as_ref().context("the active's agent runs")?.signal(Signal::SIGHUP)?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while !pair.agent_log_tail(old).contains("changes to watchdog need a restart and were not applied") {
                ensure!(Instant::now() < deadline, "no reload refusing the watchdog change\n{}", logs());
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // The old active's master can no longer be demoted, and its agent no longer hears
            // the coordinator.
            std::fs::write(dir.0.join(format!("demote-fails-{}", NODES[old])), b"")?;
            pair.black_hole_agent(old).await?;
            let at = (Instant::now(), oracle.now());
            // Its agent still answers its probes: it starves the device once its lease is gone.
            let deadline = Instant::now() + Duration::from_secs(10);
            let starving = loop {
                let st = pair.agent_json(old, "/status").await.unwrap_or_default();
                if let Some(why) = st["watchdog"]["starving"].as_str() {
                    ensure!(st["lease_left_ms"].as_u64().unwrap_or(0) == 0, "starved with a lease left: {st}");
                    break why.to_string();
                }
                ensure!(
                    devices[old].reset_at().is_none(),
                    "the host was reset before its agent starved the device\n{}",
                    logs()
                );
                ensure!(
                    Instant::now() < deadline,
                    "the black-holed agent never starved its watchdog: {st}\n{}",
                    logs()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            ensure!(starving.contains("holds no lock under a running lease"), "starving because: {starving}");
            at
        }
        Fault::HungAgent => {
            pair.agents[old].as_ref().context("the active's agent runs")?.signal(Signal::SIGSTOP)?;
            (Instant::now(), oracle.now())
        }
        Fault::RestartedBesideAHungMaster => {
            pair.agents[old].as_ref().context("the active's agent runs")?.signal(Signal::SIGKILL)?;
            pair.masters[old].signal(Signal::SIGSTOP)?;
            let at = (Instant::now(), oracle.now());
            let back = pair.start_agent(old)?;
            *devices[old].victims.lock().unwrap() = vec![pair.masters[old].pid(), back.pid()];
            restarted = Some(back);
            // The new agent answers its probes: its device is not armed, and not fed.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let st = pair.agent_json(old, "/status").await.unwrap_or_default();
                if st["watchdog"]["starving"]
                    .as_str()
                    .is_some_and(|w| w.contains("has not answered since the agent started"))
                {
                    ensure!(st["watchdog"]["armed"] == false, "the restarted agent armed the device: {st}");
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "the restarted agent never said why it does not feed: {st}\n{}",
                    logs()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            at
        }
    };

    let record = oracle
        .wait_for(
            Duration::from_secs(30),
            "the other master to become active",
            |r| r.promoted(new, None).is_some_and(|c| c.after >= holed),
            logs,
        )
        .await?;
    let promoted = record.promoted(new, None).context("the promotion is in the record")?;
    pair.wait_for_active_node(new, Duration::from_secs(15)).await?;
    if fault == Fault::RestartedBesideAHungMaster {
        // A master left alive would now take writes under its old token: give it a second.
        let _ = pair.masters[old].signal(Signal::SIGCONT);
        let since = oracle.now();
        oracle
            .wait_for(
                Duration::from_secs(10),
                "a second of writes on the new master after the old one was continued",
                |r| {
                    r.acks
                        .iter()
                        .filter(|a| a.node == new && a.sent >= since)
                        .any(|a| a.sent >= since + Duration::from_secs(1))
                },
                logs,
            )
            .await?;
    }
    let history = pair.agent_json(new, "/history").await.unwrap_or_default();
    let record = oracle.finish().await;
    // The masters' own acknowledgements first: no write on the old master once the new one
    // acknowledged one under its higher token.
    record.check()?;
    let reset = devices[old].reset_at().context("the old host was reset by its watchdog")?;
    let reset_oracle = holed + reset.duration_since(holed_at);
    eprintln!(
        "{kind:?}, {fault:?}: fault at {:.1} ms; host {} reset by its watchdog at {:.1} ms; master {} promoted after {:.1} ms\n{}",
        ms(holed),
        NODES[old],
        ms(reset_oracle),
        NODES[new],
        ms(promoted.after),
        record.timeline()
    );
    ensure!(
        reset_oracle < promoted.after,
        "master {} was promoted (after {:.1} ms) before host {} was reset ({:.1} ms)\n{}",
        NODES[new],
        ms(promoted.after),
        NODES[old],
        ms(reset_oracle),
        record.timeline()
    );
    // (A hung master acknowledges nothing: there the continued master is the test.)
    ensure!(
        fault == Fault::RestartedBesideAHungMaster || record.acks.iter().any(|a| a.node == old && a.sent > holed),
        "the old master acknowledged nothing after the fault: the scenario did not happen\n{}",
        record.timeline()
    );
    let transitions = history["transitions"].as_array().context("the transitions")?;
    let promotion = transitions.iter().rev().find(|t| t["to"] == "active").context("the promotion")?;
    let marks = promotion["timeline"].to_string();
    ensure!(
        marks.contains(&format!("fence {} by watchdog: fenced", NODES[old])),
        "the promotion's marks name the watchdog method: {promotion}"
    );
    drop(restarted);
    Ok(())
}

/// A promotion that takes longer than the watchdog's timeout, within its own deadline and the
/// lease, is a busy agent, not a hung one: the device is fed while the master promotes, and no
/// host is reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promotion_slower_than_the_watchdog_timeout_does_not_reset_the_host() -> Result<()> {
    let slow = Duration::from_millis(WATCHDOG_MS + 1500);
    let dir = ScratchDir::new("watchdog-slow")?;
    let devices = EmulatedWatchdog::one_per_node(&dir.0)?;
    let bin = env!("CARGO_BIN_EXE_referee");
    // A session long enough for a lease that covers the slow promotion.
    let timings = Timings { session_timeout_ms: 12_000, tick_ms: 1000, ..Timings::referee() };
    let spec = PairSpec {
        bin: bin.into(),
        lean_agent: None,
        coordinator: CoordinatorKind::Bundled,
        timings,
        master: MasterKind::Command,
        proxied_agents: false,
        extra_agent_yaml: NODES.iter().map(|node| agent_yaml(&dir.0, node, bin, Some(slow))).collect(),
        admin: false,
        journal: false,
    };
    let pair = Pair::start(spec).await?;
    let logs = || format!("--- agent a ---\n{}\n--- agent b ---\n{}", pair.agent_log_tail(0), pair.agent_log_tail(1));
    let active = pair.wait_for_active(Duration::from_secs(40)).await.with_context(logs)?;
    let history = pair.agent_json(active, "/history").await.unwrap_or_default();
    let promote_ms = history["transitions"]
        .as_array()
        .and_then(|t| t.iter().rev().find_map(|t| t["phases"]["promote_ms"].as_u64()))
        .with_context(|| format!("the promotion's phases in {history}"))?;
    ensure!(
        promote_ms > WATCHDOG_MS,
        "the promotion took {promote_ms} ms, not longer than the watchdog's {WATCHDOG_MS} ms: {history}"
    );
    for (i, device) in devices.iter().enumerate() {
        ensure!(
            device.reset_at().is_none(),
            "host {} was reset by its watchdog; the promotion took {promote_ms} ms\n{}",
            NODES[i],
            logs()
        );
    }
    let st = pair.agent_json(active, "/status").await.unwrap_or_default();
    ensure!(
        st["watchdog"]["armed"] == true && st["watchdog"]["starving"].is_null(),
        "the active's watchdog is armed and fed: {st}"
    );
    Ok(())
}

macro_rules! every_coordinator {
    ($($name:ident: $fault:ident;)*) => {
        mod bundled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() -> anyhow::Result<()> {
                    super::self_fenced_by_the_watchdog(super::CoordinatorKind::Bundled, super::Fault::$fault).await
                }
            )*
        }
        mod apache_zookeeper {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() -> anyhow::Result<()> {
                    if !super::coordinator_available(super::CoordinatorKind::ApacheZooKeeper, stringify!($name)) {
                        return Ok(());
                    }
                    super::self_fenced_by_the_watchdog(super::CoordinatorKind::ApacheZooKeeper, super::Fault::$fault).await
                }
            )*
        }
    };
}

every_coordinator! {
    a_cut_off_host_whose_master_cannot_be_demoted_is_reset_by_its_watchdog: CutOffAndUndemotable;
    a_host_whose_agent_hangs_is_reset_by_its_watchdog: HungAgent;
    an_agent_restarted_beside_a_hung_master_does_not_feed_the_watchdog: RestartedBesideAHungMaster;
}
