//! The pure decision core of a fence: which method runs next, with what budget, and how
//! method outcomes add up to a level outcome and an overall outcome.
//!
//! No I/O and no clock: the driver ([`crate::Fencer`]) passes the time elapsed since the fence
//! started, runs what [`FencePlan::next`] asks for, and feeds each outcome back through
//! [`FencePlan::record`].
//!
//! Rules, in the order they apply:
//!
//! 1. The race delay (if any) comes first, and counts against the overall deadline.
//! 2. Levels run in order; within a level, methods run one after another. A level fences only
//!    if **all** its methods fence. The first method that does not fence decides the level's
//!    outcome (failed or indeterminate) and the rest of that level is skipped: the level can no
//!    longer fence, and the time is better spent on the next level.
//! 3. The first level that fences ends the fence: [`FenceOutcome::Fenced`].
//! 4. Each method's budget is its own timeout, cut to what is left of the overall deadline.
//!    Once the overall deadline has passed nothing more runs and the outcome is
//!    [`FenceOutcome::Indeterminate`]: levels that never ran might have fenced.
//! 5. When every level has run without fencing, the outcome is [`FenceOutcome::Indeterminate`]
//!    if any level was indeterminate, else [`FenceOutcome::Failed`].
//!
//! Only [`FenceOutcome::Fenced`] permits promotion; the failed/indeterminate split is for the
//! operator (a failed fence means "the target is probably still up", an indeterminate one
//! "we could not tell").

use std::time::Duration;

use crate::outcome::{FenceOutcome, MethodOutcome};

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Wait this long before the first level (the race delay, already cut to the deadline).
    Delay(Duration),
    /// Run method `index` of level `level` with this budget.
    Run {
        /// Level index.
        level: usize,
        /// Method index within the level.
        index: usize,
        /// Time the method may take.
        budget: Duration,
    },
    /// The fence is over.
    Done(FenceOutcome),
}

/// A method as the plan sees it: a name and a timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMethod {
    /// Name for reasons and the fenced outcome.
    pub name: String,
    /// The method's own timeout.
    pub timeout: Duration,
}

/// The state of one fence in progress.
#[derive(Debug, Clone)]
pub struct FencePlan {
    levels: Vec<Vec<PlannedMethod>>,
    overall: Duration,
    delay: Duration,
    delay_taken: bool,
    level: usize,
    index: usize,
    /// One sentence per level that did not fence, for the final reason.
    level_failures: Vec<String>,
    any_indeterminate: bool,
    done: Option<FenceOutcome>,
}

impl FencePlan {
    /// A plan over `levels` (each non-empty) with an overall deadline and a race delay.
    pub fn new(levels: Vec<Vec<PlannedMethod>>, overall: Duration, delay: Duration) -> Self {
        assert!(levels.iter().all(|l| !l.is_empty()), "validated configuration has no empty level");
        let done = levels.is_empty().then(|| FenceOutcome::Failed { reason: "no fencing level is configured".into() });
        FencePlan {
            levels,
            overall,
            delay,
            delay_taken: false,
            level: 0,
            index: 0,
            level_failures: Vec::new(),
            any_indeterminate: false,
            done,
        }
    }

    /// What to do next, `elapsed` after the fence started.
    pub fn next(&mut self, elapsed: Duration) -> Step {
        if let Some(outcome) = &self.done {
            return Step::Done(outcome.clone());
        }
        if !self.delay_taken {
            self.delay_taken = true;
            if !self.delay.is_zero() {
                return Step::Delay(self.delay.min(self.overall.saturating_sub(elapsed)));
            }
        }
        let Some(level) = self.levels.get(self.level) else {
            return self.finish_without_fence();
        };
        let remaining = self.overall.saturating_sub(elapsed);
        if remaining.is_zero() {
            let method = &level[self.index].name;
            let outcome = FenceOutcome::Indeterminate {
                reason: format!(
                    "overall deadline of {} ms reached before level {} method `{}` could run{}",
                    self.overall.as_millis(),
                    self.level,
                    method,
                    self.earlier_failures()
                ),
            };
            self.done = Some(outcome.clone());
            return Step::Done(outcome);
        }
        Step::Run { level: self.level, index: self.index, budget: level[self.index].timeout.min(remaining) }
    }

    /// Records the outcome of the method last returned by [`FencePlan::next`].
    pub fn record(&mut self, outcome: &MethodOutcome) {
        assert!(self.done.is_none() && self.level < self.levels.len(), "record called with no method running");
        let level = &self.levels[self.level];
        match outcome {
            MethodOutcome::Fenced { .. } => {
                self.index += 1;
                if self.index == level.len() {
                    self.done = Some(FenceOutcome::Fenced {
                        level: self.level,
                        methods: level.iter().map(|m| m.name.clone()).collect(),
                    });
                }
                return;
            }
            MethodOutcome::Failed { reason } => {
                self.level_failures
                    .push(format!("level {} method `{}` failed: {reason}", self.level, level[self.index].name));
            }
            MethodOutcome::Indeterminate { reason } => {
                self.any_indeterminate = true;
                self.level_failures
                    .push(format!("level {} method `{}` indeterminate: {reason}", self.level, level[self.index].name));
            }
        }
        // The level cannot fence any more: fall through to the next one.
        self.level += 1;
        self.index = 0;
    }

    fn earlier_failures(&self) -> String {
        if self.level_failures.is_empty() {
            String::new()
        } else {
            format!("; {}", self.level_failures.join("; "))
        }
    }

    fn finish_without_fence(&mut self) -> Step {
        let reason = format!("no level fenced the target; {}", self.level_failures.join("; "));
        let outcome = if self.any_indeterminate {
            FenceOutcome::Indeterminate { reason }
        } else {
            FenceOutcome::Failed { reason }
        };
        self.done = Some(outcome.clone());
        Step::Done(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, ms: u64) -> PlannedMethod {
        PlannedMethod { name: name.into(), timeout: Duration::from_millis(ms) }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn run(level: usize, index: usize, budget: u64) -> Step {
        Step::Run { level, index, budget: ms(budget) }
    }

    #[test]
    fn first_level_that_fences_wins() {
        let mut p = FencePlan::new(vec![vec![m("a", 100)], vec![m("b", 100)]], ms(1000), ms(0));
        assert_eq!(p.next(ms(0)), run(0, 0, 100));
        p.record(&MethodOutcome::fenced("ok"));
        assert_eq!(p.next(ms(10)), Step::Done(FenceOutcome::Fenced { level: 0, methods: vec!["a".into()] }));
    }

    #[test]
    fn a_level_needs_all_of_its_methods() {
        let mut p =
            FencePlan::new(vec![vec![m("a", 100), m("b", 100)], vec![m("c", 100), m("d", 100)]], ms(1000), ms(0));
        assert_eq!(p.next(ms(0)), run(0, 0, 100));
        p.record(&MethodOutcome::fenced("a done"));
        assert_eq!(p.next(ms(50)), run(0, 1, 100));
        p.record(&MethodOutcome::failed("b refused"));
        // The failure of b sends the plan to the next level, not to a retry.
        assert_eq!(p.next(ms(100)), run(1, 0, 100));
        p.record(&MethodOutcome::fenced("c done"));
        assert_eq!(p.next(ms(150)), run(1, 1, 100));
        p.record(&MethodOutcome::fenced("d done"));
        assert_eq!(
            p.next(ms(200)),
            Step::Done(FenceOutcome::Fenced { level: 1, methods: vec!["c".into(), "d".into()] })
        );
    }

    #[test]
    fn the_first_non_fenced_method_ends_its_level() {
        let mut p = FencePlan::new(vec![vec![m("a", 100), m("b", 100)], vec![m("c", 100)]], ms(1000), ms(0));
        p.next(ms(0));
        p.record(&MethodOutcome::indeterminate("timed out"));
        assert_eq!(p.next(ms(100)), run(1, 0, 100));
    }

    #[test]
    fn indeterminate_anywhere_makes_an_unfenced_result_indeterminate() {
        let mut p = FencePlan::new(vec![vec![m("a", 100)], vec![m("b", 100)]], ms(1000), ms(0));
        p.next(ms(0));
        p.record(&MethodOutcome::indeterminate("lost contact"));
        p.next(ms(100));
        p.record(&MethodOutcome::failed("exit 1"));
        assert_eq!(
            p.next(ms(200)),
            Step::Done(FenceOutcome::Indeterminate {
                reason: "no level fenced the target; level 0 method `a` indeterminate: lost contact; level 1 method `b` failed: exit 1".into()
            })
        );
    }

    #[test]
    fn all_failures_make_a_failed_result() {
        let mut p = FencePlan::new(vec![vec![m("a", 100)]], ms(1000), ms(0));
        p.next(ms(0));
        p.record(&MethodOutcome::failed("refused"));
        let Step::Done(outcome) = p.next(ms(5)) else { panic!() };
        assert_eq!(
            outcome,
            FenceOutcome::Failed { reason: "no level fenced the target; level 0 method `a` failed: refused".into() }
        );
        assert!(!outcome.permits_promotion());
    }

    #[test]
    fn budgets_are_cut_to_the_overall_deadline_and_nothing_runs_after_it() {
        let mut p = FencePlan::new(vec![vec![m("a", 800)], vec![m("b", 800)]], ms(1000), ms(0));
        assert_eq!(p.next(ms(0)), run(0, 0, 800));
        p.record(&MethodOutcome::failed("no"));
        assert_eq!(p.next(ms(700)), run(1, 0, 300));
        p.record(&MethodOutcome::indeterminate("timed out"));
        let mut p2 = FencePlan::new(vec![vec![m("a", 800)], vec![m("b", 800)]], ms(1000), ms(0));
        p2.next(ms(0));
        p2.record(&MethodOutcome::failed("no"));
        assert_eq!(
            p2.next(ms(1000)),
            Step::Done(FenceOutcome::Indeterminate {
                reason: "overall deadline of 1000 ms reached before level 1 method `b` could run; level 0 method `a` failed: no".into()
            })
        );
    }

    #[test]
    fn the_delay_comes_first_and_counts_against_the_deadline() {
        let mut p = FencePlan::new(vec![vec![m("a", 800)]], ms(1000), ms(300));
        assert_eq!(p.next(ms(0)), Step::Delay(ms(300)));
        assert_eq!(p.next(ms(300)), run(0, 0, 700));
    }
}
