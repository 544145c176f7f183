//! The listener's handshake decision: whether a [`Hello`] may open a peer connection. Pure:
//! the driver reads the frame, looks up the connection already open for the dialler's id and
//! how long it has been silent, and acts on the [`Verdict`].

use std::collections::BTreeSet;
use std::time::Duration;

use super::wire::{Hello, HelloError, Refusal, PROTOCOL_VERSION};

/// Who this server is, as the handshake states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalIdentity {
    /// The cluster this server belongs to (from its data directory's identity).
    pub cluster_id: u64,
    /// This server's id.
    pub server_id: u64,
    /// A random number drawn when this process started, told to the servers it dials.
    pub instance: u64,
}

impl LocalIdentity {
    /// The identity of a process starting now, with a fresh random instance number.
    pub fn new(cluster_id: u64, server_id: u64) -> Self {
        LocalIdentity { cluster_id, server_id, instance: rand::random() }
    }
}

/// The connection already open from the dialler's server id, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivePeer {
    /// The instance number it introduced itself with.
    pub instance: u64,
    /// How long since a frame last arrived on it.
    pub silent_for: Duration,
}

/// What the listener does with a handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Accept it; `replaces` says whether the connection open for that id is closed first.
    Accept {
        /// The dialler's introduction.
        hello: Hello,
        /// Whether an older connection from the same id is closed in its favour.
        replaces: bool,
    },
    /// Send the refusal and close.
    Refuse(Refusal),
}

/// Decides on the handshake frame `body`.
///
/// A second connection from a server id replaces the first when it comes from the same
/// process (the dialler gave up on a stalled connection and dialled again) or when the first
/// has been silent for `live_window` (its process is gone: a leader sends heartbeats far more
/// often). A different process claiming an id whose connection is alive is a duplicate id:
/// refused, so two servers with one id never both replicate.
pub fn decide(
    body: &[u8],
    local: &LocalIdentity,
    servers: &BTreeSet<u64>,
    active: Option<ActivePeer>,
    live_window: Duration,
) -> Verdict {
    let hello = match Hello::decode(body) {
        Ok(h) => h,
        Err(HelloError::NotAPeer) => return Verdict::Refuse(Refusal::NotAPeer),
        Err(HelloError::Version(theirs)) => {
            return Verdict::Refuse(Refusal::Version { ours: PROTOCOL_VERSION, theirs })
        }
        Err(HelloError::Malformed(why)) => return Verdict::Refuse(Refusal::Malformed(why)),
    };
    if hello.cluster_id != local.cluster_id {
        return Verdict::Refuse(Refusal::WrongCluster { ours: local.cluster_id, theirs: hello.cluster_id });
    }
    if hello.to != local.server_id {
        return Verdict::Refuse(Refusal::NotThisServer { ours: local.server_id, believed: hello.to });
    }
    // A dialler claiming this server's own id is another process configured with our id.
    if hello.from == local.server_id {
        return Verdict::Refuse(Refusal::DuplicateServer { id: hello.from });
    }
    if !servers.contains(&hello.from) {
        return Verdict::Refuse(Refusal::UnknownServer { id: hello.from });
    }
    match active {
        None => Verdict::Accept { hello, replaces: false },
        Some(a) if a.instance == hello.instance || a.silent_for >= live_window => {
            Verdict::Accept { hello, replaces: true }
        }
        Some(_) => Verdict::Refuse(Refusal::DuplicateServer { id: hello.from }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: LocalIdentity = LocalIdentity { cluster_id: 77, server_id: 1, instance: 5 };
    const WINDOW: Duration = Duration::from_secs(3);

    fn hello(cluster_id: u64, from: u64, to: u64, instance: u64) -> Vec<u8> {
        Hello { version: PROTOCOL_VERSION, cluster_id, from, to, instance }.encode()
    }

    fn accept(from: u64, instance: u64, replaces: bool) -> Verdict {
        Verdict::Accept { hello: Hello { version: PROTOCOL_VERSION, cluster_id: 77, from, to: 1, instance }, replaces }
    }

    #[test]
    fn every_handshake_gets_the_verdict_its_fields_call_for() {
        let servers = BTreeSet::from([1, 2, 3]);
        let live = |instance| Some(ActivePeer { instance, silent_for: Duration::from_millis(100) });
        let gone = |instance| Some(ActivePeer { instance, silent_for: WINDOW });
        let mut other_version = hello(77, 2, 1, 9);
        other_version[4..6].copy_from_slice(&2u16.to_be_bytes());
        let mut truncated = hello(77, 2, 1, 9);
        truncated.truncate(7);
        let cases: Vec<(&str, Vec<u8>, Option<ActivePeer>, Verdict)> = vec![
            ("a known server, first connection", hello(77, 2, 1, 9), None, accept(2, 9, false)),
            ("the same process dials again", hello(77, 2, 1, 9), live(9), accept(2, 9, true)),
            ("a restarted process after silence", hello(77, 2, 1, 10), gone(9), accept(2, 10, true)),
            (
                "another live process with the same id",
                hello(77, 2, 1, 10),
                live(9),
                Verdict::Refuse(Refusal::DuplicateServer { id: 2 }),
            ),
            (
                "a dialler claiming our own id",
                hello(77, 1, 1, 9),
                None,
                Verdict::Refuse(Refusal::DuplicateServer { id: 1 }),
            ),
            (
                "wrong cluster",
                hello(78, 2, 1, 9),
                None,
                Verdict::Refuse(Refusal::WrongCluster { ours: 77, theirs: 78 }),
            ),
            ("unknown server", hello(77, 4, 1, 9), None, Verdict::Refuse(Refusal::UnknownServer { id: 4 })),
            (
                "dialled the wrong address",
                hello(77, 2, 3, 9),
                None,
                Verdict::Refuse(Refusal::NotThisServer { ours: 1, believed: 3 }),
            ),
            (
                "another protocol version",
                other_version,
                None,
                Verdict::Refuse(Refusal::Version { ours: PROTOCOL_VERSION, theirs: 2 }),
            ),
            (
                "a ZooKeeper connect request",
                vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                None,
                Verdict::Refuse(Refusal::NotAPeer),
            ),
            ("empty", vec![], None, Verdict::Refuse(Refusal::NotAPeer)),
        ];
        for (what, body, active, want) in cases {
            assert_eq!(decide(&body, &LOCAL, &servers, active, WINDOW), want, "{what}");
        }
        // A garbled body after a good magic and version is refused as malformed.
        assert!(matches!(decide(&truncated, &LOCAL, &servers, None, WINDOW), Verdict::Refuse(Refusal::Malformed(_))));
    }
}
