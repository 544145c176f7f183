//! The coordinator ensemble under a nemesis: three voters (five with `REFEREE_NEMESIS_VOTERS=5`)
//! and an observer, each a real
//! `referee coordinator` process on its own simulated host, while clients do compare-and-set and
//! `sync`-then-read through every server and a seeded random schedule of faults runs, one after
//! another:
//!
//! - a server killed with SIGKILL, restarted on its data directory later;
//! - a server frozen with SIGSTOP (its sockets open, nothing answered), resumed with SIGCONT;
//! - a server stuttering: frozen 60 ms and running 40 ms, over and over, so that it lags
//!   without going silent long enough to be given up;
//! - a server cut off from every other server, its clients still reaching it;
//! - one link cut both ways, or one way only (the bridge and asymmetric partitions, where a
//!   server hears some peers and not others);
//! - the leader and enough other voters to lose the quorum killed (on five voters, half the
//!   time only one other: the quorum holds), then restarted;
//! - every server killed at once, then all restarted.
//!
//! One round in five joins a process fault on one server (killed, frozen or stuttering) with a
//! network fault among the others. Half of the faults aim at the leader of the moment. Each
//! round lasts 0.3 to 4 s, often longer than the servers' election timeout and staleness bound,
//! so a frozen or cut-off leader is deposed and comes back to a newer term.
//!
//! Checked: after each fault is lifted, every server serves again and the clients get answers
//! within [`RECOVERY`], or the run fails (an ensemble that stays down after a fault is a bug
//! too). At the end the history, znode by znode (the clients move to a fresh znode every
//! [`KEY_PERIOD`], so each history stays short enough to check however long the run), must be
//! linearizable: no acknowledged write lost, no read of a value older than one already read or
//! acknowledged, no compare-and-set applied against a version that was not current. Beside
//! them, readers that keep one session through the faults (it moves between servers, as the
//! client library reconnects it) read without `sync`: no session may see a znode's version go
//! back (`session_order`), which a lagging server would show if it took a session that has seen
//! more than it holds. Watchers follow a znode written every 20 ms by its notifications alone,
//! each in one session through the faults: once they are over, each must be notified of one
//! last write within [`NOTIFIED_WITHIN`], which it cannot be if it ever lost a notification.
//! And every server, asked on its own after a `sync`, holds the same data and version for
//! every znode.
//!
//! `REFEREE_NEMESIS_SECONDS` sets how long faults are injected (default 40);
//! `REFEREE_NEMESIS_SEED` replays a schedule. The seed is printed first and named by any
//! failure; it fixes the faults, their order, targets and lengths, not how the processes
//! interleave. Needs root for the simulated hosts and skips loudly without it.

#[path = "support/ensemble.rs"]
mod ensemble;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use ensemble::{session, Ensemble, Role, PERSISTENT};
use nix::sys::signal::Signal;
use referee_testkit::register_workload::{answered_grow, create_keys, verdict, History, Keys, RegisterClient};
use referee_testkit::session_order::{monotonic, DataWatcher, Seen, SessionReader, Watched};
use referee_testkit::{hosts_unavailable, skip, within_for, Hosts};
use tokio::time::Instant;
use zookeeper_client as zk;

/// Voters unless `REFEREE_NEMESIS_VOTERS` says 5.
const DEFAULT_VOTERS: u64 = 3;
const PATH: &str = "/nemesis";
/// How long the clients stay on one znode.
const KEY_PERIOD: Duration = Duration::from_secs(2);
const CLIENTS: usize = 6;
/// Readers that keep one session through the faults (see `session_order`).
const READERS: usize = 2;
/// Their session timeout: longer than any fault, so their sessions move rather than end.
const READER_SESSION: Duration = Duration::from_secs(12);
/// The znode the watchers follow, written every [`WATCHED_EVERY`].
const WATCHED: &str = "/nemesis-watched";
const WATCHED_EVERY: Duration = Duration::from_millis(20);
/// Watchers that follow it by notifications alone (see `session_order`), each in one session.
const WATCHERS: usize = 2;
/// How long a watcher may take to be notified of the last write, once the faults are over.
const NOTIFIED_WITHIN: Duration = Duration::from_secs(15);
/// How long one client operation may take before it counts as unanswered.
const OP_DEADLINE: Duration = Duration::from_secs(2);
/// How long, once a fault is lifted, the clients may wait for answers again: a whole ensemble
/// restarted elects in about a second, and a session lost meanwhile is replaced in a few.
const RECOVERY: Duration = Duration::from_secs(30);
/// Answered operations that show the ensemble recovered after a fault.
const RECOVERED_AFTER: usize = 20;
const DEFAULT_SECONDS: u64 = 40;
/// How long a fault lasts, in milliseconds.
const FAULT_MS: (u64, u64) = (300, 4000);
/// The pause between one fault's recovery and the next fault, in milliseconds.
const QUIET_MS: (u64, u64) = (200, 1500);

/// The servers: voters `1..=n` and one observer after them, each on the host of its number.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Topology {
    voters: Vec<u64>,
    all: Vec<u64>,
}

impl Topology {
    fn new(voters: u64) -> Topology {
        Topology { voters: (1..=voters).collect(), all: (1..=voters + 1).collect() }
    }

    fn roles(&self) -> Vec<Role> {
        self.all.iter().map(|s| if self.voters.contains(s) { Role::Voter } else { Role::Observer }).collect()
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    Kill(u64),
    Freeze(u64),
    /// Frozen and resumed over and over (60 ms stopped, 40 ms running): a server that lags
    /// without ever going silent for long.
    Stutter(u64),
    Isolate(u64),
    Cut(u64, u64),
    OneWay {
        from: u64,
        to: u64,
    },
    /// Voters killed together (a majority, or on five voters sometimes two), then restarted.
    KillVoters(Vec<u64>),
    KillAll,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(s) => write!(f, "kill -9 server {s}"),
            Fault::Freeze(s) => write!(f, "freeze server {s}"),
            Fault::Stutter(s) => write!(f, "stutter server {s}"),
            Fault::Isolate(s) => write!(f, "cut server {s} off from the others"),
            Fault::Cut(a, b) => write!(f, "cut the link between servers {a} and {b}"),
            Fault::OneWay { from, to } => write!(f, "drop what server {from} sends to server {to}"),
            Fault::KillVoters(v) => write!(f, "kill -9 voters {v:?}"),
            Fault::KillAll => write!(f, "kill -9 every server"),
        }
    }
}

/// The schedule: xorshift64* random numbers from the seed alone, and the servers.
struct Schedule(u64, Topology);

impl Schedule {
    fn new(seed: u64, topology: Topology) -> Schedule {
        Schedule(seed.max(1), topology)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn millis(&mut self, (lo, hi): (u64, u64)) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }

    fn pick(&mut self, from: &[u64]) -> u64 {
        from[self.below(from.len() as u64) as usize]
    }

    /// The next round's faults, with `leader` leading now: one fault, or one in five rounds a
    /// process fault on one server together with a network fault among the others.
    fn round(&mut self, leader: u64) -> Vec<Fault> {
        let all = self.1.all.clone();
        let target = if self.below(2) == 0 { leader } else { self.pick(&all) };
        let rest: Vec<u64> = all.iter().copied().filter(|&s| s != target).collect();
        if self.below(5) == 0 {
            let process = match self.below(3) {
                0 => Fault::Kill(target),
                1 => Fault::Freeze(target),
                _ => Fault::Stutter(target),
            };
            let a = self.pick(&rest);
            let others: Vec<u64> = rest.iter().copied().filter(|&s| s != a).collect();
            let b = self.pick(&others);
            let network = match self.below(3) {
                0 => Fault::Cut(a, b),
                1 => Fault::OneWay { from: a, to: b },
                _ => Fault::Isolate(a),
            };
            return vec![process, network];
        }
        let other = self.pick(&rest);
        let fault = match self.below(12) {
            0 | 1 => Fault::Kill(target),
            2 | 3 => Fault::Freeze(target),
            4 => Fault::Stutter(target),
            5 | 6 => Fault::Isolate(target),
            7 => Fault::Cut(target, other),
            8 if self.below(2) == 0 => Fault::OneWay { from: target, to: other },
            8 => Fault::OneWay { from: other, to: target },
            9 | 10 => {
                let mut others: Vec<u64> = self.1.voters.iter().copied().filter(|&s| s != leader).collect();
                let n = self.1.voters.len();
                // The leader and enough others to lose the quorum; on five, sometimes one other.
                let more = if n >= 5 && self.below(2) == 0 { 1 } else { n / 2 };
                let mut killed = vec![leader];
                for _ in 0..more {
                    let i = self.below(others.len() as u64) as usize;
                    killed.push(others.remove(i));
                }
                Fault::KillVoters(killed)
            }
            _ => Fault::KillAll,
        };
        vec![fault]
    }
}

/// Names a round's faults.
fn describe(faults: &[Fault]) -> String {
    faults.iter().map(Fault::to_string).collect::<Vec<_>>().join(" and ")
}

/// The run's length, seed and voters, from the environment.
fn settings() -> Result<(Duration, u64, u64)> {
    let seconds =
        match std::env::var("REFEREE_NEMESIS_SECONDS") {
            Ok(v) => v.trim().parse::<u64>().ok().filter(|&s| s > 0).with_context(|| {
                format!("REFEREE_NEMESIS_SECONDS is {v:?}: give a whole number of seconds, at least 1")
            })?,
            Err(_) => DEFAULT_SECONDS,
        };
    let seed = match std::env::var("REFEREE_NEMESIS_SEED") {
        Ok(v) => {
            let t = v.trim();
            let parsed = match t.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => t.parse(),
            };
            parsed.with_context(|| format!("REFEREE_NEMESIS_SEED is {v:?}: give a number, decimal or 0x-hex"))?
        }
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
            now.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
        }
    };
    let voters = match std::env::var("REFEREE_NEMESIS_VOTERS") {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| [3, 5].contains(n))
            .with_context(|| format!("REFEREE_NEMESIS_VOTERS is {v:?}: give 3 or 5"))?,
        Err(_) => DEFAULT_VOTERS,
    };
    Ok((Duration::from_secs(seconds), seed, voters))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_seeded_schedule_of_kills_freezes_and_partitions_leaves_every_znode_linearizable_and_the_servers_agreeing(
) -> Result<()> {
    const TEST: &str =
        "a_seeded_schedule_of_kills_freezes_and_partitions_leaves_every_znode_linearizable_and_the_servers_agreeing";
    if let Some(why) = hosts_unavailable() {
        skip(TEST, &why);
        return Ok(());
    }
    let (length, seed, voters) = settings()?;
    eprintln!(
        "nemesis seed {seed:#x} (replay with REFEREE_NEMESIS_SEED={seed:#x}), faults for {length:?}, {voters} voters \
         and an observer"
    );
    let topology = Topology::new(voters);
    let hosts = Hosts::new(topology.all.len())?;
    let host_list: Vec<_> = hosts.iter().cloned().collect();
    let mut ens = Ensemble::start_on_hosts(&topology.roles(), &host_list, "").await?;
    let outcome = run(&mut ens, &hosts, &topology, length, seed).await;
    if outcome.is_err() {
        for s in &ens.servers {
            let log = s.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!("--- server {}: last {} lines of its log ---", s.id, tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
    outcome.with_context(|| format!("nemesis seed {seed:#x} (replay with REFEREE_NEMESIS_SEED={seed:#x})"))
}

async fn run(ens: &mut Ensemble, hosts: &Hosts, topology: &Topology, length: Duration, seed: u64) -> Result<()> {
    let (voters, all) = (&topology.voters[..], &topology.all[..]);
    let keys = Keys::rotating_for(length + RECOVERY, KEY_PERIOD);
    let (leader, _) = ens.leader_among(voters).await?;
    let setup = session(&ens.client(leader).to_string(), Duration::from_secs(10)).await?;
    within_for(Duration::from_secs(30), "the znodes to be created", create_keys(&setup, PATH, keys)).await??;
    within_for(Duration::from_secs(10), "the watched znode to be created", setup.create(WATCHED, b"0", PERSISTENT))
        .await??;
    drop(setup);

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history: History = Arc::default();
    let every = ens.connect_string(all);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let client = RegisterClient {
                id: i,
                path: PATH.into(),
                keys,
                first: ens.client(all[i % all.len()]).to_string(),
                then: every.clone(),
                unconditional_writes: false,
                op_deadline: OP_DEADLINE,
            };
            tokio::spawn(client.run(started, stop.clone(), history.clone()))
        })
        .collect();
    let seen: Seen = Arc::default();
    let readers: Vec<_> = (0..READERS)
        .map(|i| {
            let reader = SessionReader {
                id: i,
                path: PATH.into(),
                keys,
                connect: every.clone(),
                session_timeout: READER_SESSION,
                op_deadline: OP_DEADLINE,
            };
            tokio::spawn(reader.run(started, stop.clone(), seen.clone()))
        })
        .collect();
    let watchers: Vec<_> = (0..WATCHERS)
        .map(|_| {
            let (tx, rx) = tokio::sync::watch::channel(Watched::default());
            let watcher = DataWatcher {
                path: WATCHED.into(),
                connect: every.clone(),
                session_timeout: READER_SESSION,
                op_deadline: OP_DEADLINE,
            };
            (tokio::spawn(watcher.run(stop.clone(), tx)), rx)
        })
        .collect();
    let watched_writer = tokio::spawn(write_watched(every.clone(), stop.clone()));
    answered_grow(&history, 100, RECOVERY, "100 answered operations before the first fault").await?;

    let mut schedule = Schedule::new(seed, topology.clone());
    let mut events = Vec::new();
    while started.elapsed() < length {
        every_server_running(ens, all)?;
        let (leader, _) = ens.leader_among(voters).await?;
        let faults = schedule.round(leader);
        let fault = describe(&faults);
        let lasting = schedule.millis(FAULT_MS);
        let at = started.elapsed();
        let event = format!("{:.1} s: {fault} ({leader} leading) for {lasting:.1?}", at.as_secs_f64());
        eprintln!("{event}");
        events.push(event);
        for f in &faults {
            inflict(ens, hosts, all, f).with_context(|| format!("inflicting: {f}"))?;
        }
        hold(ens, &faults, lasting).await.with_context(|| format!("holding: {fault}"))?;
        for f in faults.iter().rev() {
            lift(ens, hosts, all, f).await.with_context(|| format!("lifting: {f}"))?;
        }
        ens.wait_serving(all).await.with_context(|| format!("every server serving again after: {fault}"))?;
        let what = format!("{RECOVERED_AFTER} answered operations after: {fault}");
        answered_grow(&history, RECOVERED_AFTER, RECOVERY, &what).await?;
        tokio::time::sleep(schedule.millis(QUIET_MS)).await;
    }
    every_server_running(ens, all)?;
    // The faults are over: a last write to the watched znode must reach every watcher.
    let last = last_watched_write(&every).await?;
    for (i, (_, seen)) in watchers.iter().enumerate() {
        let mut seen = seen.clone();
        let notified = async { seen.wait_for(|w| w.version >= last).await.is_ok() };
        let reached = within_for(NOTIFIED_WITHIN, "a watcher to be notified", notified).await;
        let now = *seen.borrow();
        ensure!(
            matches!(reached, Ok(true)),
            "watcher {i} was not notified of the last write (version {last}) within {NOTIFIED_WITHIN:?}: it last read \
             version {} after {} notifications in {} session(s), so a notification was lost",
            now.version,
            now.notifications,
            now.sessions
        );
        eprintln!(
            "watcher {i}: {} notifications in {} session(s), notified of the last write (version {last})",
            now.notifications, now.sessions
        );
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients.into_iter().chain(readers) {
        within_for(Duration::from_secs(10), "a client to stop", c).await??;
    }
    within_for(Duration::from_secs(10), "the watched znode's writer to stop", watched_writer).await??;
    for (w, _) in watchers {
        within_for(Duration::from_secs(10), "a watcher to stop", w).await??;
    }
    let history = std::mem::take(&mut *history.lock().unwrap());
    let used = history.iter().map(|r| r.key).max().unwrap_or(0) + 1;
    verdict(&history, &format!("{} faults", events.len())).with_context(|| events.join("\n"))?;
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let sessions: std::collections::BTreeSet<i64> = seen.iter().map(|r| r.session).collect();
    let checked = monotonic(&seen).with_context(|| events.join("\n"))?;
    eprintln!(
        "{checked} plain reads in {} sessions of {READERS} readers: no session saw a version go back",
        sessions.len()
    );
    ensure!(checked > 0, "the readers read nothing: nothing to check");
    servers_agree(ens, all, keys, used).await
}

/// Writes the watched znode every [`WATCHED_EVERY`] until `stop`, in one session while it lasts.
async fn write_watched(connect: String, stop: Arc<AtomicBool>) {
    let mut session: Option<zk::Client> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(WATCHED_EVERY).await;
        let Some(client) = &session else {
            session = tokio::time::timeout(OP_DEADLINE, session_to(&connect)).await.ok().and_then(|c| c.ok());
            continue;
        };
        n += 1;
        let written = tokio::time::timeout(OP_DEADLINE, client.set_data(WATCHED, n.to_string().as_bytes(), None)).await;
        if !matches!(written, Ok(Ok(_))) && client.state().is_terminated() {
            session = None;
        }
    }
}

async fn session_to(connect: &str) -> Result<zk::Client> {
    session(connect, READER_SESSION).await
}

/// One more write to the watched znode, acknowledged; its version.
async fn last_watched_write(connect: &str) -> Result<i32> {
    within_for(RECOVERY, "the last write to the watched znode", async {
        loop {
            if let Ok(Ok(zk)) = tokio::time::timeout(OP_DEADLINE, session_to(connect)).await {
                if let Ok(Ok(stat)) = tokio::time::timeout(OP_DEADLINE, zk.set_data(WATCHED, b"last", None)).await {
                    return stat.version;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Fails naming the servers that exited on their own (no fault of the schedule is running).
fn every_server_running(ens: &mut Ensemble, all: &[u64]) -> Result<()> {
    let running = ens.running();
    let exited: Vec<u64> = all.iter().copied().filter(|s| !running.contains(s)).collect();
    ensure!(exited.is_empty(), "server(s) {exited:?} exited on their own");
    Ok(())
}

/// Starts `fault`.
fn inflict(ens: &mut Ensemble, hosts: &Hosts, all: &[u64], fault: &Fault) -> Result<()> {
    match *fault {
        Fault::Kill(s) => ens.kill9(s),
        Fault::Freeze(s) | Fault::Stutter(s) => ens.server(s).signal(Signal::SIGSTOP),
        Fault::Isolate(s) => hosts.isolate(s as usize),
        Fault::Cut(a, b) => hosts.partition(a as usize, &[b as usize]),
        Fault::OneWay { from, to } => hosts.partition_one_way(from as usize, to as usize),
        Fault::KillVoters(ref v) => v.iter().try_for_each(|&s| ens.kill9(s)),
        Fault::KillAll => all.iter().try_for_each(|&s| ens.kill9(s)),
    }
}

/// Lets `faults` last `lasting`, resuming and freezing again the stuttering servers meanwhile
/// (each is frozen when this starts and when it ends).
async fn hold(ens: &mut Ensemble, faults: &[Fault], lasting: Duration) -> Result<()> {
    let stuttering: Vec<u64> =
        faults.iter().filter_map(|f| if let Fault::Stutter(s) = f { Some(*s) } else { None }).collect();
    let end = Instant::now() + lasting;
    if stuttering.is_empty() {
        tokio::time::sleep_until(end).await;
        return Ok(());
    }
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(60)).await;
        for &s in &stuttering {
            ens.server(s).signal(Signal::SIGCONT)?;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        for &s in &stuttering {
            ens.server(s).signal(Signal::SIGSTOP)?;
        }
    }
    Ok(())
}

/// Ends `fault`: what was killed is restarted on its data directory, what was frozen resumed,
/// every network fault lifted.
async fn lift(ens: &mut Ensemble, hosts: &Hosts, all: &[u64], fault: &Fault) -> Result<()> {
    match *fault {
        Fault::Kill(s) => ens.restart(&[s]).await,
        Fault::Freeze(s) | Fault::Stutter(s) => ens.server(s).signal(Signal::SIGCONT),
        Fault::Isolate(_) | Fault::Cut(..) | Fault::OneWay { .. } => hosts.heal_all(),
        Fault::KillVoters(ref v) => ens.restart(v).await,
        Fault::KillAll => ens.restart(all).await,
    }
}

/// A znode's data and data version, as one server holds it.
type Held = (Vec<u8>, i32);

/// Every server, asked alone after a `sync`, holds the same data and version for each of the
/// first `used` keys.
async fn servers_agree(ens: &Ensemble, all: &[u64], keys: Keys, used: u64) -> Result<()> {
    let mut first: Option<(u64, Vec<Held>)> = None;
    for &id in all {
        let zk = session(&ens.client(id).to_string(), Duration::from_secs(10)).await?;
        within_for(Duration::from_secs(10), "sync", zk.sync(PATH)).await?.with_context(|| format!("sync on {id}"))?;
        let mut held = Vec::new();
        for key in 0..used {
            let path = keys.path_of(PATH, key);
            let (data, stat) = within_for(Duration::from_secs(10), "getData", zk.get_data(&path))
                .await?
                .with_context(|| format!("getData {path} on server {id}"))?;
            held.push((data, stat.version));
        }
        match &first {
            None => first = Some((id, held)),
            Some((other, theirs)) => {
                if let Some(key) = (0..used as usize).find(|&k| theirs[k] != held[k]) {
                    let show = |(d, v): &Held| format!("{:?} at version {v}", String::from_utf8_lossy(d));
                    bail!(
                        "servers disagree on {}: server {other} holds {}, server {id} {}",
                        keys.path_of(PATH, key as u64),
                        show(&theirs[key]),
                        show(&held[key])
                    );
                }
            }
        }
    }
    ensure!(first.is_some(), "no server was asked");
    eprintln!("all {} servers hold the same data and version for the first {used} znodes", all.len());
    Ok(())
}
