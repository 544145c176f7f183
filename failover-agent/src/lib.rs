//! The Referee failover agent: one daemon beside each master that keeps exactly one healthy
//! master active and makes sure a deposed one cannot serve.
//!
//! `referee agent --config FILE` runs it. It watches its local master's health, contends for an
//! ephemeral lock znode in the coordinator (the bundled one or Apache ZooKeeper) while the master
//! is healthy, fences the previous active before promoting its own master with a fencing token
//! that never goes backwards (the lock's czxid plus the cluster's token base), demotes its
//! master when it loses the lock, its health or its lease, and serves health probes for load
//! balancers.
//!
//! ```text
//!   health monitor ──┐
//!   master adapter ──┤                      ┌──▶ fence (referee-fencing)
//!   coordinator  ────┼─▶ Observation ─▶ decide() ─▶ Steps ──┼──▶ promote / demote (adapter)
//!   lease        ────┘     (driver)      (pure)             └──▶ lock / breadcrumb (election)
//! ```
//!
//! # Layout
//!
//! - [`model`]: what the agent observes and the records it keeps in the coordinator.
//! - [`decide`]: the pure decision core, one function with table tests, and the pure rules
//!   around it (who to fence, the handover order, the promoted token).
//! - [`candidacy`]: the replication position gate, node tags, the ranking of candidates and
//!   the "why not" blocker.
//! - [`lease`]: the one lease authority, the await limit and the lease guard's rule.
//! - [`tokens`]: the bound on fencing tokens and the checked arithmetic on them.
//! - [`clock`]: the boot-time clock every lease is measured on.
//! - [`config`]: the YAML configuration and its timing rules (the lease formula).
//! - [`health`]: the health monitor, a pure state machine with a polling driver.
//! - [`exit_watch`]: the master's process watched through a pidfd, so that its death brings
//!   the next health check forward to the moment it happens.
//! - [`adapter`]: how the agent talks to its master (HTTP protocol, configured commands, or an
//!   OCF resource agent).
//! - [`election`]: the lock, breadcrumb, token base and membership znodes in the coordinator.
//! - [`grants`]: the session timeout each server of the ensemble would grant on a
//!   reconnection, the lowest of which the lease counts on (the survey's rules are pure).
//! - [`staleness`]: how stale each coordinator server says it may be (`srvr`, `conf`), which
//!   the lease counts when it is more than `coordinator.max_staleness_ms`.
//! - [`fence_checks`]: the fencing chain checked against every peer while nothing needs
//!   fencing, problems logged and served as they appear and go.
//! - [`failsafe`]: keeping an active master through a coordinator outage while every peer
//!   confirms it is not active (the members' answers and the round's targets, pure).
//! - [`driver`]: the loop that observes, decides and acts (session, observe, execute and
//!   control parts); [`driver::run`] is the entry point.
//! - [`schedule`]: switchovers scheduled for a wall-clock time (the record, `--at`, and when
//!   the target acts, pure).
//! - [`status`]: the report, history and metrics; [`probes`]: the HTTP server that serves them.
//! - [`timeline`]: the instants of a failover and the gap-free phases between them.

#![deny(missing_docs)]

pub mod adapter;
pub mod admin;
pub mod admin_cli;
pub mod candidacy;
pub mod clock;
pub mod config;
pub mod control;
pub mod decide;
pub mod driver;
pub mod election;
pub mod exit_watch;
pub mod failsafe;
pub mod fence_checks;
pub mod grants;
pub mod health;
pub mod hooks;
pub mod lease;
pub mod model;
pub mod probes;
pub mod schedule;
pub mod staleness;
pub mod status;
pub mod timeline;
pub mod tokens;
pub mod watchdog;
