//! `referee master-command`: the programs a failover agent's command adapter runs, for a master
//! that speaks the HA protocol over HTTP (the demo master).
//!
//! A master that cannot speak HTTP is driven by configured programs (`adapter: {kind:
//! command}`): health, state, promote and demote, each run without a shell under a deadline,
//! with the token in `FENCE_TOKEN`. This module is such a program, so that the command adapter
//! can be exercised end to end against a real master; it translates each operation into one HA
//! request and the answer into the command adapter's contract:
//!
//! | action | request | success (exit 0) | otherwise |
//! | --- | --- | --- | --- |
//! | `health` | `GET /ha/health` | `200` | exit 1, the reason as the last line of stderr |
//! | `state` | `GET /ha/state` | the status JSON on stdout | exit 1 |
//! | `promote` | `POST /ha/active {"token": FENCE_TOKEN}` | active with that token; status on stdout | exit 1 with the master's reason |
//! | `demote` | `POST /ha/standby {"token": FENCE_TOKEN}` | standby holding that token or a higher one; status on stdout | exit 1 with the master's reason |
//!
//! Exit 2 means the invocation itself is wrong (no URL, no or a malformed `FENCE_TOKEN`), 3
//! that the master did not answer. Without `--url`, the master is the one `TARGET_HA_URL` names:
//! that is what the `shell` fencing method sets, so `master-command demote` is also a fencing
//! method that demotes the old master with the new token ("fenced" only once it reports
//! standby holding the new token: a standby with an older one could still take a delayed
//! promotion carrying it).

use std::fmt;
use std::time::Duration;

use referee_fencing::protocol::{HA_ACTIVE_PATH, HA_HEALTH_PATH, HA_STANDBY_PATH, HA_STATE_PATH};
use referee_fencing::{FencingToken, HaState, TokenRequest};

/// The operation asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Exit 0 when the master reports healthy.
    Health,
    /// Print the master's status.
    State,
    /// Make the master active with `FENCE_TOKEN`.
    Promote,
    /// Make the master standby, telling it `FENCE_TOKEN` (exit 0 once it holds that token).
    Demote,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Health => "health",
            Action::State => "state",
            Action::Promote => "promote",
            Action::Demote => "demote",
        })
    }
}

/// How a run ended: what to print and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The process exit code (see the module documentation).
    pub code: u8,
    /// Printed on stdout (a status JSON, or nothing).
    pub stdout: String,
    /// Printed on stderr; its last line is the reason the agent reports.
    pub stderr: String,
}

impl Outcome {
    fn ok(stdout: String) -> Outcome {
        Outcome { code: 0, stdout, stderr: String::new() }
    }

    fn refused(reason: impl Into<String>) -> Outcome {
        Outcome { code: 1, stdout: String::new(), stderr: reason.into() }
    }

    fn usage(reason: impl Into<String>) -> Outcome {
        Outcome { code: 2, stdout: String::new(), stderr: reason.into() }
    }

    fn no_answer(reason: impl Into<String>) -> Outcome {
        Outcome { code: 3, stdout: String::new(), stderr: reason.into() }
    }
}

/// The master's base URL: `--url`, else `TARGET_HA_URL` (set by the `shell` fencing method).
pub fn master_url(flag: Option<String>, target_ha_url: Option<String>) -> Result<String, String> {
    match flag.or(target_ha_url) {
        Some(url) if !url.trim().is_empty() => Ok(url.trim().trim_end_matches('/').to_string()),
        Some(_) | None => Err("no master: give --url, or run as a shell fencing method (TARGET_HA_URL)".into()),
    }
}

/// The token of a promote or demote, from `FENCE_TOKEN`.
pub fn token_from_env(value: Option<String>) -> Result<FencingToken, String> {
    let value = value.ok_or("FENCE_TOKEN is not set; the agent sets it for promote and demote")?;
    value.trim().parse::<u64>().map(FencingToken).map_err(|_| format!("FENCE_TOKEN is {value:?}, not a token"))
}

/// A master's status as printed: its state and token, and its replication position when it
/// reports one (the agent's lag gate and ranking read it).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Reported {
    state: HaState,
    token: FencingToken,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
}

/// Runs `action` against the master at `url` (each request bounded by `timeout`); `token` is
/// needed by promote and demote.
pub async fn run(url: &str, action: Action, token: Result<FencingToken, String>, timeout: Duration) -> Outcome {
    let http = match reqwest::Client::builder().timeout(timeout).build() {
        Ok(c) => c,
        Err(e) => return Outcome::usage(format!("cannot build an HTTP client: {e}")),
    };
    let (path, body) = match action {
        Action::Health => (HA_HEALTH_PATH, None),
        Action::State => (HA_STATE_PATH, None),
        Action::Promote | Action::Demote => {
            let token = match token {
                Ok(t) => t,
                Err(e) => return Outcome::usage(e),
            };
            let path = if action == Action::Promote { HA_ACTIVE_PATH } else { HA_STANDBY_PATH };
            (path, Some(TokenRequest { token }))
        }
    };
    let target = format!("{url}{path}");
    let sent = match body {
        Some(b) => http.post(&target).json(&b).send().await,
        None => http.get(&target).send().await,
    };
    let answer = match sent {
        Ok(r) => r,
        Err(e) => return Outcome::no_answer(format!("{action}: {target} did not answer: {e}")),
    };
    let status = answer.status();
    let text = match answer.text().await {
        Ok(t) => t,
        Err(e) => return Outcome::no_answer(format!("{action}: {target} broke off its answer: {e}")),
    };
    if !status.is_success() {
        return Outcome::refused(format!("{action}: {target} answered {status}: {}", text.trim()));
    }
    if action == Action::Health {
        return Outcome::ok(String::new());
    }
    let reported: Reported = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => return Outcome::refused(format!("{action}: {target} answered no status ({e}): {}", text.trim())),
    };
    // The adapter judges promote and demote by the status printed; saying so here as well
    // gives a plain reason in its log instead of a bare mismatch.
    let wrong = match (action, reported.state) {
        (Action::Promote, HaState::Active) if Ok(reported.token) == token => None,
        (Action::Promote, _) => Some("active with the new token"),
        // As the `graceful` fencing method: standby with an older token could still take a
        // delayed promotion carrying it, so it is not a step-down to report as done.
        (Action::Demote, HaState::Standby) if token.as_ref().is_ok_and(|t| reported.token >= *t) => None,
        (Action::Demote, _) => Some("standby holding the new token"),
        (Action::Health | Action::State, _) => None,
    };
    let json = serde_json::to_string(&reported).unwrap_or_default();
    match wrong {
        None => Outcome::ok(format!("{json}\n")),
        Some(wanted) => Outcome {
            code: 1,
            stdout: format!("{json}\n"),
            stderr: format!("{action}: the master reports {json}, not {wanted}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_master_comes_from_the_flag_or_the_fencing_target() {
        assert_eq!(master_url(Some("http://a:1/".into()), Some("http://b:2".into())), Ok("http://a:1".into()));
        assert_eq!(master_url(None, Some("http://b:2".into())), Ok("http://b:2".into()));
        assert!(master_url(None, None).unwrap_err().contains("--url"));
        assert!(master_url(Some(" ".into()), None).is_err());
    }

    #[test]
    fn the_token_must_be_a_number() {
        assert_eq!(token_from_env(Some("42".into())), Ok(FencingToken(42)));
        assert!(token_from_env(Some("x".into())).unwrap_err().contains("\"x\""));
        assert!(token_from_env(None).unwrap_err().contains("FENCE_TOKEN"));
    }
}
