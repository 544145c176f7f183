//! `master-command` against a real demo master: each action's exit code and output follow the
//! command adapter's contract.

use std::time::Duration;

use referee_examples::ha_command::{run, Action};
use referee_examples::ha_master::{self, HaMasterConfig};
use referee_fencing::{FencingToken, HaState, HaStatus};
use referee_testkit::ScratchDir;
use tokio::sync::oneshot;

const LIMIT: Duration = Duration::from_secs(5);

fn status(out: &str) -> HaStatus {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not a status ({e}): {out:?}"))
}

#[tokio::test]
async fn every_action_follows_the_command_adapter_contract() -> anyhow::Result<()> {
    let dir = ScratchDir::new("ha-command")?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let master = tokio::spawn(ha_master::run(HaMasterConfig::new(dir.path("state.json")), listener, async move {
        let _ = stopped.await;
    }));

    let health = run(&url, Action::Health, Err("unused".into()), LIMIT).await;
    assert_eq!((health.code, health.stdout.as_str()), (0, ""), "{health:?}");
    let state = run(&url, Action::State, Err("unused".into()), LIMIT).await;
    assert_eq!(state.code, 0, "{state:?}");
    assert_eq!(status(&state.stdout), HaStatus { state: HaState::Standby, token: FencingToken(0) });

    let promoted = run(&url, Action::Promote, Ok(FencingToken(7)), LIMIT).await;
    assert_eq!(promoted.code, 0, "{promoted:?}");
    assert_eq!(status(&promoted.stdout), HaStatus { state: HaState::Active, token: FencingToken(7) });
    // A lower token is refused by the master: exit 1 with its reason on stderr.
    let stale = run(&url, Action::Promote, Ok(FencingToken(6)), LIMIT).await;
    assert_eq!(stale.code, 1, "{stale:?}");
    assert!(stale.stderr.contains("409"), "{stale:?}");
    // Promote and demote need the token; the invocation is wrong without it.
    let no_token = run(&url, Action::Demote, Err("FENCE_TOKEN is not set".into()), LIMIT).await;
    assert_eq!((no_token.code, no_token.stderr.as_str()), (2, "FENCE_TOKEN is not set"));
    let demoted = run(&url, Action::Demote, Ok(FencingToken(9)), LIMIT).await;
    assert_eq!(demoted.code, 0, "{demoted:?}");
    assert_eq!(status(&demoted.stdout), HaStatus { state: HaState::Standby, token: FencingToken(9) });

    let _ = stop.send(());
    master.await??;
    // Nothing listens any more: no answer is exit 3, whatever the action.
    for action in [Action::Health, Action::State, Action::Promote] {
        let gone = run(&url, action, Ok(FencingToken(10)), LIMIT).await;
        assert_eq!(gone.code, 3, "{action}: {gone:?}");
        assert!(gone.stderr.contains("did not answer"), "{gone:?}");
    }
    Ok(())
}

/// A master (or a wrapper around one) that steps down but keeps an older token could still
/// take a delayed promotion carrying it: `demote` does not report that as done.
#[tokio::test]
async fn demote_fails_when_the_master_keeps_an_older_token() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    // Answers every request with standby at token 3, whatever token it was sent.
    let master = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { return };
            let mut request = vec![0u8; 4096];
            let _ = conn.read(&mut request).await;
            let body = r#"{"state":"standby","token":3,"position":42}"#;
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
        }
    });

    let kept = run(&url, Action::Demote, Ok(FencingToken(3)), LIMIT).await;
    assert_eq!(kept.code, 0, "standby holding the token sent: {kept:?}");
    let older = run(&url, Action::Demote, Ok(FencingToken(9)), LIMIT).await;
    assert_eq!(older.code, 1, "standby still at token 3 after a demote with 9: {older:?}");
    assert!(older.stderr.contains("not standby holding the new token"), "{older:?}");
    assert_eq!(status(&older.stdout), HaStatus { state: HaState::Standby, token: FencingToken(3) });
    // The master's replication position is passed on: the lag gate and the ranking need it.
    let state = run(&url, Action::State, Err("unused".into()), LIMIT).await;
    let printed: serde_json::Value = serde_json::from_str(state.stdout.trim())?;
    assert_eq!(printed["position"], 42, "{state:?}");
    master.abort();
    Ok(())
}

/// The OCF resource agent's `monitor` of a master that is active but failing its health check
/// answers OCF_FAILED_PROMOTED (9), which Pacemaker and the OCF adapter read as "promoted, and
/// failed": it may still be serving. An unhealthy standby is a plain error (1). The agent's
/// `referee` program is a stub here that answers as `master-command` would.
#[test]
fn the_ocf_agent_reports_a_failing_active_master_as_failed_promoted() {
    let dir = ScratchDir::new("ocf-monitor").unwrap();
    let agent = concat!(env!("CARGO_MANIFEST_DIR"), "/ocf/referee-demo-master");
    let monitor = |state: &str| {
        let stub = dir.path(&format!("referee-{state}"));
        let script = format!(
            "#!/bin/sh\ncase \"$2\" in\n  state) echo '{{\"state\":\"{state}\",\"token\":5}}' ;;\n  health) echo 'disk full' >&2; exit 1 ;;\nesac\n"
        );
        std::fs::write(&stub, script).unwrap();
        std::fs::set_permissions(&stub, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let out = std::process::Command::new(agent)
            .arg("monitor")
            .env("OCF_RESKEY_url", "http://127.0.0.1:1")
            .env("OCF_RESKEY_referee", &stub)
            .output()
            .unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stderr) = monitor("active");
    assert_eq!(code, Some(9), "{stderr}");
    assert!(stderr.contains("disk full"), "{stderr}");
    assert_eq!(monitor("standby").0, Some(1));
}
