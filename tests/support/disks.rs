//! A filesystem of its own under each server's data directory, which a test can freeze: an
//! ext4 image mounted through a loop device (so this needs root), frozen with `fsfreeze`, which
//! blocks every write to it in the kernel as a disk that stops answering does (the writer then
//! sits in uninterruptible sleep, and not even SIGKILL ends it until the thaw).
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
/// drop.
pub struct Disks(BTreeMap<u64, PathBuf>);

impl Disks {
    /// Mounts a new filesystem on `dir/data{id}` for each of `ids` (their images beside them).
    pub fn mount(dir: &Path, ids: impl IntoIterator<Item = u64>) -> Result<Disks> {
        let mut disks = Disks(BTreeMap::new());
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
}

impl Drop for Disks {
    fn drop(&mut self) {
        for at in self.0.values() {
            let _ = Command::new("fsfreeze").arg("-u").arg(at).output();
            let _ = Command::new("umount").arg("-l").arg(at).status();
        }
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    Ok(())
}
