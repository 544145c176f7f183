//! The rules for fencing tokens taken from elsewhere, and the checked arithmetic on them.
//!
//! A token is the lock's czxid plus the cluster's token base. Tokens reach the agent from the
//! coordinator (lock, breadcrumb, token base), from its own master, and from the other masters'
//! unauthenticated `GET /ha/state`. A single absurd value must neither wrap an addition nor raise
//! the token base for good, after which no node could ever be promoted. So:
//!
//! - **The bound.** No token above [`TOKEN_LIMIT`] (`i64::MAX / 2`, about 4.6 × 10¹⁸) is ever
//!   used or handed out. A czxid is a positive `i64`; ZooKeeper puts the leader epoch in its
//!   high 32 bits, so even after 2³⁰ leader elections a genuine czxid stays below the bound,
//!   and a base computed from genuine tokens stays below it too. Half the range is left so
//!   that `czxid + base` of two in-range numbers never overflows a `u64`.
//! - **A peer's master** (`/ha/state`, anyone on the network can answer it) reporting a token
//!   above the bound is ignored, with a warning: it cannot block the cluster. A genuine token
//!   is never that high, and the new active's fence of that master fails if the master really
//!   holds a higher token, so nothing is promoted past it.
//! - **The coordinator and the agent's own master** are trusted sources (the former is
//!   protected by its ACL, the latter is local): a token above the bound from them refuses the
//!   promotion with the reason, because using a lower token could let that token's holder keep
//!   writing. An operator must repair the record.
//! - **All arithmetic is checked.** `czxid + base` and `floor + 1` that would overflow, or land
//!   above the bound, are errors that refuse the promotion, never a wrap.

use std::fmt;

use referee_fencing::FencingToken;

use crate::clock::BootInstant;
use crate::model::{BreadcrumbView, LockView, MasterStatus, SessionView};

/// The highest token the agent uses or accepts from a trusted source.
pub const TOKEN_LIMIT: u64 = FencingToken::MAX.0;

/// The least room a raised token base leaves between the token it makes and [`TOKEN_LIMIT`]
/// (2⁴⁰, a thousand billion acquisitions). A token just under the limit is no more genuine
/// than one above it: a base raised to clear it would make the next tokens cross the limit,
/// after which no node could be promoted, and the fence would have handed it to the other
/// masters, so repairing one record would not undo it. Such a floor refuses the raise instead,
/// naming the value.
pub const HEADROOM: u64 = 1 << 40;

/// Where a token came from, for the reason given when it is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// The lock znode (its czxid plus the base).
    Lock,
    /// The breadcrumb.
    Breadcrumb,
    /// The token base record.
    TokenBase,
    /// This node's own master.
    OwnMaster,
    /// Another node's master, over its unauthenticated HA endpoint.
    PeerMaster,
    /// What this agent remembered from earlier observations.
    History,
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenSource::Lock => "the lock",
            TokenSource::Breadcrumb => "the breadcrumb",
            TokenSource::TokenBase => "the token base",
            TokenSource::OwnMaster => "this node's master",
            TokenSource::PeerMaster => "a peer's master",
            TokenSource::History => "the tokens seen before",
        })
    }
}

/// Why a token cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenError {
    /// A token above [`TOKEN_LIMIT`].
    AboveLimit {
        /// Where it came from.
        source: TokenSource,
        /// The value.
        token: u64,
    },
    /// An addition that would overflow or land above [`TOKEN_LIMIT`].
    Overflow {
        /// What was being computed.
        what: &'static str,
    },
    /// A token base raised above `floor` would leave less than [`HEADROOM`].
    NoHeadroom {
        /// The highest token found.
        floor: u64,
    },
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::AboveLimit { source, token } => write!(
                f,
                "{source} holds token {token}, above the highest usable token {TOKEN_LIMIT}; repair that record \
                 (a genuine token is never that high)"
            ),
            TokenError::Overflow { what } => {
                write!(f, "{what} would exceed the highest usable token {TOKEN_LIMIT}; repair the token base")
            }
            TokenError::NoHeadroom { floor } => write!(
                f,
                "the highest token found, {floor}, is within 2^40 of the highest usable token {TOKEN_LIMIT}: a token \
                 base raised above it would stop every promotion soon after, and a genuine token is never that high; \
                 find the master or record holding it (each master's GET /ha/state, the breadcrumb), set it back to \
                 a genuine token, and restart this agent, which remembers it"
            ),
        }
    }
}

/// Whether `token` may be used at all.
pub fn within_limit(token: FencingToken) -> bool {
    token.0 <= TOKEN_LIMIT
}

/// Checks a token from a trusted source (the coordinator, this node's master).
pub fn check(source: TokenSource, token: FencingToken) -> Result<FencingToken, TokenError> {
    if within_limit(token) {
        Ok(token)
    } else {
        Err(TokenError::AboveLimit { source, token: token.0 })
    }
}

/// A peer master's token as evidence: `None` (ignored) when it is above the bound.
pub fn from_peer(token: FencingToken) -> Option<FencingToken> {
    within_limit(token).then_some(token)
}

/// `czxid + base`, checked.
pub fn token_of(czxid: u64, base: u64) -> Result<FencingToken, TokenError> {
    czxid
        .checked_add(base)
        .filter(|t| *t <= TOKEN_LIMIT)
        .map(FencingToken)
        .ok_or(TokenError::Overflow { what: "the lock's czxid plus the token base" })
}

/// The token base that puts `czxid + base` above `floor`, never below `current`; checked, and
/// leaving at least [`HEADROOM`] below [`TOKEN_LIMIT`].
pub fn base_above(czxid: u64, floor: FencingToken, current: Option<u64>) -> Result<u64, TokenError> {
    check(TokenSource::History, floor)?;
    let next = floor.0.checked_add(1).ok_or(TokenError::Overflow { what: "the token above the highest seen" })?;
    let needed = next.saturating_sub(czxid);
    let base = current.map_or(needed, |b| b.max(needed));
    if token_of(czxid, base)?.0 > TOKEN_LIMIT - HEADROOM {
        return Err(TokenError::NoHeadroom { floor: floor.0 });
    }
    Ok(base)
}

/// What the agent remembers of tokens between cycles, across coordinator sessions: the
/// highest token seen from any acquisition other than the one held, the lock this session
/// holds, and when the active last changed (for anti-flap).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenHistory {
    /// The highest usable token seen from another acquisition: other holders', breadcrumbs',
    /// masters', and this agent's own finished ones. A coordinator that lost its data cannot
    /// hand out a token below it.
    pub highest_seen: FencingToken,
    /// The lock this session holds (token, version), as last read; kept while the lock cannot
    /// be read and the session (or, with failsafe, the extension) may still hold it.
    pub held: Option<(FencingToken, i32)>,
    /// The lock token last seen, whoever held it.
    pub last_lock_token: Option<FencingToken>,
    /// When that token last changed.
    pub last_failover_at: Option<BootInstant>,
}

impl TokenHistory {
    /// Remembers a token from another acquisition; one above the bound is not remembered (it is
    /// refused where it is found, and remembered it would block every later promotion). Returns
    /// whether it was taken.
    pub fn saw(&mut self, token: FencingToken) -> bool {
        if within_limit(token) {
            self.highest_seen = self.highest_seen.max(token);
        }
        within_limit(token)
    }

    /// The lock this session held is gone (or its token changed): it becomes history.
    pub fn forget_held(&mut self) {
        if let Some((token, _)) = self.held.take() {
            self.saw(token);
        }
    }

    /// Takes in one cycle's reads. `keep_unread` says an unreadable lock may still be ours
    /// even without a live session (failsafe: only a lock read that answers says it is gone).
    /// Returns the tokens ignored for being above the bound.
    pub fn observe(
        &mut self,
        lock: &LockView,
        breadcrumb: &BreadcrumbView,
        master: Option<MasterStatus>,
        session: SessionView,
        keep_unread: bool,
        now: BootInstant,
    ) -> Vec<FencingToken> {
        match lock {
            LockView::Ours { token, version } => {
                if self.held.is_some_and(|(t, _)| t != *token) {
                    self.forget_held();
                }
                self.held = Some((*token, *version));
            }
            LockView::Unknown
                if keep_unread
                    || matches!(session, SessionView::Connected { .. } | SessionView::Disconnected { .. }) => {}
            _ => self.forget_held(),
        }
        let held = self.held.map(|(t, _)| t);
        let mut seen = Vec::new();
        if let LockView::Peer { token, .. } | LockView::OursFromOldSession { token } = lock {
            seen.push(*token);
        }
        if let BreadcrumbView::Present { crumb, .. } = breadcrumb {
            if Some(crumb.token) != held {
                seen.push(crumb.token);
            }
        }
        if let Some(m) = master {
            if Some(m.token) != held {
                seen.push(m.token);
            }
        }
        let ignored = seen.into_iter().filter(|t| !self.saw(*t)).collect();
        let holder = match lock {
            LockView::Ours { token, .. } | LockView::Peer { token, .. } | LockView::OursFromOldSession { token } => {
                Some(*token)
            }
            LockView::Free | LockView::Unknown => None,
        };
        if let Some(token) = holder {
            if self.last_lock_token.is_some_and(|t| t != token) {
                self.last_failover_at = Some(now);
            }
            self.last_lock_token = Some(token);
        }
        ignored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Breadcrumb;
    use referee_fencing::{FenceTarget, HaState};
    use std::time::Duration;

    #[test]
    fn history_keeps_the_highest_usable_token_and_the_lock_held() {
        let t = FencingToken;
        let now = BootInstant::from_origin(Duration::from_secs(100));
        let connected = SessionView::Connected { session_id: 7 };
        let crumb = |n: u64| BreadcrumbView::Present {
            crumb: Breadcrumb {
                node_id: "b".into(),
                token: t(n),
                clean: false,
                target: FenceTarget::new("b", "h", 1, t(0)),
            },
            version: 1,
        };
        let standby = |n: u64| Some(MasterStatus { state: HaState::Standby, token: t(n), position: None });
        let mut h = TokenHistory::default();
        // A peer's lock, a breadcrumb and the master all count.
        let peer = LockView::Peer { node_id: "b".into(), token: t(40) };
        assert!(h.observe(&peer, &crumb(38), standby(39), connected, false, now).is_empty());
        assert_eq!(h.highest_seen, t(40));
        // Our own lock's token is not history while we hold it, whoever shows it.
        let ours = LockView::Ours { token: t(45), version: 0 };
        h.observe(&ours, &BreadcrumbView::Missing, standby(45), connected, false, now);
        assert_eq!((h.highest_seen, h.held), (t(40), Some((t(45), 0))));
        assert_eq!(h.last_failover_at, Some(now), "the holder changed from 40 to 45");
        // Unreadable while connected: still held. Gone: history.
        h.observe(&LockView::Unknown, &BreadcrumbView::Unknown, None, connected, false, now);
        assert_eq!(h.held, Some((t(45), 0)));
        h.observe(&LockView::Unknown, &BreadcrumbView::Unknown, None, SessionView::Expired, true, now);
        assert_eq!(h.held, Some((t(45), 0)), "failsafe keeps it until a read answers");
        h.observe(&LockView::Unknown, &BreadcrumbView::Unknown, None, SessionView::Expired, false, now);
        assert_eq!((h.highest_seen, h.held), (t(45), None));
        // A token above the bound is ignored, and said so.
        let ignored = h.observe(&LockView::Free, &crumb(u64::MAX), standby(46), connected, false, now);
        assert_eq!(ignored, vec![t(u64::MAX)]);
        assert_eq!(h.highest_seen, t(46));
    }

    #[test]
    fn tokens_above_the_limit_are_refused_or_ignored() {
        let cases: [(u64, bool); 5] =
            [(0, true), (42, true), (TOKEN_LIMIT, true), (TOKEN_LIMIT + 1, false), (u64::MAX, false)];
        for (token, usable) in cases {
            let t = FencingToken(token);
            assert_eq!(within_limit(t), usable, "{token}");
            assert_eq!(check(TokenSource::Breadcrumb, t).is_ok(), usable, "{token}");
            assert_eq!(from_peer(t), usable.then_some(t), "{token}");
        }
        let e = check(TokenSource::Breadcrumb, FencingToken(u64::MAX)).unwrap_err().to_string();
        assert!(
            e.starts_with("the breadcrumb holds token 18446744073709551615, above the highest usable token"),
            "{e}"
        );
    }

    #[test]
    fn czxid_plus_base_is_checked() {
        assert_eq!(token_of(7, 50), Ok(FencingToken(57)));
        assert_eq!(token_of(1, TOKEN_LIMIT - 1), Ok(FencingToken(TOKEN_LIMIT)));
        assert!(token_of(2, TOKEN_LIMIT - 1).is_err());
        assert!(token_of(u64::MAX, 1).is_err(), "must not wrap");
    }

    #[test]
    fn the_base_is_above_the_floor_and_never_goes_down() {
        // A wiped coordinator: czxid 3, masters saw 100.
        assert_eq!(base_above(3, FencingToken(100), None), Ok(98));
        assert_eq!(token_of(3, 98), Ok(FencingToken(101)));
        // Already high enough: the current base stays.
        assert_eq!(base_above(3, FencingToken(100), Some(500)), Ok(500));
        // A czxid already above the floor needs no base.
        assert_eq!(base_above(200, FencingToken(100), None), Ok(0));
        // A floor at u64::MAX used to wrap `floor + 1` to 0 in release builds.
        let wrapped = base_above(3, FencingToken(u64::MAX), None);
        assert!(matches!(wrapped, Err(TokenError::AboveLimit { .. })), "{wrapped:?}");
        // A floor at the limit leaves no token above it.
        let full = base_above(3, FencingToken(TOKEN_LIMIT), None);
        assert!(matches!(full, Err(TokenError::Overflow { .. })), "{full:?}");
    }

    /// One token planted just under the limit (anyone who reaches a master's HA port can give
    /// it one) used to raise the base so high that the next acquisitions' tokens crossed the
    /// limit: every later promotion refused, for good. The raise is refused instead, naming it.
    #[test]
    fn a_floor_just_under_the_limit_leaves_no_room_and_is_refused_by_value() {
        let planted = FencingToken(TOKEN_LIMIT - 3);
        assert_eq!(base_above(3, planted, None), Err(TokenError::NoHeadroom { floor: planted.0 }));
        let said = TokenError::NoHeadroom { floor: planted.0 }.to_string();
        assert!(said.contains(&planted.0.to_string()) && said.contains("GET /ha/state"), "{said}");
        // The last floor that leaves the whole headroom is taken.
        let last = FencingToken(TOKEN_LIMIT - HEADROOM - 1);
        assert_eq!(base_above(3, last, None).map(|b| b + 3), Ok(TOKEN_LIMIT - HEADROOM));
        assert!(base_above(3, FencingToken(last.0 + 1), None).is_err());
    }
}
