//! What is being fenced: the old active node and its master.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::token::FencingToken;

/// The old active node that must be made unable to serve before a new one is promoted.
///
/// The agent builds this from what the old active published about itself (the election
/// breadcrumb) and its own configuration. Fields that are unknown stay `None`; each method
/// states which fields it needs and fails, naming the missing one, when they are absent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceTarget {
    /// The node id of the old active (its agent's id).
    pub node_id: String,
    /// Host name or address of the old active's machine.
    pub host: String,
    /// The master's service port on `host`. Used to find its process on this host (`kill`),
    /// to isolate it (`isolate`), and handed to `shell` and `ssh` commands.
    pub port: u16,
    /// Base URL of the master's HA endpoint (`http://host:port`). When `None`, the `graceful`
    /// method uses `http://{host}:{port}`.
    pub ha_url: Option<String>,
    /// The master's process id, when known. Only meaningful on the master's own host.
    pub pid: Option<u32>,
    /// The master's start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`),
    /// recorded alongside `pid`. `kill` refuses to signal a bare pid without it, because a pid
    /// alone may by now name an unrelated process.
    pub start_time: Option<u64>,
    /// Path of the master's pidfile on its host, when it writes one.
    pub pidfile: Option<PathBuf>,
    /// The fencing token the old active held.
    pub token: FencingToken,
    /// The old active's own promise (its agent's `watchdog.self_fence`): once its lock is gone
    /// while its master may be active, its agent stops feeding a hardware or kernel watchdog,
    /// which resets its host within this many milliseconds unless the agent demoted the master
    /// first. Only that node can make the promise, so only its breadcrumb carries it; the
    /// `watchdog` method waits on it. `None`: no promise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_fence_ms: Option<u64>,
}

impl FenceTarget {
    /// A target known only by node id, host, port and the token it held.
    pub fn new(node_id: impl Into<String>, host: impl Into<String>, port: u16, token: FencingToken) -> Self {
        FenceTarget {
            node_id: node_id.into(),
            host: host.into(),
            port,
            ha_url: None,
            pid: None,
            start_time: None,
            pidfile: None,
            token,
            self_fence_ms: None,
        }
    }

    /// The base URL of the master's HA endpoint, without a trailing slash.
    pub fn ha_base_url(&self) -> String {
        match &self.ha_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None if self.host.contains(':') => format!("http://[{}]:{}", self.host, self.port),
            None => format!("http://{}:{}", self.host, self.port),
        }
    }
}

/// Whether `id` may be written into firewall rule comments and remote command lines.
///
/// Node ids are chosen by operators, but they arrive here from the network (the breadcrumb),
/// so methods that must place one on a remote command line accept only this conservative
/// alphabet and refuse everything else rather than quoting it.
pub(crate) fn is_plain_identifier(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && !id.starts_with('-')
}

/// Whether `host` may be handed to `ssh` as a destination: no option look-alikes, no spaces,
/// no user or port syntax smuggled in.
pub(crate) fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('-')
        && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ha_url_defaults_to_host_and_port() {
        let mut t = FenceTarget::new("n1", "10.0.0.5", 8080, FencingToken(3));
        assert_eq!(t.ha_base_url(), "http://10.0.0.5:8080");
        t.host = "::1".into();
        assert_eq!(t.ha_base_url(), "http://[::1]:8080");
        t.ha_url = Some("http://m1:9000/".into());
        assert_eq!(t.ha_base_url(), "http://m1:9000");
    }

    #[test]
    fn identifiers_and_hosts_reject_shell_and_option_syntax() {
        assert!(is_plain_identifier("node-1.a_b"));
        assert!(!is_plain_identifier("n1; rm -rf /"));
        assert!(!is_plain_identifier("-n1"));
        assert!(!is_plain_identifier("$(id)"));
        assert!(!is_plain_identifier(""));
        assert!(is_plain_host("db-1.example.org"));
        assert!(is_plain_host("::1"));
        assert!(!is_plain_host("-oProxyCommand=x"));
        assert!(!is_plain_host("root@h"));
        assert!(!is_plain_host("h x"));
    }
}
