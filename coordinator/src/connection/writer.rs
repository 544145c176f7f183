//! The reply writer: one reply per slot, in request order, with the connection's notifications
//! placed where ZooKeeper places them.
//!
//! The order rule (see [`crate::outbox`]): the notifications queued when a reply's state was
//! read go out before the reply, later ones after it. For a read that cut is taken under the
//! state lock, in the same critical section that executes the read; for a write it is the
//! write's own zxid (every notification of a change up to and including the write precedes its
//! reply). Between replies, notifications go out as they come.
//!
//! Replies are buffered while more are ready and sent when none is: before the writer waits
//! for a request's outcome (a write's commit, a sync's barrier, the leader's word on the
//! session), it sends what it holds, so a pipelining client's applied writes are answered
//! while its next batch is still on its way to the disk.

use std::future::{poll_fn, Future};
use std::task::Poll;

use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tracing::warn;

use super::reads::{self, ReadCtx, Refusal};
use super::{now_ms, Conn, Queued, Slot};
use crate::proto::{op, ErrorCode};
use crate::request::{encode_reply, Reply};
use crate::state::Latency;
use crate::txn::{OpResult, TxnOutcome, TxnReply};

/// Bytes of a reply header (xid, zxid, err).
const REPLY_HEADER_BYTES: usize = 16;

/// Writes replies until a `Close` slot, the end of the slots (the reader stopped), or a socket
/// error. Every await here is dropped with the connection.
pub(super) async fn run(
    conn: &Conn,
    mut wr: BufWriter<OwnedWriteHalf>,
    mut slots: mpsc::Receiver<Queued>,
) -> Result<(), String> {
    let result = pump(conn, &mut wr, &mut slots).await;
    if result.is_ok() {
        let _ = wr.flush().await;
        let _ = wr.shutdown().await;
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
    let mut warned = [false; 2];
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
    /// request's outcome, which may wait for a disk, a leader or a quorum.
    async fn wait<F: Future>(&mut self, conn: &Conn, fut: F) -> Result<F::Output, String> {
        let mut fut = std::pin::pin!(fut);
        match poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await {
            Poll::Ready(v) => Ok(v),
            Poll::Pending => {
                if !self.wr.buffer().is_empty() {
                    self.flush(conn).await?;
                }
                Ok(fut.await)
            }
        }
    }
}

/// Turns a slot into the frames to send (notifications first, then the reply) and the reply's
/// zxid; `None` for a `Close` slot.
async fn resolve(
    conn: &Conn,
    slot: Slot,
    warned: &mut [bool; 2],
    out: &mut Out<'_>,
) -> Result<Option<(Vec<Vec<u8>>, i64)>, String> {
    let max_body = conn.shared.config.max_packet_bytes.saturating_sub(REPLY_HEADER_BYTES);
    let (mut frames, xid, zxid, result) = match slot {
        Slot::Close => return Ok(None),
        Slot::Read { xid, req, auth } => {
            let mut cx = ReadCtx {
                conn: conn.id,
                session: conn.session,
                auth: &auth,
                max_body,
                max_watches: conn.shared.config.max_watches_per_connection,
                refused: None,
            };
            let (frames, zxid, result) = {
                let mut st = conn.shared.lock();
                // The cut: everything queued so far describes changes this read sees.
                let mut frames = conn.outbox.take(None);
                let result = reads::execute(&mut st, &mut cx, req, &mut frames);
                (frames, st.tree.last_zxid(), result)
            };
            // The session's next write may now be proposed.
            conn.reads_done.send_modify(|n| *n += 1);
            if let Some(refusal) = cx.refused {
                log_refusal(conn, xid, refusal, warned);
            }
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
            match out.wait(conn, &mut barrier.0).await? {
                Ok(done) => done.map_err(|e| format!("sync failed: {e}"))?,
                Err(e) => return Err(format!("sync failed: its barrier ended without an answer ({e})")),
            }
            let st = conn.shared.lock();
            (conn.outbox.take(None), xid, st.tree.last_zxid(), Ok(Reply::Path(path)))
        }
        Slot::Answer { xid, zxid, result } => {
            let st = conn.shared.lock();
            (conn.outbox.take(None), xid, zxid.unwrap_or_else(|| st.tree.last_zxid()), result)
        }
    };
    let mut reply = encode_reply(xid, zxid, &result);
    // Every reply is bounded where it is built; this is the last guard for one that was not.
    if reply.len() - 4 > conn.shared.config.max_packet_bytes {
        log_refusal(conn, xid, Refusal::ReplyTooLarge { at_least: reply.len() - 4 }, warned);
        reply = encode_reply(xid, zxid, &Err(ErrorCode::BadArguments));
    }
    frames.push(reply);
    Ok(Some((frames, zxid.0)))
}

/// Logs a request refused by a limit, naming the limit: the first refusal of each kind on a
/// connection at warn, later ones at debug, so a hostile client cannot flood the log.
fn log_refusal(conn: &Conn, xid: i32, refusal: Refusal, warned: &mut [bool; 2]) {
    let (kind, first) = match refusal {
        Refusal::ReplyTooLarge { .. } => (0, !warned[0]),
        Refusal::TooManyWatches => (1, !warned[1]),
    };
    warned[kind] = true;
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
