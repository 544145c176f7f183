//! `fence_agent`: fence agents of the Pacemaker and Red Hat cluster suites, run as real
//! processes: a scripted agent that records what it was given, and Debian's own `fence_dummy`
//! (package `fence-agents`), which keeps its device's power state in a file.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{fencer, find_program, target};
use referee_fencing::{ConfigError, FenceOutcome, Fencer, FencingToken, MethodOutcome};
use referee_testkit::{skip, ScratchDir};

fn yaml(agent: &Path, timeout_ms: u64, extra: &str) -> String {
    format!(
        "overall_timeout_ms: 10000\nlevels:\n  - methods:\n      - kind: fence_agent\n        timeout_ms: {timeout_ms}\n        agent: {}\n{extra}",
        agent.display()
    )
}

fn only_outcome(report: &referee_fencing::FenceReport) -> &MethodOutcome {
    assert_eq!(report.events.len(), 1, "{report:#?}");
    &report.events[0].outcome
}

/// A fence agent in the standard's shape: it appends its arguments, its environment's
/// password-like variables and its standard input to `log`, then acts on `action=` as
/// `on_off` and `on_status` say (shell snippets; `$state` is the device's power file).
fn scripted_agent(dir: &ScratchDir, on_off: &str, on_status: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let log = dir.path("agent.log");
    let state = dir.path("power");
    std::fs::write(&state, "on").unwrap();
    let script = format!(
        r#"#!/bin/sh
log='{log}'; state='{state}'
input=$(cat)
{{ echo "--- args:[$*] env:[$(env | grep -c hunter2)]"; printf '%s\n' "$input"; }} >> "$log"
action=$(printf '%s\n' "$input" | sed -n 's/^action=//p')
case "$action" in
  off) {on_off} ;;
  status) {on_status} ;;
  *) exit 2 ;;
esac
"#,
        log = log.display(),
        state = state.display(),
    );
    (dir.script("fence_scripted", &script).unwrap(), log)
}

/// The standard inputs the agent was given, one per run.
fn runs(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.split("--- ").filter(|r| !r.is_empty()).map(str::to_string).collect()
}

#[tokio::test]
async fn an_agent_powers_the_target_off_and_its_status_confirms_it() {
    let dir = ScratchDir::new("fence-agent-ok").unwrap();
    let (agent, log) = scripted_agent(
        &dir,
        r#"echo off > "$state"; echo 'Success: Powered OFF'"#,
        r#"[ "$(cat "$state")" = off ] && exit 2 || exit 0"#,
    );
    let secret = dir.path("bmc.pass");
    std::fs::write(&secret, "hunter2\n").unwrap();
    let extra = format!(
        "        options: {{username: admin, ip: 'bmc-{{node_id}}.example', lanplus: '1'}}\n        nodes: {{db2: {{ip: 10.0.0.12}}}}\n        secret_file: {}\n",
        secret.display()
    );
    let f = fencer(&yaml(&agent, 5000, &extra));

    let report = f.fence(&target("db2", "h2", 8020), FencingToken(9)).await;
    let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(detail.contains("confirms the power is off"), "{detail}");
    assert!(report.outcome.permits_promotion());
    let first = runs(&log);
    assert_eq!(first.len(), 2, "off, then status: {first:#?}");
    // The password travels on standard input only: no arguments, nothing in the environment.
    assert_eq!(
        first[0],
        "args:[] env:[0]\naction=off\nnodename=db2\nip=10.0.0.12\nlanplus=1\nusername=admin\npassword=hunter2\n"
    );
    assert!(first[1].starts_with("args:[] env:[0]\naction=status\nnodename=db2\n"), "{}", first[1]);

    // Another node gets the common options, with its own id in place of the placeholder.
    std::fs::write(dir.path("power"), "on").unwrap();
    let report = f.fence(&target("db1", "h1", 8020), FencingToken(10)).await;
    assert!(report.outcome.permits_promotion(), "{report:#?}");
    assert!(runs(&log).iter().any(|r| r.contains("action=off\nnodename=db1\nip=bmc-db1.example\n")), "{log:?}");
}

#[tokio::test]
async fn a_power_off_that_status_never_confirms_is_not_fenced() {
    let dir = ScratchDir::new("fence-agent-unconfirmed").unwrap();
    // The device says done but stays on.
    let (agent, log) = scripted_agent(&dir, "exit 0", "exit 0");
    let started = Instant::now();
    let report = fencer(&yaml(&agent, 1500, "")).fence(&target("n1", "h", 1), FencingToken(9)).await;
    let MethodOutcome::Indeterminate { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("not confirmed") && reason.contains("power is on"), "{reason}");
    assert!(!report.outcome.permits_promotion());
    // It kept asking until its deadline, and no longer.
    assert!(runs(&log).len() >= 3, "{:#?}", runs(&log));
    assert!(started.elapsed() < Duration::from_millis(1500) + Duration::from_millis(1500), "{:?}", started.elapsed());

    // With verify off, the agent's exit 0 is taken as it is.
    let report =
        fencer(&yaml(&agent, 1500, "        verify: false\n")).fence(&target("n1", "h", 1), FencingToken(9)).await;
    assert!(report.outcome.permits_promotion(), "{report:#?}");
}

#[tokio::test]
async fn a_refused_login_fails_and_an_error_after_it_is_indeterminate() {
    let dir = ScratchDir::new("fence-agent-errors").unwrap();
    let (agent, _) =
        scripted_agent(&dir, "echo 'Failed: Unable to connect/login to fencing device' >&2; exit 3", "exit 0");
    let report = fencer(&yaml(&agent, 2000, "")).fence(&target("n1", "h", 1), FencingToken(9)).await;
    let MethodOutcome::Failed { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("exited 3 (login refused): Failed: Unable to connect"), "{reason}");
    assert!(matches!(report.outcome, FenceOutcome::Failed { .. }));

    let dir = ScratchDir::new("fence-agent-lost").unwrap();
    let (agent, _) = scripted_agent(&dir, "echo 'Connection lost' >&2; exit 4", "exit 0");
    let report = fencer(&yaml(&agent, 2000, "")).fence(&target("n1", "h", 1), FencingToken(9)).await;
    let MethodOutcome::Indeterminate { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("exited 4 (connection lost)"), "{reason}");
}

#[test]
fn bad_fence_agent_settings_are_refused_with_the_field_named() {
    let refused = |extra: &str| match Fencer::from_yaml_str(&yaml(Path::new("/usr/sbin/fence_ipmilan"), 5000, extra)) {
        Err(e @ ConfigError::Method { .. }) => e.to_string(),
        other => panic!("{extra}: {other:?}"),
    };
    let relative = Fencer::from_yaml_str(&yaml(Path::new("fence_ipmilan"), 5000, "")).unwrap_err().to_string();
    assert!(relative.contains("agent") && relative.contains("absolute path"), "{relative}");
    let e = refused("        options: {password: hunter2}\n");
    assert!(e.contains("set by the method") && e.contains("secret_file"), "{e}");
    let e = refused("        options: {action: on}\n");
    assert!(e.contains("set by the method"), "{e}");
    let e = refused("        options: {'ip address': x}\n");
    assert!(e.contains("not an option name"), "{e}");
    let e = refused("        options: {plug: \"a\\naction=on\"}\n");
    assert!(e.contains("one line"), "{e}");
    let e = refused("        nodes: {db1: {plug: '{pid}'}}\n");
    assert!(e.contains("unknown placeholder `{pid}`"), "{e}");
    let e = Fencer::from_yaml_str(&yaml(Path::new("/usr/sbin/fence_ipmilan"), 5000, "        action: cycle\n"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("fence_agent") && e.contains("`cycle`, expected `off` or `reboot`"), "{e}");
    let e = refused("        secret_file: /x\n        secret_env: X\n");
    assert!(e.contains("not both"), "{e}");
}

/// Debian's `fence_dummy`, the fence-agents' own test device, on its `file` type: the power
/// state is a file it reads for `status` and writes for `off`. Its library parses our standard
/// input exactly as it parses Pacemaker's.
#[tokio::test]
async fn debians_fence_dummy_is_powered_off_and_confirmed() {
    let Some(agent) = find_program("/usr/sbin/fence_dummy") else {
        skip(
            "debians_fence_dummy_is_powered_off_and_confirmed",
            "/usr/sbin/fence_dummy is missing (apt-get install fence-agents)",
        );
        return;
    };
    let dir = ScratchDir::new("fence-dummy").unwrap();
    let state = dir.path("power");
    std::fs::write(&state, "on").unwrap();
    let extra = format!("        options: {{type: file, status_file: '{}'}}\n", state.display());
    let report = fencer(&yaml(&agent, 8000, &extra)).fence(&target("db1", "h1", 8020), FencingToken(9)).await;
    let MethodOutcome::Fenced { detail } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(detail.contains("confirms the power is off"), "{detail}");
    assert_eq!(std::fs::read_to_string(&state).unwrap().trim(), "off");
    // Unfenced: powered on again, and confirmed.
    let report = fencer(&yaml(&agent, 8000, &extra)).unfence(&target("db1", "h1", 8020)).await;
    assert!(matches!(report.outcome, referee_fencing::UnfenceOutcome::Unfenced), "{report:#?}");
    assert_eq!(std::fs::read_to_string(&state).unwrap().trim(), "on");

    // A device that never reaches off (`type: fail`; the agent waits for it up to its own
    // 20 s power timeout): cut off at the method's deadline, never fenced.
    let extra = "        options: {type: fail}\n";
    let report = fencer(&yaml(&agent, 2000, extra)).fence(&target("db1", "h1", 8020), FencingToken(9)).await;
    let MethodOutcome::Indeterminate { reason } = only_outcome(&report) else { panic!("{report:#?}") };
    assert!(reason.contains("did not finish before its deadline"), "{reason}");
}

/// Unfencing a node powered off by a fence agent powers it back on (`action=on`) and confirms
/// it with `status`, as Pacemaker unfences; a chain whose agent reboots has nothing to undo.
#[tokio::test]
async fn unfencing_powers_the_node_back_on_and_confirms_it() {
    let dir = ScratchDir::new("fence-agent-unfence").unwrap();
    let (agent, log) =
        scripted_agent(&dir, r#"echo off > "$state""#, r#"[ "$(cat "$state")" = off ] && exit 2 || exit 0"#);
    // The scripted agent knows off and status; give it `on` as well.
    let script = std::fs::read_to_string(&agent)
        .unwrap()
        .replace("  *) exit 2 ;;", "  on) echo on > \"$state\" ;;\n  *) exit 2 ;;");
    std::fs::write(&agent, script).unwrap();
    let f = fencer(&yaml(&agent, 3000, ""));
    let t = target("db2", "h2", 8020);
    assert!(f.fence(&t, FencingToken(9)).await.outcome.permits_promotion());
    assert_eq!(std::fs::read_to_string(dir.path("power")).unwrap().trim(), "off");

    let report = f.unfence(&t).await;
    assert!(matches!(report.outcome, referee_fencing::UnfenceOutcome::Unfenced), "{report:#?}");
    let MethodOutcome::Fenced { detail } = &report.events[0].outcome else { panic!("{report:#?}") };
    assert!(detail.contains("confirms the power is on"), "{detail}");
    assert_eq!(std::fs::read_to_string(dir.path("power")).unwrap().trim(), "on");
    let actions: Vec<String> = runs(&log).iter().filter_map(|r| r.lines().nth(1).map(str::to_string)).collect();
    assert_eq!(actions, ["action=off", "action=status", "action=on", "action=status"]);

    // A device that refuses the login: not unfenced, and says why.
    let refusing_dir = ScratchDir::new("fence-agent-unfence-refused").unwrap();
    let (refusing, _) = scripted_agent(&refusing_dir, "exit 0", "exit 0");
    let script = std::fs::read_to_string(&refusing)
        .unwrap()
        .replace("  *) exit 2 ;;", "  on) echo 'Failed: login' >&2; exit 3 ;;\n  *) exit 2 ;;");
    std::fs::write(&refusing, script).unwrap();
    let report = fencer(&yaml(&refusing, 3000, "")).unfence(&t).await;
    let referee_fencing::UnfenceOutcome::Incomplete { reason } = &report.outcome else { panic!("{report:#?}") };
    assert!(reason.contains("exited 3 (login refused)"), "{reason}");

    // A rebooted node came back by itself: nothing to undo, nothing run.
    let report = fencer(&yaml(&agent, 3000, "        action: reboot\n")).unfence(&t).await;
    assert!(matches!(report.outcome, referee_fencing::UnfenceOutcome::Unfenced) && report.events.is_empty());
}
