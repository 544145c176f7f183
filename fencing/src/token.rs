//! The fencing token: the number that orders holders of the active role.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A fencing token: a number that strictly increases with every new holder of the active role.
///
/// The agent derives it from the czxid of the election lock znode it created plus the
/// cluster's token base (which carries the order across a coordinator that lost its data), so
/// a later winner always holds a larger token than any earlier one. Resources and masters that
/// remember the highest token they have seen can refuse anything older, which is what makes a
/// paused or partitioned old active harmless even when no other fencing method could reach it.
///
/// `FencingToken(0)` ([`FencingToken::NONE`]) means "no token": a node that never held the
/// lock. Every real token is greater than it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FencingToken(pub u64);

impl FencingToken {
    /// The "no token" value, lower than every token a lock holder can have.
    pub const NONE: FencingToken = FencingToken(0);

    /// The highest token ever handed out (`i64::MAX / 2`): a czxid is a positive `i64` with
    /// the leader epoch in its high 32 bits, so a genuine token stays far below it, and the sum
    /// of two numbers under it never overflows a `u64`. A master refuses anything above it.
    pub const MAX: FencingToken = FencingToken((i64::MAX as u64) / 2);

    /// Whether this is [`FencingToken::NONE`].
    pub fn is_none(self) -> bool {
        self == Self::NONE
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_a_bare_number() {
        assert_eq!(serde_json::to_string(&FencingToken(42)).unwrap(), "42");
        let back: FencingToken = serde_json::from_str("42").unwrap();
        assert_eq!(back, FencingToken(42));
    }

    #[test]
    fn orders_by_value_and_none_is_lowest() {
        assert!(FencingToken::NONE < FencingToken(1));
        assert!(FencingToken(33) < FencingToken(34));
        assert!(FencingToken::NONE.is_none());
        assert_eq!(FencingToken(7).to_string(), "7");
    }
}
