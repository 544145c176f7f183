//! The replicated transaction: what a server puts in the Raft log for every write, and what
//! applying it answers.
//!
//! A `Txn` carries everything apply needs so that every server computes the same result: the
//! issuing session and its authenticated ids, the proposer's wall clock, and for a new session the
//! random password. Arguments are logged as the client sent them (raw path, raw create flags) and
//! validated at apply, so a refused write consumes a zxid exactly as in Apache ZooKeeper, whose
//! replies clients and differential tests compare.
//!
//! A Raft entry carries a [`TxnBatch`]: the transactions its server gathered while the previous
//! entry was being made durable (see [`crate::propose`]). Each is applied in order under a zxid
//! of its own, one more than the last, so zxids stay dense and every server computes the same.
//!
//! The format is serde-encoded and versioned by variant name; new variants may be added, existing
//! ones keep their fields, so a durable log written by one release is read by the next.

use serde::{Deserialize, Serialize};

use crate::proto::{Acl, CreateMode, ErrorCode, Id, SessionId, Stat, Zxid};

/// What one Raft entry carries: transactions applied in order, each under its own zxid.
pub type TxnBatch = Vec<Txn>;

/// What applying a [`TxnBatch`] answered: one outcome per transaction, in order.
pub type BatchOutcome = Vec<TxnOutcome>;

/// One write, as logged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    /// The session that issued it; `SessionId(0)` for server-issued transactions.
    pub session: SessionId,
    /// The identities the session had authenticated as when it issued the write.
    pub auth: Vec<Id>,
    /// The proposer's wall clock in ms since the Unix epoch, used for ctime/mtime.
    pub time_ms: i64,
    /// What to do.
    pub op: TxnOp,
}

/// The operation of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    /// Open a session with an already negotiated timeout; its id derives from its zxid.
    CreateSession {
        /// Negotiated session timeout.
        timeout_ms: i32,
        /// The password the client must present to reconnect.
        password: [u8; 16],
    },
    /// Close the issuing session, deleting its ephemerals.
    CloseSession {
        /// Whether the server expired it (as opposed to the client closing it).
        expired: bool,
    },
    /// One write operation.
    Write(WriteOp),
    /// Several write operations applied atomically under one zxid.
    Multi(Vec<WriteOp>),
    /// The issuing session reconnected to server `to_server`: every other server closes its
    /// connections of the session (ZooKeeper's SessionMoved). Changes nothing in the tree.
    MoveSession {
        /// The server the session's client is connected to now.
        to_server: u64,
    },
    /// The ensemble's members with their addresses, written by the leader (session 0 only) into
    /// `/zookeeper/config` (see [`crate::members_config`]).
    EnsembleConfig {
        /// Every member, voters and observers.
        members: Vec<crate::members_config::MemberLine>,
    },
    /// The issuing session reconnected to server `server`, which owns it from now on (as
    /// ZooKeeper's leader records a session's owner): a write another server sends for it
    /// ([`TxnOp::WriteVia`], [`TxnOp::MultiVia`]) is refused with SessionMoved, so a write left
    /// behind on the old server never lands after what the client sent since; every other
    /// server closes its connections of the session. ([`TxnOp::MoveSession`], which earlier
    /// releases wrote, closes them and records no owner.)
    ClaimSession {
        /// The server the session's client is connected to now.
        server: u64,
    },
    /// [`TxnOp::Write`] from a client of server `server` of an ensemble.
    WriteVia {
        /// The server whose connection took the write.
        server: u64,
        /// The write.
        op: WriteOp,
    },
    /// [`TxnOp::Multi`] from a client of server `server` of an ensemble.
    MultiVia {
        /// The server whose connection took the multi.
        server: u64,
        /// Its operations.
        ops: Vec<WriteOp>,
    },
    /// A client's write as it is logged now: with the server that took it (`None` for a server
    /// alone; see [`TxnOp::WriteVia`]) and whether that server allows TTL nodes
    /// (`extended_types_enabled`), so that apply reads no setting of its own and every server
    /// applies the entry alike, whatever its own setting. ([`TxnOp::Write`] and
    /// [`TxnOp::WriteVia`], which earlier releases wrote, are applied under each server's own
    /// setting, as they were.)
    ClientWrite {
        /// The server whose connection took the write, in an ensemble.
        server: Option<u64>,
        /// Whether that server allows TTL nodes.
        extended_types: bool,
        /// The write.
        op: WriteOp,
    },
    /// A client's multi, as [`TxnOp::ClientWrite`].
    ClientMulti {
        /// The server whose connection took the multi, in an ensemble.
        server: Option<u64>,
        /// Whether that server allows TTL nodes.
        extended_types: bool,
        /// Its operations.
        ops: Vec<WriteOp>,
    },
}

impl TxnOp {
    /// A client's write as the server `server` proposes it: in an ensemble (`server` given)
    /// tagged with the server, so that it is refused once the session has moved elsewhere.
    pub fn client_write(server: Option<u64>, extended_types: bool, op: WriteOp) -> TxnOp {
        TxnOp::ClientWrite { server, extended_types, op }
    }

    /// A client's multi, as [`TxnOp::client_write`].
    pub fn client_multi(server: Option<u64>, extended_types: bool, ops: Vec<WriteOp>) -> TxnOp {
        TxnOp::ClientMulti { server, extended_types, ops }
    }
}

impl Txn {
    /// About how many bytes the transaction takes in the log: what batches are bounded by.
    pub fn approx_len(&self) -> usize {
        const FIXED: usize = 48;
        let ids: usize = self.auth.iter().map(|i| i.scheme.len() + i.id.len()).sum();
        let op = match &self.op {
            TxnOp::CreateSession { .. }
            | TxnOp::CloseSession { .. }
            | TxnOp::MoveSession { .. }
            | TxnOp::ClaimSession { .. } => 0,
            TxnOp::Write(w) | TxnOp::WriteVia { op: w, .. } | TxnOp::ClientWrite { op: w, .. } => w.approx_len(),
            TxnOp::Multi(ops) | TxnOp::MultiVia { ops, .. } | TxnOp::ClientMulti { ops, .. } => {
                ops.iter().map(WriteOp::approx_len).sum()
            }
            TxnOp::EnsembleConfig { members } => members.iter().map(|m| 64 + m.peer.len()).sum(),
        };
        FIXED + ids + op
    }
}

/// A single write operation, also the element of a multi.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOp {
    /// create (1), create2 (15), createContainer (19) or createTTL (21).
    Create {
        /// The opcode, which decides the reply shape.
        opcode: i32,
        /// The requested path (before any sequence suffix).
        path: String,
        /// Node data (`None` when the client sent a null buffer).
        #[serde(with = "serde_bytes")]
        data: Option<Vec<u8>>,
        /// Requested ACL.
        acl: Vec<Acl>,
        /// Raw create-mode flags.
        flags: i32,
        /// TTL in ms for TTL modes, else 0.
        ttl_ms: i64,
    },
    /// delete (2).
    Delete {
        /// Node path.
        path: String,
        /// Expected version, -1 for any.
        version: i32,
    },
    /// setData (5).
    SetData {
        /// Node path.
        path: String,
        /// New data (`None` when the client sent a null buffer).
        #[serde(with = "serde_bytes")]
        data: Option<Vec<u8>>,
        /// Expected version, -1 for any.
        version: i32,
    },
    /// setACL (7).
    SetAcl {
        /// Node path.
        path: String,
        /// New ACL.
        acl: Vec<Acl>,
        /// Expected ACL version, -1 for any.
        version: i32,
    },
    /// deleteContainer (20): delete an empty container, or a TTL node whose TTL has run out since
    /// its last change. The server issues it when reaping; the checks are repeated at apply.
    DeleteContainer {
        /// Node path.
        path: String,
    },
    /// check (13).
    Check {
        /// Node path.
        path: String,
        /// Expected version, -1 for any.
        version: i32,
    },
}

impl WriteOp {
    fn approx_len(&self) -> usize {
        const FIXED: usize = 16;
        let acl_len = |acl: &[Acl]| acl.iter().map(|a| 8 + a.id.scheme.len() + a.id.id.len()).sum::<usize>();
        FIXED
            + match self {
                WriteOp::Create { path, data, acl, .. } => {
                    path.len() + data.as_ref().map_or(0, Vec::len) + acl_len(acl)
                }
                WriteOp::SetData { path, data, .. } => path.len() + data.as_ref().map_or(0, Vec::len),
                WriteOp::SetAcl { path, acl, .. } => path.len() + acl_len(acl),
                WriteOp::Delete { path, .. } | WriteOp::DeleteContainer { path } | WriteOp::Check { path, .. } => {
                    path.len()
                }
            }
    }
}

/// What applying a [`Txn`] answered, returned to the proposer through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnOutcome {
    /// The zxid the transaction was applied at.
    pub zxid: Zxid,
    /// The reply, or the error of a refused single operation.
    pub result: Result<TxnReply, ErrorCode>,
}

/// The successful result of a [`Txn`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnReply {
    /// A log entry with no application payload (a leader's blank entry or a membership change).
    Nothing,
    /// The new session.
    SessionCreated {
        /// Its id.
        session: SessionId,
        /// Its timeout.
        timeout_ms: i32,
        /// Its password.
        password: [u8; 16],
    },
    /// The session is closed.
    SessionClosed,
    /// The single write's result.
    Op(OpResult),
    /// A multi's per-op results. A failed multi is still `Ok` at this level, as in ZooKeeper:
    /// the failure is in the per-op results and the reply header's error is 0.
    Multi(Vec<OpResult>),
}

/// The result of one write operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// A created node: the opcode it was created with, its mode, its final path and Stat.
    Created {
        /// Opcode of the create, deciding the reply record of a single create.
        opcode: i32,
        /// Its mode, deciding the result record inside a multi.
        mode: CreateMode,
        /// Final path, with the sequence suffix.
        path: String,
        /// The new node's Stat.
        stat: Stat,
    },
    /// A deleted node.
    Deleted,
    /// New Stat after setData.
    DataSet {
        /// The node's Stat.
        stat: Stat,
    },
    /// New Stat after setACL.
    AclSet {
        /// The node's Stat.
        stat: Stat,
    },
    /// A passed version check.
    Checked,
    /// A failed operation inside a multi (0 for ops before the failure, -2 after it).
    Error(i32),
}
