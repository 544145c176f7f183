//! A TCP proxy between ZooKeeper-wire clients and a server, with fault knobs: cut every
//! connection (and the listening port) and restore it on the same port, or arm a [`Trap`] that
//! drops one frame together with its connection.
//!
//! ```text
//!  client ──request frames──▶ up   ──▶ server     (a multi may be dropped here)
//!  client ◀──reply frames─── down ◀── server     (a notification or reply may be dropped here)
//! ```
//!
//! Frames are ZooKeeper's: a 4-byte big-endian length, then the body. The first frame each way
//! is the connect request or response, which has no header; every later one starts with its
//! xid (and a request with its opcode after that).

use std::net::SocketAddr;
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

/// A cuttable proxy on a loopback port, forwarding to one server. Dropping it cuts.
pub struct Proxy {
    /// The address clients connect to; stable across cut and restore.
    pub addr: SocketAddr,
    target: SocketAddr,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    traps: Arc<Traps>,
}

impl Proxy {
    /// A proxy on an ephemeral port forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let traps = Arc::new(Traps { armed: Mutex::new(None), sprung: watch::Sender::new(false) });
        let mut p = Proxy { addr, target, accept: None, conns: Arc::default(), traps };
        p.serve(listener);
        Ok(p)
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target;
        let conns = self.conns.clone();
        let traps = self.traps.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else { continue };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let task = tokio::spawn(forward(client, server, traps.clone()));
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

async fn read_frame(s: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await?;
    let mut frame = len.to_vec();
    frame.resize(4 + u32::from_be_bytes(len) as usize, 0);
    s.read_exact(&mut frame[4..]).await?;
    Ok(frame)
}

/// The big-endian i32 at byte `at` of `frame`, if the frame is that long.
fn i32_at(frame: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(frame.get(at..at + 4)?.try_into().ok()?))
}

async fn forward(client: TcpStream, server: TcpStream, traps: Arc<Traps>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    // The xid of a multi whose reply must be swallowed.
    let doomed: Arc<Mutex<Option<i32>>> = Arc::default();
    let (doomed_up, traps_up) = (doomed.clone(), traps.clone());
    let up = async move {
        let Ok(first) = read_frame(&mut cr).await else { return };
        if sw.write_all(&first).await.is_err() {
            return;
        }
        loop {
            let Ok(f) = read_frame(&mut cr).await else { return };
            if i32_at(&f, 8) == Some(OP_MULTI) {
                if traps_up.take(Trap::DropMultiRequest) {
                    traps_up.spring();
                    return;
                }
                if traps_up.take(Trap::DropMultiReply) {
                    *doomed_up.lock().unwrap_or_else(|p| p.into_inner()) = i32_at(&f, 4);
                }
            }
            if sw.write_all(&f).await.is_err() {
                return;
            }
        }
    };
    let down = async move {
        let Ok(first) = read_frame(&mut sr).await else { return };
        if cw.write_all(&first).await.is_err() {
            return;
        }
        loop {
            let Ok(f) = read_frame(&mut sr).await else { return };
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
