//! A filesystem of its own under each server's data directory, which a test can freeze: an
//! ext4 image mounted through a loop device (so this needs root), frozen with `fsfreeze`, which
//! blocks every write to it in the kernel as a disk that stops answering does (the writer then
//! sits in uninterruptible sleep, and not even SIGKILL ends it until the thaw), or fill to
//! its last block.
// Each including test uses a part.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};

/// Each server's filesystem: a 64 MiB log segment and room for snapshots. Sparse: only what is
/// written takes room.
const DISK_MIB: u64 = 256;

/// An ext4 image per server id, mounted on `data{id}` of a directory; thawed and unmounted on
/// drop, and the directory removed with them. The ensemble whose directory it is removes it
/// too when it goes: whichever goes first, nothing is left (a directory with a filesystem still
/// mounted in it cannot be removed, and the order in which a test's values are dropped is the
/// test's).
pub struct Disks(BTreeMap<u64, PathBuf>, PathBuf);

impl Disks {
    /// Mounts a new filesystem on `dir/data{id}` for each of `ids` (their images beside them).
    pub fn mount(dir: &Path, ids: impl IntoIterator<Item = u64>) -> Result<Disks> {
        let mut disks = Disks(BTreeMap::new(), dir.to_path_buf());
        for id in ids {
            let (image, at) = (dir.join(format!("disk{id}.img")), dir.join(format!("data{id}")));
            std::fs::File::create(&image)?.set_len(DISK_MIB << 20)?;
            run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
            std::fs::create_dir_all(&at)?;
            run(Command::new("mount").args(["-o", "loop"]).arg(&image).arg(&at))?;
            disks.0.insert(id, at);
        }
        Ok(disks)
    }

    /// Whether server `id`'s data directory has a filesystem of its own.
    pub fn has(&self, id: u64) -> bool {
        self.0.contains_key(&id)
    }

    fn at(&self, id: u64) -> Result<&Path> {
        self.0.get(&id).map(PathBuf::as_path).with_context(|| format!("no disk for server {id}"))
    }

    /// Freezes server `id`'s filesystem: every write to it blocks until [`Disks::thaw`].
    pub fn freeze(&self, id: u64) -> Result<()> {
        run(Command::new("fsfreeze").arg("-f").arg(self.at(id)?))
    }

    /// Lets the writes to server `id`'s filesystem through again.
    pub fn thaw(&self, id: u64) -> Result<()> {
        run(Command::new("fsfreeze").arg("-u").arg(self.at(id)?))
    }

    /// Fills server `id`'s filesystem to its last block (root's reserve included, as the
    /// servers run as root) with a file beside its data; returns how many bytes it took.
    /// Whatever the server writes next that needs a new block fails with "no space left".
    pub fn fill(&self, id: u64) -> Result<u64> {
        use nix::errno::Errno;
        use nix::fcntl::{fallocate, FallocateFlags};
        use std::os::fd::AsRawFd;
        let path = self.at(id)?.join(FILLER);
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let mut len = file.metadata()?.len();
        let start = len;
        // Halving chunks down to one block: each ENOSPC leaves less room than the chunk.
        let mut chunk: u64 = 64 << 20;
        while chunk >= 4096 {
            match fallocate(file.as_raw_fd(), FallocateFlags::empty(), len as i64, chunk as i64) {
                Ok(()) => len += chunk,
                Err(Errno::ENOSPC) => chunk /= 2,
                Err(e) => return Err(e).with_context(|| format!("filling {}", path.display())),
            }
        }
        Ok(len - start)
    }

    /// Gives server `id`'s filesystem its room again (removes what [`Disks::fill`] wrote).
    pub fn unfill(&self, id: u64) -> Result<()> {
        let path = self.at(id)?.join(FILLER);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        }
    }
}

/// The file that fills a disk, at the top of the server's data directory (which holds its
/// `log/` and `snapshots/` and reads nothing else there).
const FILLER: &str = "filler";

impl Drop for Disks {
    fn drop(&mut self) {
        for at in self.0.values() {
            let _ = Command::new("fsfreeze").arg("-u").arg(at).output();
            let _ = Command::new("umount").arg("-l").arg(at).status();
        }
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    Ok(())
}
