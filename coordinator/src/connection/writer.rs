//! The reply writer: one reply per slot, in request order, with the connection's notifications
//! placed where ZooKeeper places them.
//!
//! The order rule (see [`crate::outbox`]): the notifications queued when a reply's state was
//! read go out before the reply, later ones after it. For a read that cut is taken under the
//! state lock, in the same critical section that executes the read; for a write it is the
//! write's own zxid (every notification of a change up to and including the write precedes its
//! reply). Between replies, notifications go out as they come, and so they do while a sync
//! waits for its barrier (its cut is taken once the barrier is passed). None of them can be of
//! a later write of the same session: the reader proposes that only once every earlier slot
//! but a write's has its cut ([`super::Conn::cuts_done`]). While a write waits
//! for its outcome they wait too: which of them follow the write is known only with its zxid.
//! They are held to a larger bound meanwhile ([`crate::outbox::PENDING_REPLY_FACTOR`]), not
//! taken for a client that does not read.
//!
//! Replies are buffered while more are ready and sent when none is: before the writer waits
//! for a request's outcome (a write's commit, a sync's barrier, the leader's word on the
//! session), it sends what it holds, so a pipelining client's applied writes are answered
//! while its next batch is still on its way to the disk.
//!
//! A connection that ends on an error (a write whose fate is unknown, a failed sync) still
//! sends the replies already written, within [`FLUSH_ON_ERROR`]: they were decided, and the
//! reply to an applied write must not turn into a ConnectionLoss because a later one failed.

use std::future::{poll_fn, Future};
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tracing::warn;

use super::reads::{self, Executed, ReadCtx, Refusal};
use super::{now_ms, Conn, Queued, Slot};
use crate::proto::{op, ErrorCode};
use crate::request::{encode_reply, Reply};
use crate::state::Latency;
use crate::txn::{OpResult, TxnOutcome, TxnReply};

/// Bytes of a reply header (xid, zxid, err).
const REPLY_HEADER_BYTES: usize = 16;

/// How long a connection ending on an error may take to send the replies already written
/// before it closes: short, as its client may not be reading.
const FLUSH_ON_ERROR: Duration = Duration::from_secs(1);

/// Writes replies until a `Close` slot, the end of the slots (the reader stopped), or an error.
/// Every await here is dropped with the connection.
pub(super) async fn run(
    conn: &Conn,
    mut wr: BufWriter<OwnedWriteHalf>,
    mut slots: mpsc::Receiver<Queued>,
) -> Result<(), String> {
    let result = pump(conn, &mut wr, &mut slots).await;
    let close = async {
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
    };
    match result {
        Ok(()) => close.await,
        // A request's failure comes between frames, so what is buffered is whole replies and
        // notifications, each already decided; after a socket's failure the flush fails too.
        Err(_) => {
            let _ = tokio::time::timeout(FLUSH_ON_ERROR, close).await;
        }
    }
    result
}

/// Replies written whose statistics are not yet in the shared state: under load the writer
/// takes the server's lock once per burst of replies rather than once per reply.
#[derive(Default)]
struct Unrecorded {
    /// Frames (replies and notifications) written.
    frames: u64,
    /// Frames written with the replies (each reply and the notifications owed before it).
    reply_frames: u64,
    /// Replies written.
    replies: u64,
    latency: Latency,
    /// The last reply's operation, zxid and latency.
    last: Option<(&'static str, i64, u64)>,
}

/// Replies recorded at most this many at a time, so that `cons` and `mntr` lag a busy
/// connection by no more than a burst.
const RECORD_EVERY: u64 = 64;

async fn pump(
    conn: &Conn,
    wr: &mut BufWriter<OwnedWriteHalf>,
    slots: &mut mpsc::Receiver<Queued>,
) -> Result<(), String> {
    let mut out = Out { wr, pending: Unrecorded::default() };
    let mut warned = [false; Refusal::KINDS];
    loop {
        tokio::select! {
            // A slot first: it takes the notifications owed before its reply itself.
            biased;
            next = slots.recv() => {
                let Some(Queued { at, op, slot, _budget: budget }) = next else {
                    record(conn, &mut out.pending);
                    return Ok(());
                };
                let Some((frames, reply_zxid)) = resolve(conn, slot, &mut warned, &mut out).await? else {
                    record(conn, &mut out.pending);
                    return Ok(());
                };
                // No reply tells the client its session was alive before the leader knows it.
                // The reply to closeSession promises nothing of the kind, and no word would come:
                // once the close is applied, the leader no longer holds the session.
                if op != super::reader::op_name(crate::proto::op::CLOSE_SESSION) {
                    out.wait(conn, conn.shared.liveness_covered(conn.session, at)).await??;
                }
                for f in &frames {
                    out.wr.write_all(f).await.map_err(|e| e.to_string())?;
                }
                let ms = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
                let pending = &mut out.pending;
                pending.frames = pending.frames.saturating_add(frames.len() as u64);
                pending.reply_frames = pending.reply_frames.saturating_add(frames.len() as u64);
                pending.replies += 1;
                pending.latency.record(ms);
                pending.last = Some((op, reply_zxid, ms));
                // The request is answered: its bytes no longer count against the budget.
                drop(budget);
            }
            _ = conn.outbox.wait_queued() => {
                let frames = conn.outbox.take(None);
                for f in &frames {
                    out.wr.write_all(f).await.map_err(|e| e.to_string())?;
                }
                out.pending.frames = out.pending.frames.saturating_add(frames.len() as u64);
            }
        }
        if slots.is_empty() && conn.outbox.queued_bytes() == 0 {
            out.flush(conn).await?;
        } else if out.pending.replies >= RECORD_EVERY {
            record(conn, &mut out.pending);
        }
    }
}

/// The socket's buffered writer and the statistics of what was written to it.
struct Out<'a> {
    wr: &'a mut BufWriter<OwnedWriteHalf>,
    pending: Unrecorded,
}

impl Out<'_> {
    /// Sends what is buffered, its statistics recorded first: a client that has its replies
    /// finds them counted.
    async fn flush(&mut self, conn: &Conn) -> Result<(), String> {
        record(conn, &mut self.pending);
        self.wr.flush().await.map_err(|e| e.to_string())
    }

    /// Awaits `fut`, first sending what is buffered if it is not ready at once: the replies
    /// already written (to the writes of an earlier batch, say) never wait for a later
    /// request's outcome, which may wait for a disk, a leader or a quorum. The notifications
    /// that come meanwhile wait in the outbox, held to its larger bound.
    async fn wait<F: Future>(&mut self, conn: &Conn, fut: F) -> Result<F::Output, String> {
        let mut fut = std::pin::pin!(fut);
        match poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
            Poll::Ready(v) => Ok(v),
            Poll::Pending => {
                if !self.wr.buffer().is_empty() {
                    self.flush(conn).await?;
                }
                // Marked once the flush is done: while it blocks, the client is not reading.
                let _pending = conn.outbox.reply_pending();
                Ok(fut.await)
            }
        }
    }

    /// As [`Out::wait`], sending the notifications that come meanwhile: for a sync, whose
    /// reply is cut only once its barrier is passed, so that whatever goes out before then
    /// precedes it, as it must. A follower catching up may apply many changes before the
    /// barrier is passed.
    async fn wait_sending<F: Future>(&mut self, conn: &Conn, fut: F) -> Result<F::Output, String> {
        let mut fut = std::pin::pin!(fut);
        loop {
            if let Poll::Ready(v) = poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
                return Ok(v);
            }
            if !self.wr.buffer().is_empty() {
                self.flush(conn).await?;
            }
            let frames = {
                // A burst applied under one hold of the state lock arrives at once, before the
                // writer can send any of it: it is held to the larger bound.
                let _pending = conn.outbox.reply_pending();
                tokio::select! {
                    biased;
                    v = &mut fut => return Ok(v),
                    () = conn.outbox.wait_queued() => conn.outbox.take(None),
                }
            };
            for f in &frames {
                self.wr.write_all(f).await.map_err(|e| e.to_string())?;
            }
            self.pending.frames = self.pending.frames.saturating_add(frames.len() as u64);
        }
    }
}

/// Turns a slot into the frames to send (notifications first, then the reply) and the reply's
/// zxid; `None` for a `Close` slot.
async fn resolve(
    conn: &Conn,
    slot: Slot,
    warned: &mut [bool; Refusal::KINDS],
    out: &mut Out<'_>,
) -> Result<Option<(Vec<Vec<u8>>, i64)>, String> {
    let max_body = conn.shared.config.max_packet_bytes.saturating_sub(REPLY_HEADER_BYTES);
    let applied = matches!(slot, Slot::Write { .. });
    let (mut frames, xid, zxid, result) = match slot {
        Slot::Close => return Ok(None),
        Slot::Read { xid, req, auth } => {
            let mut cx = ReadCtx {
                conn: conn.id,
                session: conn.session,
                auth: &auth,
                max_body,
                max_watches: conn.shared.config.max_watches_per_connection,
                max_path_bytes: conn.shared.config.max_path_bytes,
                max_notification_bytes: conn.shared.config.max_queued_outbound_bytes,
                refused: None,
            };
            let (frames, zxid, executed) = {
                let mut st = conn.shared.lock();
                // The cut: everything queued so far describes changes this read sees.
                let mut frames = conn.outbox.take(None);
                let executed = reads::execute(&mut st, &mut cx, req, &mut frames);
                (frames, st.tree.last_zxid(), executed)
            };
            // The session's next write may now be proposed.
            conn.cuts_done.send_modify(|n| *n += 1);
            if let Some(refusal) = cx.refused {
                log_refusal(conn, xid, refusal, warned);
                if refusal.closes() {
                    return Err(refusal.to_string());
                }
            }
            let result = match executed {
                Executed::Answered(result) => result,
                // Counted on the copy of the tree taken at the cut, off the runtime's threads:
                // the nodes below one node may be most of a large tree.
                Executed::Count(number) => match tokio::task::spawn_blocking(move || number.count()).await {
                    Ok(n) => Ok(Reply::Int(n)),
                    Err(e) => return Err(format!("counting the nodes below a node failed: {e}")),
                },
            };
            (frames, xid, zxid, result)
        }
        Slot::Write { xid, rx } => {
            let outcome = match out.wait(conn, rx).await? {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(e)) => return Err(format!("write not accepted: {e}")),
                Err(_) => return Err("replication stopped before the write was applied".into()),
            };
            let frames = conn.outbox.take(Some(outcome.zxid));
            let zxid = outcome.zxid;
            (frames, xid, zxid, write_result(outcome))
        }
        Slot::Sync { xid, path, mut barrier } => {
            // A sync waits until this server has applied everything committed before it.
            match out.wait_sending(conn, &mut barrier.0).await? {
                Ok(done) => done.map_err(|e| format!("sync failed: {e}"))?,
                Err(e) => return Err(format!("sync failed: its barrier ended without an answer ({e})")),
            }
            let (frames, zxid) = {
                let st = conn.shared.lock();
                (conn.outbox.take(None), st.tree.last_zxid())
            };
            // The session's writes after the sync are held until now: none is in this cut.
            conn.cuts_done.send_modify(|n| *n += 1);
            (frames, xid, zxid, Ok(Reply::Path(path)))
        }
        Slot::Answer { xid, zxid, result } => {
            let (frames, zxid) = {
                let st = conn.shared.lock();
                (conn.outbox.take(None), zxid.unwrap_or_else(|| st.tree.last_zxid()))
            };
            conn.cuts_done.send_modify(|n| *n += 1);
            (frames, xid, zxid, result)
        }
    };
    let mut reply = encode_reply(xid, zxid, &result);
    // Every reply is bounded where it is built (a multi's before it is proposed); this is the
    // last guard for one that was not.
    let bytes = reply.len() - 4;
    if bytes > conn.shared.config.max_packet_bytes {
        if applied {
            // The write is applied: an error would tell the client it was not, and it might
            // apply it again. Closing tells it what is known: the outcome is unknown.
            warn!(
                conn = conn.id,
                peer = %conn.peer,
                xid,
                %zxid,
                bytes,
                limit = conn.shared.config.max_packet_bytes,
                "closing the connection: the reply to an applied write would pass max_packet_bytes \
                 (its client hears ConnectionLoss, outcome unknown)"
            );
            return Err(format!(
                "the reply to the write applied at {zxid} would pass max_packet_bytes ({bytes} bytes)"
            ));
        }
        log_refusal(conn, xid, Refusal::ReplyTooLarge { at_least: bytes }, warned);
        reply = encode_reply(xid, zxid, &Err(ErrorCode::BadArguments));
    }
    frames.push(reply);
    Ok(Some((frames, zxid.0)))
}

/// Logs a request refused by a limit, naming the limit: the first refusal of each kind on a
/// connection at warn, later ones at debug, so a hostile client cannot flood the log. One that
/// closes the connection is logged at warn: it happens once.
fn log_refusal(conn: &Conn, xid: i32, refusal: Refusal, warned: &mut [bool; Refusal::KINDS]) {
    let first = !std::mem::replace(&mut warned[refusal.kind()], true);
    let config = &conn.shared.config;
    match refusal {
        Refusal::ReplyTooLarge { at_least } if first => warn!(
            conn = conn.id,
            peer = %conn.peer,
            xid,
            at_least,
            limit = config.max_packet_bytes,
            "refusing a read whose reply would pass max_packet_bytes (answered BadArguments)"
        ),
        Refusal::TooManyWatches if first => warn!(
            conn = conn.id,
            peer = %conn.peer,
            xid,
            limit = config.max_watches_per_connection,
            "refusing a read that would pass max_watches_per_connection (answered QuotaExceeded)"
        ),
        Refusal::WatchesLeftOver { left_over, too_long } if first => warn!(
            conn = conn.id,
            peer = %conn.peer,
            left_over,
            too_long,
            limit = config.max_watches_per_connection,
            max_path_bytes = config.max_path_bytes,
            "SetWatches left one-shot watches unregistered (past max_watches_per_connection, or on paths longer \
             than max_path_bytes): each was sent an event, so that its client reads again and hears \
             QuotaExceeded or BadArguments when it sets it anew"
        ),
        Refusal::PersistentWatchPathTooLong { len } => warn!(
            conn = conn.id,
            peer = %conn.peer,
            len,
            limit = config.max_path_bytes,
            "closing the connection: its SetWatches names a persistent watch on a path longer than \
             max_path_bytes, and no event could tell the client it was left out"
        ),
        Refusal::PersistentWatchesOverLimit { wanted } => warn!(
            conn = conn.id,
            peer = %conn.peer,
            wanted,
            limit = config.max_watches_per_connection,
            "closing the connection: its SetWatches holds more persistent watches than \
             max_watches_per_connection leaves room for, and no event could tell the client which were left out"
        ),
        Refusal::TooManyNotifications { at_least } => warn!(
            conn = conn.id,
            peer = %conn.peer,
            at_least,
            limit = config.max_queued_outbound_bytes,
            "closing the connection: its SetWatches would fire more than four times max_queued_outbound_bytes \
             of notifications at once"
        ),
        _ => tracing::debug!(conn = conn.id, xid, ?refusal, "read refused by a limit"),
    }
}

/// The reply to a write, from its outcome.
fn write_result(outcome: TxnOutcome) -> Result<Reply, ErrorCode> {
    match outcome.result {
        Err(code) => Err(code),
        Ok(TxnReply::Op(r)) => match r {
            OpResult::Created { opcode, path, stat, .. } => {
                Ok(if opcode == op::CREATE { Reply::Create(path) } else { Reply::Create2(path, stat) })
            }
            OpResult::DataSet { stat } | OpResult::AclSet { stat } => Ok(Reply::Stat(stat)),
            OpResult::Deleted | OpResult::Checked => Ok(Reply::Empty),
            // Only multis report per-op errors; a single op's refusal is the outcome's error.
            OpResult::Error(_) => Err(ErrorCode::SystemError),
        },
        Ok(TxnReply::Multi(results)) => Ok(Reply::Multi(results)),
        Ok(TxnReply::SessionClosed) | Ok(TxnReply::Nothing) | Ok(TxnReply::SessionCreated { .. }) => Ok(Reply::Empty),
    }
}

/// Records the replies written since the last call in the connection's and the server's
/// statistics, under one lock.
fn record(conn: &Conn, pending: &mut Unrecorded) {
    if pending.frames == 0 && pending.replies == 0 {
        return;
    }
    let p = std::mem::take(pending);
    let mut st = conn.shared.lock();
    st.counters.packets_sent = st.counters.packets_sent.saturating_add(p.frames);
    st.counters.latency.merge(&p.latency);
    if let Some(c) = st.conns.get_mut(&conn.id) {
        c.stats.sent = c.stats.sent.saturating_add(p.reply_frames);
        c.stats.outstanding = c.stats.outstanding.saturating_sub(p.replies);
        if let Some((op, zxid, ms)) = p.last {
            c.stats.last_op = op;
            c.stats.last_zxid = zxid;
            c.stats.last_response_ms = now_ms();
            c.stats.last_latency_ms = ms;
        }
        c.stats.latency.merge(&p.latency);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, BufWriter};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::{mpsc, oneshot, watch};
    use tokio::task::JoinHandle;

    use super::super::{Conn, Queued, Shared, Slot, SyncBarrier};
    use crate::config::CoordinatorConfig;
    use crate::log::FaultFs;
    use crate::outbox::Outbox;
    use crate::propose::ProposeError;
    use crate::proto::{EventType, SessionId, Stat, Zxid};
    use crate::request::{encode_notification, Reply};
    use crate::server::Coordinator;
    use crate::txn::{OpResult, TxnOutcome, TxnReply};

    /// How long the test waits for anything the writer should do at once.
    const DEADLINE: Duration = Duration::from_secs(5);

    /// A frame as the client reads it: a reply (xid, zxid, err) or a notification (zxid, path).
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Frame {
        Reply { xid: i32, zxid: i64, err: i32 },
        Notification { zxid: i64, path: String },
    }

    /// A connection's writer on a loopback socket, the test as its client, over a lone server
    /// on an in-memory disk (the writer reads the server's state for a reply's zxid).
    struct Harness {
        _server: Coordinator,
        client: TcpStream,
        outbox: Arc<Outbox>,
        slots: mpsc::Sender<Queued>,
        conn: Option<Conn>,
        wr: Option<BufWriter<tokio::net::tcp::OwnedWriteHalf>>,
        rx: Option<mpsc::Receiver<Queued>>,
    }

    impl Harness {
        /// Slots may be queued before [`Harness::run_writer`] starts the writer.
        async fn start(outbox_limit: usize) -> Harness {
            Harness::start_with(outbox_limit, |_| {}).await
        }

        /// As [`Harness::start`], the connection's settings adjusted by `configure` (the
        /// server's are the defaults).
        async fn start_with(outbox_limit: usize, configure: impl FnOnce(&mut CoordinatorConfig)) -> Harness {
            let mut config = CoordinatorConfig::new("/data");
            config.tick_ms = 50;
            let server = Coordinator::start_on(config.clone(), Arc::new(FaultFs::new())).await.expect("server starts");
            configure(&mut config);
            let shared = Arc::new(Shared {
                config: Arc::new(config),
                raft: server.raft(),
                proposer: server.proposer(),
                liveness: None,
                state: server.state(),
                not_serving: AtomicBool::new(false),
            });
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
            let (stream, peer) = listener.accept().await.unwrap();
            let (_, wr) = stream.into_split();
            let outbox = Arc::new(Outbox::new(1, outbox_limit));
            let conn = Conn {
                shared,
                id: 1,
                peer,
                session: SessionId(1),
                timeout: Duration::from_secs(10),
                outbox: outbox.clone(),
                cuts_done: watch::channel(0).0,
                request_bytes: Arc::new(tokio::sync::Semaphore::new(1 << 20)),
            };
            let (tx, rx) = mpsc::channel(16);
            Harness {
                _server: server,
                client,
                outbox,
                slots: tx,
                conn: Some(conn),
                wr: Some(BufWriter::new(wr)),
                rx: Some(rx),
            }
        }

        fn queue(&self, slot: Slot) {
            let q = Queued { at: std::time::Instant::now(), op: "TEST", slot, _budget: None };
            self.slots.try_send(q).expect("room for the slot");
        }

        fn run_writer(&mut self) -> JoinHandle<Result<(), String>> {
            let (conn, wr, rx) = (self.conn.take().unwrap(), self.wr.take().unwrap(), self.rx.take().unwrap());
            tokio::spawn(async move { super::run(&conn, wr, rx).await })
        }

        /// The next frame; `None` once the server has closed the connection.
        async fn frame(&mut self) -> Option<Frame> {
            let read = async {
                let mut len = [0u8; 4];
                if self.client.read_exact(&mut len).await.is_err() {
                    return None;
                }
                let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
                self.client.read_exact(&mut body).await.expect("a whole frame");
                let int = |at: usize| i32::from_be_bytes(body[at..at + 4].try_into().unwrap());
                let zxid = i64::from_be_bytes(body[4..12].try_into().unwrap());
                Some(match int(0) {
                    -1 => Frame::Notification { zxid, path: String::from_utf8(body[28..].to_vec()).unwrap() },
                    xid => Frame::Reply { xid, zxid, err: int(12) },
                })
            };
            tokio::time::timeout(DEADLINE, read).await.expect("the writer answered in time")
        }
    }

    fn push(outbox: &Outbox, zxid: i64) {
        outbox.push(Zxid(zxid), encode_notification(EventType::NodeCreated, &format!("/n/{zxid:08}"), Zxid(zxid)));
    }

    fn notification(zxid: i64) -> Option<Frame> {
        Some(Frame::Notification { zxid, path: format!("/n/{zxid:08}") })
    }

    /// Bytes of one notification as [`push`] makes it.
    fn notification_bytes() -> usize {
        encode_notification(EventType::NodeCreated, "/n/00000000", Zxid(0)).len()
    }

    /// A reply already written is the client's even if the request after it fails: the reply
    /// to an applied write must not turn into a ConnectionLoss.
    #[tokio::test]
    async fn a_reply_already_written_reaches_the_client_when_a_later_request_fails() {
        let mut h = Harness::start(64 << 10).await;
        // Both are queued before the writer starts: the first reply is buffered, not yet sent,
        // when the second request's failure is found.
        h.queue(Slot::Answer { xid: 1, zxid: Some(Zxid(5)), result: Ok(Reply::Empty) });
        let (done, rx) = oneshot::channel();
        done.send(Err(ProposeError::NotLeader { leader: None })).unwrap();
        h.queue(Slot::Write { xid: 2, rx });
        let writer = h.run_writer();
        let ended = tokio::time::timeout(DEADLINE, writer).await.expect("the writer ends").unwrap();
        assert!(ended.is_err(), "a failed write ends the connection: {ended:?}");
        assert_eq!(h.frame().await, Some(Frame::Reply { xid: 1, zxid: 5, err: 0 }));
        assert_eq!(h.frame().await, None, "then the connection closes");
    }

    /// The reply to an applied write is never replaced by an error, even one past
    /// max_packet_bytes (the reader bounds a multi's reply before proposing it; this is the
    /// last guard): the client would take the error for "nothing happened" and might retry. The
    /// connection closes instead (ConnectionLoss: outcome unknown), after the replies before.
    #[tokio::test]
    async fn an_applied_write_whose_reply_passes_max_packet_bytes_closes_the_connection() {
        let mut h = Harness::start_with(64 << 10, |c| c.max_packet_bytes = 1024).await;
        h.queue(Slot::Answer { xid: 1, zxid: Some(Zxid(1)), result: Ok(Reply::Empty) });
        let (done, rx) = oneshot::channel();
        let results = vec![OpResult::DataSet { stat: Stat::default() }; 20];
        done.send(Ok(TxnOutcome { zxid: Zxid(2), result: Ok(TxnReply::Multi(results)) })).unwrap();
        h.queue(Slot::Write { xid: 2, rx });
        let writer = h.run_writer();
        assert_eq!(h.frame().await, Some(Frame::Reply { xid: 1, zxid: 1, err: 0 }));
        assert_eq!(h.frame().await, None, "then the connection closes, with no answer to the write");
        let ended = tokio::time::timeout(DEADLINE, writer).await.expect("the writer ends").unwrap();
        assert!(ended.is_err(), "the oversized reply of an applied write ends the connection: {ended:?}");
    }

    /// While the writer waits for a write's outcome, it may not send the notifications that
    /// come meanwhile (those of changes after the write go after its reply), so they wait; they
    /// are not taken for a client that does not read. Once the outcome is in, those of changes
    /// up to the write go before its reply and the rest after it.
    #[tokio::test]
    async fn notifications_that_pile_up_behind_a_pending_write_do_not_close_the_connection() {
        let limit = 64 << 10;
        let mut h = Harness::start(limit).await;
        h.queue(Slot::Answer { xid: 1, zxid: Some(Zxid(1)), result: Ok(Reply::Empty) });
        let (done, rx) = oneshot::channel();
        h.queue(Slot::Write { xid: 2, rx });
        let _writer = h.run_writer();
        // The first reply is sent when the writer finds the write not yet applied; on this
        // test's single thread, the writer is waiting for the outcome when the test goes on.
        assert_eq!(h.frame().await, Some(Frame::Reply { xid: 1, zxid: 1, err: 0 }));

        // Twice the limit, half before the write's zxid and half after it.
        let n = (2 * limit / notification_bytes()) as i64;
        let write_zxid = 1 + n / 2;
        for zxid in 2..2 + n {
            push(&h.outbox, zxid);
        }
        assert_eq!(h.outbox.closed(), None, "notifications waiting behind a reply are not the client's fault");

        done.send(Ok(TxnOutcome { zxid: Zxid(write_zxid), result: Ok(TxnReply::Op(OpResult::Deleted)) })).unwrap();
        for zxid in 2..=write_zxid {
            assert_eq!(h.frame().await, notification(zxid), "changes up to the write come before its reply");
        }
        assert_eq!(h.frame().await, Some(Frame::Reply { xid: 2, zxid: write_zxid, err: 0 }));
        for zxid in write_zxid + 1..2 + n {
            assert_eq!(h.frame().await, notification(zxid), "later changes come after it");
        }
        assert_eq!(h.outbox.closed(), None);
    }

    /// While the writer waits for a sync's barrier, notifications go out as they come: the
    /// sync's reply is cut when the barrier is passed, so anything sent before then precedes
    /// it, as it must.
    #[tokio::test]
    async fn notifications_go_out_while_a_sync_waits() {
        let limit = 64 << 10;
        let mut h = Harness::start(limit).await;
        h.queue(Slot::Answer { xid: 1, zxid: Some(Zxid(1)), result: Ok(Reply::Empty) });
        let (pass, passed) = oneshot::channel::<()>();
        let barrier = SyncBarrier(tokio::spawn(async move {
            let _ = passed.await;
            Ok(())
        }));
        h.queue(Slot::Sync { xid: 2, path: "/".into(), barrier });
        let _writer = h.run_writer();
        assert_eq!(h.frame().await, Some(Frame::Reply { xid: 1, zxid: 1, err: 0 }));

        // Eight rounds of half the limit each: far more than the outbox may hold, read by a
        // client that keeps up.
        let per_round = (limit / 2 / notification_bytes()) as i64;
        let mut zxid = 2;
        for _ in 0..8 {
            let first = zxid;
            for _ in 0..per_round {
                push(&h.outbox, zxid);
                zxid += 1;
            }
            for z in first..zxid {
                assert_eq!(h.frame().await, notification(z), "sent while the sync waits");
            }
        }
        assert_eq!(h.outbox.closed(), None);
        pass.send(()).unwrap();
        let Some(Frame::Reply { xid: 2, err: 0, .. }) = h.frame().await else { panic!("the sync's reply") };
    }
}
