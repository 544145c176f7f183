//! `Fencer::check`: every method asked whether it could fence a target, against real
//! endpoints and programs, and nothing fenced on the way.

mod common;

use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use common::{closed_port, fencer, serve, target};
use referee_fencing::{FencingToken, HaState, HaStatus, MethodKind, Readiness};
use referee_testkit::ScratchDir;

/// What the endpoints were asked, in order.
type Calls = Arc<Mutex<Vec<String>>>;

/// A master's HA endpoint and a PDU in one server: `GET /ha/state` answers active, `GET
/// /outlets/{node}` answers the outlet's state; every POST (a fence) is recorded.
async fn endpoints(outlet: &'static str) -> (u16, Calls) {
    let calls: Calls = Arc::default();
    let router = Router::new()
        .route(
            "/ha/state",
            get(|State(c): State<Calls>| async move {
                c.lock().unwrap().push("GET /ha/state".into());
                Json(HaStatus { state: HaState::Active, token: FencingToken(7) })
            }),
        )
        .route(
            "/ha/standby",
            post(|State(c): State<Calls>| async move { c.lock().unwrap().push("POST /ha/standby".into()) }),
        )
        .route(
            "/outlets/:node",
            get(move |State(c): State<Calls>| async move {
                c.lock().unwrap().push("GET outlet".into());
                Json(serde_json::json!({"state": outlet}))
            })
            .post(|State(c): State<Calls>| async move { c.lock().unwrap().push("POST outlet".into()) }),
        )
        .with_state(calls.clone());
    (serve(router).await.port(), calls)
}

fn chain(port: u16, shell: &std::path::Path, agent: &std::path::Path) -> String {
    format!(
        r#"overall_timeout_ms: 10000
levels:
  - methods:
      - kind: graceful
        timeout_ms: 2000
  - methods:
      - kind: shell
        timeout_ms: 2000
        program: {shell}
  - methods:
      - kind: http
        timeout_ms: 2000
        url: "http://127.0.0.1:{port}/outlets/{{node_id}}"
        status: {{url: "http://127.0.0.1:{port}/outlets/{{node_id}}", interval_ms: 100, pointer: /state, off_value: "off"}}
      - kind: token
        timeout_ms: 2000
        url: "http://127.0.0.1:{port}/floor"
  - methods:
      - kind: fence_agent
        timeout_ms: 2000
        agent: {agent}
"#,
        shell = shell.display(),
        agent = agent.display(),
    )
}

/// A fence agent whose device reads `power` for every node, and logs each action it is asked.
fn agent_reading(dir: &ScratchDir, power: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let log = dir.path("agent.log");
    let exit = match power {
        "on" => "exit 0",
        "off" => "exit 2",
        _ => "echo 'Failed: Unable to connect/login to fencing device' >&2; exit 3",
    };
    let script = format!("#!/bin/sh\nsed -n 's/^action=//p' >> '{}'\n{exit}\n", log.display());
    (dir.script(&format!("fence_{power}"), &script).unwrap(), log)
}

fn readiness(report: &referee_fencing::CheckReport, kind: MethodKind) -> &Readiness {
    &report.checks.iter().find(|c| c.kind == kind).unwrap_or_else(|| panic!("no {kind} check: {report:#?}")).readiness
}

#[tokio::test]
async fn every_method_is_checked_and_nothing_is_fenced() {
    let dir = ScratchDir::new("check-ready").unwrap();
    let (port, calls) = endpoints("on").await;
    let shell = dir.script("fence-db", "#!/bin/sh\necho fenced > /dev/null\n").unwrap();
    let (agent, agent_log) = agent_reading(&dir, "on");
    let f = fencer(&chain(port, &shell, &agent));

    let report = f.check(&target("db2", "127.0.0.1", port)).await;
    assert!(!report.has_problem(), "{report:#?}");
    assert_eq!(report.checks.len(), 5, "{report:#?}");
    let Readiness::Ready { detail } = readiness(&report, MethodKind::Graceful) else { panic!("{report:#?}") };
    assert!(detail.contains("Active with token 7"), "{detail}");
    let Readiness::Ready { detail } = readiness(&report, MethodKind::Http) else { panic!("{report:#?}") };
    assert!(detail.contains("/state is \"on\""), "{detail}");
    assert!(matches!(readiness(&report, MethodKind::Shell), Readiness::Ready { .. }), "{report:#?}");
    assert!(matches!(readiness(&report, MethodKind::Token), Readiness::Unchecked { .. }), "{report:#?}");
    let Readiness::Ready { detail } = readiness(&report, MethodKind::FenceAgent) else { panic!("{report:#?}") };
    assert!(detail.contains("power on"), "{detail}");

    // Nothing was fenced: no POST anywhere, the agent asked only for the status.
    let calls = calls.lock().unwrap().clone();
    assert!(calls.iter().all(|c| !c.starts_with("POST")), "{calls:?}");
    assert!(calls.contains(&"GET /ha/state".to_string()) && calls.contains(&"GET outlet".to_string()), "{calls:?}");
    assert_eq!(std::fs::read_to_string(&agent_log).unwrap(), "status\n");
}

#[tokio::test]
async fn what_would_fail_is_named_method_by_method() {
    let dir = ScratchDir::new("check-problems").unwrap();
    // The outlet already reads off, the master's port is closed, the program is not executable,
    // and the fence device refuses the login.
    let (port, _) = endpoints("off").await;
    let shell = dir.path("fence-db");
    std::fs::write(&shell, "#!/bin/sh\n").unwrap();
    let (agent, _) = agent_reading(&dir, "refused");
    let f = fencer(&chain(port, &shell, &agent));

    let report = f.check(&target("db2", "127.0.0.1", closed_port())).await;
    assert!(report.has_problem());
    let problem = |kind| match readiness(&report, kind) {
        Readiness::Problem { reason } => reason.clone(),
        other => panic!("{kind}: {other:?} in {report:#?}"),
    };
    assert!(problem(MethodKind::Graceful).contains("cannot connect"), "{}", problem(MethodKind::Graceful));
    assert!(problem(MethodKind::Shell).contains("not an executable file"), "{}", problem(MethodKind::Shell));
    assert!(problem(MethodKind::Http).contains("already \"off\""), "{}", problem(MethodKind::Http));
    let refused = problem(MethodKind::FenceAgent);
    assert!(refused.contains("exited 3 (login refused): Failed: Unable to connect"), "{refused}");

    // A device that reads the running node off points at the wrong plug.
    let (agent, _) = agent_reading(&dir, "off");
    let (port, _) = endpoints("on").await;
    let report = fencer(&chain(port, &dir.script("ok", "#!/bin/sh\n").unwrap(), &agent))
        .check(&target("db2", "127.0.0.1", port))
        .await;
    let Readiness::Problem { reason } = readiness(&report, MethodKind::FenceAgent) else { panic!("{report:#?}") };
    assert!(reason.contains("reads the power OFF"), "{reason}");
}
