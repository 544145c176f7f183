//! `http`: ask a STONITH device, PDU or cloud API to power the target off.
//!
//! A 202 Accepted only means "will do": the status is then polled (the configured status URL,
//! else the `Location` header) until it reports the configured off value; fenced only then.
//! Without a status configuration a 202 is indeterminate. Any other 2xx is no proof either: an
//! API may answer 200 for "accepted, not done yet" (Proxmox's task id, a cloud operation still
//! pending) or with a failure in its body (`{"success": false}`). With a status URL it is
//! polled the same way; without one it is indeterminate, unless the operator has said that
//! this API's 2xx means off (`trust_2xx`). A method with neither a status to read nor
//! `trust_2xx` can never fence, and its check reports it as a problem. Errors from the API
//! (4xx, 5xx) are failures.
//! With `tls`, requests go through the method's own client (private CA, client certificate).

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::{Method as HttpMethod, StatusCode};

use crate::config::{ConfigError, HttpConfig, HttpStatusConfig};
use crate::methods::{body_snippet, http_error, load_secret, problem, read_json, tls_client, Context, Secret};
use crate::outcome::{MethodOutcome, Readiness};

#[derive(Debug)]
pub(crate) struct Http {
    method: HttpMethod,
    url: String,
    headers: BTreeMap<String, String>,
    body: Option<String>,
    secret: Option<(String, Secret)>,
    status: Option<HttpStatusConfig>,
    /// A 2xx other than 202 is taken as off without a status read (`trust_2xx`).
    trust_2xx: bool,
    /// Built from the method's `tls` section; `None` uses the fencer's shared client.
    client: Option<reqwest::Client>,
}

/// Percent-encodes a node id for a URL path segment or query value.
fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Replaces `{node_id}` in a configured URL.
pub(crate) fn expand_url(template: &str, node_id: &str) -> String {
    template.replace("{node_id}", &encode_component(node_id))
}

impl Http {
    pub(crate) fn new(
        config: &HttpConfig,
        err: &dyn Fn(&'static str, String) -> ConfigError,
    ) -> Result<Self, ConfigError> {
        let method = HttpMethod::from_bytes(config.method.as_bytes())
            .map_err(|_| err("method", format!("`{}` is not an HTTP method", config.method)))?;
        let secret = load_secret(config.secret_file.as_deref(), config.secret_env.as_deref(), err)?
            .map(|s| (config.secret_header.clone(), Secret(format!("{}{}", config.secret_prefix, s.expose()))));
        Ok(Http {
            method,
            url: config.url.clone(),
            headers: config.headers.clone(),
            body: config.body.clone(),
            secret,
            status: config.status.clone(),
            trust_2xx: config.trust_2xx,
            client: config.tls.as_ref().map(|tls| tls_client(tls, err)).transpose()?,
        })
    }

    fn request(&self, ctx: &Context<'_>, method: HttpMethod, url: &str) -> reqwest::RequestBuilder {
        let client = self.client.as_ref().unwrap_or(ctx.http);
        let mut request = client.request(method, url).timeout(ctx.remaining());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if let Some((header, secret)) = &self.secret {
            request = request.header(header, secret.expose());
        }
        request
    }

    pub(crate) async fn fence(&self, ctx: &Context<'_>) -> MethodOutcome {
        let url = expand_url(&self.url, &ctx.target.node_id);
        let mut request = self.request(ctx, self.method.clone(), &url);
        if let Some(body) = &self.body {
            let has_content_type = self.headers.keys().any(|k| k.eq_ignore_ascii_case("content-type"));
            if !has_content_type {
                request = request.header("Content-Type", "application/json");
            }
            request = request.body(body.clone());
        }
        let what = format!("{} {url}", self.method);
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return http_error(&what, &e),
        };
        let status = response.status();
        if status == StatusCode::ACCEPTED {
            let location =
                response.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok()).map(str::to_string);
            return self.poll(ctx, location).await;
        }
        if status.is_success() {
            // A device may answer at once and switch off later, or not at all: where a status
            // URL is configured, its word is what counts.
            if self.status.as_ref().is_some_and(|s| s.url.is_some()) {
                return self.poll(ctx, None).await;
            }
            if self.trust_2xx {
                return MethodOutcome::fenced(format!("{what} answered {status}, taken as off (trust_2xx)"));
            }
            // The request may be acting (or have failed, whatever the status line says).
            return MethodOutcome::indeterminate(format!(
                "{what} answered {status} ({}), but nothing confirms power-off: a 2xx may mean accepted, not done, \
                 or carry a failure in its body; configure status.url to read the target's state, or trust_2xx: true \
                 for an API whose 2xx means off",
                body_snippet(response).await
            ));
        }
        MethodOutcome::failed(format!("{what} answered {status}: {}", body_snippet(response).await))
    }

    /// The status endpoint, when one is configured, reads the target's state; the power-off
    /// request itself is never sent. A method with nothing to confirm a power-off (neither
    /// `status` nor `trust_2xx`) is a problem: no answer of the API could make it fence.
    pub(crate) async fn check(&self, ctx: &Context<'_>) -> Readiness {
        let Some(status) = &self.status else {
            if self.trust_2xx {
                return Readiness::Unchecked {
                    why: "a 2xx answer is taken as off (trust_2xx); no `status` to read without sending the power-off"
                        .into(),
                };
            }
            return Readiness::Problem {
                reason: "nothing confirms power-off: without `status` any answer but an error ends indeterminate, so \
                         this method never fences; configure status.url to read the target's state, or trust_2xx: \
                         true for an API whose 2xx means off"
                    .into(),
            };
        };
        let Some(template) = &status.url else {
            let other_2xx = if self.trust_2xx { "taken as off (trust_2xx)" } else { "indeterminate" };
            return Readiness::Unchecked {
                why: format!(
                    "no `status.url` to read without sending the power-off (a 202 is confirmed at its Location, any \
                     other 2xx is {other_2xx})"
                ),
            };
        };
        let url = expand_url(template, &ctx.target.node_id);
        let response = match self.request(ctx, HttpMethod::GET, &url).send().await {
            Ok(r) => r,
            Err(e) => return problem(http_error(&format!("GET {url}"), &e)),
        };
        if !response.status().is_success() {
            return Readiness::Problem { reason: format!("GET {url} answered {}", response.status()) };
        }
        match read_json::<serde_json::Value>(response).await {
            Ok(body) => match body.pointer(&status.pointer) {
                Some(value) if value_matches(value, &status.off_value) => Readiness::Problem {
                    reason: format!("GET {url}: {} is already {value}: is this the target's outlet?", status.pointer),
                },
                Some(value) => Readiness::Ready { detail: format!("GET {url}: {} is {value}", status.pointer) },
                None => {
                    Readiness::Problem { reason: format!("GET {url}: {} is absent from the status", status.pointer) }
                }
            },
            Err(e) => Readiness::Problem { reason: format!("GET {url}: unreadable status body: {e}") },
        }
    }

    /// Polls the status endpoint until it reports off or the deadline passes.
    async fn poll(&self, ctx: &Context<'_>, location: Option<String>) -> MethodOutcome {
        let Some(status) = &self.status else {
            return MethodOutcome::indeterminate(
                "request accepted (202) but no `status` is configured to confirm power-off",
            );
        };
        let url = match (&status.url, location) {
            (Some(template), _) => expand_url(template, &ctx.target.node_id),
            (None, Some(location)) => match reqwest::Url::parse(&expand_url(&self.url, &ctx.target.node_id))
                .and_then(|base| Ok((base.join(&location)?, base)))
            {
                // Every poll carries the secret: only to where the request went.
                Ok((u, base)) if u.origin() != base.origin() => {
                    return MethodOutcome::indeterminate(format!(
                        "request accepted (202) but its Location `{location}` is on another host: not polled (the \
                         secret goes only to the configured one); configure status.url"
                    ))
                }
                Ok((u, _)) => u.to_string(),
                Err(e) => {
                    return MethodOutcome::indeterminate(format!(
                        "request accepted (202) but its Location `{location}` is not usable: {e}"
                    ))
                }
            },
            (None, None) => {
                return MethodOutcome::indeterminate(
                    "request accepted (202) without a Location and no status.url is configured",
                )
            }
        };
        let interval = Duration::from_millis(status.interval_ms);
        let mut last = String::from("no status read yet");
        loop {
            if ctx.remaining().is_zero() {
                return MethodOutcome::indeterminate(format!(
                    "request accepted but power-off not confirmed before the deadline; last status: {last}"
                ));
            }
            match self.request(ctx, HttpMethod::GET, &url).send().await {
                Ok(response) if response.status().is_success() => {
                    match read_json::<serde_json::Value>(response).await {
                        Ok(body) => match body.pointer(&status.pointer) {
                            Some(value) if value_matches(value, &status.off_value) => {
                                return MethodOutcome::fenced(format!(
                                    "power-off accepted and confirmed: {} is {value} at GET {url}",
                                    status.pointer
                                ));
                            }
                            Some(value) => last = format!("{} is {value}", status.pointer),
                            None => last = format!("{} absent from status", status.pointer),
                        },
                        Err(e) => last = format!("unreadable status body: {e}"),
                    }
                }
                Ok(response) => last = format!("GET {url} answered {}", response.status()),
                // Transient errors while polling are remembered and retried until the deadline.
                Err(e) => last = http_error(&format!("GET {url}"), &e).to_string(),
            }
            let next = tokio::time::Instant::now() + interval;
            tokio::time::sleep_until(next.min(ctx.deadline)).await;
        }
    }
}

/// Whether a JSON value equals the configured off value (strings compare unquoted).
fn value_matches(value: &serde_json::Value, expected: &str) -> bool {
    match value {
        serde_json::Value::String(s) => s == expected,
        // Non-strings compare as JSON: "false" matches `false`, "0" matches `0`.
        other => serde_json::from_str::<serde_json::Value>(expected).is_ok_and(|e| &e == other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_percent_encoded_in_urls() {
        assert_eq!(
            expand_url("https://pdu/outlets/{node_id}/off", "db 1/../x"),
            "https://pdu/outlets/db%201%2F..%2Fx/off"
        );
        assert_eq!(expand_url("https://pdu/x?n={node_id}", "n-1"), "https://pdu/x?n=n-1");
    }

    #[test]
    fn off_values_compare_strings_and_scalars() {
        assert!(value_matches(&serde_json::json!("off"), "off"));
        assert!(value_matches(&serde_json::json!(false), "false"));
        assert!(value_matches(&serde_json::json!(0), "0"));
        assert!(!value_matches(&serde_json::json!("on"), "off"));
    }
}
