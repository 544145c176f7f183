//! Replication: the openraft type configuration, the log store, and the state machine that
//! applies committed transactions to the shared [`ServerState`].
//!
//! ```text
//!  connection ──Txn──▶ Raft::client_write ──▶ log store (append, flush)
//!                                                 │ committed
//!                                                 ▼
//!  connection ◀──TxnOutcome── state machine: ServerState::apply(zxid = log index)
//!                                                 └──▶ watch notifications to connections
//! ```
//!
//! Every write, on every server, is applied here and only here, so the ensemble adds voters
//! and learners to the same path rather than a second one. The log store keeps entries in memory
//! behind openraft's storage traits; durability replaces it without touching the rest.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

use crate::proto::Zxid;
use crate::state::ServerState;
use crate::tree::DataTree;
use crate::txn::{Txn, TxnOutcome, TxnReply};

openraft::declare_raft_types!(
    /// Raft types of the coordinator: transactions in, outcomes out.
    pub TypeConfig:
        D = Txn,
        R = TxnOutcome,
        NodeId = u64,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
);

/// The Raft handle of a coordinator server.
pub type Raft = openraft::Raft<TypeConfig>;

type SErr = StorageError<u64>;

#[derive(Debug, Default)]
struct LogInner {
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    last_purged: Option<LogId<u64>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
}

/// The Raft log, in memory.
#[derive(Debug, Clone, Default)]
pub struct MemLogStore {
    inner: Arc<Mutex<LogInner>>,
}

impl MemLogStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, LogInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl RaftLogReader<TypeConfig> for MemLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, SErr> {
        Ok(self.lock().entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, SErr> {
        let inner = self.lock();
        let last = inner.entries.values().next_back().map(|e| e.log_id).or(inner.last_purged);
        Ok(LogState { last_purged_log_id: inner.last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), SErr> {
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, SErr> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), SErr> {
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, SErr> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut inner = self.lock();
            for e in entries {
                inner.entries.insert(e.log_id.index, e);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        let mut inner = self.lock();
        let _ = inner.entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), SErr> {
        let mut inner = self.lock();
        inner.last_purged = Some(log_id);
        inner.entries = inner.entries.split_off(&(log_id.index + 1));
        Ok(())
    }
}

/// What a snapshot holds: the tree, and the log position and membership it reflects.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    tree: DataTree,
}

#[derive(Debug, Clone)]
struct StoredSnapshot {
    meta: SnapshotMeta<u64, BasicNode>,
    data: Vec<u8>,
}

#[derive(Debug, Default)]
struct SmMeta {
    last_applied: Option<LogId<u64>>,
    membership: StoredMembership<u64, BasicNode>,
    snapshot: Option<StoredSnapshot>,
    snapshot_seq: u64,
}

/// The state machine: applies committed entries to the shared [`ServerState`].
#[derive(Debug, Clone)]
pub struct StateMachine {
    state: Arc<Mutex<ServerState>>,
    meta: Arc<Mutex<SmMeta>>,
}

impl StateMachine {
    /// A state machine over the server's shared state.
    pub fn new(state: Arc<Mutex<ServerState>>) -> Self {
        StateMachine { state, meta: Arc::new(Mutex::new(SmMeta::default())) }
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, SmMeta> {
        self.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn io_err(e: impl std::error::Error + 'static, verb: openraft::ErrorVerb) -> SErr {
        StorageIOError::new(openraft::ErrorSubject::StateMachine, verb, openraft::AnyError::new(&e)).into()
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, SErr> {
        // Copy under the locks, serialise outside them: applying goes on meanwhile. The copy is
        // O(1): the tree's maps are persistent and share every node with the live tree, which
        // copies a node only when it next changes it. This is the seam a streamed on-disk
        // snapshot plugs into: it gets the same point-in-time tree and writes it out at its pace.
        let (tree, last_applied, membership) = {
            let meta = self.meta();
            let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (st.tree.clone(), meta.last_applied, meta.membership.clone())
        };
        let body = SnapshotBody { last_applied, membership: membership.clone(), tree };
        let data = serde_json::to_vec(&body).map_err(|e| Self::io_err(e, openraft::ErrorVerb::Write))?;
        let mut meta = self.meta();
        meta.snapshot_seq += 1;
        let snapshot_id = match last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, meta.snapshot_seq),
            None => format!("--{}", meta.snapshot_seq),
        };
        let smeta = SnapshotMeta { last_log_id: last_applied, last_membership: membership, snapshot_id };
        meta.snapshot = Some(StoredSnapshot { meta: smeta.clone(), data: data.clone() });
        Ok(Snapshot { meta: smeta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId<u64>>, StoredMembership<u64, BasicNode>), SErr> {
        let meta = self.meta();
        Ok((meta.last_applied, meta.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<TxnOutcome>, SErr>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut meta = self.meta();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for entry in entries {
            // Log indexes past i64::MAX cannot occur (one entry a ns would take 292 years); saturate
            // rather than wrap if one ever did.
            let zxid = Zxid(i64::try_from(entry.log_id.index).unwrap_or(i64::MAX));
            meta.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Normal(ref txn) => st.apply(zxid, txn, now),
                EntryPayload::Blank => {
                    st.tree.apply_empty(zxid);
                    TxnOutcome { zxid, result: Ok(TxnReply::Nothing) }
                }
                EntryPayload::Membership(ref m) => {
                    st.tree.apply_empty(zxid);
                    meta.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    TxnOutcome { zxid, result: Ok(TxnReply::Nothing) }
                }
            };
            out.push(outcome);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, SErr> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), SErr> {
        let data = snapshot.into_inner();
        let body: SnapshotBody =
            serde_json::from_slice(&data).map_err(|e| Self::io_err(e, openraft::ErrorVerb::Read))?;
        let mut m = self.meta();
        {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.install_tree(body.tree, Instant::now());
        }
        m.last_applied = meta.last_log_id;
        m.membership = meta.last_membership.clone();
        m.snapshot = Some(StoredSnapshot { meta: meta.clone(), data });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, SErr> {
        Ok(self
            .meta()
            .snapshot
            .as_ref()
            .map(|s| Snapshot { meta: s.meta.clone(), snapshot: Box::new(Cursor::new(s.data.clone())) }))
    }
}

/// Network of a single-voter cluster: there is nobody to talk to. The ensemble replaces it with
/// a real transport; a one-voter cluster never calls it.
#[derive(Debug, Clone, Default)]
pub struct LoneNetwork;

impl openraft::RaftNetworkFactory<TypeConfig> for LoneNetwork {
    type Network = LoneNetwork;

    async fn new_client(&mut self, _target: u64, _node: &BasicNode) -> Self::Network {
        LoneNetwork
    }
}

fn unreachable_peer<E: std::error::Error>() -> openraft::error::RPCError<u64, BasicNode, E> {
    openraft::error::RPCError::Unreachable(openraft::error::Unreachable::new(&std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "this server runs alone and has no peers",
    )))
}

impl openraft::RaftNetwork<TypeConfig> for LoneNetwork {
    async fn append_entries(
        &mut self,
        _rpc: openraft::raft::AppendEntriesRequest<TypeConfig>,
        _option: openraft::network::RPCOption,
    ) -> Result<
        openraft::raft::AppendEntriesResponse<u64>,
        openraft::error::RPCError<u64, BasicNode, openraft::error::RaftError<u64>>,
    > {
        Err(unreachable_peer())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: openraft::raft::InstallSnapshotRequest<TypeConfig>,
        _option: openraft::network::RPCOption,
    ) -> Result<
        openraft::raft::InstallSnapshotResponse<u64>,
        openraft::error::RPCError<
            u64,
            BasicNode,
            openraft::error::RaftError<u64, openraft::error::InstallSnapshotError>,
        >,
    > {
        Err(unreachable_peer())
    }

    async fn vote(
        &mut self,
        _rpc: openraft::raft::VoteRequest<u64>,
        _option: openraft::network::RPCOption,
    ) -> Result<
        openraft::raft::VoteResponse<u64>,
        openraft::error::RPCError<u64, BasicNode, openraft::error::RaftError<u64>>,
    > {
        Err(unreachable_peer())
    }
}
