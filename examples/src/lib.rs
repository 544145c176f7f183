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
//!   Entry point: [`ha_master::run`].

#![deny(missing_docs)]

pub mod ha_master;
