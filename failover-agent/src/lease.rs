//! The lease: the one authority on how long this agent's master may stay active without
//! hearing from the coordinator.
//!
//! A reply from the ensemble proves this agent's session was alive when the request was
//! processed, which is after it was *sent*. The ensemble expires the session no earlier than the
//! granted session timeout after that, so a master that stops accepting writes by
//!
//! ```text
//!   lease end = send time of the last answered request
//!               + granted session timeout − S (staleness) − D (demote deadline) − margin
//! ```
//!
//! has stopped before any peer can hold the lock. Everything that asks "may the master still be
//! active?" asks this module: the decision core (demote at lease end, promote only if the lease
//! covers the promotion), the probes `/lease` and `/active`, failsafe (which starts asking peers
//! once half the lease has passed in silence), the bound on every await while the master may be
//! active, and the guard task that demotes the master at lease end even if the decision loop is
//! blocked.
//!
//! It is pure: time is an input, every instant is on the boot-time clock ([`BootInstant`]).

use std::time::Duration;

use referee_fencing::FencingToken;

use crate::clock::BootInstant;

/// What the lease formula subtracts from the granted session timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRule {
    /// S: how far the server this agent talks to may lag the ensemble's leader.
    pub staleness: Duration,
    /// D: how long demoting the master may take.
    pub demote_deadline: Duration,
    /// Extra margin for clock rate differences and scheduling.
    pub margin: Duration,
}

impl LeaseRule {
    /// The lease each answered request buys under a granted session timeout; `None` when
    /// nothing is left.
    pub fn budget(&self, granted: Duration) -> Option<Duration> {
        let spent = self.staleness.checked_add(self.demote_deadline)?.checked_add(self.margin)?;
        granted.checked_sub(spent).filter(|d| !d.is_zero())
    }
}

/// The warning an agent logs when the coordinator grants another session timeout than it asked
/// for, or `None` when the grant is the request.
///
/// The granted timeout, not the requested one, is what the failover time is made of: a lost
/// host's lock goes only when its session expires, and the lease is cut from the grant. Both
/// effects are named so an operator reading the log knows what to change.
pub fn grant_mismatch_warning(requested: Duration, granted: Duration, rule: &LeaseRule) -> Option<String> {
    if requested == granted {
        return None;
    }
    let (req, got) = (requested.as_millis(), granted.as_millis());
    let effect = if granted > requested {
        format!("a lost host now fails over {} ms later than configured", got - req)
    } else {
        format!("a lost host fails over {} ms sooner than configured, but the lease is shorter", req - got)
    };
    let lease = match rule.budget(granted) {
        Some(b) => format!("each answered request buys a lease of {} ms", b.as_millis()),
        None => "no lease is left, so this node will never stay active".to_string(),
    };
    Some(format!(
        "the coordinator granted a session timeout of {got} ms, not the {req} ms asked for \
         (coordinator.session_timeout_ms): host-loss failover happens at the granted timeout, so {effect}; \
         {lease}. Set the coordinator's session timeout bounds so they admit {req} ms (Apache ZooKeeper: \
         minSessionTimeout/maxSessionTimeout, 2 and 20 × tickTime unless set; the bundled coordinator: \
         min_session_timeout_ms/max_session_timeout_ms, or tick_ms), or ask for {got} ms"
    ))
}

/// The longest the client library pauses before it tries the next coordinator server after one
/// failed (half of 100 ms per server already tried, plus up to 50 ms of jitter; 100 ms for the
/// second server of a round).
pub const NEXT_SERVER_PAUSE: Duration = Duration::from_millis(100);

/// The warning an agent logs when a frozen coordinator server could outlast the lease, or
/// `None` when it cannot.
///
/// A frozen server (SIGSTOP, a stalled VM) keeps its connections open, so the client gives it up
/// only after `idle_limit` of silence, may try it once more, and pauses up to
/// [`NEXT_SERVER_PAUSE`] before a live one; the last answered request may be a loop interval
/// older than the freeze. All of that must fit in the lease each answer buys under `counted`, the
/// session timeout the lease counts on, or the session moves only after the master was demoted.
pub fn frozen_server_warning(
    counted: Duration,
    idle_limit: Duration,
    loop_interval: Duration,
    rule: &LeaseRule,
) -> Option<String> {
    let lease = rule.budget(counted)?;
    let needed = 2 * idle_limit + NEXT_SERVER_PAUSE + loop_interval;
    if needed <= lease {
        return None;
    }
    let fix = if idle_limit > counted / 5 {
        format!(
            "This session's connection was set up for a longer session timeout than the {} ms a server would \
             now grant it, and keeps that until it ends (the next session is set up for the lower one); give \
             every coordinator server the same session timeout bounds",
            counted.as_millis()
        )
    } else {
        "Ask for a longer coordinator.session_timeout_ms (and let the coordinator grant it), or lower \
         lease.demote_deadline_ms, lease.margin_ms or coordinator.max_staleness_ms"
            .to_string()
    };
    Some(format!(
        "a frozen coordinator server can cost this node its lease: the client gives a silent server up after {} ms \
         and may try it once more before the next, so with its pause before a live server ({} ms) and a loop \
         interval ({} ms) the session moves up to {} ms after the last answered request, past the {} ms lease that \
         a {} ms session timeout buys. {fix}",
        idle_limit.as_millis(),
        NEXT_SERVER_PAUSE.as_millis(),
        loop_interval.as_millis(),
        needed.as_millis(),
        lease.as_millis(),
        counted.as_millis()
    ))
}

/// The session's lease, renewed by every answered coordinator request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    rule: LeaseRule,
    /// The session timeout the coordinator granted on the connection in use now.
    granted: Option<Duration>,
    /// Send time of the latest answered request, and the granted timeout in effect then.
    last_ack: Option<(BootInstant, Duration)>,
    /// Whether the session's answers back this node's master (see [`Lease::connected`]).
    bound: bool,
}

impl Lease {
    /// No session yet: no lease.
    pub fn new(rule: LeaseRule) -> Self {
        Lease { rule, granted: None, last_ack: None, bound: false }
    }

    /// The rule in force.
    pub fn rule(&self) -> LeaseRule {
        self.rule
    }

    /// Takes a new rule (a reloaded configuration); the evidence gathered stays.
    pub fn set_rule(&mut self, rule: LeaseRule) {
        self.rule = rule;
    }

    /// A connection was (re)established with this granted session timeout; `sent` is when the
    /// connect request went out, and its answer counts as an acknowledgement.
    ///
    /// A later grant replaces an earlier one at once, also for the acknowledgements gathered
    /// under the earlier one: the ensemble measures the session from its last touch with the
    /// timeout it holds now, so a shorter grant after a reconnect shortens the lease at once.
    ///
    /// `backs_at_once` is false for a session made while the master may be active, or while a
    /// lock of an earlier session is still counted as held (failsafe): that session's answers
    /// say nothing about a lock it does not hold, so it gives no lease until a lock read says
    /// it holds the lock ([`Lease::bind`]). A master promoted under the old session is then
    /// kept only by failsafe, or demoted.
    pub fn connected(&mut self, granted: Duration, sent: BootInstant, backs_at_once: bool) {
        self.granted = Some(granted);
        self.bound = backs_at_once;
        self.renew(sent);
    }

    /// A lock read answered that this session holds the lock: its lease backs the master.
    pub fn bind(&mut self) {
        self.bound = true;
    }

    /// Takes the granted session timeout as the client reports it now (see
    /// [`Lease::connected`]).
    pub fn set_granted(&mut self, granted: Duration) {
        self.granted = Some(granted);
    }

    /// A request sent at `sent` was answered. Replies may complete out of order: the latest
    /// send time wins.
    pub fn renew(&mut self, sent: BootInstant) {
        let Some(granted) = self.granted else { return };
        match self.last_ack {
            Some((t, _)) if t > sent => {}
            _ => self.last_ack = Some((sent, granted)),
        }
    }

    /// The session is gone (expired or closed): no request of it proves anything any more.
    pub fn session_ended(&mut self) {
        self.granted = None;
        self.last_ack = None;
        self.bound = false;
    }

    /// The granted timeout in effect, if a session is connected.
    pub fn granted(&self) -> Option<Duration> {
        self.granted
    }

    /// What each answered request buys now.
    pub fn budget(&self) -> Option<Duration> {
        self.rule.budget(self.granted?)
    }

    /// When the lease ends; `None` without a session, with a grant that leaves nothing, or for
    /// a session that does not back the master yet.
    pub fn until(&self) -> Option<BootInstant> {
        if !self.bound {
            return None;
        }
        let (sent, granted_then) = self.last_ack?;
        // The shorter of the grant the acknowledgement was made under and the one in force now.
        let granted = self.granted?.min(granted_then);
        Some(sent + self.rule.budget(granted)?)
    }

    /// Time left at `now` (zero when it ran out or there is none).
    pub fn left(&self, now: BootInstant) -> Duration {
        left_until(self.until(), now)
    }

    /// Whether the lease still holds at `now`.
    pub fn is_valid(&self, now: BootInstant) -> bool {
        !self.left(now).is_zero()
    }

    /// Whether a promotion that may take `d` from `now` ends inside the lease.
    pub fn may_promote_for(&self, now: BootInstant, d: Duration) -> bool {
        may_promote_for(self.until(), now, d)
    }
}

/// Time left until `until` at `now`, zero without a lease.
pub fn left_until(until: Option<BootInstant>, now: BootInstant) -> Duration {
    until.map_or(Duration::ZERO, |u| u.saturating_since(now))
}

/// Whether something that may take `d` from `now` ends strictly before `until`.
pub fn may_promote_for(until: Option<BootInstant>, now: BootInstant, d: Duration) -> bool {
    left_until(until, now) > d
}

/// How long one await may take. While the master may be active, no await may outlast the
/// lease left, or the demotion that must follow at lease end would come late; at least 1 ms,
/// so that a call can still be tried (and the timeout, not a panic, ends it).
pub fn await_limit(
    op_timeout: Duration,
    until: Option<BootInstant>,
    now: BootInstant,
    master_may_be_active: bool,
) -> Duration {
    if master_may_be_active {
        op_timeout.min(left_until(until, now)).max(Duration::from_millis(1))
    } else {
        op_timeout
    }
}

/// What the guard (the task that enforces the lease even if the decision loop is blocked)
/// publishes: the lease end in force, and the token the master may be active with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GuardState {
    /// The later of the session's lease and failsafe's; `None`: no lease.
    pub until: Option<BootInstant>,
    /// The token this agent promoted its master with, while it may be active; `None` when the
    /// master is known not to be active under this agent.
    pub armed: Option<FencingToken>,
}

/// What the guard does now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardAction {
    /// Nothing may be active: wait for the next publication.
    Idle,
    /// Check again after this long (capped, so a suspended machine's clock is re-read soon).
    WaitFor(Duration),
    /// The lease ran out with the master possibly active: demote it with this token.
    Demote(FencingToken),
}

/// The longest the guard sleeps between two looks at the boot clock.
pub const GUARD_TICK: Duration = Duration::from_millis(20);

/// The guard's rule: demote once the lease is out while the master may be active.
pub fn guard_action(state: GuardState, now: BootInstant) -> GuardAction {
    let Some(token) = state.armed else { return GuardAction::Idle };
    let left = left_until(state.until, now);
    if left.is_zero() {
        GuardAction::Demote(token)
    } else {
        GuardAction::WaitFor(left.min(GUARD_TICK))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> BootInstant {
        BootInstant::from_origin(Duration::from_millis(ms))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn rule() -> LeaseRule {
        LeaseRule { staleness: ms(0), demote_deadline: ms(500), margin: ms(250) }
    }

    #[test]
    fn renewed_from_the_send_time_of_answered_requests() {
        let mut l = Lease::new(rule());
        assert_eq!(l.until(), None, "no session, no lease");
        l.renew(at(1000));
        assert_eq!(l.until(), None, "an answer without a granted timeout proves nothing");
        l.connected(ms(2500), at(1000), true);
        assert_eq!(l.until(), Some(at(2750)));
        l.renew(at(1500));
        assert_eq!(l.until(), Some(at(3250)));
        // An older request answered late does not move it back.
        l.renew(at(1200));
        assert_eq!(l.until(), Some(at(3250)));
        assert_eq!(l.left(at(3000)), ms(250));
        assert!(l.is_valid(at(3249)) && !l.is_valid(at(3250)));
        l.session_ended();
        assert_eq!(l.until(), None);
        assert_eq!(l.left(at(1600)), Duration::ZERO);
    }

    #[test]
    fn a_reconnect_with_a_shorter_grant_shortens_the_lease_at_once() {
        let mut l = Lease::new(rule());
        l.connected(ms(10_000), at(0), true);
        l.renew(at(1000));
        assert_eq!(l.until(), Some(at(1000 + 9250)));
        // Reconnected to a server that grants 2500 ms: the lease follows it from now on, and
        // the acknowledgement made under the longer grant counts for the shorter one.
        l.set_granted(ms(2500));
        assert_eq!(l.until(), Some(at(1000 + 1750)));
        l.renew(at(2000));
        assert_eq!(l.until(), Some(at(2000 + 1750)));
        // A longer grant counts only for acknowledgements made under it.
        l.set_granted(ms(4000));
        assert_eq!(l.until(), Some(at(2000 + 1750)));
        l.renew(at(2100));
        assert_eq!(l.until(), Some(at(2100 + 3250)));
        // A grant that leaves nothing: no lease.
        l.set_granted(ms(700));
        assert_eq!(l.until(), None);
    }

    #[test]
    fn a_new_session_backs_a_master_that_may_be_active_only_once_it_holds_the_lock() {
        // The session that held the lock expired with the master possibly active, and a new
        // one is made: its answers say nothing about a lock it does not hold.
        let mut l = Lease::new(rule());
        l.connected(ms(2500), at(0), true);
        l.session_ended();
        l.connected(ms(2500), at(5000), false);
        l.renew(at(5100));
        assert_eq!(l.until(), None, "a new session backs nothing before it holds the lock");
        assert!(!l.may_promote_for(at(5100), ms(1)));
        // A lock read says this session holds it: the lease counts from the latest answer.
        l.bind();
        assert_eq!(l.until(), Some(at(5100 + 1750)));
        // Bound until the session ends; the next unbound session starts again from nothing.
        l.session_ended();
        l.connected(ms(2500), at(9000), false);
        assert_eq!(l.until(), None);
    }

    #[test]
    fn promotion_must_end_inside_the_lease() {
        let mut l = Lease::new(rule());
        l.connected(ms(2500), at(0), true);
        // 1750 ms lease.
        assert!(l.may_promote_for(at(0), ms(1000)));
        assert!(l.may_promote_for(at(749), ms(1000)));
        assert!(!l.may_promote_for(at(750), ms(1000)), "would end exactly at lease end");
        assert!(!l.may_promote_for(at(2000), ms(1)));
        assert!(!may_promote_for(None, at(0), Duration::ZERO), "no lease, no promotion");
    }

    #[test]
    fn awaits_are_bounded_by_the_lease_while_the_master_may_be_active() {
        let op = ms(800);
        assert_eq!(await_limit(op, Some(at(1300)), at(1000), true), ms(300));
        assert_eq!(await_limit(op, Some(at(5000)), at(1000), true), op);
        assert_eq!(await_limit(op, Some(at(900)), at(1000), true), ms(1), "lease out: try once, at once");
        assert_eq!(await_limit(op, None, at(1000), true), ms(1));
        assert_eq!(await_limit(op, None, at(1000), false), op, "nothing to protect");
    }

    #[test]
    fn the_guard_demotes_at_lease_end_only_while_armed() {
        let armed = GuardState { until: Some(at(1000)), armed: Some(FencingToken(7)) };
        assert_eq!(guard_action(armed, at(500)), GuardAction::WaitFor(GUARD_TICK));
        assert_eq!(guard_action(armed, at(990)), GuardAction::WaitFor(ms(10)));
        assert_eq!(guard_action(armed, at(1000)), GuardAction::Demote(FencingToken(7)));
        let no_lease = GuardState { until: None, armed: Some(FencingToken(7)) };
        assert_eq!(guard_action(no_lease, at(0)), GuardAction::Demote(FencingToken(7)));
        let disarmed = GuardState { until: None, armed: None };
        assert_eq!(guard_action(disarmed, at(5000)), GuardAction::Idle);
    }

    #[test]
    fn the_budget_never_overflows() {
        let huge = LeaseRule { staleness: Duration::MAX, demote_deadline: ms(1), margin: ms(1) };
        assert_eq!(huge.budget(ms(2500)), None);
        assert_eq!(rule().budget(ms(750)), None);
        assert_eq!(rule().budget(ms(751)), Some(ms(1)));
    }

    #[test]
    fn a_frozen_server_that_outlasts_the_lease_is_named_with_what_to_change() {
        // 2.5 s with the defaults: twice 500 ms, the pause and a 100 ms loop fit in 1750 ms.
        assert_eq!(frozen_server_warning(ms(2500), ms(500), ms(100), &rule()), None);
        // 1.5 s granted: a fifth of it still fits (2 × 300 + 100 + 0 = 700 of 750 ms)...
        assert_eq!(frozen_server_warning(ms(1500), ms(300), ms(0), &rule()), None);
        // ... but not with a 100 ms loop, nor with the idle limit of a 4 s request.
        let tight = frozen_server_warning(ms(1500), ms(300), ms(100), &rule()).expect("800 ms of 750");
        assert!(tight.contains("800 ms") && tight.contains("750 ms lease") && tight.contains("session_timeout_ms"));
        let stale = frozen_server_warning(ms(1500), ms(800), ms(100), &rule()).expect("1800 ms of 750");
        assert!(stale.contains("1800 ms") && stale.contains("same session timeout bounds"), "{stale}");
        assert_eq!(frozen_server_warning(ms(700), ms(140), ms(100), &rule()), None, "no lease: warned elsewhere");
    }

    #[test]
    fn a_grant_other_than_the_request_is_named_with_its_effect() {
        assert_eq!(grant_mismatch_warning(ms(2500), ms(2500), &rule()), None);
        let longer = grant_mismatch_warning(ms(2500), ms(4000), &rule()).expect("a longer grant warns");
        for part in ["granted a session timeout of 4000 ms", "the 2500 ms asked for", "1500 ms later", "lease of"] {
            assert!(longer.contains(part), "{part:?} missing from: {longer}");
        }
        let shorter = grant_mismatch_warning(ms(2500), ms(2000), &rule()).expect("a shorter grant warns");
        assert!(shorter.contains("500 ms sooner"), "{shorter}");
        // Both coordinators' settings are named: the bundled one's keys and Apache ZooKeeper's.
        for key in [
            "min_session_timeout_ms",
            "max_session_timeout_ms",
            "tick_ms",
            "minSessionTimeout",
            "maxSessionTimeout",
            "tickTime",
        ] {
            for w in [&longer, &shorter] {
                assert!(w.contains(key), "{key:?} missing from: {w}");
            }
        }
        let none_left = grant_mismatch_warning(ms(2500), ms(100), &rule()).expect("warns");
        assert!(none_left.contains("never stay active"), "{none_left}");
    }
}
