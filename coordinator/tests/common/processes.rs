//! An ensemble of `referee-coordinator` child processes, each with its configuration, data
//! directory, log file and admin listener: for tests that must stop a server's whole process
//! (SIGSTOP), restart it from a wiped directory, or read what it logged.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use referee_coordinator::admin::Members;
use referee_testkit::{free_port, within_for, ScratchDir};

/// How long an ensemble of processes may take to elect a leader.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(30);

/// One server's addresses.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Where its clients connect.
    pub client: SocketAddr,
    /// Its peer port.
    pub peer: SocketAddr,
    /// Its admin listener.
    pub admin: SocketAddr,
}

/// Servers 1..=n as child processes, killed and reaped on drop.
pub struct Processes {
    /// Every server's addresses; server `id` is `ports[id - 1]`.
    pub ports: Vec<Ports>,
    children: Vec<Option<Child>>,
    dir: ScratchDir,
    http: reqwest::Client,
}

impl Processes {
    /// Starts `n` voters (server 1 with `--init`), each configured with the YAML lines `extra`.
    pub fn start(n: usize, extra: &str) -> Result<Processes> {
        let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        let mut ports = Vec::new();
        for _ in 0..n {
            ports.push(Ports { client: at(free_port()?), peer: at(free_port()?), admin: at(free_port()?) });
        }
        let dir = ScratchDir::new("processes")?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let mut p = Processes { ports, children: Vec::new(), dir, http };
        for id in 1..=n as u64 {
            p.write_config(id, extra)?;
            let child = p.spawn(id, id == 1)?;
            p.children.push(Some(child));
        }
        Ok(p)
    }

    fn write_config(&self, id: u64, extra: &str) -> Result<()> {
        let servers: String = (1..)
            .zip(&self.ports)
            .map(|(i, p)| format!("  - {{ id: {i}, client: {}, peer: {}, admin: {} }}\n", p.client, p.peer, p.admin))
            .collect();
        let me = self.at(id)?;
        let yaml = format!(
            "data_dir: {}\ncluster_id: 5\nserver_id: {id}\nlisten: {}\nadmin_listen: {}\n{extra}\nservers:\n{servers}",
            self.data_dir(id).display(),
            me.client,
            me.admin
        );
        std::fs::write(self.dir.path(&format!("server{id}.yaml")), yaml)?;
        Ok(())
    }

    fn spawn(&self, id: u64, init: bool) -> Result<Child> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path(id))?;
        let flags: &[&str] = if init { &["--init"] } else { &[] };
        super::child::spawn_coordinator(flags, &self.dir.path(&format!("server{id}.yaml")), log)
    }

    /// Server `id`'s addresses.
    pub fn at(&self, id: u64) -> Result<Ports> {
        self.ports.get((id as usize).wrapping_sub(1)).copied().ok_or_else(|| anyhow!("no server {id}"))
    }

    /// Server `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path(&format!("data{id}"))
    }

    fn log_path(&self, id: u64) -> PathBuf {
        self.dir.path(&format!("server{id}.log"))
    }

    /// What server `id` has logged so far (every run of it).
    pub fn log(&self, id: u64) -> String {
        std::fs::read_to_string(self.log_path(id)).unwrap_or_default()
    }

    /// Every server's log, for a failure's context.
    pub fn logs(&self) -> String {
        (1..=self.ports.len() as u64).map(|id| format!("--- server {id}\n{}", self.log(id))).collect()
    }

    /// Server `id`'s process id.
    pub fn pid(&self, id: u64) -> Result<u32> {
        let child = self.children.get((id as usize).wrapping_sub(1)).and_then(Option::as_ref);
        child.map(Child::id).ok_or_else(|| anyhow!("server {id} is not running"))
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to server `id`.
    pub fn signal(&self, id: u64, signal: &str) -> Result<()> {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid(id)?.to_string()).status()?;
        if !status.success() {
            bail!("kill -{signal} server {id}: {status}");
        }
        Ok(())
    }

    /// Kills server `id` and reaps it.
    pub fn kill(&mut self, id: u64) -> Result<()> {
        let slot = self.children.get_mut((id as usize).wrapping_sub(1)).context("no such server")?;
        if let Some(mut child) = slot.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts server `id` again (after [`Processes::kill`]) from its data directory.
    pub fn restart(&mut self, id: u64) -> Result<()> {
        let child = self.spawn(id, false)?;
        *self.children.get_mut((id as usize).wrapping_sub(1)).context("no such server")? = Some(child);
        Ok(())
    }

    /// Server `id`'s `/members`.
    pub async fn members(&self, id: u64) -> Result<Members> {
        let admin = self.at(id)?.admin;
        Ok(self.http.get(format!("http://{admin}/members")).send().await?.json::<Members>().await?)
    }

    /// Server `id`'s `/metrics`, by series (name with its labels).
    pub async fn metrics(&self, id: u64) -> Result<BTreeMap<String, f64>> {
        let admin = self.at(id)?.admin;
        let text = self.http.get(format!("http://{admin}/metrics")).send().await?.text().await?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
            .collect())
    }

    /// The leader server `asked` names, once it names one, within [`PROCESS_DEADLINE`].
    pub async fn leader(&self, asked: u64) -> Result<u64> {
        within_for(PROCESS_DEADLINE, "a leader to be named", async {
            loop {
                if let Ok(Members { leader: Some(l), .. }) = self.members(asked).await {
                    return l;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .with_context(|| self.logs())
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            // A stopped process does not die of SIGKILL any later than a running one, but one
            // left stopped by a failed test is resumed first all the same.
            let _ = Command::new("kill").arg("-CONT").arg(child.id().to_string()).status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
