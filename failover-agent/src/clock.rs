//! The agent's clock: monotonic time that keeps counting while the machine is suspended
//! (`CLOCK_BOOTTIME`).
//!
//! A lease measured on a clock that stops during suspend (`CLOCK_MONOTONIC`, std's `Instant`)
//! would outlive itself after a resume: the agent would believe it still holds a lease the
//! coordinator has long since given away. Every deadline that guards the active role is
//! therefore taken on this clock.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point on the boot-time clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct BootInstant(Duration);

impl BootInstant {
    /// Now. Falls back to `CLOCK_MONOTONIC` only where `CLOCK_BOOTTIME` does not exist.
    pub fn now() -> Self {
        use nix::time::{clock_gettime, ClockId};
        let ts = clock_gettime(ClockId::CLOCK_BOOTTIME)
            .or_else(|_| clock_gettime(ClockId::CLOCK_MONOTONIC))
            .expect("the kernel provides a monotonic clock");
        BootInstant(Duration::new(ts.tv_sec() as u64, ts.tv_nsec() as u32))
    }

    /// A point `d` after the clock's origin (for tests of pure code).
    pub fn from_origin(d: Duration) -> Self {
        BootInstant(d)
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: BootInstant) -> Duration {
        self.0.saturating_sub(earlier.0)
    }

    /// Time elapsed since this instant.
    pub fn elapsed(self) -> Duration {
        BootInstant::now().saturating_since(self)
    }
}

impl Add<Duration> for BootInstant {
    type Output = BootInstant;
    fn add(self, d: Duration) -> BootInstant {
        BootInstant(self.0 + d)
    }
}

impl Sub<Duration> for BootInstant {
    type Output = BootInstant;
    fn sub(self, d: Duration) -> BootInstant {
        BootInstant(self.0.saturating_sub(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_forward_and_does_arithmetic() {
        let a = BootInstant::now();
        let b = BootInstant::now();
        assert!(b >= a);
        let t = BootInstant::from_origin(Duration::from_secs(10));
        assert_eq!((t + Duration::from_secs(2)).saturating_since(t), Duration::from_secs(2));
        assert_eq!(t.saturating_since(t + Duration::from_secs(1)), Duration::ZERO);
        assert_eq!(t - Duration::from_secs(20), BootInstant::default());
    }
}
