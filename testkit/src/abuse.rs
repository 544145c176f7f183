//! A misbehaviour load generator for ZooKeeper-wire servers: many clients that break the rules
//! at once, beside a few well-behaved clients whose every request is timed.
//!
//! The coordinator's abuse test and the `coordinator-bench abuse` command run it, against the
//! bundled coordinator and against Apache ZooKeeper. It speaks raw jute frames ([`wire`]) over
//! TCP through a pipelining [`RawClient`], on loopback only, and every client is bounded both in
//! time (the run's end cancels it) and in count (each misbehaviour has a budget, so a server
//! without limits is hurt, not killed outright, and the machine running the test survives).
//!
//! ```text
//!             ┌─ NeverReads ×n ─── multiRead replies or many watches, never read; setData firing watches
//!  abusers ───┼─ Floods ×n ─────── thousands of pipelined requests outstanding
//!  (one       ├─ LeaksSessions ×n─ connect, create an ephemeral, drop the socket; repeat
//!   runtime)  └─ HugePaths ×n ──── requests with paths just under the packet limit
//!                                                                          ──▶ server under test
//!  well-behaved ×4 (own thread) ── getData / setData / create, one at a time, each timed
//! ```
//!
//! The abusers come from several loopback source addresses ([`AbuseSpec::abuser_sources`]) and
//! the well-behaved clients from 127.0.0.1, as hostile and honest hosts would; the well-behaved
//! clients run on a thread and runtime of their own, so the generator's own abusers cannot delay
//! them in the generator, only the server can.
//!
//! The result, an [`AbuseReport`], holds every well-behaved latency, the longest time any
//! well-behaved client went without a reply, their errors, and a tally per misbehaviour that
//! shows the abuse happened.

pub mod client;
pub mod wire;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub use client::{ConnectOptions, GrantedSession, RawClient, RawReceiver, RawSender};
use wire::{code, create_mode, Packet, Request, MULTI_READ_RESULT_OVERHEAD, REQUEST_OVERHEAD};

/// Every node the load touches lives under this one.
pub const ROOT: &str = "/referee-abuse";

/// One way a client misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Misbehaviour {
    /// Never reads its socket, while asking for large `multiRead` replies (half of them) or
    /// leaving watches on many paths (the other half), and watching one hot node whose changes
    /// they all fire, once a second each.
    NeverReads,
    /// Keeps thousands of pipelined requests outstanding, reading replies as they come.
    Floods,
    /// Opens a session, pipelines an ephemeral create, drops the socket without closing the
    /// session, and again.
    LeaksSessions,
    /// Sends requests whose paths fill a packet up to the server's limit.
    HugePaths,
}

impl Misbehaviour {
    /// All of them, in the order abusers are dealt out.
    pub const ALL: [Misbehaviour; 4] =
        [Misbehaviour::NeverReads, Misbehaviour::Floods, Misbehaviour::LeaksSessions, Misbehaviour::HugePaths];
}

impl fmt::Display for Misbehaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Misbehaviour::NeverReads => "never reads",
            Misbehaviour::Floods => "floods",
            Misbehaviour::LeaksSessions => "leaks sessions",
            Misbehaviour::HugePaths => "huge paths",
        })
    }
}

/// What load to run against which server.
#[derive(Debug, Clone)]
pub struct AbuseSpec {
    /// The server's client address (loopback).
    pub target: SocketAddr,
    /// How long the abuse and the well-behaved clients run.
    pub duration: Duration,
    /// Misbehaving clients in total, dealt out over `misbehaviours` in turn.
    pub abusers: usize,
    /// The misbehaviours to run ([`Misbehaviour::ALL`] by default; fewer to see which one
    /// hurts a server).
    pub misbehaviours: Vec<Misbehaviour>,
    /// Well-behaved clients.
    pub well_behaved: usize,
    /// The server's packet limit (ZooKeeper's `jute.maxbuffer`): huge paths and `multiRead`
    /// replies are sized just under it.
    pub max_packet_bytes: usize,
    /// Source addresses the abusers connect from, in turn.
    pub abuser_sources: Vec<IpAddr>,
    /// The source address of the well-behaved clients.
    pub well_behaved_source: IpAddr,
    /// Requests a flooder keeps outstanding.
    pub flood_outstanding: usize,
    /// Requests one flooder connection sends at most.
    pub flood_requests_per_connection: u64,
    /// Reply bytes a reply-hoarding non-reader asks for on each connection and never reads.
    pub unread_reply_bytes: usize,
    /// Distinct paths a watch-hoarding non-reader leaves an exists-watch on, per connection.
    pub watches_per_connection: usize,
    /// Connections a non-reader opens at most (it opens another when the server closes one).
    pub unread_connections_per_client: u32,
    /// Sessions a leaker leaks at most.
    pub leaked_sessions_per_client: u32,
    /// Huge-path requests a client sends, spread evenly over the run.
    pub huge_requests_per_client: u32,
    /// A well-behaved request unanswered for this long is an error (and its client reconnects).
    pub reply_deadline: Duration,
}

impl AbuseSpec {
    /// The load the coordinator's robustness claim is stated for: 200 abusers against
    /// ZooKeeper's default 1 MiB packet limit, spread over 10 source addresses so that no
    /// address exceeds ZooKeeper's default of 60 connections. The budgets go past the
    /// coordinator's default per-connection limits they probe: 5,000 requests in flight against
    /// 1,000 outstanding, 16 MiB of unread replies against 4 MiB of queued outbound bytes plus
    /// the kernel's socket buffers (up to 4 MiB on Linux's default `tcp_wmem`), paths of a whole
    /// packet against 4 KiB. Watch hoarders leave 1,000 watches each, a tenth of the default
    /// per-connection limit: what a connection may legally hold is a cost the server accepts,
    /// and raising `watches_per_connection` measures that cost.
    pub fn new(target: SocketAddr, duration: Duration) -> Self {
        AbuseSpec {
            target,
            duration,
            abusers: 200,
            misbehaviours: Misbehaviour::ALL.to_vec(),
            well_behaved: 4,
            max_packet_bytes: 0xfffff,
            abuser_sources: (1..=10).map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 1, i))).collect(),
            well_behaved_source: IpAddr::V4(Ipv4Addr::LOCALHOST),
            flood_outstanding: 5_000,
            flood_requests_per_connection: 2_000_000,
            unread_reply_bytes: 16 << 20,
            watches_per_connection: 1_000,
            unread_connections_per_client: 20,
            leaked_sessions_per_client: 1_000,
            huge_requests_per_client: 8,
            reply_deadline: Duration::from_secs(10),
        }
    }

    /// Abusers of one kind.
    pub fn clients_of(&self, kind: Misbehaviour) -> usize {
        let n = self.misbehaviours.len();
        match self.misbehaviours.iter().position(|k| *k == kind) {
            Some(i) => self.abusers / n + usize::from(i < self.abusers % n),
            None => 0,
        }
    }

    /// The size of the node non-readers read with `multiRead`.
    const BIG_NODE_BYTES: usize = 64 << 10;

    /// How many reads of the big node fit one `multiRead` reply under the packet limit.
    fn reads_per_multi(&self) -> usize {
        (self.max_packet_bytes.saturating_sub(REQUEST_OVERHEAD) / (Self::BIG_NODE_BYTES + MULTI_READ_RESULT_OVERHEAD))
            .max(1)
    }
}

/// One well-behaved client's record.
#[derive(Debug, Clone, Default)]
pub struct WellBehavedRecord {
    /// The latency of every answered request.
    pub latencies: Vec<Duration>,
    /// The longest time without a reply, from the start of the run to its end.
    pub longest_gap: Duration,
    /// Errors: error replies, requests unanswered within the deadline, lost connections.
    pub errors: u64,
    /// The first few errors, described.
    pub first_errors: Vec<String>,
}

impl WellBehavedRecord {
    fn error(&mut self, what: String) {
        self.errors += 1;
        if self.first_errors.len() < 10 {
            self.first_errors.push(what);
        }
    }
}

/// What one kind of abuser did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbuserTally {
    /// The misbehaviour.
    pub kind: Misbehaviour,
    /// Clients behaving so.
    pub clients: usize,
    /// Sessions the server granted them.
    pub sessions: u64,
    /// Connections or handshakes that failed (refused, reset, no session in time).
    pub refused: u64,
    /// Connections the server closed under them.
    pub closed_by_server: u64,
    /// Requests sent.
    pub requests: u64,
    /// Replies read (non-readers read none).
    pub replies: u64,
    /// Replies that carried an error code.
    pub error_replies: u64,
}

#[derive(Default)]
struct Counters {
    sessions: AtomicU64,
    refused: AtomicU64,
    closed_by_server: AtomicU64,
    requests: AtomicU64,
    replies: AtomicU64,
    error_replies: AtomicU64,
}

impl Counters {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn tally(&self, kind: Misbehaviour, clients: usize) -> AbuserTally {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        AbuserTally {
            kind,
            clients,
            sessions: get(&self.sessions),
            refused: get(&self.refused),
            closed_by_server: get(&self.closed_by_server),
            requests: get(&self.requests),
            replies: get(&self.replies),
            error_replies: get(&self.error_replies),
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct AbuseReport {
    /// From the first request to the end of the run.
    pub elapsed: Duration,
    /// One record per well-behaved client.
    pub well_behaved: Vec<WellBehavedRecord>,
    /// One tally per misbehaviour.
    pub abusers: Vec<AbuserTally>,
}

/// The well-behaved clients' figures, all clients together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WellBehavedSummary {
    /// Requests answered.
    pub ops: u64,
    /// Requests answered per second of the run.
    pub ops_per_sec: f64,
    /// Median latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// 99.9th percentile latency.
    pub p999: Duration,
    /// Largest latency.
    pub max: Duration,
    /// The longest any client went without a reply.
    pub longest_gap: Duration,
    /// Errors of all clients.
    pub errors: u64,
}

impl AbuseReport {
    /// The well-behaved clients' figures.
    pub fn summary(&self) -> WellBehavedSummary {
        let mut all: Vec<Duration> = self.well_behaved.iter().flat_map(|r| r.latencies.iter().copied()).collect();
        all.sort_unstable();
        let pct = |p: f64| -> Duration {
            if all.is_empty() {
                return Duration::ZERO;
            }
            // Nearest rank: the smallest latency at or above which p of the samples lie.
            let rank = ((p * all.len() as f64).ceil() as usize).clamp(1, all.len());
            all[rank - 1]
        };
        WellBehavedSummary {
            ops: all.len() as u64,
            ops_per_sec: all.len() as f64 / self.elapsed.as_secs_f64().max(1e-9),
            p50: pct(0.50),
            p99: pct(0.99),
            p999: pct(0.999),
            max: all.last().copied().unwrap_or_default(),
            longest_gap: self.well_behaved.iter().map(|r| r.longest_gap).max().unwrap_or_default(),
            errors: self.well_behaved.iter().map(|r| r.errors).sum(),
        }
    }

    /// The first errors of every well-behaved client, one per line.
    pub fn error_lines(&self) -> String {
        let mut out = String::new();
        for (i, r) in self.well_behaved.iter().enumerate() {
            for e in &r.first_errors {
                out.push_str(&format!("well-behaved client {i}: {e}\n"));
            }
        }
        out
    }

    /// The tally of one misbehaviour.
    pub fn tally(&self, kind: Misbehaviour) -> &AbuserTally {
        self.abusers.iter().find(|t| t.kind == kind).expect("every kind is tallied")
    }
}

/// Creates the nodes the load uses, then runs the abusers and the well-behaved clients together
/// for the spec's duration. Fails only if the load cannot be set up (the server refuses the
/// first session or the nodes); whatever happens to the clients afterwards is in the report.
pub async fn run(spec: &AbuseSpec) -> Result<AbuseReport> {
    prepare(spec).await.context("preparing the nodes the load uses")?;
    let start = Instant::now();
    let end = start + spec.duration;

    // The well-behaved clients on a thread and runtime of their own.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let wb_spec = spec.clone();
    std::thread::Builder::new()
        .name("well-behaved".into())
        .spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .map(|rt| rt.block_on(well_behaved_all(&wb_spec, start, end)));
            let _ = done_tx.send(result);
        })
        .context("starting the well-behaved clients' thread")?;

    let counters: Vec<Arc<Counters>> = Misbehaviour::ALL.iter().map(|_| Arc::new(Counters::default())).collect();
    let mut abusers = JoinSet::new();
    let tokio_end = tokio::time::Instant::from_std(end);
    anyhow::ensure!(!spec.misbehaviours.is_empty() || spec.abusers == 0, "abusers without a misbehaviour");
    for i in 0..spec.abusers {
        let kind = spec.misbehaviours[i % spec.misbehaviours.len()];
        let kind_index = Misbehaviour::ALL.iter().position(|k| *k == kind).expect("every kind is in ALL");
        let ctx = AbuserCtx {
            spec: spec.clone(),
            index: i,
            source: spec.abuser_sources.get(i % spec.abuser_sources.len().max(1)).copied(),
            counters: counters[kind_index].clone(),
            start,
            end,
        };
        // The run's end cancels every abuser wherever it is, blocked writes included.
        abusers.spawn(async move {
            let _ = tokio::time::timeout_at(tokio_end, ctx.run(kind)).await;
        });
    }
    while abusers.join_next().await.is_some() {}

    let well_behaved = done_rx.await.map_err(|_| anyhow!("the well-behaved clients' thread died"))???;
    let abusers = Misbehaviour::ALL.iter().zip(&counters).map(|(k, c)| c.tally(*k, spec.clients_of(*k))).collect();
    Ok(AbuseReport { elapsed: end.saturating_duration_since(start), well_behaved, abusers })
}

fn big_node() -> String {
    format!("{ROOT}/big")
}
fn hot_node() -> String {
    format!("{ROOT}/hot")
}
fn own_node(i: usize) -> String {
    format!("{ROOT}/wb-{i}")
}
fn flood_node(i: usize) -> String {
    format!("{ROOT}/flood-{i}")
}

async fn prepare(spec: &AbuseSpec) -> Result<()> {
    let opts = ConnectOptions { source: Some(spec.well_behaved_source), ..ConnectOptions::default() };
    let mut c = RawClient::connect(spec.target, &opts).await?;
    let mut nodes = vec![(ROOT.to_string(), Vec::new()), (big_node(), vec![b'b'; AbuseSpec::BIG_NODE_BYTES])];
    nodes.push((hot_node(), Vec::new()));
    nodes.extend((0..spec.well_behaved).map(|i| (own_node(i), Vec::new())));
    nodes.extend((0..spec.abusers).map(|i| (flood_node(i), Vec::new())));
    for (path, data) in nodes {
        let (err, _) = c.call(&Request::Create { path: path.clone(), data, flags: create_mode::PERSISTENT }).await?;
        anyhow::ensure!(err == code::OK || err == code::NODE_EXISTS, "creating {path} failed with error {err}");
    }
    c.call(&Request::CloseSession).await?;
    Ok(())
}

async fn well_behaved_all(spec: &AbuseSpec, start: Instant, end: Instant) -> Result<Vec<WellBehavedRecord>> {
    let mut set = JoinSet::new();
    for i in 0..spec.well_behaved {
        let spec = spec.clone();
        set.spawn(async move { (i, well_behaved(&spec, i, start, end).await) });
    }
    let mut records = vec![WellBehavedRecord::default(); spec.well_behaved];
    while let Some(done) = set.join_next().await {
        let (i, record) = done.context("a well-behaved client panicked")?;
        records[i] = record;
    }
    Ok(records)
}

/// One well-behaved client: getData, setData and an ephemeral sequential create of its own
/// nodes, one request at a time, until the end of the run; any error, unanswered request or
/// lost connection is recorded and the client reconnects.
async fn well_behaved(spec: &AbuseSpec, i: usize, start: Instant, end: Instant) -> WellBehavedRecord {
    let mut rec = WellBehavedRecord::default();
    let opts = ConnectOptions { source: Some(spec.well_behaved_source), ..ConnectOptions::default() };
    let own = own_node(i);
    let ops = [
        Request::GetData { path: own.clone(), watch: false },
        Request::SetData { path: own.clone(), data: vec![b'w'; 64] },
        Request::Create { path: format!("{own}/e-"), data: vec![b'e'; 16], flags: create_mode::EPHEMERAL_SEQUENTIAL },
    ];
    let mut last_reply = start;
    let mut client: Option<RawClient> = None;
    let mut n = 0usize;
    while Instant::now() < end {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match RawClient::connect(spec.target, &opts).await {
                Ok(c) => client.insert(c),
                Err(e) => {
                    rec.error(format!("no session: {e:#}"));
                    // Pacing, not waiting for anything: a refused client must not spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let op = &ops[n % ops.len()];
        n += 1;
        let sent = Instant::now();
        match tokio::time::timeout(spec.reply_deadline, c.call(op)).await {
            Ok(Ok((err, _))) => {
                let now = Instant::now();
                rec.latencies.push(now - sent);
                rec.longest_gap = rec.longest_gap.max(now - last_reply);
                last_reply = now;
                if err != code::OK {
                    rec.error(format!("opcode {} answered with error {err}", op.opcode()));
                }
            }
            Ok(Err(e)) => {
                rec.error(format!("opcode {} failed: {e:#}", op.opcode()));
                client = None;
            }
            Err(_) => {
                rec.error(format!("opcode {} unanswered after {:?}", op.opcode(), spec.reply_deadline));
                client = None;
            }
        }
    }
    rec.longest_gap = rec.longest_gap.max(end.saturating_duration_since(last_reply));
    if let Some(mut c) = client {
        let _ = tokio::time::timeout(spec.reply_deadline, c.call(&Request::CloseSession)).await;
    }
    rec
}

struct AbuserCtx {
    spec: AbuseSpec,
    index: usize,
    source: Option<IpAddr>,
    counters: Arc<Counters>,
    start: Instant,
    end: Instant,
}

impl AbuserCtx {
    async fn run(self, kind: Misbehaviour) {
        match kind {
            Misbehaviour::NeverReads => self.never_read().await,
            Misbehaviour::Floods => self.flood().await,
            Misbehaviour::LeaksSessions => self.leak_sessions().await,
            Misbehaviour::HugePaths => self.huge_paths().await,
        }
    }

    async fn connect(&self, recv_buffer_bytes: Option<u32>, max_frame_bytes: usize) -> Option<RawClient> {
        let opts = ConnectOptions {
            source: self.source,
            recv_buffer_bytes,
            session_timeout_ms: 30_000,
            max_frame_bytes,
            handshake_timeout: Duration::from_secs(5),
        };
        match RawClient::connect(self.spec.target, &opts).await {
            Ok(c) => {
                Counters::add(&self.counters.sessions, 1);
                Some(c)
            }
            Err(_) => {
                Counters::add(&self.counters.refused, 1);
                // Pacing, not waiting for anything: a refused abuser must not spin.
                tokio::time::sleep(Duration::from_millis(20)).await;
                None
            }
        }
    }

    /// Records a failed write or read: a closed or reset connection was the server's doing.
    fn lost(&self, e: &anyhow::Error) {
        let by_server = e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(client::closed));
        if by_server {
            Counters::add(&self.counters.closed_by_server, 1);
        }
    }

    /// Never reads. Half the non-readers hoard replies: per connection, `multiRead`s whose
    /// replies add up to [`AbuseSpec::unread_reply_bytes`]. The other half hoard watches:
    /// exist-watches on [`AbuseSpec::watches_per_connection`] paths. Both leave a watch on the
    /// hot node first, then every second set its data (firing every non-reader's watch on it)
    /// and watch it again: the point is the notifications piling up, not the write volume,
    /// which the flooders bring. When the server closes the connection, a write fails and a new
    /// connection starts over.
    async fn never_read(&self) {
        let spec = &self.spec;
        let hoards_replies = (self.index / spec.misbehaviours.len().max(1)).is_multiple_of(2);
        let reads = spec.reads_per_multi();
        let reply_bytes = reads * (AbuseSpec::BIG_NODE_BYTES + MULTI_READ_RESULT_OVERHEAD);
        let multis = spec.unread_reply_bytes.div_ceil(reply_bytes);
        let multi = Request::MultiReadData { paths: vec![big_node(); reads] };
        for _ in 0..spec.unread_connections_per_client {
            // A small receive window: the server's buffers fill after a few KiB.
            let Some(c) = self.connect(Some(16 << 10), spec.max_packet_bytes).await else { continue };
            let RawClient { mut sender, receiver, .. } = c;
            let result: Result<()> = async {
                let mut burst = Vec::new();
                sender.encode_into(&Request::Exists { path: hot_node(), watch: true }, &mut burst);
                let mut sent = 1u64;
                if hoards_replies {
                    for _ in 0..multis {
                        sender.encode_into(&multi, &mut burst);
                        sent += 1;
                    }
                } else {
                    for k in 0..spec.watches_per_connection {
                        let path = format!("{ROOT}/unread-{}-{k}", self.index);
                        sender.encode_into(&Request::Exists { path, watch: true }, &mut burst);
                        sent += 1;
                        if burst.len() > 32 << 10 {
                            sender.write_frames(&std::mem::take(&mut burst)).await?;
                        }
                    }
                }
                sender.write_frames(&std::mem::take(&mut burst)).await?;
                Counters::add(&self.counters.requests, sent);
                loop {
                    sender.encode_into(&Request::SetData { path: hot_node(), data: vec![b'h'; 8] }, &mut burst);
                    sender.encode_into(&Request::Exists { path: hot_node(), watch: true }, &mut burst);
                    sender.write_frames(&std::mem::take(&mut burst)).await?;
                    Counters::add(&self.counters.requests, 2);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            .await;
            drop(receiver);
            if let Err(e) = result {
                self.lost(&e);
            }
        }
    }

    /// Per connection: keeps [`AbuseSpec::flood_outstanding`] requests in flight (getData and
    /// exists of its node, and every eighth a setData), reading replies as they come.
    async fn flood(&self) {
        let spec = &self.spec;
        let node = flood_node(self.index);
        let ops = [
            Request::GetData { path: node.clone(), watch: false },
            Request::Exists { path: node.clone(), watch: false },
            Request::GetData { path: node.clone(), watch: false },
            Request::Exists { path: node.clone(), watch: false },
            Request::GetData { path: node.clone(), watch: false },
            Request::Exists { path: node.clone(), watch: false },
            Request::GetData { path: node.clone(), watch: false },
            Request::SetData { path: node.clone(), data: vec![b'f'; 32] },
        ];
        const BURST: u32 = 64;
        while Instant::now() < self.end {
            let Some(c) = self.connect(None, spec.max_packet_bytes).await else { continue };
            let RawClient { mut sender, mut receiver, .. } = c;
            let window = Arc::new(Semaphore::new(spec.flood_outstanding.max(BURST as usize)));
            let send_window = window.clone();
            let send = async {
                let mut sent = 0u64;
                let mut n = 0usize;
                let mut burst = Vec::new();
                while sent < spec.flood_requests_per_connection {
                    send_window.acquire_many(BURST).await?.forget();
                    for _ in 0..BURST {
                        sender.encode_into(&ops[n % ops.len()], &mut burst);
                        n += 1;
                    }
                    sender.write_frames(&std::mem::take(&mut burst)).await?;
                    sent += u64::from(BURST);
                    Counters::add(&self.counters.requests, u64::from(BURST));
                }
                // The budget is spent: hold the connection until the run ends.
                std::future::pending::<Result<()>>().await
            };
            let receive = async {
                loop {
                    match receiver.next().await? {
                        None => anyhow::bail!(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                        Some(Packet::Notification { .. }) => {}
                        Some(Packet::Reply { err, .. }) => {
                            Counters::add(&self.counters.replies, 1);
                            if err != code::OK {
                                Counters::add(&self.counters.error_replies, 1);
                            }
                            window.add_permits(1);
                        }
                    }
                }
            };
            let result: Result<()> = tokio::select! {
                r = send => r,
                r = receive => r,
            };
            if let Err(e) = result {
                self.lost(&e);
            }
        }
    }

    /// Opens a session, pipelines the create of an ephemeral node and a ping, and drops the
    /// socket without reading or closing the session; again until the budget is spent.
    async fn leak_sessions(&self) {
        for n in 0..self.spec.leaked_sessions_per_client {
            if Instant::now() >= self.end {
                return;
            }
            let Some(c) = self.connect(None, self.spec.max_packet_bytes).await else { continue };
            let RawClient { mut sender, receiver, .. } = c;
            let mut burst = Vec::new();
            let path = format!("{ROOT}/leak-{}-{n}", self.index);
            sender.encode_into(&Request::Create { path, data: Vec::new(), flags: create_mode::EPHEMERAL }, &mut burst);
            sender.encode_into(&Request::Ping, &mut burst);
            match sender.write_frames(&burst).await {
                Ok(()) => Counters::add(&self.counters.requests, 2),
                Err(e) => self.lost(&e),
            }
            drop((sender, receiver));
        }
    }

    /// Sends [`AbuseSpec::huge_requests_per_client`] requests whose paths fill a packet,
    /// evenly over the run, each waiting for its reply: an exists and a getData that would leave
    /// watches, a create, a setData.
    async fn huge_paths(&self) {
        let spec = &self.spec;
        let budget = spec.huge_requests_per_client.max(1);
        let every = spec.duration / budget;
        let mut client: Option<RawClient> = None;
        for k in 0..budget {
            let due = self.start + every * k + every / 2;
            tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
            let prefix = format!("{ROOT}/huge-{}-{k}-", self.index);
            let fill = spec.max_packet_bytes.saturating_sub(REQUEST_OVERHEAD + prefix.len());
            let path = prefix + &"x".repeat(fill);
            let req = match k % 4 {
                0 => Request::Exists { path, watch: true },
                1 => Request::GetData { path, watch: true },
                2 => Request::Create { path, data: Vec::new(), flags: create_mode::PERSISTENT },
                _ => Request::SetData { path, data: Vec::new() },
            };
            if client.is_none() {
                client = self.connect(None, spec.max_packet_bytes).await;
            }
            let Some(c) = client.as_mut() else { continue };
            Counters::add(&self.counters.requests, 1);
            match c.call(&req).await {
                Ok((err, _)) => {
                    Counters::add(&self.counters.replies, 1);
                    if err != code::OK {
                        Counters::add(&self.counters.error_replies, 1);
                    }
                }
                Err(e) => {
                    self.lost(&e);
                    client = None;
                }
            }
        }
        // The budget is spent: hold the session until the run ends.
        std::future::pending::<()>().await
    }
}

/// The value of `key` in the server's `mntr` answer.
pub async fn mntr_value(port: u16, key: &str) -> Result<i64> {
    let text = tokio::task::spawn_blocking(move || crate::four_letter(port, "mntr")).await??;
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.strip_prefix('\t')))
        .with_context(|| format!("`mntr` has no {key} line: {text:?}"))?
        .trim()
        .parse()
        .with_context(|| format!("`mntr`'s {key} is not a number"))
}

/// Opens a new session from `source`, pings and closes it: the server still takes new clients.
/// Returns how long the handshake took.
pub async fn fresh_session(target: SocketAddr, source: IpAddr) -> Result<Duration> {
    let t0 = Instant::now();
    let opts = ConnectOptions { source: Some(source), ..ConnectOptions::default() };
    let mut c = RawClient::connect(target, &opts).await?;
    let took = t0.elapsed();
    let (err, _) = tokio::time::timeout(Duration::from_secs(10), c.call(&Request::Ping)).await.context("ping")??;
    anyhow::ensure!(err == code::OK, "ping answered with error {err}");
    let (err, _) = tokio::time::timeout(Duration::from_secs(10), c.call(&Request::CloseSession))
        .await
        .context("closeSession")??;
    anyhow::ensure!(err == code::OK, "closeSession answered with error {err}");
    Ok(took)
}
