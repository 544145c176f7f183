//! `token`: raise the token floor of a resource that enforces fencing tokens.
//!
//! The honest replacement for Hadoop's `shell(/bin/true)`: instead of pretending the old
//! active is gone, make the shared resource refuse it. The resource answers with the floor it
//! now enforces; the target is fenced only when that floor is at least the new token, since
//! then every write carrying the old (lower) token is rejected, whatever the old node does.

use std::collections::BTreeMap;

use crate::config::{ConfigError, TokenConfig};
use crate::methods::{body_snippet, http_error, load_secret, read_json, Context, Secret};
use crate::outcome::MethodOutcome;
use crate::protocol::{TokenFloorRequest, TokenFloorResponse};

#[derive(Debug)]
pub(crate) struct TokenFloor {
    url: String,
    headers: BTreeMap<String, String>,
    secret: Option<Secret>,
}

impl TokenFloor {
    pub(crate) fn new(
        config: &TokenConfig,
        err: &dyn Fn(&'static str, String) -> ConfigError,
    ) -> Result<Self, ConfigError> {
        Ok(TokenFloor {
            url: config.url.clone(),
            headers: config.headers.clone(),
            secret: load_secret(config.secret_file.as_deref(), config.secret_env.as_deref(), err)?,
        })
    }

    pub(crate) async fn fence(&self, ctx: &Context<'_>) -> MethodOutcome {
        let mut request = ctx
            .http
            .post(&self.url)
            .timeout(ctx.remaining())
            .json(&TokenFloorRequest { token: ctx.new_token, fenced_node_id: ctx.target.node_id.clone() });
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if let Some(secret) = &self.secret {
            request = request.bearer_auth(secret.expose());
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => return http_error(&format!("POST {}", self.url), &e),
        };
        let status = response.status();
        if !status.is_success() {
            return MethodOutcome::failed(format!(
                "resource refused to raise its token floor: {status}: {}",
                body_snippet(response).await
            ));
        }
        match read_json::<TokenFloorResponse>(response).await {
            Ok(answer) if answer.floor >= ctx.new_token => MethodOutcome::fenced(format!(
                "resource now rejects tokens below {} (old active held {})",
                answer.floor, ctx.target.token
            )),
            Ok(answer) => MethodOutcome::failed(format!(
                "resource floor is {} but the new token is {}: tokens between them would still be accepted",
                answer.floor, ctx.new_token
            )),
            Err(e) => MethodOutcome::indeterminate(format!("resource answered {status} without a readable floor: {e}")),
        }
    }
}
