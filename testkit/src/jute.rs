//! ZooKeeper's jute records, encoded and decoded independently of the coordinator's own codec,
//! so that tests and the load generator check the bytes on the wire rather than the server's idea
//! of them.
//!
//! Framing: 4-byte big-endian length + payload. ConnectRequest = int protocolVersion, long
//! lastZxidSeen, int timeOut, long sessionId, buffer passwd, optional bool readOnly. Request =
//! int xid, int type, body. Reply = int xid, long zxid, int err, body only if err == 0; a
//! notification is a reply with xid -1 and a `WatcherEvent{type, state, path}` body.
//!
//! Constants, records and their fields carry Apache ZooKeeper's names (`ZooDefs.OpCode`,
//! `KeeperException.Code`, `Stat`, ...), which document them; the rest is documented here.
#![allow(missing_docs)]

use anyhow::{anyhow, bail, ensure, Result};

/// Opcodes (ZooDefs.OpCode).
pub mod op {
    pub const CREATE: i32 = 1;
    pub const DELETE: i32 = 2;
    pub const EXISTS: i32 = 3;
    pub const GET_DATA: i32 = 4;
    pub const SET_DATA: i32 = 5;
    pub const GET_ACL: i32 = 6;
    pub const SET_ACL: i32 = 7;
    pub const GET_CHILDREN: i32 = 8;
    pub const SYNC: i32 = 9;
    pub const PING: i32 = 11;
    pub const GET_CHILDREN2: i32 = 12;
    pub const CHECK: i32 = 13;
    pub const MULTI: i32 = 14;
    pub const CREATE2: i32 = 15;
    pub const RECONFIG: i32 = 16;
    pub const CHECK_WATCHES: i32 = 17;
    pub const REMOVE_WATCHES: i32 = 18;
    pub const CREATE_CONTAINER: i32 = 19;
    pub const DELETE_CONTAINER: i32 = 20;
    pub const CREATE_TTL: i32 = 21;
    pub const MULTI_READ: i32 = 22;
    pub const AUTH: i32 = 100;
    pub const SET_WATCHES: i32 = 101;
    pub const SASL: i32 = 102;
    pub const GET_EPHEMERALS: i32 = 103;
    pub const GET_ALL_CHILDREN_NUMBER: i32 = 104;
    pub const SET_WATCHES2: i32 = 105;
    pub const ADD_WATCH: i32 = 106;
    pub const WHO_AM_I: i32 = 107;
    pub const CLOSE_SESSION: i32 = -11;
    pub const ERROR: i32 = -1;
}

/// Error codes (KeeperException.Code).
pub mod err {
    pub const OK: i32 = 0;
    pub const RUNTIME_INCONSISTENCY: i32 = -2;
    pub const MARSHALLING_ERROR: i32 = -5;
    pub const UNIMPLEMENTED: i32 = -6;
    pub const BAD_ARGUMENTS: i32 = -8;
    pub const NO_NODE: i32 = -101;
    pub const BAD_VERSION: i32 = -103;
    pub const NODE_EXISTS: i32 = -110;
    pub const NOT_EMPTY: i32 = -111;
    pub const SESSION_EXPIRED: i32 = -112;
    pub const NO_WATCHER: i32 = -121;
}

/// `CreateMode` flags.
pub mod create_mode {
    pub const PERSISTENT: i32 = 0;
    pub const EPHEMERAL: i32 = 1;
    pub const PERSISTENT_SEQUENTIAL: i32 = 2;
    pub const EPHEMERAL_SEQUENTIAL: i32 = 3;
}

/// Watch event types.
pub mod ev {
    pub const NODE_CREATED: i32 = 1;
    pub const NODE_DELETED: i32 = 2;
    pub const NODE_DATA_CHANGED: i32 = 3;
    pub const NODE_CHILDREN_CHANGED: i32 = 4;
}

/// Special xids.
pub mod xid {
    pub const NOTIFICATION: i32 = -1;
    pub const PING: i32 = -2;
    pub const AUTH: i32 = -4;
    pub const SET_WATCHES: i32 = -8;
}

/// A jute record under construction.
#[derive(Debug, Default, Clone)]
pub struct Jute(pub Vec<u8>);

impl Jute {
    pub fn new() -> Self {
        Jute(Vec::new())
    }
    pub fn int(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn long(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn boolean(mut self, v: bool) -> Self {
        self.0.push(v as u8);
        self
    }
    pub fn buffer(self, v: Option<&[u8]>) -> Self {
        match v {
            None => self.int(-1),
            Some(b) => {
                let mut s = self.int(b.len() as i32);
                s.0.extend_from_slice(b);
                s
            }
        }
    }
    pub fn string(self, v: &str) -> Self {
        self.buffer(Some(v.as_bytes()))
    }
    pub fn strings(self, v: &[&str]) -> Self {
        let mut s = self.int(v.len() as i32);
        for x in v {
            s = s.string(x);
        }
        s
    }
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// `vector<ACL>` holding `world:anyone` with every permission.
    pub fn open_acl(self) -> Self {
        self.int(1).int(31).string("world").string("anyone")
    }
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

/// Reads jute fields.
pub struct Rd<'a> {
    b: &'a [u8],
}

impl<'a> Rd<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Rd { b }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        ensure!(self.b.len() >= n, "record truncated: needed {n} bytes, {} left", self.b.len());
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    pub fn int(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.take(4)?.try_into()?))
    }
    pub fn long(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.take(8)?.try_into()?))
    }
    pub fn boolean(&mut self) -> Result<bool> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => bail!("boolean byte {b}"),
        }
    }
    pub fn buffer(&mut self) -> Result<Option<Vec<u8>>> {
        let n = self.int()?;
        if n == -1 {
            return Ok(None);
        }
        ensure!(n >= 0, "negative length {n}");
        Ok(Some(self.take(n as usize)?.to_vec()))
    }
    pub fn string(&mut self) -> Result<String> {
        let b = self.buffer()?.ok_or_else(|| anyhow!("null string"))?;
        Ok(String::from_utf8(b)?)
    }
    pub fn strings(&mut self) -> Result<Vec<String>> {
        let n = self.int()?;
        ensure!(n >= 0, "vector count {n}");
        (0..n).map(|_| self.string()).collect()
    }
    pub fn stat(&mut self) -> Result<RawStat> {
        Ok(RawStat {
            czxid: self.long()?,
            mzxid: self.long()?,
            ctime: self.long()?,
            mtime: self.long()?,
            version: self.int()?,
            cversion: self.int()?,
            aversion: self.int()?,
            ephemeral_owner: self.long()?,
            data_length: self.int()?,
            num_children: self.int()?,
            pzxid: self.long()?,
        })
    }
    pub fn remaining(&self) -> usize {
        self.b.len()
    }
    /// Fails unless everything was read.
    pub fn end(&self) -> Result<()> {
        ensure!(self.b.is_empty(), "{} unexpected trailing bytes: {:02x?}", self.b.len(), self.b);
        Ok(())
    }
}

/// A Stat record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawStat {
    pub czxid: i64,
    pub mzxid: i64,
    pub ctime: i64,
    pub mtime: i64,
    pub version: i32,
    pub cversion: i32,
    pub aversion: i32,
    pub ephemeral_owner: i64,
    pub data_length: i32,
    pub num_children: i32,
    pub pzxid: i64,
}

/// The first packet of a connection.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    pub protocol_version: i32,
    pub last_zxid_seen: i64,
    pub timeout_ms: i32,
    pub session_id: i64,
    pub passwd: Vec<u8>,
    pub read_only: Option<bool>,
}

impl ConnectRequest {
    /// A new session request as zookeeper-client sends it (readOnly byte included).
    pub fn new_session(timeout_ms: i32) -> Self {
        ConnectRequest {
            protocol_version: 0,
            last_zxid_seen: 0,
            timeout_ms,
            session_id: 0,
            passwd: vec![0; 16],
            read_only: Some(false),
        }
    }

    /// A request to resume a session.
    pub fn resume(session_id: i64, passwd: &[u8], timeout_ms: i32) -> Self {
        ConnectRequest { session_id, passwd: passwd.to_vec(), ..Self::new_session(timeout_ms) }
    }

    /// The payload (without the length prefix).
    pub fn encode(&self) -> Vec<u8> {
        let j = Jute::new()
            .int(self.protocol_version)
            .long(self.last_zxid_seen)
            .int(self.timeout_ms)
            .long(self.session_id)
            .buffer(Some(&self.passwd));
        match self.read_only {
            Some(ro) => j.boolean(ro).into_vec(),
            None => j.into_vec(),
        }
    }
}

/// A decoded ConnectResponse.
#[derive(Debug, Clone)]
pub struct ConnectResponse {
    pub protocol_version: i32,
    pub timeout_ms: i32,
    pub session_id: i64,
    pub passwd: Vec<u8>,
    pub read_only: Option<bool>,
    /// Length of the payload (36 without the readOnly byte, 37 with it, for a 16-byte passwd).
    pub payload_len: usize,
}

impl ConnectResponse {
    pub fn decode(payload: &[u8]) -> Result<Self> {
        let mut r = Rd::new(payload);
        let protocol_version = r.int()?;
        let timeout_ms = r.int()?;
        let session_id = r.long()?;
        let passwd = r.buffer()?.unwrap_or_default();
        let read_only = if r.remaining() > 0 { Some(r.boolean()?) } else { None };
        r.end()?;
        Ok(ConnectResponse { protocol_version, timeout_ms, session_id, passwd, read_only, payload_len: payload.len() })
    }

    /// Whether the server granted the session (a refusal carries session id 0 or no timeout).
    pub fn granted(&self) -> bool {
        self.session_id != 0 && self.timeout_ms > 0
    }
}

/// A reply to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub xid: i32,
    pub zxid: i64,
    pub err: i32,
    pub body: Vec<u8>,
}

impl Reply {
    /// Fails unless the reply is a success.
    pub fn ok(&self) -> Result<&[u8]> {
        ensure!(self.err == 0, "reply xid {} failed with err {}", self.xid, self.err);
        Ok(&self.body)
    }
    pub fn rd(&self) -> Rd<'_> {
        Rd::new(&self.body)
    }
}

/// A watch notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub zxid: i64,
    pub kind: i32,
    pub state: i32,
    pub path: String,
}

/// Anything the server sends after the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Reply(Reply),
    Notification(Notification),
}

/// Parses a post-handshake frame.
pub fn parse_packet(frame: &[u8]) -> Result<Packet> {
    let mut r = Rd::new(frame);
    let xid = r.int()?;
    let zxid = r.long()?;
    let err = r.int()?;
    if xid == xid::NOTIFICATION {
        ensure!(err == 0, "notification with err {err}");
        let kind = r.int()?;
        let state = r.int()?;
        let path = r.string()?;
        r.end()?;
        return Ok(Packet::Notification(Notification { zxid, kind, state, path }));
    }
    let body = frame[16..].to_vec();
    if err != 0 {
        ensure!(body.is_empty(), "error reply (err {err}) carries a {}-byte body", body.len());
    }
    Ok(Packet::Reply(Reply { xid, zxid, err, body }))
}

/// Frames a payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as i32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// A request payload: header then body.
pub fn request(xid: i32, opcode: i32, body: &[u8]) -> Vec<u8> {
    Jute::new().int(xid).int(opcode).bytes(body).into_vec()
}

/// Request bodies.
pub mod body {
    use super::Jute;

    pub fn create(path: &str, data: &[u8], flags: i32) -> Vec<u8> {
        Jute::new().string(path).buffer(Some(data)).open_acl().int(flags).into_vec()
    }
    pub fn path(path: &str) -> Vec<u8> {
        Jute::new().string(path).into_vec()
    }
    pub fn path_watch(path: &str, watch: bool) -> Vec<u8> {
        Jute::new().string(path).boolean(watch).into_vec()
    }
    pub fn path_int(path: &str, v: i32) -> Vec<u8> {
        Jute::new().string(path).int(v).into_vec()
    }
    pub fn set_data(path: &str, data: &[u8], version: i32) -> Vec<u8> {
        Jute::new().string(path).buffer(Some(data)).int(version).into_vec()
    }
    pub fn auth(scheme: &str, auth: &[u8]) -> Vec<u8> {
        Jute::new().int(0).string(scheme).buffer(Some(auth)).into_vec()
    }
    /// SetWatches (3 lists) or, with `persistent`, SetWatches2 (5 lists).
    pub fn set_watches(
        relative_zxid: i64,
        data: &[&str],
        exist: &[&str],
        child: &[&str],
        persistent: Option<(&[&str], &[&str])>,
    ) -> Vec<u8> {
        let j = Jute::new().long(relative_zxid).strings(data).strings(exist).strings(child);
        match persistent {
            Some((p, r)) => j.strings(p).strings(r).into_vec(),
            None => j.into_vec(),
        }
    }
    /// A multi / multiRead body from (opcode, op body) pairs.
    pub fn multi(ops: &[(i32, Vec<u8>)]) -> Vec<u8> {
        let mut j = Jute::new();
        for (opcode, b) in ops {
            j = j.int(*opcode).boolean(false).int(-1).bytes(b);
        }
        j.int(-1).boolean(true).int(-1).into_vec()
    }
}

/// One result of a multi reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultiResult {
    Create(String),
    Create2(String, RawStat),
    Delete,
    SetData(RawStat),
    Check,
    Error(i32),
}

/// Decodes a multi reply body.
pub fn parse_multi(body: &[u8]) -> Result<Vec<MultiResult>> {
    let mut r = Rd::new(body);
    let mut out = Vec::new();
    loop {
        let ty = r.int()?;
        let done = r.boolean()?;
        let e = r.int()?;
        if done {
            ensure!(ty == -1 && e == -1, "multi terminator is ({ty}, true, {e}), expected (-1, true, -1)");
            break;
        }
        out.push(match ty {
            op::CREATE => MultiResult::Create(r.string()?),
            op::CREATE2 => MultiResult::Create2(r.string()?, r.stat()?),
            op::DELETE => MultiResult::Delete,
            op::SET_DATA => MultiResult::SetData(r.stat()?),
            op::CHECK => MultiResult::Check,
            op::ERROR => {
                let code = r.int()?;
                ensure!(code == e, "multi error result: header err {e}, body err {code}");
                MultiResult::Error(code)
            }
            other => bail!("unexpected multi result type {other}"),
        });
    }
    r.end()?;
    Ok(out)
}
