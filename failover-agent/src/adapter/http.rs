//! [`HttpAdapter`]: the master HA protocol over HTTP.
//!
//! Each call opens a fresh connection (no idle pooling). A health check then tests that the
//! master still accepts connections, and a master that has died is seen as *refused*, at once,
//! rather than as a stale pooled connection breaking off.

use std::error::Error as _;
use std::time::Duration;

use referee_fencing::protocol::{HA_ACTIVE_PATH, HA_HEALTH_PATH, HA_STANDBY_PATH, HA_STATE_PATH};
use referee_fencing::{FencingToken, TokenRequest, UnhealthyReport};
use reqwest::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::{
    confirm_demoted, confirm_promoted, short_reason, AdapterConfigError, AdapterError, AdapterFuture, HealthProblem,
    MasterAdapter, NoAnswer,
};
use crate::model::MasterStatus;

/// Answers longer than this are cut: a reason or a status is a few hundred bytes.
const MAX_BODY_BYTES: usize = 64 * 1024;

fn default_timeout_ms() -> u64 {
    5000
}

fn default_connect_timeout_ms() -> u64 {
    1000
}

/// `adapter: {kind: http, ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpAdapterConfig {
    /// The master's base URL (`http://127.0.0.1:8080`); the protocol paths are appended.
    pub url: String,
    /// Ceiling for one call, connecting included; a caller's deadline can only shorten it.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Ceiling for establishing the connection; must not exceed `timeout_ms`.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

impl HttpAdapterConfig {
    /// Checks the URL and the timings.
    pub fn validate(&self) -> Result<(), AdapterConfigError> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| AdapterConfigError::new("url", format!("`{}` is not a URL: {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(AdapterConfigError::new("url", format!("`{}` must be an http:// or https:// URL", self.url)));
        }
        if url.host().is_none() {
            return Err(AdapterConfigError::new("url", format!("`{}` has no host", self.url)));
        }
        if self.timeout_ms == 0 {
            return Err(AdapterConfigError::new("timeout_ms", "must be greater than 0"));
        }
        if self.connect_timeout_ms == 0 {
            return Err(AdapterConfigError::new("connect_timeout_ms", "must be greater than 0"));
        }
        if self.connect_timeout_ms > self.timeout_ms {
            return Err(AdapterConfigError::new(
                "connect_timeout_ms",
                format!(
                    "{} exceeds timeout_ms ({}); a connection cannot take longer than the whole call",
                    self.connect_timeout_ms, self.timeout_ms
                ),
            ));
        }
        Ok(())
    }
}

/// Talks to a master over the HA protocol.
#[derive(Debug, Clone)]
pub struct HttpAdapter {
    client: reqwest::Client,
    base: String,
    timeout: Duration,
}

impl HttpAdapter {
    /// Validates `config` and builds the HTTP client.
    pub fn new(config: &HttpAdapterConfig) -> Result<Self, AdapterConfigError> {
        config.validate()?;
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            // See the module comment: one connection per call.
            .pool_max_idle_per_host(0)
            // Straight to the master: through a proxy named in the environment, the health
            // check and its connect deadline would measure the proxy.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| AdapterConfigError::new("url", format!("cannot build an HTTP client: {e}")))?;
        Ok(HttpAdapter {
            client,
            base: config.url.trim_end_matches('/').to_string(),
            timeout: Duration::from_millis(config.timeout_ms),
        })
    }

    /// The earlier of the caller's deadline and this adapter's per-call ceiling.
    fn effective(&self, deadline: Instant) -> Instant {
        deadline.min(Instant::now() + self.timeout)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request and returns the status and the (capped) body, all within `deadline`.
    async fn exchange(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
        deadline: Instant,
    ) -> Result<(StatusCode, Vec<u8>), (NoAnswer, String)> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err((NoAnswer::TimedOut, format!("{what}: no time left before the deadline")));
        }
        let call = async {
            let response = request.timeout(remaining).send().await.map_err(|e| describe(what, &e))?;
            let status = response.status();
            let body = read_body(response).await.map_err(|e| describe(what, &e))?;
            Ok((status, body))
        };
        match tokio::time::timeout_at(deadline, call).await {
            Ok(result) => result,
            Err(_) => Err((NoAnswer::TimedOut, format!("{what}: no answer within {} ms", remaining.as_millis()))),
        }
    }

    async fn get_state(&self, deadline: Instant) -> Result<MasterStatus, AdapterError> {
        let url = self.url(HA_STATE_PATH);
        let what = format!("GET {url}");
        let (status, body) = self
            .exchange(self.client.get(&url), &what, deadline)
            .await
            .map_err(|(how, reason)| AdapterError::NotResponding { how, reason })?;
        if !status.is_success() {
            return Err(AdapterError::BadAnswer {
                reason: format!("{what} answered {status}: {}", body_reason(&body)),
            });
        }
        parse_status(&body).ok_or_else(|| AdapterError::BadAnswer {
            reason: format!("{what} answered {status} without a valid status: {}", snippet(&body)),
        })
    }

    /// POSTs a token to `path`; returns the status the master reports afterwards.
    async fn post_token(
        &self,
        path: &str,
        token: FencingToken,
        deadline: Instant,
    ) -> Result<MasterStatus, AdapterError> {
        let url = self.url(path);
        let what = format!("POST {url} (token {token})");
        let (status, body) = self
            .exchange(self.client.post(&url).json(&TokenRequest { token }), &what, deadline)
            .await
            .map_err(|(how, reason)| AdapterError::NotResponding { how, reason })?;
        if !status.is_success() {
            return Err(AdapterError::Rejected { reason: format!("{what} answered {status}: {}", body_reason(&body)) });
        }
        match parse_status(&body) {
            Some(reported) => Ok(reported),
            // Accepted without saying where it stands now: ask.
            None => self.get_state(deadline).await,
        }
    }
}

impl MasterAdapter for HttpAdapter {
    fn health(&self, deadline: Instant) -> AdapterFuture<'_, Result<(), HealthProblem>> {
        Box::pin(async move {
            let deadline = self.effective(deadline);
            let url = self.url(HA_HEALTH_PATH);
            let what = format!("GET {url}");
            let (status, body) = self
                .exchange(self.client.get(&url), &what, deadline)
                .await
                .map_err(|(how, reason)| HealthProblem::not_responding(how, reason))?;
            if status.is_success() {
                return Ok(());
            }
            let reason = body_reason(&body);
            if status == StatusCode::SERVICE_UNAVAILABLE {
                Err(HealthProblem::unhealthy(reason))
            } else {
                // Not the protocol's answer: a wrong URL, a proxy error page, a crashed handler.
                Err(HealthProblem::unhealthy(format!("{what} answered {status}: {reason}")))
            }
        })
    }

    fn state(&self, deadline: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
        Box::pin(async move { self.get_state(self.effective(deadline)).await })
    }

    fn promote(&self, token: FencingToken, deadline: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
        Box::pin(async move {
            let reported = self.post_token(HA_ACTIVE_PATH, token, self.effective(deadline)).await?;
            confirm_promoted(reported, token)
        })
    }

    fn demote(&self, token: FencingToken, deadline: Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
        Box::pin(async move {
            let reported = self.post_token(HA_STANDBY_PATH, token, self.effective(deadline)).await?;
            confirm_demoted(reported)
        })
    }
}

/// Reads at most [`MAX_BODY_BYTES`] of the body.
async fn read_body(mut response: Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = MAX_BODY_BYTES - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_BODY_BYTES {
            break;
        }
    }
    Ok(body)
}

fn parse_status(body: &[u8]) -> Option<MasterStatus> {
    super::parse_state(body)
}

/// The reason in a refusal: the `reason` of a JSON body, else the text itself, shortened.
fn body_reason(body: &[u8]) -> String {
    match serde_json::from_slice::<UnhealthyReport>(body) {
        Ok(report) => short_reason(&report.reason),
        Err(_) => snippet(body),
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    if text.trim().is_empty() {
        "(empty body)".into()
    } else {
        short_reason(&text)
    }
}

/// Classifies a transport error and spells out its whole cause chain (reqwest's own message
/// alone is only "error sending request").
fn describe(what: &str, error: &reqwest::Error) -> (NoAnswer, String) {
    let mut how = if error.is_timeout() { NoAnswer::TimedOut } else { NoAnswer::Broken };
    let mut reason = format!("{what}: {error}");
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => how = NoAnswer::Refused,
                std::io::ErrorKind::TimedOut => how = NoAnswer::TimedOut,
                _ => {}
            }
        }
        reason.push_str(": ");
        reason.push_str(&cause.to_string());
        source = cause.source();
    }
    (how, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> HttpAdapterConfig {
        HttpAdapterConfig { url: url.into(), timeout_ms: 5000, connect_timeout_ms: 1000 }
    }

    #[test]
    fn validation_names_the_bad_field() {
        assert!(config("http://127.0.0.1:8080").validate().is_ok());
        assert_eq!(config("127.0.0.1:8080").validate().unwrap_err().field, "url");
        assert_eq!(config("ftp://host/").validate().unwrap_err().field, "url");
        let mut c = config("http://h:1");
        c.timeout_ms = 0;
        assert_eq!(c.validate().unwrap_err().field, "timeout_ms");
        let mut c = config("http://h:1");
        c.connect_timeout_ms = 6000;
        assert_eq!(c.validate().unwrap_err().to_string(), "adapter.connect_timeout_ms: 6000 exceeds timeout_ms (5000); a connection cannot take longer than the whole call");
    }

    #[test]
    fn refusal_reasons_come_from_json_or_text() {
        assert_eq!(body_reason(br#"{"reason":"disk full"}"#), "disk full");
        assert_eq!(body_reason(b"plain words\n"), "plain words");
        assert_eq!(body_reason(b""), "(empty body)");
    }
}
