//! The peer protocol's bytes: length-prefixed frames, the handshake records, and the messages
//! exchanged once a connection is accepted.
//!
//! A frame is a 4-byte big-endian body length, then the body; no body may exceed
//! [`MAX_FRAME_BYTES`]. The first frame from the dialler is a [`Hello`]: the [`MAGIC`] bytes and
//! the protocol version in fixed positions (so a server of any version can read them and say
//! which version it speaks), then the rest as `postcard`. The listener answers with one
//! [`HelloReply`] frame. Every later frame is a [`PeerMessage`] in `postcard`.
//!
//! `postcard` writes an enum as its variant's index, then its fields: new message kinds are
//! appended as new variants at the end of [`PeerRequest`] and [`PeerReply`], never inserted, and
//! a change to an existing variant's fields takes a new [`PROTOCOL_VERSION`].

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::proto::SessionId;
use crate::raft::TypeConfig;
use crate::txn::{BatchOutcome, TxnBatch};

/// The first four bytes of every handshake: a connection that does not start with them is
/// not a Referee peer (a ZooKeeper client on the wrong port, a port scanner).
pub const MAGIC: [u8; 4] = *b"RFPR";

/// The version of the peer protocol this build speaks.
/// Version 2: log entries carry a batch of transactions. Version 3: the handshake carries the
/// data directory's incarnation. Version 4: the pre-vote ([`PeerRequest::PreVote`]). Version 5:
/// a leader acknowledges a liveness report only under a proof of its leadership, and refuses
/// it otherwise ([`PeerReply::TouchRefused`]); a server of an older version would acknowledge
/// one without. Version 6: a liveness report says how long ago each session was heard
/// ([`HeardFrom`]); a leader of version 5 would count every session from the report's arrival.
pub const PROTOCOL_VERSION: u16 = 6;

/// The largest frame body either side sends or accepts. It holds a snapshot chunk (openraft
/// sends 3 MiB by default) or a batch of log entries with room to spare; a larger batch of
/// entries is refused before it is sent and openraft retries it in smaller batches.
pub const MAX_FRAME_BYTES: usize = 32 << 20;

/// The largest handshake frame: a [`Hello`] or [`HelloReply`] is a few dozen bytes.
pub const MAX_HANDSHAKE_BYTES: usize = 4 << 10;

/// A frame that cannot be read or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed or closed.
    #[error("peer connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix announces more than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced body length.
        len: usize,
        /// The limit it exceeds.
        max: usize,
    },
    /// The body is not a valid record of the expected kind.
    #[error("malformed {what}: {why}")]
    Malformed {
        /// What the frame should have held.
        what: &'static str,
        /// What is wrong with it.
        why: String,
    },
}

/// Checks a frame's announced body length against `max`.
pub fn check_frame_len(len: u32, max: usize) -> Result<usize, WireError> {
    let len = len as usize;
    if len > max {
        return Err(WireError::TooLarge { len, max });
    }
    Ok(len)
}

/// Prepends the length prefix to `body`.
pub fn frame(body: &[u8]) -> Result<Vec<u8>, WireError> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(WireError::TooLarge { len: body.len(), max: MAX_FRAME_BYTES });
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

impl WireError {
    /// Whether the peer closed or reset the connection: what a read sees when the process at
    /// the other end ended (its kernel closes its sockets) or hung up.
    pub fn is_hang_up(&self) -> bool {
        matches!(
            self,
            WireError::Io(e) if matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
            )
        )
    }
}

/// Reads one frame's body, refusing one longer than `max` before allocating for it.
pub async fn read_frame(r: &mut (impl AsyncRead + Unpin), max: usize) -> Result<Vec<u8>, WireError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = check_frame_len(u32::from_be_bytes(len), max)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(body)
}

/// Writes `body` as one frame.
pub async fn write_frame(w: &mut (impl AsyncWrite + Unpin), body: &[u8]) -> Result<(), WireError> {
    w.write_all(&frame(body)?).await?;
    Ok(())
}

/// The dialler's introduction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the dialler speaks.
    pub version: u16,
    /// The cluster the dialler belongs to.
    pub cluster_id: u64,
    /// The dialler's server id.
    pub from: u64,
    /// The server id the dialler believes it is talking to.
    pub to: u64,
    /// A random number the dialler's process drew at start: two processes claiming one server
    /// id tell themselves apart by it.
    pub instance: u64,
    /// The dialler's data directory incarnation ([`crate::datadir::Identity::incarnation`]): a
    /// server whose data was wiped presents another one.
    pub incarnation: u64,
}

#[derive(Serialize, Deserialize)]
struct HelloBody {
    cluster_id: u64,
    from: u64,
    to: u64,
    instance: u64,
    incarnation: u64,
}

/// Why a handshake frame could not be read as a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HelloError {
    /// It does not start with [`MAGIC`] and a version.
    NotAPeer,
    /// It speaks another version of the protocol, whose body this build cannot read.
    Version(u16),
    /// The magic and version are right but the rest is garbled.
    Malformed(String),
}

impl Hello {
    /// The handshake frame's body.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&self.version.to_be_bytes());
        let body = HelloBody {
            cluster_id: self.cluster_id,
            from: self.from,
            to: self.to,
            instance: self.instance,
            incarnation: self.incarnation,
        };
        // Serializing plain integers into a Vec cannot fail.
        out.extend(postcard::to_stdvec(&body).expect("a hello encodes"));
        out
    }

    /// Reads a handshake frame's body.
    pub fn decode(body: &[u8]) -> Result<Hello, HelloError> {
        if body.len() < 6 || body[..4] != MAGIC {
            return Err(HelloError::NotAPeer);
        }
        let version = u16::from_be_bytes([body[4], body[5]]);
        if version != PROTOCOL_VERSION {
            return Err(HelloError::Version(version));
        }
        let b: HelloBody = postcard::from_bytes(&body[6..]).map_err(|e| HelloError::Malformed(e.to_string()))?;
        Ok(Hello {
            version,
            cluster_id: b.cluster_id,
            from: b.from,
            to: b.to,
            instance: b.instance,
            incarnation: b.incarnation,
        })
    }
}

/// Why a listener refused a connection. Sent to the dialler, which logs it as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Refusal {
    /// The first frame was not a Referee peer handshake.
    #[error("the connection did not start with a Referee peer handshake; is this a peer port?")]
    NotAPeer,
    /// The handshake was garbled after a valid magic and version.
    #[error("malformed handshake: {0}")]
    Malformed(String),
    /// The dialler speaks another protocol version.
    #[error("peer protocol version {theirs} is not spoken here (this server speaks {ours}); run one release on every server")]
    Version {
        /// The listener's version.
        ours: u16,
        /// The dialler's version.
        theirs: u16,
    },
    /// The dialler belongs to another cluster.
    #[error("wrong cluster id: this server belongs to cluster {ours}, the dialler to cluster {theirs}; check which data directory and configuration each server uses")]
    WrongCluster {
        /// The listener's cluster id.
        ours: u64,
        /// The dialler's cluster id.
        theirs: u64,
    },
    /// The dialler's server id is not one of this cluster's servers.
    #[error("unknown server id {id}: it is not listed among this cluster's servers")]
    UnknownServer {
        /// The dialler's claimed id.
        id: u64,
    },
    /// The dialler dialled another server's address, or claims the listener's own id.
    #[error("this is server {ours}, not server {believed}; check the peer addresses in the configuration")]
    NotThisServer {
        /// The listener's id.
        ours: u64,
        /// The id the dialler thought it was reaching.
        believed: u64,
    },
    /// Another live process already speaks for this server id.
    #[error("duplicate server id {id}: another process with this id is connected; give every server its own id")]
    DuplicateServer {
        /// The claimed id.
        id: u64,
    },
    /// The dialler presents another data directory than the one its id was first heard with.
    #[error(
        "server {id} presents a new data directory (incarnation {presented}; it was first heard with {known}): \
         its data was wiped or replaced, so it has forgotten the votes it cast and the entries it acknowledged. \
         It may rejoin only as a new member: remove it (`referee coordinator members remove --server ADMIN \
         --id {id}`, ADMIN being any member's admin address), then add it under a new id with an empty data \
         directory"
    )]
    ReplacedDataDir {
        /// The dialler's id.
        id: u64,
        /// The incarnation first heard for it.
        known: u64,
        /// The incarnation it presents.
        presented: u64,
    },
    /// The listener holds as many peer connections as it allows.
    #[error("this server already holds its limit of {limit} peer connections")]
    Busy {
        /// The connection limit.
        limit: usize,
    },
}

/// The listener's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HelloReply {
    /// The connection carries [`PeerMessage`]s from now on.
    Accepted {
        /// The listener's process instance (see [`Hello::instance`]).
        instance: u64,
        /// The listener's data directory incarnation (see [`Hello::incarnation`]).
        incarnation: u64,
    },
    /// The listener closes the connection after this frame.
    Refused(Refusal),
}

impl HelloReply {
    /// The reply frame's body.
    pub fn encode(&self) -> Vec<u8> {
        // Enum of strings and integers into a Vec: cannot fail.
        postcard::to_stdvec(self).expect("a hello reply encodes")
    }

    /// Reads a reply frame's body.
    pub fn decode(body: &[u8]) -> Result<HelloReply, WireError> {
        postcard::from_bytes(body).map_err(|e| WireError::Malformed { what: "handshake reply", why: e.to_string() })
    }
}

/// A request from one server to another.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum PeerRequest {
    /// Raft log replication and heartbeats.
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    /// A candidate's request for a vote.
    Vote(VoteRequest<u64>),
    /// One chunk of a snapshot.
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower's or observer's clients' writes, for the leader to put in its log as one
    /// entry. Batches from one server are entered in the order they arrive.
    Forward(TxnBatch),
    /// The sessions whose clients this server heard from since its last report: the leader,
    /// which alone expires sessions, counts each as alive from when it was heard.
    Touch(Vec<HeardFrom>),
    /// A read-index barrier for `sync`: the leader confirms it still leads and answers the
    /// index every earlier committed write is applied at.
    ReadIndex,
    /// A voter's question before it campaigns: would this server vote for a candidate whose
    /// log ends at `last_log_id`? Asked without raising any term (see [`crate::staleness`]).
    PreVote {
        /// The end of the asker's log.
        last_log_id: Option<openraft::LogId<u64>>,
    },
}

/// One session of a liveness report: its client was heard `ago_ms` before the report was sent
/// (rounded down). An age, not an instant: the servers' clocks are not compared, and the time
/// the report spends on its way only makes the leader count from later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeardFrom {
    /// The session.
    pub session: SessionId,
    /// How long before the report was sent its client was last heard.
    pub ago_ms: u32,
}

/// What the leader answers a [`PeerRequest::Forward`]: the outcome of each transaction, and a
/// log index the forwarding server must have applied before it answers its clients (so a
/// client reads its own write there).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Forwarded {
    /// Applied on the leader at or before this index.
    pub applied_index: u64,
    /// One outcome per transaction, in order.
    pub outcomes: BatchOutcome,
}

/// The answer to a [`PeerRequest`] of the same kind.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerReply {
    /// The answer to [`PeerRequest::AppendEntries`].
    AppendEntries(Result<AppendEntriesResponse<u64>, RaftError<u64>>),
    /// The answer to [`PeerRequest::Vote`].
    Vote(Result<VoteResponse<u64>, RaftError<u64>>),
    /// The answer to [`PeerRequest::InstallSnapshot`].
    InstallSnapshot(Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>),
    /// The answer to [`PeerRequest::Forward`]; an error says why the leader could not
    /// (it may no longer lead: the writes' fate is then unknown).
    Forward(Result<Forwarded, String>),
    /// The answer to [`PeerRequest::Touch`]: the sessions of the report the leader no longer
    /// holds alive (expired or being expired).
    Touch {
        /// Those sessions.
        expired: Vec<SessionId>,
    },
    /// The answer to [`PeerRequest::ReadIndex`].
    ReadIndex(Result<u64, String>),
    /// The answer to [`PeerRequest::PreVote`]: whether this server would grant the vote.
    PreVote {
        /// It would.
        granted: bool,
    },
    /// The answer to [`PeerRequest::Touch`] from a server that could not prove it leads the
    /// ensemble (see [`crate::liveness`]): the report counts for nothing.
    TouchRefused {
        /// Why.
        why: String,
    },
}

/// A frame after the handshake. Requests carry an id the dialler chose, unique on the
/// connection; the reply carries it back, so replies may come in any order.
#[derive(Debug, Serialize, Deserialize)]
pub enum PeerMessage {
    /// Dialler to listener.
    Request {
        /// Matches the reply to the request.
        id: u64,
        /// What is asked.
        body: PeerRequest,
    },
    /// Listener to dialler.
    Reply {
        /// The id of the request answered.
        id: u64,
        /// The answer.
        body: PeerReply,
    },
    /// Dialler to listener, as the only frame after the handshake: the dialler refuses the
    /// listener it reached (it answered from a replaced data directory) and closes the
    /// connection. Sent so the refused server logs why: its own handshake check passed. (A
    /// server of an earlier release reads it as a malformed frame and closes the connection,
    /// as it would have seen it closed anyway.)
    Refused(Refusal),
}

impl PeerMessage {
    /// The frame body.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        postcard::to_stdvec(self).map_err(|e| WireError::Malformed { what: "peer message", why: e.to_string() })
    }

    /// Reads a frame body.
    pub fn decode(body: &[u8]) -> Result<PeerMessage, WireError> {
        postcard::from_bytes(body).map_err(|e| WireError::Malformed { what: "peer message", why: e.to_string() })
    }
}
