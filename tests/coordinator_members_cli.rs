//! `referee coordinator members` against three real `referee coordinator` processes (one started
//! with `--init`), each with an admin listener: it lists the members from any server, follows a
//! follower's answer to the leader, adds a fourth server as an observer (which waits, not
//! serving, until it is added, then serves) and removes it, and
//! exits 2 on bad arguments (its own or the server's 400) and 1 when nobody answers.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use referee_coordinator::admin::Members;
use referee_testkit::{free_port, output_within, wait_until, within_for, ScratchDir};

const DEADLINE: Duration = Duration::from_secs(30);

/// A `referee coordinator` child, killed and reaped on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Addrs {
    id: u64,
    client: SocketAddr,
    peer: SocketAddr,
    admin: SocketAddr,
}

fn addrs(id: u64) -> Result<Addrs> {
    let at = |p| SocketAddr::from(([127, 0, 0, 1], p));
    Ok(Addrs { id, client: at(free_port()?), peer: at(free_port()?), admin: at(free_port()?) })
}

fn entry(a: &Addrs, role: &str) -> String {
    format!("  - {{ id: {}, client: {}, peer: {}, admin: {}, role: {role} }}\n", a.id, a.client, a.peer, a.admin)
}

fn start(dir: &ScratchDir, me: &Addrs, servers: &str, init: bool) -> Result<Server> {
    let yaml = format!(
        "data_dir: {}\ncluster_id: 11\nserver_id: {}\nlisten: {}\nadmin_listen: {}\nservers:\n{servers}",
        dir.path(&format!("data{}", me.id)).display(),
        me.id,
        me.client,
        me.admin
    );
    let config = dir.path(&format!("server{}.yaml", me.id));
    std::fs::write(&config, yaml)?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_referee"));
    cmd.args(["coordinator", "--config"]).arg(&config).stdout(Stdio::null()).stderr(Stdio::null());
    if init {
        cmd.arg("--init");
    }
    Ok(Server(cmd.spawn().context("starting referee coordinator")?))
}

/// Runs `referee coordinator members ARGS`, which must exit on its own within [`DEADLINE`]:
/// exit code, stdout, stderr.
async fn members_cli(args: &[&str]) -> Result<(i32, String, String)> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_referee"));
    cmd.args(["coordinator", "members"]).args(args);
    let out = tokio::task::spawn_blocking(move || output_within(&mut cmd, DEADLINE)).await??;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    Ok((out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr)))
}

/// Asks `admin` for the membership until it names a leader that has every server in `ids`
/// caught up (a changing state the servers announce nowhere else), within [`DEADLINE`].
async fn settled(admin: SocketAddr, ids: &[u64]) -> Result<Members> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    within_for(DEADLINE, "the ensemble to settle", async {
        loop {
            let answer = async { http.get(format!("http://{admin}/members")).send().await?.json::<Members>().await };
            if let Ok(m) = answer.await {
                let listed: Vec<u64> = m.members.iter().map(|m| m.id).collect();
                if m.leader.is_some() && !m.changing && listed == ids {
                    return m;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_lists_follows_the_leader_adds_and_removes() -> Result<()> {
    let dir = ScratchDir::new("members-cli")?;
    let a: Vec<Addrs> = (1..=3).map(addrs).collect::<Result<_>>()?;
    let servers: String = a.iter().map(|s| entry(s, "voter")).collect();
    let _running: Vec<Server> =
        a.iter().enumerate().map(|(i, s)| start(&dir, s, &servers, i == 0)).collect::<Result<_>>()?;
    let m = settled(a[0].admin, &[1, 2, 3]).await?;
    let leader = m.leader.context("a leader")?;
    let follower = a.iter().find(|s| s.id != leader).context("a follower")?;
    let f_admin = follower.admin.to_string();
    // The follower answers from what it knows: wait until it has heard from the leader too
    // (server 1 may name it a moment before the follower does).
    let seen = settled(follower.admin, &[1, 2, 3]).await?;
    assert_eq!(seen.leader, Some(leader), "the follower names another leader");

    let (code, out, err) = members_cli(&["list", "--server", &f_admin]).await?;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("leader: {leader}")), "{out}");
    for s in &a {
        assert!(out.contains(&s.peer.to_string()) && out.contains(&s.admin.to_string()), "{out}");
    }

    // A fourth server, started knowing the ensemble, added through a follower: the request
    // goes on to the leader.
    let four = addrs(4)?;
    let with_four = format!("{servers}{}", entry(&four, "observer"));
    let _fourth = start(&dir, &four, &with_four, false)?;
    // Until it is added its log holds no membership, so it has no leader to find: it waits,
    // running, and answers as a ZooKeeper server that is not serving.
    let srvr_of_four = || referee_testkit::four_letter(four.client.port(), "srvr");
    wait_until(DEADLINE, "server 4 to answer srvr", || srvr_of_four().is_ok()).await?;
    assert_eq!(srvr_of_four()?, referee_coordinator::fourlw::NOT_SERVING, "server 4 before it is added");
    let (client, peer, admin) = (four.client.to_string(), four.peer.to_string(), four.admin.to_string());
    let add = ["add", "--server", &f_admin, "--id", "4", "--client", &client, "--peer", &peer, "--admin", &admin];
    let (code, out, err) = members_cli(&add).await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("does not lead; asking the leader"), "{err}");
    assert!(out.contains("server 4 added as an observer"), "{out}");
    assert!(out.lines().any(|l| l.starts_with("4 ") && l.contains("observer")), "{out}");
    // Added, it finds the leader and serves as an observer.
    wait_until(DEADLINE, "server 4 to serve as an observer", || {
        srvr_of_four().is_ok_and(|s| s.contains("\nMode: observer\n"))
    })
    .await?;

    // Refusals: the server's 400 (via the leader) and the CLI's own bad arguments exit 2.
    let (code, _, err) = members_cli(&[&add[..3], &["--id", "0"][..], &add[5..]].concat()).await?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`id` is 0"), "{err}");
    let (code, _, err) =
        members_cli(&["remove", "--server", &a[(leader - 1) as usize].admin.to_string(), "--id", "9"]).await?;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a member"), "{err}");
    let (code, _, err) = members_cli(&["add", "--server", &f_admin, "--id", "5", "--client", "nowhere"]).await?;
    assert_eq!(code, 2, "{err}");

    let (code, out, err) = members_cli(&["remove", "--server", &f_admin, "--id", "4"]).await?;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("server 4 removed") && !out.lines().any(|l| l.starts_with("4 ")), "{out}");

    // Nobody at the address: exit 1, saying where it asked.
    let nobody = SocketAddr::from(([127, 0, 0, 1], free_port()?)).to_string();
    let (code, _, err) = members_cli(&["list", "--server", &nobody, "--timeout-ms", "2000"]).await?;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&nobody) && err.contains("admin_listen"), "{err}");
    Ok(())
}
