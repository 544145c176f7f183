//! A TCP proxy between a client and a ZooKeeper-wire server that a test can cut (closing every
//! connection and the listening port) or arm to drop the next request reply together with its
//! connection: the server has applied the request, the client only sees the connection go.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A cuttable proxy on an ephemeral loopback port.
pub struct Proxy {
    /// The address clients connect to.
    pub addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    drop_next_reply: Arc<AtomicBool>,
    /// Set when an armed reply was dropped.
    pub reply_dropped: Arc<AtomicBool>,
}

impl Proxy {
    /// A proxy on an ephemeral port forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let drop_next_reply: Arc<AtomicBool> = Arc::default();
        let reply_dropped: Arc<AtomicBool> = Arc::default();
        let accept = {
            let conns = conns.clone();
            let arm = drop_next_reply.clone();
            let fired = reply_dropped.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = TcpStream::connect(target).await else { continue };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let task = tokio::spawn(forward(client, server, arm.clone(), fired.clone()));
                    conns.lock().unwrap_or_else(|p| p.into_inner()).push(task);
                }
            })
        };
        Ok(Proxy { addr, accept: Some(accept), conns, drop_next_reply, reply_dropped })
    }

    /// Closes every proxied connection and stops listening: clients see their connection drop
    /// and cannot reconnect.
    pub fn cut(&mut self) {
        if let Some(a) = self.accept.take() {
            a.abort();
        }
        for c in self.conns.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            c.abort();
        }
    }

    /// The next reply to a client request (not a ping, notification or auth reply) is swallowed
    /// and its connection closed; the proxy keeps listening, so the client reconnects.
    pub fn arm_drop_next_reply(&self) {
        self.drop_next_reply.store(true, Ordering::SeqCst);
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
    let n = u32::from_be_bytes(len) as usize;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).await?;
    let mut out = len.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

async fn forward(client: TcpStream, server: TcpStream, arm: Arc<AtomicBool>, fired: Arc<AtomicBool>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
    };
    let down = async move {
        // The first frame is the ConnectResponse, which has no reply header.
        let Ok(first) = read_frame(&mut sr).await else { return };
        if cw.write_all(&first).await.is_err() {
            return;
        }
        loop {
            let Ok(f) = read_frame(&mut sr).await else { return };
            // Client requests have positive xids; pings, notifications and auth replies do not.
            let xid = if f.len() >= 8 { i32::from_be_bytes([f[4], f[5], f[6], f[7]]) } else { 0 };
            if xid > 0 && arm.swap(false, Ordering::SeqCst) {
                fired.store(true, Ordering::SeqCst);
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
