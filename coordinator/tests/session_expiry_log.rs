//! What an operator finds in the coordinator's log (at its default level, INFO) about a lost
//! client: the session expired, named as clients and agents name it (hex), with its timeout,
//! as ZooKeeper's "Expiring session 0x…, timeout of N ms exceeded". A session its client
//! closed is the normal end of a connection, and is no INFO line.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::child::ChildServer;
use common::raw::Raw;
use referee_testkit::within_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_logged_at_info_with_its_id_and_timeout() -> Result<()> {
    let server = ChildServer::start("").await?;
    let lost = Raw::connect(server.addr, 400).await?;
    let (id, timeout_ms) = (lost.session_id, lost.timeout_ms);
    // The client vanishes without closing its session.
    drop(lost);
    let hex = format!("0x{id:x}");
    let line = within_for(Duration::from_secs(10), "the expiry to be logged", async {
        loop {
            if let Some(l) = server.log().lines().find(|l| l.contains(&hex) && l.contains("expiring session")) {
                return l.to_string();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .with_context(|| server.log())?;
    ensure!(line.contains(" INFO "), "{line}");
    ensure!(line.contains(&format!("timeout of {timeout_ms} ms exceeded")), "{line}");
    Ok(())
}
