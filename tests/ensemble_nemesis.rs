//! The coordinator ensemble under a nemesis: three voters (five with `REFEREE_NEMESIS_VOTERS=5`)
//! and an observer, each a real
//! `referee coordinator` process on its own simulated host, while clients do compare-and-set and
//! `sync`-then-read through every server and a seeded random schedule of faults runs, one after
//! another:
//!
//! - a server killed with SIGKILL, restarted on its data directory later;
//! - a server frozen with SIGSTOP (its sockets open, nothing answered), resumed with SIGCONT;
//! - a server's disk hung: its data directory is a filesystem of its own (an ext4 image on a
//!   loop device), frozen with `fsfreeze` for at least [`STALL_MS`] and a second, so that its
//!   writes block in the kernel; the server stops itself past `log_sync_stall_ms`, and is
//!   restarted once the disk is thawed;
//! - a server's disk filled to its last block: whatever it writes next that needs a block (a
//!   vote, a snapshot, a new log segment) fails with "no space left"; a server that stops on
//!   it is restarted once the room is given back. Every server takes a snapshot every
//!   [`SNAPSHOT_EVERY`] entries, so snapshots fail on full disks, logs are purged behind them,
//!   and servers that lagged or restarted catch up from a snapshot sent by the leader;
//! - a server stuttering: frozen 60 ms and running 40 ms, over and over, so that it lags
//!   without going silent long enough to be given up;
//! - a server cut off from every other server, its clients still reaching it;
//! - one link cut both ways, or one way only (the bridge and asymmetric partitions, where a
//!   server hears some peers and not others);
//! - the leader and enough other voters to lose the quorum killed (on five voters, half the
//!   time only one other: the quorum holds), then restarted;
//! - every server killed at once, then all restarted;
//! - a membership change asked of the leader's admin listener, as an operator would: the
//!   observer promoted to voter (or, one time in three, removed); a voter removed, half the
//!   time the leader (which steps down once its removal commits); each removed server left
//!   running through one more round with its clients still reaching it, as an operator slow to
//!   stop it would leave it, then stopped and its data directory wiped; a new server under a
//!   new id added on the freed host as an observer or a voter. Half the time with another
//!   fault of this list asked for just before or just after it (a leader killed half-way
//!   through a change among them). Once that fault is lifted the change is asked again until
//!   the leader's membership shows it done, none in progress, within [`RECOVERY`].
//!
//! One round in five joins a process fault on one server (killed, frozen, stuttering or its
//! disk filled) with a
//! network fault among the others; one in six is a membership change. Half of the faults aim
//! at the leader of the moment. Each
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

#[path = "support/disks.rs"]
mod disks;
#[path = "support/ensemble.rs"]
mod ensemble;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use disks::Disks;
use ensemble::{session, Addrs, Ensemble, Role, LOG_STOP_SAID, PERSISTENT};
use nix::sys::signal::Signal;
use referee_coordinator::admin::Members;
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
/// How long the test waits for an admin listener's answer to a membership request.
const ADMIN_CALL: Duration = Duration::from_secs(10);
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
/// The servers' `log_sync_stall_ms`: past it a server whose disk hangs stops itself.
const STALL_MS: u64 = 1500;
/// Servers with an id up to this have a disk of their own, which can hang.
const DISKS_UP_TO: u64 = 16;
/// What a server logs as soon as it stops on a failure of its storage (full or failing);
/// whole, as [`LOG_STOP_SAID`].
const STORAGE_STOP_SAID: &str = " ERROR referee_coordinator::server: storage failed, stopping";
/// The servers' `snapshot_every_txns`: a snapshot every few seconds of the clients' writes.
const SNAPSHOT_EVERY: u64 = 500;
/// What a server says each time it starts.
const STARTED: &str = "phase=\"data directory opened\"";

/// The ensemble as it stands: voters and observers by id, and the host each runs on. It starts
/// as voters `1..=n` and one observer after them, each on the host of its number; the
/// membership changes of the schedule move it from n voters and an observer to n + 1 voters
/// (the observer promoted), to n voters and a spare host (a voter removed, or the observer,
/// stopped and its data directory wiped), and back (a new server, under a new id, added on the
/// spare host as an observer, or as a voter, which a removal then follows).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Topology {
    voters: Vec<u64>,
    observers: Vec<u64>,
    host_of: BTreeMap<u64, usize>,
    /// The voters it starts with.
    base: usize,
    /// The hosts, numbered from 1.
    hosts: usize,
    /// The id the next server added gets: a wiped server comes back as a new member.
    next_id: u64,
}

impl Topology {
    fn new(voters: u64) -> Topology {
        let all = 1..=voters + 1;
        Topology {
            voters: (1..=voters).collect(),
            observers: vec![voters + 1],
            host_of: all.clone().map(|s| (s, s as usize)).collect(),
            base: voters as usize,
            hosts: all.count(),
            next_id: voters + 2,
        }
    }

    /// Every member, voters and observers, by id.
    fn members(&self) -> Vec<u64> {
        let mut all: Vec<u64> = self.voters.iter().chain(&self.observers).copied().collect();
        all.sort_unstable();
        all
    }

    fn role(&self, id: u64) -> Role {
        if self.voters.contains(&id) {
            Role::Voter
        } else {
            Role::Observer
        }
    }

    fn roles(&self) -> Vec<Role> {
        self.members().into_iter().map(|s| self.role(s)).collect()
    }

    /// The host member `id` runs on.
    fn host(&self, id: u64) -> usize {
        self.host_of[&id]
    }

    /// A host no member runs on.
    fn spare_host(&self) -> Option<usize> {
        (1..=self.hosts).find(|h| !self.host_of.values().any(|v| v == h))
    }

    /// Every member's line of a configuration's `servers`.
    fn entries(&self, hosts: &Hosts) -> String {
        self.members().into_iter().map(|s| Addrs::on(hosts.host(self.host(s))).entry(s, self.role(s))).collect()
    }

    /// What it is once `change` is done.
    fn apply(&mut self, change: &Change) {
        match *change {
            Change::Promote(o) => {
                self.observers.retain(|&s| s != o);
                self.voters.push(o);
            }
            Change::Remove(v) => {
                self.voters.retain(|&s| s != v);
                self.observers.retain(|&s| s != v);
                self.host_of.remove(&v);
            }
            Change::Add { id, host, role } => {
                match role {
                    Role::Voter => self.voters.push(id),
                    Role::Observer => self.observers.push(id),
                }
                self.host_of.insert(id, host);
                self.next_id = id + 1;
            }
        }
        self.voters.sort_unstable();
    }
}

/// A change of the membership, asked of the leader's admin listener as an operator would
/// (`POST /members`, `DELETE /members/ID`), while other faults may be in force.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    /// The observer made a voter.
    Promote(u64),
    /// A voter (half the time the leader) or the observer removed, then stopped and its data
    /// directory wiped.
    Remove(u64),
    /// A new server, started on a spare host, added.
    Add { id: u64, host: usize, role: Role },
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Promote(o) => write!(f, "promote observer {o} to voter"),
            Change::Remove(v) => write!(f, "remove server {v}"),
            Change::Add { id, host, role: Role::Voter } => write!(f, "add server {id} on host {host} as a voter"),
            Change::Add { id, host, role: Role::Observer } => {
                write!(f, "add server {id} on host {host} as an observer")
            }
        }
    }
}

/// One fault of the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Fault {
    Kill(u64),
    Freeze(u64),
    /// Its disk frozen (`fsfreeze`): every write to it blocks until thawed.
    Hang(u64),
    /// Its disk filled to the last block: every write that needs one fails with ENOSPC.
    Fill(u64),
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
    /// A membership change, asked for when the round starts and seen through after its other
    /// fault is lifted.
    Change(Change),
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill(s) => write!(f, "kill -9 server {s}"),
            Fault::Freeze(s) => write!(f, "freeze server {s}"),
            Fault::Hang(s) => write!(f, "hang the disk of server {s}"),
            Fault::Fill(s) => write!(f, "fill the disk of server {s}"),
            Fault::Stutter(s) => write!(f, "stutter server {s}"),
            Fault::Isolate(s) => write!(f, "cut server {s} off from the others"),
            Fault::Cut(a, b) => write!(f, "cut the link between servers {a} and {b}"),
            Fault::OneWay { from, to } => write!(f, "drop what server {from} sends to server {to}"),
            Fault::KillVoters(v) => write!(f, "kill -9 voters {v:?}"),
            Fault::KillAll => write!(f, "kill -9 every server"),
            Fault::Change(c) => write!(f, "{c}"),
        }
    }
}

/// The schedule: xorshift64* random numbers from the seed alone.
struct Schedule(u64);

impl Schedule {
    fn new(seed: u64) -> Schedule {
        Schedule(seed.max(1))
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

    /// The next round's faults, on ensemble `t` with `leader` leading now: one fault; or one
    /// round in five a process fault on one server together with a network fault among the
    /// others; or one in six a membership change, half the time with a fault asked for just
    /// before or just after it (a leader killed half-way through a change among them).
    fn round(&mut self, t: &Topology, leader: u64) -> Vec<Fault> {
        if self.below(6) == 0 {
            let change = Fault::Change(self.change(t, leader));
            return match self.below(4) {
                0 | 1 => vec![change],
                2 => vec![change, self.single(t, leader)],
                _ => vec![self.single(t, leader), change],
            };
        }
        let all = t.members();
        if self.below(5) == 0 {
            let target = if self.below(2) == 0 { leader } else { self.pick(&all) };
            let rest: Vec<u64> = all.iter().copied().filter(|&s| s != target).collect();
            let process = match self.below(4) {
                0 => Fault::Kill(target),
                1 => Fault::Freeze(target),
                2 if target <= DISKS_UP_TO => Fault::Fill(target),
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
        vec![self.single(t, leader)]
    }

    /// One fault, half the time aimed at the leader.
    fn single(&mut self, t: &Topology, leader: u64) -> Fault {
        let all = t.members();
        let target = if self.below(2) == 0 { leader } else { self.pick(&all) };
        let rest: Vec<u64> = all.iter().copied().filter(|&s| s != target).collect();
        let other = self.pick(&rest);
        match self.below(13) {
            0 | 1 => Fault::Kill(target),
            2 | 3 => Fault::Freeze(target),
            4 => Fault::Stutter(target),
            5 | 6 => Fault::Isolate(target),
            7 => Fault::Cut(target, other),
            8 if self.below(2) == 0 => Fault::OneWay { from: target, to: other },
            8 => Fault::OneWay { from: other, to: target },
            9 | 10 => {
                let mut others: Vec<u64> = t.voters.iter().copied().filter(|&s| s != leader).collect();
                let n = t.voters.len();
                // The leader and enough others to lose the quorum; on five, sometimes one other.
                let more = if n >= 5 && self.below(2) == 0 { 1 } else { n / 2 };
                let mut killed = vec![leader];
                for _ in 0..more {
                    let i = self.below(others.len() as u64) as usize;
                    killed.push(others.remove(i));
                }
                Fault::KillVoters(killed)
            }
            11 => Fault::KillAll,
            _ if target <= DISKS_UP_TO && self.below(2) == 0 => Fault::Hang(target),
            _ if target <= DISKS_UP_TO => Fault::Fill(target),
            _ => Fault::Freeze(target),
        }
    }

    /// The membership change that moves `t` on (see [`Topology`]).
    fn change(&mut self, t: &Topology, leader: u64) -> Change {
        if let Some(&o) = t.observers.first() {
            // Mostly promoted; sometimes removed, its host freed for a new server.
            return if self.below(3) == 0 { Change::Remove(o) } else { Change::Promote(o) };
        }
        if t.voters.len() > t.base {
            // Half the time the leader, which steps down once its removal commits.
            let v = if self.below(2) == 0 { leader } else { self.pick(&t.voters) };
            return Change::Remove(v);
        }
        let host = t.spare_host().expect("n voters and no observer leave a host spare");
        let role = if self.below(2) == 0 { Role::Voter } else { Role::Observer };
        Change::Add { id: t.next_id, host, role }
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
    let hosts = Hosts::new(topology.hosts)?;
    let host_list: Vec<_> = hosts.iter().cloned().collect();
    let storage = format!("log_sync_stall_ms: {STALL_MS}\nsnapshot_every_txns: {SNAPSHOT_EVERY}\n");
    let (mut ens, disks) = Ensemble::start_on_hosts_prepared(&topology.roles(), &host_list, &storage, |dir| {
        Disks::mount(dir, 1..=DISKS_UP_TO)
    })
    .await?;
    let outcome = run(&mut ens, &hosts, &disks, topology, length, seed).await;
    if outcome.is_err() {
        for s in &ens.servers {
            let log = s.log();
            // Snapshots come every second or so, and would fill the tail.
            let routine = |l: &&str| {
                ["snapshot file written", "snapshot written", "log purge point saved"].iter().any(|r| l.contains(r))
            };
            let tail: Vec<&str> = log.lines().rev().filter(|l| !routine(l)).take(60).collect();
            eprintln!("--- server {}: last {} lines of its log but snapshots ---", s.id, tail.len());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
    outcome.with_context(|| format!("nemesis seed {seed:#x} (replay with REFEREE_NEMESIS_SEED={seed:#x})"))
}

async fn run(
    ens: &mut Ensemble,
    hosts: &Hosts,
    disks: &Disks,
    mut topology: Topology,
    length: Duration,
    seed: u64,
) -> Result<()> {
    // Every host's client address: the members come and go, the hosts stay.
    let all = &topology.members()[..];
    let keys = Keys::rotating_for(length + RECOVERY, KEY_PERIOD);
    let (leader, _) = ens.leader_among(&topology.voters).await?;
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

    let mut schedule = Schedule::new(seed);
    let (mut events, mut rounds) = (Vec::new(), 0);
    // A removed voter left running through the next round (as an operator slow to stop it
    // would), with the round it was removed in.
    let mut lingering: Option<(u64, usize)> = None;
    while started.elapsed() < length {
        every_server_running(ens, &topology.members()).await?;
        let (leader, _) = ens.leader_among(&topology.voters).await?;
        let faults = schedule.round(&topology, leader);
        let fault = describe(&faults);
        let mut lasting = schedule.millis(FAULT_MS);
        if faults.iter().any(|f| matches!(f, Fault::Hang(_))) {
            // Long enough for the server to stop itself if it was writing.
            lasting = lasting.max(Duration::from_millis(STALL_MS + 1000));
        }
        let at = started.elapsed();
        let event = format!("{:.1} s: {fault} ({leader} leading) for {lasting:.1?}", at.as_secs_f64());
        eprintln!("{event}");
        events.push(event);
        rounds += 1;
        if let Some((v, _)) =
            lingering.filter(|_| faults.iter().any(|f| matches!(f, Fault::Change(Change::Add { .. }))))
        {
            // The new server takes its host.
            retire(ens, v)?;
            lingering = None;
        }
        for f in &faults {
            inflict(ens, hosts, disks, &topology, leader, f).with_context(|| format!("inflicting: {f}"))?;
        }
        hold(ens, &faults, lasting).await.with_context(|| format!("holding: {fault}"))?;
        let leaving =
            faults.iter().find_map(|f| if let Fault::Change(Change::Remove(v)) = f { Some(*v) } else { None });
        for f in faults.iter().rev() {
            lift(ens, hosts, disks, &topology.members(), f, leaving).await.with_context(|| format!("lifting: {f}"))?;
        }
        for f in &faults {
            if let Fault::Change(change) = f {
                let asked = see_through(ens, hosts, &topology, change).await.with_context(|| format!("{change}"))?;
                topology.apply(change);
                if let Change::Remove(v) = *change {
                    lingering = Some((v, rounds));
                }
                let event = format!("  {change}: done (asked again {asked} times); voters {:?}", topology.voters);
                eprintln!("{event}");
                events.push(event);
            }
        }
        let members = topology.members();
        ens.wait_serving(&members).await.with_context(|| format!("every server serving again after: {fault}"))?;
        let what = format!("{RECOVERED_AFTER} answered operations after: {fault}");
        answered_grow(&history, RECOVERED_AFTER, RECOVERY, &what).await?;
        tokio::time::sleep(schedule.millis(QUIET_MS)).await;
        if let Some((v, _)) = lingering.filter(|&(_, removed_in)| removed_in < rounds) {
            retire(ens, v)?;
            lingering = None;
        }
    }
    if let Some((v, _)) = lingering {
        retire(ens, v)?;
    }
    let all = &topology.members()[..];
    every_server_running(ens, all).await?;
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
    verdict(&history, &format!("{rounds} rounds of faults")).with_context(|| events.join("\n"))?;
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

/// Fails naming the servers that exited on their own (no fault of the schedule is running),
/// but for one that stopped itself as its disk hung (its last words say so), which is
/// restarted: its disk may have been thawed just as it found the hang too long.
async fn every_server_running(ens: &mut Ensemble, all: &[u64]) -> Result<()> {
    let running = ens.running();
    let exited: Vec<u64> = all.iter().copied().filter(|s| !running.contains(s)).collect();
    let (stopped, exited): (Vec<u64>, Vec<u64>) = exited.into_iter().partition(|&s| stopped_on_its_storage(ens, s));
    ensure!(exited.is_empty(), "server(s) {exited:?} exited on their own");
    for &s in &stopped {
        eprintln!("  server {s} stopped itself on a failure of its storage: restarted");
        // Reaped (it has exited), then started again.
        ens.kill9(s)?;
        ens.start_only(s)?;
    }
    ens.wait_serving(&stopped).await
}

/// Whether server `id`'s log since it last started says it stopped on its storage: its disk
/// hung (said at once by its stall watch), or a write failed.
fn stopped_on_its_storage(ens: &mut Ensemble, id: u64) -> bool {
    said_it_stops_on_its_storage(&ens.server(id).log())
}

/// Whether `log`, a server's log, says since its last start that the server stopped on its own
/// storage.
fn said_it_stops_on_its_storage(log: &str) -> bool {
    let since = log.rfind(STARTED).unwrap_or(0);
    [LOG_STOP_SAID, STORAGE_STOP_SAID].iter().any(|said| log[since..].contains(said))
}

#[test]
fn a_stop_is_read_from_the_servers_own_lines_not_from_an_error_it_passes_on() {
    let start = "2026-12-06T10:28:00.000000Z  INFO referee_coordinator::server: start-up phase done \
                 phase=\"data directory opened\" took_ms=\"0.2\" figures=\"\"\n";
    // A follower forwarding writes to a leader whose disk hung passes the leader's reason on.
    let forwarded = "2026-12-06T10:28:05.000000Z  INFO referee_coordinator::connection: closed connection: \
        cannot create session: replication failed with the write in flight: the leader (3) answered: \
        replication stopped: a write or fdatasync in /d/data3/log has not returned for 1500 ms \
        (log_sync_stall_ms is 1500 ms) conn=14 peer=10.213.53.254:40820\n";
    assert!(!said_it_stops_on_its_storage(&format!("{start}{forwarded}")));
    let hung = "2026-12-06T10:28:06.000000Z ERROR referee_coordinator::log::store: the Raft log failed and \
        takes no more writes error=a write or fdatasync in /d/data1/log has not returned for 1500 ms\n";
    assert!(said_it_stops_on_its_storage(&format!("{start}{forwarded}{hung}")));
    let failed = "2026-12-06T10:28:06.000000Z ERROR referee_coordinator::server: storage failed, stopping: \
        replication stopped: No space left on device (os error 28)\n";
    assert!(said_it_stops_on_its_storage(&format!("{start}{failed}")));
    // Only since the last start.
    assert!(!said_it_stops_on_its_storage(&format!("{hung}{start}")));
}

/// Once its disk is back, server `s` goes on as it was or, if it stopped itself on its
/// storage, ends and is started again (`what` says how its disk failed).
async fn back_from_disk_fault(ens: &mut Ensemble, s: u64, what: &str, serving: &[u64]) -> Result<()> {
    if !stopped_on_its_storage(ens, s) {
        match ens.wait_serving(serving).await {
            Ok(()) => {
                eprintln!("  server {s} did not stop: it wrote nothing that needed the disk meanwhile");
                return Ok(());
            }
            // Unless it stopped just as its disk came back.
            Err(e) if !stopped_on_its_storage(ens, s) => return Err(e),
            Err(_) => {}
        }
    }
    let server = ens.server(s);
    within_for(RECOVERY, "the server that stopped on its disk to end", async {
        while server.is_running() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    eprintln!("  server {s} stopped itself as its disk {what}: restarted once its disk was back");
    // Reaped (it has exited), then started again.
    ens.kill9(s)?;
    ens.start_only(s)?;
    ens.wait_serving(serving).await
}

/// Starts `fault` on ensemble `t`, `leader` leading: a membership change is asked of the
/// leader's admin listener (its answer is not awaited; [`see_through`] follows it up).
fn inflict(ens: &mut Ensemble, hosts: &Hosts, disks: &Disks, t: &Topology, leader: u64, fault: &Fault) -> Result<()> {
    let on = |s: u64| t.host(s);
    match *fault {
        Fault::Kill(s) => ens.kill9(s),
        Fault::Freeze(s) | Fault::Stutter(s) => ens.server(s).signal(Signal::SIGSTOP),
        Fault::Hang(s) => disks.freeze(s),
        Fault::Fill(s) => disks.fill(s).map(|_| ()),
        Fault::Isolate(s) => hosts.isolate(on(s)),
        Fault::Cut(a, b) => hosts.partition(on(a), &[on(b)]),
        Fault::OneWay { from, to } => hosts.partition_one_way(on(from), on(to)),
        Fault::KillVoters(ref v) => v.iter().try_for_each(|&s| ens.kill9(s)),
        Fault::KillAll => t.members().iter().try_for_each(|&s| ens.kill9(s)),
        Fault::Change(ref change) => {
            if let Change::Add { id, host, role } = *change {
                let h = hosts.host(host);
                ens.start_new(id, role, Addrs::on(h), Some(h.clone()), &t.entries(hosts))?;
            }
            let (admin, call) = (ens.server(leader).admin, AdminCall::of(change, t, hosts));
            tokio::spawn(async move { call.ask(admin).await });
            Ok(())
        }
    }
}

/// One membership request to an admin listener.
#[derive(Debug, Clone)]
enum AdminCall {
    /// `POST /members` with this body.
    Add(serde_json::Value),
    /// `DELETE /members/ID`.
    Remove(u64),
}

impl AdminCall {
    /// The request that asks for `change` on ensemble `t`.
    fn of(change: &Change, t: &Topology, hosts: &Hosts) -> AdminCall {
        let add = |id: u64, host: usize, role: &str| {
            let a = Addrs::on(hosts.host(host));
            AdminCall::Add(serde_json::json!({
                "id": id, "client": a.client, "peer": a.peer, "admin": a.admin, "role": role,
            }))
        };
        match *change {
            Change::Promote(o) => add(o, t.host(o), "voter"),
            Change::Remove(v) => AdminCall::Remove(v),
            Change::Add { id, host, role: Role::Voter } => add(id, host, "voter"),
            Change::Add { id, host, role: Role::Observer } => add(id, host, "observer"),
        }
    }

    /// Asks the admin listener at `admin`: the status and body of its answer.
    async fn ask(self, admin: SocketAddr) -> Result<(u16, String)> {
        let http = reqwest::Client::builder().timeout(ADMIN_CALL).build()?;
        let request = match self {
            AdminCall::Add(body) => http.post(format!("http://{admin}/members")).json(&body),
            AdminCall::Remove(id) => http.delete(format!("http://{admin}/members/{id}")),
        };
        let answer = request.send().await?;
        Ok((answer.status().as_u16(), answer.text().await?))
    }
}

/// The leader as the members name it, and its membership; `None` while they name none, or
/// one that does not answer as the leader.
async fn leader_members(ens: &Ensemble, members: &[u64]) -> Option<(u64, Members)> {
    for &id in members {
        let Some(leader) = ens.members(id).await.ok().and_then(|m| m.leader) else { continue };
        if !members.contains(&leader) {
            continue;
        }
        if let Ok(m) = ens.members(leader).await {
            if m.this_server == leader && m.leader == Some(leader) {
                return Some((leader, m));
            }
        }
    }
    None
}

/// Whether the leader's membership `m` shows `change` done, and no change in progress.
fn done(m: &Members, change: &Change) -> bool {
    let role = |id: u64| m.members.iter().find(|x| x.id == id).map(|x| x.role.as_str());
    !m.changing
        && match *change {
            Change::Promote(o) => role(o) == Some("voter"),
            Change::Remove(v) => role(v).is_none(),
            Change::Add { id, role: Role::Voter, .. } => role(id) == Some("voter"),
            Change::Add { id, role: Role::Observer, .. } => role(id) == Some("observer"),
        }
}

/// Follows `change` up once the round's other faults are lifted, as an operator would: asks
/// the leader again until its membership shows the change done and none in progress, within
/// [`RECOVERY`]. Then a new server must serve; a removed voter is left running for a round ([`retire`]).
/// How many times it asked after the first.
async fn see_through(ens: &mut Ensemble, hosts: &Hosts, t: &Topology, change: &Change) -> Result<usize> {
    let call = AdminCall::of(change, t, hosts);
    let members = t.members();
    let began = Instant::now();
    let mut asked = 0;
    let mut last = String::from("no leader named yet");
    loop {
        ensure!(began.elapsed() < RECOVERY, "not done within {RECOVERY:?}; last: {last}");
        if let Some((leader, m)) = leader_members(ens, &members).await {
            if done(&m, change) {
                break;
            }
            let voters: Vec<u64> = m.members.iter().filter(|x| x.role == "voter").map(|x| x.id).collect();
            last = format!("leader {leader}, voters {voters:?}, changing {}", m.changing);
            if !m.changing {
                asked += 1;
                match call.clone().ask(ens.server(leader).admin).await {
                    Ok((status, body)) => last = format!("{last}; asked again: {status} {body}"),
                    Err(e) => last = format!("{last}; asked again: {e:#}"),
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if let Change::Add { id, .. } = *change {
        ens.wait_serving(&[id]).await?;
    }
    Ok(asked)
}

/// Stops removed server `v`, if it still runs, and wipes its data directory: its host is free.
fn retire(ens: &mut Ensemble, v: u64) -> Result<()> {
    if ens.server(v).is_running() {
        ens.kill9(v)?;
    }
    ens.wipe(v)
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
/// every network fault lifted (`all`: the members). A membership change is seen through
/// afterwards ([`see_through`]); a voter the round removes is restarted without waiting for
/// it to serve: once its removal has committed no leader reaches it again.
async fn lift(
    ens: &mut Ensemble,
    hosts: &Hosts,
    disks: &Disks,
    all: &[u64],
    fault: &Fault,
    leaving: Option<u64>,
) -> Result<()> {
    let restart = |ens: &mut Ensemble, ids: &[u64]| -> Result<Vec<u64>> {
        ids.iter().try_for_each(|&s| ens.start_only(s))?;
        Ok(ids.iter().copied().filter(|&s| Some(s) != leaving).collect())
    };
    match *fault {
        Fault::Kill(s) => {
            let serving = restart(ens, &[s])?;
            ens.wait_serving(&serving).await
        }
        Fault::Freeze(s) | Fault::Stutter(s) => ens.server(s).signal(Signal::SIGCONT),
        Fault::Hang(s) | Fault::Fill(s) => {
            let what = if let Fault::Hang(_) = fault {
                disks.thaw(s)?;
                "hung"
            } else {
                disks.unfill(s)?;
                "filled"
            };
            let serving: Vec<u64> = [s].into_iter().filter(|&s| Some(s) != leaving).collect();
            back_from_disk_fault(ens, s, what, &serving).await
        }
        Fault::Isolate(_) | Fault::Cut(..) | Fault::OneWay { .. } => hosts.heal_all(),
        Fault::KillVoters(ref v) => {
            let serving = restart(ens, v)?;
            ens.wait_serving(&serving).await
        }
        Fault::KillAll => {
            let serving = restart(ens, all)?;
            ens.wait_serving(&serving).await
        }
        Fault::Change(_) => Ok(()),
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
