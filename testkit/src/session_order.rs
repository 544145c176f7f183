//! ZooKeeper's ordering promise to one session, checked through reconnects: a client never sees
//! an older view of the data after a newer one. A server keeps it by refusing a session whose
//! last seen zxid is ahead of its own tree; a lagging follower that served such a session
//! would hand it the past.
//!
//! A [`SessionReader`] keeps one zookeeper-client session for as long as the session lives,
//! moving between servers as the library does after a lost connection, and reads the current
//! znode of a [`Keys`] rotation with plain `getData` (no `sync`: those reads may be stale, but
//! within a session never staler than what it has already seen). [`monotonic`] then checks that
//! no session saw a znode's version go down.
//!
//! A [`DataWatcher`] follows a znode by its watches alone, which a session keeps across
//! servers (the client library sets them again on the server it reconnects to): one
//! notification lost anywhere leaves it behind for good.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use tokio::time::Instant;
use zookeeper_client as zk;

use crate::register_workload::Keys;

/// One answered read of a [`SessionReader`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenVersion {
    /// The reader's number.
    pub reader: usize,
    /// The session it read in.
    pub session: i64,
    /// The znode's key.
    pub key: u64,
    /// When the read was called and when it was answered, from the run's start.
    pub call: Duration,
    /// See `call`.
    pub returned: Duration,
    /// The data version read.
    pub version: i32,
    /// The zxid of the znode's last change, as read.
    pub mzxid: i64,
}

/// Every reader's answered reads, each reader's in the order it made them.
pub type Seen = Arc<Mutex<Vec<SeenVersion>>>;

/// A reader that keeps its session through lost connections.
#[derive(Debug, Clone)]
pub struct SessionReader {
    /// Its number.
    pub id: usize,
    /// The parent of the keys, or the znode itself with [`Keys::One`].
    pub path: String,
    /// Which znode a read at a given time goes to.
    pub keys: Keys,
    /// The servers its sessions may use.
    pub connect: String,
    /// The session timeout it asks for: long enough to outlive a fault, so that the session
    /// moves between servers rather than ends.
    pub session_timeout: Duration,
    /// How long one read may take before the reader stops waiting for it (the session goes
    /// on; the read, answered later or never, is not recorded).
    pub op_deadline: Duration,
}

impl SessionReader {
    /// Reads until `stop`, recording each answered read into `seen` with times counted from
    /// `started`. A new session is made only when the last one expired or could not be made.
    pub async fn run(self, started: Instant, stop: Arc<AtomicBool>, seen: Seen) {
        let mut session: Option<zk::Client> = None;
        while !stop.load(Ordering::Relaxed) {
            let Some(client) = &session else {
                let connect = crate::connect(&self.connect, self.session_timeout);
                match tokio::time::timeout(self.op_deadline * 2, connect).await {
                    Ok(Ok(c)) => session = Some(c),
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                continue;
            };
            if client.state().is_terminated() {
                session = None;
                continue;
            }
            let call = started.elapsed();
            let key = self.keys.key_at(call);
            let path = self.keys.path_of(&self.path, key);
            match tokio::time::timeout(self.op_deadline, client.get_data(&path)).await {
                Ok(Ok((_, stat))) => {
                    let returned = started.elapsed();
                    let session = client.session_id().0;
                    let read = SeenVersion {
                        reader: self.id,
                        session,
                        key,
                        call,
                        returned,
                        version: stat.version,
                        mzxid: stat.mzxid,
                    };
                    seen.lock().unwrap().push(read);
                }
                // A lost connection or a read not answered in time: the library reconnects the
                // same session, to this server or another, unless it has expired.
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
}

/// What a [`DataWatcher`] has seen so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Watched {
    /// The data version of its last read (-1 before the first).
    pub version: i32,
    /// Data-changed notifications received.
    pub notifications: u64,
    /// Sessions it has had (more than one only if one expired or could not be made).
    pub sessions: u64,
}

/// A client that follows one znode by its watches alone: it reads the znode with a data watch,
/// waits for the notification, reads it again with a new watch, and so on, in one session
/// for as long as the session lives. It never reads without a notification, so a watch lost
/// once (dropped by a server, not set again on the server a reconnect reaches, or spent on a
/// change without a notification sent) leaves it behind for good: a write made after the
/// faults, which it must then be notified of within a bound, shows whether one was lost. (A
/// notification only delayed, its watch kept, is caught up by the next change: not seen.)
#[derive(Debug, Clone)]
pub struct DataWatcher {
    /// The znode, which exists before the watcher starts.
    pub path: String,
    /// The servers its sessions may use.
    pub connect: String,
    /// The session timeout it asks for (longer than any fault).
    pub session_timeout: Duration,
    /// How long one read may take before it is asked again.
    pub op_deadline: Duration,
}

impl DataWatcher {
    /// Follows the znode until `stop`, publishing what it has seen on `seen`.
    pub async fn run(self, stop: Arc<AtomicBool>, seen: tokio::sync::watch::Sender<Watched>) {
        let mut session: Option<zk::Client> = None;
        let mut watched = Watched { version: -1, ..Watched::default() };
        while !stop.load(Ordering::Relaxed) {
            let Some(client) = &session else {
                let connect = crate::connect(&self.connect, self.session_timeout);
                match tokio::time::timeout(self.op_deadline * 2, connect).await {
                    Ok(Ok(c)) => {
                        session = Some(c);
                        watched.sessions += 1;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                continue;
            };
            let (version, watcher) =
                match tokio::time::timeout(self.op_deadline, client.get_and_watch_data(&self.path)).await {
                    Ok(Ok((_, stat, watcher))) => (stat.version, watcher),
                    _ => {
                        if client.state().is_terminated() {
                            session = None;
                        } else {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                        continue;
                    }
                };
            watched.version = version;
            seen.send_replace(watched);
            let changed = watcher.changed();
            tokio::pin!(changed);
            // Waits for the notification, looking up now and then only to notice `stop`.
            let event = loop {
                tokio::select! {
                    event = &mut changed => break Some(event),
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {
                        if stop.load(Ordering::Relaxed) {
                            break None;
                        }
                    }
                }
            };
            match event {
                Some(e) if e.event_type == zk::EventType::NodeDataChanged => watched.notifications += 1,
                // The session ended (its watches with it): a new one reads afresh.
                Some(e) if e.event_type == zk::EventType::Session => session = None,
                Some(_) | None => {}
            }
        }
    }
}

/// Checks that within each session every znode's version and modifying zxid only went up, read
/// after read; returns how many reads were checked, or fails naming the two reads.
pub fn monotonic(seen: &[SeenVersion]) -> Result<usize> {
    let mut last: HashMap<(usize, i64, u64), &SeenVersion> = HashMap::new();
    for read in seen {
        let group = (read.reader, read.session, read.key);
        if let Some(before) = last.get(&group) {
            if read.version < before.version || read.mzxid < before.mzxid {
                bail!(
                    "session {:#x} of reader {} saw key {} go back: version {} (mzxid {:#x}) read in \
                     {:?}..{:?}, after version {} (mzxid {:#x}) read in {:?}..{:?}",
                    read.session,
                    read.reader,
                    read.key,
                    read.version,
                    read.mzxid,
                    read.call,
                    read.returned,
                    before.version,
                    before.mzxid,
                    before.call,
                    before.returned
                );
            }
        }
        last.insert(group, read);
    }
    Ok(seen.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(session: i64, key: u64, at: u64, version: i32, mzxid: i64) -> SeenVersion {
        let call = Duration::from_millis(at);
        SeenVersion { reader: 0, session, key, call, returned: call + Duration::from_millis(1), version, mzxid }
    }

    #[test]
    fn a_session_that_sees_a_version_go_down_fails_naming_both_reads() {
        let fine = [read(1, 0, 0, 3, 30), read(1, 0, 10, 3, 30), read(1, 0, 20, 5, 52), read(1, 1, 30, 0, 60)];
        assert_eq!(monotonic(&fine).unwrap(), 4);
        // Another session, or another key, starts afresh.
        let apart = [read(1, 0, 0, 5, 52), read(2, 0, 10, 3, 30), read(1, 1, 20, 0, 60)];
        assert_eq!(monotonic(&apart).unwrap(), 3);
        let back = [read(1, 0, 0, 5, 52), read(1, 1, 5, 0, 60), read(1, 0, 10, 4, 41)];
        let err = monotonic(&back).expect_err("version 4 after 5").to_string();
        assert!(err.contains("key 0 go back: version 4 (mzxid 0x29)"), "{err}");
        assert!(err.contains("after version 5 (mzxid 0x34)"), "{err}");
        // The same version under an older zxid is the past as well.
        let older = [read(1, 0, 0, 5, 52), read(1, 0, 10, 5, 51)];
        assert!(monotonic(&older).is_err());
    }
}
