//! Fencing for Referee: make the old active unable to serve before a standby is promoted.
//!
//! Called by the failover agent (`referee-failover-agent`) when it wins the election and the
//! breadcrumb shows another node was active: `Fencer::fence(old_active, new_token)` must
//! return [`FenceOutcome::Fenced`] before the agent promotes its own master. It calls out to
//! the old master's HA endpoint, the old host's agent, local processes, `ssh`, configured
//! programs, STONITH/PDU/cloud HTTP APIs, Pacemaker's fence agents, the firewall, and
//! token-enforcing resources. Entry
//! points: [`FencingConfig::from_yaml_str`], [`Fencer::new`], [`Fencer::fence`],
//! [`Fencer::unfence`]; [`FencingToken`] and the wire types in [`protocol`] are shared with the
//! agent and the masters.
//!
//! ```text
//!   FenceTarget + new FencingToken
//!          │
//!          ▼
//!   Fencer (driver) ──next(elapsed)──▶ FencePlan (pure) ──▶ Delay | Run{level,method,budget} | Done
//!          │  ▲                                                  │
//!          │  └──────────────── record(MethodOutcome) ◀──────────┘
//!          ▼
//!   methods: graceful · agent · kill · ssh · shell · http · isolate · token · fence_agent
//!          │
//!          ▼
//!   FenceReport { outcome: Fenced | Failed | Indeterminate, events: [FenceEvent] }
//! ```
//!
//! A level is one or more methods that must all fence; levels are tried in order until one
//! does. Every method has its own deadline and the whole fence an overall one; every attempt
//! ends fenced, failed or indeterminate, never a bare boolean.
//!
//! # Layout
//!
//! - `token.rs`: [`FencingToken`], the number that orders active holders.
//! - `protocol.rs`: JSON bodies of the master HA, agent peer and token-floor protocols.
//! - `target.rs`: [`FenceTarget`], the node being fenced.
//! - `config.rs`: [`FencingConfig`], parsed from YAML and validated at load.
//! - `plan.rs`: [`FencePlan`], the pure decision core (order, budgets, level and overall outcomes).
//! - `fencer.rs`: [`Fencer`], the driver that runs the plan under deadlines and records events.
//! - `outcome.rs`: [`MethodOutcome`], [`FenceOutcome`], [`FenceEvent`], [`FenceReport`].
//! - `methods/`: one file per method; its `mod.rs` also holds the capped answer readers
//!   ([`read_json`], [`body_snippet`]) the agent reads its peers' answers with.
//! - `command.rs`: external programs under a deadline, process group contained.
//! - `procfs.rs`, `pidfd.rs`: finding and signalling exact processes on Linux.

#![deny(missing_docs)]

pub mod command;
pub mod config;
mod fencer;
mod methods;
pub mod outcome;
mod pidfd;
pub mod plan;
pub mod procfs;
pub mod protocol;
mod sock_diag;
mod target;
mod token;

pub use config::{ConfigError, FencingConfig, LevelConfig, MethodConfig};
pub use fencer::{Fencer, CLEANUP_ALLOWANCE};
pub use methods::{body_snippet, read_json, MAX_ANSWER_BYTES};
pub use outcome::{
    CheckReport, FenceEvent, FenceOutcome, FenceReport, MethodCheck, MethodKind, MethodOutcome, Operation, Readiness,
    UnfenceOutcome, UnfenceReport,
};
pub use plan::FencePlan;
pub use procfs::process_start_time;
pub use protocol::{
    HaState, HaStatus, PeerFenceOutcome, PeerFenceRequest, PeerFenceResponse, TokenFloorRequest, TokenFloorResponse,
    TokenRequest, UnhealthyReport,
};
pub use target::FenceTarget;
pub use token::FencingToken;
