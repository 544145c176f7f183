//! `agent`: ask the old host's failover agent to fence its own master locally.
//!
//! The peer runs its own fencing (typically `graceful` then `kill` on its host) and answers
//! with a [`PeerFenceResponse`]. The request carries the new token, so the peer can pass it on
//! to its master, and the target node id, so a misrouted request fences nothing.
//!
//! With `tls`, the method calls peers through its own client: trusting the cluster's CA and
//! presenting the client certificate that TLS peer listeners with a `client_ca_file` require.

use std::collections::BTreeMap;

use crate::config::{AgentConfig, ConfigError};
use crate::methods::{body_snippet, http_error, load_secret, problem, read_json, tls_client, Context, Secret};
use crate::outcome::{MethodOutcome, Readiness};
use crate::protocol::{PeerFenceOutcome, PeerFenceRequest, PeerFenceResponse, PEER_FENCE_PATH};

#[derive(Debug)]
pub(crate) struct Agent {
    peers: BTreeMap<String, String>,
    secret: Secret,
    /// Built from the method's `tls` section; `None` uses the fencer's shared client.
    client: Option<reqwest::Client>,
}

impl Agent {
    pub(crate) fn new(
        config: &AgentConfig,
        err: &dyn Fn(&'static str, String) -> ConfigError,
    ) -> Result<Self, ConfigError> {
        let secret = load_secret(config.secret_file.as_deref(), config.secret_env.as_deref(), err)?
            .ok_or_else(|| err("secret_file", "a secret is required".into()))?;
        let client = config.tls.as_ref().map(|tls| tls_client(tls, err)).transpose()?;
        Ok(Agent {
            peers: config.peers.iter().map(|(k, v)| (k.clone(), v.trim_end_matches('/').to_string())).collect(),
            secret,
            client,
        })
    }

    /// The target's agent answers at its peer URL (any HTTP answer: the request carries no
    /// fence and no secret).
    pub(crate) async fn check(&self, ctx: &Context<'_>) -> Readiness {
        let Some(base) = self.peers.get(&ctx.target.node_id) else {
            return Readiness::Problem { reason: format!("no peer URL configured for node `{}`", ctx.target.node_id) };
        };
        let client = self.client.as_ref().unwrap_or(ctx.http);
        match client.get(format!("{base}/")).timeout(ctx.remaining()).send().await {
            Ok(r) => Readiness::Ready { detail: format!("the agent's peer API at {base} answers ({})", r.status()) },
            Err(e) => problem(http_error(&format!("GET {base}/"), &e)),
        }
    }

    pub(crate) async fn fence(&self, ctx: &Context<'_>) -> MethodOutcome {
        let Some(base) = self.peers.get(&ctx.target.node_id) else {
            return MethodOutcome::failed(format!("no peer URL configured for node `{}`", ctx.target.node_id));
        };
        let url = format!("{base}{PEER_FENCE_PATH}");
        let sent = self
            .client
            .as_ref()
            .unwrap_or(ctx.http)
            .post(&url)
            .timeout(ctx.remaining())
            .bearer_auth(self.secret.expose())
            .json(&PeerFenceRequest { target_node_id: ctx.target.node_id.clone(), token: ctx.new_token })
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return http_error(&format!("POST {url}"), &e),
        };
        let status = response.status();
        if !status.is_success() {
            // 401/403 (wrong secret), 404 (not an agent), 5xx: the peer did not fence.
            return MethodOutcome::failed(format!("peer agent answered {status}: {}", body_snippet(response).await));
        }
        match read_json::<PeerFenceResponse>(response).await {
            Ok(answer) => match answer.outcome {
                PeerFenceOutcome::Fenced => {
                    MethodOutcome::fenced(format!("peer agent fenced its master: {}", answer.reason))
                }
                PeerFenceOutcome::Failed => {
                    MethodOutcome::failed(format!("peer agent could not fence: {}", answer.reason))
                }
                PeerFenceOutcome::Indeterminate => {
                    MethodOutcome::indeterminate(format!("peer agent could not tell: {}", answer.reason))
                }
            },
            // A 2xx we cannot read: the peer may have fenced, we cannot tell.
            Err(e) => {
                MethodOutcome::indeterminate(format!("peer agent answered {status} with an unreadable body: {e}"))
            }
        }
    }
}
