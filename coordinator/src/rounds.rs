//! One round for every caller that asks while the previous round is under way.
//!
//! A `sync` on an ensemble costs a round trip: a leader proves to a quorum that it still leads
//! ([`crate::read_index`]), a follower asks the leader for its read index. Each caller needs a
//! round that *starts after it asked*; a round already under way when it asks may have started
//! before, so it cannot serve it. [`Rounds`] runs one round at a time: the callers that ask
//! while one is under way all wait for the next, which starts as soon as the current one ends
//! and answers all of them. Under a load of `sync`s that is one round per round-trip time, not
//! one per `sync`; a caller waits at most the end of the round under way plus its own.
//!
//! ```text
//!  caller a ──┐ round 1 ──────────▶ a
//!  caller b ────┐ (b, c asked during round 1)
//!  caller c ─────┴───────────────── round 2 ──────────▶ b, c
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Rounds of an asynchronous check whose result is `T`, shared by the callers that ask
/// while the one before is under way. Clones share the rounds.
#[derive(Debug)]
pub struct Rounds<T> {
    state: Arc<Mutex<State<T>>>,
}

impl<T> Clone for Rounds<T> {
    fn clone(&self) -> Self {
        Rounds { state: self.state.clone() }
    }
}

impl<T> Default for Rounds<T> {
    fn default() -> Self {
        Rounds { state: Arc::new(Mutex::new(State { running: false, waiting: Vec::new() })) }
    }
}

#[derive(Debug)]
struct State<T> {
    /// A task runs rounds until no caller waits.
    running: bool,
    /// The callers the next round answers.
    waiting: Vec<oneshot::Sender<T>>,
}

impl<T: Clone + Send + 'static> Rounds<T> {
    /// No round under way, nobody waiting.
    pub fn new() -> Self {
        Self::default()
    }

    /// The result of a round that starts after this call. `round` starts one; it runs rounds
    /// for as long as callers wait, if no task runs them yet (then it is dropped unused: the
    /// task under way runs its own, which do the same). `None` if the round's task ended
    /// without an answer (it panicked, or its runtime is shutting down).
    pub async fn next<F, Fut>(&self, round: F) -> Option<T>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
            st.waiting.push(tx);
            !std::mem::replace(&mut st.running, true)
        };
        if start {
            tokio::spawn(drive(self.state.clone(), round));
        }
        rx.await.ok()
    }
}

/// Runs rounds while callers wait; each round answers the callers that waited when it began.
async fn drive<T, F, Fut>(state: Arc<Mutex<State<T>>>, round: F)
where
    T: Clone,
    F: Fn() -> Fut,
    Fut: Future<Output = T>,
{
    // If a round panics (or the runtime drops this task), the next caller starts another.
    let mut reset = Reset { state: state.clone(), armed: true };
    loop {
        let waiting = {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            if st.waiting.is_empty() {
                // Under the lock: a caller that comes after finds the rounds idle and starts
                // a task of its own, which the reset must not touch.
                st.running = false;
                reset.armed = false;
                return;
            }
            std::mem::take(&mut st.waiting)
        };
        let result = round().await;
        for caller in waiting {
            let _ = caller.send(result.clone());
        }
    }
}

/// Marks the rounds idle when the task running them ends without finishing (a round it left
/// unanswered drops its callers' senders, which they see as `None`).
struct Reset<T> {
    state: Arc<Mutex<State<T>>>,
    armed: bool,
}

impl<T> Drop for Reset<T> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.running = false;
        // Callers that joined for a round this task will not run: answered by none, so they
        // do not wait forever (they ask again, and start a task).
        st.waiting.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::sync::Notify;

    use super::*;

    /// A round that counts itself and waits for the test's go before it ends.
    fn gated(
        started: Arc<AtomicUsize>,
        go: Arc<Notify>,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = usize> + Send>> {
        move || {
            let (started, go) = (started.clone(), go.clone());
            Box::pin(async move {
                let n = started.fetch_add(1, Ordering::SeqCst) + 1;
                go.notified().await;
                n
            })
        }
    }

    async fn until(what: &str, cond: impl Fn() -> bool) {
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while !cond() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    #[tokio::test]
    async fn callers_that_ask_during_a_round_share_the_next_one_which_starts_after_they_asked() {
        let rounds: Rounds<usize> = Rounds::new();
        let (started, go) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let first = tokio::spawn({
            let (r, f) = (rounds.clone(), gated(started.clone(), go.clone()));
            async move { r.next(f).await }
        });
        until("round 1 to start", || started.load(Ordering::SeqCst) == 1).await;
        // Five callers ask while round 1 is under way: it cannot answer them.
        let later: Vec<_> = (0..5)
            .map(|_| {
                let (r, f) = (rounds.clone(), gated(started.clone(), go.clone()));
                tokio::spawn(async move { r.next(f).await })
            })
            .collect();
        until("the five to wait", || rounds.state.lock().unwrap().waiting.len() == 5).await;
        assert_eq!(started.load(Ordering::SeqCst), 1, "no second round while the first is under way");
        go.notify_one();
        assert_eq!(first.await.unwrap(), Some(1));
        until("round 2 to start", || started.load(Ordering::SeqCst) == 2).await;
        go.notify_one();
        for l in later {
            assert_eq!(l.await.unwrap(), Some(2), "every later caller answered by round 2");
        }
        assert_eq!(started.load(Ordering::SeqCst), 2, "one round for the five");
        // Idle again: the next caller starts a round of its own at once.
        go.notify_one();
        assert_eq!(rounds.next(gated(started.clone(), go.clone())).await, Some(3));
    }

    #[tokio::test]
    async fn a_round_that_panics_leaves_its_callers_answered_by_none_and_the_rounds_usable() {
        let rounds: Rounds<u8> = Rounds::new();
        let panicking =
            || -> std::pin::Pin<Box<dyn Future<Output = u8> + Send>> { Box::pin(async { panic!("round failed") }) };
        assert_eq!(rounds.next(panicking).await, None);
        until("the failed task to be reset", || !rounds.state.lock().unwrap().running).await;
        assert_eq!(rounds.next(|| async { 7 }).await, Some(7));
    }
}
