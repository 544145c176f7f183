//! Typed client requests decoded from frames, and the replies and notifications encoded back.
//!
//! Decoding is total: every byte sequence yields a request or a [`DecodeError`], never a panic,
//! and no length read from the wire is trusted before it is checked against the frame.

use crate::jute::{DecodeError, Reader, Writer};
use crate::proto::{op, Acl, CreateMode, ErrorCode, EventType, Id, Stat, Zxid, STATE_SYNC_CONNECTED};
use crate::txn::{OpResult, WriteOp};
use crate::watch::WatcherType;

/// The first packet of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Protocol version (0).
    pub protocol_version: i32,
    /// The last zxid the client has seen.
    pub last_zxid_seen: i64,
    /// Requested session timeout in ms.
    pub timeout_ms: i32,
    /// 0 for a new session, else the session to resume.
    pub session_id: i64,
    /// The session password (16 zero bytes for a new session).
    pub password: Vec<u8>,
    /// The trailing read-only flag, if the client sent one (older clients do not).
    pub read_only: Option<bool>,
}

impl ConnectRequest {
    /// Decodes a ConnectRequest frame; the trailing read-only byte is optional.
    pub fn decode(frame: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(frame);
        let protocol_version = r.int("protocolVersion")?;
        let last_zxid_seen = r.long("lastZxidSeen")?;
        let timeout_ms = r.int("timeOut")?;
        let session_id = r.long("sessionId")?;
        let password = r.buffer("passwd")?.unwrap_or_default();
        let read_only = if r.remaining() > 0 { Some(r.boolean("readOnly")?) } else { None };
        r.finish()?;
        Ok(ConnectRequest { protocol_version, last_zxid_seen, timeout_ms, session_id, password, read_only })
    }
}

/// Encodes a framed ConnectResponse; `read_only` is the server's mode, written only when the
/// client's request carried the byte (older clients do not expect it).
pub fn encode_connect_response(timeout_ms: i32, session_id: i64, password: &[u8], read_only: Option<bool>) -> Vec<u8> {
    let mut w = Writer::framed();
    w.int(0).int(timeout_ms).long(session_id).buffer(Some(password));
    if let Some(ro) = read_only {
        w.boolean(ro);
    }
    w.into_frame()
}

/// A read inside multiRead (22).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadOp {
    /// getData (4); the watch flag is ignored inside multiRead, as in ZooKeeper.
    GetData(String),
    /// getChildren (8).
    GetChildren(String),
}

/// A decoded client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// ping (11).
    Ping,
    /// auth (100).
    Auth {
        /// Auth scheme, such as `digest`.
        scheme: String,
        /// Scheme-specific credentials.
        auth: Vec<u8>,
    },
    /// setWatches (101) and setWatches2 (105).
    SetWatches {
        /// The zxid the client's view is current to.
        relative_zxid: i64,
        /// Data watches.
        data: Vec<String>,
        /// Exist watches.
        exist: Vec<String>,
        /// Child watches.
        child: Vec<String>,
        /// Persistent watches.
        persistent: Vec<String>,
        /// Persistent recursive watches.
        recursive: Vec<String>,
    },
    /// closeSession (-11).
    CloseSession,
    /// create, create2, createContainer, createTTL, delete, setData, setACL or check.
    Write(WriteOp),
    /// multi (14).
    Multi(Vec<WriteOp>),
    /// exists (3).
    Exists {
        /// Node path.
        path: String,
        /// Leave a watch.
        watch: bool,
    },
    /// getData (4).
    GetData {
        /// Node path.
        path: String,
        /// Leave a watch.
        watch: bool,
    },
    /// getChildren (8), or getChildren2 (12) when `with_stat`.
    GetChildren {
        /// Node path.
        path: String,
        /// Leave a watch.
        watch: bool,
        /// Reply with the parent's Stat (getChildren2).
        with_stat: bool,
    },
    /// getACL (6).
    GetAcl {
        /// Node path.
        path: String,
    },
    /// sync (9).
    Sync {
        /// Path, echoed back.
        path: String,
    },
    /// multiRead (22).
    MultiRead(Vec<ReadOp>),
    /// checkWatches (17).
    CheckWatches {
        /// Node path.
        path: String,
        /// Watcher type.
        ty: i32,
    },
    /// removeWatches (18).
    RemoveWatches {
        /// Node path.
        path: String,
        /// Watcher type.
        ty: i32,
    },
    /// getEphemerals (103).
    GetEphemerals {
        /// Path prefix.
        prefix: String,
    },
    /// getAllChildrenNumber (104).
    GetAllChildrenNumber {
        /// Node path.
        path: String,
    },
    /// addWatch (106).
    AddWatch {
        /// Node path.
        path: String,
        /// 0 persistent, 1 persistent recursive.
        mode: i32,
    },
    /// whoAmI (107).
    WhoAmI,
    /// sasl (102) on a server with no SASL mechanism.
    Sasl,
    /// An opcode that is understood but refused with an error code (reconfig, ...).
    Refused(ErrorCode),
    /// An opcode this server does not know.
    Unknown(i32),
}

impl Request {
    /// Whether the request changes replicated state (goes through the log).
    pub fn is_write(&self) -> bool {
        // deleteContainer travels as a Write too.
        matches!(self, Request::Write(_) | Request::Multi(_) | Request::CloseSession)
    }

    /// Decodes a request body of the given opcode.
    pub fn decode(opcode: i32, body: &[u8]) -> Result<Request, DecodeError> {
        let mut r = Reader::new(body);
        let req = match opcode {
            op::PING => Request::Ping,
            op::CLOSE_SESSION => Request::CloseSession,
            op::WHO_AM_I => Request::WhoAmI,
            op::AUTH => {
                let _type = r.int("auth.type")?;
                let scheme = r.ustring("auth.scheme")?;
                let auth = r.buffer("auth.auth")?.unwrap_or_default();
                Request::Auth { scheme, auth }
            }
            op::SET_WATCHES | op::SET_WATCHES2 => {
                let relative_zxid = r.long("relativeZxid")?;
                let data = r.strings("dataWatches")?;
                let exist = r.strings("existWatches")?;
                let child = r.strings("childWatches")?;
                let (persistent, recursive) = if opcode == op::SET_WATCHES2 {
                    (r.strings("persistentWatches")?, r.strings("persistentRecursiveWatches")?)
                } else {
                    (Vec::new(), Vec::new())
                };
                Request::SetWatches { relative_zxid, data, exist, child, persistent, recursive }
            }
            op::CREATE
            | op::CREATE2
            | op::CREATE_CONTAINER
            | op::CREATE_TTL
            | op::DELETE
            | op::SET_DATA
            | op::SET_ACL
            | op::CHECK => Request::Write(decode_write(opcode, &mut r)?),
            op::MULTI | op::MULTI_READ => {
                let mut writes = Vec::new();
                let mut reads = Vec::new();
                loop {
                    let ty = r.int("multi.type")?;
                    let done = r.boolean("multi.done")?;
                    let _err = r.int("multi.err")?;
                    if done {
                        break;
                    }
                    match ty {
                        op::GET_DATA => {
                            let path = r.ustring("path")?;
                            let _watch = r.boolean("watch")?;
                            reads.push(ReadOp::GetData(path));
                        }
                        op::GET_CHILDREN => {
                            let path = r.ustring("path")?;
                            let _watch = r.boolean("watch")?;
                            reads.push(ReadOp::GetChildren(path));
                        }
                        op::CREATE
                        | op::CREATE2
                        | op::CREATE_CONTAINER
                        | op::CREATE_TTL
                        | op::DELETE
                        | op::SET_DATA
                        | op::CHECK => writes.push(decode_write(ty, &mut r)?),
                        other => return Err(DecodeError::InvalidValue { field: "multi.type", value: other as i64 }),
                    }
                }
                match (opcode, writes.is_empty(), reads.is_empty()) {
                    (op::MULTI, _, true) => Request::Multi(writes),
                    (op::MULTI_READ, true, _) => Request::MultiRead(reads),
                    // Mixing reads and writes, or writes in multiRead, is refused with the code
                    // Apache ZooKeeper 3.8 answers (measured; it fails to deserialise the op).
                    _ => Request::Refused(ErrorCode::MarshallingError),
                }
            }
            op::EXISTS | op::GET_DATA | op::GET_CHILDREN | op::GET_CHILDREN2 => {
                let path = r.ustring("path")?;
                let watch = r.boolean("watch")?;
                match opcode {
                    op::EXISTS => Request::Exists { path, watch },
                    op::GET_DATA => Request::GetData { path, watch },
                    _ => Request::GetChildren { path, watch, with_stat: opcode == op::GET_CHILDREN2 },
                }
            }
            op::GET_ACL => Request::GetAcl { path: r.ustring("path")? },
            op::SYNC => Request::Sync { path: r.ustring("path")? },
            op::GET_EPHEMERALS => Request::GetEphemerals { prefix: r.ustring("prefixPath")? },
            op::GET_ALL_CHILDREN_NUMBER => Request::GetAllChildrenNumber { path: r.ustring("path")? },
            op::CHECK_WATCHES | op::REMOVE_WATCHES => {
                let path = r.ustring("path")?;
                let ty = r.int("type")?;
                if opcode == op::CHECK_WATCHES {
                    Request::CheckWatches { path, ty }
                } else {
                    Request::RemoveWatches { path, ty }
                }
            }
            op::ADD_WATCH => {
                let path = r.ustring("path")?;
                let mode = r.int("mode")?;
                Request::AddWatch { path, mode }
            }
            // Dynamic reconfiguration is off, as in a default Apache ZooKeeper (reconfigEnabled=false).
            op::RECONFIG => return Ok(Request::Refused(ErrorCode::ReconfigDisabled)),
            // No SASL mechanism is configured: answered as Apache ZooKeeper answers then.
            op::SASL => return Ok(Request::Sasl),
            // The body is the path's raw UTF-8 bytes, not a jute string (ZooKeeper's ContainerManager
            // builds it that way, and the server reads it that way from clients too).
            op::DELETE_CONTAINER => {
                return match String::from_utf8(body.to_vec()) {
                    Ok(path) => Ok(Request::Write(WriteOp::DeleteContainer { path })),
                    Err(_) => Err(DecodeError::InvalidUtf8 { field: "path" }),
                }
            }
            other => return Ok(Request::Unknown(other)),
        };
        r.finish()?;
        Ok(req)
    }
}

fn decode_write(opcode: i32, r: &mut Reader<'_>) -> Result<WriteOp, DecodeError> {
    Ok(match opcode {
        op::CREATE | op::CREATE2 | op::CREATE_CONTAINER | op::CREATE_TTL => {
            let path = r.ustring("path")?;
            let data = r.buffer("data")?;
            let acl = Acl::read_vec(r)?;
            let flags = r.int("flags")?;
            let ttl_ms = if opcode == op::CREATE_TTL { r.long("ttl")? } else { 0 };
            WriteOp::Create { opcode, path, data, acl, flags, ttl_ms }
        }
        op::DELETE => WriteOp::Delete { path: r.ustring("path")?, version: r.int("version")? },
        op::SET_DATA => {
            let path = r.ustring("path")?;
            let data = r.buffer("data")?;
            let version = r.int("version")?;
            WriteOp::SetData { path, data, version }
        }
        op::SET_ACL => {
            let path = r.ustring("path")?;
            let acl = Acl::read_vec(r)?;
            let version = r.int("version")?;
            WriteOp::SetAcl { path, acl, version }
        }
        op::CHECK => WriteOp::Check { path: r.ustring("path")?, version: r.int("version")? },
        other => return Err(DecodeError::InvalidValue { field: "opcode", value: other as i64 }),
    })
}

/// Decodes the 8-byte request header of a frame, returning (xid, opcode, body).
pub fn decode_header(frame: &[u8]) -> Result<(i32, i32, &[u8]), DecodeError> {
    let mut r = Reader::new(frame);
    let xid = r.int("xid")?;
    let opcode = r.int("type")?;
    Ok((xid, opcode, &frame[8..]))
}

/// The result of one read inside multiRead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadResult {
    /// getData's data and Stat.
    Data(Option<Vec<u8>>, Stat),
    /// getChildren's names.
    Children(Vec<String>),
    /// A failed read.
    Error(ErrorCode),
}

/// A reply body (present only when the reply's error is 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// No body (delete, ping, auth, setWatches, check, checkWatches, removeWatches, closeSession).
    Empty,
    /// CreateResponse.
    Create(String),
    /// Create2Response.
    Create2(String, Stat),
    /// A Stat alone (exists, setData, setACL).
    Stat(Stat),
    /// GetDataResponse.
    Data(Option<Vec<u8>>, Stat),
    /// GetChildrenResponse.
    Children(Vec<String>),
    /// GetChildren2Response.
    Children2(Vec<String>, Stat),
    /// GetACLResponse.
    Acl(Vec<Acl>, Stat),
    /// A single string (sync's path).
    Path(String),
    /// A single int (addWatch's ErrorResponse(0), getAllChildrenNumber).
    Int(i32),
    /// A SetSASLResponse token (`None`: a null buffer).
    Token(Option<Vec<u8>>),
    /// A vector of strings (getEphemerals).
    Strings(Vec<String>),
    /// WhoAmIResponse: (scheme, user) pairs.
    WhoAmI(Vec<Id>),
    /// MultiResponse of a multi.
    Multi(Vec<OpResult>),
    /// MultiResponse of a multiRead.
    MultiRead(Vec<ReadResult>),
}

fn multi_header(w: &mut Writer, ty: i32, done: bool, err: i32) {
    w.int(ty).boolean(done).int(err);
}

impl Reply {
    fn write(&self, w: &mut Writer) {
        match self {
            Reply::Empty => {}
            Reply::Create(p) | Reply::Path(p) => {
                w.ustring(p);
            }
            Reply::Create2(p, s) => {
                w.ustring(p);
                s.write(w);
            }
            Reply::Stat(s) => s.write(w),
            Reply::Data(d, s) => {
                w.buffer(d.as_deref());
                s.write(w);
            }
            Reply::Children(c) | Reply::Strings(c) => {
                w.strings(c);
            }
            Reply::Children2(c, s) => {
                w.strings(c);
                s.write(w);
            }
            Reply::Acl(a, s) => {
                Acl::write_vec(w, a);
                s.write(w);
            }
            Reply::Token(t) => {
                w.buffer(t.as_deref());
            }
            Reply::Int(i) => {
                w.int(*i);
            }
            Reply::WhoAmI(ids) => {
                w.int(ids.len() as i32);
                for id in ids {
                    w.ustring(&id.scheme).ustring(&id.id);
                }
            }
            Reply::Multi(results) => {
                for r in results {
                    match r {
                        OpResult::Created { mode, path, stat, .. } => {
                            // Inside a multi, Apache ZooKeeper 3.8 answers by the node's mode,
                            // not the opcode (measured): a create result with the path only,
                            // except containers and TTL nodes, which come back with their Stat.
                            if !(*mode == CreateMode::Container || mode.is_ttl()) {
                                multi_header(w, op::CREATE, false, 0);
                                w.ustring(path);
                            } else {
                                multi_header(w, op::CREATE2, false, 0);
                                w.ustring(path);
                                stat.write(w);
                            }
                        }
                        OpResult::Deleted => multi_header(w, op::DELETE, false, 0),
                        OpResult::DataSet { stat } => {
                            multi_header(w, op::SET_DATA, false, 0);
                            stat.write(w);
                        }
                        OpResult::AclSet { stat } => {
                            multi_header(w, op::SET_ACL, false, 0);
                            stat.write(w);
                        }
                        OpResult::Checked => multi_header(w, op::CHECK, false, 0),
                        OpResult::Error(code) => {
                            multi_header(w, op::ERROR, false, *code);
                            w.int(*code);
                        }
                    }
                }
                multi_header(w, -1, true, -1);
            }
            Reply::MultiRead(results) => {
                for r in results {
                    match r {
                        ReadResult::Data(d, s) => {
                            multi_header(w, op::GET_DATA, false, 0);
                            w.buffer(d.as_deref());
                            s.write(w);
                        }
                        ReadResult::Children(c) => {
                            multi_header(w, op::GET_CHILDREN, false, 0);
                            w.strings(c);
                        }
                        ReadResult::Error(e) => {
                            multi_header(w, op::ERROR, false, e.code());
                            w.int(e.code());
                        }
                    }
                }
                multi_header(w, -1, true, -1);
            }
        }
    }
}

/// Encodes a framed reply: ReplyHeader, then the body only when `err` is 0.
pub fn encode_reply(xid: i32, zxid: Zxid, result: &Result<Reply, ErrorCode>) -> Vec<u8> {
    let mut w = Writer::framed();
    match result {
        Ok(body) => {
            w.int(xid).long(zxid.0).int(0);
            body.write(&mut w);
        }
        Err(code) => {
            w.int(xid).long(zxid.0).int(code.code());
        }
    }
    w.into_frame()
}

/// Bytes of a reply header (xid, zxid, err).
const REPLY_HEADER_BYTES: usize = 16;
/// Bytes of a multi result's header (type, done, err), and of the terminator.
const MULTI_HEADER_BYTES: usize = 9;
/// Bytes of a multi's error result: its header and the code again.
const MULTI_ERROR_BYTES: usize = MULTI_HEADER_BYTES + 4;
/// Bytes of a Stat record.
const STAT_BYTES: usize = 68;
/// Characters a sequence suffix can add to a path: `%010d` of an int, 11 with a sign.
const SEQUENCE_SUFFIX_MAX: usize = 11;

/// The most bytes the reply to a multi of `ops` can take (its reply header included, the frame's
/// length prefix not), known before the multi is proposed: an applied multi must be answered
/// as applied, so one whose reply might not be sendable is refused before anything happens.
/// Each op counts as the larger of its success result (as [`Reply::write`] encodes it: a Stat
/// for setData, setACL, containers and TTL nodes, the path with any sequence suffix for a
/// create) and an error result (every op's result when the multi fails). A setData of a short
/// path asks for about 23 bytes and is answered with 77.
pub fn multi_reply_bound(ops: &[WriteOp]) -> usize {
    let result = |op: &WriteOp| {
        let success = match op {
            WriteOp::Create { path, flags, .. } => match CreateMode::from_flags(*flags) {
                Ok(mode) => {
                    let suffix = if mode.is_sequential() { SEQUENCE_SUFFIX_MAX } else { 0 };
                    let stat = if mode == CreateMode::Container || mode.is_ttl() { STAT_BYTES } else { 0 };
                    MULTI_HEADER_BYTES + 4 + path.len() + suffix + stat
                }
                // Refused whatever the tree holds: an error result.
                Err(_) => 0,
            },
            WriteOp::SetData { .. } | WriteOp::SetAcl { .. } => MULTI_HEADER_BYTES + STAT_BYTES,
            WriteOp::Delete { .. } | WriteOp::Check { .. } | WriteOp::DeleteContainer { .. } => MULTI_HEADER_BYTES,
        };
        success.max(MULTI_ERROR_BYTES)
    };
    ops.iter().fold(REPLY_HEADER_BYTES + MULTI_HEADER_BYTES, |sum, op| sum.saturating_add(result(op)))
}

/// Encodes a framed watch notification carrying the zxid of the change that fired it.
pub fn encode_notification(kind: EventType, path: &str, zxid: Zxid) -> Vec<u8> {
    let mut w = Writer::framed();
    w.int(crate::proto::xid::NOTIFICATION).long(zxid.0).int(0);
    w.int(kind.code()).int(STATE_SYNC_CONNECTED).ustring(path);
    w.into_frame()
}

/// Maps a removeWatches/checkWatches type, refusing unknown values with MarshallingError, as
/// Apache ZooKeeper 3.8 answers them (measured: its `WatcherType.fromInt` throws while the
/// request is read).
pub fn watcher_type(ty: i32) -> Result<WatcherType, ErrorCode> {
    WatcherType::from_code(ty).ok_or(ErrorCode::MarshallingError)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes Apache ZooKeeper 3.8's Java client sends for a new session with a 10 s timeout.
    const JAVA_CONNECT: [u8; 45] = [
        0, 0, 0, 0, // protocolVersion
        0, 0, 0, 0, 0, 0, 0, 0, // lastZxidSeen
        0, 0, 0x27, 0x10, // timeOut = 10000
        0, 0, 0, 0, 0, 0, 0, 0, // sessionId
        0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // passwd
        0, // readOnly
    ];

    #[test]
    fn connect_request_golden() {
        let c = ConnectRequest::decode(&JAVA_CONNECT).unwrap();
        assert_eq!(c.timeout_ms, 10_000);
        assert_eq!(c.password, vec![0; 16]);
        assert_eq!(c.read_only, Some(false));
        let old = ConnectRequest::decode(&JAVA_CONNECT[..44]).unwrap();
        assert_eq!(old.read_only, None, "pre-3.5 clients send no readOnly byte");
        assert!(ConnectRequest::decode(&JAVA_CONNECT[..30]).is_err());
    }

    #[test]
    fn connect_response_golden() {
        // As Apache ZooKeeper 3.8 answered a new session on loopback (session id aside).
        let bytes = encode_connect_response(10_000, 0x0100_0005_7daa_0000, &[0x44; 16], Some(false));
        let mut expected = vec![0, 0, 0, 0x25, 0, 0, 0, 0, 0, 0, 0x27, 0x10, 1, 0, 0, 5, 0x7d, 0xaa, 0, 0, 0, 0, 0, 16];
        expected.extend([0x44; 16]);
        expected.push(0);
        assert_eq!(bytes, expected);
        assert_eq!(encode_connect_response(0, 0, &[0; 16], None).len(), 4 + 36);
    }

    #[test]
    fn create_request_golden() {
        // create("/m", null data, OPEN_ACL_UNSAFE, PERSISTENT), as the Java client encodes it.
        let mut body = vec![0, 0, 0, 2, b'/', b'm', 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 31];
        body.extend([0, 0, 0, 5]);
        body.extend(b"world");
        body.extend([0, 0, 0, 6]);
        body.extend(b"anyone");
        body.extend([0, 0, 0, 0]);
        let req = Request::decode(op::CREATE, &body).unwrap();
        assert_eq!(
            req,
            Request::Write(WriteOp::Create {
                opcode: op::CREATE,
                path: "/m".into(),
                data: None,
                acl: Acl::open_unsafe(),
                flags: 0,
                ttl_ms: 0
            })
        );
        // One byte short anywhere is an error, never a panic.
        for n in 0..body.len() {
            assert!(Request::decode(op::CREATE, &body[..n]).is_err(), "prefix {n}");
        }
        // Extra bytes are refused too.
        let mut long = body.clone();
        long.push(0);
        assert_eq!(Request::decode(op::CREATE, &long), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn failed_multi_reply_golden() {
        // Apache ZooKeeper 3.8's reply to multi(create /m/x, create /m/x, delete /nonex) where the
        // second create fails: header err 0, then per-op error results.
        let reply = Reply::Multi(vec![OpResult::Error(0), OpResult::Error(-110), OpResult::Error(-2)]);
        let bytes = encode_reply(2, Zxid(3), &Ok(reply));
        let body_hex: String = bytes[20..].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            body_hex,
            "ffffffff000000000000000000ffffffff00ffffff92ffffff92ffffffff00fffffffefffffffeffffffff01ffffffff"
        );
        assert_eq!(&bytes[4..20], &[0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0]);
    }

    #[test]
    fn error_reply_has_no_body_and_notification_layout() {
        let bytes = encode_reply(3, Zxid(-1), &Err(ErrorCode::Unimplemented));
        assert_eq!(
            bytes,
            vec![0, 0, 0, 16, 0, 0, 0, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfa]
        );
        let n = encode_notification(EventType::NodeDeleted, "/a", Zxid(9));
        assert_eq!(
            n,
            vec![
                0, 0, 0, 30, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0,
                0, 2, b'/', b'a'
            ]
        );
    }

    /// The bound a multi is refused by before it is proposed is never below what the encoder
    /// makes of its results, whichever way each op goes, and is the exact size where it can be.
    #[test]
    fn a_multi_reply_never_passes_its_bound() {
        let stat = Stat { version: 7, ..Stat::default() };
        let create = |path: &str, flags: i32| WriteOp::Create {
            opcode: op::CREATE,
            path: path.into(),
            data: None,
            acl: Acl::open_unsafe(),
            flags,
            ttl_ms: 0,
        };
        let created =
            |mode: CreateMode, path: &str| OpResult::Created { opcode: op::CREATE, mode, path: path.into(), stat };
        let cases = [
            (create("/a/b", 0), created(CreateMode::Persistent, "/a/b"), 0),
            (create("/a/b", 1), created(CreateMode::Ephemeral, "/a/b"), 0),
            // A suffix of ten digits; the bound leaves room for a sign.
            (create("/a/s-", 2), created(CreateMode::PersistentSequential, "/a/s-0000000012"), 1),
            (create("/a/s-", 3), created(CreateMode::EphemeralSequential, "/a/s-0000000012"), 1),
            (create("/a/c", 4), created(CreateMode::Container, "/a/c"), 0),
            (create("/a/t", 5), created(CreateMode::PersistentWithTtl, "/a/t"), 0),
            (create("/a/t-", 6), created(CreateMode::PersistentSequentialWithTtl, "/a/t-0000000012"), 1),
            (create("/a/b", 99), OpResult::Error(ErrorCode::BadArguments.code()), 0),
            (WriteOp::SetData { path: "/a".into(), data: None, version: -1 }, OpResult::DataSet { stat }, 0),
            (WriteOp::SetAcl { path: "/a".into(), acl: Acl::open_unsafe(), version: -1 }, OpResult::AclSet { stat }, 0),
            (WriteOp::Delete { path: "/a".into(), version: -1 }, OpResult::Deleted, 0),
            (WriteOp::Check { path: "/a".into(), version: -1 }, OpResult::Checked, 0),
        ];
        let size = |results: Vec<OpResult>| encode_reply(1, Zxid(1), &Ok(Reply::Multi(results))).len() - 4;
        for (op, success, slack) in cases {
            let bound = multi_reply_bound(std::slice::from_ref(&op));
            let failed = size(vec![OpResult::Error(ErrorCode::NoNode.code())]);
            let largest = size(vec![success]).max(failed);
            assert_eq!(bound, largest + slack, "{op:?}");
        }
        // A multi's bound is its ops' results, a reply header and the terminator.
        let ops = vec![WriteOp::SetData { path: "/a".into(), data: None, version: -1 }; 3];
        assert_eq!(multi_reply_bound(&ops), size(vec![OpResult::DataSet { stat }; 3]));
        assert_eq!(multi_reply_bound(&[]), size(Vec::new()));
    }

    #[test]
    fn multi_decodes_and_refuses_mixing() {
        let mut w = Writer::new();
        w.int(op::CHECK).boolean(false).int(-1).ustring("/a").int(3);
        w.int(op::DELETE).boolean(false).int(-1).ustring("/b").int(-1);
        w.int(-1).boolean(true).int(-1);
        let req = Request::decode(op::MULTI, &w.clone().into_inner()).unwrap();
        assert_eq!(
            req,
            Request::Multi(vec![
                WriteOp::Check { path: "/a".into(), version: 3 },
                WriteOp::Delete { path: "/b".into(), version: -1 }
            ])
        );
        assert_eq!(
            Request::decode(op::MULTI_READ, &w.into_inner()).unwrap(),
            Request::Refused(ErrorCode::MarshallingError)
        );
        let mut w = Writer::new();
        w.int(99).boolean(false).int(-1);
        assert!(Request::decode(op::MULTI, &w.into_inner()).is_err());
    }
}
