//! The fault scenarios on simulated hosts, shared by the tests (`tests/fault_hosts.rs`, where
//! each scenario is described) and the failover timing report (`fault-report`), which runs the
//! measured ones many times. Each entry point for a test sets up its own hosts and pair and
//! checks every rule; [`measure`] runs one scenario on given hosts and returns the time from the
//! fault to the first write the new active master acknowledged.
// Each including crate uses a part: the tests every scenario, the report the measured ones.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use referee::lab::{
    hosts_needed, CoordinatorKind, MasterKind, MasterOracle, MasterRecord, Pair, PairSpec, RoleChange, Timings,
    EPOCH_PATH, JOURNAL_PATH, NODES,
};
use referee_examples::verdict::verify;
use referee_fencing::HaState;
use referee_testkit::{hosts_unavailable, skip, Hosts};
use serde_json::Value;
use tokio::time::Instant;

/// Set by the report: no timelines on success, only on a failure.
pub static QUIET: AtomicBool = AtomicBool::new(false);
/// Set by the report's `--phases`: after each network fault run, print where the time went.
pub static PHASES: AtomicBool = AtomicBool::new(false);

macro_rules! say {
    ($($arg:tt)*) => {
        if !QUIET.load(Ordering::Relaxed) {
            eprintln!($($arg)*);
        }
    };
}

/// The scenarios the timing report measures: each ends with the other master active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measured {
    /// A network fault on the active node's host.
    Network(Fault),
    /// A process fault on the active node.
    Process(ProcessFault),
    /// The active master killed, then at once the coordinator ensemble's leader, so the whole
    /// takeover runs across the leader change (an ensemble only).
    MasterKilledWithCoordinatorLeader,
}

impl Measured {
    /// Every measured scenario, in report order.
    pub const ALL: [Measured; 8] = [
        Measured::Process(ProcessFault::MasterKilled),
        Measured::Process(ProcessFault::MasterFrozen),
        Measured::Process(ProcessFault::AgentKilled),
        Measured::Process(ProcessFault::AgentFrozen),
        Measured::Network(Fault::FromCoordinator),
        Measured::Network(Fault::BlackHole),
        Measured::Network(Fault::Isolated),
        Measured::MasterKilledWithCoordinatorLeader,
    ];

    /// Whether the scenario can run on coordinator `kind`.
    pub fn runs_on(self, kind: CoordinatorKind) -> bool {
        match self {
            Measured::MasterKilledWithCoordinatorLeader => kind.servers() > 1,
            _ => true,
        }
    }

    /// The scenario's name in the report and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Measured::Process(ProcessFault::MasterKilled) => "master-killed",
            Measured::Process(ProcessFault::MasterFrozen) => "master-frozen",
            Measured::Process(ProcessFault::AgentKilled) => "agent-killed",
            Measured::Process(ProcessFault::AgentFrozen) => "agent-frozen",
            Measured::Network(Fault::FromCoordinator) => "host-cut-from-coordinator",
            Measured::Network(Fault::BlackHole) => "host-black-holed",
            Measured::Network(Fault::Isolated) => "host-isolated",
            Measured::MasterKilledWithCoordinatorLeader => "master-and-coordinator-leader-killed",
        }
    }
}

/// Runs `scenario` once on `hosts` (as many as [`hosts_needed`] says for `kind`) with every check of its test; returns the
/// time from the fault to the first write the new active master acknowledged.
pub async fn measure(scenario: Measured, masters: Masters, kind: CoordinatorKind, hosts: &Hosts) -> Result<Duration> {
    let pair = Arc::new(Pair::start_on_hosts(spec(kind, masters), hosts).await?);
    let result = match scenario {
        Measured::Network(fault) => run(hosts, &pair, fault, masters).await,
        Measured::Process(fault) => run_process_fault(&pair, fault, masters, false).await,
        Measured::MasterKilledWithCoordinatorLeader => {
            run_process_fault(&pair, ProcessFault::MasterKilled, masters, true).await
        }
    };
    for proc in pair.masters.iter().chain(pair.agents.iter().flatten()) {
        let _ = proc.signal(Signal::SIGCONT);
    }
    hosts.heal_all()?;
    result
}

/// The faults of the scenarios, each on the active node's host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Partitioned from the coordinator's hosts only (every server's, for an ensemble).
    FromCoordinator,
    /// Everything to and from it dropped.
    BlackHole,
    /// Partitioned from every other host; the client still reaches it.
    Isolated,
}

/// The process faults of the scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessFault {
    /// `kill -9` of the active master.
    MasterKilled,
    /// SIGSTOP of the active master for twice the session timeout, then SIGCONT.
    MasterFrozen,
    /// `kill -9` of the active agent.
    AgentKilled,
    /// SIGSTOP of the active agent for twice the session timeout, then SIGCONT.
    AgentFrozen,
}

impl ProcessFault {
    fn on_master(self) -> bool {
        matches!(self, ProcessFault::MasterKilled | ProcessFault::MasterFrozen)
    }

    fn frozen(self) -> bool {
        matches!(self, ProcessFault::MasterFrozen | ProcessFault::AgentFrozen)
    }
}

/// What the masters keep their edits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Masters {
    /// In memory: safety rests on the agents alone.
    Plain,
    /// In a journal in the coordinator, behind an epoch znode: at the end an independent reader
    /// of the journal must find every acknowledged write once, under the token in force.
    Journalling,
}

fn spec(kind: CoordinatorKind, masters: Masters) -> PairSpec {
    PairSpec {
        bin: referee_bin(),
        // The agents run as an operator deploys them on a master's host: the lean executable.
        lean_agent: Some(lean_agent_bin()),
        coordinator: kind,
        timings: Timings::referee(),
        master: MasterKind::Plain,
        proxied_agents: false,
        extra_agent_yaml: Vec::new(),
        admin: false,
        journal: masters == Masters::Journalling,
    }
}

/// The `referee` binary: cargo's for a test, else the one beside this executable.
fn referee_bin() -> std::path::PathBuf {
    built_or_beside(option_env!("CARGO_BIN_EXE_referee"), "referee")
}

fn lean_agent_bin() -> std::path::PathBuf {
    built_or_beside(option_env!("CARGO_BIN_EXE_referee-agent"), "referee-agent")
}

/// The executable cargo built for a test (`built`), or, in `fault-report`, the one named `name`
/// beside it.
fn built_or_beside(built: Option<&str>, name: &str) -> std::path::PathBuf {
    match built {
        Some(bin) => bin.into(),
        None => std::env::current_exe().map(|me| me.with_file_name(name)).unwrap_or_else(|_| name.into()),
    }
}

/// The old master acknowledged no write after the new one had acknowledged one under its token
/// `token`: no request sent to the old master after such an acknowledgement came back was
/// acknowledged. Each answer held at some instant between its request and its reply, so that
/// is the order the client can prove; an old acknowledgement whose request and reply merely
/// overlap the new one's proves nothing either way (its reply may be slow to come back).
fn no_old_ack_after_the_new_one(record: &MasterRecord, old: usize, new: usize, token: u64) -> Result<()> {
    let first_new = record
        .acks
        .iter()
        .filter(|a| a.node == new && a.what == token)
        .min_by_key(|a| a.received)
        .context("the new master acknowledged writes under its token")?;
    if let Some(late) = record.acks.iter().filter(|a| a.node == old).find(|a| a.sent > first_new.received) {
        bail!(
            "master {} acknowledged a write (token {}, asked at {:.1} ms) after master {} had acknowledged one under \
             token {token} (back at {:.1} ms)\n{}",
            NODES[old],
            late.what,
            ms(late.sent),
            NODES[new],
            ms(first_new.received),
            record.timeline()
        );
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn status(pair: &Pair, node: usize) -> Value {
    pair.agent_json(node, "/status").await.unwrap_or_default()
}

fn logs(pair: &Pair) -> String {
    format!(
        "--- coordinator ---\n{}\n--- agent a ---\n{}\n--- agent b ---\n{}",
        pair.coordinator_log_tail(10),
        pair.agent_log_tail(0),
        pair.agent_log_tail(1)
    )
}

/// Waits until the record so far satisfies `cond`; returns that record. On timeout the error
/// carries the timeline and the logs.
async fn until_record(
    pair: &Pair,
    oracle: &MasterOracle,
    limit: Duration,
    what: &str,
    cond: impl Fn(&MasterRecord) -> bool,
) -> Result<MasterRecord> {
    Ok(oracle.wait_for(limit, what, cond, || logs(pair)).await?)
}

/// Waits up to 30 s until agent `node` is connected with more than `sessions_before` sessions
/// counted and reports standby.
async fn until_standby(pair: &Pair, node: usize, sessions_before: u64, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(pair, node).await;
        let sessions = s["counters"]["sessions"].as_u64().unwrap_or(0);
        if s["session"]["state"] == "connected" && sessions > sessions_before && s["role"] == "standby" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after 30 s waiting for {what}: {s}\n{}", logs(pair));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Master `node`'s last answer, if it was sent after `since`.
fn last_state(record: &MasterRecord, node: usize, since: Duration) -> Option<HaState> {
    record.states.iter().rev().find(|o| o.node == node).filter(|o| o.sent >= since).map(|o| o.what.state)
}

/// The longest stretch of `from..to` in which no master acknowledged a write (by the times the
/// acknowledgements arrived).
fn longest_without_acks(record: &MasterRecord, from: Duration, to: Duration) -> Duration {
    let mut times: Vec<Duration> = record.acks.iter().map(|a| a.received).filter(|t| *t > from && *t < to).collect();
    times.sort();
    let mut longest = Duration::ZERO;
    let mut last = from;
    for t in times.into_iter().chain([to]) {
        longest = longest.max(t - last);
        last = t;
    }
    longest
}

/// How long master `node` has been acknowledging writes sent after `since`.
fn acknowledging_for(record: &MasterRecord, node: usize, since: Duration) -> Duration {
    let mut acks = record.acks.iter().filter(|a| a.node == node && a.sent >= since);
    match acks.next() {
        Some(first) => acks.map(|a| a.received).max().unwrap_or(first.received) - first.received,
        None => Duration::ZERO,
    }
}

pub async fn fault_on_the_active_host(fault: Fault, masters: Masters, kind: CoordinatorKind, test: &str) -> Result<()> {
    let Some(hosts) = hosts_or_skip(kind, test)? else { return Ok(()) };
    let pair = Arc::new(Pair::start_on_hosts(spec(kind, masters), &hosts).await?);
    let result = run(&hosts, &pair, fault, masters).await;
    // Faults off before the pair stops, so its processes stop with a network; the pair goes
    // before the hosts (the hosts were made first, so they are dropped last).
    hosts.heal_all()?;
    result.map(|_| ())
}

/// Where the pair has an observer beside each node, checks that each is one (`srvr` says so)
/// and that its node's agent holds its session there, as the layout promises.
async fn agents_on_their_observers(pair: &Pair) -> Result<()> {
    for (i, node) in NODES.iter().enumerate() {
        let Some(k) = pair.coordinator_observer(i) else { continue };
        let mode = pair.coordinator_mode(k).await;
        ensure!(mode.as_deref() == Some("observer"), "coordinator server {} beside node {i} says {mode:?}", k + 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let on = pair.agent_coordinator_server(i).await;
            if on == Some(k) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "agent {node} holds its session on server {:?}, not on its observer {}",
                on.map(|s| s + 1),
                k + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Returns the time from the fault to the new master's first acknowledged write.
async fn run(hosts: &Hosts, pair: &Arc<Pair>, fault: Fault, masters: Masters) -> Result<Duration> {
    agents_on_their_observers(pair).await?;
    let old = pair.wait_for_active(Duration::from_secs(20)).await?;
    let new = 1 - old;
    let old_host = pair.node_host(old);
    let oracle = MasterOracle::start(pair);
    until_record(pair, &oracle, Duration::from_secs(5), "the active master to take writes", |r| {
        r.acks.iter().any(|a| a.node == old)
    })
    .await?;
    let sessions_before =
        status(pair, old).await["counters"]["sessions"].as_u64().context("the old agent's sessions")?;

    let scene = if PHASES.load(Ordering::Relaxed) { Some(Scene::observe(pair, old, new).await) } else { None };
    let (fault_at, fault_wall) = (oracle.now(), SystemTime::now());
    match fault {
        Fault::FromCoordinator => hosts.partition(old_host, &pair.coordinator_hosts())?,
        Fault::BlackHole => hosts.black_hole(old_host)?,
        Fault::Isolated => hosts.isolate(old_host)?,
    }
    // The rules go onto one host after another: until the last is loaded the fault is partial.
    let applied_in = oracle.now().saturating_sub(fault_at);
    // The fault stays while the new master takes writes for a second: a deposed master that
    // kept serving clients on its side would acknowledge writes all that time.
    let promoted = takeover(pair, &oracle, new, fault_at).await?;

    hosts.heal(old_host)?;
    let healed_at = oracle.now();
    // The old node rejoins: its agent has a session again and is standby, its master says
    // standby, and the new master is still the only active.
    until_standby(pair, old, sessions_before, "the old node to rejoin as standby after heal").await?;
    let rejoined_at = oracle.now();
    until_record(pair, &oracle, Duration::from_secs(10), "both masters answering after the rejoin", |r| {
        last_state(r, old, rejoined_at).is_some()
            && acknowledging_for(r, new, rejoined_at) >= Duration::from_millis(500)
    })
    .await?;
    pair.wait_for_active_node(new, Duration::from_secs(5)).await?;
    let fenced = status(pair, new).await["counters"]["fences_fenced"].as_u64().unwrap_or(0);
    let record = oracle.finish().await;

    let demoted = record.demoted(old);
    say!(
        "{fault:?}: fault on host {old_host} (node {}) at {:.1} ms; master {} demoted between {} ; master {} promoted \
         between {:.1} and {:.1} ms; healed at {:.1} ms, rejoined by {:.1} ms; {} fenced {fenced} time(s)\n{}",
        NODES[old],
        ms(fault_at),
        NODES[old],
        demoted.map_or("(not seen)".into(), |d| format!("{:.1} and {:.1} ms", ms(d.after), ms(d.by))),
        NODES[new],
        ms(promoted.after),
        ms(promoted.by),
        ms(healed_at),
        ms(rejoined_at),
        NODES[new],
        record.timeline()
    );
    record.check()?;
    demoted.with_context(|| format!("master {} was never seen leaving the active role", NODES[old]))?;
    // The old master stops before the new one starts, as the masters logged their own role
    // changes. The oracle cannot tell: it cannot reach a black-holed master at all, and its
    // polls of the others are a round trip apart.
    let handover = pair.logged_handover(old, new, promoted.to.token).with_context(|| record.timeline())?;
    say!(
        "master {} stepped down {:.1} ms before master {} became active",
        NODES[old],
        handover.margin_ms(),
        NODES[new]
    );
    ensure!(fenced >= 1, "{} promoted without fencing {}\n{}", NODES[new], NODES[old], record.timeline());
    if fault != Fault::BlackHole {
        // The client still reached the old master, so it is seen to stop.
        let token = promoted.to.token.0;
        no_old_ack_after_the_new_one(&record, old, new, token)?;
        let first_new = record.acks.iter().filter(|a| a.node == new && a.what == token).min_by_key(|a| a.sent);
        let last_old = record.acks.iter().filter(|a| a.node == old && a.what < token).max_by_key(|a| a.received);
        let (first_new, last_old) = first_new.zip(last_old).context("acknowledgements from both masters")?;
        let gap = first_new.sent.as_secs_f64() - last_old.received.as_secs_f64();
        say!(
            "master {}'s last acknowledgement came back {:.1} ms {} master {} was first asked for one it acknowledged",
            NODES[old],
            gap.abs() * 1000.0,
            if gap >= 0.0 { "before" } else { "after" },
            NODES[new]
        );
    }
    ensure!(
        last_state(&record, old, rejoined_at) == Some(HaState::Standby)
            && last_state(&record, new, rejoined_at) == Some(HaState::Active),
        "the end is not master {} active and master {} standby\n{}",
        NODES[new],
        NODES[old],
        record.timeline()
    );
    if masters == Masters::Journalling {
        check_journal(pair, &record).await?;
    }
    let took = first_new_write(&record, new, promoted.to.token.0, fault_at)?;
    if let Some(scene) = scene {
        eprintln!("{}", scene.breakdown(pair, old, new, fault_wall, applied_in, took).await);
    }
    Ok(took)
}

/// Where the sessions were before a fault, for the phase breakdown.
struct Scene {
    /// The old active agent's session id.
    old_session: Option<i64>,
    /// The coordinator server (from 0) each agent's session is on, old then new.
    servers: [Option<usize>; 2],
    /// The coordinator server that led.
    leader: Option<usize>,
}

impl Scene {
    async fn observe(pair: &Pair, old: usize, new: usize) -> Scene {
        let old_session = status(pair, old).await["session"]["session_id"].as_i64();
        let servers = [pair.agent_coordinator_server(old).await, pair.agent_coordinator_server(new).await];
        let mut leader = None;
        for k in 0..pair.coordinator_servers() {
            if pair.coordinator_mode(k).await.as_deref() == Some("leader") {
                leader = Some(k);
            }
        }
        Scene { old_session, servers, leader }
    }

    /// One line: when the fault was fully applied, the leader's expiry of the old session (from
    /// its log), the marks of both agents and the first acknowledged write, each at its ms
    /// after the fault.
    async fn breakdown(
        &self,
        pair: &Pair,
        old: usize,
        new: usize,
        fault: SystemTime,
        applied_in: Duration,
        took: Duration,
    ) -> String {
        use referee_failover_agent::timeline::{wall_us, Mark};
        let fault_us = wall_us(fault);
        let extra = vec![
            Mark::at("fault applied", fault_us + applied_in.as_micros() as i64),
            Mark::at("first write acked", fault_us + took.as_micros() as i64),
        ];
        let mut marks = pair.failover_marks(old, new, fault, extra, Duration::from_secs(5)).await.unwrap_or_default();
        if let Some(session) = self.old_session {
            let needle = format!("0x{session:x}");
            for k in 0..pair.coordinator_servers() {
                let log = pair.coordinator_server_log(k);
                let expiries = log.lines().filter(|l| l.contains("session expired") && l.contains(&needle));
                for at in expiries.filter_map(|l| log_line_us(l, fault_us)).filter(|at| *at >= fault_us) {
                    marks.push(Mark::at(format!("server {} expired the old session", k + 1), at));
                }
            }
        }
        marks.sort_by_key(|m| m.at_us);
        let name = |k: Option<usize>| k.map_or("?".to_string(), |k| (k + 1).to_string());
        let mut out = format!(
            "phases: leader {}, old session on {}, new on {}:",
            name(self.leader),
            name(self.servers[0]),
            name(self.servers[1])
        );
        for m in marks {
            let _ = write!(out, " | {} {:+.0}", m.event, (m.at_us - fault_us) as f64 / 1000.0);
        }
        out
    }
}

/// The wall-clock µs of a log line stamped `YYYY-MM-DDTHH:MM:SS.ffffffZ` (UTC), placed on the
/// day of `near_us` (a run lasts seconds; a line from another day is misplaced, not misread).
fn log_line_us(line: &str, near_us: i64) -> Option<i64> {
    let stamp = line.split_whitespace().next()?;
    let tod = stamp.split_once('T')?.1.trim_end_matches('Z');
    let mut parts = tod.split(':');
    let (h, m, s) = (parts.next()?.parse::<i64>().ok()?, parts.next()?.parse::<i64>().ok()?, parts.next()?);
    let s = s.parse::<f64>().ok()?;
    let day_us = 86_400_000_000i64;
    let tod_us = (h * 3600 + m * 60) * 1_000_000 + (s * 1e6) as i64;
    Some(near_us - near_us.rem_euclid(day_us) + tod_us)
}

/// Waits until master `new` was promoted after `fault_at` and has then acknowledged writes for
/// a second; returns its promotion.
async fn takeover(pair: &Pair, oracle: &MasterOracle, new: usize, fault_at: Duration) -> Result<RoleChange> {
    let record = until_record(pair, oracle, Duration::from_secs(30), "the other master to become active", |r| {
        r.promoted(new, None).is_some_and(|c| c.after >= fault_at)
    })
    .await?;
    let promoted = record.promoted(new, None).context("the promotion is in the record")?;
    until_record(pair, oracle, Duration::from_secs(15), "a second of writes on the new master", |r| {
        acknowledging_for(r, new, promoted.after) >= Duration::from_secs(1)
    })
    .await?;
    Ok(promoted)
}

/// An independent reader of the journal: every write a master acknowledged is there once, and
/// no entry was appended under a token that was not in force.
async fn check_journal(pair: &Pair, record: &MasterRecord) -> Result<()> {
    let verdict = verify(&pair.coordinator_addr, JOURNAL_PATH, EPOCH_PATH, &record.acked).await?;
    say!("{verdict}");
    ensure!(
        verdict.is_clean() && verdict.found == record.acked.len(),
        "the journal does not hold what the masters acknowledged: {verdict}\n{}",
        record.timeline()
    );
    Ok(())
}

/// From `fault_at` to the first write master `new` acknowledged under `token`.
fn first_new_write(record: &MasterRecord, new: usize, token: u64, fault_at: Duration) -> Result<Duration> {
    let first = record.acks.iter().filter(|a| a.node == new && a.what == token).map(|a| a.received).min();
    let first = first.with_context(|| format!("master {} acknowledged no write under token {token}", NODES[new]))?;
    Ok(first.saturating_sub(fault_at))
}

pub async fn process_fault_on_the_active_node(
    fault: ProcessFault,
    masters: Masters,
    kind: CoordinatorKind,
    test: &str,
) -> Result<()> {
    let Some(hosts) = hosts_or_skip(kind, test)? else { return Ok(()) };
    let pair = Arc::new(Pair::start_on_hosts(spec(kind, masters), &hosts).await?);
    let result = run_process_fault(&pair, fault, masters, false).await.map(|_| ());
    // A frozen process left stopped would outlive the test's own clean-up.
    for proc in pair.masters.iter().chain(pair.agents.iter().flatten()) {
        let _ = proc.signal(Signal::SIGCONT);
    }
    result
}

/// Returns the time from the fault to the new master's first acknowledged write. With
/// `kill_coordinator_leader` (an ensemble's), the coordinator's leader is killed with SIGKILL
/// right after the fault, so that the whole takeover (the old agent giving up, the new one
/// taking the lock, fencing and promoting) runs across the coordinator's leader change.
async fn run_process_fault(
    pair: &Arc<Pair>,
    fault: ProcessFault,
    masters: Masters,
    kill_coordinator_leader: bool,
) -> Result<Duration> {
    agents_on_their_observers(pair).await?;
    let old = pair.wait_for_active(Duration::from_secs(20)).await?;
    let new = 1 - old;
    let oracle = MasterOracle::start(pair);
    until_record(pair, &oracle, Duration::from_secs(5), "the active master to take writes", |r| {
        r.acks.iter().any(|a| a.node == old)
    })
    .await?;
    let coordinator_leader = if kill_coordinator_leader {
        let all: Vec<usize> = (0..pair.coordinator_servers()).collect();
        Some(pair.wait_for_coordinator_leader(&all, Duration::from_secs(30)).await?)
    } else {
        None
    };
    let session = Duration::from_millis(Timings::referee().session_timeout_ms);
    let target = if fault.on_master() {
        &pair.masters[old]
    } else {
        pair.agents[old].as_ref().context("the active agent runs")?
    };
    let signal = if fault.frozen() { Signal::SIGSTOP } else { Signal::SIGKILL };

    let fault_at = oracle.now();
    target.signal(signal)?;
    let mut leader_killed_at = None;
    if let Some(leader) = coordinator_leader {
        pair.kill_coordinator_server(leader);
        leader_killed_at = Some(oracle.now());
        say!(
            "coordinator server {} (the leader, on host {}) killed at {:.1} ms, {:.1} ms after the fault",
            leader + 1,
            pair.coordinator_host(leader),
            ms(oracle.now()),
            ms(oracle.now() - fault_at)
        );
    }
    let promoted = takeover(pair, &oracle, new, fault_at).await?;
    if let (Some(leader), Some(killed_at)) = (coordinator_leader, leader_killed_at) {
        // The takeover ran across the leader change: the new master was still standby when
        // the leader died.
        ensure!(
            promoted.after >= killed_at,
            "master {} was promoted (by {:.1} ms) before the coordinator's leader was killed at {:.1} ms: the \
             scenario did not kill the leader during the failover",
            NODES[new],
            ms(promoted.by),
            ms(killed_at)
        );
        let others: Vec<usize> = (0..pair.coordinator_servers()).filter(|&k| k != leader).collect();
        let successor = pair.wait_for_coordinator_leader(&others, Duration::from_secs(30)).await?;
        say!("coordinator server {} leads the survivors", successor + 1);
    }
    let mut resumed_at = None;
    if fault.frozen() {
        // Frozen for twice the session timeout, counted from the fault, then woken: a frozen
        // master (if the power switch had not turned it off) would resume believing it is active.
        let wake = fault_at + 2 * session;
        let now = oracle.now();
        if wake > now {
            tokio::time::sleep(wake - now).await;
        }
        resumed_at = Some(oracle.now());
        target.signal(Signal::SIGCONT)?;
    }
    if fault == ProcessFault::AgentFrozen {
        // The resumed agent finds its session gone and comes back as a standby.
        until_standby(pair, old, 0, "the resumed agent to come back as standby").await?;
    }
    // A second more of writes after the wake-up (or after the takeover) for a woken master to
    // give itself away.
    let settle = oracle.now();
    until_record(pair, &oracle, Duration::from_secs(10), "a second of writes after the fault settled", |r| {
        acknowledging_for(r, new, settle) >= Duration::from_secs(1)
    })
    .await?;
    pair.wait_for_active_node(new, Duration::from_secs(5)).await?;
    let fenced = status(pair, new).await["counters"]["fences_fenced"].as_u64().unwrap_or(0);
    let history = pair.agent_json(new, "/history").await.unwrap_or_default();
    let record = oracle.finish().await;
    say!(
        "{fault:?} on node {} at {:.1} ms; master {} promoted between {:.1} and {:.1} ms{}; {} fenced {fenced} time(s)\n{}",
        NODES[old],
        ms(fault_at),
        NODES[new],
        ms(promoted.after),
        ms(promoted.by),
        resumed_at.map_or(String::new(), |t| format!("; resumed at {:.1} ms", ms(t))),
        NODES[new],
        record.timeline()
    );
    record.check()?;
    ensure!(fenced >= 1, "{} promoted without fencing {}\n{}", NODES[new], NODES[old], record.timeline());
    let token = promoted.to.token.0;
    // Whatever the fault, wake-up included, the old master acknowledged nothing after the new
    // one had.
    no_old_ack_after_the_new_one(&record, old, new, promoted.to.token.0)?;
    let method = history.to_string();
    if fault.on_master() {
        // It answered neither the graceful request nor the management path: only the power
        // switch could fence it, and it is gone.
        ensure!(method.contains("power"), "the new active did not fence with the power switch: {method}");
        ensure!(
            !pair.masters[old].alive(),
            "master {} is still running after it was fenced\n{}",
            NODES[old],
            record.timeline()
        );
    } else {
        // The old master was alive and reachable: it was demoted before the new one was
        // promoted, as the masters logged their own role changes, and says standby.
        record.demoted(old).with_context(|| {
            format!("master {} was never seen leaving the active role\n{}", NODES[old], record.timeline())
        })?;
        let handover = pair.logged_handover(old, new, promoted.to.token).with_context(|| record.timeline())?;
        say!(
            "master {} stepped down {:.1} ms before master {} became active",
            NODES[old],
            handover.margin_ms(),
            NODES[new]
        );
        ensure!(
            last_state(&record, old, settle) == Some(HaState::Standby),
            "the old master does not say standby at the end\n{}",
            record.timeline()
        );
    }
    ensure!(
        last_state(&record, new, settle) == Some(HaState::Active),
        "the new master does not say active at the end\n{}",
        record.timeline()
    );
    if masters == Masters::Journalling {
        check_journal(pair, &record).await?;
    }
    first_new_write(&record, new, token, fault_at)
}

/// How a coordinator is restarted under the pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Every server killed at once (`kill -9`), then every one started again.
    AllAtOnce,
    /// One server after the other (an ensemble's rolling restart): each killed, started again
    /// and serving before the next is killed, so a majority serves throughout but clients on
    /// the killed server move, and the leader is among those killed.
    Rolling,
}

pub async fn coordinator_restart_under_the_pair(kind: CoordinatorKind, test: &str) -> Result<()> {
    restart_coordinator_under_the_pair(Restart::AllAtOnce, kind, test).await
}

pub async fn coordinator_rolling_restart_under_the_pair(kind: CoordinatorKind, test: &str) -> Result<()> {
    require_ensemble(kind)?;
    restart_coordinator_under_the_pair(Restart::Rolling, kind, test).await
}

async fn restart_coordinator_under_the_pair(how: Restart, kind: CoordinatorKind, test: &str) -> Result<()> {
    let Some(hosts) = hosts_or_skip(kind, test)? else { return Ok(()) };
    // The masters journal their edits in the coordinator: what the restart must keep.
    let pair = Arc::new(Pair::start_on_hosts(spec(kind, Masters::Journalling), &hosts).await?);
    let first = pair.wait_for_active(Duration::from_secs(20)).await?;
    let oracle = MasterOracle::start(&pair);
    until_record(&pair, &oracle, Duration::from_secs(10), "a hundred writes on the active master", |r| {
        r.acks.iter().filter(|a| a.node == first).count() >= 100
    })
    .await?;
    let killed_at = oracle.now();
    match how {
        Restart::AllAtOnce => {
            pair.kill_coordinator();
            pair.restart_coordinator(false).await?;
        }
        Restart::Rolling => {
            let all: Vec<usize> = (0..pair.coordinator_servers()).collect();
            for k in 0..pair.coordinator_servers() {
                pair.restart_coordinator_server(k).await?;
                // The next is killed only once the restarted one is back in an ensemble with
                // a leader, so a majority serves throughout.
                let leader = pair.wait_for_coordinator_leader(&all, Duration::from_secs(30)).await?;
                say!(
                    "coordinator server {} restarted at {:.1} ms; server {} leads",
                    k + 1,
                    ms(oracle.now()),
                    leader + 1
                );
            }
        }
    }
    let restarted_at = oracle.now();
    // Writes go on: some master acknowledges for two seconds after the restart, and the pair
    // settles with one active.
    until_record(&pair, &oracle, Duration::from_secs(30), "two seconds of writes after the restart", |r| {
        (0..NODES.len()).any(|n| acknowledging_for(r, n, restarted_at) >= Duration::from_secs(2))
    })
    .await?;
    let active = pair.wait_for_active(Duration::from_secs(10)).await?;
    let record = oracle.finish().await;
    say!(
        "coordinator {how:?}: killed at {:.1} ms, serving again at {:.1} ms; active before: {}, after: {}\n{}",
        ms(killed_at),
        ms(restarted_at),
        NODES[first],
        NODES[active],
        record.timeline()
    );
    record.check()?;
    // An independent reader of the journal: every write a master acknowledged, before the
    // coordinator's crash or after, is there once, under the token in force when it was
    // appended.
    check_journal(&pair, &record).await?;
    ensure!(
        record.acks.iter().any(|a| a.sent < killed_at) && record.acks.iter().any(|a| a.sent > restarted_at),
        "no writes acknowledged on both sides of the restart\n{}",
        record.timeline()
    );
    only_active_at_the_end(&record, active)
}

/// Anti-flap interval of [`flapping_health`].
const FLAP_INTERVAL: Duration = Duration::from_secs(3);

/// The active master's health flaps for twelve seconds: whichever master is active is made
/// unhealthy for 600 ms (longer than the agents need to count it failed), then healthy for
/// 600 ms, again and again. With `min_failover_interval_ms` set, failovers are spaced by at least
/// that interval, whatever the flapping does: there are at least two, none closer than the
/// interval, and while the active master is unhealthy within the interval of the last failover
/// the standby's agent says anti-flap holds it back. The masters never both say active, and the
/// pair ends with one active once the flapping stops.
pub async fn flapping_health(kind: CoordinatorKind, test: &str) -> Result<()> {
    let Some(hosts) = hosts_or_skip(kind, test)? else { return Ok(()) };
    let extra = format!("election:\n  min_failover_interval_ms: {}\n", FLAP_INTERVAL.as_millis());
    let spec = PairSpec { extra_agent_yaml: vec![extra.clone(), extra], ..spec(kind, Masters::Plain) };
    let pair = Arc::new(Pair::start_on_hosts(spec, &hosts).await?);
    pair.wait_for_active(Duration::from_secs(20)).await?;
    let oracle = MasterOracle::start(&pair);
    let flapping = Duration::from_secs(12);
    let half = Duration::from_millis(600);
    let started = Instant::now();
    let mut flaps = 0;
    // What each standby's agent decided while its peer's master was unhealthy.
    let mut held_back: Vec<String> = Vec::new();
    while started.elapsed() < flapping {
        let actives = pair.actives().await;
        if let [active] = actives[..] {
            pair.set_master_healthy(active, false).await?;
            let healthy_again = Instant::now() + half;
            while Instant::now() < healthy_again {
                let decision =
                    status(&pair, 1 - active).await["last_decision"].as_str().unwrap_or_default().to_string();
                if held_back.last() != Some(&decision) {
                    held_back.push(decision);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            pair.set_master_healthy(active, true).await?;
            flaps += 1;
        }
        tokio::time::sleep(half).await;
    }
    for n in 0..NODES.len() {
        pair.set_master_healthy(n, true).await?;
    }
    let active = pair.wait_for_active(Duration::from_secs(20)).await?;
    let settled = oracle.now();
    until_record(&pair, &oracle, Duration::from_secs(10), "a second of writes after the flapping", |r| {
        acknowledging_for(r, active, settled) >= Duration::from_secs(1)
    })
    .await?;
    let record = oracle.finish().await;
    let promotions: Vec<_> = record
        .role_changes()
        .into_iter()
        .filter(|c| c.to.state == HaState::Active && c.from.state != HaState::Active)
        .collect();
    say!(
        "{flaps} flaps of the active master's health in {flapping:?}: {} promotions, at {:?} ms\n{}",
        promotions.len(),
        promotions.iter().map(|c| ms(c.by).round()).collect::<Vec<_>>(),
        record.timeline()
    );
    record.check()?;
    ensure!(flaps >= 3, "only {flaps} flaps ran: the scenario did not exercise anti-flap\n{}", record.timeline());
    // Twelve seconds of flapping under a 3 s interval: the first flap fails over at once, and
    // later ones once the interval has passed. Fewer than two promotions leaves the spacing
    // below unchecked, and means the unhealthy master was not failed over from.
    ensure!(
        promotions.len() >= 2,
        "{} promotion(s) in {flapping:?} of flapping: the unhealthy active master was not failed over from\n{}\n{}",
        promotions.len(),
        record.timeline(),
        logs(&pair)
    );
    ensure!(
        held_back.iter().any(|d| d.contains("anti-flap")),
        "no standby said anti-flap held it back while the active master was unhealthy: {held_back:#?}\n{}",
        logs(&pair)
    );
    // A promotion is seen within its poll's window ([after, by]); the interval counts from when
    // the agent saw the active change, which precedes the previous promotion by at most the
    // fencing and promotion time: half a second on these hosts.
    let slack = Duration::from_millis(500);
    for pair_of in promotions.windows(2) {
        let gap = pair_of[1].by.saturating_sub(pair_of[0].after);
        ensure!(
            gap + slack >= FLAP_INTERVAL,
            "two promotions {:.0} ms apart (masters {} then {}), under the {FLAP_INTERVAL:?} anti-flap interval\n{}",
            ms(gap),
            NODES[pair_of[0].node],
            NODES[pair_of[1].node],
            record.timeline()
        );
    }
    only_active_at_the_end(&record, active)
}

/// Rounds of [`simultaneous_start`].
const START_ROUNDS: usize = 5;

/// Both agents started at the same instant (back to back, before either can reach the
/// coordinator), on a fresh coordinator each round: exactly one of them promotes its master,
/// once, and the masters never both say active.
pub async fn simultaneous_start(kind: CoordinatorKind, test: &str) -> Result<()> {
    let Some(hosts) = hosts_or_skip(kind, test)? else { return Ok(()) };
    let mut winners = [0usize; 2];
    for round in 1..=START_ROUNDS {
        let pair = Arc::new(Pair::start_on_hosts(spec(kind, Masters::Plain), &hosts).await?);
        let oracle = MasterOracle::start(&pair);
        let record = until_record(&pair, &oracle, Duration::from_secs(10), "a second of writes on one master", |r| {
            (0..NODES.len()).any(|n| acknowledging_for(r, n, Duration::ZERO) >= Duration::from_secs(1))
        })
        .await?;
        let active = (0..NODES.len())
            .find(|&n| acknowledging_for(&record, n, Duration::ZERO) >= Duration::from_secs(1))
            .context("the master that took writes")?;
        let mut promotions = Vec::new();
        for n in 0..NODES.len() {
            promotions
                .push(status(&pair, n).await["counters"]["promotions"].as_u64().context("an agent's promotions")?);
        }
        let record = oracle.finish().await;
        record.check()?;
        // The oracle starts once an agent says active; the masters' own logs cover the race
        // before it: the other master never logged itself active, and this one did once.
        let logged = |n: usize| pair.master_role_changes(n).into_iter().filter(|c| c.to == HaState::Active).count();
        ensure!(
            logged(active) == 1 && logged(1 - active) == 0,
            "round {round}: the masters logged {} and {} promotions (a, b) while master {} took writes\n{}",
            logged(0),
            logged(1),
            NODES[active],
            logs(&pair)
        );
        ensure!(
            promotions.iter().sum::<u64>() == 1 && promotions[active] == 1,
            "round {round}: the agents promoted {promotions:?} times (a, b) while master {} took writes\n{}\n{}",
            NODES[active],
            record.timeline(),
            logs(&pair)
        );
        let end = oracle_end(&record);
        ensure!(
            last_state(&record, active, end) == Some(HaState::Active)
                && last_state(&record, 1 - active, end) == Some(HaState::Standby),
            "round {round}: the end is not master {} active and the other standby\n{}",
            NODES[active],
            record.timeline()
        );
        winners[active] += 1;
    }
    say!("{START_ROUNDS} simultaneous starts: a won {}, b won {}", winners[0], winners[1]);
    Ok(())
}

/// Master `active` says active in the last second of the record, and the other does not.
fn only_active_at_the_end(record: &MasterRecord, active: usize) -> Result<()> {
    let end = oracle_end(record);
    ensure!(
        last_state(record, active, end) == Some(HaState::Active)
            && last_state(record, 1 - active, end) != Some(HaState::Active),
        "the end is not exactly one active master ({})\n{}",
        NODES[active],
        record.timeline()
    );
    Ok(())
}

/// The last second of a record: where its final states are read.
fn oracle_end(record: &MasterRecord) -> Duration {
    let last = record.states.iter().map(|o| o.sent).max().unwrap_or_default();
    last.saturating_sub(Duration::from_secs(1))
}

/// The longest a failover may take, from the active master's kill to the new master's first
/// acknowledged write, when the coordinator's leader is killed during it: a new coordinator
/// leader, every session moved to a surviving server, and the takeover itself, on loaded CI
/// machines.
pub const FAILOVER_BOUND_ACROSS_LEADER_KILL: Duration = Duration::from_secs(15);

/// The simulated hosts a scenario with `kind` needs, or `None` (said loudly, as a skip of
/// `test`) where they cannot be made here.
fn hosts_or_skip(kind: CoordinatorKind, test: &str) -> Result<Option<Hosts>> {
    if let Some(why) = hosts_unavailable() {
        skip(test, &why);
        return Ok(None);
    }
    Ok(Some(Hosts::new(hosts_needed(kind))?))
}

fn require_ensemble(kind: CoordinatorKind) -> Result<()> {
    ensure!(kind.servers() > 1, "this scenario needs a coordinator ensemble, not {kind:?}");
    Ok(())
}

/// An ensemble's coordinator leader killed during a failover: the active master is killed,
/// then at once the coordinator's leader, while the standby's agent is taking over. The
/// process-fault checks all hold (the old master powered off before the new one promotes,
/// never two actives, no late acknowledgement, the new master active at the end), the journal
/// holds every acknowledged write once under the token in force, and the failover completes
/// within [`FAILOVER_BOUND_ACROSS_LEADER_KILL`].
pub async fn coordinator_leader_killed_during_a_failover(kind: CoordinatorKind, test: &str) -> Result<()> {
    require_ensemble(kind)?;
    let Some(hosts) = hosts_or_skip(kind, test)? else { return Ok(()) };
    let pair = Arc::new(Pair::start_on_hosts(spec(kind, Masters::Journalling), &hosts).await?);
    let took = run_process_fault(&pair, ProcessFault::MasterKilled, Masters::Journalling, true).await?;
    eprintln!(
        "failover across the coordinator leader's kill: {:.1} ms from the master's kill to the new master's first \
         acknowledged write (bound {FAILOVER_BOUND_ACROSS_LEADER_KILL:?})",
        ms(took)
    );
    ensure!(
        took <= FAILOVER_BOUND_ACROSS_LEADER_KILL,
        "the failover took {:.1} ms, over the bound of {FAILOVER_BOUND_ACROSS_LEADER_KILL:?}\n{}",
        ms(took),
        logs(&pair)
    );
    Ok(())
}

/// The coordinator servers' `max_leader_silence_ms` (their default).
const MAX_LEADER_SILENCE: Duration = Duration::from_millis(1000);

/// Slack on [`MAX_LEADER_SILENCE`] for the server's check interval (100 ms), the test's
/// polling and a loaded machine.
const SILENCE_SLACK: Duration = Duration::from_millis(1000);

/// How many client sessions coordinator server `k` holds (its `cons`), if it answers.
async fn sessions_on(pair: &Pair, k: usize) -> Option<usize> {
    let cons = pair.coordinator_four_letter(k, "cons").await?;
    Some(cons.lines().filter(|l| l.contains("sid=0x") && !l.contains("sid=0x0,")).count())
}

/// The coordinator's leader cut off from the other coordinator servers (its clients, the
/// agents and masters, still reach it): within `max_leader_silence_ms` it drops its clients,
/// the other two elect a new leader, every agent has a session there, writes go on with no
/// split brain and exactly one active at the end, and the journal holds every acknowledged
/// write once. Healed, the old leader rejoins as a follower.
pub async fn coordinator_leader_partitioned_from_its_peers(kind: CoordinatorKind, test: &str) -> Result<()> {
    require_ensemble(kind)?;
    let Some(hosts) = hosts_or_skip(kind, test)? else { return Ok(()) };
    let pair = Arc::new(Pair::start_on_hosts(spec(kind, Masters::Journalling), &hosts).await?);
    let result = run_leader_partition(&hosts, &pair).await;
    hosts.heal_all()?;
    result
}

/// Where the ensemble's leader scenarios start: the pair with an active master taking writes
/// under the oracle, and which coordinator server leads.
struct LeaderScene {
    /// The active node.
    first: usize,
    /// Every coordinator server.
    all: Vec<usize>,
    /// The one that leads.
    leader: usize,
    /// The others.
    others: Vec<usize>,
    oracle: MasterOracle,
}

async fn leader_scene(pair: &Arc<Pair>) -> Result<LeaderScene> {
    let first = pair.wait_for_active(Duration::from_secs(20)).await?;
    let all: Vec<usize> = (0..pair.coordinator_servers()).collect();
    let leader = pair.wait_for_coordinator_leader(&all, Duration::from_secs(30)).await?;
    let others: Vec<usize> = all.iter().copied().filter(|&k| k != leader).collect();
    let oracle = MasterOracle::start(pair);
    until_record(pair, &oracle, Duration::from_secs(10), "the active master to take writes", |r| {
        r.acks.iter().any(|a| a.node == first)
    })
    .await?;
    Ok(LeaderScene { first, all, leader, others, oracle })
}

async fn run_leader_partition(hosts: &Hosts, pair: &Arc<Pair>) -> Result<()> {
    let LeaderScene { first, all, leader, others, oracle } = leader_scene(pair).await?;
    let sessions_before = sessions_on(pair, leader).await.context("the leader answers cons")?;

    let leader_host = pair.coordinator_host(leader);
    let other_hosts: Vec<usize> = others.iter().map(|&k| pair.coordinator_host(k)).collect();
    let cut_at = oracle.now();
    hosts.partition(leader_host, &other_hosts)?;
    // The cut-off leader drops its clients once no quorum has confirmed it for
    // max_leader_silence_ms, and takes none back while cut off.
    let bound = MAX_LEADER_SILENCE + SILENCE_SLACK;
    let dropped = loop {
        if sessions_on(pair, leader).await == Some(0) {
            break oracle.now() - cut_at;
        }
        if oracle.now() - cut_at > bound {
            bail!(
                "coordinator server {} still holds sessions {:.1} ms after it was cut off from the others \
                 (bound {bound:?})\n{}",
                leader + 1,
                ms(oracle.now() - cut_at),
                logs(pair)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let new_leader = pair.wait_for_coordinator_leader(&others, Duration::from_secs(30)).await?;
    let elected = oracle.now() - cut_at;
    // Every agent has a session on the majority's side, and writes go on for two seconds.
    for node in 0..NODES.len() {
        until_connected(pair, node).await?;
    }
    let settle = oracle.now();
    until_record(pair, &oracle, Duration::from_secs(30), "two seconds of writes after the agents reconnected", |r| {
        (0..NODES.len()).any(|n| acknowledging_for(r, n, settle) >= Duration::from_secs(2))
    })
    .await?;
    let active = pair.wait_for_active(Duration::from_secs(10)).await?;
    let still_cut_off = sessions_on(pair, leader).await;
    let record = oracle.finish().await;
    say!(
        "coordinator server {} (leader, host {leader_host}, {sessions_before} sessions) cut off from servers {:?} at \
         {:.1} ms: it held no session {:.1} ms later; server {} led {:.1} ms after the cut; active before: {}, \
         after: {}\n{}",
        leader + 1,
        others.iter().map(|k| k + 1).collect::<Vec<_>>(),
        ms(cut_at),
        ms(dropped),
        new_leader + 1,
        ms(elected),
        NODES[first],
        NODES[active],
        record.timeline()
    );
    eprintln!(
        "the cut-off coordinator leader dropped its {sessions_before} sessions within {:.1} ms; a new leader \
         within {:.1} ms",
        ms(dropped),
        ms(elected)
    );
    record.check()?;
    ensure!(
        still_cut_off == Some(0),
        "the cut-off coordinator server {} holds sessions again ({still_cut_off:?}) while cut off",
        leader + 1
    );
    only_active_at_the_end(&record, active)?;
    check_journal(pair, &record).await?;
    // Healed, the old leader rejoins the majority as a follower.
    hosts.heal(leader_host)?;
    // (waiting for one leader among all three also waits for every other to say follower)
    let leader_after_heal = pair.wait_for_coordinator_leader(&all, Duration::from_secs(30)).await?;
    say!("healed: coordinator server {} leads, server {} is back", leader_after_heal + 1, leader + 1);
    Ok(())
}

/// Waits up to 30 s until agent `node` says its session is connected.
async fn until_connected(pair: &Pair, node: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = status(pair, node).await;
        if s["session"]["state"] == "connected" {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after 30 s waiting for agent {} to be connected: {s}\n{}", NODES[node], logs(pair));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The coordinator's leader frozen (SIGSTOP) for twice the agents' session timeout, as a long
/// GC pause or a stalled VM, then resumed: the other two elect a leader and the agents move
/// there while it sleeps; woken, it finds itself deposed and rejoins. Writes go on with no split
/// brain and one active at the end, and the journal holds every acknowledged write.
pub async fn coordinator_leader_frozen_and_resumed(kind: CoordinatorKind, test: &str) -> Result<()> {
    on_ensemble_resuming_servers(kind, test, |pair| async move { run_leader_freeze(&pair).await }).await
}

/// Starts the journalling pair on an ensemble, plays `scene` on it, then resumes every
/// coordinator server, observers included, whatever the scene did: a server left stopped
/// would outlive the test's own clean-up.
async fn on_ensemble_resuming_servers<F, Fut>(kind: CoordinatorKind, test: &str, scene: F) -> Result<()>
where
    F: FnOnce(Arc<Pair>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    require_ensemble(kind)?;
    let Some(hosts) = hosts_or_skip(kind, test)? else { return Ok(()) };
    let pair = Arc::new(Pair::start_on_hosts(spec(kind, Masters::Journalling), &hosts).await?);
    let result = scene(pair.clone()).await;
    for k in 0..pair.coordinator_count() {
        let _ = pair.signal_coordinator_server(k, Signal::SIGCONT);
    }
    result
}

/// The coordinator server that holds the active agent's session frozen (SIGSTOP) for twice
/// the session timeout, then resumed: a follower, or the leader, whichever the agent's client
/// chose. A frozen server keeps its connections open, so the agent learns of it only from
/// silence. Given all three voters, it moves its session to another within its lease (it
/// gives a silent server up after a fifth of the session timeout): the master is never
/// demoted, and writes go on within a session timeout. Given its observer alone, it has
/// nowhere to go: it demotes its master at lease end, and the other node takes over.
pub async fn coordinator_server_of_the_active_agent_frozen(kind: CoordinatorKind, test: &str) -> Result<()> {
    on_ensemble_resuming_servers(kind, test, |pair| async move { run_agent_server_freeze(&pair, kind).await }).await
}

/// How a scene with a frozen coordinator server ends (see [`resume_frozen`]).
struct Resumed {
    /// When the server was resumed.
    at: Duration,
    /// The ensemble's leader after.
    leader: usize,
    /// The active master after.
    active: usize,
    /// The masters' record of the whole scene.
    record: MasterRecord,
    /// The longest time without an acknowledged write from the freeze to the resumption.
    gap: Duration,
}

/// Resumes frozen coordinator server `server`, waits for a leader among `all`, two seconds of
/// writes and an active master, and ends the oracle's record.
async fn resume_frozen(
    pair: &Pair,
    oracle: MasterOracle,
    server: usize,
    all: &[usize],
    frozen_at: Duration,
) -> Result<Resumed> {
    let at = oracle.now();
    pair.signal_coordinator_server(server, Signal::SIGCONT)?;
    let leader = pair.wait_for_coordinator_leader(all, Duration::from_secs(30)).await?;
    let settle = oracle.now();
    until_record(pair, &oracle, Duration::from_secs(30), "two seconds of writes after the resumption", |r| {
        (0..NODES.len()).any(|n| acknowledging_for(r, n, settle) >= Duration::from_secs(2))
    })
    .await?;
    let active = pair.wait_for_active(Duration::from_secs(10)).await?;
    let record = oracle.finish().await;
    let gap = longest_without_acks(&record, frozen_at, at);
    Ok(Resumed { at, leader, active, record, gap })
}

async fn run_agent_server_freeze(pair: &Arc<Pair>, kind: CoordinatorKind) -> Result<()> {
    let LeaderScene { first, all, oracle, .. } = leader_scene(pair).await?;
    let alone = pair.coordinator_observer(first).is_some();
    let deadline = Instant::now() + Duration::from_secs(10);
    let server = loop {
        if let Some(k) = pair.agent_coordinator_server(first).await {
            break k;
        }
        ensure!(Instant::now() < deadline, "agent {} holds no session on any server\n{}", NODES[first], logs(pair));
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let role = pair.coordinator_mode(server).await;
    let session = Duration::from_millis(Timings::referee().session_timeout_ms);
    let frozen_at = oracle.now();
    pair.signal_coordinator_server(server, Signal::SIGSTOP)?;
    let wake = frozen_at + 2 * session;
    let now = oracle.now();
    if wake > now {
        tokio::time::sleep(wake - now).await;
    }
    let Resumed { at: resumed_at, active, record, gap, .. } =
        resume_frozen(pair, oracle, server, &all, frozen_at).await?;
    say!(
        "coordinator server {} ({}) held agent {}'s session{}; frozen at {:.1} ms, resumed at {:.1} ms; active \
         before: {}, after: {}; longest time without an acknowledged write while it was frozen: {:.1} ms\n{}",
        server + 1,
        role.as_deref().unwrap_or("mode unknown"),
        NODES[first],
        if alone { ", its only server" } else { "" },
        ms(frozen_at),
        ms(resumed_at),
        NODES[first],
        NODES[active],
        ms(gap),
        record.timeline()
    );
    record.check()?;
    only_active_at_the_end(&record, active)?;
    // An Apache ZooKeeper ensemble whose leader freezes serves nobody until its followers give
    // it up (syncLimit ticks) and elect another: with the lab's timings that takes about as long
    // as the lease its staleness bound leaves (1.35 s), so the active may fail over there, and
    // only safety is required.
    let leader_election_may_outlast_the_lease = kind.is_apache() && role.as_deref() == Some("leader");
    if leader_election_may_outlast_the_lease {
        let demoted = record.role_changes().into_iter().any(|c| c.node == first && c.from.state == HaState::Active);
        say!(
            "the frozen server led an Apache ZooKeeper ensemble: master {} {}demoted, {} active at the end",
            NODES[first],
            if demoted { "" } else { "never " },
            NODES[active]
        );
    } else if alone {
        ensure!(
            active != first,
            "agent {} could reach no server but its frozen observer, yet its master is the active one at the end\n{}",
            NODES[first],
            logs(pair)
        );
    } else {
        let demoted = record.role_changes().into_iter().find(|c| c.node == first && c.from.state == HaState::Active);
        ensure!(
            demoted.is_none() && active == first,
            "agent {} could move its session to two live servers, yet its master was demoted ({demoted:?}; active at \
             the end: {})\n{}",
            NODES[first],
            NODES[active],
            logs(pair)
        );
        ensure!(
            gap < session,
            "no write was acknowledged for {:.1} ms while the agent's server was frozen (session timeout {session:?})\n{}",
            ms(gap),
            logs(pair)
        );
    }
    check_journal(pair, &record).await
}

async fn run_leader_freeze(pair: &Arc<Pair>) -> Result<()> {
    let LeaderScene { first, all, leader, others, oracle } = leader_scene(pair).await?;
    let session = Duration::from_millis(Timings::referee().session_timeout_ms);
    let frozen_at = oracle.now();
    pair.signal_coordinator_server(leader, Signal::SIGSTOP)?;
    let new_leader = pair.wait_for_coordinator_leader(&others, Duration::from_secs(30)).await?;
    let elected = oracle.now() - frozen_at;
    // Frozen for twice the session timeout, counted from the freeze: every session it held
    // has moved or expired by then. Until then the two others keep the leader they elected:
    // one that hears its leader never campaigns against it, so no election follows the first
    // (each one would drop every client of the two and fail their writes).
    let wake = frozen_at + 2 * session;
    let mut lapses = Vec::new();
    while oracle.now() < wake {
        let at = oracle.now() - frozen_at;
        let mut modes = Vec::new();
        for &k in &others {
            modes.push((k + 1, pair.coordinator_mode(k).await));
        }
        let leaders: Vec<usize> =
            modes.iter().filter(|(_, m)| m.as_deref() == Some("leader")).map(|(k, _)| *k - 1).collect();
        if leaders != [new_leader] {
            lapses.push(format!("{:.1} ms: {modes:?}", ms(at)));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(
        lapses.is_empty(),
        "server {} was elected {:.1} ms after the freeze, but the survivors did not keep it as their leader while \
         server {} stayed frozen ({} samples of their modes without it, the first: {:?}; server, mode)\n{}",
        new_leader + 1,
        ms(elected),
        leader + 1,
        lapses.len(),
        lapses.iter().take(5).collect::<Vec<_>>(),
        logs(pair)
    );
    for node in 0..NODES.len() {
        until_connected(pair, node).await?;
    }
    let Resumed { at: resumed_at, leader: leader_after, active, record, gap } =
        resume_frozen(pair, oracle, leader, &all, frozen_at).await?;
    say!(
        "coordinator server {} (leader) frozen at {:.1} ms; server {} led {:.1} ms later; resumed at {:.1} ms; \
         server {} leads the three after; active before: {}, after: {}; longest time without an acknowledged \
         write while it was frozen: {:.1} ms\n{}",
        leader + 1,
        ms(frozen_at),
        new_leader + 1,
        ms(elected),
        ms(resumed_at),
        leader_after + 1,
        NODES[first],
        NODES[active],
        ms(gap),
        record.timeline()
    );
    record.check()?;
    // The agents' sessions move to the two others well inside their leases (each gives a
    // silent server up after a fifth of the session timeout), so the pair goes on taking
    // writes; a gap as long as a session timeout is a failover or a stalled ensemble.
    ensure!(
        gap < session,
        "no write was acknowledged for {:.1} ms while the coordinator leader was frozen (session timeout {session:?})\n{}",
        ms(gap),
        logs(pair)
    );
    only_active_at_the_end(&record, active)?;
    check_journal(pair, &record).await
}
