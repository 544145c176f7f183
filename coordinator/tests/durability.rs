//! Durability with real processes: a `referee-coordinator` killed with SIGKILL in the middle of
//! a stream of acknowledged writes from several clients comes back with every one of them;
//! sessions outlive a restart; damaged log and snapshot files are cut, skipped or refused as
//! their place in the history demands; another cluster's data directory is refused.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context, Result};
use common::child::ChildServer;
use common::raw::{body, op, Raw};
use common::*;
use referee_coordinator::datadir::{read_identity, IDENTITY_NAME};
use referee_coordinator::dump::dump_log;
use referee_coordinator::log::record::{self, Read};
use referee_coordinator::log::{wal, RealFs};
use referee_coordinator::snapshot::parse_snapshot_name;
use referee_testkit::{connect, wait_until, within_for};
use tokio::sync::watch;
use zookeeper_client as zk;

/// What one writer had acknowledged when the server was killed.
#[derive(Debug, Default, Clone)]
struct Progress {
    /// Paths whose create was acknowledged.
    created: Vec<String>,
    /// The last setData value sent, and the last acknowledged.
    set_sent: Option<u64>,
    set_acked: Option<u64>,
}

/// One writer: creates `base/n<i>` and sets `base` to `i`, one after the other, recording each
/// acknowledgement, until the server goes away.
async fn write_until_error(
    client: zk::Client,
    base: String,
    progress: Arc<Mutex<Progress>>,
    acks: watch::Sender<usize>,
) {
    for i in 0u64.. {
        let path = format!("{base}/n{i}");
        if client.create(&path, b"durable", PERSISTENT).await.is_err() {
            return;
        }
        progress.lock().unwrap().created.push(path);
        acks.send_modify(|n| *n += 1);
        progress.lock().unwrap().set_sent = Some(i);
        if client.set_data(&base, i.to_string().as_bytes(), None).await.is_err() {
            return;
        }
        progress.lock().unwrap().set_acked = Some(i);
        acks.send_modify(|n| *n += 1);
    }
}

/// Checks that everything `progress` records as acknowledged under `base` is there.
async fn check_acknowledged(client: &zk::Client, base: &str, progress: &Progress) -> Result<()> {
    for path in &progress.created {
        ensure!(
            client.check_stat(path).await?.is_some(),
            "{path} was acknowledged as created before the kill and is gone after the restart"
        );
    }
    let (data, _) = client.get_data(base).await?;
    let text = String::from_utf8(data)?;
    match (progress.set_acked, progress.set_sent) {
        (Some(acked), Some(sent)) => {
            let value: u64 = text.parse().with_context(|| format!("{base} holds {text:?}"))?;
            ensure!(
                (acked..=sent).contains(&value),
                "{base} holds {value}; the last acknowledged setData wrote {acked} and the last sent {sent}"
            );
        }
        (None, Some(sent)) => ensure!(
            text.is_empty() || text.parse::<u64>().is_ok_and(|v| v <= sent),
            "{base} holds {text:?}, never sent"
        ),
        (_, None) => ensure!(text.is_empty(), "{base} holds {text:?} though no setData was sent"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_write_survives_kill_9_at_varying_points() -> Result<()> {
    // Small snapshot interval: snapshots are written and the log purged during the rounds.
    let mut server = ChildServer::start("snapshot_every_txns: 150\n").await?;
    const WRITERS: usize = 6;
    let mut history: Vec<(String, Progress)> = Vec::new();
    for (round, kill_after) in [1usize, 40, 333, 900].into_iter().enumerate() {
        let admin = connect(&server.addr.to_string(), Duration::from_secs(10)).await?;
        admin.create(&format!("/r{round}"), b"", PERSISTENT).await?;
        let (acks_tx, mut acks_rx) = watch::channel(0usize);
        let mut writers = Vec::new();
        let mut progress = Vec::new();
        for w in 0..WRITERS {
            let base = format!("/r{round}/w{w}");
            admin.create(&base, b"", PERSISTENT).await?;
            let p = Arc::new(Mutex::new(Progress::default()));
            progress.push((base.clone(), p.clone()));
            let client = connect(&server.addr.to_string(), Duration::from_secs(10)).await?;
            writers.push(tokio::spawn(write_until_error(client, base, p, acks_tx.clone())));
        }
        within_for(
            Duration::from_secs(60),
            &format!("{kill_after} acknowledged writes"),
            acks_rx.wait_for(|&n| n >= kill_after),
        )
        .await??;
        // SIGKILL while the writers go on: their requests in flight are the unacknowledged ones.
        server.kill9()?;
        for w in &writers {
            w.abort();
        }
        for w in writers {
            let _ = w.await;
        }
        drop(admin);
        let acked = *acks_rx.borrow();
        for (base, p) in progress {
            history.push((base, p.lock().unwrap().clone()));
        }
        server.restart().await.with_context(|| format!("restart after round {round}"))?;
        let reader = connect(&server.addr.to_string(), Duration::from_secs(10)).await?;
        // Every round so far, not only this one: earlier rounds were restored from a snapshot
        // plus the log after it once snapshots have been taken.
        for (base, p) in &history {
            check_acknowledged(&reader, base, p)
                .await
                .with_context(|| format!("round {round}, killed after {acked} acknowledgements"))?;
        }
    }
    let snapshots = std::fs::read_dir(server.data_dir().join("snapshots"))?
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_none_or(|x| x != "tmp")))
        .count();
    assert!(snapshots >= 1, "the rounds wrote enough entries to take snapshots");
    Ok(())
}

async fn exists(raw: &mut Raw, path: &str) -> Result<bool> {
    let reply = raw.call(op::EXISTS, &body::path_watch(path, false)).await?;
    Ok(reply.err == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_and_their_ephemerals_survive_a_restart_with_a_fresh_timeout() -> Result<()> {
    let mut server = ChildServer::start("").await?;
    let mut kept = Raw::connect(server.addr, 20_000).await?;
    kept.call(op::CREATE, &body::create("/kept", b"k", 1)).await?.ok()?;
    let mut left = Raw::connect(server.addr, 3_000).await?;
    left.call(op::CREATE, &body::create("/left", b"l", 1)).await?.ok()?;
    let (kept_id, kept_pw) = (kept.session_id, kept.passwd.clone());
    server.kill9()?;
    drop((kept, left));
    server.restart().await?;

    let mut resumed = Raw::resume(server.addr, kept_id, &kept_pw, 20_000)
        .await
        .context("a session resumed within its timeout after the restart")?;
    assert!(exists(&mut resumed, "/kept").await?, "the resumed session keeps its ephemeral");
    // The session that does not come back gets a whole timeout from the restart (no clock
    // arithmetic across it), so its ephemeral is still there now and goes once it expires.
    assert!(exists(&mut resumed, "/left").await?, "a session is not expired by the restart itself");
    within_for(Duration::from_secs(20), "/left to go with its expired session", async {
        loop {
            if !exists(&mut resumed, "/left").await? {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await??;
    assert!(exists(&mut resumed, "/kept").await?, "the live session's ephemeral stays");
    Ok(())
}

/// Creates `/a0..n`.
async fn write_some(server: &ChildServer, n: usize) -> Result<()> {
    let c = connect(&server.addr.to_string(), Duration::from_secs(10)).await?;
    for i in 0..n {
        c.create(&format!("/a{i}"), b"x", PERSISTENT).await?;
    }
    Ok(())
}

async fn count_present(server: &ChildServer, n: usize) -> Result<usize> {
    let c = connect(&server.addr.to_string(), Duration::from_secs(10)).await?;
    let mut present = 0;
    for i in 0..n {
        if c.check_stat(&format!("/a{i}")).await?.is_some() {
            present += 1;
        }
    }
    Ok(present)
}

fn damage(path: &std::path::Path, f: impl FnOnce(&mut Vec<u8>)) -> Result<()> {
    let mut bytes = std::fs::read(path)?;
    f(&mut bytes);
    std::fs::write(path, bytes)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_log_tail_is_cut_and_logged_at_start() -> Result<()> {
    let mut server = ChildServer::start("").await?;
    write_some(&server, 10).await?;
    server.kill9()?;
    let summary = dump_log(&RealFs, &server.data_dir(), &mut std::io::sink())?;
    let (file, offset) = summary.records_end.ok_or_else(|| anyhow!("no end of records"))?;
    // What a crash in the middle of writing the next record leaves: its length word and
    // checksum, and the first part of its payload, never synced nor acknowledged.
    damage(&file, |b| {
        let at = offset as usize;
        b[at..at + 8].copy_from_slice(&[100, 0, 0, 0, 1, 2, 3, 4]);
        b[at + 8..at + 28].fill(0x55);
    })?;
    server.restart().await?;
    let log = server.log();
    assert!(
        log.contains("torn tail") && log.contains(&file.display().to_string()) && log.contains(&offset.to_string()),
        "start-up names the file and offset of the cut: {log}"
    );
    assert_eq!(count_present(&server, 10).await?, 10, "the entries before the torn record are all there");
    Ok(())
}

/// A power cut while the server's last write was on its way to the disk can keep later pages
/// of that write and lose an earlier one (a disk writes a write's pages in any order). None of
/// it was acknowledged, its fdatasync not having returned: the server starts with every
/// acknowledged entry and cuts the write's remains, rather than refusing its log as damaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_that_loses_a_page_inside_the_last_write_is_cut_not_refused() -> Result<()> {
    use openraft::{Entry, EntryPayload, LogId};
    let mut server = ChildServer::start("").await?;
    write_some(&server, 10).await?;
    server.kill9()?;
    // What the server's next write would have been: entries after its last, over several
    // pages, written and never synced (played here through the log's own code).
    let identity = read_identity(&RealFs, &server.data_dir().join(IDENTITY_NAME))?;
    let dir = server.data_dir().join("log");
    let (mut log, recovered) = wal::Wal::open(Arc::new(RealFs), wal::WalOptions::new(&dir, identity.cluster_id))?;
    let last = recovered.entries.last().ok_or_else(|| anyhow!("an empty log"))?.log_id;
    let (file, start) = dump_log(&RealFs, &server.data_dir(), &mut std::io::sink())?
        .records_end
        .ok_or_else(|| anyhow!("no end of records"))?;
    let next: Vec<Entry<_>> = (1..=1_000)
        .map(|i| Entry { log_id: LogId { index: last.index + i, ..last }, payload: EntryPayload::Blank })
        .collect();
    log.append(&next)?;
    drop(log);
    let (_, end) = dump_log(&RealFs, &server.data_dir(), &mut std::io::sink())?
        .records_end
        .ok_or_else(|| anyhow!("no end of records"))?;
    // The power cut: the write's second page never reached the disk, its later ones did.
    let page = (start / 4096 + 1) * 4096;
    ensure!(end > page + 4096, "the write ({start}..{end}) spans more than two pages");
    // The cut belongs at the first record that reaches into the lost page.
    let bytes = std::fs::read(&file)?;
    let mut cut = start as usize;
    while let Read::Record { next, .. } = record::read_record(&bytes, cut) {
        if next as u64 > page {
            break;
        }
        cut = next;
    }
    damage(&file, |b| b[page as usize..page as usize + 4096].fill(0))?;
    server.restart().await.context("start-up after the power cut")?;
    let log = server.log();
    assert!(
        log.contains("torn tail") && log.contains(&file.display().to_string()) && log.contains(&cut.to_string()),
        "start-up names the file and offset of the cut ({cut}): {log}"
    );
    assert_eq!(count_present(&server, 10).await?, 10, "every acknowledged create is there");
    server.kill9()?;
    let summary = dump_log(&RealFs, &server.data_dir(), &mut std::io::sink())?;
    assert_eq!(summary.torn, None, "nothing of the lost write is left after the cut");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_before_the_log_tail_is_refused_naming_file_and_offset() -> Result<()> {
    let mut server = ChildServer::start("").await?;
    write_some(&server, 10).await?;
    server.kill9()?;
    let mut listing = Vec::new();
    dump_log(&RealFs, &server.data_dir(), &mut listing)?;
    let listing = String::from_utf8(listing)?;
    // The record of the 5th entry: its offset is the first column of its line.
    let line = listing
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("5"))
        .ok_or_else(|| anyhow!("no entry 5 in:\n{listing}"))?;
    let offset: usize = line.split_whitespace().next().unwrap().parse()?;
    let segment = server.data_dir().join("log").join("log-00000000000000000000");
    damage(&segment, |b| b[offset + 12] ^= 0x40)?;
    let e = server.restart().await.expect_err("a log damaged before its tail is refused").to_string();
    assert!(
        e.contains(&segment.display().to_string()) && e.contains(&format!("at byte {offset}")),
        "the refusal names the file and offset: {e}"
    );
    let dumped = dump_log(&RealFs, &server.data_dir(), &mut std::io::sink()).unwrap_err().to_string();
    assert!(dumped.contains(&format!("at offset {offset}")), "the dump finds it too: {dumped}");
    Ok(())
}

/// The log's purge point saved in `server`'s data directory: 0 while nothing is purged.
fn saved_purge_point(server: &ChildServer) -> Result<u64> {
    let identity = read_identity(&RealFs, &server.data_dir().join(IDENTITY_NAME))?;
    Ok(wal::saved_purge_point(&RealFs, &server.data_dir().join("log"), identity.cluster_id)?)
}

/// The finished snapshot files in `server`'s data directory, oldest first (not a `.tmp` being
/// written, or one a kill interrupted, which the next start removes).
fn finished_snapshots(server: &ChildServer) -> Result<Vec<std::path::PathBuf>> {
    let dir = server.data_dir().join("snapshots");
    let mut snaps: Vec<_> = std::fs::read_dir(&dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    snaps.retain(|p| p.file_name().and_then(|n| n.to_str()).and_then(parse_snapshot_name).is_some());
    snaps.sort();
    Ok(snaps)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_newest_snapshot_falls_back_to_an_older_one_or_start_is_refused() -> Result<()> {
    let mut server = ChildServer::start("snapshot_every_txns: 20\n").await?;
    write_some(&server, 120).await?;
    // Snapshots are taken in the background, and the log is purged one snapshot late: a kill
    // right after the writes may come before any purge is saved, and then a whole log would
    // rightly stand in for every snapshot (the test below). Here the log must be purged.
    wait_until(DEADLINE, "the log to be purged behind a snapshot", || saved_purge_point(&server).is_ok_and(|p| p > 0))
        .await?;
    server.kill9()?;
    let snaps = finished_snapshots(&server)?;
    ensure!(snaps.len() >= 2, "expected several snapshots, found {snaps:?}");
    let newest = snaps.last().unwrap().clone();
    damage(&newest, |b| {
        let mid = b.len() / 2;
        b[mid] ^= 0x01;
    })?;
    server.restart().await.context("an older snapshot and the log replace a damaged newest one")?;
    let log = server.log();
    assert!(
        log.contains("skipping a damaged snapshot") && log.contains(&newest.display().to_string()),
        "the damaged snapshot is named: {log}"
    );
    assert_eq!(count_present(&server, 120).await?, 120, "nothing is lost by the fallback");

    server.kill9()?;
    // Every finished snapshot; a `.tmp` the kill left (perhaps empty) is removed at start.
    for s in finished_snapshots(&server)? {
        damage(&s, |b| b.truncate(b.len() - 3))?;
    }
    let e = server.restart().await.expect_err("no usable snapshot and a purged log").to_string();
    assert!(e.contains("purged up to entry") && e.contains("Refusing to start"), "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_log_stands_in_for_every_damaged_snapshot() -> Result<()> {
    // One snapshot (at 20 of about 32 transactions): the log is kept back to the snapshot
    // before the newest, so with a single one nothing is purged.
    let mut server = ChildServer::start("snapshot_every_txns: 20\n").await?;
    write_some(&server, 30).await?;
    wait_until(DEADLINE, "the first snapshot", || finished_snapshots(&server).is_ok_and(|s| !s.is_empty())).await?;
    server.kill9()?;
    let snaps = finished_snapshots(&server)?;
    ensure!(snaps.len() == 1, "expected one snapshot, found {snaps:?}");
    assert_eq!(saved_purge_point(&server)?, 0, "the log is not purged up to the only snapshot");
    damage(&snaps[0], |b| b.truncate(b.len() - 3))?;
    server.restart().await.context("the whole log replaces the damaged snapshot")?;
    let log = server.log();
    assert!(
        log.contains("skipping a damaged snapshot") && log.contains("replays the whole log"),
        "the damaged snapshot and the replay from the first entry are logged: {log}"
    );
    assert_eq!(count_present(&server, 30).await?, 30, "nothing is lost");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_or_a_newer_data_directory_is_refused() -> Result<()> {
    let mut server = ChildServer::start("").await?;
    write_some(&server, 1).await?;
    server.kill9()?;
    let identity = server.data_dir().join("identity");
    let original = std::fs::read_to_string(&identity)?;
    assert!(original.contains("cluster_id: ") && original.contains("server_id: 1"), "{original}");

    server.append_config("cluster_id: 424242\n")?;
    let e = server.restart().await.expect_err("another cluster's directory").to_string();
    assert!(
        e.contains(&identity.display().to_string()) && e.contains("cluster 424242") && e.contains("Point data_dir"),
        "names the file, what it holds, what was expected and what to do: {e}"
    );

    let own: u64 = original
        .lines()
        .find_map(|l| l.strip_prefix("cluster_id: "))
        .ok_or_else(|| anyhow!("no cluster id in {original}"))?
        .parse()?;
    server.append_config("")?;
    std::fs::write(&identity, original.replace("format_version: 1", "format_version: 7"))?;
    let config = server.data_dir().parent().unwrap().join("coordinator.yaml");
    let text = std::fs::read_to_string(&config)?.replace("cluster_id: 424242\n", &format!("cluster_id: {own}\n"));
    std::fs::write(&config, text)?;
    let e = server.restart().await.expect_err("a newer format").to_string();
    assert!(e.contains("format version 7") && e.contains("newer"), "{e}");

    std::fs::write(&identity, original)?;
    server.restart().await.context("its own identity again")?;
    assert_eq!(count_present(&server, 1).await?, 1);
    Ok(())
}

/// A second server pointed at a data directory a running one uses (two configurations with one
/// `data_dir`, a manual start beside a service manager's) would append to the same log and
/// overwrite the first one's acknowledged writes. It must refuse at once, naming the directory
/// and the process that holds it, and touch nothing: the first goes on serving, and after a
/// restart every write it acknowledged is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_a_data_directory_in_use_refuses_and_touches_nothing() -> Result<()> {
    let mut server = ChildServer::start("").await?;
    write_some(&server, 5).await?;
    let scratch = referee_testkit::ScratchDir::new("second-server")?;
    let port = referee_testkit::free_port()?;
    let config = scratch.path("second.yaml");
    std::fs::write(&config, format!("listen: 127.0.0.1:{port}\ndata_dir: {}\n", server.data_dir().display()))?;
    let log = scratch.path("second.log");
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_referee-coordinator"))
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    // It must exit on its own, soon; a second server that keeps running is the failure.
    let exited = within_for(Duration::from_secs(10), "the second server to exit", async {
        loop {
            if let Some(status) = second.try_wait()? {
                return Ok::<_, std::io::Error>(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let status = match exited {
        Ok(status) => status?,
        Err(e) => {
            let _ = second.kill();
            let _ = second.wait();
            return Err(e.context(format!("a second server on {} kept running", server.data_dir().display())));
        }
    };
    let stderr = std::fs::read_to_string(&log)?;
    ensure!(!status.success(), "the second server exited with {status}: {stderr}");
    ensure!(
        stderr.contains(&server.data_dir().display().to_string())
            && stderr.contains("in use")
            && stderr.contains(&server.pid().to_string()),
        "the refusal names the directory and the process holding it: {stderr}"
    );
    // The first goes on, and keeps everything.
    let c = connect(&server.addr.to_string(), Duration::from_secs(10)).await?;
    c.create("/after", b"x", PERSISTENT).await?;
    drop(c);
    server.restart().await?;
    assert_eq!(count_present(&server, 5).await?, 5, "every write acknowledged before");
    let c = connect(&server.addr.to_string(), Duration::from_secs(10)).await?;
    ensure!(c.check_stat("/after").await?.is_some(), "the write acknowledged after the refusal");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_dump_lists_every_write_with_its_path() -> Result<()> {
    let mut server = ChildServer::start("").await?;
    write_some(&server, 3).await?;
    server.kill9()?;
    let mut out = Vec::new();
    let summary = dump_log(&RealFs, &server.data_dir(), &mut out)?;
    let text = String::from_utf8(out)?;
    for i in 0..3 {
        assert!(
            text.lines().any(|l| l.contains("create") && l.trim_end().ends_with(&format!("/a{i}"))),
            "/a{i} in:\n{text}"
        );
    }
    assert!(text.contains("createSession") && text.contains("membership"), "{text}");
    assert_eq!(summary.torn, None);
    assert!(summary.entries >= 6, "{summary:?}");
    let e = dump_log(&RealFs, &server.data_dir().join("nothing-here"), &mut std::io::sink()).unwrap_err();
    assert!(e.to_string().contains("not a readable directory"), "{e}");
    Ok(())
}

/// The log segment files in `server`'s data directory, oldest first.
fn log_segments(server: &ChildServer) -> Result<Vec<std::path::PathBuf>> {
    let dir = server.data_dir().join("log");
    let mut segments: Vec<_> = std::fs::read_dir(&dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    segments.retain(|p| p.file_name().and_then(|n| n.to_str()).and_then(wal::parse_segment_name).is_some());
    segments.sort();
    Ok(segments)
}

/// The newest segment holds every entry from its start to the log's end, those after the purge
/// point included, however far before the purge point it starts (the usual case: a 64 MiB
/// segment outlasts several snapshots). Deleted, it takes acknowledged writes with it: start-up
/// and the dump refuse the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_newest_segment_that_began_before_the_purge_point_is_refused() -> Result<()> {
    let mut server = ChildServer::start("snapshot_every_txns: 20\n").await?;
    write_some(&server, 60).await?;
    wait_until(DEADLINE, "the log to be purged behind a snapshot", || saved_purge_point(&server).is_ok_and(|p| p > 0))
        .await?;
    // Acknowledged after the snapshots: in the log alone.
    let c = connect(&server.addr.to_string(), Duration::from_secs(10)).await?;
    for i in 0..5 {
        c.create(&format!("/late{i}"), b"x", PERSISTENT).await?;
    }
    drop(c);
    server.kill9()?;
    let segments = log_segments(&server)?;
    ensure!(segments.len() == 1, "one segment, begun before the purge point: {segments:?}");
    std::fs::remove_file(&segments[0])?;
    let e = server.restart().await.expect_err("a log without its newest segment is refused").to_string();
    assert!(
        e.contains(&segments[0].display().to_string()) && e.contains("was started, but it is missing"),
        "the refusal names the missing segment: {e}"
    );
    let dumped = dump_log(&RealFs, &server.data_dir(), &mut std::io::sink()).unwrap_err().to_string();
    assert!(dumped.contains("was started, but it is missing"), "the dump finds it too: {dumped}");
    Ok(())
}

/// A segment is preallocated, and synced, before its name appears, and every cut is
/// preallocated again: a file shorter than its preallocated size was cut after it was written
/// (here at a record boundary, which looks like a clean end of records). Start-up and the dump
/// refuse it, naming the file and where it now ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_segment_cut_short_of_its_preallocated_size_is_refused() -> Result<()> {
    let mut server = ChildServer::start("").await?;
    write_some(&server, 50).await?;
    server.kill9()?;
    let summary = dump_log(&RealFs, &server.data_dir(), &mut std::io::sink())?;
    let (file, offset, index) = summary.last_record.ok_or_else(|| anyhow!("no record"))?;
    // The last record cut off: what is left ends at a record boundary.
    let f = std::fs::OpenOptions::new().write(true).open(&file)?;
    f.set_len(offset)?;
    drop(f);
    let e = server.restart().await.expect_err("a segment cut after it was written is refused").to_string();
    assert!(
        e.contains(&file.display().to_string()) && e.contains(&format!("at byte {offset}")) && e.contains("cut"),
        "the refusal names the file, the offset of the cut and what happened (entry {index} is gone): {e}"
    );
    let dumped = dump_log(&RealFs, &server.data_dir(), &mut std::io::sink()).unwrap_err().to_string();
    assert!(dumped.contains(&format!("at offset {offset}")) && dumped.contains("cut"), "the dump finds it: {dumped}");
    Ok(())
}

/// Snapshots past entry 0 are taken only of committed entries, after the server saved a vote:
/// beside them, a log directory emptied of its files (the saved vote with them) is refused as a
/// lost saved state, as entries without the vote are, rather than started in a term whose vote
/// was forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_log_directory_beside_snapshots_is_refused() -> Result<()> {
    let mut server = ChildServer::start("snapshot_every_txns: 20\n").await?;
    write_some(&server, 30).await?;
    wait_until(DEADLINE, "a snapshot", || finished_snapshots(&server).is_ok_and(|s| !s.is_empty())).await?;
    server.kill9()?;
    let log = server.data_dir().join("log");
    for f in std::fs::read_dir(&log)? {
        std::fs::remove_file(f?.path())?;
    }
    let e = server.restart().await.expect_err("snapshots without the saved vote are refused").to_string();
    assert!(
        e.contains("raft-meta") && e.contains("no saved Raft state") && e.contains("snapshot"),
        "the refusal names the missing raft-meta and the snapshot that shows it existed: {e}"
    );
    let dumped = dump_log(&RealFs, &server.data_dir(), &mut std::io::sink()).unwrap_err().to_string();
    assert!(dumped.contains("no saved Raft state"), "the dump finds it too: {dumped}");
    Ok(())
}

/// The dump tools exit non-zero on what start-up refuses: a data directory of a newer format,
/// and snapshots of a cluster other than the directory's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dumps_refuse_a_newer_directory_and_another_clusters_snapshots() -> Result<()> {
    use referee_coordinator::dump::{dump_snapshots, DumpError};
    let mut server = ChildServer::start("snapshot_every_txns: 20\n").await?;
    write_some(&server, 30).await?;
    wait_until(DEADLINE, "a snapshot", || finished_snapshots(&server).is_ok_and(|s| !s.is_empty())).await?;
    server.kill9()?;
    let identity = server.data_dir().join(IDENTITY_NAME);
    let original = std::fs::read_to_string(&identity)?;
    let own = read_identity(&RealFs, &identity)?.cluster_id;

    std::fs::write(
        &identity,
        original.replace(&format!("cluster_id: {own}\n"), &format!("cluster_id: {}\n", own + 1)),
    )?;
    match dump_snapshots(&RealFs, &server.data_dir(), &mut std::io::sink()) {
        Err(DumpError::Damaged(why)) => assert!(
            why.contains(&format!("belongs to cluster {own}")) && why.contains(&format!("({})", own + 1)),
            "{why}"
        ),
        other => panic!("another cluster's snapshots dumped as {other:?}"),
    }

    std::fs::write(&identity, original.replace("format_version: 1", "format_version: 9"))?;
    for (what, dumped) in [
        ("log", dump_log(&RealFs, &server.data_dir(), &mut std::io::sink()).map(drop)),
        ("snapshot", dump_snapshots(&RealFs, &server.data_dir(), &mut std::io::sink())),
    ] {
        match dumped {
            Err(DumpError::Damaged(why)) => assert!(why.contains("format version 9") && why.contains("newer"), "{why}"),
            other => panic!("the {what} dump of a newer directory gave {other:?}"),
        }
    }
    Ok(())
}
