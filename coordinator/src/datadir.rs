//! The data directory: whose it is, and where the log and the snapshots live in it.
//!
//! ```text
//!  data_dir/
//!    lock          locked while a server uses the directory; holds its process id
//!    identity      format version, cluster id, server id, incarnation (written once,
//!                  replaced atomically, after log/ and snapshots/ exist)
//!    peers         the incarnation each peer's data directory was first heard with
//!    log/          the Raft log (see [`crate::log`])
//!    snapshots/    snapshot files (see [`crate::snapshot`])
//! ```
//!
//! A data directory belongs to one server of one cluster. Starting a server on another
//! cluster's directory (a copied config, a wrong mount) would merge two histories and make
//! acknowledged writes of either vanish, so [`DataDir::open`] refuses it before anything is
//! read or written, with a message naming the file, what it holds and what was expected.
//!
//! A data directory is used by one process at a time. A second server started on a directory
//! in use (two configurations with one `data_dir`, a manual start beside a service manager's)
//! would append to the same log and overwrite the other's acknowledged writes, so
//! [`DataDir::open`] first locks `lock` and refuses a directory whose lock another process
//! holds, naming it. The kernel lets go of the lock when its process ends, killed or not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::log::FileSystem;

/// The data directory layout version this build writes and the newest it reads.
pub const DATA_DIR_VERSION: u32 = 1;

/// Name of the lock file in a data directory.
pub const LOCK_NAME: &str = "lock";

/// Name of the Raft log's directory in a data directory.
pub const LOG_NAME: &str = "log";
/// Name of the snapshots' directory in a data directory.
pub const SNAPSHOTS_NAME: &str = "snapshots";

/// Name of the identity file in a data directory.
pub const IDENTITY_NAME: &str = "identity";
/// The first line of an identity file: what the file is, for a human who opens it.
const IDENTITY_TITLE: &str = "referee coordinator data directory";

/// Who a data directory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Layout version of the directory.
    pub version: u32,
    /// The cluster it belongs to.
    pub cluster_id: u64,
    /// The server of that cluster it belongs to.
    pub server_id: u64,
    /// A random number drawn when the directory was made, never 0: a directory wiped and made
    /// again for the same server has another one, which tells its peers that this server
    /// forgot its votes and its log ([`KnownPeers`]). 0 in a directory made before it existed,
    /// and for good (the identity file is never rewritten).
    pub incarnation: u64,
}

impl Identity {
    /// The file's text: a title line, then `key: value` lines.
    pub fn encode(&self) -> String {
        let mut text = format!(
            "{IDENTITY_TITLE}\nformat_version: {}\ncluster_id: {}\nserver_id: {}\n",
            self.version, self.cluster_id, self.server_id
        );
        if self.incarnation != 0 {
            text.push_str(&format!("incarnation: {}\n", self.incarnation));
        }
        text
    }

    /// Reads the file's text, or says what is wrong with it.
    pub fn decode(text: &str) -> Result<Identity, String> {
        let mut lines = text.lines();
        if lines.next() != Some(IDENTITY_TITLE) {
            return Err(format!("the first line is not {IDENTITY_TITLE:?}"));
        }
        let (mut version, mut cluster_id, mut server_id, mut incarnation) = (None, None, None, 0);
        for line in lines.filter(|l| !l.trim().is_empty()) {
            let (key, value) = line.split_once(':').ok_or_else(|| format!("{line:?} is not `key: value`"))?;
            let value = value.trim();
            let bad = |what| format!("{key} is {value:?}, not {what}");
            match key.trim() {
                "format_version" => version = Some(value.parse::<u32>().map_err(|_| bad("a version number"))?),
                "cluster_id" => cluster_id = Some(value.parse::<u64>().map_err(|_| bad("a cluster id"))?),
                "server_id" => server_id = Some(value.parse::<u64>().map_err(|_| bad("a server id"))?),
                "incarnation" => incarnation = value.parse::<u64>().map_err(|_| bad("an incarnation number"))?,
                other => return Err(format!("unknown key {other:?}")),
            }
        }
        match (version, cluster_id, server_id) {
            (Some(version), Some(cluster_id), Some(server_id)) => {
                Ok(Identity { version, cluster_id, server_id, incarnation })
            }
            _ => Err("format_version, cluster_id and server_id are all required".into()),
        }
    }
}

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// A file operation failed.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// The operation.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The identity file is unreadable.
    #[error(
        "{} is not a readable identity file ({reason}); it names the cluster and server this \
         data directory belongs to. Restore it from a backup, or point data_dir at this server's \
         own directory",
        path.display()
    )]
    BadIdentity {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The directory belongs to another cluster or server.
    #[error(
        "{} says this data directory belongs to cluster {} server {}, but this server is \
         cluster {} server {}; refusing to mix two histories. Point data_dir at this server's \
         own directory (or, to start this server afresh, at an empty one)",
        path.display(), found.cluster_id, found.server_id, expected_cluster, expected_server
    )]
    Foreign {
        /// The identity file.
        path: PathBuf,
        /// What it holds.
        found: Identity,
        /// This server's cluster id.
        expected_cluster: u64,
        /// This server's id.
        expected_server: u64,
    },
    /// A newer build wrote the directory.
    #[error(
        "{} says the data directory is in format version {found}; this build reads up to \
         {supported}. Run the newer version that wrote it",
        path.display()
    )]
    NewerVersion {
        /// The identity file.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The newest this build reads.
        supported: u32,
    },
    /// The peers file is unreadable.
    #[error(
        "{} is not a readable peers file ({reason}); it remembers which data directory each peer \
         server was first heard with. Restore it from a backup, or remove it to learn the peers \
         again from their next handshakes",
        path.display()
    )]
    BadPeers {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Another process uses the directory.
    #[error(
        "{} is in use by another coordinator process{}: two servers on one data directory would \
         overwrite each other's log and lose acknowledged writes. Stop that process, or point \
         data_dir at this server's own directory",
        path.display(),
        holder.map_or(String::new(), |pid| format!(" (pid {pid}, from its lock file)"))
    )]
    InUse {
        /// The data directory.
        path: PathBuf,
        /// The process id the lock file names, if it names one.
        holder: Option<u32>,
    },
    /// An identity without the directory the log lives in: part of the data directory was
    /// deleted, and the server would come back under its old identity with nothing it had
    /// acknowledged nor the votes it had cast.
    #[error(
        "{} has an identity file but no {missing}: part of this data directory was deleted (or it was \
         copied without it). Started so, this server would come back under the same identity without its \
         log and the votes it cast; refusing to start",
        path.display()
    )]
    Incomplete {
        /// The data directory.
        path: PathBuf,
        /// What is missing.
        missing: &'static str,
    },
    /// Durable state without an identity: not a directory this server made.
    #[error(
        "{} holds {found} but no identity file; it was not made by this server. Point data_dir \
         at this server's own directory, or at an empty one",
        path.display()
    )]
    Unowned {
        /// The data directory.
        path: PathBuf,
        /// What was found in it.
        found: String,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DataDirError + 'a {
    move |source| DataDirError::Io { what, path: path.to_path_buf(), source }
}

/// An opened data directory whose identity has been checked, locked for this process while
/// any clone of it lives.
#[derive(Debug, Clone)]
pub struct DataDir {
    /// The directory.
    pub root: PathBuf,
    /// Whose it is.
    pub identity: Identity,
    /// The directory's lock ([`LOCK_NAME`]).
    pub lock: Arc<crate::log::FileLock>,
}

impl DataDir {
    /// Opens `root` for server `server_id`: checks the identity file against `cluster_id` (when
    /// given) and `server_id`, or, in an empty or new directory, writes one (with `cluster_id`,
    /// else `new_cluster_id()`) durably before anything else is written there.
    pub fn open(
        fs: &dyn FileSystem,
        root: &Path,
        cluster_id: Option<u64>,
        server_id: u64,
        new_cluster_id: impl FnOnce() -> u64,
    ) -> Result<DataDir, DataDirError> {
        fs.create_dir_all(root).map_err(io_err("creating", root))?;
        let lock_path = root.join(LOCK_NAME);
        let lock = match fs.lock(&lock_path) {
            Ok(lock) => Arc::new(lock),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let holder = fs.read(&lock_path).ok().and_then(|b| String::from_utf8(b).ok()?.trim().parse().ok());
                return Err(DataDirError::InUse { path: root.to_path_buf(), holder });
            }
            Err(e) => return Err(io_err("locking", &lock_path)(e)),
        };
        let names = fs.list(root).map_err(io_err("listing", root))?;
        let path = root.join(IDENTITY_NAME);
        if names.iter().any(|n| n == IDENTITY_NAME) {
            let identity = read_identity(fs, &path)?;
            if identity.version > DATA_DIR_VERSION {
                return Err(DataDirError::NewerVersion { path, found: identity.version, supported: DATA_DIR_VERSION });
            }
            if cluster_id.is_some_and(|c| c != identity.cluster_id) || identity.server_id != server_id {
                return Err(DataDirError::Foreign {
                    path,
                    found: identity,
                    expected_cluster: cluster_id.unwrap_or(identity.cluster_id),
                    expected_server: server_id,
                });
            }
            // The identity is written after `log/` exists (below): without it, the log and the
            // votes this server cast were deleted, not never made. Earlier releases wrote the
            // identity first: a directory holding nothing else (no `snapshots/`, no `peers`) is
            // one of theirs whose first start was cut short, and is completed.
            let log = root.join(LOG_NAME);
            match fs.list(&log) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if names.iter().any(|n| n == SNAPSHOTS_NAME || n == PEERS_NAME) {
                        return Err(DataDirError::Incomplete { path: root.to_path_buf(), missing: "log/" });
                    }
                    for sub in [LOG_NAME, SNAPSHOTS_NAME] {
                        let dir = root.join(sub);
                        fs.create_dir_all(&dir).map_err(io_err("creating", &dir))?;
                    }
                    fs.sync_dir(root).map_err(io_err("syncing directory", root))?;
                    tracing::info!(dir = %root.display(), "completed a data directory whose first start was cut short");
                }
                Err(e) => return Err(io_err("listing", &log)(e)),
            }
            // A process killed before it synced them leaves the identity (and the directory's
            // own entry) in the page cache only: durable before this server acts as the one it
            // names.
            fs.sync_dir(root).map_err(io_err("syncing directory", root))?;
            let parent = parent_of(root);
            fs.sync_dir(parent).map_err(io_err("syncing directory", parent))?;
            return Ok(DataDir { root: root.to_path_buf(), identity, lock });
        }
        // Empty directories are what a first start cut short before its identity leaves.
        for sub in [LOG_NAME, SNAPSHOTS_NAME] {
            let listed = fs.list(&root.join(sub));
            let present = listed.is_ok() || names.iter().any(|n| n == sub);
            if present && !listed.is_ok_and(|n| n.is_empty()) {
                return Err(DataDirError::Unowned { path: root.to_path_buf(), found: format!("{sub}/") });
            }
        }
        // The identity is the commit point of a new directory: written last, once the
        // directories it vouches for are durable, so that an identity without `log/` is one
        // whose log was deleted.
        for sub in [LOG_NAME, SNAPSHOTS_NAME] {
            let dir = root.join(sub);
            fs.create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        }
        fs.sync_dir(root).map_err(io_err("syncing directory", root))?;
        let identity = Identity {
            version: DATA_DIR_VERSION,
            cluster_id: cluster_id.unwrap_or_else(new_cluster_id),
            server_id,
            incarnation: random_cluster_id(),
        };
        write_atomically(fs, root, IDENTITY_NAME, identity.encode().as_bytes())
            .map_err(|(what, p, source)| DataDirError::Io { what, path: p, source })?;
        // The directory's own entry, made durable before anything acknowledged goes in it.
        let parent = parent_of(root);
        fs.sync_dir(parent).map_err(io_err("syncing directory", parent))?;
        tracing::info!(
            dir = %root.display(),
            cluster_id = identity.cluster_id,
            server_id,
            incarnation = identity.incarnation,
            "new data directory"
        );
        Ok(DataDir { root: root.to_path_buf(), identity, lock })
    }

    /// The Raft log's directory.
    pub fn log_dir(&self) -> PathBuf {
        self.root.join(LOG_NAME)
    }

    /// The snapshots' directory.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.root.join(SNAPSHOTS_NAME)
    }
}

/// The directory holding `root` (`.` for a relative name without one; `root` itself for `/`).
fn parent_of(root: &Path) -> &Path {
    match root.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new("."),
        Some(p) => p,
        None => root,
    }
}

/// Reads an identity file.
pub fn read_identity(fs: &dyn FileSystem, path: &Path) -> Result<Identity, DataDirError> {
    let bytes = fs.read(path).map_err(io_err("reading", path))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| DataDirError::BadIdentity { path: path.to_path_buf(), reason: "not UTF-8 text".into() })?;
    Identity::decode(&text).map_err(|reason| DataDirError::BadIdentity { path: path.to_path_buf(), reason })
}

/// Writes `name` in `dir` as a whole or not at all: a temporary file, synced, renamed over the
/// name, then the directory synced. On error: what failed, on which path.
pub fn write_atomically(
    fs: &dyn FileSystem,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> Result<(), (&'static str, PathBuf, std::io::Error)> {
    let tmp = dir.join(format!("{name}.tmp"));
    let path = dir.join(name);
    let mut f = fs.create(&tmp).map_err(|e| ("creating", tmp.clone(), e))?;
    f.write_at(0, bytes).map_err(|e| ("writing", tmp.clone(), e))?;
    f.sync_data().map_err(|e| ("syncing", tmp.clone(), e))?;
    drop(f);
    fs.rename(&tmp, &path).map_err(|e| ("renaming", tmp.clone(), e))?;
    fs.sync_dir(dir).map_err(|e| ("syncing directory", dir.to_path_buf(), e))
}

/// The name of the file of [`KnownPeers`] in a data directory.
pub const PEERS_NAME: &str = "peers";
/// The first line of the peers file.
const PEERS_TITLE: &str = "referee coordinator: the data directory incarnation of each peer, as first heard";

/// The incarnation of each peer's data directory ([`Identity::incarnation`]) as this server
/// first heard it, kept in the data directory's `peers` file.
///
/// A server whose data directory was wiped starts again with an empty log and no memory of the
/// votes it cast: let back in under its old id, it could vote twice in one term and help elect
/// a leader without the entries it once acknowledged, losing committed writes. Its new
/// directory has a new incarnation, so every peer that knew the old one refuses it; it may
/// rejoin only as a new member, under a new id.
#[derive(Debug)]
pub struct KnownPeers {
    /// Where the file lives; `None` keeps the memory in this process only.
    file: Option<(Arc<dyn FileSystem>, PathBuf)>,
    known: Mutex<BTreeMap<u64, u64>>,
}

/// A peer presented a data directory other than the one it was first heard with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplacedDataDir {
    /// The incarnation first heard.
    pub known: u64,
    /// The incarnation presented now.
    pub presented: u64,
}

impl KnownPeers {
    /// A memory that lasts as long as this process (for tests).
    pub fn in_memory() -> KnownPeers {
        KnownPeers { file: None, known: Mutex::default() }
    }

    /// Reads the peers file of the data directory `root` (none yet: nobody known).
    pub fn open(fs: Arc<dyn FileSystem>, root: &Path) -> Result<KnownPeers, DataDirError> {
        let path = root.join(PEERS_NAME);
        let names = fs.list(root).map_err(io_err("listing", root))?;
        let mut known = BTreeMap::new();
        if names.iter().any(|n| n == PEERS_NAME) {
            let bytes = fs.read(&path).map_err(io_err("reading", &path))?;
            let bad = |reason: String| DataDirError::BadPeers { path: path.clone(), reason };
            let text = String::from_utf8(bytes).map_err(|_| bad("not UTF-8 text".into()))?;
            let mut lines = text.lines();
            if lines.next() != Some(PEERS_TITLE) {
                return Err(bad(format!("the first line is not {PEERS_TITLE:?}")));
            }
            for line in lines.filter(|l| !l.trim().is_empty()) {
                let parsed = line
                    .split_once(':')
                    .and_then(|(id, inc)| Some((id.trim().parse::<u64>().ok()?, inc.trim().parse::<u64>().ok()?)));
                let (id, incarnation) =
                    parsed.ok_or_else(|| bad(format!("{line:?} is not `server id: incarnation`")))?;
                known.insert(id, incarnation);
            }
        }
        Ok(KnownPeers { file: Some((fs, root.to_path_buf())), known: Mutex::new(known) })
    }

    /// Checks that server `id` presents the data directory it was first heard with; the first
    /// time, remembers it (durably, before answering). An incarnation of 0 (a directory made
    /// before incarnations existed) is remembered as 0: such a directory never gains one, so a
    /// later non-zero incarnation for that id is a new directory (wiped and made again), and
    /// is refused as any other change is.
    pub fn check(&self, id: u64, incarnation: u64) -> Result<(), ReplacedDataDir> {
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        match known.get(&id) {
            Some(&k) if k == incarnation => Ok(()),
            Some(&k) => Err(ReplacedDataDir { known: k, presented: incarnation }),
            None => {
                known.insert(id, incarnation);
                if let Some((fs, root)) = &self.file {
                    let mut text = format!("{PEERS_TITLE}\n");
                    for (id, inc) in known.iter() {
                        text.push_str(&format!("{id}: {inc}\n"));
                    }
                    // A memory that cannot be kept still protects this process's lifetime;
                    // the next start learns the peer again from its first handshake.
                    if let Err((what, path, e)) = write_atomically(fs.as_ref(), root, PEERS_NAME, text.as_bytes()) {
                        tracing::warn!(
                            "{what} {}: {e}; server {id}'s data directory is remembered until restart only",
                            path.display()
                        );
                    }
                }
                Ok(())
            }
        }
    }
}

/// A fresh cluster id: random, never 0 (0 reads as "unset" to a human).
pub fn random_cluster_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::FaultFs;

    fn open(fs: &FaultFs, cluster: Option<u64>, server: u64) -> Result<DataDir, DataDirError> {
        DataDir::open(fs, Path::new("/data"), cluster, server, || 77)
    }

    #[test]
    fn golden_identity_text() {
        let id = Identity { version: 1, cluster_id: 42, server_id: 3, incarnation: 9 };
        assert_eq!(
            id.encode(),
            "referee coordinator data directory\nformat_version: 1\ncluster_id: 42\nserver_id: 3\nincarnation: 9\n"
        );
        assert_eq!(Identity::decode(&id.encode()), Ok(id));
        // A directory made before incarnations existed reads as incarnation 0, and stays so.
        let old = "referee coordinator data directory\nformat_version: 1\ncluster_id: 42\nserver_id: 3\n";
        assert_eq!(Identity::decode(old), Ok(Identity { incarnation: 0, ..id }));
        assert_eq!(Identity { incarnation: 0, ..id }.encode(), old);
        assert!(Identity::decode("something else\n").is_err());
        assert!(Identity::decode("referee coordinator data directory\ncluster_id: 1\n").is_err());
    }

    #[test]
    fn first_start_writes_the_identity_durably_and_later_starts_keep_it() {
        let fs = FaultFs::new();
        let d = open(&fs, None, 1).unwrap();
        assert_eq!(
            d.identity,
            Identity { version: 1, cluster_id: 77, server_id: 1, incarnation: d.identity.incarnation }
        );
        assert_ne!(d.identity.incarnation, 0);
        fs.crash();
        let again = open(&fs, None, 1).unwrap();
        assert_eq!(again.identity.cluster_id, 77, "the generated id survived a power loss");
        assert_eq!(again.identity.incarnation, d.identity.incarnation, "so did the incarnation");
        // The same server's directory made afresh (wiped) has another incarnation.
        let wiped = FaultFs::new();
        assert_ne!(open(&wiped, Some(77), 1).unwrap().identity.incarnation, d.identity.incarnation);
        drop(again);
        assert_eq!(open(&fs, Some(77), 1).unwrap().identity.cluster_id, 77);
    }

    #[test]
    fn a_directory_in_use_is_refused_naming_the_process_until_it_lets_go() {
        let fs = FaultFs::new();
        let first = open(&fs, None, 1).unwrap();
        let e = open(&fs, None, 1).unwrap_err();
        assert!(
            matches!(&e, DataDirError::InUse { path, holder: Some(pid) } if path == Path::new("/data") && *pid == std::process::id()),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains("/data is in use") && msg.contains(&format!("pid {}", std::process::id())), "{msg}");
        // A clone is the same holder; the lock goes with the last of them.
        let clone = first.clone();
        drop(first);
        assert!(matches!(open(&fs, None, 1), Err(DataDirError::InUse { .. })));
        drop(clone);
        let second = open(&fs, None, 1).unwrap();
        // A process that dies lets go of its lock.
        fs.crash();
        open(&fs, None, 1).unwrap();
        drop(second);
    }

    #[test]
    fn the_real_lock_is_refused_to_a_second_holder_and_released_on_drop() {
        let scratch = referee_testkit::ScratchDir::new("datadir-lock").unwrap();
        let root = scratch.path("data");
        let first = DataDir::open(&crate::log::RealFs, &root, None, 1, || 5).unwrap();
        let e = DataDir::open(&crate::log::RealFs, &root, None, 1, || 5).unwrap_err();
        assert!(matches!(e, DataDirError::InUse { holder: Some(pid), .. } if pid == std::process::id()), "{e:?}");
        drop(first);
        DataDir::open(&crate::log::RealFs, &root, None, 1, || 5).unwrap();
    }

    /// The identity is written last, once the log's and the snapshots' directories exist: a
    /// directory with an identity and no `log/` lost it afterwards, and would bring the server
    /// back under its old identity with no log and no vote, so it is refused. A first start cut
    /// short before its identity was written left only empty directories, and starts afresh.
    #[test]
    fn an_identity_without_its_log_directory_is_refused() {
        let scratch = referee_testkit::ScratchDir::new("datadir-partial").unwrap();
        let root = scratch.path("data");
        let open = || DataDir::open(&crate::log::RealFs, &root, Some(5), 1, || 5);
        drop(open().unwrap());
        assert!(root.join("log").is_dir() && root.join("snapshots").is_dir(), "made with the identity");
        std::fs::remove_dir_all(root.join("log")).unwrap();
        let e = open().unwrap_err();
        assert!(matches!(e, DataDirError::Incomplete { missing: "log/", .. }), "{e:?}");
        let e = e.to_string();
        assert!(e.contains("identity file but no log/") && e.contains(&root.display().to_string()), "{e}");
        // An identity alone: an earlier release's first start cut short (it wrote the
        // identity first). Completed, not refused.
        std::fs::remove_dir_all(root.join("snapshots")).unwrap();
        let d = open().unwrap();
        assert!(root.join("log").is_dir() && root.join("snapshots").is_dir(), "completed");
        drop(d);

        let fresh = scratch.path("cut-short");
        std::fs::create_dir_all(fresh.join("log")).unwrap();
        std::fs::create_dir_all(fresh.join("snapshots")).unwrap();
        let d = DataDir::open(&crate::log::RealFs, &fresh, Some(5), 1, || 5).unwrap();
        assert_eq!(d.identity.cluster_id, 5);
        drop(d);
        let unowned = scratch.path("unowned");
        std::fs::create_dir_all(unowned.join("log")).unwrap();
        std::fs::write(unowned.join("log").join("raft-meta"), b"x").unwrap();
        let e = DataDir::open(&crate::log::RealFs, &unowned, Some(5), 1, || 5).unwrap_err().to_string();
        assert!(e.contains("holds log/ but no identity file"), "{e}");
    }

    #[test]
    fn another_cluster_or_server_or_a_newer_version_is_refused_naming_the_file() {
        let fs = FaultFs::new();
        open(&fs, Some(5), 1).unwrap();
        let e = open(&fs, Some(6), 1).unwrap_err().to_string();
        assert!(e.contains("/data/identity") && e.contains("cluster 5") && e.contains("cluster 6"), "{e}");
        let e = open(&fs, Some(5), 2).unwrap_err().to_string();
        assert!(e.contains("server 1") && e.contains("server 2"), "{e}");
        let newer = Identity { version: DATA_DIR_VERSION + 1, cluster_id: 5, server_id: 1, incarnation: 3 };
        fs.damage(Path::new("/data/identity"), |b| *b = newer.encode().into_bytes()).unwrap();
        let e = open(&fs, Some(5), 1).unwrap_err().to_string();
        assert!(e.contains("format version 2") && e.contains("newer"), "{e}");
    }

    /// An identity renamed into place by a process killed before it synced the directory is
    /// there only in the page cache: the next start makes it durable before it acts as the
    /// server it names (votes, acknowledges entries).
    #[test]
    fn an_identity_a_killed_process_left_unsynced_is_made_durable_at_open() {
        let fs = FaultFs::new();
        let root = Path::new("/data");
        for sub in ["", LOG_NAME, SNAPSHOTS_NAME] {
            fs.create_dir_all(&root.join(sub)).unwrap();
        }
        fs.sync_dir(root).unwrap();
        fs.sync_dir(Path::new("/")).unwrap();
        let id = Identity { version: 1, cluster_id: 77, server_id: 1, incarnation: 1234 };
        let tmp = root.join(format!("{IDENTITY_NAME}.tmp"));
        let mut f = fs.create(&tmp).unwrap();
        f.write_at(0, id.encode().as_bytes()).unwrap();
        f.sync_data().unwrap();
        fs.rename(&tmp, &root.join(IDENTITY_NAME)).unwrap();
        fs.kill();
        assert_eq!(open(&fs, Some(77), 1).unwrap().identity, id);
        fs.crash();
        assert_eq!(open(&fs, Some(77), 1).unwrap().identity, id, "the identity acted on is the one on the disk");
    }

    /// A new data directory's own entry is made durable in its parent, or a crash soon after
    /// start-up could take the whole directory, with acknowledged writes in it.
    #[test]
    fn a_new_data_directory_is_synced_into_its_parent() {
        let fs = FaultFs::new();
        open(&fs, Some(5), 1).unwrap();
        assert!(fs.synced_dirs().contains(&PathBuf::from("/")), "{:?}", fs.synced_dirs());
    }

    #[test]
    fn a_log_without_an_identity_is_refused() {
        let fs = FaultFs::new();
        fs.create_dir_all(Path::new("/data")).unwrap();
        fs.create(Path::new("/data/log")).unwrap();
        let e = open(&fs, None, 1).unwrap_err().to_string();
        assert!(e.contains("no identity file"), "{e}");
    }

    #[test]
    fn a_peer_is_known_by_its_first_data_directory_across_restarts_and_power_loss() {
        let fs: Arc<FaultFs> = Arc::new(FaultFs::new());
        let root = Path::new("/data");
        open(&fs, Some(77), 1).unwrap();
        let known = KnownPeers::open(fs.clone(), root).unwrap();
        assert_eq!(known.check(2, 500), Ok(()), "first heard: learned");
        assert_eq!(known.check(3, 600), Ok(()));
        assert_eq!(known.check(2, 500), Ok(()), "the same directory again");
        assert_eq!(known.check(2, 501), Err(ReplacedDataDir { known: 500, presented: 501 }));
        // Learned durably: after a power loss and a restart the wiped server is still refused.
        fs.crash();
        let again = KnownPeers::open(fs.clone(), root).unwrap();
        assert_eq!(again.check(2, 501), Err(ReplacedDataDir { known: 500, presented: 501 }));
        assert_eq!(again.check(3, 600), Ok(()));
        // A damaged file stops the start with the file named, rather than forgetting.
        let mut f = fs.create(&root.join(PEERS_NAME)).unwrap();
        f.write_at(0, b"referee coordinator: something else\n").unwrap();
        drop(f);
        let e = KnownPeers::open(fs.clone(), root).unwrap_err().to_string();
        assert!(e.contains("/data/peers") && e.contains("not a readable peers file"), "{e}");
    }

    /// A directory made before incarnations existed presents 0, and never gains one: a peer
    /// first heard with 0 that presents another incarnation has had its directory replaced
    /// (a wiped server's new directory draws one), and is refused like any other.
    #[test]
    fn a_peer_first_heard_without_an_incarnation_is_known_as_such() {
        let fs: Arc<FaultFs> = Arc::new(FaultFs::new());
        let root = Path::new("/data");
        open(&fs, Some(77), 1).unwrap();
        let known = KnownPeers::open(fs.clone(), root).unwrap();
        assert_eq!(known.check(3, 0), Ok(()), "first heard: learned as 0");
        assert_eq!(known.check(3, 0), Ok(()), "the same directory again");
        assert_eq!(known.check(3, 812), Err(ReplacedDataDir { known: 0, presented: 812 }));
        // Remembered durably, as any other incarnation.
        fs.crash();
        let again = KnownPeers::open(fs.clone(), root).unwrap();
        assert_eq!(again.check(3, 812), Err(ReplacedDataDir { known: 0, presented: 812 }));
        assert_eq!(again.check(3, 0), Ok(()));
        // And a peer known with an incarnation that comes back with none presents another
        // directory too (one restored from before incarnations existed).
        assert_eq!(again.check(4, 500), Ok(()));
        assert_eq!(again.check(4, 0), Err(ReplacedDataDir { known: 500, presented: 0 }));
    }
}
