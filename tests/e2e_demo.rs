//! The demo, run unattended for each scenario: the verdict must hold (zero lost, zero stale,
//! one active at the end; the command exits 0 only then) and no process it started may outlive
//! it. By default it runs on a three-server coordinator ensemble; `--coordinator single` keeps
//! the one-server story.

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use referee_testkit::output_within;

/// The longest a whole demo run may take: a scenario runs in seconds, each of its waits has a
/// deadline of its own, and a run that never ends must fail the test, not hang it.
const DEMO_DEADLINE: Duration = Duration::from_secs(120);

/// Pids of processes whose command line mentions `dir`.
fn processes_mentioning(dir: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(dir) {
            out.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    out
}

/// Runs `referee demo --scenario SCENARIO ARGS --exit-after 0`, checks the verdict and the
/// clean-up, and returns what it printed.
fn run_demo_with(scenario: &str, args: &[&str]) -> Result<String> {
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_referee"))
            .args(["demo", "--scenario", scenario])
            .args(args)
            .args(["--exit-after", "0"]),
        DEMO_DEADLINE,
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "demo --scenario {scenario} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(stdout.contains("VERDICT HOLDS"), "{stdout}");
    ensure!(stdout.contains("lost (must be 0)                       0"), "{stdout}");
    // The journal's own refusal of the old active's claim after a failover (its `BadVersion`,
    // not a master refusing for some other reason); without a failover, the claim unchanged.
    if matches!(scenario, "coordinator-restart" | "coordinator-leader-crash") {
        ensure!(stdout.contains("No master was deposed: the epoch still holds"), "{stdout}");
    } else {
        ensure!(stdout.contains("the journal refused it, as it must"), "{stdout}");
        ensure!(
            stdout.contains("it answered 503 Service Unavailable: deposed:")
                || stdout.contains("the coordinator answered: the epoch znode changed since our claim"),
            "{stdout}"
        );
    }
    ensure!(stdout.contains("refused on replay (must be 0)          0"), "{stdout}");
    ensure!(stdout.contains("misreported token/seq (must be 0)      0"), "{stdout}");
    // Every child ran with its files in the demo's scratch directory, named in its output.
    let dir = stdout
        .split("(files in ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .map(str::to_string)
        .unwrap_or_default();
    ensure!(!dir.is_empty(), "the demo names its directory: {stdout}");
    let left = processes_mentioning(&dir);
    ensure!(left.is_empty(), "processes outlived the demo: {left:?}");
    ensure!(!std::path::Path::new(&dir).exists(), "the demo removes its files: {dir}");
    Ok(stdout.into_owned())
}

/// [`run_demo_with`] on the default coordinator, which must be the three-server ensemble with
/// one leader named.
fn run_demo(scenario: &str) -> Result<String> {
    let stdout = run_demo_with(scenario, &[])?;
    let servers = stdout.lines().find(|l| l.starts_with("Coordinator: a 3-server ensemble: server 1 on 127.0.0.1:"));
    ensure!(
        servers.is_some_and(|l| l.matches("(leader)").count() == 1 && l.matches("(follower)").count() == 2),
        "the demo names the three servers and the one that leads: {stdout}"
    );
    Ok(stdout)
}

/// The default run: the crash scenario on the ensemble, with the standby's fencing chain checked
/// beforehand (graceful and kill ready, the active's master found and not signalled) and a
/// failover timeline.
#[test]
fn demo_crash() -> Result<()> {
    let stdout = run_demo("crash")?;
    ensure!(stdout.contains("Failover timeline"), "{stdout}");
    ensure!(stdout.contains("fencing chain against") && stdout.contains("checked without fencing"), "{stdout}");
    let check = |method: &str| stdout.lines().any(|l| l.contains(&format!(" {method} ")) && l.contains(" ready "));
    ensure!(check("graceful") && check("kill"), "{stdout}");
    ensure!(stdout.contains("would signal pid") && stdout.contains("(not signalled)"), "{stdout}");
    Ok(())
}

#[test]
fn demo_crash_on_a_single_coordinator_server() -> Result<()> {
    let stdout = run_demo_with("crash", &["--coordinator", "single"])?;
    ensure!(stdout.contains("Coordinator: one server on 127.0.0.1:"), "{stdout}");
    ensure!(!stdout.contains("ensemble"), "{stdout}");
    Ok(())
}

#[test]
fn demo_hang() -> Result<()> {
    run_demo("hang").map(drop)
}

#[test]
fn demo_agent_crash() -> Result<()> {
    run_demo("agent-crash").map(drop)
}

/// The active node cut off from the coordinator, its master still running and written to: it
/// stops at its lease end, as it reports itself, before the other master takes a write, and
/// the healed node comes back as a standby.
#[test]
fn demo_partition() -> Result<()> {
    let stdout = run_demo("partition")?;
    ensure!(stdout.contains("never two masters taking writes"), "{stdout}");
    ensure!(!stdout.contains("OVERLAP"), "{stdout}");
    ensure!(stdout.contains("as the master reports it"), "{stdout}");
    // The old agent's own record of the moment, in the joined timeline.
    ensure!(stdout.contains("old active's agent: lease_ended"), "{stdout}");
    ensure!(stdout.contains("back as a connected standby"), "{stdout}");
    Ok(())
}

#[test]
fn demo_switchover() -> Result<()> {
    run_demo("switchover").map(drop)
}

/// Every server of the ensemble killed at once and restarted: nothing acknowledged is lost.
#[test]
fn demo_coordinator_restart() -> Result<()> {
    let stdout = run_demo("coordinator-restart")?;
    ensure!(stdout.contains("all 3 coordinator servers killed"), "{stdout}");
    ensure!(stdout.contains("serving again after"), "{stdout}");
    ensure!(stdout.contains("no failover was needed"), "{stdout}");
    Ok(())
}

#[test]
fn demo_coordinator_restart_on_a_single_coordinator_server() -> Result<()> {
    let stdout = run_demo_with("coordinator-restart", &["--coordinator", "single"])?;
    ensure!(stdout.contains("  coordinator killed with"), "{stdout}");
    ensure!(stdout.contains("no failover was needed"), "{stdout}");
    Ok(())
}

/// The coordinator's leader killed: a new leader, no failover, the killed server back as a
/// follower.
#[test]
fn demo_coordinator_leader_crash() -> Result<()> {
    let stdout = run_demo("coordinator-leader-crash")?;
    ensure!(stdout.contains("(the leader) killed"), "{stdout}");
    ensure!(stdout.contains("no failover"), "{stdout}");
    ensure!(stdout.contains("restarted on its data directory: follower"), "{stdout}");
    Ok(())
}

/// The leader-crash scenario needs an ensemble, and says so.
#[test]
fn demo_coordinator_leader_crash_is_refused_on_a_single_server() -> Result<()> {
    let out = output_within(
        Command::new(env!("CARGO_BIN_EXE_referee")).args([
            "demo",
            "--scenario",
            "coordinator-leader-crash",
            "--coordinator",
            "single",
            "--exit-after",
            "0",
        ]),
        Duration::from_secs(30),
    )?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "the demo must refuse: {stderr}");
    ensure!(stderr.contains("--coordinator ensemble"), "{stderr}");
    Ok(())
}

/// Stops a demo with `signal` once it has printed a line starting with `after`, and checks that
/// it stops everything it started and removes its files, as the Ctrl-C it asks for at the end
/// does: an operator who interrupts it half-way, or a supervisor that sends SIGTERM, must not
/// be left with coordinator servers, masters and agents holding ports.
fn interrupt_demo(signal: nix::sys::signal::Signal, after: &str) -> Result<()> {
    use std::io::BufRead;
    use std::time::Instant;

    let mut child = Command::new(env!("CARGO_BIN_EXE_referee"))
        .args(["demo", "--exit-after", "0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped");
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen.lines().any(|l| l.starts_with(after)) {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => seen.push_str(&(line + "\n")),
            Err(_) => {
                let _ = child.kill();
                anyhow::bail!("the demo never printed a line starting with {after:?}:\n{seen}");
            }
        }
    }
    let dir =
        seen.split("(files in ").nth(1).and_then(|rest| rest.split(')').next()).map(str::to_string).unwrap_or_default();
    ensure!(!dir.is_empty(), "the demo names its directory: {seen}");
    nix::sys::signal::kill(pid, signal)?;

    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            anyhow::bail!("the demo did not stop within 30 s of {signal}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = reader.join();
    seen.extend(lines.try_iter().map(|l| l + "\n"));
    let left = processes_mentioning(&dir);
    for pid in &left {
        // Leave the machine as it was, whatever the verdict.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.parse()?), nix::sys::signal::Signal::SIGKILL);
    }
    ensure!(left.is_empty(), "processes outlived the demo stopped by {signal} ({status}): {left:?}\n{seen}");
    ensure!(!std::path::Path::new(&dir).exists(), "the demo stopped by {signal} left its files: {dir}\n{seen}");
    ensure!(!status.success(), "a demo stopped before its verdict does not exit 0: {status}\n{seen}");
    ensure!(seen.contains(&format!("{signal}: stopping")), "it says why it stops: {seen}");
    Ok(())
}

/// Ctrl-C once the pair has started, before the failure is injected.
#[test]
fn demo_interrupted_before_the_failure_stops_everything_it_started() -> Result<()> {
    interrupt_demo(nix::sys::signal::Signal::SIGINT, "Started in ")
}

/// SIGTERM while the failure is being injected and the failover runs.
#[test]
fn demo_terminated_during_the_failover_stops_everything_it_started() -> Result<()> {
    interrupt_demo(nix::sys::signal::Signal::SIGTERM, ">>> ")
}
