//! kazoo, the Python ZooKeeper client (Debian's `python3-kazoo`), against this server: its API
//! (create, sequential and ephemeral nodes, versions, transactions, ACLs and digest auth, sync,
//! four-letter words), its watches and the recipes its users build on (DataWatch,
//! ChildrenWatch, Lock, Counter, Election, Semaphore, Queue), each result checked by the script
//! `kazoo/scenarios.py` beside this file. The same scenarios run against one server, through a
//! follower of a three-server ensemble, and against Apache ZooKeeper 3.8, so that every
//! expectation in the script is known to be Apache's behaviour too.
//!
//! Beyond the script's own checks, each run is checked here on the server: a scenario leaves
//! its results in the tree (the counter's count, the last value another session wrote, a
//! marker written last), read back with this crate's own client.
//!
//! The last test moves a kazoo session: connected to a follower, with an ephemeral node and
//! kazoo's DataWatch and ChildrenWatch, it loses that server and must go on through another one
//! with the same session, the ephemeral kept, the watches set again there and firing on later
//! changes. (kazoo 2.8 sends no SetWatches: a lost connection ends its one-shot watches, and
//! its recipes read and watch again once connected.)

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::ensemble::{stop, ThreeVoters};
use common::script::{self, Script};
use referee_testkit::{connect, four_letter, skip, TestServer};
use tokio::process::Command;

/// The scenarios' script.
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/kazoo/scenarios.py");
/// Why a test is skipped without kazoo.
const KAZOO_MISSING: &str =
    "the kazoo Python client is not installed (CI installs Debian's python3-kazoo; `apt-get install python3-kazoo`)";

/// A Python interpreter that can import kazoo: Debian's own first (a `python3` earlier on
/// `PATH` may be another installation, without Debian's packages), then whichever `python3`
/// is on `PATH`.
fn python_with_kazoo() -> Option<PathBuf> {
    ["/usr/bin/python3", "python3"].into_iter().map(PathBuf::from).find(|python| {
        std::process::Command::new(python)
            .args(["-c", "import kazoo.client"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// The command that runs scenario `name` against `hosts`.
fn scenario(python: &PathBuf, name: &str, hosts: &[SocketAddr]) -> Command {
    let hosts: Vec<String> = hosts.iter().map(SocketAddr::to_string).collect();
    let mut command = Command::new(python);
    command.arg(SCRIPT).arg(name).arg(hosts.join(","));
    command
}

/// Runs the `api`, `watches` and `recipes` scenarios against `hosts`, then checks what they
/// left on the server through `check_on`.
async fn api_watches_and_recipes(python: &PathBuf, hosts: &[SocketAddr], check_on: SocketAddr) -> Result<()> {
    // The fewest checks each scenario makes: a script that stopped checking early fails here.
    for (name, least) in [("api", 25), ("watches", 7), ("recipes", 13)] {
        script::run(name, scenario(python, name, hosts), least).await?;
        ensure!(
            script::data_of(check_on, &format!("/k/result/{name}")).await? == b"done",
            "kazoo scenario `{name}` left no result"
        );
    }
    ensure!(
        script::data_of(check_on, "/k/api/node").await? == b"from-other",
        "the api scenario's last write is missing"
    );
    ensure!(script::data_of(check_on, "/k/counter").await? == b"100", "kazoo's Counter did not count 100 increments");
    let client = connect(&check_on.to_string(), Duration::from_secs(10)).await?;
    let (children, _) = client.get_children("/k/w/cw").await?;
    ensure!(children == ["x"], "the ChildrenWatch scenario's node should hold x alone: {children:?}");
    Ok(())
}

/// kazoo's interpreter, or `None` after saying loudly why the test is skipped.
fn kazoo_or_skip(test: &str) -> Option<PathBuf> {
    let python = python_with_kazoo();
    if python.is_none() {
        skip(test, KAZOO_MISSING);
    }
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_api_watches_and_recipes_work_against_one_server() -> Result<()> {
    common::capture_server_logs("referee_coordinator=info");
    let Some(python) = kazoo_or_skip("kazoo_api_watches_and_recipes_work_against_one_server") else {
        return Ok(());
    };
    let server = TestServer::start().await?;
    api_watches_and_recipes(&python, &[server.addr], server.addr).await?;
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_api_watches_and_recipes_work_through_a_follower() -> Result<()> {
    common::capture_server_logs("referee_coordinator=info,openraft=warn");
    let Some(python) = kazoo_or_skip("kazoo_api_watches_and_recipes_work_through_a_follower") else {
        return Ok(());
    };
    let ensemble = ThreeVoters::start(|_| {}).await?;
    let (follower, leader) = (ensemble.follower().client, ensemble.leader()?.client);
    // Everything through the follower; the results read back on the leader.
    api_watches_and_recipes(&python, &[follower], leader).await?;
    ensemble.stop().await
}

/// The script's expectations are Apache ZooKeeper's: the same scenarios pass against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kazoo_scenarios_pass_against_apache_zookeeper_too() -> Result<()> {
    let test = "kazoo_scenarios_pass_against_apache_zookeeper_too";
    let Some(python) = kazoo_or_skip(test) else {
        return Ok(());
    };
    let Some((apache, addr)) = script::apache_or_skip(test).await? else {
        return Ok(());
    };
    api_watches_and_recipes(&python, &[addr], addr).await.with_context(|| apache.log_tail())
}

/// The `move` scenario, connected to `hosts[0]` first (kazoo keeps the order given), up to the
/// point where it waits for that server to be gone; its session id in hex.
async fn start_move(python: &PathBuf, hosts: &[SocketAddr]) -> Result<(Script, String)> {
    let mut script = Script::start("move", scenario(python, "move", hosts))?;
    let ready = script.until("ready ").await?;
    let session = ready.trim_start_matches("ready ").to_owned();
    let port = hosts[0].port();
    let cons = tokio::task::spawn_blocking(move || four_letter(port, "cons")).await??;
    ensure!(
        cons.contains(&format!("sid=0x{session},")),
        "kazoo's session 0x{session} should be connected to {} first:\n{cons}",
        hosts[0]
    );
    Ok((script, session))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kazoo_session_moves_to_another_server_with_its_ephemeral_and_watches() -> Result<()> {
    common::capture_server_logs("referee_coordinator=info,openraft=warn");
    let Some(python) = kazoo_or_skip("a_kazoo_session_moves_to_another_server_with_its_ephemeral_and_watches") else {
        return Ok(());
    };
    let mut ensemble = ThreeVoters::start(|_| {}).await?;
    let first = ensemble.follower().id;
    let mut order: Vec<&common::ensemble::Running> = ensemble.running.iter().collect();
    order.sort_by_key(|r| (r.id != first, r.id == ensemble.leader));
    let hosts: Vec<SocketAddr> = order.iter().map(|r| r.client).collect();

    let (script, session) = start_move(&python, &hosts).await?;
    let at = ensemble.running.iter().position(|r| r.id == first).context("the follower")?;
    stop(ensemble.running.remove(at)).await?;
    let leader = ensemble.leader()?.client;
    script::finish_move(script, &session, 5, "/k/result/move", leader).await?;
    ensemble.stop().await
}

/// The `move` scenario's expectations are kazoo's with Apache ZooKeeper too: a three-server
/// Apache ensemble, the follower kazoo is connected to killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kazoo_move_scenario_passes_against_an_apache_ensemble_too() -> Result<()> {
    let test = "the_kazoo_move_scenario_passes_against_an_apache_ensemble_too";
    let Some(python) = kazoo_or_skip(test) else {
        return Ok(());
    };
    let Some(mut apache) = script::apache_ensemble_or_skip(test).await? else {
        return Ok(());
    };
    let ports = apache.ports();
    let modes: Vec<String> = tokio::task::spawn_blocking(move || {
        ports.iter().map(|p| four_letter(*p, "srvr").unwrap_or_default()).collect()
    })
    .await?;
    let follower = modes.iter().position(|m| m.contains("Mode: follower")).context("an Apache follower")?;
    let mut order: Vec<usize> = (0..3).collect();
    order.sort_by_key(|i| (*i != follower, modes[*i].contains("Mode: leader")));
    let hosts: Vec<SocketAddr> = order.iter().map(|i| SocketAddr::from(([127, 0, 0, 1], apache.ports()[*i]))).collect();

    let (script, session) = start_move(&python, &hosts).await.with_context(|| apache.log_tail())?;
    apache.kill(follower);
    script::finish_move(script, &session, 5, "/k/result/move", hosts[2]).await.with_context(|| apache.log_tail())
}
