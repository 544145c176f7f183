//! Support shared by the `referee` binary and the suite's end-to-end tests and benchmarks.
//!
//! - [`agent`]: `referee agent` (and the lean `referee-agent`), a failover agent until stopped.
//! - [`demo`]: `referee demo`, the whole story in one command.
//! - [`ensemble`]: `referee coordinator ensemble up|status|down`, a local ensemble of processes.
//! - [`lab`]: a master pair on loopback as real processes (coordinator, two demo masters, two
//!   agents), with a split-brain watcher.
//! - [`logging`]: the binaries' log set-up (`REFEREE_LOG`, colour only on a terminal).

#![deny(missing_docs)]

pub mod agent;
pub mod demo;
pub mod ensemble;
pub mod lab;
pub mod logging;
