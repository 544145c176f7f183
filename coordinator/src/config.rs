//! The coordinator's YAML configuration, validated before anything starts.
//!
//! Unknown keys are refused (a typo must not silently fall back to a default) and impossible
//! values are refused with the key named and what to change, never adjusted.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use thiserror::Error;

/// Why a configuration was refused.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read coordinator config {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML does not parse, or has an unknown key or a value of the wrong type.
    #[error("invalid coordinator config: {0}")]
    Parse(String),
    /// A value is out of range or contradicts another.
    #[error("invalid coordinator config: `{key}` {problem}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// What is wrong and what to do.
        problem: String,
    },
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 2181))
}
fn default_tick_ms() -> u64 {
    2000
}
fn default_max_packet_bytes() -> usize {
    0xfffff
}
fn default_max_connections_per_address() -> u32 {
    60
}
fn default_handshake_timeout_ms() -> u64 {
    10_000
}
fn default_max_outstanding_requests() -> usize {
    1000
}
fn default_max_outstanding_request_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_queued_outbound_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_max_watches_per_connection() -> usize {
    10_000
}
fn default_max_path_bytes() -> usize {
    4096
}

/// Coordinator settings (`config/coordinator.yaml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Client address to listen on (ZooKeeper's clientPortAddress:clientPort).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Where durable state lives: the identity file, the Raft log (`log/`) and the snapshots
    /// (`snapshots/`). One directory per server; another cluster's or server's is refused.
    pub data_dir: PathBuf,
    /// The cluster this server belongs to, written into its data directory on first start and
    /// checked on every later one. Unset: a new data directory gets a random id, an existing
    /// one keeps its own. Every server of an ensemble is given the same id.
    #[serde(default)]
    pub cluster_id: Option<u64>,
    /// A snapshot of the tree is written after this many transactions (ZooKeeper's snapCount;
    /// a log entry carries a batch of them), and the log before it is purged, keeping a margin
    /// back to the previous snapshot. Also read under its former name `snapshot_every_entries`.
    #[serde(default = "default_snapshot_every_txns", alias = "snapshot_every_entries")]
    pub snapshot_every_txns: u64,
    /// A snapshot is also written once this many bytes of transactions have been logged since
    /// the last (ZooKeeper's snapSizeLimitInKb), whichever threshold comes first; 0 for none.
    /// The log, on disk and in memory, is kept back to the snapshot before last: this bounds
    /// it when large znodes are rewritten over and over, which `snapshot_every_txns` alone
    /// does not (100,000 rewrites of a 1 MB znode are 100 GB).
    #[serde(default = "default_snapshot_every_bytes")]
    pub snapshot_every_bytes: u64,
    /// Snapshot files kept; older ones are removed once a new one is durable
    /// (ZooKeeper's autopurge.snapRetainCount).
    #[serde(default = "default_snapshots_to_keep")]
    pub snapshots_to_keep: usize,
    /// How long a write or fdatasync of the log (or of the saved vote) may go without
    /// returning before the server takes its disk for stalled and stops, as it does when an
    /// fsync fails: a leader whose disk hangs would otherwise hold every write of the ensemble,
    /// while it still sends heartbeats that keep the others from electing another. 0 never
    /// stops (ZooKeeper's fsync.warningthresholdms only warns); an fdatasync over 20 ms is
    /// logged either way.
    #[serde(default = "default_log_sync_stall_ms")]
    pub log_sync_stall_ms: u64,
    /// Base time unit in ms (ZooKeeper's tickTime): the default session timeout bounds are 2
    /// and 20 ticks; sessions expire within a tick of their timeout, or within 10 ms if the
    /// tick is longer (see [`crate::session`]).
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Smallest session timeout granted; default 2 × tick. In an ensemble at least
    /// [`ensemble_min_session_timeout_ms`] (200 ms).
    #[serde(default)]
    pub min_session_timeout_ms: Option<u64>,
    /// Largest session timeout granted; default 20 × tick.
    #[serde(default)]
    pub max_session_timeout_ms: Option<u64>,
    /// Largest packet accepted from a client (ZooKeeper's jute.maxbuffer), and largest reply
    /// built for one: a read whose reply would be larger, or a multi whose reply could be, is
    /// answered with an error instead, before anything is proposed (its connection goes on);
    /// an applied write whose reply still would be closes its connection (the client hears
    /// ConnectionLoss, never an error for a write that happened).
    #[serde(default = "default_max_packet_bytes")]
    pub max_packet_bytes: usize,
    /// Requests one connection may have waiting for their replies; at the limit the server
    /// stops reading from it until replies go out (ZooKeeper's maxOutstanding throttle).
    #[serde(default = "default_max_outstanding_requests")]
    pub max_outstanding_requests: usize,
    /// Bytes of one connection's requests that may wait for their replies; at the limit the
    /// server stops reading from it, as for `max_outstanding_requests`. At least
    /// `max_packet_bytes`.
    #[serde(default = "default_max_outstanding_request_bytes")]
    pub max_outstanding_request_bytes: usize,
    /// Bytes of watch notifications that may wait for one client to read them; past it the
    /// connection is closed (a client that does not read must not hold server memory). While
    /// one of its writes waits for its outcome, notifications cannot be sent (those of later
    /// changes go after the write's reply) and up to four times this may wait.
    #[serde(default = "default_max_queued_outbound_bytes")]
    pub max_queued_outbound_bytes: usize,
    /// Watches one connection may hold; a read that would leave one more is answered
    /// QuotaExceeded and registers nothing.
    #[serde(default = "default_max_watches_per_connection")]
    pub max_watches_per_connection: usize,
    /// Longest path, in bytes, a request may name; longer ones are answered BadArguments.
    #[serde(default = "default_max_path_bytes")]
    pub max_path_bytes: usize,
    /// Connections allowed from one client address (ZooKeeper's maxClientCnxns); 0 = unlimited.
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: u32,
    /// How long a new connection may take to send its ConnectRequest, and a four-letter word's
    /// client to take its answer.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// A digest id (`super:base64(sha1("super:password"))`) whose holder bypasses every ACL, as
    /// ZooKeeper's `DigestAuthenticationProvider.superDigest`.
    #[serde(default)]
    pub super_digest: Option<String>,
    /// Four-letter words answered on the client port (ZooKeeper's 4lw.commands.whitelist); `*`
    /// enables every implemented one. By default the cheap read-only ones are on; the ones
    /// that walk every watch, session or file (`wchc`, `wchp`, `dump`, `dirs`) are off, as
    /// Apache ZooKeeper's whitelist has them.
    #[serde(default = "default_four_letter_words")]
    pub four_letter_words: Vec<String>,
    /// Allow TTL nodes (ZooKeeper's zookeeper.extendedTypesEnabled, off by default there too).
    /// Every server of an ensemble must agree.
    #[serde(default)]
    pub extended_types_enabled: bool,
    /// How often empty containers and expired TTL nodes are looked for and deleted
    /// (ZooKeeper's znode.container.checkIntervalMs).
    #[serde(default = "default_container_check_interval_ms")]
    pub container_check_interval_ms: u64,
    /// The staleness bound of an ensemble server: a follower or observer that has accepted
    /// nothing from a leader for this long, or had none of its liveness reports acknowledged
    /// (a leader acknowledges them only while a quorum confirms it), or a leader that has had
    /// no quorum confirm it for this long, closes its clients' connections and refuses new
    /// sessions until contact resumes (ZooKeeper's syncLimit × tickTime for a follower). What
    /// its clients read is then never staler than this plus one check (at most 100 ms). It is
    /// also the longest a reply waits for its session's liveness to be confirmed. Session
    /// liveness has its own, tighter bound, whatever this one is (see [`crate::liveness`]):
    /// agents on such an ensemble set `coordinator.max_staleness_ms` to 100. Ignored by a
    /// server alone.
    #[serde(default = "default_max_leader_silence_ms")]
    pub max_leader_silence_ms: u64,
    /// This server's id among `servers` (ZooKeeper's myid). Unset: 1, the id of a single
    /// server. Set only together with `servers`.
    #[serde(default)]
    pub server_id: Option<u64>,
    /// The servers of the ensemble, this one included (ZooKeeper's `server.N` lines). Empty:
    /// this server runs alone, as a one-voter cluster. Every server of an ensemble lists the
    /// same servers.
    #[serde(default)]
    pub servers: Vec<ServerEntry>,
    /// Address of the admin HTTP listener (ZooKeeper's admin.serverAddress:admin.serverPort),
    /// off when left out. It serves `GET /metrics` (Prometheus text), `GET /members` (the
    /// ensemble's membership as JSON, with each member's replication lag on the leader), and on
    /// the leader `POST /members` and `DELETE /members/{id}` to add and remove servers; see
    /// [`crate::admin`]. It has no authentication: bind it to loopback or a management network.
    #[serde(default)]
    pub admin_listen: Option<SocketAddr>,
}

/// What a server does in the ensemble.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Votes in elections and counts towards the write quorum (a ZooKeeper participant).
    Voter,
    /// Receives the log and serves clients but never votes nor counts towards a quorum (a
    /// ZooKeeper observer; an openraft learner). Losing observers never costs quorum.
    Observer,
}

/// One server of the ensemble (`servers:` list entry).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerEntry {
    /// The server's id: non-zero, unique, never reused for another data directory.
    pub id: u64,
    /// Where its clients connect (its `listen` address).
    pub client: SocketAddr,
    /// Where the other servers reach it for replication (ZooKeeper's quorum port).
    pub peer: SocketAddr,
    /// Voter or observer; voter when left out.
    #[serde(default = "default_role")]
    pub role: Role,
    /// Its admin HTTP address (its `admin_listen`), if it has one: where a follower sends an
    /// admin client that asked it for something only the leader does.
    #[serde(default)]
    pub admin: Option<SocketAddr>,
}

fn default_role() -> Role {
    Role::Voter
}

fn default_four_letter_words() -> Vec<String> {
    crate::fourlw::IMPLEMENTED.iter().filter(|w| !crate::fourlw::HEAVY.contains(w)).map(|s| s.to_string()).collect()
}

fn default_max_leader_silence_ms() -> u64 {
    1000
}

fn default_container_check_interval_ms() -> u64 {
    60_000
}

fn default_snapshot_every_txns() -> u64 {
    100_000
}

fn default_snapshot_every_bytes() -> u64 {
    64 << 20
}

fn default_snapshots_to_keep() -> usize {
    3
}

fn default_log_sync_stall_ms() -> u64 {
    5_000
}

/// The smallest session timeout an ensemble server grants, in ms: the delays of session
/// liveness on a server that does not lead (see [`crate::liveness`]), `SLACK + PROOF_AGE + 2 ×
/// REPORT_EVERY`. A shorter session could expire on the leader between two reports of a busy
/// client, and its pings' replies, which wait for a report's acknowledgement, miss the
/// client's read timeout (two thirds of the session's).
pub fn ensemble_min_session_timeout_ms() -> u64 {
    use crate::liveness::{PROOF_AGE, REPORT_EVERY, SLACK};
    (SLACK + PROOF_AGE + 2 * REPORT_EVERY).as_millis() as u64
}

impl CoordinatorConfig {
    /// How long a write or fdatasync of the log may hang before the server stops (`log_sync_stall_ms`), if ever.
    pub fn log_sync_stall(&self) -> Option<std::time::Duration> {
        (self.log_sync_stall_ms != 0).then(|| std::time::Duration::from_millis(self.log_sync_stall_ms))
    }

    /// A configuration with defaults, for tests and embedding.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        CoordinatorConfig {
            listen: default_listen(),
            data_dir: data_dir.into(),
            cluster_id: None,
            snapshot_every_txns: default_snapshot_every_txns(),
            snapshot_every_bytes: default_snapshot_every_bytes(),
            snapshots_to_keep: default_snapshots_to_keep(),
            log_sync_stall_ms: default_log_sync_stall_ms(),
            tick_ms: default_tick_ms(),
            min_session_timeout_ms: None,
            max_session_timeout_ms: None,
            max_packet_bytes: default_max_packet_bytes(),
            max_outstanding_requests: default_max_outstanding_requests(),
            max_outstanding_request_bytes: default_max_outstanding_request_bytes(),
            max_queued_outbound_bytes: default_max_queued_outbound_bytes(),
            max_watches_per_connection: default_max_watches_per_connection(),
            max_path_bytes: default_max_path_bytes(),
            max_connections_per_address: default_max_connections_per_address(),
            handshake_timeout_ms: default_handshake_timeout_ms(),
            super_digest: None,
            four_letter_words: default_four_letter_words(),
            extended_types_enabled: false,
            container_check_interval_ms: default_container_check_interval_ms(),
            max_leader_silence_ms: default_max_leader_silence_ms(),
            server_id: None,
            servers: Vec::new(),
            admin_listen: None,
        }
    }

    /// This server's id: `server_id`, or 1 for a server running alone.
    pub fn server_id(&self) -> u64 {
        self.server_id.unwrap_or(1)
    }

    /// Whether this server runs in an ensemble of more than one server.
    pub fn is_ensemble(&self) -> bool {
        self.servers.len() > 1
    }

    /// This server's own entry in `servers` (present in a validated configuration that lists
    /// servers).
    pub fn this_server(&self) -> Option<&ServerEntry> {
        self.servers.iter().find(|s| s.id == self.server_id())
    }

    /// The ids of the voters.
    pub fn voters(&self) -> BTreeSet<u64> {
        self.servers.iter().filter(|s| s.role == Role::Voter).map(|s| s.id).collect()
    }

    /// The ids of the observers (openraft learners).
    pub fn observers(&self) -> BTreeSet<u64> {
        self.servers.iter().filter(|s| s.role == Role::Observer).map(|s| s.id).collect()
    }

    /// Every server's peer address, by id.
    pub fn peer_addresses(&self) -> BTreeMap<u64, String> {
        self.servers.iter().map(|s| (s.id, s.peer.to_string())).collect()
    }

    /// Sound but unwise ensemble shapes, one sentence each, for the server to log at start.
    pub fn advice(&self) -> Vec<String> {
        let voters = self.voters().len();
        let mut out = Vec::new();
        if self.servers.is_empty() {
            return out;
        }
        if voters.is_multiple_of(2) {
            out.push(format!(
                "servers lists {voters} voters, which survive the loss of {} of them, as {} voters do; \
                 use 1, 3 or 5 voters (make one an observer, or add one)",
                (voters - 1) / 2,
                voters - 1
            ));
        } else if voters > 5 {
            out.push(format!(
                "servers lists {voters} voters: every write waits for {} of them; 3 or 5 voters with \
                 observers for read capacity are advised",
                voters / 2 + 1
            ));
        }
        out
    }

    /// Parses and validates YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let cfg: CoordinatorConfig = serde_yaml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_yaml(&text)
    }

    /// The effective minimum session timeout.
    pub fn min_session_timeout_ms(&self) -> u64 {
        self.min_session_timeout_ms.unwrap_or(2 * self.tick_ms)
    }

    /// The effective maximum session timeout.
    pub fn max_session_timeout_ms(&self) -> u64 {
        self.max_session_timeout_ms.unwrap_or(20 * self.tick_ms)
    }

    /// Clamps a requested session timeout into [min, max], as ZooKeeper negotiates it.
    pub fn negotiate_timeout(&self, requested_ms: i32) -> i32 {
        let requested = requested_ms.max(0) as u64;
        requested.clamp(self.min_session_timeout_ms(), self.max_session_timeout_ms()) as i32
    }

    /// Whether a four-letter word is whitelisted.
    pub fn four_letter_word_enabled(&self, cmd: &str) -> bool {
        self.four_letter_words.iter().any(|w| w == "*" || w == cmd)
    }

    /// Checks ranges and cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: String| Err(ConfigError::Invalid { key, problem });
        if !(10..=60_000).contains(&self.tick_ms) {
            return invalid("tick_ms", format!("is {}; use a value from 10 to 60000 (ms)", self.tick_ms));
        }
        let (min, max) = (self.min_session_timeout_ms(), self.max_session_timeout_ms());
        if min < self.tick_ms {
            return invalid(
                "min_session_timeout_ms",
                format!(
                    "is {min}; it must be at least one tick ({} ms) for expiry to be checked in time",
                    self.tick_ms
                ),
            );
        }
        let floor = ensemble_min_session_timeout_ms();
        if self.is_ensemble() && min < floor {
            use crate::liveness::{PROOF_AGE, REPORT_EVERY, SLACK};
            return invalid(
                "min_session_timeout_ms",
                format!(
                    "is {min}{}; in an ensemble it must be at least {floor} ms: a server that does not lead \
                     touches its sessions on the leader only through liveness reports, sent every \
                     REPORT_EVERY ({} ms), acknowledged under a proof of leadership up to PROOF_AGE ({} ms) old, \
                     and its replies promise the session for its timeout less SLACK ({} ms); SLACK + PROOF_AGE + \
                     2 × REPORT_EVERY is {floor} ms. Set min_session_timeout_ms to {floor} or more",
                    if self.min_session_timeout_ms.is_none() {
                        format!(" (2 ticks of {} ms)", self.tick_ms)
                    } else {
                        String::new()
                    },
                    REPORT_EVERY.as_millis(),
                    PROOF_AGE.as_millis(),
                    SLACK.as_millis(),
                ),
            );
        }
        if max < min {
            return invalid(
                "max_session_timeout_ms",
                format!("is {max}, below min_session_timeout_ms ({min}); raise it or lower the minimum"),
            );
        }
        if max > i32::MAX as u64 {
            return invalid("max_session_timeout_ms", format!("is {max}; the protocol carries at most {}", i32::MAX));
        }
        // A write is one transaction of a Raft entry, which an ensemble's peer link carries in
        // one message of at most 32 MiB: a request may be at most half that.
        if !(1024..=16 * 1024 * 1024).contains(&self.max_packet_bytes) {
            return invalid(
                "max_packet_bytes",
                format!(
                    "is {}; use a value from 1024 to 16777216 (ZooKeeper's default is 1048575)",
                    self.max_packet_bytes
                ),
            );
        }
        if !(1..=1_000_000).contains(&self.max_outstanding_requests) {
            return invalid(
                "max_outstanding_requests",
                format!("is {}; use a value from 1 to 1000000 (default 1000)", self.max_outstanding_requests),
            );
        }
        if self.max_outstanding_request_bytes < self.max_packet_bytes
            || self.max_outstanding_request_bytes > 1024 * 1024 * 1024
        {
            return invalid(
                "max_outstanding_request_bytes",
                format!(
                    "is {}; use a value from max_packet_bytes ({}) to 1073741824 (default 4194304): a smaller one \
                     could never admit the largest request",
                    self.max_outstanding_request_bytes, self.max_packet_bytes
                ),
            );
        }
        if !(64 * 1024..=1024 * 1024 * 1024).contains(&self.max_queued_outbound_bytes) {
            return invalid(
                "max_queued_outbound_bytes",
                format!(
                    "is {}; use a value from 65536 to 1073741824 (default 4194304)",
                    self.max_queued_outbound_bytes
                ),
            );
        }
        if !(1..=10_000_000).contains(&self.max_watches_per_connection) {
            return invalid(
                "max_watches_per_connection",
                format!("is {}; use a value from 1 to 10000000 (default 10000)", self.max_watches_per_connection),
            );
        }
        if self.max_path_bytes < 64 || self.max_path_bytes > self.max_packet_bytes {
            return invalid(
                "max_path_bytes",
                format!(
                    "is {}; use a value from 64 to max_packet_bytes ({}) (default 4096)",
                    self.max_path_bytes, self.max_packet_bytes
                ),
            );
        }
        if self.handshake_timeout_ms == 0 {
            return invalid("handshake_timeout_ms", "is 0; give new connections some ms to say hello".into());
        }
        if let Some(d) = &self.super_digest {
            if d.split_once(':').is_none_or(|(u, h)| u.is_empty() || h.is_empty()) {
                return invalid("super_digest", "must look like user:base64digest".into());
            }
        }
        for w in &self.four_letter_words {
            if w != "*" && !crate::fourlw::IMPLEMENTED.contains(&w.as_str()) {
                return invalid(
                    "four_letter_words",
                    format!(
                        "names {w:?}, which this server does not implement; use some of {:?} or \"*\"",
                        crate::fourlw::IMPLEMENTED
                    ),
                );
            }
        }
        if !(300..=60_000).contains(&self.max_leader_silence_ms) {
            return invalid(
                "max_leader_silence_ms",
                format!(
                    "is {}; use a value from 300 (three leader heartbeats) to 60000 (ms)",
                    self.max_leader_silence_ms
                ),
            );
        }
        if !(10..=3_600_000).contains(&self.container_check_interval_ms) {
            return invalid(
                "container_check_interval_ms",
                format!("is {}; use a value from 10 to 3600000 (ms)", self.container_check_interval_ms),
            );
        }
        if self.cluster_id == Some(0) {
            return invalid("cluster_id", "is 0; give a non-zero id, or leave it out to have one generated".into());
        }
        if !(10..=100_000_000).contains(&self.snapshot_every_txns) {
            return invalid(
                "snapshot_every_txns",
                format!("is {}; use a value from 10 to 100000000 (default 100000)", self.snapshot_every_txns),
            );
        }
        if self.snapshot_every_bytes != 0 && !((1 << 20)..=(1 << 40)).contains(&self.snapshot_every_bytes) {
            return invalid(
                "snapshot_every_bytes",
                format!(
                    "is {}; use 0 (snapshots by transactions only) or a value from 1048576 (1 MiB) to \
                     1099511627776 (1 TiB) (default 67108864, 64 MiB)",
                    self.snapshot_every_bytes
                ),
            );
        }
        if self.log_sync_stall_ms != 0 && !(500..=3_600_000).contains(&self.log_sync_stall_ms) {
            return invalid(
                "log_sync_stall_ms",
                format!(
                    "is {}; use 0 (never stop on a slow disk) or a value from 500 to 3600000 ms (default 5000)",
                    self.log_sync_stall_ms
                ),
            );
        }
        if !(2..=1000).contains(&self.snapshots_to_keep) {
            return invalid(
                "snapshots_to_keep",
                format!(
                    "is {}; use a value from 2 to 1000 (default 3): with one, a damaged snapshot has \
                     nothing older to fall back on",
                    self.snapshots_to_keep
                ),
            );
        }
        if self.admin_listen == Some(self.listen) {
            return invalid(
                "admin_listen",
                format!("is {}, the client address `listen` too; give the admin listener its own port", self.listen),
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            return invalid("data_dir", "is empty; name a directory for durable state".into());
        }
        self.validate_servers()
    }

    /// The ensemble's rules: unique ids and addresses, this server listed with `listen` as its
    /// client address, at least one voter, a shared cluster id.
    fn validate_servers(&self) -> Result<(), ConfigError> {
        let invalid = |key, problem: String| Err(ConfigError::Invalid { key, problem });
        if self.servers.is_empty() {
            if let Some(id) = self.server_id {
                return invalid(
                    "server_id",
                    format!("is {id} but `servers` is empty; list the ensemble's servers, or leave server_id out for a server running alone"),
                );
            }
            return Ok(());
        }
        if self.server_id == Some(0) {
            return invalid("server_id", "is 0; server ids start at 1".into());
        }
        let mut ids = BTreeSet::new();
        let mut addrs: BTreeMap<SocketAddr, String> = BTreeMap::new();
        for s in &self.servers {
            if s.id == 0 {
                return invalid("servers", "lists a server with id 0; server ids start at 1".into());
            }
            if !ids.insert(s.id) {
                return invalid("servers", format!("lists id {} twice; give every server its own id", s.id));
            }
            let admin = s.admin.map(|a| (a, format!("the admin address of server {}", s.id)));
            for (addr, what) in [
                (s.client, format!("the client address of server {}", s.id)),
                (s.peer, format!("the peer address of server {}", s.id)),
            ]
            .into_iter()
            .chain(admin)
            {
                if let Some(first) = addrs.insert(addr, what.clone()) {
                    return invalid(
                        "servers",
                        format!("gives {addr} as both {first} and {what}; every address must be different"),
                    );
                }
                if addr.port() == 0 {
                    return invalid(
                        "servers",
                        format!("gives {addr} as {what}; name a fixed port, the other servers must know it"),
                    );
                }
            }
        }
        let me = self.server_id();
        let Some(mine) = self.this_server() else {
            let hint = if self.server_id.is_none() { " (server_id is unset, so 1)" } else { "" };
            return invalid(
                "server_id",
                format!(
                    "is {me}{hint}, which `servers` does not list (ids {ids:?}); set server_id to this server's id"
                ),
            );
        };
        if mine.client != self.listen {
            return invalid(
                "listen",
                format!(
                    "is {} but `servers` gives {} as server {me}'s client address; make them the same",
                    self.listen, mine.client
                ),
            );
        }
        if let (Some(listen), Some(listed)) = (self.admin_listen, mine.admin) {
            if listen != listed {
                return invalid(
                    "admin_listen",
                    format!(
                        "is {listen} but `servers` gives {listed} as server {me}'s admin address; make them the same"
                    ),
                );
            }
        }
        if self.voters().is_empty() {
            return invalid("servers", "lists no voter; an ensemble needs 1, 3 or 5 voters to elect a leader".into());
        }
        if self.cluster_id.is_none() {
            return invalid(
                "cluster_id",
                "is unset but `servers` lists an ensemble; give every server the same non-zero cluster_id (servers of different clusters refuse each other)".into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_configs_are_valid() {
        for text in
            [include_str!("../../config/coordinator.yaml"), include_str!("../../config/coordinator-coord1.yaml")]
        {
            let c = CoordinatorConfig::from_yaml(text).unwrap_or_else(|e| panic!("{e}"));
            // The failover agents ask for 2500 ms by default; a larger grant would delay every
            // host-loss failover behind the timings their documentation gives.
            assert_eq!(
                c.negotiate_timeout(2500),
                2500,
                "a shipped config must grant the agents' default session timeout"
            );
        }
    }

    #[test]
    fn defaults_follow_zookeeper() {
        let c = CoordinatorConfig::from_yaml("data_dir: /tmp/x\n").unwrap();
        assert_eq!(c.listen.port(), 2181);
        assert_eq!((c.min_session_timeout_ms(), c.max_session_timeout_ms()), (4000, 40000));
        assert_eq!(c.negotiate_timeout(100), 4000);
        assert_eq!(c.negotiate_timeout(1_000_000), 40000);
        assert_eq!(c.negotiate_timeout(6000), 6000);
        assert_eq!(c.max_packet_bytes, 1_048_575);
        assert_eq!(c.max_outstanding_requests, 1000);
        assert_eq!(c.max_outstanding_request_bytes, 4 * 1024 * 1024);
        assert_eq!(c.max_queued_outbound_bytes, 4 * 1024 * 1024);
        assert_eq!(c.max_watches_per_connection, 10_000);
        assert_eq!(c.max_path_bytes, 4096);
        assert_eq!((c.cluster_id, c.snapshot_every_txns, c.snapshots_to_keep), (None, 100_000, 3));
        assert_eq!(c.snapshot_every_bytes, 64 << 20);
        assert_eq!(c.log_sync_stall(), Some(std::time::Duration::from_secs(5)));
        for heavy in ["wchc", "wchp", "dump", "dirs"] {
            assert!(!c.four_letter_word_enabled(heavy), "{heavy} is on by default");
        }
        for light in ["ruok", "srvr", "stat", "mntr", "conf", "cons", "envi", "isro", "wchs"] {
            assert!(c.four_letter_word_enabled(light), "{light} is off by default");
        }
    }

    #[test]
    fn refuses_limits_out_of_range_naming_the_key() {
        for (yaml, key) in [
            ("max_outstanding_requests: 0", "max_outstanding_requests"),
            ("max_outstanding_request_bytes: 1000", "max_outstanding_request_bytes"),
            ("max_queued_outbound_bytes: 10", "max_queued_outbound_bytes"),
            ("max_watches_per_connection: 0", "max_watches_per_connection"),
            ("max_path_bytes: 10", "max_path_bytes"),
            // A write that large would not fit in one message of an ensemble's peer link.
            ("max_packet_bytes: 16777217\nmax_outstanding_request_bytes: 1073741824", "`max_packet_bytes` is 16777217"),
            ("max_packet_bytes: 1000", "max_packet_bytes"),
            ("max_path_bytes: 2000000", "max_path_bytes"),
            ("cluster_id: 0", "cluster_id"),
            ("snapshot_every_txns: 1", "snapshot_every_txns"),
            ("snapshot_every_entries: 1", "snapshot_every_txns"),
            ("snapshot_every_bytes: 1000", "snapshot_every_bytes"),
            ("log_sync_stall_ms: 100", "log_sync_stall_ms"),
            ("log_sync_stall_ms: 4000000", "log_sync_stall_ms"),
            ("max_leader_silence_ms: 100", "max_leader_silence_ms"),
            ("max_leader_silence_ms: 600000", "max_leader_silence_ms"),
            ("snapshots_to_keep: 1", "snapshots_to_keep"),
        ] {
            let e = CoordinatorConfig::from_yaml(&format!("data_dir: /x\n{yaml}\n")).unwrap_err().to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
    }

    const ENSEMBLE: &str = "data_dir: /x
cluster_id: 7
server_id: 2
listen: 127.0.0.1:2182
servers:
  - { id: 1, client: 127.0.0.1:2181, peer: 127.0.0.1:2881 }
  - { id: 2, client: 127.0.0.1:2182, peer: 127.0.0.1:2882, role: voter }
  - { id: 3, client: 127.0.0.1:2183, peer: 127.0.0.1:2883 }
  - { id: 4, client: 127.0.0.1:2184, peer: 127.0.0.1:2884, role: observer }
";

    #[test]
    fn an_ensemble_lists_voters_and_observers() {
        let c = CoordinatorConfig::from_yaml(ENSEMBLE).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.is_ensemble());
        assert_eq!(c.server_id(), 2);
        assert_eq!(c.this_server().map(|s| s.peer.port()), Some(2882));
        assert_eq!(c.voters(), BTreeSet::from([1, 2, 3]));
        assert_eq!(c.observers(), BTreeSet::from([4]));
        assert_eq!(c.peer_addresses().get(&4).map(String::as_str), Some("127.0.0.1:2884"));
        assert_eq!(c.advice(), Vec::<String>::new());
        assert_eq!(c.admin_listen, None, "the admin listener is off unless configured");
        let with_admin = ENSEMBLE.replace("role: voter }", "role: voter, admin: 127.0.0.1:8082 }")
            + "admin_listen: 127.0.0.1:8082\n";
        let c = CoordinatorConfig::from_yaml(&with_admin).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.admin_listen.map(|a| a.port()), Some(8082));
        assert_eq!(c.this_server().and_then(|s| s.admin).map(|a| a.port()), Some(8082));
        let alone = CoordinatorConfig::from_yaml("data_dir: /x\n").unwrap();
        assert!(!alone.is_ensemble());
        assert_eq!((alone.server_id(), alone.this_server()), (1, None));
        assert!(alone.advice().is_empty());
    }

    #[test]
    fn the_commented_ensemble_in_the_shipped_config_is_valid() {
        // Uncommenting the example's keys (and pointing listen at server 1) gives a valid ensemble.
        let shipped = include_str!("../../config/coordinator.yaml");
        let (_, ensemble) = shipped.split_once("# Ensemble").expect("the shipped config documents ensembles");
        let example: String = ensemble
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| {
                ["cluster_id:", "server_id:", "servers:", "  - { id:", "admin_listen:"].iter().any(|k| l.starts_with(k))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = CoordinatorConfig::from_yaml(&format!("data_dir: /x\n{example}")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.voters().len(), c.observers().len(), c.server_id()), (3, 1, 1));
        assert_eq!(c.admin_listen, c.this_server().and_then(|s| s.admin), "server 1's admin address is its own");
        assert!(c.admin_listen.is_some());
    }

    #[test]
    fn even_or_many_voters_are_advised_against() {
        let four = ENSEMBLE.replace("role: observer", "role: voter");
        let c = CoordinatorConfig::from_yaml(&four).unwrap_or_else(|e| panic!("{e}"));
        let advice = c.advice().join("\n");
        assert!(advice.contains("4 voters, which survive the loss of 1 of them, as 3 voters do"), "{advice}");
    }

    #[test]
    fn refuses_a_broken_ensemble_naming_the_key_and_the_fix() {
        let cases: Vec<(String, &str, &str)> = vec![
            (ENSEMBLE.replace("id: 3,", "id: 1,"), "`servers`", "lists id 1 twice"),
            (ENSEMBLE.replace("id: 3,", "id: 0,"), "`servers`", "id 0"),
            (ENSEMBLE.replace("2883", "2881"), "`servers`", "127.0.0.1:2881 as both the peer address of server 1"),
            (
                ENSEMBLE.replace("peer: 127.0.0.1:2884", "peer: 127.0.0.1:2183"),
                "`servers`",
                "the client address of server 3 and the peer address of server 4",
            ),
            (ENSEMBLE.replace("2884, role", "0, role"), "`servers`", "fixed port"),
            (ENSEMBLE.replace("server_id: 2", "server_id: 9"), "`server_id`", "is 9, which `servers` does not list"),
            (
                ENSEMBLE.replace("server_id: 2\n", "").replace("id: 1,", "id: 5,"),
                "`server_id`",
                "is 1 (server_id is unset, so 1)",
            ),
            (ENSEMBLE.replace("listen: 127.0.0.1:2182", "listen: 127.0.0.1:2999"), "`listen`", "make them the same"),
            (ENSEMBLE.replace("cluster_id: 7\n", ""), "`cluster_id`", "the same non-zero cluster_id"),
            (
                "data_dir: /x\ncluster_id: 7\nlisten: 127.0.0.1:2181\nservers:\n  - { id: 1, client: 127.0.0.1:2181, peer: 127.0.0.1:2881, role: observer }\n".into(),
                "`servers`",
                "lists no voter",
            ),
            (ENSEMBLE.replace("role: observer", "role: judge"), "unknown variant", "judge"),
            (ENSEMBLE.replace("role: observer", "rank: 2"), "unknown field", "rank"),
            ("data_dir: /x\nserver_id: 2\n".into(), "`server_id`", "`servers` is empty"),
            (
                ENSEMBLE.replace("2883 }", "2883, admin: 127.0.0.1:2881 }"),
                "`servers`",
                "127.0.0.1:2881 as both the peer address of server 1 and the admin address of server 3",
            ),
            (
                ENSEMBLE.replace("role: voter }", "role: voter, admin: 127.0.0.1:8082 }")
                    + "admin_listen: 127.0.0.1:8092\n",
                "`admin_listen`",
                "gives 127.0.0.1:8082 as server 2's admin address",
            ),
            (ENSEMBLE.to_string() + "admin_listen: 127.0.0.1:2182\n", "`admin_listen`", "its own port"),
        ];
        for (yaml, key, problem) in cases {
            let e = CoordinatorConfig::from_yaml(&yaml).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(problem), "want {key} / {problem}, got: {e}\n{yaml}");
        }
    }

    /// On a server that does not lead, a session is touched on the leader only by liveness
    /// reports, and replies wait for one to be acknowledged (see [`crate::liveness`]): a
    /// session timeout shorter than that machinery's own delays expires busy sessions.
    #[test]
    fn an_ensemble_grants_no_session_timeout_shorter_than_its_liveness_reports() {
        let floor = crate::liveness::SLACK + crate::liveness::PROOF_AGE + 2 * crate::liveness::REPORT_EVERY;
        let floor = floor.as_millis() as u64;
        assert_eq!(ensemble_min_session_timeout_ms(), floor);
        for yaml in ["tick_ms: 10\n".to_string(), format!("tick_ms: 50\nmin_session_timeout_ms: {}\n", floor - 1)] {
            let e = CoordinatorConfig::from_yaml(&format!("{ENSEMBLE}{yaml}")).unwrap_err().to_string();
            assert!(
                e.contains("`min_session_timeout_ms`") && e.contains(&format!("at least {floor} ms")),
                "{yaml}: {e}"
            );
            for constant in ["SLACK", "PROOF_AGE", "REPORT_EVERY"] {
                assert!(e.contains(constant), "{yaml}: {e}");
            }
        }
        let c = CoordinatorConfig::from_yaml(&format!("{ENSEMBLE}tick_ms: 10\nmin_session_timeout_ms: {floor}\n"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.negotiate_timeout(1), floor as i32);
        // A server alone touches its sessions itself, on every request.
        let alone = CoordinatorConfig::from_yaml("data_dir: /x\ntick_ms: 10\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(alone.min_session_timeout_ms(), 20);
    }

    #[test]
    fn refuses_unknown_keys_and_impossible_values_naming_the_key() {
        let e = CoordinatorConfig::from_yaml("data_dir: /x\ntick_time: 5\n").unwrap_err().to_string();
        assert!(e.contains("tick_time"), "{e}");
        let e =
            CoordinatorConfig::from_yaml("data_dir: /x\nmin_session_timeout_ms: 9000\nmax_session_timeout_ms: 5000\n")
                .unwrap_err()
                .to_string();
        assert!(e.contains("max_session_timeout_ms"), "{e}");
        let e = CoordinatorConfig::from_yaml("data_dir: /x\ntick_ms: 0\n").unwrap_err().to_string();
        assert!(e.contains("tick_ms"), "{e}");
        let e = CoordinatorConfig::from_yaml("data_dir: /x\nlisten: nowhere\n").unwrap_err().to_string();
        assert!(e.contains("listen") || e.contains("socket"), "{e}");
        assert!(CoordinatorConfig::from_yaml("listen: 127.0.0.1:1\n").is_err(), "data_dir is required");
    }
}
