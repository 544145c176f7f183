//! Whether a target's host names this machine, for the methods that act only here (`kill`,
//! and `isolate` with `via: local`): a pid, an empty port or a firewall rule on this host says
//! nothing about, and does nothing to, a master on another machine.

use std::net::IpAddr;

/// The names of this host: `localhost`, loopback addresses, the kernel host name, and the
/// configured `local_hosts`.
#[derive(Debug, Clone)]
pub(crate) struct ThisHost {
    /// The configured extra names, normalised.
    other_names: Vec<String>,
}

impl ThisHost {
    pub(crate) fn new(local_hosts: &[String]) -> Self {
        ThisHost { other_names: local_hosts.iter().map(|h| normalise_host(h)).collect() }
    }

    /// Whether `host` names this machine.
    pub(crate) fn is(&self, host: &str) -> bool {
        let host = normalise_host(host);
        if host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) {
            return true;
        }
        if self.other_names.contains(&host) {
            return true;
        }
        // Read at each call: the host name may be changed while the agent runs.
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|name| normalise_host(&name) == host).unwrap_or(false)
    }
}

/// A host as compared: no trailing dot, no IPv6 brackets, lower case.
fn normalise_host(host: &str) -> String {
    host.trim().trim_end_matches('.').trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_configured_names_are_this_host_and_others_are_not() {
        let here = ThisHost::new(&["DB1.example.internal.".to_string()]);
        for host in
            ["localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]", "db1.example.internal", "DB1.Example.Internal."]
        {
            assert!(here.is(host), "{host}");
        }
        for host in ["db2.example.internal", "10.0.0.12", "::2", ""] {
            assert!(!here.is(host), "{host}");
        }
    }
}
