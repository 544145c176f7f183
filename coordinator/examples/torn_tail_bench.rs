//! How long start-up takes to decide that the end of the log is a torn write: the search for
//! an intact record after the first bad one ([`any_record_after`]), over the remains of a
//! write of many setData entries in which no record is whole, at the end of a 64 MiB
//! preallocated segment.
//!
//! ```sh
//! cargo run --release -p referee-coordinator --example torn_tail_bench   # bench/coordinator-torn-tail.txt
//! ```
//!
//! Each case is a number of records of one entry each (a batch of transactions each),
//! znode data of 100 bytes (small values, zeros, or letters: small values read as short
//! length words and small varints at many offsets, the hardest case), and the index of the
//! first torn entry (a young log's small indexes read like stray bytes). Times are the
//! search with the log's own filter (`could_prove_damage`: only what opens one of the next
//! entries, written by a later write, is checksummed) and without it. In most rows every
//! record is a write of its own, the worst case for the filter (damage, not a crash, leaves
//! such remains); in the rows marked "one write" the remains are those of one write, as a
//! crash leaves them, which the filter refuses unread as none of them began after the first
//! bad record.

use std::time::Instant;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use referee_coordinator::log::record::{any_record_after, FORMAT_VERSION};
use referee_coordinator::log::wal::{could_prove_damage, encode_entry_record};
use referee_coordinator::log::EncodedEntry;
use referee_coordinator::proto::SessionId;
use referee_coordinator::raft::TypeConfig;
use referee_coordinator::txn::{Txn, TxnOp, WriteOp};

const SEGMENT: usize = 64 << 20;
const HEADER: usize = 32;

fn main() {
    println!("# torn tail search, release build; 64 MiB segment, every record of the remains torn");
    println!("| records | txns each | data | first torn index | writes | remains | with the filter | without |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (records, per, data, first, one_write) in [
        // Nothing torn: the walk over the segment's zeros alone.
        (0, 1, "small", 1_000, false),
        (1_000, 1, "small", 1_000, false),
        (4_000, 1, "small", 1_000, false),
        (4_000, 1, "small", 3, false),
        (4_000, 1, "zeros", 3, false),
        (4_000, 1, "letters", 3, false),
        (20_000, 1, "small", 3, false),
        (2_000, 16, "small", 3, false),
        (20_000, 16, "small", 3, false),
        (4_000, 1, "small", 3, true),
        (20_000, 16, "small", 3, true),
    ] {
        let (buf, remains) = torn_segment(records, per, data, first, one_write);
        let started = Instant::now();
        let found = any_record_after(&buf, HEADER, could_prove_damage(&buf, FORMAT_VERSION, HEADER, first, 1));
        let filtered = started.elapsed();
        assert!(!found, "no record of the remains is whole");
        let started = Instant::now();
        let found = any_record_after(&buf, HEADER, |_, _| true);
        let unfiltered = started.elapsed();
        assert!(!found, "no record of the remains is whole");
        println!(
            "| {records} | {per} | {data} | {first} | {} | {:.1} KiB | {:.1} ms | {:.1} ms |",
            if one_write { "one" } else { "one each" },
            remains as f64 / 1024.0,
            filtered.as_secs_f64() * 1e3,
            unfiltered.as_secs_f64() * 1e3
        );
    }
}

/// A segment's bytes whose records, from the first on, are all torn (each one's checksum
/// broken), then zeros to 64 MiB; and how many bytes the records take. The records are one
/// write, or each a write of its own.
fn torn_segment(records: u64, per: usize, data: &str, first: u64, one_write: bool) -> (Vec<u8>, usize) {
    let mut buf = vec![0u8; HEADER];
    for i in 0..records {
        let batch = (0..per)
            .map(|k| {
                let n = i as usize * per + k;
                let bytes = match data {
                    "zeros" => vec![0; 100],
                    "letters" => (0..100).map(|j| b'a' + ((n + j) % 26) as u8).collect(),
                    _ => (0..100).map(|j| ((n + j) % 7) as u8).collect(),
                };
                let op = TxnOp::Write(WriteOp::SetData {
                    path: format!("/bench/n{}", n % 100_000),
                    data: Some(bytes),
                    version: -1,
                });
                Txn { session: SessionId(0x1000 + k as i64), auth: Vec::new(), time_ms: 1_700_000_000_000, op }
            })
            .collect();
        let entry: Entry<TypeConfig> = Entry {
            log_id: LogId { leader_id: CommittedLeaderId::new(1, 1), index: first + i },
            payload: EntryPayload::Normal(batch),
        };
        let encoded = EncodedEntry::encode(&entry).expect("an entry encodes");
        let at = buf.len();
        // How far back the record's write began: at the first record, or at the record itself.
        let back = if one_write { (at - HEADER) as u64 } else { 0 };
        encode_entry_record(back, &encoded.payload, &mut buf);
        buf[at + 4] ^= 0xff;
    }
    let remains = buf.len() - HEADER;
    buf.resize(SEGMENT, 0);
    (buf, remains)
}
