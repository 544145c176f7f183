//! Executing: the steps of a decision, in order, each under a deadline, and the handover that
//! the core plans ([`crate::decide::plan_handover`]). A failed step ends the sequence and is fed
//! back in the next observation.

use super::*;

/// What a target's master answers on `GET /ha/state` within 500 ms, if it answers. Its answer
/// is read no further than [`referee_fencing::MAX_ANSWER_BYTES`]: every peer is asked at once,
/// in the middle of a promotion, and any of them may be the misbehaving one.
async fn ha_state(http: &reqwest::Client, target: &FenceTarget) -> Option<HaStatus> {
    let url = format!("{}/ha/state", target.ha_base_url());
    match http.get(&url).timeout(Duration::from_millis(500)).send().await {
        Ok(r) if r.status().is_success() => referee_fencing::read_json::<HaStatus>(r).await.ok(),
        _ => None,
    }
}

/// Confirms a clean step-down on the target's master by stepping it down again with
/// `new_token` (`POST /ha/standby`, which a master never refuses), within `limit`, judged as
/// the `graceful` method judges it: fenced only once the master is standby holding `new_token`.
/// Reading its state would not do: a master still holding the old token takes a promotion
/// carrying it, sent before the handover and delivered after it, for a retry.
async fn confirm_step_down(
    http: &reqwest::Client,
    target: &FenceTarget,
    new_token: FencingToken,
    limit: Duration,
) -> MethodOutcome {
    let url = format!("{}/ha/standby", target.ha_base_url());
    let sent = http.post(&url).timeout(limit).json(&referee_fencing::TokenRequest { token: new_token }).send();
    let answer = match sent.await {
        Ok(r) if r.status().is_success() => referee_fencing::read_json::<HaStatus>(r).await.ok(),
        Ok(r) => return MethodOutcome::Failed { reason: format!("POST {url} answered {}", r.status()) },
        Err(e) => return MethodOutcome::Indeterminate { reason: format!("POST {url}: {e}") },
    };
    // An answer without the master's state: ask for it.
    let status = match answer {
        Some(status) => Some(status),
        None => ha_state(http, target).await,
    };
    match status {
        Some(status) => status.judge_step_down(new_token),
        None => MethodOutcome::Indeterminate { reason: format!("POST {url} was answered, but the state is unknown") },
    }
}

impl Driver {
    /// Carries out a decision's steps in order. Returns the master's status if a step changed it.
    pub(super) async fn execute(
        &mut self,
        decision: &Decision,
        obs: &Observation,
        coord: Option<&Coordination>,
    ) -> Option<crate::model::MasterStatus> {
        let token_held = match obs.lock {
            LockView::Ours { token, .. } => token,
            _ => FencingToken(0),
        };
        let mut master_after = None;
        // The breadcrumb now names this node: the confirmations the fence stood on have served.
        let mut crumb_written = false;
        for step in &decision.steps {
            let started = BootInstant::now();
            let result: Result<(), String> = match step {
                Step::Contend => match coord {
                    None => Err("no coordinator session".into()),
                    Some(c) => {
                        let record = LockRecord {
                            node_id: self.cfg.node_id.clone(),
                            target: self.cfg.own_target(),
                            peer_url: self.peer_url.clone(),
                        };
                        match self.coordinated("contending", c.try_acquire(&record)).await {
                            Ok(Acquired::Won { token }) => {
                                let now = BootInstant::now();
                                self.mem.phases = Phases {
                                    detect_ms: self
                                        .mem
                                        .free_seen_at
                                        .map_or(0, |t| started.saturating_since(t).as_millis() as u64),
                                    elect_ms: now.saturating_since(started).as_millis() as u64,
                                    ..Phases::default()
                                };
                                info!(token = %token, "won the lock");
                                self.mem.timeline.mark(Mark::now("lock_acquired"));
                                self.mem.cycle_again = true;
                                // The handover record seen is about an earlier term: it has served.
                                if obs.handover.is_some() {
                                    let won = token;
                                    let removed = c.remove_handover(|r| r.token < won);
                                    if let Err(e) = self.coordinated("removing the handover record", removed).await {
                                        debug!("{e}; it is ignored once this node's breadcrumb is written");
                                    }
                                }
                                Ok(())
                            }
                            Ok(Acquired::HeldBy { node_id, token }) => {
                                debug!(%node_id, token = %token, "lost the race for the lock");
                                self.mem.timeline.mark(Mark::now("lock_race_lost"));
                                Ok(())
                            }
                            Err(e) => Err(e),
                        }
                    }
                },
                Step::Fence { targets, new_token, clean_claim } => {
                    self.mem.token_issued = Some(*new_token);
                    let r = self.fence_all(targets, *new_token, *clean_claim, coord).await;
                    self.mem.phases.fence_ms = started.elapsed().as_millis() as u64;
                    self.mem.timeline.mark(Mark::now(if r.is_ok() { "fence_done" } else { "fence_failed" }));
                    r
                }
                Step::WriteBreadcrumb { token, lock_version, expected_version } => match coord {
                    None => Err("no coordinator session".into()),
                    Some(c) => {
                        let mut target = self.cfg.own_target();
                        target.token = *token;
                        let crumb =
                            Breadcrumb { node_id: self.cfg.node_id.clone(), token: *token, clean: false, target };
                        let r = self
                            .coordinated(
                                "writing the breadcrumb",
                                c.write_breadcrumb(&crumb, *lock_version, *expected_version),
                            )
                            .await
                            .map(|_| ());
                        self.mem.timeline.mark(Mark::now("breadcrumb_written"));
                        crumb_written = r.is_ok();
                        r
                    }
                },
                Step::Promote { token } => {
                    // The fence before this may have taken a while: the lease left must still
                    // cover the whole promotion, or it waits for the next cycle's renewal (not a
                    // failure: the breadcrumb is written, the next cycle promotes).
                    let budget = self.cfg.promote_budget();
                    let now = BootInstant::now();
                    if !self.mem.lease.may_promote_for(now, budget) {
                        info!(
                            token = %token,
                            "the lease left ({} ms) no longer covers a promotion ({} ms); promoting after it is renewed",
                            self.mem.lease.left(now).as_millis(),
                            budget.as_millis()
                        );
                        break;
                    }
                    if let Some(hook) = self.cfg.hooks.pre_promote.clone() {
                        let (cluster, node) = (self.cfg.cluster.clone(), self.cfg.node_id.clone());
                        if let Err(veto) =
                            self.tended_during(crate::hooks::pre_promote(&hook, &cluster, &node, *token)).await
                        {
                            warn!("{veto}");
                            self.status().last_failure = Some(veto.clone());
                            self.mem.failure = Some(StepFailure { token: token_held, reason: veto });
                            break;
                        }
                    }
                    // The promise in the breadcrumb is kept from before the master may be active.
                    if let Err(reason) = self.watchdog.arm(BootInstant::now()) {
                        warn!("{reason}");
                        self.status().last_failure = Some(reason.clone());
                        self.mem.failure = Some(StepFailure { token: token_held, reason });
                        break;
                    }
                    let deadline =
                        tokio::time::Instant::now() + Duration::from_millis(self.cfg.election.promote_timeout_ms);
                    self.mem.token_issued = Some(*token);
                    // From the moment the request goes out the master may be active with this
                    // token: the guard enforces the lease on it even if the answer is lost.
                    self.mem.promoted = Some(self.mem.promoted.map_or(*token, |p| p.max(*token)));
                    self.publish_guard();
                    let adapter = self.adapter.clone();
                    match self.tended_during(adapter.promote(*token, deadline)).await {
                        Ok(status) => {
                            master_after = Some(status);
                            self.mem.phases.promote_ms = started.elapsed().as_millis() as u64;
                            self.mem.timeline.mark(Mark::now("promoted"));
                            self.status().counters.promotions += 1;
                            info!(token = %token, "promoted the master");
                            Ok(())
                        }
                        Err(e) => Err(format!("promoting the master: {e}")),
                    }
                }
                Step::Demote { token, best_effort } => {
                    if *token == token_held {
                        self.mem.token_issued = Some(*token);
                    }
                    self.mem.timeline.mark(Mark::now("demote_sent"));
                    let deadline =
                        tokio::time::Instant::now() + Duration::from_millis(self.cfg.lease.demote_deadline_ms);
                    let adapter = self.adapter.clone();
                    let demoted = self.tended_during(adapter.demote(*token, deadline)).await;
                    self.mark_demotion(demoted.is_ok());
                    match demoted {
                        Ok(status) => {
                            master_after = Some(status);
                            self.status().counters.demotions += 1;
                            info!(token = %token, "demoted the master");
                            Ok(())
                        }
                        Err(e) if *best_effort => {
                            warn!("demoting the master failed (continuing): {e}");
                            Ok(())
                        }
                        Err(e) => Err(format!("demoting the master: {e}")),
                    }
                }
                Step::SetTokenBase { czxid, floor, lock_version, current, consult_peers } => match coord {
                    None => Err("no coordinator session".into()),
                    Some(c) => {
                        let mut floor = *floor;
                        let mut raised_by = None;
                        if *consult_peers {
                            let (found, from) = self.peer_master_tokens().await;
                            if found > floor {
                                info!(token = %found, "a peer's master has seen a higher token: {from}");
                                floor = found;
                                raised_by = Some(from);
                            }
                        }
                        // czxid + base must be above the floor; the base never goes down; all
                        // of it checked (an overflow refuses, never wraps).
                        match crate::tokens::base_above(*czxid, floor, current.map(|(b, _)| b)) {
                            Err(e) => Err(match raised_by {
                                Some(from) => format!("setting the token base: {e} ({from})"),
                                None => format!("setting the token base: {e}"),
                            }),
                            Ok(base) => {
                                let record = TokenBase { base, floor, node_id: self.cfg.node_id.clone() };
                                let set = c.set_token_base(&record, *czxid, *lock_version, *current);
                                match self.coordinated("setting the token base", set).await {
                                    Ok(token) => {
                                        info!(%token, base, %floor, "token base set: this acquisition's token is above every token found");
                                        Ok(())
                                    }
                                    Err(e) => Err(e),
                                }
                            }
                        }
                    }
                },
                Step::RequestHandover { from } => {
                    let period = Duration::from_millis(self.cfg.election.failback_after_ms);
                    self.mem.failback_not_before = Some(BootInstant::now() + period);
                    match coord {
                        None => Err("no coordinator session".into()),
                        Some(c) => match self.ask_to_cede(c).await {
                            Ok(()) => {
                                info!(node = %from, "asked the active to hand over to the preferred node");
                                Ok(())
                            }
                            Err(e) => Err(format!("asking {from} to hand over: {e}")),
                        },
                    }
                }
                Step::ReleaseLock { token, backoff } => {
                    if !backoff.is_zero() {
                        self.mem.backoff_until = Some(BootInstant::now() + *backoff);
                    }
                    match coord {
                        None => Err("no coordinator session".into()),
                        Some(c) => {
                            self.show_lock_released();
                            let r = self.coordinated("releasing the lock", c.release(*token)).await.map(|_| ());
                            self.lock_given_up();
                            self.mem.timeline.mark(Mark::now("lock_released"));
                            r
                        }
                    }
                }
            };
            match step {
                Step::SetTokenBase { .. } => self.mem.timeline.mark(Mark::now("token_base_set")),
                Step::Contend
                | Step::Demote { .. }
                | Step::Fence { .. }
                | Step::WriteBreadcrumb { .. }
                | Step::Promote { .. }
                | Step::RequestHandover { .. }
                | Step::ReleaseLock { .. } => {}
            }
            if let Err(reason) = result {
                warn!("step failed: {reason}");
                self.status().last_failure = Some(reason.clone());
                if token_held.0 != 0 {
                    self.mem.failure = Some(StepFailure { token: token_held, reason });
                }
                break;
            }
        }
        // After the promotion, not before it: the lease it must fit in is not spent on this.
        if let (true, Some(c)) = (crumb_written, coord) {
            self.remove_confirmations(c).await;
        }
        master_after
    }

    /// Fences every target; a target that claims a clean step-down is first checked on its
    /// master, and fenced only if the claim cannot be confirmed. A fence that does not end
    /// fenced stands only if an operator has confirmed that target down for its term
    /// ([`crate::model::ConfirmedDownRecord::applies_to`]).
    pub(super) async fn fence_all(
        &mut self,
        targets: &[FenceTarget],
        new_token: FencingToken,
        clean_claim: Option<FencingToken>,
        coord: Option<&Coordination>,
    ) -> Result<(), String> {
        self.mem.confirmations_used.clear();
        for target in targets {
            if clean_claim.is_some() {
                // Bounded by the demotion deadline; whatever does not end fenced goes through
                // the fencing chain.
                let limit = Duration::from_millis(self.cfg.lease.demote_deadline_ms);
                let http = self.http.clone();
                match self.tended_during(confirm_step_down(&http, target, new_token, limit)).await {
                    MethodOutcome::Fenced { detail } => {
                        info!(node = %target.node_id, "a clean step-down confirmed on its master with the new token ({detail}); no further fencing needed");
                        continue;
                    }
                    MethodOutcome::Failed { reason } | MethodOutcome::Indeterminate { reason } => {
                        info!(node = %target.node_id, "a clean step-down could not be confirmed on its master ({reason}): fencing it");
                    }
                }
            }
            // A chain already seen failing for this term is not run again once an operator has
            // confirmed the node down: the confirmation takes effect now, not after another
            // run to its deadline (a BMC that does not answer can take minutes).
            let seen_failing = self.mem.chains_failed.contains(&(target.node_id.clone(), target.token));
            if seen_failing {
                if let Ok((by, version)) = self.operator_confirmed(target, coord).await {
                    self.stand_on_confirmation(
                        target,
                        &format!("fencing {} failed before", target.node_id),
                        by,
                        version,
                    );
                    continue;
                }
            }
            self.mem.timeline.mark(Mark::now(format!("fence_started {}", target.node_id)));
            let fencer = self.fencer.clone();
            let report = self.tended_during(fencer.fence(target, new_token)).await;
            // One mark per method attempt, at its end: the fence phase split by method.
            for e in &report.events {
                let end = e.started_at + e.duration;
                let how = match e.outcome {
                    MethodOutcome::Fenced { .. } => "fenced",
                    MethodOutcome::Failed { .. } => "failed",
                    MethodOutcome::Indeterminate { .. } => "indeterminate",
                };
                let what = format!("fence {} by {}: {how}", e.target, e.method);
                self.mem.timeline.mark(Mark::at(what, crate::timeline::wall_us(end)));
            }
            {
                let mut st = self.status();
                match &report.outcome {
                    FenceOutcome::Fenced { .. } => st.counters.fences_fenced += 1,
                    FenceOutcome::Failed { .. } => st.counters.fences_failed += 1,
                    FenceOutcome::Indeterminate { .. } => st.counters.fences_indeterminate += 1,
                }
            }
            if !report.outcome.permits_promotion() {
                let failed = format!("fencing {}: {:?}", target.node_id, report.outcome);
                let key = (target.node_id.clone(), target.token);
                if !self.mem.chains_failed.contains(&key) {
                    if self.mem.chains_failed.len() >= CHAINS_FAILED_KEPT {
                        self.mem.chains_failed.remove(0);
                    }
                    self.mem.chains_failed.push(key);
                }
                match self.operator_confirmed(target, coord).await {
                    Ok((by, version)) => {
                        self.stand_on_confirmation(target, &failed, by, version);
                        continue;
                    }
                    Err(None) => return Err(failed),
                    Err(Some(why)) => return Err(format!("{failed}; {why}")),
                }
            }
            info!(node = %target.node_id, "fenced: {:?}", report.outcome);
            if let Some(slow) = report.graceful_unanswered() {
                warn!(
                    node = %target.node_id,
                    "{}'s master was asked to step down (method {:?}) and did not confirm within {} ms; it was {} \
                     instead: right for a hung master; if it was healthy and only slow to step down (its fsync of the \
                     new token on a slow disk, say), raise that method's timeout_ms above its slowest step-down",
                    target.node_id,
                    slow.method,
                    slow.duration.as_millis(),
                    report.outcome
                );
            }
        }
        Ok(())
    }

    /// Counts `target` fenced on an operator's confirmation (`by`, read at `version`), after
    /// what its chain did (`failed`).
    fn stand_on_confirmation(&mut self, target: &FenceTarget, failed: &str, by: String, version: i32) {
        warn!(
            node = %target.node_id,
            token = %target.token,
            "{failed}; {} was confirmed down by {by}: counted as fenced on the operator's word",
            target.node_id
        );
        self.mem.timeline.mark(Mark::now(format!("fence {} confirmed down by {by}", target.node_id)));
        self.status().counters.fences_confirmed += 1;
        self.mem.confirmations_used.push((target.node_id.clone(), version));
    }

    /// Whether an operator has confirmed `target` down for the term being fenced: who, and the
    /// record's version; else `None`, or why a record there does not stand for this fence.
    async fn operator_confirmed(
        &mut self,
        target: &FenceTarget,
        coord: Option<&Coordination>,
    ) -> Result<(String, i32), Option<String>> {
        let Some(c) = coord else { return Err(None) };
        let read =
            self.coordinated("reading the operator's confirmation", c.read_confirmed_down(&target.node_id)).await;
        match read {
            Ok(None) => Err(None),
            Ok(Some((Ok(record), version))) if record.applies_to(&target.node_id, target) => Ok((record.by(), version)),
            Ok(Some((Ok(record), _))) => Err(Some(format!(
                "{}'s confirmation by {} is for its term with token {}, not this one ({}); confirm it down again",
                target.node_id,
                record.by(),
                record.token,
                target.token
            ))),
            Ok(Some((Err(e), _))) => Err(Some(format!("{}'s confirmation cannot be read ({e})", target.node_id))),
            Err(e) => Err(Some(e)),
        }
    }

    /// Removes the operators' confirmations this promotion's fence stood on, now that the
    /// breadcrumb names this node: each stood for one term of its node, which is over.
    async fn remove_confirmations(&mut self, c: &Coordination) {
        for (node, version) in std::mem::take(&mut self.mem.confirmations_used) {
            match self.coordinated("removing a confirmation", c.remove_confirmed_down(&node, version)).await {
                Ok(true) => {
                    info!(node = %node, "removed the operator's confirmation that {node} is down: it has served")
                }
                Ok(false) => {}
                // Harmless if it stays: it names a term that is over (see `applies_to`).
                Err(e) => warn!(node = %node, "{e}; the confirmation stays, for a term that is over"),
            }
        }
    }

    /// The highest token any other member's master reports (asked at once, each within
    /// 500 ms; a master that cannot be asked is skipped), and who reported it.
    pub(super) async fn peer_master_tokens(&self) -> (FencingToken, String) {
        let mut asks = tokio::task::JoinSet::new();
        // Every node that could have been active: configured peers, members, past holders.
        let mut targets: Vec<FenceTarget> = Vec::new();
        let candidates = self
            .cfg
            .peer_targets()
            .into_iter()
            .chain(self.mem.members.iter().map(|m| m.target.clone()))
            .chain(self.mem.seen_holders.iter().cloned());
        for t in candidates {
            let own = t.node_id == self.cfg.node_id && same_machine(&t, &self.cfg.own_target());
            if !own && !targets.iter().any(|x| x.node_id == t.node_id && same_machine(x, &t)) {
                targets.push(t);
            }
        }
        for target in targets {
            let http = self.http.clone();
            asks.spawn(async move { ha_state(&http, &target).await.map(|s| (s.token, target.node_id)) });
        }
        let mut best = (FencingToken(0), String::from("none"));
        while let Some(joined) = asks.join_next().await {
            if let Ok(Some((token, node))) = joined {
                // Anyone can answer `/ha/state`: a token above the usable bound is ignored, so
                // it cannot raise the base for good (see `crate::tokens`).
                let Some(token) = crate::tokens::from_peer(token) else {
                    warn!(node = %node, %token, "ignoring a peer master's token above the highest usable token");
                    continue;
                };
                if token > best.0 {
                    best = (token, format!("{node}'s master reports token {token}"));
                }
            }
        }
        best
    }

    /// Hands the active role over gracefully and stays out of the election for `period`.
    ///
    /// Order matters: the master is demoted and confirms standby first; only then are the
    /// breadcrumb marked clean and the lock released, in one multi through the lock's session.
    /// If the demotion fails, the lock is released with the breadcrumb left unclean, so the next
    /// winner fences this node.
    ///
    /// An active's handover is recorded as a failover's first half (`why` names what asked
    /// for it, `cede_requested` or `shutdown_requested`): the role change away from active
    /// that the next cycle sees carries the request, the demotion and the lock's release.
    pub(super) async fn hand_over(
        &mut self,
        coord: Option<&Coordination>,
        period: Duration,
        why: &'static str,
    ) -> Result<String, String> {
        self.mem.backoff_until = Some(BootInstant::now() + period);
        let asked = Mark::now(why);
        // The first read is bounded by the lease left like every other await while the master
        // may be active; if it fails, the plan still demotes a master that may be active.
        let lock = match coord {
            Some(c) => self.coordinated("reading the lock", c.read_lock()).await.ok(),
            None => None,
        };
        let master = self.status().master;
        let demote_deadline = Duration::from_millis(self.cfg.lease.demote_deadline_ms);
        let (c, token, lock_version) = match plan_handover(lock.as_ref(), self.mem.promoted, master) {
            Handover::NotActive => {
                return Ok(format!("not active; staying out of the election for {} ms", period.as_millis()))
            }
            Handover::DemoteOnly { token } => {
                self.record_handover([asked, Mark::now("demote_sent")]);
                let deadline = tokio::time::Instant::now() + demote_deadline;
                let adapter = self.adapter.clone();
                let demoted = self.tended_during(adapter.demote(token, deadline)).await;
                self.mark_demotion(demoted.is_ok());
                return match demoted {
                    Ok(s) => {
                        self.master_stepped(s);
                        Ok(format!(
                            "the lock is not held by this session (or could not be read): demoted the master with \
                             token {token}; staying out for {} ms",
                            period.as_millis()
                        ))
                    }
                    Err(e) => Err(format!("the lock could not be confirmed and demoting the master failed: {e}")),
                };
            }
            Handover::StepDown { token, lock_version } => (coord.ok_or("no coordinator session")?, token, lock_version),
        };
        self.record_handover([asked, Mark::now("demote_sent")]);
        let deadline = tokio::time::Instant::now() + demote_deadline;
        let adapter = self.adapter.clone();
        let demoted = self.tended_during(adapter.demote(token, deadline)).await;
        self.mark_demotion(demoted.is_ok());
        match demoted {
            Ok(s) => self.master_stepped(s),
            Err(e) => {
                self.release_recorded(c, token).await;
                return Err(format!(
                    "demoting the master failed ({e}); released the lock with the breadcrumb unclean, so the next active will fence this node"
                ));
            }
        }
        self.status().counters.demotions += 1;
        let crumb_version = match self.coordinated("reading the breadcrumb", c.read_breadcrumb()).await {
            Ok(BreadcrumbView::Present { crumb, version })
                if crumb.node_id == self.cfg.node_id && crumb.token == token =>
            {
                version
            }
            other => {
                self.release_recorded(c, token).await;
                return Err(format!(
                    "the breadcrumb is not ours ({other:?}); released the lock, the next active will fence"
                ));
            }
        };
        let mut target = self.cfg.own_target();
        target.token = token;
        let crumb = Breadcrumb { node_id: self.cfg.node_id.clone(), token, clean: true, target };
        let stepped = c.step_down_cleanly(&crumb, token, lock_version, crumb_version);
        self.show_lock_released();
        match self.coordinated("marking the breadcrumb clean", stepped).await {
            Ok(()) => {
                self.lock_given_up();
                self.mem.timeline.mark(Mark::now("lock_released"));
                Ok(format!(
                    "handed over: master demoted with token {token}, breadcrumb marked clean and lock released; staying out for {} ms",
                    period.as_millis()
                ))
            }
            Err(e) => {
                self.release_recorded(c, token).await;
                Err(format!("{e}; released the lock, the next active will fence"))
            }
        }
    }

    /// Starts recording a handover; a promotion given up this way goes on with its own
    /// recording (its fence is part of it), as in the cycle.
    fn record_handover(&mut self, marks: [Mark; 2]) {
        if self.status().role == Role::Promoting && self.mem.timeline.recording() {
            marks.into_iter().for_each(|m| self.mem.timeline.mark(m));
        } else {
            self.mem.timeline.restart(marks);
        }
    }

    /// Marks how a demotion ended in the recording: `demote_done`, or `demote_failed` (a
    /// best-effort one goes on after it, marked as failed all the same).
    fn mark_demotion(&mut self, done: bool) {
        self.mem.timeline.mark(Mark::now(if done { "demote_done" } else { "demote_failed" }));
    }

    /// Releases the lock after a handover went wrong (the breadcrumb left unclean, so the next
    /// active fences this node), marking the release in the handover's recording.
    async fn release_recorded(&mut self, c: &Coordination, token: FencingToken) {
        self.show_lock_released();
        let released = self.coordinated("releasing the lock", c.release(token)).await;
        self.lock_given_up();
        self.mem.timeline.mark(Mark::now(if released.is_ok() { "lock_released" } else { "lock_release_failed" }));
    }

    /// After a release, answered or not: the lock may be gone, so it gives no authority until a
    /// read finds it held again (a self-fencing watchdog starves meanwhile if the master may be
    /// active), and the probes stop showing it at once: a master that enforces its lease
    /// through `/lease` gets nothing more from it, and `/active` is not 200, even if the next
    /// read of the lock is slow to come.
    fn lock_given_up(&mut self) {
        // Not into the token history: if the release did not happen, the next read finds the
        // lock ours again under the same token, which must not count as another acquisition's.
        self.mem.tokens.held = None;
        self.mem.lock_released = true;
        self.show_lock_released();
        self.tend_watchdog();
    }

    /// Stops showing the lock as held, from the moment a release is sent (it may be done at the
    /// coordinator, and seen by others, before its answer comes back): `/lease` gives nothing
    /// more and `/active` is not 200. Were the release not to happen, the next read shows the
    /// lock again.
    fn show_lock_released(&mut self) {
        let mut st = self.status();
        st.lock = LockView::Unknown;
        st.token = None;
    }

    /// Records what the master answered to a demotion made outside a cycle.
    pub(super) fn master_stepped(&mut self, status: crate::model::MasterStatus) {
        self.mem.master_answer = Some((status, BootInstant::now()));
        self.mem.master_read = true;
        self.mem.promoted = track_promoted(self.mem.promoted, Some(status));
        self.status().master = Some(status);
        self.publish_guard();
    }
}
