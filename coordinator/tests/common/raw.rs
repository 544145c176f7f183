//! A tiny raw-socket ZooKeeper client over the test kit's jute codec (`referee_testkit::jute`),
//! which is written independently of the server's, so the tests check the bytes on the wire
//! rather than the server's idea of them.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::DEADLINE;

pub use referee_testkit::jute::*;

/// A raw connection.
pub struct Raw {
    stream: TcpStream,
    next_xid: i32,
    /// The session of the handshake, if one was made.
    pub session_id: i64,
    /// Its password.
    pub passwd: Vec<u8>,
    /// The negotiated timeout.
    pub timeout_ms: i32,
}

impl Raw {
    /// A plain TCP connection, no handshake.
    pub async fn tcp(addr: SocketAddr) -> Result<Raw> {
        let stream = super::within("TCP connect", TcpStream::connect(addr)).await??;
        stream.set_nodelay(true)?;
        Ok(Raw { stream, next_xid: 1, session_id: 0, passwd: Vec::new(), timeout_ms: 0 })
    }

    /// A raw connection over an already connected stream (one made with socket options).
    pub fn from_stream(stream: TcpStream) -> Result<Raw> {
        stream.set_nodelay(true)?;
        Ok(Raw { stream, next_xid: 1, session_id: 0, passwd: Vec::new(), timeout_ms: 0 })
    }

    /// A new session (fails unless the server grants one).
    pub async fn connect(addr: SocketAddr, timeout_ms: i32) -> Result<Raw> {
        let mut raw = Raw::tcp(addr).await?;
        let resp = raw.handshake(&ConnectRequest::new_session(timeout_ms)).await?;
        ensure!(resp.session_id != 0 && resp.timeout_ms > 0, "server refused a new session: {resp:?}");
        Ok(raw)
    }

    /// Resumes a session on a new connection (fails unless the server accepts it).
    pub async fn resume(addr: SocketAddr, session_id: i64, passwd: &[u8], timeout_ms: i32) -> Result<Raw> {
        let mut raw = Raw::tcp(addr).await?;
        let resp = raw.handshake(&ConnectRequest::resume(session_id, passwd, timeout_ms)).await?;
        ensure!(resp.session_id == session_id, "server did not resume session 0x{session_id:x}: {resp:?}");
        Ok(raw)
    }

    /// Sends a ConnectRequest and reads the ConnectResponse, remembering the session.
    pub async fn handshake(&mut self, req: &ConnectRequest) -> Result<ConnectResponse> {
        self.send_frame(&req.encode()).await?;
        let payload = self.read_frame().await?.ok_or_else(|| anyhow!("connection closed before ConnectResponse"))?;
        let resp = ConnectResponse::decode(&payload)?;
        self.session_id = resp.session_id;
        self.passwd = resp.passwd.clone();
        self.timeout_ms = resp.timeout_ms;
        Ok(resp)
    }

    /// Writes bytes as they are.
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Writes one framed payload.
    pub async fn send_frame(&mut self, payload: &[u8]) -> Result<()> {
        self.send_bytes(&frame(payload)).await
    }

    /// The next xid this connection will use.
    pub fn alloc_xid(&mut self) -> i32 {
        let x = self.next_xid;
        self.next_xid += 1;
        x
    }

    /// Sends a request with a fresh xid, returning the xid.
    pub async fn send(&mut self, opcode: i32, body: &[u8]) -> Result<i32> {
        let xid = self.alloc_xid();
        self.send_frame(&request(xid, opcode, body)).await?;
        Ok(xid)
    }

    /// Reads one frame; `None` when the server closed the connection (EOF or reset).
    pub async fn read_frame(&mut self) -> Result<Option<Vec<u8>>> {
        self.read_frame_for(DEADLINE).await
    }

    /// As [`Raw::read_frame`] with another deadline.
    pub async fn read_frame_for(&mut self, limit: Duration) -> Result<Option<Vec<u8>>> {
        let stream = &mut self.stream;
        super::within_for(limit, "a frame from the server", async move {
            let mut len = [0u8; 4];
            match stream.read_exact(&mut len).await {
                Ok(_) => {}
                Err(e) if closed(&e) => return Ok(None),
                Err(e) => return Err(e.into()),
            }
            let n = i32::from_be_bytes(len);
            ensure!((0..=0xfffff).contains(&n), "server sent frame length {n}");
            let mut buf = vec![0u8; n as usize];
            match stream.read_exact(&mut buf).await {
                Ok(_) => Ok(Some(buf)),
                Err(e) if closed(&e) => bail!("server closed the connection inside a {n}-byte frame"),
                Err(e) => Err(e.into()),
            }
        })
        .await?
    }

    /// Reads the next packet; fails if the connection closed.
    pub async fn packet(&mut self) -> Result<Packet> {
        let f = self.read_frame().await?.ok_or_else(|| anyhow!("server closed the connection"))?;
        parse_packet(&f)
    }

    /// Reads packets until the reply with `xid`, returning it and the notifications before it.
    /// Fails on a reply with another xid.
    pub async fn reply_to(&mut self, xid: i32) -> Result<(Reply, Vec<Notification>)> {
        let mut notes = Vec::new();
        loop {
            match self.packet().await? {
                Packet::Notification(n) => notes.push(n),
                Packet::Reply(r) if r.xid == xid => return Ok((r, notes)),
                Packet::Reply(r) => bail!("expected the reply to xid {xid}, got {r:?}"),
            }
        }
    }

    /// Sends a request and waits for its reply, failing if a notification comes first.
    pub async fn call(&mut self, opcode: i32, body: &[u8]) -> Result<Reply> {
        let xid = self.send(opcode, body).await?;
        let (r, notes) = self.reply_to(xid).await?;
        ensure!(notes.is_empty(), "unexpected notifications before the reply to opcode {opcode}: {notes:?}");
        Ok(r)
    }

    /// Sends a request and returns its reply with the notifications that came before it.
    pub async fn call_collect(&mut self, opcode: i32, body: &[u8]) -> Result<(Reply, Vec<Notification>)> {
        let xid = self.send(opcode, body).await?;
        self.reply_to(xid).await
    }

    /// Reads the next packet, which must be a notification.
    pub async fn notification(&mut self) -> Result<Notification> {
        match self.packet().await? {
            Packet::Notification(n) => Ok(n),
            Packet::Reply(r) => bail!("expected a notification, got {r:?}"),
        }
    }

    /// Reads until the server closes the connection, returning the frames it sent first.
    pub async fn expect_closed(&mut self) -> Result<Vec<Vec<u8>>> {
        let mut frames = Vec::new();
        loop {
            match self.read_frame().await.context("waiting for the server to close the connection")? {
                None => return Ok(frames),
                Some(f) => frames.push(f),
            }
        }
    }

    /// Shuts down the write side (the server sees EOF) without closing the read side.
    pub async fn shutdown_write(&mut self) -> Result<()> {
        self.stream.shutdown().await?;
        Ok(())
    }
}

fn closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe)
}
