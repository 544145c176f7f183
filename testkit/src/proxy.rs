//! A TCP proxy between ZooKeeper-wire clients and a server, with fault knobs: cut every
//! connection (and the listening port) and restore it on the same port; black-hole it
//! (connections are still accepted, but nothing is forwarded either way, on new connections or
//! on established ones, until it is healed); or arm a [`Trap`] that drops one frame together
//! with its connection.
//!
//! A cut is what a crashed host or a firewall that rejects looks like: the client learns at
//! once. A black hole is what a partition that drops packets looks like: every connection
//! stays open and silent, so the client learns only from its own deadlines.
//!
//! ```text
//!  client ──request frames──▶ up   ──▶ server     (a multi may be dropped here)
//!  client ◀──reply frames─── down ◀── server     (a notification or reply may be dropped here)
//! ```
//!
//! Frames are ZooKeeper's: a 4-byte big-endian length, then the body. The first frame each way
//! is the connect request or response, which has no header; every later one starts with its
//! xid (and a request with its opcode after that). A connection whose first four bytes cannot
//! be a frame's length (over 16 MiB: a four-letter word, or its plain-text answer) is passed on
//! as it arrives, through the same gate.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The xid of a watch notification.
const XID_NOTIFICATION: i32 = -1;
/// The opcode of a multi request.
const OP_MULTI: i32 = 14;

/// A fault a [`Proxy`] springs once, on the first connection that meets it, swallowing one frame
/// and closing that connection; the proxy keeps listening, so the client reconnects its session
/// at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trap {
    /// The next watch notification the server sends never arrives.
    CutAtNotification,
    /// The next reply to a client request (not a ping, notification or auth reply) never
    /// arrives: the server has applied the request, the client only sees the connection go.
    DropNextReply,
    /// The next multi request reaches the server; its reply never arrives.
    DropMultiReply,
    /// The next multi request never reaches the server.
    DropMultiRequest,
}

/// The armed trap, shared by every connection of a proxy.
struct Traps {
    armed: Mutex<Option<Trap>>,
    /// Whether the trap armed last has sprung.
    sprung: watch::Sender<bool>,
}

impl Traps {
    /// Disarms and returns the armed trap if it is `trap`: of two connections meeting it at
    /// once, one springs it.
    fn take(&self, trap: Trap) -> bool {
        let mut armed = self.armed.lock().unwrap_or_else(|p| p.into_inner());
        if *armed == Some(trap) {
            *armed = None;
            return true;
        }
        false
    }

    fn spring(&self) {
        self.sprung.send_replace(true);
    }
}

/// The black hole's switch, shared by every connection of a proxy.
struct Gate {
    /// `true` while frames may pass.
    open: watch::Sender<bool>,
    /// Frames (and connections waiting to reach the server) held back right now.
    held: AtomicUsize,
}

impl Gate {
    /// Returns once frames may pass; counts the caller as held while it waits.
    async fn pass(&self) {
        let mut open = self.open.subscribe();
        if *open.borrow_and_update() {
            return;
        }
        // Counted down on drop, so a connection aborted by a cut while held is not counted on.
        struct Held<'a>(&'a AtomicUsize);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.held.fetch_add(1, Ordering::SeqCst);
        let _held = Held(&self.held);
        // The sender lives as long as the gate: this ends only when the hole is healed.
        let _ = open.wait_for(|o| *o).await;
    }
}

/// A cuttable proxy on a loopback port, forwarding to one server. Dropping it cuts.
pub struct Proxy {
    /// The address clients connect to; stable across cut and restore.
    pub addr: SocketAddr,
    target: SocketAddr,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    traps: Arc<Traps>,
    gate: Arc<Gate>,
}

impl Proxy {
    /// A proxy on an ephemeral port forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let traps = Arc::new(Traps { armed: Mutex::new(None), sprung: watch::Sender::new(false) });
        let gate = Arc::new(Gate { open: watch::Sender::new(true), held: AtomicUsize::new(0) });
        let mut p = Proxy { addr, target, accept: None, conns: Arc::default(), traps, gate };
        p.serve(listener);
        Ok(p)
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target;
        let conns = self.conns.clone();
        let traps = self.traps.clone();
        let gate = self.gate.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (traps, gate) = (traps.clone(), gate.clone());
                let task = tokio::spawn(async move {
                    // Inside a black hole not even the connection reaches the server.
                    gate.pass().await;
                    let Ok(server) = TcpStream::connect(target).await else { return };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    forward(client, server, traps, gate).await;
                });
                let mut conns = conns.lock().unwrap_or_else(|p| p.into_inner());
                conns.retain(|c| !c.is_finished());
                conns.push(task);
            }
        }));
    }

    /// Closes every proxied connection and stops listening: clients see their connection drop
    /// and cannot reconnect until [`Proxy::restore`].
    pub fn cut(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for c in self.conns.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            c.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&mut self) -> Result<()> {
        let mut last = None;
        for _ in 0..100 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    self.serve(l);
                    return Ok(());
                }
                // The aborted listener may take a moment to be dropped.
                Err(e) => {
                    last = Some(e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(last.unwrap()).context("rebinding the proxy port")
    }

    /// Starts a black hole: connections are still accepted, but from now on nothing passes in
    /// either direction, on new connections or on established ones, until [`Proxy::heal`].
    /// Frames are held, not dropped (TCP would retransmit them across a healed partition), so
    /// a connection that its client has not given up on carries on after healing.
    pub fn black_hole(&self) {
        self.gate.open.send_replace(false);
    }

    /// Ends a black hole: held frames and connections go through, in order.
    pub fn heal(&self) {
        self.gate.open.send_replace(true);
    }

    /// How many frames and new connections a black hole holds back right now (each direction
    /// of a connection holds at most one frame; the rest waits in the sockets' buffers).
    pub fn held(&self) -> usize {
        self.gate.held.load(Ordering::SeqCst)
    }

    /// Arms `trap`, replacing any trap armed before that has not sprung.
    pub fn arm(&self, trap: Trap) {
        let mut armed = self.traps.armed.lock().unwrap_or_else(|p| p.into_inner());
        self.traps.sprung.send_replace(false);
        *armed = Some(trap);
    }

    /// Whether the trap armed last has sprung.
    pub fn has_sprung(&self) -> bool {
        *self.traps.sprung.borrow()
    }

    /// Waits until the trap armed last springs (at once if it has).
    pub async fn sprung(&self) {
        let mut sprung = self.traps.sprung.subscribe();
        // The sender lives as long as `self`: this ends only with a spring.
        let _ = sprung.wait_for(|s| *s).await;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// The longest frame the proxy takes for one: ZooKeeper's are at most `jute.maxbuffer` (1 MiB by
/// default) and some bytes.
const MAX_FRAME: usize = 16 << 20;

/// The next unit to forward: a frame, or, once the four bytes read cannot be a frame's length
/// (a four-letter word, or its plain-text answer), those four bytes and then whatever arrives
/// as it arrives: `raw` then stays set,
/// as such a connection never speaks ZooKeeper's framed protocol. End of stream is an error.
async fn read_frame(s: &mut (impl AsyncReadExt + Unpin), raw: &mut bool) -> std::io::Result<Vec<u8>> {
    if *raw {
        let more = read_chunk(s).await?;
        if more.is_empty() {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        return Ok(more);
    }
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let mut frame = len.to_vec();
    let body = u32::from_be_bytes(len) as usize;
    if body > MAX_FRAME {
        // Not waiting for more: a four-letter word is all its client sends.
        *raw = true;
        return Ok(frame);
    }
    frame.resize(4 + body, 0);
    s.read_exact(&mut frame[4..]).await?;
    Ok(frame)
}

/// Whatever has arrived, up to 64 KiB (empty at the end of the stream).
async fn read_chunk(s: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut more = vec![0u8; 64 << 10];
    let n = s.read(&mut more).await?;
    more.truncate(n);
    Ok(more)
}

/// The big-endian i32 at byte `at` of `frame`, if the frame is that long.
fn i32_at(frame: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?))
}

async fn forward(client: TcpStream, server: TcpStream, traps: Arc<Traps>, gate: Arc<Gate>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // The xid of a multi whose reply must be swallowed.
    let doomed: Arc<Mutex<Option<i32>>> = Arc::default();
    let (doomed_up, traps_up, gate_up) = (doomed.clone(), traps.clone(), gate.clone());
    let up = async move {
        let mut raw = false;
        let Ok(first) = read_frame(&mut cr, &mut raw).await else { return };
        gate_up.pass().await;
        if sw.write_all(&first).await.is_err() {
            return;
        }
        loop {
            let Ok(f) = read_frame(&mut cr, &mut raw).await else { return };
            if i32_at(&f, 8) == Some(OP_MULTI) {
                if traps_up.take(Trap::DropMultiRequest) {
                    traps_up.spring();
                    return;
                }
                if traps_up.take(Trap::DropMultiReply) {
                    *doomed_up.lock().unwrap_or_else(|p| p.into_inner()) = i32_at(&f, 4);
                }
            }
            gate_up.pass().await;
            if sw.write_all(&f).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let mut raw = false;
        let Ok(first) = read_frame(&mut sr, &mut raw).await else { return };
        gate.pass().await;
        if cw.write_all(&first).await.is_err() {
            return;
        }
        loop {
            let Ok(f) = read_frame(&mut sr, &mut raw).await else { return };
            let xid = i32_at(&f, 4);
            let swallow = match xid {
                Some(XID_NOTIFICATION) => traps.take(Trap::CutAtNotification),
                // Client requests have positive xids; pings and auth replies do not.
                Some(x) if x > 0 => {
                    let mut doomed = doomed.lock().unwrap_or_else(|p| p.into_inner());
                    if *doomed == Some(x) {
                        *doomed = None;
                        true
                    } else {
                        traps.take(Trap::DropNextReply)
                    }
                }
                _ => false,
            };
            if swallow {
                traps.spring();
                return;
            }
            gate.pass().await;
            if cw.write_all(&f).await.is_err() {
                return;
            }
        }
    };
    // Whichever direction ends first ends the connection (both sockets drop).
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use super::*;
    use crate::{wait_until, within, DEADLINE};

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    /// Whether `fut` is not ready on its first poll: nothing has arrived.
    async fn nothing_yet<T>(fut: impl Future<Output = T>) -> bool {
        tokio::time::timeout(Duration::ZERO, fut).await.is_err()
    }

    /// A four-letter word and its plain-text answer are not frames: they pass whole.
    #[tokio::test]
    async fn a_four_letter_word_and_its_answer_pass() -> Result<()> {
        let server = TcpListener::bind("127.0.0.1:0").await?;
        let proxy = Proxy::start(server.local_addr()?).await?;
        let mut client = TcpStream::connect(proxy.addr).await?;
        client.write_all(b"srvr").await?;
        let (mut conn, _) = within("the proxied connection", server.accept()).await??;
        let mut word = [0u8; 4];
        within("the word", conn.read_exact(&mut word)).await??;
        assert_eq!(&word, b"srvr");
        let answer = "Zookeeper version: 3.8.0\nMode: standalone\nNode count: 5\n".repeat(50);
        conn.write_all(answer.as_bytes()).await?;
        drop(conn);
        let mut got = String::new();
        within("the answer", client.read_to_string(&mut got)).await??;
        assert_eq!(got, answer);
        Ok(())
    }

    #[tokio::test]
    async fn a_black_hole_holds_every_frame_and_new_connection_until_healed() -> Result<()> {
        let server = TcpListener::bind("127.0.0.1:0").await?;
        let proxy = Proxy::start(server.local_addr()?).await?;
        let mut client = TcpStream::connect(proxy.addr).await?;
        client.write_all(&frame(b"hello")).await?;
        let (mut conn, _) = within("the proxied connection", server.accept()).await??;
        assert_eq!(within("the first frame up", read_frame(&mut conn, &mut false)).await??, frame(b"hello"));
        conn.write_all(&frame(b"welcome")).await?;
        assert_eq!(within("the first frame down", read_frame(&mut client, &mut false)).await??, frame(b"welcome"));

        proxy.black_hole();
        // Both directions of the established connection, and a connection made inside the
        // hole (the proxy still accepts it), are held at the gate.
        client.write_all(&frame(b"up")).await?;
        conn.write_all(&frame(b"down")).await?;
        let mut late = TcpStream::connect(proxy.addr).await?;
        late.write_all(&frame(b"late")).await?;
        wait_until(DEADLINE, "two frames and a connection held", || proxy.held() == 3).await?;
        assert!(nothing_yet(read_frame(&mut conn, &mut false)).await, "a frame went up through the black hole");
        assert!(nothing_yet(read_frame(&mut client, &mut false)).await, "a frame came down through the black hole");
        assert!(nothing_yet(server.accept()).await, "a connection reached the server through the black hole");

        proxy.heal();
        assert_eq!(within("the held frame up", read_frame(&mut conn, &mut false)).await??, frame(b"up"));
        assert_eq!(within("the held frame down", read_frame(&mut client, &mut false)).await??, frame(b"down"));
        let (mut late_conn, _) = within("the held connection", server.accept()).await??;
        assert_eq!(
            within("the late connection's frame", read_frame(&mut late_conn, &mut false)).await??,
            frame(b"late")
        );
        assert_eq!(proxy.held(), 0);
        Ok(())
    }

    #[tokio::test]
    async fn a_cut_inside_a_black_hole_drops_what_was_held() -> Result<()> {
        let server = TcpListener::bind("127.0.0.1:0").await?;
        let mut proxy = Proxy::start(server.local_addr()?).await?;
        proxy.black_hole();
        let mut client = TcpStream::connect(proxy.addr).await?;
        client.write_all(&frame(b"held")).await?;
        wait_until(DEADLINE, "the connection held", || proxy.held() == 1).await?;
        proxy.cut();
        wait_until(DEADLINE, "nothing held after the cut", || proxy.held() == 0).await?;
        // The client sees its connection closed.
        let mut buf = [0u8; 1];
        let read = within("the client to see the close", client.read(&mut buf)).await?;
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        Ok(())
    }
}
