//! Process file descriptors: signal and await one exact process, immune to pid reuse.
//!
//! A pidfd refers to the process that had the pid when it was opened, for as long as it is
//! held; signals sent through it can never reach a later process that reuses the pid, and it
//! becomes readable when that process exits (zombie included), so exits are awaited without
//! polling. Linux 5.3+; callers fall back to pid-based calls when it is unavailable.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::signal::Signal;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

/// An open pidfd registered with the tokio reactor.
pub(crate) struct PidFd {
    fd: AsyncFd<OwnedFd>,
}

impl PidFd {
    /// Opens a pidfd for `pid`. `Err` with `ESRCH` when no such process exists, `ENOSYS` when
    /// the kernel has no pidfds.
    pub(crate) fn open(pid: u32) -> io::Result<PidFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a fresh fd that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(raw as i32) };
        // SAFETY: `owned` is a valid open fd, owned by the AsyncFd for its whole life, and an
        // OwnedFd always returns the same fd.
        let fd = unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(PidFd { fd })
    }

    /// Sends `signal` to exactly the process this pidfd refers to. `ESRCH` when it has
    /// already exited.
    pub(crate) fn signal(&self, signal: Signal) -> io::Result<()> {
        // SAFETY: a valid pidfd, a valid signal number, a null siginfo and zero flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.get_ref().as_raw_fd(),
                signal as libc::c_int,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Waits until the process exits or `deadline` passes; true when it exited.
    pub(crate) async fn exited_by(&self, deadline: Instant) -> bool {
        tokio::select! {
            // An exit that is already visible wins over an expired deadline.
            biased;
            ready = self.fd.readable() => match ready {
                // Readable means exited; the readiness is never cleared, so repeated calls
                // return at once.
                Ok(_guard) => true,
                // The reactor failed us: report "not known to have exited".
                Err(_) => false,
            },
            _ = tokio::time::sleep_until(deadline) => false,
        }
    }
}
