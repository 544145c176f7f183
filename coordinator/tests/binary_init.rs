//! The standalone `referee-coordinator` binary runs an ensemble as `referee coordinator` does:
//! three processes, one started with `--init`, elect a leader whose admin listener reports it
//! (`/members`, `/metrics`) and whose `srvr` says `Mode: leader`; bad arguments exit 2 with the
//! usage.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use referee_coordinator::admin::Members;
use referee_testkit::{free_port, output_within, within_for, ScratchDir};

const DEADLINE: Duration = Duration::from_secs(30);

/// A child process, killed and reaped on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_referee-coordinator"))
}

#[test]
fn bad_arguments_exit_2_with_the_usage() -> Result<()> {
    for args in [&[][..], &["--init"], &["a.yaml", "b.yaml"], &["--config", "a.yaml"]] {
        let out = output_within(bin().args(args), DEADLINE)?;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("usage: referee-coordinator [--init] CONFIG.yaml"), "{args:?}: {err}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_one_with_init_elect_a_leader() -> Result<()> {
    let dir = ScratchDir::new("binary-init")?;
    let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    let mut ports = Vec::new();
    for _ in 0..3 {
        ports.push((at(free_port()?), at(free_port()?), at(free_port()?)));
    }
    let servers: String = (1..)
        .zip(&ports)
        .map(|(id, (client, peer, admin))| {
            format!("  - {{ id: {id}, client: {client}, peer: {peer}, admin: {admin} }}\n")
        })
        .collect();
    let mut running = Vec::new();
    for (id, (client, _, admin)) in (1..).zip(&ports) {
        let config = dir.path(&format!("server{id}.yaml"));
        let data = dir.path(&format!("data{id}"));
        let yaml = format!(
            "data_dir: {}\ncluster_id: 5\nserver_id: {id}\nlisten: {client}\nadmin_listen: {admin}\nservers:\n{servers}",
            data.display()
        );
        std::fs::write(&config, yaml)?;
        let mut cmd = bin();
        // `--init` before the configuration here; the unit tests cover either order.
        if id == 1 {
            cmd.arg("--init");
        }
        let log = std::fs::File::create(dir.path(&format!("server{id}.log")))?;
        running.push(Process(cmd.arg(&config).stdout(Stdio::null()).stderr(log).spawn()?));
    }

    // The processes announce nothing: ask server 2's admin listener until it names a leader.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    let admin2 = ports[1].2;
    let members = within_for(DEADLINE, "server 2 to name a leader", async {
        loop {
            let answer = async { http.get(format!("http://{admin2}/members")).send().await?.json::<Members>().await };
            if let Ok(m) = answer.await {
                if m.leader.is_some() {
                    return m;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .with_context(|| std::fs::read_to_string(dir.path("server1.log")).unwrap_or_default())?;
    assert_eq!(members.members.iter().map(|m| m.id).collect::<Vec<_>>(), vec![1, 2, 3]);
    let leader = usize::try_from(members.leader.context("a leader")?)?;
    let (client, _, admin) = ports[leader - 1];
    let srvr = referee_testkit::four_letter(client.port(), "srvr")?;
    assert!(srvr.contains("\nMode: leader\n"), "{srvr}");
    let metrics = http.get(format!("http://{admin}/metrics")).send().await?.text().await?;
    assert!(metrics.lines().any(|l| l == "referee_coordinator_raft_is_leader 1"), "{metrics}");
    Ok(())
}
