//! Apache ZooKeeper's own command-line client (`zkCli.sh` 3.8, Debian's `zookeeper` package)
//! against this server: the commands operators type, with their output checked line by line
//! (values, Stat fields, sequential names, error messages, ACLs, watch events), and the status
//! tooling (`srvr` on a raw socket, `FourLetterWordMain`, `zkServer.sh status`).
//!
//! The zkCli scenarios and the status tools run a second time through a follower of a three-server
//! ensemble started in-process (`common::ensemble`), with the same expectations (the status tools
//! then say `Mode: follower`).
//!
//! Each test drives one zkCli process per session through a pipe: a command is written, then a
//! marker command (`stat` of a node that never exists) whose error line closes that command's
//! output, so every command's lines are known exactly without sleeping. stderr is merged into
//! stdout by the shell, and zkCli runs commands one at a time, so the marker's line always comes
//! after everything the command printed. Watch events, printed by zkCli's event thread whenever
//! they arrive, are set aside.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use base64::Engine;
use common::ensemble::ThreeVoters;
use common::*;
use referee_coordinator::fourlw::format_date;
use referee_testkit::{
    apache_zookeeper_installed, connect, four_letter, skip, wait_until, within_for, ApacheZk, ApacheZkProfile,
    ScratchDir, TestServer, APACHE_ZK_BIN, SUPER_DIGEST,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use zookeeper_client as zk;

/// How long a zkCli process may take to start and connect (a JVM start).
const START: Duration = Duration::from_secs(60);

fn installed(test: &str) -> bool {
    if Path::new(APACHE_ZK_BIN).join("zkCli.sh").exists() && apache_zookeeper_installed() {
        return true;
    }
    skip(test, "Apache ZooKeeper's zkCli.sh (or java) is not installed (CI installs Debian's zookeeper package)");
    false
}

/// One zkCli.sh process connected to a server.
struct ZkCli {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line zkCli printed so far, for failure messages.
    transcript: Vec<String>,
    /// `WatchedEvent ...` lines, in arrival order.
    events: Vec<String>,
    /// Events up to this index have been waited for.
    claimed: usize,
    marker: u32,
    _dir: ScratchDir,
}

impl ZkCli {
    async fn start(addr: SocketAddr) -> Result<ZkCli> {
        let dir = ScratchDir::new("zkcli")?;
        let mut child = Command::new("sh")
            .arg("-c")
            .arg("exec \"$0\" -server \"$1\" 2>&1")
            .arg(Path::new(APACHE_ZK_BIN).join("zkCli.sh"))
            .arg(addr.to_string())
            .env("ZOO_LOG_DIR", &dir.0)
            // Dates as the server's UTC formatter prints them; logging down to errors.
            .env("CLIENT_JVMFLAGS", "-Duser.timezone=UTC -Dzookeeper.root.logger=ERROR,CONSOLE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting zkCli.sh")?;
        let stdin = child.stdin.take().ok_or_else(|| anyhow!("no stdin"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut rd = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = rd.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut cli =
            ZkCli { child, stdin, lines, transcript: Vec::new(), events: Vec::new(), claimed: 0, marker: 0, _dir: dir };
        cli.wait_event("state:SyncConnected type:None path:null", START).await?;
        Ok(cli)
    }

    /// The next line, noise (SLF4J's complaints) skipped; watch events are recorded as they pass.
    async fn next_line(&mut self, limit: Duration) -> Result<String> {
        loop {
            let line = match tokio::time::timeout(limit, self.lines.recv()).await {
                Ok(Some(l)) => l,
                Ok(None) => bail!("zkCli exited; it printed:\n{}", self.transcript.join("\n")),
                Err(_) => bail!("zkCli printed nothing for {limit:?}; so far:\n{}", self.transcript.join("\n")),
            };
            self.transcript.push(line.clone());
            if line.starts_with("SLF4J:") {
                continue;
            }
            if let Some(ev) = line.strip_prefix("WatchedEvent ") {
                self.events.push(ev.to_string());
            }
            return Ok(line);
        }
    }

    /// Waits until a `WatchedEvent <what>` line has been printed after the last event waited for.
    async fn wait_event(&mut self, what: &str, limit: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(i) = self.events[self.claimed..].iter().position(|e| e == what) {
                self.claimed += i + 1;
                return Ok(());
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                bail!("no `WatchedEvent {what}` within {limit:?}; zkCli printed:\n{}", self.transcript.join("\n"));
            }
            self.next_line(left).await?;
        }
    }

    /// Runs one command and returns exactly the lines it printed (watch events set aside).
    async fn run(&mut self, cmd: &str) -> Result<Vec<String>> {
        self.marker += 1;
        let marker = format!("/zkcli-end-of-output-{}", self.marker);
        self.stdin.write_all(format!("{cmd}\nstat {marker}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let end = format!("Node does not exist: {marker}");
        let mut out: Vec<String> = Vec::new();
        loop {
            let line = self.next_line(DEADLINE).await.with_context(|| format!("running `{cmd}`"))?;
            if line == end {
                return Ok(out);
            }
            // zkCli prints each of "\nWATCHER::" and "\n<event>" with one println: the blank
            // line just before either belongs to it.
            if line == "WATCHER::" || line.starts_with("WatchedEvent ") {
                if out.last().is_some_and(String::is_empty) {
                    out.pop();
                }
                continue;
            }
            out.push(line);
        }
    }

    /// Runs a command that must print exactly `expected`.
    async fn expect(&mut self, cmd: &str, expected: &[&str]) -> Result<()> {
        let got = self.run(cmd).await?;
        ensure!(got == expected, "`{cmd}` printed {got:#?}, expected {expected:#?}");
        Ok(())
    }

    async fn quit(mut self) -> Result<()> {
        self.stdin.write_all(b"quit\n").await?;
        self.stdin.flush().await?;
        // Its exit status is that of the last failed command (our markers fail by design).
        within_for(Duration::from_secs(20), "zkCli to quit", self.child.wait()).await??;
        Ok(())
    }
}

/// zkCli's Stat block (`cZxid = 0x..` ... `numChildren = N`), as a server Stat prints.
fn stat_block(s: &zk::Stat) -> Vec<String> {
    vec![
        format!("cZxid = 0x{:x}", s.czxid),
        format!("ctime = {}", format_date(s.ctime)),
        format!("mZxid = 0x{:x}", s.mzxid),
        format!("mtime = {}", format_date(s.mtime)),
        format!("pZxid = 0x{:x}", s.pzxid),
        format!("cversion = {}", s.cversion),
        format!("dataVersion = {}", s.version),
        format!("aclVersion = {}", s.aversion),
        format!("ephemeralOwner = 0x{:x}", s.ephemeral_owner),
        format!("dataLength = {}", s.data_length),
        format!("numChildren = {}", s.num_children),
    ]
}

fn digest_id(user: &str, password: &str) -> String {
    let hash = sha1_smol::Sha1::from(format!("{user}:{password}")).digest().bytes();
    format!("{user}:{}", base64::engine::general_purpose::STANDARD.encode(hash))
}

async fn server() -> Result<TestServer> {
    TestServer::start_with(|c| c.super_digest = Some(SUPER_DIGEST.to_string())).await
}

/// Three voters configured as [`server`] is, for the scenarios to run through a follower.
async fn ensemble() -> Result<ThreeVoters> {
    ThreeVoters::start(|c| c.super_digest = Some(SUPER_DIGEST.to_string())).await
}

/// A reference Apache ZooKeeper server (same super digest), to run the same scenario against, so
/// that every expectation here is known to be Apache's behaviour too.
async fn apache() -> Result<(ApacheZk, SocketAddr)> {
    let zk = tokio::task::spawn_blocking(|| ApacheZk::start(ApacheZkProfile::Reference)).await??;
    let addr = zk.connect_string().parse()?;
    Ok((zk, addr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zkcli_creates_reads_and_writes_nodes() -> Result<()> {
    if !installed("zkcli_creates_reads_and_writes_nodes") {
        return Ok(());
    }
    let server = server().await?;
    let sid = nodes_scenario(server.addr, &[""]).await.context("against this server")?;
    // zkCli's session ended with it.
    wait_until(DEADLINE, "zkCli's session to close", || !server.session_ids().contains(&sid)).await?;
    let (_apache, addr) = apache().await?;
    nodes_scenario(addr, &[""]).await.context("against Apache ZooKeeper")?;
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zkcli_creates_reads_and_writes_nodes_through_a_follower() -> Result<()> {
    if !installed("zkcli_creates_reads_and_writes_nodes_through_a_follower") {
        return Ok(());
    }
    let ensemble = ensemble().await?;
    let follower = ensemble.follower();
    // An ensemble's /zookeeper/config names its members, one line each, then its version.
    let config = String::from_utf8(follower.data("/zookeeper/config").context("/zookeeper/config")?)?;
    let lines: Vec<&str> = config.lines().collect();
    assert_eq!(lines.len(), 4, "three members and the version: {config}");
    let sid = nodes_scenario(follower.client, &lines).await.context("through a follower")?;
    // zkCli's session ended with it, on the follower's tree as on every other.
    wait_until(DEADLINE, "zkCli's session to close", || !follower.session_ids().contains(&sid)).await?;
    ensemble.stop().await
}

/// Returns zkCli's session id (the owner of its ephemeral). `config` is what zkCli's `config`
/// prints: one empty line for a server alone, as Apache ZooKeeper's standalone server.
async fn nodes_scenario(addr: SocketAddr, config: &[&str]) -> Result<i64> {
    let mut cli = ZkCli::start(addr).await?;
    let check = connect(&addr.to_string(), Duration::from_secs(10)).await?;

    cli.expect("create /a hello", &["Created /a"]).await?;
    cli.expect("create -e /a/e ev", &["Created /a/e"]).await?;
    // The sequence number counts the parent's child creates: /a/e was the first.
    cli.expect("create -s /a/s- sv", &["Created /a/s-0000000001"]).await?;
    cli.expect("create -c /c", &["Created /c"]).await?;
    cli.expect("create /a again", &["Node already exists: /a"]).await?;
    cli.expect("create /missing/child", &["Node does not exist: /missing/child"]).await?;
    cli.expect("ls /", &["[a, c, zookeeper]"]).await?;
    cli.expect("ls /zookeeper", &["[config, quota]"]).await?;

    // ls -s: the children, then the parent's Stat.
    let stat = check.check_stat("/a").await?.ok_or_else(|| anyhow!("/a"))?;
    let mut expected = vec!["[e, s-0000000001]".to_string()];
    expected.extend(stat_block(&stat));
    assert_eq!(cli.run("ls -s /a").await?, expected);
    assert!(expected.contains(&"numChildren = 2".to_string()) && expected.contains(&"cversion = 2".to_string()));

    let mut expected = vec!["hello".to_string()];
    expected.extend(stat_block(&stat));
    assert_eq!(cli.run("get -s /a").await?, expected);
    cli.expect("get /a/s-0000000001", &["sv"]).await?;

    // set, then a version that does not match, then stat.
    cli.expect("set /a world", &[]).await?;
    cli.expect("set -v 5 /a x", &["version No is not valid : /a"]).await?;
    cli.expect("set -v 1 /a world2", &[]).await?;
    let stat = check.check_stat("/a").await?.ok_or_else(|| anyhow!("/a"))?;
    let printed = cli.run("stat /a").await?;
    assert_eq!(printed, stat_block(&stat));
    assert!(printed.contains(&"dataVersion = 2".to_string()) && printed.contains(&"dataLength = 6".to_string()));
    cli.expect("get /a", &["world2"]).await?;

    // The ephemeral belongs to zkCli's session (not the checking client's); the container and
    // plain nodes to nobody.
    let sid = check.check_stat("/a/e").await?.ok_or_else(|| anyhow!("/a/e"))?.ephemeral_owner;
    assert!(sid != 0 && sid != check.session_id().0, "ephemeralOwner 0x{sid:x}");
    let printed = cli.run("stat /a/e").await?;
    assert!(printed.contains(&format!("ephemeralOwner = 0x{sid:x}")), "{printed:#?}");
    let printed = cli.run("stat /c").await?;
    assert!(printed.contains(&"ephemeralOwner = 0x0".to_string()), "{printed:#?}");

    cli.expect("getEphemerals", &["[/a/e]"]).await?;
    cli.expect("getEphemerals /c", &["[]"]).await?;
    cli.expect("getAllChildrenNumber /a", &["2"]).await?;
    cli.expect("getAllChildrenNumber /zookeeper", &["2"]).await?;
    cli.expect("sync /a", &["Sync is OK"]).await?;
    cli.expect("whoami", &["Auth scheme: User", "ip: 127.0.0.1"]).await?;
    cli.expect("config", config).await?;

    cli.expect("delete /a", &["Node not empty: /a"]).await?;
    cli.expect("delete -v 7 /a/e", &["version No is not valid : /a/e"]).await?;
    cli.expect("delete /a/e", &[]).await?;
    cli.expect("delete /nonexistent", &["Node does not exist: /nonexistent"]).await?;
    cli.expect("create /a/deep", &["Created /a/deep"]).await?;
    cli.expect("create /a/deep/er", &["Created /a/deep/er"]).await?;
    cli.expect("deleteall /a", &[]).await?;
    cli.expect("ls /", &["[c, zookeeper]"]).await?;
    assert!(check.check_stat("/a").await?.is_none());
    cli.quit().await?;
    Ok(sid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zkcli_acls_auth_and_insufficient_permission() -> Result<()> {
    if !installed("zkcli_acls_auth_and_insufficient_permission") {
        return Ok(());
    }
    let server = server().await?;
    acl_scenario(server.addr).await.context("against this server")?;
    let (_apache, addr) = apache().await?;
    acl_scenario(addr).await.context("against Apache ZooKeeper")?;
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zkcli_acls_auth_and_insufficient_permission_through_a_follower() -> Result<()> {
    if !installed("zkcli_acls_auth_and_insufficient_permission_through_a_follower") {
        return Ok(());
    }
    let ensemble = ensemble().await?;
    acl_scenario(ensemble.follower().client).await.context("through a follower")?;
    ensemble.stop().await
}

async fn acl_scenario(addr: SocketAddr) -> Result<()> {
    let (owner, other) = tokio::try_join!(ZkCli::start(addr), ZkCli::start(addr))?;
    let (mut owner, mut other) = (owner, other);
    let alice = digest_id("alice", "pw");

    owner.expect("addauth digest alice:pw", &[]).await?;
    owner.expect("whoami", &["Auth scheme: User", "ip: 127.0.0.1", "digest: alice"]).await?;
    owner.expect("create /secret s", &["Created /secret"]).await?;
    owner.expect("setAcl /secret auth::cdrwa", &[]).await?;
    owner.expect("getAcl /secret", &[&format!("'digest,'{alice}"), ": cdrwa"]).await?;
    owner.expect(&format!("create /m data digest:{alice}:cdrwa,world:anyone:r"), &["Created /m"]).await?;
    owner.expect("create /w data world:anyone:w", &["Created /w"]).await?;
    owner
        .expect(
            "create /bad data world:nobody:r",
            &["KeeperErrorCode = InvalidACL for /bad", "Acl is not valid : /bad"],
        )
        .await?;

    // The other session has no auth: refused with zkCli's "Insufficient permission".
    for cmd in ["get /secret", "ls /secret", "set /secret x", "getAcl /secret", "setAcl /secret world:anyone:r"] {
        other.expect(cmd, &["Insufficient permission : /secret"]).await?;
    }
    other.expect("create /secret/c", &["Insufficient permission : /secret/c"]).await?;
    owner.expect("create /secret/kid", &["Created /secret/kid"]).await?;
    other.expect("delete /secret/kid", &["Insufficient permission : /secret/kid"]).await?;
    // stat needs no permission.
    let printed = other.run("stat /secret").await?;
    assert!(printed.contains(&"numChildren = 1".to_string()) && printed.contains(&"aclVersion = 1".to_string()));
    // READ without ADMIN: the digest is masked.
    other.expect("getAcl /m", &["'digest,'alice:x", ": cdrwa", "'world,'anyone", ": r"]).await?;
    other.expect("get /m", &["data"]).await?;
    other.expect("set /m x", &["Insufficient permission : /m"]).await?;
    // WRITE without READ.
    other.expect("set /w written", &[]).await?;
    other.expect("get /w", &["Insufficient permission : /w"]).await?;

    // The super digest opens everything.
    other.expect("addauth digest super:test", &[]).await?;
    other.expect("get /secret", &["s"]).await?;
    other.expect("getAcl /secret", &[&format!("'digest,'{alice}"), ": cdrwa"]).await?;
    other.expect("deleteall /secret", &[]).await?;
    owner.expect("ls /", &["[m, w, zookeeper]"]).await?;
    tokio::try_join!(owner.quit(), other.quit())?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zkcli_watches_see_changes_made_by_another_client() -> Result<()> {
    if !installed("zkcli_watches_see_changes_made_by_another_client") {
        return Ok(());
    }
    let server = server().await?;
    watch_scenario(server.addr).await.context("against this server")?;
    let (_apache, addr) = apache().await?;
    watch_scenario(addr).await.context("against Apache ZooKeeper")?;
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zkcli_watches_see_changes_made_by_another_client_through_a_follower() -> Result<()> {
    if !installed("zkcli_watches_see_changes_made_by_another_client_through_a_follower") {
        return Ok(());
    }
    let ensemble = ensemble().await?;
    watch_scenario(ensemble.follower().client).await.context("through a follower")?;
    ensemble.stop().await
}

async fn watch_scenario(addr: SocketAddr) -> Result<()> {
    let mut cli = ZkCli::start(addr).await?;
    let writer = connect(&addr.to_string(), Duration::from_secs(10)).await?;
    writer.create("/w", b"", PERSISTENT).await?;
    writer.create("/x", b"", PERSISTENT).await?;

    // addWatch without -m is persistent recursive.
    cli.expect("addWatch /w", &[]).await?;
    writer.create("/w/child", b"", PERSISTENT).await?;
    cli.wait_event("state:SyncConnected type:NodeCreated path:/w/child", DEADLINE).await?;
    writer.set_data("/w", b"1", None).await?;
    cli.wait_event("state:SyncConnected type:NodeDataChanged path:/w", DEADLINE).await?;
    writer.set_data("/w/child", b"1", None).await?;
    cli.wait_event("state:SyncConnected type:NodeDataChanged path:/w/child", DEADLINE).await?;

    // A one-shot data watch from `get -w`, and a child watch from `ls -w`.
    cli.expect("get -w /x", &[""]).await?;
    cli.expect("ls -w /x", &["[]"]).await?;
    writer.set_data("/x", b"1", None).await?;
    cli.wait_event("state:SyncConnected type:NodeDataChanged path:/x", DEADLINE).await?;
    writer.create("/x/k", b"", PERSISTENT).await?;
    cli.wait_event("state:SyncConnected type:NodeChildrenChanged path:/x", DEADLINE).await?;

    // removewatches: later changes to /w are not told; a fresh watch on /x proves events flow.
    // The Java client tells its own watcher that the watch is gone; it may print that notice
    // after the command's prompt, so wait for it before counting later events.
    cli.expect("removewatches /w", &[]).await?;
    cli.wait_event("state:SyncConnected type:PersistentWatchRemoved path:/w", DEADLINE).await?;
    let before = cli.events.len();
    writer.set_data("/w", b"2", None).await?;
    writer.delete("/w/child", None).await?;
    cli.expect("get -w /x", &["1"]).await?;
    writer.set_data("/x", b"2", None).await?;
    cli.wait_event("state:SyncConnected type:NodeDataChanged path:/x", DEADLINE).await?;
    let after: Vec<&String> = cli.events[before..].iter().collect();
    assert_eq!(after, vec!["state:SyncConnected type:NodeDataChanged path:/x"], "events after removewatches");

    // An exists watch on a missing node (`stat -w`) fires on its creation.
    cli.expect("stat -w /later", &["Node does not exist: /later"]).await?;
    writer.create("/later", b"", PERSISTENT).await?;
    cli.wait_event("state:SyncConnected type:NodeCreated path:/later", DEADLINE).await?;
    cli.quit().await?;
    drop(writer);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tools_see_a_standalone_server() -> Result<()> {
    if !installed("status_tools_see_a_standalone_server") {
        return Ok(());
    }
    let server = server().await?;
    status_scenario(server.addr.port(), "standalone").await?;
    server.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tools_see_a_follower() -> Result<()> {
    if !installed("status_tools_see_a_follower") {
        return Ok(());
    }
    let ensemble = ensemble().await?;
    status_scenario(ensemble.follower().client.port(), "follower").await?;
    ensemble.stop().await
}

/// `srvr`, `FourLetterWordMain` and `zkServer.sh status` against the server on `port`, which
/// must say it is in `mode`.
async fn status_scenario(port: u16, mode: &str) -> Result<()> {
    let mode_line = format!("Mode: {mode}");
    // srvr on a raw socket, as `zkServer.sh status` reads it.
    let ours = four_letter(port, "srvr")?;
    assert!(ours.lines().any(|l| l == mode_line), "{ours}");

    // Apache's FourLetterWordMain, which zkServer.sh runs: the same lines (counters aside).
    let out = Command::new("java")
        .args(["-cp", "/usr/share/java/zookeeper.jar", "org.apache.zookeeper.client.FourLetterWordMain"])
        .args(["127.0.0.1", &port.to_string(), "srvr"])
        .stderr(Stdio::null())
        .output();
    let out = within_for(START, "FourLetterWordMain", out).await??;
    assert!(out.status.success(), "{out:?}");
    let theirs = String::from_utf8(out.stdout)?;
    let shape = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| !l.is_empty())
            .map(|l| match l.split_once(": ") {
                // Counters; Connections too, as the raw socket of the first srvr may still be
                // closing when FourLetterWordMain asks.
                Some((k, v)) if matches!(k, "Received" | "Sent" | "Latency min/avg/max" | "Connections") => {
                    format!("{k}: ?{}", &v[..0])
                }
                // The zxid, in its hex form: a server just started may still be applying the
                // entries of its first term (a follower, the leader's) between the two asks.
                Some(("Zxid", v)) if v.strip_prefix("0x").is_some_and(|h| i64::from_str_radix(h, 16).is_ok()) => {
                    "Zxid: 0x?".to_string()
                }
                _ => l.to_string(),
            })
            .collect()
    };
    assert_eq!(shape(&theirs), shape(&ours), "FourLetterWordMain printed:\n{theirs}");
    assert!(theirs.lines().any(|l| l == mode_line), "{theirs}");

    // zkServer.sh status itself, with a zoo.cfg naming our port.
    let dir = ScratchDir::new("zkserver-status")?;
    let cfg = dir.0.join("zoo.cfg");
    std::fs::write(&cfg, format!("clientPort={port}\nclientPortAddress=127.0.0.1\ndataDir={}\n", dir.0.display()))?;
    let out = Command::new(Path::new(APACHE_ZK_BIN).join("zkServer.sh"))
        .arg("status")
        .arg(&cfg)
        .env("ZOO_LOG_DIR", &dir.0)
        .stdin(Stdio::null())
        .output();
    let out = within_for(START, "zkServer.sh status", out).await??;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "zkServer.sh status failed: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().last(), Some(mode_line.as_str()), "{stdout}");
    Ok(())
}
