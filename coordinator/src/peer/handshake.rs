//! The listener's handshake decision: whether a [`Hello`] may open a peer connection. Pure:
//! the driver reads the frame, looks up the connection already open for the dialler's id and
//! how long it has been silent, and acts on the [`Verdict`].

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::wire::{Hello, HelloError, Refusal, PROTOCOL_VERSION};
use crate::datadir::{KnownPeers, ReplacedDataDir};

/// Who this server is, as the handshake states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalIdentity {
    /// The cluster this server belongs to (from its data directory's identity).
    pub cluster_id: u64,
    /// This server's id.
    pub server_id: u64,
    /// A random number drawn when this process started, told to the servers it dials.
    pub instance: u64,
    /// This server's data directory incarnation.
    pub incarnation: u64,
}

impl LocalIdentity {
    /// The identity of a process starting now on a data directory of `incarnation`, with a
    /// fresh random instance number.
    pub fn new(cluster_id: u64, server_id: u64, incarnation: u64) -> Self {
        LocalIdentity { cluster_id, server_id, instance: rand::random(), incarnation }
    }
}

/// The process last heard speaking for each peer server id, from either direction: the
/// instance a peer accepted our dial with (refreshed by every reply on that link) and the
/// instance its own accepted dial named (refreshed by every frame on it). Shared by a server's
/// [`super::PeerNetwork`] and its listener, so an impostor is recognised even when the real
/// server never dials us (a follower does not dial its leader). It also holds the data
/// directory each peer was first heard with ([`KnownPeers`]), checked from both directions.
#[derive(Debug)]
pub struct Sightings {
    seen: Mutex<HashMap<u64, Seen>>,
    data_dirs: KnownPeers,
    /// The refusal each peer last sent this server after accepting its handshake, and when it
    /// was logged (see [`Sightings::refusal_log_due`]).
    refused: Mutex<HashMap<u64, (String, Instant)>>,
}

/// The process last heard for one id.
#[derive(Debug, Clone, Copy)]
struct Seen {
    instance: u64,
    at: Instant,
    /// It closed a connection to this server (FIN or reset) and has not been heard since.
    hung_up: bool,
    /// When this process last sent a frame only a leader sends (see [`Sightings::saw_leading`]).
    led: Option<Instant>,
}

impl Seen {
    fn as_of(&self, now: Instant) -> ActivePeer {
        ActivePeer {
            instance: self.instance,
            silent_for: now.saturating_duration_since(self.at),
            hung_up: self.hung_up,
        }
    }
}

impl Default for Sightings {
    /// Sightings whose memory of data directories lasts as long as the process.
    fn default() -> Self {
        Sightings::new(KnownPeers::in_memory())
    }
}

impl Sightings {
    /// Sightings checking peers' data directories against `data_dirs`.
    pub fn new(data_dirs: KnownPeers) -> Self {
        Sightings { seen: Mutex::default(), data_dirs, refused: Mutex::default() }
    }

    /// Whether this server logs `refusal`, sent by peer `from` at `now`: when it differs from
    /// the last one from that peer, else once every [`super::client::STILL_DOWN_EVERY`] (a
    /// leader dials again every few hundred milliseconds).
    pub fn refusal_log_due(&self, from: u64, refusal: &str, now: Instant) -> bool {
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        let last = refused.get(&from);
        let changed = last.is_none_or(|(r, _)| r != refusal);
        let due = super::client::failure_log_due(changed, last.map(|(_, at)| *at), now);
        if due {
            refused.insert(from, (refusal.to_string(), now));
        }
        due
    }

    /// Checks that server `id` presents the data directory it was first heard with
    /// ([`KnownPeers::check`]).
    pub fn check_data_dir(&self, id: u64, incarnation: u64) -> Result<(), ReplacedDataDir> {
        self.data_dirs.check(id, incarnation)
    }

    /// Records that server `id` spoke as process `instance` at `at`.
    pub fn saw(&self, id: u64, instance: u64, at: Instant) {
        self.record(id, instance, at, false);
    }

    /// Records that server `id` spoke as process `instance` at `at` with a frame only a leader
    /// sends: entries or a heartbeat, or a chunk of a snapshot. Other frames (a request for a
    /// pre-vote or a vote, a reply) show the process alive, not leading: a leader restarted
    /// without its leadership asks its old followers for votes, and if that counted as word
    /// from their leader, they would never campaign themselves.
    pub fn saw_leading(&self, id: u64, instance: u64, at: Instant) {
        self.record(id, instance, at, true);
    }

    fn record(&self, id: u64, instance: u64, at: Instant, leading: bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let led = if leading { Some(at) } else { led_by(&seen, id, instance) };
        seen.insert(id, Seen { instance, at, hung_up: false, led });
    }

    /// How long before `now` server `id` last sent a frame only a leader sends
    /// ([`Sightings::saw_leading`]), as the process last heard for it; `None` if it never did.
    pub fn leading_silent_for(&self, id: u64, now: Instant) -> Option<Duration> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&id).and_then(|s| s.led).map(|led| now.saturating_duration_since(led))
    }

    /// Records that process `instance` of server `id` closed or reset a connection to this
    /// server: when a process ends, killed or not, its kernel closes its sockets, so another
    /// process may speak for the id at once (a restart) rather than after the live window. A
    /// frame from the same process afterwards ([`Sightings::saw`]) shows it alive again.
    pub fn hung_up(&self, id: u64, instance: u64) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = seen.get_mut(&id).filter(|s| s.instance == instance) {
            s.hung_up = true;
        }
    }

    /// The process last heard for server `id` and how long ago, as of `now`.
    pub fn active(&self, id: u64, now: Instant) -> Option<ActivePeer> {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&id).map(|s| s.as_of(now))
    }

    /// Records process `instance` as server `id` if [`may_speak_for`] allows it, checked and
    /// recorded under one lock: of two processes racing to claim one id (one dialling in, one
    /// answering our dial), only the first is admitted. On refusal, returns the process heard.
    pub fn admit(&self, id: u64, instance: u64, now: Instant, live_window: Duration) -> Result<(), ActivePeer> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get(&id).map(|s| s.as_of(now)) {
            Some(a) if !may_speak_for(instance, a, live_window) => Err(a),
            _ => {
                let led = led_by(&seen, id, instance);
                seen.insert(id, Seen { instance, at: now, hung_up: false, led });
                Ok(())
            }
        }
    }
}

/// When process `instance` of server `id` last sent a frame only a leader sends, as `seen`
/// records it. What a process did as leader is its own: a new process of the id has done
/// nothing yet.
fn led_by(seen: &HashMap<u64, Seen>, id: u64, instance: u64) -> Option<Instant> {
    seen.get(&id).filter(|s| s.instance == instance).and_then(|s| s.led)
}

/// Whether process `instance` may speak for a server id whose last heard process is `active`:
/// it is that same process, or that process is gone: it hung up on this server and has not
/// been heard since (its process ended and its kernel closed its sockets: a restart), or it has
/// been silent for `live_window` (a host that vanished closes nothing; Raft traffic flows far
/// more often). Otherwise two live processes claim one id.
///
/// Both ends apply it: the listener to a dialler's [`Hello`], the dialler to the instance the
/// listener accepts with, so a duplicate is refused whichever of the two ends it sits at.
pub fn may_speak_for(instance: u64, active: ActivePeer, live_window: Duration) -> bool {
    instance == active.instance || active.hung_up || active.silent_for >= live_window
}

/// The process last heard speaking for the dialler's server id, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivePeer {
    /// The instance number it introduced itself with.
    pub instance: u64,
    /// How long since a frame last arrived on it.
    pub silent_for: Duration,
    /// Whether it has closed a connection to this server since (see [`Sightings::hung_up`]).
    pub hung_up: bool,
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
/// A dialler is accepted when no process was heard for its id, when it is that same process
/// (it gave up on a stalled connection and dialled again), or when that process has been
/// silent for `live_window` (it is gone: Raft traffic flows far more often). A different
/// process claiming an id heard from within the window is a duplicate id: refused, so two
/// servers with one id never both take part. `replaces` is set when an earlier process or
/// connection was heard for the id: the driver closes that id's older inbound connection.
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
        Some(a) if may_speak_for(hello.instance, a, live_window) => Verdict::Accept { hello, replaces: true },
        Some(_) => Verdict::Refuse(Refusal::DuplicateServer { id: hello.from }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: LocalIdentity = LocalIdentity { cluster_id: 77, server_id: 1, instance: 5, incarnation: 9 };
    const WINDOW: Duration = Duration::from_secs(3);

    fn hello(cluster_id: u64, from: u64, to: u64, instance: u64) -> Vec<u8> {
        Hello { version: PROTOCOL_VERSION, cluster_id, from, to, instance, incarnation: 40 + from }.encode()
    }

    fn accept(from: u64, instance: u64, replaces: bool) -> Verdict {
        Verdict::Accept {
            hello: Hello { version: PROTOCOL_VERSION, cluster_id: 77, from, to: 1, instance, incarnation: 40 + from },
            replaces,
        }
    }

    #[test]
    fn every_handshake_gets_the_verdict_its_fields_call_for() {
        let servers = BTreeSet::from([1, 2, 3]);
        let live = |instance| Some(ActivePeer { instance, silent_for: Duration::from_millis(100), hung_up: false });
        let gone = |instance| Some(ActivePeer { instance, silent_for: WINDOW, hung_up: false });
        let mut other_version = hello(77, 2, 1, 9);
        let theirs = PROTOCOL_VERSION + 1;
        other_version[4..6].copy_from_slice(&theirs.to_be_bytes());
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
                Verdict::Refuse(Refusal::Version { ours: PROTOCOL_VERSION, theirs }),
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

    #[test]
    fn sightings_admit_one_live_process_per_id() {
        let t0 = Instant::now();
        let s = Sightings::default();
        assert_eq!(s.admit(2, 9, t0, WINDOW), Ok(()), "first process heard for the id");
        assert_eq!(s.admit(2, 9, t0 + Duration::from_secs(1), WINDOW), Ok(()), "the same process again");
        let heard = ActivePeer { instance: 9, silent_for: Duration::from_secs(1), hung_up: false };
        assert_eq!(s.admit(2, 10, t0 + Duration::from_secs(2), WINDOW), Err(heard), "another live process");
        assert_eq!(s.admit(3, 10, t0 + Duration::from_secs(2), WINDOW), Ok(()), "another id is independent");
        // Process 9 was last heard at t0 + 1s; a window later it counts as gone.
        assert_eq!(s.admit(2, 10, t0 + Duration::from_secs(4), WINDOW), Ok(()), "a restarted process after silence");
        assert_eq!(
            s.active(2, t0 + Duration::from_secs(4)),
            Some(ActivePeer { instance: 10, silent_for: Duration::ZERO, hung_up: false })
        );
        let heard = ActivePeer { instance: 10, silent_for: Duration::from_millis(500), hung_up: false };
        assert_eq!(
            s.admit(2, 9, t0 + Duration::from_millis(4500), WINDOW),
            Err(heard),
            "the old process is now the stranger"
        );
    }

    #[test]
    fn a_process_that_hung_up_may_be_replaced_at_once_until_it_is_heard_again() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let s = Sightings::default();
        assert_eq!(s.admit(2, 9, t0, WINDOW), Ok(()));
        s.hung_up(2, 10);
        assert!(s.admit(2, 10, t0 + ms(100), WINDOW).is_err(), "another process's hang-up says nothing of 9");
        // Process 9 hangs up, then is heard again on another connection: it lives.
        s.hung_up(2, 9);
        s.saw(2, 9, t0 + ms(200));
        assert!(s.admit(2, 10, t0 + ms(300), WINDOW).is_err(), "heard again after its hang-up");
        // Process 9 hangs up and stays silent: a restart is admitted well within the window.
        s.hung_up(2, 9);
        assert!(s.active(2, t0 + ms(400)).is_some_and(|a| a.hung_up));
        assert_eq!(s.admit(2, 10, t0 + ms(400), WINDOW), Ok(()), "its restart, at once");
        assert!(s.admit(2, 9, t0 + ms(500), WINDOW).is_err(), "the old process is now the stranger");
    }

    #[test]
    fn only_frames_a_leader_sends_count_as_leading_and_only_for_the_process_that_sent_them() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let s = Sightings::default();
        assert_eq!(s.admit(1, 9, t0, WINDOW), Ok(()));
        assert_eq!(s.leading_silent_for(1, t0 + ms(10)), None, "a handshake is no leadership");
        s.saw_leading(1, 9, t0 + ms(100));
        // Pre-votes and replies afterwards show the process alive, not leading.
        s.saw(1, 9, t0 + ms(700));
        assert_eq!(s.active(1, t0 + ms(800)).map(|a| a.silent_for), Some(ms(100)));
        assert_eq!(s.leading_silent_for(1, t0 + ms(800)), Some(ms(700)), "silent as leader since its last heartbeat");
        assert_eq!(s.admit(1, 9, t0 + ms(900), WINDOW), Ok(()), "another connection of the same process");
        assert_eq!(s.leading_silent_for(1, t0 + ms(900)), Some(ms(800)), "its record as leader is kept");
        // Its restart (it hung up first) has led nothing, whatever the old process did.
        s.hung_up(1, 9);
        assert_eq!(s.admit(1, 10, t0 + ms(1000), WINDOW), Ok(()));
        s.saw(1, 10, t0 + ms(1100));
        assert_eq!(s.leading_silent_for(1, t0 + ms(1200)), None, "the restarted process has sent no entries");
        s.saw_leading(1, 10, t0 + ms(1300));
        assert_eq!(s.leading_silent_for(1, t0 + ms(1400)), Some(ms(100)));
        assert_eq!(s.leading_silent_for(2, t0 + ms(1400)), None, "another id is independent");
    }
}
