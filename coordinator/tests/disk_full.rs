//! A full disk under a real `referee-coordinator`: its data directory a tmpfs mounted with a
//! size limit (so this needs root, and skips loudly without it), filled by clients writing
//! large znodes. The server must stop on its own with one message saying what failed and what
//! to do, never acknowledge a write it could not make durable, and, given room, start again on
//! the same directory with every acknowledged write.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::child::ChildServer;
use common::*;
use referee_testkit::{connect, running_as_root, skip, wait_until, within_for};
use tokio::sync::watch;

/// The tmpfs's size: one log segment (64 MiB, allocated whole when it is opened) and some room,
/// not enough for the next segment.
const DISK_MIB: u64 = 80;
/// About 7 MiB beside the segment: room for a first snapshot of 20 znodes (5 MiB), never for a
/// later one beside it.
const SNAPSHOT_DISK_MIB: u64 = 71;
/// Where the writers of the snapshot test wait for a snapshot to have failed: a quarter of the
/// segment in, with snapshots of 120 znodes (30 MiB) due and no room for one.
const PAUSE_AFTER_WRITES: usize = 120;
/// Each znode's data: a quarter of a MiB, so that the disk fills within a few hundred writes.
const DATA_BYTES: usize = 256 << 10;
const WRITERS: usize = 4;

/// A tmpfs mounted with a size limit, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, mib: u64) -> Result<Tmpfs> {
        std::fs::create_dir_all(at)?;
        run(Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "referee-test"]).arg(at))?;
        Ok(Tmpfs(at.to_path_buf()))
    }

    /// Gives it `mib` MiB in all, its files kept.
    fn resize(&self, mib: u64) -> Result<()> {
        run(Command::new("mount").args(["-o", &format!("remount,size={mib}m")]).arg(&self.0))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Creates `/full-{writer}-{i}` one after another until a create fails; records each
/// acknowledged path. Once `pause.0` writes are acknowledged in all, waits for `pause.1` to
/// read true before the next.
async fn write_until_refused(
    server: std::net::SocketAddr,
    writer: usize,
    acked: Arc<Mutex<Vec<String>>>,
    pause: (usize, watch::Receiver<bool>),
) -> Result<()> {
    let (pause_after, mut go_on) = pause;
    let c = connect(&server.to_string(), Duration::from_secs(10)).await?;
    let data = vec![b'f'; DATA_BYTES];
    for i in 0.. {
        if acked.lock().unwrap().len() >= pause_after {
            go_on.wait_for(|go| *go).await?;
        }
        let path = format!("/full-{writer}-{i}");
        if c.create(&path, &data, PERSISTENT).await.is_err() {
            return Ok(());
        }
        acked.lock().unwrap().push(path);
    }
    Ok(())
}

/// Starts a server with `extra` configuration on a tmpfs of `disk_mib`, fills it with
/// [`WRITERS`] clients until the server stops, checks how it stopped, gives the tmpfs room and
/// starts the server again: every acknowledged write must be there. The server's log of the
/// first run.
///
/// With `pause_until`, the writers stop after [`PAUSE_AFTER_WRITES`] writes until a line of
/// the server's log holds every string it names (within 60 s), then go on: how a test makes
/// sure that something the server does in the background happened before the disk is full,
/// however slowly the machine runs it.
async fn fill_stop_and_recover(
    test: &str,
    extra: &str,
    disk_mib: u64,
    pause_until: Option<&[&str]>,
) -> Result<Option<String>> {
    if !running_as_root() {
        skip(test, "needs root to mount a size-limited tmpfs as the server's data directory");
        return Ok(None);
    }
    let mut mounted = None;
    let mut server = ChildServer::start_prepared(extra, |dir| {
        mounted = Some(Tmpfs::mount(&dir.path("data"), disk_mib)?);
        Ok(())
    })
    .await?;
    let disk = mounted.context("the data directory's tmpfs")?;

    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let (go_on, paused) = watch::channel(pause_until.is_none());
    let pause_after = if pause_until.is_some() { PAUSE_AFTER_WRITES } else { usize::MAX };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(write_until_refused(server.addr, w, acked.clone(), (pause_after, paused.clone()))))
        .collect();
    if let Some(wanted) = pause_until {
        let what = format!("{PAUSE_AFTER_WRITES} writes acknowledged, then a line of the server's log with {wanted:?}");
        wait_until(Duration::from_secs(60), &what, || {
            acked.lock().unwrap().len() >= PAUSE_AFTER_WRITES
                && server.log().lines().any(|l| wanted.iter().all(|w| l.contains(w)))
        })
        .await
        .with_context(|| format!("the server's log:\n{}", server.log()))?;
        go_on.send_replace(true);
    }
    let status = server.exited_within(Duration::from_secs(60)).await?;
    for w in writers {
        within_for(Duration::from_secs(20), "a writer to see the server gone", w).await???;
    }
    let log = server.log();
    ensure!(!status.success(), "the server exited with {status} on a full disk; its log:\n{log}");
    // Its last word, on stderr (openraft's threads may log after it): what failed, on which
    // file, that nothing unsynced was acknowledged, what to do.
    let last = log.lines().rev().find(|l| l.starts_with("referee-coordinator: ")).unwrap_or_default();
    for needed in ["storage failed, the server stopped", "No space left on device", "/data/log/", "restart the server"]
    {
        ensure!(last.contains(needed), "the server's last line does not say {needed:?}: {last:?}; its log:\n{log}");
    }
    ensure!(
        last.contains("No write was acknowledged without being durable"),
        "the last line does not say what became of the writes: {last:?}"
    );
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    ensure!(acked.len() > 100, "only {} writes acknowledged before the disk filled", acked.len());
    eprintln!("{} writes of {DATA_BYTES} bytes acknowledged, then: {last}", acked.len());

    // Room again: the same directory starts, with every acknowledged write.
    disk.resize(4 * disk_mib)?;
    server.restart().await.context("starting again on the same data directory with room")?;
    let c = connect(&server.addr.to_string(), Duration::from_secs(10)).await?;
    for path in &acked {
        let stat = c.check_stat(path).await?.with_context(|| format!("{path} was acknowledged and is gone"))?;
        ensure!(stat.data_length as usize == DATA_BYTES, "{path} holds {} bytes", stat.data_length);
    }
    c.create("/after-the-disk-had-room", b"ok", PERSISTENT).await.context("a write after the restart")?;
    server.kill9()?;
    drop(disk);
    Ok(Some(log))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_the_server_and_with_room_again_every_acknowledged_write_is_there() -> Result<()> {
    const TEST: &str = "a_full_disk_stops_the_server_and_with_room_again_every_acknowledged_write_is_there";
    fill_stop_and_recover(TEST, "", DISK_MIB, None).await.map(drop)
}

/// A snapshot every 20 writes (5 MiB and more each) on a disk with about 7 MiB beside the log:
/// the first may fit, every later one finds no room, is logged and given up (its temporary file
/// removed) without stopping anything, until the log itself finds no room; nothing of it may
/// stand in the way of the restart. The writers wait a quarter of the way in until a snapshot
/// has failed, which on a loaded machine may take longer than filling the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_finds_the_disk_full_is_given_up_and_the_log_keeps_everything() -> Result<()> {
    const TEST: &str = "a_snapshot_that_finds_the_disk_full_is_given_up_and_the_log_keeps_everything";
    const FAILED: &[&str] = &["snapshot failed", "No space left on device"];
    let extra = "snapshot_every_txns: 20\n";
    let Some(log) = fill_stop_and_recover(TEST, extra, SNAPSHOT_DISK_MIB, Some(FAILED)).await? else {
        return Ok(());
    };
    ensure!(!log.contains("could not remove a failed snapshot"), "a failed snapshot was left behind:\n{log}");
    Ok(())
}

/// A server that finds its disk full at start-up (it cannot even save its vote for the new
/// term) stops at once with the storage failure, the file and the operating system's error,
/// not with a leader it waited for in vain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_at_start_up_is_reported_as_the_storage_failure() -> Result<()> {
    const TEST: &str = "a_full_disk_at_start_up_is_reported_as_the_storage_failure";
    if !running_as_root() {
        skip(TEST, "needs root to mount a size-limited tmpfs as the server's data directory");
        return Ok(());
    }
    let mut mounted = None;
    let mut server = ChildServer::start_prepared("", |dir| {
        mounted = Some(Tmpfs::mount(&dir.path("data"), DISK_MIB)?);
        Ok(())
    })
    .await?;
    let _disk = mounted.context("the data directory's tmpfs")?;
    let c = connect(&server.addr.to_string(), Duration::from_secs(10)).await?;
    for i in 0..20 {
        c.create(&format!("/before-{i}"), b"x", PERSISTENT).await?;
    }
    drop(c);
    server.kill9()?;
    // Every byte the tmpfs has left taken.
    let filler = server.data_dir().join("filler");
    let mut f = std::fs::File::create(&filler)?;
    let block = vec![0xffu8; 1 << 20];
    loop {
        use std::io::Write;
        match f.write_all(&block) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc_enospc()) => break,
            Err(e) => return Err(e).context("filling the tmpfs"),
        }
    }
    drop(f);
    let e = server.restart().await.expect_err("a start on a full disk fails");
    let log = server.log();
    let last = log.lines().rev().find(|l| l.starts_with("referee-coordinator: ")).unwrap_or_default();
    for needed in ["No space left on device", "raft-meta", "/data/log/"] {
        ensure!(last.contains(needed), "the server's last line does not say {needed:?}: {last:?}; {e}");
    }
    ensure!(!last.contains("did not become leader"), "a storage failure reported as no leader: {last:?}");
    Ok(())
}

/// ENOSPC on Linux.
fn libc_enospc() -> i32 {
    28
}
