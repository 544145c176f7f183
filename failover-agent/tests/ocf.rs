//! The OCF adapter against real resource agents: a scripted promotable agent that records how it
//! is run, and Debian's `ocf:pacemaker:Stateful`, Pacemaker's own test agent for promotable
//! resources.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use referee_failover_agent::adapter::{
    build_adapter, AdapterConfig, AdapterContext, AdapterError, HealthProblem, MasterAdapter, NoAnswer, OcfAdapter,
    OcfAdapterConfig,
};
use referee_failover_agent::model::MasterStatus;
use referee_fencing::{FencingToken, HaState};
use referee_testkit::{skip, ScratchDir};
use tokio::time::Instant;

/// A promotable resource: its role in `$OCF_RESKEY_state` (no file: not running); an exit code
/// forced for an action by `$OCF_RESKEY_state.rc.<action>` (with an `ocf-exit-reason:` line);
/// `$OCF_RESKEY_state.hang` makes every action hang, `$OCF_RESKEY_state.sleep.<action>` makes
/// that action take so many seconds. Each run appends to `$OCF_RESKEY_log` the action, the
/// variables the adapter must set, and what `$OCF_RESKEY_token_file` held then; and to
/// `$OCF_RESKEY_log.order` a line as it starts and one as it ends (none when it is killed).
const RECORDER: &str = r#"#!/bin/sh
action=$1
order="$OCF_RESKEY_log.order"
echo "start $action" >> "$order"
trap 'echo "end $action" >> "$order"' EXIT
{
  printf '%s' "$action"
  for v in OCF_ROOT OCF_RA_VERSION_MAJOR OCF_RA_VERSION_MINOR OCF_RESOURCE_INSTANCE OCF_RESOURCE_TYPE \
           OCF_RESOURCE_PROVIDER OCF_RESKEY_CRM_meta_promotable OCF_RESKEY_CRM_meta_promoted_max \
           OCF_RESKEY_CRM_meta_clone_max OCF_RESKEY_CRM_meta_on_node OCF_RESKEY_CRM_meta_notify \
           OCF_RESKEY_CRM_meta_interval OCF_RESKEY_CRM_meta_timeout OCF_CHECK_LEVEL OCF_RESKEY_flavour FENCE_TOKEN \
           REFEREE_NODE_ID; do
    eval "printf ' %s=%s' $v \"\${$v}\""
  done
  printf ' token_file=%s\n' "$(cat "$OCF_RESKEY_token_file" 2>/dev/null)"
} >> "$OCF_RESKEY_log"
if [ -f "$OCF_RESKEY_state.hang" ]; then
  sleep 60
fi
if [ -f "$OCF_RESKEY_state.sleep.$action" ]; then
  sleep "$(cat "$OCF_RESKEY_state.sleep.$action")"
fi
if [ -f "$OCF_RESKEY_state.rc.$action" ]; then
  echo "some noise" >&2
  echo "ocf-exit-reason:forced for $action" >&2
  echo "more noise" >&2
  exit "$(cat "$OCF_RESKEY_state.rc.$action")"
fi
case "$action" in
  monitor)
    [ -f "$OCF_RESKEY_state" ] || exit 7
    [ "$(cat "$OCF_RESKEY_state")" = promoted ] && exit 8
    exit 0 ;;
  promote)
    [ -f "$OCF_RESKEY_state" ] || exit 7
    echo promoted > "$OCF_RESKEY_state" ;;
  demote)
    [ -f "$OCF_RESKEY_state" ] || exit 7
    echo unpromoted > "$OCF_RESKEY_state" ;;
  *) exit 3 ;;
esac
"#;

/// A scratch OCF root holding the recorder as `test:recorder`, and its files.
struct Fixture {
    dir: ScratchDir,
}

impl Fixture {
    fn new() -> Result<Self> {
        let dir = ScratchDir::new("ocf")?;
        std::fs::create_dir_all(dir.path("root/resource.d/test"))?;
        std::fs::create_dir_all(dir.path("lib"))?;
        let source = dir.script("recorder.source", RECORDER)?;
        dir.install(&source, "root/resource.d/test/recorder")?;
        Ok(Fixture { dir })
    }

    fn state(&self) -> PathBuf {
        self.dir.path("resource.state")
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path("lib/resource.token")
    }

    fn config(&self) -> OcfAdapterConfig {
        let mut params = BTreeMap::new();
        params.insert("state".to_string(), self.state().display().to_string());
        params.insert("log".to_string(), self.dir.path("runs.log").display().to_string());
        params.insert("token_file".to_string(), self.token_file().display().to_string());
        params.insert("flavour".to_string(), "vanilla".to_string());
        OcfAdapterConfig {
            agent: "ocf:test:recorder".into(),
            ocf_root: self.dir.path("root"),
            instance: Some("orders-db".into()),
            params,
            meta: BTreeMap::new(),
            token_file: self.token_file(),
            timeout_ms: 10_000,
            check_level: Some(10),
        }
    }

    fn adapter(&self) -> Result<OcfAdapter> {
        let context = AdapterContext { node_id: "db1".into(), nodes: 2, monitor_interval: Duration::from_millis(250) };
        Ok(OcfAdapter::new(&self.config(), &context)?)
    }

    /// Sets the resource's role (`None`: not running).
    fn set(&self, role: Option<&str>) -> Result<()> {
        match role {
            Some(role) => std::fs::write(self.state(), format!("{role}\n"))?,
            None => {
                let _ = std::fs::remove_file(self.state());
            }
        }
        Ok(())
    }

    /// Writes `value` to the resource's control file `resource.state.<name>` (`None`: removes it).
    fn control(&self, name: &str, value: Option<String>) -> Result<()> {
        let path = self.dir.path(&format!("resource.state.{name}"));
        match value {
            Some(value) => std::fs::write(path, value)?,
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
        Ok(())
    }

    /// Forces `action` to exit with `code` (`None`: lifts it).
    fn force(&self, action: &str, code: Option<i32>) -> Result<()> {
        self.control(&format!("rc.{action}"), code.map(|c| c.to_string()))
    }

    /// The recorded runs, one line each.
    fn runs(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path("runs.log")).unwrap_or_default().lines().map(str::to_string).collect()
    }

    /// Makes `action` take `seconds` (`None`: lifts it).
    fn slow(&self, action: &str, seconds: Option<u32>) -> Result<()> {
        self.control(&format!("sleep.{action}"), seconds.map(|s| s.to_string()))
    }

    /// The runs' starts and ends, in order (`start monitor`, `end monitor`, ...).
    fn order(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path("runs.log.order"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits (up to 10 s) until a run of `action` has started `n` times.
    async fn until_started(&self, action: &str, n: usize) -> Result<()> {
        let line = format!("start {action}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.order().iter().filter(|l| **l == line).count() < n {
            ensure!(Instant::now() < deadline, "{action} never started: {:?}", self.order());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

/// Fails if a run started while another was running: between a run's start and its end no
/// other run starts. A run killed has no end: the next run of the same action starts first.
fn one_at_a_time(order: &[String]) -> Result<()> {
    for (i, line) in order.iter().enumerate() {
        let Some(action) = line.strip_prefix("start ") else { continue };
        let (start, end) = (line.clone(), format!("end {action}"));
        let rest = &order[i + 1..];
        let Some(j) = rest.iter().position(|l| *l == end || *l == start) else { continue };
        if rest[j] == start {
            continue; // killed
        }
        if let Some(other) = rest[..j].iter().find(|l| l.starts_with("start ")) {
            anyhow::bail!("`{other}` while {action} ran (line {}): {order:?}", i + 1);
        }
    }
    Ok(())
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn status(state: HaState, token: u64) -> MasterStatus {
    MasterStatus { state, token: FencingToken(token), position: None }
}

#[tokio::test]
async fn monitor_codes_read_as_health_and_state() -> Result<()> {
    let f = Fixture::new()?;
    let adapter = f.adapter()?;
    f.set(Some("unpromoted"))?;
    assert_eq!(adapter.health(soon()).await, Ok(()));
    assert_eq!(adapter.state(soon()).await?, status(HaState::Standby, 0));
    f.set(Some("promoted"))?;
    assert_eq!(adapter.health(soon()).await, Ok(()));
    assert_eq!(adapter.state(soon()).await?, status(HaState::Active, 0));
    // Degraded is still healthy, in its role.
    f.force("monitor", Some(191))?;
    assert_eq!(adapter.health(soon()).await, Ok(()));
    assert_eq!(adapter.state(soon()).await?, status(HaState::Active, 0));
    f.force("monitor", Some(190))?;
    assert_eq!(adapter.health(soon()).await, Ok(()));
    assert_eq!(adapter.state(soon()).await?, status(HaState::Standby, 0));
    // Failed while promoted: unhealthy, and still counted active (it may be serving).
    f.force("monitor", Some(9))?;
    let HealthProblem::Unhealthy { reason } = adapter.health(soon()).await.unwrap_err() else { panic!() };
    assert!(reason.contains("exited with 9 (OCF_FAILED_PROMOTED): forced for monitor"), "{reason}");
    assert_eq!(adapter.state(soon()).await?, status(HaState::Active, 0));
    // A generic error: unhealthy, and the state cannot be read.
    f.force("monitor", Some(1))?;
    let HealthProblem::Unhealthy { reason } = adapter.health(soon()).await.unwrap_err() else { panic!() };
    assert!(reason.contains("exited with 1 (OCF_ERR_GENERIC): forced for monitor"), "{reason}");
    let err = adapter.state(soon()).await.unwrap_err();
    assert!(matches!(err, AdapterError::BadAnswer { ref reason } if reason.contains("OCF_ERR_GENERIC")), "{err:?}");
    // Not running: failed at once, like a refused connection; neither active nor promotable.
    f.force("monitor", None)?;
    f.set(None)?;
    let problem = adapter.health(soon()).await.unwrap_err();
    assert!(
        matches!(problem, HealthProblem::NotResponding { how: NoAnswer::Refused, ref reason } if reason.contains("not running")),
        "{problem:?}"
    );
    assert_eq!(adapter.state(soon()).await?, status(HaState::Initializing, 0));

    // Every monitor ran as a recurring monitor with the clone's meta attributes and the params.
    let runs = f.runs();
    ensure!(runs.len() == 14, "{runs:#?}");
    let root = f.dir.path("root").display().to_string();
    for run in &runs {
        for part in [
            "monitor ",
            &format!("OCF_ROOT={root} "),
            "OCF_RA_VERSION_MAJOR=1 OCF_RA_VERSION_MINOR=1 OCF_RESOURCE_INSTANCE=orders-db OCF_RESOURCE_TYPE=recorder \
             OCF_RESOURCE_PROVIDER=test OCF_RESKEY_CRM_meta_promotable=true OCF_RESKEY_CRM_meta_promoted_max=1 \
             OCF_RESKEY_CRM_meta_clone_max=2 OCF_RESKEY_CRM_meta_on_node=db1 OCF_RESKEY_CRM_meta_notify=false \
             OCF_RESKEY_CRM_meta_interval=250 ",
            "OCF_CHECK_LEVEL=10 OCF_RESKEY_flavour=vanilla FENCE_TOKEN= REFEREE_NODE_ID=db1 ",
        ] {
            ensure!(run.contains(part), "{part:?} missing from {run}");
        }
        let timeout: u64 = run
            .split(' ')
            .find_map(|w| w.strip_prefix("OCF_RESKEY_CRM_meta_timeout="))
            .and_then(|t| t.parse().ok())
            .context("the run's timeout")?;
        ensure!(timeout > 0 && timeout <= 10_000, "{run}");
    }
    Ok(())
}

#[tokio::test]
async fn validate_all_passes_or_names_what_is_wrong() -> Result<()> {
    let f = Fixture::new()?;
    let adapter = f.adapter()?;
    // The recorder has no validate-all (it exits 3): nothing to hold against it.
    adapter.validate(soon()).await.map_err(anyhow::Error::msg)?;
    f.force("validate-all", Some(6))?;
    let e = adapter.validate(soon()).await.unwrap_err();
    assert!(e.ends_with("validate-all` exited with 6 (OCF_ERR_CONFIGURED): forced for validate-all"), "{e}");
    f.force("validate-all", Some(0))?;
    adapter.validate(soon()).await.map_err(anyhow::Error::msg)?;
    Ok(())
}

#[tokio::test]
async fn health_and_state_asked_together_share_one_monitor_run() -> Result<()> {
    let f = Fixture::new()?;
    let adapter = f.adapter()?;
    f.set(Some("unpromoted"))?;
    let monitors = || f.runs().iter().filter(|r| r.starts_with("monitor ")).count();
    // As the health monitor asks: both at once, one run.
    let (health, state) = tokio::join!(adapter.health(soon()), adapter.state(soon()));
    assert_eq!((health, state?), (Ok(()), status(HaState::Standby, 0)));
    assert_eq!(monitors(), 1);
    // Between runs, a run of its own.
    assert_eq!(adapter.state(soon()).await?, status(HaState::Standby, 0));
    assert_eq!(monitors(), 2);
    // A promotion is confirmed by a run that starts after it, never by one in flight (the one
    // in flight is stopped, whether or not its process had started).
    let (health, promoted) = tokio::join!(adapter.health(soon()), adapter.promote(FencingToken(2), soon()));
    assert_eq!(promoted?, status(HaState::Active, 2));
    assert_eq!(health, Ok(()));
    let order = f.order();
    let promoted_at = order.iter().position(|l| l == "end promote").context("the promote ended")?;
    assert_eq!(order[promoted_at + 1..], ["start monitor".to_string(), "end monitor".to_string()], "{order:?}");
    one_at_a_time(&order)
}

/// One operation of the resource at a time, as Pacemaker's executor runs them, without a role
/// change ever waiting behind a monitor: a promote stops the monitor running (its process
/// killed), and its health check is answered by a run after the promote; a health check asked
/// during a demote waits for it. Seen from the runs the resource agent itself recorded.
#[tokio::test]
async fn a_role_change_stops_the_monitor_running_and_none_starts_during_one() -> Result<()> {
    let f = Fixture::new()?;
    let adapter = std::sync::Arc::new(f.adapter()?);
    f.set(Some("unpromoted"))?;
    // A monitor that takes its time (a slow query), caught running.
    f.slow("monitor", Some(30))?;
    let checking = adapter.clone();
    let health = tokio::spawn(async move { checking.health(soon()).await });
    f.until_started("monitor", 1).await?;
    f.slow("monitor", None)?;
    assert_eq!(adapter.promote(FencingToken(3), soon()).await?, status(HaState::Active, 3));
    assert_eq!(health.await?, Ok(()));
    let order = f.order();
    assert_eq!(order[..2], ["start monitor".to_string(), "start promote".to_string()], "stopped: {order:?}");
    one_at_a_time(&order)?;

    // A health check asked while a demote runs starts its monitor after the demote.
    f.slow("demote", Some(1))?;
    let demoting = adapter.clone();
    let demote = tokio::spawn(async move { demoting.demote(FencingToken(4), soon()).await });
    f.until_started("demote", 1).await?;
    assert_eq!(adapter.health(soon()).await, Ok(()));
    assert_eq!(demote.await??, status(HaState::Standby, 4));
    let order = f.order();
    let demoted_at = order.iter().position(|l| l == "end demote").context("the demote ended")?;
    let started = order.iter().position(|l| l == "start demote").context("the demote started")?;
    ensure!(!order[started..demoted_at].iter().any(|l| l.starts_with("start monitor")), "{order:?}");
    one_at_a_time(&order)
}

#[tokio::test]
async fn the_token_is_durable_before_the_agent_acts_and_never_goes_back() -> Result<()> {
    let f = Fixture::new()?;
    let adapter = f.adapter()?;
    f.set(Some("unpromoted"))?;
    assert_eq!(adapter.promote(FencingToken(7), soon()).await?, status(HaState::Active, 7));
    assert_eq!(adapter.demote(FencingToken(8), soon()).await?, status(HaState::Standby, 8));
    let runs = f.runs();
    let promote = runs.iter().find(|r| r.starts_with("promote ")).context("promote ran")?;
    // The token was on disk when the agent ran, and the agent was told it; a promotion is no
    // monitor.
    ensure!(promote.contains("FENCE_TOKEN=7 ") && promote.ends_with("token_file=7"), "{promote}");
    ensure!(promote.contains("OCF_RESKEY_CRM_meta_interval=0 ") && promote.contains(" OCF_CHECK_LEVEL= "), "{promote}");
    let demote = runs.iter().find(|r| r.starts_with("demote ")).context("demote ran")?;
    ensure!(demote.contains("FENCE_TOKEN=8 ") && demote.ends_with("token_file=8"), "{demote}");
    assert_eq!(std::fs::read_to_string(f.token_file())?, "8\n");

    // A lower token is refused without running the agent.
    let before = f.runs().len();
    let err = adapter.promote(FencingToken(5), soon()).await.unwrap_err();
    assert!(matches!(err, AdapterError::Rejected { ref reason } if reason.contains("token 8, above 5")), "{err:?}");
    assert_eq!(f.runs().len(), before);
    // A restarted agent reads it back.
    drop(adapter);
    let adapter = f.adapter()?;
    assert_eq!(adapter.state(soon()).await?, status(HaState::Standby, 8));

    // The token cannot be recorded (its directory is gone): no promotion, but a demotion still
    // steps the resource down, reporting the token it does hold.
    f.set(Some("promoted"))?;
    std::fs::remove_dir_all(f.dir.path("lib"))?;
    let err = adapter.promote(FencingToken(9), soon()).await.unwrap_err();
    assert!(
        matches!(err, AdapterError::CannotRun { ref reason } if reason.contains("cannot record token 9")),
        "{err:?}"
    );
    assert!(!f.runs().iter().any(|r| r.contains("FENCE_TOKEN=9 ") && r.starts_with("promote ")), "promote ran");
    assert_eq!(adapter.demote(FencingToken(10), soon()).await?, status(HaState::Standby, 8));
    assert_eq!(std::fs::read_to_string(f.state())?.trim(), "unpromoted");
    Ok(())
}

/// The token file's write hangs (its temporary file is a FIFO nobody reads, as a write to a
/// hung disk never returns): a demotion still steps the resource down well inside its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demotion_does_not_wait_on_a_hung_token_write() -> Result<()> {
    let f = Fixture::new()?;
    let adapter = f.adapter()?;
    f.set(Some("unpromoted"))?;
    assert_eq!(adapter.promote(FencingToken(4), soon()).await?, status(HaState::Active, 4));
    let fifo = f.dir.path("lib/resource.token.tmp");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status()?;
    ensure!(made.success(), "mkfifo {}", fifo.display());
    // Its deadline bounds the agent's run too, so an answer at all means one before it; a
    // demotion stuck on the token file would never answer (cut here, a second after it).
    let deadline = Instant::now() + Duration::from_secs(4);
    let demoted =
        tokio::time::timeout_at(deadline + Duration::from_secs(1), adapter.demote(FencingToken(5), deadline)).await;
    // Let the hung write go (it opened the FIFO to write; a reader releases it).
    let _ = std::fs::read(&fifo);
    let demoted = demoted.map_err(|_| anyhow::anyhow!("the demotion waited on the token file past its deadline"))?;
    assert_eq!(demoted?, status(HaState::Standby, 4));
    assert_eq!(std::fs::read_to_string(f.state())?.trim(), "unpromoted");
    Ok(())
}

/// The token file's write hangs as a promotion begins: the promotion ends by its deadline,
/// refused without running the agent (the token it would carry is not on disk), instead of
/// holding the agent's decision loop for as long as the disk hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promotion_does_not_wait_past_its_deadline_on_a_hung_token_write() -> Result<()> {
    let f = Fixture::new()?;
    let adapter = f.adapter()?;
    f.set(Some("unpromoted"))?;
    let fifo = f.dir.path("lib/resource.token.tmp");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status()?;
    ensure!(made.success(), "mkfifo {}", fifo.display());
    let deadline = Instant::now() + Duration::from_secs(2);
    let promoted =
        tokio::time::timeout_at(deadline + Duration::from_secs(1), adapter.promote(FencingToken(5), deadline)).await;
    // Let the hung write go (it opened the FIFO to write; a reader releases it).
    let _ = std::fs::read(&fifo);
    let promoted = promoted.map_err(|_| anyhow::anyhow!("the promotion waited on the token file past its deadline"))?;
    let err = promoted.unwrap_err();
    assert!(
        matches!(err, AdapterError::CannotRun { ref reason } if reason.contains("token 5") && reason.contains("not promoted")),
        "{err:?}"
    );
    assert!(!f.runs().iter().any(|r| r.starts_with("promote ")), "promote ran: {:?}", f.runs());
    assert_eq!(std::fs::read_to_string(f.state())?.trim(), "unpromoted");
    Ok(())
}

#[tokio::test]
async fn failures_say_whether_the_resource_may_have_acted() -> Result<()> {
    let f = Fixture::new()?;
    let adapter = f.adapter()?;
    f.set(Some("unpromoted"))?;
    // A generic failure may have come after the agent acted: outcome unknown.
    f.force("promote", Some(1))?;
    let err = adapter.promote(FencingToken(3), soon()).await.unwrap_err();
    assert!(err.outcome_unknown(), "{err:?}");
    assert!(err.to_string().contains("promote` exited with 1 (OCF_ERR_GENERIC): forced for promote"), "{err}");
    // Not configured: it could not act.
    f.force("promote", Some(6))?;
    let err = adapter.promote(FencingToken(3), soon()).await.unwrap_err();
    assert!(matches!(err, AdapterError::Rejected { ref reason } if reason.contains("OCF_ERR_CONFIGURED")), "{err:?}");
    // The agent says done but the monitor disagrees: unconfirmed.
    f.force("promote", Some(0))?;
    let err = adapter.promote(FencingToken(3), soon()).await.unwrap_err();
    assert_eq!(
        err,
        AdapterError::Unconfirmed { reported: status(HaState::Standby, 3), wanted: "active with token 3".into() }
    );
    // A stopped resource is as demoted as it gets.
    f.set(None)?;
    assert_eq!(adapter.demote(FencingToken(4), soon()).await?, status(HaState::Standby, 4));
    // A hung agent is killed at the caller's deadline.
    f.set(Some("unpromoted"))?;
    std::fs::write(f.dir.path("resource.state.hang"), "")?;
    let problem = adapter.health(Instant::now() + Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(problem, HealthProblem::NotResponding { how: NoAnswer::TimedOut, .. }), "{problem:?}");
    let err = adapter.demote(FencingToken(4), Instant::now() + Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err, AdapterError::NotResponding { how: NoAnswer::TimedOut, .. }), "{err:?}");
    Ok(())
}

#[tokio::test]
async fn bad_settings_and_a_damaged_token_file_are_refused_by_name() -> Result<()> {
    let f = Fixture::new()?;
    let context = AdapterContext::node("db1");
    std::fs::write(f.token_file(), "twelve\n")?;
    let err = OcfAdapter::new(&f.config(), &context).unwrap_err();
    assert_eq!(err.field, "token_file");
    assert!(err.reason.contains("holds \"twelve\", not a token"), "{err}");
    let elsewhere = OcfAdapterConfig { token_file: f.dir.path("missing/t.token"), ..f.config() };
    let err = OcfAdapter::new(&elsewhere, &context).unwrap_err();
    assert!(err.field == "token_file" && err.reason.contains("does not exist"), "{err}");
    let absent = OcfAdapterConfig { agent: "ocf:test:absent".into(), ..f.config() };
    let err = OcfAdapter::new(&absent, &context).unwrap_err();
    assert!(err.field == "agent" && err.reason.contains("install the resource agent"), "{err}");
    let not_a_program = OcfAdapterConfig { agent: f.token_file().display().to_string(), ..f.config() };
    std::fs::write(f.token_file(), "3\n")?;
    let err = OcfAdapter::new(&not_a_program, &context).unwrap_err();
    assert!(err.field == "agent" && err.reason.contains("is not an executable file"), "{err}");
    // As the agent's configuration gives it.
    let yaml = "kind: ocf\nagent: heartbeat:pgsql\ninstance: orders-db\nparams: {pgdata: /srv/pg}\n\
                token_file: /var/lib/referee/orders-db.token\n";
    let config: AdapterConfig = serde_yaml::from_str(yaml)?;
    assert!(matches!(&config, AdapterConfig::Ocf(c) if c.params["pgdata"] == "/srv/pg" && c.timeout_ms == 20_000));
    let bad: AdapterConfig = serde_yaml::from_str(&yaml.replace("heartbeat:pgsql", "pgsql"))?;
    let err = build_adapter(&bad, &context).err().context("refused")?;
    assert!(err.to_string().starts_with("adapter.agent: \"pgsql\" names no resource agent"), "{err}");
    ensure!(
        serde_yaml::from_str::<AdapterConfig>(&format!("{yaml}paramz: {{}}\n")).is_err(),
        "unknown keys are refused"
    );
    Ok(())
}

/// Debian's `ocf:pacemaker:Stateful` (package `pacemaker-resource-agents`), started as its
/// service manager would start it, then promoted, demoted and stopped under the adapter. It also
/// tries to set a promotion score with Pacemaker's `crm_attribute`, which a host without
/// Pacemaker lacks; it ignores that, and so do we.
#[tokio::test]
async fn debians_stateful_agent_is_promoted_and_demoted() -> Result<()> {
    let agent = PathBuf::from("/usr/lib/ocf/resource.d/pacemaker/Stateful");
    if !agent.exists() {
        skip(
            "debians_stateful_agent_is_promoted_and_demoted",
            "no /usr/lib/ocf/resource.d/pacemaker/Stateful (apt-get install pacemaker-resource-agents)",
        );
        return Ok(());
    }
    let dir = ScratchDir::new("ocf-stateful")?;
    let state = dir.path("stateful.state");
    let mut params = BTreeMap::new();
    params.insert("state".to_string(), state.display().to_string());
    let config = OcfAdapterConfig {
        agent: "ocf:pacemaker:Stateful".into(),
        ocf_root: "/usr/lib/ocf".into(),
        instance: Some("referee-test".into()),
        params,
        meta: BTreeMap::new(),
        token_file: dir.path("stateful.token"),
        timeout_ms: 10_000,
        check_level: None,
    };
    let context = AdapterContext { node_id: "db1".into(), nodes: 2, monitor_interval: Duration::from_secs(1) };
    let adapter = OcfAdapter::new(&config, &context)?;
    let lifecycle = |action: &str| -> Result<()> {
        let out = std::process::Command::new(&agent)
            .arg(action)
            .env("OCF_ROOT", "/usr/lib/ocf")
            .env("OCF_RESOURCE_INSTANCE", "referee-test")
            .env("OCF_RESKEY_state", &state)
            .output()?;
        ensure!(out.status.success(), "Stateful {action}: {out:?}");
        Ok(())
    };

    adapter.validate(soon()).await.map_err(anyhow::Error::msg)?;
    let problem = adapter.health(soon()).await.unwrap_err();
    assert!(matches!(problem, HealthProblem::NotResponding { how: NoAnswer::Refused, .. }), "{problem:?}");
    lifecycle("start")?;
    assert_eq!(adapter.health(soon()).await, Ok(()));
    assert_eq!(adapter.state(soon()).await?, status(HaState::Standby, 0));
    assert_eq!(adapter.promote(FencingToken(3), soon()).await?, status(HaState::Active, 3));
    assert_eq!(std::fs::read_to_string(&state)?.trim(), "Promoted");
    assert_eq!(adapter.health(soon()).await, Ok(()));
    assert_eq!(adapter.demote(FencingToken(4), soon()).await?, status(HaState::Standby, 4));
    assert_eq!(std::fs::read_to_string(&state)?.trim(), "Unpromoted");
    lifecycle("stop")?;
    assert_eq!(adapter.state(soon()).await?, status(HaState::Initializing, 4));
    Ok(())
}
