//! `referee coordinator ensemble up|status|down` as a user runs it: three servers come up with
//! one leader, a write through one server is read through another, `up` again changes nothing,
//! `status` with one server killed says the ensemble serves, degraded, and exits 0,
//! `down` stops every process, `up` on the same directory rejoins with the data, `down --purge`
//! removes it; bad arguments exit 2 naming the problem, taken ports exit 1 naming the port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use referee_testkit::{free_port, output_within, within_for, ScratchDir};
use zookeeper_client as zk;

const DEADLINE: Duration = Duration::from_secs(30);

/// Runs `referee ARGS`, which must exit on its own within [`DEADLINE`] (`up` included: it
/// returns once the servers it started serve).
fn referee(args: &[&str]) -> Result<Output> {
    output_within(Command::new(env!("CARGO_BIN_EXE_referee")).args(args), DEADLINE)
}

fn ensemble(action: &str, dir: &Path, extra: &[&str]) -> Result<(Option<i32>, String, String)> {
    let dir = dir.to_str().context("a UTF-8 scratch path")?;
    let mut args = vec!["coordinator", "ensemble", action, "--dir", dir];
    args.extend_from_slice(extra);
    let out = referee(&args)?;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((out.status.code(), text(&out.stdout), text(&out.stderr)))
}

/// The pids named by the pidfiles of `dir`.
fn pids(dir: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".pid"))
                .filter_map(|e| std::fs::read_to_string(e.path()).ok()?.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    pids
}

/// Whether `pid` is a live process (not gone, not a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// Stops whatever the test started in `dir`, even when it fails half-way: `down`, then
/// SIGKILL to any pid still named.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.0.join("ensemble.yaml").exists() {
            let _ = ensemble("down", &self.0, &[]);
        }
        for pid in pids(&self.0) {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// The table rows of `status`/`up` output: (id, mode) per server.
fn modes(stdout: &str) -> Vec<(u64, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let id = words.next()?.parse().ok()?;
            let rest: Vec<&str> = words.collect();
            let mode = ["leader", "follower", "observer", "standalone"].into_iter().find(|m| rest.contains(m));
            Some((id, mode.unwrap_or("not answering").to_string()))
        })
        .collect()
}

async fn connect(addr: SocketAddr) -> Result<zk::Client> {
    within_for(DEADLINE, &format!("a session on {addr}"), async {
        loop {
            match zk::Client::connector().with_session_timeout(Duration::from_secs(10)).connect(&addr.to_string()).await
            {
                Ok(c) => return c,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await
}

/// Waits until `path` reads `want` through `client` (a server that follows may apply the write
/// a moment after the leader answered it).
async fn read_back(client: &zk::Client, path: &str, want: &[u8]) -> Result<()> {
    within_for(DEADLINE, &format!("{path} to read back"), async {
        loop {
            if let Ok((data, _)) = client.get_data(path).await {
                if data == want {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// `up` with a base port from the kit, moving on to another base while one of its ports is
/// taken by something else on the machine.
fn up_on_free_ports(dir: &Path) -> Result<(u16, String)> {
    let mut last = String::new();
    for _ in 0..5 {
        let base = free_port()?;
        let (code, out, err) = ensemble("up", dir, &["--servers", "3", "--base-port", &base.to_string()])?;
        if code == Some(0) {
            return Ok((base, out));
        }
        ensure!(code == Some(1) && err.contains("is taken"), "up exited {code:?}:\n{out}\n{err}");
        last = err;
    }
    anyhow::bail!("no free base port in five tries: {last}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_status_write_read_rejoin_down_purge() -> Result<()> {
    let scratch = ScratchDir::new("ensemble-cli")?;
    let dir = scratch.path("ens");
    let _cleanup = Cleanup(dir.clone());
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));

    let (base, out) = up_on_free_ports(&dir)?;
    let connect_string = format!("127.0.0.1:{base},127.0.0.1:{},127.0.0.1:{}", base + 1, base + 2);
    ensure!(out.contains(&format!("connect string: {connect_string}\n")), "{out}");
    ensure!(out.contains(&format!("zkCli.sh -server {connect_string}")), "{out}");
    let first_pids = pids(&dir);
    ensure!(first_pids.len() == 3 && first_pids.iter().all(|&p| alive(p)), "three live servers: {first_pids:?}");

    let (code, out, err) = ensemble("status", &dir, &[])?;
    ensure!(code == Some(0), "status exited {code:?}:\n{out}\n{err}");
    let rows = modes(&out);
    ensure!(rows.iter().map(|r| r.0).collect::<Vec<_>>() == vec![1, 2, 3], "{out}");
    let leaders = rows.iter().filter(|r| r.1 == "leader").count();
    let followers = rows.iter().filter(|r| r.1 == "follower").count();
    ensure!((leaders, followers) == (1, 2), "one leader, two followers:\n{out}");

    // A write through server 2, read back through server 3.
    let two = connect(at(base + 1)).await?;
    let acl = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    two.create("/ensemble-cli", b"written through server 2", &acl).await?;
    let three = connect(at(base + 2)).await?;
    read_back(&three, "/ensemble-cli", b"written through server 2").await?;
    drop((two, three));

    // `up` again: nothing started, nothing changed.
    let (code, out, err) = ensemble("up", &dir, &["--servers", "3"])?;
    ensure!(code == Some(0) && out.contains("already running"), "up again exited {code:?}:\n{out}\n{err}");
    ensure!(pids(&dir) == first_pids, "up again kept the same processes");
    // Nor does it change the server count of an existing ensemble.
    let (code, _, err) = ensemble("up", &dir, &["--servers", "5"])?;
    ensure!(code == Some(2) && err.contains("does not change the server count"), "{code:?}: {err}");

    // A server killed behind the tool's back: status names the stale pidfile, and says the
    // ensemble serves, degraded, exiting 0 (two of three voters are a majority; should server 3
    // have led, once the other two have elected one of them); `up` starts that server alone
    // again.
    let pid3: u32 = std::fs::read_to_string(dir.join("server-3.pid"))?.trim().parse()?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid3)?), nix::sys::signal::Signal::SIGKILL)?;
    within_for(DEADLINE, "server 3 to die", async {
        while alive(pid3) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let mut last = None;
    let (code, out) = within_for(DEADLINE, "status to say the ensemble serves without server 3", async {
        loop {
            match ensemble("status", &dir, &[]) {
                Ok((code, out, _)) if out.contains("serving, degraded") => return (code, out),
                seen => last = Some(seen),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .with_context(|| format!("the last status: {last:?}"))?;
    ensure!(code == Some(0), "status of a serving ensemble exited {code:?}:\n{out}");
    ensure!(out.contains(&format!("names pid {pid3}, which is gone")), "{out}");
    ensure!(
        out.lines().any(|l| l.starts_with("serving, degraded: server ") && l.ends_with("; server 3 not answering")),
        "{out}"
    );
    ensure!(out.contains("connect string: "), "{out}");
    let (code, out, err) = ensemble("up", &dir, &["--servers", "3"])?;
    ensure!(code == Some(0) && out.contains("started server 3\n"), "restart exited {code:?}:\n{out}\n{err}");
    let first_pids = pids(&dir);
    ensure!(
        first_pids.len() == 3 && first_pids.iter().all(|&p| alive(p)) && !first_pids.contains(&pid3),
        "{first_pids:?}"
    );

    let (code, out, err) = ensemble("down", &dir, &[])?;
    ensure!(code == Some(0), "down exited {code:?}:\n{out}\n{err}");
    ensure!(out.contains("stopped server 1, 2, 3") && out.contains("data kept in"), "{out}");
    ensure!(first_pids.iter().all(|&p| !alive(p)), "every server stopped: {first_pids:?}");
    ensure!(pids(&dir).is_empty(), "pidfiles removed");
    let (code, out, _) = ensemble("status", &dir, &[])?;
    ensure!(code == Some(1) && modes(&out).iter().all(|r| r.1 == "not answering"), "{out}");
    ensure!(out.contains("not serving: server 1, 2, 3 not answering; no server leads"), "{out}");

    // Up again on the same directory: the servers rejoin from their logs, the znode is there.
    let (code, out, err) = ensemble("up", &dir, &["--servers", "3"])?;
    ensure!(code == Some(0) && out.contains("existing ensemble"), "rejoin exited {code:?}:\n{out}\n{err}");
    let second_pids = pids(&dir);
    ensure!(second_pids.len() == 3 && second_pids.iter().all(|&p| alive(p)), "{second_pids:?}");
    let one = connect(at(base)).await?;
    read_back(&one, "/ensemble-cli", b"written through server 2").await?;
    drop(one);

    let (code, out, err) = ensemble("down", &dir, &["--purge"])?;
    ensure!(code == Some(0) && out.contains("purged"), "down --purge exited {code:?}:\n{out}\n{err}");
    ensure!(second_pids.iter().all(|&p| !alive(p)), "every server stopped: {second_pids:?}");
    ensure!(!dir.exists(), "{} removed", dir.display());
    Ok(())
}

#[test]
fn bad_arguments_exit_2_and_taken_ports_exit_1_naming_the_problem() -> Result<()> {
    let scratch = ScratchDir::new("ensemble-cli-bad")?;
    let dir = scratch.path("ens");
    let _cleanup = Cleanup(dir.clone());
    for (args, needle) in [
        (&["--servers", "2"][..], "--servers 2: give 1, 3, 5 or 7"),
        (&["--servers", "4"], "majority"),
        (&["--servers", "3", "--observers", "10"], "--observers 10: give 0 to 9"),
        (&["--servers", "3", "--base-port", "80"], "--base-port 80"),
        (&["--observers", "1"], "--servers"),
    ] {
        let (code, _, err) = ensemble("up", &dir, args)?;
        ensure!(code == Some(2) && err.contains(needle), "{args:?} exited {code:?}: {err}");
    }
    ensure!(!dir.join("ensemble.yaml").exists(), "nothing made by refused arguments");

    // A directory holding something else is not taken over, nor asked about.
    let other = scratch.path("other");
    std::fs::create_dir_all(&other)?;
    std::fs::write(other.join("notes.txt"), "mine")?;
    for action in ["up", "status", "down"] {
        let extra: &[&str] = if action == "up" { &["--servers", "1"] } else { &[] };
        let (code, _, err) = ensemble(action, &other, extra)?;
        ensure!(code == Some(2) && err.contains("is not an ensemble directory"), "{action} exited {code:?}: {err}");
    }
    let (code, _, err) = ensemble("status", &scratch.path("missing"), &[])?;
    ensure!(code == Some(2) && err.contains("does not exist"), "{code:?}: {err}");

    // A taken port is named, and nothing is started.
    let taken = std::net::TcpListener::bind(("127.0.0.1", free_port()?))?;
    let port = taken.local_addr()?.port();
    let (code, _, err) = ensemble("up", &dir, &["--servers", "1", "--base-port", &port.to_string()])?;
    ensure!(
        code == Some(1) && err.contains(&format!("port {port} (client port of server 1) is taken")),
        "{code:?}: {err}"
    );
    ensure!(pids(&dir).is_empty(), "no server started");
    Ok(())
}
