//! A connection's outbox: the watch notifications the state machine has fired for it and the
//! connection has not sent yet, in the order they were fired, with a bound on their bytes.
//!
//! The state machine pushes while it holds the server's state lock; the connection's reply
//! writer takes them out, under the same lock when it executes a read. That makes the cut
//! exact: every notification queued when a read runs describes a change the read's reply
//! already reflects, so it goes out before the reply; everything pushed later describes a
//! later change and goes out after it. This is ZooKeeper's order (a client sees the event
//! before the data that follows it, and a read's reply before the events of its watch).
//!
//! A client that does not read lets notifications pile up here. Past `max_queued_outbound_bytes`
//! the outbox drops them and closes: the connection ends, as ZooKeeper ends one whose client
//! cannot keep up, and the client must reconnect and re-register its watches.
//!
//! Notifications also wait here, through no fault of the client, while the writer waits for a
//! request's outcome (a write's commit, the leader's word on the session): those of changes
//! after the write must follow its reply, and which they are is known only with the outcome.
//! A follower catching up with its leader may apply many changes meanwhile. So what is pushed
//! while [`Outbox::reply_pending`] holds counts against a larger bound instead,
//! [`PENDING_REPLY_FACTOR`] times the limit for all that is queued; past that the connection is
//! closed all the same.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Mutex;

use tokio::sync::Notify;
use tracing::warn;

use crate::proto::Zxid;
use crate::watch::ConnId;

/// Why the server ends a connection from outside the connection's own tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// A newer connection resumed the session (ZooKeeper closes the older one too).
    SessionMoved,
    /// The session was closed or expired.
    SessionClosed,
    /// This server caught up by installing the leader's snapshot: the changes in between fired
    /// no watch here, so its clients reconnect and re-register theirs (SetWatches fires what
    /// they missed), as ZooKeeper's clients do when their follower resyncs from a snapshot.
    SnapshotInstalled,
    /// This server has lost contact with the ensemble for longer than its staleness bound.
    NoLeaderContact {
        /// How long it had been without contact.
        silent_ms: u64,
    },
    /// Notifications waiting for the client passed `max_queued_outbound_bytes`: it is not
    /// reading.
    OutboundQueueFull {
        /// The limit that was passed.
        limit: usize,
    },
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::SessionMoved => write!(f, "session moved to a newer connection"),
            CloseReason::SessionClosed => write!(f, "session closed"),
            CloseReason::SnapshotInstalled => write!(
                f,
                "this server caught up from the leader's snapshot; the client reconnects and re-registers its watches"
            ),
            CloseReason::NoLeaderContact { silent_ms } => write!(
                f,
                "this server's tree has not been shown current with a leader's for {silent_ms} ms \
                 (max_leader_silence_ms: no contact, or too far behind in applying): its answers could be stale; \
                 the client should reconnect to another server"
            ),
            CloseReason::OutboundQueueFull { limit } => write!(
                f,
                "the client is not reading: notifications queued for it passed {limit} bytes \
                 (max_queued_outbound_bytes)"
            ),
        }
    }
}

/// How many times `max_queued_outbound_bytes` a connection's outbox may hold, in all, while
/// its writer waits for a request's outcome (see the module's description). Bounded, as a
/// client may keep a request pending all the time; four times allows what a follower applies
/// in the few seconds a forwarded write may take ([`crate::propose::FORWARD_DEADLINE`]) at a
/// few thousand notifications a second, with the default limit.
pub const PENDING_REPLY_FACTOR: usize = 4;

#[derive(Debug, Default)]
struct Inner {
    /// Notifications in the order they were fired: the zxid of its change, the frame, and
    /// whether it was pushed while a reply was pending.
    queue: VecDeque<(Zxid, Vec<u8>, bool)>,
    /// Bytes in `queue` pushed while no reply was pending: those the client is answerable for.
    bytes: usize,
    /// Bytes in `queue` pushed while a reply was pending.
    held_bytes: usize,
    /// Set while the writer waits for a request's outcome.
    reply_pending: bool,
    /// Set once; the connection ends as soon as it sees it.
    closed: Option<CloseReason>,
    /// The client asked to close its session, so the session's close is expected and must not
    /// cut off the reply to that request.
    client_closing: bool,
}

/// The notifications owed to one connection.
#[derive(Debug)]
pub struct Outbox {
    conn: ConnId,
    limit_bytes: usize,
    inner: Mutex<Inner>,
    /// Woken on every push and on close.
    changed: Notify,
}

impl Outbox {
    /// An empty outbox for connection `conn` holding at most `limit_bytes` of notifications.
    pub fn new(conn: ConnId, limit_bytes: usize) -> Self {
        Outbox { conn, limit_bytes, inner: Mutex::new(Inner::default()), changed: Notify::new() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a notification fired by the change at `zxid`. Over the byte limit the queue is
    /// dropped and the outbox closed instead: past `limit_bytes` of what was pushed while no
    /// reply was pending, or past [`PENDING_REPLY_FACTOR`] times it in all.
    pub fn push(&self, zxid: Zxid, frame: Vec<u8>) {
        let mut inner = self.lock();
        if inner.closed.is_some() {
            return;
        }
        let held = inner.reply_pending;
        let len = frame.len();
        let counted = inner.bytes.saturating_add(if held { 0 } else { len });
        let all = inner.bytes.saturating_add(inner.held_bytes).saturating_add(len);
        if counted > self.limit_bytes || all > self.limit_bytes.saturating_mul(PENDING_REPLY_FACTOR) {
            warn!(
                conn = self.conn,
                limit = self.limit_bytes,
                waiting_for_a_reply = held,
                "closing the connection: its client is not reading and the notifications queued for it \
                 passed max_queued_outbound_bytes"
            );
            inner.queue.clear();
            inner.bytes = 0;
            inner.held_bytes = 0;
            inner.closed = Some(CloseReason::OutboundQueueFull { limit: self.limit_bytes });
        } else {
            if held {
                inner.held_bytes += len;
            } else {
                inner.bytes += len;
            }
            inner.queue.push_back((zxid, frame, held));
        }
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Closes the outbox: the connection ends. A session close the client asked for is not a
    /// reason to cut the connection short; the reply to its request ends it.
    pub fn close(&self, why: CloseReason) {
        let mut inner = self.lock();
        if inner.closed.is_some() || (why == CloseReason::SessionClosed && inner.client_closing) {
            return;
        }
        inner.closed = Some(why);
        drop(inner);
        self.changed.notify_waiters();
    }

    /// Marks that the client has asked to close its session.
    pub fn set_client_closing(&self) {
        self.lock().client_closing = true;
    }

    /// Marks the connection's writer as waiting for a request's outcome, unable to send the
    /// notifications queued meanwhile, until the guard is dropped: they count against the
    /// larger bound (see the module's description).
    pub fn reply_pending(&self) -> ReplyPending<'_> {
        self.lock().reply_pending = true;
        ReplyPending(self)
    }

    /// Takes the queued notifications of changes up to `upto` (all of them for `None`), oldest
    /// first.
    pub fn take(&self, upto: Option<Zxid>) -> Vec<Vec<u8>> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let n = match upto {
            None => inner.queue.len(),
            Some(z) => inner.queue.iter().take_while(|(zxid, _, _)| *zxid <= z).count(),
        };
        let mut out = Vec::with_capacity(n);
        for (_, frame, held) in inner.queue.drain(..n) {
            if held {
                inner.held_bytes -= frame.len();
            } else {
                inner.bytes -= frame.len();
            }
            out.push(frame);
        }
        out
    }

    /// Bytes waiting.
    pub fn queued_bytes(&self) -> usize {
        let inner = self.lock();
        inner.bytes + inner.held_bytes
    }

    /// Why the outbox was closed, if it was.
    pub fn closed(&self) -> Option<CloseReason> {
        self.lock().closed
    }

    /// Waits until the outbox is closed.
    pub async fn wait_closed(&self) -> CloseReason {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(why) = self.closed() {
                return why;
            }
            changed.await;
        }
    }

    /// Waits until a notification is queued (returns at once if one is).
    pub async fn wait_queued(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.lock().queue.is_empty() {
                return;
            }
            changed.await;
        }
    }
}

/// Held while a connection's writer waits for a request's outcome ([`Outbox::reply_pending`]).
#[must_use = "the writer counts as waiting only while the guard is held"]
pub struct ReplyPending<'a>(&'a Outbox);

impl Drop for ReplyPending<'_> {
    fn drop(&mut self) {
        self.0.lock().reply_pending = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_in_order_up_to_a_zxid() {
        let o = Outbox::new(1, 100);
        o.push(Zxid(3), vec![3; 10]);
        o.push(Zxid(5), vec![5; 10]);
        o.push(Zxid(5), vec![6; 10]);
        o.push(Zxid(7), vec![7; 10]);
        assert_eq!(o.queued_bytes(), 40);
        assert_eq!(o.take(Some(Zxid(2))), Vec::<Vec<u8>>::new());
        assert_eq!(o.take(Some(Zxid(5))), vec![vec![3; 10], vec![5; 10], vec![6; 10]]);
        assert_eq!(o.queued_bytes(), 10);
        assert_eq!(o.take(None), vec![vec![7; 10]]);
        assert_eq!(o.queued_bytes(), 0);
        assert_eq!(o.closed(), None);
    }

    #[test]
    fn passing_the_byte_limit_drops_the_queue_and_closes() {
        let o = Outbox::new(1, 25);
        o.push(Zxid(1), vec![0; 10]);
        o.push(Zxid(2), vec![0; 10]);
        assert_eq!(o.closed(), None);
        o.push(Zxid(3), vec![0; 10]);
        assert_eq!(o.closed(), Some(CloseReason::OutboundQueueFull { limit: 25 }));
        assert_eq!(o.queued_bytes(), 0);
        o.push(Zxid(4), vec![0; 1]);
        assert!(o.take(None).is_empty(), "nothing is queued once closed");
        // The first reason stays.
        o.close(CloseReason::SessionMoved);
        assert_eq!(o.closed(), Some(CloseReason::OutboundQueueFull { limit: 25 }));
    }

    #[test]
    fn a_close_the_client_asked_for_does_not_cut_the_connection() {
        let o = Outbox::new(1, 25);
        o.set_client_closing();
        o.close(CloseReason::SessionClosed);
        assert_eq!(o.closed(), None);
        o.close(CloseReason::SessionMoved);
        assert_eq!(o.closed(), Some(CloseReason::SessionMoved));
    }

    #[test]
    fn what_is_pushed_while_a_reply_is_pending_counts_against_the_larger_bound() {
        // 25 bytes for the client, 100 in all while a reply is pending.
        let o = Outbox::new(1, 25);
        let pending = o.reply_pending();
        for z in 1..=7 {
            o.push(Zxid(z), vec![0; 10]);
        }
        assert_eq!(o.closed(), None, "70 bytes waiting behind a reply");
        drop(pending);
        // Once the writer no longer waits, the client answers for what comes.
        o.push(Zxid(8), vec![0; 10]);
        o.push(Zxid(9), vec![0; 10]);
        assert_eq!((o.closed(), o.queued_bytes()), (None, 90));
        assert_eq!(o.take(Some(Zxid(3))).len(), 3);
        assert_eq!(o.queued_bytes(), 60);
        o.push(Zxid(10), vec![0; 10]);
        assert_eq!(o.closed(), Some(CloseReason::OutboundQueueFull { limit: 25 }), "30 bytes of its own");

        let o = Outbox::new(1, 25);
        let _pending = o.reply_pending();
        for z in 1..=10 {
            o.push(Zxid(z), vec![0; 10]);
        }
        assert_eq!(o.closed(), None);
        o.push(Zxid(11), vec![0; 10]);
        assert_eq!(o.closed(), Some(CloseReason::OutboundQueueFull { limit: 25 }), "past 100 bytes in all");
        assert_eq!(o.queued_bytes(), 0);
    }
}
