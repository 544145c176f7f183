//! Scratch directories.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};

/// A new empty directory under the system temp dir, removed with everything in it on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    /// A new empty directory whose name starts `referee-{tag}-` and is unique across
    /// processes (pid, nanoseconds) and within one (a counter).
    pub fn new(tag: &str) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "referee-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(ScratchDir(dir))
    }

    /// The path of `name` inside the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `body` to `name` inside the directory as an executable script and returns its
    /// path (see [`ScratchDir::install`] for how it is written).
    pub fn script(&self, name: &str, body: &str) -> Result<PathBuf> {
        let source = self.path(&format!(".{name}.source"));
        std::fs::write(&source, body).with_context(|| format!("writing {}", source.display()))?;
        let path = self.install(&source, name)?;
        let _ = std::fs::remove_file(&source);
        Ok(path)
    }

    /// Copies `from` to `name` inside the directory, executable, and returns its path.
    ///
    /// The copy is written by a `cp` child, never by this process: a file this process holds
    /// open for writing is inherited by every child another thread forks meanwhile (until that
    /// child's exec closes it), and running the file while one holds it fails with "Text file
    /// busy". Tests spawn processes from many threads at once; this way no copy of a write
    /// descriptor for the new file ever exists in them.
    pub fn install(&self, from: &Path, name: &str) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(name);
        let status = std::process::Command::new("cp")
            .arg("--")
            .arg(from)
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .status()
            .with_context(|| format!("running cp to write {}", path.display()))?;
        anyhow::ensure!(status.success(), "cp {} {} exited with {status}", from.display(), path.display());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", path.display()))?;
        Ok(path)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
