//! The agent's executables refuse what they cannot run, at once and saying what is wrong: the
//! lean `referee-agent` and `referee agent`, which run the same agent.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Result};
use referee_testkit::{output_within, ScratchDir};

/// Runs a program that must exit on its own within 20 s, with its output.
fn run(program: &str, args: &[&str]) -> Result<Output> {
    output_within(Command::new(program).args(args), Duration::from_secs(20))
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

/// A failover or drain that would wait no time at all (and so send nothing) is refused as it
/// is parsed, before the coordinator is asked anything.
#[test]
fn a_failover_waiting_no_time_is_a_usage_error() -> Result<()> {
    let referee = env!("CARGO_BIN_EXE_referee");
    for command in [&["failover", "--to", "db2"][..], &["drain", "db1"][..]] {
        let args: Vec<String> = ["admin", "--coordinator", "127.0.0.1:1", "--cluster", "c"]
            .iter()
            .chain(command)
            .chain(&["--wait-ms", "0"])
            .map(|s| s.to_string())
            .collect();
        refused(referee, &args, 2, &["--wait-ms", "0"])?;
    }
    Ok(())
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

/// An agent configuration for node a with peer b on `peer_host`, fencing with `methods` (YAML
/// list items, indented for the level).
fn fencing_config(dir: &ScratchDir, methods: &str) -> Result<std::path::PathBuf> {
    let path = dir.path("agent.yaml");
    std::fs::write(
        &path,
        format!(
            r#"cluster: check
node_id: a
peers:
  - {{node_id: b, host: 127.0.0.1, port: 1, ha_url: "http://127.0.0.1:1"}}
coordinator: {{connect: "127.0.0.1:1", session_timeout_ms: 2500}}
master:
  host: 127.0.0.1
  port: 2
  adapter: {{kind: http, url: "http://127.0.0.1:2"}}
fencing:
  overall_timeout_ms: 5000
  levels:
    - methods:
{methods}
probes: {{listen: "127.0.0.1:0"}}
"#
        ),
    )?;
    Ok(path)
}

/// Both executables' `--check-fencing` on `config`: exit code and standard output of each.
fn check_fencing(config: &Path) -> Result<Vec<(Option<i32>, String)>> {
    let mut results = Vec::new();
    for (program, mut args) in both(config) {
        args.push("--check-fencing".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&program, &args)?;
        results.push((out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    Ok(results)
}

/// `--check-fencing` asks every method about every peer, fences nothing, prints what each
/// found, and exits 0 only when nothing would fail. It never starts the agent.
#[test]
fn check_fencing_reports_each_method_and_exits_by_what_it_found() -> Result<()> {
    let dir = ScratchDir::new("agent-cli-check")?;
    let log = dir.path("agent.log");
    // A fence agent whose device reads the node on, logging the actions it is asked for.
    let agent =
        dir.script("fence_on", &format!("#!/bin/sh\nsed -n 's/^action=//p' >> '{}'\nexit 0\n", log.display()))?;
    let program = dir.script("fence-db", "#!/bin/sh\nexit 0\n")?;
    let methods = format!(
        "        - {{kind: fence_agent, timeout_ms: 2000, agent: {}}}\n        - {{kind: shell, timeout_ms: 2000, program: {}}}\n",
        agent.display(),
        program.display()
    );
    for (code, stdout) in check_fencing(&fencing_config(&dir, &methods)?)? {
        ensure!(code == Some(0), "exit {code:?}\n{stdout}");
        ensure!(stdout.contains("b (127.0.0.1):") && stdout.contains("No problem found"), "{stdout}");
        ensure!(stdout.matches(" ready ").count() == 2, "{stdout}");
    }
    ensure!(std::fs::read_to_string(&log)? == "status\nstatus\n", "only the status was asked");

    // The master's HA endpoint is closed and the program is gone: exit 1, both named.
    let methods = format!(
        "        - {{kind: graceful, timeout_ms: 1000}}\n        - {{kind: shell, timeout_ms: 2000, program: {}}}\n",
        dir.path("gone").display()
    );
    for (code, stdout) in check_fencing(&fencing_config(&dir, &methods)?)? {
        ensure!(code == Some(1), "exit {code:?}\n{stdout}");
        ensure!(stdout.matches("PROBLEM").count() == 2 && stdout.contains("2 problem(s)"), "{stdout}");
        ensure!(stdout.contains("cannot connect") && stdout.contains("No such file"), "{stdout}");
    }
    Ok(())
}

/// `--check-fencing` numbers the levels as the configuration lists them, from 0, as the
/// fencer's log, `/status`'s `fencing_checks` and the configuration errors do: "level 1" is
/// the second level everywhere.
#[test]
fn check_fencing_numbers_levels_as_the_fencer_and_status_do() -> Result<()> {
    let dir = ScratchDir::new("agent-cli-levels")?;
    let program = dir.script("fence-db", "#!/bin/sh\nexit 0\n")?;
    // Level 0: graceful; level 1: two shell methods, named for where they stand.
    let methods = format!(
        "        - {{kind: graceful, name: first-level, timeout_ms: 1000}}\n    - methods:\n        - {{kind: shell, name: second-level, timeout_ms: 2000, program: {p}}}\n        - {{kind: shell, name: also-second, timeout_ms: 2000, program: {p}}}\n",
        p = program.display()
    );
    for (_, stdout) in check_fencing(&fencing_config(&dir, &methods)?)? {
        let levels: Vec<(String, String)> = stdout
            .lines()
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                (words.next()? == "level").then_some(())?;
                Some((words.next()?.to_string(), words.next()?.to_string()))
            })
            .collect();
        let want = [("0", "first-level"), ("1", "second-level"), ("1", "also-second")]
            .map(|(l, m)| (l.to_string(), m.to_string()));
        ensure!(levels == want, "levels {levels:?}, want {want:?} (the configuration's order, from 0):\n{stdout}");
    }
    Ok(())
}

/// `referee admin config set` refuses settings the agent's configuration would not accept
/// (a promotion that would not fit in the lease, a value of the wrong type, a key that is not
/// the cluster's) with exit code 3, "refused", writing nothing; a setting it cannot parse at all
/// is a usage error (2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_config_set_exits_3_and_writes_nothing() -> Result<()> {
    let dir = ScratchDir::new("agent-cli-config-set")?;
    let config = fencing_config(&dir, "        - {kind: graceful, timeout_ms: 500}\n")?;
    let server = referee_testkit::TestServer::start().await?;
    let coordinator = server.connect_string();
    let admin = |setting: &'static str| {
        let (config, coordinator) = (config.display().to_string(), coordinator.clone());
        tokio::task::spawn_blocking(move || {
            let args = ["admin", "--config", &config, "--coordinator", &coordinator, "config", "set", setting];
            run(env!("CARGO_BIN_EXE_referee"), &args)
        })
    };
    for (setting, code, says) in [
        ("election.promote_timeout_ms=60000", 3, "must fit inside the lease"),
        ("election.max_lag=lots", 3, "election: invalid type"),
        ("election.max_lagg=5", 3, "is not a setting for the whole cluster"),
        ("election.priority=5", 3, "is each node's own"),
        ("coordinator.session_timeout_ms=9000", 3, "has no settings for the whole cluster"),
        ("election.max_lag", 2, "give SECTION.KEY=VALUE"),
    ] {
        let out = admin(setting).await??;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(code) && stderr.contains(says),
            "config set {setting}: exit {:?}, want {code} saying {says:?}; stderr: {stderr}",
            out.status
        );
        if code == 3 {
            ensure!(stderr.contains("refused, nothing was written"), "config set {setting}: {stderr}");
        }
    }
    let zk = server.client().await?;
    ensure!(zk.check_stat("/referee/check/config").await?.is_none(), "a refused setting was written");
    drop(zk);
    server.stop().await
}

/// `--unfence NODE` undoes the reversible methods for a configured peer (here a fence agent's
/// power-off: the device is powered on) and exits 0; a node that is not a peer is refused with
/// the peers named; it cannot be asked together with `--check-fencing`.
#[test]
fn unfence_powers_a_peer_back_on_and_refuses_an_unknown_node() -> Result<()> {
    let dir = ScratchDir::new("agent-cli-unfence")?;
    let state = dir.path("power");
    std::fs::write(&state, "off")?;
    let agent = dir.script(
        "fence_file",
        &format!(
            "#!/bin/sh\nstate='{}'\ncase \"$(sed -n 's/^action=//p')\" in\n  on) echo on > \"$state\" ;;\n  off) echo off > \"$state\" ;;\n  status) [ \"$(cat \"$state\")\" = off ] && exit 2 || exit 0 ;;\n  *) exit 2 ;;\nesac\n",
            state.display()
        ),
    )?;
    let config = fencing_config(
        &dir,
        &format!("        - {{kind: fence_agent, timeout_ms: 2000, agent: {}}}\n", agent.display()),
    )?;
    for (program, mut args) in both(&config) {
        std::fs::write(&state, "off")?;
        args.extend(["--unfence".into(), "b".into()]);
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&program, &argv)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(out.status.code() == Some(0), "{program} {argv:?}: {:?}\n{stdout}", out.status);
        ensure!(stdout.contains("undone") && stdout.contains("b unfenced."), "{stdout}");
        ensure!(std::fs::read_to_string(&state)?.trim() == "on", "the device was not powered on");

        let mut unknown = both(&config).into_iter().find(|(p, _)| *p == program).map(|(_, a)| a).unwrap_or_default();
        unknown.extend(["--unfence".into(), "zz".into()]);
        refused(&program, &unknown, 1, &["`zz` is not a configured peer", "peers: b"])?;
        let mut both_asked = args.clone();
        both_asked.push("--check-fencing".into());
        refused(&program, &both_asked, 2, &["cannot be used with"])?;
    }
    Ok(())
}

/// An agent whose master is an OCF resource that refuses its configuration (`validate-all`
/// exits 6, OCF_ERR_CONFIGURED: here the demo master's agent without its `url`) does not start:
/// it exits at once with the agent's own reason.
#[test]
fn an_ocf_resource_that_refuses_its_configuration_stops_the_agent() -> Result<()> {
    let dir = ScratchDir::new("agent-cli")?;
    let path = fencing_config(&dir, "        - {kind: graceful, timeout_ms: 500}")?;
    let adapter = format!(
        "{{kind: ocf, agent: {:?}, params: {{referee: {:?}}}, token_file: {:?}}}",
        referee::lab::DEMO_MASTER_OCF_AGENT,
        env!("CARGO_BIN_EXE_referee"),
        dir.path("ocf.token").display().to_string()
    );
    let yaml = std::fs::read_to_string(&path)?.replace("{kind: http, url: \"http://127.0.0.1:2\"}", &adapter);
    ensure!(yaml.contains("kind: ocf"), "{yaml}");
    std::fs::write(&path, yaml)?;
    for (program, args) in both(&path) {
        refused(
            &program,
            &args,
            1,
            &[
                "validating the master's configuration",
                "validate-all` exited with 6 (OCF_ERR_CONFIGURED): the url parameter is required",
            ],
        )?;
    }
    Ok(())
}
