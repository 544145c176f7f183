//! The shipped HAProxy configuration (`config/haproxy.cfg`) in front of a pair of journalling
//! demo masters on a three-server bundled ensemble, with Debian's HAProxy: the same file, only
//! its addresses replaced by the lab's.
//!
//! What is checked is what the clients of a load balancer see, and what the masters themselves
//! acknowledge: every write sent through HAProxy's write address, one after the other on one
//! keep-alive client (as an application's connection pool), is recorded with the token its
//! master acknowledged it under. Tokens never go backwards, writes under the new active's token
//! arrive within a deadline of the failure, and every acknowledged write is then read back from
//! the new active's own journal replica. HAProxy's own view (its statistics page) must name the
//! active alone in the write backend and the standby alone in the read backend.
//!
//! - **The active master killed** (kill -9): HAProxy's connection to it fails, the agents fail
//!   over, and HAProxy's check of the new active's `/active` puts it in.
//! - **The active's agent cut off from the coordinator** (its connection black-holed, its
//!   master running and reachable): its `/active` turns 503 while its lease runs out, HAProxy
//!   takes it out and closes the client's kept-alive connection to it (`on-marked-down
//!   shutdown-sessions`), and the client's next write reaches the new active.
//!
//! Without HAProxy installed (Debian's `haproxy`), each test says SKIPPED and passes.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::Signal;
use referee::lab::haproxy::{haproxy_bin, Haproxy, HAPROXY_MISSING};
use referee::lab::{CoordinatorKind, MasterKind, Pair, PairSpec, Timings};
use serde_json::Value;
use tokio::sync::watch;

fn spec(proxied_agents: bool) -> PairSpec {
    PairSpec {
        bin: env!("CARGO_BIN_EXE_referee").into(),
        lean_agent: None,
        coordinator: CoordinatorKind::BundledEnsemble,
        timings: Timings::referee(),
        master: MasterKind::Plain,
        proxied_agents,
        extra_agent_yaml: Vec::new(),
        admin: false,
        journal: true,
    }
}

/// One write acknowledged through HAProxy.
#[derive(Debug, Clone)]
struct Ack {
    key: String,
    token: u64,
    at: Duration,
}

/// What the writer has seen so far.
#[derive(Debug, Default)]
struct Record {
    acks: Vec<Ack>,
    /// Writes refused or failed (each retried with the next key).
    failed: usize,
}

/// Writes `w0`, `w1`, ... through HAProxy's write address one after the other on one keep-alive
/// client until `stop`, recording every acknowledgement in `record`.
async fn write_through(port: u16, started: Instant, record: Arc<Mutex<Record>>, mut stop: watch::Receiver<bool>) {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("an HTTP client");
    let url = format!("http://127.0.0.1:{port}/write");
    for n in 0.. {
        if *stop.borrow() {
            break;
        }
        let key = format!("w{n}");
        let sent = http.post(&url).json(&serde_json::json!({"key": key, "value": format!("v{n}")})).send();
        let answer = tokio::select! {
            a = sent => a,
            _ = stop.changed() => break,
        };
        match answer {
            Ok(r) if r.status().is_success() => match r.json::<Value>().await.ok().and_then(|v| v["token"].as_u64()) {
                Some(token) => record.lock().unwrap().acks.push(Ack { key, token, at: started.elapsed() }),
                None => record.lock().unwrap().failed += 1,
            },
            _ => {
                record.lock().unwrap().failed += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
}

/// Waits until the writer's record satisfies `done`.
async fn until_record(
    record: &Mutex<Record>,
    limit: Duration,
    what: &str,
    done: impl Fn(&Record) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        {
            let r = record.lock().unwrap();
            if done(&r) {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for {what}: {} writes acknowledged through HAProxy, {} failed",
                r.acks.len(),
                r.failed
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn agent_token(pair: &Pair, node: usize) -> Option<u64> {
    pair.agent_json(node, "/status").await?["token"].as_u64()
}

/// The value of `key` in master `node`'s own journal replica, read from it directly.
async fn read_on(pair: &Pair, node: usize, key: &str) -> Option<String> {
    let url = format!("http://127.0.0.1:{}/read?key={key}", pair.ports[node].master);
    let v: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
    v["value"].as_str().map(str::to_string)
}

enum Failure {
    KillMaster,
    BlackHoleAgent,
}

async fn scenario(name: &str, failure: Failure) -> Result<()> {
    let Some(bin) = haproxy_bin() else {
        referee_testkit::skip(name, HAPROXY_MISSING);
        return Ok(());
    };
    let proxied = matches!(failure, Failure::BlackHoleAgent);
    let pair = Arc::new(Pair::start(spec(proxied)).await?);
    let old = pair.wait_for_active(Duration::from_secs(30)).await?;
    let new = 1 - old;
    pair.wait_for_connected_standby(new, Duration::from_secs(15)).await?;
    let old_token = agent_token(&pair, old).await.context("the active's agent names its token")?;
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/haproxy.cfg");
    let lb = Haproxy::start(&bin, &pair, &shipped)?;
    lb.wait_for_view(old, true, Duration::from_secs(10)).await?;

    let started = Instant::now();
    let (stop, stopped) = watch::channel(false);
    let record = Arc::new(Mutex::new(Record::default()));
    let writer = tokio::spawn(write_through(lb.fe.write, started, record.clone(), stopped));
    until_record(&record, Duration::from_secs(10), "writes through HAProxy to the active", |r| {
        r.acks.iter().filter(|a| a.token == old_token).count() >= 20
    })
    .await?;

    let failed_at = started.elapsed();
    match failure {
        Failure::KillMaster => pair.masters[old].signal(Signal::SIGKILL)?,
        Failure::BlackHoleAgent => pair.black_hole_agent(old).await?,
    }
    // The new active promoted, and HAProxy's view follows: the new active alone in the write
    // backend; the read backend has no standby left up (the old master is dead, or demoted
    // under an agent that cannot reach the coordinator and so is not a ready standby).
    pair.wait_for_active_node(new, Duration::from_secs(20)).await?;
    let new_token = agent_token(&pair, new).await.context("the new active's agent names its token")?;
    ensure!(new_token > old_token, "the new active's token {new_token} is not above the old {old_token}");
    lb.wait_for_view(new, false, Duration::from_secs(10)).await?;
    until_record(&record, Duration::from_secs(10), "writes through HAProxy to the new active", |r| {
        r.acks.iter().filter(|a| a.token == new_token).count() >= 20
    })
    .await?;
    let _ = stop.send(true);
    writer.await?;
    let Record { acks, failed } = std::mem::take(&mut *record.lock().unwrap());

    // The masters' acknowledgements: tokens never go backwards, the new token reached.
    ensure!(!acks.is_empty(), "no write was acknowledged through HAProxy");
    for pair_of in acks.windows(2) {
        ensure!(
            pair_of[1].token >= pair_of[0].token,
            "write {} was acknowledged under token {} after write {} under {}",
            pair_of[1].key,
            pair_of[1].token,
            pair_of[0].key,
            pair_of[0].token
        );
    }
    for a in &acks {
        ensure!(a.token == old_token || a.token == new_token, "write {} acknowledged under token {}", a.key, a.token);
    }
    let last_old = acks.iter().filter(|a| a.token == old_token).map(|a| a.at).max();
    let first_new = acks.iter().find(|a| a.token == new_token).with_context(|| {
        format!(
            "no write through HAProxy was acknowledged by the new active ({} acknowledged, {failed} failed)",
            acks.len()
        )
    })?;
    // Every acknowledged write is in the new active's own journal replica.
    let deadline = Instant::now() + Duration::from_secs(10);
    for a in &acks {
        let want = format!("v{}", &a.key[1..]);
        loop {
            match read_on(&pair, new, &a.key).await {
                Some(v) if v == want => break,
                Some(v) => bail!("{} reads {v} on the new active, acknowledged as {want}", a.key),
                None if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(10)).await,
                None => bail!("write {} acknowledged under token {} is not on the new active", a.key, a.token),
            }
        }
    }
    eprintln!(
        "{name}: {} writes acknowledged through HAProxy ({} under the old token, the last {:.0} ms after the start), {failed} refused or failed; failure at {:.0} ms, the first write under the new token at {:.0} ms ({:.0} ms after the failure)",
        acks.len(),
        acks.iter().filter(|a| a.token == old_token).count(),
        last_old.unwrap_or_default().as_secs_f64() * 1e3,
        failed_at.as_secs_f64() * 1e3,
        first_new.at.as_secs_f64() * 1e3,
        (first_new.at.saturating_sub(failed_at)).as_secs_f64() * 1e3,
    );
    if proxied {
        pair.heal_agent(old).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_follows_a_failover_when_the_active_master_is_killed() -> Result<()> {
    scenario("haproxy_follows_a_failover_when_the_active_master_is_killed", Failure::KillMaster).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_cuts_a_kept_alive_connection_to_an_active_cut_off_from_the_coordinator() -> Result<()> {
    scenario("haproxy_cuts_a_kept_alive_connection_to_an_active_cut_off_from_the_coordinator", Failure::BlackHoleAgent)
        .await
}
