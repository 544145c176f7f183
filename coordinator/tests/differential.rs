//! Differential test: the same seeded random sequence of requests goes to this coordinator and
//! to Apache ZooKeeper 3.8 (Debian's `zookeeper` package) on loopback, and every reply and every
//! notification must match.
//!
//! Requests come from several sessions (some authenticated by digest, one as super), in one
//! global order, each awaited before the next, so both servers see the same history. Many are
//! meant to fail: bad versions, missing parents, non-empty deletes, ACL refusals, invalid paths
//! and ACLs, multis with a failing op. Replies are compared after normalising what legitimately
//! differs: zxids are replaced by their rank (the order in which each value first appeared on
//! that server), so a wrong czxid, mzxid or pzxid still shows; times are dropped; session ids
//! become the slot of the session that owns them; child lists are sorted (ZooKeeper returns them
//! in hash order). Notifications are compared by type and path (ZooKeeper 3.8 sends zxid -1).
//! Watches of every kind are set: one-shot ones by reads, persistent and recursive ones
//! (addWatch) on one session (see [`PERSISTENT_WATCHER`] for the rules that keep the two servers
//! comparable), and removed (removeWatches).
//!
//! The same histories run a second time through a follower of a three-server ensemble started
//! in-process (`common::ensemble`): writes forwarded to the leader, reads and notifications from
//! the follower's own tree, and still every reply as Apache ZooKeeper's.
//!
//! A failure prints the seed and the first diverging request. `REFEREE_DIFF_SEED` replays one
//! seed; `REFEREE_DIFF_OPS` changes the length.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use base64::Engine;
use common::ensemble::ThreeVoters;
use common::raw::{body, Jute, Notification, Raw, Rd};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use referee_coordinator::config::CoordinatorConfig;
use referee_testkit::{
    apache_zookeeper_installed, skip, ApacheZk, ApacheZkProfile, TestServer, APACHE_ZK_MISSING, SUPER_DIGEST,
};

const SLOTS: usize = 4;
/// The one slot that holds persistent and recursive watches (addWatch): the super session, so
/// that no ACL stands between it and any notification. It holds no one-shot watches, and
/// removes its watches with type Any alone: Apache ZooKeeper 3.8 keeps one watch mode per
/// session and path, the last registered (a one-shot watch set on a path watched persistently
/// ends the persistent one at its first event; this server keeps both), and its
/// Data and Children types match a persistent watch's halves. Within these rules the two
/// agree; for the same reason each path is watched in one mode only (recursive on / and the top
/// level, persistent below).
const PERSISTENT_WATCHER: usize = 3;
const SESSION_TIMEOUT_MS: i32 = 30_000;

/// One side of the comparison: a server and its sessions.
struct Side {
    name: &'static str,
    addr: SocketAddr,
    conns: Vec<Raw>,
    /// zxid value → rank of first appearance.
    ranks: HashMap<i64, usize>,
    /// session id → slot label.
    sessions: HashMap<i64, String>,
    /// Reconnections so far, for fresh session labels.
    generation: usize,
}

impl Side {
    async fn open(name: &'static str, addr: SocketAddr) -> Result<Side> {
        let mut side =
            Side { name, addr, conns: Vec::new(), ranks: HashMap::new(), sessions: HashMap::new(), generation: 0 };
        for slot in 0..SLOTS {
            let raw = Raw::connect(addr, SESSION_TIMEOUT_MS).await.with_context(|| format!("{name}: connect"))?;
            side.sessions.insert(raw.session_id, format!("s{slot}"));
            side.conns.push(raw);
        }
        Ok(side)
    }

    fn zxid(&mut self, z: i64) -> String {
        if z <= 0 {
            return z.to_string();
        }
        let next = self.ranks.len();
        format!("z{}", self.ranks.entry(z).or_insert(next))
    }

    fn owner(&self, id: i64) -> String {
        match id {
            0 => "0".into(),
            i64::MIN => "container".into(),
            id if (id as u64) >> 56 == 0xff => format!("ttl:{}", id & 0x00ff_ffff_ffff_ffff),
            id => self.sessions.get(&id).cloned().unwrap_or_else(|| format!("unknown-session-{id:x}")),
        }
    }

    fn stat(&mut self, r: &mut Rd<'_>) -> Result<String> {
        let s = r.stat()?;
        Ok(format!(
            "stat(c={} m={} p={} v={} cv={} av={} owner={} len={} kids={})",
            self.zxid(s.czxid),
            self.zxid(s.mzxid),
            self.zxid(s.pzxid),
            s.version,
            s.cversion,
            s.aversion,
            self.owner(s.ephemeral_owner),
            s.data_length,
            s.num_children
        ))
    }

    /// Sends one request on a slot and describes, normalised, the notifications that came
    /// before its reply and the reply itself.
    async fn run(&mut self, slot: usize, opcode: i32, req: &[u8]) -> Result<String> {
        let xid = self.conns[slot].send(opcode, req).await?;
        let (reply, notes) = self.conns[slot].reply_to(xid).await.with_context(|| format!("{}: reply", self.name))?;
        let mut out = String::new();
        for Notification { kind, path, .. } in notes {
            out.push_str(&format!("notify({kind} {path}) "));
        }
        let zxid = self.zxid(reply.zxid);
        out.push_str(&format!("err={} zxid={zxid}", reply.err));
        if reply.err != 0 {
            return Ok(out);
        }
        let mut r = Rd::new(&reply.body);
        let described = self.describe(opcode, &mut r)?;
        r.end().with_context(|| format!("{}: trailing bytes after {described}", self.name))?;
        out.push(' ');
        out.push_str(&described);
        Ok(out)
    }

    fn describe(&mut self, opcode: i32, r: &mut Rd<'_>) -> Result<String> {
        Ok(match opcode {
            1 => format!("path={}", r.string()?),
            15 | 19 | 21 => format!("path={} {}", r.string()?, self.stat(r)?),
            2 | 13 | 18 | 100 | -11 => String::new(),
            // addWatch answers with an ErrorResponse body: its code again.
            106 => format!("err-body={}", r.int()?),
            3 | 5 | 7 => self.stat(r)?,
            4 => format!("data={:?} {}", r.buffer()?, self.stat(r)?),
            6 => {
                let n = r.int()?;
                let mut acl = Vec::new();
                for _ in 0..n.max(0) {
                    acl.push(format!("{}:{}:{}", r.int()?, r.string()?, r.string()?));
                }
                format!("acl={acl:?} {}", self.stat(r)?)
            }
            8 => format!("children={:?}", sorted(r.strings()?)),
            12 => format!("children={:?} {}", sorted(r.strings()?), self.stat(r)?),
            9 => format!("path={}", r.string()?),
            103 => format!("ephemerals={:?}", sorted(r.strings()?)),
            104 => format!("count={}", r.int()?),
            14 | 22 => {
                let mut parts = Vec::new();
                loop {
                    let ty = r.int()?;
                    let done = r.boolean()?;
                    let err = r.int()?;
                    if done {
                        break;
                    }
                    parts.push(match ty {
                        -1 => format!("error({err},{})", r.int()?),
                        1 => format!("create({})", r.string()?),
                        15 => format!("create2({} {})", r.string()?, self.stat(r)?),
                        2 => "delete".into(),
                        13 => "check".into(),
                        5 => format!("setData({})", self.stat(r)?),
                        4 => format!("getData({:?} {})", r.buffer()?, self.stat(r)?),
                        8 => format!("getChildren({:?})", sorted(r.strings()?)),
                        other => bail!("{}: unexpected multi result type {other}", self.name),
                    });
                }
                format!("multi[{}]", parts.join(", "))
            }
            other => bail!("no description for opcode {other}"),
        })
    }

    /// Closes a slot's session and opens a new one in its place.
    async fn reopen(&mut self, slot: usize) -> Result<String> {
        let desc = self.run(slot, -11, &[]).await?;
        self.generation += 1;
        let raw = Raw::connect(self.addr, SESSION_TIMEOUT_MS).await?;
        self.sessions.insert(raw.session_id, format!("s{slot}g{}", self.generation));
        self.conns[slot] = raw;
        Ok(desc)
    }
}

/// A described reply with its leading notifications sorted.
fn sorted_notifications(described: &str) -> (Vec<&str>, &str) {
    let mut notes = Vec::new();
    let mut rest = described;
    while let Some(stripped) = rest.strip_prefix("notify(") {
        let end = stripped.find(") ").map_or(stripped.len(), |e| e + 2);
        notes.push(&rest[..end + "notify(".len()]);
        rest = &stripped[end..];
    }
    notes.sort();
    (notes, rest)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn digest(user: &str, password: &str) -> String {
    let hash = sha1_smol::Sha1::from(format!("{user}:{password}")).digest().bytes();
    format!("{user}:{}", base64::engine::general_purpose::STANDARD.encode(hash))
}

/// One generated request.
struct Op {
    slot: usize,
    opcode: i32,
    body: Vec<u8>,
    what: String,
}

/// Generates requests over a small namespace, so that they collide often.
struct Generator {
    rng: StdRng,
}

impl Generator {
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.gen_range(0..items.len())]
    }

    /// A path of the namespace, or now and then an invalid one, which must be refused
    /// identically.
    fn path(&mut self) -> String {
        let p = self.valid_path();
        if self.rng.gen_ratio(1, 60) {
            let bad = *self.pick::<&str>(&["a", "/a/", "/a//b", "/a/./b", "", "/a/../b", "/zookeeper/quota", "/a\0b"]);
            return bad.to_string();
        }
        p
    }

    fn valid_path(&mut self) -> String {
        let depth = self.rng.gen_range(1..=3);
        let mut p = String::new();
        for _ in 0..depth {
            p.push('/');
            let name = *self.pick::<&str>(&["a", "b", "c"]);
            p.push_str(name);
        }
        p
    }

    fn acl(&mut self) -> Jute {
        let alice = digest("alice", "secret");
        match self.rng.gen_range(0..20) {
            0..=11 => Jute::new().open_acl(),
            12 | 13 => Jute::new().int(1).int(1).string("world").string("anyone"),
            14 => Jute::new().int(2).int(31).string("digest").string(&alice).int(1).string("world").string("anyone"),
            15 => Jute::new().int(1).int(31).string("auth").string(""),
            16 => Jute::new().int(1).int(31).string("ip").string("127.0.0.1"),
            17 => Jute::new().int(1).int(31).string("ip").string("10.0.0.0/8"),
            18 => Jute::new().int(1).int(31).string("world").string("nobody"),
            _ => Jute::new().int(0),
        }
    }

    fn data(&mut self) -> Option<Vec<u8>> {
        match self.rng.gen_range(0..10) {
            0 => None,
            1 => Some(Vec::new()),
            _ => Some((0..self.rng.gen_range(1..12)).map(|_| self.rng.gen()).collect()),
        }
    }

    fn version(&mut self) -> i32 {
        if self.rng.gen_ratio(1, 2) {
            -1
        } else {
            self.rng.gen_range(0..3)
        }
    }

    /// A create body and its opcode (create, create2, createContainer or createTTL).
    fn create(&mut self) -> (i32, Vec<u8>, String) {
        let mut path = self.path();
        let (opcode, flags, ttl) = match self.rng.gen_range(0..24) {
            0..=5 => (1, self.rng.gen_range(0..4), None),
            6..=19 => (15, self.rng.gen_range(0..4), None),
            // createContainer makes a container whatever the flags say.
            20 => (19, *self.pick(&[4, 4, 0, 1, 3]), None),
            // The largest TTL is 2^40 - 1 ms.
            21 => (21, *self.pick(&[5, 6]), Some(*self.pick(&[0i64, 60_000, (1 << 40) - 1, 1 << 40]))),
            22 => (15, *self.pick(&[4, 5, 7, -1]), None),
            _ => (1, 0, None),
        };
        if flags == 2 || flags == 3 || flags == 6 {
            if self.rng.gen_ratio(1, 3) {
                path.push('/');
            } else {
                path.push_str("/s-");
            }
        }
        let data = self.data();
        let mut j = Jute::new().string(&path).buffer(data.as_deref());
        j = j.bytes(&self.acl().into_vec()).int(flags);
        if let Some(ttl) = ttl {
            j = j.long(ttl);
        }
        (opcode, j.into_vec(), format!("create(op {opcode}, {path}, flags {flags})"))
    }

    fn multi_op(&mut self) -> (i32, Vec<u8>, String) {
        match self.rng.gen_range(0..4) {
            0 => {
                let (opcode, body, what) = self.create();
                // Containers and TTL nodes cannot be created inside a multi by the Java client.
                if opcode == 19 || opcode == 21 {
                    return (1, body::create("/a", b"m", 0), "create(/a)".into());
                }
                (opcode, body, what)
            }
            1 => {
                let (p, v) = (self.path(), self.version());
                (2, body::path_int(&p, v), format!("delete({p}, v{v})"))
            }
            2 => {
                let (p, d, v) = (self.path(), self.data(), self.version());
                (5, Jute::new().string(&p).buffer(d.as_deref()).int(v).into_vec(), format!("setData({p}, v{v})"))
            }
            _ => {
                let (p, v) = (self.path(), self.version());
                (13, body::path_int(&p, v), format!("check({p}, v{v})"))
            }
        }
    }

    /// Whether a read on `slot` sets a one-shot watch.
    fn one_shot(&mut self, slot: usize) -> bool {
        slot != PERSISTENT_WATCHER && self.rng.gen()
    }

    fn next(&mut self) -> Op {
        let mut slot = self.rng.gen_range(0..SLOTS);
        let (opcode, body, what) = match self.rng.gen_range(0..110) {
            0..=29 => self.create(),
            30..=39 => {
                let (p, v) = (self.path(), self.version());
                (2, body::path_int(&p, v), format!("delete({p}, v{v})"))
            }
            40..=49 => {
                let (p, d, v) = (self.path(), self.data(), self.version());
                (5, Jute::new().string(&p).buffer(d.as_deref()).int(v).into_vec(), format!("setData({p}, v{v})"))
            }
            50..=55 => {
                let (p, w) = (self.path(), self.one_shot(slot));
                (3, body::path_watch(&p, w), format!("exists({p}, watch {w})"))
            }
            56..=61 => {
                let (p, w) = (self.path(), self.one_shot(slot));
                (4, body::path_watch(&p, w), format!("getData({p}, watch {w})"))
            }
            62..=67 => {
                let (p, w, op) = (self.path(), self.one_shot(slot), *self.pick(&[8, 12]));
                (op, body::path_watch(&p, w), format!("getChildren{op}({p}, watch {w})"))
            }
            68..=69 => {
                let p = self.path();
                (6, body::path(&p), format!("getACL({p})"))
            }
            70..=73 => {
                let (p, v) = (self.path(), self.version());
                let acl = self.acl();
                (7, Jute::new().string(&p).bytes(&acl.into_vec()).int(v).into_vec(), format!("setACL({p}, v{v})"))
            }
            // A standalone check (13) is left out: Apache ZooKeeper 3.8 never answers it (it
            // only works inside a multi before 3.9); our own tests cover it.
            74..=87 => {
                let n = self.rng.gen_range(1..=4);
                let ops: Vec<(i32, Vec<u8>, String)> = (0..n).map(|_| self.multi_op()).collect();
                let what = ops.iter().map(|o| o.2.as_str()).collect::<Vec<_>>().join("; ");
                let pairs: Vec<(i32, Vec<u8>)> = ops.into_iter().map(|(o, b, _)| (o, b)).collect();
                (14, body::multi(&pairs), format!("multi[{what}]"))
            }
            88..=90 => {
                let ops: Vec<(i32, Vec<u8>)> = (0..self.rng.gen_range(1..=3))
                    .map(|_| (*self.pick(&[4, 8]), body::path_watch(&self.path(), false)))
                    .collect();
                (22, body::multi(&ops), "multiRead".into())
            }
            91..=93 => {
                let p = self.path();
                (104, body::path(&p), format!("getAllChildrenNumber({p})"))
            }
            94..=96 => {
                let p = if self.rng.gen() { "/".to_string() } else { self.path() };
                (103, body::path(&p), format!("getEphemerals({p})"))
            }
            97..=99 => {
                let p = self.path();
                (9, body::path(&p), format!("sync({p})"))
            }
            100..=104 => {
                slot = PERSISTENT_WATCHER;
                // Valid paths only: Apache ZooKeeper 3.8 registers a watch on any string (its
                // clients check paths before sending), where this server refuses an invalid
                // path with BadArguments, as every other request's (`watches.rs` checks it).
                let p = if self.rng.gen_ratio(1, 8) { "/".to_string() } else { self.valid_path() };
                // Recursive (1) on / and the top level, persistent (0) below: one mode a path.
                let mode = if p.matches('/').count() > 1 { 0 } else { 1 };
                (106, body::path_int(&p, mode), format!("addWatch({p}, mode {mode})"))
            }
            // checkWatches (17) is left out: Apache ZooKeeper 3.8 answers it for any session's
            // watch on the path (its WatchManager.containsWatcher never looks at the watcher),
            // where this server answers for the asking session's own; our own tests cover it.
            _ => {
                // Valid paths only: a read with a watch on an invalid path (getChildren of "",
                // which both servers read as the root) leaves Apache ZooKeeper 3.8 holding a
                // watch on that string that can never fire, and this server holding none.
                let p = self.valid_path();
                // 1 children, 2 data, 3 any.
                let ty = if slot == PERSISTENT_WATCHER { 3 } else { *self.pick(&[1, 2, 3]) };
                (18, body::path_int(&p, ty), format!("removeWatches({p}, type {ty})"))
            }
        };
        Op { slot, opcode, body, what }
    }
}

/// Gives slots 1 and 2 digest identities and slot 3 the super identity, on both sides.
async fn authenticate(sides: &mut [Side; 2]) -> Result<()> {
    let creds: [(usize, &[u8]); 3] = [(1, b"alice:secret"), (2, b"bob:pw"), (3, b"super:test")];
    for (slot, cred) in creds {
        let mut answers = Vec::new();
        for side in sides.iter_mut() {
            answers.push(side.run(slot, 100, &body::auth("digest", cred)).await?);
        }
        anyhow::ensure!(answers[0] == answers[1], "auth answers differ: {answers:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_histories_match_apache_zookeeper() -> Result<()> {
    differential("random_histories_match_apache_zookeeper", Ours::Standalone).await
}

/// The same histories through a follower of a three-server ensemble: its clients' writes go
/// through the leader, their reads and notifications come from the follower's tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_histories_through_a_follower_match_apache_zookeeper() -> Result<()> {
    differential("random_histories_through_a_follower_match_apache_zookeeper", Ours::Follower).await
}

/// Which of our servers the sessions talk to.
#[derive(Debug, Clone, Copy)]
enum Ours {
    /// One server alone.
    Standalone,
    /// A follower of three voters.
    Follower,
}

/// Our server configured as the differential needs it, whichever shape it runs in.
fn configure(c: &mut CoordinatorConfig) {
    c.extended_types_enabled = true;
    c.container_check_interval_ms = 3_600_000;
    c.super_digest = Some(SUPER_DIGEST.to_string());
    c.max_connections_per_address = 0;
    c.min_session_timeout_ms = Some(200);
    c.max_session_timeout_ms = Some(30_000);
    // Replies are under test here, not the staleness bound: three servers sharing one disk can
    // all stall in fdatasync past the default 1 s at once, and a follower that cannot prove
    // contact in time closes its clients (as it must), which would end the history early.
    c.max_leader_silence_ms = 10_000;
}

async fn differential(test: &str, shape: Ours) -> Result<()> {
    common::capture_server_logs("referee_coordinator=info,openraft=warn");
    if !apache_zookeeper_installed() {
        skip(test, APACHE_ZK_MISSING);
        return Ok(());
    }
    let seeds: Vec<u64> = match std::env::var("REFEREE_DIFF_SEED") {
        Ok(s) => vec![s.parse().context("REFEREE_DIFF_SEED must be a number")?],
        // Through a follower every write is replicated to three servers' disks: one seed.
        Err(_) => match shape {
            Ours::Standalone => vec![20261122, 7],
            Ours::Follower => vec![20261122],
        },
    };
    let ops: usize = std::env::var("REFEREE_DIFF_OPS").ok().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    for seed in seeds {
        // Fresh servers on both sides for each seed.
        let apache = tokio::task::spawn_blocking(|| ApacheZk::start(ApacheZkProfile::Reference)).await??;
        let apache_addr: SocketAddr = apache.connect_string().parse()?;
        let result = match shape {
            Ours::Standalone => {
                let ours = TestServer::start_with(configure).await?;
                let result = compare(seed, ops, ours.addr, apache_addr).await;
                ours.stop().await?;
                result
            }
            Ours::Follower => {
                let ours = ThreeVoters::start(configure).await?;
                let result = compare(seed, ops, ours.follower().client, apache_addr).await;
                ours.stop().await?;
                result
            }
        };
        if let Err(e) = result {
            bail!(
                "seed {seed} diverged against {shape:?} (replay with REFEREE_DIFF_SEED={seed}): {e:#}\nApache log tail:\n{}",
                apache.log_tail()
            );
        }
        eprintln!("seed {seed}: {ops} requests through {shape:?} matched Apache ZooKeeper");
    }
    Ok(())
}

async fn compare(seed: u64, ops: usize, ours: SocketAddr, apache: SocketAddr) -> Result<()> {
    let mut sides = [Side::open("referee", ours).await?, Side::open("apache", apache).await?];
    authenticate(&mut sides).await?;
    let mut gen = Generator { rng: StdRng::seed_from_u64(seed) };
    let mut history: Vec<String> = Vec::new();
    for i in 0..ops {
        // Now and then a session closes (its ephemerals go) and a new one takes its slot.
        if i > 0 && i % 1_500 == 0 {
            let slot = i / 1_500 % SLOTS;
            let a = sides[0].reopen(slot).await?;
            let b = sides[1].reopen(slot).await?;
            anyhow::ensure!(
                sorted_notifications(&a) == sorted_notifications(&b),
                "closeSession of slot {slot} at op {i}: referee {a} | apache {b}"
            );
            // The close deleted the session's ephemerals, all under one zxid. ZooKeeper deletes
            // them in Java hash-set order, which no client can rely on, so the notifications
            // they caused are collected on every slot now and compared as sets.
            for other in 0..SLOTS {
                let a = sides[0].run(other, 3, &body::path_watch("/", false)).await?;
                let b = sides[1].run(other, 3, &body::path_watch("/", false)).await?;
                anyhow::ensure!(
                    sorted_notifications(&a) == sorted_notifications(&b),
                    "notifications of the close of slot {slot} at op {i}, on slot {other}: referee {a} | apache {b}"
                );
            }
            if slot != 0 {
                // The new session has no identity yet; give it back the slot's one.
                let cred: &[u8] = [b"".as_slice(), b"alice:secret", b"bob:pw", b"super:test"][slot];
                for side in sides.iter_mut() {
                    side.run(slot, 100, &body::auth("digest", cred)).await?;
                }
            }
        }
        let op = gen.next();
        let ours =
            sides[0].run(op.slot, op.opcode, &op.body).await.with_context(|| format!("request #{i}: {}", op.what))?;
        let theirs =
            sides[1].run(op.slot, op.opcode, &op.body).await.with_context(|| format!("request #{i}: {}", op.what))?;
        history.push(format!("#{i} s{} {} -> {theirs}", op.slot, op.what));
        // Debugging aid: compare one path's Stat after every request.
        if let Ok(probe) = std::env::var("REFEREE_DIFF_PROBE") {
            let a = sides[0].run(op.slot, 3, &body::path_watch(&probe, false)).await?;
            let b = sides[1].run(op.slot, 3, &body::path_watch(&probe, false)).await?;
            history.push(format!("   probe {probe}: referee {a} | apache {b}"));
        }
        if ours != theirs {
            let recent = history[history.len().saturating_sub(
                std::env::var("REFEREE_DIFF_CONTEXT").ok().and_then(|s| s.parse().ok()).unwrap_or(8),
            )..]
                .join("\n  ");
            bail!(
                "request #{i} on slot {}: {}\n  referee: {ours}\n  apache:  {theirs}\nrecent history:\n  {recent}",
                op.slot,
                op.what
            );
        }
    }
    // Every slot drains the notifications still owed to it, through one last identical read.
    for slot in 0..SLOTS {
        let a = sides[0].run(slot, 3, &body::path_watch("/", false)).await?;
        let b = sides[1].run(slot, 3, &body::path_watch("/", false)).await?;
        anyhow::ensure!(a == b, "final read on slot {slot}: referee {a} | apache {b}");
    }
    for side in sides.iter_mut() {
        for slot in 0..SLOTS {
            let _ = side.run(slot, -11, &[]).await;
        }
    }
    Ok(())
}
