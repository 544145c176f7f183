//! Observing: everything the decision core looks at is read afresh each cycle (level-triggered),
//! and the history it needs is kept here. Nothing here decides.

use super::*;

impl Driver {
    /// Makes the lease count the larger of `coordinator.max_staleness_ms` and the most staleness
    /// the coordinator's servers have said they may have since the agent started
    /// ([`crate::staleness`]; kept across sessions, so a new session's first moments, before its
    /// servers have answered, count it too), warning once for each server the setting falls
    /// short of.
    fn count_staleness(&mut self, reports: &[(String, crate::staleness::Implied)]) {
        let configured = Duration::from_millis(self.cfg.coordinator.max_staleness_ms);
        self.mem.servers_staleness = crate::staleness::effective(self.mem.servers_staleness, reports);
        let staleness = configured.max(self.mem.servers_staleness);
        let rule = crate::lease::LeaseRule { staleness, ..self.cfg.lease_rule() };
        if self.mem.lease.rule() != rule {
            self.mem.lease.set_rule(rule);
            self.publish_guard();
        }
        self.status().staleness_ms = staleness.as_millis() as u64;
        for w in crate::staleness::warnings_to_log(reports, configured, &mut self.mem.staleness_warnings) {
            warn!("{w}");
        }
    }

    /// Observes everything the decision core looks at, afresh: the master (its last answer or
    /// the health report), the session and its lease, the lock with its token base, the
    /// breadcrumb, the members now and then; and keeps the history the core needs (tokens
    /// seen, past holders, failures, anti-flap and health clocks, promises). Every read is
    /// bounded by the lease left while the master may be active.
    pub(super) async fn observe(&mut self, report: &HealthReport, coord: Option<&Coordination>) -> Observation {
        let master = self.master_view(report);
        self.mem.master_read |= master.is_some();
        self.mem.promoted = track_promoted(self.mem.promoted, master);
        if let Some(c) = coord {
            self.count_staleness(&c.staleness_reports());
        }
        let lease_timeout = coord.map(|c| c.lease_timeout());
        if let Some(t) = lease_timeout {
            // The lowest grant the session may be living on (see `Lease::connected`).
            self.mem.lease.set_granted(t);
        }
        let lease_ms = lease_timeout.map(|t| t.as_millis() as u64);
        let before = std::mem::replace(&mut self.status().lease_session_timeout_ms, lease_ms);
        if let Some(t) = lease_timeout.filter(|_| before.is_some() && before != lease_ms) {
            if self.mem.lease.rule().budget(t).is_none() {
                warn!(
                    "a server of the coordinator would grant this session {} ms on a reconnection, which leaves no \
                     lease: this node will not stay active. Give every server the same session timeout bounds",
                    t.as_millis()
                );
            } else if let Some(c) = coord {
                self.warn_if_a_frozen_server_outlasts_the_lease(c);
            }
        }
        self.publish_guard();
        let session = coord.map_or(SessionView::Connecting, |c| c.session());
        let connected = matches!(session, SessionView::Connected { .. });
        self.failsafe_start(master, coord);
        let mut lock = LockView::Unknown;
        let mut breadcrumb = BreadcrumbView::Unknown;
        let mut token_base = TokenBaseView::Unknown;
        let mut handover = None;
        if let (Some(c), true) = (coord, connected) {
            // While our master may be active, no read may outlast what is left of its lease, or
            // the demotion would come late; each read is bounded afresh, by what is left then.
            let read_limit = self.await_limit();
            let sent = BootInstant::now();
            match self.tended_during(tokio::time::timeout(read_limit, c.read_lock_with_record())).await {
                Ok(Ok((v, base, record))) => {
                    self.acked(sent);
                    if let (LockView::Peer { .. } | LockView::OursFromOldSession { .. }, Some(r)) = (&v, &record) {
                        self.mem.saw_holder(&r.target);
                    }
                    lock = v;
                    token_base = base;
                }
                Ok(Err(e)) => debug!("reading the lock failed: {e}"),
                Err(_) => debug!("reading the lock took longer than {read_limit:?}"),
            }
            if !matches!(lock, LockView::Unknown) {
                let read_limit = self.await_limit();
                let sent = BootInstant::now();
                match self.tended_during(tokio::time::timeout(read_limit, c.read_breadcrumb())).await {
                    Ok(Ok(b)) => {
                        self.acked(sent);
                        if let BreadcrumbView::Present { crumb, .. } = &b {
                            self.mem.saw_holder(&crumb.target);
                        }
                        breadcrumb = b;
                    }
                    Ok(Err(e)) => debug!("reading the breadcrumb failed: {e}"),
                    Err(_) => debug!("reading the breadcrumb took longer than {read_limit:?}"),
                }
            }
            // A free lock may be a graceful failover's: whom it is left to.
            if matches!(lock, LockView::Free) {
                let read_limit = self.await_limit();
                match self.tended_during(tokio::time::timeout(read_limit, c.read_handover())).await {
                    Ok(Ok(read)) => handover = self.saw_handover(read),
                    Ok(Err(e)) => debug!("reading the handover record failed: {e}"),
                    Err(_) => debug!("reading the handover record took longer than {read_limit:?}"),
                }
            }
            // A free lock is when the ranking applies: the candidacies are read fresh then.
            let need_members = !self.mem.members_read
                || (matches!(lock, LockView::Ours { .. }) && matches!(breadcrumb, BreadcrumbView::Missing))
                || matches!(lock, LockView::Free)
                || self.mem.members_age >= 50;
            if !matches!(lock, LockView::Unknown) {
                self.read_publications(c, &lock).await;
            }
            if need_members && !matches!(lock, LockView::Unknown) {
                let sent = BootInstant::now();
                let limit = self.await_limit();
                if let Ok(Ok(m)) = self.tended_during(tokio::time::timeout(limit, c.members())).await {
                    self.acked(sent);
                    self.mem.members = m;
                    self.mem.members_age = 0;
                    self.mem.members_read = true;
                }
            }
            self.mem.members_age += 1;
        }
        let now = BootInstant::now();
        self.failsafe_collect().await;
        self.remember_tokens(&lock, &breadcrumb, master, session, now);
        // The lease: only while the session can still be alive on the ensemble.
        let lease_until = self.mem.lease.until();
        // Failsafe applies only while the coordinator cannot be read, never after it answered.
        let failsafe_until = match &lock {
            LockView::Unknown => self.mem.failsafe_until,
            _ => {
                self.mem.failsafe_until = None;
                None
            }
        };
        // A failure belongs to one acquisition; a new lock (or none) forgets it.
        let held = match &lock {
            LockView::Ours { token, .. } => Some(*token),
            _ => None,
        };
        if self.mem.failure.as_ref().is_some_and(|f| Some(f.token) != held) && !matches!(lock, LockView::Unknown) {
            self.mem.failure = None;
        }
        if matches!(lock, LockView::Free) {
            self.mem.free_seen_at.get_or_insert(now);
        } else if !matches!(lock, LockView::Ours { .. }) {
            self.mem.free_seen_at = None;
        }
        if report.health.is_healthy() {
            self.mem.healthy_since.get_or_insert(now);
        } else {
            self.mem.healthy_since = None;
        }
        if self.mem.promised.as_ref().is_some_and(|p| p.until <= now) {
            self.mem.promised = None;
        }
        // Read apart: the status's guard must not live on into the one below.
        let left_active_at = self.status().left_active_at;

        Observation {
            now,
            node_id: self.cfg.node_id.clone(),
            own_target: self.cfg.own_target(),
            health: report.health.clone(),
            master,
            session,
            lock: lock.clone(),
            breadcrumb,
            members: self.mem.members.clone(),
            peers: self.cfg.peer_targets(),
            seen_holders: self.mem.seen_holders.clone(),
            promoted: self.mem.promoted,
            lease_until,
            paused: self.status().paused,
            backoff_until: self.mem.backoff_until,
            failure: self.mem.failure.clone(),
            token_base,
            token_floor: self.mem.tokens.highest_seen,
            token_issued: self.mem.token_issued,
            failsafe_until,
            last_failover_at: self.mem.tokens.last_failover_at,
            healthy_since: self.mem.healthy_since,
            left_active_at,
            failover_requested: self.mem.pending_failover.is_some(),
            failback_not_before: self.mem.failback_not_before,
            promised: self.promise_in_force(now),
            candidacy: self.own_candidacy(master),
            published: self.published_view(),
            candidates: self.candidates(),
            lock_free_since: self.mem.free_seen_at,
            allow_data_loss: self.mem.pending_failover.is_some() && self.mem.allow_data_loss,
            lease_budget: self.mem.lease.granted().map(|_| self.mem.lease.budget().unwrap_or_default()),
            handover,
        }
    }

    /// This node's tags (from its configuration), its drain and its master's position (`master`:
    /// its state as read, `None` if it could not be).
    pub(super) fn own_candidacy(&self, master: Option<crate::model::MasterStatus>) -> crate::candidacy::OwnCandidacy {
        crate::candidacy::OwnCandidacy {
            position: master.and_then(|m| m.position),
            state_unread: master.is_none(),
            drained: self.mem.drained.as_ref().map(crate::model::DrainRecord::by),
            ..self.cfg.own_candidacy()
        }
    }

    /// The master's state: what it answered to our last promote or demote, until a health
    /// report is known to be newer (a check ends at most one health timeout after it starts, so
    /// one that ended later than that after our call began after it).
    pub(super) fn master_view(&mut self, report: &HealthReport) -> Option<crate::model::MasterStatus> {
        let check_span = Duration::from_millis(self.cfg.health.timeout_ms);
        match self.mem.master_answer {
            Some((m, at)) if report.last_check_at.is_none_or(|t| t <= at + check_span) => Some(m),
            _ => {
                self.mem.master_answer = None;
                report.master
            }
        }
    }

    /// Keeps the token history and the anti-flap clock from what this cycle read (the rules are
    /// [`TokenHistory::observe`]'s).
    pub(super) fn remember_tokens(
        &mut self,
        lock: &LockView,
        breadcrumb: &BreadcrumbView,
        master: Option<crate::model::MasterStatus>,
        session: SessionView,
        now: BootInstant,
    ) {
        let keep_unread = self.cfg.failsafe.enabled;
        let ignored = self.mem.tokens.observe(lock, breadcrumb, master, session, keep_unread, now);
        for token in ignored.iter().filter(|t| !self.mem.tokens_ignored.contains(t)) {
            warn!(
                %token,
                "the lock, the breadcrumb or this node's master holds a token above the highest usable token {}: \
                 not remembered, and a promotion that meets it is refused; repair the record that holds it",
                crate::tokens::TOKEN_LIMIT
            );
        }
        self.mem.tokens_ignored = ignored;
        // The lock is this session's, or nothing of an earlier one may be serving (the master
        // read not active, not promoted, no lock kept): its lease backs the master from now on.
        let nothing_serving = master.is_some_and(|m| m.state != HaState::Active)
            && self.mem.promoted.is_none()
            && self.mem.tokens.held.is_none();
        if matches!(lock, LockView::Ours { .. }) || nothing_serving {
            self.mem.lease.bind();
        }
    }

    /// Takes in a finished failsafe round.
    pub(super) async fn failsafe_collect(&mut self) {
        let finished = self.mem.failsafe_round.as_ref().is_some_and(|(_, task)| task.is_finished());
        if !finished {
            return;
        }
        let Some((sent, task)) = self.mem.failsafe_round.take() else { return };
        // Finished, so this does not wait.
        match task.await.ok() {
            Some(RoundOutcome::Confirmed { members }) => {
                let until = sent + self.cfg.failsafe_lease();
                self.mem.failsafe_until = Some(self.mem.failsafe_until.map_or(until, |u| u.max(until)));
                self.status().counters.failsafe_confirmed += 1;
                debug!(members, "failsafe: every configured peer confirmed it is not active");
            }
            Some(RoundOutcome::Refused(why)) => {
                warn!("failsafe: {why}; the master will be demoted when the current lease runs out");
                let mut st = self.status();
                st.counters.failsafe_refused += 1;
                st.last_failure = Some(format!("failsafe: {why}"));
            }
            None => warn!("failsafe: a round ended without an outcome"),
        }
    }

    /// Starts a failsafe round when failsafe is on, this session held the lock, our master is
    /// active with its token, and the coordinator has not answered for half a lease.
    pub(super) fn failsafe_start(&mut self, master: Option<crate::model::MasterStatus>, coord: Option<&Coordination>) {
        if !self.cfg.failsafe.enabled || self.mem.failsafe_round.is_some() {
            return;
        }
        let Some((token, _)) = self.mem.tokens.held else { return };
        if !master.is_some_and(|m| m.state == HaState::Active && m.token == token) {
            return;
        }
        let now = BootInstant::now();
        let granted =
            coord.map_or(Duration::from_millis(self.cfg.coordinator.session_timeout_ms), |c| c.lease_timeout());
        let Some(budget) = self.mem.lease.rule().budget(granted) else { return };
        // Quiet: half the lease has passed since the last answered request (or there is none).
        let quiet = self.mem.lease.left(now) <= budget / 2;
        let ttl = Duration::from_millis(self.cfg.failsafe.ttl_ms);
        let every = ttl / 4;
        if !quiet || self.mem.failsafe_last_sent.is_some_and(|t| now.saturating_since(t) < every) {
            return;
        }
        let peers = self.cfg.peer_api_urls();
        let targets = crate::failsafe::round_targets(&self.cfg.node_id, &peers, &self.mem.members);
        let (http, secret, me) = (self.peer_http.clone(), self.peer_secret.clone(), self.cfg.node_id.clone());
        let task = tokio::spawn(async move {
            crate::failsafe::run_round(&http, secret.as_deref(), &me, token, ttl, targets, every).await
        });
        self.mem.failsafe_round = Some((now, task));
        self.mem.failsafe_last_sent = Some(now);
    }
}
