//! Apache Curator 5.4 (Debian's `libcurator-recipes-java`), the client most Java services use
//! ZooKeeper through, over Apache ZooKeeper 3.8's own Java client, against this server: the
//! framework's API (create with parents, sequential and ephemeral nodes, versions, transactions,
//! digest ACLs, sync), the Java client's one-shot, persistent recursive and removed watches, and
//! the recipes (InterProcessMutex, LeaderLatch, DistributedAtomicLong from two sessions at once,
//! InterProcessSemaphoreV2, SharedCount, CuratorCache over a recursive watch), each result
//! checked by the program `curator/Scenarios.java` beside this file, run with Java's source
//! launcher. The same scenarios run against one server, through a follower of a three-server
//! ensemble, and against Apache ZooKeeper 3.8, so that every expectation in the program is known
//! to be Apache's behaviour too; what they leave in the tree is read back here.
//!
//! The move test takes away the server a Curator session is connected to (found with `cons`;
//! the Java client picks one at random, a follower or the leader): the session must go on
//! through another with its ephemeral node and its lock, and with its one-shot and recursive
//! watches, which the Java client sets again there with SetWatches2, firing on later changes.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::ensemble::{stop, ThreeVoters};
use common::script::{self, Script};
use referee_testkit::{connect, four_letter, skip, TestServer};
use tokio::process::Command;

/// The scenarios' program.
const PROGRAM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/curator/Scenarios.java");
/// Curator's recipes; its manifest names the framework, Guava and ZooKeeper's client jars.
const CURATOR_JAR: &str = "/usr/share/java/curator-recipes.jar";
/// A logger that prints nothing, so that the program's stdout holds its checks alone.
const QUIET_LOGGER_JAR: &str = "/usr/share/java/slf4j-nop.jar";
/// Why a test is skipped without them.
const CURATOR_MISSING: &str = "Apache Curator or a Java compiler is not installed (CI installs Debian's \
     libcurator-recipes-java, libslf4j-java and default-jdk-headless)";

/// Whether the program can run: Curator's jars, and a `java` whose source launcher can compile
/// (a JDK's `jdk.compiler` module).
fn curator_installed() -> bool {
    if !Path::new(CURATOR_JAR).exists() || !Path::new(QUIET_LOGGER_JAR).exists() {
        return false;
    }
    std::process::Command::new("java")
        .arg("--list-modules")
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("jdk.compiler"))
}

fn curator_or_skip(test: &str) -> bool {
    let there = curator_installed();
    if !there {
        skip(test, CURATOR_MISSING);
    }
    there
}

/// The command that runs scenario `name` against `hosts`.
fn scenario(name: &str, hosts: &[SocketAddr]) -> Command {
    let hosts: Vec<String> = hosts.iter().map(SocketAddr::to_string).collect();
    let mut command = Command::new("java");
    command.arg("-cp").arg(format!("{CURATOR_JAR}:{QUIET_LOGGER_JAR}")).arg(PROGRAM).arg(name).arg(hosts.join(","));
    command
}

/// Runs the `api` and `recipes` scenarios against `hosts`, then checks what they left on the
/// server through `check_on`.
async fn api_and_recipes(hosts: &[SocketAddr], check_on: SocketAddr) -> Result<()> {
    // The fewest checks each makes: a program that stopped checking early fails here.
    for (name, least) in [("api", 26), ("recipes", 17)] {
        script::run(name, scenario(name, hosts), least).await?;
        ensure!(
            script::data_of(check_on, &format!("/c/result/{name}")).await? == b"done",
            "scenario `{name}` left no result"
        );
    }
    ensure!(script::data_of(check_on, "/c/api/node").await? == b"w2", "the api scenario's last write is missing");
    // DistributedAtomicLong keeps its value as an 8-byte big-endian long.
    ensure!(script::data_of(check_on, "/c/counter").await? == 100i64.to_be_bytes(), "the counter does not hold 100");
    let client = connect(&check_on.to_string(), Duration::from_secs(10)).await?;
    let (kids, _) = client.get_children("/c/cache").await?;
    ensure!(kids == ["x"], "the cache scenario's tree should hold x alone: {kids:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_api_and_recipes_work_against_one_server() -> Result<()> {
    common::capture_server_logs("referee_coordinator=info");
    if !curator_or_skip("curator_api_and_recipes_work_against_one_server") {
        return Ok(());
    }
    let server = TestServer::start().await?;
    api_and_recipes(&[server.addr], server.addr).await?;
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_api_and_recipes_work_through_a_follower() -> Result<()> {
    common::capture_server_logs("referee_coordinator=info,openraft=warn");
    if !curator_or_skip("curator_api_and_recipes_work_through_a_follower") {
        return Ok(());
    }
    let ensemble = ThreeVoters::start(|_| {}).await?;
    let follower = ensemble.follower().client;
    let leader = ensemble.leader()?.client;
    api_and_recipes(&[follower], leader).await?;
    ensemble.stop().await
}

/// The program's expectations are Apache ZooKeeper's: the same scenarios pass against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curator_scenarios_pass_against_apache_zookeeper_too() -> Result<()> {
    let test = "curator_scenarios_pass_against_apache_zookeeper_too";
    if !curator_or_skip(test) {
        return Ok(());
    }
    let Some((apache, addr)) = script::apache_or_skip(test).await? else {
        return Ok(());
    };
    api_and_recipes(&[addr], addr).await.with_context(|| apache.log_tail())
}

/// The `move` scenario up to the point where it waits for its server to be gone; the session id
/// in hex and the index in `hosts` of the server it is connected to.
async fn start_move(hosts: &[SocketAddr]) -> Result<(Script, String, usize)> {
    let mut script = Script::start("move", scenario("move", hosts))?;
    let ready = script.until("ready ").await?;
    let session = ready.trim_start_matches("ready ").to_owned();
    let ports: Vec<u16> = hosts.iter().map(SocketAddr::port).collect();
    let cons: Vec<String> = tokio::task::spawn_blocking(move || {
        ports.iter().map(|p| four_letter(*p, "cons").unwrap_or_default()).collect()
    })
    .await?;
    let holders: Vec<usize> = (0..hosts.len()).filter(|i| cons[*i].contains(&format!("sid=0x{session},"))).collect();
    let [at] = holders[..] else {
        bail!("session 0x{session} should be connected to exactly one server: {holders:?}\n{}", cons.join("\n"))
    };
    Ok((script, session, at))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_curator_session_moves_with_its_ephemeral_lock_and_watches() -> Result<()> {
    common::capture_server_logs("referee_coordinator=info,openraft=warn");
    if !curator_or_skip("a_curator_session_moves_with_its_ephemeral_lock_and_watches") {
        return Ok(());
    }
    let mut ensemble = ThreeVoters::start(|_| {}).await?;
    let hosts: Vec<SocketAddr> = ensemble.running.iter().map(|r| r.client).collect();
    let (script, session, at) = start_move(&hosts).await?;
    let gone = ensemble.running.remove(at);
    eprintln!("stopping server {} (leader {}), which holds the session", gone.id, ensemble.leader);
    stop(gone).await?;
    let survivor = ensemble.running[0].client;
    script::finish_move(script, &session, 8, "/c/result/move", survivor).await?;
    ensemble.stop().await
}

/// The `move` scenario's expectations are the Java client's with Apache ZooKeeper too: a
/// three-server Apache ensemble, the server the session is connected to killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curator_move_scenario_passes_against_an_apache_ensemble_too() -> Result<()> {
    let test = "the_curator_move_scenario_passes_against_an_apache_ensemble_too";
    if !curator_or_skip(test) {
        return Ok(());
    }
    let Some(mut apache) = script::apache_ensemble_or_skip(test).await? else {
        return Ok(());
    };
    let hosts: Vec<SocketAddr> = apache.ports().into_iter().map(|p| SocketAddr::from(([127, 0, 0, 1], p))).collect();
    let (script, session, at) = start_move(&hosts).await.with_context(|| apache.log_tail())?;
    apache.kill(at);
    let survivor = hosts[(at + 1) % hosts.len()];
    script::finish_move(script, &session, 8, "/c/result/move", survivor).await.with_context(|| apache.log_tail())
}
