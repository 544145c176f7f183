//! The Referee coordinator: a coordination server that speaks the Apache ZooKeeper client
//! protocol and replicates its state through Raft (openraft).
//!
//! ZooKeeper clients (the `zookeeper-client` crate, Apache's `zkCli.sh`, kazoo) connect to it
//! unchanged. The failover agents use it for their lock, breadcrumb and membership znodes; the
//! `referee coordinator` command runs it; tests embed it with [`server::Coordinator`].
//!
//! # Layout
//!
//! One stage a module, in the order a request travels:
//!
//! - [`frame`]: 4-byte length framing and the packet size limit.
//! - [`jute`]: ZooKeeper's binary record encoding.
//! - [`proto`]: opcodes, error codes, create modes, `Stat` and `ACL` records.
//! - [`request`]: typed requests decoded from frames; replies and notifications encoded back.
//! - `connection` (private): one client connection: handshake, request reader, reply writer.
//! - [`outbox`]: the notifications owed to one connection, bounded, in ZooKeeper's order.
//! - [`txn`]: the transaction every write becomes in the replicated log.
//! - [`propose`]: gathers the writes that queue behind one fdatasync into the next log entry.
//! - [`raft`]: openraft's type configuration, log store and state machine.
//! - [`read_index`]: how an ensemble's leader proves it still leads, and answers `sync`.
//! - [`rounds`]: one round (a leader's proof, a follower's read-index request) for all the
//!   callers that ask while the one before is under way.
//! - [`role`]: a server's Raft role for its long-running tasks, woken only when it changes.
//! - [`peer`]: the server-to-server transport carrying Raft messages, forwarded writes, session
//!   liveness reports and read-index requests between ensemble members.
//! - [`log`]: the durable Raft log: checksummed segment files with group commit.
//! - [`snapshot`]: snapshot files of the data tree, written beside the log and loaded at start.
//! - [`datadir`]: the data directory's layout and the identity that ties it to one server.
//! - [`dump`]: read-only listings of a data directory, for the `log dump` and `snapshot dump` tools.
//! - [`state`]: the lock-protected server state the state machine applies to.
//! - [`tree`]: the data tree, a deterministic `apply(zxid, txn) -> (outcome, effects)`.
//! - [`watch`]: watch registrations and which connections an event reaches.
//! - [`session`]: session liveness, with time as an input.
//! - [`liveness`]: on a server that does not lead, no reply outruns the leader's knowledge of
//!   its session.
//! - [`staleness`]: the bound on how stale an ensemble server's answers may be.
//! - [`path`]: ZooKeeper's path rules.
//! - [`config`]: the YAML configuration and its validation.
//! - [`fourlw`]: the four-letter words (`ruok`, `srvr`, `mntr`, ...) on the client port.
//! - [`members_config`]: the members and their addresses in `/zookeeper/config`.
//! - [`admin`]: the admin HTTP listener: Prometheus `/metrics` and the ensemble's `/members`.
//! - [`server`]: start-up, the accept loop, session expiry, shutdown.
//! - [`run`]: a coordinator process's life from its configuration file, for both binaries.
//!
//! ```text
//!  client ─▶ frame ─▶ request ─▶ connection ─┬─ read ─▶ tree (under the state lock) ─┐
//!                                            └─ write ─▶ txn ─▶ propose ─▶ raft log ─▶ apply ─┤
//!                                                            watch events ◀──────────┤
//!  client ◀──── replies in request order, each after the events it reflects ◀─────────┘
//! ```
//!
//! Zxids are dense, one per transaction, counted as the log is applied; the wall-clock time and a new
//! session's password are stamped into the transaction before it is logged, so applying the log
//! is deterministic on every server.

#![deny(missing_docs)]

pub mod admin;
pub mod config;
mod connection;
pub mod datadir;
pub mod dump;
pub mod fourlw;
pub mod frame;
pub mod jute;
pub mod liveness;
pub mod log;
pub mod members_config;
pub mod outbox;
pub mod path;
pub mod peer;
pub mod propose;
pub mod proto;
pub mod raft;
pub mod read_index;
pub mod request;
pub mod role;
pub mod rounds;
pub mod run;
pub mod server;
pub mod session;
pub mod snapshot;
pub mod staleness;
pub mod state;
pub mod tree;
pub mod txn;
pub mod watch;
