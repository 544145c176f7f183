//! Protocol vocabulary shared by the codec, the data tree and the server: opcodes, error codes,
//! create modes, watch event types, and the `Stat`/`Acl` records with their jute layouts.
//!
//! Numbers are Apache ZooKeeper 3.8's (`ZooDefs.OpCode`, `KeeperException.Code`, `CreateMode`,
//! `Watcher.Event`), so a client cannot tell this server from the reference one.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::jute::{DecodeError, Reader, Writer};

/// A transaction id: one per applied transaction, counted in log order (see [`crate::raft`]).
/// Clients only compare zxids, so any strictly increasing number every server agrees on serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Zxid(pub i64);

impl fmt::Display for Zxid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:x}", self.0)
    }
}

/// A session id, never 0 (0 in a ConnectRequest asks for a new session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SessionId(pub i64);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "0x{:x}", self.0)
    }
}

/// Request xids with a fixed meaning (`ClientCnxn`).
pub mod xid {
    /// A watch notification sent by the server.
    pub const NOTIFICATION: i32 = -1;
    /// A ping and its reply.
    pub const PING: i32 = -2;
    /// An auth packet (the Java client and kazoo; other clients use ordinary xids).
    pub const AUTH: i32 = -4;
    /// Watch re-registration after a reconnect.
    pub const SET_WATCHES: i32 = -8;
}

/// Operation codes (`ZooDefs.OpCode`).
pub mod op {
    #![allow(missing_docs)]
    pub const NOTIFICATION: i32 = 0;
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
    pub const CREATE_SESSION: i32 = -10;
    pub const CLOSE_SESSION: i32 = -11;
    pub const ERROR: i32 = -1;
}

/// Error codes (`KeeperException.Code`) this server sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// -1: an internal error.
    SystemError,
    /// -2: a later op of a failed multi.
    RuntimeInconsistency,
    /// -5: the request could not be decoded.
    MarshallingError,
    /// -6: an operation this server does not implement.
    Unimplemented,
    /// -8: invalid arguments, such as a bad path or create mode.
    BadArguments,
    /// -101: the node does not exist.
    NoNode,
    /// -102: not authorised.
    NoAuth,
    /// -103: the expected version does not match.
    BadVersion,
    /// -108: ephemeral nodes may not have children.
    NoChildrenForEphemerals,
    /// -110: the node already exists.
    NodeExists,
    /// -111: the node has children.
    NotEmpty,
    /// -112: the session has expired or was closed.
    SessionExpired,
    /// -114: an invalid ACL.
    InvalidAcl,
    /// -115: authentication failed.
    AuthFailed,
    /// -121: no such watch.
    NoWatcher,
    /// -123: dynamic reconfiguration is disabled.
    ReconfigDisabled,
    /// -125: a quota was exceeded (here: the connection's watch limit).
    QuotaExceeded,
    /// -118: the session moved to another server; a write sent through this one is refused.
    SessionMoved,
}

impl ErrorCode {
    /// The wire value.
    pub fn code(self) -> i32 {
        match self {
            ErrorCode::SystemError => -1,
            ErrorCode::RuntimeInconsistency => -2,
            ErrorCode::MarshallingError => -5,
            ErrorCode::Unimplemented => -6,
            ErrorCode::BadArguments => -8,
            ErrorCode::NoNode => -101,
            ErrorCode::NoAuth => -102,
            ErrorCode::BadVersion => -103,
            ErrorCode::NoChildrenForEphemerals => -108,
            ErrorCode::NodeExists => -110,
            ErrorCode::NotEmpty => -111,
            ErrorCode::SessionExpired => -112,
            ErrorCode::InvalidAcl => -114,
            ErrorCode::AuthFailed => -115,
            ErrorCode::NoWatcher => -121,
            ErrorCode::ReconfigDisabled => -123,
            ErrorCode::QuotaExceeded => -125,
            ErrorCode::SessionMoved => -118,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({})", self, self.code())
    }
}

/// How a node is created (`CreateMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CreateMode {
    /// 0: stays until deleted.
    Persistent,
    /// 1: deleted when its session ends.
    Ephemeral,
    /// 2: persistent, with a sequence suffix.
    PersistentSequential,
    /// 3: ephemeral, with a sequence suffix.
    EphemeralSequential,
    /// 4: deleted by the server once its last child is gone.
    Container,
    /// 5: persistent, deleted after a TTL without changes or children.
    PersistentWithTtl,
    /// 6: as 5, with a sequence suffix.
    PersistentSequentialWithTtl,
}

impl CreateMode {
    /// Decodes the wire flag; unknown flags are a bad argument, as in ZooKeeper.
    pub fn from_flags(flags: i32) -> Result<Self, ErrorCode> {
        Ok(match flags {
            0 => CreateMode::Persistent,
            1 => CreateMode::Ephemeral,
            2 => CreateMode::PersistentSequential,
            3 => CreateMode::EphemeralSequential,
            4 => CreateMode::Container,
            5 => CreateMode::PersistentWithTtl,
            6 => CreateMode::PersistentSequentialWithTtl,
            _ => return Err(ErrorCode::BadArguments),
        })
    }

    /// Whether the name gets a `%010d` suffix.
    pub fn is_sequential(self) -> bool {
        matches!(
            self,
            CreateMode::PersistentSequential
                | CreateMode::EphemeralSequential
                | CreateMode::PersistentSequentialWithTtl
        )
    }

    /// Whether the node belongs to its session.
    pub fn is_ephemeral(self) -> bool {
        matches!(self, CreateMode::Ephemeral | CreateMode::EphemeralSequential)
    }

    /// Whether the node carries a TTL.
    pub fn is_ttl(self) -> bool {
        matches!(self, CreateMode::PersistentWithTtl | CreateMode::PersistentSequentialWithTtl)
    }
}

/// Watch event types (`Watcher.Event.EventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    /// 1
    NodeCreated,
    /// 2
    NodeDeleted,
    /// 3
    NodeDataChanged,
    /// 4
    NodeChildrenChanged,
}

impl EventType {
    /// The wire value.
    pub fn code(self) -> i32 {
        match self {
            EventType::NodeCreated => 1,
            EventType::NodeDeleted => 2,
            EventType::NodeDataChanged => 3,
            EventType::NodeChildrenChanged => 4,
        }
    }
}

/// `KeeperState.SyncConnected`, the state every notification of a live session carries.
pub const STATE_SYNC_CONNECTED: i32 = 3;

/// Permission bits (`ZooDefs.Perms`).
pub mod perms {
    #![allow(missing_docs)]
    pub const READ: i32 = 1;
    pub const WRITE: i32 = 2;
    pub const CREATE: i32 = 4;
    pub const DELETE: i32 = 8;
    pub const ADMIN: i32 = 16;
    pub const ALL: i32 = 31;
}

/// An identity an ACL entry names: `scheme:id`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Id {
    /// `world`, `auth`, `digest`, `ip`, ...
    pub scheme: String,
    /// The scheme's id, such as `anyone` or `user:base64digest`.
    pub id: String,
}

/// One ACL entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Acl {
    /// Permission bits.
    pub perms: i32,
    /// Who they are granted to.
    pub id: Id,
}

impl Acl {
    /// `world:anyone` with every permission (`OPEN_ACL_UNSAFE`).
    pub fn open_unsafe() -> Vec<Acl> {
        vec![Acl { perms: perms::ALL, id: Id { scheme: "world".into(), id: "anyone".into() } }]
    }

    /// `world:anyone` with READ (`READ_ACL_UNSAFE`).
    pub fn read_unsafe() -> Vec<Acl> {
        vec![Acl { perms: perms::READ, id: Id { scheme: "world".into(), id: "anyone".into() } }]
    }

    /// Decodes a `vector<ACL>`.
    pub fn read_vec(r: &mut Reader<'_>) -> Result<Vec<Acl>, DecodeError> {
        // An ACL is at least perms(4) + two empty strings(8).
        let n = r.count("acl", 12)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let perms = r.int("acl.perms")?;
            let scheme = r.ustring("acl.scheme")?;
            // kazoo sends the empty id of `auth` ACLs (its `CREATOR_ALL_ACL`) as a null string,
            // which Apache ZooKeeper reads as null and `fixupACL` ignores: read it as empty, which
            // every check that refuses a null id (world, digest, ip) refuses as well.
            let id = r.ustring_opt("acl.id")?.unwrap_or_default();
            out.push(Acl { perms, id: Id { scheme, id } });
        }
        Ok(out)
    }

    /// Encodes a `vector<ACL>`.
    pub fn write_vec(w: &mut Writer, acl: &[Acl]) {
        w.int(acl.len() as i32);
        for a in acl {
            w.int(a.perms).ustring(&a.id.scheme).ustring(&a.id.id);
        }
    }
}

/// A node's metadata as clients see it (`org.apache.zookeeper.data.Stat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Stat {
    /// Zxid of the create.
    pub czxid: i64,
    /// Zxid of the last data change.
    pub mzxid: i64,
    /// Create time, ms since the epoch.
    pub ctime: i64,
    /// Last data change time, ms since the epoch.
    pub mtime: i64,
    /// Data version.
    pub version: i32,
    /// Child version: bumped by each child create and each child delete.
    pub cversion: i32,
    /// ACL version.
    pub aversion: i32,
    /// Owning session of an ephemeral, 0 otherwise.
    pub ephemeral_owner: i64,
    /// Length of the data.
    pub data_length: i32,
    /// Number of children.
    pub num_children: i32,
    /// Zxid of the last change to the children list.
    pub pzxid: i64,
}

impl Stat {
    /// Encodes the 68-byte jute record.
    pub fn write(&self, w: &mut Writer) {
        w.long(self.czxid)
            .long(self.mzxid)
            .long(self.ctime)
            .long(self.mtime)
            .int(self.version)
            .int(self.cversion)
            .int(self.aversion)
            .long(self.ephemeral_owner)
            .int(self.data_length)
            .int(self.num_children)
            .long(self.pzxid);
    }
}
