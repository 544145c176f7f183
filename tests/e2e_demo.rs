//! The demo, run unattended for each scenario: the verdict must hold (zero lost, zero stale,
//! one active at the end; the command exits 0 only then) and no process it started may outlive
//! it.

use std::process::Command;

use anyhow::{ensure, Result};

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

fn run_demo(scenario: &str) -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_referee"))
        .args(["demo", "--scenario", scenario, "--exit-after", "0"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "demo --scenario {scenario} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(stdout.contains("VERDICT HOLDS"), "{stdout}");
    ensure!(stdout.contains("lost (must be 0)                       0"), "{stdout}");
    ensure!(stdout.contains("refused, as it must be"), "{stdout}");
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
    Ok(())
}

#[test]
fn demo_crash() -> Result<()> {
    run_demo("crash")
}

#[test]
fn demo_hang() -> Result<()> {
    run_demo("hang")
}

#[test]
fn demo_agent_crash() -> Result<()> {
    run_demo("agent-crash")
}

#[test]
fn demo_switchover() -> Result<()> {
    run_demo("switchover")
}

#[test]
fn demo_coordinator_restart() -> Result<()> {
    run_demo("coordinator-restart")
}
