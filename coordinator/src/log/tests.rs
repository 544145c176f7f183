//! The log under faults: fsync failures, a full disk, power loss at chosen points, torn and
//! damaged files; group commit; and the real filesystem.

use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

use super::fs::PAGE;
use super::record::{self, Read, SegmentHeader, HEADER_LEN};
use super::*;
use crate::proto::SessionId;
use crate::raft::TypeConfig;
use crate::txn::{Txn, TxnOp, WriteOp};

const DEADLINE: Duration = referee_testkit::DEADLINE;
const CLUSTER: u64 = 7;

fn dir() -> PathBuf {
    PathBuf::from("/data/log")
}

fn opts(segment_bytes: u64) -> WalOptions {
    WalOptions { dir: dir(), cluster_id: CLUSTER, segment_bytes, first_index: 1 }
}

fn log_id(term: u64, index: u64) -> LogId<u64> {
    LogId { leader_id: CommittedLeaderId::new(term, 1), index }
}

/// An entry whose payload says which term and index wrote it, so stale and new entries differ.
fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(vec![Txn {
            session: SessionId(0),
            auth: Vec::new(),
            time_ms: 0,
            op: TxnOp::Write(WriteOp::Delete { path: format!("/t{term}/i{index}"), version: -1 }),
        }]),
    }
}

/// [`entry`] as formats 1 and 2 held it: one transaction, not a batch.
fn single_txn_entry(term: u64, index: u64) -> Entry<crate::raft::SingleTxnConfig> {
    let Entry { log_id, payload: EntryPayload::Normal(mut batch) } = entry(term, index) else { unreachable!() };
    Entry { log_id, payload: EntryPayload::Normal(batch.remove(0)) }
}

fn ids(entries: &[EncodedEntry]) -> Vec<(u64, u64)> {
    for e in entries {
        // What recovery read without decoding agrees with the decoded entry.
        assert_eq!(e.decode().expect("a recovered entry decodes").log_id, e.log_id);
    }
    entries.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect()
}

fn fault_open(fs: &FaultFs, segment_bytes: u64) -> Result<(Wal, Recovered), LogError> {
    Wal::open(Arc::new(fs.clone()), opts(segment_bytes))
}

/// A log of entries `1..=n` in term 1, each written and synced on its own.
fn written(fs: &FaultFs, n: u64, segment_bytes: u64) -> Wal {
    let (mut wal, rec) = fault_open(fs, segment_bytes).unwrap();
    assert!(rec.entries.is_empty());
    for i in 1..=n {
        wal.append(&[entry(1, i)]).unwrap();
        wal.sync().unwrap();
    }
    wal
}

/// A saved state with a vote, as a server has once it takes part in an election.
fn voted() -> RaftMeta {
    RaftMeta { vote: Some(Vote::new(1, 1)), ..RaftMeta::default() }
}

fn segment_path(first: u64) -> PathBuf {
    dir().join(format!("log-{first:020}"))
}

/// Offsets and ends of the records of a segment file.
fn record_spans(buf: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut at = HEADER_LEN;
    while let Read::Record { next, .. } = record::read_record(buf, at) {
        spans.push((at, next));
        at = next;
    }
    spans
}

fn segment_files(fs: &FaultFs) -> Vec<String> {
    let mut names: Vec<_> = fs.list(&dir()).unwrap().into_iter().filter(|n| n.starts_with("log-")).collect();
    names.sort();
    names
}

/// Where the records of the active segment end, read from the file.
fn records_end(fs: &FaultFs, first: u64) -> usize {
    let buf = fs.read(&segment_path(first)).unwrap();
    record_spans(&buf).last().map_or(HEADER_LEN, |&(_, end)| end)
}

#[test]
fn zeros_are_written_ahead_of_the_records_and_never_over_them() {
    let fs = FaultFs::new();
    let segment = 1 << 20;
    let (mut wal, _) = fault_open(&fs, segment).unwrap();
    let ahead = wal::INITIALISE_AHEAD;
    let mut next = 1;
    loop {
        let batch: Vec<_> = (next..next + 50).map(|i| entry(1, i)).collect();
        next += 50;
        wal.append(&batch).unwrap();
        wal.sync().unwrap();
        // The zeros start where the first records ended and run at least half a step past
        // the last record, and not much further: a step at a time, not the whole segment.
        let end = records_end(&fs, 1) as u64;
        let zeroed_to = HEADER_LEN as u64 + fs.initialised_bytes();
        assert!(zeroed_to >= end + ahead / 2 - 4096, "zeros end at {zeroed_to}, records at {end}");
        assert!(zeroed_to <= end + ahead + 8192, "zeros end at {zeroed_to}, records at {end}");
        if end > 400 << 10 {
            break;
        }
    }
    // A cut and new records after it: the zeros follow the cut, the records read back.
    wal.truncate(next - 30).unwrap();
    let tail: Vec<_> = (next - 30..next + 20).map(|i| entry(2, i)).collect();
    wal.append(&tail).unwrap();
    wal.sync().unwrap();
    drop(wal);
    fs.crash();
    let (_, rec) = fault_open(&fs, segment).unwrap();
    let want: Vec<_> = (1..next - 30).map(|i| (1, i)).chain((next - 30..next + 20).map(|i| (2, i))).collect();
    assert_eq!(ids(&rec.entries), want);
    // A segment smaller than a step: zeros stop at its end, the file keeps its size.
    let fs = FaultFs::new();
    drop(written(&fs, 10, 8192));
    assert_eq!(fs.read(&segment_path(1)).unwrap().len(), 8192);
}

#[test]
fn reopen_reads_back_what_was_synced() {
    let fs = FaultFs::new();
    drop(written(&fs, 20, 1 << 20));
    fs.crash();
    let (_, rec) = fault_open(&fs, 1 << 20).unwrap();
    assert_eq!(ids(&rec.entries), (1..=20).map(|i| (1, i)).collect::<Vec<_>>());
}

#[test]
fn segments_roll_at_the_configured_size_and_read_back_in_order() {
    let fs = FaultFs::new();
    drop(written(&fs, 60, 400));
    let files = segment_files(&fs);
    assert!(files.len() > 3, "400-byte segments hold a few entries each: {files:?}");
    fs.crash();
    let (mut wal, rec) = fault_open(&fs, 400).unwrap();
    assert_eq!(ids(&rec.entries), (1..=60).map(|i| (1, i)).collect::<Vec<_>>());
    assert_eq!(wal.next_index(), Some(61));
    wal.append(&[entry(1, 61)]).unwrap();
    wal.sync().unwrap();
    fs.crash();
    let (_, rec) = fault_open(&fs, 400).unwrap();
    assert_eq!(rec.entries.len(), 61);
}

#[test]
fn a_new_segment_is_in_its_directory_before_its_entries_are_synced() {
    let fs = FaultFs::new();
    let (mut wal, _) = fault_open(&fs, 1 << 20).unwrap();
    let dir_syncs = fs.dir_syncs();
    wal.append(&[entry(1, 1)]).unwrap();
    assert!(fs.dir_syncs() > dir_syncs, "starting the segment synced its directory");
    wal.sync().unwrap();
    drop(wal);
    fs.crash();
    let (_, rec) = fault_open(&fs, 1 << 20).unwrap();
    assert_eq!(ids(&rec.entries), [(1, 1)]);
}

#[test]
fn a_segment_size_too_small_for_a_record_is_refused() {
    let e = fault_open(&FaultFs::new(), 100).unwrap_err();
    assert!(matches!(e, LogError::SegmentTooSmall(100)), "{e}");
}

#[test]
fn appends_out_of_sequence_are_refused() {
    let fs = FaultFs::new();
    let mut wal = written(&fs, 3, 1 << 20);
    let e = wal.append(&[entry(1, 5)]).unwrap_err();
    assert!(matches!(e, LogError::OutOfSequence { expected: 4, got: 5 }), "{e}");
}

/// Every cut of the last record (from nothing written to all but its last byte), both as a
/// short file and as a zero-filled preallocated tail, and a flipped bit in it: recovery drops
/// exactly that record, and the log continues cleanly from there.
#[test]
fn a_torn_last_record_is_cut_off_at_every_byte() {
    let base = FaultFs::new();
    drop(written(&base, 3, 1 << 16));
    let path = segment_path(1);
    let pristine = base.read(&path).unwrap();
    let spans = record_spans(&pristine);
    assert_eq!(spans.len(), 3);
    let (start, end) = spans[2];
    // (what, the file, whether anything of the record is left to cut: a record of which no
    // byte was written is simply absent).
    let mut cases: Vec<(String, Vec<u8>, bool)> = Vec::new();
    for cut in 0..(end - start) {
        let mut zeroed = pristine.clone();
        zeroed[start + cut..end].fill(0);
        cases.push((format!("zeroed from byte {cut}"), zeroed, cut > 0));
        // A file shorter than the size its header records was cut after it was written, and is
        // refused (`a_short_segment_is_refused_unless_its_size_is_unrecorded`); one whose header
        // records none, as an earlier release's, is read as it always was.
        let mut short = pristine[..start + cut].to_vec();
        short[28..32].fill(0);
        cases.push((format!("file ends at byte {cut}"), short, cut > 0));
    }
    for bit in [0usize, 4, 8, end - start - 1] {
        let mut flipped = pristine.clone();
        flipped[start + bit] ^= 0x10;
        cases.push((format!("bit flipped at byte {bit}"), flipped, true));
    }
    for (what, bytes, cut_expected) in cases {
        let fs = FaultFs::new();
        drop(written(&fs, 3, 1 << 16));
        fs.damage(&path, |d| *d = bytes.clone()).unwrap();
        let (mut wal, rec) = fault_open(&fs, 1 << 16).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(ids(&rec.entries), [(1, 1), (1, 2)], "{what}");
        if cut_expected {
            let torn = rec.torn.as_ref().unwrap_or_else(|| panic!("{what}: the cut is reported"));
            assert_eq!((torn.path.as_path(), torn.offset), (path.as_path(), start as u64), "{what}");
        } else {
            assert_eq!(rec.torn, None, "{what}: nothing to cut");
        }
        let after = fs.read(&path).unwrap();
        assert!(after[start..].iter().all(|&b| b == 0), "{what}: the torn bytes are gone from the file");
        // The log goes on from the cut, and nothing of the torn record comes back.
        wal.append(&[entry(2, 3), entry(2, 4)]).unwrap();
        wal.sync().unwrap();
        drop(wal);
        fs.crash();
        let (_, rec) = fault_open(&fs, 1 << 16).unwrap_or_else(|e| panic!("{what}, reopened: {e}"));
        assert_eq!(ids(&rec.entries), [(1, 1), (1, 2), (2, 3), (2, 4)], "{what}");
        assert_eq!(rec.torn, None, "{what}: a clean log reports no cut");
    }
}

#[test]
fn damage_before_the_tail_is_refused_with_file_and_offset() {
    let fs = FaultFs::new();
    drop(written(&fs, 3, 1 << 16));
    let path = segment_path(1);
    let spans = record_spans(&fs.read(&path).unwrap());
    let (start, _) = spans[1];
    fs.damage(&path, |d| d[start + 9] ^= 0x01).unwrap();
    let e = fault_open(&fs, 1 << 16).unwrap_err();
    match &e {
        LogError::Corrupt { path: p, offset, .. } => {
            assert_eq!(p, &path);
            assert_eq!(*offset, start as u64);
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    let msg = e.to_string();
    assert!(msg.contains("log-00000000000000000001") && msg.contains(&format!("byte {start}")), "{msg}");

    // A zeroed record followed by an intact one is damage too, not an end.
    let fs = FaultFs::new();
    drop(written(&fs, 3, 1 << 16));
    fs.damage(&path, |d| d[spans[1].0..spans[1].1].fill(0)).unwrap();
    assert!(matches!(fault_open(&fs, 1 << 16), Err(LogError::Corrupt { offset, .. }) if offset == spans[1].0 as u64));
}

/// A log of entries `1..=synced` in term 1, synced in writes of `per_write`, then entries up
/// to `written` in one more write that is not synced; where that last write begins and ends.
fn with_unsynced_write(fs: &FaultFs, synced: u64, per_write: u64, written: u64) -> (usize, usize) {
    let (mut wal, _) = fault_open(fs, 1 << 20).unwrap();
    for first in (1..=synced).step_by(per_write as usize) {
        wal.append(&(first..=(first + per_write - 1).min(synced)).map(|i| entry(1, i)).collect::<Vec<_>>()).unwrap();
        wal.sync().unwrap();
    }
    let start = records_end(fs, 1);
    wal.append(&(synced + 1..=written).map(|i| entry(1, i)).collect::<Vec<_>>()).unwrap();
    (start, records_end(fs, 1))
}

/// A power cut while a write is on its way to the disk can leave any of its pages and lose the
/// others, in no order (a disk writes the pages of one write as it pleases). Nothing of that
/// write was acknowledged, as its fdatasync had not returned: whichever of its pages survive,
/// start-up keeps every entry synced before it and the intact records at its start, cuts the
/// rest, and goes on; it never refuses the log for the hole.
#[test]
fn a_power_cut_that_keeps_any_pages_of_an_unsynced_write_loses_only_that_write() {
    let path = segment_path(1);
    let (start, end) = with_unsynced_write(&FaultFs::new(), 30, 10, 600);
    let first_page = start / PAGE;
    let pages = (end - 1) / PAGE + 1 - first_page;
    assert!((4..=8).contains(&pages), "the unsynced write spans {pages} pages");
    for kept in 0u32..1 << pages {
        let what = format!("pages kept {kept:0pages$b} of the write at {start}..{end}");
        let fs = FaultFs::new();
        with_unsynced_write(&fs, 30, 10, 600);
        fs.crash_persisting(|p, page| p == path && page >= first_page && kept & (1 << (page - first_page)) != 0);
        // Read independently of recovery: the intact records the file starts with.
        let intact = record_spans(&fs.read(&path).unwrap()).len() as u64;
        assert!(intact >= 30, "{what}: a synced entry is gone from the file");
        // `log dump` takes the remains for a torn write too.
        let dumped = crate::dump::dump_log(&fs, &dir(), &mut std::io::sink())
            .unwrap_or_else(|e| panic!("{what}: the dump calls it damage: {e}"));
        assert_eq!(dumped.entries, intact, "{what}");
        let (mut wal, rec) = fault_open(&fs, 1 << 20).unwrap_or_else(|e| panic!("{what}: start-up refused: {e}"));
        assert_eq!(ids(&rec.entries), (1..=intact).map(|i| (1, i)).collect::<Vec<_>>(), "{what}");
        let cut = records_end(&fs, 1);
        assert!(fs.read(&path).unwrap()[cut..].iter().all(|&b| b == 0), "{what}: the rest of the write is gone");
        // The log goes on from the cut, and nothing of the lost write comes back.
        wal.append(&[entry(2, intact + 1)]).unwrap();
        wal.sync().unwrap();
        drop(wal);
        fs.crash();
        let (_, rec) = fault_open(&fs, 1 << 20).unwrap_or_else(|e| panic!("{what}, reopened: {e}"));
        let mut want: Vec<_> = (1..=intact).map(|i| (1, i)).collect();
        want.push((2, intact + 1));
        assert_eq!(ids(&rec.entries), want, "{what}, reopened");
        assert_eq!(rec.torn, None, "{what}: a clean log reports no cut");
    }
}

/// Damage to a write that was synced, followed by records of a later write, is refused,
/// whichever pages of an unsynced write after it survived: a later write proves the damaged
/// one was synced before it began.
#[test]
fn damage_to_a_synced_write_is_refused_whatever_survives_of_the_unsynced_one() {
    let path = segment_path(1);
    for kept in [0u32, 1, 0b10, 0b1111_1111] {
        let fs = FaultFs::new();
        let (start, _) = with_unsynced_write(&fs, 30, 10, 600);
        let first_page = start / PAGE;
        fs.crash_persisting(|p, page| p == path && page >= first_page && kept & (1 << (page - first_page)) != 0);
        // Entry 15 (in the second synced write) is zeroed, as a lost sector would leave it.
        let spans = record_spans(&fs.read(&path).unwrap());
        let (bad, bad_end) = spans[14];
        fs.damage(&path, |d| d[bad..bad_end].fill(0)).unwrap();
        match fault_open(&fs, 1 << 20) {
            Err(LogError::Corrupt { path: p, offset, .. }) => assert_eq!((p, offset), (path.clone(), bad as u64)),
            other => panic!("pages kept {kept:b}: expected Corrupt at {bad}, got {other:?}"),
        }
    }
}

/// What proves a bad record damage rather than the remains of the last write: an intact record
/// of a later write, and only one whose write began where a write's first record is.
#[test]
fn only_a_record_of_a_later_write_proves_damage() {
    let fs = FaultFs::new();
    let (mut wal, _) = fault_open(&fs, 1 << 16).unwrap();
    for write in [&[1, 2][..], &[3, 4], &[5]] {
        wal.append(&write.iter().map(|&i| entry(1, i)).collect::<Vec<_>>()).unwrap();
        wal.sync().unwrap();
    }
    let mut buf = fs.read(&segment_path(1)).unwrap();
    let spans = record_spans(&buf);
    let bad = spans[0].0;
    let prefix = |buf: &[u8], at: usize| buf[at + 8..(at + 8 + record::PAYLOAD_PREFIX).min(buf.len())].to_vec();
    {
        let proves = wal::could_prove_damage(&buf, record::FORMAT_VERSION, bad, 1, 1);
        assert!(!proves(spans[1].0, &prefix(&buf, spans[1].0)), "entry 2 is of the bad record's own write");
        assert!(proves(spans[2].0, &prefix(&buf, spans[2].0)), "entry 3 opens a later write");
        assert!(proves(spans[3].0, &prefix(&buf, spans[3].0)), "entry 4 is the second record of a later write");
    }
    // Entry 4's record copied past the end: the write it names would have begun inside entry
    // 5's record, where no write's first record is.
    let (start, end) = spans[3];
    let copy_at = spans[4].1 + 16;
    let record = buf[start..end].to_vec();
    buf[copy_at..copy_at + record.len()].copy_from_slice(&record);
    let proves = wal::could_prove_damage(&buf, record::FORMAT_VERSION, bad, 1, 1);
    assert!(!proves(copy_at, &prefix(&buf, copy_at)), "a record whose write began nowhere proves nothing");
    // Format 3 did not say where writes began: any record after the bad one proves damage.
    assert!(wal::could_prove_damage(&buf, 3, bad, 1, 1)(spans[1].0, &prefix(&buf, spans[1].0)[1..]));
}

#[test]
fn damage_at_the_end_of_an_older_segment_is_refused() {
    let fs = FaultFs::new();
    drop(written(&fs, 40, 400));
    let files = segment_files(&fs);
    assert!(files.len() >= 2);
    let first = dir().join(&files[0]);
    let spans = record_spans(&fs.read(&first).unwrap());
    let (start, end) = *spans.last().unwrap();
    // Exactly what a torn tail looks like, but not in the last segment: synced data is gone.
    fs.damage(&first, |d| d[start + 10..end].fill(0)).unwrap();
    match fault_open(&fs, 400) {
        Err(LogError::Corrupt { path, offset, .. }) => {
            assert_eq!(path, first);
            assert_eq!(offset, start as u64);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn a_missing_segment_is_refused() {
    let fs = FaultFs::new();
    drop(written(&fs, 40, 400));
    let files = segment_files(&fs);
    assert!(files.len() >= 3);
    fs.remove(&dir().join(&files[1])).unwrap();
    let e = fault_open(&fs, 400).unwrap_err();
    // Said where the records stop, at the end of the segment before the gap, naming the one
    // after it.
    let end = records_end(&fs, files[0].trim_start_matches("log-").parse().unwrap()) as u64;
    assert!(
        matches!(&e, LogError::Corrupt { path, offset, .. } if *path == dir().join(&files[0]) && *offset == end),
        "{e}"
    );
    assert!(e.to_string().contains(&dir().join(&files[2]).display().to_string()), "{e}");
}

/// A log whose first segment is gone, with nothing purged, starts at an entry after the first
/// one: refused, naming the segment it starts with, as a segment missing between two is.
#[test]
fn a_missing_first_segment_is_refused() {
    let fs = FaultFs::new();
    drop(written(&fs, 40, 400));
    let files = segment_files(&fs);
    fs.remove(&dir().join(&files[0])).unwrap();
    let e = fault_open(&fs, 400).unwrap_err();
    assert!(matches!(&e, LogError::Corrupt { path, .. } if *path == dir().join(&files[1])), "{e}");
    assert!(e.to_string().contains("nothing is purged"), "{e}");
}

/// The newest segment gone leaves a log that ends where the one before it ended, which
/// nothing else tells from a whole log: refused, naming the missing file.
#[test]
fn a_missing_last_segment_is_refused() {
    let fs = FaultFs::new();
    let mut wal = written(&fs, 40, 400);
    wal.save_meta(&voted()).unwrap();
    drop(wal);
    let files = segment_files(&fs);
    let last = dir().join(files.last().unwrap());
    fs.remove(&last).unwrap();
    let e = fault_open(&fs, 400).unwrap_err();
    assert!(matches!(&e, LogError::Corrupt { path, .. } if *path == last), "{e}");
    assert!(e.to_string().contains("missing"), "{e}");
}

/// What start-up may legitimately find at either end of the log is not taken for a missing
/// segment: a log cut back past its newest segments (with a crash at every step of the cut),
/// purged past its end, emptied by a truncation, or never written.
#[test]
fn a_log_cut_back_purged_or_new_is_not_taken_for_a_missing_segment() {
    let fs = FaultFs::new();
    drop(fault_open(&fs, 400).unwrap());
    fs.crash();
    fault_open(&fs, 400).unwrap();

    // Truncations that remove the newest segments, with the power lost right after.
    let fs = FaultFs::new();
    let mut wal = written(&fs, 40, 400);
    wal.save_meta(&voted()).unwrap();
    let files = segment_files(&fs);
    assert!(files.len() >= 4, "{files:?}");
    let second: u64 = files[1]["log-".len()..].parse().unwrap();
    wal.truncate(second + 1).unwrap();
    drop(wal);
    fs.crash();
    let (mut wal, rec) = fault_open(&fs, 400).unwrap();
    assert_eq!(rec.entries.len() as u64, second);
    wal.truncate(1).unwrap();
    drop(wal);
    fs.crash();
    let (mut wal, rec) = fault_open(&fs, 400).unwrap();
    assert!(rec.entries.is_empty());
    wal.append(&[entry(2, 1)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    fs.crash();
    let (_, rec) = fault_open(&fs, 400).unwrap();
    assert_eq!(ids(&rec.entries), [(2, 1)]);

    // A truncation cut short by a crash: its saved state written, then none, some or all of the
    // newest segments removed (newest first), the cut not yet made.
    let truncated = || {
        let fs = FaultFs::new();
        let mut wal = written(&fs, 40, 400);
        wal.save_meta(&voted()).unwrap();
        let before: Vec<(String, Vec<u8>)> =
            segment_files(&fs).into_iter().map(|f| (f.clone(), fs.read(&dir().join(&f)).unwrap())).collect();
        let second: u64 = before[1].0["log-".len()..].parse().unwrap();
        wal.truncate(second + 1).unwrap();
        drop(wal);
        (fs, before, second)
    };
    let (fs, before, _) = truncated();
    let removed = before.len() - segment_files(&fs).len();
    assert!(removed >= 2, "{removed} segments removed");
    for left in 0..=removed {
        let (fs, before, second) = truncated();
        // The removed segments still there: the oldest `left` of them; the cut one as it was.
        for (name, bytes) in before.iter().take(before.len() - removed + left) {
            let mut f = fs.create(&dir().join(name)).unwrap();
            f.write_at(0, bytes).unwrap();
            f.sync_data().unwrap();
        }
        fs.sync_dir(&dir()).unwrap();
        fs.crash();
        let (_, rec) = fault_open(&fs, 400).unwrap_or_else(|e| panic!("{left} of {removed} left: {e}"));
        assert!(rec.entries.len() as u64 > second, "{left} of {removed} left");
    }

    // Purged past its end: no segment left, then one after the purge point.
    let fs = FaultFs::new();
    let mut wal = written(&fs, 20, 400);
    wal.save_meta(&voted()).unwrap();
    wal.purge(&RaftMeta { last_purged: Some(log_id(1, 25)), ..voted() }).unwrap();
    drop(wal);
    fs.crash();
    let (mut wal, _) = fault_open(&fs, 400).unwrap();
    wal.append(&[entry(2, 26)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    fs.crash();
    let (_, rec) = fault_open(&fs, 400).unwrap();
    assert_eq!(ids(&rec.entries), [(2, 26)]);
}

// ---- what a restart reads back is made durable before it counts ------------------------

/// The process killed (kill -9, an abort) after a write and before its sync: the machine stays
/// up, so the next process reads the write back from the page cache. It counts those entries as
/// durable, so they must be on the disk before it does: a power cut after the restart keeps
/// them.
#[test]
fn what_a_restart_reads_back_survives_a_power_cut() {
    let fs = FaultFs::new();
    let mut wal = written(&fs, 5, 1 << 16);
    wal.append(&[entry(1, 6), entry(1, 7), entry(1, 8)]).unwrap();
    drop(wal);
    fs.kill();
    let store = LogStore::open(Arc::new(fs.clone()), opts(1 << 16)).unwrap();
    assert_eq!(store.durable().end(), 9);
    drop(store);
    fs.crash();
    let (_, rec) = fault_open(&fs, 1 << 16).unwrap();
    assert_eq!(ids(&rec.entries), (1..=8).map(|i| (1, i)).collect::<Vec<_>>());
}

/// The unsynced tail read back at a restart, then a first append that starts a new segment:
/// the segment it leaves is durable before the new one takes entries, so a power cut leaves
/// no hole between the two.
#[test]
fn a_roll_over_right_after_a_restart_makes_the_recovered_tail_durable() {
    // The entry whose append starts the second segment when entries 2.. are appended unsynced
    // one at a time after entry 1 (the same steps on a scratch filesystem).
    let rolls_at = {
        let scratch = FaultFs::new();
        let mut wal = written(&scratch, 1, 400);
        (2..).find(|&i| {
            wal.append(&[entry(1, i)]).unwrap();
            segment_files(&scratch).len() > 1
        })
    }
    .unwrap();
    assert!(rolls_at > 3, "a 400-byte segment holds a few entries");
    let fs = FaultFs::new();
    let mut wal = written(&fs, 1, 400);
    for i in 2..rolls_at {
        wal.append(&[entry(1, i)]).unwrap();
    }
    drop(wal);
    fs.kill();
    let (mut wal, rec) = fault_open(&fs, 400).unwrap();
    assert_eq!(rec.entries.len() as u64, rolls_at - 1);
    wal.append(&[entry(2, rolls_at)]).unwrap();
    assert_eq!(segment_files(&fs).len(), 2, "entry {rolls_at} started a segment");
    wal.sync().unwrap();
    drop(wal);
    fs.crash();
    let (_, rec) = fault_open(&fs, 400).unwrap_or_else(|e| panic!("after the power cut: {e}"));
    assert_eq!(rec.entries.len() as u64, rolls_at);
}

/// The process killed with a write unsynced, then a power cut during the next process's first
/// write: of the two writes the disk may keep any pages. The first was made durable by the
/// restart, so what is lost is the second's, a torn tail, never taken for damage.
#[test]
fn a_power_cut_after_a_restart_is_never_taken_for_damage() {
    let fs = FaultFs::new();
    let mut wal = written(&fs, 1, 1 << 16);
    wal.append(&(2..=200).map(|i| entry(1, i)).collect::<Vec<_>>()).unwrap();
    drop(wal);
    fs.kill();
    let (mut wal, _) = fault_open(&fs, 1 << 16).unwrap();
    wal.append(&[entry(2, 201)]).unwrap();
    fs.crash_persisting(|_, page| page != 0);
    let (_, rec) = fault_open(&fs, 1 << 16).unwrap_or_else(|e| panic!("after the power cut: {e}"));
    assert!(rec.entries.len() >= 200, "{} entries", rec.entries.len());
    drop(wal);
}

/// A failed fsync leaves its pages readable in the page cache, marked clean, and no later
/// fsync writes them. A process started after it (the server stops on the failure, a service
/// manager starts it again) must count only what the disk holds, not what the cache shows.
#[test]
fn a_restart_after_a_failed_fsync_counts_only_what_the_disk_holds() {
    let fs = FaultFs::new();
    let mut wal = written(&fs, 5, 1 << 16);
    wal.append(&[entry(1, 6), entry(1, 7)]).unwrap();
    fs.fail_syncs();
    wal.sync().unwrap_err();
    drop(wal);
    fs.kill();
    let store = LogStore::open(Arc::new(fs.clone()), opts(1 << 16)).unwrap();
    let counted = store.durable().end();
    drop(store);
    fs.crash();
    let (_, rec) = fault_open(&fs, 1 << 16).unwrap();
    assert_eq!(counted, rec.entries.len() as u64 + 1, "counted durable up to {counted}: {:?}", ids(&rec.entries));
    assert_eq!(rec.entries.len(), 5);
}

/// A new name whose directory was not yet synced when the process was killed (here a new
/// `raft-meta`, renamed into place) is made durable by the next start before anything is acted
/// on: the vote read back at the restart is the one a power cut keeps.
#[test]
fn names_a_killed_process_left_unsynced_are_made_durable_at_open() {
    let vote = |v: u64| RaftMeta { vote: Some(Vote::new(v, 1)), ..RaftMeta::default() };
    let newer = {
        let scratch = FaultFs::new();
        let (mut wal, _) = fault_open(&scratch, 1 << 16).unwrap();
        wal.save_meta(&vote(3)).unwrap();
        scratch.read(&dir().join("raft-meta")).unwrap()
    };
    let fs = FaultFs::new();
    let mut wal = written(&fs, 3, 1 << 16);
    wal.save_meta(&vote(2)).unwrap();
    drop(wal);
    // What a kill between the rename of a new `raft-meta` and its directory's sync leaves.
    let tmp = dir().join("raft-meta.tmp");
    let mut f = fs.create(&tmp).unwrap();
    f.write_at(0, &newer).unwrap();
    f.sync_data().unwrap();
    fs.rename(&tmp, &dir().join("raft-meta")).unwrap();
    fs.kill();
    let (_, rec) = fault_open(&fs, 1 << 16).unwrap();
    assert_eq!(rec.meta.vote, vote(3).vote);
    fs.crash();
    let (_, rec) = fault_open(&fs, 1 << 16).unwrap();
    assert_eq!(rec.meta.vote, vote(3).vote, "the vote acted on after the restart is the one on the disk");
}

#[test]
fn another_clusters_directory_or_a_newer_format_is_refused() {
    let fs = FaultFs::new();
    drop(written(&fs, 2, 1 << 16));
    let e = Wal::open(Arc::new(fs.clone()), WalOptions { cluster_id: 8, ..opts(1 << 16) }).unwrap_err();
    assert!(matches!(e, LogError::ForeignCluster { found: 7, expected: 8, .. }), "{e}");
    assert!(e.to_string().contains("log-00000000000000000001"), "{e}");

    let newer =
        SegmentHeader { version: record::FORMAT_VERSION + 1, cluster_id: CLUSTER, first_index: 1, preallocated: 0 };
    fs.damage(&segment_path(1), |d| d[..HEADER_LEN].copy_from_slice(&newer.encode())).unwrap();
    let e = fault_open(&fs, 1 << 16).unwrap_err();
    let (found, supported) = (record::FORMAT_VERSION + 1, record::FORMAT_VERSION);
    assert!(matches!(e, LogError::NewerFormat { found: f, supported: s, .. } if (f, s) == (found, supported)), "{e}");

    // The Raft state file carries the cluster id too.
    let fs = FaultFs::new();
    let (mut wal, _) = fault_open(&fs, 1 << 16).unwrap();
    wal.save_meta(&RaftMeta { vote: Some(Vote::new(3, 1)), ..RaftMeta::default() }).unwrap();
    let e = Wal::open(Arc::new(fs.clone()), WalOptions { cluster_id: 9, ..opts(1 << 16) }).unwrap_err();
    assert!(matches!(&e, LogError::ForeignCluster { path, .. } if path.ends_with("raft-meta")), "{e}");
}

/// A flipped bit in the words of `raft-meta` that name its format and cluster is damage, told
/// apart from another cluster's file or a newer version's: the words are checksummed with the
/// state.
#[test]
fn damage_to_the_saved_state_header_is_damage_not_another_cluster() {
    for (byte, bit) in [(4, 0x01), (7, 0x80), (8, 0x01), (15, 0x80)] {
        let fs = FaultFs::new();
        let (mut wal, _) = fault_open(&fs, 1 << 16).unwrap();
        wal.save_meta(&RaftMeta { vote: Some(Vote::new(3, 1)), ..RaftMeta::default() }).unwrap();
        drop(wal);
        fs.damage(&dir().join("raft-meta"), |b| b[byte] ^= bit).unwrap();
        let e = fault_open(&fs, 1 << 16).unwrap_err();
        assert!(matches!(&e, LogError::Corrupt { path, .. } if path.ends_with("raft-meta")), "byte {byte}: {e}");
        assert!(wal::saved_purge_point(&fs, &dir(), CLUSTER).is_err(), "byte {byte}");
    }
}

/// `raft-meta` as the releases before this one wrote it (the header words outside the
/// checksum) still loads; its cluster word naming another cluster, in a directory whose
/// segments are this cluster's, is taken for damage.
#[test]
fn the_saved_state_of_an_earlier_release_still_loads() {
    let legacy = |cluster: u64, version: u32| {
        let fs = FaultFs::new();
        drop(written(&fs, 3, 1 << 16));
        let meta = RaftMeta { vote: Some(Vote::new(3, 1)), committed: Some(log_id(1, 2)), last_purged: None };
        let mut bytes = b"RFMT".to_vec();
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&cluster.to_le_bytes());
        record::encode_record(&serde_json::to_vec(&meta).unwrap(), &mut bytes);
        let mut f = fs.create(&dir().join("raft-meta")).unwrap();
        f.write_at(0, &bytes).unwrap();
        f.sync_data().unwrap();
        fs.sync_dir(&dir()).unwrap();
        (fs, meta)
    };
    let (fs, meta) = legacy(CLUSTER, 4);
    let (_, rec) = fault_open(&fs, 1 << 16).unwrap();
    assert_eq!(rec.meta, meta);
    assert_eq!(ids(&rec.entries), [(1, 1), (1, 2), (1, 3)]);
    assert_eq!(wal::saved_purge_point(&fs, &dir(), CLUSTER).unwrap(), 0);
    let (fs, _) = legacy(CLUSTER ^ 1, 4);
    let e = fault_open(&fs, 1 << 16).unwrap_err();
    assert!(matches!(&e, LogError::Corrupt { path, .. } if path.ends_with("raft-meta")), "{e}");
    let (fs, _) = legacy(CLUSTER, 4 | 0x100);
    let e = fault_open(&fs, 1 << 16).unwrap_err();
    assert!(matches!(&e, LogError::Corrupt { path, .. } if path.ends_with("raft-meta")), "{e}");
}

#[test]
fn truncation_survives_a_crash_and_stale_entries_never_return() {
    let fs = FaultFs::new();
    let mut wal = written(&fs, 20, 400);
    let before = segment_files(&fs).len();
    wal.truncate(6).unwrap();
    assert!(segment_files(&fs).len() < before, "whole segments after the cut are removed");
    fs.crash();
    let (mut wal, rec) = fault_open(&fs, 400).unwrap();
    assert_eq!(ids(&rec.entries), (1..=5).map(|i| (1, i)).collect::<Vec<_>>());
    // A new term writes fewer entries where the old ones were; none of the old ones reappear.
    wal.append(&[entry(2, 6)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    fs.crash();
    let (_, rec) = fault_open(&fs, 400).unwrap();
    assert_eq!(ids(&rec.entries).last(), Some(&(2, 6)));
    assert_eq!(rec.entries.len(), 6);
}

#[test]
fn truncating_everything_starts_over_at_that_index() {
    let fs = FaultFs::new();
    let mut wal = written(&fs, 5, 400);
    wal.truncate(1).unwrap();
    assert!(segment_files(&fs).is_empty());
    wal.append(&[entry(3, 1)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    fs.crash();
    let (_, rec) = fault_open(&fs, 400).unwrap();
    assert_eq!(ids(&rec.entries), [(3, 1)]);
}

#[test]
fn purge_persists_its_point_first_and_leftover_segments_are_removed_at_open() {
    let fs = FaultFs::new();
    let mut wal = written(&fs, 20, 400);
    let purged = RaftMeta { last_purged: Some(log_id(1, 9)), ..RaftMeta::default() };
    // The state a crash between the two purge steps leaves: the point saved, no file removed.
    wal.save_meta(&purged).unwrap();
    drop(wal);
    fs.crash();
    let (mut wal, rec) = fault_open(&fs, 400).unwrap();
    assert_eq!(rec.meta, purged);
    assert_eq!(ids(&rec.entries), (10..=20).map(|i| (1, i)).collect::<Vec<_>>());
    let first_left = segment_files(&fs)[0].clone();
    let first_index: u64 = first_left["log-".len()..].parse().unwrap();
    assert!(first_index <= 10, "the segment holding entry 10 stays: {first_left}");

    // A purge past the end removes every segment; the log continues after the purge point.
    wal.purge(&RaftMeta { last_purged: Some(log_id(1, 25)), ..RaftMeta::default() }).unwrap();
    assert!(segment_files(&fs).is_empty());
    wal.append(&[entry(2, 26)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    fs.crash();
    let (_, rec) = fault_open(&fs, 400).unwrap();
    assert_eq!(ids(&rec.entries), [(2, 26)]);
    assert_eq!(rec.meta.last_purged, Some(log_id(1, 25)));
}

// ---- the store: group commit, fatal failures, power loss --------------------------------

fn store(fs: &FaultFs) -> LogStore {
    LogStore::open(Arc::new(fs.clone()), opts(1 << 16)).unwrap()
}

/// Appends `entries` and returns a receiver of (index, fsyncs completed when it was called
/// back, result).
type Acks = mpsc::Receiver<(u64, u64, Result<(), String>)>;

fn append(store: &LogStore, fs: &FaultFs, tx: &mpsc::Sender<(u64, u64, Result<(), String>)>, e: Entry<TypeConfig>) {
    let (tx, fs, index) = (tx.clone(), fs.clone(), e.log_id.index);
    store
        .submit_append(
            vec![e],
            Box::new(move |r| {
                let _ = tx.send((index, fs.data_syncs(), r.map_err(|e| e.to_string())));
            }),
        )
        .unwrap();
}

fn ack(rx: &Acks) -> (u64, u64, Result<(), String>) {
    rx.recv_timeout(DEADLINE).expect("an append was called back within the deadline")
}

#[test]
fn appends_queued_during_an_fsync_share_the_next_one_and_none_is_acknowledged_early() {
    let fs = FaultFs::new();
    let store = store(&fs);
    let (tx, rx) = mpsc::channel();
    append(&store, &fs, &tx, entry(1, 1));
    assert_eq!(ack(&rx).2, Ok(()));

    fs.hold_syncs();
    append(&store, &fs, &tx, entry(1, 2));
    assert!(fs.wait_for_held_syncs(1, DEADLINE), "the writer reached the fsync of entry 2");
    let base = fs.data_syncs();
    const N: u64 = 50;
    for i in 3..3 + N {
        append(&store, &fs, &tx, entry(1, i));
    }
    assert!(rx.try_recv().is_err(), "nothing is acknowledged while its fsync is held");
    fs.release_syncs();
    let acks: Vec<_> = (0..=N).map(|_| ack(&rx)).collect();
    assert_eq!(acks.iter().map(|a| a.0).collect::<Vec<_>>(), (2..3 + N).collect::<Vec<_>>(), "in order");
    for (index, syncs_then, result) in &acks {
        assert_eq!(result, &Ok(()));
        let needed = if *index == 2 { base + 1 } else { base + 2 };
        assert!(*syncs_then >= needed, "entry {index} acknowledged after {syncs_then} fsyncs, before its own");
    }
    // One fsync for entry 2, one for the 50 that queued behind it.
    assert_eq!(fs.data_syncs() - base, 2, "{N} queued appends shared one fsync");
    // Everything acknowledged survives a power loss.
    drop(store);
    fs.crash();
    let (_, rec) = fault_open(&fs, 1 << 16).unwrap();
    assert_eq!(rec.entries.len() as u64, 2 + N);
}

#[test]
fn a_failed_fsync_is_fatal_and_never_acknowledged() {
    let fs = FaultFs::new();
    let store = store(&fs);
    let (tx, rx) = mpsc::channel();
    append(&store, &fs, &tx, entry(1, 1));
    assert_eq!(ack(&rx).2, Ok(()));
    fs.fail_syncs();
    append(&store, &fs, &tx, entry(1, 2));
    let (index, _, result) = ack(&rx);
    assert_eq!(index, 2);
    assert!(result.unwrap_err().contains("injected fsync failure"));
    assert!(store.stopped().is_some());
    // Every later write is refused, even once fsync would work again: it is never retried.
    let e = store.submit_append(vec![entry(1, 3)], Box::new(|_| panic!("never called"))).unwrap_err();
    assert!(matches!(e, LogError::Stopped(_)), "{e}");
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let e = rt.block_on(store.update_meta(|m| m.vote = Some(Vote::new(2, 1)))).unwrap_err();
    assert!(matches!(e, LogError::Stopped(_)), "{e}");
}

/// A disk that hangs rather than fails: once an fdatasync has run past the bound, the store
/// stops as after a failed fsync, acknowledges nothing more (not even what that fdatasync
/// covered once it returns), and is dropped without waiting for the writer stuck in it.
#[test]
fn an_fsync_stalled_past_its_bound_stops_the_store_which_drops_without_waiting_for_it() {
    let fs = FaultFs::new();
    let store = store(&fs);
    let stall = store.stall_watch();
    let (tx, rx) = mpsc::channel();
    append(&store, &fs, &tx, entry(1, 1));
    assert_eq!(ack(&rx).2, Ok(()));
    assert_eq!(stall.io_running_for(), None, "no fdatasync runs between appends");

    fs.hold_syncs();
    append(&store, &fs, &tx, entry(1, 2));
    assert!(fs.wait_for_held_syncs(1, DEADLINE), "the writer reached the fsync of entry 2");
    assert!(stall.io_running_for().is_some(), "the held fdatasync counts as running");
    let mut sightings = super::store::Sightings::default();
    assert!(!stall.look(&mut sightings, 0, Duration::from_secs(3600)), "within its bound");
    assert!(store.stopped().is_none());
    assert!(stall.look(&mut sightings, 0, Duration::ZERO), "past its bound, seen at more looks than asked");
    let why = store.stopped().expect("the store stopped");
    assert!(why.contains("has not returned for") && why.contains("/data/log"), "{why}");
    let e = store.submit_append(vec![entry(1, 3)], Box::new(|_| panic!("never called"))).unwrap_err();
    assert!(matches!(e, LogError::Stopped(_)), "{e}");

    // Dropped with the writer still in the held fdatasync: it returns at once.
    drop(store);
    fs.release_syncs();
    let (index, _, result) = ack(&rx);
    assert_eq!(index, 2);
    assert!(result.unwrap_err().contains("has not returned for"), "entry 2 is not acknowledged after the stop");
}

/// An fdatasync of a second or more is counted, as ZooKeeper's `fsyncThresholdExceedCount`
/// counts them, and acknowledged all the same.
#[test]
fn an_fdatasync_of_a_second_or_more_is_counted() {
    use super::store::SYNC_WARNING;
    let fs = FaultFs::new();
    let store = store(&fs);
    let (stall, reader) = (store.stall_watch(), store.reader());
    let (tx, rx) = mpsc::channel();
    append(&store, &fs, &tx, entry(1, 1));
    assert_eq!(ack(&rx).2, Ok(()));
    assert_eq!(reader.slow_syncs(), 0);

    fs.hold_syncs();
    append(&store, &fs, &tx, entry(1, 2));
    assert!(fs.wait_for_held_syncs(1, DEADLINE), "the writer reached the fsync of entry 2");
    let deadline = std::time::Instant::now() + DEADLINE;
    while stall.io_running_for() <= Some(SYNC_WARNING) {
        assert!(std::time::Instant::now() < deadline, "the held fdatasync never ran {SYNC_WARNING:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    fs.release_syncs();
    assert_eq!(ack(&rx).2, Ok(()), "a slow fdatasync still acknowledges");
    assert_eq!(reader.slow_syncs(), 1);
}

/// A write counts as hung only once the watch has seen it running at more than `looks` looks
/// in a row and for longer than the bound: a pause of the whole process, which the watch
/// sleeps through too, is not a hung disk however long the write's clock says it ran.
#[test]
fn a_write_counts_as_hung_only_after_enough_looks_in_a_row() {
    use super::store::Sightings;
    let (limit, ms) = (Duration::from_millis(1000), Duration::from_millis);
    let mut s = Sightings::default();
    // Seen first 1.8 s into it (the process was paused): not yet.
    assert_eq!(s.look(7, Some(ms(1800)), 10, limit), None);
    for i in 1..10 {
        assert_eq!(s.look(7, Some(ms(1800 + 100 * i)), 10, limit), None, "look {}", i + 1);
    }
    // The eleventh look in a row at the same write, past the bound: hung.
    assert_eq!(s.look(7, Some(ms(2800)), 10, limit), Some(ms(2800)));

    // Another write each time, or none in between: never.
    let mut s = Sightings::default();
    for began in 1..=30 {
        assert_eq!(s.look(began, Some(ms(5000)), 10, limit), None);
    }
    let mut s = Sightings::default();
    for i in 0..30 {
        let (began, running) = if i % 2 == 0 { (3, Some(ms(5000))) } else { (0, None) };
        assert_eq!(s.look(began, running, 10, limit), None);
    }
    // Enough looks, but within the bound (the looks came quicker than planned): not yet.
    let mut s = Sightings::default();
    for _ in 0..20 {
        assert_eq!(s.look(9, Some(ms(900)), 10, limit), None);
    }
}

#[test]
fn a_full_disk_mid_record_is_fatal_and_recovery_cuts_the_partial_record() {
    let fs = FaultFs::new();
    let store = store(&fs);
    let (tx, rx) = mpsc::channel();
    append(&store, &fs, &tx, entry(1, 1));
    assert_eq!(ack(&rx).2, Ok(()));
    fs.fill_after(10);
    append(&store, &fs, &tx, entry(1, 2));
    let (_, _, result) = ack(&rx);
    assert!(result.unwrap_err().contains("no space left"));
    assert!(store.stopped().is_some());
    assert!(store.submit_append(vec![entry(1, 3)], Box::new(|_| ())).is_err());
    drop(store);
    // The partial record reached the page cache; say it also reached the disk.
    fs.damage(&segment_path(1), |_| ()).unwrap();
    fs.crash();
    let (_, rec) = fault_open(&fs, 1 << 16).unwrap();
    assert_eq!(ids(&rec.entries), [(1, 1)]);
}

/// A disk too full to preallocate the next segment: the append that needs it fails, naming
/// what (the store then stops: nothing is acknowledged), and a restart has every entry synced
/// before, the half-made segment gone, and nothing taken for a missing segment.
#[test]
fn a_segment_that_cannot_be_preallocated_fails_its_append_and_recovery_keeps_what_was_synced() {
    let fs = FaultFs::new();
    let mut wal = written(&fs, 3, 400);
    wal.save_meta(&voted()).unwrap();
    fs.fail_preallocations();
    // Enough entries to need the next segment.
    let mut failed = None;
    for i in 4..=40 {
        if let Err(e) = wal.append(&[entry(1, i)]).and_then(|()| wal.sync()) {
            failed = Some((i, e.to_string()));
            break;
        }
    }
    let (first_lost, why) = failed.expect("a segment to preallocate");
    assert!(why.contains("preallocating") && why.contains("no space left"), "{why}");
    drop(wal);
    fs.crash();
    let (_, rec) = fault_open(&fs, 400).unwrap();
    let kept: Vec<(u64, u64)> = (1..first_lost).map(|i| (1, i)).collect();
    assert_eq!(ids(&rec.entries), kept, "every entry synced before the disk filled");
    assert!(fs.list(&dir()).unwrap().iter().all(|n| !n.ends_with(".tmp")), "the half-made segment is removed");
}

/// A Tokio runtime with two idle workers: a store called from it finds a worker to spare.
fn idle_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap()
}

/// Who called an append back (the thread's name) and with what.
type CalledBack = mpsc::Receiver<(Option<String>, Result<(), String>)>;

/// Appends `e` and returns the name of the thread that called it back, once it has.
fn append_on(store: &LogStore, e: Entry<TypeConfig>) -> CalledBack {
    called_back_on(|done| store.submit_append(vec![e], done))
}

/// [`append_on`] of entries the server appends as the leader.
fn own_append_on(store: &LogStore, e: Entry<TypeConfig>) -> CalledBack {
    called_back_on(|done| store.submit_own(vec![e], done))
}

fn called_back_on(submit: impl FnOnce(super::store::AppendDone) -> Result<(), LogError>) -> CalledBack {
    let (tx, rx) = mpsc::channel();
    submit(Box::new(move |r| {
        let _ = tx.send((std::thread::current().name().map(String::from), r.map_err(|e| e.to_string())));
    }))
    .unwrap();
    rx
}

#[test]
fn an_append_that_finds_the_writer_idle_is_synced_by_its_caller_and_stays_in_order() {
    let fs = FaultFs::new();
    let store = store(&fs);
    let rt = idle_runtime();
    let caller = std::thread::current().name().map(String::from);
    let writer = Some("raft-log-writer".to_string());
    rt.block_on(async {
        // Idle: written and synced before submit returns, on the caller's thread.
        let before = fs.data_syncs();
        let first = append_on(&store, entry(1, 1));
        assert_eq!(first.try_recv(), Ok((caller.clone(), Ok(()))), "called back before submit returned");
        assert!(fs.data_syncs() > before, "synced before it returned");
        assert_eq!(store.durable().end(), 2, "durable at once");

        // Something queued for the writer thread (a vote whose fsync is held): the next append
        // queues behind it rather than overtake it, and is acknowledged only once both are done.
        fs.hold_syncs();
        let saving = store.update_meta(|m| m.vote = Some(Vote::new(1, 1)));
        let behind = async {
            assert!(fs.wait_for_held_syncs(1, DEADLINE), "the writer reached the vote's fsync");
            let second = append_on(&store, entry(1, 2));
            assert!(second.try_recv().is_err(), "not acknowledged while the fsync before it is held");
            fs.release_syncs();
            second.recv_timeout(DEADLINE).expect("the second append was called back")
        };
        // The vote is queued when `saving` is first polled, before `behind` runs.
        let (saved, second) = tokio::join!(saving, behind);
        assert_eq!(saved.map_err(|e| e.to_string()), Ok(()));
        assert_eq!(second, (writer.clone(), Ok(())), "queued behind the vote, written by the thread");

        // Idle again (once the thread has let the files go): the caller syncs the third itself.
        wait_until_writer_idle(&store);
        let third = append_on(&store, entry(1, 3));
        assert_eq!(third.try_recv(), Ok((caller.clone(), Ok(()))));
    });
    drop(store);
    fs.crash();
    let (_, rec) = fault_open(&fs, 1 << 16).unwrap();
    assert_eq!(ids(&rec.entries), [(1, 1), (1, 2), (1, 3)], "every acknowledged append, in order");
    assert_eq!(rec.meta.vote, Some(Vote::new(1, 1)));
}

/// Waits, up to [`DEADLINE`], for the writer thread to be idle (see `LogStore::writer_idle`).
fn wait_until_writer_idle(store: &LogStore) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while !store.writer_idle() {
        assert!(std::time::Instant::now() < deadline, "the writer thread stayed busy");
        std::thread::yield_now();
    }
}

#[test]
fn a_leaders_own_entries_are_synced_by_their_caller_only_while_the_server_says_it_may() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let rt = idle_runtime();
    let caller = std::thread::current().name().map(String::from);
    let writer = Some("raft-log-writer".to_string());
    let called_back_by = |rx: CalledBack| {
        let (thread, result) = rx.recv_timeout(DEADLINE).expect("called back");
        assert_eq!(result, Ok(()));
        thread
    };

    // A server alone: its own entries go inline while the rule says so (one batch in flight),
    // to the writer thread when it does not; entries from a leader go inline either way.
    let fs = FaultFs::new();
    let may = Arc::new(AtomicBool::new(true));
    let rule = Arc::clone(&may);
    let alone = store(&fs).syncing_own_entries_inline(move || rule.load(Ordering::SeqCst));
    rt.block_on(async {
        assert_eq!(called_back_by(own_append_on(&alone, entry(1, 1))), caller, "alone, one batch: inline");
        may.store(false, Ordering::SeqCst);
        assert_eq!(called_back_by(own_append_on(&alone, entry(1, 2))), writer, "more batches: queued");
        // The thread calls back before it lets the files go; an append meanwhile would queue.
        wait_until_writer_idle(&alone);
        assert_eq!(called_back_by(append_on(&alone, entry(1, 3))), caller, "not its own: inline");
        may.store(true, Ordering::SeqCst);
        assert_eq!(called_back_by(own_append_on(&alone, entry(1, 4))), caller);
    });
    drop(alone);
    fs.crash();
    let (_, rec) = fault_open(&fs, 1 << 16).unwrap();
    assert_eq!(ids(&rec.entries), [(1, 1), (1, 2), (1, 3), (1, 4)], "every acknowledged append, in order");

    // A leader of an ensemble (no rule given): its own entries always queue, so that their
    // fdatasync runs while they go to the followers.
    let fs = FaultFs::new();
    let leader = store(&fs);
    rt.block_on(async {
        assert_eq!(called_back_by(own_append_on(&leader, entry(1, 1))), writer, "an ensemble's leader: queued");
        wait_until_writer_idle(&leader);
        assert_eq!(called_back_by(append_on(&leader, entry(1, 2))), caller, "a follower's append: inline");
    });
}

#[test]
fn a_failed_fsync_of_an_append_synced_by_its_caller_is_fatal_and_never_acknowledged() {
    let fs = FaultFs::new();
    let store = store(&fs);
    let rt = idle_runtime();
    rt.block_on(async {
        assert_eq!(append_on(&store, entry(1, 1)).try_recv().map(|a| a.1), Ok(Ok(())));
        fs.fail_syncs();
        let (_, result) = append_on(&store, entry(1, 2)).try_recv().expect("called back before submit returned");
        assert!(result.unwrap_err().contains("injected fsync failure"));
        assert!(store.stopped().is_some());
        assert_eq!(store.durable().end(), 2, "entry 2 never counts as durable");
        let e = store.submit_append(vec![entry(1, 3)], Box::new(|_| panic!("never called"))).unwrap_err();
        assert!(matches!(e, LogError::Stopped(_)), "{e}");
    });
}

#[test]
fn a_runtime_has_a_worker_to_spare_only_with_a_whole_worker_idle_over_a_window() {
    use super::store::{SpareWorker, LOAD_WINDOW};
    let t0 = std::time::Instant::now();
    let ms = Duration::from_millis;
    let mut two = SpareWorker::default();
    assert!(two.observe(t0, ms(100), 2), "nothing measured yet: spare");
    // Within a window the last judgement holds, whatever the busy time says.
    assert!(two.observe(t0 + LOAD_WINDOW / 2, ms(10_000), 2));
    // 10 ms of two workers: 12 ms busy leaves 8 ms idle, less than a worker's 10 ms.
    let t1 = t0 + ms(10);
    assert!(!two.observe(t1, ms(112), 2), "busy");
    assert!(!two.observe(t1 + LOAD_WINDOW / 2, ms(112), 2), "still judged busy within the window");
    // The next 10 ms: 10 ms busy leaves exactly one worker idle.
    let t2 = t1 + ms(10);
    assert!(two.observe(t2, ms(122), 2), "a whole worker idle");
    // 10.001 ms busy of 20 ms: not quite.
    assert!(!two.observe(t2 + ms(10), ms(122) + Duration::from_micros(10_001), 2));

    // A clock read out of order neither panics nor starts a window.
    assert!(!two.observe(t0, ms(0), 2));

    // One worker (a current-thread runtime): never, idle or not.
    let mut one = SpareWorker::default();
    assert!(!one.observe(t0, ms(0), 1));
    assert!(!one.observe(t0 + ms(10), ms(0), 1));
}

/// A setData of 100 bytes of small values (as a counter or a bitmap stored in a znode holds):
/// bytes that read as short length words and small varints at many offsets.
fn set_data_entry(term: u64, index: u64) -> Entry<TypeConfig> {
    let data = (0..100).map(|j| ((index + j) % 7) as u8).collect();
    let path = format!("/bench/n{index}");
    let op = TxnOp::Write(WriteOp::SetData { path, data: Some(data), version: -1 });
    let txn = Txn { session: SessionId(0x1000), auth: Vec::new(), time_ms: 1_700_000_000_000, op };
    Entry { log_id: log_id(term, index), payload: EntryPayload::Normal(vec![txn]) }
}

/// The remains of a torn write of thousands of entries (every record's checksum broken, as a
/// power cut during the write of a large batch can leave them) are searched for an intact
/// record in work proportional to their size: twice the entries, about twice the work, and a
/// few times their bytes. The search used to checksum every candidate record byte by byte,
/// work quadratic in the remains: 9.3 s for 563 KB of them (release build), 0.78 s for 140 KB.
#[test]
fn a_torn_write_of_thousands_of_entries_is_searched_in_linear_work_and_cut() {
    // Work counts a check from prefix checksums as this many bytes checksummed (two or three
    // products of 32-bit maps, about what a hundred bytes cost).
    const COMBINED_COST: u64 = 64;
    let work = |n: u64| {
        let fs = FaultFs::new();
        let (mut wal, _) = fault_open(&fs, 8 << 20).unwrap();
        // In writes of 50: records of writes after the first bad record's are the ones the
        // search must checksum.
        for first in (1..=n).step_by(50) {
            wal.append(&(first..=(first + 49).min(n)).map(|i| set_data_entry(1, i)).collect::<Vec<_>>()).unwrap();
            wal.sync().unwrap();
        }
        drop(wal);
        let path = segment_path(1);
        let spans = record_spans(&fs.read(&path).unwrap());
        // Entries 1 and 2 are whole; from entry 3 on, every record is torn.
        fs.damage(&path, |d| spans[2..].iter().for_each(|&(start, _)| d[start + 4] ^= 0xff)).unwrap();
        let buf = fs.read(&path).unwrap();
        let (bad, remains) = (spans[2].0, (spans[spans.len() - 1].1 - spans[2].0) as u64);
        let scan = record::scan_after(&buf, bad, wal::could_prove_damage(&buf, record::FORMAT_VERSION, bad, 3, 1));
        assert!(!scan.found, "{scan:?}");
        // Start-up cuts the torn write off, keeping the two whole entries.
        let (_, rec) = fault_open(&fs, 8 << 20).unwrap();
        assert_eq!(ids(&rec.entries), [(1, 1), (1, 2)]);
        assert_eq!(rec.torn.map(|t| t.offset), Some(bad as u64));
        (remains, scan.checksummed + COMBINED_COST * scan.combined)
    };
    let (small, small_work) = work(1_500);
    let (large, large_work) = work(3_000);
    eprintln!("remains {small} bytes: work {small_work}; {large} bytes: work {large_work}");
    assert!(large_work <= 8 * large, "{large} bytes of remains took work {large_work}");
    assert!(
        large_work * 2 * small <= 5 * small_work * large,
        "twice the remains ({small} -> {large} bytes) took {small_work} -> {large_work}: more than linear"
    );
}

#[test]
fn power_loss_before_the_fsync_loses_only_unacknowledged_entries() {
    let fs = FaultFs::new();
    let store = store(&fs);
    let (tx, rx) = mpsc::channel();
    for i in 1..=5 {
        append(&store, &fs, &tx, entry(1, i));
    }
    for _ in 1..=5 {
        assert_eq!(ack(&rx).2, Ok(()));
    }
    fs.hold_syncs();
    for i in 6..=8 {
        append(&store, &fs, &tx, entry(1, i));
    }
    assert!(fs.wait_for_held_syncs(1, DEADLINE));
    fs.crash();
    // The writer's held fsync fails as its process is gone; nothing of 6..=8 was acknowledged.
    let acks: Vec<_> = (6..=8).map(|_| ack(&rx)).collect();
    assert!(acks.iter().all(|a| a.2.is_err()), "{acks:?}");
    drop(store);
    let (_, rec) = fault_open(&fs, 1 << 16).unwrap();
    assert_eq!(ids(&rec.entries), (1..=5).map(|i| (1, i)).collect::<Vec<_>>());
}

#[tokio::test]
async fn vote_committed_truncate_and_purge_are_durable_when_they_return() {
    let fs = FaultFs::new();
    let store = store(&fs);
    let (tx, rx) = mpsc::channel();
    for i in 1..=10 {
        append(&store, &fs, &tx, entry(1, i));
    }
    store.update_meta(|m| m.vote = Some(Vote::new_committed(4, 2))).await.unwrap();
    // The vote came after the appends in the queue, so they were flushed first.
    for _ in 1..=10 {
        assert_eq!(ack(&rx).2, Ok(()));
    }
    store.update_meta(|m| m.committed = Some(log_id(1, 3))).await.unwrap();
    store.truncate_from(9).await.unwrap();
    store.purge_upto(log_id(1, 2)).await.unwrap();
    let want = store.meta();
    // Power goes before the store is even dropped.
    fs.crash();
    drop(store);
    let (_, rec) = fault_open(&fs, 1 << 16).unwrap();
    assert_eq!(rec.meta, want);
    assert_eq!(rec.meta.vote, Some(Vote::new_committed(4, 2)));
    assert_eq!(rec.meta.committed, Some(log_id(1, 3)));
    assert_eq!(ids(&rec.entries), (3..=8).map(|i| (1, i)).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_voter_reads_a_granted_vote_back_not_yet_granted_and_for_the_same_candidate() {
    use openraft::storage::RaftLogStorage;
    // (saved, read back by server 1 as a voter of an ensemble, as a leader pipelining too)
    let cases = [
        (Some(Vote::new_committed(4, 2)), Some(Vote::new(4, 2)), Some(Vote::new(4, 2))),
        (Some(Vote::new(4, 2)), Some(Vote::new(4, 2)), Some(Vote::new(4, 2))),
        (Some(Vote::new_committed(4, 1)), Some(Vote::new_committed(4, 1)), Some(Vote::new(4, 1))),
        (Some(Vote::new(4, 1)), Some(Vote::new(4, 1)), Some(Vote::new(4, 1))),
        (None, None, None),
    ];
    for (saved, voter, both) in cases {
        let fs = FaultFs::new();
        let s = store(&fs);
        s.update_meta(|m| m.vote = saved).await.unwrap();
        drop(s);
        let mut s = store(&fs).free_to_vote_at_start(1);
        assert_eq!(s.read_vote().await.unwrap(), voter, "saved {saved:?}");
        drop(s);
        let mut s = store(&fs).pipelining_as_leader(1).free_to_vote_at_start(1);
        assert_eq!(s.read_vote().await.unwrap(), both, "saved {saved:?}");
        drop(s);
        // Nothing is written at the read-back: the saved vote is as it was.
        let (_, rec) = fault_open(&fs, 1 << 16).unwrap();
        assert_eq!(rec.meta.vote, saved);
    }
}

/// Appends `entries` through `store` and waits for each to be acknowledged.
fn append_all(store: &LogStore, fs: &FaultFs, entries: impl IntoIterator<Item = Entry<TypeConfig>>) {
    let (tx, rx) = mpsc::channel();
    let mut n = 0;
    for e in entries {
        append(store, fs, &tx, e);
        n += 1;
    }
    for _ in 0..n {
        assert_eq!(ack(&rx).2, Ok(()));
    }
}

#[tokio::test]
async fn appended_entries_are_read_once_as_appended_then_from_the_encoded_copy() {
    use openraft::RaftLogReader;
    use store::FRESH_ENTRIES;
    let fs = FaultFs::new();
    let store = store(&fs);
    let mut reader = store.reader();
    append_all(&store, &fs, (1..=10).map(|i| entry(1, i)));
    assert_eq!(store.fresh_indexes(), (1..=10).collect::<Vec<_>>(), "kept decoded for their first read");

    let got = reader.try_get_log_entries(3..=5).await.unwrap();
    assert_eq!(got, (3..=5).map(|i| entry(1, i)).collect::<Vec<_>>());
    assert_eq!(store.fresh_indexes(), [1, 2, 6, 7, 8, 9, 10], "the first read took them");
    // Read again, with others: the taken ones decoded from the in-memory copy, the same.
    let got = reader.try_get_log_entries(1..=10).await.unwrap();
    assert_eq!(got, (1..=10).map(|i| entry(1, i)).collect::<Vec<_>>());
    assert!(store.fresh_indexes().is_empty());

    // Truncated with the log; the new entries at those indexes are what is read.
    append_all(&store, &fs, (11..=14).map(|i| entry(1, i)));
    store.truncate_from(12).await.unwrap();
    assert_eq!(store.fresh_indexes(), [11]);
    append_all(&store, &fs, (12..=13).map(|i| entry(2, i)));
    let got = reader.try_get_log_entries(11..).await.unwrap();
    assert_eq!(got, vec![entry(1, 11), entry(2, 12), entry(2, 13)]);

    // Purged with the log.
    append_all(&store, &fs, (14..=16).map(|i| entry(2, i)));
    store.purge_upto(log_id(2, 14)).await.unwrap();
    assert_eq!(store.fresh_indexes(), [15, 16]);

    // Bounded: the oldest go first, and are still read (decoded).
    let last = 16 + 2 * FRESH_ENTRIES as u64;
    append_all(&store, &fs, (17..=last).map(|i| entry(2, i)));
    let fresh = store.fresh_indexes();
    assert_eq!(fresh, (last + 1 - FRESH_ENTRIES as u64..=last).collect::<Vec<_>>());
    let got = reader.try_get_log_entries(15..=last).await.unwrap();
    assert_eq!(got, (15..=last).map(|i| entry(2, i)).collect::<Vec<_>>());
}

// ---- a leader's pipelined appends ----------------------------------------------------------

#[test]
fn proposal_sizes_count_one_leaderships_entries_and_start_afresh_with_a_new_term() {
    let mut p = store::ProposalSizes::default();
    assert_eq!((p.last, p.min, p.max), (-1, -1, -1), "none yet, as ZooKeeper reports it");
    for bytes in [120, 40, 900, 300] {
        p.record(3, bytes);
    }
    assert_eq!((p.term, p.last, p.min, p.max), (3, 300, 40, 900));
    p.record(4, 77);
    assert_eq!((p.term, p.last, p.min, p.max), (4, 77, 77, 77), "a new leadership starts afresh");
}

#[test]
fn only_a_leaders_own_entries_of_its_elected_term_count_as_its_own() {
    use store::leaders_own_entries;
    let mine = |term| log_id(term, 5); // `log_id` makes entries of leader 1
    let elected = Some(Vote::new_committed(3, 1));
    assert!(leaders_own_entries(1, elected, [mine(3), mine(3)].into_iter()));
    // A follower of leader 1 appending leader 1's entries: not its own.
    assert!(!leaders_own_entries(2, elected, [mine(3)].into_iter()));
    // A candidate (vote not granted by a quorum) never leads.
    assert!(!leaders_own_entries(1, Some(Vote::new(3, 1)), [mine(3)].into_iter()));
    // Its own entries of an earlier term, sent back by a later leader: not of the vote in force.
    assert!(!leaders_own_entries(1, Some(Vote::new_committed(4, 1)), [mine(3)].into_iter()));
    assert!(!leaders_own_entries(1, elected, [mine(3), mine(2)].into_iter()));
    // Term 0: the first entry of a new ensemble, before any election; and no vote at all.
    assert!(!leaders_own_entries(1, Some(Vote::new_committed(0, 1)), [mine(0)].into_iter()));
    assert!(!leaders_own_entries(1, None, [mine(3)].into_iter()));
}

#[tokio::test]
async fn the_durable_end_moves_only_after_an_fsync_and_bounds_the_commit_sent_to_followers() {
    let fs = FaultFs::new();
    let store = store(&fs);
    let durable = store.durable();
    let (tx, rx) = mpsc::channel();
    for i in 1..=3 {
        append(&store, &fs, &tx, entry(1, i));
    }
    for _ in 1..=3 {
        assert_eq!(ack(&rx).2, Ok(()));
    }
    assert_eq!(durable.end(), 4, "entries 1 to 3 are durable");

    fs.hold_syncs();
    append(&store, &fs, &tx, entry(1, 4));
    append(&store, &fs, &tx, entry(1, 5));
    let held = fs.clone();
    assert!(tokio::task::spawn_blocking(move || held.wait_for_held_syncs(1, DEADLINE)).await.unwrap());
    assert_eq!(durable.end(), 4, "written is not durable");
    // A commit index already durable goes as it is; one past the durable log, once the wait
    // is over, goes as the last durable entry.
    let patience = Duration::from_millis(30);
    assert_eq!(durable.commit_to_send(Some(log_id(1, 2)), patience).await, Some(log_id(1, 2)));
    assert_eq!(durable.commit_to_send(Some(log_id(1, 5)), patience).await, Some(log_id(1, 3)));
    assert_eq!(durable.commit_to_send(None, patience).await, None);
    let waiting = tokio::spawn({
        let durable = durable.clone();
        async move { durable.wait_past(5).await.map_err(|e| e.to_string()) }
    });
    // A commit index whose fsync ends within the wait goes whole.
    let sending = tokio::spawn({
        let durable = durable.clone();
        async move { durable.commit_to_send(Some(log_id(1, 5)), DEADLINE).await }
    });
    assert!(!waiting.is_finished(), "entry 5 is not durable while its fsync is held");
    fs.release_syncs();
    within(waiting).await.unwrap().unwrap();
    assert_eq!(within(sending).await.unwrap(), Some(log_id(1, 5)));
    assert_eq!(durable.end(), 6);

    // Truncation takes the end back with it.
    store.truncate_from(4).await.unwrap();
    assert_eq!(durable.end(), 4);

    // A failed fsync: waiters are told the entry may never be durable.
    fs.fail_syncs();
    append(&store, &fs, &tx, entry(2, 4));
    let e = within(durable.wait_past(4)).await.unwrap_err();
    assert!(e.to_string().contains("injected fsync failure"), "{e}");
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(DEADLINE, f).await.expect("within the deadline")
}

// ---- the real filesystem ------------------------------------------------------------------

#[tokio::test]
async fn the_real_filesystem_writes_reopens_and_reads_back() {
    use openraft::storage::RaftLogStorage;
    use openraft::RaftLogReader;
    let scratch = referee_testkit::ScratchDir::new("raft-log").unwrap();
    let o = WalOptions { dir: scratch.path("log"), cluster_id: CLUSTER, segment_bytes: 1024, first_index: 1 };
    let (tx, rx) = mpsc::channel();
    {
        let store = LogStore::open(Arc::new(RealFs), o.clone()).unwrap();
        for i in 1..=200 {
            let tx = tx.clone();
            store
                .submit_append(vec![entry(1, i)], Box::new(move |r| tx.send(r.map_err(|e| e.to_string())).unwrap()))
                .unwrap();
        }
        for _ in 1..=200 {
            assert_eq!(rx.recv_timeout(DEADLINE).unwrap(), Ok(()));
        }
        store.update_meta(|m| m.vote = Some(Vote::new(5, 1))).await.unwrap();
    }
    let names: Vec<_> = std::fs::read_dir(&o.dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(names.len() > 3, "several 1 KiB segments and the Raft state: {names:?}");
    let mut store = LogStore::open(Arc::new(RealFs), o).unwrap();
    let got = store.try_get_log_entries(1..=200).await.unwrap();
    let got: Vec<(u64, u64)> = got.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect();
    assert_eq!(got, (1..=200).map(|i| (1, i)).collect::<Vec<_>>());
    assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new(5, 1)));
    assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 200)));
}

/// openraft's own storage suite, with the coordinator's state machine beside the log.
#[test]
fn openraft_storage_suite() {
    struct Builder;
    impl openraft::testing::StoreBuilder<TypeConfig, LogStore, crate::raft::StateMachine, referee_testkit::ScratchDir>
        for Builder
    {
        async fn build(
            &self,
        ) -> Result<(referee_testkit::ScratchDir, LogStore, crate::raft::StateMachine), openraft::StorageError<u64>>
        {
            let scratch = referee_testkit::ScratchDir::new("raft-suite").expect("scratch dir");
            let o = WalOptions { segment_bytes: 1 << 16, ..WalOptions::new(scratch.path("log"), CLUSTER) };
            let store = LogStore::open(Arc::new(RealFs), o).expect("open log");
            let state = crate::state::ServerState::new(false, Duration::from_millis(100));
            let snapshots = crate::snapshot::SnapshotDir::open(Arc::new(RealFs), scratch.path("snapshots"), CLUSTER, 3)
                .expect("snapshot dir");
            let sm = crate::raft::StateMachine::open(
                Arc::new(Mutex::new(state)),
                snapshots,
                0,
                crate::raft::SnapshotPolicy::NEVER,
            )
            .expect("open sm");
            Ok((scratch, store, sm))
        }
    }
    openraft::testing::Suite::test_all(Builder).unwrap();
}

/// A filesystem holding one segment of format `version`, from entry 1, whose records are
/// `records` (then zeros to 4 KiB), synced as an older build left it.
fn older_segment(version: u32, records: &[u8]) -> FaultFs {
    let fs = FaultFs::new();
    fs.create_dir_all(&dir()).unwrap();
    let mut bytes = SegmentHeader { version, cluster_id: CLUSTER, first_index: 1, preallocated: 0 }.encode().to_vec();
    bytes.extend_from_slice(records);
    bytes.resize(4096, 0);
    let mut f = fs.create(&segment_path(1)).unwrap();
    f.write_at(0, &bytes).unwrap();
    f.sync_data().unwrap();
    fs.sync_dir(&dir()).unwrap();
    fs
}

#[test]
fn a_format_1_segment_of_json_entries_is_still_read_and_continued() {
    let mut records = Vec::new();
    for i in 1..=3 {
        record::encode_record(&serde_json::to_vec(&single_txn_entry(1, i)).unwrap(), &mut records);
    }
    let fs = older_segment(1, &records);

    let (mut wal, rec) = fault_open(&fs, 4096).unwrap();
    assert_eq!(ids(&rec.entries), [(1, 1), (1, 2), (1, 3)]);
    assert_eq!(rec.entries[1].decode().unwrap(), entry(1, 2));
    // New entries go into a new segment of the current format, never into the JSON one.
    wal.append(&[entry(1, 4)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    let (_, rec) = fault_open(&fs, 4096).unwrap();
    assert_eq!(ids(&rec.entries), [(1, 1), (1, 2), (1, 3), (1, 4)]);
}

/// A log written by the build before format 4 (records of the entry alone) is read, its
/// torn tail judged by its own format's rule, and continued in a new segment of format 4.
#[test]
fn a_format_3_segment_is_still_read_judged_and_continued() {
    let mut records = Vec::new();
    for i in 1..=3 {
        record::encode_record(&wal::encode_entry(&entry(1, i)).unwrap(), &mut records);
    }
    let end = HEADER_LEN + records.len();
    // A torn fourth record: its length and checksum written, its payload not.
    records.extend_from_slice(&[40, 0, 0, 0, 9, 9, 9, 9]);
    let fs = older_segment(3, &records);

    let (mut wal, rec) = fault_open(&fs, 4096).unwrap();
    assert_eq!(ids(&rec.entries), [(1, 1), (1, 2), (1, 3)]);
    assert_eq!(rec.torn.map(|t| t.offset), Some(end as u64));
    wal.append(&[entry(1, 4)]).unwrap();
    wal.sync().unwrap();
    drop(wal);
    assert_eq!(segment_files(&fs).len(), 2, "entry 4 went into a new segment");
    let newer = SegmentHeader::decode(&fs.read(&segment_path(4)).unwrap()).unwrap();
    assert_eq!(newer.version, record::FORMAT_VERSION);
    let (_, rec) = fault_open(&fs, 4096).unwrap();
    assert_eq!(ids(&rec.entries), [(1, 1), (1, 2), (1, 3), (1, 4)]);
}

#[test]
fn entries_are_compact_binary_records() {
    let mut e = entry(1, 1);
    if let EntryPayload::Normal(batch) = &mut e.payload {
        batch[0].op = TxnOp::Write(WriteOp::SetData { path: "/p".into(), data: Some(vec![0xab; 100]), version: -1 });
    }
    let payload = wal::encode_entry(&e).unwrap();
    assert!(payload.len() < 140, "100 bytes of data take {} bytes of record", payload.len());
    assert_eq!(wal::decode_entry(wal::ENTRY_FORMAT, &payload).unwrap(), e);
}

/// The record payload of an entry, byte for byte: postcard's varints and variant indexes, in
/// field order. A change here is a format change: bump `FORMAT_VERSION` and keep reading the
/// old one.
#[test]
fn golden_entry_payloads() {
    let blank = Entry::<TypeConfig> { log_id: log_id(2, 5), payload: EntryPayload::Blank };
    assert_eq!(wal::encode_entry(&blank).unwrap(), [2, 1, 5, 0]);
    let delete = Entry::<TypeConfig> {
        log_id: log_id(1, 3),
        payload: EntryPayload::Normal(vec![Txn {
            session: SessionId(0),
            auth: Vec::new(),
            time_ms: 0,
            op: TxnOp::Write(WriteOp::Delete { path: "/a".into(), version: -1 }),
        }]),
    };
    // term, node, index | Normal | batch of 1 | session, auth (empty), time | Write, Delete |
    // "/a", version -1
    assert_eq!(wal::encode_entry(&delete).unwrap(), [1, 1, 3, 1, 1, 0, 0, 0, 2, 1, 2, b'/', b'a', 1]);
    // Format 2 held one transaction an entry, without the batch length; it reads as a batch of one.
    let format_2 = [1, 1, 3, 1, 0, 0, 0, 2, 1, 2, b'/', b'a', 1];
    assert_eq!(wal::decode_entry(2, &format_2).unwrap(), delete);
    assert!(wal::decode_entry(3, &format_2).is_err(), "a format 2 record is not read as format 3");
}

/// Node data is a length and the bytes themselves, as postcard writes a sequence of bytes; a
/// null buffer is `None`'s tag alone.
#[test]
fn golden_data_payloads() {
    let txn = |op| Txn { session: SessionId(0), auth: Vec::new(), time_ms: 0, op: TxnOp::Write(op) };
    let writes = Entry::<TypeConfig> {
        log_id: log_id(1, 4),
        payload: EntryPayload::Normal(vec![
            txn(WriteOp::SetData { path: "/a".into(), data: Some(vec![7, 0, 255]), version: 2 }),
            txn(WriteOp::SetData { path: "/a".into(), data: None, version: -1 }),
            txn(WriteOp::Create {
                opcode: 1,
                path: "/b".into(),
                data: Some(Vec::new()),
                acl: Vec::new(),
                flags: 0,
                ttl_ms: 0,
            }),
        ]),
    };
    #[rustfmt::skip]
    let expected = [
        1, 1, 4, 1, 3, // term, node, index | Normal | batch of 3
        0, 0, 0, 2, 2, 2, b'/', b'a', 1, 3, 7, 0, 255, 4, // setData "/a" [7, 0, 255] version 2
        0, 0, 0, 2, 2, 2, b'/', b'a', 0, 1, // setData "/a" null version -1
        0, 0, 0, 2, 0, 2, 2, b'/', b'b', 1, 0, 0, 0, 0, // create(1) "/b" empty, no ACL, flags 0, ttl 0
    ];
    assert_eq!(wal::encode_entry(&writes).unwrap(), expected);
    assert_eq!(wal::decode_entry(wal::ENTRY_FORMAT, &expected).unwrap(), writes);
    // Format 1 wrote JSON, the data as an array of numbers.
    let json = br#"{"log_id":{"leader_id":{"term":1,"node_id":1},"index":4},"payload":{"Normal":
        {"session":0,"auth":[],"time_ms":0,"op":{"Write":{"SetData":{"path":"/a","data":[7,0,255],"version":2}}}}}}"#;
    let EntryPayload::Normal(first) = &writes.payload else { unreachable!() };
    let single = Entry::<TypeConfig> { log_id: log_id(1, 4), payload: EntryPayload::Normal(vec![first[0].clone()]) };
    assert_eq!(wal::decode_entry(1, json).unwrap(), single);
}

/// Recovery reads an entry's log id, and the start-up replay its kind, without decoding it:
/// both must agree with the decoded entry for every kind of payload.
#[test]
fn an_encoded_entry_tells_its_log_id_and_kind_without_being_decoded() {
    use std::collections::BTreeSet;
    let membership = openraft::Membership::new(vec![BTreeSet::from([1u64, 2, 3])], None);
    let cases = [
        (Entry { log_id: log_id(3, 7), payload: EntryPayload::Blank }, false),
        (entry(3, 8), false),
        (Entry { log_id: log_id(4, 9), payload: EntryPayload::Membership(membership) }, true),
    ];
    for (e, is_membership) in cases {
        let encoded = EncodedEntry::encode(&e).unwrap();
        // A record of format 3 is the entry; one of format 4 starts with where its write began.
        let format_4: Vec<u8> = [&[0x81, 0x01][..], &encoded.payload].concat();
        for (version, record) in [(wal::ENTRY_FORMAT, &encoded.payload[..]), (record::FORMAT_VERSION, &format_4[..])] {
            let read = EncodedEntry::from_record(version, record).unwrap();
            assert_eq!(read.log_id, e.log_id);
            assert_eq!(read.is_membership(), is_membership, "{e:?}");
            assert_eq!(read.decode().unwrap(), e);
            assert_eq!(read.payload, encoded.payload, "format {version}: the entry alone is kept");
        }
    }
    assert!(EncodedEntry::from_record(wal::ENTRY_FORMAT, &[0xff]).is_err(), "a truncated log id is refused");
    assert!(EncodedEntry::from_record(record::FORMAT_VERSION, &[0xff]).is_err(), "a truncated varint is refused");
    assert!(EncodedEntry::from_record(record::FORMAT_VERSION, &[0x05, 0xff]).is_err(), "a truncated log id is refused");
}

/// A record of format 4 is how far back in the segment its write began (a varint), then the
/// entry as format 3 holds it: 0 for a write's first record, the bytes of the records before
/// it in the write for the others.
#[test]
fn golden_record_payloads_say_where_their_write_began() {
    let fs = FaultFs::new();
    let (mut wal, _) = fault_open(&fs, 1 << 16).unwrap();
    wal.append(&[entry(1, 1), entry(1, 2), entry(1, 3)]).unwrap();
    wal.sync().unwrap();
    wal.append(&[entry(1, 4)]).unwrap();
    wal.append(&[entry(1, 5)]).unwrap();
    wal.sync().unwrap();
    let buf = fs.read(&segment_path(1)).unwrap();
    let spans = record_spans(&buf);
    assert_eq!(spans.len(), 5);
    let len = |i: usize| spans[i].1 - spans[i].0;
    // Two appends before one sync are one write.
    let backs = [0, len(0), len(0) + len(1), 0, len(3)];
    for (i, &(start, _)) in spans.iter().enumerate() {
        let Read::Record { payload, .. } = record::read_record(&buf, start) else { unreachable!() };
        let mut want = vec![u8::try_from(backs[i]).expect("under 128 bytes back")];
        want.extend(wal::encode_entry(&entry(1, i as u64 + 1)).unwrap());
        assert_eq!(payload, want, "record {i}");
        assert_eq!(wal::decode_entry(record::FORMAT_VERSION, payload).unwrap(), entry(1, i as u64 + 1));
    }
}

/// Purges lag one snapshot behind: a purge up to a snapshot inside the log purges only up to
/// the one before, so the log reaches back to the snapshot before the newest.
#[tokio::test]
async fn a_lagging_purge_keeps_the_log_back_to_the_snapshot_before_the_newest() {
    use openraft::storage::RaftLogStorage;
    let fs = FaultFs::new();
    let mut store = store(&fs).purging_one_snapshot_late();
    append_all(&store, &fs, (1..=10).map(|i| entry(1, i)));
    store.purge(log_id(1, 4)).await.unwrap();
    assert_eq!(store.get_log_state().await.unwrap().last_purged_log_id, None, "the first purge waits");
    store.purge(log_id(1, 8)).await.unwrap();
    let state = store.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(1, 4)), Some(log_id(1, 10))));
    drop(store);
    let (_, rec) = fault_open(&fs, 1 << 16).unwrap();
    assert_eq!(ids(&rec.entries), (5..=10).map(|i| (1, i)).collect::<Vec<_>>());
}

/// A snapshot from the leader that reaches past the end of a follower's log (the follower was
/// cut off while the leader snapshotted) leaves nothing of the log worth keeping, and openraft
/// appends the leader's next entry right after the snapshot: the purge up to it is done at
/// once, lagging or not, so the log continues there. Deferred, the next append was refused as
/// out of sequence ("append of entry 21 out of sequence: the log continues at 11") and the
/// follower stopped. The same purge comes at a start that finds a snapshot past the log's end.
#[tokio::test]
async fn a_purge_past_the_end_of_the_log_is_done_at_once_and_the_log_continues_after_it() {
    use openraft::storage::RaftLogStorage;
    for earlier in [None, Some(log_id(1, 4))] {
        let fs = FaultFs::new();
        let mut store = store(&fs).purging_one_snapshot_late();
        append_all(&store, &fs, (1..=10).map(|i| entry(1, i)));
        let (tx, rx) = mpsc::channel();
        if let Some(p) = earlier {
            store.purge(p).await.unwrap();
        }
        store.purge(log_id(2, 20)).await.unwrap();
        let state = store.get_log_state().await.unwrap();
        assert_eq!((state.last_purged_log_id, state.last_log_id), (Some(log_id(2, 20)), Some(log_id(2, 20))));
        append(&store, &fs, &tx, entry(2, 21));
        assert_eq!(ack(&rx), (21, fs.data_syncs(), Ok(())), "after a purge up to 20 (earlier purge {earlier:?})");
        drop(store);
        let (_, rec) = fault_open(&fs, 1 << 16).unwrap();
        assert_eq!(rec.meta.last_purged, Some(log_id(2, 20)));
        assert_eq!(ids(&rec.entries), [(2, 21)]);
    }
}

/// A purge past the log's end waits until the snapshot it purges behind is on disk (openraft
/// asks for it as soon as it hands a received snapshot to the state machine), and gives up,
/// purging nothing, if it is not there in time.
#[tokio::test(flavor = "current_thread")]
async fn a_purge_past_the_end_waits_for_its_snapshot_on_disk_and_gives_up_purging_nothing() {
    use openraft::storage::RaftLogStorage;
    let fs = FaultFs::new();
    let (on_disk, rx) = tokio::sync::watch::channel(0u64);
    let mut waiting = store(&fs).purging_one_snapshot_late().purging_past_its_end_after(rx, DEADLINE);
    append_all(&waiting, &fs, (1..=10).map(|i| entry(1, i)));
    // Within the log: no wait, even with no snapshot on disk (it lags, and the entries it would
    // remove are behind snapshots the state machine wrote itself).
    waiting.purge(log_id(1, 4)).await.unwrap();

    let purge = tokio::spawn(async move {
        let done = waiting.purge(log_id(2, 20)).await;
        (waiting, done)
    });
    // The purge waits on the snapshot (a second receiver), and has saved nothing meanwhile.
    while on_disk.receiver_count() < 2 {
        assert!(!purge.is_finished(), "the purge past the end finished without waiting for its snapshot");
        tokio::task::yield_now().await;
    }
    assert_eq!(fault_open(&fs, 1 << 16).unwrap().1.meta.last_purged, None);
    on_disk.send_replace(20);
    let (mut purged, done) = purge.await.unwrap();
    done.unwrap();
    assert_eq!(purged.get_log_state().await.unwrap().last_purged_log_id, Some(log_id(2, 20)));
    assert_eq!(fault_open(&fs, 1 << 16).unwrap().1.meta.last_purged, Some(log_id(2, 20)));

    // Never on disk: the purge fails once its patience is spent, and the log is as it was.
    let fs = FaultFs::new();
    let (_on_disk, rx) = tokio::sync::watch::channel(0u64);
    let mut given_up = store(&fs).purging_one_snapshot_late().purging_past_its_end_after(rx, Duration::from_millis(50));
    append_all(&given_up, &fs, (1..=10).map(|i| entry(1, i)));
    let err = given_up.purge(log_id(2, 20)).await.unwrap_err().to_string();
    assert!(err.contains("the snapshot up to entry 20 was not on disk within"), "{err}");
    let state = given_up.get_log_state().await.unwrap();
    assert_eq!((state.last_purged_log_id, state.last_log_id), (None, Some(log_id(1, 10))));
}

/// The last record of a segment before the last one zeroed: its entry is gone from the end of
/// that segment, and the refusal names that segment and where its records now end, not the
/// next one, which is whole. The dump says the same.
#[test]
fn records_lost_at_the_end_of_an_earlier_segment_are_blamed_on_it() {
    let fs = FaultFs::new();
    drop(written(&fs, 25, 256));
    let names = segment_files(&fs);
    assert!(names.len() >= 3, "several segments: {names:?}");
    let damaged = dir().join(&names[1]);
    let buf = fs.read(&damaged).unwrap();
    let (last_at, last_end) = *record_spans(&buf).last().unwrap();
    fs.damage(&damaged, |b| b[last_at..last_end].fill(0)).unwrap();
    let e = fault_open(&fs, 256).unwrap_err().to_string();
    assert!(
        e.contains(&damaged.display().to_string()) && e.contains(&format!("at byte {last_at}")),
        "the refusal names the segment whose records end early, at their end: {e}"
    );
}

/// `raft-meta` rewritten as the release before `no_segment` wrote it: that field absent, and
/// `newest_segment` set to `newest`.
fn as_an_earlier_release_wrote_it(fs: &FaultFs, newest: u64) {
    let path = dir().join(wal::META_NAME);
    let buf = fs.read(&path).unwrap();
    let Read::Record { payload, .. } = record::read_record(&buf, 16) else { panic!("raft-meta reads back") };
    let mut json: serde_json::Value = serde_json::from_slice(payload).unwrap();
    json.as_object_mut().unwrap().remove("no_segment");
    json["newest_segment"] = newest.into();
    let mut bytes = buf[..16].to_vec();
    record::encode_record(&serde_json::to_vec(&json).unwrap(), &mut bytes);
    fs.damage(&path, |b| *b = bytes).unwrap();
}

/// The newest segment holds the log's end, entries after the purge point included, wherever
/// it began: missing, it is refused even when it began before the purge point. A purge that
/// leaves no segment says so in `raft-meta`; the release before said nothing, and its record
/// of a purged newest segment is let through while nothing committed lies past the purge point.
#[test]
fn a_missing_newest_segment_is_refused_wherever_it_began() {
    let fs = FaultFs::new();
    let mut wal = written(&fs, 20, 400);
    let files = segment_files(&fs);
    let newest: u64 = files.last().unwrap()["log-".len()..].parse().unwrap();
    wal.purge(&RaftMeta { last_purged: Some(log_id(1, newest + 1)), ..voted() }).unwrap();
    drop(wal);
    fs.remove(&segment_path(newest)).unwrap();
    let e = fault_open(&fs, 400).unwrap_err().to_string();
    assert!(
        e.contains(&segment_path(newest).display().to_string()) && e.contains("was started, but it is missing"),
        "{e}"
    );

    // Purged past the end: recorded, and the log opens and goes on.
    let fs = FaultFs::new();
    let mut wal = written(&fs, 20, 400);
    let newest: u64 = segment_files(&fs).last().unwrap()["log-".len()..].parse().unwrap();
    wal.purge(&RaftMeta { last_purged: Some(log_id(1, 25)), ..voted() }).unwrap();
    drop(wal);
    let saved = wal::read_saved_meta(&fs, &dir().join(wal::META_NAME), None).unwrap();
    assert_eq!(saved.newest_segment, wal::NewestSegment::NoSegment);
    fault_open(&fs, 400).unwrap();

    // The same directory as the release before wrote it: its purged newest segment recorded.
    as_an_earlier_release_wrote_it(&fs, newest);
    fault_open(&fs, 400).expect("an earlier release's purge past the end");
    // With a commit point past the purge point, the entries up to it were in that segment.
    let (mut wal, _) = fault_open(&fs, 400).unwrap();
    wal.save_meta(&RaftMeta { last_purged: Some(log_id(1, 25)), committed: Some(log_id(1, 27)), ..voted() }).unwrap();
    drop(wal);
    as_an_earlier_release_wrote_it(&fs, newest);
    let e = fault_open(&fs, 400).unwrap_err().to_string();
    assert!(e.contains("was started, but it is missing"), "{e}");
}

/// A segment file shorter than the size its header says it was preallocated to was cut after
/// it was written: refused, naming the file and where it ends. A cut of the log's own (a
/// truncation) preallocates the file again to that size, however the segment size is now
/// configured; a header with no size recorded (an earlier release's) is not checked.
#[test]
fn a_short_segment_is_refused_unless_its_size_is_unrecorded() {
    let fs = FaultFs::new();
    drop(written(&fs, 3, 1 << 16));
    let path = segment_path(1);
    let (at, _) = record_spans(&fs.read(&path).unwrap())[2];
    fs.damage(&path, |b| b.truncate(at)).unwrap();
    match fault_open(&fs, 1 << 16) {
        Err(LogError::Corrupt { path: p, offset, reason }) => {
            assert_eq!((p, offset), (path.clone(), at as u64));
            assert!(reason.contains("preallocated to") && reason.contains("cut"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    fs.damage(&path, |b| b[28..32].fill(0)).unwrap();
    let (_, rec) = fault_open(&fs, 1 << 16).expect("a segment whose size is not recorded");
    assert_eq!(ids(&rec.entries), [(1, 1), (1, 2)]);

    // Truncated under a smaller configured size: still at least its recorded size.
    let fs = FaultFs::new();
    drop(written(&fs, 3, 1 << 16));
    let (mut wal, _) = fault_open(&fs, 1 << 12).unwrap();
    wal.truncate(2).unwrap();
    drop(wal);
    fs.crash();
    assert!(fs.read(&path).unwrap().len() >= 1 << 16);
    let (_, rec) = fault_open(&fs, 1 << 12).unwrap();
    assert_eq!(ids(&rec.entries), [(1, 1)]);
}
