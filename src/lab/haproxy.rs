//! HAProxy in front of a lab pair: an operator's configuration for the two example hosts (the
//! shipped `config/haproxy.cfg`, or another written for the same hosts) run with the lab's
//! addresses, and HAProxy's own view of which server is up in each backend.
//!
//! The configuration must name its frontends and servers as the shipped file does: `bind
//! *:5000` (writes, backend `masters_write`), `bind *:5001` (reads, `masters_read`), `bind
//! 127.0.0.1:7000` (statistics), and in each backend `server dbN dbN.example.internal:8080 check
//! port 8301` for db1 and db2. Every one of those texts must be there exactly as many times as
//! expected, so a file that drifts from them is refused by name, never run half-replaced.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::{child_port, io, LabError, Pair, Proc, NODES};

/// Why a test or bench that needs HAProxy did not run.
pub const HAPROXY_MISSING: &str = "HAProxy is not installed (CI installs Debian's haproxy package)";

/// The example hosts' names in a configuration, node `i` is `HOSTS[i]`.
const HOSTS: [&str; 2] = ["db1", "db2"];

/// HAProxy's executable, where Debian puts it or on `PATH`.
pub fn haproxy_bin() -> Option<PathBuf> {
    let debian = Path::new("/usr/sbin/haproxy");
    if debian.exists() {
        return Some(debian.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("haproxy")).find(|p| p.exists())
}

/// The ports HAProxy listens on in the lab.
#[derive(Debug, Clone, Copy)]
pub struct Frontends {
    /// Writes: the active master.
    pub write: u16,
    /// Reads: the standbys.
    pub read: u16,
    /// HAProxy's statistics page.
    pub stats: u16,
}

/// `text` (a configuration for the example hosts) with the lab's addresses, and HAProxy's log
/// sent to its output.
pub fn lab_config(text: &str, pair: &Pair, fe: &Frontends) -> Result<String, LabError> {
    let mut text = text.to_string();
    let mut replace = |from: &str, to: String, times: usize| -> Result<(), LabError> {
        let found = text.matches(from).count();
        if found != times {
            return Err(LabError::Child(format!(
                "the HAProxy configuration has `{from}` {found} times, the lab expects {times}"
            )));
        }
        text = text.replace(from, &to);
        Ok(())
    };
    replace("bind *:5000", format!("bind 127.0.0.1:{}", fe.write), 1)?;
    replace("bind *:5001", format!("bind 127.0.0.1:{}", fe.read), 1)?;
    replace("bind 127.0.0.1:7000", format!("bind 127.0.0.1:{}", fe.stats), 1)?;
    for (i, host) in HOSTS.iter().enumerate() {
        let ports = pair.ports[i];
        replace(
            &format!("server {host} {host}.example.internal:8080 check port 8301"),
            format!("server {host} 127.0.0.1:{} check port {}", ports.master, ports.probes),
            2,
        )?;
    }
    // The log, which such a file sends to the host's global section, to HAProxy's output.
    Ok(format!("global\n    log stdout format raw local0 info\n\n{text}"))
}

/// HAProxy running a configuration with the lab's addresses.
pub struct Haproxy {
    _proc: Proc,
    /// Where it listens.
    pub fe: Frontends,
    http: reqwest::Client,
}

impl Haproxy {
    /// Starts `bin` with `config` (a file for the example hosts) in front of `pair`, once
    /// `haproxy -c` accepts the lab's copy; its copy and log are in the pair's directory.
    pub fn start(bin: &Path, pair: &Pair, config: &Path) -> Result<Haproxy, LabError> {
        let fe = Frontends { write: child_port()?, read: child_port()?, stats: child_port()? };
        let text = std::fs::read_to_string(config).map_err(io(format!("reading {}", config.display())))?;
        let lab = pair.dir.0.join("haproxy.cfg");
        std::fs::write(&lab, lab_config(&text, pair, &fe)?).map_err(io(format!("writing {}", lab.display())))?;
        let check = Command::new(bin).arg("-c").arg("-f").arg(&lab).output().map_err(io("running haproxy -c"))?;
        if !check.status.success() {
            return Err(LabError::Child(format!(
                "haproxy -c refuses the lab's copy of {}:\n{}{}",
                config.display(),
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            )));
        }
        let mut cmd = Command::new(bin);
        cmd.arg("-db").arg("-f").arg(&lab);
        let proc = Proc::spawn_command("haproxy", cmd, pair.dir.0.join("haproxy.log"))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| LabError::Child(format!("an HTTP client: {e}")))?;
        Ok(Haproxy { _proc: proc, fe, http })
    }

    /// The URL of the masters' write endpoint through HAProxy's write address.
    pub fn write_url(&self) -> String {
        format!("http://127.0.0.1:{}/write", self.fe.write)
    }

    /// The nodes HAProxy has up in `backend` (`masters_write` or `masters_read`), by index.
    pub async fn up(&self, backend: &str) -> Result<Vec<usize>, LabError> {
        let url = format!("http://127.0.0.1:{}/;csv", self.fe.stats);
        let csv = async { self.http.get(&url).send().await?.text().await }
            .await
            .map_err(|e| LabError::Child(format!("HAProxy's statistics at {url}: {e}")))?;
        let mut lines = csv.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().trim_start_matches("# ").split(',').collect();
        let col = |name: &str| {
            header
                .iter()
                .position(|h| *h == name)
                .ok_or_else(|| LabError::Child(format!("no `{name}` column in HAProxy's statistics: {header:?}")))
        };
        let (px, sv, status) = (col("pxname")?, col("svname")?, col("status")?);
        let mut up = Vec::new();
        for line in lines {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() > status && f[px] == backend && f[status] == "UP" {
                if let Some(node) = HOSTS.iter().position(|h| *h == f[sv]) {
                    up.push(node);
                }
            }
        }
        Ok(up)
    }

    /// Waits until HAProxy has exactly `active` up in the write backend, and in the read
    /// backend the other node alone (`standby_up`) or at least not `active`.
    pub async fn wait_for_view(&self, active: usize, standby_up: bool, limit: Duration) -> Result<(), LabError> {
        let deadline = Instant::now() + limit;
        loop {
            let (w, r) = (self.up("masters_write").await.ok(), self.up("masters_read").await.ok());
            let read_ok =
                r.as_ref().is_some_and(|r| if standby_up { r == &[1 - active] } else { !r.contains(&active) });
            if w.as_deref() == Some(&[active][..]) && read_ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let wanted_read =
                    if standby_up { format!("{} alone", NODES[1 - active]) } else { format!("not {}", NODES[active]) };
                return Err(LabError::Timeout(format!(
                    "HAProxy's view after {limit:?}: write backend up {w:?}, read backend up {r:?}; wanted {} alone in \
                     the write backend and {wanted_read} in the read backend",
                    NODES[active]
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
