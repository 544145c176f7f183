//! A TCP proxy between a client and the server that a test can cut (closing every connection
//! and the listening port) and restore on the same port, or arm to cut a connection at the
//! moment the server sends it a watch notification (the notification is swallowed).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Proxy {
    /// The address clients connect to; stable across cut and restore.
    pub addr: SocketAddr,
    target: SocketAddr,
    accept: Option<JoinHandle<()>>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    cut_on_notification: Arc<AtomicBool>,
    /// Set when an armed cut happened.
    pub notification_cut: Arc<AtomicBool>,
}

impl Proxy {
    /// A proxy on an ephemeral port forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut p = Proxy {
            addr,
            target,
            accept: None,
            conns: Arc::default(),
            cut_on_notification: Arc::default(),
            notification_cut: Arc::default(),
        };
        p.serve(listener);
        Ok(p)
    }

    fn serve(&mut self, listener: TcpListener) {
        let target = self.target;
        let conns = self.conns.clone();
        let arm = self.cut_on_notification.clone();
        let fired = self.notification_cut.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else { continue };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let task = tokio::spawn(forward(client, server, arm.clone(), fired.clone()));
                conns.lock().unwrap_or_else(|p| p.into_inner()).push(task);
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

    /// The next notification the server sends through the proxy is swallowed and its
    /// connection cut.
    pub fn arm_cut_on_notification(&self) {
        self.cut_on_notification.store(true, Ordering::SeqCst);
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
            let is_notification = f.len() >= 8 && i32::from_be_bytes([f[4], f[5], f[6], f[7]]) == -1;
            if is_notification && arm.swap(false, Ordering::SeqCst) {
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
