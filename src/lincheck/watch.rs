//! Checks for recorded watch streams, after etcd's robustness suite: every
//! watch delivers events in order, without duplicates and without gaps;
//! all watches agree on what happened at each resourceVersion; every
//! acknowledged write shows up, as acknowledged, in every watch that ran
//! past it; and bookmarks never run ahead of delivered events.
//!
//! A watcher's log is a sequence of [`WatchItem`]s. It starts a *segment*
//! at a list (`Start`): events after that list's resourceVersion follow,
//! across any number of reconnects that resume from the last delivered
//! version (on any server). Only a 410 Gone makes a watcher list again,
//! which starts a new segment: the versions between the two are not owed.

use std::collections::{BTreeMap, BTreeSet};

/// One event as a watcher received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The object's resourceVersion after the change.
    pub revision: u64,
    /// ADDED, MODIFIED or DELETED.
    pub kind: String,
    /// The object's name.
    pub key: String,
    /// What the object held after the change.
    pub value: Option<String>,
}

/// One entry of a watcher's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchItem {
    /// A list at this resourceVersion; events after it follow.
    Start(u64),
    /// A delivered event.
    Event(Event),
    /// A bookmark: everything up to this version has been delivered.
    Bookmark(u64),
}

/// A write a client saw acknowledged, with the version its answer carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledged {
    pub revision: u64,
    pub kind: String,
    pub key: String,
    pub value: Option<String>,
}

/// Every problem found in `logs`, as sentences naming the watcher and the
/// version; empty when the watches are correct.
pub fn check(logs: &[Vec<WatchItem>], acked: &[Acknowledged]) -> Vec<String> {
    let mut problems = Vec::new();
    // what happened at each version, as first seen (acknowledgements first)
    let mut at: BTreeMap<u64, (String, String, Option<String>, String)> = BTreeMap::new();
    for a in acked {
        let seen = (
            a.kind.clone(),
            a.key.clone(),
            a.value.clone(),
            "a client".into(),
        );
        if let Some(prev) = at.insert(a.revision, seen.clone()) {
            if prev.0 != seen.0 || prev.1 != seen.1 || prev.2 != seen.2 {
                problems.push(format!(
                    "two writes were acknowledged with resourceVersion {}: {:?} and {:?}",
                    a.revision,
                    (prev.0, prev.1, prev.2),
                    (seen.0, seen.1, seen.2)
                ));
            }
        }
    }
    for (w, log) in logs.iter().enumerate() {
        for item in log {
            if let WatchItem::Event(e) = item {
                let who = format!("watcher {w}");
                let seen = (e.kind.clone(), e.key.clone(), e.value.clone(), who);
                match at.get(&e.revision) {
                    Some(prev) if (&prev.0, &prev.1, &prev.2) != (&seen.0, &seen.1, &seen.2) => {
                        problems.push(format!(
                            "watcher {w} got {} {} = {:?} at resourceVersion {}, but {} saw {} {} = {:?} there",
                            e.kind, e.key, e.value, e.revision, prev.3, prev.0, prev.1, prev.2
                        ));
                    }
                    Some(_) => {}
                    None => {
                        at.insert(e.revision, seen);
                    }
                }
            }
        }
    }
    let versions: BTreeSet<u64> = at.keys().copied().collect();
    for (w, log) in logs.iter().enumerate() {
        let mut segment: Option<(u64, BTreeSet<u64>)> = None;
        // the last version this watcher is known to have caught up to
        let mut upto = 0u64;
        let close = |segment: &mut Option<(u64, BTreeSet<u64>)>,
                     upto: u64,
                     problems: &mut Vec<String>| {
            if let Some((from, got)) = segment.take() {
                for v in versions.range(from + 1..=upto) {
                    if !got.contains(v) {
                        problems.push(format!(
                            "watcher {w} missed resourceVersion {v} (it watched from {from} to {upto})"
                        ));
                    }
                }
            }
        };
        for item in log {
            match item {
                WatchItem::Start(rv) => {
                    close(&mut segment, upto, &mut problems);
                    segment = Some((*rv, BTreeSet::new()));
                    upto = *rv;
                }
                WatchItem::Event(e) => {
                    let Some((_, got)) = segment.as_mut() else {
                        problems.push(format!("watcher {w} got an event before any list"));
                        continue;
                    };
                    if e.revision <= upto {
                        problems.push(format!(
                            "watcher {w} got resourceVersion {} after having reached {upto} (out of order or duplicated)",
                            e.revision
                        ));
                    }
                    got.insert(e.revision);
                    upto = upto.max(e.revision);
                }
                WatchItem::Bookmark(rv) => {
                    if *rv < upto {
                        problems.push(format!(
                            "watcher {w} got a bookmark at {rv} after an event at {upto}"
                        ));
                    }
                    upto = upto.max(*rv);
                }
            }
        }
        close(&mut segment, upto, &mut problems);
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(revision: u64, key: &str, value: &str) -> WatchItem {
        WatchItem::Event(Event {
            revision,
            kind: "MODIFIED".into(),
            key: key.into(),
            value: Some(value.into()),
        })
    }

    fn ack(revision: u64, key: &str, value: &str) -> Acknowledged {
        Acknowledged {
            revision,
            kind: "MODIFIED".into(),
            key: key.into(),
            value: Some(value.into()),
        }
    }

    #[test]
    fn correct_watches_pass() {
        let a = vec![
            WatchItem::Start(1),
            ev(2, "a", "1"),
            WatchItem::Bookmark(4),
            ev(5, "b", "2"),
        ];
        // resumed on another server from a bookmark, then a 410 and a relist
        let b = vec![
            WatchItem::Start(3),
            WatchItem::Bookmark(4),
            ev(5, "b", "2"),
            WatchItem::Start(9),
            ev(10, "a", "3"),
        ];
        let acked = [ack(2, "a", "1"), ack(5, "b", "2"), ack(10, "a", "3")];
        assert_eq!(check(&[a, b], &acked), Vec::<String>::new());
    }

    #[test]
    fn a_gap_is_found() {
        let a = vec![WatchItem::Start(1), ev(2, "a", "1"), ev(5, "b", "2")];
        let b = vec![WatchItem::Start(1), ev(5, "b", "2")];
        let problems = check(&[a, b], &[]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("watcher 1 missed resourceVersion 2"));
    }

    #[test]
    fn an_acknowledged_write_missing_from_every_watch_is_found() {
        let a = vec![WatchItem::Start(1), ev(5, "b", "2")];
        let problems = check(&[a], &[ack(3, "a", "1")]);
        assert!(problems
            .iter()
            .any(|p| p.contains("missed resourceVersion 3")));
    }

    #[test]
    fn duplicates_and_disorder_are_found() {
        let dup = vec![WatchItem::Start(1), ev(2, "a", "1"), ev(2, "a", "1")];
        assert!(check(&[dup], &[])[0].contains("out of order or duplicated"));
        let disorder = vec![WatchItem::Start(1), ev(3, "b", "2"), ev(2, "a", "1")];
        assert!(!check(&[disorder], &[]).is_empty());
    }

    #[test]
    fn disagreement_with_an_acknowledgement_is_found() {
        let a = vec![WatchItem::Start(1), ev(2, "a", "other")];
        let problems = check(&[a], &[ack(2, "a", "1")]);
        assert!(problems[0].contains("but a client saw"), "{problems:?}");
        let b = vec![WatchItem::Start(1), ev(2, "a", "1")];
        let c = vec![WatchItem::Start(1), ev(2, "b", "1")];
        assert!(!check(&[b, c], &[]).is_empty());
    }

    #[test]
    fn a_bookmark_ahead_of_events_is_found() {
        // the bookmark claims 6, then an event at 5 arrives
        let a = vec![WatchItem::Start(1), WatchItem::Bookmark(6), ev(5, "a", "1")];
        assert!(!check(&[a], &[]).is_empty());
        let b = vec![WatchItem::Start(1), ev(5, "a", "1"), WatchItem::Bookmark(4)];
        assert!(check(&[b], &[])[0].contains("bookmark at 4"));
    }

    #[test]
    fn versions_between_segments_are_not_owed() {
        let a = vec![
            WatchItem::Start(1),
            ev(2, "a", "1"),
            WatchItem::Start(7),
            ev(8, "a", "3"),
        ];
        let b = vec![
            WatchItem::Start(1),
            ev(2, "a", "1"),
            ev(5, "a", "2"),
            ev(8, "a", "3"),
        ];
        assert_eq!(check(&[a, b], &[]), Vec::<String>::new());
    }
}
