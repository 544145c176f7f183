//! The durable Raft log: segmented, checksummed, group-committed files behind openraft's
//! `RaftLogStorage`, with the vote and commit point beside them.
//!
//! # Layout
//!
//! One layer a module, from the disk up:
//!
//! - [`fs`]: the file operations the log needs, on the real filesystem or on a model of one
//!   that fails fsyncs, fills up and loses power on command (for tests).
//! - [`crc32c`]: the checksum of records and headers.
//! - [`record`]: the byte format of segment headers and records (no I/O).
//! - [`wal`]: the segment files: recovery, append, sync, truncate, purge, the vote file, and
//!   the ordering that makes each crash-safe.
//! - [`store`]: [`LogStore`], the writer thread with group commit, and openraft's traits.
//!
//! ```text
//!  openraft ─▶ store (queue) ─▶ writer thread ─▶ wal ─▶ record ─▶ fs ─▶ disk
//!           ◀── flushed, after the fdatasync that covers the entries ◀──┘
//! ```
//!
//! An append that finds the writer thread idle, nothing queued and its runtime with a worker
//! to spare skips the queue: its caller writes and syncs it (`store`'s module docs say when).

pub mod crc32c;
pub mod fs;
pub mod record;
pub mod store;
pub mod wal;

#[cfg(test)]
mod tests;

pub use fs::{FaultFs, FileLock, FileSystem, LogFile, RealFs};
pub use store::{LogReader, LogStore, ProposalSizes, StallWatch};
pub use wal::{EncodedEntry, LogError, RaftMeta, Recovered, TornTail, Wal, WalOptions};
