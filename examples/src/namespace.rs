//! The NameNode-style namespace: a tree of directories and files with metadata.
//!
//! Pure code: no I/O, no clock. It changes only by [`Namespace::apply`] of an [`FsOp`] taken
//! from the journal, in journal order, so every replica that applies the same journal holds the
//! same tree. "Time" is the journal sequence number of the edit (HDFS's transaction id): it
//! stamps creation and modification.
//!
//! The active master calls [`Namespace::check`] **before** journaling an operation, so that an
//! edit that cannot apply is refused to the client instead of written. `apply` checks again
//! (a journal written by someone else is not trusted) and changes nothing when it fails, which
//! keeps replicas identical even then.
//!
//! Paths are absolute, `/`-separated, without empty, `.` or `..` components; a trailing `/` is
//! ignored. The root `/` always exists and is a directory.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

/// Longest path accepted, in bytes.
pub const MAX_PATH_LEN: usize = 4096;

/// One namespace mutation, as journaled (`op` is the tag, fields beside it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum FsOp {
    /// Create a directory and its missing ancestors (HDFS `mkdirs`); an existing directory is
    /// left as it is.
    Mkdir {
        /// The directory.
        path: String,
    },
    /// Create a file holding `data`; its parent must be an existing directory and the path
    /// must be free (no overwrite).
    Create {
        /// The file.
        path: String,
        /// Its content.
        data: String,
    },
    /// Delete a file or a directory; a non-empty directory only with `recursive`.
    Delete {
        /// What to delete (never `/`).
        path: String,
        /// Whether a non-empty directory may be deleted with everything under it.
        #[serde(default)]
        recursive: bool,
    },
}

impl FsOp {
    /// The path the operation names.
    pub fn path(&self) -> &str {
        match self {
            FsOp::Mkdir { path } | FsOp::Create { path, .. } | FsOp::Delete { path, .. } => path,
        }
    }
}

/// Why an operation or a lookup was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    /// The path is not a well-formed absolute path.
    #[error("invalid path `{path}`: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Nothing exists at the path.
    #[error("no such file or directory: {path}")]
    NotFound {
        /// The missing path.
        path: String,
    },
    /// Something already exists where a file was to be created.
    #[error("already exists: {path}")]
    AlreadyExists {
        /// The existing path.
        path: String,
    },
    /// A directory was needed, a file was found.
    #[error("not a directory: {path}")]
    NotADirectory {
        /// The file standing where a directory was needed.
        path: String,
    },
    /// A non-recursive delete of a directory that has children.
    #[error("directory not empty: {path} (delete it with recursive)")]
    NotEmpty {
        /// The directory.
        path: String,
    },
    /// The root cannot be deleted.
    #[error("the root directory cannot be deleted")]
    DeleteRoot,
}

/// Whether an inode is a file or a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    /// A regular file with data.
    File,
    /// A directory.
    Directory,
}

/// Metadata of one path, as answered by `stat` and `list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStatus {
    /// The normalized absolute path.
    pub path: String,
    /// File or directory.
    pub kind: FileKind,
    /// Bytes of data (0 for a directory).
    pub length: u64,
    /// Number of direct children (0 for a file).
    pub children: u64,
    /// Journal sequence number of the edit that created it (0 for the root).
    pub created_seq: u64,
    /// Journal sequence number of its last change; for a directory, also of the last
    /// creation or deletion of a direct child.
    pub modified_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Content {
    File(String),
    Directory,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Inode {
    content: Content,
    created_seq: u64,
    modified_seq: u64,
}

/// The tree. Keys are normalized paths; a directory's children are the keys one component
/// below it, so listing and recursive deletion are range scans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    inodes: BTreeMap<String, Inode>,
}

impl Default for Namespace {
    fn default() -> Self {
        Self::new()
    }
}

/// Normalizes `path`: absolute, no empty/`.`/`..` components, trailing `/` dropped.
pub fn normalize(path: &str) -> Result<String, FsError> {
    let invalid = |reason| FsError::InvalidPath { path: path.to_string(), reason };
    if path.len() > MAX_PATH_LEN {
        return Err(invalid("too long"));
    }
    if !path.starts_with('/') {
        return Err(invalid("must be absolute (start with /)"));
    }
    if path.contains('\0') {
        return Err(invalid("contains a NUL byte"));
    }
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok("/".into());
    }
    for component in trimmed[1..].split('/') {
        match component {
            "" => return Err(invalid("empty component (//)")),
            "." | ".." => return Err(invalid("`.` and `..` are not allowed")),
            _ => {}
        }
    }
    Ok(trimmed.to_string())
}

/// The parent of a normalized path other than `/`.
fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &path[..i],
    }
}

/// The prefix every descendant of the normalized directory `dir` starts with.
fn child_prefix(dir: &str) -> String {
    if dir == "/" {
        "/".into()
    } else {
        format!("{dir}/")
    }
}

impl Namespace {
    /// A namespace holding only the root directory.
    pub fn new() -> Self {
        let root = Inode { content: Content::Directory, created_seq: 0, modified_seq: 0 };
        Namespace { inodes: BTreeMap::from([("/".to_string(), root)]) }
    }

    /// Every descendant of the normalized directory `dir`, in path order.
    fn descendants<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a String, &'a Inode)> + 'a {
        // Start at the prefix itself, not at `dir`: a sibling such as `/d-x` sorts between
        // `/d` and `/d/`.
        let prefix = child_prefix(dir);
        let end = prefix.clone();
        self.inodes
            .range::<String, _>((Bound::Included(prefix.clone()), Bound::Unbounded))
            .take_while(move |(path, _)| path.starts_with(&end))
            .filter(move |(path, _)| path.len() > prefix.len())
    }

    /// The direct children of the normalized directory `dir`.
    fn children<'a>(&'a self, dir: &str) -> impl Iterator<Item = (&'a String, &'a Inode)> + 'a {
        let depth = child_prefix(dir).len();
        self.descendants(dir).filter(move |(path, _)| !path[depth..].contains('/'))
    }

    fn status(&self, path: &str, inode: &Inode) -> FileStatus {
        let (kind, length, children) = match &inode.content {
            Content::File(data) => (FileKind::File, data.len() as u64, 0),
            Content::Directory => (FileKind::Directory, 0, self.children(path).count() as u64),
        };
        FileStatus {
            path: path.to_string(),
            kind,
            length,
            children,
            created_seq: inode.created_seq,
            modified_seq: inode.modified_seq,
        }
    }

    fn lookup(&self, path: &str) -> Result<(String, &Inode), FsError> {
        let path = normalize(path)?;
        match self.inodes.get(&path) {
            Some(inode) => Ok((path, inode)),
            None => Err(FsError::NotFound { path }),
        }
    }

    /// Metadata of `path`.
    pub fn stat(&self, path: &str) -> Result<FileStatus, FsError> {
        let (path, inode) = self.lookup(path)?;
        Ok(self.status(&path, inode))
    }

    /// The children of a directory, in name order; for a file, the file itself (as HDFS's
    /// `listStatus` does).
    pub fn list(&self, path: &str) -> Result<Vec<FileStatus>, FsError> {
        let (path, inode) = self.lookup(path)?;
        match inode.content {
            Content::File(_) => Ok(vec![self.status(&path, inode)]),
            Content::Directory => Ok(self.children(&path).map(|(p, i)| self.status(p, i)).collect()),
        }
    }

    /// The data of a file.
    pub fn read(&self, path: &str) -> Result<&str, FsError> {
        let (path, inode) = self.lookup(path)?;
        match &inode.content {
            Content::File(data) => Ok(data),
            Content::Directory => Err(FsError::InvalidPath { path, reason: "is a directory" }),
        }
    }

    /// Number of paths, the root included.
    pub fn len(&self) -> usize {
        self.inodes.len()
    }

    /// Whether only the root exists.
    pub fn is_empty(&self) -> bool {
        self.inodes.len() == 1
    }

    /// Whether `op` would apply now. Changes nothing.
    pub fn check(&self, op: &FsOp) -> Result<(), FsError> {
        self.plan(op).map(|_| ())
    }

    /// Applies `op` as the edit journaled at `seq`. On error nothing changed.
    pub fn apply(&mut self, op: &FsOp, seq: u64) -> Result<(), FsError> {
        match self.plan(op)? {
            Plan::Mkdir { missing } => {
                for path in missing {
                    self.touch_parent(&path, seq);
                    self.inodes
                        .insert(path, Inode { content: Content::Directory, created_seq: seq, modified_seq: seq });
                }
            }
            Plan::Create { path, data } => {
                self.touch_parent(&path, seq);
                self.inodes.insert(path, Inode { content: Content::File(data), created_seq: seq, modified_seq: seq });
            }
            Plan::Delete { path } => {
                let doomed: Vec<String> = self.descendants(&path).map(|(p, _)| p.clone()).collect();
                for p in doomed {
                    self.inodes.remove(&p);
                }
                self.inodes.remove(&path);
                self.touch_parent(&path, seq);
            }
        }
        Ok(())
    }

    fn touch_parent(&mut self, path: &str, seq: u64) {
        if let Some(dir) = self.inodes.get_mut(parent(path)) {
            dir.modified_seq = seq;
        }
    }

    /// Decides what `op` changes, without changing it.
    fn plan(&self, op: &FsOp) -> Result<Plan, FsError> {
        match op {
            FsOp::Mkdir { path } => {
                let path = normalize(path)?;
                // Walk down from the root: every existing component must be a directory.
                let mut missing = Vec::new();
                let mut at = String::new();
                for component in path.split('/').skip(1).filter(|c| !c.is_empty()) {
                    at.push('/');
                    at.push_str(component);
                    match self.inodes.get(&at).map(|i| &i.content) {
                        Some(Content::Directory) => {}
                        Some(Content::File(_)) => return Err(FsError::NotADirectory { path: at }),
                        None => missing.push(at.clone()),
                    }
                }
                Ok(Plan::Mkdir { missing })
            }
            FsOp::Create { path, data } => {
                let path = normalize(path)?;
                if self.inodes.contains_key(&path) {
                    return Err(FsError::AlreadyExists { path });
                }
                let dir = parent(&path);
                match self.inodes.get(dir).map(|i| &i.content) {
                    Some(Content::Directory) => Ok(Plan::Create { path, data: data.clone() }),
                    Some(Content::File(_)) => Err(FsError::NotADirectory { path: dir.to_string() }),
                    None => Err(FsError::NotFound { path: dir.to_string() }),
                }
            }
            FsOp::Delete { path, recursive } => {
                let path = normalize(path)?;
                if path == "/" {
                    return Err(FsError::DeleteRoot);
                }
                let inode = self.inodes.get(&path).ok_or_else(|| FsError::NotFound { path: path.clone() })?;
                if inode.content == Content::Directory && !recursive && self.children(&path).next().is_some() {
                    return Err(FsError::NotEmpty { path });
                }
                Ok(Plan::Delete { path })
            }
        }
    }
}

/// What an operation will change, decided before changing anything.
enum Plan {
    Mkdir { missing: Vec<String> },
    Create { path: String, data: String },
    Delete { path: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mkdir(p: &str) -> FsOp {
        FsOp::Mkdir { path: p.into() }
    }
    fn create(p: &str, d: &str) -> FsOp {
        FsOp::Create { path: p.into(), data: d.into() }
    }
    fn delete(p: &str, recursive: bool) -> FsOp {
        FsOp::Delete { path: p.into(), recursive }
    }
    fn names(ns: &Namespace, dir: &str) -> Vec<String> {
        ns.list(dir).unwrap().into_iter().map(|s| s.path).collect()
    }

    #[test]
    fn paths_are_normalized_or_refused() {
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("//").unwrap(), "/");
        assert_eq!(normalize("/a/b/").unwrap(), "/a/b");
        for bad in ["", "a", "/a//b", "/a/./b", "/a/../b", "/a\0"] {
            assert!(matches!(normalize(bad), Err(FsError::InvalidPath { .. })), "{bad:?}");
        }
    }

    #[test]
    fn operations_apply_in_order_with_exact_errors() {
        let mut ns = Namespace::new();
        let table: Vec<(FsOp, Result<(), FsError>)> = vec![
            (mkdir("/a/b"), Ok(())),
            (mkdir("/a/b"), Ok(())),
            (create("/a/b/f", "hello"), Ok(())),
            (create("/a/b/f", "again"), Err(FsError::AlreadyExists { path: "/a/b/f".into() })),
            (create("/x/f", "d"), Err(FsError::NotFound { path: "/x".into() })),
            (create("/a/b/f/g", "d"), Err(FsError::NotADirectory { path: "/a/b/f".into() })),
            (mkdir("/a/b/f/g"), Err(FsError::NotADirectory { path: "/a/b/f".into() })),
            (delete("/a", false), Err(FsError::NotEmpty { path: "/a".into() })),
            (delete("/", true), Err(FsError::DeleteRoot)),
            (delete("/nope", false), Err(FsError::NotFound { path: "/nope".into() })),
            (delete("/a/b/f", false), Ok(())),
            (create("/a/b/f", "new"), Ok(())),
            (delete("/a", true), Ok(())),
        ];
        for (seq, (op, want)) in table.into_iter().enumerate() {
            let before = ns.clone();
            assert_eq!(ns.check(&op), want, "check {op:?}");
            assert_eq!(ns.apply(&op, seq as u64 + 1), want, "apply {op:?}");
            if want.is_err() {
                assert_eq!(ns, before, "a failed {op:?} changed nothing");
            }
        }
        assert!(ns.is_empty());
        assert_eq!(ns.stat("/").unwrap().modified_seq, 13);
    }

    #[test]
    fn listing_and_stat_report_metadata() {
        let mut ns = Namespace::new();
        ns.apply(&mkdir("/d/sub"), 5).unwrap();
        ns.apply(&create("/d/f1", "abc"), 6).unwrap();
        ns.apply(&create("/d/sub/deep", "x"), 7).unwrap();
        ns.apply(&create("/dz", "sibling with a common prefix"), 8).unwrap();
        ns.apply(&create("/d-x", "sorts between /d and /d/"), 9).unwrap();
        assert_eq!(names(&ns, "/"), ["/d", "/d-x", "/dz"]);
        assert_eq!(names(&ns, "/d"), ["/d/f1", "/d/sub"]);
        assert_eq!(names(&ns, "/d/f1"), ["/d/f1"]);
        let d = ns.stat("/d/").unwrap();
        assert_eq!(
            d,
            FileStatus {
                path: "/d".into(),
                kind: FileKind::Directory,
                length: 0,
                children: 2,
                created_seq: 5,
                modified_seq: 6
            }
        );
        let f = ns.stat("/d/f1").unwrap();
        assert_eq!((f.kind, f.length, f.created_seq), (FileKind::File, 3, 6));
        assert_eq!(ns.read("/d/f1").unwrap(), "abc");
        assert_eq!(ns.len(), 7);
    }

    #[test]
    fn wire_format_is_pinned() {
        let op = delete("/a", true);
        assert_eq!(serde_json::to_string(&op).unwrap(), r#"{"op":"delete","path":"/a","recursive":true}"#);
        let back: FsOp = serde_json::from_str(r#"{"op":"delete","path":"/a"}"#).unwrap();
        assert_eq!(back, delete("/a", false));
        assert_eq!(serde_json::to_string(&create("/f", "d")).unwrap(), r#"{"op":"create","path":"/f","data":"d"}"#);
    }
}
