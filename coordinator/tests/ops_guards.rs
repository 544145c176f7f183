//! What start-up refuses, and what it tells the operator to do, on data directories whose
//! state is damaged, partly gone, or another ensemble's: the advice depends on whether the
//! server runs alone (its data directory is the only copy) or in an ensemble (whose other
//! servers hold every committed write, and which refuses a wiped server under its old id).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use referee_coordinator::config::{CoordinatorConfig, Role, ServerEntry};
use referee_coordinator::log::RealFs;
use referee_coordinator::server::{Coordinator, Startup};
use referee_testkit::{free_port, within_for, ScratchDir};
use tokio::net::TcpListener;

const DEADLINE: Duration = Duration::from_secs(30);

/// Starts a server (waiting for it to lead, or to know its leader), serves it and stops it,
/// leaving its data directory as a clean stop does.
async fn start_and_stop(cfg: CoordinatorConfig, startup: Startup) -> Result<()> {
    let client = TcpListener::bind(cfg.listen).await?;
    let coordinator =
        within_for(DEADLINE, "the server to start", Coordinator::start_with(cfg, Arc::new(RealFs), startup)).await??;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(coordinator.serve(client, async move {
        let _ = stopped.await;
    }));
    let _ = stop.send(());
    within_for(DEADLINE, "the server to stop", task).await??.map_err(|e| anyhow!("{e}"))
}

/// Why a start on `cfg` is refused; it must be, within the deadline.
async fn refusal(cfg: CoordinatorConfig) -> Result<String> {
    let startup = Startup { initialise: false, peer_listener: None };
    match within_for(DEADLINE, "the start to be refused", Coordinator::start_with(cfg, Arc::new(RealFs), startup))
        .await?
    {
        Ok(_) => bail!("the start was not refused"),
        Err(e) => Ok(e.to_string()),
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A server alone on `data`.
fn alone(data: &Path) -> Result<CoordinatorConfig> {
    let mut cfg = CoordinatorConfig::new(data);
    cfg.listen = loopback(free_port()?);
    cfg.validate()?;
    Ok(cfg)
}

/// Server 1 of an ensemble of itself (the only voter, so it elects itself) and `others`.
fn ensemble_member(data: &Path, others: &[(u64, Role)]) -> Result<CoordinatorConfig> {
    let mut cfg = CoordinatorConfig::new(data);
    cfg.listen = loopback(free_port()?);
    cfg.cluster_id = Some(7);
    cfg.server_id = Some(1);
    cfg.servers =
        vec![ServerEntry { id: 1, client: cfg.listen, peer: loopback(free_port()?), role: Role::Voter, admin: None }];
    for &(id, role) in others {
        cfg.servers.push(ServerEntry {
            id,
            client: loopback(free_port()?),
            peer: loopback(free_port()?),
            role,
            admin: None,
        });
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Damages the saved Raft state (vote, commit and purge points) of the data directory `data`.
fn damage_raft_meta(data: &Path) -> Result<()> {
    let path = data.join("log").join("raft-meta");
    let mut bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    std::fs::write(&path, bytes)?;
    Ok(())
}

/// A server alone holds the only copy of its data: the advice is its backup, never peers it
/// does not have.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_server_alone_is_told_to_restore_its_backup() -> Result<()> {
    let scratch = ScratchDir::new("guards-alone-damaged")?;
    let cfg = alone(&scratch.path("data"))?;
    start_and_stop(cfg.clone(), Startup::default()).await?;
    damage_raft_meta(&scratch.path("data"))?;
    let e = refusal(cfg).await?;
    assert!(e.contains("raft-meta") && e.contains("damaged"), "the damage is named: {e}");
    assert!(e.contains("runs alone") && e.contains("from a backup"), "{e}");
    assert!(!e.contains("rejoin") && !e.contains("peers"), "a server alone has no peers: {e}");
    Ok(())
}

/// A member of an ensemble is not restored from a backup (it would forget votes and entries it
/// acknowledged) nor wiped and restarted under its id (its peers refuse it): it is removed, and
/// added again under a new id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_ensemble_member_is_told_to_rejoin_under_a_new_id() -> Result<()> {
    let scratch = ScratchDir::new("guards-member-damaged")?;
    let cfg = ensemble_member(&scratch.path("data"), &[(2, Role::Observer)])?;
    start_and_stop(cfg.clone(), Startup { initialise: true, peer_listener: None }).await?;
    damage_raft_meta(&scratch.path("data"))?;
    let e = refusal(cfg).await?;
    assert!(e.contains("raft-meta") && e.contains("damaged"), "the damage is named: {e}");
    assert!(e.contains("members remove") && e.contains("--id 1") && e.contains("new id"), "{e}");
    assert!(e.contains("Never restore"), "{e}");
    assert!(!e.contains("rejoin from its peers"), "a wiped member is refused under its old id: {e}");
    Ok(())
}

/// A data directory whose `log/` was deleted (its identity kept) would bring the server back
/// under its old identity with an empty log and no vote: refused, naming what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_without_its_log_is_refused() -> Result<()> {
    let scratch = ScratchDir::new("guards-no-log")?;
    let cfg = alone(&scratch.path("data"))?;
    start_and_stop(cfg.clone(), Startup::default()).await?;
    std::fs::remove_dir_all(scratch.path("data").join("log"))?;
    let e = refusal(cfg).await?;
    assert!(e.contains("identity file but no log/") && e.contains("from a backup"), "{e}");
    assert!(!scratch.path("data").join("log").exists(), "nothing was made in its place");
    Ok(())
}

/// A log whose saved vote (`raft-meta`) was deleted, with entries only a server that voted can
/// have: refused, as the server could vote twice in a term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_without_its_saved_vote_is_refused() -> Result<()> {
    let scratch = ScratchDir::new("guards-no-meta")?;
    let cfg = alone(&scratch.path("data"))?;
    start_and_stop(cfg.clone(), Startup::default()).await?;
    std::fs::remove_file(scratch.path("data").join("log").join("raft-meta"))?;
    let e = refusal(cfg).await?;
    assert!(e.contains("no saved Raft state (raft-meta") && e.contains("vote twice"), "{e}");
    assert!(e.contains("runs alone"), "{e}");
    Ok(())
}

/// The server started with --init appends the ensemble's first membership, then saves its
/// first vote: a crash between the two leaves that entry and no saved state, and it starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initialised_member_cut_short_before_its_first_vote_starts_again() -> Result<()> {
    let scratch = ScratchDir::new("guards-init-only")?;
    let cfg = ensemble_member(&scratch.path("data"), &[(2, Role::Voter), (3, Role::Voter)])?;
    let meta = scratch.path("data").join("log").join("raft-meta");
    for initialise in [true, false] {
        let client = TcpListener::bind(cfg.listen).await?;
        let startup = Startup { initialise, peer_listener: None };
        let coordinator =
            within_for(DEADLINE, "the server to start", Coordinator::launch(cfg.clone(), Arc::new(RealFs), startup))
                .await??;
        let raft = coordinator.raft();
        raft.wait(Some(DEADLINE))
            .metrics(
                |m| m.membership_config.membership().voter_ids().count() == 3 && m.last_log_index == Some(0),
                "the initial membership",
            )
            .await
            .map_err(|e| anyhow!("{e}"))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(coordinator.serve(client, async move {
            let _ = stopped.await;
        }));
        let _ = stop.send(());
        within_for(DEADLINE, "the server to stop", task).await??.map_err(|e| anyhow!("{e}"))?;
        if initialise {
            // As a crash right after the first append would have left it.
            std::fs::remove_file(&meta).with_context(|| format!("removing {}", meta.display()))?;
        }
    }
    Ok(())
}

/// A configuration without `servers` on an ensemble member's data directory (an operator
/// dropping `servers` to get past a lost quorum, or a data_dir pointing at the wrong place):
/// a server alone can never win an election in that membership, and says so at once, naming
/// the voters, rather than after a wait for a leadership that cannot come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_alone_on_an_ensemble_members_log_names_the_voters() -> Result<()> {
    let scratch = ScratchDir::new("guards-alone-on-ensemble")?;
    let member = ensemble_member(&scratch.path("data"), &[(2, Role::Voter), (3, Role::Voter)])?;
    let client = TcpListener::bind(member.listen).await?;
    let startup = Startup { initialise: true, peer_listener: None };
    let coordinator =
        within_for(DEADLINE, "the server to start", Coordinator::launch(member, Arc::new(RealFs), startup)).await??;
    coordinator
        .raft()
        .wait(Some(DEADLINE))
        .metrics(|m| m.membership_config.membership().voter_ids().count() == 3, "the initial membership")
        .await
        .map_err(|e| anyhow!("{e}"))?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(coordinator.serve(client, async move {
        let _ = stopped.await;
    }));
    let _ = stop.send(());
    within_for(DEADLINE, "the server to stop", task).await??.map_err(|e| anyhow!("{e}"))?;

    let began = std::time::Instant::now();
    let e = refusal(alone(&scratch.path("data"))?).await?;
    assert!(began.elapsed() < Duration::from_secs(5), "refused at once, not after a wait: {e}");
    assert!(e.contains("voters 1, 2, 3") && e.contains("runs alone") && e.contains("cluster 7"), "{e}");
    assert!(e.contains("`servers`"), "what to do is named: {e}");
    Ok(())
}
