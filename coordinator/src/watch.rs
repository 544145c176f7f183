//! Watch registrations of this server's connections, and which connections an event reaches.
//!
//! Watches live on connections, not in the replicated tree: every server keeps its own clients'
//! watches, fires them while applying the shared log, and a client that moves to another server
//! re-registers them with SetWatches. The rules are ZooKeeper's (`WatchManager`, `DataTree`):
//!
//! | event                 | one-shot data/exist | one-shot child | persistent | recursive (path or ancestor) |
//! |-----------------------|---------------------|----------------|------------|------------------------------|
//! | NodeCreated           | fires               |                | fires      | fires                        |
//! | NodeDataChanged       | fires               |                | fires      | fires                        |
//! | NodeDeleted           | fires               | fires          | fires      | fires                        |
//! | NodeChildrenChanged   |                     | fires          | fires      | never                        |
//!
//! A connection gets at most one notification per event, whatever number of its watches match.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::path;
use crate::proto::EventType;

/// A server-local connection id.
pub type ConnId = u64;

/// The kinds of watch a connection can hold on a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WatchKind {
    /// One-shot watch from getData or exists (exists on a missing node included).
    Data,
    /// One-shot watch from getChildren.
    Child,
    /// addWatch mode 0: every event on the path, not removed when fired.
    Persistent,
    /// addWatch mode 1: every event except child changes on the path and all below it.
    PersistentRecursive,
}

const KINDS: [WatchKind; 4] =
    [WatchKind::Data, WatchKind::Child, WatchKind::Persistent, WatchKind::PersistentRecursive];

/// The watcher type of checkWatches / removeWatches (`WatcherType`; 4 and 5 from 3.9 clients).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatcherType {
    /// 1
    Children,
    /// 2
    Data,
    /// 3: every kind.
    Any,
    /// 4
    Persistent,
    /// 5
    PersistentRecursive,
}

impl WatcherType {
    /// Decodes the wire value.
    pub fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            1 => WatcherType::Children,
            2 => WatcherType::Data,
            3 => WatcherType::Any,
            4 => WatcherType::Persistent,
            5 => WatcherType::PersistentRecursive,
            _ => return None,
        })
    }

    fn kinds(self) -> &'static [WatchKind] {
        match self {
            WatcherType::Children => &[WatchKind::Child],
            WatcherType::Data => &[WatchKind::Data],
            WatcherType::Any => &KINDS,
            WatcherType::Persistent => &[WatchKind::Persistent],
            WatcherType::PersistentRecursive => &[WatchKind::PersistentRecursive],
        }
    }
}

/// Registered watches, indexed both by path (to fire) and by connection (to drop).
#[derive(Debug, Default)]
pub struct WatchRegistry {
    by_path: HashMap<WatchKind, HashMap<String, HashSet<ConnId>>>,
    /// Ordered so the `wchc`/`wchp` commands can walk it a few connections at a time.
    by_conn: BTreeMap<ConnId, HashSet<(WatchKind, String)>>,
}

impl WatchRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a watch (idempotent).
    pub fn add(&mut self, conn: ConnId, kind: WatchKind, path: &str) {
        self.by_path.entry(kind).or_default().entry(path.to_string()).or_default().insert(conn);
        self.by_conn.entry(conn).or_default().insert((kind, path.to_string()));
    }

    /// Whether the connection already holds this watch (registering it again adds nothing).
    pub fn holds(&self, conn: ConnId, kind: WatchKind, path: &str) -> bool {
        self.by_conn.get(&conn).is_some_and(|s| s.contains(&(kind, path.to_string())))
    }

    /// Number of watches the connection holds.
    pub fn conn_watch_count(&self, conn: ConnId) -> usize {
        self.by_conn.get(&conn).map_or(0, HashSet::len)
    }

    fn take(&mut self, kind: WatchKind, path: &str, one_shot: bool, out: &mut Vec<ConnId>) {
        let Some(table) = self.by_path.get_mut(&kind) else { return };
        if one_shot {
            if let Some(conns) = table.remove(path) {
                for c in conns {
                    if let Some(set) = self.by_conn.get_mut(&c) {
                        set.remove(&(kind, path.to_string()));
                        if set.is_empty() {
                            self.by_conn.remove(&c);
                        }
                    }
                    out.push(c);
                }
            }
        } else if let Some(conns) = table.get(path) {
            out.extend(conns.iter().copied());
        }
    }

    /// The connections an event reaches, each once, removing the one-shot watches it fires.
    pub fn trigger(&mut self, path: &str, kind: EventType) -> Vec<ConnId> {
        let mut out = Vec::new();
        match kind {
            EventType::NodeCreated | EventType::NodeDataChanged => {
                self.take(WatchKind::Data, path, true, &mut out);
            }
            EventType::NodeDeleted => {
                self.take(WatchKind::Data, path, true, &mut out);
                self.take(WatchKind::Child, path, true, &mut out);
            }
            EventType::NodeChildrenChanged => {
                self.take(WatchKind::Child, path, true, &mut out);
            }
        }
        self.take(WatchKind::Persistent, path, false, &mut out);
        if kind != EventType::NodeChildrenChanged
            && self.by_path.get(&WatchKind::PersistentRecursive).is_some_and(|t| !t.is_empty())
        {
            let mut p = path;
            loop {
                self.take(WatchKind::PersistentRecursive, p, false, &mut out);
                if p == "/" {
                    break;
                }
                p = path::parent(p);
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether the connection holds a watch of this type on the path.
    pub fn contains(&self, conn: ConnId, path: &str, ty: WatcherType) -> bool {
        let Some(set) = self.by_conn.get(&conn) else { return false };
        ty.kinds().iter().any(|k| set.contains(&(*k, path.to_string())))
    }

    /// Removes the connection's watches of this type on the path; false if there were none.
    pub fn remove(&mut self, conn: ConnId, path: &str, ty: WatcherType) -> bool {
        let mut removed = false;
        for kind in ty.kinds() {
            let key = (*kind, path.to_string());
            if self.by_conn.get_mut(&conn).is_some_and(|s| s.remove(&key)) {
                removed = true;
                if self.by_conn.get(&conn).is_some_and(HashSet::is_empty) {
                    self.by_conn.remove(&conn);
                }
                if let Some(table) = self.by_path.get_mut(kind) {
                    if let Some(conns) = table.get_mut(path) {
                        conns.remove(&conn);
                        if conns.is_empty() {
                            table.remove(path);
                        }
                    }
                }
            }
        }
        removed
    }

    /// Drops every watch of a closed connection.
    pub fn remove_conn(&mut self, conn: ConnId) {
        let Some(set) = self.by_conn.remove(&conn) else { return };
        for (kind, path) in set {
            if let Some(table) = self.by_path.get_mut(&kind) {
                if let Some(conns) = table.get_mut(&path) {
                    conns.remove(&conn);
                    if conns.is_empty() {
                        table.remove(&path);
                    }
                }
            }
        }
    }

    /// Total number of registered watches.
    pub fn watch_count(&self) -> usize {
        self.by_conn.values().map(HashSet::len).sum()
    }

    /// Number of distinct watched paths.
    pub fn path_count(&self) -> usize {
        let mut paths: HashSet<&str> = HashSet::new();
        for table in self.by_path.values() {
            paths.extend(table.keys().map(String::as_str));
        }
        paths.len()
    }

    /// Number of connections holding at least one watch.
    pub fn conn_count(&self) -> usize {
        self.by_conn.values().filter(|s| !s.is_empty()).count()
    }

    /// Watched paths of up to `max` connections after `after`, in connection order, for the
    /// `wchc` and `wchp` commands, which walk the registry a few connections at a time so that
    /// no walk holds the server's lock for long.
    pub fn by_connection_after(&self, after: Option<ConnId>, max: usize) -> Vec<(ConnId, Vec<String>)> {
        let range = match after {
            None => self.by_conn.range(..),
            Some(a) => self.by_conn.range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
        };
        range
            .filter(|(_, s)| !s.is_empty())
            .take(max)
            .map(|(c, s)| {
                let mut paths: Vec<String> = s.iter().map(|(_, p)| p.clone()).collect();
                paths.sort();
                paths.dedup();
                (*c, paths)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shot_watches_fire_once() {
        let mut w = WatchRegistry::new();
        w.add(1, WatchKind::Data, "/a");
        w.add(2, WatchKind::Child, "/a");
        assert_eq!(w.trigger("/a", EventType::NodeDataChanged), vec![1]);
        assert_eq!(w.trigger("/a", EventType::NodeDataChanged), Vec::<ConnId>::new());
        assert_eq!(w.trigger("/a", EventType::NodeChildrenChanged), vec![2]);
        assert_eq!(w.watch_count(), 0);
    }

    #[test]
    fn delete_fires_data_and_child_watches_once_per_connection() {
        let mut w = WatchRegistry::new();
        w.add(1, WatchKind::Data, "/a");
        w.add(1, WatchKind::Child, "/a");
        w.add(2, WatchKind::Child, "/a");
        assert_eq!(w.trigger("/a", EventType::NodeDeleted), vec![1, 2]);
        assert_eq!(w.watch_count(), 0);
    }

    #[test]
    fn persistent_and_recursive() {
        let mut w = WatchRegistry::new();
        w.add(1, WatchKind::Persistent, "/a");
        w.add(2, WatchKind::PersistentRecursive, "/a");
        assert_eq!(w.trigger("/a", EventType::NodeDataChanged), vec![1, 2]);
        assert_eq!(w.trigger("/a/b/c", EventType::NodeCreated), vec![2]);
        // Recursive watches never see child-list changes; persistent ones do.
        assert_eq!(w.trigger("/a", EventType::NodeChildrenChanged), vec![1]);
        assert_eq!(w.trigger("/ab", EventType::NodeCreated), Vec::<ConnId>::new());
        assert_eq!(w.watch_count(), 2, "persistent watches stay");
        assert!(w.remove(2, "/a", WatcherType::PersistentRecursive));
        assert!(!w.remove(2, "/a", WatcherType::PersistentRecursive));
        w.remove_conn(1);
        assert_eq!(w.watch_count(), 0);
        assert_eq!(w.path_count(), 0);
    }

    #[test]
    fn check_and_remove_by_type() {
        let mut w = WatchRegistry::new();
        w.add(1, WatchKind::Data, "/a");
        assert!(w.contains(1, "/a", WatcherType::Data));
        assert!(w.contains(1, "/a", WatcherType::Any));
        assert!(!w.contains(1, "/a", WatcherType::Children));
        assert!(!w.remove(1, "/a", WatcherType::Children));
        assert!(w.remove(1, "/a", WatcherType::Any));
        assert!(w.trigger("/a", EventType::NodeDataChanged).is_empty());
    }
}
