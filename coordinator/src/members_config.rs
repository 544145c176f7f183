//! The ensemble's members as every server and client can read them: the data of
//! `/zookeeper/config`, in Apache ZooKeeper's dynamic configuration format.
//!
//! ```text
//!  server.1=10.0.0.1:2888:2888:participant;10.0.0.1:2181
//!  server.4=10.0.0.4:2888:2888:observer;10.0.0.4:2181
//!  admin.1=10.0.0.1:8081
//!  version=100000007
//! ```
//!
//! openraft keeps a member's peer address only. Its client and admin addresses are written
//! here through the log (a server-issued [`crate::txn::TxnOp::EnsembleConfig`]): by the first
//! leader of an ensemble from its `servers`, and by the leader after every membership change made
//! through the admin listener. So a member added at run time is known with its addresses on
//! every server, after restarts and snapshots alike, and a client that follows
//! `/zookeeper/config` (as Apache Curator's ensemble tracker does) learns the new connect
//! string. The peer port is written twice because ZooKeeper's format has a quorum and an
//! election port and this ensemble runs both over one. `admin.N` lines are this ensemble's own;
//! ZooKeeper's parsers skip keys they do not know. `version` is the hex zxid of the write.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A member's role, as `/zookeeper/config` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberRole {
    /// Votes (a voter; ZooKeeper's participant).
    Participant,
    /// Does not vote (an observer; an openraft learner).
    Observer,
}

impl MemberRole {
    fn name(self) -> &'static str {
        match self {
            MemberRole::Participant => "participant",
            MemberRole::Observer => "observer",
        }
    }
}

/// One member's line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberLine {
    /// Its server id.
    pub id: u64,
    /// Voter or observer.
    pub role: MemberRole,
    /// Its peer address, as the membership holds it (`host:port`).
    pub peer: String,
    /// Where its clients connect, if known.
    pub client: Option<SocketAddr>,
    /// Its admin HTTP address, if it has one.
    pub admin: Option<SocketAddr>,
}

/// The text of `/zookeeper/config` for `members`, written under `zxid`: one `server.N` line
/// each in id order, then their `admin.N` lines, then `version` (with no newline after it, as
/// ZooKeeper writes it).
pub fn render(members: &[MemberLine], zxid: i64) -> String {
    let mut sorted: Vec<&MemberLine> = members.iter().collect();
    sorted.sort_by_key(|m| m.id);
    let mut out = String::new();
    for m in &sorted {
        let _ = write!(out, "server.{}={}:{}:{}", m.id, m.peer, port_of(&m.peer), m.role.name());
        if let Some(c) = m.client {
            let _ = write!(out, ";{c}");
        }
        out.push('\n');
    }
    for m in &sorted {
        if let Some(a) = m.admin {
            let _ = writeln!(out, "admin.{}={a}", m.id);
        }
    }
    let _ = write!(out, "version={zxid:x}");
    out
}

/// The port of a `host:port` peer address (the text after its last colon).
fn port_of(peer: &str) -> &str {
    peer.rsplit_once(':').map_or("", |(_, p)| p)
}

/// The members named in `/zookeeper/config` text, by id. Lines that are not this format's
/// (ZooKeeper's own settings, comments, a line cut short) are skipped: the text is read to
/// learn addresses, never trusted to decide membership.
pub fn parse(text: &str) -> BTreeMap<u64, MemberLine> {
    let mut members = BTreeMap::new();
    let mut admins = BTreeMap::new();
    for line in text.lines() {
        let Some((key, value)) = line.trim().split_once('=') else { continue };
        if let Some(id) = key.strip_prefix("server.").and_then(|i| i.parse::<u64>().ok()) {
            if let Some(m) = parse_server(id, value) {
                members.insert(id, m);
            }
        } else if let Some(id) = key.strip_prefix("admin.").and_then(|i| i.parse::<u64>().ok()) {
            if let Ok(a) = value.parse::<SocketAddr>() {
                admins.insert(id, a);
            }
        }
    }
    for (id, a) in admins {
        if let Some(m) = members.get_mut(&id) {
            m.admin = Some(a);
        }
    }
    members
}

/// `host:port:port:role[;client]` (ZooKeeper's form; the client part may be a bare port, which
/// names no address and is left unknown).
fn parse_server(id: u64, value: &str) -> Option<MemberLine> {
    let (servers, client) = match value.split_once(';') {
        Some((s, c)) => (s, c.parse::<SocketAddr>().ok()),
        None => (value, None),
    };
    let (rest, role) = servers.rsplit_once(':')?;
    let role = match role {
        "participant" => MemberRole::Participant,
        "observer" => MemberRole::Observer,
        _ => return None,
    };
    let (peer, _election) = rest.rsplit_once(':')?;
    Some(MemberLine { id, role, peer: peer.to_string(), client, admin: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: u64, role: MemberRole, admin: bool) -> MemberLine {
        MemberLine {
            id,
            role,
            peer: format!("127.0.0.1:{}", 2880 + id),
            client: Some(SocketAddr::from(([127, 0, 0, 1], 2180 + id as u16))),
            admin: admin.then(|| SocketAddr::from(([127, 0, 0, 1], 8080 + id as u16))),
        }
    }

    #[test]
    fn renders_zookeepers_format_in_id_order() {
        let text =
            render(&[line(4, MemberRole::Observer, false), line(1, MemberRole::Participant, true)], 0x1_0000_0007);
        assert_eq!(
            text,
            "server.1=127.0.0.1:2881:2881:participant;127.0.0.1:2181\n\
             server.4=127.0.0.1:2884:2884:observer;127.0.0.1:2184\n\
             admin.1=127.0.0.1:8081\n\
             version=100000007"
        );
    }

    #[test]
    fn what_is_rendered_parses_back() {
        let members = vec![
            line(1, MemberRole::Participant, true),
            line(2, MemberRole::Participant, false),
            line(5, MemberRole::Observer, true),
        ];
        let parsed = parse(&render(&members, 9));
        assert_eq!(parsed.into_values().collect::<Vec<_>>(), members);
    }

    #[test]
    fn a_member_without_a_known_client_address_keeps_its_line() {
        let mut m = line(3, MemberRole::Participant, false);
        m.client = None;
        let text = render(std::slice::from_ref(&m), 1);
        assert_eq!(text, "server.3=127.0.0.1:2883:2883:participant\nversion=1");
        assert_eq!(parse(&text).get(&3), Some(&m));
    }

    #[test]
    fn apache_zookeepers_own_lines_and_noise_are_read_or_skipped() {
        let text = "# a comment\n\
                    server.1=10.0.0.1:2888:3888:participant;0.0.0.0:2181\n\
                    server.2=10.0.0.2:2888:3888:participant;2181\n\
                    server.3=10.0.0.3:2888\n\
                    server.x=10.0.0.9:2888:3888:participant\n\
                    admin.7=127.0.0.1:1\n\
                    admin.1=not an address\n\
                    version=100000000\n";
        let parsed = parse(text);
        assert_eq!(parsed.keys().copied().collect::<Vec<_>>(), vec![1, 2], "only whole server lines count");
        assert_eq!(parsed[&1].peer, "10.0.0.1:2888");
        assert_eq!(parsed[&1].client, Some("0.0.0.0:2181".parse().unwrap()));
        assert_eq!(parsed[&2].client, None, "a bare client port names no address");
        assert_eq!(parsed[&1].admin, None);
    }
}
