//! `graceful`: ask the old master to step down, and to remember the new token.
//!
//! `POST /ha/standby {"token": new}`, then confirmation that the master is standby **and**
//! has recorded a token at least as high as the new one. Recording the token is what makes
//! the step-down stick: a master that has seen the new token refuses any later promotion
//! carrying the old one, even from its own confused agent. The confirmation comes from the
//! answer to the POST when it carries an [`HaStatus`], otherwise from `GET /ha/state`.

use std::time::Duration;

use crate::config::{ConfigError, GracefulConfig};
use crate::methods::{body_snippet, http_error, problem, read_json, Context};
use crate::outcome::{MethodOutcome, Readiness};
use crate::protocol::{HaStatus, TokenRequest, HA_STANDBY_PATH, HA_STATE_PATH};

#[derive(Debug)]
pub(crate) struct Graceful {
    /// The method's own client: the shared one's settings plus the connection deadline, so an
    /// unreachable host fails the method in `connect_timeout_ms` rather than at its deadline,
    /// and no pool of idle connections, so that deadline always applies (see [`Graceful::new`]).
    http: reqwest::Client,
}

impl Graceful {
    pub(crate) fn new(
        config: &GracefulConfig,
        err: &dyn Fn(&'static str, String) -> ConfigError,
    ) -> Result<Self, ConfigError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms()))
            // The periodic checks ask the master's state on this client every minute or so; a
            // connection they left idle would carry the step-down without a connect, and a host
            // that lost power (no FIN, no RST) would then hold the request until the method's
            // deadline (indeterminate) instead of failing at the connection deadline. Every
            // request connects afresh, as the agent's HTTP adapter does for the same reason.
            .pool_max_idle_per_host(0)
            // Straight to the master, whatever proxy the environment names (see `Fencer::new`).
            .no_proxy()
            .build()
            .map_err(|e| err("connect_timeout_ms", format!("cannot build the HTTP client: {e}")))?;
        Ok(Graceful { http })
    }

    pub(crate) async fn fence(&self, ctx: &Context<'_>) -> MethodOutcome {
        let base = ctx.target.ha_base_url();
        let url = format!("{base}{HA_STANDBY_PATH}");
        let sent =
            self.http.post(&url).timeout(ctx.remaining()).json(&TokenRequest { token: ctx.new_token }).send().await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return http_error(&format!("POST {url}"), &e),
        };
        let status = response.status();
        if !status.is_success() {
            return MethodOutcome::failed(format!(
                "master refused to step down: POST {url} answered {status}: {}",
                body_snippet(response).await
            ));
        }
        // The answer may already carry the new state; if it does not parse as one, ask.
        let answered = read_json::<HaStatus>(response).await.ok();
        let confirmed = match answered {
            Some(state) => state,
            None => match self.state(ctx, &base).await {
                Ok(state) => state,
                Err(outcome) => return outcome,
            },
        };
        confirmed.judge_step_down(ctx.new_token)
    }

    /// The master's HA endpoint answers with its state.
    pub(crate) async fn check(&self, ctx: &Context<'_>) -> Readiness {
        let base = ctx.target.ha_base_url();
        let url = format!("{base}{HA_STATE_PATH}");
        let response = match self.http.get(&url).timeout(ctx.remaining()).send().await {
            Ok(r) => r,
            Err(e) => return problem(http_error(&format!("GET {url}"), &e)),
        };
        let status = response.status();
        if !status.is_success() {
            return Readiness::Problem { reason: format!("GET {url} answered {status}") };
        }
        match read_json::<HaStatus>(response).await {
            Ok(s) => {
                Readiness::Ready { detail: format!("GET {url}: the master is {:?} with token {}", s.state, s.token) }
            }
            Err(e) => Readiness::Problem { reason: format!("GET {url} did not return a state: {e}") },
        }
    }

    async fn state(&self, ctx: &Context<'_>, base: &str) -> Result<HaStatus, MethodOutcome> {
        let url = format!("{base}{HA_STATE_PATH}");
        let response = self
            .http
            .get(&url)
            .timeout(ctx.remaining())
            .send()
            .await
            // The step-down was accepted but cannot be confirmed: we do not know.
            .map_err(|e| match http_error(&format!("GET {url}"), &e) {
                MethodOutcome::Failed { reason } => {
                    MethodOutcome::indeterminate(format!("step-down accepted but not confirmed: {reason}"))
                }
                other => other,
            })?;
        if !response.status().is_success() {
            return Err(MethodOutcome::indeterminate(format!(
                "step-down accepted but GET {url} answered {}",
                response.status()
            )));
        }
        read_json::<HaStatus>(response).await.map_err(|e| {
            MethodOutcome::indeterminate(format!("step-down accepted but GET {url} did not return a state: {e}"))
        })
    }
}
