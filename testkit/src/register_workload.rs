//! A client workload on one znode for [`crate::linearizability`]: each client issues
//! `sync`-then-`getData` reads and conditional `setData` (with the version it last saw, sometimes
//! a stale one), optionally unconditional `setData` too, one after another, and records every
//! operation with its call and return times into a shared [`History`].
//!
//! An operation that fails for any reason but `BadVersion` (a lost connection, a timeout) is
//! recorded without an answer: it may take effect at any later time, or never. Its client then
//! starts a new session, so nothing it does next can overtake it on the old one. A read without
//! an answer explains nothing and is left out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use tokio::time::Instant;
use zookeeper_client as zk;

use crate::linearizability::{check, Operation, Register, RegisterInput, RegisterOutput, Verdict};

/// The operations of every client, in the order they were recorded.
pub type History = Arc<Mutex<Vec<Operation<RegisterInput, RegisterOutput>>>>;

/// One client of the workload.
#[derive(Debug, Clone)]
pub struct RegisterClient {
    /// The client's number in the history.
    pub id: usize,
    /// The znode, created beforehand holding `0`.
    pub path: String,
    /// Where the client's first session connects.
    pub first: String,
    /// Where every later session connects (after an operation without an answer).
    pub then: String,
    /// Whether unconditional `setData` is in the mix (a third each of reads, writes and
    /// compare-and-sets), or only reads and compare-and-sets (half each).
    pub unconditional_writes: bool,
    /// How long one operation, or one connection, may take before it counts as unanswered.
    pub op_deadline: Duration,
}

impl RegisterClient {
    /// Runs operations one after another until `stop`, recording each into `history` with times
    /// counted from `started`.
    pub async fn run(self, started: Instant, stop: Arc<AtomicBool>, history: History) {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ (self.id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut session: Option<zk::Client> = None;
        let mut target = self.first.clone();
        let mut seen_version = 0i32;
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let Some(client) = &session else {
                match tokio::time::timeout(self.op_deadline, crate::connect(&target, Duration::from_secs(4))).await {
                    Ok(Ok(c)) => session = Some(c),
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                continue;
            };
            n += 1;
            let value = (self.id as u64) << 32 | n;
            let kinds = if self.unconditional_writes { 3 } else { 2 };
            let input = match rand(kinds) {
                0 => RegisterInput::Read,
                2 => RegisterInput::Write(value),
                // Mostly the version this client last saw, sometimes another one. Never -1,
                // which ZooKeeper reads as "any version": an unconditional set.
                _ => RegisterInput::CompareAndSet {
                    value,
                    expected: match (rand(4), seen_version) {
                        (0, 0) => 1,
                        (0, v) => v - 1,
                        (_, v) => v,
                    },
                },
            };
            let call = started.elapsed();
            let answer = tokio::time::timeout(self.op_deadline, apply(client, &self.path, input)).await;
            let returned = started.elapsed();
            let Ok(Ok(output)) = answer else {
                if input != RegisterInput::Read {
                    history.lock().unwrap().push(Operation { client: self.id, call, returned: None, input });
                }
                session = None;
                target = self.then.clone();
                continue;
            };
            match output {
                RegisterOutput::Read { version, .. } | RegisterOutput::Set { version } => seen_version = version,
                RegisterOutput::BadVersion => {}
            }
            history.lock().unwrap().push(Operation {
                client: self.id,
                call,
                returned: Some((returned, output)),
                input,
            });
        }
    }
}

/// One operation on `path` through `client`.
async fn apply(client: &zk::Client, path: &str, input: RegisterInput) -> Result<RegisterOutput, zk::Error> {
    match input {
        RegisterInput::Read => {
            client.sync(path).await?;
            let (data, stat) = client.get_data(path).await?;
            let value = std::str::from_utf8(&data).ok().and_then(|t| t.parse().ok()).unwrap_or(u64::MAX);
            Ok(RegisterOutput::Read { value, version: stat.version })
        }
        RegisterInput::Write(value) => {
            let stat = client.set_data(path, value.to_string().as_bytes(), None).await?;
            Ok(RegisterOutput::Set { version: stat.version })
        }
        RegisterInput::CompareAndSet { value, expected } => {
            match client.set_data(path, value.to_string().as_bytes(), Some(expected)).await {
                Ok(stat) => Ok(RegisterOutput::Set { version: stat.version }),
                Err(zk::Error::BadVersion) => Ok(RegisterOutput::BadVersion),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits, up to `limit`, until the history has grown by `more` answered operations.
pub async fn answered_grow(history: &History, more: usize, limit: Duration, what: &str) -> Result<()> {
    let answered = |h: &History| h.lock().unwrap().iter().filter(|o| o.returned.is_some()).count();
    let target = answered(history) + more;
    crate::within_for(limit, what, async {
        while answered(history) < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Prints the history's make-up and checks it against a register created holding `0`; fails
/// when a kind of operation is missing (nothing to check) or with the violation printed.
/// `events` names what happened during the run, for both.
pub fn verdict(history: &[Operation<RegisterInput, RegisterOutput>], events: &str) -> Result<()> {
    let count = |f: fn(&RegisterOutput) -> bool| {
        history.iter().filter(|o| o.returned.as_ref().is_some_and(|(_, out)| f(out))).count()
    };
    let (reads, sets, refused) = (
        count(|o| matches!(o, RegisterOutput::Read { .. })),
        count(|o| matches!(o, RegisterOutput::Set { .. })),
        count(|o| matches!(o, RegisterOutput::BadVersion)),
    );
    let unanswered = history.iter().filter(|o| o.returned.is_none()).count();
    eprintln!(
        "{} operations ({events}): {reads} reads, {sets} sets, {refused} BadVersion, {unanswered} without an answer",
        history.len()
    );
    ensure!(sets > 0 && refused > 0 && reads > 0, "the history lacks a kind of operation: nothing to check");
    match check(&Register { initial: 0 }, history) {
        Verdict::Linearizable => Ok(()),
        Verdict::Violation(text) => bail!("not linearizable ({events}):\n{text}"),
        Verdict::Undecided { steps } => bail!("the checker gave up after {steps} steps"),
    }
}
