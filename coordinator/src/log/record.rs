//! The on-disk format of a segment: a fixed header, then records, then zeros.
//!
//! ```text
//!  segment header (32 bytes, little-endian)
//!   0  magic "RFWL"
//!   4  format version (u32)
//!   8  cluster id (u64)
//!  16  index of the first entry (u64)
//!  24  CRC-32C of bytes 0..24 (u32)
//!  28  the size the file was preallocated to (u32; zero: not recorded, as in the segments of
//!      earlier releases, or over 4 GiB)
//!  record
//!   0  payload length n (u32, 1..=MAX_RECORD_LEN)
//!   4  CRC-32C of the length bytes and the payload (u32)
//!   8  payload (n bytes: one openraft entry; in format 4 how far back in the segment the
//!      write that holds the record began (a varint), then postcard of the entry, whose
//!      normal payload is a transaction batch; the entry alone in format 3, postcard of one
//!      transaction in format 2, JSON of one in format 1)
//! ```
//!
//! The tail of a segment is zeros from preallocation, so a zero length word marks the end of
//! the records. The checksum covers the length too, so a torn or flipped length is caught
//! rather than followed. This module only encodes and decodes; what a bad record means is
//! decided by recovery in [`super::wal`].
//!
//! The preallocated size lies outside the header's checksum, which earlier releases check over
//! bytes 0..24 alone: covering it would make them refuse every new segment. A damaged size word
//! can hide a cut or make recovery refuse a whole file as cut, never make it drop an entry.

use super::crc32c;

/// The first four bytes of every segment.
pub const SEGMENT_MAGIC: [u8; 4] = *b"RFWL";
/// The format version this code writes and the newest it reads. Version 4 records say where
/// the write that holds them began, so that recovery tells the remains of an unsynced write
/// from damage (`super::wal::could_prove_damage`); version 3 records hold the entry alone,
/// and carry a batch of transactions as version 4's do; version 2 entries (postcard: a
/// znode's data is its bytes, not a JSON array of numbers) and version 1 entries (JSON) carry
/// one each. All are still read.
pub const FORMAT_VERSION: u32 = 4;
/// The size of a segment header.
pub const HEADER_LEN: usize = 32;
/// The size of a record's length and checksum words.
pub const RECORD_HEADER_LEN: usize = 8;
/// The largest payload a record may hold; a longer length word is damage, not a record.
pub const MAX_RECORD_LEN: u32 = 64 << 20;

/// What a segment header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Format version the segment was written in.
    pub version: u32,
    /// The cluster the directory belongs to.
    pub cluster_id: u64,
    /// Index of the segment's first entry.
    pub first_index: u64,
    /// The size the file was preallocated to when it was started, which it never shrinks
    /// below (0: not recorded).
    pub preallocated: u32,
}

/// Why a segment header is unreadable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer than [`HEADER_LEN`] bytes.
    #[error("the file is shorter than a segment header")]
    Short,
    /// Not a segment of this log.
    #[error("the file does not start with the segment magic")]
    BadMagic,
    /// The header's checksum does not match.
    #[error("the segment header's checksum does not match")]
    BadChecksum,
}

impl SegmentHeader {
    /// The header's 32 bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&SEGMENT_MAGIC);
        b[4..8].copy_from_slice(&self.version.to_le_bytes());
        b[8..16].copy_from_slice(&self.cluster_id.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_index.to_le_bytes());
        let crc = crc32c::checksum(&b[0..24]);
        b[24..28].copy_from_slice(&crc.to_le_bytes());
        b[28..32].copy_from_slice(&self.preallocated.to_le_bytes());
        b
    }

    /// Reads a header from the start of `buf`. The version is returned as found: refusing a
    /// newer one is the caller's decision, with the file's name in the message.
    pub fn decode(buf: &[u8]) -> Result<Self, HeaderError> {
        let b = buf.get(..HEADER_LEN).ok_or(HeaderError::Short)?;
        if b[0..4] != SEGMENT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        if crc32c::checksum(&b[0..24]) != u32_at(b, 24) {
            return Err(HeaderError::BadChecksum);
        }
        Ok(SegmentHeader {
            version: u32_at(b, 4),
            cluster_id: u64_at(b, 8),
            first_index: u64_at(b, 16),
            preallocated: u32_at(b, 28),
        })
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

fn record_crc(len_bytes: [u8; 4], payload: &[u8]) -> u32 {
    crc32c::extend(crc32c::checksum(&len_bytes), payload)
}

/// Appends one record holding `payload` to `out`.
///
/// # Panics
/// If `payload` is empty or longer than [`MAX_RECORD_LEN`]: the caller checks both, as
/// neither can be written so that recovery reads it back.
pub fn encode_record(payload: &[u8], out: &mut Vec<u8>) {
    encode_record_of(&[payload], out);
}

/// Appends one record whose payload is `parts` one after the other, as [`encode_record`].
///
/// # Panics
/// As [`encode_record`], for the parts' total length.
pub fn encode_record_of(parts: &[&[u8]], out: &mut Vec<u8>) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    assert!(len > 0 && len <= MAX_RECORD_LEN as usize, "record payload of {len} bytes is outside 1..={MAX_RECORD_LEN}");
    let len_bytes = (len as u32).to_le_bytes();
    let crc = parts.iter().fold(crc32c::checksum(&len_bytes), |crc, part| crc32c::extend(crc, part));
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&crc.to_le_bytes());
    parts.iter().for_each(|part| out.extend_from_slice(part));
}

/// The payload length the length word at `at` claims, if `buf` holds that word: what a
/// filter may look at before any checksum.
pub fn claimed_len(buf: &[u8], at: usize) -> Option<u32> {
    buf.get(at..at + 4).map(|word| u32_at(word, 0))
}

/// What lies at an offset of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read<'a> {
    /// A whole record with a matching checksum; the next one starts at `next`.
    Record {
        /// The record's payload.
        payload: &'a [u8],
        /// Offset just past the record.
        next: usize,
    },
    /// A zero length word, or no bytes at all: the records end here.
    End,
    /// Something that is not a whole, intact record.
    Bad(&'static str),
}

/// Reads the record at `at` in `buf`.
pub fn read_record(buf: &[u8], at: usize) -> Read<'_> {
    let Some(head) = buf.get(at..at + RECORD_HEADER_LEN) else {
        return if all_zero(&buf[at.min(buf.len())..]) { Read::End } else { Read::Bad("a record header cut short") };
    };
    let len = u32_at(head, 0);
    if len == 0 {
        return Read::End;
    }
    if len > MAX_RECORD_LEN {
        return Read::Bad("a record length over the limit");
    }
    let end = at + RECORD_HEADER_LEN + len as usize;
    let Some(payload) = buf.get(at + RECORD_HEADER_LEN..end) else {
        return Read::Bad("a record cut short");
    };
    if record_crc(len.to_le_bytes(), payload) != u32_at(head, 4) {
        return Read::Bad("a record checksum mismatch");
    }
    Read::Record { payload, next: end }
}

/// How many of a candidate record's first payload bytes the `could_open` filter of
/// [`any_record_after`] is shown (fewer where the candidate is shorter), with the candidate's
/// offset.
pub const PAYLOAD_PREFIX: usize = 48;

/// Whether an intact record starts anywhere in `buf` after `after`, among the candidates
/// whose offset and first payload bytes (up to [`PAYLOAD_PREFIX`]) `could_open` accepts: a
/// bad record followed by a good one is damage inside the log, not a torn tail. The caller's
/// filter says what a record after the bad one would begin with (the log's next entries).
///
/// This runs on the way to serving again after a crash, so it is kept from costing time:
/// - a record starts with a length word that is not zero, so runs of zeros (most of a
///   preallocated segment) are skipped a block at a time rather than tried at every offset;
/// - a candidate whose length word is zero, over [`MAX_RECORD_LEN`] or past the end, or whose
///   first bytes `could_open` refuses, is dropped without a checksum;
/// - a candidate longer than `DIRECT_MAX` bytes before the zeros is checksummed from two
///   prefix checksums of the remains, made once (`PrefixSums`). Checksumming every
///   candidate byte by byte over up to the whole remains took time quadratic in them: 9.3 s
///   for 550 KiB of torn setData entries (release build), now 14 ms
///   (`bench/coordinator-torn-tail.txt`);
/// - the checksum of the part of a candidate that lies past the last byte that is not zero (a
///   length word read from the remains of a torn record can claim megabytes) is taken in a few
///   steps ([`crc32c::extend_zeros`]).
pub fn any_record_after(buf: &[u8], after: usize, could_open: impl Fn(usize, &[u8]) -> bool) -> bool {
    scan_after(buf, after, could_open).found
}

/// What [`any_record_after`] found, and the work it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scan {
    /// Whether an intact record was found.
    pub found: bool,
    /// How many bytes were checksummed one by one: candidates' payloads up to
    /// [`DIRECT_MAX`] bytes before the zeros, and once, in steps of [`PREFIX_STEP`], the
    /// stretch checksums of longer candidates are taken from.
    pub checksummed: u64,
    /// How many candidates were checked from prefix checksums rather than byte by byte.
    pub combined: u64,
}

/// The longest stretch of a candidate's payload (before the zeros) checksummed byte by byte;
/// a longer one is checksummed from two prefix checksums ([`PrefixSums`]), in a few steps.
const DIRECT_MAX: usize = 4096;

pub(crate) fn scan_after(buf: &[u8], after: usize, could_open: impl Fn(usize, &[u8]) -> bool) -> Scan {
    let stop = buf.len().saturating_sub(RECORD_HEADER_LEN);
    let data_end = last_nonzero(buf).map_or(0, |p| p + 1);
    let mut scanner =
        Scanner { buf, data_end, from: after, sums: None, scan: Scan { found: false, checksummed: 0, combined: 0 } };
    let mut at = after + 1;
    while at < stop {
        let Some(nonzero) = next_nonzero(buf, at) else { break };
        // Every length word starting before `nonzero - 3` lies in the zeros.
        if nonzero > at + 3 {
            at = nonzero - 3;
            continue;
        }
        if scanner.intact_at(at, &could_open) {
            scanner.scan.found = true;
            break;
        }
        at += 1;
    }
    scanner.scan
}

/// The search of [`scan_after`] over `buf`, whose bytes are all zero from `data_end` on.
struct Scanner<'a> {
    buf: &'a [u8],
    data_end: usize,
    /// Where the search starts: no candidate's payload begins before it.
    from: usize,
    /// Checksums of the prefixes of `buf[from..data_end]`, made for the first candidate
    /// longer than [`DIRECT_MAX`].
    sums: Option<PrefixSums>,
    scan: Scan,
}

impl Scanner<'_> {
    /// Whether [`read_record`] would read an intact record at `at` whose offset and first
    /// payload bytes `could_open` accepts.
    fn intact_at(&mut self, at: usize, could_open: impl Fn(usize, &[u8]) -> bool) -> bool {
        let buf = self.buf;
        let Some(head) = buf.get(at..at + RECORD_HEADER_LEN) else { return false };
        let len = u32_at(head, 0);
        if len == 0 || len > MAX_RECORD_LEN {
            return false;
        }
        let start = at + RECORD_HEADER_LEN;
        let end = start + len as usize;
        if end > buf.len() || !could_open(at, &buf[start..end.min(start + PAYLOAD_PREFIX)]) {
            return false;
        }
        // The payload is `buf[start..split]`, then zeros to `end`.
        let split = self.data_end.clamp(start, end);
        let head_sum = crc32c::checksum(&len.to_le_bytes());
        let written = if split - start <= DIRECT_MAX {
            self.scan.checksummed += (split - start) as u64;
            crc32c::extend(head_sum, &buf[start..split])
        } else {
            self.scan.combined += 1;
            if self.sums.is_none() {
                self.scan.checksummed += (self.data_end - self.from) as u64;
                self.sums = Some(PrefixSums::new(buf, self.from, self.data_end));
            }
            let Some(sums) = &self.sums else { return false };
            crc32c::combine(head_sum, sums.stretch(buf, start, split), (split - start) as u64)
        };
        crc32c::extend_zeros(written, (end - split) as u64) == u32_at(head, 4)
    }
}

/// The step between the prefixes [`PrefixSums`] keeps the checksum of.
const PREFIX_STEP: usize = 64;

/// The checksums of the prefixes of `buf[from..to]` that end every [`PREFIX_STEP`] bytes: the
/// checksum of any stretch of it is had from two of them ([`crc32c::shift`]) and at most twice
/// `PREFIX_STEP - 1` bytes, so that a torn write's remains are checksummed once, not once for
/// every candidate record in them.
struct PrefixSums {
    from: usize,
    /// `sums[i]` is the checksum of `buf[from..from + i * PREFIX_STEP]`.
    sums: Vec<u32>,
}

impl PrefixSums {
    fn new(buf: &[u8], from: usize, to: usize) -> Self {
        let mut sums = Vec::with_capacity((to - from) / PREFIX_STEP + 1);
        let mut sum = 0;
        sums.push(sum);
        for step in buf[from..to].chunks_exact(PREFIX_STEP) {
            sum = crc32c::extend(sum, step);
            sums.push(sum);
        }
        PrefixSums { from, sums }
    }

    /// The checksum of `buf[from..p]`.
    fn up_to(&self, buf: &[u8], p: usize) -> u32 {
        let i = ((p - self.from) / PREFIX_STEP).min(self.sums.len() - 1);
        crc32c::extend(self.sums[i], &buf[self.from + i * PREFIX_STEP..p])
    }

    /// The checksum of `buf[a..b]`, for `from <= a <= b <= to`.
    fn stretch(&self, buf: &[u8], a: usize, b: usize) -> u32 {
        self.up_to(buf, b) ^ crc32c::shift(self.up_to(buf, a), (b - a) as u64)
    }
}

/// Zeros to compare with, a block at a time: the rest of a preallocated segment is tens of
/// megabytes, and a byte at a time took about 1 ns a byte.
const ZEROS: [u8; 4096] = [0; 4096];

/// Whether every byte of `bytes` is zero.
pub fn all_zero(bytes: &[u8]) -> bool {
    bytes.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

/// The offset of the last byte of `buf` that is not zero.
fn last_nonzero(buf: &[u8]) -> Option<usize> {
    let mut end = buf.len();
    while end > 0 {
        let start = end.saturating_sub(ZEROS.len());
        if buf[start..end] != ZEROS[..end - start] {
            return buf[start..end].iter().rposition(|&b| b != 0).map(|p| start + p);
        }
        end = start;
    }
    None
}

/// The offset of the first byte of `buf` at or after `from` that is not zero.
fn next_nonzero(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    let skipped = rest.chunks(ZEROS.len()).take_while(|c| *c == &ZEROS[..c.len()]).count() * ZEROS.len();
    rest.get(skipped..)?.iter().position(|&b| b != 0).map(|p| from + skipped + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_header() {
        let h = SegmentHeader { version: 1, cluster_id: 0x0102_0304_0506_0708, first_index: 42, preallocated: 0 };
        let b = h.encode();
        assert_eq!(
            b,
            [
                b'R', b'F', b'W', b'L', 1, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1, 42, 0, 0, 0, 0, 0, 0, 0, 0x0e, 0xf6, 0x3b,
                0x13, 0, 0, 0, 0
            ]
        );
        assert_eq!(SegmentHeader::decode(&b), Ok(h));
        let mut bad = b;
        bad[16] ^= 1;
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderError::BadChecksum));
        bad[0] = b'X';
        assert_eq!(SegmentHeader::decode(&bad), Err(HeaderError::BadMagic));
        assert_eq!(SegmentHeader::decode(&b[..31]), Err(HeaderError::Short));

        // The preallocated size in the last word, outside the checksum: an earlier release,
        // which checks bytes 0..24 alone, reads the header as before.
        let sized = SegmentHeader { preallocated: 64 << 20, ..h };
        let b = sized.encode();
        assert_eq!(b[..28], h.encode()[..28]);
        assert_eq!(b[28..], [0, 0, 0, 4]);
        assert_eq!(SegmentHeader::decode(&b), Ok(sized));
    }

    #[test]
    fn golden_record() {
        let mut out = Vec::new();
        encode_record(b"abc", &mut out);
        // Length 3, then CRC-32C over [3, 0, 0, 0, 'a', 'b', 'c'], then the payload.
        assert_eq!(out[..4], [3, 0, 0, 0]);
        assert_eq!(u32_at(&out, 4), crc32c::checksum(&[3, 0, 0, 0, b'a', b'b', b'c']));
        assert_eq!(out, [3, 0, 0, 0, 0xf8, 0x83, 0x14, 0x55, b'a', b'b', b'c']);
        assert_eq!(read_record(&out, 0), Read::Record { payload: b"abc", next: 11 });
    }

    #[test]
    fn reads_end_and_damage() {
        let mut buf = Vec::new();
        encode_record(b"one", &mut buf);
        let first_end = buf.len();
        encode_record(b"two", &mut buf);
        buf.extend_from_slice(&[0u8; 20]);
        assert_eq!(read_record(&buf, 0), Read::Record { payload: b"one", next: first_end });
        assert_eq!(read_record(&buf, buf.len() - 20), Read::End);
        assert_eq!(read_record(&buf, buf.len()), Read::End);
        let mut flipped = buf.clone();
        flipped[first_end - 1] ^= 0x20;
        assert_eq!(read_record(&flipped, 0), Read::Bad("a record checksum mismatch"));
        assert!(any_record_after(&flipped, 0, |_, _| true), "the second record is still intact");
        assert!(!any_record_after(&buf, first_end, |_, _| true));
        assert_eq!(read_record(&buf[..first_end - 1], 0), Read::Bad("a record cut short"));
        assert_eq!(read_record(&[1, 0, 0], 0), Read::Bad("a record header cut short"));
        assert_eq!(read_record(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0], 0), Read::Bad("a record length over the limit"));
    }

    /// The search every offset in turn: what [`any_record_after`] must agree with.
    fn any_record_after_by_every_offset(buf: &[u8], after: usize) -> bool {
        (after + 1..buf.len().saturating_sub(RECORD_HEADER_LEN))
            .any(|at| matches!(read_record(buf, at), Read::Record { .. }))
    }

    #[test]
    fn a_record_is_found_after_zeros_wherever_it_starts() {
        let mut rec = Vec::new();
        encode_record(b"intact", &mut rec);
        for zeros in [0usize, 1, 3, 4, 7, 8, 9, 15, 16, 17, 4096 + 5] {
            for after in [0, 1, 2, zeros.saturating_sub(1)] {
                // A bad record's first bytes, zeros, then an intact record, then zeros again.
                let mut buf = vec![9, 0, 0, 0, 1, 2, 3, 4, 5];
                buf.resize(buf.len() + zeros, 0);
                let starts = buf.len();
                buf.extend_from_slice(&rec);
                buf.resize(buf.len() + 100, 0);
                let want = any_record_after_by_every_offset(&buf, after);
                assert_eq!(any_record_after(&buf, after, |_, _| true), want, "{zeros} zeros, after {after}");
                assert!(want == (after < starts), "the record at {starts} is after {after}");
                // The record torn: no record after anything.
                let mut torn = buf.clone();
                torn[starts + 10] ^= 1;
                assert!(!any_record_after(&torn, after, |_, _| true), "{zeros} zeros, after {after}, torn");
                // Cut off at every length: never a record that is not whole.
                for cut in starts..starts + rec.len() {
                    assert_eq!(
                        any_record_after(&buf[..cut], after, |_, _| true),
                        any_record_after_by_every_offset(&buf[..cut], after)
                    );
                }
            }
        }
        // A record whose payload ends in zeros, past a bad one: its checksum covers them.
        let mut payload = b"data then zeros".to_vec();
        payload.resize(9000, 0);
        let mut buf = vec![9, 0, 0, 0, 1, 2, 3, 4, 5];
        encode_record(&payload, &mut buf);
        buf.resize(buf.len() + 50, 0);
        assert!(any_record_after(&buf, 0, |_, _| true), "the record with a zero tail is intact");
        assert!(any_record_after_by_every_offset(&buf, 0));
        buf[9 + 8 + 3] ^= 1;
        assert!(!any_record_after(&buf, 0, |_, _| true), "nor is it once damaged");
        assert_eq!(last_nonzero(&buf), Some(9 + 8 + 14));
        assert_eq!(last_nonzero(&[0; 5000]), None);
        assert_eq!(last_nonzero(&[1; 5000]), Some(4999));
        assert_eq!(next_nonzero(&[0; 20], 0), None);
        assert_eq!(next_nonzero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 7], 0), Some(9));
        assert_eq!(next_nonzero(&[7, 0, 0], 1), None);
        assert_eq!(next_nonzero(&[7], 5), None);
    }

    #[test]
    fn a_candidate_the_filter_refuses_is_neither_found_nor_checksummed() {
        let mut buf = vec![9, 0, 0, 0, 1, 2, 3, 4, 5];
        let mut rec = Vec::new();
        encode_record(b"entry 7, then a payload longer than the prefix shown", &mut rec);
        buf.extend_from_slice(&rec);
        buf.resize(buf.len() + 100, 0);
        let shown = |_: usize, p: &[u8]| {
            assert!(p.len() <= PAYLOAD_PREFIX, "the filter is shown {} bytes", p.len());
            p.starts_with(b"entry 7")
        };
        let found = scan_after(&buf, 0, shown);
        assert!(found.found && found.checksummed >= rec.len() as u64 - 8, "{found:?}");
        let refused = scan_after(&buf, 0, |_, p| p.starts_with(b"entry 8"));
        assert_eq!(refused, Scan { found: false, checksummed: 0, combined: 0 });
    }

    #[test]
    fn a_long_candidate_is_checked_from_prefix_checksums_and_agrees_with_the_bytes() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 | 1).collect();
        for trailing_zeros in [0usize, 1, 5_000] {
            // A bad record's first bytes, odd bytes, then the long record, its payload ending
            // in zeros or not, then the preallocated zeros.
            let mut body = payload.clone();
            body.resize(payload.len() + trailing_zeros, 0);
            let mut rec = Vec::new();
            encode_record(&body, &mut rec);
            let mut buf = vec![9, 0, 0, 0, 1, 2, 3, 4, 5, 77, 78, 79];
            let starts = buf.len();
            buf.extend_from_slice(&rec);
            buf.resize(buf.len() + 70_000, 0);
            let scan = scan_after(&buf, 0, |_, _| true);
            assert!(scan.found && scan.combined >= 1, "{trailing_zeros} zeros: {scan:?}");
            assert!(matches!(read_record(&buf, starts), Read::Record { .. }));
            for flip in [starts + 8, starts + 8 + 5_000, starts + 8 + payload.len() - 1] {
                let mut torn = buf.clone();
                torn[flip] ^= 0x40;
                let scan = scan_after(&torn, 0, |_, _| true);
                assert!(!scan.found, "{trailing_zeros} zeros, flipped at {flip}: {scan:?}");
                assert!(scan.combined >= 1, "the long candidate went through the prefix checksums");
            }
        }
    }
}
