//! `watchdog`: wait out the old active's own watchdog (self-fencing, as SBD's watchdog-only
//! mode fences for Pacemaker).
//!
//! The old active's agent, configured with `watchdog.self_fence`, keeps a hardware or kernel
//! watchdog fed only while it holds the lock under a live lease or knows its master is not
//! active; otherwise the watchdog resets its host within the time it published in its
//! breadcrumb ([`crate::FenceTarget::self_fence_ms`]). The lock reaches a new holder only after
//! the old one has lost it, so once that time (with a margin for clock rates and late
//! watchdogs) has passed since this method began, the old master is demoted or its host reset,
//! whatever state the old host is in: hung, cut off, or without a fence device. Nothing is
//! asked of the target; nothing could be learnt from it, which is the case this method is for.

use std::time::Duration;

use crate::config::WatchdogConfig;
use crate::methods::Context;
use crate::outcome::MethodOutcome;

#[derive(Debug)]
pub(crate) struct Watchdog {
    wait_percent: u32,
}

impl Watchdog {
    pub(crate) fn new(config: &WatchdogConfig) -> Self {
        Watchdog { wait_percent: config.wait_percent }
    }

    /// How long to wait for a promise of `promise_ms`.
    fn wait_for(&self, promise_ms: u64) -> Duration {
        Duration::from_millis(promise_ms.saturating_mul(u64::from(self.wait_percent)).div_ceil(100))
    }

    pub(crate) async fn fence(&self, ctx: &Context<'_>) -> MethodOutcome {
        let node = &ctx.target.node_id;
        let Some(promise) = ctx.target.self_fence_ms else {
            return MethodOutcome::failed(format!(
                "{node} published no watchdog self-fence in its breadcrumb (its agent runs without \
                 `watchdog.self_fence`), so nothing says its host resets itself"
            ));
        };
        let wait = self.wait_for(promise);
        let left = ctx.remaining();
        if wait > left {
            return MethodOutcome::failed(format!(
                "{node}'s watchdog resets its host within {promise} ms; waiting {} ms ({}%) does not fit in the {} ms \
                 left to this method: raise its timeout_ms (and overall_timeout_ms) above {} ms",
                wait.as_millis(),
                self.wait_percent,
                left.as_millis(),
                wait.as_millis()
            ));
        }
        tokio::time::sleep(wait).await;
        MethodOutcome::fenced(format!(
            "waited {} ms ({}% of the {promise} ms within which {node}'s watchdog resets its host once its lock is gone \
             and its master may be active): its master is demoted or its host reset",
            wait.as_millis(),
            self.wait_percent
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::FenceTarget;
    use crate::token::FencingToken;
    use tokio::time::Instant;

    fn ctx<'a>(http: &'a reqwest::Client, target: &'a FenceTarget, budget: Duration) -> Context<'a> {
        Context { http, target, new_token: FencingToken(8), deadline: Instant::now() + budget }
    }

    #[tokio::test(start_paused = true)]
    async fn waits_the_share_of_the_promise_then_counts_the_target_fenced() {
        let http = reqwest::Client::new();
        let mut target = FenceTarget::new("n1", "10.0.0.5", 8080, FencingToken(7));
        target.self_fence_ms = Some(5_000);
        let method = Watchdog { wait_percent: 150 };
        let started = Instant::now();
        let outcome = method.fence(&ctx(&http, &target, Duration::from_secs(10))).await;
        assert!(matches!(outcome, MethodOutcome::Fenced { .. }), "{outcome:?}");
        assert_eq!(started.elapsed(), Duration::from_millis(7_500));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_promise_or_the_time_for_the_wait_it_fails_at_once() {
        let http = reqwest::Client::new();
        let mut target = FenceTarget::new("n1", "10.0.0.5", 8080, FencingToken(7));
        let method = Watchdog { wait_percent: 200 };
        let started = Instant::now();
        let MethodOutcome::Failed { reason } = method.fence(&ctx(&http, &target, Duration::from_secs(60))).await else {
            panic!("fenced without a promise")
        };
        assert!(reason.contains("published no watchdog self-fence"), "{reason}");
        target.self_fence_ms = Some(5_000);
        let MethodOutcome::Failed { reason } = method.fence(&ctx(&http, &target, Duration::from_millis(9_999))).await
        else {
            panic!("fenced with less time left than the wait")
        };
        assert!(reason.contains("waiting 10000 ms (200%)") && reason.contains("raise its timeout_ms"), "{reason}");
        assert_eq!(started.elapsed(), Duration::ZERO, "a method that cannot succeed must not wait");
    }

    #[test]
    fn the_wait_rounds_up() {
        assert_eq!(Watchdog { wait_percent: 120 }.wait_for(1_001), Duration::from_millis(1_202));
        assert_eq!(Watchdog { wait_percent: 200 }.wait_for(u64::MAX), Duration::from_millis(u64::MAX / 100 + 1));
    }
}
