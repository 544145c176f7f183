//! The file layer under the log: the few operations it needs, on the real filesystem
//! ([`RealFs`]) or on an in-memory model of one that fails and loses power on command
//! ([`FaultFs`]).
//!
//! The model is precise about what survives a power loss, because that is what the log's
//! correctness rests on: file contents survive only up to the last `sync_data` of that file,
//! and a name (created, renamed or removed) survives only once its directory was synced. A
//! process killed without a power loss ([`FaultFs::kill`]) leaves the page cache as it was:
//! the next process reads back bytes no sync covered. And a failed `sync_data` behaves as
//! Linux's does: the pages it could not write are marked clean and stay readable, but no later
//! sync writes them ([`FaultFs::fail_syncs`]); only a new write of a page makes it dirty again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// An open file of the log, written at explicit offsets.
pub trait LogFile: Send + Debug {
    /// Writes all of `buf` at `offset`, extending the file if needed.
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Makes the contents and length durable (fdatasync).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Writes the `len` bytes at `offset` out to the disk and waits until the disk has them,
    /// without making them durable: no cache flush, no metadata. A large file written this way
    /// a piece at a time never holds much unwritten data, and its final
    /// [`LogFile::sync_data`] (which alone makes it durable) has little left to do.
    fn write_back(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Cuts or extends the file to `len` bytes; extended bytes read as zeros.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Reserves space so the file is at least `len` bytes of zeros past its data, so later
    /// appends neither change its size nor find the disk full.
    fn preallocate(&mut self, len: u64) -> io::Result<()>;
    /// Writes zeros over `len` bytes at `offset`, space that [`LogFile::preallocate`] already
    /// reserved, so the blocks are initialised before records are written there. Reserved
    /// blocks are unwritten extents on ext4 and XFS: the first write into one makes its
    /// fdatasync also convert the extent (a metadata write), which an fdatasync of an
    /// initialised block skips.
    fn initialise(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Lets the page cache drop the file's clean pages, so that the next read of them comes
    /// from the disk. After a successful [`LogFile::sync_data`] every page is clean, those whose
    /// write-back failed earlier included: a read then shows what the disk holds, not what an
    /// earlier process wrote and the disk never got. A filesystem without a page cache has
    /// nothing to drop.
    fn drop_cache(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The directory operations of the log.
pub trait FileSystem: Send + Sync + Debug {
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// The names of the files directly in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Creates `path`, or empties it if it exists, for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;
    /// Opens an existing file for writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>>;
    /// The whole contents of `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Renames `from` to `to`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Removes the file `path`.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Makes the entries of `dir` (creations, renames, removals) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Takes an exclusive lock on the file `path` (created if missing) for as long as the
    /// returned guard lives, and writes this process's id into the file. Fails with
    /// [`io::ErrorKind::WouldBlock`] at once if another holder has it: another process, or
    /// another guard of this one. A process that ends, killed or not, lets go of its locks.
    fn lock(&self, path: &Path) -> io::Result<FileLock>;
}

/// An exclusive lock taken by [`FileSystem::lock`], held until it is dropped.
#[derive(Debug)]
pub struct FileLock {
    _held: Box<dyn Debug + Send + Sync>,
}

/// The real filesystem, through `std::fs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

#[derive(Debug)]
struct RealFile(std::fs::File);

impl LogFile for RealFile {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, buf, offset)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn write_back(&mut self, offset: u64, len: u64) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
                return Err(io::Error::other("write-back range over i64"));
            };
            let flags =
                libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
            // SAFETY: sync_file_range takes a descriptor we own and plain integers, and
            // touches no memory of ours.
            if unsafe { libc::sync_file_range(self.0.as_raw_fd(), offset, len, flags) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (offset, len);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let len_off = i64::try_from(len).map_err(|_| io::Error::other("preallocation size over i64"))?;
            match nix::fcntl::fallocate(self.0.as_raw_fd(), nix::fcntl::FallocateFlags::empty(), 0, len_off) {
                Ok(()) => return Ok(()),
                // Filesystems without fallocate: fall back to a sparse extension below.
                Err(nix::errno::Errno::EOPNOTSUPP) => {}
                Err(e) => return Err(io::Error::from(e)),
            }
        }
        if self.0.metadata()?.len() < len {
            self.0.set_len(len)?;
        }
        Ok(())
    }

    fn drop_cache(&mut self) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: posix_fadvise takes a descriptor we own and plain integers, and touches
            // no memory of ours.
            let err = unsafe { libc::posix_fadvise(self.0.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            if err != 0 {
                return Err(io::Error::from_raw_os_error(err));
            }
        }
        Ok(())
    }

    fn initialise(&mut self, offset: u64, len: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        let mut at = offset;
        let end = offset.saturating_add(len);
        while at < end {
            let n = (end - at).min(ZEROS.len() as u64) as usize;
            std::os::unix::fs::FileExt::write_all_at(&self.0, &ZEROS[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }
}

impl FileSystem for RealFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(name) = entry.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
        Ok(Box::new(RealFile(f)))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(RealFile(f)))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        std::fs::File::open(dir)?.sync_all()
    }

    /// An advisory `flock`, which the kernel releases when the process ends: no stale lock
    /// is left behind by a crash.
    fn lock(&self, path: &Path) -> io::Result<FileLock> {
        use nix::fcntl::{Flock, FlockArg};
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, "locked by another process"))
            }
            Err((_, errno)) => return Err(io::Error::from(errno)),
        };
        locked.set_len(0)?;
        std::os::unix::fs::FileExt::write_all_at(&*locked, format!("{}\n", std::process::id()).as_bytes(), 0)?;
        Ok(FileLock { _held: Box::new(locked) })
    }
}

/// One file of the model: what a reader sees now, and what would survive a power loss.
#[derive(Debug, Default, Clone)]
struct Inode {
    data: Vec<u8>,
    durable: Vec<u8>,
    /// Pages ([`PAGE`]) a failed sync could not write: clean in the cache, so no later sync
    /// writes them, and different from what the disk holds, until written again.
    unwritable: BTreeSet<usize>,
}

impl Inode {
    /// Marks the pages of `start..end` dirty again: written since a failed sync.
    fn written(&mut self, start: usize, end: usize) {
        if end > start {
            let pages = start / PAGE..=(end - 1) / PAGE;
            self.unwritable.retain(|p| !pages.contains(p));
        }
    }

    /// What the disk holds of page `page` (zeros past its end).
    fn on_disk(&self, page: usize) -> Vec<u8> {
        let start = page * PAGE;
        let mut bytes = self.durable.get(start..(start + PAGE).min(self.durable.len())).unwrap_or(&[]).to_vec();
        bytes.resize(PAGE, 0);
        bytes
    }

    /// `data` with the pages no sync can write replaced by what the disk holds.
    fn as_a_sync_leaves_it(&self) -> Vec<u8> {
        let mut after = self.data.clone();
        for &page in &self.unwritable {
            let start = page * PAGE;
            if start < after.len() {
                let end = (start + PAGE).min(after.len());
                after[start..end].copy_from_slice(&self.on_disk(page)[..end - start]);
            }
        }
        after
    }
}

#[derive(Debug, Default)]
struct FaultState {
    /// Bumped by every crash; handles opened before it fail every call, as the process that
    /// held them is gone.
    epoch: u64,
    inodes: Vec<Inode>,
    names: BTreeMap<PathBuf, usize>,
    durable_names: BTreeMap<PathBuf, usize>,
    dirs: BTreeSet<PathBuf>,
    fail_syncs: bool,
    /// Fsyncs of files and directories under this path fail.
    fail_syncs_under: Option<PathBuf>,
    write_budget: Option<u64>,
    /// Preallocations fail, as `fallocate` on a full disk does.
    preallocation_fails: bool,
    hold_syncs: bool,
    /// Held fsyncs still to be let through one at a time ([`FaultFs::let_held_syncs_through`]).
    let_through: usize,
    syncs_waiting: usize,
    data_syncs: u64,
    dir_syncs: u64,
    /// Every directory fsync'd, in order.
    synced_dirs: Vec<PathBuf>,
    /// Bytes written by `initialise`.
    initialised: u64,
    /// Files locked by [`FileSystem::lock`], until their guards drop or the power goes.
    locks: BTreeSet<PathBuf>,
}

#[derive(Debug, Default)]
struct FaultInner {
    state: Mutex<FaultState>,
    changed: Condvar,
}

/// An in-memory filesystem for tests that fails fsyncs, runs out of space and loses power on
/// command. Clones share one filesystem.
#[derive(Debug, Clone, Default)]
pub struct FaultFs {
    inner: Arc<FaultInner>,
}

/// How long a held fsync waits before it fails: longer than any test holds one on purpose, so
/// that a test that ends early without releasing its hold (a failed assertion) fails instead
/// of waiting for ever in the drop of the log, which joins its writer.
const HOLD_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The unit in which [`FaultFs::crash_persisting`] loses or keeps unsynced data: a page of
/// the page cache, written to the disk as a whole.
pub const PAGE: usize = 4096;

fn crashed() -> io::Error {
    io::Error::other("the process holding this file crashed")
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} does not exist", path.display()))
}

impl FaultFs {
    /// An empty filesystem.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, FaultState> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// From now on every fsync (file or directory) fails with an I/O error.
    pub fn fail_syncs(&self) {
        self.lock().fail_syncs = true;
    }

    /// From now on every fsync of a file or directory under `dir` fails (the rest succeed).
    pub fn fail_syncs_under(&self, dir: impl Into<PathBuf>) {
        self.lock().fail_syncs_under = Some(dir.into());
    }

    /// From now on every preallocation that would grow a file fails with "no space left on
    /// device", changing nothing (`fallocate` reserves all of it or none).
    pub fn fail_preallocations(&self) {
        self.lock().preallocation_fails = true;
    }

    /// The disk fills after `bytes` more bytes are written: the write that crosses the limit
    /// writes only what fits and fails with "no space left on device".
    pub fn fill_after(&self, bytes: u64) {
        self.lock().write_budget = Some(bytes);
    }

    /// Makes every file fsync wait until [`FaultFs::release_syncs`] (or a crash; or, failing,
    /// after a minute, in case the test never releases it).
    pub fn hold_syncs(&self) {
        self.lock().hold_syncs = true;
    }

    /// Lets held fsyncs complete.
    pub fn release_syncs(&self) {
        let mut st = self.lock();
        st.hold_syncs = false;
        st.let_through = 0;
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Lets the next `n` held fsyncs (waiting now or to come) complete, and holds the rest.
    pub fn let_held_syncs_through(&self, n: usize) {
        self.lock().let_through += n;
        self.inner.changed.notify_all();
    }

    /// How many file fsyncs are waiting on [`FaultFs::hold_syncs`].
    pub fn syncs_waiting(&self) -> usize {
        self.lock().syncs_waiting
    }

    /// Waits until `n` file fsyncs are held, or `limit` passes; whether they are.
    pub fn wait_for_held_syncs(&self, n: usize, limit: std::time::Duration) -> bool {
        let st = self.lock();
        let (st, _) = self
            .inner
            .changed
            .wait_timeout_while(st, limit, |st| st.syncs_waiting < n)
            .unwrap_or_else(|p| p.into_inner());
        st.syncs_waiting >= n
    }

    /// How many file fsyncs have completed.
    pub fn data_syncs(&self) -> u64 {
        self.lock().data_syncs
    }

    /// How many bytes the log has initialised ahead of its records (`LogFile::initialise`).
    pub fn initialised_bytes(&self) -> u64 {
        self.lock().initialised
    }

    /// How many directory fsyncs have completed.
    pub fn dir_syncs(&self) -> u64 {
        self.lock().dir_syncs
    }

    /// The directories fsync'd so far, in order.
    pub fn synced_dirs(&self) -> Vec<PathBuf> {
        self.lock().synced_dirs.clone()
    }

    /// Power loss: every file goes back to its last synced contents, every directory to its
    /// last synced entries, faults are cleared, and handles opened before fail from now on.
    pub fn crash(&self) {
        let mut st = self.lock();
        for inode in &mut st.inodes {
            inode.data = inode.durable.clone();
            inode.unwritable.clear();
        }
        st.names = st.durable_names.clone();
        drop(st);
        self.kill();
    }

    /// The process ends (kill -9, an abort) and the machine stays up: the page cache keeps
    /// everything written, synced or not, and every name, in its directory or not, for the
    /// next process to read; pages a failed sync could not write stay as they are in the cache
    /// and on the disk. Handles opened before fail from now on, locks are let go, and faults
    /// are cleared.
    pub fn kill(&self) {
        let mut st = self.lock();
        st.epoch += 1;
        // The process holding the locks is gone.
        st.locks.clear();
        st.fail_syncs = false;
        st.fail_syncs_under = None;
        st.write_budget = None;
        st.hold_syncs = false;
        st.let_through = 0;
        drop(st);
        self.inner.changed.notify_all();
    }

    /// Power loss while written pages were on their way to the disk: of every 4 KiB page
    /// ([`PAGE`]) of a file whose contents differ from its last synced ones, those `reached`
    /// names (by the file's path and the page's number) survive and the others go back, in no
    /// particular order, as a disk may write the pages of one write in any order. Then as
    /// [`FaultFs::crash`].
    pub fn crash_persisting(&self, reached: impl Fn(&Path, usize) -> bool) {
        let mut st = self.lock();
        let paths: BTreeMap<usize, PathBuf> = st.names.iter().map(|(p, &i)| (i, p.clone())).collect();
        for (ino, inode) in st.inodes.iter_mut().enumerate() {
            let Some(path) = paths.get(&ino) else { continue };
            let len = inode.data.len().max(inode.durable.len());
            let mut after = inode.durable.clone();
            after.resize(len, 0);
            // Whether a page past the synced end reached the disk, and the file's size with it.
            let mut grew = false;
            for (page, start) in (0..len).step_by(PAGE).enumerate() {
                let end = (start + PAGE).min(inode.data.len());
                let changed = start < end && inode.data[start..end] != after[start..end];
                if changed && !inode.unwritable.contains(&page) && reached(path, page) {
                    after[start..end].copy_from_slice(&inode.data[start..end]);
                    grew |= end > inode.durable.len();
                }
            }
            after.truncate(if grew { len } else { inode.durable.len() });
            inode.durable = after;
        }
        drop(st);
        self.crash();
    }

    /// Changes the contents of `path` as damage would, both now and after a crash.
    pub fn damage(&self, path: &Path, f: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let mut st = self.lock();
        let ino = *st.names.get(path).ok_or_else(|| not_found(path))?;
        let inode = &mut st.inodes[ino];
        f(&mut inode.data);
        inode.durable = inode.data.clone();
        inode.unwritable.clear();
        Ok(())
    }
}

#[derive(Debug)]
struct FaultFile {
    fs: FaultFs,
    ino: usize,
    epoch: u64,
}

impl FaultFile {
    fn state(&self) -> io::Result<MutexGuard<'_, FaultState>> {
        let st = self.fs.lock();
        if st.epoch != self.epoch {
            return Err(crashed());
        }
        Ok(st)
    }
}

impl LogFile for FaultFile {
    fn write_at(&mut self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut st = self.state()?;
        let (n, full) = match st.write_budget {
            Some(left) if (buf.len() as u64) > left => (left as usize, true),
            _ => (buf.len(), false),
        };
        if let Some(left) = st.write_budget.as_mut() {
            *left -= n as u64;
        }
        let inode = &mut st.inodes[self.ino];
        let start = offset as usize;
        inode.written(start, start + n);
        let data = &mut inode.data;
        if data.len() < start + n {
            data.resize(start + n, 0);
        }
        data[start..start + n].copy_from_slice(&buf[..n]);
        if full {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on device"));
        }
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut st = self.state()?;
        if st.hold_syncs {
            st.syncs_waiting += 1;
            self.fs.inner.changed.notify_all();
            let until = std::time::Instant::now() + HOLD_LIMIT;
            let mut timed_out = false;
            while st.hold_syncs && st.let_through == 0 && st.epoch == self.epoch && !timed_out {
                let left = until.saturating_duration_since(std::time::Instant::now());
                let (next, waited) = self.fs.inner.changed.wait_timeout(st, left).unwrap_or_else(|p| p.into_inner());
                st = next;
                timed_out = waited.timed_out();
            }
            if st.hold_syncs && st.let_through > 0 && st.epoch == self.epoch {
                st.let_through -= 1;
            }
            st.syncs_waiting -= 1;
            if st.epoch != self.epoch {
                return Err(crashed());
            }
            if timed_out && st.hold_syncs && st.let_through == 0 {
                return Err(io::Error::other(format!(
                    "an fsync held by the test was not released within {HOLD_LIMIT:?}: a test that ended \
                     early without releasing it (see its failure above)"
                )));
            }
        }
        let ino = self.ino;
        let under = |d: &PathBuf| st.names.iter().any(|(p, &i)| i == ino && p.starts_with(d));
        let failed = st.fail_syncs || st.fail_syncs_under.as_ref().is_some_and(under);
        let inode = &mut st.inodes[self.ino];
        if failed {
            // As Linux does: the pages it could not write are marked clean and stay readable,
            // and no later sync writes them.
            let len = inode.data.len();
            for (page, start) in (0..len).step_by(PAGE).enumerate() {
                let end = (start + PAGE).min(len);
                if inode.data[start..end] != inode.on_disk(page)[..end - start] {
                    inode.unwritable.insert(page);
                }
            }
            return Err(io::Error::other("injected fsync failure"));
        }
        inode.durable = inode.as_a_sync_leaves_it();
        st.data_syncs += 1;
        Ok(())
    }

    fn write_back(&mut self, _offset: u64, _len: u64) -> io::Result<()> {
        // Written out is not durable: a crash still loses whatever no sync_data covered.
        self.state().map(|_| ())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let mut st = self.state()?;
        let inode = &mut st.inodes[self.ino];
        let (old, new) = (inode.data.len(), len as usize);
        inode.written(old.min(new), old.max(new));
        inode.data.resize(new, 0);
        Ok(())
    }

    fn preallocate(&mut self, len: u64) -> io::Result<()> {
        let mut st = self.state()?;
        let fails = st.preallocation_fails;
        let inode = &mut st.inodes[self.ino];
        if (inode.data.len() as u64) < len {
            if fails {
                return Err(io::Error::new(io::ErrorKind::StorageFull, "no space left on device"));
            }
            inode.written(inode.data.len(), len as usize);
            inode.data.resize(len as usize, 0);
        }
        Ok(())
    }

    /// Clean pages read back as the disk holds them: the pages no sync could write.
    fn drop_cache(&mut self) -> io::Result<()> {
        let mut st = self.state()?;
        let inode = &mut st.inodes[self.ino];
        inode.data = inode.as_a_sync_leaves_it();
        inode.unwritable.clear();
        Ok(())
    }

    /// Zeros, as on a real disk; outside the write budget, as the space was reserved.
    fn initialise(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let mut st = self.state()?;
        st.initialised += len;
        let inode = &mut st.inodes[self.ino];
        let (start, end) = (offset as usize, (offset + len) as usize);
        inode.written(start, end);
        let data = &mut inode.data;
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].fill(0);
        Ok(())
    }
}

impl FileSystem for FaultFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Directories themselves are taken as durable: the log's directory is made once.
        self.lock().dirs.insert(dir.to_path_buf());
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.lock();
        if !st.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().and_then(|n| n.to_str()).map(str::to_owned))
            .collect())
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let mut st = self.lock();
        let ino = match st.names.get(path) {
            Some(&ino) => {
                let inode = &mut st.inodes[ino];
                inode.written(0, inode.data.len());
                inode.data.clear();
                ino
            }
            None => {
                st.inodes.push(Inode::default());
                let ino = st.inodes.len() - 1;
                st.names.insert(path.to_path_buf(), ino);
                ino
            }
        };
        Ok(Box::new(FaultFile { fs: self.clone(), ino, epoch: st.epoch }))
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn LogFile>> {
        let st = self.lock();
        let ino = *st.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(FaultFile { fs: self.clone(), ino, epoch: st.epoch }))
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let st = self.lock();
        let ino = *st.names.get(path).ok_or_else(|| not_found(path))?;
        Ok(st.inodes[ino].data.clone())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.lock();
        let ino = st.names.remove(from).ok_or_else(|| not_found(from))?;
        st.names.insert(to.to_path_buf(), ino);
        Ok(())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.lock();
        st.names.remove(path).map(drop).ok_or_else(|| not_found(path))
    }

    fn lock(&self, path: &Path) -> io::Result<FileLock> {
        let epoch = {
            let mut st = self.lock();
            if !st.locks.insert(path.to_path_buf()) {
                return Err(io::Error::new(io::ErrorKind::WouldBlock, "locked by another holder"));
            }
            st.epoch
        };
        let held = FaultLock { fs: self.clone(), path: path.to_path_buf(), epoch };
        self.create(path)?.write_at(0, format!("{}\n", std::process::id()).as_bytes())?;
        Ok(FileLock { _held: Box::new(held) })
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.lock();
        if st.fail_syncs || st.fail_syncs_under.as_ref().is_some_and(|d| dir.starts_with(d)) {
            return Err(io::Error::other("injected directory fsync failure"));
        }
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        let now: Vec<(PathBuf, usize)> =
            st.names.iter().filter(|(p, _)| in_dir(p)).map(|(p, i)| (p.clone(), *i)).collect();
        st.durable_names.retain(|p, _| !in_dir(p));
        st.durable_names.extend(now);
        st.dir_syncs += 1;
        st.synced_dirs.push(dir.to_path_buf());
        Ok(())
    }
}

/// A lock of the [`FaultFs`], released when dropped unless a crash took it already.
#[derive(Debug)]
struct FaultLock {
    fs: FaultFs,
    path: PathBuf,
    epoch: u64,
}

impl Drop for FaultLock {
    fn drop(&mut self) {
        let mut st = self.fs.lock();
        if st.epoch == self.epoch {
            st.locks.remove(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crash_keeps_only_synced_data_and_names_not_what_was_written_back() {
        let fs = FaultFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let mut a = fs.create(&dir.join("a")).unwrap();
        a.write_at(0, b"hello").unwrap();
        a.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        a.write_at(5, b" world").unwrap();
        // Written back is not durable: only a sync is.
        a.write_back(5, 6).unwrap();
        let mut b = fs.create(&dir.join("b")).unwrap();
        b.write_at(0, b"unsynced name").unwrap();
        b.sync_data().unwrap();
        fs.crash();
        assert_eq!(fs.read(&dir.join("a")).unwrap(), b"hello");
        assert!(fs.read(&dir.join("b")).is_err(), "a name never synced into its directory is lost");
        assert!(a.write_at(0, b"x").is_err(), "handles from before the crash are dead");
        assert!(a.write_back(0, 5).is_err(), "handles from before the crash are dead");
    }

    #[test]
    fn a_killed_process_leaves_the_page_cache_and_a_power_cut_takes_it() {
        let fs = FaultFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let mut a = fs.create(&dir.join("a")).unwrap();
        a.write_at(0, b"synced").unwrap();
        a.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        a.write_at(6, b" and not").unwrap();
        fs.create(&dir.join("b")).unwrap();
        fs.kill();
        assert!(a.write_at(0, b"x").is_err(), "handles of the killed process are dead");
        assert_eq!(fs.read(&dir.join("a")).unwrap(), b"synced and not", "the cache keeps what was written");
        assert!(fs.read(&dir.join("b")).is_ok(), "and names not yet synced");
        fs.crash();
        assert_eq!(fs.read(&dir.join("a")).unwrap(), b"synced");
        assert!(fs.read(&dir.join("b")).is_err());
    }

    /// As on Linux: a failed fsync marks the pages it could not write clean; they stay readable,
    /// no later fsync writes them, and only a new write makes them dirty again.
    #[test]
    fn pages_a_failed_sync_could_not_write_no_later_sync_saves() {
        let fs = FaultFs::new();
        let dir = Path::new("/d");
        fs.create_dir_all(dir).unwrap();
        let path = dir.join("a");
        let mut a = fs.create(&path).unwrap();
        a.write_at(0, &[1; PAGE]).unwrap();
        a.sync_data().unwrap();
        fs.sync_dir(dir).unwrap();
        a.write_at(0, &[2; 10]).unwrap();
        a.write_at(PAGE as u64, &[3; 10]).unwrap();
        fs.fail_syncs();
        a.sync_data().unwrap_err();
        fs.kill();
        let mut a = fs.open(&path).unwrap();
        assert_eq!(fs.read(&path).unwrap()[..10], [2; 10], "still readable from the cache");
        a.sync_data().unwrap();
        // Page 1 written again after the failure: that one the next sync saves.
        let mut b = fs.open(&path).unwrap();
        b.write_at(PAGE as u64, &[4; 10]).unwrap();
        b.sync_data().unwrap();
        // What the cache shows of page 0 is not on the disk; dropped from the cache, it reads
        // as the disk has it.
        let mut c = fs.open(&path).unwrap();
        c.drop_cache().unwrap();
        let now = fs.read(&path).unwrap();
        assert_eq!(now[..10], [1; 10]);
        assert_eq!(now[PAGE..PAGE + 10], [4; 10]);
        fs.crash();
        assert_eq!(fs.read(&path).unwrap(), now);
    }

    #[test]
    fn real_fs_writes_back_a_range_and_keeps_its_bytes() {
        let dir = referee_testkit::ScratchDir::new("fs-write-back").unwrap();
        let path = dir.path("f");
        let mut f = RealFs.create(&path).unwrap();
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        f.write_at(0, &data).unwrap();
        // Piece by piece, as a snapshot is written, and a range past the end.
        for at in (0..data.len() as u64).step_by(1 << 20) {
            f.write_back(at, 1 << 20).unwrap();
        }
        f.write_back(data.len() as u64, 1 << 20).unwrap();
        f.sync_data().unwrap();
        assert_eq!(RealFs.read(&path).unwrap(), data);
    }

    #[test]
    fn full_disk_writes_a_prefix_then_fails() {
        let fs = FaultFs::new();
        fs.create_dir_all(Path::new("/d")).unwrap();
        let mut a = fs.create(Path::new("/d/a")).unwrap();
        fs.fill_after(3);
        let e = a.write_at(0, b"abcdef").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert_eq!(fs.read(Path::new("/d/a")).unwrap(), b"abc");
    }

    #[test]
    fn real_fs_preallocates_zeros() {
        let dir = referee_testkit::ScratchDir::new("fs-prealloc").unwrap();
        let path = dir.path("f");
        let mut f = RealFs.create(&path).unwrap();
        f.write_at(0, b"abc").unwrap();
        f.preallocate(4096).unwrap();
        f.sync_data().unwrap();
        RealFs.sync_dir(&dir.0).unwrap();
        let data = RealFs.read(&path).unwrap();
        assert_eq!(data.len(), 4096);
        assert_eq!(&data[..3], b"abc");
        assert!(data[3..].iter().all(|&b| b == 0));

        // Zeros written over reserved space (more than one buffer's worth) leave the data
        // before them and the file's size as they were.
        f.preallocate(300 << 10).unwrap();
        f.write_at(200 << 10, b"xyz").unwrap();
        f.initialise(3, (200 << 10) - 3).unwrap();
        f.sync_data().unwrap();
        let data = RealFs.read(&path).unwrap();
        assert_eq!(data.len(), 300 << 10);
        assert_eq!(&data[..3], b"abc");
        assert_eq!(&data[200 << 10..(200 << 10) + 3], b"xyz");
        assert!(data[3..200 << 10].iter().all(|&b| b == 0));
    }
}
