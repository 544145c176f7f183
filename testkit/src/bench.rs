//! A pipelined throughput load: N sessions, each keeping K requests in flight, run one
//! operation (or a read/write mix) against a ZooKeeper-wire server for a fixed time, and every
//! reply's latency and arrival instant is recorded.
//!
//! It speaks through the test kit's raw client ([`crate::abuse::client`]) and codec
//! ([`crate::jute`]), written from the protocol rather than from the server under test, so the
//! same bytes go to the bundled coordinator and to Apache ZooKeeper.
//!
//! Replies of one session come in request order (ZooKeeper's per-session FIFO), so each session
//! matches replies to requests with a queue of send instants. A session sends only while fewer
//! than K requests are in flight, so at most K ever are: it fills its window in one write, then
//! takes every reply one read brought and replaces them in the next write.
//!
//! Node layout: [`prepare`] makes `/tp` with a pool of nodes the reads and `setData` use
//! (`/tp/pool/n{i}`); each `create` cell creates `/tp/c{cell}/s{session}-{seq}` and hands the
//! names it created to the `delete` cell that follows, which deletes them in the same order.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::abuse::client::{ConnectOptions, RawClient, RawReceiver, RawSender};
use crate::abuse::wire::{code, create_mode, Packet, Request};

/// The operation a cell runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Create persistent nodes with the data size, each session its own names.
    Create,
    /// setData on random pool nodes.
    SetData,
    /// getData on random pool nodes.
    GetData,
    /// exists on random pool nodes.
    Exists,
    /// Delete the nodes the preceding create cell made, in their creation order.
    Delete,
    /// 90 % getData, 10 % setData on random pool nodes.
    Mix,
    /// sync on random pool nodes: on an ensemble, a leader's proof that it still leads. Not
    /// among [`Op::ALL`], the rows of the targets.
    Sync,
}

impl Op {
    /// Every operation, in the order a run measures them (create before delete, which
    /// deletes what create made).
    pub const ALL: [Op; 6] = [Op::Create, Op::SetData, Op::GetData, Op::Exists, Op::Delete, Op::Mix];

    /// The name the command line and the tables use.
    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::SetData => "setData",
            Op::GetData => "getData",
            Op::Exists => "exists",
            Op::Delete => "delete",
            Op::Mix => "mix90/10",
            Op::Sync => "sync",
        }
    }
}

/// How many sessions run a cell and how many requests each keeps in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Sessions, each on its own connection.
    pub sessions: usize,
    /// Requests each session keeps in flight.
    pub outstanding: usize,
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}", self.sessions, self.outstanding)
    }
}

impl std::str::FromStr for Shape {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('x').ok_or_else(|| format!("{s:?}: write SESSIONSxOUTSTANDING, e.g. 16x16"))?;
        let parse = |v: &str, what: &str| match v.parse::<usize>() {
            Ok(n) if (1..=4096).contains(&n) => Ok(n),
            _ => Err(format!("{s:?}: {what} must be a number from 1 to 4096")),
        };
        Ok(Shape { sessions: parse(a, "sessions")?, outstanding: parse(b, "outstanding requests")? })
    }
}

/// The pool the reads and `setData` pick from, created by [`prepare`].
#[derive(Debug, Clone)]
pub struct Pool {
    paths: Arc<Vec<String>>,
    /// Bytes of data each node gets.
    pub data_bytes: usize,
}

impl Pool {
    /// A pool of nodes that already exist, each with `data_bytes` of data.
    pub fn of(paths: Vec<String>, data_bytes: usize) -> Pool {
        Pool { paths: Arc::new(paths), data_bytes }
    }
}

/// What a cell measured.
#[derive(Debug, Clone)]
pub struct CellReport {
    /// The operation.
    pub op: Op,
    /// The shape.
    pub shape: Shape,
    /// Replies received.
    pub ops: u64,
    /// Replies with an error code other than 0, and requests in flight on a connection the
    /// server closed (their fate unknown).
    pub errors: u64,
    /// Connections the server closed or reset during the cell (each session connected again).
    pub closed: u32,
    /// From the common start to the last reply.
    pub elapsed: Duration,
    /// Every reply's latency, sorted, in microseconds.
    latencies_us: Vec<u32>,
    /// The longest time without any reply (from the start to the first one included).
    pub longest_stall: Duration,
    /// When the longest stall began, after the start.
    pub stall_at: Duration,
    /// The nodes a create cell made, per session in creation order.
    pub created: Vec<Vec<String>>,
}

impl CellReport {
    /// Replies per second.
    pub fn ops_per_sec(&self) -> f64 {
        if self.elapsed.is_zero() {
            0.0
        } else {
            self.ops as f64 / self.elapsed.as_secs_f64()
        }
    }

    /// The latency below which a fraction `q` (0..=1) of the replies came.
    pub fn percentile(&self, q: f64) -> Duration {
        if self.latencies_us.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies_us.len() as f64 * q).ceil() as usize).clamp(1, self.latencies_us.len()) - 1;
        Duration::from_micros(u64::from(self.latencies_us[i]))
    }
}

/// What one session did in a cell.
struct SessionRun {
    latencies_us: Vec<u32>,
    /// Each reply's arrival, microseconds after the start.
    replies_at_us: Vec<u32>,
    errors: u64,
    /// Connections the server closed or reset during the run (the session connected again).
    closed: u32,
    created: Vec<String>,
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// A small deterministic generator (xorshift64*) for picking pool nodes (and, in the failover
/// bench, the moment of a fault): the choice need not be random in any strong sense, only
/// spread and cheap next to a request.
pub struct Picker(u64);

impl Picker {
    /// A generator started from `seed` (made odd: a zero state would stay zero).
    pub fn new(seed: u64) -> Picker {
        Picker(seed | 1)
    }

    /// A number drawn evenly from `0..below` (0 when `below` is 0).
    pub fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % below.max(1) as u64) as usize
    }
}

/// Connects one session with a generous timeout (a throughput load must not lose its session
/// to a slow server).
pub async fn connect(target: SocketAddr) -> Result<RawClient> {
    let opts = ConnectOptions { session_timeout_ms: 30_000, ..ConnectOptions::default() };
    RawClient::connect(target, &opts).await
}

/// Creates `/tp`, `/tp/pool` and `pool_size` pool nodes of `data_bytes` each (pipelined, 64
/// in flight).
pub async fn prepare(target: SocketAddr, pool_size: usize, data_bytes: usize) -> Result<Pool> {
    let mut c = connect(target).await?;
    for path in ["/tp", "/tp/pool"] {
        let (err, _) =
            c.call(&Request::Create { path: path.into(), data: Vec::new(), flags: create_mode::PERSISTENT }).await?;
        if err != code::OK {
            bail!("creating {path}: error {err}");
        }
    }
    let paths: Vec<String> = (0..pool_size).map(|i| format!("/tp/pool/n{i}")).collect();
    let data = vec![b'p'; data_bytes];
    let mut reqs = paths.clone().into_iter().map(move |path| Request::Create {
        path,
        data: data.clone(),
        flags: create_mode::PERSISTENT,
    });
    let run = drive(target, c, 64, None, Instant::now(), move |_| reqs.next()).await?;
    if run.errors > 0 {
        bail!("{} of {pool_size} pool nodes could not be created", run.errors);
    }
    Ok(Pool { paths: Arc::new(paths), data_bytes })
}

/// Creates `count` nodes of `data_bytes` under a new `parent` with `shape` (no deadline: until
/// all are made), returning how long it took. Session `i` connects to `targets[i % len]`, so an
/// ensemble's servers share the sessions as its clients would.
pub async fn fill(
    targets: &[SocketAddr],
    parent: &str,
    count: usize,
    data_bytes: usize,
    shape: Shape,
) -> Result<Duration> {
    let target = first(targets)?;
    let mut c = connect(target).await?;
    let (err, _) =
        c.call(&Request::Create { path: parent.into(), data: Vec::new(), flags: create_mode::PERSISTENT }).await?;
    if err != code::OK {
        bail!("creating {parent}: error {err}");
    }
    close(c).await;
    let started = Instant::now();
    let per = count.div_ceil(shape.sessions);
    let mut tasks = tokio::task::JoinSet::new();
    for s in 0..shape.sessions {
        let target = targets[s % targets.len()];
        let c = connect(target).await?;
        let data = vec![b'f'; data_bytes];
        let parent = parent.to_string();
        let range = (s * per)..((s + 1) * per).min(count);
        let mut names = range.map(move |i| format!("{parent}/n{i}"));
        tasks.spawn(drive(target, c, shape.outstanding, None, started, move |_| {
            names.next().map(|path| Request::Create { path, data: data.clone(), flags: create_mode::PERSISTENT })
        }));
    }
    let mut errors = 0;
    while let Some(run) = tasks.join_next().await {
        errors += run??.errors;
    }
    if errors > 0 {
        bail!("{errors} of {count} nodes under {parent} could not be created");
    }
    Ok(started.elapsed())
}

/// Runs one cell: `shape.sessions` sessions send `op` for `duration`, then wait for their last
/// replies. Session `i` connects to `targets[i % len]`. `cell` numbers the create cell's parent
/// node; `to_delete` is what the preceding create cell made (a delete cell needs it).
pub async fn run_cell(
    targets: &[SocketAddr],
    op: Op,
    shape: Shape,
    duration: Duration,
    pool: &Pool,
    cell: usize,
    to_delete: Option<Vec<Vec<String>>>,
) -> Result<CellReport> {
    let parent = format!("/tp/c{cell}");
    if op == Op::Create {
        let mut c = connect(first(targets)?).await?;
        let (err, _) =
            c.call(&Request::Create { path: parent.clone(), data: Vec::new(), flags: create_mode::PERSISTENT }).await?;
        if err != code::OK {
            bail!("creating {parent}: error {err}");
        }
        close(c).await;
    }
    let mut to_delete = match (op, to_delete) {
        (Op::Delete, Some(lists)) => lists.into_iter().map(Some).collect::<Vec<_>>(),
        (Op::Delete, None) => bail!("a delete cell deletes what the create cell before it made: run create too"),
        (_, _) => Vec::new(),
    };
    to_delete.resize(shape.sessions, None);
    let mut clients = Vec::with_capacity(shape.sessions);
    for s in 0..shape.sessions {
        clients.push(connect(targets[s % targets.len()]).await.context("connecting a session for the cell")?);
    }
    if op == Op::Create && targets.len() > 1 {
        // The parent was made through the first server: every other one must have it first.
        for &t in &targets[1..] {
            await_node(t, &parent, Duration::from_secs(30)).await?;
        }
    }
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for (s, (client, deletes)) in clients.into_iter().zip(to_delete).enumerate() {
        let paths = pool.paths.clone();
        let data = vec![b'd'; pool.data_bytes];
        let parent = parent.clone();
        let mut picker = Picker(0x9e37_79b9_7f4a_7c15 ^ ((s as u64 + 1) << 17) ^ (cell as u64));
        let mut deletes = deletes.unwrap_or_default().into_iter();
        let next = move |seq: u64| -> Option<Request> {
            let pick = |p: &mut Picker| paths[p.next(paths.len())].clone();
            Some(match op {
                Op::Create => Request::Create {
                    path: format!("{parent}/s{s}-{seq}"),
                    data: data.clone(),
                    flags: create_mode::PERSISTENT,
                },
                Op::SetData => Request::SetData { path: pick(&mut picker), data: data.clone() },
                Op::GetData => Request::GetData { path: pick(&mut picker), watch: false },
                Op::Exists => Request::Exists { path: pick(&mut picker), watch: false },
                Op::Delete => Request::Delete { path: deletes.next()? },
                Op::Sync => Request::Sync { path: pick(&mut picker) },
                Op::Mix => {
                    if picker.next(10) == 0 {
                        Request::SetData { path: pick(&mut picker), data: data.clone() }
                    } else {
                        Request::GetData { path: pick(&mut picker), watch: false }
                    }
                }
            })
        };
        tasks.spawn(drive(targets[s % targets.len()], client, shape.outstanding, Some(deadline), start, next));
    }
    // A server that stops answering must not hang the run: the drain after the deadline gets
    // at most this long.
    let limit = duration + Duration::from_secs(60);
    let mut runs = Vec::new();
    let joined = tokio::time::timeout(limit, async {
        while let Some(run) = tasks.join_next().await {
            runs.push(run??);
        }
        anyhow::Ok(())
    })
    .await;
    match joined {
        Ok(r) => r?,
        Err(_) => bail!("the cell's sessions were not answered within {limit:?}"),
    }
    Ok(report(op, shape, runs))
}

fn report(op: Op, shape: Shape, runs: Vec<SessionRun>) -> CellReport {
    let mut latencies_us = Vec::new();
    let mut at = Vec::new();
    let mut errors = 0;
    let mut closed = 0;
    let mut created = Vec::new();
    for r in runs {
        closed += r.closed;
        latencies_us.extend(r.latencies_us);
        at.extend(r.replies_at_us);
        errors += r.errors;
        created.push(r.created);
    }
    latencies_us.sort_unstable();
    at.sort_unstable();
    let (mut longest, mut stall_at, mut prev) = (0u32, 0u32, 0u32);
    for &t in &at {
        if t - prev > longest {
            longest = t - prev;
            stall_at = prev;
        }
        prev = t;
    }
    CellReport {
        op,
        shape,
        ops: at.len() as u64,
        errors,
        closed,
        elapsed: Duration::from_micros(u64::from(prev)),
        latencies_us,
        longest_stall: Duration::from_micros(u64::from(longest)),
        stall_at: Duration::from_micros(u64::from(stall_at)),
        created,
    }
}

/// Sends what `next(seq)` gives (seq counting from 0) with `window` in flight until `next`
/// runs out or `deadline` passes, then takes the outstanding replies and closes the session.
///
/// With a deadline (a timed cell), a connection the server closes or resets is part of what is
/// measured, not the end of the run: the requests in flight on it count as errors (their fate
/// is unknown), and the session connects again to `target` and goes on until the deadline, as
/// a real client would. Without one (preparing nodes that must all exist), it fails the run.
async fn drive(
    target: SocketAddr,
    client: RawClient,
    window: usize,
    deadline: Option<Instant>,
    start: Instant,
    mut next: impl FnMut(u64) -> Option<Request> + Send + 'static,
) -> Result<SessionRun> {
    let mut run =
        SessionRun { latencies_us: Vec::new(), replies_at_us: Vec::new(), errors: 0, closed: 0, created: Vec::new() };
    let mut seq = 0u64;
    let mut client = client;
    loop {
        match drive_connection(client, window, deadline, start, &mut seq, &mut next, &mut run).await? {
            Ended::Done => return Ok(run),
            Ended::Closed { in_flight, why } => {
                let Some(deadline) = deadline else {
                    bail!("the server closed the connection with {in_flight} requests in flight: {why}");
                };
                run.errors += in_flight;
                run.closed += 1;
                client = loop {
                    if Instant::now() >= deadline {
                        return Ok(run);
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    match tokio::time::timeout(left, connect(target)).await {
                        Ok(Ok(c)) => break c,
                        // Refused or unanswered: try again shortly, while the cell lasts.
                        Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(10).min(left)).await,
                        Err(_) => return Ok(run),
                    }
                };
            }
        }
    }
}

/// How one connection of a session ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Every request was answered and the session closed.
    Done,
    /// The server closed or reset the connection with `in_flight` requests unanswered.
    Closed { in_flight: u64, why: String },
}

/// One connection's part of [`drive`]: sends and receives until `next` runs out, the deadline
/// passes or the server closes the connection.
///
/// One loop does both, so that the client costs as little CPU per reply as it can (on a
/// machine it shares with the server under test, every microsecond the client spends is one
/// the server does not get): it fills the window and sends every new request in one write,
/// then waits for one reply and takes every further reply the same read brought, each of which
/// frees a place for the next write. At most `window` requests are ever in flight.
async fn drive_connection(
    client: RawClient,
    window: usize,
    deadline: Option<Instant>,
    start: Instant,
    seq: &mut u64,
    next: &mut (impl FnMut(u64) -> Option<Request> + Send),
    run: &mut SessionRun,
) -> Result<Ended> {
    let RawClient { mut sender, mut receiver, .. } = client;
    // Send instants and, for a create, paths of the requests in flight, in request order
    // (replies come in request order).
    let mut in_flight: VecDeque<(Instant, Option<String>)> = VecDeque::with_capacity(window);
    let mut out = Vec::new();
    let mut sending = true;
    loop {
        while sending && in_flight.len() < window {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                sending = false;
                break;
            }
            // A request taken from `next` is always sent (a delete cell's list is not skipped
            // over when the connection closes): it counts as in flight from here.
            let Some(req) = next(*seq) else {
                sending = false;
                break;
            };
            *seq += 1;
            let created = match &req {
                Request::Create { path, .. } => Some(path.clone()),
                _ => None,
            };
            sender.encode_into(&req, &mut out);
            in_flight.push_back((Instant::now(), created));
        }
        if !out.is_empty() {
            if let Err(e) = sender.write_frames(&out).await {
                return Ok(Ended::Closed { in_flight: in_flight.len() as u64, why: e.to_string() });
            }
            out.clear();
        }
        if in_flight.is_empty() {
            break;
        }
        // One reply, waited for; then every reply already read with it.
        let mut packet = receiver.next().await;
        loop {
            let err = match packet {
                Ok(Some(Packet::Notification { .. })) => None,
                Ok(Some(Packet::Reply { err, .. })) => Some(err),
                Ok(None) => {
                    return Ok(Ended::Closed {
                        in_flight: in_flight.len() as u64,
                        why: "closed by the server".to_string(),
                    })
                }
                Err(e) => return Ok(Ended::Closed { in_flight: in_flight.len() as u64, why: e.to_string() }),
            };
            if let Some(err) = err {
                let Some((sent, created)) = in_flight.pop_front() else {
                    bail!("the server sent a reply with no request in flight");
                };
                let now = Instant::now();
                run.latencies_us.push(micros(now - sent));
                run.replies_at_us.push(micros(now - start));
                if err == code::OK {
                    if let Some(path) = created {
                        run.created.push(path);
                    }
                } else {
                    run.errors += 1;
                }
            }
            packet = match receiver.next_buffered() {
                Ok(None) => break,
                more => more,
            };
        }
    }
    close_halves(&mut sender, &mut receiver).await;
    Ok(Ended::Done)
}

/// Closes a session, waiting a bounded time for the server's answer.
async fn close(mut c: RawClient) {
    close_halves(&mut c.sender, &mut c.receiver).await;
}

async fn close_halves(sender: &mut RawSender, receiver: &mut RawReceiver) {
    let closing = async {
        sender.send(&Request::CloseSession).await?;
        // Its reply (or the server closing the connection) ends the session.
        while let Some(packet) = receiver.next().await? {
            if matches!(packet, Packet::Reply { .. }) {
                break;
            }
        }
        anyhow::Ok(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), closing).await;
}

/// The first of `targets`; an empty list is a caller's mistake, named.
fn first(targets: &[SocketAddr]) -> Result<SocketAddr> {
    targets.first().copied().context("no server to send the load to")
}

/// Waits until `target` answers that `path` exists (a server of an ensemble catching up with a
/// write made through another one), at most `limit`.
pub async fn await_node(target: SocketAddr, path: &str, limit: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let (_, there) = first_reply(target, path, started, limit).await?;
        if there {
            return Ok(());
        }
        if started.elapsed() > limit {
            bail!("{target} did not have {path} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Times a server's start: calls `exists(path)` until it succeeds (a reply, whatever its
/// result), from `spawned` on, at most `limit`; returns the time and whether the node exists.
pub async fn first_reply(
    target: SocketAddr,
    path: &str,
    spawned: Instant,
    limit: Duration,
) -> Result<(Duration, bool)> {
    loop {
        let attempt = async {
            let opts = ConnectOptions {
                session_timeout_ms: 30_000,
                handshake_timeout: Duration::from_secs(2),
                ..ConnectOptions::default()
            };
            let mut c = RawClient::connect(target, &opts).await?;
            let (err, _) = c.call(&Request::Exists { path: path.into(), watch: false }).await?;
            let at = spawned.elapsed();
            close(c).await;
            anyhow::Ok((at, err == code::OK))
        };
        if let Ok(Ok(done)) = tokio::time::timeout(Duration::from_secs(3), attempt).await {
            return Ok(done);
        }
        if spawned.elapsed() > limit {
            bail!("no reply from {target} within {limit:?} of the start");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_refuse_nonsense() {
        assert_eq!("16x4".parse::<Shape>(), Ok(Shape { sessions: 16, outstanding: 4 }));
        assert!("16".parse::<Shape>().unwrap_err().contains("SESSIONSxOUTSTANDING"));
        assert!("0x1".parse::<Shape>().unwrap_err().contains("sessions"));
        assert!("1xz".parse::<Shape>().unwrap_err().contains("outstanding"));
    }

    #[test]
    fn report_finds_the_longest_stall_and_percentiles() {
        let run = SessionRun {
            latencies_us: vec![300, 100, 200, 400],
            replies_at_us: vec![1_000, 2_000, 52_000, 53_000],
            errors: 1,
            closed: 0,
            created: vec!["/a".into()],
        };
        let r = report(Op::Create, Shape { sessions: 1, outstanding: 1 }, vec![run]);
        assert_eq!(r.ops, 4);
        assert_eq!(r.errors, 1);
        assert_eq!(r.longest_stall, Duration::from_millis(50));
        assert_eq!(r.stall_at, Duration::from_millis(2));
        assert_eq!(r.elapsed, Duration::from_millis(53));
        assert_eq!(r.percentile(0.5), Duration::from_micros(200));
        assert_eq!(r.percentile(0.99), Duration::from_micros(400));
        assert_eq!(r.created, vec![vec!["/a".to_string()]]);
    }

    /// A server that answers every request with OK and an empty body, and closes the first
    /// connection it accepts after `close_after` replies.
    async fn closes_first_connection(close_after: usize) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for conn in 0u32.. {
                let Ok((mut sock, _)) = listener.accept().await else { return };
                tokio::spawn(async move {
                    let read_frame = async |sock: &mut tokio::net::TcpStream| {
                        let len = sock.read_i32().await.ok()?;
                        let mut payload = vec![0; usize::try_from(len).ok()?];
                        sock.read_exact(&mut payload).await.ok()?;
                        Some(payload)
                    };
                    read_frame(&mut sock).await?;
                    let granted =
                        crate::jute::Jute::new().int(0).int(30_000).long(i64::from(conn) + 1).buffer(Some(&[0; 16]));
                    sock.write_all(&crate::jute::frame(&granted.into_vec())).await.ok()?;
                    for replied in 0.. {
                        if conn == 0 && replied == close_after {
                            return None;
                        }
                        let req = read_frame(&mut sock).await?;
                        let xid = i32::from_be_bytes(req.get(..4)?.try_into().ok()?);
                        let reply = crate::jute::Jute::new().int(xid).long(1).int(0).into_vec();
                        sock.write_all(&crate::jute::frame(&reply)).await.ok()?;
                    }
                    Some(())
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_connection_closed_by_the_server_counts_its_requests_in_flight_and_the_session_goes_on() {
        let addr = closes_first_connection(20).await;
        let pool = Pool::of(vec!["/tp/pool/n0".into()], 4);
        let cell = run_cell(
            &[addr],
            Op::GetData,
            Shape { sessions: 1, outstanding: 4 },
            Duration::from_millis(300),
            &pool,
            0,
            None,
        )
        .await
        .expect("the cell goes on after the server closes a connection");
        assert_eq!(cell.closed, 1, "one connection was closed by the server");
        // Up to 4 were in flight when it closed (how many the sender had written by then).
        assert!(
            (1..=4).contains(&cell.errors),
            "the requests in flight on the closed connection are errors: {}",
            cell.errors
        );
        assert!(cell.ops > 20, "the session connected again and went on: {} replies", cell.ops);
    }

    /// A server that answers in bursts: it takes requests until none has come for 100 ms, then
    /// answers all it holds. What it held at most on one connection is what the client had in
    /// flight at most.
    async fn holds_requests_until_quiet(most_held: Arc<std::sync::atomic::AtomicUsize>) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for conn in 1i64.. {
                let Ok((sock, _)) = listener.accept().await else { return };
                tokio::spawn(serve_holding(sock, conn, most_held.clone()));
            }
        });
        addr
    }

    async fn serve_holding(
        sock: tokio::net::TcpStream,
        session: i64,
        most_held: Arc<std::sync::atomic::AtomicUsize>,
    ) -> Option<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
        async fn read_frame(sock: &mut BufReader<tokio::net::TcpStream>) -> Option<Vec<u8>> {
            let len = sock.read_i32().await.ok()?;
            let mut payload = vec![0; usize::try_from(len).ok()?];
            sock.read_exact(&mut payload).await.ok()?;
            Some(payload)
        }
        let mut sock = BufReader::new(sock);
        read_frame(&mut sock).await?;
        let granted = crate::jute::Jute::new().int(0).int(30_000).long(session).buffer(Some(&[0; 16]));
        sock.write_all(&crate::jute::frame(&granted.into_vec())).await.ok()?;
        loop {
            let mut held = vec![read_frame(&mut sock).await?];
            while let Ok(next) = tokio::time::timeout(Duration::from_millis(100), read_frame(&mut sock)).await {
                held.push(next?);
            }
            most_held.fetch_max(held.len(), std::sync::atomic::Ordering::SeqCst);
            for req in held {
                let xid = i32::from_be_bytes(req.get(..4)?.try_into().ok()?);
                let reply = crate::jute::Jute::new().int(xid).long(1).int(0).into_vec();
                sock.write_all(&crate::jute::frame(&reply)).await.ok()?;
            }
        }
    }

    #[tokio::test]
    async fn a_session_never_has_more_requests_in_flight_than_its_shape_says() {
        for outstanding in [1, 4] {
            let most_held = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let addr = holds_requests_until_quiet(most_held.clone()).await;
            let pool = Pool::of(vec!["/tp/pool/n0".into()], 4);
            let shape = Shape { sessions: 1, outstanding };
            // About ten bursts: the window is filled in at least one however the client is
            // scheduled, and never overfilled.
            run_cell(&[addr], Op::GetData, shape, Duration::from_secs(1), &pool, 0, None).await.expect("the cell runs");
            assert_eq!(
                most_held.load(std::sync::atomic::Ordering::SeqCst),
                outstanding,
                "the server held this many requests of one session at once, for {outstanding} in flight"
            );
        }
    }

    #[tokio::test]
    async fn preparing_nodes_fails_when_the_server_closes_the_connection() {
        let addr = closes_first_connection(3).await;
        let err = prepare(addr, 10, 4).await.expect_err("a closed connection must fail the preparation");
        assert!(err.to_string().contains("closed the connection"), "{err:#}");
    }
}
