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

/// The highest token the agent uses or accepts from a trusted source.
pub const TOKEN_LIMIT: u64 = (i64::MAX as u64) / 2;

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

/// The token base that puts `czxid + base` above `floor`, never below `current`; checked.
pub fn base_above(czxid: u64, floor: FencingToken, current: Option<u64>) -> Result<u64, TokenError> {
    check(TokenSource::History, floor)?;
    let next = floor.0.checked_add(1).ok_or(TokenError::Overflow { what: "the token above the highest seen" })?;
    let needed = next.saturating_sub(czxid);
    let base = current.map_or(needed, |b| b.max(needed));
    token_of(czxid, base)?;
    Ok(base)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
