//! A raw ZooKeeper-wire client that can pipeline: it sends requests without waiting for their
//! replies, and splits into a sending and a receiving half that run side by side. It keeps no
//! pending-request table and follows no protocol rule the caller does not ask for, so a caller
//! can behave as badly as it likes (never read, flood, drop the socket mid-request).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use tokio::io::{AsyncBufRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpSocket;

use super::wire::{frame, xid, ConnectRequest, ConnectResponse, Packet, Request};

/// How a [`RawClient`] connects.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The local address to connect from (any address of 127.0.0.0/8 works on loopback), so
    /// that clients can be spread over several source addresses; `None` lets the kernel choose.
    pub source: Option<IpAddr>,
    /// Caps the socket's receive buffer (and so the window the server may fill) when set; a
    /// client that never reads then makes the server hold its replies sooner.
    pub recv_buffer_bytes: Option<u32>,
    /// The session timeout asked for.
    pub session_timeout_ms: i32,
    /// The largest frame accepted from the server. Larger ones fail the read: a client must
    /// not be made to allocate whatever a length prefix says.
    pub max_frame_bytes: usize,
    /// How long the TCP connect and the handshake may take together.
    pub handshake_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            source: None,
            recv_buffer_bytes: None,
            session_timeout_ms: 10_000,
            max_frame_bytes: 0xfffff,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A session the server granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantedSession {
    /// Its id.
    pub id: i64,
    /// Its password.
    pub passwd: Vec<u8>,
    /// The negotiated timeout.
    pub timeout_ms: i32,
}

/// A connection with an established session; see the module documentation.
pub struct RawClient {
    /// The sending half.
    pub sender: RawSender,
    /// The receiving half.
    pub receiver: RawReceiver,
    /// The session the handshake established.
    pub session: GrantedSession,
}

/// The sending half of a [`RawClient`]: allocates xids and writes whole frames.
pub struct RawSender {
    wr: OwnedWriteHalf,
    next_xid: i32,
}

/// The receiving half of a [`RawClient`].
pub struct RawReceiver {
    rd: BufReader<OwnedReadHalf>,
    max_frame_bytes: usize,
}

impl RawClient {
    /// Connects to `addr` and establishes a new session. Fails if the connection is refused or
    /// reset, the handshake takes longer than the options allow, or the server refuses the
    /// session.
    pub async fn connect(addr: SocketAddr, opts: &ConnectOptions) -> Result<RawClient> {
        tokio::time::timeout(opts.handshake_timeout, Self::connect_inner(addr, opts))
            .await
            .with_context(|| format!("no session from {addr} within {:?}", opts.handshake_timeout))?
    }

    async fn connect_inner(addr: SocketAddr, opts: &ConnectOptions) -> Result<RawClient> {
        let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
        if let Some(bytes) = opts.recv_buffer_bytes {
            socket.set_recv_buffer_size(bytes)?;
        }
        if let Some(ip) = opts.source {
            socket.bind(SocketAddr::new(ip, 0)).with_context(|| format!("binding a socket to {ip}"))?;
        }
        let stream = socket.connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let mut sender = RawSender { wr, next_xid: 1 };
        let mut receiver = RawReceiver { rd: BufReader::new(rd), max_frame_bytes: opts.max_frame_bytes };
        sender.write_frames(&frame(&ConnectRequest::new_session(opts.session_timeout_ms).encode())).await?;
        let payload =
            receiver.read_payload().await?.context("the server closed the connection before its ConnectResponse")?;
        let resp = ConnectResponse::decode(&payload)?;
        ensure!(resp.granted(), "the server refused a new session: {resp:?}");
        let session = GrantedSession { id: resp.session_id, passwd: resp.passwd, timeout_ms: resp.timeout_ms };
        Ok(RawClient { sender, receiver, session })
    }

    /// Sends `req` and waits for its reply, returning `(err, body)`; notifications that arrive
    /// first are skipped. Fails on a reply to another xid (the server broke request order) or a
    /// closed connection.
    pub async fn call(&mut self, req: &Request) -> Result<(i32, Vec<u8>)> {
        let sent = self.sender.send(req).await?;
        loop {
            match self.receiver.next().await? {
                None => bail!("the server closed the connection before replying to xid {sent}"),
                Some(Packet::Notification { .. }) => continue,
                Some(Packet::Reply { xid, err, body, .. }) => {
                    ensure!(xid == sent, "the reply to xid {sent} came as xid {xid}: replies out of order");
                    return Ok((err, body));
                }
            }
        }
    }
}

impl RawSender {
    /// The xid the next request gets.
    fn alloc_xid(&mut self) -> i32 {
        let xid = self.next_xid;
        // Wrapping past i32::MAX would reach the special negative xids; a flood does not send
        // two billion requests on one connection, but it must not corrupt the stream if it did.
        self.next_xid = if xid == i32::MAX { 1 } else { xid + 1 };
        xid
    }

    /// Encodes `req` with a fresh xid into `out` (length-prefixed), returning the xid its
    /// reply will carry ([`xid::PING`] for a ping).
    pub fn encode_into(&mut self, req: &Request, out: &mut Vec<u8>) -> i32 {
        let xid = if matches!(req, Request::Ping) { xid::PING } else { self.alloc_xid() };
        out.extend_from_slice(&frame(&req.encode(xid)));
        xid
    }

    /// Sends one request, returning its xid.
    pub async fn send(&mut self, req: &Request) -> Result<i32> {
        let mut out = Vec::new();
        let xid = self.encode_into(req, &mut out);
        self.write_frames(&out).await?;
        Ok(xid)
    }

    /// Writes already framed bytes (several frames at once, for a pipelined burst).
    pub async fn write_frames(&mut self, bytes: &[u8]) -> Result<()> {
        self.wr.write_all(bytes).await.context("writing to the server")
    }
}

impl RawReceiver {
    /// The next packet; `None` when the server closed the connection.
    pub async fn next(&mut self) -> Result<Option<Packet>> {
        match self.read_payload().await? {
            None => Ok(None),
            Some(payload) => Packet::decode(&payload).map(Some),
        }
    }

    /// The next packet if the whole of it has already been read from the socket, without
    /// reading more: a pipelining caller takes every reply one read brought before it sends
    /// again, and so sends the requests that replace them in one write.
    pub fn next_buffered(&mut self) -> Result<Option<Packet>> {
        match whole_frame(self.rd.buffer(), self.max_frame_bytes)? {
            None => Ok(None),
            Some((packet, used)) => {
                std::pin::Pin::new(&mut self.rd).consume(used);
                Ok(Some(packet))
            }
        }
    }

    async fn read_payload(&mut self) -> Result<Option<Vec<u8>>> {
        let mut len = [0u8; 4];
        match self.rd.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if closed(&e) => return Ok(None),
            Err(e) => return Err(e).context("reading from the server"),
        }
        let len = u32::from_be_bytes(len) as usize;
        ensure!(len <= self.max_frame_bytes, "the server sent a {len}-byte frame (limit {})", self.max_frame_bytes);
        let mut payload = vec![0u8; len];
        self.rd.read_exact(&mut payload).await.context("reading a frame's body")?;
        Ok(Some(payload))
    }
}

/// The first packet of `buffered` and the bytes it takes, if a whole frame is there; a length
/// over `max_frame_bytes` fails at once, before its body has arrived.
fn whole_frame(buffered: &[u8], max_frame_bytes: usize) -> Result<Option<(Packet, usize)>> {
    let Some(len) = buffered.get(..4) else { return Ok(None) };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    ensure!(len <= max_frame_bytes, "the server sent a {len}-byte frame (limit {max_frame_bytes})");
    let Some(payload) = buffered.get(4..4 + len) else { return Ok(None) };
    Ok(Some((Packet::decode(payload)?, 4 + len)))
}

/// Whether an I/O error means the peer closed or reset the connection.
pub(crate) fn closed(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(xid: i32, err: i32, body: &[u8]) -> Vec<u8> {
        let mut payload = Vec::new();
        payload.extend_from_slice(&xid.to_be_bytes());
        payload.extend_from_slice(&7i64.to_be_bytes());
        payload.extend_from_slice(&err.to_be_bytes());
        payload.extend_from_slice(body);
        frame(&payload)
    }

    #[test]
    fn a_buffered_frame_is_taken_only_when_whole() {
        let mut two = reply(1, 0, b"abc");
        let first_len = two.len();
        two.extend(reply(2, -101, b""));
        let (packet, used) = whole_frame(&two, 1024).unwrap().expect("the first frame is whole");
        assert_eq!(used, first_len);
        assert!(matches!(packet, Packet::Reply { xid: 1, err: 0, ref body, .. } if body == b"abc"), "{packet:?}");
        let (packet, used) = whole_frame(&two[first_len..], 1024).unwrap().expect("the second frame is whole");
        assert_eq!(used, two.len() - first_len);
        assert!(matches!(packet, Packet::Reply { xid: 2, err: -101, .. }), "{packet:?}");
        // Short of the length word, or of the body: nothing yet, and nothing consumed.
        for cut in [0, 3, 4, first_len - 1] {
            assert!(whole_frame(&two[..cut], 1024).unwrap().is_none(), "cut at {cut}");
        }
    }

    #[test]
    fn a_buffered_length_over_the_limit_fails_before_its_body_comes() {
        let claim = 5_000u32.to_be_bytes();
        let err = whole_frame(&claim, 1024).unwrap_err().to_string();
        assert!(err.contains("5000-byte frame (limit 1024)"), "{err}");
    }
}
