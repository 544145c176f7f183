//! Loopback ports for child processes.

use std::sync::atomic::{AtomicU32, Ordering};

/// A loopback port for a child process to listen on.
///
/// A port found by binding port 0 and releasing it can be handed out again by the kernel (to an
/// outgoing connection or another port-0 bind) before the child binds it. So ports come from
/// below the kernel's ephemeral range, which neither uses, each handed out at most once per
/// process, starting at a point derived from the pid so concurrent test binaries spread apart.
/// Processes that run at once (the demo's tests start several demos, each choosing its own
/// ports) may still start close together, so each port is also claimed for the whole machine
/// while the process lives (see [`claim`]).
pub fn free_port() -> std::io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_low.max(12_000));
    let span = high - low;
    let _ = NEXT.compare_exchange(0, start_for(std::process::id(), span), Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (low + n % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() && claim(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        format!("no free loopback port between {low} and {high}"),
    ))
}

/// Where a process with id `pid` starts handing out ports in a span of `span` (never 0: 0 marks
/// "not started"). Counted in 64 bits: pids reach 4,194,304 on Debian's default `pid_max`, and
/// 32 bits overflowed above 542,362.
fn start_for(pid: u32, span: u32) -> u32 {
    1 + (u64::from(pid) * 7919 % u64::from(span.max(1))) as u32
}

/// Claims `port` for this process among the processes of this machine that use [`free_port`]:
/// a file named after the port in a shared directory, created only if absent, holds the
/// claimant's pid. A claim whose process is gone is taken over. False if another live process
/// holds it. Without the directory (a read-only temporary directory) every port counts as
/// claimed, as before claims existed.
fn claim(port: u16) -> bool {
    use std::io::Write;
    let dir = claims_dir();
    if std::fs::create_dir_all(&dir).is_err() {
        return true;
    }
    let path = dir.join(port.to_string());
    let me = std::process::id();
    for _ in 0..2 {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => return f.write_all(me.to_string().as_bytes()).is_ok(),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                // Ours already, another live process's, or one being written just now (no pid
                // yet): left alone. Only a claim whose process is gone is taken over.
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = text.trim().parse::<u32>().ok();
                let gone = match holder {
                    Some(pid) => pid != me && !std::path::Path::new(&format!("/proc/{pid}")).exists(),
                    // No pid: being written just now, or left empty by a process killed between
                    // creating and writing it. Taken over once it has been empty for a while.
                    None => text.trim().is_empty() && abandoned(&path),
                };
                if !gone {
                    return false;
                }
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => return true,
        }
    }
    false
}

/// A claim file unchanged for longer than any process takes to write its pid into it.
fn abandoned(path: &std::path::Path) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > std::time::Duration::from_secs(10))
}

/// Where the claims of [`claim`] are kept.
fn claims_dir() -> std::path::PathBuf {
    std::env::temp_dir().join("referee-ports")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_handed_out_once_and_claimed_for_this_process() {
        let a = free_port().unwrap();
        let b = free_port().unwrap();
        assert_ne!(a, b);
        let held = claims_dir().join(a.to_string());
        assert_eq!(std::fs::read_to_string(held).unwrap(), std::process::id().to_string());
        assert!(!claim(a), "a port this process claimed is not claimed again");
    }

    #[test]
    fn a_claim_of_a_process_that_is_gone_is_taken_over() {
        let dir = claims_dir();
        std::fs::create_dir_all(&dir).unwrap();
        // Pids above the kernel's limit (at most 2^22) belong to no process.
        let port = 9_999u16;
        std::fs::write(dir.join(port.to_string()), "4194305").unwrap();
        assert!(claim(port));
        assert_eq!(std::fs::read_to_string(dir.join(port.to_string())).unwrap(), std::process::id().to_string());
        let _ = std::fs::remove_file(dir.join(port.to_string()));
    }

    #[test]
    fn every_pid_up_to_the_largest_starts_inside_the_span() {
        // 4,194,304 is Debian's pid_max; u32::MAX stands for anything a kernel could raise it to.
        for pid in [1, 542_362, 542_363, 4_194_304, u32::MAX] {
            let start = start_for(pid, 22_768);
            assert!((1..=22_768).contains(&start), "pid {pid} starts at {start}");
        }
    }

    #[test]
    fn an_empty_claim_is_left_while_fresh_and_taken_over_once_abandoned() {
        let dir = claims_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let port = 9_998u16;
        let path = dir.join(port.to_string());
        let file = std::fs::File::create(&path).unwrap();
        assert!(!claim(port), "a claim being written just now is left to its writer");
        file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(60)).unwrap();
        drop(file);
        assert!(claim(port), "a claim left empty by a process killed while writing it is taken over");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), std::process::id().to_string());
        let _ = std::fs::remove_file(&path);
    }
}
