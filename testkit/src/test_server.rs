//! The bundled coordinator in-process, for tests that need a ZooKeeper-wire server and may look
//! at its state directly.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use referee_coordinator::config::CoordinatorConfig;
use referee_coordinator::server::{Coordinator, CoordinatorError};
use referee_coordinator::state::ServerState;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use zookeeper_client as zk;

use crate::{within_for, ScratchDir};

/// The bundled coordinator serving on 127.0.0.1 on an ephemeral port (its own listener, bound
/// before the server starts, so there is no port race), with its data in a [`ScratchDir`];
/// stopped on [`TestServer::stop`] or drop.
pub struct TestServer {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// The server's shared state, for assertions on what clients cannot see.
    pub state: Arc<Mutex<ServerState>>,
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), CoordinatorError>>>,
    _dir: ScratchDir,
}

impl TestServer {
    /// Starts a server with test timings: 50 ms ticks, session timeouts in 200..=30000 ms.
    pub async fn start() -> Result<Self> {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after letting `adjust` change the test configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut CoordinatorConfig)) -> Result<Self> {
        let dir = ScratchDir::new("cotest")?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut cfg = CoordinatorConfig::new(dir.0.clone());
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
        Ok(TestServer { addr, state, stop_tx: Some(stop_tx), task: Some(task), _dir: dir })
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

    /// Stops the server and checks that it shut down cleanly within 10 s.
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
    }
}

/// Connects a zookeeper-client session to `addr`, failing after 10 s.
pub async fn connect(addr: &str, session_timeout: Duration) -> Result<zk::Client> {
    let fut = zk::Client::connector().with_session_timeout(session_timeout).connect(addr);
    Ok(within_for(Duration::from_secs(10), "zookeeper-client connect", fut).await??)
}
