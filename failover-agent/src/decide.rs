//! The decision core: one pure function from everything the agent observes to what it should
//! do now, and a sentence saying why.
//!
//! It holds no state and does no I/O. The driver observes afresh every cycle (level-triggered:
//! watches only wake it early), calls [`decide`], executes the steps in order, and feeds any
//! failure back in the next observation. A promotion therefore never depends on remembering
//! what was done before: the breadcrumb in the coordinator says who was last active, and the
//! winner writes its own breadcrumb only after fencing succeeded, so after a crash mid-way the
//! next cycle resumes at the right step.
//!
//! The rules, in order of precedence:
//!
//! 1. The master reports active (or cannot be read after this agent promoted it, so may be
//!    active) but this agent does not hold the lock, or its lease has run out: demote it. (With
//!    the lock unknown, the lease alone decides: it was granted only while the coordinator could
//!    still vouch for our session.) This rule holds in maintenance mode too: pausing stops
//!    failovers, never the end of a lease.
//!    In failsafe mode a master whose lease ran out while the coordinator is unreachable may
//!    stay active while every other node's agent has confirmed it is not active (and
//!    promised not to contend) within the failsafe lease.
//! 2. Paused: report, touch nothing else.
//! 3. The master is unhealthy: never contend; if we hold the lock, demote (best effort) and
//!    release it with the breadcrumb left unclean, so the next winner fences us.
//! 4. We hold the lock: after a failed step in this acquisition, release and back off;
//!    otherwise make sure every token seen is usable ([`crate::tokens`]) and the token is above
//!    them all (setting or raising the token base if not: tokens never go backwards, even after
//!    the coordinator lost its data); wait unless the lease left covers a whole promotion; fence
//!    whoever the breadcrumb says was active (this node's id on another machine included), or,
//!    with no breadcrumb, every configured peer, registered member and node ever seen holding
//!    the lock; write our breadcrumb through the lock's session, then promote.
//! 5. The lock is free, we are healthy and connected, not backing off, not tagged
//!    `nofailover`, within the lag gate of the active's published position (and that position
//!    fresh), in an allowed zone, the last failover is at least the minimum interval ago
//!    (anti-flap), and no better eligible candidate still has its head start
//!    ([`crate::candidacy`]), and no graceful failover to another node is under way (its
//!    handover record leaves the freed lock to that node, for a bounded time counted from when
//!    this agent first saw it): contend. An operator's failover skips anti-flap, the zone rule
//!    and the ranking (the target of a handover record skips the ranking too); only its explicit
//!    `allow_data_loss` skips the lag gate.
//! 6. A peer is active, and this is the preferred node with a master healthy for the failback
//!    period, counted from when it became healthy or last left the active role, whichever is
//!    later: ask the active to hand over gracefully.
//!
//! Every decision that leaves this node short of the active role names its [`Blocker`].

use std::fmt;
use std::time::Duration;

use referee_fencing::{FenceTarget, FencingToken, HaState};

use crate::candidacy::{self, Blocker, Candidacy, CandidacyPolicy, OwnCandidacy, PublishedView};
use crate::clock::BootInstant;
use crate::model::{
    BreadcrumbView, HandoverRecord, Health, LockView, MasterStatus, Member, SessionView, TokenBaseView,
};
use crate::tokens::{self, TokenSource};

/// Everything the core looks at, observed by the driver this cycle.
#[derive(Debug, Clone)]
pub struct Observation {
    /// Now, on the boot-time clock.
    pub now: BootInstant,
    /// This agent's node id.
    pub node_id: String,
    /// How to fence this node's own master (written into our breadcrumb).
    pub own_target: FenceTarget,
    /// The master's health.
    pub health: Health,
    /// The master's reported role and token; `None` when it could not be read.
    pub master: Option<MasterStatus>,
    /// The coordinator session.
    pub session: SessionView,
    /// The lock, as read this cycle.
    pub lock: LockView,
    /// The breadcrumb, as read this cycle.
    pub breadcrumb: BreadcrumbView,
    /// Registered members, this node included.
    pub members: Vec<Member>,
    /// Every other node of the cluster, from the configuration (how to fence each).
    pub peers: Vec<FenceTarget>,
    /// Every node this agent has seen holding the lock or named in a breadcrumb, with how to
    /// fence it, kept across coordinator sessions (members are ephemeral and a wiped
    /// coordinator forgets them; this does not).
    pub seen_holders: Vec<FenceTarget>,
    /// The token this agent promoted its master with, while the master may still be active
    /// with it (set before the promotion is sent, cleared once the master is seen not active):
    /// a master whose state cannot be read is treated as active with it.
    pub promoted: Option<FencingToken>,
    /// Until when this agent may keep its master active without hearing from the coordinator;
    /// `None` when it has no lease.
    pub lease_until: Option<BootInstant>,
    /// Maintenance mode: observe and report only.
    pub paused: bool,
    /// Stay out of the election until then.
    pub backoff_until: Option<BootInstant>,
    /// The last failed step of the current lock acquisition, if any.
    pub failure: Option<StepFailure>,
    /// The token base, read together with the lock.
    pub token_base: TokenBaseView,
    /// The highest token this agent has seen from any acquisition other than the one it holds
    /// now (locks, breadcrumbs, masters), kept across coordinator sessions.
    pub token_floor: FencingToken,
    /// The token the current acquisition has already handed to a master (fence, promote or
    /// demote), so a master reporting it is not a sign of lost history.
    pub token_issued: Option<FencingToken>,
    /// Failsafe mode's lease: until then every other member's agent has confirmed it is not
    /// active and will not contend. Only set while failsafe is enabled and confirmed.
    pub failsafe_until: Option<BootInstant>,
    /// When this agent last saw the active node change (a new lock token, or itself leaving the
    /// active role), for anti-flap.
    pub last_failover_at: Option<BootInstant>,
    /// Since when the master has been healthy without a break; `None` while it is not.
    pub healthy_since: Option<BootInstant>,
    /// When this node last left the active role, as this agent saw it: the preferred node's
    /// failback clock starts no earlier, so a switchover away from it holds for the failback
    /// period.
    pub left_active_at: Option<BootInstant>,
    /// An operator asked for a failover to this node: anti-flap does not hold it back.
    pub failover_requested: bool,
    /// No failback request before then (one was made recently).
    pub failback_not_before: Option<BootInstant>,
    /// The failsafe promise in force (given to an active peer, or kept from the agent's start;
    /// see [`crate::failsafe::promise_in_force`]): do not contend for the lock until it ends.
    pub promised: Option<crate::failsafe::Promise>,
    /// This node's tags and its master's position.
    pub candidacy: OwnCandidacy,
    /// The active's published position, as last read (`None`: none published, or unknown).
    pub published: Option<PublishedView>,
    /// The other standbys' published candidacies.
    pub candidates: Vec<Candidacy>,
    /// When this agent first saw the lock free (for the per-rank delay).
    pub lock_free_since: Option<BootInstant>,
    /// The operator's failover to this node overrides the lag gate (`--allow-data-loss`).
    pub allow_data_loss: bool,
    /// The lease each answered request buys under the session timeout granted now (zero when
    /// the grant leaves none); `None` without a session.
    pub lease_budget: Option<Duration>,
    /// The graceful failover under way (its record in the coordinator), as read while the lock
    /// was free; `None` when there is none, or it was not read.
    pub handover: Option<HandoverSeen>,
}

/// A graceful failover's handover record, as this agent saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoverSeen {
    /// The record.
    pub record: HandoverRecord,
    /// When this agent first saw this record (on its own clock).
    pub first_seen: BootInstant,
    /// How long, from then, the other standbys leave the freed lock to the record's target.
    pub hold: Duration,
}

impl HandoverSeen {
    /// When to count a record from that this agent sees for the first time at `now` (its own
    /// clock; `wall_now_ms` its wall clock): now, unless the record was written (`at_ms`, the
    /// writer's wall clock) more than twice `hold` ago, so long that no clock skew between the
    /// hosts explains it. Such a record was left over (its target's agent stopped between
    /// writing it and asking the active to cede, and the active then kept the role) and holds
    /// nobody back: counted as run out already, so a crash of that active later fails over at
    /// once. The record only ever holds a contention back, so a wrong wall clock can cost a
    /// delay or a race the handover was meant to avoid, never safety.
    pub fn first_seen_at(record: &HandoverRecord, wall_now_ms: i64, now: BootInstant, hold: Duration) -> BootInstant {
        let age_ms = wall_now_ms.saturating_sub(record.at_ms);
        let left_over = u128::try_from(age_ms).is_ok_and(|age| age > 2 * hold.as_millis());
        if left_over {
            now - hold
        } else {
            now
        }
    }

    /// How long more a node other than the target leaves the free lock to it: `None` once the
    /// hold has run out, or when the record is about an earlier term than the breadcrumb's (a
    /// later holder came and went since; the record is left over).
    pub fn holds_back(&self, breadcrumb: &BreadcrumbView, now: BootInstant) -> Option<Duration> {
        if let BreadcrumbView::Present { crumb, .. } = breadcrumb {
            if crumb.token > self.record.token {
                return None;
            }
        }
        let left = self.hold.saturating_sub(now.saturating_since(self.first_seen));
        (!left.is_zero()).then_some(left)
    }
}

/// The configured rules the core applies (from the `election` section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// How long to stay out of the election after a failed promotion.
    pub backoff_after_failure: Duration,
    /// Anti-flap: a free lock is not contended until this long after the active last changed
    /// (an operator's failover is exempt). Zero disables it.
    pub min_failover_interval: Duration,
    /// Set on the preferred node: once its master has been healthy this long and another node
    /// is active, ask that node to hand over gracefully.
    pub failback_after: Option<Duration>,
    /// The longest a promotion may take (the `pre_promote` hook's deadline plus the master's):
    /// a promotion starts only while the lease left is longer.
    pub promote_budget: Duration,
    /// The lag gate, the zone rule and the ranking.
    pub candidacy: CandidacyPolicy,
}

impl Policy {
    /// Only the backoff set: no anti-flap, no preference, promotions taken as instant.
    pub fn with_backoff(backoff_after_failure: Duration) -> Self {
        Policy {
            backoff_after_failure,
            min_failover_interval: Duration::ZERO,
            failback_after: None,
            promote_budget: Duration::ZERO,
            candidacy: CandidacyPolicy::default(),
        }
    }
}

/// A step that failed, reported back by the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    /// The token of the acquisition it belonged to.
    pub token: FencingToken,
    /// What failed and why.
    pub reason: String,
}

/// One thing for the driver to do. Steps run in order; a failed step ends the sequence unless
/// it is marked best effort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Try to create the lock.
    Contend,
    /// Make every target unable to serve before we promote. For a target that claims to have
    /// stepped down cleanly with `clean_claim`, the driver first steps its master down with
    /// `new_token` and takes it as fenced once it is standby holding that token; only if that
    /// cannot be confirmed does it run the fencing chain.
    Fence {
        /// The nodes to fence.
        targets: Vec<FenceTarget>,
        /// The token we will promote with.
        new_token: FencingToken,
        /// The token a cleanly stepped-down target claims.
        clean_claim: Option<FencingToken>,
    },
    /// Write our breadcrumb (unclean) through the session that holds the lock.
    WriteBreadcrumb {
        /// Our token.
        token: FencingToken,
        /// The lock znode's version, checked in the same multi.
        lock_version: i32,
        /// The breadcrumb version we read (`None`: create it).
        expected_version: Option<i32>,
    },
    /// Promote the local master with this token.
    Promote {
        /// The token.
        token: FencingToken,
    },
    /// Demote the local master.
    Demote {
        /// The highest token we know of, recorded by the master.
        token: FencingToken,
        /// Continue with later steps even if this fails.
        best_effort: bool,
    },
    /// Set the token base through the lock's session so that `czxid + base` is above `floor`
    /// (and above the tokens the peers' masters report, when `consult_peers`). The base never
    /// goes down.
    SetTokenBase {
        /// The lock's czxid.
        czxid: u64,
        /// The highest token known without asking the peers.
        floor: FencingToken,
        /// The lock znode's version, checked in the same multi.
        lock_version: i32,
        /// The current base and its znode version (`None`: create it).
        current: Option<(u64, i32)>,
        /// Also ask every other member's master for its token (the coordinator lost its
        /// history, so the agent's own knowledge may be incomplete).
        consult_peers: bool,
    },
    /// Ask the active node's agent to hand over gracefully (preferred-node failback).
    RequestHandover {
        /// The active node.
        from: String,
    },
    /// Delete our lock (leaving the breadcrumb unclean) and stay out of the election a while.
    ReleaseLock {
        /// The lock's token.
        token: FencingToken,
        /// How long to stay out.
        backoff: Duration,
    },
}

/// The outcome of one cycle: steps and the sentence that explains them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// What to do, in order.
    pub steps: Vec<Step>,
    /// Why, as one sentence for logs, `/status` and tests.
    pub reason: String,
    /// What stops this node from taking over now ("why not"); `None` while it is active or
    /// on its way to it.
    pub blocker: Option<Blocker>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// What a decision is, without the numbers that change from one cycle to the next: two
/// decisions with equal keys are the same decision, told at different moments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogKey {
    steps: Vec<Step>,
    sentence: String,
}

impl Decision {
    /// The key to log by: the steps, and the sentence with every time span (`N ms`) blanked.
    ///
    /// Time spans are the only numbers in a reason that move while nothing changes (a lease
    /// counting down, a backoff running out); tokens, node ids and versions stay, because a
    /// change in them is a change of decision.
    pub fn log_key(&self) -> LogKey {
        LogKey { steps: self.steps.clone(), sentence: blank_time_spans(&self.reason) }
    }
}

/// Replaces the number in every `N ms` with `_`.
fn blank_time_spans(sentence: &str) -> String {
    let mut out = String::with_capacity(sentence.len());
    let mut rest = sentence;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        let digits = rest[start..].find(|c: char| !c.is_ascii_digit()).map_or(rest.len(), |n| start + n);
        // A number glued to a word before it ("db1") is a name, not a span.
        let glued = rest[..start].chars().next_back().is_some_and(|c| c.is_alphanumeric() || c == '_');
        out.push_str(&rest[..start]);
        if !glued && rest[digits..].starts_with(" ms") {
            out.push('_');
        } else {
            out.push_str(&rest[start..digits]);
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

fn decision(steps: Vec<Step>, reason: impl Into<String>) -> Decision {
    Decision { steps, reason: reason.into(), blocker: None }
}

fn blocked(blocker: Blocker, steps: Vec<Step>, reason: impl Into<String>) -> Decision {
    Decision { steps, reason: reason.into(), blocker: Some(blocker) }
}

/// A holder that gives up: its master is demoted (best effort: it may never have become
/// active) and the lock released with a backoff, so the other nodes may try.
fn back_off(token: FencingToken, backoff: Duration, reason: String) -> Decision {
    decision(vec![Step::Demote { token, best_effort: true }, Step::ReleaseLock { token, backoff }], reason)
}

/// Why the master may not be promoted now although its health checks pass: it is
/// initializing, or its state could not be read (ZKFC leaves the election in either case).
fn not_ready(master: Option<MasterStatus>) -> Option<&'static str> {
    match master.map(|m| m.state) {
        Some(HaState::Standby | HaState::Active) => None,
        Some(HaState::Initializing) => Some("the master is still initializing"),
        None => Some("the master's state could not be read"),
    }
}

/// Whether the lease the granted session timeout buys leaves no room for a promotion: a
/// coordinator server granted less than asked (a lower maxSessionTimeout).
fn lease_too_short(obs: &Observation, policy: &Policy) -> Option<Blocker> {
    let budget = obs.lease_budget?;
    (budget <= policy.promote_budget)
        .then(|| Blocker::LeaseTooShort { lease_ms: ms64(budget), promote_ms: ms64(policy.promote_budget) })
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn ms64(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The candidacy this node publishes: its tags, its master's position, and whether it would
/// take over now, ranking aside (healthy, not paused, every gate of
/// [`candidacy::gate`] passed, not backing off after a failed takeover). The active's own
/// candidacy is never eligible: it has the role. A node backing off is not either: published
/// as eligible, a best-ranked node whose promotions keep failing (a vetoing hook, a master
/// that refuses) would hold every lower rank back for good, taking the lock again each time its
/// backoff ends, before their rank delay, counted from the release, has run out.
pub fn own_candidacy(obs: &Observation, policy: &Policy) -> Candidacy {
    let gated = candidacy::gate(&obs.candidacy, obs.published.as_ref(), &policy.candidacy, obs.now, false, false);
    Candidacy {
        node_id: obs.node_id.clone(),
        position: obs.candidacy.position,
        priority: obs.candidacy.priority,
        zone: obs.candidacy.zone.clone(),
        eligible: gated.is_none()
            && obs.health.is_healthy()
            && not_ready(obs.master).is_none()
            && lease_too_short(obs, policy).is_none()
            && !obs.paused
            && obs.backoff_until.is_none_or(|until| until <= obs.now)
            && !matches!(obs.lock, LockView::Ours { .. }),
    }
}

/// Decides what to do now.
pub fn decide(obs: &Observation, policy: &Policy) -> Decision {
    let master_active = matches!(obs.master, Some(MasterStatus { state: HaState::Active, .. }));
    // A master whose state cannot be read may still be active with the token this agent
    // promoted it with: the rules that end an active master apply to it too.
    let master_maybe = obs.master.is_none() && obs.promoted.is_some();
    let master_token = match obs.master {
        Some(m) => m.token,
        None => obs.promoted.unwrap_or(FencingToken(0)),
    };
    let lease_left = obs.lease_until.map(|until| until.saturating_since(obs.now));
    let lease_valid = lease_left.is_some_and(|d| d > Duration::ZERO);
    let connected = matches!(obs.session, SessionView::Connected { .. });
    // Failsafe only covers a coordinator that cannot be read: a lock read that answered says
    // who holds the lock, and then the usual rules apply.
    let failsafe_left = obs
        .failsafe_until
        .filter(|_| matches!(obs.lock, LockView::Unknown))
        .map(|until| until.saturating_since(obs.now))
        .filter(|d| *d > Duration::ZERO);

    // Rule 1: an active master must be backed by our lock and a live lease. This holds in
    // maintenance mode too: pausing stops failovers, never the end of a lease.
    if master_active || master_maybe {
        if let Some(d) = must_demote(obs, master_active, master_token, lease_valid, failsafe_left.is_some()) {
            return d;
        }
    }

    // Rule 2: paused, nothing else is done.
    if obs.paused {
        return blocked(Blocker::Paused, vec![], "paused: observing only, no failover will be made");
    }

    // Rule 3: an unhealthy master gives up the lock.
    if !obs.health.is_healthy() {
        let why = match &obs.health {
            Health::Initializing => "the master's health is not known yet".to_string(),
            Health::Unhealthy(r) => format!("the master is unhealthy: {r}"),
            Health::NotResponding(r) => format!("the master is not responding: {r}"),
            Health::MonitorFailed(r) => format!("the health monitor failed: {r}"),
            Health::Healthy => unreachable!("checked above"),
        };
        if let LockView::Ours { token, .. } = &obs.lock {
            return decision(
                vec![
                    Step::Demote { token: *token, best_effort: true },
                    Step::ReleaseLock { token: *token, backoff: Duration::ZERO },
                ],
                format!("{why}; demoting it and releasing the lock (the next active will fence it)"),
            );
        }
        return blocked(
            Blocker::Unhealthy { reason: why.clone() },
            vec![],
            format!("{why}; not contending for the lock"),
        );
    }

    match &obs.lock {
        LockView::Unknown => match failsafe_left {
            Some(left) if master_active && !lease_valid => decision(
                vec![],
                format!(
                    "failsafe: the coordinator is unreachable and the lease ran out, but every other member confirmed it \
                     is not active; keeping the master active for {} ms more unless confirmed again",
                    ms(left)
                ),
            ),
            _ => blocked(Blocker::CoordinatorUnavailable, vec![], "the lock could not be read; waiting for the coordinator"),
        },
        LockView::OursFromOldSession { token } => blocked(
            Blocker::LeaseNotExpired { holder: obs.node_id.clone() },
            vec![],
            format!("the lock (token {token}) belongs to an older session of this agent; waiting for it to expire"),
        ),
        LockView::Peer { node_id, token } => {
            if let Some(after) = policy.failback_after {
                // The clock starts when the master became healthy, or when this node last left
                // the active role if that is later: a switchover away from the preferred node
                // holds for the failback period.
                let healthy_for = obs
                    .healthy_since
                    .map(|t| obs.left_active_at.map_or(t, |left| t.max(left)))
                    .map_or(Duration::ZERO, |t| obs.now.saturating_since(t));
                let flap_wait = anti_flap_wait(obs, policy);
                let not_before = obs.failback_not_before.is_some_and(|t| t > obs.now)
                    || obs.backoff_until.is_some_and(|t| t > obs.now)
                    || obs.promised.as_ref().is_some_and(|p| p.until > obs.now);
                // A preferred node that may not take the role (drained, nofailover, too far
                // behind the active, another zone, its master not ready, a lease no promotion
                // fits in) does not ask for it: the active would step down for nobody.
                let unfit = candidacy::gate(
                    &obs.candidacy,
                    obs.published.as_ref(),
                    &policy.candidacy,
                    obs.now,
                    false,
                    false,
                )
                .is_some()
                    || not_ready(obs.master).is_some()
                    || lease_too_short(obs, policy).is_some();
                if connected && healthy_for >= after && flap_wait.is_none() && !not_before && !unfit {
                    return decision(
                        vec![Step::RequestHandover { from: node_id.clone() }],
                        format!(
                            "this is the preferred node and its master has been healthy for {} ms: asking {node_id} \
                             (token {token}) to hand over",
                            ms(healthy_for)
                        ),
                    );
                }
            }
            // What keeps this node out for good outranks the holder's lease in its "why not".
            let blocker = match &obs.candidacy.drained {
                Some(by) => Blocker::Drained { by: by.clone() },
                None if obs.candidacy.nofailover => Blocker::Nofailover,
                None => Blocker::LeaseNotExpired { holder: node_id.clone() },
            };
            blocked(blocker, vec![], format!("standing by: {node_id} is active with token {token}"))
        }
        LockView::Free => {
            if !connected {
                return blocked(
                    Blocker::CoordinatorUnavailable,
                    vec![],
                    "the lock is free but the coordinator session is not connected",
                );
            }
            if let Some(promise) = obs.promised.as_ref().filter(|p| p.until > obs.now) {
                let left = ms(promise.until.saturating_since(obs.now));
                let reason = match &promise.to {
                    Some(peer) => format!(
                        "the lock is free, but this node confirmed to {peer} (failsafe) that it would not contend for \
                         {left} ms more"
                    ),
                    None => format!(
                        "the lock is free, but this agent may have promised a failsafe active not to contend just \
                         before it started (failsafe.ttl_ms from its start): not contending for {left} ms more"
                    ),
                };
                return blocked(Blocker::Promised { to: promise.to.clone() }, vec![], reason);
            }
            if let Some(until) = obs.backoff_until {
                if until > obs.now {
                    let left = until.saturating_since(obs.now);
                    return blocked(
                        Blocker::BackingOff { left_ms: ms64(left) },
                        vec![],
                        format!("the lock is free; backing off for {} ms more", ms(left)),
                    );
                }
            }
            if let Some(why) = not_ready(obs.master) {
                return blocked(
                    Blocker::Unhealthy { reason: why.to_string() },
                    vec![],
                    format!("the lock is free, but {why}: not contending"),
                );
            }
            if let Some(b) = lease_too_short(obs, policy) {
                let reason = format!("the lock is free, but {b}");
                return blocked(b, vec![], reason);
            }
            if let Some(b) = candidacy::gate(
                &obs.candidacy,
                obs.published.as_ref(),
                &policy.candidacy,
                obs.now,
                obs.failover_requested,
                obs.allow_data_loss,
            ) {
                let reason = format!("the lock is free, but this node may not take over: {b}");
                return blocked(b, vec![], reason);
            }
            // A graceful failover to another node: the lock its active freed is left to it.
            let handover = obs.handover.as_ref().and_then(|h| Some((h, h.holds_back(&obs.breadcrumb, obs.now)?)));
            if let Some((h, left)) = handover.filter(|(h, _)| h.record.to != obs.node_id) {
                let b = Blocker::HandoverPending { to: h.record.to.clone(), left_ms: ms64(left) };
                let reason = format!("the lock is free, but {b}");
                return blocked(b, vec![], reason);
            }
            let handover_to_me = handover.is_some_and(|(h, _)| h.record.to == obs.node_id);
            if let Some(wait) = anti_flap_wait(obs, policy).filter(|_| !obs.failover_requested) {
                return blocked(
                    Blocker::AntiFlap { left_ms: ms64(wait) },
                    vec![],
                    format!(
                        "the lock is free, but the active changed less than {} ms ago; anti-flap: waiting {} ms more",
                        ms(policy.min_failover_interval),
                        ms(wait)
                    ),
                );
            }
            if !obs.failover_requested && !handover_to_me {
                let me = own_candidacy(obs, policy);
                if let Some(b) =
                    candidacy::rank_wait(&me, &obs.candidates, &policy.candidacy, obs.lock_free_since, obs.now)
                {
                    let reason = format!("the lock is free, but {b}");
                    return blocked(b, vec![], reason);
                }
            }
            decision(vec![Step::Contend], "the lock is free and the master is healthy: contending")
        }
        LockView::Ours { token, version } => hold(obs, *token, *version, master_active, master_token, lease_left, policy),
    }
}

/// Rule 1: whether an active master (or one that may be) must be demoted now, and why.
fn must_demote(
    obs: &Observation,
    master_active: bool,
    master_token: FencingToken,
    lease_valid: bool,
    failsafe: bool,
) -> Option<Decision> {
    let it = if master_active { "it is active" } else { "it may be active (its state cannot be read)" };
    let why = match &obs.lock {
        LockView::Free => Some(format!("{it} but nobody holds the lock")),
        LockView::Peer { node_id, token } => Some(format!("{it} but {node_id} holds the lock with token {token}")),
        LockView::OursFromOldSession { .. } => {
            Some(format!("{it} but the lock belongs to an older session of this agent"))
        }
        LockView::Ours { .. } | LockView::Unknown => None,
    };
    let why = why.or_else(|| {
        (!lease_valid && !failsafe).then(|| {
            let lease = match obs.session {
                SessionView::Connected { .. } => "its lease ran out",
                SessionView::Disconnected { .. } => "the coordinator is unreachable and the lease ran out",
                SessionView::Expired => "the coordinator session expired",
                SessionView::Connecting => "no coordinator session backs it",
            };
            if master_active {
                lease.to_string()
            } else {
                format!("{it} and {lease}")
            }
        })
    });
    let why = why.or_else(|| match &obs.lock {
        LockView::Ours { token, .. } if master_token > *token => Some(format!(
            "it has seen token {master_token}, newer than our lock's {token}; another node was promoted after us"
        )),
        _ => None,
    })?;
    let paused = if obs.paused {
        " (maintenance mode does not keep a master active past its lease or without the lock)"
    } else {
        ""
    };
    Some(decision(
        vec![Step::Demote { token: master_token, best_effort: false }],
        format!("demoting the master: {why}{paused}"),
    ))
}

/// Whether two fencing targets name the same machine's master (node id aside): a host rebuilt
/// under the same node id is another machine, whose old master may still serve.
pub fn same_machine(a: &FenceTarget, b: &FenceTarget) -> bool {
    a.host == b.host && a.port == b.port && a.pidfile == b.pidfile
}

/// Who a holder that finds no breadcrumb must fence: every configured peer, every registered
/// member, and every node seen holding the lock (or named in a breadcrumb), each once; this
/// node itself only as another machine under its id.
pub fn fence_without_breadcrumb(obs: &Observation) -> Vec<FenceTarget> {
    let candidates = obs.peers.iter().chain(obs.members.iter().map(|m| &m.target)).chain(obs.seen_holders.iter());
    let mut targets: Vec<FenceTarget> = Vec::new();
    for t in candidates {
        if t.node_id == obs.node_id && same_machine(t, &obs.own_target) {
            continue;
        }
        if let Some(x) = targets.iter_mut().find(|x| x.node_id == t.node_id && same_machine(x, t)) {
            // A watchdog promise the node published itself (its member record) holds for the
            // same machine as its configured entry, which cannot carry one.
            x.self_fence_ms = x.self_fence_ms.max(t.self_fence_ms);
            continue;
        }
        let mut t = t.clone();
        t.token = FencingToken(0);
        targets.push(t);
    }
    targets
}

/// How to give up the active role (an operator's cede, a graceful failover, shutdown).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handover {
    /// This session holds the lock: demote the master and see it confirm standby first; only
    /// then mark the breadcrumb clean and release the lock, in one multi. If the demotion fails,
    /// release the lock with the breadcrumb unclean, so the next active fences this node.
    StepDown {
        /// The lock's token.
        token: FencingToken,
        /// The lock's version.
        lock_version: i32,
    },
    /// The lock is not this session's, or could not be read, but the master may be active
    /// under this agent: demote it (the lock, if ours, is released by a later cycle or lapses
    /// with the session; it is never released while the master may serve).
    DemoteOnly {
        /// The token to demote with.
        token: FencingToken,
    },
    /// Nothing of this node is active.
    NotActive,
}

/// The handover order for what is known: the lock as read (`None`: it could not be), the
/// token this agent promoted its master with, and the master's state.
pub fn plan_handover(
    lock: Option<&LockView>,
    promoted: Option<FencingToken>,
    master: Option<MasterStatus>,
) -> Handover {
    if let Some(LockView::Ours { token, version }) = lock {
        return Handover::StepDown { token: *token, lock_version: *version };
    }
    let active = master.filter(|m| m.state == HaState::Active).map(|m| m.token);
    match (promoted, active) {
        (None, None) => Handover::NotActive,
        (p, a) => Handover::DemoteOnly { token: p.max(a).unwrap_or(FencingToken(0)) },
    }
}

/// Keeps the token this agent promoted its master with while the master may be active with
/// it: a master seen active keeps (or raises) it, one seen not active clears it, and one that
/// cannot be read leaves it as it was.
pub fn track_promoted(previous: Option<FencingToken>, master: Option<MasterStatus>) -> Option<FencingToken> {
    match master {
        Some(MasterStatus { state: HaState::Active, token, .. }) => Some(previous.map_or(token, |p| p.max(token))),
        Some(_) => None,
        None => previous,
    }
}

/// Whether a pending failover to this node is over because another node took the role: it
/// holds the lock with a token above `from`, the active's token when this node asked it to cede
/// (0 when nobody was active). Its holder and token.
pub fn failover_taken(lock: &LockView, from: Option<FencingToken>) -> Option<(String, FencingToken)> {
    match (lock, from) {
        (LockView::Peer { node_id, token }, Some(from)) if *token > from => Some((node_id.clone(), *token)),
        _ => None,
    }
}

/// How long anti-flap still holds a contention back, if at all.
fn anti_flap_wait(obs: &Observation, policy: &Policy) -> Option<Duration> {
    let since = obs.now.saturating_since(obs.last_failover_at?);
    (since < policy.min_failover_interval).then(|| policy.min_failover_interval - since)
}

/// Rule 4: we hold the lock.
fn hold(
    obs: &Observation,
    token: FencingToken,
    lock_version: i32,
    master_active: bool,
    master_token: FencingToken,
    lease_left: Option<Duration>,
    policy: &Policy,
) -> Decision {
    let backoff_after_failure = policy.backoff_after_failure;
    if let Some(f) = &obs.failure {
        if f.token == token {
            return back_off(
                token,
                backoff_after_failure,
                format!(
                    "promotion with token {token} failed ({}); releasing the lock and backing off {} ms",
                    f.reason,
                    ms(backoff_after_failure)
                ),
            );
        }
    }
    if master_active && master_token == token {
        return decision(vec![], format!("active with token {token}; lease {} ms left", lease_left.map_or(0, ms)));
    }
    if !matches!(obs.session, SessionView::Connected { .. }) {
        return decision(
            vec![],
            format!("holding the lock (token {token}) but the coordinator is not connected; waiting"),
        );
    }
    // A handover that could not read the lock demoted the master and left the lock to a later
    // cycle: while the node stays out of the election, the lock is released, not used again.
    if let Some(left) = obs.backoff_until.filter(|until| *until > obs.now).map(|until| until.saturating_since(obs.now))
    {
        let release = Step::ReleaseLock { token, backoff: Duration::ZERO };
        let steps =
            if master_active { vec![Step::Demote { token, best_effort: true }, release] } else { vec![release] };
        return decision(
            steps,
            format!(
                "holding the lock with token {token} while staying out of the election for {} ms more: releasing it",
                ms(left)
            ),
        );
    }
    if obs.master.is_none() && obs.promoted.is_some() {
        // Promoted by this agent and unreadable since: it may be active, so the lock is kept
        // (Rule 1 demotes it when the lease ends).
        return decision(vec![], format!("holding the lock (token {token}); the master's state is unknown"));
    }
    if let Some(why) = not_ready(obs.master) {
        return blocked(
            Blocker::Unhealthy { reason: why.to_string() },
            vec![Step::ReleaseLock { token, backoff: Duration::ZERO }],
            format!("holding the lock (token {token}), but {why}: releasing it for a standby that is ready"),
        );
    }
    // The gates passed when this node contended; what was learnt since (its master's position
    // read at last, far behind; a drain) may close them before anything is fenced or promoted.
    if let Some(b) = candidacy::gate(
        &obs.candidacy,
        obs.published.as_ref(),
        &policy.candidacy,
        obs.now,
        obs.failover_requested,
        obs.allow_data_loss,
    ) {
        let release = Step::ReleaseLock { token, backoff: Duration::ZERO };
        let steps =
            if master_active { vec![Step::Demote { token, best_effort: true }, release] } else { vec![release] };
        let reason = format!("holding the lock with token {token}, but this node may not take over: {b}; releasing it");
        return blocked(b, steps, reason);
    }
    // A grant that shrank since the lock was won: waiting for the lease to cover a promotion
    // would hold the lock for good.
    if let Some(b) = lease_too_short(obs, policy) {
        let release = Step::ReleaseLock { token, backoff: Duration::ZERO };
        let steps =
            if master_active { vec![Step::Demote { token, best_effort: true }, release] } else { vec![release] };
        let reason = format!("holding the lock with token {token}, but {b}; releasing it");
        return blocked(b, steps, reason);
    }
    let crumb_unknown = || decision(vec![], "holding the lock; the breadcrumb could not be read, waiting");
    if matches!(obs.breadcrumb, BreadcrumbView::Unknown) {
        return crumb_unknown();
    }
    let own_crumb = |crumb: &crate::model::Breadcrumb| {
        crumb.node_id == obs.node_id && crumb.token == token && same_machine(&crumb.target, &obs.own_target)
    };
    // Tokens never go backwards: before this token reaches anyone, it must be above every
    // token from another acquisition still to be found.
    let czxid = token.0.saturating_sub(obs.token_base.base());
    let crumb_token = match &obs.breadcrumb {
        BreadcrumbView::Present { crumb, .. } if !own_crumb(crumb) => crumb.token,
        _ => FencingToken(0),
    };
    // Our master showing exactly our token is only ours if we gave it to it.
    let master_seen =
        if master_token == token && obs.token_issued == Some(token) { FencingToken(0) } else { master_token };
    // Every token from a trusted source must be usable, and so must the one above them all.
    let checked = [
        (TokenSource::Lock, token),
        (TokenSource::Breadcrumb, crumb_token),
        (TokenSource::OwnMaster, master_seen),
        (TokenSource::History, obs.token_floor),
    ]
    .into_iter()
    .try_for_each(|(source, t)| tokens::check(source, t).map(|_| ()));
    let floor = obs.token_floor.max(crumb_token).max(master_seen);
    let checked = checked.and_then(|()| {
        if floor >= token {
            tokens::base_above(czxid, floor, Some(obs.token_base.base())).map(|_| ())
        } else {
            Ok(())
        }
    });
    if let Err(e) = checked {
        return back_off(
            token,
            backoff_after_failure,
            format!(
                "refusing to promote with token {token}: {e}; releasing the lock and backing off {} ms",
                ms(backoff_after_failure)
            ),
        );
    }
    match obs.token_base {
        TokenBaseView::Unknown => {
            return decision(
                vec![],
                format!("holding the lock (token {token}); the token base could not be read, waiting"),
            )
        }
        TokenBaseView::Missing => {
            return decision(
                vec![Step::SetTokenBase { czxid, floor, lock_version, current: None, consult_peers: true }],
                format!(
                    "won the lock (czxid {czxid}) but the coordinator has no token base, so its history is new or was \
                     lost: setting the base above every token still to be found (highest known {floor})"
                ),
            );
        }
        TokenBaseView::Present { base, version } if floor >= token => {
            return decision(
                vec![Step::SetTokenBase {
                    czxid,
                    floor,
                    lock_version,
                    current: Some((base, version)),
                    consult_peers: false,
                }],
                format!(
                    "token {token} is not above {floor}, a token already seen (the coordinator lost history?): raising \
                     the token base before using it"
                ),
            );
        }
        TokenBaseView::Present { .. } => {}
    }
    // A promotion starts only while the lease left covers all of it: a master promoted after
    // the lease ended could serve beside the next active.
    let left = lease_left.unwrap_or(Duration::ZERO);
    if left <= policy.promote_budget {
        return decision(
            vec![],
            format!(
                "holding the lock with token {token}, but the lease left ({} ms) does not cover a promotion ({} ms); \
                 waiting for the coordinator to renew it",
                ms(left),
                ms(policy.promote_budget)
            ),
        );
    }
    match &obs.breadcrumb {
        BreadcrumbView::Unknown => crumb_unknown(),
        BreadcrumbView::Present { crumb, .. } if own_crumb(crumb) => decision(
            vec![Step::Promote { token }],
            format!("holding the lock with token {token} and our breadcrumb is written: promoting the master"),
        ),
        BreadcrumbView::Present { crumb, version } => {
            let write = Step::WriteBreadcrumb { token, lock_version, expected_version: Some(*version) };
            if crumb.node_id == obs.node_id && same_machine(&crumb.target, &obs.own_target) {
                // Our own earlier term on this machine: our master is the one being promoted;
                // nothing to fence. (The same id on another machine is a rebuilt host: fenced.)
                return decision(
                    vec![write, Step::Promote { token }],
                    format!(
                        "won the lock with token {token}; the last active was this node (token {}), no fencing needed: promoting",
                        crumb.token
                    ),
                );
            }
            let mut target = crumb.target.clone();
            target.token = crumb.token;
            let clean_claim = crumb.clean.then_some(crumb.token);
            let how = if crumb.clean {
                format!(
                    "{} says it stepped down cleanly with token {}: verifying that on its master, fencing otherwise",
                    crumb.node_id, crumb.token
                )
            } else {
                format!("{} (token {}) did not step down cleanly: fencing it", crumb.node_id, crumb.token)
            };
            blocked(
                Blocker::FencingPending,
                vec![
                    Step::Fence { targets: vec![target], new_token: token, clean_claim },
                    write,
                    Step::Promote { token },
                ],
                format!("won the lock with token {token}; {how}, then promoting"),
            )
        }
        BreadcrumbView::Missing => {
            // Who was active is unknown (no node ever was, or the coordinator lost its data
            // while one was): every node that could have been is fenced. Members alone would
            // not do: they are ephemeral, and a wiped coordinator lists none but us.
            let targets = fence_without_breadcrumb(obs);
            let write = Step::WriteBreadcrumb { token, lock_version, expected_version: None };
            let names: Vec<String> = targets
                .iter()
                .map(|t| {
                    if t.node_id == obs.node_id {
                        format!("{} on {}:{}", t.node_id, t.host, t.port)
                    } else {
                        t.node_id.clone()
                    }
                })
                .collect();
            blocked(
                Blocker::FencingPending,
                vec![Step::Fence { targets, new_token: token, clean_claim: None }, write, Step::Promote { token }],
                format!(
                    "won the lock with token {token}; no breadcrumb, so who was active is unknown: fencing every other \
                     node ({}), then promoting",
                    names.join(", ")
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Breadcrumb;

    const BACKOFF: Duration = Duration::from_secs(2);

    fn t(n: u64) -> FencingToken {
        FencingToken(n)
    }

    fn target(node: &str) -> FenceTarget {
        FenceTarget::new(node, "127.0.0.1", if node == "a" { 9001 } else { 9002 }, FencingToken(0))
    }

    fn member(node: &str) -> Member {
        Member { node_id: node.into(), target: target(node), peer_url: None, probe_addr: None, candidacy: None }
    }

    fn now() -> BootInstant {
        BootInstant::from_origin(Duration::from_secs(100))
    }

    /// Node `a`, healthy standby master, connected, lock free, a valid lease, members a and b.
    fn base() -> Observation {
        Observation {
            now: now(),
            node_id: "a".into(),
            own_target: target("a"),
            health: Health::Healthy,
            master: Some(MasterStatus { state: HaState::Standby, token: t(0), position: None }),
            session: SessionView::Connected { session_id: 7 },
            lock: LockView::Free,
            breadcrumb: BreadcrumbView::Missing,
            members: vec![member("a"), member("b")],
            peers: vec![target("b")],
            seen_holders: vec![],
            promoted: None,
            lease_until: Some(now() + Duration::from_millis(500)),
            paused: false,
            backoff_until: None,
            failure: None,
            token_base: TokenBaseView::Present { base: 0, version: 0 },
            token_floor: t(0),
            token_issued: None,
            failsafe_until: None,
            last_failover_at: None,
            healthy_since: Some(now() - Duration::from_secs(60)),
            left_active_at: None,
            failover_requested: false,
            failback_not_before: None,
            promised: None,
            candidacy: OwnCandidacy { priority: 1, ..Default::default() },
            published: None,
            candidates: vec![],
            lock_free_since: None,
            allow_data_loss: false,
            lease_budget: Some(Duration::from_millis(1650)),
            handover: None,
        }
    }

    fn crumb(node: &str, token: u64, clean: bool) -> BreadcrumbView {
        BreadcrumbView::Present {
            crumb: Breadcrumb { node_id: node.into(), token: t(token), clean, target: target(node) },
            version: 3,
        }
    }

    fn active(token: u64) -> Option<MasterStatus> {
        Some(MasterStatus { state: HaState::Active, token: t(token), position: None })
    }

    fn ours(token: u64) -> LockView {
        LockView::Ours { token: t(token), version: 0 }
    }

    fn target_with_token(node: &str, token: u64) -> FenceTarget {
        let mut x = target(node);
        x.token = t(token);
        x
    }

    fn check(obs: Observation, steps: Vec<Step>, reason: &str) {
        check_with(obs, &Policy::with_backoff(BACKOFF), steps, reason)
    }

    fn check_with(obs: Observation, policy: &Policy, steps: Vec<Step>, reason: &str) {
        let d = decide(&obs, policy);
        assert_eq!(d.steps, steps, "steps for {obs:#?}\nreason: {}", d.reason);
        assert_eq!(d.reason, reason);
    }

    #[test]
    fn healthy_standby_contends_for_a_free_lock() {
        check(base(), vec![Step::Contend], "the lock is free and the master is healthy: contending");
    }

    #[test]
    fn does_not_contend_while_backing_off_or_disconnected_or_unhealthy() {
        let mut o = base();
        o.backoff_until = Some(now() + Duration::from_millis(700));
        check(o, vec![], "the lock is free; backing off for 700 ms more");
        let mut o = base();
        o.session = SessionView::Disconnected { session_id: 7 };
        check(o, vec![], "the lock is free but the coordinator session is not connected");
        let mut o = base();
        o.health = Health::NotResponding("connection refused".into());
        check(o, vec![], "the master is not responding: connection refused; not contending for the lock");
        let mut o = base();
        o.health = Health::Initializing;
        check(o, vec![], "the master's health is not known yet; not contending for the lock");
    }

    #[test]
    fn standby_while_a_peer_holds_the_lock() {
        let mut o = base();
        o.lock = LockView::Peer { node_id: "b".into(), token: t(40) };
        check(o, vec![], "standing by: b is active with token 40");
    }

    #[test]
    fn active_master_without_our_lock_is_demoted() {
        let cases = [
            (LockView::Free, "demoting the master: it is active but nobody holds the lock"),
            (
                LockView::Peer { node_id: "b".into(), token: t(50) },
                "demoting the master: it is active but b holds the lock with token 50",
            ),
            (
                LockView::OursFromOldSession { token: t(30) },
                "demoting the master: it is active but the lock belongs to an older session of this agent",
            ),
        ];
        for (lock, reason) in cases {
            let mut o = base();
            o.master = active(30);
            o.lock = lock;
            check(o, vec![Step::Demote { token: t(30), best_effort: false }], reason);
        }
    }

    #[test]
    fn lease_decides_when_the_coordinator_is_out_of_reach() {
        // Disconnected, lock unknown, lease still valid: keep serving.
        let mut o = base();
        o.master = active(30);
        o.session = SessionView::Disconnected { session_id: 7 };
        o.lock = LockView::Unknown;
        check(o.clone(), vec![], "the lock could not be read; waiting for the coordinator");
        // ... and once it runs out, demote, before any peer can have been promoted.
        o.lease_until = Some(now());
        check(
            o,
            vec![Step::Demote { token: t(30), best_effort: false }],
            "demoting the master: the coordinator is unreachable and the lease ran out",
        );
        let mut o = base();
        o.master = active(30);
        o.session = SessionView::Expired;
        o.lock = LockView::Unknown;
        o.lease_until = None;
        check(
            o,
            vec![Step::Demote { token: t(30), best_effort: false }],
            "demoting the master: the coordinator session expired",
        );
        let mut o = base();
        o.master = active(30);
        o.lock = ours(30);
        o.lease_until = Some(now() - Duration::from_millis(1));
        check(o, vec![Step::Demote { token: t(30), best_effort: false }], "demoting the master: its lease ran out");
    }

    #[test]
    fn steady_active() {
        let mut o = base();
        o.master = active(30);
        o.lock = ours(30);
        o.breadcrumb = crumb("a", 30, false);
        check(o, vec![], "active with token 30; lease 500 ms left");
    }

    #[test]
    fn a_master_that_saw_a_newer_token_is_demoted() {
        let mut o = base();
        o.master = active(31);
        o.lock = ours(30);
        check(
            o,
            vec![Step::Demote { token: t(31), best_effort: false }],
            "demoting the master: it has seen token 31, newer than our lock's 30; another node was promoted after us",
        );
    }

    #[test]
    fn unhealthy_holder_demotes_and_releases_leaving_the_breadcrumb_unclean() {
        let mut o = base();
        o.master = active(30);
        o.lock = ours(30);
        o.health = Health::Unhealthy("disk full".into());
        check(
            o,
            vec![
                Step::Demote { token: t(30), best_effort: true },
                Step::ReleaseLock { token: t(30), backoff: Duration::ZERO },
            ],
            "the master is unhealthy: disk full; demoting it and releasing the lock (the next active will fence it)",
        );
    }

    #[test]
    fn winner_fences_an_unclean_peer_then_writes_breadcrumb_then_promotes() {
        let mut o = base();
        o.lock = ours(45);
        o.breadcrumb = crumb("b", 40, false);
        check(
            o,
            vec![
                Step::Fence { targets: vec![target_with_token("b", 40)], new_token: t(45), clean_claim: None },
                Step::WriteBreadcrumb { token: t(45), lock_version: 0, expected_version: Some(3) },
                Step::Promote { token: t(45) },
            ],
            "won the lock with token 45; b (token 40) did not step down cleanly: fencing it, then promoting",
        );
    }

    #[test]
    fn winner_verifies_a_clean_step_down_instead_of_fencing_blindly() {
        let mut o = base();
        o.lock = ours(45);
        o.breadcrumb = crumb("b", 40, true);
        check(
            o,
            vec![
                Step::Fence { targets: vec![target_with_token("b", 40)], new_token: t(45), clean_claim: Some(t(40)) },
                Step::WriteBreadcrumb { token: t(45), lock_version: 0, expected_version: Some(3) },
                Step::Promote { token: t(45) },
            ],
            "won the lock with token 45; b says it stepped down cleanly with token 40: verifying that on its master, fencing otherwise, then promoting",
        );
    }

    #[test]
    fn winner_whose_own_breadcrumb_it_is_does_not_fence() {
        let mut o = base();
        o.lock = ours(45);
        o.breadcrumb = crumb("a", 40, false);
        check(
            o,
            vec![
                Step::WriteBreadcrumb { token: t(45), lock_version: 0, expected_version: Some(3) },
                Step::Promote { token: t(45) },
            ],
            "won the lock with token 45; the last active was this node (token 40), no fencing needed: promoting",
        );
        // Breadcrumb already ours for this token (a crash between the two steps): promote.
        let mut o = base();
        o.lock = ours(45);
        o.breadcrumb = crumb("a", 45, false);
        check(
            o,
            vec![Step::Promote { token: t(45) }],
            "holding the lock with token 45 and our breadcrumb is written: promoting the master",
        );
    }

    #[test]
    fn missing_breadcrumb_means_fence_every_other_member() {
        let mut o = base();
        o.lock = ours(45);
        o.members.push(member("c"));
        check(
            o,
            vec![
                Step::Fence { targets: vec![target("b"), target("c")], new_token: t(45), clean_claim: None },
                Step::WriteBreadcrumb { token: t(45), lock_version: 0, expected_version: None },
                Step::Promote { token: t(45) },
            ],
            "won the lock with token 45; no breadcrumb, so who was active is unknown: fencing every other node (b, c), then promoting",
        );
    }

    /// The coordinator restarted empty while a's master was active and a's agent hung: b wins,
    /// finds no breadcrumb and no other member. It must fence a, which it knows from its
    /// configuration and from having seen it hold the lock, never promote beside it.
    #[test]
    fn missing_breadcrumb_with_no_other_member_still_fences_every_configured_peer_and_past_holder() {
        let mut o = base();
        o.lock = ours(45);
        o.members = vec![member("a")];
        check(
            o.clone(),
            vec![
                Step::Fence { targets: vec![target("b")], new_token: t(45), clean_claim: None },
                Step::WriteBreadcrumb { token: t(45), lock_version: 0, expected_version: None },
                Step::Promote { token: t(45) },
            ],
            "won the lock with token 45; no breadcrumb, so who was active is unknown: fencing every other node (b), then promoting",
        );
        // A node seen holding the lock once (not configured, not registered now) is fenced too,
        // and so is this node's id on another machine (a rebuilt host); a node listed twice is
        // fenced once.
        let mut elsewhere = target("a");
        elsewhere.host = "10.0.0.9".into();
        o.seen_holders = vec![target("c"), target("b"), elsewhere.clone(), target("a")];
        o.members = vec![member("a"), member("b")];
        check(
            o,
            vec![
                Step::Fence { targets: vec![target("b"), target("c"), elsewhere], new_token: t(45), clean_claim: None },
                Step::WriteBreadcrumb { token: t(45), lock_version: 0, expected_version: None },
                Step::Promote { token: t(45) },
            ],
            "won the lock with token 45; no breadcrumb, so who was active is unknown: fencing every other node (b, c, a on \
             10.0.0.9:9001), then promoting",
        );
    }

    /// The first election of a cluster fenced by watchdogs alone: no breadcrumb yet, and the
    /// configured peer says nothing of a watchdog; the peer's own member record does.
    #[test]
    fn a_watchdog_promise_in_a_member_record_joins_the_configured_peer_it_names() {
        let mut o = base();
        o.lock = ours(45);
        let mut promising = member("b");
        promising.target.self_fence_ms = Some(5000);
        o.members = vec![member("a"), promising];
        let fenced = fence_without_breadcrumb(&o);
        assert_eq!(fenced.len(), 1, "{fenced:?}");
        assert_eq!((fenced[0].node_id.as_str(), fenced[0].self_fence_ms), ("b", Some(5000)));
        // A record of the same id on another machine promises nothing for the configured one.
        o.members[1].target.host = "10.0.0.9".into();
        let fenced = fence_without_breadcrumb(&o);
        assert_eq!(fenced.iter().map(|t| t.self_fence_ms).collect::<Vec<_>>(), vec![None, Some(5000)]);
    }

    #[test]
    fn a_promotion_starts_only_while_the_lease_covers_it() {
        let policy = Policy { promote_budget: Duration::from_millis(600), ..Policy::with_backoff(BACKOFF) };
        // Breadcrumb written, 500 ms of lease left, the promotion may take 600 ms.
        let mut o = base();
        o.lock = ours(45);
        o.breadcrumb = crumb("a", 45, false);
        check_with(
            o.clone(),
            &policy,
            vec![],
            "holding the lock with token 45, but the lease left (500 ms) does not cover a promotion (600 ms); waiting \
             for the coordinator to renew it",
        );
        // The whole sequence (fence, breadcrumb, promote) waits too.
        let mut fresh = o.clone();
        fresh.breadcrumb = crumb("b", 40, false);
        check_with(
            fresh.clone(),
            &policy,
            vec![],
            "holding the lock with token 45, but the lease left (500 ms) does not cover a promotion (600 ms); waiting \
             for the coordinator to renew it",
        );
        // With the lease just renewed, it goes ahead.
        fresh.lease_until = Some(now() + Duration::from_millis(601));
        assert_eq!(decide(&fresh, &policy).steps.len(), 3);
        o.lease_until = Some(now() + Duration::from_millis(601));
        check_with(
            o,
            &policy,
            vec![Step::Promote { token: t(45) }],
            "holding the lock with token 45 and our breadcrumb is written: promoting the master",
        );
    }

    #[test]
    fn a_master_whose_state_cannot_be_read_is_demoted_at_lease_end() {
        // /ha/health passes, /ha/state times out: the master may be active with the token this
        // agent promoted it with.
        let mut o = base();
        o.master = None;
        o.promoted = Some(t(30));
        o.lock = LockView::Unknown;
        o.session = SessionView::Disconnected { session_id: 7 };
        o.lease_until = Some(now());
        check(
            o.clone(),
            vec![Step::Demote { token: t(30), best_effort: false }],
            "demoting the master: it may be active (its state cannot be read) and the coordinator is unreachable and \
             the lease ran out",
        );
        // Nobody holds the lock: the same.
        let mut free = o.clone();
        free.lock = LockView::Free;
        free.session = SessionView::Connected { session_id: 7 };
        free.lease_until = Some(now() + Duration::from_millis(500));
        check(
            free,
            vec![Step::Demote { token: t(30), best_effort: false }],
            "demoting the master: it may be active (its state cannot be read) but nobody holds the lock",
        );
        // Never promoted by this agent: nothing to demote.
        o.promoted = None;
        check(o, vec![], "the lock could not be read; waiting for the coordinator");
    }

    #[test]
    fn the_lease_ends_even_in_maintenance_mode() {
        let mut o = base();
        o.paused = true;
        o.master = active(30);
        o.lock = LockView::Unknown;
        o.session = SessionView::Disconnected { session_id: 7 };
        o.lease_until = Some(now());
        check(
            o,
            vec![Step::Demote { token: t(30), best_effort: false }],
            "demoting the master: the coordinator is unreachable and the lease ran out (maintenance mode does not keep \
             a master active past its lease or without the lock)",
        );
    }

    #[test]
    fn this_node_id_on_another_machine_is_fenced() {
        // The breadcrumb names this node id, but a machine at another address: the host was
        // rebuilt and the old machine's master may still serve.
        for (field, change) in [
            ("host", (|t: &mut FenceTarget| t.host = "10.0.0.9".into()) as fn(&mut FenceTarget)),
            ("port", |t| t.port = 7000),
            ("pidfile", |t| t.pidfile = Some("/run/old.pid".into())),
        ] {
            let mut o = base();
            o.lock = ours(45);
            let mut old = target_with_token("a", 40);
            change(&mut old);
            o.breadcrumb = BreadcrumbView::Present {
                crumb: Breadcrumb { node_id: "a".into(), token: t(40), clean: false, target: old.clone() },
                version: 3,
            };
            let d = decide(&o, &Policy::with_backoff(BACKOFF));
            assert_eq!(
                d.steps,
                vec![
                    Step::Fence { targets: vec![old], new_token: t(45), clean_claim: None },
                    Step::WriteBreadcrumb { token: t(45), lock_version: 0, expected_version: Some(3) },
                    Step::Promote { token: t(45) },
                ],
                "a different {field}: {}",
                d.reason
            );
        }
    }

    #[test]
    fn tokens_above_the_limit_or_overflowing_refuse_the_promotion() {
        let refused = |o: Observation, why: &str| {
            let d = decide(&o, &Policy::with_backoff(BACKOFF));
            assert_eq!(
                d.steps,
                vec![
                    Step::Demote { token: t(45), best_effort: true },
                    Step::ReleaseLock { token: t(45), backoff: BACKOFF }
                ],
                "{}",
                d.reason
            );
            assert!(d.reason.starts_with("refusing to promote with token 45: "), "{}", d.reason);
            assert!(d.reason.contains(why), "{}", d.reason);
            assert!(d.reason.ends_with("; releasing the lock and backing off 2000 ms"), "{}", d.reason);
        };
        // A breadcrumb claiming u64::MAX used to raise the base until `czxid + base` wrapped.
        let mut o = base();
        o.lock = ours(45);
        o.breadcrumb = crumb("b", u64::MAX, false);
        refused(o, "the breadcrumb holds token 18446744073709551615, above the highest usable token");
        let mut o = base();
        o.lock = ours(45);
        o.master = Some(MasterStatus { state: HaState::Standby, token: t(u64::MAX - 1), position: None });
        refused(o, "this node's master holds token 18446744073709551614");
        let mut o = base();
        o.lock = ours(45);
        o.token_floor = t(crate::tokens::TOKEN_LIMIT);
        refused(o, "would exceed the highest usable token");
    }

    #[test]
    fn a_lock_still_held_while_staying_out_is_released_not_promoted_again() {
        // A handover whose lock read failed demoted the master and set the period to stay
        // out; the next cycle reads the lock as ours with the master standby under its token.
        let mut o = base();
        o.lock = ours(45);
        o.breadcrumb = crumb("a", 45, false);
        o.master = Some(MasterStatus { state: HaState::Standby, token: t(45), position: None });
        o.token_issued = Some(t(45));
        o.backoff_until = Some(now() + Duration::from_secs(30));
        check(
            o.clone(),
            vec![Step::ReleaseLock { token: t(45), backoff: Duration::ZERO }],
            "holding the lock with token 45 while staying out of the election for 30000 ms more: releasing it",
        );
        // A master active under another token is demoted first.
        o.master = active(44);
        check(
            o.clone(),
            vec![
                Step::Demote { token: t(45), best_effort: true },
                Step::ReleaseLock { token: t(45), backoff: Duration::ZERO },
            ],
            "holding the lock with token 45 while staying out of the election for 30000 ms more: releasing it",
        );
        // A master still active under the lock's token (its demotion failed) keeps the role the
        // lock gives it: releasing the lock would leave it active with nobody holding it.
        o.master = active(45);
        check(o.clone(), vec![], "active with token 45; lease 500 ms left");
        // Once the period is over the lock is held as usual.
        o.master = Some(MasterStatus { state: HaState::Standby, token: t(45), position: None });
        o.backoff_until = Some(now());
        assert_eq!(decide(&o, &Policy::with_backoff(BACKOFF)).steps, vec![Step::Promote { token: t(45) }]);
    }

    #[test]
    fn failed_fence_releases_the_lock_and_backs_off() {
        let mut o = base();
        o.lock = ours(45);
        o.breadcrumb = crumb("b", 40, false);
        o.failure = Some(StepFailure { token: t(45), reason: "fencing b: indeterminate: ssh timed out".into() });
        check(
            o.clone(),
            vec![Step::Demote { token: t(45), best_effort: true }, Step::ReleaseLock { token: t(45), backoff: BACKOFF }],
            "promotion with token 45 failed (fencing b: indeterminate: ssh timed out); releasing the lock and backing off 2000 ms",
        );
        // A failure from an older acquisition does not count against this one.
        o.failure = Some(StepFailure { token: t(44), reason: "old".into() });
        assert_eq!(
            decide(&o, &Policy::with_backoff(BACKOFF)).steps[0],
            Step::Fence { targets: vec![target_with_token("b", 40)], new_token: t(45), clean_claim: None }
        );
    }

    #[test]
    fn holder_waits_for_what_it_cannot_know() {
        let mut o = base();
        o.lock = ours(45);
        o.breadcrumb = BreadcrumbView::Unknown;
        check(o, vec![], "holding the lock; the breadcrumb could not be read, waiting");
        // A master this agent promoted and can no longer read may be active: the lock is kept
        // (its lease bounds how long).
        let mut o = base();
        o.lock = ours(45);
        o.master = None;
        o.promoted = Some(t(45));
        check(o, vec![], "holding the lock (token 45); the master's state is unknown");
        let mut o = base();
        o.lock = ours(45);
        o.session = SessionView::Disconnected { session_id: 7 };
        check(o, vec![], "holding the lock (token 45) but the coordinator is not connected; waiting");
        let mut o = base();
        o.lock = LockView::OursFromOldSession { token: t(44) };
        check(o, vec![], "the lock (token 44) belongs to an older session of this agent; waiting for it to expire");
    }

    /// ZKFC leaves the election while its NameNode initializes: a master not ready to be
    /// promoted (initializing, or its state unread) does not contend, is not offered to the
    /// ranking, and a lock won meanwhile is released for a ready standby instead of held for
    /// as long as the master takes.
    #[test]
    fn a_master_not_ready_to_be_promoted_keeps_its_node_out_of_the_election() {
        let initializing = Some(MasterStatus { state: HaState::Initializing, token: t(0), position: None });
        for (master, why) in
            [(initializing, "the master is still initializing"), (None, "the master's state could not be read")]
        {
            let mut o = base();
            o.master = master;
            let d = decide(&o, &Policy::with_backoff(BACKOFF));
            assert_eq!(d.steps, vec![], "{why}: {}", d.reason);
            assert_eq!(d.blocker, Some(Blocker::Unhealthy { reason: why.into() }), "{}", d.reason);
            assert!(!own_candidacy(&o, &Policy::with_backoff(BACKOFF)).eligible, "{why}: not offered to the ranking");
            o.lock = ours(45);
            check(
                o,
                vec![Step::ReleaseLock { token: t(45), backoff: Duration::ZERO }],
                &format!("holding the lock (token 45), but {why}: releasing it for a standby that is ready"),
            );
        }
    }

    /// A coordinator server that grants a shorter session timeout than asked can leave a lease
    /// no promotion fits in: such a node never contends, and a lock it won is released
    /// instead of held for good while it waits for a lease that cannot come.
    #[test]
    fn a_grant_whose_lease_cannot_cover_a_promotion_keeps_the_node_out() {
        let policy = Policy { promote_budget: Duration::from_millis(600), ..Policy::with_backoff(BACKOFF) };
        let short = policy.promote_budget;
        let blocker = Blocker::LeaseTooShort { lease_ms: ms64(short), promote_ms: ms64(policy.promote_budget) };
        let mut o = base();
        o.lease_budget = Some(short);
        let d = decide(&o, &policy);
        assert_eq!((d.steps.clone(), d.blocker.clone()), (vec![], Some(blocker.clone())), "{}", d.reason);
        assert!(!own_candidacy(&o, &policy).eligible, "not offered to the ranking");
        o.lock = ours(45);
        let d = decide(&o, &policy);
        assert_eq!(d.steps, vec![Step::ReleaseLock { token: t(45), backoff: Duration::ZERO }], "{}", d.reason);
        assert_eq!(d.blocker, Some(blocker));
        // A lease just longer than a promotion will do, once an answer renews it.
        o.lease_budget = Some(short + Duration::from_millis(1));
        o.lock = LockView::Free;
        assert_eq!(decide(&o, &policy).steps, vec![Step::Contend]);
    }

    /// A preferred node asks the active to hand over only if it would then take the lock: one
    /// whose master is not ready, or whose lease cannot cover a promotion, would leave the
    /// cluster without an active, every `failback_after`.
    #[test]
    fn a_preferred_node_that_would_not_take_the_lock_does_not_ask_for_it() {
        let policy = Policy {
            failback_after: Some(Duration::from_secs(10)),
            promote_budget: Duration::from_millis(600),
            ..Policy::with_backoff(BACKOFF)
        };
        let mut o = base();
        o.lock = LockView::Peer { node_id: "b".into(), token: t(40) };
        let asks = |o: &Observation| decide(o, &policy).steps.iter().any(|s| matches!(s, Step::RequestHandover { .. }));
        assert!(asks(&o), "ready: asks");
        let mut initializing = o.clone();
        initializing.master = Some(MasterStatus { state: HaState::Initializing, token: t(0), position: None });
        let mut unread = o.clone();
        unread.master = None;
        let mut short = o.clone();
        short.lease_budget = Some(Duration::from_millis(600));
        for (name, o) in [("initializing", initializing), ("unread", unread), ("short lease", short)] {
            assert!(!asks(&o), "{name}: would not take the lock, must not ask for it");
        }
    }

    #[test]
    fn the_promoted_token_is_kept_while_the_master_may_be_active() {
        let st = |state, n| Some(MasterStatus { state, token: t(n), position: None });
        let cases = [
            (None, st(HaState::Active, 30), Some(t(30))),
            (Some(t(30)), None, Some(t(30))),
            (Some(t(30)), st(HaState::Active, 31), Some(t(31))),
            (Some(t(31)), st(HaState::Active, 30), Some(t(31))),
            (Some(t(30)), st(HaState::Standby, 30), None),
            (Some(t(30)), st(HaState::Initializing, 0), None),
            (None, None, None),
        ];
        for (previous, master, expected) in cases {
            assert_eq!(track_promoted(previous, master), expected, "{previous:?} {master:?}");
        }
    }

    #[test]
    fn handover_demotes_first_and_never_waits_on_an_unreadable_lock() {
        let ours = LockView::Ours { token: t(45), version: 2 };
        let standby = Some(MasterStatus { state: HaState::Standby, token: t(45), position: None });
        let cases = [
            (Some(&ours), Some(t(45)), active(45), Handover::StepDown { token: t(45), lock_version: 2 }),
            (Some(&ours), None, standby, Handover::StepDown { token: t(45), lock_version: 2 }),
            // The read failed (a black-holed coordinator) while the master may be active.
            (None, Some(t(45)), None, Handover::DemoteOnly { token: t(45) }),
            (None, None, active(44), Handover::DemoteOnly { token: t(44) }),
            (Some(&LockView::Free), Some(t(45)), active(45), Handover::DemoteOnly { token: t(45) }),
            (None, None, standby, Handover::NotActive),
            (Some(&LockView::Free), None, None, Handover::NotActive),
        ];
        for (lock, promoted, master, expected) in cases {
            assert_eq!(plan_handover(lock, promoted, master), expected, "{lock:?} {promoted:?} {master:?}");
        }
    }

    #[test]
    fn paused_takes_no_action_but_safety() {
        // Would promote, or give up an unhealthy master's lock: paused, it does neither.
        let mut o = base();
        o.paused = true;
        o.lock = ours(45);
        o.breadcrumb = crumb("a", 45, false);
        check(o.clone(), vec![], "paused: observing only, no failover will be made");
        o.health = Health::Unhealthy("disk full".into());
        check(o, vec![], "paused: observing only, no failover will be made");
        // An active master without our lock is demoted even in maintenance mode: another node
        // holds the lock and may have promoted its master.
        let mut o = base();
        o.paused = true;
        o.master = active(30);
        o.lock = LockView::Peer { node_id: "b".into(), token: t(50) };
        check(
            o,
            vec![Step::Demote { token: t(30), best_effort: false }],
            "demoting the master: it is active but b holds the lock with token 50 (maintenance mode does not keep a \
             master active past its lease or without the lock)",
        );
    }

    #[test]
    fn a_coordinator_without_token_base_gets_one_above_every_token_found() {
        // A wiped coordinator: the lock's czxid (3) is far below what the masters saw (100).
        let mut o = base();
        o.lock = ours(3);
        o.token_base = TokenBaseView::Missing;
        o.token_floor = t(90);
        o.master = Some(MasterStatus { state: HaState::Standby, token: t(100), position: None });
        check(
            o,
            vec![Step::SetTokenBase { czxid: 3, floor: t(100), lock_version: 0, current: None, consult_peers: true }],
            "won the lock (czxid 3) but the coordinator has no token base, so its history is new or was lost: \
             setting the base above every token still to be found (highest known 100)",
        );
    }

    #[test]
    fn a_token_not_above_one_already_seen_raises_the_base_first() {
        // The breadcrumb of another node shows a higher token than ours (a restored snapshot).
        let mut o = base();
        o.lock = LockView::Ours { token: t(57), version: 2 };
        o.token_base = TokenBaseView::Present { base: 50, version: 4 };
        o.breadcrumb = crumb("b", 60, false);
        check(
            o,
            vec![Step::SetTokenBase {
                czxid: 7,
                floor: t(60),
                lock_version: 2,
                current: Some((50, 4)),
                consult_peers: false,
            }],
            "token 57 is not above 60, a token already seen (the coordinator lost history?): raising the token base \
             before using it",
        );
        // Our master showing exactly our token before we gave it is a coincidence, not ours.
        let mut o = base();
        o.lock = ours(45);
        o.master = Some(MasterStatus { state: HaState::Standby, token: t(45), position: None });
        assert!(matches!(
            decide(&o, &Policy::with_backoff(BACKOFF)).steps[0],
            Step::SetTokenBase { floor: FencingToken(45), .. }
        ));
        // Once we handed it out (a failed promotion demoted it, say), it is ours.
        o.token_issued = Some(t(45));
        assert!(matches!(decide(&o, &Policy::with_backoff(BACKOFF)).steps[0], Step::Fence { .. }));
        // A token floor remembered from before the coordinator was wiped counts too.
        let mut o = base();
        o.lock = ours(45);
        o.token_floor = t(45);
        assert!(matches!(decide(&o, &Policy::with_backoff(BACKOFF)).steps[0], Step::SetTokenBase { .. }));
        // And an unreadable base means waiting.
        let mut o = base();
        o.lock = ours(45);
        o.token_base = TokenBaseView::Unknown;
        check(o, vec![], "holding the lock (token 45); the token base could not be read, waiting");
    }

    #[test]
    fn failsafe_keeps_an_active_master_only_while_confirmed_and_the_coordinator_is_unreachable() {
        let mut o = base();
        o.master = active(45);
        o.lock = LockView::Unknown;
        o.session = SessionView::Disconnected { session_id: 7 };
        o.lease_until = Some(now() - Duration::from_millis(1));
        o.failsafe_until = Some(now() + Duration::from_millis(800));
        check(
            o.clone(),
            vec![],
            "failsafe: the coordinator is unreachable and the lease ran out, but every other member confirmed it is \
             not active; keeping the master active for 800 ms more unless confirmed again",
        );
        // The confirmation ran out: demote.
        let mut expired = o.clone();
        expired.failsafe_until = Some(now());
        check(
            expired,
            vec![Step::Demote { token: t(45), best_effort: false }],
            "demoting the master: the coordinator is unreachable and the lease ran out",
        );
        // The client gave the session up, the coordinator still unreachable: failsafe holds
        // until a lock read answers.
        let mut gone = o.clone();
        gone.session = SessionView::Connecting;
        assert_eq!(decide(&gone, &Policy::with_backoff(BACKOFF)).steps, vec![]);
        // The coordinator answered that the lock is free: failsafe does not apply either.
        let mut answered = o;
        answered.session = SessionView::Connected { session_id: 7 };
        answered.lock = LockView::Free;
        check(
            answered,
            vec![Step::Demote { token: t(45), best_effort: false }],
            "demoting the master: it is active but nobody holds the lock",
        );
    }

    #[test]
    fn anti_flap_holds_a_free_lock_until_the_interval_has_passed() {
        let policy = Policy { min_failover_interval: Duration::from_secs(30), ..Policy::with_backoff(BACKOFF) };
        let mut o = base();
        o.last_failover_at = Some(now() - Duration::from_secs(10));
        check_with(
            o.clone(),
            &policy,
            vec![],
            "the lock is free, but the active changed less than 30000 ms ago; anti-flap: waiting 20000 ms more",
        );
        // An operator's failover is not held back.
        let mut asked = o.clone();
        asked.failover_requested = true;
        check_with(asked, &policy, vec![Step::Contend], "the lock is free and the master is healthy: contending");
        // A failsafe promise holds a contention back too, and says to whom.
        let mut promised = o.clone();
        promised.last_failover_at = None;
        promised.promised =
            Some(crate::failsafe::Promise { to: Some("b".into()), until: now() + Duration::from_millis(2500) });
        check_with(
            promised.clone(),
            &policy,
            vec![],
            "the lock is free, but this node confirmed to b (failsafe) that it would not contend for 2500 ms more",
        );
        // So does the promise an agent keeps from its start, saying so.
        promised.promised = Some(crate::failsafe::Promise { to: None, until: now() + Duration::from_millis(4000) });
        check_with(
            promised,
            &policy,
            vec![],
            "the lock is free, but this agent may have promised a failsafe active not to contend just before it \
             started (failsafe.ttl_ms from its start): not contending for 4000 ms more",
        );
        // Past the interval, contend.
        o.last_failover_at = Some(now() - Duration::from_secs(30));
        check_with(o, &policy, vec![Step::Contend], "the lock is free and the master is healthy: contending");
    }

    #[test]
    fn the_preferred_node_asks_for_the_role_back_only_after_a_healthy_period() {
        let policy = Policy {
            failback_after: Some(Duration::from_secs(60)),
            min_failover_interval: Duration::from_secs(30),
            ..Policy::with_backoff(BACKOFF)
        };
        let mut o = base();
        o.lock = LockView::Peer { node_id: "b".into(), token: t(50) };
        o.healthy_since = Some(now() - Duration::from_secs(60));
        check_with(
            o.clone(),
            &policy,
            vec![Step::RequestHandover { from: "b".into() }],
            "this is the preferred node and its master has been healthy for 60000 ms: asking b (token 50) to hand over",
        );
        let standing_by = "standing by: b is active with token 50";
        // Not healthy long enough.
        let mut young = o.clone();
        young.healthy_since = Some(now() - Duration::from_secs(59));
        check_with(young, &policy, vec![], standing_by);
        // The last failover was too recent.
        let mut recent = o.clone();
        recent.last_failover_at = Some(now() - Duration::from_secs(5));
        check_with(recent, &policy, vec![], standing_by);
        // A request was made recently.
        let mut asked = o.clone();
        asked.failback_not_before = Some(now() + Duration::from_secs(1));
        check_with(asked, &policy, vec![], standing_by);
        // Drained by an operator: it may not take the role, so it does not ask for it.
        let mut drained = o.clone();
        drained.candidacy.drained = Some("ops".into());
        check_with(drained, &policy, vec![], standing_by);
        // Too far behind the active to take over: asking would leave nobody active.
        let lagging_policy =
            Policy { candidacy: CandidacyPolicy { max_lag: Some(100), ..CandidacyPolicy::default() }, ..policy };
        let mut lagging = o.clone();
        lagging.candidacy.position = Some(candidacy::Position(1_000));
        lagging.published = published_at(5_000, None, Duration::from_secs(1));
        check_with(lagging.clone(), &lagging_policy, vec![], standing_by);
        lagging.candidacy.position = Some(candidacy::Position(4_950));
        assert_eq!(
            decide(&lagging, &lagging_policy).steps,
            vec![Step::RequestHandover { from: "b".into() }],
            "caught up: it asks"
        );
        // Not the preferred node.
        check_with(o, &Policy::with_backoff(BACKOFF), vec![], standing_by);
    }

    fn published_at(position: u64, zone: Option<&str>, age: Duration) -> Option<PublishedView> {
        Some(PublishedView {
            record: candidacy::ActivePosition {
                node_id: "b".into(),
                zone: zone.map(str::to_string),
                position: candidacy::Position(position),
                token: t(40),
            },
            changed_at: now() - age,
            renewed: true,
        })
    }

    fn gated_policy() -> Policy {
        Policy {
            candidacy: CandidacyPolicy {
                max_lag: Some(100),
                position_max_age: Duration::from_secs(10),
                cross_zone: candidacy::CrossZone::Deny,
                rank_delay: Duration::from_secs(2),
            },
            min_failover_interval: Duration::from_secs(30),
            ..Policy::with_backoff(BACKOFF)
        }
    }

    fn rival(node: &str, position: Option<u64>, priority: u32, eligible: bool) -> Candidacy {
        Candidacy {
            node_id: node.into(),
            position: position.map(candidacy::Position),
            priority,
            zone: Some("east".into()),
            eligible,
        }
    }

    /// Node `a` in zone east at position 1000, the active's published position 1000 (fresh),
    /// the lock free for 1 s.
    fn gated() -> Observation {
        Observation {
            candidacy: OwnCandidacy {
                position: Some(candidacy::Position(1000)),
                priority: 1,
                zone: Some("east".into()),
                ..Default::default()
            },
            published: published_at(1000, Some("east"), Duration::from_secs(1)),
            lock_free_since: Some(now() - Duration::from_secs(1)),
            ..base()
        }
    }

    #[test]
    fn every_blocker_is_named_with_time_as_an_input() {
        let mut paused = gated();
        paused.paused = true;
        let mut unhealthy = gated();
        unhealthy.health = Health::NotResponding("refused".into());
        let mut peer = gated();
        peer.lock = LockView::Peer { node_id: "b".into(), token: t(40) };
        // A node kept out for good says so, not the holder's lease.
        let mut peer_drained = peer.clone();
        peer_drained.candidacy.drained = Some("ops".into());
        let mut peer_nofailover = peer.clone();
        peer_nofailover.candidacy.nofailover = true;
        let mut old_session = gated();
        old_session.lock = LockView::OursFromOldSession { token: t(40) };
        let mut unknown = gated();
        unknown.lock = LockView::Unknown;
        let mut disconnected = gated();
        disconnected.session = SessionView::Disconnected { session_id: 7 };
        let mut promised = gated();
        promised.promised =
            Some(crate::failsafe::Promise { to: Some("b".into()), until: now() + Duration::from_millis(700) });
        let mut promised_at_start = gated();
        promised_at_start.promised =
            Some(crate::failsafe::Promise { to: None, until: now() + Duration::from_millis(700) });
        let mut backing_off = gated();
        backing_off.backoff_until = Some(now() + Duration::from_millis(300));
        let mut nofailover = gated();
        nofailover.candidacy.nofailover = true;
        let mut drained = gated();
        drained.candidacy.drained = Some("ops".into());
        let mut lagging = gated();
        lagging.candidacy.position = Some(candidacy::Position(850));
        let mut stale = gated();
        stale.published = published_at(1000, Some("east"), Duration::from_secs(12));
        let mut unread = gated();
        unread.candidacy.position = None;
        unread.candidacy.state_unread = true;
        let mut other_zone = gated();
        other_zone.candidacy.zone = Some("west".into());
        let mut flapping = gated();
        flapping.last_failover_at = Some(now() - Duration::from_secs(20));
        let mut outranked = gated();
        outranked.candidates = vec![rival("c", Some(1000), 5, true)];
        let mut fencing = gated();
        fencing.lock = ours(45);
        fencing.breadcrumb = crumb("b", 40, false);
        let table: Vec<(&str, Observation, Option<Blocker>)> = vec![
            ("paused", paused, Some(Blocker::Paused)),
            (
                "unhealthy",
                unhealthy,
                Some(Blocker::Unhealthy { reason: "the master is not responding: refused".into() }),
            ),
            ("peer", peer, Some(Blocker::LeaseNotExpired { holder: "b".into() })),
            ("peer, drained", peer_drained, Some(Blocker::Drained { by: "ops".into() })),
            ("peer, nofailover", peer_nofailover, Some(Blocker::Nofailover)),
            ("old session", old_session, Some(Blocker::LeaseNotExpired { holder: "a".into() })),
            ("unknown", unknown, Some(Blocker::CoordinatorUnavailable)),
            ("disconnected", disconnected, Some(Blocker::CoordinatorUnavailable)),
            ("promised", promised, Some(Blocker::Promised { to: Some("b".into()) })),
            ("promised at start", promised_at_start, Some(Blocker::Promised { to: None })),
            ("backing off", backing_off, Some(Blocker::BackingOff { left_ms: 300 })),
            ("nofailover", nofailover, Some(Blocker::Nofailover)),
            ("drained", drained, Some(Blocker::Drained { by: "ops".into() })),
            ("lagging", lagging, Some(Blocker::Lagging { behind: 150, max_lag: 100 })),
            ("stale", stale, Some(Blocker::PositionStale { age_ms: 12_000, max_age_ms: 10_000 })),
            ("position unknown", unread, Some(Blocker::PositionUnknown)),
            (
                "other zone",
                other_zone,
                Some(Blocker::CrossZoneDenied { zone: "west".into(), active_zone: "east".into() }),
            ),
            ("anti-flap", flapping, Some(Blocker::AntiFlap { left_ms: 10_000 })),
            ("outranked", outranked, Some(Blocker::OutRanked { by: "c".into(), rank: 1, left_ms: 1000 })),
            ("fencing", fencing, Some(Blocker::FencingPending)),
            ("free and best", gated(), None),
        ];
        for (name, obs, expected) in table {
            let d = decide(&obs, &gated_policy());
            assert_eq!(d.blocker, expected, "{name}: {}", d.reason);
            // Blocked means no contention and no promotion.
            let acts = d.steps.iter().any(|s| matches!(s, Step::Contend | Step::Promote { .. }));
            assert_eq!(acts, expected.is_none() || expected == Some(Blocker::FencingPending), "{name}: {d:?}");
        }
    }

    #[test]
    fn the_lag_gate_reads_as_a_sentence_and_yields_to_the_operator_only_with_data_loss_allowed() {
        let mut o = gated();
        o.candidacy.position = Some(candidacy::Position(850));
        check_with(
            o.clone(),
            &gated_policy(),
            vec![],
            "the lock is free, but this node may not take over: lagging by 150 (max_lag 100)",
        );
        // An operator's failover alone does not lift the gate ...
        o.failover_requested = true;
        assert_eq!(decide(&o, &gated_policy()).blocker, Some(Blocker::Lagging { behind: 150, max_lag: 100 }));
        // ... with data loss allowed it does, and anti-flap and ranking yield too.
        o.allow_data_loss = true;
        o.last_failover_at = Some(now() - Duration::from_secs(1));
        o.candidates = vec![rival("c", Some(2000), 9, true)];
        check_with(o, &gated_policy(), vec![Step::Contend], "the lock is free and the master is healthy: contending");
    }

    /// The gate passed when the node contended; before it promotes, it is checked again: a
    /// master read far behind since (its state unread when the node contended, say), or a drain
    /// meanwhile, releases the lock instead of promoting a standby that would lose writes.
    #[test]
    fn the_gates_are_checked_again_before_a_won_lock_is_used() {
        let mut won = gated();
        won.lock = ours(45);
        won.breadcrumb = crumb("b", 40, false);
        assert_eq!(decide(&won, &gated_policy()).blocker, Some(Blocker::FencingPending), "in the gate: fence, promote");
        let release = vec![Step::ReleaseLock { token: t(45), backoff: Duration::ZERO }];
        let mut lagging = won.clone();
        lagging.candidacy.position = Some(candidacy::Position(850));
        check_with(
            lagging.clone(),
            &gated_policy(),
            release.clone(),
            "holding the lock with token 45, but this node may not take over: lagging by 150 (max_lag 100); \
             releasing it",
        );
        assert_eq!(decide(&lagging, &gated_policy()).blocker, Some(Blocker::Lagging { behind: 150, max_lag: 100 }));
        let mut drained = won.clone();
        drained.candidacy.drained = Some("ops".into());
        assert_eq!(decide(&drained, &gated_policy()).steps, release);
        // An operator's failover with data loss allowed goes on.
        lagging.failover_requested = true;
        lagging.allow_data_loss = true;
        assert_eq!(decide(&lagging, &gated_policy()).blocker, Some(Blocker::FencingPending));
    }

    #[test]
    fn ranking_in_the_core_waits_its_rank_then_contends() {
        // (candidates, free for, contends?, blocker)
        let table: Vec<(Vec<Candidacy>, Duration, Option<Blocker>)> = vec![
            // More caught up: c waits out a's head start.
            (vec![rival("c", Some(1010), 1, true)], Duration::from_secs(1), Some(out_ranked("c", 1, 1000))),
            (vec![rival("c", Some(1010), 1, true)], Duration::from_secs(2), None),
            // Ineligible candidates do not rank.
            (vec![rival("c", Some(1010), 9, false)], Duration::ZERO, None),
            // Less caught up or lower priority: no wait.
            (vec![rival("c", Some(990), 9, true)], Duration::ZERO, None),
            (vec![rival("c", Some(1000), 0, true)], Duration::ZERO, None),
            // Two better candidates: rank 2, twice the delay.
            (
                vec![rival("c", Some(1010), 1, true), rival("d", Some(1000), 3, true)],
                Duration::from_secs(3),
                Some(out_ranked("c", 2, 1000)),
            ),
            (vec![rival("c", Some(1010), 1, true), rival("d", Some(1000), 3, true)], Duration::from_secs(4), None),
        ];
        for (candidates, free_for, expected) in table {
            let mut o = gated();
            o.candidates = candidates.clone();
            o.lock_free_since = Some(now() - free_for);
            let d = decide(&o, &gated_policy());
            assert_eq!(d.blocker, expected, "{candidates:?} free for {free_for:?}: {}", d.reason);
            let contend = if expected.is_none() { vec![Step::Contend] } else { vec![] };
            assert_eq!(d.steps, contend);
        }
    }

    fn out_ranked(by: &str, rank: usize, left_ms: u64) -> Blocker {
        Blocker::OutRanked { by: by.into(), rank, left_ms }
    }

    #[test]
    fn own_candidacy_is_eligible_only_when_it_would_contend_but_for_the_ranking() {
        let p = gated_policy();
        assert!(own_candidacy(&gated(), &p).eligible);
        let mut lagging = gated();
        lagging.candidacy.position = Some(candidacy::Position(1));
        let mut unhealthy = gated();
        unhealthy.health = Health::Initializing;
        let mut holder = gated();
        holder.lock = ours(45);
        let mut paused = gated();
        paused.paused = true;
        let mut backing_off = gated();
        backing_off.backoff_until = Some(now() + Duration::from_millis(1));
        for o in [lagging, unhealthy, holder, paused, backing_off] {
            assert!(!own_candidacy(&o, &p).eligible, "{o:?}");
        }
        let mut backed_off = gated();
        backed_off.backoff_until = Some(now());
        assert!(own_candidacy(&backed_off, &p).eligible, "a backoff that has run out holds nothing back");
        let c = own_candidacy(&gated(), &p);
        assert_eq!((c.node_id.as_str(), c.position, c.priority), ("a", Some(candidacy::Position(1000)), 1));
    }

    #[test]
    fn the_log_key_ignores_time_spans_only() {
        let d = |steps: Vec<Step>, reason: &str| Decision { steps, reason: reason.to_string(), blocker: None };
        let same = [
            ("active with token 7; lease 1748 ms left", "active with token 7; lease 12 ms left"),
            ("the lock is free; backing off for 900 ms more", "the lock is free; backing off for 1 ms more"),
            (
                "the lock is free, but the active changed less than 30000 ms ago; anti-flap: waiting 2999 ms more",
                "the lock is free, but the active changed less than 30000 ms ago; anti-flap: waiting 17 ms more",
            ),
            ("standing by: db1 is active with token 5", "standing by: db1 is active with token 5"),
        ];
        for (a, b) in same {
            assert_eq!(d(vec![], a).log_key(), d(vec![], b).log_key(), "{a:?} vs {b:?}");
        }
        let different = [
            ("active with token 7; lease 1748 ms left", "active with token 8; lease 1748 ms left"),
            ("standing by: db1 is active with token 5", "standing by: db2 is active with token 5"),
            ("node db1500 ms", "node db1 ms"),
            ("active with token 7; lease 5 ms left", "demoting the master: its lease ran out"),
        ];
        for (a, b) in different {
            assert_ne!(d(vec![], a).log_key(), d(vec![], b).log_key(), "{a:?} vs {b:?}");
        }
        // Same sentence, other steps: another decision.
        let token = FencingToken(3);
        assert_ne!(
            d(vec![Step::Promote { token }], "x").log_key(),
            d(vec![Step::Demote { token, best_effort: false }], "x").log_key()
        );
    }

    fn handover_to(to: &str, token: u64, seen_ago: Duration) -> Option<HandoverSeen> {
        Some(HandoverSeen {
            record: HandoverRecord { to: to.into(), from: "b".into(), token: t(token), at_ms: 1 },
            first_seen: now() - seen_ago,
            hold: Duration::from_secs(5),
        })
    }

    #[test]
    fn a_handover_to_another_node_leaves_it_the_free_lock_for_a_bounded_time() {
        // b ceded (clean breadcrumb, token 40) for a failover to c: a holds back.
        let mut o = base();
        o.breadcrumb = crumb("b", 40, true);
        o.handover = handover_to("c", 40, Duration::from_secs(1));
        let d = decide(&o, &Policy::with_backoff(BACKOFF));
        assert_eq!(d.steps, vec![]);
        assert_eq!(d.blocker, Some(Blocker::HandoverPending { to: "c".into(), left_ms: 4000 }));
        assert_eq!(
            d.reason,
            "the lock is free, but a failover to c is under way: the lock is left to it for 4000 ms more"
        );
        // So does a node the operator asked a failover to before: the later request decides.
        let mut superseded = o.clone();
        superseded.failover_requested = true;
        assert_eq!(decide(&superseded, &Policy::with_backoff(BACKOFF)).steps, vec![]);
        // A release that left the breadcrumb unclean is a handover under way all the same, and
        // so is one whose breadcrumb cannot be read.
        let mut unclean = o.clone();
        unclean.breadcrumb = crumb("b", 40, false);
        assert_eq!(decide(&unclean, &Policy::with_backoff(BACKOFF)).steps, vec![]);
        let mut missing = o.clone();
        missing.breadcrumb = BreadcrumbView::Missing;
        assert_eq!(decide(&missing, &Policy::with_backoff(BACKOFF)).steps, vec![]);
        // Bounded, on this node's clock from when it first saw the record: a target that never
        // takes the lock costs a delay, not the cluster's availability.
        let mut expired = o.clone();
        expired.handover = handover_to("c", 40, Duration::from_secs(5));
        check(expired, vec![Step::Contend], "the lock is free and the master is healthy: contending");
        // A record about an earlier term (the breadcrumb names a later one) is left over: ignored.
        let mut stale = o.clone();
        stale.breadcrumb = crumb("c", 41, true);
        check(stale, vec![Step::Contend], "the lock is free and the master is healthy: contending");
        // The target itself contends, and skips the ranking though a rival ranks higher.
        let policy = gated_policy();
        let mut target = gated();
        target.breadcrumb = crumb("b", 40, true);
        target.lock_free_since = Some(now());
        target.candidates = vec![rival("c", Some(1000), 9, true)];
        let ranked = decide(&target, &policy);
        assert!(matches!(ranked.blocker, Some(Blocker::OutRanked { .. })), "{ranked:?}");
        target.handover = handover_to("a", 40, Duration::from_secs(1));
        check_with(target, &policy, vec![Step::Contend], "the lock is free and the master is healthy: contending");
        // The record only matters while the lock is free.
        let mut held = o.clone();
        held.lock = LockView::Peer { node_id: "c".into(), token: t(41) };
        check(held, vec![], "standing by: c is active with token 41");
    }

    #[test]
    fn a_handover_record_written_long_before_it_is_first_seen_holds_nobody_back() {
        let hold = Duration::from_secs(20);
        let record = HandoverRecord { to: "c".into(), from: "b".into(), token: t(40), at_ms: 1_000_000 };
        // Seen within the hold (or a little past it, clocks differ): counted from now.
        for age_ms in [0, 500, 39_000, -5_000] {
            assert_eq!(HandoverSeen::first_seen_at(&record, 1_000_000 + age_ms, now(), hold), now(), "{age_ms}");
        }
        // Written an hour before: left over, run out already.
        let first_seen = HandoverSeen::first_seen_at(&record, 1_000_000 + 3_600_000, now(), hold);
        let mut o = base();
        o.breadcrumb = crumb("b", 40, true);
        o.handover = Some(HandoverSeen { record, first_seen, hold });
        check(o, vec![Step::Contend], "the lock is free and the master is healthy: contending");
    }

    #[test]
    fn the_preferred_nodes_failback_clock_starts_when_it_leaves_the_active_role() {
        let policy = Policy { failback_after: Some(Duration::from_secs(60)), ..Policy::with_backoff(BACKOFF) };
        let mut o = base();
        o.lock = LockView::Peer { node_id: "b".into(), token: t(50) };
        o.healthy_since = Some(now() - Duration::from_secs(600));
        // An operator moved the role away from the preferred node 5 s ago: its master has been
        // healthy all along, but the switchover holds for the failback period.
        o.left_active_at = Some(now() - Duration::from_secs(5));
        check_with(o.clone(), &policy, vec![], "standing by: b is active with token 50");
        o.left_active_at = Some(now() - Duration::from_secs(60));
        check_with(
            o.clone(),
            &policy,
            vec![Step::RequestHandover { from: "b".into() }],
            "this is the preferred node and its master has been healthy for 60000 ms: asking b (token 50) to hand over",
        );
        // A master healthy for less time than since the node left the role counts from then.
        o.healthy_since = Some(now() - Duration::from_secs(30));
        o.left_active_at = Some(now() - Duration::from_secs(600));
        check_with(o, &policy, vec![], "standing by: b is active with token 50");
    }

    #[test]
    fn a_pending_failover_is_over_once_another_node_holds_the_lock_with_a_newer_token() {
        let peer = |token: u64| LockView::Peer { node_id: "c".into(), token: t(token) };
        // The active asked to cede still holds its lock: the failover is under way.
        assert_eq!(failover_taken(&peer(40), Some(t(40))), None);
        // Another acquisition since: the role went elsewhere.
        assert_eq!(failover_taken(&peer(41), Some(t(40))), Some(("c".into(), t(41))));
        // Nobody was active when it was asked: any holder took it.
        assert_eq!(failover_taken(&peer(1), Some(t(0))), Some(("c".into(), t(1))));
        // Free, ours, unknown, or no failover asked: nothing to say.
        assert_eq!(failover_taken(&LockView::Free, Some(t(40))), None);
        assert_eq!(failover_taken(&ours(41), Some(t(40))), None);
        assert_eq!(failover_taken(&LockView::Unknown, Some(t(40))), None);
        assert_eq!(failover_taken(&peer(41), None), None);
    }
}
