//! The Node authorizer's graph, as kube-apiserver keeps one: which nodes'
//! pods use which Secrets, ConfigMaps, claims and ServiceAccounts. It
//! follows the store's change feed, so answering "may node N read secret
//! S?" costs a hash lookup rather than a scan of the namespace's pods.
//! When the graph says no, the Node authorizer still checks the pods
//! themselves (the graph may be a moment behind the cache).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;

use crate::api::podrefs::pod_refs;
use crate::auth::node::RefKind;
use crate::controllers::CancelToken;
use crate::store::{Cache, ChangeKind};

const PODS: &str = "core/pods/";

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Edge {
    node: String,
    namespace: String,
    kind: RefKind,
    name: String,
}

/// Node → used objects, with how many of the node's pods use each.
#[derive(Default)]
pub struct NodeGraph {
    edges: RwLock<HashMap<Edge, u32>>,
}

fn edges_of(pod: &Value) -> Vec<Edge> {
    let node = pod["spec"]["nodeName"].as_str().unwrap_or_default();
    if node.is_empty() {
        return Vec::new();
    }
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let r = pod_refs(pod);
    let edge = |kind: RefKind, name: &String| Edge {
        node: node.to_string(),
        namespace: namespace.to_string(),
        kind,
        name: name.clone(),
    };
    r.secrets
        .iter()
        .map(|n| edge(RefKind::Secret, n))
        .chain(r.configmaps.iter().map(|n| edge(RefKind::ConfigMap, n)))
        .chain(r.claims.iter().map(|n| edge(RefKind::Claim, n)))
        .chain(std::iter::once(edge(
            RefKind::ServiceAccount,
            &r.service_account,
        )))
        .collect()
}

impl NodeGraph {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Whether a pod bound to `node` in `namespace` uses `kind` `name`.
    pub fn uses(&self, node: &str, namespace: &str, kind: RefKind, name: &str) -> bool {
        let e = Edge {
            node: node.into(),
            namespace: namespace.into(),
            kind,
            name: name.into(),
        };
        self.edges
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&e)
            .is_some_and(|n| *n > 0)
    }

    fn apply(&self, pod: &Value, add: bool) {
        let mut edges = self.edges.write().unwrap_or_else(|e| e.into_inner());
        for e in edges_of(pod) {
            if add {
                *edges.entry(e).or_default() += 1;
            } else if let Some(n) = edges.get_mut(&e) {
                *n -= 1;
                if *n == 0 {
                    edges.remove(&e);
                }
            }
        }
    }

    /// Build the graph from every pod in `cache`; returns the revision.
    fn rebuild(&self, cache: &Cache) -> u64 {
        let page = match cache.list(PODS, None, None, None, &|_| true) {
            Ok(p) => p,
            Err(_) => return cache.revision(),
        };
        self.edges
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for p in &page.items {
            self.apply(p, true);
        }
        page.revision
    }

    /// Follow the cache's changes to pods until `cancel`.
    pub async fn follow(self: Arc<Self>, cache: Arc<Cache>, mut cancel: CancelToken) {
        let mut revisions = cache.subscribe();
        let mut cursor = self.rebuild(&cache);
        loop {
            match cache.changes_after(cursor, 10_000) {
                Ok((changes, now)) => {
                    let complete = changes.len() < 10_000;
                    for c in &changes {
                        cursor = c.revision;
                        if !c.key.starts_with(PODS) {
                            continue;
                        }
                        if let Some(prev) = &c.prev {
                            self.apply(prev, false);
                        }
                        if c.kind != ChangeKind::Deleted {
                            self.apply(&c.object, true);
                        }
                    }
                    if complete {
                        cursor = cursor.max(now);
                    } else {
                        continue;
                    }
                }
                // fell out of the change window: start again from the objects
                Err(_) => {
                    cursor = self.rebuild(&cache);
                    continue;
                }
            }
            tokio::select! {
                r = revisions.changed() => if r.is_err() { return },
                _ = cancel.wait_for(|s| *s) => return,
                // a safety net against a missed wake-up
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn edges_count_pods_and_go_with_the_last_one() {
        let g = NodeGraph::default();
        let pod = |name: &str, node: &str| {
            json!({"metadata": {"name": name, "namespace": "d"}, "spec": {"nodeName": node,
                "volumes": [{"name": "v", "secret": {"secretName": "db"}}]}})
        };
        g.apply(&pod("a", "n1"), true);
        g.apply(&pod("b", "n1"), true);
        assert!(g.uses("n1", "d", RefKind::Secret, "db"));
        assert!(g.uses("n1", "d", RefKind::ServiceAccount, "default"));
        assert!(!g.uses("n2", "d", RefKind::Secret, "db"));
        assert!(!g.uses("n1", "other", RefKind::Secret, "db"));
        g.apply(&pod("a", "n1"), false);
        assert!(g.uses("n1", "d", RefKind::Secret, "db"), "b still uses it");
        g.apply(&pod("b", "n1"), false);
        assert!(!g.uses("n1", "d", RefKind::Secret, "db"));
        // an unscheduled pod uses nothing on any node
        g.apply(&pod("c", ""), true);
        assert!(g.edges.read().unwrap().is_empty());
    }
}
