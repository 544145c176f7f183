//! Shared harness of the coordinator's integration tests: an in-process server on an ephemeral
//! port, deadline helpers, a cuttable TCP proxy and a raw jute client.
//!
//! Each test file is its own crate and uses a subset of these helpers.
#![allow(dead_code)]

pub mod proxy;
pub mod raw;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use referee_coordinator::config::CoordinatorConfig;
use referee_coordinator::server::{Coordinator, CoordinatorError};
use referee_coordinator::state::ServerState;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zookeeper_client as zk;

/// How long any single expected event may take before the test fails.
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

/// Awaits `fut`, failing with `what` if it takes longer than [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    within_for(DEADLINE, what, fut).await
}

/// Awaits `fut`, failing with `what` if it takes longer than `limit`.
pub async fn within_for<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, fut).await.map_err(|_| anyhow!("timed out after {limit:?} waiting for {what}"))
}

/// Polls `cond` every few ms until it holds, failing after `limit`.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    within_for(limit, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

fn unique_dir() -> Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "referee-cotest-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// A coordinator serving on 127.0.0.1 on an ephemeral port, stopped on [`TestServer::stop`] or
/// drop.
pub struct TestServer {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The server's shared state, for assertions on what clients cannot see.
    pub state: Arc<Mutex<ServerState>>,
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), CoordinatorError>>>,
    dir: PathBuf,
}

impl TestServer {
    /// Starts a server with test timings: 50 ms ticks, session timeouts in 200..=30000 ms.
    pub async fn start() -> Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after letting `adjust` change the test configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut CoordinatorConfig)) -> Result<Self> {
        let dir = unique_dir()?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut cfg = CoordinatorConfig::new(dir.clone());
        cfg.listen = addr;
        cfg.tick_ms = 50;
        cfg.min_session_timeout_ms = Some(200);
        cfg.max_session_timeout_ms = Some(30_000);
        adjust(&mut cfg);
        cfg.validate().context("test configuration refused")?;
        let coord = Coordinator::start(cfg).await.context("starting the coordinator")?;
        let state = coord.state();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(coord.serve(listener, async move {
            let _ = stop_rx.await;
        }));
        Ok(TestServer { addr, state, stop_tx: Some(stop_tx), task: Some(task), dir })
    }

    /// The connect string for zookeeper-client.
    pub fn connect_string(&self) -> String {
        self.addr.to_string()
    }

    /// A zookeeper-client session with a 6 s timeout.
    pub async fn client(&self) -> Result<zk::Client> {
        connect(&self.connect_string(), Duration::from_secs(6)).await
    }

    /// The zxid of the last transaction the server applied.
    pub fn last_zxid(&self) -> i64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).tree.last_zxid().0
    }

    /// The ids of the sessions the replicated tree holds.
    pub fn session_ids(&self) -> Vec<i64> {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).tree.sessions().map(|(id, _)| id.0).collect()
    }

    /// Number of established client connections.
    pub fn connection_count(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).conns.len()
    }

    /// Stops the server and checks that it shut down cleanly and in time.
    pub async fn stop(mut self) -> Result<()> {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        let task = self.task.take().ok_or_else(|| anyhow!("server already stopped"))?;
        match within_for(Duration::from_secs(10), "server shutdown", task).await? {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => bail!("server returned an error: {e}"),
            Err(e) => bail!("server task failed: {e}"),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Connects a zookeeper-client session, with a deadline.
pub async fn connect(addr: &str, session_timeout: Duration) -> Result<zk::Client> {
    let fut = zk::Client::connector().with_session_timeout(session_timeout).connect(addr);
    Ok(within_for(Duration::from_secs(10), "zookeeper-client connect", fut).await??)
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
