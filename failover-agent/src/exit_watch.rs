//! Seeing the local master's death the moment it happens, instead of at the next health check.
//!
//! With `master.pidfile` configured, [`watch_master_exits`] holds a pidfd (Linux 5.3+) for the
//! process the pidfile names. The kernel makes a pidfd readable when its process exits, so the
//! watcher learns of a crash without polling, and then wakes the health monitor to run a check
//! **at once**. It decides nothing itself: the early check goes through the same
//! [`crate::health::HealthMonitor`] as every other, so a dead master is declared down only by a
//! failed check, counted as the monitor's rules say (a refused connection at once; a timeout or
//! a cut connection under `slow_fall`; an unhealthy answer under `fall`). The watcher only moves the check forward in time.
//!
//! ```text
//!   pidfile ──▶ pid ──▶ pidfd ──(readable: the process exited)──▶ Notify ──▶ health check now
//!      ▲                                                                          │
//!      └───────── re-read every recheck interval (a restarted master) ◀──────────┘
//! ```
//!
//! # Why a wake-up is always safe
//!
//! A wake-up is a health check sooner than planned, nothing more. A spurious one (a pidfile
//! naming a pid since reused by another process, whose exit then wakes the monitor) costs one
//! extra check; a missed one (no pidfd support, an unreadable pidfile) leaves the interval's
//! check to see the death, as before. Hence the watcher needs no proof that the pid is still the
//! master's, unlike the `kill` fencing method, which signals it.
//!
//! # Ordering
//!
//! A process's sockets are closed before it becomes a zombie and its pidfd turns readable, so
//! the check the wake-up starts finds the master's port closed: a crashed master is refused on
//! that very check, not on a later one.

use std::future::Future;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

/// Why a pidfd could not be had for a pid.
#[derive(Debug, thiserror::Error)]
pub enum PidFdError {
    /// No process has that pid (it exited and was reaped).
    #[error("no process {0}")]
    NoSuchProcess(u32),
    /// The kernel or the sandbox refuses pidfds (before Linux 5.3, or a seccomp filter).
    #[error("pidfds are not available: {0}")]
    Unsupported(io::Error),
    /// Any other failure (out of file descriptors, say); worth trying again later.
    #[error("pidfd_open({pid}): {error}")]
    Other {
        /// The pid asked for.
        pid: u32,
        /// What the kernel said.
        error: io::Error,
    },
}

/// A pidfd registered with the tokio reactor: readable once its process has exited.
#[derive(Debug)]
pub struct ProcessExit {
    fd: AsyncFd<OwnedFd>,
    pid: u32,
}

impl ProcessExit {
    /// Opens a pidfd for `pid`.
    pub fn open(pid: u32) -> Result<ProcessExit, PidFdError> {
        let pid_t = libc::pid_t::try_from(pid).map_err(|_| PidFdError::NoSuchProcess(pid))?;
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid_t, 0) };
        if raw < 0 {
            let error = io::Error::last_os_error();
            return Err(match error.raw_os_error() {
                Some(libc::ESRCH) => PidFdError::NoSuchProcess(pid),
                // EINVAL is not among them: it also answers a pid that names a thread rather
                // than a process, a pidfile's mistake to report, not a reason to stop watching.
                Some(libc::ENOSYS) | Some(libc::EPERM) => PidFdError::Unsupported(error),
                _ => PidFdError::Other { pid, error },
            });
        }
        // SAFETY: the syscall returned a fresh fd that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        // SAFETY: `owned` is a valid open fd, owned by the AsyncFd for its whole life, and an
        // OwnedFd always returns the same fd.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(|error| PidFdError::Other { pid, error: io::Error::from(error) })?;
        Ok(ProcessExit { fd, pid })
    }

    /// The pid this pidfd refers to.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Completes when the process has exited (at once if it already has; a zombie counts).
    /// An error means the reactor failed, and nothing is known about the process.
    pub async fn exited(&self) -> io::Result<()> {
        // Readiness of a pidfd is never cleared once the process has exited, so the guard is
        // dropped without clearing it and a second call returns at once as well.
        self.fd.readable().await.map(|_guard| ())
    }
}

/// The most a pidfile may hold: a pid, with room for whitespace around it.
const PIDFILE_MAX_BYTES: usize = 32;

/// How long one reading of the pidfile may take before it counts as unreadable (a hung
/// filesystem); the reading goes on on its blocking thread, and the next one waits for it.
const PIDFILE_READ_LIMIT: Duration = Duration::from_secs(1);

/// Reads a pid from a pidfile: `None` when it is missing, empty, not a pid, not a regular
/// file, or longer than [`PIDFILE_MAX_BYTES`]. It never waits on the file: it is opened
/// without blocking (a FIFO would otherwise wait for a writer) and only then checked to be a
/// regular file, so a path swapped for a FIFO or a device between the two is refused too.
/// It does block on a hung filesystem: see [`PidFile`].
fn read_pid(path: &Path) -> Option<u32> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file =
        std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY).open(path).ok()?;
    if !file.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = Vec::with_capacity(PIDFILE_MAX_BYTES + 1);
    file.take(PIDFILE_MAX_BYTES as u64 + 1).read_to_end(&mut text).ok()?;
    if text.len() > PIDFILE_MAX_BYTES {
        return None;
    }
    std::str::from_utf8(&text).ok()?.trim().parse::<u32>().ok().filter(|pid| *pid > 1)
}

/// The pidfile, read off the runtime's threads: each reading runs on a blocking thread and is
/// waited for at most [`PIDFILE_READ_LIMIT`]. One reading at a time: one held up (a hung
/// filesystem) is waited for again by the next, never joined by another thread.
struct PidFile {
    path: PathBuf,
    pending: Option<tokio::task::JoinHandle<Option<u32>>>,
}

impl PidFile {
    fn new(path: PathBuf) -> Self {
        PidFile { path, pending: None }
    }

    /// The pid the pidfile names now, as [`read_pid`] reads it; `None` also when the reading
    /// takes longer than [`PIDFILE_READ_LIMIT`].
    async fn read(&mut self) -> Option<u32> {
        let path = self.path.clone();
        let mut reading = self.pending.take().unwrap_or_else(|| tokio::task::spawn_blocking(move || read_pid(&path)));
        match tokio::time::timeout(PIDFILE_READ_LIMIT, &mut reading).await {
            Ok(read) => read.ok().flatten(),
            Err(_) => {
                tracing::warn!(pidfile = %self.path.display(), "reading the pidfile takes longer than {} ms; trying again later", PIDFILE_READ_LIMIT.as_millis());
                self.pending = Some(reading);
                None
            }
        }
    }
}

/// Watches the process `pidfile` names and calls `wake.notify_one()` as soon as it exits,
/// until `shutdown` completes. The pidfile is read again every `recheck`, so a restarted master
/// (a new pid) is followed. Each exit wakes once: a pid already reported is not reported again
/// while the pidfile keeps naming it.
///
/// Returns early, leaving the health checks to see deaths at their interval, if the kernel
/// refuses pidfds.
pub async fn watch_master_exits(
    pidfile: PathBuf,
    recheck: Duration,
    wake: Arc<Notify>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut pidfile = PidFile::new(pidfile);
    // The pid whose exit was last reported; its pidfile entry is stale until rewritten.
    let mut reported: Option<u32> = None;
    // The pid last complained about, to log a problem once rather than every recheck.
    let mut complained: Option<u32> = None;
    loop {
        let watching = match pidfile.read().await {
            Some(pid) if reported == Some(pid) => None,
            Some(pid) => match ProcessExit::open(pid) {
                Ok(exit) => Some(exit),
                Err(PidFdError::NoSuchProcess(_)) => {
                    // Gone before it could be watched (or a stale pidfile at start): a check
                    // now settles which.
                    tracing::info!(pid, pidfile = %pidfile.path.display(), "the master's pid is not running; checking its health now");
                    reported = Some(pid);
                    wake.notify_one();
                    None
                }
                Err(e @ PidFdError::Unsupported(_)) => {
                    tracing::warn!("{e}; the master's death will be seen at the next health check instead of at once");
                    return;
                }
                Err(e @ PidFdError::Other { .. }) => {
                    if complained != Some(pid) {
                        tracing::warn!("cannot watch the master process: {e}; trying again");
                        complained = Some(pid);
                    }
                    None
                }
            },
            None => None,
        };
        let Some(exit) = watching else {
            tokio::select! {
                biased;
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(recheck) => continue,
            }
        };
        tracing::debug!(pid = exit.pid(), "watching the master process for its exit");
        // Re-read the pidfile every `recheck` while watching, in case it now names another
        // process (the master was restarted and the old pid lives on as something else).
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => return,
                exited = exit.exited() => {
                    match exited {
                        Ok(()) => {
                            tracing::info!(pid = exit.pid(), "the master process exited; checking its health now");
                            reported = Some(exit.pid());
                            wake.notify_one();
                        }
                        Err(e) => {
                            // Not watched again until the pidfile names another pid; the
                            // interval's checks still see this one die.
                            tracing::warn!(pid = exit.pid(), "cannot wait on the master's pidfd: {e}");
                            reported = Some(exit.pid());
                        }
                    }
                    break;
                }
                _ = tokio::time::sleep(recheck) => {
                    if pidfile.read().await != Some(exit.pid()) {
                        break;
                    }
                }
            }
        }
        // After an exit or a reactor error the pid counts as reported, so the loop waits for the
        // pidfile to name another one; the pause keeps a pidfile that keeps changing from
        // spinning it.
        tokio::select! {
            biased;
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(recheck) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfile_contents() {
        let dir = std::env::temp_dir().join(format!("referee-exit-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.pid");
        for (text, pid) in
            [("123\n", Some(123)), (" 77 ", Some(77)), ("", None), ("x1", None), ("1", None), ("0", None)]
        {
            std::fs::write(&path, text).unwrap();
            assert_eq!(read_pid(&path), pid, "{text:?}");
        }
        // A pid padded past the most a pidfile may hold is not read.
        std::fs::write(&path, format!("{:>40}", "123")).unwrap();
        assert_eq!(read_pid(&path), None);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(read_pid(&path), None);
        let _ = std::fs::remove_dir(&dir);
    }

    /// A pidfile path naming a FIFO (opening it for reading waits for a writer) or a device
    /// that never ends: the watcher reads nothing from it and keeps its runtime's one thread
    /// free, so the rest of the agent runs on, and shutdown ends the watcher.
    #[test]
    fn a_pidfile_that_is_no_regular_file_never_stalls_the_runtime() {
        let dir = std::env::temp_dir().join(format!("referee-exit-watch-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("m.pid");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR).unwrap();
        for path in [fifo.clone(), PathBuf::from("/dev/zero")] {
            let (done, finished) = std::sync::mpsc::channel();
            let watched = path.clone();
            // On a thread of its own, so a stalled runtime fails the test instead of hanging it.
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                runtime.block_on(async move {
                    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                    let watcher = tokio::spawn(watch_master_exits(
                        watched,
                        Duration::from_millis(20),
                        Arc::new(Notify::new()),
                        async move {
                            let _ = stopped.await;
                        },
                    ));
                    // The runtime's one thread still runs timers while the watcher reads.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let _ = stop.send(());
                    watcher.await.unwrap();
                });
                let _ = done.send(());
            });
            assert!(
                finished.recv_timeout(Duration::from_secs(5)).is_ok(),
                "a pidfile at {} stalled the runtime",
                path.display()
            );
        }
        assert_eq!(read_pid(&fifo), None);
        let _ = std::fs::remove_file(&fifo);
        let _ = std::fs::remove_dir(&dir);
    }
}
