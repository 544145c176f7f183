//! Micro-benchmark of the durable Raft log on a real disk: appends of one entry each (a
//! setData of 100 bytes), with 1, 16 and 256 appends in flight, counting how many fdatasyncs
//! group commit spends on them.
//!
//! ```text
//! cargo run --release -p referee-coordinator --example raft_log_bench -- [DIR] [SECONDS]
//! ```
//!
//! DIR defaults to a new directory under the system temp dir (which must be a real disk, not
//! tmpfs, for the figures to mean anything); it is removed afterwards.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use referee_coordinator::log::{FileSystem, LogFile, LogStore, RealFs, WalOptions};
use referee_coordinator::proto::SessionId;
use referee_coordinator::txn::{Txn, TxnOp, WriteOp};

/// The real filesystem, counting file fsyncs.
#[derive(Debug, Default)]
struct CountingFs {
    syncs: Arc<AtomicU64>,
}

#[derive(Debug)]
struct CountingFile {
    inner: Box<dyn LogFile>,
    syncs: Arc<AtomicU64>,
}

impl LogFile for CountingFile {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.inner.write_at(offset, buf)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_data()
    }
    fn write_back(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.write_back(offset, len)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        self.inner.preallocate(len)
    }
    fn initialise(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.initialise(offset, len)
    }
}

impl FileSystem for CountingFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        RealFs.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        RealFs.list(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        Ok(Box::new(CountingFile { inner: RealFs.create(path)?, syncs: Arc::clone(&self.syncs) }))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        Ok(Box::new(CountingFile { inner: RealFs.open(path)?, syncs: Arc::clone(&self.syncs) }))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        RealFs.read(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        RealFs.rename(from, to)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        RealFs.remove(path)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        RealFs.sync_dir(dir)
    }
    fn lock(&self, path: &Path) -> io::Result<referee_coordinator::log::FileLock> {
        RealFs.lock(path)
    }
}

fn entry(index: u64) -> Entry<referee_coordinator::raft::TypeConfig> {
    Entry {
        log_id: LogId { leader_id: CommittedLeaderId::new(1, 1), index },
        payload: EntryPayload::Normal(vec![Txn {
            session: SessionId(0x100),
            auth: Vec::new(),
            time_ms: 1_700_000_000_000,
            op: TxnOp::Write(WriteOp::SetData {
                path: format!("/bench/n{}", index % 1000),
                data: Some(vec![b'x'; 100]),
                version: -1,
            }),
        }]),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn run(dir: &Path, in_flight: usize, secs: u64) -> anyhow::Result<()> {
    let fs = Arc::new(CountingFs::default());
    let syncs = Arc::clone(&fs.syncs);
    let store = LogStore::open(fs, WalOptions::new(dir.join(format!("w{in_flight}")), 1))?;
    let (tx, rx) = mpsc::channel::<Instant>();
    let mut latencies = Vec::new();
    let mut next = 1u64;
    let mut outstanding = 0usize;
    let start = Instant::now();
    let syncs_before = syncs.load(Ordering::Relaxed);
    while start.elapsed() < Duration::from_secs(secs) {
        while outstanding < in_flight {
            let (tx, sent) = (tx.clone(), Instant::now());
            store.submit_append(
                vec![entry(next)],
                Box::new(move |r| {
                    r.expect("append failed");
                    let _ = tx.send(sent);
                }),
            )?;
            next += 1;
            outstanding += 1;
        }
        let sent = rx.recv()?;
        latencies.push(sent.elapsed());
        outstanding -= 1;
        while let Ok(sent) = rx.try_recv() {
            latencies.push(sent.elapsed());
            outstanding -= 1;
        }
    }
    for _ in 0..outstanding {
        latencies.push(rx.recv()?.elapsed());
    }
    let elapsed = start.elapsed().as_secs_f64();
    let fsyncs = syncs.load(Ordering::Relaxed) - syncs_before;
    latencies.sort_unstable();
    println!(
        "{in_flight:>9} | {:>10.0} | {:>7} | {:>14.1} | {:>9.2?} | {:>9.2?} | {:>9.2?}",
        latencies.len() as f64 / elapsed,
        fsyncs,
        latencies.len() as f64 / fsyncs.max(1) as f64,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 0.999),
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (dir, remove) = match args.next() {
        Some(d) if d.is_empty() => {
            anyhow::bail!("the log directory argument is empty; name a directory or leave it out")
        }
        Some(d) => (PathBuf::from(d), false),
        None => (std::env::temp_dir().join(format!("referee-raft-log-bench-{}", std::process::id())), true),
    };
    let secs: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    println!("log directory: {} ({secs} s per row)", dir.display());
    println!("in flight | appends/s  | fsyncs  | appends/fsync  | p50       | p99       | p99.9");
    for in_flight in [1, 16, 256] {
        run(&dir, in_flight, secs)?;
    }
    if remove {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
