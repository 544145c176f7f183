//! Server-to-server transport: how the coordinators of one ensemble carry Raft messages to
//! each other over TCP, on a peer port apart from the client port.
//!
//! ```text
//!  Raft ─▶ PeerNetwork ─▶ link per peer ══ TCP: handshake, then id-tagged frames ══▶ listener ─▶ Raft
//!  (client.rs)             bounded queue,                                  (listener.rs, handshake.rs)
//!                          reconnect, back-off
//! ```
//!
//! - [`wire`]: frames, the handshake records and the messages, in `postcard`.
//! - [`handshake`]: the listener's pure decision on a dialler's introduction.
//! - [`client`]: openraft's `RaftNetworkFactory`: one link per peer with its own bounds.
//! - [`listener`]: accepts peers and hands their requests to the local Raft.
//! - [`noise`]: keeps openraft from repeating in the log what a link reports once.
//!
//! A dialler states its cluster id, its server id and the server id it means to reach; a
//! listener of another cluster, a wrong server, or one that already hears a live process with
//! that id refuses with a reason the dialler logs as it came; a dialler that reaches a different
//! process than the one it hears speaking for that id refuses it in turn (see
//! [`handshake::may_speak_for`]). A duplicate id is seen by the servers that hear the real one,
//! which always includes the leader.
//!
//! A slow or silent peer costs its link's bounded queue and nothing else: calls to it fail at
//! their deadline or at once when its queue is full, and the other peers' links go on.

pub mod client;
pub mod handshake;
pub mod listener;
pub mod noise;
pub mod wire;

pub use client::{AddressBook, LinkError, LinkOptions, PeerNetwork};
pub use handshake::{LocalIdentity, Sightings};
pub use listener::{serve_peers, ListenerOptions};
pub use noise::QuietLinkFailures;
