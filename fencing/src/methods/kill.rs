//! `kill`: signal the master process on **this** host until it is verified gone.
//!
//! The master is found by its pidfile, by its recorded pid and start time, and (optionally) by
//! the processes holding TCP sockets on its port: its listener, and the sessions accepted there
//! (a process-per-connection server's backends, a master that closed its listener to shut down
//! with sessions open still takes writes on them). A pid is only ever signalled while it
//! provably names the master: a recorded pid must still have its recorded start time; a
//! pidfile's pid must belong to a process that started before the pidfile was written; a bare
//! pid without a start time is never trusted. Signals go through a pidfd opened after that
//! check, so a pid reused in between cannot receive them. SIGTERM, a grace period, then SIGKILL
//! (at once for a stopped process, which cannot act on SIGTERM), with time kept before the
//! deadline for SIGKILL to act; fenced only once every process is seen exited (an exited
//! process that is nobody's reaped child yet is a zombie: it runs no code and holds no
//! sockets, so it counts as gone; a zombie thread-group leader whose other threads still run
//! has not exited, and is signalled like any live process) and, with the port searched, no
//! process holds a socket on the port any more.
//!
//! "Nothing found" is fenced only with positive evidence (the recorded process is gone, or
//! no TCP socket uses the port) and no doubt left; a target on another host is refused
//! outright, because a pid or an empty port on this host says nothing about another machine.
//! What this agent cannot see is never evidence: a pid without a `/proc` entry is gone only
//! if `kill(pid, 0)` says ESRCH (`hidepid` hides other users' processes), a socket whose
//! process cannot be seen is not a free port, and a pidfile older than its live process may
//! mean a stepped clock rather than a reused pid. Such doubts leave the attempt failed (or
//! indeterminate once something was signalled), never fenced.
//!
//! The pidfile and `/proc` are read on the blocking pool, and a name that may be this host's
//! is looked up, under the method's deadline: a pidfile on a hung mount or a DNS server that
//! does not answer ends the attempt failed at its deadline with nothing signalled, instead of
//! holding a runtime worker (and every task on it) past every deadline. A pidfile that is not
//! a regular file is not read: opening a FIFO waits for a writer.
//!
//! # Limitation: the master must share the agent's pid and network namespaces
//!
//! Pids are read in the agent's pid namespace and sockets in its network namespace, and
//! nothing here can tell which namespaces the master runs in. A master in a container of its
//! own (its own pid or network namespace) must **not** be fenced with `kill` from outside it:
//! the pid in its pidfile is the container's, so it reads as "not running" or names an
//! unrelated host process; its sockets are in the container's namespace, so the port reads as
//! unused; and the process holding a published port on the host (`docker-proxy`) is not the
//! master, whose traffic reaches it by NAT anyway. Each of these can end "fenced" while the
//! master serves. For such a master use a method that acts inside the container (`shell` or
//! `ssh` running `docker kill`, `podman kill`, `kubectl delete pod --grace-period=0 --force`),
//! or run the agent in the master's namespaces.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::time::Instant;

use crate::config::KillConfig;
use crate::methods::this_host::ThisHost;
use crate::methods::{off_the_runtime, problem, Context};
use crate::outcome::{MethodOutcome, Readiness};
use crate::pidfd::PidFd;
use crate::procfs::{self, PidPresence, PortScanError, PortSockets, ProcStat};
use crate::target::FenceTarget;

/// Tolerance when comparing a process's start with its pidfile's modification time: boot
/// time is known to the second only.
const PIDFILE_CLOCK_SLACK: Duration = Duration::from_secs(2);

/// Polling period for processes that cannot be watched through a pidfd (old kernels).
const FALLBACK_POLL: Duration = Duration::from_millis(20);

#[derive(Debug)]
pub(crate) struct Kill {
    grace: Duration,
    /// Kept before the deadline for SIGKILL ([`KillConfig::SIGKILL_RESERVE_MS`]).
    sigkill_reserve: Duration,
    find_by_port: bool,
    this_host: ThisHost,
}

/// A process identified as the master: (pid, start time) names it for all time.
#[derive(Debug, Clone)]
struct Candidate {
    pid: u32,
    start_time: u64,
    source: String,
}

/// A candidate being signalled.
struct Victim {
    candidate: Candidate,
    pidfd: Option<PidFd>,
    /// Which signal finished it, once it is gone.
    ended_by: Option<&'static str>,
    /// Every signal sent to it, in order: the report names them.
    sent: Vec<&'static str>,
}

impl Kill {
    pub(crate) fn new(config: &KillConfig) -> Self {
        Kill {
            grace: Duration::from_millis(config.grace_ms),
            sigkill_reserve: Duration::from_millis(KillConfig::SIGKILL_RESERVE_MS),
            find_by_port: config.find_by_port,
            this_host: ThisHost::new(&config.local_hosts),
        }
    }

    /// Why the target cannot be fenced from here: its host is not this host, or whether it is
    /// could not be told before the deadline.
    async fn elsewhere(&self, ctx: &Context<'_>) -> Option<String> {
        let host = &ctx.target.host;
        match self.this_host.is(host, ctx.deadline).await {
            Ok(true) => None,
            Ok(false) => Some(format!(
                "target host `{host}` is not this host; kill only fences processes here (use ssh, agent or a power \
                 method for a peer on another host, or list other names of this host in local_hosts)"
            )),
            Err(why) => Some(format!(
                "cannot tell whether target host `{host}` is this host, so nothing was signalled: {why} (list this \
                 host's names in local_hosts)"
            )),
        }
    }

    /// [`Kill::find_blocking`], run off the runtime's workers under the method's deadline: a pidfile on a
    /// hung mount blocks whoever reads it. Nothing is signalled before it ends, so a search
    /// cut off by the deadline fails the attempt.
    async fn find(&self, ctx: &Context<'_>) -> Result<Found, MethodOutcome> {
        let (target, find_by_port) = (ctx.target.clone(), self.find_by_port);
        off_the_runtime(ctx.deadline, move || Kill::find_blocking(&target, find_by_port)).await.unwrap_or_else(|| {
            Err(MethodOutcome::failed(
                "the search for the master's processes (its pidfile, /proc) did not finish before the deadline, so \
                 nothing was signalled (a pidfile on a hung mount?)",
            ))
        })
    }

    pub(crate) async fn fence(&self, ctx: &Context<'_>) -> MethodOutcome {
        let t = ctx.target;
        if let Some(reason) = self.elsewhere(ctx).await {
            return MethodOutcome::failed(reason);
        }
        let found = match self.find(ctx).await {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        let doubts = found.open_doubts();
        if found.candidates.is_empty() {
            return found.nothing_to_signal(&doubts);
        }
        let doubts = doubts.join("; ");
        let outcome = self.terminate(found.candidates.into_values().collect(), ctx.deadline).await;
        let MethodOutcome::Fenced { detail } = outcome else {
            return outcome;
        };
        if !doubts.is_empty() {
            return MethodOutcome::indeterminate(format!("{detail}, but the master may yet run here: {doubts}"));
        }
        if self.find_by_port {
            // Fenced only once no process holds a socket on the port: a session left to a
            // process that was not found would still take writes, and a supervisor may
            // already have started a new master. A socket whose process cannot be seen is an
            // error here too, never a free port.
            let port = t.port;
            let holders = off_the_runtime(ctx.deadline, move || procfs::port_holders(port, PortSockets::All)).await;
            let Some(holders) = holders else {
                return MethodOutcome::indeterminate(format!(
                    "{detail}, but the port could not be re-checked before the deadline"
                ));
            };
            match holders {
                Ok(holders) if holders.is_empty() => {}
                Ok(holders) => {
                    return MethodOutcome::failed(format!(
                        "{detail}, but pid(s) {:?} hold TCP sockets on port {} (listening: {:?})",
                        holders.all(),
                        t.port,
                        holders.listening
                    ))
                }
                Err(e) => {
                    return MethodOutcome::indeterminate(format!("{detail}, but the port could not be re-checked: {e}"))
                }
            }
        }
        MethodOutcome::fenced(detail)
    }

    /// What a fence would find, found the same way and nothing signalled: the processes it
    /// would end, that none runs (and why that is known), or why it would fail.
    pub(crate) async fn check(&self, ctx: &Context<'_>) -> Readiness {
        if let Some(reason) = self.elsewhere(ctx).await {
            return Readiness::Problem { reason };
        }
        let found = match self.find(ctx).await {
            Ok(found) => found,
            Err(outcome) => return problem(outcome),
        };
        if found.candidates.is_empty() {
            // What a fence would answer without signalling anything, as a finding.
            return problem(found.nothing_to_signal(&found.open_doubts()));
        }
        let named: Vec<String> = found.candidates.values().map(|c| format!("pid {} ({})", c.pid, c.source)).collect();
        Readiness::Ready { detail: format!("would signal {} (not signalled)", named.join(", ")) }
    }

    /// Identifies the master's processes and collects what is known about them. Blocking: it
    /// reads the pidfile and `/proc` ([`Kill::find`] runs it off the runtime).
    fn find_blocking(t: &FenceTarget, find_by_port: bool) -> Result<Found, MethodOutcome> {
        let me = std::process::id();
        let mut found = Found::default();
        let read = |pid: u32| {
            procfs::read_stat(pid)
                .map_err(|e| MethodOutcome::indeterminate(format!("cannot read /proc/{pid}/stat: {e}")))
        };

        if let Some(path) = &t.pidfile {
            match read_pidfile(path) {
                Ok(None) => found
                    .unknown
                    .push(format!("pidfile {} does not exist", path.display())),
                Err(e) => found
                    .unknown
                    .push(format!("pidfile {} unusable: {e}", path.display())),
                Ok(Some(pid)) if pid <= 1 || pid == me => found.unknown.push(format!(
                    "pidfile {} names pid {pid}, which is never signalled",
                    path.display()
                )),
                Ok(Some(pid)) => match read(pid)? {
                    None => found.not_in_proc(pid, &format!("pidfile pid {pid}")),
                    Some(stat) if stat.is_exited() => found
                        .evidence
                        .push(format!("pidfile pid {pid} has exited")),
                    Some(stat) => match started_after(stat.start_time, path) {
                        // The wall clock may have been stepped forward since the master
                        // started (NTP's first sync, a VM resumed): boot time moves with it,
                        // and a live master reads as started after its own pidfile.
                        Ok(true) => found.doubt(pid, format!(
                            "pidfile pid {pid} reads as started after {} was written: either the pid was reused or the clock was stepped since the master started, so it is not signalled (record the master's pid and start time, or use the graceful method)",
                            path.display()
                        )),
                        Ok(false) => found.add(pid, stat, format!("pidfile {}", path.display())),
                        Err(e) => found.doubt(pid, format!(
                            "cannot compare live pid {pid} with its pidfile, so it is not signalled: {e}"
                        )),
                    },
                },
            }
        }

        if let Some(pid) = t.pid {
            match t.start_time {
                None => found.unknown.push(format!(
                    "pid {pid} has no recorded start time; a bare pid may have been reused, so it is not signalled"
                )),
                Some(_) if pid <= 1 || pid == me => found
                    .unknown
                    .push(format!("pid {pid} is never signalled")),
                Some(expected) => match read(pid)? {
                    None => found.not_in_proc(pid, &format!("recorded pid {pid}")),
                    Some(stat) if stat.start_time != expected => found.evidence.push(format!(
                        "pid {pid} now belongs to another process (started at tick {}, the master started at tick {expected}); the recorded master is gone",
                        stat.start_time
                    )),
                    Some(stat) if stat.is_exited() => found
                        .evidence
                        .push(format!("recorded pid {pid} has exited")),
                    Some(stat) => found.add(pid, stat, "recorded pid".to_string()),
                },
            }
        }

        if find_by_port {
            // Every process holding a TCP socket on the port serves it: the listener, and
            // whoever holds a session accepted there (a process-per-connection server's
            // backends, a master that closed its listener to shut down with sessions open).
            match procfs::port_holders(t.port, PortSockets::All) {
                Ok(holders) if holders.is_empty() => {
                    found.evidence.push(format!("no TCP socket uses port {} (none listens, none is connected)", t.port))
                }
                Ok(holders) => {
                    for pid in holders.all() {
                        if pid <= 1 || pid == me {
                            return Err(MethodOutcome::failed(format!(
                                "port {} is held by pid {pid}, which is never signalled",
                                t.port
                            )));
                        }
                        let role = if holders.listening.contains(&pid) { "listener" } else { "connection" };
                        if let Some(stat) = read(pid)? {
                            if !stat.is_exited() {
                                found.add(pid, stat, format!("{role} on port {}", t.port));
                            }
                        }
                    }
                }
                Err(PortScanError::Unattributed(hidden)) => {
                    found.doubts.push(Doubt { pid: None, why: hidden.to_string() })
                }
                Err(PortScanError::Io(e)) => found.unknown.push(format!("cannot scan the sockets on the port: {e}")),
            }
        }
        Ok(found)
    }

    /// SIGTERM, grace, SIGKILL; fenced when every victim is seen exited.
    async fn terminate(&self, candidates: Vec<Candidate>, deadline: Instant) -> MethodOutcome {
        let mut victims = Vec::with_capacity(candidates.len());
        let mut report = Vec::new();
        for candidate in candidates {
            match open_verified(&candidate) {
                Ok(Some(pidfd)) => victims.push(Victim { candidate, pidfd, ended_by: None, sent: Vec::new() }),
                Ok(None) => report.push(format!("pid {} ({}) was already gone", candidate.pid, candidate.source)),
                Err(e) => {
                    return MethodOutcome::failed(format!(
                        "cannot watch pid {} ({}): {e}",
                        candidate.pid, candidate.source
                    ))
                }
            }
        }

        let mut stopped = Vec::new();
        let now = Instant::now();
        let (phases, grace_note) = match grace_end(now, self.grace, self.sigkill_reserve, deadline) {
            Grace::Full(until) => (vec![(Signal::SIGTERM, "SIGTERM", until)], String::new()),
            Grace::Cut(until) => (
                vec![(Signal::SIGTERM, "SIGTERM", until)],
                format!(
                    "; grace cut to {} ms to keep {} ms for SIGKILL within the budget",
                    (until - now).as_millis(),
                    self.sigkill_reserve.as_millis()
                ),
            ),
            Grace::None => (
                Vec::new(),
                format!(
                    "; no grace: the budget left was within the {} ms kept for SIGKILL",
                    self.sigkill_reserve.as_millis()
                ),
            ),
        };
        let phases = phases.into_iter().chain([(Signal::SIGKILL, "SIGKILL", deadline)]);
        for (signal, name, until) in phases {
            for victim in victims.iter_mut().filter(|v| v.ended_by.is_none()) {
                // A stopped process (SIGSTOP, or held by a tracer) cannot act on SIGTERM until
                // something continues it, so a grace only delays the failover; SIGKILL ends a
                // stopped process as it is. The state is read after the pidfd was verified, so
                // it is this process's.
                let (signal, name) = if signal == Signal::SIGTERM && is_stopped(&victim.candidate) {
                    stopped.push(victim.candidate.pid);
                    (Signal::SIGKILL, "SIGKILL")
                } else {
                    (signal, name)
                };
                if let Err(e) = send(victim, signal) {
                    return MethodOutcome::failed(format!(
                        "cannot send {name} to pid {} ({}): {e}",
                        victim.candidate.pid, victim.candidate.source
                    ));
                }
                victim.sent.push(name);
            }
            for victim in victims.iter_mut().filter(|v| v.ended_by.is_none()) {
                if wait_gone(victim, until).await {
                    victim.ended_by = victim.sent.last().copied().or(Some(name));
                }
            }
        }

        let survivors: Vec<String> = victims
            .iter()
            .filter(|v| v.ended_by.is_none())
            .map(|v| format!("pid {} ({})", v.candidate.pid, v.candidate.source))
            .collect();
        if !survivors.is_empty() {
            // SIGKILL cannot be ignored; a survivor is stuck in the kernel (e.g. on a dead
            // NFS mount) and may yet resume.
            return MethodOutcome::indeterminate(format!(
                "{} still running after SIGKILL at the deadline{grace_note}",
                survivors.join(", ")
            ));
        }
        report.extend(victims.iter().map(|v| {
            format!(
                "pid {} ({}){} exited after {} (signals sent: {})",
                v.candidate.pid,
                v.candidate.source,
                if stopped.contains(&v.candidate.pid) { " was stopped, so given no grace, and" } else { "" },
                v.ended_by.unwrap_or("a signal"),
                v.sent.join(", ")
            )
        }));
        if victims.is_empty() {
            return MethodOutcome::fenced(report.join("; "));
        }
        MethodOutcome::fenced(format!("{}{grace_note}", report.join("; ")))
    }
}

/// How long SIGTERM is given before SIGKILL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Grace {
    /// The configured grace, until then.
    Full(Instant),
    /// Cut short, until then, to keep the SIGKILL reserve within the budget.
    Cut(Instant),
    /// None: SIGKILL at once (no grace configured, or no time beyond the reserve left).
    None,
}

/// When the grace begun at `now` ends. SIGKILL needs time to act and its effect to be seen, so
/// the grace ends `reserve` before the deadline: a budget cut below the grace (a level after a
/// slow one) cuts the grace short, or leaves none, rather than leaving SIGKILL no time.
fn grace_end(now: Instant, grace: Duration, reserve: Duration, deadline: Instant) -> Grace {
    let kill_from = deadline.checked_sub(reserve).map_or(now, |at| at.max(now));
    let until = (now + grace).min(kill_from);
    if until <= now {
        Grace::None
    } else if until < now + grace {
        Grace::Cut(until)
    } else {
        Grace::Full(until)
    }
}

/// What [`Kill::find`] learnt.
#[derive(Default)]
struct Found {
    candidates: BTreeMap<u32, Candidate>,
    /// Positive evidence that the master is not running here.
    evidence: Vec<String>,
    /// Sources that gave no usable answer.
    unknown: Vec<String>,
    /// Signs that the master may be running here which could not be resolved (a live pid
    /// that may be it, a socket on the port whose process cannot be seen): each rules out
    /// "fenced".
    doubts: Vec<Doubt>,
}

impl Found {
    /// The doubts left open: one about a pid that is also an identified candidate is settled
    /// by ending it.
    fn open_doubts(&self) -> Vec<&str> {
        self.doubts
            .iter()
            .filter(|d| !d.pid.is_some_and(|pid| self.candidates.contains_key(&pid)))
            .map(|d| d.why.as_str())
            .collect()
    }

    /// The outcome when no process was identified: fenced only with positive evidence and no
    /// doubt left open.
    fn nothing_to_signal(&self, doubts: &[&str]) -> MethodOutcome {
        if !doubts.is_empty() {
            // Evidence from other sources does not outweigh a doubt: "no socket uses the
            // port" is true of a master that has not bound it yet.
            MethodOutcome::failed(format!(
                "cannot rule out that the master runs on this host, so nothing was signalled: {}",
                doubts.join("; ")
            ))
        } else if self.evidence.is_empty() {
            MethodOutcome::failed(format!(
                "cannot identify the master process on this host: {}",
                self.unknown.join("; ")
            ))
        } else {
            MethodOutcome::fenced(format!("no master process runs on this host: {}", self.evidence.join("; ")))
        }
    }
}

/// A sign that the master may still run here, with the pid it is about, if any.
struct Doubt {
    pid: Option<u32>,
    why: String,
}

impl Found {
    fn add(&mut self, pid: u32, stat: ProcStat, source: String) {
        self.candidates.entry(pid).or_insert(Candidate { pid, start_time: stat.start_time, source });
    }

    fn doubt(&mut self, pid: u32, why: String) {
        self.doubts.push(Doubt { pid: Some(pid), why });
    }

    /// Records what a pid that has no `/proc` entry means: gone only when `kill(pid, 0)`
    /// agrees, since `/proc` mounted with `hidepid=2` hides other users' live processes.
    fn not_in_proc(&mut self, pid: u32, named: &str) {
        const REMEDY: &str = "run the agent as root or as the master's user, or use the graceful method";
        match procfs::probe_pid(pid) {
            PidPresence::Gone => self.evidence.push(format!("{named} is not running")),
            PidPresence::Forbidden => self.doubt(pid, format!(
                "{named} exists (kill(pid, 0): EPERM) but this agent may neither see it in /proc nor signal it, so it may be the master; {REMEDY}"
            )),
            PidPresence::Hidden => self.doubt(pid, format!(
                "{named} exists but /proc does not show it (hidepid?), so it may be the master; {REMEDY}"
            )),
            PidPresence::Unknown(e) => self.doubt(pid, format!(
                "{named} has no /proc entry and kill(pid, 0) failed ({e}), so whether it runs is unknown"
            )),
        }
    }
}

/// The most of a pidfile read: a pid and a line break, with room to spare.
const MAX_PIDFILE_BYTES: u64 = 64;

/// Reads a pid from a pidfile; `Ok(None)` when the file does not exist. Anything but a regular
/// file is refused: opening a FIFO for reading waits for a writer, and a device may do
/// anything. The type is checked before opening and again on what was opened, which is
/// opened non-blocking in case the path was replaced in between.
fn read_pidfile(path: &Path) -> io::Result<Option<u32>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let regular = |metadata: std::fs::Metadata| {
        if metadata.is_file() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("is {}, not a regular file", file_kind(&metadata.file_type())),
            ))
        }
    };
    let opened = std::fs::metadata(path).and_then(regular).and_then(|()| {
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path)
    });
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    regular(file.metadata()?)?;
    let mut text = String::new();
    file.take(MAX_PIDFILE_BYTES).read_to_string(&mut text)?;
    text.trim().parse::<u32>().map(Some).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "content is not a pid"))
}

/// How a sentence names a kind of file: "a FIFO".
fn file_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "of another kind"
    }
}

/// Whether a process with this start time reads as started after `pidfile` was last written.
/// Then it is not the writer (the pid was reused), or the wall clock was stepped forward since
/// the writer started (boot time moves with the clock): not signalled, and no proof either way.
fn started_after(start_ticks: u64, pidfile: &Path) -> io::Result<bool> {
    let started = procfs::start_time_to_wall(start_ticks)?;
    let written = procfs::modified(pidfile)?;
    Ok(started > written + PIDFILE_CLOCK_SLACK)
}

/// Opens a pidfd for the candidate and checks, **after** opening, that the pid still has the
/// candidate's start time: from then on the pidfd names exactly that process.
///
/// `Ok(None)`: already gone. `Ok(Some(None))`: no pidfd support, fall back to pids.
#[allow(clippy::type_complexity)]
fn open_verified(candidate: &Candidate) -> io::Result<Option<Option<PidFd>>> {
    let pidfd = match PidFd::open(candidate.pid) {
        Ok(fd) => Some(fd),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => None,
        Err(e) => return Err(e),
    };
    if same_process_alive(candidate)? {
        Ok(Some(pidfd))
    } else {
        Ok(None)
    }
}

/// Whether the candidate's (pid, start time) is still a live process.
fn same_process_alive(candidate: &Candidate) -> io::Result<bool> {
    Ok(procfs::read_stat(candidate.pid)?.is_some_and(|s| s.start_time == candidate.start_time && !s.is_exited()))
}

/// Whether the candidate is stopped (`T`) or in a tracing stop (`t`); an unreadable state is
/// taken as not stopped, which only keeps the usual grace.
fn is_stopped(candidate: &Candidate) -> bool {
    procfs::read_stat(candidate.pid)
        .ok()
        .flatten()
        .is_some_and(|s| s.start_time == candidate.start_time && matches!(s.state, 'T' | 't'))
}

fn send(victim: &Victim, signal: Signal) -> io::Result<()> {
    let result = match &victim.pidfd {
        Some(pidfd) => pidfd.signal(signal),
        None => {
            // Without a pidfd a reuse between this check and kill(2) cannot be excluded,
            // only made very unlikely; kernels since 5.3 take the branch above.
            if !same_process_alive(&victim.candidate)? {
                return Ok(());
            }
            kill(Pid::from_raw(victim.candidate.pid as i32), signal).map_err(io::Error::from)
        }
    };
    match result {
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
        other => other,
    }
}

async fn wait_gone(victim: &Victim, until: Instant) -> bool {
    match &victim.pidfd {
        Some(pidfd) => pidfd.exited_by(until).await,
        None => loop {
            // An unreadable /proc entry is not proof of exit: keep waiting.
            if let Ok(false) = same_process_alive(&victim.candidate) {
                return true;
            }
            if Instant::now() >= until {
                return false;
            }
            tokio::time::sleep_until((Instant::now() + FALLBACK_POLL).min(until)).await;
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_gives_way_to_the_sigkill_reserve() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        // Room for all of it.
        assert_eq!(grace_end(now, ms(2000), ms(500), now + ms(5000)), Grace::Full(now + ms(2000)));
        assert_eq!(grace_end(now, ms(2000), ms(500), now + ms(2500)), Grace::Full(now + ms(2000)));
        // A budget cut below the grace: SIGKILL keeps its reserve.
        assert_eq!(grace_end(now, ms(2000), ms(500), now + ms(1500)), Grace::Cut(now + ms(1000)));
        // Nothing beyond the reserve left, or no grace configured: SIGKILL at once.
        assert_eq!(grace_end(now, ms(2000), ms(500), now + ms(500)), Grace::None);
        assert_eq!(grace_end(now, ms(2000), ms(500), now + ms(100)), Grace::None);
        assert_eq!(grace_end(now, ms(2000), ms(500), now), Grace::None);
        assert_eq!(grace_end(now, Duration::ZERO, ms(500), now + ms(5000)), Grace::None);
    }
}
