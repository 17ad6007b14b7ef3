//! The watch cache: every stored object in memory, plus a bounded window of
//! recent changes. Reads and watches are served from here, never from redb,
//! and writers only append to the window and bump a `watch` channel, so any
//! number of watchers can lag without slowing a write.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Added,
    Modified,
    Deleted,
}

/// One applied change, as kept in the history window.
#[derive(Debug)]
pub struct Change {
    /// The revision (Raft log index) that made this change.
    pub revision: u64,
    pub key: String,
    pub kind: ChangeKind,
    /// The object after the change (for deletes: the last state, stamped with
    /// the deletion revision).
    pub object: Arc<Value>,
    /// The object before the change; lets watches with selectors turn a
    /// modification into ADDED/DELETED, and lets paged lists read the past.
    pub prev: Option<Arc<Value>>,
}

/// The requested revision is older than the history window holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too old resource version: {requested} ({oldest})")]
pub struct Expired {
    pub requested: u64,
    pub oldest: u64,
}

/// One page of a list.
#[derive(Debug)]
pub struct ListPage {
    pub items: Vec<Arc<Value>>,
    /// The revision the page was read at.
    pub revision: u64,
    /// The last key scanned, when more keys follow it.
    pub continue_after: Option<String>,
}

#[derive(Default)]
struct Inner {
    objects: BTreeMap<String, Arc<Value>>,
    history: VecDeque<Arc<Change>>,
    /// When each batch of changes was applied: (its last revision, when).
    applied_at: VecDeque<(u64, Instant)>,
    /// Every change with a revision above this is in `history`.
    history_start: u64,
    /// The last applied revision (log index), including non-object entries.
    revision: u64,
    /// Watched kinds, by the root of their keys (`group/plural/`).
    topics: std::collections::HashMap<String, watch::Sender<u64>>,
}

/// The root of `key`'s kind: its first two segments (`core/pods/`).
fn root_of(key: &str) -> &str {
    let mut slashes = key.match_indices('/').map(|(i, _)| i);
    match (slashes.next(), slashes.next()) {
        (Some(_), Some(i)) => &key[..=i],
        _ => key,
    }
}

/// One kind's changes, for a watch: woken only when an object of that
/// kind changes, not by every write to the store.
pub struct Topic {
    root: String,
    rx: watch::Receiver<u64>,
}

impl Topic {
    /// Resolves when an object of this kind changed since the last call
    /// (or since subscribing); `Err` once the cache is gone.
    pub async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        self.rx.changed().await
    }
}

/// The in-memory view of the state machine.
pub struct Cache {
    inner: RwLock<Inner>,
    capacity: usize,
    /// Changes older than this leave the window, however few there are.
    max_age: Duration,
    revision_tx: watch::Sender<u64>,
}

impl Cache {
    /// A cache that keeps the last `capacity` changes for watch resumption.
    pub fn new(capacity: usize) -> Self {
        Self::with_max_age(capacity, Duration::MAX)
    }

    /// A cache that keeps the last `capacity` changes, and none older than
    /// `max_age`: a superseded version of an object is held only by the
    /// window, so this bounds the memory of a quiet cluster to its current
    /// objects, whatever a burst of changes left behind.
    pub fn with_max_age(capacity: usize, max_age: Duration) -> Self {
        let (revision_tx, _) = watch::channel(0);
        Self {
            inner: RwLock::default(),
            capacity: capacity.max(1),
            max_age,
            revision_tx,
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Replace everything (start-up, snapshot install). The history restarts at `revision`.
    pub(crate) fn reset(&self, objects: BTreeMap<String, Arc<Value>>, revision: u64) {
        let mut inner = self.write();
        inner.objects = objects;
        inner.history.clear();
        inner.applied_at.clear();
        inner.history_start = revision;
        inner.revision = revision;
        // every kind may have changed: its watches must look (and expire)
        for tx in inner.topics.values() {
            tx.send_replace(revision);
        }
        drop(inner);
        self.revision_tx.send_replace(revision);
    }

    /// Publish applied changes and advance the revision to `revision`.
    pub(crate) fn apply(&self, changes: Vec<Change>, revision: u64) {
        let now = Instant::now();
        let mut inner = self.write();
        if let Some(last) = changes.last() {
            inner.applied_at.push_back((last.revision, now));
        }
        for change in changes {
            // under the lock, so a watch reads its kind's last change and
            // the window together (see `changes_in`)
            if !inner.topics.is_empty() {
                let root = root_of(&change.key);
                if let Some(tx) = inner.topics.get(root) {
                    if tx.receiver_count() == 0 {
                        inner.topics.remove(root);
                    } else {
                        tx.send_replace(change.revision);
                    }
                }
            }
            match change.kind {
                ChangeKind::Deleted => {
                    inner.objects.remove(&change.key);
                }
                _ => {
                    inner
                        .objects
                        .insert(change.key.clone(), change.object.clone());
                }
            }
            inner.history.push_back(Arc::new(change));
        }
        while inner.history.len() > self.capacity {
            if let Some(old) = inner.history.pop_front() {
                inner.history_start = old.revision;
            }
        }
        // batches applied longer than max_age ago leave the window
        while let Some(&(last, at)) = inner.applied_at.front() {
            if now.duration_since(at) <= self.max_age {
                break;
            }
            inner.applied_at.pop_front();
            while inner.history.front().is_some_and(|c| c.revision <= last) {
                if let Some(old) = inner.history.pop_front() {
                    inner.history_start = old.revision;
                }
            }
        }
        inner.revision = inner.revision.max(revision);
        let rev = inner.revision;
        drop(inner);
        self.revision_tx.send_replace(rev);
    }

    /// The last applied revision.
    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// The oldest revision a watch can resume from.
    pub fn oldest_revision(&self) -> u64 {
        self.read().history_start
    }

    /// A receiver that changes whenever the revision advances.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision_tx.subscribe()
    }

    /// Be told of changes to the objects under `prefix`'s kind (the first
    /// two segments of a key: `core/pods/`). A store-wide wake-up would
    /// rouse every watch of every kind on every write, Lease renewals and
    /// Events included.
    pub fn subscribe_to(&self, prefix: &str) -> Topic {
        let root = root_of(prefix).to_string();
        let mut inner = self.write();
        // a new topic does not know its kind's last change: say "now"
        let revision = inner.revision;
        let rx = inner
            .topics
            .entry(root.clone())
            .or_insert_with(|| watch::channel(revision).0)
            .subscribe();
        Topic { root, rx }
    }

    /// The current object under `key`.
    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.read().objects.get(key).cloned()
    }

    /// How many objects are stored.
    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every object with its key and the revision it was read at.
    pub fn dump(&self) -> (u64, Vec<(String, Arc<Value>)>) {
        let inner = self.read();
        let items = inner
            .objects
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        (inner.revision, items)
    }

    /// List objects whose key starts with `prefix`, after key `after`, as they
    /// were at revision `at` (default: now), keeping those `filter` accepts,
    /// at most `limit` of them.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        at: Option<u64>,
        limit: Option<usize>,
        filter: &dyn Fn(&Value) -> bool,
    ) -> Result<ListPage, Expired> {
        let inner = self.read();
        let revision = at.unwrap_or(inner.revision).min(inner.revision);
        // The state at `revision` of every key changed since: the `prev` of
        // the first change after it.
        let mut overlay: BTreeMap<String, Option<Arc<Value>>> = BTreeMap::new();
        if revision < inner.revision {
            if revision < inner.history_start {
                return Err(Expired {
                    requested: revision,
                    oldest: inner.history_start,
                });
            }
            let first = inner.history.partition_point(|c| c.revision <= revision);
            for change in inner.history.range(first..) {
                if change.key.starts_with(prefix) && after.is_none_or(|a| change.key.as_str() > a) {
                    overlay
                        .entry(change.key.clone())
                        .or_insert_with(|| change.prev.clone());
                }
            }
        }
        let lower = match after {
            Some(a) => Bound::Excluded(a.to_string()),
            None => Bound::Included(prefix.to_string()),
        };
        let mut base = inner
            .objects
            .range::<String, _>((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .peekable();
        let mut over = overlay.into_iter().peekable();
        let mut items = Vec::new();
        let mut last_key: Option<String> = None;
        let limit = limit.filter(|l| *l > 0);
        loop {
            if limit.is_some_and(|l| items.len() >= l) {
                let more = base.peek().is_some() || over.peek().is_some();
                return Ok(ListPage {
                    items,
                    revision,
                    continue_after: if more { last_key } else { None },
                });
            }
            let take_over = match (base.peek(), over.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((bk, _)), Some((ok, _))) => ok.as_str() <= bk.as_str(),
            };
            let (key, value) = if take_over {
                let (ok, ov) = over.next().expect("peeked");
                if base.peek().is_some_and(|(bk, _)| **bk == ok) {
                    base.next();
                }
                (ok, ov)
            } else {
                let (bk, bv) = base.next().expect("peeked");
                (bk.clone(), Some(bv.clone()))
            };
            if let Some(v) = value {
                if filter(&v) {
                    items.push(v);
                }
            }
            last_key = Some(key);
        }
        Ok(ListPage {
            items,
            revision,
            continue_after: None,
        })
    }

    /// Up to `max` changes with a revision above `after`, and the current revision.
    pub fn changes_after(
        &self,
        after: u64,
        max: usize,
    ) -> Result<(Vec<Arc<Change>>, u64), Expired> {
        let inner = self.read();
        if after < inner.history_start {
            return Err(Expired {
                requested: after,
                oldest: inner.history_start,
            });
        }
        let first = inner.history.partition_point(|c| c.revision <= after);
        let changes = inner.history.range(first..).take(max).cloned().collect();
        Ok((changes, inner.revision))
    }

    /// [`Self::changes_after`] for a watch of `topic`'s kind: when nothing
    /// of that kind changed after `after`, no changes and the current
    /// revision, even if the window no longer reaches back to `after`
    /// (a watch of a quiet kind is not woken to follow the others).
    pub fn changes_in(
        &self,
        topic: &Topic,
        after: u64,
        max: usize,
    ) -> Result<(Vec<Arc<Change>>, u64), Expired> {
        {
            let inner = self.read();
            let last = inner.topics.get(&topic.root).map(|tx| *tx.borrow());
            if last.is_some_and(|last| last <= after) {
                return Ok((Vec::new(), inner.revision));
            }
        }
        self.changes_after(after, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn change(cache: &Cache, revision: u64, key: &str, kind: ChangeKind, v: i64) {
        let prev = cache.get(key);
        let object = Arc::new(
            json!({"metadata": {"name": key, "resourceVersion": revision.to_string()}, "v": v}),
        );
        cache.apply(
            vec![Change {
                revision,
                key: key.to_string(),
                kind,
                object,
                prev,
            }],
            revision,
        );
    }

    fn values(page: &ListPage) -> Vec<i64> {
        page.items
            .iter()
            .map(|o| o["v"].as_i64().unwrap())
            .collect()
    }

    #[test]
    fn list_at_an_old_revision_undoes_later_changes() {
        let cache = Cache::new(100);
        change(&cache, 1, "p/a", ChangeKind::Added, 1);
        change(&cache, 2, "p/b", ChangeKind::Added, 2);
        change(&cache, 3, "p/c", ChangeKind::Added, 3);
        change(&cache, 4, "p/a", ChangeKind::Modified, 10);
        change(&cache, 5, "p/b", ChangeKind::Deleted, 2);
        change(&cache, 6, "p/d", ChangeKind::Added, 4);
        let all = &|_: &Value| true;
        assert_eq!(
            values(&cache.list("p/", None, None, None, all).unwrap()),
            vec![10, 3, 4]
        );
        assert_eq!(
            values(&cache.list("p/", None, Some(3), None, all).unwrap()),
            vec![1, 2, 3]
        );
        assert_eq!(
            values(&cache.list("p/", Some("p/a"), Some(3), None, all).unwrap()),
            vec![2, 3]
        );
        assert_eq!(
            values(&cache.list("p/", None, Some(1), None, all).unwrap()),
            vec![1]
        );
    }

    #[test]
    fn paging_returns_every_item_once_with_continue_keys() {
        let cache = Cache::new(100);
        for i in 0..10 {
            change(
                &cache,
                i + 1,
                &format!("p/{i:02}"),
                ChangeKind::Added,
                i as i64,
            );
        }
        let all = &|_: &Value| true;
        let mut after = None;
        let mut seen = Vec::new();
        loop {
            let page = cache
                .list("p/", after.as_deref(), Some(10), Some(3), all)
                .unwrap();
            seen.extend(values(&page));
            // a concurrent write must not show up in later pages
            change(
                &cache,
                100 + seen.len() as u64,
                "p/05",
                ChangeKind::Modified,
                99,
            );
            match page.continue_after {
                Some(k) => after = Some(k),
                None => break,
            }
        }
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn history_window_expires_old_revisions() {
        let cache = Cache::new(3);
        for i in 1..=5 {
            change(&cache, i, "p/a", ChangeKind::Modified, i as i64);
        }
        assert_eq!(cache.oldest_revision(), 2);
        assert!(cache.changes_after(1, 10).is_err());
        let (changes, rev) = cache.changes_after(2, 10).unwrap();
        assert_eq!(rev, 5);
        assert_eq!(
            changes.iter().map(|c| c.revision).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        let all = &|_: &Value| true;
        assert_eq!(
            cache.list("p/", None, Some(1), None, all).unwrap_err(),
            Expired {
                requested: 1,
                oldest: 2
            }
        );
    }

    #[test]
    fn changes_older_than_the_max_age_leave_the_window() {
        let cache = Cache::with_max_age(100, Duration::from_millis(50));
        change(&cache, 1, "p/a", ChangeKind::Added, 1);
        change(&cache, 2, "p/a", ChangeKind::Modified, 2);
        assert_eq!(cache.changes_after(0, 10).unwrap().0.len(), 2);
        std::thread::sleep(Duration::from_millis(80));
        // the next change ages the first two out; the object stays
        change(&cache, 3, "p/b", ChangeKind::Added, 3);
        assert_eq!(cache.oldest_revision(), 2);
        assert!(cache.changes_after(1, 10).is_err());
        let (changes, rev) = cache.changes_after(2, 10).unwrap();
        assert_eq!((changes.len(), rev), (1, 3));
        assert_eq!(cache.get("p/a").unwrap()["v"], 2);
        // the count still bounds a window of fresh changes
        let small = Cache::with_max_age(2, Duration::from_secs(3600));
        for i in 1..=4 {
            change(&small, i, "p/a", ChangeKind::Modified, i as i64);
        }
        assert_eq!(small.oldest_revision(), 2);
    }

    #[test]
    fn filters_apply_before_limit() {
        let cache = Cache::new(100);
        for i in 0..6 {
            change(
                &cache,
                i + 1,
                &format!("p/{i}"),
                ChangeKind::Added,
                i as i64,
            );
        }
        let even = &|v: &Value| v["v"].as_i64().unwrap() % 2 == 0;
        let page = cache.list("p/", None, None, Some(2), even).unwrap();
        assert_eq!(values(&page), vec![0, 2]);
        assert_eq!(page.continue_after.as_deref(), Some("p/2"));
    }

    #[test]
    fn a_watch_is_woken_by_changes_of_its_kind_and_not_by_others() {
        let cache = Cache::new(100);
        change(&cache, 1, "core/pods/default/a", ChangeKind::Added, 1);
        let mut pods = cache.subscribe_to("core/pods/default/");
        let mut leases = cache.subscribe_to("coordination.k8s.io/leases/");
        change(
            &cache,
            2,
            "coordination.k8s.io/leases/kube-node-lease/n",
            ChangeKind::Added,
            2,
        );
        assert!(!pods.rx.has_changed().unwrap());
        assert!(leases.rx.has_changed().unwrap());
        // nothing of the pods' kind since 1: no changes, the cursor moves on
        let (changes, rev) = cache.changes_in(&pods, 1, 10).unwrap();
        assert_eq!((changes.len(), rev), (0, 2));
        change(&cache, 3, "core/pods/other/b", ChangeKind::Added, 3);
        assert!(pods.rx.has_changed().unwrap());
        let (changes, rev) = cache.changes_in(&pods, 2, 10).unwrap();
        assert_eq!(changes.len(), 1);
        assert_eq!((changes[0].key.as_str(), rev), ("core/pods/other/b", 3));
        // a kind named by a prefix of another is still its own
        let _ = pods.rx.borrow_and_update();
        let _ = leases.rx.borrow_and_update();
        change(
            &cache,
            4,
            "core/podtemplates/default/t",
            ChangeKind::Added,
            4,
        );
        assert!(!pods.rx.has_changed().unwrap());
        assert!(!leases.rx.has_changed().unwrap());
    }

    #[test]
    fn a_quiet_kind_resumes_past_the_window_and_a_changed_one_expires() {
        let cache = Cache::new(2);
        change(&cache, 1, "core/pods/default/a", ChangeKind::Added, 1);
        let pods = cache.subscribe_to("core/pods/");
        change(&cache, 2, "core/pods/default/a", ChangeKind::Modified, 2);
        for i in 3..=6 {
            change(
                &cache,
                i,
                "core/events/default/e",
                ChangeKind::Modified,
                i as i64,
            );
        }
        assert_eq!(cache.oldest_revision(), 4);
        // revision 2 is out of the window, but no pod changed after it
        let (changes, rev) = cache.changes_in(&pods, 2, 10).unwrap();
        assert_eq!((changes.len(), rev), (0, 6));
        // a watch from 1 missed the change at 2: too old
        assert!(cache.changes_in(&pods, 1, 10).is_err());
        // a kind subscribed to now does not know its past: too old as well
        let fresh = cache.subscribe_to("core/configmaps/");
        assert!(cache.changes_in(&fresh, 2, 10).is_err());
    }

    #[test]
    fn a_reset_wakes_every_watch_and_expires_it() {
        let cache = Cache::new(100);
        change(&cache, 1, "core/pods/default/a", ChangeKind::Added, 1);
        let pods = cache.subscribe_to("core/pods/");
        cache.reset(BTreeMap::new(), 10);
        assert!(pods.rx.has_changed().unwrap());
        assert!(cache.changes_in(&pods, 1, 10).is_err());
    }
}
