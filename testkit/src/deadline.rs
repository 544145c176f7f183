//! Deadlines: no wait in a test is open-ended, and a wait that runs out says what it waited for.

use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, Result};

/// How long any single expected event may take before [`within`] fails the test.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing with `what` if it takes longer than [`DEADLINE`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> Result<T> {
    within_for(DEADLINE, what, fut).await
}

/// Awaits `fut`, failing with `what` if it takes longer than `limit`.
pub async fn within_for<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> Result<T> {
    tokio::time::timeout(limit, fut).await.map_err(|_| anyhow!("timed out after {limit:?} waiting for {what}"))
}

/// Polls `cond` every few ms until it holds, failing with `what` after `limit`. Only for state
/// that announces no change (a process gone, a counter in the server); anything with an event
/// is awaited instead.
pub async fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> Result<()> {
    within_for(limit, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Reads `stream` until its peer closes it (or it fails), returning what came before; `None`
/// if it was still open after `limit`.
pub async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
}
