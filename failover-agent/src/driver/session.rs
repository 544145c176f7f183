//! The coordinator session: made and remade in the background (so cycles never stop while the
//! coordinator is unreachable), the lease renewed from its answers, and the lease guard, the
//! task that demotes the master at lease end whatever the decision loop is doing.

use super::*;

/// A coordinator session being made in the background, and when its connect was sent.
pub(super) type Connecting = oneshot::Receiver<(Result<Coordination, ElectionError>, BootInstant)>;

/// Demotes the master at lease end even if the decision loop is blocked (in a slow fence, a
/// hung coordinator call, a stuck hook): the driver publishes the lease end and the token its
/// master may be active with, and this task alone watches the clock.
pub(super) async fn run_lease_guard(
    adapter: Arc<dyn MasterAdapter>,
    mut published: watch::Receiver<GuardState>,
    demote_deadline: Duration,
    status: Arc<Mutex<AgentStatus>>,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    // The state a demotion was last made for: not repeated until something new is published.
    let mut demoted_for: Option<GuardState> = None;
    loop {
        let state = *published.borrow_and_update();
        let wait = match crate::lease::guard_action(state, BootInstant::now()) {
            GuardAction::Demote(_) if demoted_for == Some(state) => None,
            GuardAction::Demote(token) => {
                warn!(%token, "the lease ran out while the master may be active: the lease guard demotes it");
                let deadline = tokio::time::Instant::now() + demote_deadline;
                match adapter.demote(token, deadline).await {
                    Ok(s) => {
                        demoted_for = Some(state);
                        let mut st = status.lock().unwrap_or_else(|p| p.into_inner());
                        st.counters.demotions += 1;
                        st.last_failure = Some(format!(
                            "the lease (the session's, or the failsafe extension) ran out: the lease guard demoted \
                             the master with token {token}"
                        ));
                        info!(%token, state = ?s.state, "the lease guard demoted the master");
                        None
                    }
                    Err(e) => {
                        warn!("the lease guard could not demote the master (retrying): {e}");
                        Some(crate::lease::GUARD_TICK)
                    }
                }
            }
            GuardAction::Idle => None,
            GuardAction::WaitFor(d) => Some(d),
        };
        let sleep = async {
            match wait {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = &mut stop => return,
            changed = published.changed() => if changed.is_err() { return },
            _ = sleep => {}
        }
    }
}

impl Driver {
    pub(super) fn coordination_config(&self) -> CoordinationConfig {
        CoordinationConfig {
            connect: self.cfg.coordinator.connect.clone(),
            cluster: self.cfg.cluster.clone(),
            node_id: self.cfg.node_id.clone(),
            session_timeout: Duration::from_millis(self.cfg.coordinator.session_timeout_ms),
            op_timeout: Duration::from_millis(self.cfg.coordinator.op_timeout_ms),
            digest: self.cfg.coordinator.digest.clone(),
        }
    }

    pub(super) fn member(&self) -> Member {
        Member {
            node_id: self.cfg.node_id.clone(),
            target: self.cfg.own_target(),
            peer_url: self.peer_url.clone(),
            probe_addr: Some(self.cfg.probe_address()),
            candidacy: None,
        }
    }

    /// Starts making a session: connect, then register as a member.
    pub(super) fn start_connecting(&self) -> Connecting {
        let (tx, rx) = oneshot::channel();
        let cfg = self.coordination_config();
        let member = self.member();
        tokio::spawn(async move {
            // The session is created after this instant: the connect's answer renews the lease
            // from it.
            let sent = BootInstant::now();
            let result = async {
                let coord = Coordination::connect(cfg).await?;
                coord.register_member(&member).await?;
                Ok(coord)
            }
            .await;
            let _ = tx.send((result, sent));
        });
        rx
    }

    /// A new session is up: the lease starts from its connect's send time under the timeout it
    /// was granted, if it backs the master from the start: only when nothing of an earlier
    /// session may be serving (the master read, not active, not promoted, and no lock kept);
    /// otherwise from the first lock read that says this session holds the lock.
    pub(super) fn session_made(&mut self, c: &Coordination, sent: BootInstant) {
        let master_standby = self.status().master.is_some_and(|m| m.state != HaState::Active);
        let backs_at_once = master_standby && self.mem.promoted.is_none() && self.mem.tokens.held.is_none();
        self.mem.lease.connected(c.lease_timeout(), sent, backs_at_once);
        self.mem.pause_read = false;
        // A new session may be on a coordinator that lost its data and counts zxids again from
        // the bottom: the settings record's next reading is acted on whatever its zxid.
        if let Some(Some(_)) = self.mem.settings_seen {
            self.mem.settings_seen = Some(Some(i64::MIN));
        }
        self.publish_guard();
        info!(
            session = format!("0x{:x}", c.session_id()),
            timeout_ms = c.negotiated_timeout().as_millis() as u64,
            "coordinator session established"
        );
        {
            let mut st = self.status();
            st.counters.sessions += 1;
            st.granted_session_timeout_ms = Some(c.negotiated_timeout().as_millis() as u64);
        }
        let requested = Duration::from_millis(self.cfg.coordinator.session_timeout_ms);
        if let Some(warning) =
            crate::lease::grant_mismatch_warning(requested, c.negotiated_timeout(), &self.mem.lease.rule())
        {
            warn!("{warning}");
        } else if self.mem.lease.rule().budget(c.negotiated_timeout()).is_none() {
            warn!("the coordinator granted a session timeout of {} ms, which leaves no lease: this node will never stay active", c.negotiated_timeout().as_millis());
        }
        self.warn_if_a_frozen_server_outlasts_the_lease(c);
    }

    /// Warns when a frozen coordinator server could hold this session past its lease
    /// ([`crate::lease::frozen_server_warning`]): at a new session, and when the timeout the
    /// lease counts on drops under it.
    pub(super) fn warn_if_a_frozen_server_outlasts_the_lease(&self, c: &Coordination) {
        let loop_interval = Duration::from_millis(self.cfg.election.loop_interval_ms);
        let rule = self.mem.lease.rule();
        if let Some(warning) =
            crate::lease::frozen_server_warning(c.lease_timeout(), c.idle_limit(), loop_interval, &rule)
        {
            warn!("{warning}");
        }
    }

    /// The session expired (or was closed): it is gone for good, and so is its lease. What else
    /// it leaves is the failsafe rule's ([`crate::failsafe::after_session_end`]).
    pub(super) fn session_ended(&mut self) {
        warn!("coordinator session expired; making a new one");
        self.mem.lease.session_ended();
        let keep = crate::failsafe::after_session_end(self.cfg.failsafe.enabled);
        if !keep.keep_held {
            self.mem.tokens.forget_held();
        }
        if !keep.keep_failsafe {
            self.mem.failsafe_until = None;
        }
        self.publish_guard();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapter::{AdapterError, AdapterFuture, HealthProblem};
    use crate::model::MasterStatus;
    use tokio::sync::mpsc;

    /// A master that only records the demotions it is asked for, and when.
    struct Recorder(mpsc::UnboundedSender<(FencingToken, BootInstant)>);

    impl MasterAdapter for Recorder {
        fn health(&self, _: tokio::time::Instant) -> AdapterFuture<'_, Result<(), HealthProblem>> {
            Box::pin(async { Ok(()) })
        }
        fn state(&self, _: tokio::time::Instant) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
            Box::pin(async { Ok(MasterStatus { state: HaState::Active, token: FencingToken(7), position: None }) })
        }
        fn promote(
            &self,
            token: FencingToken,
            _: tokio::time::Instant,
        ) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
            Box::pin(async move { Ok(MasterStatus { state: HaState::Active, token, position: None }) })
        }
        fn demote(
            &self,
            token: FencingToken,
            _: tokio::time::Instant,
        ) -> AdapterFuture<'_, Result<MasterStatus, AdapterError>> {
            let _ = self.0.send((token, BootInstant::now()));
            Box::pin(async move { Ok(MasterStatus { state: HaState::Standby, token, position: None }) })
        }
    }

    /// Nothing but the guard runs here, as if the decision loop were blocked: the master is
    /// demoted at lease end all the same, not before, and a renewal published in time moves it.
    #[tokio::test]
    async fn the_guard_demotes_at_lease_end_without_the_loop() {
        let (tx, mut demotions) = mpsc::unbounded_channel();
        let (publish, published) = watch::channel(GuardState::default());
        let status = Arc::new(Mutex::new(AgentStatus::new("c", "a")));
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let guard = tokio::spawn(run_lease_guard(
            Arc::new(Recorder(tx)),
            published,
            Duration::from_millis(500),
            status.clone(),
            async move {
                let _ = stop_rx.wait_for(|s| *s).await;
            },
        ));
        let until = BootInstant::now() + Duration::from_millis(150);
        publish.send_replace(GuardState { until: Some(until), armed: Some(FencingToken(7)) });
        // Renewed before it ran out: the end moves.
        let renewed = until + Duration::from_millis(100);
        publish.send_replace(GuardState { until: Some(renewed), armed: Some(FencingToken(7)) });
        let (token, at) = tokio::time::timeout(Duration::from_secs(5), demotions.recv())
            .await
            .expect("the guard demotes within 5 s")
            .expect("the guard is running");
        assert_eq!(token, FencingToken(7));
        assert!(at >= renewed, "demoted {} ms before the lease end", renewed.saturating_since(at).as_millis());
        assert!(status.lock().unwrap().last_failure.as_deref().is_some_and(|f| f.contains("lease guard")));
        // Disarmed (the master seen standby): nothing more, and it stops when told.
        publish.send_replace(GuardState { until: None, armed: None });
        stop_tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(5), guard).await.expect("the guard stops").unwrap();
        assert!(demotions.try_recv().is_err(), "demoted again after being disarmed");
    }
}
