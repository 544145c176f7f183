//! Demo and test programs for Referee, runnable in-process by tests and as `referee demo-...`
//! subcommands.
//!
//! These are examples of the *other side* of Referee's protocols: what a master managed by a
//! failover agent has to implement. They are small on purpose, and use `anyhow`.
//!
//! # Layout
//!
//! - [`ha_master`]: a master implementing the master HA protocol (`/ha/health`, `/ha/state`,
//!   `/ha/active`, `/ha/standby`) with a persisted highest token, a self-enforced lease, a
//!   test health switch and a small key-value store whose writes only the active may take.
//!   With `journal:` configured it is a small NameNode: a namespace over HTTP whose every edit
//!   goes to a shared journal in the coordinator first. Entry point: [`ha_master::run`].
//! - [`ha_command`]: `referee master-command`, the programs a command adapter runs (health,
//!   state, promote, demote) translated into HA requests to such a master, so the command
//!   adapter can drive it end to end; `demote` doubles as a `shell` fencing method.
//! - [`namespace`]: the NameNode-style namespace (directories, files, metadata), pure.
//! - [`journal`]: the journal in the coordinator and the epoch claim guarding it (the wire
//!   format of edits, claim, guarded append, reads).
//! - [`replica`]: the state replayed from the journal, idempotent, pure.
//! - [`verdict`]: an independent reader of the journal that judges what the masters did.
//!
//! In journal mode the pieces fit as follows:
//!
//! ```text
//!   client ──POST /fs/*──▶ ha_master ──check──▶ Replica/Namespace
//!                             │
//!                             ├─ multi(check(epoch, v), create(edit)) ──▶ coordinator journal
//!                             │                                              │
//!                             └─ apply, then acknowledge ◀── seq ────────────┤
//!   standby ha_master ◀── watch + read edits ───────────────────────────────┤
//!   verdict::verify  ◀── its own session: epoch + whole journal ────────────┘
//! ```

#![deny(missing_docs)]

pub mod ha_command;
pub mod ha_master;
pub mod journal;
pub mod namespace;
pub mod replica;
pub mod verdict;
