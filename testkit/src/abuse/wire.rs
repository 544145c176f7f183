//! The few ZooKeeper jute records the load generator speaks, encoded and decoded here on their
//! own so that what goes on the wire is what the protocol says, not what the server under test
//! happens to expect.
//!
//! Encoding (Apache ZooKeeper's `BinaryOutputArchive`): `int` 4 bytes and `long` 8 bytes
//! big-endian, `boolean` one byte, `buffer`/`ustring` an `int` length then the bytes (-1 for
//! null), `vector` an `int` count then the elements. Every packet either way is a 4-byte
//! big-endian length and a payload. The first packet of a connection is a `ConnectRequest`
//! (answered by a `ConnectResponse`) without a header; after it a request is
//! `RequestHeader{xid, type}` + body and a reply `ReplyHeader{xid, zxid, err}` + body, the body
//! present only when `err` is 0. Notifications come as replies with xid -1 and a
//! `WatcherEvent{type, state, path}` body.

use anyhow::{anyhow, bail, ensure, Result};

/// The opcodes the load generator sends (ZooKeeper's `ZooDefs.OpCode`).
pub mod opcode {
    /// create.
    pub const CREATE: i32 = 1;
    /// exists.
    pub const EXISTS: i32 = 3;
    /// getData.
    pub const GET_DATA: i32 = 4;
    /// setData.
    pub const SET_DATA: i32 = 5;
    /// ping.
    pub const PING: i32 = 11;
    /// multiRead.
    pub const MULTI_READ: i32 = 22;
    /// closeSession.
    pub const CLOSE_SESSION: i32 = -11;
}

/// The special xids of ZooKeeper's client.
pub mod xid {
    /// A watch notification.
    pub const NOTIFICATION: i32 = -1;
    /// A ping and its reply.
    pub const PING: i32 = -2;
}

/// Error codes the load generator tells apart (ZooKeeper's `KeeperException.Code`).
pub mod code {
    /// Success.
    pub const OK: i32 = 0;
    /// The node does not exist.
    pub const NO_NODE: i32 = -101;
    /// The node already exists.
    pub const NODE_EXISTS: i32 = -110;
}

/// `CreateMode` flags.
pub mod create_mode {
    /// A persistent node.
    pub const PERSISTENT: i32 = 0;
    /// An ephemeral node.
    pub const EPHEMERAL: i32 = 1;
    /// An ephemeral node with a sequence suffix.
    pub const EPHEMERAL_SEQUENTIAL: i32 = 3;
}

/// Bytes a request adds around its path and data: header (8), path length (4), data length
/// (4), an `OPEN_ACL_UNSAFE` vector (4 + 4 + 4 + 5 + 4 + 6 = 27) and flags (4), rounded up. A
/// path of `max_packet_bytes - REQUEST_OVERHEAD` bytes keeps any request of this module within
/// a packet of `max_packet_bytes`.
pub const REQUEST_OVERHEAD: usize = 64;

/// What a `getData` result adds to its data inside a `multiRead` reply: the `MultiHeader`
/// (4 + 1 + 4), the buffer length (4) and the `Stat` (68).
pub const MULTI_READ_RESULT_OVERHEAD: usize = 81;

/// Appends jute fields to a payload.
#[derive(Debug, Default, Clone)]
pub struct JuteWriter(Vec<u8>);

impl JuteWriter {
    /// An empty payload.
    pub fn new() -> Self {
        JuteWriter(Vec::new())
    }

    /// An `int`.
    pub fn int(&mut self, v: i32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A `long`.
    pub fn long(&mut self, v: i64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A `boolean`.
    pub fn boolean(&mut self, v: bool) -> &mut Self {
        self.0.push(u8::from(v));
        self
    }

    /// A non-null `buffer` (or `ustring`, which is the same bytes).
    pub fn buffer(&mut self, v: &[u8]) -> &mut Self {
        let len = i32::try_from(v.len()).expect("a jute buffer is shorter than 2 GiB");
        self.int(len);
        self.0.extend_from_slice(v);
        self
    }

    /// A `ustring`.
    pub fn string(&mut self, v: &str) -> &mut Self {
        self.buffer(v.as_bytes())
    }

    /// `vector<ACL>` of ZooKeeper's `OPEN_ACL_UNSAFE`: `world:anyone` with every permission.
    pub fn open_acl(&mut self) -> &mut Self {
        self.int(1).int(31).string("world").string("anyone")
    }

    /// The payload so far.
    pub fn into_payload(self) -> Vec<u8> {
        self.0
    }
}

/// Reads jute fields from a payload.
pub struct JuteReader<'a> {
    rest: &'a [u8],
}

impl<'a> JuteReader<'a> {
    /// Reads `payload` from its start.
    pub fn new(payload: &'a [u8]) -> Self {
        JuteReader { rest: payload }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        ensure!(self.rest.len() >= n, "record truncated: needed {n} bytes, {} left", self.rest.len());
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    /// An `int`.
    pub fn int(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into()?))
    }

    /// A `long`.
    pub fn long(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into()?))
    }

    /// A `boolean`.
    pub fn boolean(&mut self) -> Result<bool> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => bail!("boolean byte {b}"),
        }
    }

    /// A `buffer`, `None` for null.
    pub fn buffer(&mut self) -> Result<Option<&'a [u8]>> {
        let len = self.int()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| anyhow!("negative buffer length {len}"))?;
        Ok(Some(self.take(len)?))
    }

    /// A non-null `ustring`.
    pub fn string(&mut self) -> Result<String> {
        let bytes = self.buffer()?.ok_or_else(|| anyhow!("null string"))?;
        Ok(String::from_utf8(bytes.to_vec())?)
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }
}

/// The first packet of a connection, as zookeeper-client sends it: protocol version 0, and the
/// trailing read-only byte included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The newest zxid the client has seen.
    pub last_zxid_seen: i64,
    /// The session timeout asked for, in ms.
    pub timeout_ms: i32,
    /// 0 for a new session.
    pub session_id: i64,
    /// The session's password (16 zero bytes for a new session).
    pub passwd: Vec<u8>,
}

impl ConnectRequest {
    /// A request for a new session.
    pub fn new_session(timeout_ms: i32) -> Self {
        ConnectRequest { last_zxid_seen: 0, timeout_ms, session_id: 0, passwd: vec![0; 16] }
    }

    /// The payload, without the length prefix.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = JuteWriter::new();
        w.int(0).long(self.last_zxid_seen).int(self.timeout_ms).long(self.session_id).buffer(&self.passwd);
        w.boolean(false);
        w.into_payload()
    }
}

/// The server's answer to a [`ConnectRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectResponse {
    /// The negotiated timeout; 0 or less means the session is expired (or was refused).
    pub timeout_ms: i32,
    /// The session id; 0 when refused.
    pub session_id: i64,
    /// The session's password.
    pub passwd: Vec<u8>,
}

impl ConnectResponse {
    /// Decodes a payload; the trailing read-only byte is optional, as servers send it only to
    /// clients that sent one.
    pub fn decode(payload: &[u8]) -> Result<Self> {
        let mut r = JuteReader::new(payload);
        let protocol_version = r.int()?;
        ensure!(protocol_version == 0, "server speaks protocol version {protocol_version}, not 0");
        let timeout_ms = r.int()?;
        let session_id = r.long()?;
        let passwd = r.buffer()?.unwrap_or_default().to_vec();
        if r.remaining() > 0 {
            r.boolean()?;
        }
        ensure!(r.remaining() == 0, "{} bytes after the ConnectResponse", r.remaining());
        Ok(ConnectResponse { timeout_ms, session_id, passwd })
    }

    /// Whether the server granted the session.
    pub fn granted(&self) -> bool {
        self.session_id != 0 && self.timeout_ms > 0
    }
}

/// A request after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// create, with `OPEN_ACL_UNSAFE`.
    Create {
        /// Node path.
        path: String,
        /// Node data.
        data: Vec<u8>,
        /// One of [`create_mode`].
        flags: i32,
    },
    /// exists.
    Exists {
        /// Node path.
        path: String,
        /// Leave a watch.
        watch: bool,
    },
    /// getData.
    GetData {
        /// Node path.
        path: String,
        /// Leave a watch.
        watch: bool,
    },
    /// setData at any version.
    SetData {
        /// Node path.
        path: String,
        /// New data.
        data: Vec<u8>,
    },
    /// multiRead of one getData per path.
    MultiReadData {
        /// The nodes to read.
        paths: Vec<String>,
    },
    /// ping (sent with xid -2 whatever xid the caller gives).
    Ping,
    /// closeSession.
    CloseSession,
}

impl Request {
    /// Its opcode.
    pub fn opcode(&self) -> i32 {
        match self {
            Request::Create { .. } => opcode::CREATE,
            Request::Exists { .. } => opcode::EXISTS,
            Request::GetData { .. } => opcode::GET_DATA,
            Request::SetData { .. } => opcode::SET_DATA,
            Request::MultiReadData { .. } => opcode::MULTI_READ,
            Request::Ping => opcode::PING,
            Request::CloseSession => opcode::CLOSE_SESSION,
        }
    }

    /// The payload with header `xid` (pings always carry [`xid::PING`]), without the length
    /// prefix.
    pub fn encode(&self, xid: i32) -> Vec<u8> {
        let mut w = JuteWriter::new();
        let xid = if matches!(self, Request::Ping) { xid::PING } else { xid };
        w.int(xid).int(self.opcode());
        match self {
            Request::Create { path, data, flags } => {
                w.string(path).buffer(data).open_acl().int(*flags);
            }
            Request::Exists { path, watch } | Request::GetData { path, watch } => {
                w.string(path).boolean(*watch);
            }
            Request::SetData { path, data } => {
                w.string(path).buffer(data).int(-1);
            }
            Request::MultiReadData { paths } => {
                // Each op: MultiHeader{type, done = false, err = -1} and a GetDataRequest;
                // the end: MultiHeader{-1, true, -1}.
                for path in paths {
                    w.int(opcode::GET_DATA).boolean(false).int(-1).string(path).boolean(false);
                }
                w.int(-1).boolean(true).int(-1);
            }
            Request::Ping | Request::CloseSession => {}
        }
        w.into_payload()
    }
}

/// Prepends the 4-byte length to a payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(payload.len() + 4);
    let len = u32::try_from(payload.len()).expect("a frame is shorter than 4 GiB");
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(payload);
    framed
}

/// A packet from the server after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// The reply to a request.
    Reply {
        /// The request's xid ([`xid::PING`] for a ping).
        xid: i32,
        /// The server's zxid.
        zxid: i64,
        /// 0 or a ZooKeeper error code.
        err: i32,
        /// The body, empty when `err` is not 0.
        body: Vec<u8>,
    },
    /// A watch notification.
    Notification {
        /// The event type.
        event: i32,
        /// The node.
        path: String,
    },
}

impl Packet {
    /// Decodes a post-handshake payload.
    pub fn decode(payload: &[u8]) -> Result<Packet> {
        let mut r = JuteReader::new(payload);
        let xid = r.int()?;
        let zxid = r.long()?;
        let err = r.int()?;
        if xid == xid::NOTIFICATION {
            let event = r.int()?;
            let _state = r.int()?;
            let path = r.string()?;
            return Ok(Packet::Notification { event, path });
        }
        Ok(Packet::Reply { xid, zxid, err, body: payload[16..].to_vec() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden bytes, written out by hand from the jute layouts: a change to the encoder that
    /// moves a byte fails here before it confuses a server.
    #[test]
    fn requests_encode_to_zookeepers_bytes() {
        let connect = ConnectRequest::new_session(6000).encode();
        let mut expected = vec![0, 0, 0, 0]; // protocolVersion
        expected.extend_from_slice(&[0; 8]); // lastZxidSeen
        expected.extend_from_slice(&6000i32.to_be_bytes()); // timeOut
        expected.extend_from_slice(&[0; 8]); // sessionId
        expected.extend_from_slice(&[0, 0, 0, 16]); // passwd length
        expected.extend_from_slice(&[0; 16]);
        expected.push(0); // readOnly
        assert_eq!(connect, expected);

        let get = Request::GetData { path: "/a".into(), watch: true }.encode(7);
        assert_eq!(get, [0, 0, 0, 7, 0, 0, 0, 4, 0, 0, 0, 2, b'/', b'a', 1]);

        let set = Request::SetData { path: "/a".into(), data: vec![9] }.encode(8);
        assert_eq!(set, [0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0, 2, b'/', b'a', 0, 0, 0, 1, 9, 255, 255, 255, 255]);

        let create = Request::Create { path: "/a".into(), data: vec![], flags: create_mode::EPHEMERAL }.encode(1);
        let mut expected = vec![0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, b'/', b'a', 0, 0, 0, 0];
        expected.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 31, 0, 0, 0, 5]);
        expected.extend_from_slice(b"world");
        expected.extend_from_slice(&[0, 0, 0, 6]);
        expected.extend_from_slice(b"anyone");
        expected.extend_from_slice(&[0, 0, 0, 1]);
        assert_eq!(create, expected);
        assert!(create.len() - 2 <= REQUEST_OVERHEAD, "REQUEST_OVERHEAD covers a create's fixed fields");

        let multi = Request::MultiReadData { paths: vec!["/a".into()] }.encode(3);
        let mut expected = vec![0, 0, 0, 3, 0, 0, 0, 22];
        expected.extend_from_slice(&[0, 0, 0, 4, 0, 255, 255, 255, 255, 0, 0, 0, 2, b'/', b'a', 0]);
        expected.extend_from_slice(&[255, 255, 255, 255, 1, 255, 255, 255, 255]);
        assert_eq!(multi, expected);

        assert_eq!(Request::Ping.encode(5), [255, 255, 255, 254, 0, 0, 0, 11]);
        assert_eq!(frame(&[1, 2]), [0, 0, 0, 2, 1, 2]);
    }

    #[test]
    fn replies_and_notifications_decode() {
        let mut reply = vec![0, 0, 0, 7];
        reply.extend_from_slice(&5i64.to_be_bytes());
        reply.extend_from_slice(&[0, 0, 0, 0, 0xaa]);
        assert_eq!(Packet::decode(&reply).unwrap(), Packet::Reply { xid: 7, zxid: 5, err: 0, body: vec![0xaa] });

        let mut note = (-1i32).to_be_bytes().to_vec();
        note.extend_from_slice(&(-1i64).to_be_bytes());
        note.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0, 2, b'/', b'h']);
        assert_eq!(Packet::decode(&note).unwrap(), Packet::Notification { event: 3, path: "/h".into() });

        let mut connect = vec![0, 0, 0, 0, 0, 0, 0x17, 0x70];
        connect.extend_from_slice(&0x42i64.to_be_bytes());
        connect.extend_from_slice(&[0, 0, 0, 1, 9]);
        let without_ro = ConnectResponse::decode(&connect).unwrap();
        assert_eq!(without_ro, ConnectResponse { timeout_ms: 6000, session_id: 0x42, passwd: vec![9] });
        connect.push(0);
        assert_eq!(ConnectResponse::decode(&connect).unwrap(), without_ro);
        assert!(without_ro.granted());
    }
}
