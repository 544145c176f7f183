//! Reading processes and listening sockets from `/proc` (Linux).
//!
//! Parsing is kept in pure functions over the file contents so it can be tested on fixed
//! text; the thin readers around them only open files.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// What `/proc/<pid>/stat` says about a process that matters for fencing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: the state letter (`R`, `S`, `D`, `Z`, `X`, ...).
    pub state: char,
    /// Field 5: the process group id.
    pub pgid: i32,
    /// Field 20: the threads of its thread group still counted by the kernel, a zombie
    /// leader included until it is reaped.
    pub threads: u32,
    /// Field 22: start time in clock ticks since boot. A pid is reused only by a process
    /// with a different start time, so (pid, start time) names one process for all time.
    pub start_time: u64,
    /// Fields 14 and 15: user and system CPU time so far, in clock ticks, its threads
    /// included (for measuring, not for fencing).
    pub cpu_ticks: u64,
    /// Field 52: the exit status as `waitpid` reports it, meaningful once the process has
    /// exited (a zombie not yet reaped); `None` where the kernel does not show it.
    pub exit_code: Option<i32>,
}

impl ProcStat {
    /// Whether the process has exited and only its table entry is left (zombie or dead).
    /// It can no longer run code or hold sockets.
    ///
    /// The state is the thread-group leader's alone: a leader whose main thread exited
    /// (`pthread_exit`) reads `Z` while its other threads run on and serve (`ps` shows `Zl`).
    /// Only a zombie counting no thread but itself has exited, which is also when a pidfd on
    /// it turns readable.
    pub fn is_exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X') && self.threads <= 1
    }
}

/// Parses the content of `/proc/<pid>/stat`.
///
/// The command name (field 2) is in parentheses and may itself contain spaces and
/// parentheses, so fields are counted from the **last** `)`.
pub fn parse_stat(content: &str) -> Option<ProcStat> {
    let close = content.rfind(')')?;
    let rest: Vec<&str> = content[close + 1..].split_whitespace().collect();
    // rest[0] is field 3 (state), so field N is rest[N - 3].
    let state = rest.first()?.chars().next()?;
    let pgid = rest.get(5 - 3)?.parse().ok()?;
    let threads = rest.get(20 - 3)?.parse().ok()?;
    let start_time = rest.get(22 - 3)?.parse().ok()?;
    let utime: u64 = rest.get(14 - 3)?.parse().ok()?;
    let stime: u64 = rest.get(15 - 3)?.parse().ok()?;
    let exit_code = rest.get(52 - 3).and_then(|c| c.parse().ok());
    Some(ProcStat { state, pgid, threads, start_time, cpu_ticks: utime + stime, exit_code })
}

/// Reads `/proc/<pid>/stat`; `Ok(None)` when no process has this pid.
pub fn read_stat(pid: u32) -> io::Result<Option<ProcStat>> {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(content) => Ok(parse_stat(&content)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        // ESRCH: the process exited between open and read.
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a process has a pid that `/proc` shows no entry for, by the answer of
/// `kill(pid, 0)`. `/proc` hides other users' processes when mounted with `hidepid=2`, so a
/// missing entry alone does not prove a process gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PidPresence {
    /// ESRCH: no process has the pid.
    Gone,
    /// EPERM: a process has the pid, but this agent may neither signal nor inspect it.
    Forbidden,
    /// A process has the pid and may be signalled, but `/proc` does not show it.
    Hidden,
    /// The probe failed for another reason.
    Unknown(Errno),
}

/// Reads the answer of `kill(pid, 0)` (pure: see [`probe_pid`]).
pub fn pid_presence(probe: nix::Result<()>) -> PidPresence {
    match probe {
        Err(Errno::ESRCH) => PidPresence::Gone,
        Err(Errno::EPERM) => PidPresence::Forbidden,
        Ok(()) => PidPresence::Hidden,
        Err(e) => PidPresence::Unknown(e),
    }
}

/// Probes `pid` with `kill(pid, 0)`, which checks existence and permission and sends nothing.
pub fn probe_pid(pid: u32) -> PidPresence {
    // A pid beyond i32 would reach kill(2) negative, naming a process group.
    match i32::try_from(pid) {
        Ok(raw) if raw > 0 => pid_presence(kill(Pid::from_raw(raw), None)),
        _ => PidPresence::Unknown(Errno::EINVAL),
    }
}

/// The start time (clock ticks since boot, `/proc/<pid>/stat` field 22) of a live process.
///
/// Agents record this next to their master's pid and publish both, so that `kill` on the
/// master's host can tell the recorded master from a later process that reused the pid.
pub fn process_start_time(pid: u32) -> io::Result<u64> {
    match read_stat(pid)? {
        Some(stat) => Ok(stat.start_time),
        None => Err(io::Error::new(io::ErrorKind::NotFound, format!("no process with pid {pid}"))),
    }
}

/// Which TCP sockets on a port are looked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSockets {
    /// Listening sockets only.
    Listening,
    /// Every socket whose local port is the port: listening ones, and the connections accepted
    /// on it, in whatever state a process can hold them (established, closing, ...).
    All,
}

/// TCP sockets on `port` held by a process (nonzero inode), from the content of
/// `/proc/net/tcp` or `/proc/net/tcp6`: (inode, whether it listens).
pub fn parse_port_sockets(content: &str, port: u16, which: PortSockets) -> Vec<(u64, bool)> {
    const TCP_LISTEN: &str = "0A";
    content
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let listening = *fields.get(3)? == TCP_LISTEN;
            let inode: u64 = fields.get(9)?.parse().ok()?;
            let local_port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            let wanted = match which {
                PortSockets::Listening => listening,
                PortSockets::All => true,
            };
            (local_port == port && wanted && inode != 0).then_some((inode, listening))
        })
        .collect()
}

/// Socket inodes in LISTEN state on `port`, from the content of `/proc/net/tcp` or
/// `/proc/net/tcp6`.
pub fn parse_listening_inodes(content: &str, port: u16) -> Vec<u64> {
    parse_port_sockets(content, port, PortSockets::Listening).into_iter().map(|(inode, _)| inode).collect()
}

/// TCP sockets on `port` from `/proc/net/tcp` and `/proc/net/tcp6`: inode → whether it listens.
pub fn port_sockets_from_tables(port: u16, which: PortSockets) -> io::Result<BTreeMap<u64, bool>> {
    let mut sockets = BTreeMap::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        match fs::read_to_string(table) {
            Ok(content) => sockets.extend(parse_port_sockets(&content, port, which)),
            // tcp6 is absent when IPv6 is disabled.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sockets)
}

/// What a walk over every `/proc/<pid>/fd` saw of the socket inodes it looked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FdWalk {
    /// The socket inodes looked for.
    pub wanted: BTreeSet<u64>,
    /// For each wanted inode that was found, the pids holding it.
    pub holders: BTreeMap<u64, BTreeSet<u32>>,
    /// Processes whose descriptors could not be read for a reason other than having exited
    /// (the agent may not look at another user's process, or `/proc` hides it), with the errno.
    pub unreadable: Vec<(u32, i32)>,
}

impl FdWalk {
    /// Wanted inodes that no process was seen holding.
    pub fn unattributed(&self) -> BTreeSet<u64> {
        self.wanted.iter().copied().filter(|inode| !self.holders.contains_key(inode)).collect()
    }
}

/// Why the holders of a port's sockets are not known.
#[derive(Debug, thiserror::Error)]
pub enum PortScanError {
    /// The socket tables or `/proc` could not be read.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// A socket uses the port, but no process visible to this agent holds it.
    #[error(transparent)]
    Unattributed(#[from] UnattributedSockets),
}

/// Sockets on a port that no process visible to this agent holds: the port is **not** free,
/// and whoever serves on it is unknown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.sentence())]
pub struct UnattributedSockets {
    /// The port.
    pub port: u16,
    /// Which sockets were looked for.
    pub which: PortSockets,
    /// The sockets' inodes.
    pub inodes: BTreeSet<u64>,
    /// Processes whose descriptors could not be read, with the errno (see [`FdWalk`]).
    pub unreadable: Vec<(u32, i32)>,
}

impl UnattributedSockets {
    fn sentence(&self) -> String {
        const NAMED: usize = 3;
        let inodes: Vec<String> = self.inodes.iter().map(u64::to_string).collect();
        let why = if self.unreadable.is_empty() {
            "no process listed in /proc holds it (is /proc mounted with hidepid?)".to_string()
        } else {
            let named: Vec<String> = self
                .unreadable
                .iter()
                .take(NAMED)
                .map(|(pid, errno)| format!("pid {pid}: {}", io::Error::from_raw_os_error(*errno)))
                .collect();
            let more = self.unreadable.len().saturating_sub(NAMED);
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            format!(
                "the descriptors of processes this agent may not inspect could not be read ({}{more})",
                named.join(", ")
            )
        };
        let socket = match self.which {
            PortSockets::Listening => "a socket listens on",
            PortSockets::All => "a TCP socket uses",
        };
        format!(
            "{socket} port {} (inode {}) but its process cannot be seen: {why}; run the agent as root or as the master's user, or find the master by its pidfile or with the graceful method",
            self.port,
            inodes.join(", ")
        )
    }
}

/// Decides who holds the sockets that used `port` from what the walk saw and which of them
/// are `still_there` after it. Pure: the readers are in [`port_holders`].
pub fn attribute_sockets(
    port: u16,
    which: PortSockets,
    walk: &FdWalk,
    still_there: &BTreeSet<u64>,
) -> Result<BTreeSet<u32>, UnattributedSockets> {
    // A socket nobody was seen holding and that is still there is held by someone: not
    // being able to see who is no evidence that nobody does. Unreadable entries alone do not
    // decide it: with `hidepid=2` other users' processes are not listed at all, so the walk
    // meets no error, and with every socket attributed the unreadable ones do not matter.
    let hidden: BTreeSet<u64> = walk.unattributed().intersection(still_there).copied().collect();
    if !hidden.is_empty() {
        return Err(UnattributedSockets { port, which, inodes: hidden, unreadable: walk.unreadable.clone() });
    }
    Ok(walk.holders.values().flatten().copied().collect())
}

/// TCP sockets on `port`: by socket diagnostics, else from the text tables.
fn port_sockets(port: u16, which: PortSockets) -> io::Result<BTreeMap<u64, bool>> {
    // The kernel's socket-diagnostics netlink answers without formatting every socket of the
    // host as text (and, for listeners, without walking the established-connection hash),
    // which the text tables cost in the middle of a failover.
    match crate::sock_diag::port_sockets(port, which) {
        Ok(sockets) => Ok(sockets),
        Err(e) => {
            tracing::debug!("socket diagnostics unavailable ({e}); reading /proc/net/tcp instead");
            port_sockets_from_tables(port, which)
        }
    }
}

/// Whether an error reading a `/proc/<pid>` entry means only that the process (or the
/// descriptor) is gone.
fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Walks every `/proc/<pid>/fd` for the sockets `wanted`.
fn walk_fds(wanted: BTreeSet<u64>) -> io::Result<FdWalk> {
    let links: BTreeMap<String, u64> = wanted.iter().map(|i| (format!("socket:[{i}]"), *i)).collect();
    let mut walk = FdWalk { wanted, ..FdWalk::default() };
    for entry in fs::read_dir("/proc")? {
        // An entry that cannot be listed leaves its sockets unattributed, which is reported.
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        // Processes exit and fds close while we walk: those are skipped. Anything else
        // unreadable is recorded, since the process may hold the socket.
        let fds = match fs::read_dir(entry.path().join("fd")) {
            Ok(fds) => fds,
            Err(e) if is_gone(&e) => continue,
            Err(e) => {
                walk.unreadable.push((pid, e.raw_os_error().unwrap_or(libc::EIO)));
                continue;
            }
        };
        for fd in fds.flatten() {
            match fs::read_link(fd.path()) {
                Ok(link) => {
                    if let Some(inode) = link.to_str().and_then(|l| links.get(l)) {
                        walk.holders.entry(*inode).or_default().insert(pid);
                    }
                }
                Err(e) if is_gone(&e) => {}
                Err(e) => {
                    walk.unreadable.push((pid, e.raw_os_error().unwrap_or(libc::EIO)));
                    break;
                }
            }
        }
    }
    Ok(walk)
}

/// The processes holding TCP sockets on a port.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortHolders {
    /// Processes holding a listening socket on it.
    pub listening: BTreeSet<u32>,
    /// Processes holding connections on it but no listening socket.
    pub connected: BTreeSet<u32>,
}

impl PortHolders {
    /// Whether no process holds a socket on the port.
    pub fn is_empty(&self) -> bool {
        self.listening.is_empty() && self.connected.is_empty()
    }

    /// Every holder.
    pub fn all(&self) -> BTreeSet<u32> {
        self.listening.union(&self.connected).copied().collect()
    }
}

/// The processes holding TCP sockets on `port` in this network namespace, `which` of them
/// (every socket, or listening ones only); empty when no such socket exists.
///
/// Several pids hold a listening socket when workers share it; all of them serve. A socket
/// whose holder cannot be seen (another user's process when not root, `/proc` mounted with
/// `hidepid`) is [`PortScanError::Unattributed`], never an empty answer.
pub fn port_holders(port: u16, which: PortSockets) -> Result<PortHolders, PortScanError> {
    let sockets = port_sockets(port, which)?;
    if sockets.is_empty() {
        return Ok(PortHolders::default());
    }
    let walk = walk_fds(sockets.keys().copied().collect())?;
    // A socket not found was closed during the walk or is hidden: a second look tells which.
    let still_there =
        if walk.unattributed().is_empty() { BTreeSet::new() } else { port_sockets(port, which)?.into_keys().collect() };
    let all = attribute_sockets(port, which, &walk, &still_there)?;
    let listening: BTreeSet<u32> = walk
        .holders
        .iter()
        .filter(|(inode, _)| sockets.get(*inode).copied().unwrap_or(false))
        .flat_map(|(_, pids)| pids.iter().copied())
        .collect();
    let connected = all.difference(&listening).copied().collect();
    Ok(PortHolders { listening, connected })
}

/// Pids of processes holding a TCP socket listening on `port` in this network namespace; an
/// empty set means no socket listens on it. See [`port_holders`].
pub fn pids_listening_on(port: u16) -> Result<BTreeSet<u32>, PortScanError> {
    Ok(port_holders(port, PortSockets::Listening)?.listening)
}

/// Pids of live (not exited) processes whose process group is `pgid`.
pub fn live_members_of_group(pgid: i32) -> io::Result<Vec<u32>> {
    let mut members = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Ok(Some(stat)) = read_stat(pid) {
            if stat.pgid == pgid && !stat.is_exited() {
                members.push(pid);
            }
        }
    }
    Ok(members)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of [`ProcStat::start_time`].
fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions and only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}

/// Parses the `btime` line (boot time, seconds since the epoch) of `/proc/stat`.
pub fn parse_boot_time(content: &str) -> Option<u64> {
    content.lines().find_map(|l| l.strip_prefix("btime ")).and_then(|v| v.trim().parse().ok())
}

/// Wall-clock start time of a process with the given start time in ticks. Accurate to about
/// a second (boot time is reported in whole seconds).
pub fn start_time_to_wall(start_ticks: u64) -> io::Result<SystemTime> {
    let boot = parse_boot_time(&fs::read_to_string("/proc/stat")?)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no btime in /proc/stat"))?;
    let ticks = clock_ticks_per_second();
    let since_boot = Duration::from_millis(start_ticks.saturating_mul(1000) / ticks);
    Ok(UNIX_EPOCH + Duration::from_secs(boot) + since_boot)
}

/// Modification time of a file.
pub fn modified(path: &Path) -> io::Result<SystemTime> {
    let meta = fs::metadata(path)?;
    Ok(UNIX_EPOCH + Duration::new(meta.mtime().max(0) as u64, meta.mtime_nsec().max(0) as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let line = "4242 (we(ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.pgid, 4242);
        assert_eq!(stat.start_time, 987654);
        assert!(!stat.is_exited());
        assert!(parse_stat("12 (x) Z 1").is_none());
    }

    /// A leader whose main thread called `pthread_exit` reads `Z` while its other threads serve
    /// on (`ps` shows `Zl`): it has not exited. Only a zombie with no thread besides the dead
    /// leader (field 20, the thread count) is gone.
    #[test]
    fn a_zombie_leader_with_running_threads_has_not_exited() {
        let stat = |state: char, threads: u32| {
            parse_stat(&format!(
                "4242 (java) {state} 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 {threads} 0 987654"
            ))
            .unwrap()
        };
        assert!(!stat('Z', 3).is_exited());
        assert!(stat('Z', 1).is_exited());
        assert!(stat('Z', 0).is_exited());
        assert!(stat('X', 0).is_exited());
        assert!(!stat('S', 1).is_exited());
    }

    #[test]
    fn cpu_ticks_are_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (java (main) x) S 1 4242 4242 0 -1 4194560 25000 0 12 0 1234 567 0 0 20 0 40 0 987654";
        assert_eq!(parse_stat(stat).map(|s| s.cpu_ticks), Some(1234 + 567));
        assert_eq!(parse_stat("4242 (cut short) S 1 2 3"), None);
        assert_eq!(parse_stat("no parenthesis at all"), None);
    }

    #[test]
    fn own_start_time_is_readable() {
        let me = std::process::id();
        let t = process_start_time(me).unwrap();
        assert_eq!(read_stat(me).unwrap().unwrap().start_time, t);
        assert!(start_time_to_wall(t).unwrap() <= SystemTime::now());
    }

    #[test]
    fn listening_sockets_are_found_by_port_and_state() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0000000000000000 20 4 30 10 -1
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 333 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(parse_listening_inodes(table, 8080), vec![111]);
        assert_eq!(parse_listening_inodes(table, 22), vec![333]);
        assert!(parse_listening_inodes(table, 9).is_empty());
        // A connection accepted on the port (local port 8080, established) is one of its
        // sockets too; a socket no process holds (inode 0) is not.
        let table = format!(
            "{table}   3: 0100007F:1F90 0100007F:D432 06 00000000:00000000 03:00000100 00000000     0        0 0 1 0000000000000000 20 4 30 10 -1\n"
        );
        assert_eq!(parse_port_sockets(&table, 8080, PortSockets::All), vec![(111, true), (222, false)]);
        assert_eq!(parse_port_sockets(&table, 8080, PortSockets::Listening), vec![(111, true)]);
    }

    #[test]
    fn own_listener_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let pids = pids_listening_on(port).unwrap();
        assert!(pids.contains(&std::process::id()), "{pids:?}");
    }

    #[test]
    fn netlink_and_text_tables_agree_on_listeners() {
        let v4 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = v4.local_addr().unwrap().port();
        // A second listener on the same port through IPv6, where the host has it.
        let v6 = std::net::TcpListener::bind(("::1", port)).ok();
        // A connected socket from the same port is not a listener and must not be reported.
        let _client = std::net::TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        let from_netlink = crate::sock_diag::port_sockets(port, PortSockets::Listening).unwrap();
        let from_tables = port_sockets_from_tables(port, PortSockets::Listening).unwrap();
        assert_eq!(from_netlink, from_tables);
        assert_eq!(from_netlink.len(), 1 + usize::from(v6.is_some()), "{from_netlink:?}");
        drop(v4);
        drop(v6);
        assert!(crate::sock_diag::port_sockets(port, PortSockets::Listening).unwrap().is_empty());
    }

    fn walk(wanted: &[u64], holders: &[(u64, u32)], unreadable: &[(u32, i32)]) -> FdWalk {
        let mut walk = FdWalk { wanted: wanted.iter().copied().collect(), ..FdWalk::default() };
        for (inode, pid) in holders {
            walk.holders.entry(*inode).or_default().insert(*pid);
        }
        walk.unreadable = unreadable.to_vec();
        walk
    }

    #[test]
    fn listeners_are_attributed_when_every_socket_has_a_holder() {
        // Two workers share the IPv4 socket; a third process holds the IPv6 one. Unreadable
        // processes do not matter once every socket is accounted for.
        let seen = walk(&[11, 12], &[(11, 100), (11, 101), (12, 102)], &[(7, libc::EACCES)]);
        assert_eq!(
            attribute_sockets(80, PortSockets::Listening, &seen, &BTreeSet::new()),
            Ok(BTreeSet::from([100, 101, 102]))
        );
    }

    #[test]
    fn a_socket_closed_during_the_walk_is_not_a_hidden_listener() {
        let seen = walk(&[11, 12], &[(11, 100)], &[(7, libc::EACCES)]);
        assert_eq!(
            attribute_sockets(80, PortSockets::Listening, &seen, &BTreeSet::from([11])),
            Ok(BTreeSet::from([100]))
        );
        let seen = walk(&[11], &[], &[]);
        assert_eq!(attribute_sockets(80, PortSockets::Listening, &seen, &BTreeSet::new()), Ok(BTreeSet::new()));
    }

    #[test]
    fn a_listener_behind_an_unreadable_process_is_not_a_free_port() {
        let seen = walk(&[11, 12], &[(11, 100)], &[(7, libc::EACCES), (8, libc::EPERM)]);
        let hidden = attribute_sockets(80, PortSockets::Listening, &seen, &BTreeSet::from([11, 12])).unwrap_err();
        assert_eq!(
            hidden,
            UnattributedSockets {
                port: 80,
                which: PortSockets::Listening,
                inodes: BTreeSet::from([12]),
                unreadable: vec![(7, libc::EACCES), (8, libc::EPERM)]
            }
        );
        let sentence = hidden.to_string();
        assert!(sentence.contains("port 80 (inode 12)") && sentence.contains("pid 7: Permission denied"), "{sentence}");
        assert!(sentence.contains("run the agent as root or as the master's user"), "{sentence}");
    }

    #[test]
    fn a_listener_no_listed_process_holds_is_not_a_free_port() {
        // With /proc mounted hidepid=2 another user's processes are not listed at all, so the
        // walk meets no error: the socket that is still listening is all there is to go by.
        let seen = walk(&[11], &[], &[]);
        let hidden = attribute_sockets(80, PortSockets::Listening, &seen, &BTreeSet::from([11])).unwrap_err();
        assert!(hidden.unreadable.is_empty());
        assert!(hidden.to_string().contains("hidepid"), "{hidden}");
    }

    #[test]
    fn only_esrch_proves_a_pid_gone() {
        assert_eq!(pid_presence(Err(Errno::ESRCH)), PidPresence::Gone);
        assert_eq!(pid_presence(Err(Errno::EPERM)), PidPresence::Forbidden);
        assert_eq!(pid_presence(Ok(())), PidPresence::Hidden);
        assert_eq!(pid_presence(Err(Errno::EINVAL)), PidPresence::Unknown(Errno::EINVAL));
    }

    #[test]
    fn a_reaped_child_is_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert_eq!(probe_pid(pid), PidPresence::Gone);
        assert_eq!(probe_pid(0), PidPresence::Unknown(Errno::EINVAL));
        assert_eq!(probe_pid(u32::MAX), PidPresence::Unknown(Errno::EINVAL));
    }

    #[test]
    fn boot_time_is_parsed() {
        assert_eq!(parse_boot_time("cpu 1 2\nbtime 1700000000\n"), Some(1_700_000_000));
        assert_eq!(parse_boot_time("cpu 1 2\n"), None);
    }
}
