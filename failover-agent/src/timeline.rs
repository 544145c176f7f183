//! The failover timeline: the instants one failover passed through, and the phases between them.
//!
//! Each agent records the instants it sees ([`Mark`]s, on the wall clock so that marks from the
//! old active's agent, the new active's agent and a benchmark on the same host line up): the old
//! agent from its master's first failed check to the lock's release (or, cut off from the
//! coordinator, the end of its lease, `lease_ended`), the new one from the cycle that found the
//! lock free to its master's promotion. `/history` serves them with the role
//! change they led to; [`phases`] turns any set of marks into consecutive phases, so the phases
//! cover the whole span with no gap and sum to its total by construction.
//!
//! ```text
//!   fault ─▶ first_failed_check ─▶ … ─▶ lock_released ─▶ lock_seen_free ─▶ lock_acquired
//!         ─▶ token_base_set ─▶ fence … ─▶ breadcrumb_written ─▶ promoted ─▶ first_write
//! ```
//!
//! Marks taken on different hosts are only as comparable as the hosts' clocks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::clock::BootInstant;

/// One instant of a failover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mark {
    /// What happened (`lock_acquired`, `fenced db1 by kill`, ...).
    pub event: String,
    /// When, in µs since the Unix epoch.
    pub at_us: i64,
}

impl Mark {
    /// A mark at a wall-clock time in µs since the Unix epoch.
    pub fn at(event: impl Into<String>, at_us: i64) -> Mark {
        Mark { event: event.into(), at_us }
    }

    /// A mark now.
    pub fn now(event: impl Into<String>) -> Mark {
        Mark::at(event, wall_us(SystemTime::now()))
    }

    /// A mark at a boot-clock instant in the past (measured by the boot clock, placed on the
    /// wall clock by the distance from now).
    pub fn at_boot(event: impl Into<String>, at: BootInstant) -> Mark {
        let back = BootInstant::now().saturating_since(at);
        Mark::at(event, wall_us(SystemTime::now()) - back.as_micros() as i64)
    }
}

/// µs since the Unix epoch (0 for a clock set before it).
pub fn wall_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64)
}

/// The time between two consecutive marks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phase {
    /// The mark it starts at.
    pub from: String,
    /// The mark it ends at; the phase is named after it.
    pub to: String,
    /// How long it took.
    pub duration: Duration,
}

/// The phases between consecutive marks in time order (marks at the same instant keep their
/// given order). Their durations sum to the time from the first mark to the last.
pub fn phases(marks: &[Mark]) -> Vec<Phase> {
    let mut sorted: Vec<&Mark> = marks.iter().collect();
    sorted.sort_by_key(|m| m.at_us);
    sorted
        .windows(2)
        .map(|w| Phase {
            from: w[0].event.clone(),
            to: w[1].event.clone(),
            duration: Duration::from_micros(w[1].at_us.saturating_sub(w[0].at_us).max(0) as u64),
        })
        .collect()
}

/// The most marks one recording keeps.
pub const MARKS_KEPT: usize = 64;

/// The marks one agent collects through a failover.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recorder {
    marks: Vec<Mark>,
}

impl Recorder {
    /// Starts over with these marks (a new failover begins).
    pub fn restart(&mut self, marks: impl IntoIterator<Item = Mark>) {
        self.marks = marks.into_iter().collect();
    }

    /// Adds a mark, if a failover is being recorded (an idle agent's steps are not part of one).
    pub fn mark(&mut self, mark: Mark) {
        // Bounded: a recording that never ends in a role change is dropped at the next start.
        if !self.marks.is_empty() && self.marks.len() < MARKS_KEPT {
            self.marks.push(mark);
        }
    }

    /// Whether a failover is being recorded.
    pub fn recording(&self) -> bool {
        !self.marks.is_empty()
    }

    /// Hands the marks over (to a role change in the history) and stops recording.
    pub fn take(&mut self) -> Vec<Mark> {
        std::mem::take(&mut self.marks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_cover_the_span_without_gaps_in_time_order() {
        // Two agents' marks, interleaved in time, plus a benchmark's.
        let marks = [
            Mark::at("fault", 1_000),
            Mark::at("lock_seen_free", 61_000),
            Mark::at("first_failed_check", 41_000),
            Mark::at("lock_released", 60_000),
            Mark::at("promoted", 90_500),
            Mark::at("first_write", 140_000),
        ];
        let p = phases(&marks);
        let names: Vec<(&str, &str, u64)> =
            p.iter().map(|p| (p.from.as_str(), p.to.as_str(), p.duration.as_micros() as u64)).collect();
        assert_eq!(
            names,
            [
                ("fault", "first_failed_check", 40_000),
                ("first_failed_check", "lock_released", 19_000),
                ("lock_released", "lock_seen_free", 1_000),
                ("lock_seen_free", "promoted", 29_500),
                ("promoted", "first_write", 49_500),
            ]
        );
        let total: Duration = p.iter().map(|p| p.duration).sum();
        assert_eq!(total, Duration::from_micros(139_000));
        assert!(phases(&marks[..1]).is_empty());
    }

    #[test]
    fn the_recorder_only_records_a_started_failover() {
        let mut r = Recorder::default();
        r.mark(Mark::at("promoted", 5));
        assert!(!r.recording() && r.take().is_empty());
        r.restart([Mark::at("lock_seen_free", 1)]);
        r.mark(Mark::at("lock_acquired", 2));
        assert_eq!(r.take(), [Mark::at("lock_seen_free", 1), Mark::at("lock_acquired", 2)]);
        assert!(!r.recording());
    }
}
