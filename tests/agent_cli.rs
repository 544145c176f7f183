//! The agent's executables refuse what they cannot run, at once and saying what is wrong: the
//! lean `referee-agent` and `referee agent`, which run the same agent.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use referee_testkit::ScratchDir;

/// Runs a program that must exit on its own within 20 s, with its output.
fn run(program: &str, args: &[&str]) -> Result<Output> {
    let mut child =
        Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
            bail!("{program} {args:?} was still running after 20 s: it should have refused at once");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(child.wait_with_output()?)
}

/// Both ways to run the agent, on the configuration at `config`.
fn both(config: &Path) -> [(String, Vec<String>); 2] {
    let config = config.display().to_string();
    [
        (env!("CARGO_BIN_EXE_referee-agent").to_string(), vec!["--config".into(), config.clone()]),
        (env!("CARGO_BIN_EXE_referee").to_string(), vec!["agent".into(), "--config".into(), config]),
    ]
}

fn refused(program: &str, args: &[String], code: i32, says: &[&str]) -> Result<()> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run(program, &args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(code),
        "{program} {args:?}: exit {:?}, want {code}; stderr: {stderr}",
        out.status
    );
    for s in says {
        ensure!(stderr.contains(s), "{program} {args:?} must say {s:?}; it said: {stderr}");
    }
    Ok(())
}

#[test]
fn no_configuration_is_a_usage_error_naming_the_flag() -> Result<()> {
    refused(env!("CARGO_BIN_EXE_referee-agent"), &[], 2, &["--config"])?;
    refused(env!("CARGO_BIN_EXE_referee"), &["agent".to_string()], 2, &["--config"])
}

#[test]
fn a_missing_file_is_named() -> Result<()> {
    let dir = ScratchDir::new("agent-cli")?;
    let missing = dir.path("no-such-agent.yaml");
    for (program, args) in both(&missing) {
        refused(&program, &args, 1, &["cannot read agent config", &missing.display().to_string()])?;
    }
    Ok(())
}

#[test]
fn an_unknown_key_is_named_with_its_file() -> Result<()> {
    let dir = ScratchDir::new("agent-cli")?;
    let path = dir.path("agent.yaml");
    std::fs::write(&path, "node_id: a\nhealth_check: {}\n")?;
    for (program, args) in both(&path) {
        refused(&program, &args, 1, &["unknown field `health_check`", &path.display().to_string()])?;
    }
    Ok(())
}
