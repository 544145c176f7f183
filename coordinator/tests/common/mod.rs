//! What the coordinator's integration tests share beyond `referee-testkit`: their tighter
//! deadline, create options, watch-event helpers and a raw jute client (`raw`).
//!
//! Each test file is its own crate and uses a subset of these helpers.
#![allow(dead_code)]

pub mod child;
pub mod ensemble;
pub mod processes;
pub mod raw;
pub mod script;

use std::future::Future;
use std::time::Duration;

use anyhow::Result;
use referee_testkit::within_for;
use zookeeper_client as zk;

/// How long any single expected event may take before the test fails: the in-process server
/// answers well within it, so it is half the kit's [`referee_testkit::DEADLINE`].
pub const DEADLINE: Duration = Duration::from_secs(5);

/// `CreateMode::Persistent` with `world:anyone` ALL.
pub static PERSISTENT: &zk::CreateOptions<'static> = &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
/// `CreateMode::Ephemeral` with `world:anyone` ALL.
pub static EPHEMERAL: &zk::CreateOptions<'static> = &zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
/// `CreateMode::PersistentSequential` with `world:anyone` ALL.
pub static PERSISTENT_SEQ: &zk::CreateOptions<'static> =
    &zk::CreateMode::PersistentSequential.with_acls(zk::Acls::anyone_all());
/// `CreateMode::EphemeralSequential` with `world:anyone` ALL.
pub static EPHEMERAL_SEQ: &zk::CreateOptions<'static> =
    &zk::CreateMode::EphemeralSequential.with_acls(zk::Acls::anyone_all());

/// Sends the in-process servers' logs at `filter` (an `EnvFilter` directive, overridden by
/// `RUST_LOG`) to the test's captured output, so a failing test shows what the servers saw
/// (why a connection was closed, a leader change) and a passing one stays quiet.
pub fn capture_server_logs(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // A second call in the same test binary finds the subscriber already set: fine.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().with_ansi(false).try_init();
}

/// Awaits `fut`, failing with `what` if it takes longer than [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    within_for(DEADLINE, what, fut).await
}

/// Waits for a one-shot watcher's event.
pub async fn oneshot_event(what: &str, w: zk::OneshotWatcher) -> Result<zk::WatchedEvent> {
    within(what, w.changed()).await
}

/// Waits for a persistent watcher's next event.
pub async fn next_event(what: &str, w: &mut zk::PersistentWatcher) -> Result<zk::WatchedEvent> {
    within(what, w.changed()).await
}

/// The event a server should send: type, path and the zxid of the change.
pub fn event(kind: zk::EventType, path: &str, zxid: i64) -> zk::WatchedEvent {
    zk::WatchedEvent::new(kind, path.to_string()).with_zxid(zxid)
}
