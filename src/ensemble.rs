//! `referee coordinator ensemble up|status|down`: a whole coordinator ensemble on one machine,
//! as background processes of this executable, for trying the suite out and for tests.
//!
//! ```text
//!   up ──► plan (pure: ids, roles, ports) ──► lock DIR/.ensemble.lock ──► ensemble.yaml (made
//!          once, read back) ──► server-N.yaml ──► spawn `referee coordinator --config
//!          server-N.yaml [--init]` detached, log to server-N.log, pid to server-N.pid
//!          ──► ask each `srvr` until every server answers and one leads ──► table + connect string
//!   status ──► pidfiles + `srvr` ──► table + verdict, exit 0 while a majority of the voters
//!          follow one leader (`serving, degraded` names the servers that do not), 1 otherwise
//!   down ──► lock ──► SIGTERM each pid, SIGKILL at the deadline, remove the pidfiles (data kept)
//! ```
//!
//! Everything lives in one directory (`./referee-ensemble` unless `--dir`): `ensemble.yaml`
//! (the cluster id and the server counts, which make it an ensemble directory),
//! `.ensemble.lock` (held by `up` and `down` for their whole run, so that two runs never
//! interleave; see `lock_dir`), and per server `server-N.yaml`, `server-N.log`,
//! `server-N.pid` and `data-N/`. Server 1 is started with `--init` as long as no data
//! directory holds a log. The deciding parts
//! ([`plan`], [`render_config`], [`parse_mode`], [`assess`]) do no I/O; [`up`], [`status`] and
//! [`down`] are the driver.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

/// The directory used when `--dir` is not given, under the current directory.
pub const DEFAULT_DIR: &str = "referee-ensemble";
/// The file that marks a directory as an ensemble directory and holds its cluster id.
const MARKER: &str = "ensemble.yaml";
/// Most observers `up` will make.
pub const MAX_OBSERVERS: u8 = 9;
/// How long `up` waits for every server to answer and one to lead.
pub const UP_DEADLINE: Duration = Duration::from_secs(20);
/// How long `down` waits after SIGTERM before SIGKILL.
pub const DOWN_DEADLINE: Duration = Duration::from_secs(10);
/// How often the driver re-asks while waiting on a condition.
const POLL: Duration = Duration::from_millis(100);

/// Why a command failed. [`EnsembleError::exit_code`] maps it to the documented exit codes.
#[derive(Debug, Error)]
pub enum EnsembleError {
    /// The arguments, or the directory they name, cannot be used as given (exit 2).
    #[error("{0}")]
    BadArguments(String),
    /// Ports the ensemble needs are in use by something else (exit 1).
    #[error("{}; stop what uses them, or choose other ports with --base-port", .0.join(", "))]
    PortsTaken(Vec<String>),
    /// A file of the ensemble directory could not be read or written (exit 1).
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the file.
        what: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Servers were started but the ensemble did not come up (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl EnsembleError {
    /// 2 for bad arguments, 1 for every other failure.
    pub fn exit_code(&self) -> i32 {
        match self {
            EnsembleError::BadArguments(_) => 2,
            EnsembleError::PortsTaken(_) | EnsembleError::Io { .. } | EnsembleError::Failed(_) => 1,
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EnsembleError {
    let what = what.into();
    move |source| EnsembleError::Io { what, source }
}

/// What a server is in the ensemble.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Votes and counts towards the write quorum.
    Voter,
    /// Receives the log and serves clients, never votes.
    Observer,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so the tables' widths apply.
        f.pad(match self {
            Role::Voter => "voter",
            Role::Observer => "observer",
        })
    }
}

/// One server of a planned ensemble.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedServer {
    /// Its `server_id`, from 1.
    pub id: u64,
    /// Voter or observer.
    pub role: Role,
    /// Where its clients connect (`listen`).
    pub client: SocketAddr,
    /// Where the other servers reach it.
    pub peer: SocketAddr,
    /// Its admin HTTP listener.
    pub admin: SocketAddr,
}

/// The servers of a local ensemble: voters first, then observers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Voters.
    pub voters: u8,
    /// Observers.
    pub observers: u8,
    /// The client port of server 1; the others follow (see [`plan`]).
    pub base_port: Option<u16>,
    /// Every server, by id.
    pub servers: Vec<PlannedServer>,
}

impl Plan {
    /// A server alone runs standalone: no `servers` list, no `--init`.
    pub fn standalone(&self) -> bool {
        self.servers.len() == 1
    }

    /// The client addresses joined with commas: the connect string of ZooKeeper clients.
    pub fn connect_string(&self) -> String {
        self.servers.iter().map(|s| s.client.to_string()).collect::<Vec<_>>().join(",")
    }
}

/// Plans an ensemble of `voters` voters and `observers` observers on loopback.
///
/// Ports: by default clients at 2181, 2182, ... (ZooKeeper's habit), peers at 2888, ... and
/// admin listeners at 8080, ...; with `base_port` P, clients at P, P+1, ..., peers at P+20, ...
/// and admin listeners at P+40, ... (16 servers at most, so the three ranges never meet).
pub fn plan(voters: u8, observers: u8, base_port: Option<u16>) -> Result<Plan, EnsembleError> {
    if !matches!(voters, 1 | 3 | 5 | 7) {
        return Err(EnsembleError::BadArguments(format!(
            "--servers {voters}: give 1, 3, 5 or 7. Every write waits for a majority of the voters, so an even \
             count survives no more failures than one server fewer (4 survive 1, as 3 do) and only adds load; \
             1 runs a server standalone"
        )));
    }
    if observers > MAX_OBSERVERS {
        return Err(EnsembleError::BadArguments(format!(
            "--observers {observers}: give 0 to {MAX_OBSERVERS} (observers serve clients but never vote)"
        )));
    }
    let total = u16::from(voters) + u16::from(observers);
    let (client0, peer0, admin0) = match base_port {
        None => (2181u16, 2888u16, 8080u16),
        Some(p) if p >= 1024 && u32::from(p) + 40 + u32::from(total) <= 65_535 => (p, p + 20, p + 40),
        Some(p) => {
            return Err(EnsembleError::BadArguments(format!(
                "--base-port {p}: give a port from 1024 to {} (the ensemble uses it and up to {} ports above)",
                65_535 - 40 - total,
                40 + total - 1
            )))
        }
    };
    let at = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let servers = (0..total)
        .map(|i| PlannedServer {
            id: u64::from(i) + 1,
            role: if i < u16::from(voters) { Role::Voter } else { Role::Observer },
            client: at(client0 + i),
            peer: at(peer0 + i),
            admin: at(admin0 + i),
        })
        .collect();
    Ok(Plan { voters, observers, base_port, servers })
}

/// The commented YAML configuration of `server` of `plan`, its data in `data_dir`.
pub fn render_config(plan: &Plan, cluster_id: u64, server: &PlannedServer, data_dir: &Path) -> String {
    let mut yaml = format!(
        "# Server {id} of a local ensemble made by `referee coordinator ensemble up`; started by it as\n\
         #   referee coordinator --config server-{id}.yaml\n\
         # (full reference of every key: config/coordinator.yaml in the source tree).\n\n\
         # Where clients connect (ZooKeeper's clientPort).\n\
         listen: {client}\n\n\
         # This server's identity, Raft log and snapshots; one directory per server.\n\
         data_dir: {data}\n\n\
         # Admin HTTP listener: GET /metrics, GET /members; used by `referee coordinator members`.\n\
         admin_listen: {admin}\n\n\
         # Base time unit in ms (ZooKeeper's tickTime), as in config/coordinator.yaml: sessions are\n\
         # granted 2 to 20 ticks, so the failover agents' default session_timeout_ms of 2500 is\n\
         # granted as asked (with the default 2000 ms ticks it would be raised to 4000, delaying\n\
         # every host-loss failover by the difference).\n\
         tick_ms: 1000\n",
        id = server.id,
        client = server.client,
        data = data_dir.display(),
        admin = server.admin,
    );
    if plan.standalone() {
        yaml.push_str("\n# No `servers` list: this server runs standalone, a cluster of one voter.\n");
        return yaml;
    }
    yaml.push_str(&format!(
        "\n# The same for every server of the ensemble; generated once and kept in {MARKER}.\n\
         cluster_id: {cluster_id}\n\n\
         # This server's id among `servers` (ZooKeeper's myid).\n\
         server_id: {}\n\n\
         # Every server of the ensemble (ZooKeeper's server.N lines): {} voters elect the leader and\n\
         # every write waits for a majority of them; observers serve clients and never vote.\n\
         servers:\n",
        server.id, plan.voters
    ));
    for s in &plan.servers {
        yaml.push_str(&format!(
            "  - {{ id: {}, client: {}, peer: {}, role: {}, admin: {} }}\n",
            s.id, s.client, s.peer, s.role, s.admin
        ));
    }
    yaml
}

/// What `srvr` says a server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// It leads the ensemble.
    Leader,
    /// A voter following a leader.
    Follower,
    /// An observer.
    Observer,
    /// A server running alone.
    Standalone,
    /// Running, but not serving: it has not found the ensemble's leader since it started, or
    /// has had no contact with it past its staleness bound (it answers `srvr` as ZooKeeper's
    /// servers do while they look for a leader).
    NotServing,
    /// Something this tool does not know, as `srvr` wrote it.
    Other(String),
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Mode::Leader => "leader",
            Mode::Follower => "follower",
            Mode::Observer => "observer",
            Mode::Standalone => "standalone",
            Mode::NotServing => "not serving",
            Mode::Other(other) => other,
        })
    }
}

/// The `Mode:` line of a `srvr` answer, if it has one; [`Mode::NotServing`] for the answer of
/// a server that is not serving.
pub fn parse_mode(srvr: &str) -> Option<Mode> {
    if srvr == referee_coordinator::fourlw::NOT_SERVING {
        return Some(Mode::NotServing);
    }
    let mode = srvr.lines().find_map(|l| l.strip_prefix("Mode:"))?.trim();
    Some(match mode {
        "leader" => Mode::Leader,
        "follower" => Mode::Follower,
        "observer" => Mode::Observer,
        "standalone" => Mode::Standalone,
        other => Mode::Other(other.to_string()),
    })
}

/// What a server's pidfile says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidState {
    /// No pidfile: the server was not started, or was stopped by `down`.
    NoPidfile,
    /// The pidfile names this process, which runs this server.
    Alive(u32),
    /// The pidfile names a process that is gone (the server crashed or was killed).
    Gone(u32),
}

impl fmt::Display for PidState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PidState::NoPidfile => f.write_str("stopped"),
            PidState::Alive(pid) => write!(f, "{pid}"),
            PidState::Gone(pid) => write!(f, "{pid} gone"),
        }
    }
}

/// One server as observed now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Its id.
    pub id: u64,
    /// Voter or observer, as planned.
    pub role: Role,
    /// Its pidfile.
    pub pid: PidState,
    /// What `srvr` said, `None` if it did not answer.
    pub mode: Option<Mode>,
    /// The leader its admin listener's `GET /members` names; `None` if it names none or did
    /// not answer. (`srvr` says `follower` before a follower has heard from any leader.)
    pub leader_named: Option<u64>,
}

/// Whether an observed ensemble serves its clients, as [`assess`] judges it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every server answers, exactly one leads (a lone server: says standalone), and in an
    /// ensemble every server names that one as its leader.
    Whole {
        /// The leader's id.
        leader: u64,
    },
    /// One leads and a majority of the voters (it among them) name it as their leader, so
    /// writes commit and clients are served; some servers do not follow it.
    Degraded {
        /// The leader's id.
        leader: u64,
        /// Which servers do not follow it and why, as a sentence.
        missing: String,
    },
    /// No majority of the voters follows one leader: writes do not commit.
    NotServing(
        /// Why, as a sentence.
        String,
    ),
}

impl Verdict {
    /// Whether clients are served: [`Verdict::Whole`] or [`Verdict::Degraded`].
    pub fn serves(&self) -> bool {
        match self {
            Verdict::Whole { .. } | Verdict::Degraded { .. } => true,
            Verdict::NotServing(_) => false,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Whole { leader } => write!(f, "serving: server {leader} leads"),
            Verdict::Degraded { leader, missing } => write!(f, "serving, degraded: server {leader} leads; {missing}"),
            Verdict::NotServing(why) => write!(f, "not serving: {why}"),
        }
    }
}

/// Whether an observed ensemble serves. Whole when every server answers `srvr`, exactly one
/// leads and, in an ensemble, every server names it as its leader. Degraded when some do not,
/// but a majority of the voters (the leader among them) answer as leader or follower and name
/// that one: a write needs no more, so the ensemble serves, as it is built to through the loss
/// of a minority. Not serving otherwise.
pub fn assess(observed: &[Observation]) -> Verdict {
    let mut problems = Vec::new();
    let silent: Vec<String> = observed.iter().filter(|o| o.mode.is_none()).map(|o| o.id.to_string()).collect();
    if !silent.is_empty() {
        problems.push(format!("server {} not answering", silent.join(", ")));
    }
    let waiting: Vec<String> =
        observed.iter().filter(|o| o.mode == Some(Mode::NotServing)).map(|o| o.id.to_string()).collect();
    if !waiting.is_empty() {
        problems.push(format!(
            "server {} running but not serving: no leader found since it started, or none heard from within its \
             staleness bound (its log says which, and what it waits for)",
            waiting.join(", ")
        ));
    }
    let not_serving = |mut problems: Vec<String>, last: String| {
        problems.push(last);
        Verdict::NotServing(problems.join("; "))
    };
    let leaders: Vec<u64> =
        observed.iter().filter(|o| matches!(o.mode, Some(Mode::Leader | Mode::Standalone))).map(|o| o.id).collect();
    let leader = match leaders.as_slice() {
        [one] => *one,
        [] => return not_serving(problems, "no server leads".to_string()),
        many => return not_serving(problems, format!("{} servers say they lead ({many:?})", many.len())),
    };
    if observed.len() == 1 {
        return Verdict::Whole { leader };
    }
    let unaware: Vec<String> = observed
        .iter()
        .filter(|o| o.mode.as_ref().is_some_and(|m| *m != Mode::NotServing) && o.leader_named != Some(leader))
        .map(|o| o.id.to_string())
        .collect();
    if !unaware.is_empty() {
        problems.push(format!("server {} does not name server {leader} as its leader yet", unaware.join(", ")));
    }
    if problems.is_empty() {
        return Verdict::Whole { leader };
    }
    let voters = observed.iter().filter(|o| o.role == Role::Voter).count();
    let following = observed
        .iter()
        .filter(|o| {
            o.role == Role::Voter
                && matches!(o.mode, Some(Mode::Leader | Mode::Follower))
                && o.leader_named == Some(leader)
        })
        .count();
    if following * 2 > voters {
        Verdict::Degraded { leader, missing: problems.join("; ") }
    } else {
        let follow = if following == 1 { "follows" } else { "follow" };
        not_serving(problems, format!("{following} of the {voters} voters {follow} server {leader}, a majority needed"))
    }
}

/// Arguments of `up`.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The ensemble directory.
    pub dir: PathBuf,
    /// Voters.
    pub voters: u8,
    /// Observers.
    pub observers: u8,
    /// `--base-port`, if given.
    pub base_port: Option<u16>,
    /// The executable to start the servers with.
    pub exe: PathBuf,
}

fn config_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("server-{id}.yaml"))
}
fn pid_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("server-{id}.pid"))
}
fn log_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("server-{id}.log"))
}
fn data_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("data-{id}"))
}

/// The contents of `ensemble.yaml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marker {
    cluster_id: u64,
    voters: u8,
    observers: u8,
    base_port: Option<u16>,
}

impl Marker {
    fn render(&self) -> String {
        let base = self.base_port.map_or("default".to_string(), |p| p.to_string());
        format!(
            "# A local coordinator ensemble made by `referee coordinator ensemble up`. Its servers keep\n\
             # these counts and ports for as long as this directory exists.\n\
             cluster_id: {}\nvoters: {}\nobservers: {}\nbase_port: {base}\n",
            self.cluster_id, self.voters, self.observers
        )
    }

    fn parse(text: &str) -> Option<Marker> {
        let value: serde_yaml::Value = serde_yaml::from_str(text).ok()?;
        let num = |k: &str| value.get(k).and_then(serde_yaml::Value::as_u64);
        Some(Marker {
            cluster_id: num("cluster_id")?,
            voters: u8::try_from(num("voters")?).ok()?,
            observers: u8::try_from(num("observers")?).ok()?,
            base_port: match value.get("base_port")? {
                serde_yaml::Value::String(s) if s == "default" => None,
                v => Some(u16::try_from(v.as_u64()?).ok()?),
            },
        })
    }
}

/// Reads `DIR/ensemble.yaml`: `Ok(None)` when the directory is missing or empty (a new
/// ensemble), an error naming the problem when it holds something else.
fn read_marker(dir: &Path) -> Result<Option<Marker>, EnsembleError> {
    let path = dir.join(MARKER);
    match std::fs::read_to_string(&path) {
        Ok(text) => Marker::parse(&text).map(Some).ok_or_else(|| {
            EnsembleError::BadArguments(format!(
                "{} is damaged (it needs cluster_id, voters, observers and base_port); fix it or remove the \
                 directory with `referee coordinator ensemble down --purge --dir {}`",
                path.display(),
                dir.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // The lock file is made before the marker (see `lock_dir`).
            let empty = match std::fs::read_dir(dir) {
                Ok(entries) => entries.flatten().all(|e| e.file_name() == LOCK_NAME),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(e) => return Err(io(format!("reading {}", dir.display()))(e)),
            };
            if empty {
                Ok(None)
            } else {
                Err(not_an_ensemble(dir))
            }
        }
        Err(e) => Err(io(format!("reading {}", path.display()))(e)),
    }
}

fn not_an_ensemble(dir: &Path) -> EnsembleError {
    EnsembleError::BadArguments(format!(
        "{} is not an ensemble directory (it has no {MARKER}); give --dir a new or empty directory, or one \
         made by `referee coordinator ensemble up`",
        dir.display()
    ))
}

/// The marker and plan of an existing ensemble directory, for `status` and `down`.
fn existing(dir: &Path) -> Result<(Marker, Plan, PathBuf), EnsembleError> {
    if !dir.is_dir() {
        return Err(EnsembleError::BadArguments(format!(
            "{} does not exist; start an ensemble there with `referee coordinator ensemble up --servers 3 --dir {}`",
            dir.display(),
            dir.display()
        )));
    }
    let marker = read_marker(dir)?.ok_or_else(|| not_an_ensemble(dir))?;
    let plan = plan(marker.voters, marker.observers, marker.base_port)?;
    // Absolute, as `up` names the configurations to the servers it starts (see [`runs`]).
    let dir = dir.canonicalize().map_err(io(format!("resolving {}", dir.display())))?;
    Ok((marker, plan, dir))
}

/// Whether `pid` runs the server configured by `config` (not a zombie, and not another
/// process that got the number after the server died).
fn runs(pid: u32, config: &Path) -> bool {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let zombie = std::fs::read_to_string(proc.join("stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')))
        .unwrap_or(true);
    // The command line holds the configuration's absolute path: `up` gives it that way.
    let cmdline = std::fs::read(proc.join("cmdline")).unwrap_or_default();
    !zombie && String::from_utf8_lossy(&cmdline).contains(&*config.to_string_lossy())
}

fn pid_state(dir: &Path, id: u64) -> PidState {
    let Some(pid) = std::fs::read_to_string(pid_path(dir, id)).ok().and_then(|t| t.trim().parse::<u32>().ok()) else {
        return PidState::NoPidfile;
    };
    if runs(pid, &config_path(dir, id)) {
        PidState::Alive(pid)
    } else {
        PidState::Gone(pid)
    }
}

/// Asks `srvr` of the server at `addr`, with a short deadline.
fn ask_mode(addr: SocketAddr) -> Option<Mode> {
    let limit = Duration::from_millis(500);
    let mut stream = TcpStream::connect_timeout(&addr, limit).ok()?;
    stream.set_read_timeout(Some(limit)).ok()?;
    stream.write_all(b"srvr").ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    parse_mode(&answer)
}

/// Asks the admin listener at `addr` which leader it knows (`GET /members`, one HTTP/1.1
/// request on a connection closed after it), with a short deadline.
fn ask_leader(addr: SocketAddr) -> Option<u64> {
    let limit = Duration::from_millis(500);
    let mut stream = TcpStream::connect_timeout(&addr, limit).ok()?;
    stream.set_read_timeout(Some(limit)).ok()?;
    stream.write_all(format!("GET /members HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    serde_json::from_str::<referee_coordinator::admin::Members>(body).ok()?.leader
}

fn observe(dir: &Path, plan: &Plan) -> Vec<Observation> {
    plan.servers
        .iter()
        .map(|s| Observation {
            id: s.id,
            pid: pid_state(dir, s.id),
            role: s.role,
            mode: ask_mode(s.client),
            leader_named: if plan.standalone() { None } else { ask_leader(s.admin) },
        })
        .collect()
}

/// The `up`/`status` table: one row a server. Cells may hold a single space (`16439 gone`,
/// `not answering`), so every column is at least one wider than its longest cell: two spaces
/// always separate columns, and each stays under its heading whatever a row holds.
fn table(plan: &Plan, observed: &[Observation]) -> String {
    let mut rows = vec![["id", "role", "pid", "mode", "client"].map(String::from)];
    for (s, o) in plan.servers.iter().zip(observed) {
        let mode = o.mode.as_ref().map_or("not answering".to_string(), Mode::to_string);
        rows.push([s.id.to_string(), s.role.to_string(), o.pid.to_string(), mode, s.client.to_string()]);
    }
    // The usual widths, widened where a cell would leave less than two spaces after it.
    let mut widths = [4, 9, 10, 13];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len() + 1);
        }
    }
    let mut out = String::new();
    for row in &rows {
        for (width, cell) in widths.iter().zip(row) {
            out.push_str(&format!("{cell:<width$} "));
        }
        out.push_str(&row[4]);
        out.push('\n');
    }
    out
}

fn connect_lines(plan: &Plan, dir: &Path) -> String {
    format!(
        "connect string: {cs}\nzkCli.sh:       zkCli.sh -server {cs}\nstop with:      referee coordinator ensemble \
         down --dir {}\n",
        dir.display(),
        cs = plan.connect_string()
    )
}

/// Whether no server of the ensemble in `dir` holds a log (a saved Raft state or a segment):
/// then it was never initialised, even if an earlier `up` made data directories (its server 1
/// exited at start, a port taken or the disk full, and the others waited for it). `--init` on
/// a server whose log holds a membership does nothing, so asking again is safe.
fn never_initialised(dir: &Path, plan: &Plan) -> bool {
    plan.servers.iter().all(|s| !holds_a_log(&data_path(dir, s.id)))
}

/// Whether the data directory `data` holds a log: a saved Raft state or a segment in `log/`.
fn holds_a_log(data: &Path) -> bool {
    use referee_coordinator::log::wal::{parse_segment_name, META_NAME};
    let Ok(entries) = std::fs::read_dir(data.join("log")) else { return false };
    entries.flatten().any(|e| {
        let name = e.file_name();
        let name = name.to_string_lossy();
        name == META_NAME || parse_segment_name(&name).is_some()
    })
}

/// Writes `proposed` as the directory's marker unless one is there, and returns the marker on
/// disk: every configuration is rendered from it, so that no two servers of the directory ever
/// get different cluster ids. Made with `create_new`, never over another.
fn settle_marker(dir: &Path, proposed: Marker) -> Result<Marker, EnsembleError> {
    let path = dir.join(MARKER);
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(mut f) => {
            f.write_all(proposed.render().as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io(format!("writing {}", path.display())))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io(format!("creating {}", path.display()))(e)),
    }
    read_marker(dir)?.ok_or_else(|| EnsembleError::Failed(format!("{} vanished while `up` ran", path.display())))
}

/// Removes server `id`'s pidfile if it still names `pid`, the process this run started: another
/// run may have started the server since, and its pidfile is how `status` and `down` find it.
fn forget_pid(dir: &Path, id: u64, pid: u32) {
    let path = pid_path(dir, id);
    let named = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse::<u32>().ok());
    if named == Some(pid) {
        let _ = std::fs::remove_file(&path);
    }
}

/// The lock file of an ensemble directory (see `lock_dir`).
const LOCK_NAME: &str = ".ensemble.lock";

/// `DIR/.ensemble.lock`, locked by this process (an exclusive `flock`) until dropped; the kernel
/// lets go of it when the process ends, however it ends.
struct DirLock {
    _held: nix::fcntl::Flock<std::fs::File>,
}

/// Locks the ensemble directory `dir` for the whole of an `up` or a `down`: while one holds
/// it, no other run of either decides anything there, so two `up`s never draw two cluster ids
/// for one directory nor take each other's servers for their own, and `down` never stops an
/// ensemble half started. When another process holds it, calls `waiting` with the pid that
/// process wrote in the file, then waits for it.
fn lock_dir(dir: &Path, waiting: impl FnOnce(Option<u32>)) -> Result<DirLock, EnsembleError> {
    use nix::fcntl::{Flock, FlockArg};
    use std::os::unix::fs::MetadataExt;
    let path = dir.join(LOCK_NAME);
    let mut waiting = Some(waiting);
    loop {
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path);
        let file = match file {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(EnsembleError::BadArguments(format!(
                    "{} was removed (by `referee coordinator ensemble down --purge`?) while this command waited \
                     for it; run it again",
                    dir.display()
                )))
            }
            Err(e) => return Err(io(format!("opening {}", path.display()))(e)),
        };
        let locking = |e: nix::errno::Errno| io(format!("locking {}", path.display()))(e.into());
        let held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(held) => held,
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                if let Some(waiting) = waiting.take() {
                    let holder = std::fs::read_to_string(&path).ok().and_then(|t| t.trim().parse().ok());
                    waiting(holder);
                }
                Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| locking(e))?
            }
            Err((_, e)) => return Err(locking(e)),
        };
        // `down --purge` removes the file while it holds it: a lock on a removed file is one
        // no later run takes, so the file at the path is locked afresh.
        let same = match (std::fs::metadata(&path), held.metadata()) {
            (Ok(now), Ok(locked)) => (now.dev(), now.ino()) == (locked.dev(), locked.ino()),
            _ => false,
        };
        if same {
            held.set_len(0)
                .and_then(|()| {
                    std::os::unix::fs::FileExt::write_all_at(&*held, format!("{}\n", std::process::id()).as_bytes(), 0)
                })
                .map_err(io(format!("writing {}", path.display())))?;
            return Ok(DirLock { _held: held });
        }
    }
}

/// What `up` and `down` say while another run holds the directory.
fn say_waiting(dir: &Path) -> impl FnOnce(Option<u32>) + '_ {
    move |holder| {
        println!(
            "another `referee coordinator ensemble` command{} is working on {}; waiting for it to finish",
            holder.map_or(String::new(), |pid| format!(" (pid {pid})")),
            dir.display()
        );
    }
}

/// A cluster id for a new ensemble: random, non-zero.
fn new_cluster_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    // Kept below 2^53 so it reads the same in every YAML and JSON tool.
    (h.finish() >> 11).max(1)
}

/// `up`: starts the servers of the ensemble in `opts.dir` that are not running (all of them
/// the first time, server 1 with `--init` until some server holds a log), waits until every
/// server answers and one leads, and prints the table and the connect string, holding the
/// directory's lock (`lock_dir`) throughout. Returns the exit code.
pub fn up(opts: &UpOptions) -> Result<i32, EnsembleError> {
    let mut wanted = plan(opts.voters, opts.observers, opts.base_port)?;
    // A first look, before anything is made in the directory: one that is not an ensemble's
    // is refused as it is.
    read_marker(&opts.dir)?;
    std::fs::create_dir_all(&opts.dir).map_err(io(format!("creating {}", opts.dir.display())))?;
    let dir = &opts.dir.canonicalize().map_err(io(format!("resolving {}", opts.dir.display())))?;
    let _lock = lock_dir(dir, say_waiting(dir))?;
    // From here on no other `up` or `down` runs on the directory: what is read now stands.
    let marker = match read_marker(dir)? {
        Some(m) => {
            if (m.voters, m.observers) != (opts.voters, opts.observers) {
                return Err(EnsembleError::BadArguments(format!(
                    "{} holds an ensemble of {} voters and {} observers; `up` does not change the server count of \
                     an existing ensemble. Give --servers {} --observers {}, or use another --dir (or remove this \
                     one with `referee coordinator ensemble down --purge --dir {}`)",
                    dir.display(),
                    m.voters,
                    m.observers,
                    m.voters,
                    m.observers,
                    dir.display()
                )));
            }
            if opts.base_port.is_some() && opts.base_port != m.base_port {
                return Err(EnsembleError::BadArguments(format!(
                    "{} holds an ensemble whose base port is {}; its ports do not change: leave --base-port out",
                    dir.display(),
                    m.base_port.map_or("the default (2181)".to_string(), |p| p.to_string())
                )));
            }
            wanted = plan(m.voters, m.observers, m.base_port)?;
            m
        }
        None => Marker {
            cluster_id: new_cluster_id(),
            voters: opts.voters,
            observers: opts.observers,
            base_port: opts.base_port,
        },
    };
    let plan = wanted;

    // Which servers run already; a pidfile whose process is gone is a server that crashed or
    // was killed: it is started again.
    let mut to_start = Vec::new();
    for s in &plan.servers {
        match pid_state(dir, s.id) {
            PidState::Alive(_) => {}
            PidState::Gone(pid) => {
                println!("server {}: its pidfile named pid {pid}, which is gone; starting it again", s.id);
                to_start.push(s.clone());
            }
            PidState::NoPidfile => to_start.push(s.clone()),
        }
    }
    if to_start.is_empty() {
        println!("the ensemble in {} is already running", dir.display());
        let observed = observe(dir, &plan);
        print!("{}{}", table(&plan, &observed), connect_lines(&plan, dir));
        return Ok(0);
    }

    // Every port of a server to start must be free before any is started.
    let mut taken = Vec::new();
    for s in &to_start {
        for (what, addr) in [("client", s.client), ("peer", s.peer), ("admin", s.admin)] {
            if TcpListener::bind(addr).is_err() {
                taken.push(format!("port {} ({what} port of server {}) is taken", addr.port(), s.id));
            }
        }
    }
    if !taken.is_empty() {
        return Err(EnsembleError::PortsTaken(taken));
    }

    // The ensemble is initialised once, by server 1 on the first start; afterwards every
    // server rejoins from its log.
    let first_start = never_initialised(dir, &plan);
    let settled = settle_marker(dir, marker)?;
    if settled != marker {
        return Err(EnsembleError::Failed(format!(
            "{} changed while `up` ran (another program wrote it); run `up` again",
            dir.join(MARKER).display()
        )));
    }
    let mut children = Vec::new();
    for s in &to_start {
        let config = config_path(dir, s.id);
        if !config.exists() {
            let yaml = render_config(&plan, marker.cluster_id, s, &data_path(dir, s.id));
            std::fs::write(&config, yaml).map_err(io(format!("writing {}", config.display())))?;
        }
        let log_file = log_path(dir, s.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .map_err(io(format!("opening {}", log_file.display())))?;
        let log2 = log.try_clone().map_err(io(format!("opening {}", log_file.display())))?;
        let mut cmd = std::process::Command::new(&opts.exe);
        cmd.arg("coordinator").arg("--config").arg(&config);
        if first_start && s.id == 1 && !plan.standalone() {
            cmd.arg("--init");
        }
        // Its own process group, so a Ctrl-C meant for this command does not reach it.
        use std::os::unix::process::CommandExt;
        cmd.process_group(0).stdin(std::process::Stdio::null()).stdout(log).stderr(log2);
        let child = cmd.spawn().map_err(io(format!("starting {}", opts.exe.display())))?;
        let pidfile = pid_path(dir, s.id);
        std::fs::write(&pidfile, format!("{}\n", child.id())).map_err(io(format!("writing {}", pidfile.display())))?;
        children.push((s.id, child));
    }
    let started: Vec<String> = children.iter().map(|(id, _)| id.to_string()).collect();
    println!(
        "{} ensemble in {} (cluster {}): started server {}",
        if first_start { "new" } else { "existing" },
        dir.display(),
        marker.cluster_id,
        started.join(", ")
    );

    let deadline = Instant::now() + UP_DEADLINE;
    loop {
        for (id, child) in &mut children {
            if let Ok(Some(status)) = child.try_wait() {
                forget_pid(dir, *id, child.id());
                return Err(EnsembleError::Failed(format!(
                    "server {id} exited at start ({status}); see {}:\n{}",
                    log_path(dir, *id).display(),
                    log_tail(&log_path(dir, *id))
                )));
            }
        }
        let observed = observe(dir, &plan);
        // `up` waits for every server it started, not just for a majority.
        match assess(&observed) {
            Verdict::Whole { .. } => {
                print!("{}{}", table(&plan, &observed), connect_lines(&plan, dir));
                return Ok(0);
            }
            Verdict::Degraded { missing: why, .. } | Verdict::NotServing(why) if Instant::now() >= deadline => {
                print!("{}", table(&plan, &observed));
                return Err(EnsembleError::Failed(format!(
                    "the ensemble did not come up within {} s: {why}. The servers keep running; see the server-N.log \
                     files in {}, check again with `referee coordinator ensemble status --dir {}`, stop them with \
                     `down`",
                    UP_DEADLINE.as_secs(),
                    dir.display(),
                    dir.display()
                )));
            }
            Verdict::Degraded { .. } | Verdict::NotServing(_) => std::thread::sleep(POLL),
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

/// `status`: each server's id, role, pid, mode and client address, then the [`Verdict`]. Exit
/// 0 while the ensemble serves (whole, or degraded: a majority of the voters follow one
/// leader, the line naming the servers that do not), 1 when it does not.
pub fn status(dir: &Path) -> Result<i32, EnsembleError> {
    let (marker, plan, dir) = existing(dir)?;
    let dir = dir.as_path();
    let observed = observe(dir, &plan);
    println!("ensemble in {} (cluster {})", dir.display(), marker.cluster_id);
    print!("{}", table(&plan, &observed));
    for o in &observed {
        if let PidState::Gone(pid) = o.pid {
            println!(
                "server {}: its pidfile names pid {pid}, which is gone (it crashed or was killed); `up` starts it \
                 again, `down` clears the pidfile",
                o.id
            );
        }
    }
    let verdict = assess(&observed);
    println!("{verdict}");
    if verdict.serves() {
        print!("{}", connect_lines(&plan, dir));
        Ok(0)
    } else {
        Ok(1)
    }
}

/// `down`: SIGTERM to every running server, SIGKILL to those still running at the deadline,
/// pidfiles removed, holding the directory's lock (`lock_dir`) throughout. The data is kept
/// unless `purge`, which removes everything `up` made.
pub fn down(dir: &Path, purge: bool) -> Result<i32, EnsembleError> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    // Looked at before the lock file is made, then again under the lock: `up` may have been
    // starting servers meanwhile.
    let (_, _, canonical) = existing(dir)?;
    let _lock = lock_dir(&canonical, say_waiting(&canonical))?;
    let (_, plan, dir) = existing(&canonical)?;
    let dir = dir.as_path();
    let mut running = Vec::new();
    for s in &plan.servers {
        match pid_state(dir, s.id) {
            PidState::Alive(pid) => {
                let raw = i32::try_from(pid).map_err(|_| EnsembleError::Failed(format!("pid {pid} out of range")))?;
                if kill(Pid::from_raw(raw), Signal::SIGTERM).is_ok() {
                    running.push((s.id, pid, raw));
                }
            }
            PidState::Gone(pid) => println!("server {}: pid {pid} was already gone; clearing its pidfile", s.id),
            PidState::NoPidfile => {}
        }
    }
    let deadline = Instant::now() + DOWN_DEADLINE;
    let mut stopped = Vec::new();
    while !running.is_empty() {
        running.retain(|&(id, pid, _)| {
            let alive = runs(pid, &config_path(dir, id));
            if !alive {
                stopped.push(id);
            }
            alive
        });
        if running.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for &(id, pid, raw) in &running {
                println!(
                    "server {id}: pid {pid} still running {} s after SIGTERM; sending SIGKILL",
                    DOWN_DEADLINE.as_secs()
                );
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
            let hard = Instant::now() + DOWN_DEADLINE;
            while running.iter().any(|&(id, pid, _)| runs(pid, &config_path(dir, id))) {
                if Instant::now() >= hard {
                    return Err(EnsembleError::Failed(format!(
                        "servers {:?} survived SIGKILL; their pidfiles are kept",
                        running.iter().map(|r| r.0).collect::<Vec<_>>()
                    )));
                }
                std::thread::sleep(POLL);
            }
            stopped.extend(running.iter().map(|r| r.0));
            break;
        }
        std::thread::sleep(POLL);
    }
    for s in &plan.servers {
        let pidfile = pid_path(dir, s.id);
        if let Err(e) = std::fs::remove_file(&pidfile) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(io(format!("removing {}", pidfile.display()))(e));
            }
        }
    }
    stopped.sort_unstable();
    if stopped.is_empty() {
        println!("no server was running");
    } else {
        println!("stopped server {}", stopped.iter().map(u64::to_string).collect::<Vec<_>>().join(", "));
    }
    if purge {
        for s in &plan.servers {
            let data = data_path(dir, s.id);
            if data.exists() {
                std::fs::remove_dir_all(&data).map_err(io(format!("removing {}", data.display())))?;
            }
            for file in [config_path(dir, s.id), log_path(dir, s.id)] {
                let _ = std::fs::remove_file(file);
            }
        }
        std::fs::remove_file(dir.join(MARKER)).map_err(io(format!("removing {}", dir.join(MARKER).display())))?;
        // Removed while held: a run waiting for it finds the directory gone (see `lock_dir`).
        let _ = std::fs::remove_file(dir.join(LOCK_NAME));
        // Only an emptied directory goes: anything else in it was not made by `up`.
        let _ = std::fs::remove_dir(dir);
        println!("purged the ensemble's data, configurations and logs from {}", dir.display());
    } else {
        println!(
            "data kept in {} (data-N/, server-N.yaml, server-N.log); `up` rejoins it, `down --purge` removes it",
            dir.display()
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ports_follow_zookeeper_habits() {
        let p = plan(3, 1, None).unwrap();
        let ports: Vec<(u64, Role, u16, u16, u16)> =
            p.servers.iter().map(|s| (s.id, s.role, s.client.port(), s.peer.port(), s.admin.port())).collect();
        assert_eq!(
            ports,
            vec![
                (1, Role::Voter, 2181, 2888, 8080),
                (2, Role::Voter, 2182, 2889, 8081),
                (3, Role::Voter, 2183, 2890, 8082),
                (4, Role::Observer, 2184, 2891, 8083),
            ]
        );
        assert_eq!(p.connect_string(), "127.0.0.1:2181,127.0.0.1:2182,127.0.0.1:2183,127.0.0.1:2184");
    }

    #[test]
    fn a_base_port_moves_all_three_ranges() {
        let p = plan(7, 9, Some(20_000)).unwrap();
        let last = p.servers.last().unwrap();
        assert_eq!((last.id, last.client.port(), last.peer.port(), last.admin.port()), (16, 20_015, 20_035, 20_055));
    }

    #[test]
    fn bad_counts_and_ports_are_refused_with_the_reason() {
        for (voters, observers, base, needle) in [
            (2, 0, None, "--servers 2: give 1, 3, 5 or 7"),
            (0, 0, None, "--servers 0"),
            (9, 0, None, "odd"),
            (3, 10, None, "--observers 10: give 0 to 9"),
            (3, 0, Some(80), "--base-port 80"),
            (3, 0, Some(65_500), "--base-port 65500"),
        ] {
            let err = plan(voters, observers, base).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            let text = err.to_string();
            let needle = if needle == "odd" { "majority" } else { needle };
            assert!(text.contains(needle), "{voters}/{observers}/{base:?}: {text}");
        }
    }

    #[test]
    fn configs_parse_as_coordinator_configs() {
        for (voters, observers) in [(3, 2), (1, 0)] {
            let p = plan(voters, observers, None).unwrap();
            let s = &p.servers[0];
            let yaml = render_config(&p, 42, s, Path::new("/tmp/x/data-1"));
            let config: referee_coordinator::config::CoordinatorConfig = serde_yaml::from_str(&yaml).unwrap();
            assert_eq!(config.listen, s.client);
            assert_eq!(config.admin_listen, Some(s.admin));
            if p.standalone() {
                assert!(config.servers.is_empty());
            } else {
                assert_eq!((config.cluster_id, config.server_id), (Some(42), Some(1)));
                assert_eq!(config.servers.len(), usize::from(voters + observers));
                assert_eq!(config.servers[4].role, referee_coordinator::config::Role::Observer);
            }
        }
    }

    #[test]
    fn generated_configs_grant_the_agents_default_session_timeout() {
        for (voters, observers) in [(3, 1), (1, 0)] {
            let p = plan(voters, observers, None).unwrap();
            for s in &p.servers {
                let yaml = render_config(&p, 42, s, Path::new("/tmp/x/data"));
                let config = referee_coordinator::config::CoordinatorConfig::from_yaml(&yaml)
                    .unwrap_or_else(|e| panic!("server {} of {voters}+{observers}: {e}\n{yaml}", s.id));
                // The failover agents ask for 2500 ms by default; a larger grant would delay
                // every host-loss failover behind the timings their documentation gives.
                assert_eq!(
                    config.negotiate_timeout(2500),
                    2500,
                    "server {} of {voters}+{observers} must grant the agents' default session timeout",
                    s.id
                );
            }
        }
    }

    #[test]
    fn the_status_table_keeps_its_columns_apart() {
        let p = plan(3, 1, None).unwrap();
        let observed = [
            (PidState::Alive(5010), Some(Mode::Leader)),
            (PidState::Gone(16_439), None),
            (PidState::Gone(4_194_304), Some(Mode::NotServing)),
            (PidState::NoPidfile, Some(Mode::Other("a-mode-longer-than-its-column".into()))),
        ]
        .into_iter()
        .zip(&p.servers)
        .map(|((pid, mode), s)| Observation { id: s.id, role: s.role, pid, mode, leader_named: None })
        .collect::<Vec<_>>();
        let text = table(&p, &observed);
        let lines: Vec<&str> = text.lines().collect();
        let cells = |line: &str| -> Vec<(usize, String)> {
            // A cell is what lies between runs of two or more spaces; single spaces belong to it.
            let mut out = Vec::new();
            let mut start = None;
            let bytes = line.as_bytes();
            for i in 0..=bytes.len() {
                let gap = i == bytes.len() || (bytes[i] == b' ' && matches!(bytes.get(i + 1), None | Some(b' ')));
                match (start, gap) {
                    (None, false) if bytes[i] != b' ' => start = Some(i),
                    (Some(s), true) => {
                        out.push((s, line[s..i].to_string()));
                        start = None;
                    }
                    _ => {}
                }
            }
            out
        };
        let header: Vec<usize> = cells(lines[0]).into_iter().map(|(at, _)| at).collect();
        let expected = [
            ["1", "voter", "5010", "leader", "127.0.0.1:2181"],
            ["2", "voter", "16439 gone", "not answering", "127.0.0.1:2182"],
            ["3", "voter", "4194304 gone", "not serving", "127.0.0.1:2183"],
            ["4", "observer", "stopped", "a-mode-longer-than-its-column", "127.0.0.1:2184"],
        ];
        for (line, want) in lines[1..].iter().zip(expected) {
            let got = cells(line);
            let texts: Vec<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
            assert_eq!(texts, want, "columns run together in:\n{text}");
            let starts: Vec<usize> = got.iter().map(|(at, _)| *at).collect();
            assert_eq!(starts, header, "columns not under their headings in:\n{text}");
        }
    }

    #[test]
    fn marker_round_trips() {
        for m in [
            Marker { cluster_id: 7, voters: 3, observers: 1, base_port: None },
            Marker { cluster_id: 9, voters: 1, observers: 0, base_port: Some(15_000) },
        ] {
            assert_eq!(Marker::parse(&m.render()), Some(m));
        }
        assert_eq!(Marker::parse("voters: 3\n"), None);
    }

    /// `up` passes --init to server 1 until some server's data directory holds a log: a first
    /// start that failed after making the data directories (a port taken, a full disk) never
    /// initialised the ensemble, and the next `up` must.
    #[test]
    fn the_ensemble_is_initialised_until_a_data_directory_holds_a_log() {
        let scratch = referee_testkit::ScratchDir::new("ensemble-init").unwrap();
        let dir = scratch.path("e");
        let p = plan(3, 0, None).unwrap();
        assert!(never_initialised(&dir, &p), "nothing made yet");
        // What a server that exited at start leaves: an identity, empty directories.
        std::fs::create_dir_all(data_path(&dir, 1).join("log")).unwrap();
        std::fs::write(data_path(&dir, 1).join("identity"), "x").unwrap();
        std::fs::create_dir_all(data_path(&dir, 2)).unwrap();
        assert!(never_initialised(&dir, &p), "data directories without a log");
        std::fs::create_dir_all(data_path(&dir, 3).join("log")).unwrap();
        std::fs::write(data_path(&dir, 3).join("log").join("log-00000000000000000000"), "x").unwrap();
        assert!(!never_initialised(&dir, &p), "a segment");
        std::fs::remove_dir_all(data_path(&dir, 3)).unwrap();
        std::fs::write(data_path(&dir, 1).join("log").join("raft-meta"), "x").unwrap();
        assert!(!never_initialised(&dir, &p), "a saved vote");
    }

    /// Two `up`s on one new directory each draw a cluster id: the configurations are rendered
    /// from the marker that made it to disk first, never from one's own draw.
    #[test]
    fn the_marker_on_disk_wins() {
        let scratch = referee_testkit::ScratchDir::new("ensemble-marker").unwrap();
        let dir = scratch.path("e");
        std::fs::create_dir_all(&dir).unwrap();
        let first = Marker { cluster_id: 11, voters: 3, observers: 0, base_port: None };
        let second = Marker { cluster_id: 22, ..first };
        assert_eq!(settle_marker(&dir, first).unwrap(), first);
        assert_eq!(settle_marker(&dir, second).unwrap(), first, "the one on disk");
        assert_eq!(read_marker(&dir).unwrap(), Some(first));
    }

    /// A pidfile is removed only by the run whose child it names: another run may have
    /// started the server since, and its pidfile is how `down` and `status` find it.
    #[test]
    fn a_pidfile_naming_another_process_is_kept() {
        let scratch = referee_testkit::ScratchDir::new("ensemble-pid").unwrap();
        let dir = scratch.path("e");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(pid_path(&dir, 2), "4242\n").unwrap();
        forget_pid(&dir, 2, 1717);
        assert_eq!(std::fs::read_to_string(pid_path(&dir, 2)).unwrap(), "4242\n", "another run's server");
        forget_pid(&dir, 2, 4242);
        assert!(!pid_path(&dir, 2).exists(), "this run's");
        forget_pid(&dir, 2, 4242);
    }

    /// One run at a time: a second waits, told which process holds the directory, and goes
    /// on when that one lets go; a lock file removed meanwhile (`down --purge`) is not trusted.
    #[test]
    fn the_directory_is_held_by_one_run_at_a_time() {
        let scratch = referee_testkit::ScratchDir::new("ensemble-dirlock").unwrap();
        let dir = scratch.path("e");
        std::fs::create_dir_all(&dir).unwrap();
        let first = lock_dir(&dir, |_| panic!("nobody holds it yet")).unwrap();
        let (told, holder) = std::sync::mpsc::channel();
        let (got, acquired) = std::sync::mpsc::channel();
        let waiter = {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let lock = lock_dir(&dir, move |pid| told.send(pid).unwrap()).unwrap();
                got.send(()).unwrap();
                drop(lock);
            })
        };
        let deadline = referee_testkit::DEADLINE;
        assert_eq!(holder.recv_timeout(deadline).unwrap(), Some(std::process::id()), "the holder is named");
        assert!(acquired.try_recv().is_err(), "not while the first holds it");
        drop(first);
        acquired.recv_timeout(deadline).unwrap();
        waiter.join().unwrap();
        // Removed by its holder, the file is made again for the next run.
        let held = lock_dir(&dir, |_| panic!("free")).unwrap();
        std::fs::remove_file(dir.join(LOCK_NAME)).unwrap();
        drop(held);
        drop(lock_dir(&dir, |_| panic!("free")).unwrap());
        assert!(dir.join(LOCK_NAME).exists());
        // An ensemble directory is one with a marker, whatever the lock file.
        assert_eq!(read_marker(&dir).unwrap(), None, "only the lock file: a new ensemble");
    }

    #[test]
    fn srvr_modes_are_read() {
        let srvr = "Zookeeper version: 3.8.0\nLatency min/avg/max: 0/0/0\nMode: follower\nNode count: 4\n";
        assert_eq!(parse_mode(srvr), Some(Mode::Follower));
        assert_eq!(parse_mode("Mode: leader\n"), Some(Mode::Leader));
        assert_eq!(parse_mode("Mode: read-only\n"), Some(Mode::Other("read-only".into())));
        assert_eq!(parse_mode("This ZooKeeper instance is not currently serving requests\n"), Some(Mode::NotServing));
        assert_eq!(Mode::NotServing.to_string(), "not serving");
        assert_eq!(parse_mode("imok"), None);
    }

    #[test]
    fn an_ensemble_serves_while_a_majority_of_its_voters_follow_one_leader() {
        let named = |id, mode: Option<Mode>, leader_named| Observation {
            id,
            role: if id <= 3 { Role::Voter } else { Role::Observer },
            pid: PidState::Alive(100 + id as u32),
            mode,
            leader_named,
        };
        let obs = |id, mode| named(id, mode, Some(2));
        let degraded = |leader, missing: &str| Verdict::Degraded { leader, missing: missing.into() };
        let not_serving = |why: &str| Verdict::NotServing(why.into());
        let serving = [obs(1, Some(Mode::Follower)), obs(2, Some(Mode::Leader)), obs(3, Some(Mode::Follower))];
        assert_eq!(assess(&serving), Verdict::Whole { leader: 2 });
        assert_eq!(assess(&serving).to_string(), "serving: server 2 leads");
        assert_eq!(assess(&[named(1, Some(Mode::Standalone), None)]), Verdict::Whole { leader: 1 });
        let with = |fourth| [serving[0].clone(), serving[1].clone(), serving[2].clone(), fourth];
        assert_eq!(assess(&with(obs(4, Some(Mode::Observer)))), Verdict::Whole { leader: 2 });

        // One voter of three down: the other two serve every client.
        let one_down = [obs(1, Some(Mode::Follower)), obs(2, Some(Mode::Leader)), obs(3, None)];
        assert_eq!(assess(&one_down), degraded(2, "server 3 not answering"));
        assert_eq!(assess(&one_down).to_string(), "serving, degraded: server 2 leads; server 3 not answering");
        assert!(assess(&one_down).serves());
        // A follower that has not heard from the leader yet, or one not serving: degraded.
        let catching_up =
            [named(1, Some(Mode::Follower), None), obs(2, Some(Mode::Leader)), obs(3, Some(Mode::Follower))];
        assert_eq!(assess(&catching_up), degraded(2, "server 1 does not name server 2 as its leader yet"));
        assert_eq!(
            assess(&[obs(1, Some(Mode::NotServing)), obs(2, Some(Mode::Leader)), obs(3, Some(Mode::Follower))]),
            degraded(
                2,
                "server 1 running but not serving: no leader found since it started, or none heard from within its \
                 staleness bound (its log says which, and what it waits for)"
            )
        );
        // An observer down: every voter follows.
        assert_eq!(assess(&with(obs(4, None))), degraded(2, "server 4 not answering"));

        // Two voters of three down: no majority, whoever still says it leads.
        let two_down = [obs(1, None), obs(2, Some(Mode::Leader)), obs(3, None)];
        assert_eq!(
            assess(&two_down),
            not_serving("server 1, 3 not answering; 1 of the 3 voters follows server 2, a majority needed")
        );
        assert!(!assess(&two_down).serves());
        assert!(assess(&two_down).to_string().starts_with("not serving: server 1, 3 not answering"));
        // Observers do not stand in for voters.
        let observers_only = [obs(1, None), obs(2, Some(Mode::Leader)), obs(3, None), obs(4, Some(Mode::Observer))];
        assert!(!assess(&observers_only).serves());
        assert_eq!(
            assess(&[obs(1, Some(Mode::Follower)), obs(2, Some(Mode::Follower)), obs(3, None)]),
            not_serving("server 3 not answering; no server leads")
        );
        assert_eq!(
            assess(&[obs(1, Some(Mode::Leader)), obs(2, Some(Mode::Leader))]),
            not_serving("2 servers say they lead ([1, 2])")
        );
    }
}
