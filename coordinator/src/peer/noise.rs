//! Keeps a peer that is down from flooding the log.
//!
//! openraft logs every failed call to a peer: with one voter down, a leader wrote four lines
//! for each retry of its replication (an error, three warnings) and one for each pause, about
//! twenty lines a second whatever the back-off. The peer's link already says what an operator
//! needs, once: that the peer became unreachable and why, a reminder every
//! [`super::client::STILL_DOWN_EVERY`] while it stays so, and when it is back. [`QuietLinkFailures`] is
//! a `tracing` layer that drops openraft's repeats of a failure the link reported (a peer
//! unreachable, refusing the handshake, answering under another process's id or from another
//! data directory, silent on an open connection, or answering nothing while the calls for it
//! fill the link's queue), and its lines about an AppendEntries cut down to what one carries
//! (routine while a follower catches up on large entries); every other openraft line (a storage error during replication, a
//! timeout of a peer that answers other calls) goes through.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};

/// Text of [`super::LinkError::Unreachable`], as openraft quotes it in its lines about the
/// failed call.
pub const UNREACHABLE: &str = " is unreachable: ";

/// Texts of the link's other failures at dialling, which it logs itself, as errors (a
/// configuration the operator must fix): [`super::LinkError::Refused`],
/// [`super::LinkError::ReplacedDataDir`] and [`super::LinkError::Duplicate`].
pub const REFUSED: [&str; 3] = [" refused the connection: ", " is not spoken to: ", " two live servers claim id "];

/// openraft's line for each pause of replication to a peer it could not reach.
pub const PAUSED: &str = "backoff mode: drain events";

/// Text of [`super::LinkError::QueueFull`]: the link logs a full queue itself (once a minute
/// while it lasts).
pub const QUEUE_FULL: &str = " requests are already queued for it";

/// Text of [`super::LinkError::BatchTooLarge`]: a batch cut to what one AppendEntries carries
/// is routine while a follower catches up on large entries, not a failure.
pub const BATCH_CAPPED: &str = " bytes one AppendEntries carries";

/// Whether a line logged under `target` with the rendered fields `text` only repeats a
/// failure to reach a peer that the peer's link logs itself.
pub fn repeats_link_failure(target: &str, text: &str) -> bool {
    target.starts_with("openraft")
        && (text.contains(UNREACHABLE)
            || text.contains(PAUSED)
            || text.contains(QUEUE_FULL)
            || text.contains(BATCH_CAPPED)
            || REFUSED.iter().any(|r| text.contains(r)))
}

/// The `tracing` layer dropping the lines [`repeats_link_failure`] names; add it to the
/// subscriber of a process that runs a coordinator.
#[derive(Debug, Default, Clone, Copy)]
pub struct QuietLinkFailures;

impl<S: Subscriber> Layer<S> for QuietLinkFailures {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        // Every line dropped is a warning or an error: openraft's chattier levels (each append
        // at debug) pass without their fields being rendered.
        let meta = event.metadata();
        let target = meta.target();
        if !target.starts_with("openraft") || *meta.level() > tracing::Level::WARN {
            return true;
        }
        let mut text = Rendered(String::new());
        event.record(&mut text);
        !repeats_link_failure(target, &text.0)
    }
}

/// Every field of an event, rendered one after the other.
struct Rendered(String);

impl Visit for Rendered {
    fn record_str(&mut self, _field: &Field, value: &str) {
        self.0.push_str(value);
        self.0.push('\n');
    }

    fn record_debug(&mut self, _field: &Field, value: &dyn std::fmt::Debug) {
        let _ = writeln!(self.0, "{value:?}");
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::peer::wire::Refusal;
    use crate::peer::LinkError;

    /// A writer the test reads back.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn logged(emit: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish()
            .with(QuietLinkFailures);
        tracing::subscriber::with_default(subscriber, emit);
        let text = out.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn openraft_lines_about_an_unreachable_peer_are_dropped_and_nothing_else() {
        let e = LinkError::Unreachable { target: 3, addr: "127.0.0.1:2890".into(), why: "Connection refused".into() };
        let quoted = format!("Unreachable node: referee_coordinator::peer::client::LinkError: {e}");
        let out = logged(|| {
            // As openraft's replication and election log them (target, fields).
            tracing::error!(target: "openraft::replication", err = %quoted, "RPCError");
            tracing::warn!(target: "openraft::replication", error = %quoted, "error replication to target={}", 3);
            tracing::warn!(target: "openraft::engine::handler::replication_handler", request_id = "HeartBeat", result = %quoted, "update progress error");
            tracing::warn!(target: "openraft::engine::handler::replication_handler", "heartbeat error: {}, no update to inflight data", quoted);
            tracing::warn!(target: "openraft::replication", interval = ?std::time::Duration::from_millis(250), "ReplicationCore::backoff_drain_events backoff mode: drain events without processing them");
            tracing::error!(target: "openraft::core::raft_core", error = %quoted, target_id = 3, "while requesting vote");
            // Kept: other openraft trouble, and our own line about the same failure.
            tracing::error!(target: "openraft::replication", error = "storage error: read log", "error replication to target={}", 3);
            tracing::error!(target: "openraft::replication", err = "timeout after 150ms when AppendEntries 1->3", "RPCError");
            tracing::warn!(target: "referee_coordinator::peer::client", peer = 3, "{e}");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        assert!(lines[0].contains("storage error: read log"), "{out}");
        assert!(lines[1].contains("timeout after 150ms"), "{out}");
        assert!(lines[2].contains("referee_coordinator::peer::client") && lines[2].contains(UNREACHABLE), "{out}");
    }

    #[test]
    fn the_link_error_text_matched_is_the_link_errors_own() {
        let e = LinkError::Unreachable { target: 2, addr: "a:1".into(), why: "no route".into() };
        assert!(e.to_string().contains(UNREACHABLE), "{e}");
        assert!(repeats_link_failure("openraft::replication", &e.to_string()));
        assert!(!repeats_link_failure("referee_coordinator::peer::client", &e.to_string()));
        let full = LinkError::QueueFull { target: 2, bound: 64 };
        assert!(full.to_string().contains(QUEUE_FULL), "{full}");
        assert!(repeats_link_failure("openraft::replication", &full.to_string()));
        assert!(!repeats_link_failure("referee_coordinator::peer::client", &full.to_string()));
        let capped = LinkError::BatchTooLarge { target: 2, entries: 64, bytes: 32_000_000, fit: 2, max: 1 << 20 };
        assert!(capped.to_string().contains(BATCH_CAPPED), "{capped}");
        assert!(repeats_link_failure("openraft::replication", &capped.to_string()));
    }

    #[test]
    fn openraft_lines_about_a_full_queue_to_a_peer_are_dropped() {
        let e = LinkError::QueueFull { target: 2, bound: 64 };
        let quoted = format!("Unreachable node: referee_coordinator::peer::client::LinkError: {e}");
        let out = logged(|| {
            tracing::error!(target: "openraft::replication", err = %quoted, "RPCError");
            tracing::warn!(target: "openraft::engine::handler::replication_handler", "heartbeat error: {}, no update to inflight data", quoted);
            tracing::warn!(target: "referee_coordinator::peer::client", peer = 2, "{e}: calls to it fail at once until it answers");
        });
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        assert!(lines[0].contains("referee_coordinator::peer::client") && lines[0].contains(QUEUE_FULL), "{out}");
    }

    #[test]
    fn openraft_lines_about_a_refusing_peer_are_dropped_and_the_links_own_kept() {
        let refused = [
            LinkError::Refused {
                target: 2,
                addr: "a:1".into(),
                refusal: Refusal::WrongCluster { ours: 0xb1, theirs: 0x6e },
            },
            LinkError::ReplacedDataDir {
                target: 2,
                addr: "a:1".into(),
                refusal: Refusal::ReplacedDataDir { id: 2, known: 7, presented: 9 },
            },
            LinkError::Duplicate { target: 2, addr: "a:1".into(), answered: 1, heard: 2, silent_ms: 40 },
        ];
        for e in refused {
            let quoted = format!("Unreachable node: referee_coordinator::peer::client::LinkError: {e}");
            assert!(repeats_link_failure("openraft::replication", &quoted), "{e}");
            let out = logged(|| {
                tracing::error!(target: "openraft::replication", err = %quoted, "RPCError");
                tracing::error!(target: "openraft::core::raft_core", error = %quoted, target_id = 2, "while requesting vote");
                tracing::error!(target: "referee_coordinator::peer::client", peer = 2, "{e}");
            });
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines.len(), 1, "{out}");
            assert!(lines[0].contains("referee_coordinator::peer::client"), "{out}");
        }
        // A broken connection is openraft's to report: the link does not log it.
        let broken = LinkError::Broken { target: 2, why: "reset by peer".into() };
        assert!(!repeats_link_failure("openraft::replication", &broken.to_string()));
    }
}
