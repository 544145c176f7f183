//! A linearizability checker for histories recorded by concurrent clients.
//!
//! A history is a set of operations, each with the time its client called it and the time the
//! answer came back (or no answer at all: a timeout or a lost connection, whose effect may or
//! may not have happened). It is linearizable when every operation can be given one instant
//! between its call and its return at which it took effect, such that the sequence of those
//! instants is a run of a sequential [`Model`] producing every recorded answer.
//!
//! The search is Wing and Gong's: walk the history in time order, tentatively linearize any
//! operation whose call has been seen, and backtrack when an operation's return is reached
//! before it could be linearized. Lowe's memoisation makes it practical: a (set of linearized
//! operations, model state) pair that was already explored is never explored again, since
//! whatever follows from it failed before. An operation without an answer returns "at the end
//! of time": it may take effect at any instant after its call, including after every other
//! operation (which is the same, to every other operation, as never).
//!
//! [`check`] answers [`Verdict::Linearizable`] or [`Verdict::Violation`] with the longest
//! prefix of the history it could explain, printed in time order, so that a failing test shows
//! the operations around the point where no explanation exists. The search is bounded by a step
//! budget: a history too tangled to decide within it is [`Verdict::Undecided`], never a pass.
//!
//! [`Register`] models one ZooKeeper znode under `getData`, unconditional `setData` (version
//! -1) and conditional `setData` (an expected version, answered `BadVersion` when it differs),
//! as the ensemble tests drive it.

use std::collections::HashSet;
use std::fmt;
use std::hash::Hash;
use std::time::Duration;

/// A sequential specification: the state an object starts in and how each operation, with the
/// answer its client saw, moves it.
pub trait Model {
    /// The object's state.
    type State: Clone + Eq + Hash + fmt::Debug;
    /// An operation's request.
    type Input: fmt::Debug;
    /// An operation's answer.
    type Output: fmt::Debug;
    /// The state before any operation.
    fn init(&self) -> Self::State;
    /// The state after `input` takes effect on `state` with answer `output`, or `None` when
    /// that answer is impossible in that state. `output` is `None` for an operation whose
    /// answer was never seen: then the operation's effect, whatever it would answer.
    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State>;
}

/// One operation of a history.
#[derive(Debug, Clone)]
pub struct Operation<I, O> {
    /// The client that called it (for the printout).
    pub client: usize,
    /// When it was called.
    pub call: Duration,
    /// When its answer came back, with the answer; `None` when it never did.
    pub returned: Option<(Duration, O)>,
    /// The request.
    pub input: I,
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Some order of effects explains every answer.
    Linearizable,
    /// No order does; the text shows the history and how far an explanation reached.
    Violation(String),
    /// The step budget ran out before either was shown.
    Undecided {
        /// Steps taken.
        steps: u64,
    },
}

impl Verdict {
    /// Whether the history was shown linearizable.
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

/// Steps [`check`] takes before it gives up undecided.
pub const DEFAULT_STEP_BUDGET: u64 = 50_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Call(usize),
    Return(usize),
}

/// A set of operation indexes.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Bits {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    fn count(&self) -> u32 {
        self.0.iter().map(|w| w.count_ones()).sum()
    }
}

/// Checks `history` against `model` with the default step budget.
pub fn check<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> Verdict {
    check_with_budget(model, history, DEFAULT_STEP_BUDGET)
}

/// Checks `history` against `model`, giving up undecided after `budget` steps.
pub fn check_with_budget<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>], budget: u64) -> Verdict {
    let n = history.len();
    // Events in time order. At equal times calls come first, so operations that touch at an
    // instant count as concurrent (the lenient reading of a clock's resolution). An operation
    // without an answer returns after everything.
    let end = |op: &Operation<M::Input, M::Output>| op.returned.as_ref().map_or(Duration::MAX, |(t, _)| *t);
    let mut events: Vec<(Duration, u8, Event)> = Vec::with_capacity(2 * n);
    for (i, op) in history.iter().enumerate() {
        events.push((op.call, 0, Event::Call(i)));
        events.push((end(op).max(op.call), 1, Event::Return(i)));
    }
    events.sort_by_key(|&(t, order, e)| (t, order, matches!(e, Event::Return(_)), index(e)));
    let events: Vec<Event> = events.into_iter().map(|(_, _, e)| e).collect();

    // A circular doubly linked list over the events through a sentinel at index `m`: the
    // sentinel's `next` is the first event left, and the list is empty when that is itself.
    let m = events.len();
    let next_of = |i: usize| if i == m { 0 } else { i + 1 };
    let mut next: Vec<usize> = (0..=m).map(next_of).collect();
    let mut prev: Vec<usize> = (0..=m).map(|i| if i == 0 { m } else { i - 1 }).collect();
    let mut return_of = vec![0; n];
    for (pos, e) in events.iter().enumerate() {
        if let Event::Return(i) = e {
            return_of[*i] = pos;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, pos: usize| {
        let (p, q) = (prev[pos], next[pos]);
        next[p] = q;
        prev[q] = p;
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, pos: usize| {
        let (p, q) = (prev[pos], next[pos]);
        next[p] = pos;
        prev[q] = pos;
    };

    let mut state = model.init();
    let mut linearized = Bits::new(n);
    let mut cache: HashSet<(Bits, M::State)> = HashSet::new();
    // (call position, state before it) for each tentatively linearized operation.
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut best: Vec<usize> = Vec::new();
    let mut steps = 0u64;
    let mut pos = next[m];
    while next[m] != m {
        steps += 1;
        if steps > budget {
            return Verdict::Undecided { steps };
        }
        match events[pos] {
            Event::Call(i) => {
                let op = &history[i];
                let output = op.returned.as_ref().map(|(_, o)| o);
                let advanced = model.step(&state, &op.input, output).and_then(|after| {
                    let mut with = linearized.clone();
                    with.set(i);
                    cache.insert((with.clone(), after.clone())).then_some((with, after))
                });
                match advanced {
                    Some((with, after)) => {
                        stack.push((pos, std::mem::replace(&mut state, after)));
                        linearized = with;
                        unlink(&mut next, &mut prev, pos);
                        unlink(&mut next, &mut prev, return_of[i]);
                        if stack.len() > best.len() {
                            best = stack.iter().map(|&(p, _)| index(events[p])).collect();
                        }
                        pos = next[m];
                    }
                    None => pos = next[pos],
                }
            }
            Event::Return(_) => {
                // An operation returned before it could take effect: undo the last choice.
                let Some((call, before)) = stack.pop() else {
                    return Verdict::Violation(explain(model, history, &best));
                };
                let i = index(events[call]);
                relink(&mut next, &mut prev, return_of[i]);
                relink(&mut next, &mut prev, call);
                linearized.clear(i);
                state = before;
                pos = next[call];
            }
        }
    }
    debug_assert_eq!(linearized.count() as usize, n);
    Verdict::Linearizable
}

fn index(e: Event) -> usize {
    match e {
        Event::Call(i) | Event::Return(i) => i,
    }
}

/// The history in call order, marking the operations of the longest explained prefix with the
/// state after each, and the rest as unexplained.
fn explain<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>], best: &[usize]) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "not linearizable: at most {} of {} operations can be put in an order that explains their answers\n",
        best.len(),
        history.len()
    );
    let mut state = model.init();
    let _ = writeln!(out, "longest explained order (state after each):");
    for &i in best {
        let op = &history[i];
        if let Some(after) = model.step(&state, &op.input, op.returned.as_ref().map(|(_, o)| o)) {
            state = after;
        }
        let _ = writeln!(out, "  {}  -> {:?}", describe(op), state);
    }
    let explained: HashSet<usize> = best.iter().copied().collect();
    let mut order: Vec<usize> = (0..history.len()).collect();
    order.sort_by_key(|&i| history[i].call);
    let _ = writeln!(out, "history by call time (* = outside that order):");
    for i in order {
        let mark = if explained.contains(&i) { ' ' } else { '*' };
        let _ = writeln!(out, "{mark} {}", describe(&history[i]));
    }
    out
}

fn describe<I: fmt::Debug, O: fmt::Debug>(op: &Operation<I, O>) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    match &op.returned {
        Some((t, o)) => {
            format!("client {} [{:.3} .. {:.3} ms] {:?} -> {:?}", op.client, ms(op.call), ms(*t), op.input, o)
        }
        None => format!("client {} [{:.3} .. never] {:?} -> (no answer)", op.client, ms(op.call), op.input),
    }
}

/// One znode's data and data version under ZooKeeper's `getData` and `setData`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Register {
    /// The data the znode is created with (version 0).
    pub initial: u64,
}

/// A [`Register`] request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterInput {
    /// `getData` (after a `sync`, for a linearizable read).
    Read,
    /// `setData(value, -1)`.
    Write(u64),
    /// `setData(value, expected)`.
    CompareAndSet {
        /// The new data.
        value: u64,
        /// The data version it expects.
        expected: i32,
    },
}

/// A [`Register`] answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterOutput {
    /// The data and its version.
    Read {
        /// Data.
        value: u64,
        /// Data version.
        version: i32,
    },
    /// A set succeeded; the znode's new version.
    Set {
        /// The version after the set.
        version: i32,
    },
    /// A conditional set found another version.
    BadVersion,
}

/// A [`Register`] state: data and data version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RegisterState {
    /// Data.
    pub value: u64,
    /// Data version (ZooKeeper's wraps as a Java int).
    pub version: i32,
}

impl Model for Register {
    type State = RegisterState;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> RegisterState {
        RegisterState { value: self.initial, version: 0 }
    }

    fn step(&self, s: &RegisterState, input: &RegisterInput, output: Option<&RegisterOutput>) -> Option<RegisterState> {
        let set = |value| RegisterState { value, version: s.version.wrapping_add(1) };
        match (input, output) {
            (RegisterInput::Read, None) => Some(*s),
            (RegisterInput::Read, Some(RegisterOutput::Read { value, version })) => {
                (*value == s.value && *version == s.version).then_some(*s)
            }
            (RegisterInput::Write(value), None) => Some(set(*value)),
            (RegisterInput::Write(value), Some(RegisterOutput::Set { version })) => {
                (*version == s.version.wrapping_add(1)).then(|| set(*value))
            }
            (RegisterInput::CompareAndSet { value, expected }, None) => {
                Some(if *expected == s.version { set(*value) } else { *s })
            }
            (RegisterInput::CompareAndSet { value, expected }, Some(RegisterOutput::Set { version })) => {
                (*expected == s.version && *version == s.version.wrapping_add(1)).then(|| set(*value))
            }
            (RegisterInput::CompareAndSet { expected, .. }, Some(RegisterOutput::BadVersion)) => {
                (*expected != s.version).then_some(*s)
            }
            // An answer of the wrong kind for its request.
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegisterInput::{CompareAndSet, Read, Write};

    type Op = Operation<RegisterInput, RegisterOutput>;

    fn op(client: usize, call: u64, ret: Option<u64>, input: RegisterInput, output: Option<RegisterOutput>) -> Op {
        let ms = Duration::from_millis;
        Operation { client, call: ms(call), returned: ret.map(|r| (ms(r), output.expect("an answer"))), input }
    }
    fn read(client: usize, call: u64, ret: u64, value: u64, version: i32) -> Op {
        op(client, call, Some(ret), Read, Some(RegisterOutput::Read { value, version }))
    }
    fn write(client: usize, call: u64, ret: u64, value: u64, version: i32) -> Op {
        op(client, call, Some(ret), Write(value), Some(RegisterOutput::Set { version }))
    }
    fn cas(client: usize, call: u64, ret: u64, value: u64, expected: i32, ok: bool) -> Op {
        let out = if ok { RegisterOutput::Set { version: expected + 1 } } else { RegisterOutput::BadVersion };
        op(client, call, Some(ret), CompareAndSet { value, expected }, Some(out))
    }

    fn verdict(history: &[Op]) -> Verdict {
        check(&Register::default(), history)
    }

    #[test]
    fn empty_and_sequential_histories_are_linearizable() {
        assert!(verdict(&[]).is_linearizable());
        let h = [write(0, 0, 1, 5, 1), read(0, 2, 3, 5, 1), cas(1, 4, 5, 6, 1, true), read(1, 6, 7, 6, 2)];
        assert!(verdict(&h).is_linearizable());
    }

    #[test]
    fn a_read_overlapping_a_write_may_see_either_side() {
        let before = [write(0, 0, 10, 5, 1), read(1, 1, 2, 0, 0)];
        let after = [write(0, 0, 10, 5, 1), read(1, 1, 2, 5, 1)];
        assert!(verdict(&before).is_linearizable());
        assert!(verdict(&after).is_linearizable());
    }

    #[test]
    fn a_stale_read_after_a_completed_write_is_a_violation() {
        // The write returned at 1 ms; a read called at 2 ms still sees the old data.
        let h = [write(0, 0, 1, 5, 1), read(1, 2, 3, 0, 0)];
        let Verdict::Violation(text) = verdict(&h) else { panic!("accepted a stale read") };
        assert!(text.contains("at most 1 of 2"), "{text}");
        assert!(text.contains("* client 1"), "the unexplained read is marked: {text}");
    }

    #[test]
    fn going_back_to_the_past_after_seeing_the_future_is_a_violation() {
        // Two sequential reads by one client around a concurrent write: new, then old.
        let h = [write(0, 0, 100, 5, 1), read(1, 10, 11, 5, 1), read(1, 12, 13, 0, 0)];
        assert!(!verdict(&h).is_linearizable());
    }

    #[test]
    fn two_compare_and_sets_from_one_version_cannot_both_succeed() {
        let h = [cas(0, 0, 10, 1, 0, true), cas(1, 0, 10, 2, 0, true)];
        assert!(!verdict(&h).is_linearizable());
        let one_loses = [cas(0, 0, 10, 1, 0, true), cas(1, 0, 10, 2, 0, false)];
        assert!(verdict(&one_loses).is_linearizable());
    }

    #[test]
    fn a_lost_acknowledged_write_is_a_violation() {
        // Acknowledged as version 1, then a later read finds version 0.
        let h = [write(0, 0, 1, 7, 1), read(0, 5, 6, 0, 0), read(1, 7, 8, 0, 0)];
        assert!(!verdict(&h).is_linearizable());
    }

    #[test]
    fn an_unanswered_write_may_take_effect_late_or_never() {
        let unanswered = op(0, 0, None, Write(9), None);
        // Seen much later...
        assert!(verdict(&[unanswered.clone(), read(1, 50, 51, 0, 0), read(1, 60, 61, 9, 1)]).is_linearizable());
        // ... or never.
        assert!(verdict(&[unanswered.clone(), read(1, 50, 51, 0, 0)]).is_linearizable());
        // But not before it was called.
        let early = [read(1, 0, 1, 9, 1), op(0, 5, None, Write(9), None)];
        assert!(!verdict(&early).is_linearizable());
        // And once seen, not undone.
        let undone = [unanswered, read(1, 50, 51, 9, 1), read(1, 60, 61, 0, 0)];
        assert!(!verdict(&undone).is_linearizable());
    }

    #[test]
    fn an_unanswered_compare_and_set_applies_only_on_its_version() {
        let h = [op(0, 0, None, CompareAndSet { value: 4, expected: 3 }, None), read(1, 10, 11, 4, 1)];
        assert!(!verdict(&h).is_linearizable(), "a set expecting version 3 cannot apply at version 0");
        let h = [op(0, 0, None, CompareAndSet { value: 4, expected: 0 }, None), read(1, 10, 11, 4, 1)];
        assert!(verdict(&h).is_linearizable());
    }

    #[test]
    fn answers_of_the_wrong_kind_are_violations() {
        let h = [op(0, 0, Some(1), Read, Some(RegisterOutput::BadVersion))];
        assert!(!verdict(&h).is_linearizable());
    }

    /// Histories made by running a real sequential register with random overlaps are accepted,
    /// and the same histories with one read's answer changed are refused unless the changed
    /// answer happens to be explainable: checked by brute force over every order.
    #[test]
    fn random_histories_agree_with_brute_force() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut outcomes = [0usize; 2];
        for round in 0..300 {
            // Up to 6 operations from 3 clients, times in a small window so they overlap.
            let len = 1 + rand(6) as usize;
            let mut history = Vec::new();
            for i in 0..len {
                let call = rand(20);
                let ret = if rand(8) == 0 { None } else { Some(call + rand(10)) };
                let input = match rand(3) {
                    0 => Read,
                    1 => Write(rand(3)),
                    _ => CompareAndSet { value: rand(3), expected: rand(3) as i32 },
                };
                let output = ret.map(|_| match input {
                    Read => RegisterOutput::Read { value: rand(3), version: rand(3) as i32 },
                    Write(_) => RegisterOutput::Set { version: 1 + rand(3) as i32 },
                    CompareAndSet { expected, .. } => {
                        if rand(2) == 0 {
                            RegisterOutput::Set { version: expected + 1 }
                        } else {
                            RegisterOutput::BadVersion
                        }
                    }
                });
                history.push(op(i % 3, call, ret, input, output));
            }
            let fast = verdict(&history).is_linearizable();
            let slow = brute_force(&Register::default(), &history);
            assert_eq!(fast, slow, "round {round}: checker says {fast}, brute force {slow}: {history:#?}");
            outcomes[usize::from(fast)] += 1;
        }
        // Both answers came up often enough for the agreement to mean something.
        assert!(outcomes.iter().all(|&n| n >= 30), "linearizable / not: {outcomes:?}");
    }

    /// Every permutation that respects real time, tried in full.
    fn brute_force<M: Model>(model: &M, history: &[Operation<M::Input, M::Output>]) -> bool {
        fn go<M: Model>(
            model: &M,
            history: &[Operation<M::Input, M::Output>],
            done: &mut Vec<bool>,
            state: M::State,
        ) -> bool {
            if done.iter().all(|d| *d) {
                return true;
            }
            let end = |op: &Operation<M::Input, M::Output>| op.returned.as_ref().map_or(Duration::MAX, |(t, _)| *t);
            for i in 0..history.len() {
                if done[i] {
                    continue;
                }
                // i may go next only if no pending operation returned before i was called.
                let blocked = (0..history.len()).any(|j| !done[j] && j != i && end(&history[j]) < history[i].call);
                if blocked {
                    continue;
                }
                if let Some(after) = model.step(&state, &history[i].input, history[i].returned.as_ref().map(|(_, o)| o))
                {
                    done[i] = true;
                    if go(model, history, done, after) {
                        return true;
                    }
                    done[i] = false;
                }
            }
            false
        }
        go(model, history, &mut vec![false; history.len()], model.init())
    }

    #[test]
    fn many_concurrent_clients_are_checked_within_the_budget() {
        // 8 clients, 200 operations each, on a real sequential register: every operation takes
        // effect at the midpoint of its window, windows of different clients overlap heavily.
        let mut state = RegisterState { value: 0, version: 0 };
        let mut ops: Vec<(u64, usize, u64)> = Vec::new(); // (effect time, client, call)
        for c in 0..8usize {
            for k in 0..200u64 {
                let call = k * 100 + c as u64 * 7;
                ops.push((call + 40, c, call));
            }
        }
        ops.sort();
        let mut history = Vec::new();
        for (n, &(_, client, call)) in ops.iter().enumerate() {
            let (input, output) = if n % 3 == 0 {
                let value = n as u64;
                state = RegisterState { value, version: state.version + 1 };
                (Write(value), RegisterOutput::Set { version: state.version })
            } else if n % 3 == 1 {
                let expected = state.version;
                state = RegisterState { value: n as u64, version: state.version + 1 };
                (CompareAndSet { value: n as u64, expected }, RegisterOutput::Set { version: state.version })
            } else {
                (Read, RegisterOutput::Read { value: state.value, version: state.version })
            };
            history.push(op(client, call, Some(call + 80), input, Some(output)));
        }
        assert_eq!(verdict(&history), Verdict::Linearizable);
        // Swap two adjacent reads' answers far apart in time: no longer explainable.
        let reads: Vec<usize> = (0..history.len()).filter(|&i| history[i].input == Read).collect();
        let (a, b) = (reads[10], reads[200]);
        let (ra, rb) = (history[a].returned.unwrap(), history[b].returned.unwrap());
        history[a].returned = Some((ra.0, rb.1));
        history[b].returned = Some((rb.0, ra.1));
        assert!(matches!(verdict(&history), Verdict::Violation(_)));
    }
}
