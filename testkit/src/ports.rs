//! Loopback ports for child processes.

use std::sync::atomic::{AtomicU32, Ordering};

/// A loopback port for a child process to listen on.
///
/// A port found by binding port 0 and releasing it can be handed out again by the kernel (to an
/// outgoing connection or another port-0 bind) before the child binds it. So ports come from
/// below the kernel's ephemeral range, which neither uses, each handed out at most once per
/// process, starting at a point derived from the pid so concurrent test binaries spread apart.
pub fn free_port() -> std::io::Result<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_low.max(12_000));
    let span = high - low;
    let _ = NEXT.compare_exchange(0, 1 + (std::process::id() * 7919) % span, Ordering::SeqCst, Ordering::SeqCst);
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = (low + n % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        format!("no free loopback port between {low} and {high}"),
    ))
}
