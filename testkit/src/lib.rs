//! The shared harness of the workspace's tests and of the lab (`referee demo`, the
//! `failover-bench` binary and the end-to-end tests): one copy of the pieces every test crate
//! needs to stand a scenario up, and no test logic of its own.
//!
//! The coordinator's, the agent's, the fencing crate's and the examples' integration tests take
//! it as a dev-dependency; the root package takes it as a normal dependency because the lab,
//! which `referee demo` runs, hands out ports with [`free_port`]. It calls the bundled
//! coordinator (in-process), Debian's Apache ZooKeeper scripts (as a child process), `ip` and
//! `iptables-restore` (for simulated hosts) and nothing else of the project.
//!
//! # Layout
//!
//! - [`free_port`]: loopback ports for child processes, each handed out once per process and
//!   from below the kernel's ephemeral range, so no other bind takes them first.
//! - [`within`], [`within_for`], [`wait_until`]: every wait in a test has a deadline;
//!   [`output_within`], a program's run too.
//! - [`ScratchDir`]: a temporary directory removed on drop.
//! - [`skip`]: the one way a test skips for a missing prerequisite, loudly, and never under
//!   `CI` or `REFEREE_REQUIRE_ALL_TESTS` ([`all_required`]).
//! - [`TestServer`]: the bundled coordinator in-process on an ephemeral port, with [`connect`]
//!   for a zookeeper-client session.
//! - [`ApacheZk`]: Apache ZooKeeper from Debian's package, standalone on loopback (or
//!   [`ApacheZkEnsemble`], several servers), with
//!   [`apache_zookeeper_installed`] and [`four_letter`].
//! - [`abuse`]: a misbehaviour load generator (never-reading, flooding, session-leaking and
//!   huge-path clients beside timed well-behaved ones) with the raw pipelining client it uses.
//! - [`bench`]: a pipelined throughput load (N sessions with K requests in flight each, one
//!   operation or a read/write mix) recording every reply's latency and arrival.
//! - [`jute`]: ZooKeeper's wire records, encoded and decoded independently of the server's codec.
//! - [`linearizability`]: a checker of concurrent histories against a sequential model (Wing and
//!   Gong's search with Lowe's memoisation), with a ZooKeeper znode register model, and
//!   [`register_workload`], the clients that record such a history against a real server;
//!   [`session_order`], readers that keep one session through reconnects and check that it
//!   never sees a znode's version go back.
//! - [`Hosts`]: simulated hosts, each a network namespace with its own address on one switch,
//!   with partitions (both ways or one way), black holes and isolation as iptables drops, and
//!   [`hosts_unavailable`] saying why they cannot run here.
//! - [`Proxy`]: a TCP proxy to a ZooKeeper-wire server that a test can cut, restore,
//!   black-hole (accept, then forward nothing) and heal, or arm with a [`Trap`] that drops one
//!   frame together with its connection.
//!
//! Errors are [`anyhow`]'s, as everywhere in tests; only [`free_port`], which the lab's typed
//! errors wrap, returns an [`std::io::Error`].
#![deny(missing_docs)]

pub mod abuse;
mod apache_zk;
pub mod bench;
mod command;
mod deadline;
mod hosts;
pub mod jute;
pub mod linearizability;
mod ports;
mod proxy;
pub mod register_workload;
mod scratch_dir;
pub mod session_order;
mod skip;
mod test_server;

pub use apache_zk::{
    apache_zookeeper_installed, cons_session_timeout, four_letter, ApacheZk, ApacheZkEnsemble, ApacheZkProfile,
    APACHE_ZK_BIN, APACHE_ZK_MISSING, SUPER_DIGEST,
};
pub use command::output_within;
pub use deadline::{closed_within, wait_until, within, within_for, DEADLINE};
pub use hosts::{hosts_unavailable, running_as_root, Faults, Host, Hosts, HOSTS_PREFIX};
pub use ports::free_port;
pub use proxy::{Proxy, Trap};
pub use scratch_dir::ScratchDir;
pub use skip::{all_required, skip};
pub use test_server::{connect, TestServer};
