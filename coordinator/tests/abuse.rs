//! No client, however buggy or hostile, can starve the coordinator's other clients, leak its
//! connections or lock new sessions out.
//!
//! 200 clients misbehave at once (never reading their socket while replies and notifications
//! pile up, flooding pipelined requests, leaking sessions, sending paths that fill a packet)
//! while 4 well-behaved clients run getData / setData / create one request at a time. Every
//! well-behaved request must be answered, none of them may go without a reply for long, and once
//! the abusers are gone the server must be back to its baseline connection count and take a new
//! session. The bound on the gap is a liveness bound, far above any latency a healthy server
//! shows; how fast the well-behaved clients are served under this load is measured by
//! `coordinator-bench abuse`.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::{ensure, Result};
use referee_testkit::abuse::{self, AbuseSpec, Misbehaviour};
use referee_testkit::{within_for, TestServer};

/// The longest a well-behaved client may go without a reply. Every write waits for the
/// fdatasync that makes it durable, and the flooders' pipelined writes queue ahead of a
/// well-behaved one, so on a slow disk under a loaded CPU a gap of 2 s was seen; a starved
/// client would wait for the whole run.
const MAX_REPLY_GAP: Duration = Duration::from_secs(4);
/// How long the abuse runs.
const RUN: Duration = Duration::from_secs(12);
/// How long the server may take to close what the abusers left behind.
const RECOVERY: Duration = Duration::from_secs(30);

#[test]
fn well_behaved_clients_are_served_while_200_clients_misbehave() -> Result<()> {
    // The server gets a runtime of its own, as it has a process of its own in production: the
    // load generator's 200 clients must compete with it for the CPU, not for its task queue.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("coordinator")
        .enable_all()
        .build()?;
    let server = server_rt.block_on(TestServer::start())?;
    let load_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let outcome = load_rt.block_on(abuse_and_recover(&server));
    let stopped = server_rt.block_on(server.stop());
    outcome?;
    stopped
}

async fn abuse_and_recover(server: &TestServer) -> Result<()> {
    let port = server.addr.port();
    let baseline = abuse::mntr_value(port, "zk_num_alive_connections").await?;
    let spec = AbuseSpec::new(server.addr, RUN);
    let report = abuse::run(&spec).await?;
    let s = report.summary();
    eprintln!("well-behaved: {s:?}");
    for t in &report.abusers {
        eprintln!("abusers: {t:?}");
    }
    // Every broken promise is listed, not only the first.
    let mut broken = Vec::new();

    // The well-behaved clients were served throughout.
    if s.errors != 0 {
        broken.push(format!("{} well-behaved requests failed:\n{}", s.errors, report.error_lines()));
    }
    if s.longest_gap > MAX_REPLY_GAP {
        broken
            .push(format!("a well-behaved client went {:?} without a reply (bound {MAX_REPLY_GAP:?})", s.longest_gap));
    }
    if s.ops < 100 {
        broken.push(format!("the well-behaved clients got only {} replies in {RUN:?}", s.ops));
    }

    // The abuse happened: every kind got sessions and sent requests, and the flooders had
    // their whole window in flight (a test whose load silently failed to start would pass for
    // nothing).
    for &kind in &spec.misbehaviours {
        let t = report.tally(kind);
        if t.sessions == 0 || t.requests == 0 {
            broken.push(format!("the {kind} abusers never got going: {t:?}"));
        }
    }
    // (Flooders send in bursts of 64, so a full window is within a burst of the limit.)
    let flood = report.tally(Misbehaviour::Floods);
    if flood.requests < (spec.flood_outstanding.saturating_sub(64) * flood.clients) as u64 {
        broken.push(format!("the flooders never had {} requests in flight: {flood:?}", spec.flood_outstanding));
    }

    // Once the abusers are gone, so are their connections, and new sessions are taken, from
    // the honest address and from one the abusers used.
    // `mntr` itself may be slow to answer on a server still digging out; only the deadline
    // decides.
    let mut last = String::from("no answer yet");
    let settled = within_for(RECOVERY, "the abusers' connections to close", async {
        loop {
            match abuse::mntr_value(port, "zk_num_alive_connections").await {
                Ok(alive) if alive <= baseline => return,
                Ok(alive) => last = format!("zk_num_alive_connections is {alive}, baseline {baseline}"),
                Err(e) => last = format!("mntr failed: {e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if let Err(e) = settled {
        broken.push(format!("{e}: {last}"));
    }
    for source in [IpAddr::V4(Ipv4Addr::LOCALHOST), spec.abuser_sources[0]] {
        if let Err(e) = abuse::fresh_session(server.addr, source).await {
            broken.push(format!("no new session from {source} after the abuse: {e:#}"));
        }
    }
    ensure!(broken.is_empty(), "{}", broken.join("\n"));
    Ok(())
}
