//! A client workload on one znode for [`crate::linearizability`]: each client issues
//! `sync`-then-`getData` reads and conditional `setData` (with the version it last saw, sometimes
//! a stale one), optionally unconditional `setData` too, one after another, and records every
//! operation with its call and return times into a shared [`History`].
//!
//! Or on a succession of znodes ([`Keys::Rotating`]): every client moves to the next one at the
//! same instants, so each znode's history is short (and the operations left without an answer
//! in it few), and [`verdict`] checks each on its own. Linearizability is local (Herlihy and
//! Wing): a history is linearizable exactly when its history on each object is, so checking the
//! znodes apart loses nothing, and a long run under many faults stays quick to check.
//!
//! An operation that fails for any reason but `BadVersion` (a lost connection, a timeout) is
//! recorded without an answer: it may take effect at any later time, or never. Its client then
//! starts a new session, so nothing it does next can overtake it on the old one. A read without
//! an answer explains nothing and is left out.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use tokio::time::Instant;
use zookeeper_client as zk;

use crate::linearizability::{check, Operation, Register, RegisterInput, RegisterOutput, Verdict};

/// The operations of every client, in the order they were recorded.
pub type History = Arc<Mutex<Vec<Recorded>>>;

/// One operation of the history and the znode it went to.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The znode's key: 0 with [`Keys::One`], else its number under the client's path.
    pub key: u64,
    /// The operation.
    pub op: Operation<RegisterInput, RegisterOutput>,
}

/// Which znode an operation goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// The client's path itself.
    One,
    /// `{path}/0`, `{path}/1`, ...: an operation called at `t` (from the run's start) goes to
    /// key `t / period`, the last key once past `count` periods. The znodes are created
    /// beforehand, each holding `0` ([`create_keys`]).
    Rotating {
        /// How long the clients stay on one key.
        period: Duration,
        /// How many keys there are.
        count: u64,
    },
}

impl Keys {
    /// The key of an operation called `at` from the run's start.
    pub fn key_at(self, at: Duration) -> u64 {
        match self {
            Keys::One => 0,
            Keys::Rotating { period, count } => {
                let k = at.as_nanos() / period.as_nanos().max(1);
                u64::try_from(k).unwrap_or(u64::MAX).min(count.saturating_sub(1))
            }
        }
    }

    /// The znode of `key` under `path`.
    pub fn path_of(self, path: &str, key: u64) -> String {
        match self {
            Keys::One => path.to_owned(),
            Keys::Rotating { .. } => format!("{path}/{key}"),
        }
    }

    /// How many keys a run of `run` needs with one key every `period`, and a margin for the
    /// time the run takes to stop.
    pub fn rotating_for(run: Duration, period: Duration) -> Keys {
        let count = (run.as_nanos() / period.as_nanos().max(1)) as u64 + 1;
        Keys::Rotating { period, count: count + count / 2 + 8 }
    }
}

/// Creates `path` and, for [`Keys::Rotating`], every key under it, each holding `0`, through
/// `client`.
pub async fn create_keys(client: &zk::Client, path: &str, keys: Keys) -> Result<()> {
    let options = &zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    client.create(path, b"0", options).await?;
    if let Keys::Rotating { count, .. } = keys {
        for key in 0..count {
            client.create(&keys.path_of(path, key), b"0", options).await?;
        }
    }
    Ok(())
}

/// One client of the workload.
#[derive(Debug, Clone)]
pub struct RegisterClient {
    /// The client's number in the history.
    pub id: usize,
    /// The znode, created beforehand holding `0`, or the parent of the keys ([`Keys`]).
    pub path: String,
    /// Whether the client works on `path` alone or moves through keys under it.
    pub keys: Keys,
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
        let mut key = 0u64;
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
            if self.keys.key_at(call) != key {
                key = self.keys.key_at(call);
                seen_version = 0;
            }
            let path = self.keys.path_of(&self.path, key);
            let answer = tokio::time::timeout(self.op_deadline, apply(client, &path, input)).await;
            let returned = started.elapsed();
            let Ok(Ok(output)) = answer else {
                if input != RegisterInput::Read {
                    let op = Operation { client: self.id, call, returned: None, input };
                    history.lock().unwrap().push(Recorded { key, op });
                }
                session = None;
                target = self.then.clone();
                continue;
            };
            match output {
                RegisterOutput::Read { version, .. } | RegisterOutput::Set { version } => seen_version = version,
                RegisterOutput::BadVersion => {}
            }
            let op = Operation { client: self.id, call, returned: Some((returned, output)), input };
            history.lock().unwrap().push(Recorded { key, op });
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
    let answered = |h: &History| h.lock().unwrap().iter().filter(|r| r.op.returned.is_some()).count();
    let target = answered(history) + more;
    crate::within_for(limit, what, async {
        while answered(history) < target {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Prints the history's make-up and checks each key's history against a register created
/// holding `0`; fails when a kind of operation is missing (nothing to check) or with the first
/// violation printed, naming its key. `events` names what happened during the run, for both.
pub fn verdict(history: &[Recorded], events: &str) -> Result<()> {
    let count = |f: fn(&RegisterOutput) -> bool| {
        history.iter().filter(|r| r.op.returned.as_ref().is_some_and(|(_, out)| f(out))).count()
    };
    let (reads, sets, refused) = (
        count(|o| matches!(o, RegisterOutput::Read { .. })),
        count(|o| matches!(o, RegisterOutput::Set { .. })),
        count(|o| matches!(o, RegisterOutput::BadVersion)),
    );
    let unanswered = history.iter().filter(|r| r.op.returned.is_none()).count();
    let mut by_key: BTreeMap<u64, Vec<Operation<RegisterInput, RegisterOutput>>> = BTreeMap::new();
    for r in history {
        by_key.entry(r.key).or_default().push(r.op.clone());
    }
    eprintln!(
        "{} operations on {} key(s) ({events}): {reads} reads, {sets} sets, {refused} BadVersion, {unanswered} \
         without an answer",
        history.len(),
        by_key.len()
    );
    ensure!(sets > 0 && refused > 0 && reads > 0, "the history lacks a kind of operation: nothing to check");
    for (key, ops) in &by_key {
        let on = if by_key.len() > 1 { format!(" on key {key}") } else { String::new() };
        match check(&Register { initial: 0 }, ops) {
            Verdict::Linearizable => {}
            Verdict::Violation(text) => bail!("not linearizable{on} ({events}):\n{text}"),
            Verdict::Undecided { steps } => bail!("the checker gave up{on} after {steps} steps"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn op(key: u64, client: usize, call: u64, ret: u64, input: RegisterInput, out: RegisterOutput) -> Recorded {
        Recorded { key, op: Operation { client, call: at(call), returned: Some((at(ret), out)), input } }
    }

    fn set(key: u64, client: usize, call: u64, ret: u64, value: u64, version: i32) -> Recorded {
        op(key, client, call, ret, RegisterInput::Write(value), RegisterOutput::Set { version })
    }

    fn read(key: u64, client: usize, call: u64, ret: u64, value: u64, version: i32) -> Recorded {
        op(key, client, call, ret, RegisterInput::Read, RegisterOutput::Read { value, version })
    }

    fn refused(key: u64, client: usize, call: u64, ret: u64) -> Recorded {
        let input = RegisterInput::CompareAndSet { value: 9, expected: 7 };
        op(key, client, call, ret, input, RegisterOutput::BadVersion)
    }

    #[test]
    fn rotating_keys_follow_the_clock_and_stop_at_the_last() {
        let keys = Keys::Rotating { period: at(2000), count: 3 };
        assert_eq!([0, 1999, 2000, 4001, 60_000].map(|t| keys.key_at(at(t))), [0, 0, 1, 2, 2]);
        assert_eq!(keys.path_of("/r", 2), "/r/2");
        assert_eq!(Keys::One.key_at(at(60_000)), 0);
        assert_eq!(Keys::One.path_of("/r", 0), "/r");
        // 30 s in periods of 2 s: 16 keys, half as many again and 8 spare.
        assert_eq!(Keys::rotating_for(at(30_000), at(2000)), Keys::Rotating { period: at(2000), count: 32 });
    }

    #[test]
    fn each_key_is_checked_on_its_own_and_a_violation_names_its_key() {
        // Key 1 is read as created after key 0 was set: one register could not explain it,
        // two can.
        let apart = [set(0, 0, 0, 10, 5, 1), read(0, 1, 20, 30, 5, 1), read(1, 1, 40, 50, 0, 0), refused(1, 0, 60, 70)];
        verdict(&apart, "two keys").expect("two registers explain it");
        let as_one: Vec<Recorded> = apart.iter().cloned().map(|r| Recorded { key: 0, ..r }).collect();
        let err = verdict(&as_one, "one key").expect_err("one register cannot read 0 after 5").to_string();
        assert!(err.starts_with("not linearizable (one key)"), "{err}");
        // A stale read on key 1 alone, after its own set.
        let mut stale = apart.to_vec();
        stale.extend([set(1, 0, 80, 90, 6, 1), read(1, 1, 100, 110, 0, 0)]);
        let err = verdict(&stale, "stale").expect_err("a read of 0 after 6 was set").to_string();
        assert!(err.starts_with("not linearizable on key 1 (stale)"), "{err}");
    }
}
