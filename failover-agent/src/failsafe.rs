//! Failsafe mode: keeping an active master through a coordinator outage, as long as every
//! other member confirms it is not active.
//!
//! Without failsafe an active agent that cannot reach the coordinator demotes its master when
//! its lease runs out, because it cannot tell an outage of the coordinator from its own
//! isolation. With failsafe it asks instead: every other member's agent is sent
//! `POST /peer/failsafe` with this node's id, token and the promise period `ttl_ms`.
//!
//! ```text
//!  active (coordinator unreachable)                 each other member's agent
//!  ── round sent at t ──▶ POST /peer/failsafe ──▶  not active, holds no lock?
//!                                                   yes: promise not to contend until receipt + ttl
//!  ◀── every member accepted ──────────────────────  {accepted: true}
//!  master stays active until t + ttl − D − margin
//! ```
//!
//! A member that does not answer, answers late, refuses or is not reachable ends the extension:
//! the master is demoted when the last confirmed round runs out. A member that confirms keeps
//! out of the election until its promise runs out, measured from when it received the request
//! (which is after the active sent it), so the active's lease always ends first.
//!
//! Failsafe never outlives a session the coordinator says is gone: once the coordinator answers
//! again, the lock (or its absence) decides, and a member still bound by a promise waits out
//! at most one `ttl_ms` before contending.

use std::time::Duration;

use referee_fencing::FencingToken;
use serde::{Deserialize, Serialize};

use crate::model::Member;

/// The peer path of the failsafe confirmation.
pub const PEER_FAILSAFE_PATH: &str = "/peer/failsafe";

/// The largest promise a member gives, whatever the asker requests.
pub const MAX_PROMISE: Duration = Duration::from_secs(600);

/// `POST /peer/failsafe`: an active that cannot reach the coordinator asks for confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailsafeRequest {
    /// The asking (active) node.
    pub node_id: String,
    /// Its token.
    pub token: FencingToken,
    /// How long the member must stay out of the election if it confirms.
    pub ttl_ms: u64,
}

/// The member's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailsafeResponse {
    /// The answering node.
    pub node_id: String,
    /// It is not active, holds no lock, and will not contend for the promised time.
    pub accepted: bool,
    /// Why, in a sentence.
    pub reason: String,
}

/// The outcome of one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoundOutcome {
    /// Every other member confirmed.
    Confirmed {
        /// How many members confirmed.
        members: usize,
    },
    /// At least one did not; the first reason found.
    Refused(String),
}

/// One round: asks every member but `me` at once and waits for all answers or `timeout`.
///
/// `members` must be the list as last read from the coordinator and must contain `me`: a list
/// that does not was never read, and confirms nothing.
pub async fn run_round(
    http: &reqwest::Client,
    secret: Option<&str>,
    me: &str,
    token: FencingToken,
    ttl: Duration,
    members: &[Member],
    timeout: Duration,
) -> RoundOutcome {
    if !members.iter().any(|m| m.node_id == me) {
        return RoundOutcome::Refused("the member list was never read; nobody can be asked".into());
    }
    let request = FailsafeRequest { node_id: me.to_string(), token, ttl_ms: ttl.as_millis() as u64 };
    let mut asks = tokio::task::JoinSet::new();
    for member in members.iter().filter(|m| m.node_id != me) {
        let Some(url) = &member.peer_url else {
            return RoundOutcome::Refused(format!("{} publishes no peer API address", member.node_id));
        };
        let mut call =
            http.post(format!("{}{PEER_FAILSAFE_PATH}", url.trim_end_matches('/'))).timeout(timeout).json(&request);
        if let Some(secret) = secret {
            call = call.bearer_auth(secret);
        }
        let node = member.node_id.clone();
        asks.spawn(async move {
            let answer = match call.send().await {
                Err(e) => return Err(format!("{node} did not answer: {e}")),
                Ok(r) if !r.status().is_success() => {
                    return Err(format!("{node} answered {}: {}", r.status(), r.text().await.unwrap_or_default()))
                }
                Ok(r) => r.json::<FailsafeResponse>().await,
            };
            match answer {
                Ok(a) if a.accepted && a.node_id == node => Ok(()),
                Ok(a) if a.accepted => Err(format!("{node}'s address answered as {}", a.node_id)),
                Ok(a) => Err(format!("{node} refused: {}", a.reason)),
                Err(e) => Err(format!("{node} answered unreadably: {e}")),
            }
        });
    }
    let mut confirmed = 0;
    while let Some(joined) = asks.join_next().await {
        match joined {
            Ok(Ok(())) => confirmed += 1,
            Ok(Err(why)) => return RoundOutcome::Refused(why),
            Err(e) => return RoundOutcome::Refused(format!("asking a member failed: {e}")),
        }
    }
    RoundOutcome::Confirmed { members: confirmed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use referee_fencing::FenceTarget;

    fn member(node: &str, peer_url: Option<&str>) -> Member {
        Member {
            node_id: node.into(),
            target: FenceTarget::new(node, "127.0.0.1", 1, FencingToken(0)),
            peer_url: peer_url.map(Into::into),
            probe_addr: None,
        }
    }

    #[tokio::test]
    async fn a_list_without_this_node_or_a_member_without_address_confirms_nothing() {
        let http = reqwest::Client::new();
        let ttl = Duration::from_secs(4);
        let t = Duration::from_secs(1);
        let out = run_round(&http, None, "a", FencingToken(5), ttl, &[], t).await;
        assert!(matches!(out, RoundOutcome::Refused(ref r) if r.contains("never read")), "{out:?}");
        let members = [member("a", None), member("b", None)];
        let out = run_round(&http, None, "a", FencingToken(5), ttl, &members, t).await;
        assert!(matches!(out, RoundOutcome::Refused(ref r) if r.contains("b publishes no peer API")), "{out:?}");
        // Alone in the cluster: nobody else could take over.
        let out = run_round(&http, None, "a", FencingToken(5), ttl, &members[..1], t).await;
        assert_eq!(out, RoundOutcome::Confirmed { members: 0 });
    }

    #[tokio::test]
    async fn an_unreachable_member_refuses_the_round() {
        let http = reqwest::Client::new();
        // A port nobody listens on: bind, learn it, drop.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}");
        let members = [member("a", None), member("b", Some(&url))];
        let out =
            run_round(&http, Some("s"), "a", FencingToken(5), Duration::from_secs(4), &members, Duration::from_secs(1))
                .await;
        assert!(matches!(out, RoundOutcome::Refused(ref r) if r.starts_with("b did not answer")), "{out:?}");
    }
}
