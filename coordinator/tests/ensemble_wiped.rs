//! A voter whose data directory was wiped and which is started again under its old id is
//! refused by the others (it has forgotten its votes and the entries it acknowledged), and it
//! is told why: its own log says it presents a new data directory, with a command that removes
//! it, as the `referee coordinator members remove` command line takes it.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::processes::Processes;
use referee_testkit::within_for;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_voter_restarted_under_its_old_id_logs_why_it_is_refused() -> Result<()> {
    let mut p = Processes::start(3, "")?;
    let leader = p.leader(1).await?;
    let wiped = (1..=3).find(|&id| id != leader).context("a follower")?;
    // Heard by the leader with its first data directory, then wiped and started again.
    within_for(Duration::from_secs(20), "the follower to apply the leader's entries", async {
        while p.members(leader).await.map_or(true, |m| m.members.iter().all(|x| x.id != wiped)) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await?;
    p.kill(wiped)?;
    std::fs::remove_dir_all(p.data_dir(wiped))?;
    p.restart(wiped)?;

    let said = within_for(Duration::from_secs(20), "the wiped server to log why it is refused", async {
        loop {
            if let Some(line) = p.log(wiped).lines().find(|l| l.contains("presents a new data directory")) {
                return line.to_string();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .with_context(|| p.logs())?;
    // The command it names is one `referee coordinator members remove` accepts: its flags are
    // `--server ADMIN` and `--id ID` (no positional argument).
    let command = said.split('`').nth(1).with_context(|| format!("no command in {said}"))?;
    let words: Vec<&str> = command.split_whitespace().collect();
    ensure!(words.starts_with(&["referee", "coordinator", "members", "remove", "--server"]), "{command}");
    let id = words.iter().position(|w| *w == "--id").and_then(|i| words.get(i + 1)).copied();
    ensure!(id == Some(&wiped.to_string()), "{command} does not name --id {wiped}");
    ensure!(words.len() == 8, "{command}: flags --server and --id with one value each");
    eprintln!("{said}");
    Ok(())
}
