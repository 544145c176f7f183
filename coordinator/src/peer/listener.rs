//! The listening side: accepts peer connections on the peer port, decides each handshake (see
//! [`super::handshake`]) and hands the requests to the local Raft.
//!
//! ```text
//!  peer ─▶ accept ─▶ handshake (≤ 4 per source) ─▶ (≤ max_connections) reader ─┬─▶ Raft::append_entries ─┐
//!                                                             ├─▶ Raft::vote ───────────┤ (≤ in_flight
//!                                                             └─▶ Raft::install_snapshot┘  per connection)
//!  peer ◀────────────────────────── writer ◀── replies, tagged with the request's id ◀──┘
//! ```
//!
//! A connection takes one of the `max_connections` slots only once its handshake is accepted,
//! so sockets that never send one cannot keep the servers out: until then it is one of at most
//! [`PENDING_PER_SOURCE`] handshakes from its address ([`MAX_PENDING`] in all), and a new one
//! over either bound closes the oldest still waiting, if it has waited a quarter of a second
//! (a real peer sends its handshake within milliseconds of connecting, so the oldest is the
//! idle one; a burst of dials arriving together is let through).
//!
//! Requests on one connection are handled concurrently, up to a bound; when it is reached the
//! reader stops reading, and TCP pushes back on the dialler, whose own bounds then fail its
//! calls. Every connection ends when the serve future's shutdown fires.
//!
//! Beside Raft's own messages a follower sends its clients' writes. Their transactions are
//! queued, in the order they arrive (before the next frame is read), on one proposer shared by
//! every peer connection, so the batches forwarded by all followers while an entry is being
//! made durable share the next entry instead of taking one each (see [`crate::propose`]); the
//! reply names the entry's index, which the follower applies before answering its clients.
//! A follower also sends the sessions it heard from (touched in the session tracker, which
//! only the leader acts on), each with how long ago, and read-index requests for `sync`.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::handshake::{decide, LocalIdentity, Sightings, Verdict};
use super::wire::Forwarded;
use super::wire::{
    read_frame, write_frame, HeardFrom, Hello, HelloReply, PeerMessage, PeerReply, PeerRequest, Refusal,
    MAX_FRAME_BYTES, MAX_HANDSHAKE_BYTES,
};
use crate::propose::{ProposeError, Proposer};
use crate::raft::Raft;
use crate::state::ServerState;
use crate::txn::TxnOutcome;

/// Handshakes waiting from one address at once; a new one closes the oldest.
pub const PENDING_PER_SOURCE: usize = 4;
/// Handshakes waiting at once from all addresses; a new one closes the oldest.
pub const MAX_PENDING: usize = 64;
/// A connection this young is never closed for a newer one from its address: a real peer's
/// handshake may be in our buffer, not read yet, when a burst of dials arrives together.
const PENDING_GRACE: Duration = Duration::from_millis(250);

/// The connections still waiting for their handshake: by serial (so in order of arrival),
/// their source and how to close them.
type Pending = Arc<Mutex<std::collections::BTreeMap<u64, (IpAddr, Instant, AbortHandle)>>>;

/// Takes a connection off [`Pending`] when its handshake has been read, or its task ends.
struct NoLongerPending {
    pending: Pending,
    serial: u64,
}

impl Drop for NoLongerPending {
    fn drop(&mut self) {
        lock(&self.pending).remove(&self.serial);
    }
}

/// Makes room for a new handshake from `source`: closes the oldest waiting from that address
/// past [`PENDING_PER_SOURCE`] (unless it is within [`PENDING_GRACE`]), and the oldest of all
/// past [`MAX_PENDING`].
fn make_room(pending: &Pending, source: IpAddr) {
    let mut pending = lock(pending);
    let from_source: Vec<(u64, Instant)> =
        pending.iter().filter(|(_, (ip, _, _))| *ip == source).map(|(s, (_, at, _))| (*s, *at)).collect();
    if let (true, Some(&(oldest, since))) = (from_source.len() >= PENDING_PER_SOURCE, from_source.first()) {
        if since.elapsed() >= PENDING_GRACE {
            if let Some((ip, _, abort)) = pending.remove(&oldest) {
                tracing::warn!(source = %ip, "closed a peer connection that sent no handshake: more are waiting from its address");
                abort.abort();
            }
        }
    }
    if pending.len() >= MAX_PENDING {
        if let Some((_, (ip, _, abort))) = pending.pop_first() {
            tracing::warn!(source = %ip, "closed a peer connection that sent no handshake: {MAX_PENDING} are waiting");
            abort.abort();
        }
    }
}

/// The limits of a peer listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerOptions {
    /// Peer connections held at once past their handshake; more are refused with
    /// [`Refusal::Busy`].
    pub max_connections: usize,
    /// Requests handled at once on one connection.
    pub in_flight: usize,
    /// How long a dialler has to send its handshake.
    pub handshake_timeout: Duration,
    /// How long a connection must have been silent for another process claiming its server id
    /// to replace it (see [`decide`]).
    pub live_window: Duration,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        ListenerOptions {
            max_connections: 32,
            in_flight: 32,
            handshake_timeout: Duration::from_secs(2),
            live_window: Duration::from_secs(3),
        }
    }
}

/// The accepted connection of one server id.
struct Registered {
    /// Tells this connection from a later one of the same id.
    serial: u64,
    abort: AbortHandle,
}

type Registry = Arc<Mutex<HashMap<u64, Registered>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves peer connections on `listener` until `shutdown` resolves, then closes them all.
/// `servers` are the server ids allowed to connect, with the members of the current Raft
/// membership; `sightings` is shared with this server's
/// [`super::PeerNetwork`].
#[allow(clippy::too_many_arguments)]
pub async fn serve_peers(
    listener: TcpListener,
    raft: Raft,
    state: Arc<Mutex<ServerState>>,
    local: LocalIdentity,
    servers: BTreeSet<u64>,
    sightings: Arc<Sightings>,
    options: ListenerOptions,
    shutdown: impl Future<Output = ()>,
) {
    let servers = Arc::new(servers);
    // Local only: a server that does not lead refuses what is forwarded to it.
    let proposer = Proposer::spawn(raft.clone(), None, None, crate::propose::BatchSlots::default());
    let registry: Registry = Arc::default();
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    let pending: Pending = Arc::default();
    let mut conns = JoinSet::new();
    let mut serial = 0u64;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            biased;
            _ = &mut shutdown => break,
            a = listener.accept() => a,
        };
        while conns.try_join_next().is_some() {}
        let (stream, peer_addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: the next accept may succeed.
                tracing::warn!("accepting a peer connection failed: {e}");
                continue;
            }
        };
        make_room(&pending, peer_addr.ip());
        serial += 1;
        // The configured servers, and every member the ensemble has added since (a voter added
        // at run time must reach the others when it campaigns).
        let servers: Arc<BTreeSet<u64>> = {
            let m = raft.metrics();
            let m = m.borrow();
            let members: Vec<u64> = m.membership_config.membership().nodes().map(|(id, _)| *id).collect();
            if members.iter().all(|id| servers.contains(id)) {
                servers.clone()
            } else {
                Arc::new(servers.iter().copied().chain(members).collect())
            }
        };
        let (raft, state, registry) = (raft.clone(), state.clone(), registry.clone());
        let (sightings, proposer, slots) = (sightings.clone(), proposer.clone(), slots.clone());
        let this = serial;
        let waiting = NoLongerPending { pending: pending.clone(), serial: this };
        // The task's abort handle goes into the registry once its handshake is accepted; the
        // channel hands it over, since the handle exists only after the spawn.
        let (abort_tx, abort_rx) = tokio::sync::oneshot::channel();
        let handle = conns.spawn(async move {
            let Ok(abort) = abort_rx.await else { return };
            let peer =
                PeerConn { local, servers: &servers, registry, sightings, serial: this, options, proposer, slots };
            peer.serve(stream, peer_addr, raft, state, abort, waiting).await;
        });
        lock(&pending).insert(this, (peer_addr.ip(), Instant::now(), handle.clone()));
        let _ = abort_tx.send(handle);
    }
    conns.shutdown().await;
}

/// Removes the connection's registration when its task ends, unless a later one took its place.
struct Deregister {
    registry: Registry,
    id: u64,
    serial: u64,
}

impl Drop for Deregister {
    fn drop(&mut self) {
        let mut reg = lock(&self.registry);
        if reg.get(&self.id).is_some_and(|r| r.serial == self.serial) {
            reg.remove(&self.id);
        }
    }
}

/// What one connection's task knows.
struct PeerConn<'a> {
    local: LocalIdentity,
    servers: &'a BTreeSet<u64>,
    registry: Registry,
    sightings: Arc<Sightings>,
    serial: u64,
    options: ListenerOptions,
    /// Where forwarded writes are queued for Raft.
    proposer: Proposer,
    /// The `max_connections` slots, one taken by each connection past its handshake.
    slots: Arc<Semaphore>,
}

impl PeerConn<'_> {
    async fn serve(
        self,
        stream: TcpStream,
        peer_addr: SocketAddr,
        raft: Raft,
        state: Arc<Mutex<ServerState>>,
        abort: AbortHandle,
        waiting: NoLongerPending,
    ) {
        let PeerConn { local, servers, registry, sightings, serial, options, proposer, slots } = self;
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        let body =
            match tokio::time::timeout(options.handshake_timeout, read_frame(&mut reader, MAX_HANDSHAKE_BYTES)).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => {
                    tracing::debug!(%peer_addr, "peer handshake unreadable: {e}");
                    let _ = write_frame(&mut writer, &HelloReply::Refused(Refusal::NotAPeer).encode()).await;
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer_addr, "no peer handshake within {:?}", options.handshake_timeout);
                    return;
                }
            };
        // Read: no longer one to close for a newer one.
        drop(waiting);
        let mut permit = None;
        let verdict = {
            let mut reg = lock(&registry);
            let now = Instant::now();
            let claimed = Hello::decode(&body).map(|h| h.from).ok();
            let active = claimed.and_then(|id| sightings.active(id, now));
            let mut verdict = decide(&body, &local, servers, active, options.live_window);
            // A server whose data was wiped may not come back under its old id. Checked over a
            // duplicate verdict too: a wiped server restarted at once is the likelier story.
            if matches!(verdict, Verdict::Accept { .. } | Verdict::Refuse(Refusal::DuplicateServer { .. })) {
                if let Ok(hello) = Hello::decode(&body) {
                    if let Err(r) = sightings.check_data_dir(hello.from, hello.incarnation) {
                        verdict = Verdict::Refuse(Refusal::ReplacedDataDir {
                            id: hello.from,
                            known: r.known,
                            presented: r.presented,
                        });
                    }
                }
            }
            if matches!(verdict, Verdict::Accept { .. }) {
                match slots.clone().try_acquire_owned() {
                    Ok(p) => permit = Some(p),
                    Err(_) => verdict = Verdict::Refuse(Refusal::Busy { limit: options.max_connections }),
                }
            }
            if let Verdict::Accept { hello, .. } = &verdict {
                // Checked again and recorded in one step: another process may have been heard
                // for this id since `active` was read (one of our own links may have just
                // reached it), and of two claimants only the first is admitted.
                match sightings.admit(hello.from, hello.instance, now, options.live_window) {
                    Ok(()) => {
                        // One inbound connection per server id: an older one is a stalled
                        // connection its dialler has given up on, or a process that has gone.
                        if let Some(old) = reg.insert(hello.from, Registered { serial, abort }) {
                            old.abort.abort();
                        }
                    }
                    Err(_) => verdict = Verdict::Refuse(Refusal::DuplicateServer { id: hello.from }),
                }
            }
            verdict
        };
        let from = match verdict {
            Verdict::Accept { hello, replaces } => {
                let accepted =
                    HelloReply::Accepted { instance: local.instance, incarnation: local.incarnation }.encode();
                if write_frame(&mut writer, &accepted).await.is_err() {
                    return;
                }
                tracing::debug!(%peer_addr, peer = hello.from, replaces, "peer connection accepted");
                hello.from
            }
            Verdict::Refuse(refusal @ Refusal::ReplacedDataDir { .. }) => {
                tracing::error!(%peer_addr, "refused a peer connection: {refusal}");
                let _ = write_frame(&mut writer, &HelloReply::Refused(refusal).encode()).await;
                return;
            }
            Verdict::Refuse(refusal) => {
                tracing::warn!(%peer_addr, "refused a peer connection: {refusal}");
                let _ = write_frame(&mut writer, &HelloReply::Refused(refusal).encode()).await;
                return;
            }
        };
        let _permit = permit;
        let _deregister = Deregister { registry, id: from, serial };
        let instance = Hello::decode(&body).map(|h| h.instance).unwrap_or_default();

        let in_flight = options.in_flight.max(1);
        let (reply_tx, mut reply_rx) = mpsc::channel::<Vec<u8>>(in_flight);
        let mut writer_task = tokio::spawn(async move {
            while let Some(body) = reply_rx.recv().await {
                if write_frame(&mut writer, &body).await.is_err() {
                    return;
                }
            }
        });
        let slots = Arc::new(Semaphore::new(in_flight));
        let mut requests = JoinSet::new();
        loop {
            // A permit before the read: at the bound, nothing more is read and TCP pushes back.
            let Ok(permit) = slots.clone().acquire_owned().await else { break };
            let body = tokio::select! {
                r = read_frame(&mut reader, MAX_FRAME_BYTES) => r,
                _ = &mut writer_task => break,
            };
            while requests.try_join_next().is_some() {}
            let msg = match body.and_then(|b| PeerMessage::decode(&b)) {
                Ok(m) => m,
                Err(e) => {
                    if e.is_hang_up() {
                        sightings.hung_up(from, instance);
                    }
                    tracing::debug!(%peer_addr, peer = from, "peer connection closed: {e}");
                    break;
                }
            };
            if let PeerMessage::Refused(refusal) = &msg {
                if sightings.refusal_log_due(from, &refusal.to_string(), Instant::now()) {
                    tracing::error!(%peer_addr, peer = from, "server {from} refused this server after its handshake: {refusal}");
                }
                break;
            }
            let leading = matches!(
                msg,
                PeerMessage::Request { body: PeerRequest::AppendEntries(_) | PeerRequest::InstallSnapshot(_), .. }
            );
            if leading {
                sightings.saw_leading(from, instance, Instant::now());
            } else {
                sightings.saw(from, instance, Instant::now());
            }
            let PeerMessage::Request { id, body } = msg else {
                tracing::warn!(%peer_addr, peer = from, "a peer sent a reply on a connection it dialled; closing it");
                break;
            };
            let (raft, state, reply_tx) = (raft.clone(), state.clone(), reply_tx.clone());
            let entered = match body {
                PeerRequest::Forward(batch) => {
                    // A forwarded write is a sign of life of its session, as a report is.
                    {
                        let now = std::time::Instant::now();
                        let mut st = lock(&state);
                        for txn in batch.iter().filter(|t| t.session.0 != 0) {
                            st.tracker.touch(txn.session, now);
                        }
                    }
                    // The batch's own origin: if one of its writes fails, the rest of it still
                    // queued is failed too (the follower closes their connections).
                    let origin = NEXT_FORWARD_ORIGIN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Stamped with the leader's clock, as ZooKeeper's leader stamps every
                    // transaction: a TTL or a container's age is then measured against the
                    // clock the reaper reads, not the clock of whichever server took the write.
                    let stamped = crate::connection::now_ms();
                    let outcomes = batch
                        .into_iter()
                        .map(|mut t| {
                            t.time_ms = stamped;
                            proposer.submit_forwarded(origin, t)
                        })
                        .collect();
                    Entered::Forward(tokio::time::Instant::now(), outcomes)
                }
                other => Entered::Other(other),
            };
            requests.spawn(async move {
                let _permit = permit;
                let reply = match entered {
                    Entered::Forward(started, entered) => {
                        let reply = forwarded(entered).await;
                        tracing::debug!(
                            peer = from,
                            commit_us = started.elapsed().as_micros() as u64,
                            "forwarded batch applied"
                        );
                        reply
                    }
                    Entered::Other(body) => dispatch(&raft, &state, body).await,
                };
                match (PeerMessage::Reply { id, body: reply }).encode() {
                    Ok(b) => {
                        let _ = reply_tx.send(b).await;
                    }
                    Err(e) => tracing::error!("a peer reply could not be encoded: {e}"),
                }
            });
        }
        writer_task.abort();
    }
}

/// The origins the proposer knows forwarded batches by: one per batch, above every connection
/// id of this server.
static NEXT_FORWARD_ORIGIN: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(crate::propose::FORWARDED_ORIGINS);

type ForwardedOutcome = oneshot::Receiver<Result<(u64, TxnOutcome), ProposeError>>;

/// The leader's answer to a forwarded batch, once every write of it is applied: the outcomes,
/// and the index of the last entry holding one of them. A write without an outcome makes the
/// whole batch's fate unknown to the follower.
async fn forwarded(outcomes: Vec<ForwardedOutcome>) -> PeerReply {
    let mut applied_index = 0;
    let mut out = Vec::with_capacity(outcomes.len());
    for rx in outcomes {
        match rx.await {
            Ok(Ok((index, outcome))) => {
                applied_index = applied_index.max(index);
                out.push(outcome);
            }
            Ok(Err(e)) => return PeerReply::Forward(Err(e.to_string())),
            Err(_) => return PeerReply::Forward(Err("the leader stopped with the batch in flight".into())),
        }
    }
    PeerReply::Forward(Ok(Forwarded { applied_index, outcomes: out }))
}

/// A request as the reader took it: a forwarded batch already queued for Raft, or any other.
enum Entered {
    Forward(tokio::time::Instant, Vec<ForwardedOutcome>),
    Other(PeerRequest),
}

/// How long a leader waits for a proof of its leadership before it refuses a liveness report:
/// a few proof rounds. The reporter sends the sessions again with its next report.
const TOUCH_PROOF_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Hands one request to the local Raft.
async fn dispatch(raft: &Raft, state: &Mutex<ServerState>, request: PeerRequest) -> PeerReply {
    match request {
        PeerRequest::AppendEntries(r) => {
            let arrived = std::time::Instant::now();
            let reply = raft.append_entries(r).await;
            // Accepted from a current leader (entries, a heartbeat, or a conflict it will
            // repair): contact, for elections. A stale leader's is not. Whether this server's
            // tree is current is learnt apart (see `crate::staleness`): the commit index an
            // AppendEntries carries may be older than the leader's.
            if matches!(&reply, Ok(resp) if !matches!(resp, openraft::raft::AppendEntriesResponse::HigherVote(_))) {
                let contact = lock(state).leader_contact.clone();
                contact.heard(arrived);
            }
            PeerReply::AppendEntries(reply)
        }
        PeerRequest::Vote(r) => PeerReply::Vote(raft.vote(r).await),
        PeerRequest::InstallSnapshot(r) => PeerReply::InstallSnapshot(raft.install_snapshot(r).await),
        PeerRequest::Touch(sessions) => {
            // Acknowledged only under a quorum's confirmation of this leader in a round that
            // started no more than PROOF_AGE before the report arrived (see `crate::liveness`):
            // a leader cut off from the majority must not keep sessions alive that the
            // majority's leader will expire.
            let received = std::time::Instant::now();
            let (expired, proof) = {
                let mut st = lock(state);
                // Alive from when its server heard it, not from this report's arrival: a report
                // sent again after a broken link must not add the link's outage to the session.
                // A hearing older than this clock can count (before its start) renews nothing;
                // it still says whether the session is alive here.
                let mut alive = |h: &HeardFrom| match received.checked_sub(Duration::from_millis(u64::from(h.ago_ms))) {
                    Some(at) => st.tracker.touch(h.session, at),
                    None => st.tracker.is_live(h.session),
                };
                let expired = sessions.into_iter().filter(|h| !alive(h)).map(|h| h.session).collect();
                (expired, st.quorum_proof.clone())
            };
            let leading = || crate::role::settled_term(&raft.metrics().borrow());
            let since = received.checked_sub(crate::liveness::PROOF_AGE).unwrap_or(received);
            match proof.wait_proven(leading, since, TOUCH_PROOF_WAIT).await {
                Ok(()) => PeerReply::Touch { expired },
                Err(e) => PeerReply::TouchRefused { why: e.to_string() },
            }
        }
        PeerRequest::PreVote { last_log_id } => {
            let leads = raft.metrics().borrow().state == openraft::ServerState::Leader;
            let (contact, log_end) = {
                let st = lock(state);
                (st.leader_contact.clone(), st.log_end.clone())
            };
            let silent = contact.since_contact(std::time::Instant::now());
            // A server without its log open yet cannot say: no.
            let granted = log_end.is_some_and(|l| {
                crate::staleness::pre_vote_grant(leads, silent, crate::staleness::LEASE, &last_log_id, &l.last_log_id())
            });
            PeerReply::PreVote { granted }
        }
        PeerRequest::ReadIndex => {
            // The asker waits for the index to be applied on its own server, not on this one.
            let read_index = lock(state).read_index.clone();
            PeerReply::ReadIndex(match read_index {
                Some(r) => r.at_leader(raft).await.map_err(|e| e.to_string()),
                None => Err("this server has no peers to prove its leadership to".into()),
            })
        }
        // The reader hands forwarded batches to Raft itself (see `Entered`).
        PeerRequest::Forward(_) => PeerReply::Forward(Err("a forwarded batch reached the wrong handler".into())),
    }
}
