//! Membership changes of a coordinator ensemble of real processes (`support/ensemble.rs`) that
//! touch the leader: the leader killed half-way through a change, and the leader removed.
//!
//! Openraft changes the voters in two steps, a joint configuration (old and new voters both
//! needed for a quorum) and then the new one alone; the second step is proposed by the call
//! that proposed the first. A leader that dies between the two leaves the joint configuration
//! in the log, committed by its successor's first entry, and nobody to finish it: the ensemble
//! would need a majority of both sets for good, and an operator's repeated request would be
//! refused (the new voter already counts as one). The leader that finds a joint
//! configuration it did not start completes it.
//!
//! - **Promoting an observer, the leader killed after proposing the joint configuration**
//!   (one follower and the observer frozen, so that it reaches the other follower but cannot
//!   commit, then resumed once the leader is dead): the next leader completes the change, the
//!   observer votes, and writes go on.
//! - **Removing the leader** under a writer's load: the call is answered once the change is
//!   committed, the leader steps down, another voter leads the membership without it, and every
//!   acknowledged write is on both voters left. Restarted, the removed server serves nobody
//!   and says it was removed.

#[path = "support/ensemble.rs"]
mod ensemble;

use std::time::Duration;

use anyhow::{Context, Result};
use ensemble::{acked, check_everywhere, session, writes_grow, Ensemble, Load, Role, PERSISTENT};
use nix::sys::signal::Signal;
use referee_coordinator::admin::Members;
use referee_testkit::within_for;

/// How long the ensemble may take to settle a membership after a fault.
const SETTLE: Duration = Duration::from_secs(20);

/// The lines of `/proc/net/tcp` and `/proc/net/tcp6` (the sockets of this network namespace,
/// so of the loopback ensemble too) for TCP connections to or from `port`, listeners left out:
/// `(state, line)`, the state as the kernel numbers it.
fn connections_of_port(port: u16) -> Vec<(u8, String)> {
    let port_of = |addr: &str| addr.rsplit_once(':').and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(state) = fields.get(3).and_then(|s| u8::from_str_radix(s, 16).ok()) else { continue };
            let ends = [fields.get(1), fields.get(2)];
            // 0x0A: LISTEN.
            if state != 0x0A && ends.iter().any(|end| end.and_then(|a| port_of(a)) == Some(port)) {
                found.push((state, line.trim().to_string()));
            }
        }
    }
    found
}

/// [`connections_of_port`], as lines for a failure message.
fn connections_of(port: u16) -> Vec<String> {
    connections_of_port(port).into_iter().map(|(_, line)| line).collect()
}

/// Whether there were connections to or from `port` and every one is closed at both ends:
/// none established, opening, or closed at one end only (FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT,
/// CLOSING); what is left (TIME_WAIT, CLOSE, LAST_ACK) has been closed by both. A connection
/// closed at both ends stays in the table for a minute (its TIME_WAIT), so an empty table means
/// the wrong port or namespace, not a closed connection.
fn connections_closed(port: u16) -> bool {
    // ESTABLISHED, SYN_SENT, SYN_RECV, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, CLOSING.
    const OPEN: [u8; 7] = [0x01, 0x02, 0x03, 0x04, 0x05, 0x08, 0x0B];
    let connections = connections_of_port(port);
    !connections.is_empty() && connections.iter().all(|(state, _)| !OPEN.contains(state))
}

/// The voters and whether a change is in progress, as `members` says.
fn shape(m: &Members) -> (Vec<u64>, bool) {
    (m.members.iter().filter(|m| m.role == "voter").map(|m| m.id).collect(), m.changing)
}

/// Three voters and an observer whose promotion the leader has been asked for, with one
/// follower and the observer frozen: the joint configuration reaches the leader and the other
/// follower (seen through its admin listener), a majority of the old voters but not of the new
/// ones, so it cannot commit.
struct HeldPromotion {
    ens: Ensemble,
    leader: u64,
    /// The follower and the observer frozen.
    frozen: [u64; 2],
    /// The operator's request, waiting for its answer.
    request: tokio::task::JoinHandle<Result<reqwest::StatusCode>>,
}

async fn promotion_held() -> Result<HeldPromotion> {
    let mut ens = Ensemble::start(&[Role::Voter, Role::Voter, Role::Voter, Role::Observer], "").await?;
    let (leader, _) = ens.leader_among(&[1, 2, 3, 4]).await?;
    let followers: Vec<u64> = [1, 2, 3].into_iter().filter(|&s| s != leader).collect();
    let (holds, frozen) = (followers[0], [followers[1], 4]);
    for &f in &frozen {
        ens.server(f).signal(Signal::SIGSTOP)?;
    }
    let four = ens.server(4);
    let body = serde_json::json!({
        "id": 4, "client": four.client, "peer": four.peer, "admin": four.admin, "role": "voter",
    });
    let url = format!("http://{}/members", ens.server(leader).admin);
    let request = tokio::spawn(async move {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        anyhow::Ok(http.post(url).json(&body).send().await?.status())
    });
    within_for(Duration::from_secs(10), "the running follower to hold the joint configuration", async {
        loop {
            if ens.members(holds).await.is_ok_and(|m| m.changing) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    Ok(HeldPromotion { ens, leader, frozen, request })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promotion_cut_off_by_the_leaders_crash_is_completed_by_the_next_leader() -> Result<()> {
    let HeldPromotion { mut ens, leader, frozen, request } = promotion_held().await?;

    // The leader dies with its call half done; whoever leads next holds the joint
    // configuration (the follower without it cannot win a vote against the two with it).
    ens.kill9(leader)?;
    let answer = within_for(Duration::from_secs(10), "the request to end with the leader", request).await??;
    assert!(answer.is_err(), "the request to the killed leader was answered: {answer:?}");
    for &f in &frozen {
        ens.server(f).signal(Signal::SIGCONT)?;
    }
    ens.restart(&[leader]).await?;

    // The next leader completes the change: four voters, no change in progress.
    let mut last = None;
    let settled = within_for(SETTLE, "the membership to settle on four voters", async {
        loop {
            if let Ok((now, _)) = ens.leader_among(&[1, 2, 3, 4]).await {
                if let Ok(m) = ens.members(now).await {
                    let seen = shape(&m);
                    if seen == (vec![1, 2, 3, 4], false) {
                        return now;
                    }
                    last = Some(seen);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .with_context(|| format!("the leader's membership stayed (voters, changing) = {last:?}"))?;
    assert_eq!(ens.mode(4).await.as_deref(), Some("follower"), "server 4 votes, so it reports itself a follower");
    let completed = ens.servers.iter().find(|s| s.log().contains("completed a membership change left joint"));
    assert!(completed.is_some(), "no server says it completed the joint configuration:\n{}", ens.logs());

    // Writes go on, through the promoted server as well.
    let zk = session(&ens.client(4).to_string(), Duration::from_secs(10)).await?;
    zk.create("/after-the-promotion", b"4", PERSISTENT).await.context("a create through server 4")?;
    let at_leader = session(&ens.client(settled).to_string(), Duration::from_secs(10)).await?;
    at_leader.sync("/").await?;
    assert_eq!(at_leader.get_data("/after-the-promotion").await?.0, b"4");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_removed_steps_down_and_another_voter_leads_with_every_acknowledged_write() -> Result<()> {
    let mut ens = Ensemble::start(&[Role::Voter, Role::Voter, Role::Voter, Role::Observer], "").await?;
    let (leader, _) = ens.leader_among(&[1, 2, 3, 4]).await?;
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|&s| s != leader).collect();
    let load = Load::start(&ens, &[rest[0], rest[1], 4], 1).await?;
    writes_grow(ens.client(leader), 20, "20 writes before the removal").await?;

    let url = format!("http://{}/members/{leader}", ens.server(leader).admin);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let answer = http.delete(url).send().await?;
    let (status, removed) = (answer.status(), tokio::time::Instant::now());
    let body = answer.text().await?;
    assert!(status.is_success(), "removing the leader: {status} {body}");

    // Another voter leads a membership without the old leader.
    let mut last = None;
    let next = within_for(SETTLE, "another voter to lead without the removed one", async {
        loop {
            if let Ok((now, _)) = ens.leader_among(&[rest[0], rest[1], 4]).await {
                if let Ok(m) = ens.members(now).await {
                    let seen = shape(&m);
                    if seen == (rest.clone(), false) && !m.members.iter().any(|x| x.id == leader) {
                        return now;
                    }
                    last = Some(seen);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .with_context(|| format!("the membership stayed (voters, changing) = {last:?}"))?;
    assert_ne!(next, leader);
    eprintln!("server {next} leads {:?} after server {leader}'s removal", removed.elapsed());
    // The removed server leads nothing: it says it is not serving, or no leader.
    let old_mode = ens.mode(leader).await;
    assert_ne!(old_mode.as_deref(), Some("leader"), "the removed server still says it leads");

    // Writes go on through the others, and every acknowledged one is on both voters left.
    writes_grow(ens.client(next), 20, "20 writes after the removal").await?;
    let acked = acked(&load.finish().await?);
    check_everywhere(&ens, &rest, &acked).await?;

    // Restarted, the removed server finds no leader and says why, whether or not its log got
    // the change that removed it.
    ens.kill9(leader)?;
    let before = ens.server(leader).log().len();
    ens.start_only(leader)?;
    let said = within_for(SETTLE, "the restarted removed server to say it was removed", async {
        loop {
            let log = ens.server(leader).log();
            if let Some(line) =
                log[before..].lines().find(|l| l.contains("was removed") || l.contains("have been removed"))
            {
                return line.to_string();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await?;
    assert!(ens.mode(leader).await.is_none(), "the removed server serves: {said}");
    eprintln!("the removed server says: {said}");
    Ok(())
}

/// An operator's request dropped half-way (the HTTP client gone while the joint configuration
/// waits for a quorum) does not leave the change to the leader's completion: the leader
/// carries both steps out whoever waits for them, and nothing else proposes a configuration
/// meanwhile (no completion, no attempt refused as in progress).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promotion_whose_caller_hung_up_half_way_is_finished_by_the_leader_itself() -> Result<()> {
    let HeldPromotion { mut ens, leader, frozen, request } = promotion_held().await?;
    // The caller hangs up: its connection is closed. The listener notices before the frozen
    // servers resume: it closes its end too, which it does only once it has let the request
    // go (the change cannot have completed while the others are frozen).
    request.abort();
    let _ = request.await;
    let hung_up = std::time::Instant::now();
    let admin = ens.server(leader).admin.port();
    within_for(
        Duration::from_secs(10),
        "the leader's admin listener to close the hung-up caller's connection",
        async {
            while !connections_closed(admin) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        },
    )
    .await
    .with_context(|| format!("connections of port {admin}:\n{}", connections_of(admin).join("\n")))?;
    eprintln!("the leader closed the hung-up caller's connection {:?} after the hang-up", hung_up.elapsed());
    for &f in &frozen {
        ens.server(f).signal(Signal::SIGCONT)?;
    }

    let mut last = None;
    within_for(SETTLE, "the membership to settle on four voters", async {
        loop {
            if let Ok(m) = ens.members(leader).await {
                let seen = shape(&m);
                if seen == (vec![1, 2, 3, 4], false) {
                    return;
                }
                last = Some(seen);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .with_context(|| format!("the leader's membership stayed (voters, changing) = {last:?}"))?;
    // The configuration shows settled once its last entry is appended; the leader's own task
    // says it is done once that entry is committed.
    let server = ens.server(leader);
    within_for(SETTLE, "the leader to say it finished the change itself", async {
        while !server.log().contains("membership changed") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .with_context(|| server.log())?;
    let log = server.log();
    assert!(
        !log.contains("completed a membership change left joint"),
        "the leader left its own change to the completion:\n{log}"
    );
    assert!(!log.contains("completing the joint membership"), "the completion raced the leader's own change:\n{log}");
    Ok(())
}
