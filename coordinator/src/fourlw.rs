//! Four-letter words: the plain-text commands operators and tools send on the client port
//! (`echo srvr | nc host 2181`, `zkServer.sh status`, kazoo's `envi` version probe).
//!
//! A connection whose first four bytes spell a known command gets the text answer and is closed,
//! exactly as Apache ZooKeeper does; the outputs follow ZooKeeper 3.8's formats line by line so
//! existing scripts and monitoring parse them unchanged. Commands outside the whitelist answer
//! `<cmd> is not executed because it is not in the whitelist.`

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use openraft::{BasicNode, RaftMetrics};

use crate::config::CoordinatorConfig;
use crate::log::ProposalSizes;
use crate::proto::SessionId;
use crate::state::{Counters, ServerState};
use crate::tree::TreeCounts;
use crate::watch::ConnId;

/// The version string reported to clients: the ZooKeeper release whose protocol and behaviour
/// this server implements (clients gate features on it), then our own version.
pub const VERSION: &str = concat!("3.8.0-referee-", env!("CARGO_PKG_VERSION"), ", built on 1970-01-01 00:00 UTC");

/// The read-only commands this server implements, enabled by default.
pub const IMPLEMENTED: [&str; 13] =
    ["ruok", "srvr", "stat", "mntr", "conf", "cons", "envi", "isro", "wchs", "wchc", "wchp", "dump", "dirs"];

/// The commands that walk every watch, session or file. Off unless the whitelist names them
/// (Apache ZooKeeper's default whitelist is `srvr` alone), and even then they never hold the
/// server's lock for the whole walk: see [`answer`].
pub const HEAVY: [&str; 4] = ["wchc", "wchp", "dump", "dirs"];

/// How many connections or sessions a heavy command copies per hold of the server's lock.
const WALK_CHUNK: usize = 64;

/// Apache ZooKeeper's answer, line and all, to the commands that report on a server which is
/// not serving (it is looking for a leader): what `zkServer.sh status` and monitoring read as
/// "not serving".
pub const NOT_SERVING: &str = "This ZooKeeper instance is not currently serving requests\n";

/// Commands ZooKeeper knows that change server state; recognised, never executed here.
const RECOGNISED_ONLY: [&str; 5] = ["crst", "srst", "gtmk", "stmk", "hash"];

/// The command spelled by a connection's first four bytes, if any.
pub fn parse(prefix: [u8; 4]) -> Option<&'static str> {
    IMPLEMENTED.iter().chain(RECOGNISED_ONLY.iter()).copied().find(|c| c.as_bytes() == prefix)
}

/// [`mode_name`] of a server whose Raft metrics are `m`: standalone when it is the only voter
/// and there are no learners.
pub fn mode_of(m: &openraft::RaftMetrics<u64, openraft::BasicNode>) -> &'static str {
    let membership = m.membership_config.membership();
    let standalone = membership.voter_ids().count() <= 1 && membership.learner_ids().next().is_none();
    mode_name(standalone, m.state == openraft::ServerState::Leader, m.state == openraft::ServerState::Learner)
}

/// What the server is in the ensemble, as `srvr`'s `Mode:` line reports it (and `mntr`'s
/// `zk_server_state`): ZooKeeper's `standalone`, `leader`, `follower` or `observer` (a Raft
/// learner).
pub fn mode_name(standalone: bool, leader: bool, learner: bool) -> &'static str {
    match (standalone, leader, learner) {
        (true, _, _) => "standalone",
        (false, true, _) => "leader",
        (false, false, true) => "observer",
        (false, false, false) => "follower",
    }
}

/// The answer to a command.
///
/// The light commands take the server's lock once, for as long as it takes to read counters.
/// The heavy ones never hold it across their walk: `dirs` reads the file system without it,
/// `wchc`, `wchp` and `dump` copy a few connections or sessions per hold and let writers in
/// between. Their output is therefore fuzzy under concurrent change, as Apache ZooKeeper's is
/// (it walks concurrent maps without a global lock).
///
/// An ensemble server that has not found a leader since it started, or has had no contact with
/// one past its staleness bound, answers with [`answer_not_serving`] instead.
///
/// `ensemble` is the leader's view of its followers ([`ensemble_stats`]); `mntr` reports it
/// when given, which only a leader can.
pub fn answer(
    cmd: &str,
    config: &CoordinatorConfig,
    state: &Mutex<ServerState>,
    mode: &str,
    ensemble: Option<&EnsembleStats>,
) -> String {
    if !config.four_letter_word_enabled(cmd) || RECOGNISED_ONLY.contains(&cmd) {
        return format!("{cmd} is not executed because it is not in the whitelist.\n");
    }
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    match cmd {
        "ruok" => "imok".to_string(),
        "isro" => "rw".to_string(),
        "srvr" => server_stats(&lock(), mode),
        "stat" => {
            let st = lock();
            let mut out = format!("Zookeeper version: {VERSION}\nClients:\n");
            out.push_str(&connections(&st, false));
            out.push('\n');
            out.push_str(&server_stats(&st, mode)["Zookeeper version: ".len() + VERSION.len() + 1..]);
            out
        }
        "cons" => {
            let mut out = connections(&lock(), true);
            out.push('\n');
            out
        }
        "mntr" => {
            let taken = MonitorSnapshot::of(&lock());
            monitor_values(&taken, mode, ensemble).into_iter().map(|(k, v)| format!("{k}\t{v}\n")).collect()
        }
        "conf" => {
            // The members as `/zookeeper/config` holds them, copied out under the lock.
            let membership = config.is_ensemble().then(|| {
                lock()
                    .tree
                    .get_data("/zookeeper/config", &[])
                    .ok()
                    .and_then(|(data, _)| data.map(|d| String::from_utf8_lossy(d).into_owned()))
                    .unwrap_or_default()
            });
            conf(config, mode, membership.as_deref())
        }
        "envi" => environment(),
        "wchs" => {
            let st = lock();
            format!(
                "{} connections watching {} paths\nTotal watches:{}\n",
                st.watches.conn_count(),
                st.watches.path_count(),
                st.watches.watch_count()
            )
        }
        "wchc" => {
            let mut out = String::new();
            for (session, paths) in watches_by_session(state) {
                out.push_str(&format!("0x{session:x}\n"));
                for p in paths {
                    out.push_str(&format!("\t{p}\n"));
                }
            }
            out.push('\n');
            out
        }
        "wchp" => {
            let mut by_path: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
            for (session, paths) in watches_by_session(state) {
                for p in paths {
                    by_path.entry(p).or_default().push(session);
                }
            }
            let mut out = String::new();
            for (p, sessions) in by_path {
                out.push_str(&format!("{p}\n"));
                for s in sessions {
                    out.push_str(&format!("\t0x{s:x}\n"));
                }
            }
            out.push('\n');
            out
        }
        "dump" => dump(state),
        "dirs" => {
            // Outside the lock: the walk touches only the file system.
            let size = dir_size(&config.data_dir);
            format!("datadir_size: {size}\nlogdir_size: {size}\n")
        }
        _ => format!("{cmd} is not executed because it is not in the whitelist.\n"),
    }
}

/// The answer to a command while the server is not serving (an ensemble server that has not
/// found a leader since it started, or has lost contact with its leader past its staleness
/// bound), as Apache ZooKeeper's while it looks for one: the
/// whitelist first, then `ruok` says the process is up (`imok`), `envi` describes it, `isro`
/// says `null` (neither read-only nor read-write), and every other command says
/// [`NOT_SERVING`]. Takes no lock.
pub fn answer_not_serving(cmd: &str, config: &CoordinatorConfig) -> String {
    if !config.four_letter_word_enabled(cmd) || RECOGNISED_ONLY.contains(&cmd) {
        return format!("{cmd} is not executed because it is not in the whitelist.\n");
    }
    match cmd {
        "ruok" => "imok".to_string(),
        "envi" => environment(),
        "isro" => "null".to_string(),
        _ => NOT_SERVING.to_string(),
    }
}

/// Every connection's watched paths with its session id, copied [`WALK_CHUNK`] connections per
/// hold of the lock.
fn watches_by_session(state: &Mutex<ServerState>) -> Vec<(i64, Vec<String>)> {
    let mut out = Vec::new();
    let mut after: Option<ConnId> = None;
    loop {
        let chunk: Vec<(ConnId, i64, Vec<String>)> = {
            let st = state.lock().unwrap_or_else(|p| p.into_inner());
            st.watches
                .by_connection_after(after, WALK_CHUNK)
                .into_iter()
                .map(|(conn, paths)| (conn, st.conns.get(&conn).map_or(0, |c| c.session.0), paths))
                .collect()
        };
        let Some(last) = chunk.last().map(|(c, _, _)| *c) else { break };
        after = Some(last);
        out.extend(chunk.into_iter().map(|(_, session, paths)| (session, paths)));
    }
    out
}

fn server_stats(st: &ServerState, mode: &str) -> String {
    let l = &st.counters.latency;
    let mut out = format!(
        "Zookeeper version: {VERSION}\nLatency min/avg/max: {}/{:.4}/{}\nReceived: {}\nSent: {}\nConnections: {}\n\
         Outstanding: {}\nZxid: 0x{:x}\nMode: {mode}\nNode count: {}\n",
        l.min_ms,
        l.avg_ms(),
        l.max_ms,
        st.counters.packets_received,
        st.counters.packets_sent,
        st.conns.len(),
        st.outstanding_requests(),
        st.tree.last_zxid().0,
        st.tree.node_count(),
    );
    if mode == "leader" {
        let p = proposal_sizes(st);
        out.push_str(&format!("Proposal sizes last/min/max: {}/{}/{}\n", p.last, p.min, p.max));
    }
    out
}

/// The leader's [`ProposalSizes`]: what it appended as the leader of its term.
fn proposal_sizes(st: &ServerState) -> ProposalSizes {
    st.log_end.as_ref().map(|l| l.proposal_sizes()).unwrap_or_default()
}

fn connections(st: &ServerState, detailed: bool) -> String {
    let mut conns: Vec<_> = st.conns.iter().collect();
    conns.sort_by_key(|(id, _)| **id);
    let mut out = String::new();
    for (_, c) in conns {
        let s = &c.stats;
        if detailed {
            out.push_str(&format!(
                " /{}[1](queued={},recved={},sent={},sid=0x{:x},lop={},est={},to={},lcxid=0x{:x},lzxid=0x{:x},\
                 lresp={},llat={},minlat={},avglat={:.0},maxlat={})\n",
                c.peer,
                s.outstanding,
                s.received,
                s.sent,
                c.session.0,
                if s.last_op.is_empty() { "NA" } else { s.last_op },
                s.established_ms,
                s.timeout_ms,
                s.last_cxid,
                s.last_zxid,
                s.last_response_ms,
                s.last_latency_ms,
                s.latency.min_ms,
                s.latency.avg_ms(),
                s.latency.max_ms,
            ));
        } else {
            out.push_str(&format!(" /{}[1](queued={},recved={},sent={})\n", c.peer, s.outstanding, s.received, s.sent));
        }
    }
    out
}

/// How far a follower's matched log index may trail the leader's last log index for the
/// follower to count as synced: a few AppendEntries reads (each at most 64 entries, themselves
/// batches of transactions). A follower within it is receiving the stream as fast as the
/// leader appends; one
/// further behind is catching up (from the log or a snapshot) and would not count towards a
/// quorum's speed. ZooKeeper's leader counts a learner synced once it has finished its initial
/// sync and is in the forwarding set; this is the closest Raft reading of that.
///
/// The matched index is what the follower last acknowledged, so a follower that stopped while
/// synced stays counted as synced until the leader appends more than this many entries.
pub const SYNCED_LAG_ENTRIES: u64 = 300;

/// One other member of the ensemble as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    /// Its server id.
    pub id: u64,
    /// Whether it votes (else it is an observer, an openraft learner).
    pub voter: bool,
    /// The highest log index the leader knows it holds; `None` before its first acknowledgement.
    pub matched: Option<u64>,
    /// Entries it trails the leader's last log index by; `None` while `matched` is.
    pub lag: Option<u64>,
    /// Whether it is synced: `lag` at most [`SYNCED_LAG_ENTRIES`].
    pub synced: bool,
}

/// The leader's view of its followers, as Apache ZooKeeper's leader reports it in `mntr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnsembleStats {
    /// The leader's last log index.
    pub last_log_index: u64,
    /// Every member but the leader, by id.
    pub replicas: Vec<Replica>,
}

impl EnsembleStats {
    /// Voters and observers other than the leader (`zk_followers`, `zk_learners`).
    pub fn followers(&self) -> usize {
        self.replicas.len()
    }

    /// Synced voters other than the leader (`zk_synced_followers`).
    pub fn synced_followers(&self) -> usize {
        self.replicas.iter().filter(|r| r.voter && r.synced).count()
    }

    /// Synced observers (`zk_synced_observers`).
    pub fn synced_observers(&self) -> usize {
        self.replicas.iter().filter(|r| !r.voter && r.synced).count()
    }
}

/// The leader's [`EnsembleStats`] from its Raft metrics; `None` on any server that does not
/// lead (openraft reports replication progress only on the leader), as ZooKeeper's followers
/// and observers omit these keys.
pub fn ensemble_stats(m: &RaftMetrics<u64, BasicNode>) -> Option<EnsembleStats> {
    if m.state != openraft::ServerState::Leader {
        return None;
    }
    let progress = m.replication.as_ref()?;
    let last = m.last_log_index.unwrap_or(0);
    let membership = m.membership_config.membership();
    let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
    let replicas = membership
        .nodes()
        .map(|(id, _)| *id)
        .filter(|id| *id != m.id)
        .map(|id| {
            let matched = progress.get(&id).copied().flatten().map(|l| l.index);
            let lag = matched.map(|i| last.saturating_sub(i));
            Replica {
                id,
                voter: voters.contains(&id),
                matched,
                lag,
                synced: lag.is_some_and(|l| l <= SYNCED_LAG_ENTRIES),
            }
        })
        .collect();
    Some(EnsembleStats { last_log_index: last, replicas })
}

/// What `mntr` reports of the server's state, read under its lock ([`MonitorSnapshot::of`])
/// in time that does not grow with the tree: the figures that walk every znode or session (the
/// data size, the ephemerals) are counted afterwards by [`monitor_values`], outside the lock,
/// on an O(1) copy of the tree ([`TreeCounts`]), and so is the file-descriptor count, which
/// reads a directory. So a `mntr`, or a scrape of `/metrics`, never holds up the writers on a
/// large tree: they take the same lock to apply.
#[derive(Debug, Clone)]
pub struct MonitorSnapshot {
    counters: Counters,
    conns: usize,
    outstanding: u64,
    znodes: usize,
    watches: usize,
    started: Instant,
    proposals: ProposalSizes,
    tree: TreeCounts,
}

impl MonitorSnapshot {
    /// Reads what `mntr` reports from the state, for [`monitor_values`] to finish outside the
    /// lock.
    pub fn of(st: &ServerState) -> Self {
        MonitorSnapshot {
            counters: st.counters.clone(),
            conns: st.conns.len(),
            outstanding: st.outstanding_requests(),
            znodes: st.tree.node_count(),
            watches: st.watches.watch_count(),
            started: st.started,
            proposals: proposal_sizes(st),
            tree: st.tree.counts(),
        }
    }
}

/// The `mntr` keys and values in ZooKeeper's order, the leader's ensemble keys last, from what
/// was read under the lock; counts what remains to be counted.
pub fn monitor_values(
    taken: &MonitorSnapshot,
    mode: &str,
    ensemble: Option<&EnsembleStats>,
) -> Vec<(&'static str, String)> {
    let l = &taken.counters.latency;
    let (open_fds, max_fds) = file_descriptors();
    let mut lines: Vec<(&str, String)> = vec![
        ("zk_version", VERSION.to_string()),
        ("zk_server_state", mode.to_string()),
        ("zk_ephemerals_count", taken.tree.ephemeral_count().to_string()),
        ("zk_num_alive_connections", taken.conns.to_string()),
        ("zk_avg_latency", format!("{:.4}", l.avg_ms())),
        ("zk_min_latency", l.min_ms.to_string()),
        ("zk_max_latency", l.max_ms.to_string()),
        ("zk_outstanding_requests", taken.outstanding.to_string()),
        ("zk_znode_count", taken.znodes.to_string()),
        ("zk_global_sessions", taken.tree.session_count().to_string()),
        ("zk_local_sessions", "0".to_string()),
        ("zk_packets_sent", taken.counters.packets_sent.to_string()),
        ("zk_packets_received", taken.counters.packets_received.to_string()),
        ("zk_watch_count", taken.watches.to_string()),
        ("zk_approximate_data_size", taken.tree.approximate_data_size().to_string()),
        ("zk_open_file_descriptor_count", open_fds.to_string()),
        ("zk_max_file_descriptor_count", max_fds.to_string()),
        ("zk_uptime", taken.started.elapsed().as_millis().to_string()),
        ("zk_auth_failed_count", taken.counters.auth_failed.to_string()),
        ("zk_connection_rejected", taken.counters.connections_rejected.to_string()),
    ];
    if let Some(e) = ensemble.filter(|_| mode == "leader") {
        // ZooKeeper 3.5 names the count `zk_followers`, 3.6 and later `zk_learners`; both are
        // given so monitoring written for either reads it.
        lines.extend([
            ("zk_learners", e.followers().to_string()),
            ("zk_followers", e.followers().to_string()),
            ("zk_synced_followers", e.synced_followers().to_string()),
            // A non-voting follower is a ZooKeeper participant outside the voting view, which
            // exists only mid-reconfiguration; every non-voting member here is an observer.
            ("zk_synced_non_voting_followers", "0".to_string()),
            ("zk_synced_observers", e.synced_observers().to_string()),
            // ZooKeeper counts learners mid-way through their initial sync; a Raft follower
            // catching up is simply one that is not synced, so none is ever pending.
            ("zk_pending_syncs", "0".to_string()),
        ]);
        let p = taken.proposals;
        lines.extend([
            ("zk_last_proposal_size", p.last.to_string()),
            ("zk_max_proposal_size", p.max.to_string()),
            ("zk_min_proposal_size", p.min.to_string()),
        ]);
    }
    lines
}

/// `conf`, as Apache ZooKeeper 3.8 writes it: a server alone gives the standalone keys and
/// `serverId=0`, as Apache's does. A member of an ensemble (`membership` given: the data of
/// `/zookeeper/config`) gives its own `serverId`, then those of a quorum peer's keys that have a
/// counterpart here, with this server's values: `syncLimit` (the staleness bound,
/// `max_leader_silence_ms`, in ticks: given only when it is a whole number of them),
/// `electionPort` and `quorumPort` (both the peer port: Raft's votes and its replication share
/// it), `peerType` (0 a voter, as Apache's participant, 1 an observer, from `mode`), then
/// `membership: ` and the members. `initLimit` (ticks for a follower's first sync) and
/// `electionAlg` (Apache's election algorithm number) have none, and are left out rather than
/// given a made-up value.
fn conf(config: &CoordinatorConfig, mode: &str, membership: Option<&str>) -> String {
    let dir = config.data_dir.display();
    let size = dir_size(&config.data_dir);
    let server_id = if membership.is_some() { config.server_id() } else { 0 };
    let mut out = format!(
        "clientPort={}\nsecureClientPort=-1\ndataDir={dir}\ndataDirSize={size}\ndataLogDir={dir}\ndataLogSize={size}\n\
         tickTime={}\nmaxClientCnxns={}\nminSessionTimeout={}\nmaxSessionTimeout={}\nclientPortListenBacklog=-1\n\
         serverId={server_id}\n",
        config.listen.port(),
        config.tick_ms,
        config.max_connections_per_address,
        config.min_session_timeout_ms(),
        config.max_session_timeout_ms(),
    );
    let Some(membership) = membership else { return out };
    let silence = config.max_leader_silence_ms;
    if silence.checked_rem(config.tick_ms) == Some(0) {
        out.push_str(&format!("syncLimit={}\n", silence / config.tick_ms));
    }
    if let Some(me) = config.this_server() {
        out.push_str(&format!("electionPort={0}\nquorumPort={0}\n", me.peer.port()));
    }
    out.push_str(&format!("peerType={}\n", if mode == "observer" { 1 } else { 0 }));
    // Apache prints the members as its /zookeeper/config holds them, ending without a newline.
    out.push_str("membership: \n");
    out.push_str(membership);
    out
}

fn environment() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let os_version = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let user_dir = std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default();
    format!(
        "Environment:\nzookeeper.version={VERSION}\nhost.name={}\nos.name={}\nos.arch={}\nos.version={}\n\
         user.dir={user_dir}\nreferee.version={}\n",
        host.trim(),
        std::env::consts::OS,
        std::env::consts::ARCH,
        os_version.trim(),
        env!("CARGO_PKG_VERSION"),
    )
}

fn dump(state: &Mutex<ServerState>) -> String {
    let lock = || state.lock().unwrap_or_else(|p| p.into_inner());
    let now = Instant::now();
    let mut deadlines = Vec::new();
    let mut after: Option<SessionId> = None;
    loop {
        let chunk = lock().tracker.deadlines_after(after, WALK_CHUNK);
        let Some(last) = chunk.last().map(|(id, _)| *id) else { break };
        after = Some(last);
        deadlines.extend(chunk);
    }
    let mut out = format!("SessionTracker dump:\nSession Sets ({})/({}):\n", deadlines.len(), deadlines.len());
    for (session, deadline) in deadlines {
        let left = deadline.saturating_duration_since(now);
        out.push_str(&format!("1 expire at {}:\n\t0x{:x}\n", format_date(wall_clock_after(left)), session.0));
    }
    let mut with_ephemerals: Vec<(SessionId, Vec<String>)> = Vec::new();
    let mut after: Option<SessionId> = None;
    loop {
        let chunk: Vec<(SessionId, Vec<String>)> = lock()
            .tree
            .sessions_after(after, WALK_CHUNK)
            .map(|(id, s)| (id, s.ephemerals.iter().cloned().collect()))
            .collect();
        let Some(last) = chunk.last().map(|(id, _)| *id) else { break };
        after = Some(last);
        with_ephemerals.extend(chunk.into_iter().filter(|(_, e)| !e.is_empty()));
    }
    out.push_str(&format!("ephemeral nodes dump:\nSessions with Ephemerals ({}):\n", with_ephemerals.len()));
    for (id, paths) in with_ephemerals {
        out.push_str(&format!("0x{:x}:\n", id.0));
        for p in paths {
            out.push_str(&format!("\t{p}\n"));
        }
    }
    let conns: Vec<(std::net::SocketAddr, i64)> = lock().conns.values().map(|c| (c.peer, c.session.0)).collect();
    out.push_str(&format!("Connections dump:\nConnections Sets (1)/({}):\n", conns.len()));
    for (peer, session) in conns {
        out.push_str(&format!("\tip: /{peer} sessionId: 0x{session:x}\n"));
    }
    out
}

fn wall_clock_after(d: Duration) -> i64 {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (now + d).as_millis() as i64
}

/// Formats ms since the epoch as Java's `Date.toString()` in UTC: `Sun Nov 22 03:20:46 UTC 2026`.
pub fn format_date(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Civil-from-days (proleptic Gregorian), days since 1970-01-01.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{} {} {:02} {:02}:{:02}:{:02} UTC {}",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        day,
        tod / 3600,
        tod % 3600 / 60,
        tod % 60,
        year
    )
}

fn dir_size(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn file_descriptors() -> (usize, u64) {
    let open = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    let max = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0);
    (open, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Server 2 of three, its data directory missing (its size reads 0).
    fn member_config() -> CoordinatorConfig {
        use crate::config::{Role, ServerEntry};
        let mut c = CoordinatorConfig::new("/nonexistent/referee-conf-test");
        c.servers = (1..=3)
            .map(|id| ServerEntry {
                id,
                client: ([127, 0, 0, 1], 2180 + id as u16).into(),
                peer: ([127, 0, 0, 1], 2887 + id as u16).into(),
                role: Role::Voter,
                admin: None,
            })
            .collect();
        c.server_id = Some(2);
        c.cluster_id = Some(7);
        c
    }

    #[test]
    fn conf_gives_a_member_its_id_and_the_quorum_keys_with_a_counterpart() {
        let mut c = member_config();
        c.tick_ms = 500;
        c.max_leader_silence_ms = 1500;
        let members = "server.1=127.0.0.1:2888:2888:participant;127.0.0.1:2181\nversion=100000003";
        let text = conf(&c, "follower", Some(members));
        let tail = text.split_once("serverId=").map(|(_, t)| t).unwrap_or_default();
        assert_eq!(
            tail,
            "2\nsyncLimit=3\nelectionPort=2889\nquorumPort=2889\npeerType=0\nmembership: \n\
             server.1=127.0.0.1:2888:2888:participant;127.0.0.1:2181\nversion=100000003"
        );
        assert!(conf(&c, "observer", Some(members)).contains("\npeerType=1\n"));
        // A bound that is no whole number of ticks has no syncLimit to give.
        c.max_leader_silence_ms = 1200;
        let text = conf(&c, "leader", Some(members));
        assert!(!text.contains("syncLimit") && text.contains("\nserverId=2\nelectionPort=2889\n"), "{text}");
        for absent in ["initLimit", "electionAlg"] {
            assert!(!text.contains(absent), "{absent} has no counterpart: {text}");
        }
        // A server alone answers as Apache's standalone server.
        let alone = conf(&CoordinatorConfig::new("/nonexistent/referee-conf-test"), "standalone", None);
        assert!(alone.ends_with("clientPortListenBacklog=-1\nserverId=0\n"), "{alone}");
    }

    #[test]
    fn parses_only_known_words() {
        assert_eq!(parse(*b"ruok"), Some("ruok"));
        assert_eq!(parse(*b"crst"), Some("crst"));
        assert_eq!(parse(*b"xxxx"), None);
        assert_eq!(parse([0, 0, 0, 45]), None);
    }

    /// Leader 1's metrics: voters 1-3, observer 4, `matched` per member, last log index 1000.
    fn leader_metrics(matched: &[(u64, Option<u64>)]) -> RaftMetrics<u64, BasicNode> {
        use openraft::{CommittedLeaderId, LogId, Membership, StoredMembership};
        let nodes: std::collections::BTreeMap<u64, BasicNode> =
            (1..=4).map(|id| (id, BasicNode { addr: format!("127.0.0.1:{}", 2880 + id) })).collect();
        let membership = Membership::new(vec![[1, 2, 3].into()], nodes);
        let mut m = RaftMetrics::new_initial(1);
        m.state = openraft::ServerState::Leader;
        m.current_leader = Some(1);
        m.last_log_index = Some(1000);
        m.membership_config = std::sync::Arc::new(StoredMembership::new(None, membership));
        let log_id = |i| LogId::new(CommittedLeaderId::new(1, 1), i);
        m.replication = Some(matched.iter().map(|&(id, i)| (id, i.map(log_id))).collect());
        m
    }

    #[test]
    fn the_leader_counts_followers_and_the_synced_ones_within_one_batch() {
        let all_synced = leader_metrics(&[(1, Some(1000)), (2, Some(1000)), (3, Some(700)), (4, Some(999))]);
        let e = ensemble_stats(&all_synced).expect("a leader reports its ensemble");
        assert_eq!(
            (e.followers(), e.synced_followers(), e.synced_observers()),
            (3, 2, 1),
            "the leader is not its own follower; 300 behind is still synced"
        );
        assert_eq!(
            e.replicas.iter().map(|r| (r.id, r.voter, r.lag)).collect::<Vec<_>>(),
            vec![(2, true, Some(0)), (3, true, Some(300)), (4, false, Some(1))]
        );

        // One voter 301 behind, one never acknowledged, the observer unknown to replication yet.
        let lagging = leader_metrics(&[(1, Some(1000)), (2, Some(699)), (3, None)]);
        let e = ensemble_stats(&lagging).expect("a leader reports its ensemble");
        assert_eq!((e.followers(), e.synced_followers(), e.synced_observers()), (3, 0, 0));

        let mut follower = all_synced.clone();
        follower.state = openraft::ServerState::Follower;
        assert_eq!(ensemble_stats(&follower), None, "only the leader knows its followers' progress");
    }

    #[test]
    fn mntr_gives_the_ensemble_keys_on_the_leader_only() {
        let config = CoordinatorConfig::new("/nonexistent");
        let st = Mutex::new(ServerState::new(false, Duration::from_millis(100)));
        let e = ensemble_stats(&leader_metrics(&[(2, Some(1000)), (3, Some(10)), (4, Some(1000))]));
        let leader = answer("mntr", &config, &st, "leader", e.as_ref());
        for line in [
            "zk_followers\t3\n",
            "zk_learners\t3\n",
            "zk_synced_followers\t1\n",
            "zk_synced_non_voting_followers\t0\n",
            "zk_synced_observers\t1\n",
            "zk_pending_syncs\t0\n",
        ] {
            assert!(leader.contains(line), "{line:?} missing from {leader}");
        }
        // A follower's answer lacks them even if handed stale numbers.
        let follower = answer("mntr", &config, &st, "follower", e.as_ref());
        assert!(!follower.contains("synced") && !follower.contains("zk_followers"), "{follower}");
        // Before its first proposal a leader gives -1 for their sizes, as ZooKeeper's does.
        for line in ["zk_last_proposal_size\t-1\n", "zk_max_proposal_size\t-1\n", "zk_min_proposal_size\t-1\n"] {
            assert!(leader.contains(line), "{line:?} missing from {leader}");
            assert!(!follower.contains(line.split('\t').next().unwrap_or_default()), "{follower}");
        }
        let srvr = answer("srvr", &config, &st, "leader", None);
        assert!(srvr.ends_with("\nProposal sizes last/min/max: -1/-1/-1\n"), "{srvr}");
        for mode in ["standalone", "follower", "observer"] {
            assert!(!answer("srvr", &config, &st, mode, None).contains("Proposal sizes"), "{mode}");
        }
    }

    #[test]
    fn dates_read_like_java() {
        assert_eq!(format_date(0), "Thu Jan 01 00:00:00 UTC 1970");
        assert_eq!(format_date(1_795_317_646_000), "Sun Nov 22 03:20:46 UTC 2026");
        assert_eq!(format_date(951_782_400_000), "Tue Feb 29 00:00:00 UTC 2000");
    }

    #[test]
    fn dirs_walks_the_disk_without_the_servers_lock() {
        let mut config = CoordinatorConfig::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src"));
        config.four_letter_words = vec!["dirs".into()];
        let state = std::sync::Arc::new(Mutex::new(ServerState::new(false, Duration::from_millis(100))));
        // Hold the lock writers need for as long as `dirs` takes: it must answer regardless.
        let held = state.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let walker = {
            let state = state.clone();
            std::thread::spawn(move || {
                let _ = tx.send(answer("dirs", &config, &state, "standalone", None));
            })
        };
        let out = rx.recv_timeout(Duration::from_secs(10)).expect("dirs waited for the server's lock");
        drop(held);
        walker.join().unwrap();
        assert!(out.starts_with("datadir_size: "), "{out}");
    }

    #[test]
    fn mntr_counts_the_tree_without_the_servers_lock() {
        use crate::proto::{Acl, Zxid};
        use crate::txn::{Txn, TxnOp, WriteOp};
        let state = std::sync::Arc::new(Mutex::new(ServerState::new(false, Duration::from_millis(100))));
        {
            let mut st = state.lock().unwrap();
            let op = TxnOp::CreateSession { timeout_ms: 6000, password: [1; 16] };
            st.apply(Zxid(1), &Txn { session: SessionId(0), auth: vec![], time_ms: 0, op }, Instant::now());
            let session = st.tree.sessions().next().map(|(id, _)| id).unwrap();
            for (i, flags) in [0, 1, 0].into_iter().enumerate() {
                let op = WriteOp::Create {
                    opcode: crate::proto::op::CREATE,
                    path: format!("/n{i}"),
                    data: Some(vec![7; 10]),
                    acl: Acl::open_unsafe(),
                    flags,
                    ttl_ms: 0,
                };
                let txn = Txn { session, auth: vec![], time_ms: 0, op: TxnOp::Write(op) };
                st.apply(Zxid(2 + i as i64), &txn, Instant::now());
            }
        }
        let taken = MonitorSnapshot::of(&state.lock().unwrap());
        // Writers hold the lock for as long as the counting takes: it must finish regardless.
        let held = state.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let counter = std::thread::spawn(move || {
            let _ = tx.send(monitor_values(&taken, "standalone", None));
        });
        let values = rx.recv_timeout(Duration::from_secs(10)).expect("mntr waited for the server's lock");
        let value = |key| values.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(value("zk_approximate_data_size"), held.tree.approximate_data_size().to_string());
        assert_eq!((value("zk_ephemerals_count").as_str(), value("zk_global_sessions").as_str()), ("1", "1"));
        assert_eq!(value("zk_znode_count"), "7");
        drop(held);
        counter.join().unwrap();
    }

    #[test]
    fn whitelist_and_formats() {
        let mut config = CoordinatorConfig::new("/nonexistent");
        let st = Mutex::new(ServerState::new(false, Duration::from_millis(100)));
        assert_eq!(answer("ruok", &config, &st, "standalone", None), "imok");
        let srvr = answer("srvr", &config, &st, "standalone", None);
        assert!(srvr.starts_with("Zookeeper version: 3.8.0-referee-"), "{srvr}");
        assert!(srvr.contains("\nMode: standalone\nNode count: 4\n"), "{srvr}");
        for heavy in HEAVY {
            assert_eq!(
                answer(heavy, &config, &st, "standalone", None),
                format!("{heavy} is not executed because it is not in the whitelist.\n"),
                "heavy commands are off by default"
            );
        }
        assert!(srvr.contains("\nZxid: 0x0\n"), "{srvr}");
        let stat = answer("stat", &config, &st, "standalone", None);
        assert!(stat.contains("Clients:\n\nLatency min/avg/max: 0/0.0000/0\n"), "{stat}");
        assert_eq!(
            answer("wchs", &config, &st, "standalone", None),
            "0 connections watching 0 paths\nTotal watches:0\n"
        );
        assert!(answer("envi", &config, &st, "standalone", None).contains("\nzookeeper.version=3.8.0-referee-"));
        assert!(answer("mntr", &config, &st, "standalone", None).contains("zk_server_state\tstandalone\n"));
        assert_eq!(
            answer("crst", &config, &st, "standalone", None),
            "crst is not executed because it is not in the whitelist.\n"
        );
        config.four_letter_words = vec!["srvr".into()];
        assert_eq!(
            answer("ruok", &config, &st, "standalone", None),
            "ruok is not executed because it is not in the whitelist.\n"
        );
        assert!(answer("srvr", &config, &st, "standalone", None).contains("Mode: standalone"));
    }

    #[test]
    fn a_server_awaiting_its_leader_answers_as_zookeeper_does_when_not_serving() {
        let mut config = CoordinatorConfig::new("/nonexistent");
        config.four_letter_words = IMPLEMENTED.iter().map(|w| w.to_string()).collect();
        let ask = |w| answer_not_serving(w, &config);
        assert_eq!(ask("ruok"), "imok");
        assert_eq!(ask("isro"), "null");
        assert!(ask("envi").contains("\nzookeeper.version=3.8.0-referee-"));
        for w in ["srvr", "stat", "mntr", "conf", "cons", "wchs", "wchc", "wchp", "dump", "dirs"] {
            assert_eq!(ask(w), "This ZooKeeper instance is not currently serving requests\n", "{w}");
        }
        // The whitelist still comes first.
        config.four_letter_words = vec!["srvr".into()];
        for w in ["ruok", "crst"] {
            assert_eq!(
                answer_not_serving(w, &config),
                format!("{w} is not executed because it is not in the whitelist.\n")
            );
        }
        assert_eq!(answer_not_serving("srvr", &config), NOT_SERVING);
    }
}
