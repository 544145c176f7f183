//! Who may take over, and in what order: the replication position gate, the node tags
//! (`nofailover`, `priority`, `zone`), the ranking of candidates, and the name of whatever
//! stops this node from taking over now (its "why not").
//!
//! Pure: no I/O, no clock. The driver reads the active's published position and every other
//! standby's candidacy from the coordinator; [`crate::decide`] asks [`gate`] and [`rank_wait`]
//! before it contends for a free lock.
//!
//! The ranking needs no coordinator of its own: every standby reads the same candidacies and
//! computes the same order, the best contends at once and rank `r` only once the lock has been
//! free for `r × rank_delay`, so a best candidate that died (or hangs with its session still
//! alive) holds the others back by a bounded delay, never for good.

use std::cmp::Ordering;
use std::fmt;
use std::time::Duration;

use referee_fencing::FencingToken;
use serde::{Deserialize, Serialize};

use crate::clock::BootInstant;

/// A master's replication position: a number that only grows (an LSN, an edit-log transaction
/// id, a journal index), as `GET /ha/state` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(pub u64);

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Whether a standby may be promoted into another zone than the last active's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CrossZone {
    /// Any zone may take over (the default).
    #[default]
    Allow,
    /// Only a standby in the last active's zone takes over automatically; an operator's
    /// failover is exempt.
    Deny,
}

/// What the active's agent publishes in the coordinator at a configured interval: its master's
/// position, so every standby can tell how far behind it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivePosition {
    /// The active node.
    pub node_id: String,
    /// Its zone, if it has one (for `cross_zone: deny`).
    #[serde(default)]
    pub zone: Option<String>,
    /// Its master's position when published.
    pub position: Position,
    /// The token it was active with.
    pub token: FencingToken,
}

/// The active's published position as this agent last read it, with when this agent saw it
/// change (on its own clock: the coordinator's clock is not comparable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedView {
    /// The record.
    pub record: ActivePosition,
    /// When this agent first read this record (its position or publisher changed).
    pub changed_at: BootInstant,
    /// Whether this agent has seen the publication change since it started: the record of its
    /// first read may be of any age (an active that stopped publishing long ago), so until it
    /// changes its age is unknown.
    pub renewed: bool,
}

/// What a standby publishes under its member znode: where it stands and whether it would take
/// over now were the ranking not there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidacy {
    /// The node.
    pub node_id: String,
    /// Its master's position, if its master reports one.
    #[serde(default)]
    pub position: Option<Position>,
    /// Its priority: higher wins among equally caught-up candidates.
    pub priority: u32,
    /// Its zone.
    #[serde(default)]
    pub zone: Option<String>,
    /// Whether it would contend now, ranking aside: healthy, not `nofailover`, within the lag
    /// gate, zone allowed. Only eligible candidates rank.
    pub eligible: bool,
}

/// This node's own tags and position, as the core sees them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnCandidacy {
    /// Its master's position, if reported (`None`: unknown, no gate applies to it).
    pub position: Option<Position>,
    /// Its priority (higher wins).
    pub priority: u32,
    /// Its zone.
    pub zone: Option<String>,
    /// Never contend for the active role.
    pub nofailover: bool,
    /// Drained by an operator (`referee admin drain`): who, and why. Never contend, nor take
    /// an operator's failover, until undrained.
    pub drained: Option<String>,
    /// Its master's state could not be read this cycle, so `position` is unknown, not
    /// unreported: the lag gate holds the node back rather than let it past.
    pub state_unread: bool,
}

/// The rules of the lag gate and the ranking (from the `election` section).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CandidacyPolicy {
    /// The most a standby may be behind the active's published position and still take over
    /// automatically; `None` turns the gate off.
    pub max_lag: Option<u64>,
    /// How old (since this agent saw it change) the published position may be and still be
    /// trusted by the gate.
    pub position_max_age: Duration,
    /// Whether a standby of another zone than the last active's may take over.
    pub cross_zone: CrossZone,
    /// The wait per rank: the candidate ranked `r` (0 = best) contends only once the lock has
    /// been free for `r × rank_delay`.
    pub rank_delay: Duration,
}

impl Default for CandidacyPolicy {
    /// No gate, any zone, no rank delay: the behaviour of a pair without positions.
    fn default() -> Self {
        CandidacyPolicy {
            max_lag: None,
            position_max_age: Duration::from_secs(30),
            cross_zone: CrossZone::Allow,
            rank_delay: Duration::ZERO,
        }
    }
}

/// Why this node is not taking over now. One per node, named in `/status`,
/// `referee admin status` and the `referee_agent_blocked` gauge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "blocker", rename_all = "snake_case")]
pub enum Blocker {
    /// Another node is active and its lock (its session's lease) has not expired.
    LeaseNotExpired {
        /// The holder.
        holder: String,
    },
    /// The master is too far behind the active's published position.
    Lagging {
        /// How far behind.
        behind: u64,
        /// The configured limit.
        max_lag: u64,
    },
    /// The active's published position is too old to judge the lag by.
    PositionStale {
        /// Its age, in milliseconds.
        age_ms: u64,
        /// The configured limit.
        max_age_ms: u64,
    },
    /// The lag gate applies, but this node's master's state could not be read: how far behind
    /// it is is unknown.
    PositionUnknown,
    /// The active's published position has not been seen to change since this agent started:
    /// its age is unknown.
    PositionUnconfirmed,
    /// Anti-flap: the active changed too recently.
    AntiFlap {
        /// Milliseconds left.
        left_ms: u64,
    },
    /// Maintenance mode.
    Paused,
    /// The master is not healthy.
    Unhealthy {
        /// The health verdict.
        reason: String,
    },
    /// The node is tagged never to be promoted.
    Nofailover,
    /// An operator drained the node (`referee admin drain`).
    Drained {
        /// Who, and why.
        by: String,
    },
    /// Holding the lock, the previous active is still being fenced (or the holder still waits
    /// for what it must know first).
    FencingPending,
    /// Another candidate ranks higher and its head start has not run out.
    OutRanked {
        /// The best candidate.
        by: String,
        /// This node's rank (0 = best).
        rank: usize,
        /// Milliseconds left before this node contends anyway.
        left_ms: u64,
    },
    /// The last active is in another zone and `cross_zone: deny`.
    CrossZoneDenied {
        /// This node's zone.
        zone: String,
        /// The last active's zone.
        active_zone: String,
    },
    /// Out of the election a while after a failed promotion (or a refused failback).
    BackingOff {
        /// Milliseconds left.
        left_ms: u64,
    },
    /// This node confirmed to a failsafe active that it would not contend, or its agent keeps
    /// such a promise from its start (its predecessor may have given one).
    Promised {
        /// The active it promised; `None` for the promise kept from the agent's start.
        to: Option<String>,
    },
    /// A graceful failover to another node is under way (its handover record is in the
    /// coordinator): the lock the active freed is left to that node for a bounded time.
    HandoverPending {
        /// The node the failover is for.
        to: String,
        /// Milliseconds left before this node contends anyway.
        left_ms: u64,
    },
    /// The coordinator cannot be read, or the session is not connected.
    CoordinatorUnavailable,
    /// The session timeout the coordinator granted leaves a lease no promotion fits in.
    LeaseTooShort {
        /// The lease each answered request buys, in milliseconds.
        lease_ms: u64,
        /// How long a promotion may take (with the pre_promote hook), in milliseconds.
        promote_ms: u64,
    },
}

impl Blocker {
    /// Every blocker name, in a fixed order (one gauge each).
    pub const NAMES: [&'static str; 18] = [
        "lease_not_expired",
        "lagging",
        "position_stale",
        "position_unknown",
        "position_unconfirmed",
        "anti_flap",
        "paused",
        "unhealthy",
        "nofailover",
        "drained",
        "fencing_pending",
        "out_ranked",
        "cross_zone_denied",
        "backing_off",
        "promised",
        "handover_pending",
        "coordinator_unavailable",
        "lease_too_short",
    ];

    /// The blocker's name (its gauge label).
    pub fn name(&self) -> &'static str {
        match self {
            Blocker::LeaseNotExpired { .. } => "lease_not_expired",
            Blocker::Lagging { .. } => "lagging",
            Blocker::PositionStale { .. } => "position_stale",
            Blocker::PositionUnknown => "position_unknown",
            Blocker::PositionUnconfirmed => "position_unconfirmed",
            Blocker::AntiFlap { .. } => "anti_flap",
            Blocker::Paused => "paused",
            Blocker::Unhealthy { .. } => "unhealthy",
            Blocker::Nofailover => "nofailover",
            Blocker::Drained { .. } => "drained",
            Blocker::FencingPending => "fencing_pending",
            Blocker::OutRanked { .. } => "out_ranked",
            Blocker::CrossZoneDenied { .. } => "cross_zone_denied",
            Blocker::BackingOff { .. } => "backing_off",
            Blocker::Promised { .. } => "promised",
            Blocker::HandoverPending { .. } => "handover_pending",
            Blocker::CoordinatorUnavailable => "coordinator_unavailable",
            Blocker::LeaseTooShort { .. } => "lease_too_short",
        }
    }
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocker::LeaseNotExpired { holder } => write!(f, "{holder} is active and its lease has not expired"),
            Blocker::Lagging { behind, max_lag } => write!(f, "lagging by {behind} (max_lag {max_lag})"),
            Blocker::PositionStale { age_ms, max_age_ms } => {
                write!(f, "the active's published position is {age_ms} ms old (limit {max_age_ms} ms)")
            }
            Blocker::PositionUnknown => {
                f.write_str("the master's state could not be read, so how far behind the active it is is unknown")
            }
            Blocker::PositionUnconfirmed => f.write_str(
                "the active's published position has not changed since this agent started, so its age is unknown",
            ),
            Blocker::AntiFlap { left_ms } => write!(f, "anti-flap for {left_ms} ms more"),
            Blocker::Paused => f.write_str("paused"),
            Blocker::Unhealthy { reason } => write!(f, "unhealthy: {reason}"),
            Blocker::Nofailover => f.write_str("nofailover"),
            Blocker::Drained { by } => write!(f, "drained by {by}; `referee admin undrain` ends it"),
            Blocker::FencingPending => f.write_str("fencing pending"),
            Blocker::OutRanked { by, rank, left_ms } => {
                write!(f, "{by} ranks higher (this node is rank {rank}; contends in {left_ms} ms)")
            }
            Blocker::CrossZoneDenied { zone, active_zone } => {
                write!(f, "cross-zone denied ({zone}, the last active was in {active_zone})")
            }
            Blocker::BackingOff { left_ms } => write!(f, "backing off for {left_ms} ms more"),
            Blocker::Promised { to: Some(to) } => write!(f, "promised {to} (failsafe) not to contend"),
            Blocker::Promised { to: None } => f.write_str(
                "may have promised a failsafe active not to contend before this agent started (failsafe.ttl_ms from \
                 its start)",
            ),
            Blocker::HandoverPending { to, left_ms } => {
                write!(f, "a failover to {to} is under way: the lock is left to it for {left_ms} ms more")
            }
            Blocker::CoordinatorUnavailable => f.write_str("coordinator unavailable"),
            Blocker::LeaseTooShort { lease_ms, promote_ms } => write!(
                f,
                "the granted session timeout buys a lease of {lease_ms} ms, which no promotion ({promote_ms} ms) fits \
                 in: let the coordinator grant coordinator.session_timeout_ms"
            ),
        }
    }
}

/// How far `own` is behind `published`; 0 when it is level or ahead.
pub fn lag(own: Position, published: Position) -> u64 {
    published.0.saturating_sub(own.0)
}

/// The automatic-takeover gates that do not depend on other candidates, in order: an
/// operator's drain, the `nofailover` tag, the lag gate (with the staleness bound; a master
/// whose state was not read is held back, one that reports no position is not gated), the
/// zone rule. An operator's
/// failover skips the zone rule; `allow_data_loss` (an operator's explicit override) skips the
/// lag gate. `None`: nothing here stops this node.
pub fn gate(
    own: &OwnCandidacy,
    published: Option<&PublishedView>,
    policy: &CandidacyPolicy,
    now: BootInstant,
    operator_failover: bool,
    allow_data_loss: bool,
) -> Option<Blocker> {
    if let Some(by) = &own.drained {
        return Some(Blocker::Drained { by: by.clone() });
    }
    if own.nofailover {
        return Some(Blocker::Nofailover);
    }
    if let (Some(max_lag), Some(p), false) = (policy.max_lag, published, allow_data_loss) {
        // A master that reports no position is not gated (it cannot be); one whose state was
        // not read this cycle may be any distance behind.
        let own_pos = match own.position {
            Some(pos) => Some(pos),
            None if own.state_unread => return Some(Blocker::PositionUnknown),
            None => None,
        };
        if let Some(own_pos) = own_pos {
            if !p.renewed {
                return Some(Blocker::PositionUnconfirmed);
            }
            let age = now.saturating_since(p.changed_at);
            if age > policy.position_max_age {
                return Some(Blocker::PositionStale {
                    age_ms: millis(age),
                    max_age_ms: millis(policy.position_max_age),
                });
            }
            let behind = lag(own_pos, p.record.position);
            if behind > max_lag {
                return Some(Blocker::Lagging { behind, max_lag });
            }
        }
    }
    if policy.cross_zone == CrossZone::Deny && !operator_failover {
        if let (Some(zone), Some(active_zone)) = (&own.zone, published.and_then(|p| p.record.zone.as_ref())) {
            if zone != active_zone {
                return Some(Blocker::CrossZoneDenied { zone: zone.clone(), active_zone: active_zone.clone() });
            }
        }
    }
    None
}

/// The ranking order: the more caught-up first (an unknown position last), then the higher
/// priority, then the smaller node id, so every node computes the same order.
pub fn compare(a: &Candidacy, b: &Candidacy) -> Ordering {
    b.position.cmp(&a.position).then_with(|| b.priority.cmp(&a.priority)).then_with(|| a.node_id.cmp(&b.node_id))
}

/// The eligible candidates, this node included, best first. Another node's entry for this
/// node id is replaced by `me`.
pub fn ranking(me: &Candidacy, others: &[Candidacy]) -> Vec<Candidacy> {
    let mut all: Vec<Candidacy> = others.iter().filter(|c| c.eligible && c.node_id != me.node_id).cloned().collect();
    all.push(me.clone());
    all.sort_by(compare);
    all
}

/// Where this node stands: `None` if it may contend now (no eligible candidate is better, or
/// their head start has run out), or the `OutRanked` blocker with what is left.
///
/// The wait counts only candidates strictly better by position or priority: equally good
/// candidates (a pair without positions, say) race for the lock at once as they always did,
/// and the lock alone decides between them.
///
/// `free_since` is when this agent first saw the lock free; without it (not seen free yet) the
/// full wait applies.
pub fn rank_wait(
    me: &Candidacy,
    others: &[Candidacy],
    policy: &CandidacyPolicy,
    free_since: Option<BootInstant>,
    now: BootInstant,
) -> Option<Blocker> {
    let order = ranking(me, others);
    let rank = order.iter().filter(|c| better(c, me)).count();
    if rank == 0 {
        return None;
    }
    let wait = policy.rank_delay.saturating_mul(u32::try_from(rank).unwrap_or(u32::MAX));
    let free_for = free_since.map_or(Duration::ZERO, |t| now.saturating_since(t));
    (free_for < wait).then(|| Blocker::OutRanked {
        by: order[0].node_id.clone(),
        rank,
        left_ms: millis(wait - free_for),
    })
}

/// Whether `a` ranks above `b` by more than the tie-break.
fn better(a: &Candidacy, b: &Candidacy) -> bool {
    (a.position, a.priority) > (b.position, b.priority)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> BootInstant {
        BootInstant::from_origin(Duration::from_secs(100))
    }

    fn cand(node: &str, position: Option<u64>, priority: u32) -> Candidacy {
        Candidacy { node_id: node.into(), position: position.map(Position), priority, zone: None, eligible: true }
    }

    fn published(position: u64, zone: Option<&str>, age: Duration) -> PublishedView {
        PublishedView {
            record: ActivePosition {
                node_id: "a".into(),
                zone: zone.map(str::to_string),
                position: Position(position),
                token: FencingToken(5),
            },
            changed_at: now() - age,
            renewed: true,
        }
    }

    fn policy() -> CandidacyPolicy {
        CandidacyPolicy {
            max_lag: Some(100),
            position_max_age: Duration::from_secs(10),
            cross_zone: CrossZone::Allow,
            rank_delay: Duration::from_secs(2),
        }
    }

    fn own(position: Option<u64>) -> OwnCandidacy {
        OwnCandidacy { position: position.map(Position), priority: 1, ..Default::default() }
    }

    #[test]
    fn ranking_orders_by_position_then_priority_then_node_id() {
        // (candidates, expected order)
        let table: Vec<(Vec<Candidacy>, Vec<&str>)> = vec![
            (vec![cand("b", Some(10), 1), cand("c", Some(20), 1)], vec!["c", "b"]),
            (vec![cand("b", Some(20), 1), cand("c", Some(20), 5)], vec!["c", "b"]),
            (vec![cand("c", Some(20), 5), cand("b", Some(20), 5)], vec!["b", "c"]),
            // Position beats priority.
            (vec![cand("b", Some(19), 9), cand("c", Some(20), 1)], vec!["c", "b"]),
            // Unknown position ranks after every known one, whatever its priority.
            (vec![cand("b", None, 9), cand("c", Some(0), 1)], vec!["c", "b"]),
            (vec![cand("c", None, 1), cand("b", None, 1)], vec!["b", "c"]),
        ];
        for (cands, expected) in table {
            let mut sorted = cands.clone();
            sorted.sort_by(compare);
            let names: Vec<&str> = sorted.iter().map(|c| c.node_id.as_str()).collect();
            assert_eq!(names, expected, "{cands:?}");
        }
    }

    #[test]
    fn only_eligible_candidates_rank_and_our_own_entry_is_ours() {
        let me = cand("b", Some(10), 1);
        let mut c = cand("c", Some(50), 1);
        c.eligible = false;
        let stale_me = cand("b", Some(99), 1);
        let order = ranking(&me, &[c, stale_me, cand("d", Some(5), 1)]);
        let names: Vec<(&str, Option<Position>)> = order.iter().map(|c| (c.node_id.as_str(), c.position)).collect();
        assert_eq!(names, vec![("b", Some(Position(10))), ("d", Some(Position(5)))]);
    }

    #[test]
    fn a_lower_rank_waits_its_bounded_delay_then_contends() {
        let p = policy();
        let me = cand("c", Some(10), 1);
        let others = [cand("a", Some(30), 1), cand("b", Some(20), 1)];
        // Rank 2: waits 2 × 2 s from when the lock was seen free.
        let table: Vec<(Option<Duration>, Option<Blocker>)> = vec![
            (None, Some(Blocker::OutRanked { by: "a".into(), rank: 2, left_ms: 4000 })),
            (Some(Duration::ZERO), Some(Blocker::OutRanked { by: "a".into(), rank: 2, left_ms: 4000 })),
            (Some(Duration::from_millis(3500)), Some(Blocker::OutRanked { by: "a".into(), rank: 2, left_ms: 500 })),
            (Some(Duration::from_secs(4)), None),
            (Some(Duration::from_secs(60)), None),
        ];
        for (free_for, expected) in table {
            let since = free_for.map(|d| now() - d);
            assert_eq!(rank_wait(&me, &others, &p, since, now()), expected, "free for {free_for:?}");
        }
        // The best candidate never waits.
        assert_eq!(rank_wait(&cand("a", Some(30), 1), &others[1..], &p, None, now()), None);
        // Nobody else eligible: no wait at all.
        assert_eq!(rank_wait(&me, &[], &p, None, now()), None);
        // Equally good candidates race at once: the tie-break orders, it does not delay.
        assert_eq!(rank_wait(&cand("b", Some(30), 1), &[cand("a", Some(30), 1)], &p, None, now()), None);
        assert_eq!(rank_wait(&cand("b", None, 1), &[cand("a", None, 1)], &p, None, now()), None);
        // Same position, higher priority: a head start.
        assert_eq!(
            rank_wait(&cand("a", Some(30), 1), &[cand("b", Some(30), 2)], &p, None, now()),
            Some(Blocker::OutRanked { by: "b".into(), rank: 1, left_ms: 2000 })
        );
    }

    /// own, published, policy, operator failover, allow data loss, expected.
    type GateCase<'a> = (OwnCandidacy, Option<&'a PublishedView>, CandidacyPolicy, bool, bool, Option<Blocker>);

    #[test]
    fn every_gate_blocker() {
        let p = policy();
        let fresh = published(1000, None, Duration::from_secs(1));
        // (own, published, policy, operator failover, allow data loss, expected)
        let deny = CandidacyPolicy { cross_zone: CrossZone::Deny, ..p };
        let in_zone = |z: &str| OwnCandidacy { zone: Some(z.into()), ..own(Some(1000)) };
        let zoned = published(1000, Some("east"), Duration::from_secs(1));
        let nofail = OwnCandidacy { nofailover: true, ..own(Some(1000)) };
        let drained = OwnCandidacy { drained: Some("ops (kernel update)".into()), nofailover: true, ..own(Some(1000)) };
        let no_gate = CandidacyPolicy { max_lag: None, ..p };
        let old = published(1000, None, Duration::from_secs(11));
        let unread = OwnCandidacy { state_unread: true, ..own(None) };
        let unconfirmed = PublishedView { renewed: false, ..fresh.clone() };
        let table: Vec<GateCase> = vec![
            (own(Some(1000)), Some(&fresh), p, false, false, None),
            (own(Some(900)), Some(&fresh), p, false, false, None),
            (own(Some(899)), Some(&fresh), p, false, false, Some(Blocker::Lagging { behind: 101, max_lag: 100 })),
            // The operator's explicit override lifts the lag gate, not `nofailover`.
            (own(Some(899)), Some(&fresh), p, true, true, None),
            (nofail.clone(), Some(&fresh), p, true, true, Some(Blocker::Nofailover)),
            // A drain is named before the tag, and no override lifts it either.
            (drained, Some(&fresh), p, true, true, Some(Blocker::Drained { by: "ops (kernel update)".into() })),
            // Ahead of the published position (it moved on since): not lagging.
            (own(Some(2000)), Some(&fresh), p, false, false, None),
            // Read once since this agent started and never seen to change: of unknown age.
            (own(Some(1000)), Some(&unconfirmed), p, false, false, Some(Blocker::PositionUnconfirmed)),
            (own(Some(1000)), Some(&unconfirmed), p, true, true, None),
            (own(Some(1000)), Some(&unconfirmed), no_gate, false, false, None),
            // Unknown positions on either side: the gate does not apply (the pair's old behaviour).
            (own(None), Some(&fresh), p, false, false, None),
            // But a master whose state could not be read this cycle has a position, unknown:
            // a transient failure does not let a lagging standby past the gate.
            (unread.clone(), Some(&fresh), p, false, false, Some(Blocker::PositionUnknown)),
            (unread.clone(), Some(&fresh), p, true, true, None),
            (unread.clone(), None, p, false, false, None),
            (unread, Some(&fresh), no_gate, false, false, None),
            (own(Some(0)), None, p, false, false, None),
            (own(Some(0)), Some(&fresh), no_gate, false, false, None),
            (
                own(Some(1000)),
                Some(&old),
                p,
                false,
                false,
                Some(Blocker::PositionStale { age_ms: 11_000, max_age_ms: 10_000 }),
            ),
            (
                in_zone("west"),
                Some(&zoned),
                deny,
                false,
                false,
                Some(Blocker::CrossZoneDenied { zone: "west".into(), active_zone: "east".into() }),
            ),
            (in_zone("west"), Some(&zoned), deny, true, false, None),
            (in_zone("east"), Some(&zoned), deny, false, false, None),
            (in_zone("west"), Some(&zoned), p, false, false, None),
            // The last active's zone unknown: nothing to deny by.
            (in_zone("west"), Some(&fresh), deny, false, false, None),
        ];
        for (own, published, policy, operator, allow, expected) in table {
            assert_eq!(
                gate(&own, published, &policy, now(), operator, allow),
                expected,
                "{own:?} against {published:?}, operator {operator}, allow {allow}"
            );
        }
    }

    #[test]
    fn blocker_names_cover_every_variant_and_read_as_sentences() {
        let all = [
            Blocker::LeaseNotExpired { holder: "a".into() },
            Blocker::Lagging { behind: 7, max_lag: 5 },
            Blocker::PositionStale { age_ms: 2, max_age_ms: 1 },
            Blocker::PositionUnknown,
            Blocker::PositionUnconfirmed,
            Blocker::AntiFlap { left_ms: 3 },
            Blocker::Paused,
            Blocker::Unhealthy { reason: "x".into() },
            Blocker::Nofailover,
            Blocker::Drained { by: "ops".into() },
            Blocker::FencingPending,
            Blocker::OutRanked { by: "a".into(), rank: 1, left_ms: 9 },
            Blocker::CrossZoneDenied { zone: "w".into(), active_zone: "e".into() },
            Blocker::BackingOff { left_ms: 1 },
            Blocker::Promised { to: Some("a".into()) },
            Blocker::HandoverPending { to: "b".into(), left_ms: 4 },
            Blocker::CoordinatorUnavailable,
            Blocker::LeaseTooShort { lease_ms: 1, promote_ms: 2 },
        ];
        let names: Vec<&str> = all.iter().map(Blocker::name).collect();
        assert_eq!(names, Blocker::NAMES);
        assert_eq!(Blocker::Lagging { behind: 7, max_lag: 5 }.to_string(), "lagging by 7 (max_lag 5)");
        let json = serde_json::to_value(Blocker::Lagging { behind: 7, max_lag: 5 }).unwrap();
        assert_eq!(json, serde_json::json!({"blocker": "lagging", "behind": 7, "max_lag": 5}));
    }
}
