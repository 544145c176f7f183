//! The fencing methods: each turns (target, new token, deadline) into a [`MethodOutcome`].
//!
//! One file per method, and `this_host.rs` for the methods that act only on this host. [`Method`] is a method prepared from its validated configuration
//! (secrets loaded, URLs checked); the driver calls [`Method::fence`] with a deadline that
//! already respects the overall one, and bounds it again from outside as a backstop.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{tls_field, ClientTlsConfig, ConfigError, MethodConfig};
use crate::outcome::{MethodKind, MethodOutcome, Readiness};
use crate::target::FenceTarget;
use crate::token::FencingToken;

pub(crate) mod agent;
pub(crate) mod fence_agent;
pub(crate) mod graceful;
pub(crate) mod http;
pub(crate) mod isolate;
pub(crate) mod kill;
pub(crate) mod shell;
pub(crate) mod ssh;
pub(crate) mod this_host;
pub(crate) mod token;
pub(crate) mod watchdog;

/// A secret loaded at start-up. Its `Debug` never shows the value, so it cannot leak through
/// logs or error messages.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// Loads a secret from a file or an environment variable, as validated in the config.
pub(crate) fn load_secret(
    file: Option<&Path>,
    env: Option<&str>,
    err: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<Option<Secret>, ConfigError> {
    match (file, env) {
        (Some(path), _) => match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Ok(Some(Secret(text.trim().to_string()))),
            Ok(_) => Err(err("secret_file", format!("`{}` is empty", path.display()))),
            Err(e) => Err(err("secret_file", format!("cannot read `{}`: {e}", path.display()))),
        },
        (None, Some(name)) => match std::env::var(name) {
            Ok(value) if !value.trim().is_empty() => {
                crate::command::hide_from_programs(name);
                Ok(Some(Secret(value.trim().to_string())))
            }
            _ => Err(err("secret_env", format!("environment variable `{name}` is not set or empty"))),
        },
        (None, None) => Ok(None),
    }
}

/// A method's own HTTP client, built from its `tls` section at preparation, so an unreadable
/// or unusable file stops the agent at start-up rather than at the first fence.
///
/// Configured as the fencer's shared client otherwise is: no overall timeout (each request
/// sets its own from the method deadline), no redirects (a fencing endpoint that
/// redirects is misconfigured, and following it could carry the secret elsewhere) and no proxy
/// from the environment (it would see where the secret goes, and time the connection in the
/// master's stead).
pub(crate) fn tls_client(
    tls: &ClientTlsConfig,
    err: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<reqwest::Client, ConfigError> {
    let builder = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).no_proxy();
    tls.build_client(builder).map_err(|e| err(tls_field(e.field), e.problem))
}

/// A method ready to run.
#[derive(Debug)]
pub(crate) enum Method {
    Graceful(graceful::Graceful),
    Agent(agent::Agent),
    Kill(kill::Kill),
    Ssh(ssh::Ssh),
    Shell(shell::Shell),
    Http(http::Http),
    Isolate(isolate::Isolate),
    Token(token::TokenFloor),
    FenceAgent(fence_agent::FenceAgent),
    Watchdog(watchdog::Watchdog),
}

/// What every method gets besides the target.
pub(crate) struct Context<'a> {
    /// Shared HTTP client (connection pool, TLS roots).
    pub http: &'a reqwest::Client,
    /// The target being fenced.
    pub target: &'a FenceTarget,
    /// The token of the node taking over.
    pub new_token: FencingToken,
    /// When this attempt must be over.
    pub deadline: Instant,
}

impl Context<'_> {
    /// Time left until the deadline.
    pub(crate) fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

impl Method {
    /// Prepares a validated method configuration (loads its secret, if any).
    pub(crate) fn prepare(
        config: &MethodConfig,
        err: &dyn Fn(&'static str, String) -> ConfigError,
    ) -> Result<Method, ConfigError> {
        Ok(match config {
            MethodConfig::Graceful(c) => Method::Graceful(graceful::Graceful::new(c, err)?),
            MethodConfig::Agent(c) => Method::Agent(agent::Agent::new(c, err)?),
            MethodConfig::Kill(c) => Method::Kill(kill::Kill::new(c)),
            MethodConfig::Ssh(c) => Method::Ssh(ssh::Ssh::new(c)),
            MethodConfig::Shell(c) => Method::Shell(shell::Shell::new(c)),
            MethodConfig::Http(c) => Method::Http(http::Http::new(c, err)?),
            MethodConfig::Isolate(c) => Method::Isolate(isolate::Isolate::new(c)),
            MethodConfig::Token(c) => Method::Token(token::TokenFloor::new(c, err)?),
            MethodConfig::FenceAgent(c) => Method::FenceAgent(fence_agent::FenceAgent::new(c, err)?),
            MethodConfig::Watchdog(c) => Method::Watchdog(watchdog::Watchdog::new(c)),
        })
    }

    /// The method's kind.
    pub(crate) fn kind(&self) -> MethodKind {
        match self {
            Method::Graceful(_) => MethodKind::Graceful,
            Method::Agent(_) => MethodKind::Agent,
            Method::Kill(_) => MethodKind::Kill,
            Method::Ssh(_) => MethodKind::Ssh,
            Method::Shell(_) => MethodKind::Shell,
            Method::Http(_) => MethodKind::Http,
            Method::Isolate(_) => MethodKind::Isolate,
            Method::Token(_) => MethodKind::Token,
            Method::FenceAgent(_) => MethodKind::FenceAgent,
            Method::Watchdog(_) => MethodKind::Watchdog,
        }
    }

    /// Makes the target unable to serve, or says why it could not.
    pub(crate) async fn fence(&self, ctx: &Context<'_>) -> MethodOutcome {
        match self {
            Method::Graceful(m) => m.fence(ctx).await,
            Method::Agent(m) => m.fence(ctx).await,
            Method::Kill(m) => m.fence(ctx).await,
            Method::Ssh(m) => m.fence(ctx).await,
            Method::Shell(m) => m.fence(ctx).await,
            Method::Http(m) => m.fence(ctx).await,
            Method::Isolate(m) => m.fence(ctx).await,
            Method::Token(m) => m.fence(ctx).await,
            Method::FenceAgent(m) => m.fence(ctx).await,
            Method::Watchdog(m) => m.fence(ctx).await,
        }
    }

    /// Whether the method could fence the target, found without fencing it.
    pub(crate) async fn check(&self, ctx: &Context<'_>) -> Readiness {
        match self {
            Method::Graceful(m) => m.check(ctx).await,
            Method::Agent(m) => m.check(ctx).await,
            Method::Kill(m) => m.check(ctx).await,
            Method::Ssh(m) => m.check(ctx).await,
            Method::Shell(m) => m.check(),
            Method::Http(m) => m.check(ctx).await,
            Method::Isolate(m) => m.check(ctx).await,
            Method::Token(_) => {
                Readiness::Unchecked { why: "raising a token floor cannot be tried without raising it".into() }
            }
            Method::FenceAgent(m) => m.check(ctx).await,
            Method::Watchdog(_) => Readiness::Unchecked {
                why: "the watchdog's promise is known only from the old active's breadcrumb, when a fence begins"
                    .into(),
            },
        }
    }

    /// Whether [`Method::unfence`] does anything.
    pub(crate) fn is_reversible(&self) -> bool {
        match self {
            Method::Isolate(_) => true,
            // A fence agent's power-off is undone by powering on, as Pacemaker unfences.
            Method::FenceAgent(m) => m.is_reversible(),
            // Killing, powering off through an HTTP API and raising a token floor are not
            // undone by the fencer: the node comes back through its own restart and rejoins as
            // standby.
            Method::Graceful(_)
            | Method::Agent(_)
            | Method::Kill(_)
            | Method::Ssh(_)
            | Method::Shell(_)
            | Method::Http(_)
            | Method::Token(_)
            | Method::Watchdog(_) => false,
        }
    }

    /// Removes what a reversible method put in place. `Fenced` here means "verified removed".
    pub(crate) async fn unfence(&self, ctx: &Context<'_>) -> MethodOutcome {
        match self {
            Method::Isolate(m) => m.unfence(ctx).await,
            Method::FenceAgent(m) if m.is_reversible() => m.unfence(ctx).await,
            Method::Graceful(_)
            | Method::Agent(_)
            | Method::Kill(_)
            | Method::Ssh(_)
            | Method::Shell(_)
            | Method::Http(_)
            | Method::Token(_)
            | Method::FenceAgent(_)
            | Method::Watchdog(_) => MethodOutcome::fenced("nothing to undo"),
        }
    }
}

/// Runs `work`, which may block (reading a pidfile that is a FIFO or sits on a hung mount,
/// scanning `/proc`), on tokio's blocking pool instead of a runtime worker, and waits for it
/// until `deadline`. A worker held by it would hold every task of that worker, the fencer's
/// own deadlines and the agent's watchdog tending among them, and no timeout can cut a call
/// that never yields. `None` once the deadline has passed (the thread is left to finish on its
/// own and its result dropped) or the runtime is shutting down; a panic in `work` goes on here.
pub(crate) async fn off_the_runtime<T: Send + 'static>(
    deadline: Instant,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    match tokio::time::timeout_at(deadline, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(value)) => Some(value),
        Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Ok(Err(_)) | Err(_) => None,
    }
}

/// A method's failure to reach what it acts through, as a check's finding.
pub(crate) fn problem(outcome: MethodOutcome) -> Readiness {
    match outcome {
        MethodOutcome::Fenced { detail } => Readiness::Ready { detail },
        MethodOutcome::Failed { reason } | MethodOutcome::Indeterminate { reason } => Readiness::Problem { reason },
    }
}

/// Maps a transport error of an HTTP method to an outcome.
///
/// A request that never connected changed nothing: failed. A request that timed out, or broke
/// after it was sent, may have been acted on: indeterminate.
pub(crate) fn http_error(what: &str, e: &reqwest::Error) -> MethodOutcome {
    // A connection never made delivered nothing: the target is certainly not fenced by it.
    if e.is_connect() && e.is_timeout() {
        MethodOutcome::failed(format!(
            "{what}: cannot connect: no answer to the connection request in time (host down or traffic dropped)"
        ))
    } else if e.is_timeout() {
        MethodOutcome::indeterminate(format!("{what}: no answer before the deadline"))
    } else if e.is_connect() {
        MethodOutcome::failed(format!("{what}: cannot connect: {}", error_chain(e)))
    } else if e.is_builder() {
        MethodOutcome::failed(format!("{what}: invalid request: {}", error_chain(e)))
    } else {
        MethodOutcome::indeterminate(format!("{what}: lost contact: {}", error_chain(e)))
    }
}

/// An error and its sources on one line (reqwest's top-level message alone is vague).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// The most of a response body a method reads: its answers are a few hundred bytes of JSON,
/// and the endpoint may belong to the misbehaving master being fenced, which could otherwise
/// fill the agent's memory mid-fence. The agent reads its peers' answers under the same cap
/// (with [`read_json`] and [`body_snippet`]).
pub const MAX_ANSWER_BYTES: usize = 64 << 10;

/// Reads a response body, at most `limit` bytes; past that, what was read with `true` (the
/// rest is left unread).
async fn read_at_most(mut response: reqwest::Response, limit: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// Reads a JSON answer of at most [`MAX_ANSWER_BYTES`]; the error says why not. A longer
/// answer is not read past the cap (the caller then drops the response, and its connection).
pub async fn read_json<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, String> {
    match read_at_most(response, MAX_ANSWER_BYTES).await {
        Ok((_, true)) => Err(format!("the answer is longer than {MAX_ANSWER_BYTES} bytes (not read further)")),
        Ok((body, false)) => serde_json::from_slice(&body).map_err(|e| e.to_string()),
        Err(e) => Err(error_chain(&e)),
    }
}

/// Reads at most a short prefix of a response body (1 KiB) for a reason sentence: at most 200
/// characters, trimmed; "empty body" or "unreadable body" when there is nothing to show.
pub async fn body_snippet(response: reqwest::Response) -> String {
    match read_at_most(response, 1024).await {
        Ok((bytes, _)) => {
            let text = String::from_utf8_lossy(&bytes);
            let t: String = text.trim().chars().take(200).collect();
            if t.is_empty() {
                "empty body".into()
            } else {
                t
            }
        }
        Err(_) => "unreadable body".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blocking_work_is_given_up_at_the_deadline_without_holding_the_runtime() {
        let started = Instant::now();
        let gave_up = off_the_runtime(started + Duration::from_millis(100), || {
            std::thread::sleep(Duration::from_secs(2));
            1
        })
        .await;
        assert_eq!(gave_up, None);
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert_eq!(off_the_runtime(Instant::now() + Duration::from_secs(5), || 2).await, Some(2));
    }
}
