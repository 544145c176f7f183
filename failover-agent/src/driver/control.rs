//! Requests from operators and peers (cede, failover, pause, reload, failsafe confirmations,
//! local fencing), carried out between cycles, and the orderly shutdown.

use super::*;
use crate::control::Declined;
use crate::decide::HandoverSeen;
use crate::model::HandoverRecord;

impl Driver {
    /// On shutdown an active agent hands over cleanly (demote, confirm, then mark the breadcrumb
    /// clean and release the lock in one multi), so the lock never frees while its master serves
    /// and the next active need not fence; then the session closes.
    pub(super) async fn shut_down(&mut self, coord: Option<Coordination>) {
        if self.status().token.is_some() || self.mem.promoted.is_some() {
            match self.hand_over(coord.as_ref(), Duration::from_secs(3600), "shutdown_requested").await {
                Ok(msg) => info!("{msg}"),
                Err(e) => warn!("handover on shutdown: {e}"),
            }
        }
        if let Some(c) = coord {
            if let Err(e) = c.close().await {
                debug!("closing the coordinator session: {e}");
            }
        }
        if let Some((reply, _, _)) = self.mem.pending_failover.take() {
            let _ = reply
                .send(Err(Declined::Unsettled("the agent is shutting down before this node became active".into())));
        }
        self.watchdog.stop(self.master_may_be_active());
        info!("agent stopped");
    }

    /// Carries out an operator's or a peer's request.
    pub(super) async fn handle_control(&mut self, request: ControlRequest, coord: Option<&Coordination>) {
        match request {
            ControlRequest::Pause { reply } => {
                self.mem.operator_paused = true;
                info!("paused by an operator: observing only");
                self.apply_pause();
                let _ = reply.send(Ok("paused: the agent keeps reporting but takes no action".into()));
            }
            ControlRequest::Resume { reply } => {
                self.mem.operator_paused = false;
                info!("resumed by an operator");
                // The cluster's record may have just been deleted (`referee admin resume`):
                // read it now rather than stay paused on the last reading.
                if let Some(c) = coord {
                    match self.coordinated("reading the cluster's pause record", c.read_pause()).await {
                        Ok(record) => self.mem.cluster_pause = record,
                        Err(e) => debug!("{e}"),
                    }
                }
                self.apply_pause();
                let answer = match &self.mem.cluster_pause {
                    None => "resumed".to_string(),
                    Some(p) => format!(
                        "resumed here, but the whole cluster stays paused (by {}); `referee admin resume` without --node ends that",
                        p.requested_by
                    ),
                };
                let _ = reply.send(Ok(answer));
            }
            ControlRequest::Cede { period, reply } => {
                let result = self.hand_over(coord, period, "cede_requested").await;
                match &result {
                    Ok(m) => info!("{m}"),
                    Err(e) => warn!("cede: {e}"),
                }
                let _ = reply.send(result);
            }
            ControlRequest::Failover { allow_data_loss, reply } => {
                // A failover to this node is already under way (another operator's, or a
                // scheduled one): this request joins it and is told its outcome too.
                if let Some((first, started, deadline)) = self.mem.pending_failover.take() {
                    let (both, outcome) = oneshot::channel::<Result<String, Declined>>();
                    tokio::spawn(async move {
                        let result = outcome.await.unwrap_or_else(|_| {
                            Err(Declined::Unsettled("the agent stopped before this node became active".into()))
                        });
                        let _ = first.send(result.clone());
                        let _ = reply.send(result);
                    });
                    self.mem.pending_failover = Some((both, started, deadline));
                    self.mem.allow_data_loss |= allow_data_loss;
                    return;
                }
                if let Err(why) = self.start_take_over(coord, allow_data_loss).await {
                    let _ = reply.send(Err(why));
                    return;
                }
                let now = BootInstant::now();
                let deadline = now + self.failover_wait();
                self.mem.pending_failover = Some((reply, now, deadline));
                self.mem.allow_data_loss = allow_data_loss;
            }
            ControlRequest::Unblock { by, reply } => {
                let now = BootInstant::now();
                let interval = Duration::from_millis(self.cfg.election.min_failover_interval_ms);
                let left = self
                    .mem
                    .tokens
                    .last_failover_at
                    .map(|t| interval.saturating_sub(now.saturating_since(t)))
                    .filter(|d| !d.is_zero());
                // Forgetting when the active last changed lifts anti-flap until it changes
                // again; the next failover starts a new interval.
                self.mem.tokens.last_failover_at = None;
                let message = match left {
                    Some(d) => format!("anti-flap block cleared ({} ms were left)", d.as_millis()),
                    None => "no anti-flap block was in force; nothing to clear".to_string(),
                };
                info!(by = %by, "unblock asked by an operator: {message}");
                let _ = reply.send(Ok(message));
            }
            ControlRequest::Reload { config, reply } => {
                let _ = reply.send(Ok(self.reload(*config)));
            }
            ControlRequest::Failsafe { request, reply } => {
                let response = self.answer_failsafe(request, coord).await;
                let _ = reply.send(response);
            }
            ControlRequest::PeerFence { token, reply } if !crate::tokens::within_limit(token) => {
                // Recorded by the master, such a token would refuse every later promotion here.
                let reason = format!("refusing to fence with token {token}, above the highest usable token");
                warn!("{reason}");
                let _ = reply.send(MethodOutcome::Failed { reason });
            }
            ControlRequest::PeerFence { token, reply } => {
                let deadline = tokio::time::Instant::now() + Duration::from_millis(self.cfg.lease.demote_deadline_ms);
                let adapter = self.adapter.clone();
                let outcome = match self.tended_during(adapter.demote(token, deadline)).await {
                    // Standby is not enough: as for `graceful`, the master must hold the new
                    // token, or a delayed promotion with an older one could still take.
                    Ok(s) => match (HaStatus { state: s.state, token: s.token }).judge_step_down(token) {
                        MethodOutcome::Fenced { detail } => {
                            MethodOutcome::Fenced { detail: format!("master demoted locally: {detail}") }
                        }
                        refused => refused,
                    },
                    Err(e) if e.outcome_unknown() => {
                        MethodOutcome::Indeterminate { reason: format!("demoting the master locally: {e}") }
                    }
                    Err(e) => MethodOutcome::Failed { reason: format!("demoting the master locally: {e}") },
                };
                info!(token = %token, "a peer asked to fence this node's master: {outcome:?}");
                let _ = reply.send(outcome);
            }
        }
    }

    /// Answers an active peer's failsafe round: confirms only if this node's master is not
    /// active, this node holds no lock, and the coordinator (when it answers) does not name a
    /// third node as active; then promises not to contend for the requested time.
    pub(super) async fn answer_failsafe(
        &mut self,
        request: FailsafeRequest,
        coord: Option<&Coordination>,
    ) -> FailsafeResponse {
        let lock = match coord.filter(|c| matches!(c.session(), SessionView::Connected { .. })) {
            None => LockRead::NoSession,
            Some(c) => match self.coordinated("reading the lock", c.read_lock()).await {
                Ok(v) => LockRead::Read(v),
                Err(e) => LockRead::Failed(e),
            },
        };
        let facts = AnswerFacts {
            me: &self.cfg.node_id,
            request: &request,
            master: self.status().master,
            promoted: self.mem.promoted.is_some(),
            held: self.mem.tokens.held.map(|(t, _)| t),
            lock,
            keeps: self.cfg.failsafe.enabled.then(|| Duration::from_millis(self.cfg.failsafe.ttl_ms)),
        };
        let answer = crate::failsafe::answer(&facts);
        let me = self.cfg.node_id.clone();
        match answer {
            Answer::Refuse(reason) => {
                info!(asker = %request.node_id, "failsafe confirmation refused: {reason}");
                FailsafeResponse { node_id: me, accepted: false, reason }
            }
            Answer::Confirm { period } => {
                let until = BootInstant::now() + period;
                self.mem.promised = Some(crate::failsafe::promise(self.mem.promised.take(), &request.node_id, until));
                debug!(asker = %request.node_id, token = %request.token, "failsafe: confirmed; not contending for {} ms", period.as_millis());
                FailsafeResponse {
                    node_id: me,
                    accepted: true,
                    reason: format!("not active; will not contend for {} ms", period.as_millis()),
                }
            }
        }
    }

    /// Puts `cfg` (validated) in force: its lease settings apply to the renewals already
    /// gathered too, and the lease guard learns them at once. Says what changed.
    pub(super) fn apply_live(&mut self, cfg: AgentConfig) -> &'static str {
        let changed = format!("{:?}{:?}{:?}", self.cfg.lease, self.cfg.election, self.cfg.failsafe)
            != format!("{:?}{:?}{:?}", cfg.lease, cfg.election, cfg.failsafe);
        self.cfg = cfg;
        // The staleness counted never drops here: the next observation recounts it from the
        // servers' reports.
        let staleness = self.mem.lease.rule().staleness.max(self.cfg.lease_rule().staleness);
        self.mem.lease.set_rule(crate::lease::LeaseRule { staleness, ..self.cfg.lease_rule() });
        self.publish_guard();
        if changed {
            "the lease, election and failsafe settings changed"
        } else {
            "no setting changed"
        }
    }

    /// Applies a new configuration: timing of the loop, lease and backoff change live; the
    /// sections that bind resources (coordinator, master, health monitor, fencing, probes,
    /// watchdog, identity) need a restart and are left as they are.
    pub(super) fn reload(&mut self, new: AgentConfig) -> String {
        // The file counts as this agent's own only once its reload is taken.
        let file = new.clone();
        // The cluster's settings stay over the new file, if the rules still take them.
        let new = match self.mem.cluster_settings.clone().flatten() {
            Some((record, v)) => match new.with_cluster_settings(&record.settings) {
                Ok(merged) => merged,
                Err(e) => {
                    warn!(
                        version = v,
                        "the cluster's settings are refused over the reloaded file, which applies alone: {e}"
                    );
                    if let Some(st) = self.status().cluster_settings.as_mut() {
                        st.applied = false;
                        st.error = Some(e);
                    }
                    new
                }
            },
            None => new,
        };
        let mut restart = Vec::new();
        let old = &self.cfg;
        if old.cluster != new.cluster || old.node_id != new.node_id {
            restart.push("cluster/node_id");
        }
        if format!("{:?}", old.coordinator) != format!("{:?}", new.coordinator) {
            restart.push("coordinator");
        }
        if format!("{:?}", old.master) != format!("{:?}", new.master) {
            restart.push("master");
        }
        if old.health != new.health {
            restart.push("health");
        }
        if format!("{:?}", old.fencing) != format!("{:?}", new.fencing) {
            restart.push("fencing");
        }
        if old.probes.listen != new.probes.listen {
            restart.push("probes");
        }
        // The device is open with its timeout, and the promise made with it is in the breadcrumb.
        if old.watchdog != new.watchdog {
            restart.push("watchdog");
        }
        let live_changed = format!("{:?}{:?}{:?}", old.lease, old.election, old.failsafe)
            != format!("{:?}{:?}{:?}", new.lease, new.election, new.failsafe);
        let (cluster, node_id, coordinator, master, health, fencing, probes, watchdog) = (
            old.cluster.clone(),
            old.node_id.clone(),
            old.coordinator.clone(),
            old.master.clone(),
            old.health,
            old.fencing.clone(),
            old.probes.clone(),
            old.watchdog.clone(),
        );
        let merged = AgentConfig { cluster, node_id, coordinator, master, health, fencing, probes, watchdog, ..new };
        // The live settings must still satisfy the timing rules with the settings kept.
        if let Err(e) = merged.validate() {
            let message = format!("configuration reload refused: {e}");
            warn!("{message}");
            return message;
        }
        self.file_cfg = file;
        self.apply_live(merged);
        let applied = if live_changed {
            "applied the new lease, election and failsafe settings"
        } else {
            "no live setting changed"
        };
        let message = if restart.is_empty() {
            format!("configuration reloaded: {applied}")
        } else {
            format!(
                "configuration reloaded: {applied}; changes to {} need a restart and were not applied",
                restart.join(", ")
            )
        };
        info!("{message}");
        message
    }

    /// Starts a graceful failover to this node: checks it can take over, then asks the current
    /// active (through its peer API) to cede. The reply waits for this node to become active.
    pub(super) async fn start_take_over(
        &mut self,
        coord: Option<&Coordination>,
        allow_data_loss: bool,
    ) -> Result<(), Declined> {
        let (health, paused, master, cluster_paused_by) = {
            let st = self.status();
            (st.health.clone(), st.paused, st.master, st.cluster_paused_by.clone())
        };
        // The operator's failover skips anti-flap, the zone rule and the ranking, never
        // `nofailover`; the lag gate only with `allow_data_loss`. Refused before the active is
        // asked to cede, so a refused failover leaves the cluster as it was.
        let own = self.own_candidacy(master);
        let gate = crate::candidacy::gate(
            &own,
            self.published_view().as_ref(),
            &self.cfg.policy().candidacy,
            BootInstant::now(),
            true,
            allow_data_loss,
        );
        if let Some(blocker) = gate {
            let hint = match blocker {
                crate::candidacy::Blocker::Lagging { .. }
                | crate::candidacy::Blocker::PositionStale { .. }
                | crate::candidacy::Blocker::PositionUnknown
                | crate::candidacy::Blocker::PositionUnconfirmed => {
                    "; pass --allow-data-loss to promote it anyway, losing what it lacks"
                }
                _ => "",
            };
            return Err(Declined::Refused(format!("refusing a failover to this node: {blocker}{hint}")));
        }
        if !health.is_healthy() {
            return Err(Declined::Refused(format!(
                "refusing a failover to this node: its master is not healthy ({health:?})"
            )));
        }
        // What would keep this node from taking the lock once the active ceded: asked anyway,
        // the active would step down for nobody.
        match master.map(|m| m.state) {
            Some(HaState::Standby | HaState::Active) => {}
            Some(HaState::Initializing) => {
                return Err("refusing a failover to this node: its master is still initializing".into())
            }
            None => return Err("refusing a failover to this node: its master's state could not be read".into()),
        }
        let promote = self.cfg.policy().promote_budget;
        if let Some(lease) = self.mem.lease.granted().map(|_| self.mem.lease.budget().unwrap_or_default()) {
            if lease <= promote {
                return Err(Declined::Refused(format!(
                    "refusing a failover to this node: the granted session timeout buys a lease of {} ms, which no \
                     promotion ({} ms) fits in",
                    lease.as_millis(),
                    promote.as_millis()
                )));
            }
        }
        if let Some(by) = cluster_paused_by {
            return Err(Declined::Refused(format!(
                "refusing a failover to this node: the whole cluster is paused (by {by}); `referee admin resume` \
                 (without --node) ends that"
            )));
        }
        if paused {
            return Err(Declined::Refused(format!(
                "refusing a failover to this node: it is paused (this node alone); `referee admin resume --node {}` \
                 ends that",
                self.cfg.node_id
            )));
        }
        // Asked anyway, the active would step down for a node that does not contend.
        if let Some(promise) = self.promise_in_force(BootInstant::now()) {
            return Err(Declined::Refused(format!(
                "refusing a failover to this node: it {} for {} ms more",
                crate::candidacy::Blocker::Promised { to: promise.to },
                promise.until.saturating_since(BootInstant::now()).as_millis()
            )));
        }
        let c = coord.ok_or("refusing a failover: this node has no coordinator session")?;
        self.mem.backoff_until = None;
        self.ask_to_cede(c).await
    }

    /// Asks the current active (through the peer API address it publishes) to hand over and
    /// stay out for a while. Nothing to do when nobody, or this node, is active.
    ///
    /// First it records the handover in the coordinator ([`HandoverRecord`], as Patroni's
    /// `/failover` key), naming this node and the active's token: when the active releases the
    /// lock, every other standby leaves it to this node for a bounded time instead of racing
    /// for it. A cede refused before anything was released withdraws the record.
    pub(super) async fn ask_to_cede(&mut self, c: &Coordination) -> Result<(), Declined> {
        let Some((record, meta)) = self.coordinated("reading the lock", c.read_lock_record()).await? else {
            // Nobody is active: this node will contend on its next cycle.
            self.status().failover_from = Some(FencingToken(0));
            return Ok(());
        };
        if record.node_id == self.cfg.node_id {
            return Ok(());
        }
        let url = record.peer_url.ok_or_else(|| {
            format!("the active node {} publishes no peer API address to ask it to cede", record.node_id)
        })?;
        self.status().failover_from = Some(meta.token);
        let handover = HandoverRecord {
            to: self.cfg.node_id.clone(),
            from: record.node_id.clone(),
            token: meta.token,
            at_ms: wall_ms(),
        };
        self.coordinated("recording the handover", c.write_handover(&handover))
            .await
            .map_err(|e| Declined::Refused(format!("{e}; {} was not asked to cede", record.node_id)))?;
        // The active stays out just long enough for this node to notice the free lock and win
        // it; should this node fail to, the cluster is not left without an active for long.
        let period_ms = self.cfg.coordinator.op_timeout_ms * 2 + self.cfg.election.loop_interval_ms * 5;
        let mut request = self
            .peer_http
            .post(format!("{}/admin/cede", url.trim_end_matches('/')))
            .header(crate::admin::ADDRESSEE_HEADER, record.node_id.as_str())
            .json(&serde_json::json!({ "period_ms": period_ms }));
        if let Some(secret) = &self.cfg_peer_secret() {
            request = request.bearer_auth(secret);
        }
        let call = request
            .timeout(Duration::from_millis(self.cfg.lease.demote_deadline_ms + self.cfg.coordinator.op_timeout_ms * 4))
            .send();
        let answer = self.tended_during(call).await.map_err(|e| {
            let why = format!("asking {} to cede: {e}", record.node_id);
            // Not reached: nothing was asked. Otherwise the request may be on its way or queued
            // there, and the active may still cede.
            match e.is_connect() {
                true => Declined::Refused(why),
                false => Declined::Unsettled(format!("{why}; it may still cede")),
            }
        });
        let outcome = match answer {
            Err(declined) => Err(declined),
            Ok(answer) => {
                let code = answer.status();
                if code.is_success() {
                    Ok(())
                } else {
                    // Capped: the peer may be the misbehaving one.
                    let body = referee_fencing::body_snippet(answer).await;
                    let why = format!("{} did not cede ({code}): {body}", record.node_id);
                    match code.as_u16() {
                        // Queued there, not answered in time.
                        504 => Err(Declined::Unsettled(format!("{why}; it may still cede"))),
                        // A refusal, or (503) an agent that stopped before answering: whether
                        // anything changed is in the lock. A cede that failed after the release
                        // (its demotion or its clean step-down went wrong), or a shutdown's
                        // handover, has released it: the failover goes on, this node fencing the
                        // old active if its breadcrumb was left unclean.
                        _ => match self.released_since(c, &record.node_id, meta.token).await {
                            Ok(true) => {
                                info!(node = %record.node_id, "{why}; but it released the lock: the failover goes on");
                                Ok(())
                            }
                            Ok(false) if code.as_u16() == 503 => Err(Declined::Unsettled(format!(
                                "{why}; it still holds the lock, and may yet hand it over as it stops"
                            ))),
                            Ok(false) => Err(Declined::Refused(format!("{why}; it is still active, nothing changed"))),
                            Err(e) => Err(Declined::Unsettled(format!(
                                "{why}; whether it released the lock is unknown ({e})"
                            ))),
                        },
                    }
                }
            }
        };
        if let Err(Declined::Refused(_)) = &outcome {
            self.withdraw_handover(c, meta.token).await;
        }
        outcome
    }

    /// Whether `holder` no longer holds the lock with `token` (released, or taken since).
    async fn released_since(&mut self, c: &Coordination, holder: &str, token: FencingToken) -> Result<bool, String> {
        let read = self.coordinated("reading the lock", c.read_lock_record()).await?;
        Ok(!read.is_some_and(|(record, meta)| record.node_id == holder && meta.token == token))
    }

    /// Removes this node's handover record for the active's term `token` (a failover to this
    /// node that will not happen), so the other standbys are not held back by it.
    pub(super) async fn withdraw_handover(&mut self, c: &Coordination, token: FencingToken) {
        let me = self.cfg.node_id.clone();
        let removed = c.remove_handover(|r| r.to == me && r.token == token);
        match self.coordinated("withdrawing the handover record", removed).await {
            Ok(_) => {}
            Err(e) => warn!("{e}; the other standbys hold back for a bounded time only"),
        }
    }

    /// Keeps track of the handover record read while the lock is free: when this agent first
    /// saw it, which the hold it gives its target counts from.
    pub(super) fn saw_handover(&mut self, read: Option<(HandoverRecord, i64)>) -> Option<HandoverSeen> {
        let hold = self.failover_wait();
        let now = BootInstant::now();
        let me = self.cfg.node_id.clone();
        let mut st = self.status();
        let Some((record, zxid)) = read else {
            st.handover_seen = None;
            return None;
        };
        let first_seen = match st.handover_seen {
            Some((seen, at)) if seen == zxid => at,
            _ => {
                let first_seen = HandoverSeen::first_seen_at(&record, super::wall_ms(), now, hold);
                st.handover_seen = Some((zxid, first_seen));
                if record.to != me && first_seen == now {
                    info!(to = %record.to, from = %record.from, token = %record.token,
                        "a failover to {} is under way: leaving the lock to it for up to {} ms", record.to, hold.as_millis());
                } else if record.to != me {
                    info!(to = %record.to, from = %record.from, token = %record.token, at_ms = record.at_ms,
                        "a handover record to {} was written long ago and left over: it holds nothing back", record.to);
                }
                first_seen
            }
        };
        Some(HandoverSeen { record, first_seen, hold })
    }

    /// The shared secret of the peer API, if configured.
    pub(super) fn cfg_peer_secret(&self) -> Option<String> {
        self.peer_secret.clone()
    }

    /// How long a failover to this node may take before it is answered as not settled: four
    /// session timeouts and 10 s (the active's session may have to expire), but never past the
    /// admin API's own wait for the answer (`admin.failover_timeout_ms`), which it ends a second
    /// before, so the operator is told why rather than that no answer came.
    pub(super) fn failover_wait(&self) -> Duration {
        let wait =
            Duration::from_millis(self.cfg.coordinator.session_timeout_ms.saturating_mul(4).saturating_add(10_000));
        match &self.cfg.admin {
            Some(admin) => {
                let api = Duration::from_millis(admin.failover_timeout_ms);
                wait.min(api.saturating_sub(Duration::from_secs(1)).max(api / 2))
            }
            None => wait,
        }
    }

    /// Every [`SCHEDULE_READ_EVERY`] cycles, a standby reads the scheduled switchover; when its
    /// time has come and it names this node, the agent takes the record (so it runs once) and
    /// takes over as on an operator's failover, with the same checks; a missed one it clears
    /// (see [`crate::schedule`]).
    pub(super) async fn check_schedule(&mut self, coord: Option<&Coordination>) {
        use crate::schedule::{due, Due};
        self.mem.schedule_age = self.mem.schedule_age.saturating_add(1);
        let Some(c) = coord else { return };
        let standby = self.status().role == Role::Standby;
        if self.mem.schedule_age < SCHEDULE_READ_EVERY
            || !standby
            || self.mem.pending_failover.is_some()
            || !matches!(c.session(), SessionView::Connected { .. })
        {
            return;
        }
        self.mem.schedule_age = 0;
        let (record, version) = match self.coordinated("reading the scheduled switchover", c.read_switchover()).await {
            Ok(Some(found)) => found,
            Ok(None) => return,
            Err(e) => {
                debug!("{e}");
                return;
            }
        };
        let at = record.at_ms;
        match due(&record, &self.cfg.node_id, wall_ms()) {
            Due::NotMine | Due::Wait(_) => {}
            Due::Missed(late_ms) => {
                if let Ok(true) = self.coordinated("dropping a missed switchover", c.take_switchover(version)).await {
                    warn!(to = %record.to, at_ms = at, late_ms, asked_by = %record.requested_by,
                        "a scheduled switchover was found after its window had passed: dropped, not carried out");
                }
            }
            Due::Run => {
                match self.coordinated("taking the scheduled switchover", c.take_switchover(version)).await {
                    Ok(true) => {}
                    Ok(false) => return, // cancelled or replaced since the read
                    Err(e) => {
                        warn!("{e}; trying again at the next read");
                        return;
                    }
                }
                info!(at_ms = at, asked_by = %record.requested_by, "scheduled switchover to this node: starting");
                if let Err(why) = self.start_take_over(coord, record.allow_data_loss).await {
                    warn!(asked_by = %record.requested_by, "scheduled switchover to this node not carried out: {why}");
                    return;
                }
                let (reply, answer) = oneshot::channel();
                tokio::spawn(async move {
                    match answer.await {
                        Ok(Ok(done)) => info!("scheduled switchover done: {done}"),
                        Ok(Err(why)) => warn!("scheduled switchover failed: {why}"),
                        Err(_) => {}
                    }
                });
                let now = BootInstant::now();
                self.mem.pending_failover = Some((reply, now, now + self.failover_wait()));
                self.mem.allow_data_loss = record.allow_data_loss;
            }
        }
    }

    /// Every [`SCHEDULE_READ_EVERY`] cycles, and at once in a new session, reads whether the
    /// whole cluster is paused (`/referee/<cluster>/pause`), this node's drain record and the
    /// cluster's settings; the last reading stands while the coordinator cannot be read. Each
    /// read is cut at the lease left while the master may be active, and a read that fails ends
    /// the round (the coordinator is not answering; the next round is [`SCHEDULE_READ_EVERY`]
    /// cycles on), so the cycle after it is not held up by more than one.
    pub(super) async fn read_cluster_pause(&mut self, coord: Option<&Coordination>) {
        self.mem.pause_age = self.mem.pause_age.saturating_add(1);
        let Some(c) = coord else { return };
        if !matches!(c.session(), SessionView::Connected { .. })
            || (self.mem.pause_read && self.mem.pause_age < SCHEDULE_READ_EVERY)
        {
            return;
        }
        self.mem.pause_age = 0;
        match self.coordinated("reading the cluster's pause record", c.read_pause()).await {
            Ok(record) => {
                self.mem.pause_read = true;
                self.mem.cluster_pause = record;
                self.apply_pause();
            }
            Err(e) => {
                debug!("{e}; the rest is read at the next round");
                return;
            }
        }
        match self.coordinated("reading this node's drain record", c.read_drained()).await {
            Ok(record) => self.apply_drain(record),
            Err(e) => {
                debug!("{e}; the rest is read at the next round");
                return;
            }
        }
        match self.coordinated("reading the cluster's settings", c.read_cluster_settings()).await {
            Ok(read) => self.apply_cluster_settings(read),
            Err(e) => debug!("{e}"),
        }
    }

    /// Applies the cluster's settings as read (a change of the record, or its removal) over
    /// this agent's own file, as a reload applies its live sections; settings the rules refuse
    /// here, or a record that cannot be read, leave the ones in force as they were, and the
    /// status and log say why.
    pub(super) fn apply_cluster_settings(&mut self, read: Option<crate::election::ClusterSettingsRead>) {
        let seen = read.as_ref().map(|r| r.mzxid);
        if self.mem.settings_seen == Some(seen) {
            return;
        }
        let first = self.mem.settings_seen.is_none();
        self.mem.settings_seen = Some(seen);
        let read = match read {
            None => None,
            Some(crate::election::ClusterSettingsRead { record: Ok(record), version, .. }) => Some((record, version)),
            Some(crate::election::ClusterSettingsRead { record: Err(why), version, .. }) => {
                warn!(version, "the cluster's settings cannot be read, the ones in force are kept: {why}");
                self.status().cluster_settings = Some(crate::status::ClusterSettingsStatus {
                    version,
                    set_by: String::new(),
                    applied: false,
                    error: Some(format!("{why}; the settings in force are kept")),
                });
                return;
            }
        };
        self.mem.cluster_settings = Some(read.clone());
        let Some((record, v)) = read else {
            if !first {
                // The file's live sections over what runs, checked as a reload's are.
                let own = AgentConfig {
                    lease: self.file_cfg.lease.clone(),
                    election: self.file_cfg.election.clone(),
                    failsafe: self.file_cfg.failsafe,
                    ..self.cfg.clone()
                };
                match own.validate() {
                    Ok(()) => {
                        let message = self.apply_live(own);
                        info!("the cluster's settings were removed: back to this agent's own ({message})");
                    }
                    Err(e) => warn!(
                        "the cluster's settings were removed, but this agent's own are refused with the settings \
                         running ({e}); the ones in force are kept"
                    ),
                }
            }
            self.status().cluster_settings = None;
            return;
        };
        // Over the file's live sections; the rest stays as running (a reload may have left
        // changes that need a restart).
        let base = AgentConfig {
            lease: self.file_cfg.lease.clone(),
            election: self.file_cfg.election.clone(),
            failsafe: self.file_cfg.failsafe,
            ..self.cfg.clone()
        };
        let outcome = base.with_cluster_settings(&record.settings).map(|live| self.apply_live(live));
        let error = match outcome {
            Ok(message) => {
                info!(version = v, set_by = %record.set_by, "the cluster's settings are in force: {message}");
                None
            }
            Err(e) => {
                warn!(version = v, set_by = %record.set_by, "the cluster's settings are refused here, the ones in force are kept: {e}");
                Some(e)
            }
        };
        self.status().cluster_settings = Some(crate::status::ClusterSettingsStatus {
            version: v,
            set_by: record.set_by,
            applied: error.is_none(),
            error,
        });
    }

    /// Puts this node's drain record in force (it then contends for nothing and takes no
    /// operator's failover), saying when it begins or ends here.
    pub(super) fn apply_drain(&mut self, record: Option<crate::model::DrainRecord>) {
        if self.mem.drained == record {
            return;
        }
        match &record {
            Some(r) => info!(by = %r.by(), "drained: this node will not be promoted until `referee admin undrain`"),
            None if self.mem.drained.is_some() => info!("no longer drained: this node may be promoted again"),
            None => {}
        }
        self.status().drained = record.clone();
        self.mem.drained = record;
    }

    /// Sets the status's pause from the operator's request and the cluster's record, saying
    /// when the cluster's pause begins or ends here.
    pub(super) fn apply_pause(&mut self) {
        let by = self.mem.cluster_pause.as_ref().map(|p| p.requested_by.clone());
        let paused = self.mem.operator_paused || by.is_some();
        let mut st = self.status();
        if st.cluster_paused_by != by {
            match &by {
                Some(who) => info!(by = %who, "the cluster is paused: observing only"),
                None => info!("the cluster's pause is over"),
            }
        }
        st.paused = paused;
        st.cluster_paused_by = by;
    }

    /// Answers a pending failover once this node is active, or when its deadline passes.
    pub(super) fn settle_failover(&mut self) {
        let Some((_, started, deadline)) = &self.mem.pending_failover else { return };
        let (started, deadline) = (*started, *deadline);
        let (role, token, phases, lock, from) = {
            let st = self.status();
            (st.role, st.token, st.history.back().and_then(|t| t.phases), st.lock.clone(), st.failover_from)
        };
        // Another node holding the lock with a token newer than the active's when this node
        // asked it to cede (or any, when nobody was active) took the role: this failover is over.
        let taken =
            crate::decide::failover_taken(&lock, from).map(|(holder, token)| (holder, token, from.unwrap_or_default()));
        let now = BootInstant::now();
        let result = if role == Role::Active {
            Ok(format!(
                "{} is active with token {} after {} ms{}",
                self.cfg.node_id,
                token.map_or(0, |t| t.0),
                now.saturating_since(started).as_millis(),
                phases.map_or(String::new(), |p| format!(
                    " (detect {} ms, elect {} ms, fence {} ms, promote {} ms)",
                    p.detect_ms, p.elect_ms, p.fence_ms, p.promote_ms
                ))
            ))
        } else if let Some((holder, newer, from)) = taken {
            Err(Declined::Unsettled(format!(
                "the failover to {me} did not happen: {holder} took the lock with token {newer} (the failover started \
                 from token {from}) and is active; {me} stays standby. Ask again with `referee admin failover --to {me}` \
                 if it should still take over",
                me = self.cfg.node_id
            )))
        } else if now >= deadline {
            // The active may have ceded: this node goes on contending by the automatic rules.
            Err(Declined::Unsettled(format!(
                "{} did not become active within {} ms; it may still, by the automatic rules; last decision: {}",
                self.cfg.node_id,
                deadline.saturating_since(started).as_millis(),
                self.mem.last_reason
            )))
        } else {
            return;
        };
        if let Some((reply, _, _)) = self.mem.pending_failover.take() {
            let _ = reply.send(result);
        }
        self.status().failover_from = None;
    }
}
