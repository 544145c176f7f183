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

/// A check gives way to a fence: a slow device's status question in flight is abandoned (its
/// process killed) the moment a fence begins, the fence runs at once, and a caller can tell the
/// round overlapped it.
#[tokio::test]
async fn a_check_in_flight_gives_way_to_a_fence() {
    let dir = ScratchDir::new("check-gives-way").unwrap();
    let (state, pidfile) = (dir.path("power"), dir.path("status.pid"));
    std::fs::write(&state, "on").unwrap();
    // The device answers status slowly while the power is on; off is quick.
    let agent = dir
        .script(
            "fence_slow",
            &format!(
                "#!/bin/sh\nstate='{}'\ncase \"$(sed -n 's/^action=//p')\" in\n  off) echo off > \"$state\" ;;\n  status) [ \"$(cat \"$state\")\" = off ] && exit 2\n    echo $$ > '{}'; sleep 30; exit 0 ;;\n  *) exit 2 ;;\nesac\n",
                state.display(),
                pidfile.display()
            ),
        )
        .unwrap();
    let yaml = format!(
        "overall_timeout_ms: 25000\nlevels:\n  - methods:\n      - kind: fence_agent\n        timeout_ms: 20000\n        agent: {}\n",
        agent.display()
    );
    let f = std::sync::Arc::new(fencer(&yaml));
    let t = target("db2", "h2", 8020);
    let begun = f.acts_begun();
    let check = tokio::spawn({
        let (f, t) = (f.clone(), t.clone());
        async move { f.check(&t).await }
    });
    referee_testkit::wait_until(std::time::Duration::from_secs(10), "the slow status to start", || {
        std::fs::read_to_string(&pidfile).is_ok_and(|p| !p.trim().is_empty())
    })
    .await
    .unwrap();
    let status_pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();

    let started = std::time::Instant::now();
    let report = f.fence(&t, FencingToken(9)).await;
    assert!(report.outcome.permits_promotion(), "{report:#?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "the fence waited: {:?}", started.elapsed());
    let checked = tokio::time::timeout(std::time::Duration::from_secs(5), check).await.unwrap().unwrap();
    let Readiness::Unchecked { why } = &checked.checks[0].readiness else { panic!("{checked:#?}") };
    assert!(why.contains("a fence or unfence is running"), "{why}");
    assert_eq!(f.acts_begun(), begun + 1);
    // The abandoned status question is gone, its process group killed.
    referee_testkit::wait_until(std::time::Duration::from_secs(5), "the abandoned status process to end", || {
        !std::path::Path::new(&format!("/proc/{status_pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{status_pid}/stat")).is_ok_and(|s| s.contains(") Z "))
    })
    .await
    .unwrap();
}
