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
///
/// The figures `wchs` and `mntr` report are kept as watches come and go, so that they are read
/// under the server's lock in O(1) rather than by a walk of every watch.
#[derive(Debug, Default)]
pub struct WatchRegistry {
    by_path: HashMap<WatchKind, HashMap<String, HashSet<ConnId>>>,
    /// Ordered so the `wchc`/`wchp` commands can walk it a few connections at a time. A
    /// connection is here only while it holds a watch (no set is left empty).
    by_conn: BTreeMap<ConnId, HashSet<(WatchKind, String)>>,
    /// Every watched path, with the number of kinds of watch on it (the `by_path` tables that
    /// hold it): the distinct paths are its keys.
    paths: HashMap<String, usize>,
    /// Watches registered: the sum of the `by_conn` sets' sizes.
    watches: usize,
}

impl WatchRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a watch (idempotent).
    pub fn add(&mut self, conn: ConnId, kind: WatchKind, path: &str) {
        let table = self.by_path.entry(kind).or_default();
        if !table.contains_key(path) {
            *self.paths.entry(path.to_string()).or_default() += 1;
        }
        table.entry(path.to_string()).or_default().insert(conn);
        if self.by_conn.entry(conn).or_default().insert((kind, path.to_string())) {
            self.watches += 1;
        }
    }

    /// Counts a path off one of the `by_path` tables, which no longer holds it.
    fn forget_path(paths: &mut HashMap<String, usize>, path: &str) {
        if let Some(kinds) = paths.get_mut(path) {
            *kinds -= 1;
            if *kinds == 0 {
                paths.remove(path);
            }
        }
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
                Self::forget_path(&mut self.paths, path);
                for c in conns {
                    if let Some(set) = self.by_conn.get_mut(&c) {
                        if set.remove(&(kind, path.to_string())) {
                            self.watches -= 1;
                        }
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
                self.watches -= 1;
                if self.by_conn.get(&conn).is_some_and(HashSet::is_empty) {
                    self.by_conn.remove(&conn);
                }
                if let Some(table) = self.by_path.get_mut(kind) {
                    if let Some(conns) = table.get_mut(path) {
                        conns.remove(&conn);
                        if conns.is_empty() {
                            table.remove(path);
                            Self::forget_path(&mut self.paths, path);
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
        self.watches -= set.len();
        for (kind, path) in set {
            if let Some(table) = self.by_path.get_mut(&kind) {
                if let Some(conns) = table.get_mut(&path) {
                    conns.remove(&conn);
                    if conns.is_empty() {
                        table.remove(&path);
                        Self::forget_path(&mut self.paths, &path);
                    }
                }
            }
        }
    }

    /// Total number of registered watches.
    pub fn watch_count(&self) -> usize {
        self.watches
    }

    /// Number of distinct watched paths.
    pub fn path_count(&self) -> usize {
        self.paths.len()
    }

    /// Number of connections holding at least one watch.
    pub fn conn_count(&self) -> usize {
        self.by_conn.len()
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

    /// The figures kept as watches come and go match a count of the watches themselves, through
    /// every way a watch comes or goes.
    #[test]
    fn kept_figures_match_a_recount() {
        fn check(w: &WatchRegistry, step: usize) {
            let watches: usize = w.by_conn.values().map(HashSet::len).sum();
            let paths: HashSet<&str> = w.by_path.values().flat_map(|t| t.keys().map(String::as_str)).collect();
            let conns = w.by_conn.values().filter(|s| !s.is_empty()).count();
            assert_eq!((w.watch_count(), w.path_count(), w.conn_count()), (watches, paths.len(), conns), "step {step}");
        }
        const EVENTS: [EventType; 4] = [
            EventType::NodeCreated,
            EventType::NodeDeleted,
            EventType::NodeDataChanged,
            EventType::NodeChildrenChanged,
        ];
        const TYPES: [WatcherType; 5] = [
            WatcherType::Children,
            WatcherType::Data,
            WatcherType::Any,
            WatcherType::Persistent,
            WatcherType::PersistentRecursive,
        ];
        let paths = ["/", "/a", "/a/b", "/a/b/c", "/d"];
        let mut w = WatchRegistry::new();
        // A fixed pseudo-random walk (a linear congruential generator), the same every run.
        let mut seed = 7u64;
        let mut next = |below: usize| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) as usize % below
        };
        for step in 0..5000 {
            let (conn, path) = (next(4) as ConnId, paths[next(paths.len())]);
            match next(10) {
                0..=4 => w.add(conn, KINDS[next(KINDS.len())], path),
                5..=6 => drop(w.trigger(path, EVENTS[next(EVENTS.len())])),
                7..=8 => drop(w.remove(conn, path, TYPES[next(TYPES.len())])),
                _ => w.remove_conn(conn),
            }
            check(&w, step);
        }
        assert!(w.watch_count() > 0, "the walk ends with watches to count");
    }
}
