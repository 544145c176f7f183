//! Whether a target's host names this machine, for the methods that act only here (`kill`,
//! and `isolate` with `via: local`): a pid, an empty port or a firewall rule on this host says
//! nothing about, and does nothing to, a master on another machine.

use std::net::IpAddr;

use tokio::time::Instant;

/// The names of this host: `localhost`, loopback addresses, the addresses of its interfaces,
/// the kernel host name, its short name and its fully qualified name, and the configured
/// `local_hosts`.
#[derive(Debug, Clone)]
pub(crate) struct ThisHost {
    /// The configured extra names, normalised.
    other_names: Vec<String>,
}

impl ThisHost {
    pub(crate) fn new(local_hosts: &[String]) -> Self {
        ThisHost { other_names: local_hosts.iter().map(|h| normalise_host(h)).collect() }
    }

    /// Whether `host` names this machine; `Err`, saying why, when that could not be told by
    /// `deadline` (a name lookup that did not answer in time).
    pub(crate) async fn is(&self, host: &str, deadline: Instant) -> Result<bool, String> {
        let host = normalise_host(host);
        if host.is_empty() {
            return Ok(false);
        }
        if host == "localhost" || self.other_names.contains(&host) {
            return Ok(true);
        }
        // Read at each call: addresses and the host name may change while the agent runs.
        let local = interface_addresses();
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(ip.is_loopback() || local.contains(&ip));
        }
        let kernel =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|n| normalise_host(&n)).unwrap_or_default();
        if kernel.is_empty() {
            return Ok(false);
        }
        if host == kernel || (!host.contains('.') && first_label(&kernel) == host) {
            return Ok(true);
        }
        // A qualified name whose first label is this host's short name is this host's FQDN
        // when it resolves here (only such names are resolved, through /etc/hosts or DNS).
        if first_label(&host) != first_label(&kernel) {
            return Ok(false);
        }
        // getaddrinfo runs on the blocking pool, never on a runtime worker, and is waited for
        // only until the deadline: with DNS unreachable (as in the partitions fencing is for)
        // it takes resolv.conf's timeout times its attempts and servers, far past any fence's.
        let looked_up = tokio::time::timeout_at(deadline, tokio::net::lookup_host((host.as_str(), 0))).await;
        match looked_up {
            Ok(Ok(addrs)) => Ok(resolves_here(&addrs.map(|a| a.ip()).collect::<Vec<_>>(), &local)),
            // A name that does not resolve names no address of this host.
            Ok(Err(_)) => Ok(false),
            Err(_) => {
                Err(format!("looking up `{host}` (named like this host, {kernel}) did not finish before the deadline"))
            }
        }
    }
}

/// The first label of a host name.
fn first_label(host: &str) -> &str {
    host.split('.').next().unwrap_or(host)
}

/// Whether any of `resolved` is a loopback address or one of `local`.
fn resolves_here(resolved: &[IpAddr], local: &[IpAddr]) -> bool {
    resolved.iter().any(|ip| ip.is_loopback() || local.contains(ip))
}

/// The addresses of this host's interfaces (in the agent's network namespace).
fn interface_addresses() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addrs
        .filter_map(|a| a.address)
        .filter_map(|a| {
            if let Some(v4) = a.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect()
}

/// A host as compared: no trailing dot, no IPv6 brackets or zone, lower case.
fn normalise_host(host: &str) -> String {
    let host = host.trim().trim_end_matches('.').trim_start_matches('[').trim_end_matches(']');
    let host = match host.split_once('%') {
        Some((address, _zone)) if address.contains(':') => address,
        _ => host,
    };
    host.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn soon() -> Instant {
        Instant::now() + std::time::Duration::from_secs(10)
    }

    #[tokio::test]
    async fn loopback_and_configured_names_are_this_host_and_others_are_not() {
        let here = ThisHost::new(&["DB1.example.internal.".to_string()]);
        for host in
            ["localhost", "127.0.0.1", "127.1.2.3", "::1", "[::1]", "db1.example.internal", "DB1.Example.Internal."]
        {
            assert_eq!(here.is(host, soon()).await, Ok(true), "{host}");
        }
        for host in ["db2.example.internal", "192.0.2.200", "::2", "", "db9.example.invalid"] {
            assert_eq!(here.is(host, soon()).await, Ok(false), "{host}");
        }
    }

    #[tokio::test]
    async fn every_interface_address_and_the_qualified_name_are_this_host() {
        let here = ThisHost::new(&[]);
        let local = interface_addresses();
        assert!(local.iter().any(|ip| ip.is_loopback()), "{local:?}");
        for ip in &local {
            assert_eq!(here.is(&ip.to_string(), soon()).await, Ok(true), "{ip}");
        }
        // The FQDN: resolves to an address here (or loopback, as Debian's 127.0.1.1 entry).
        let lan: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(resolves_here(&[lan], &[lan]));
        assert!(resolves_here(&["127.0.1.1".parse().unwrap()], &[]));
        assert!(!resolves_here(&["192.0.2.9".parse().unwrap()], &[lan]));
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        let short = first_label(&normalise_host(&kernel)).to_string();
        assert_eq!(here.is(&short, soon()).await, Ok(true), "{short}");
        assert_eq!(here.is(&format!("{short}.example.invalid"), soon()).await, Ok(false), "resolves nowhere");
    }
}
