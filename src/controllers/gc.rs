//! The garbage collector: `ownerReferences` as Kubernetes uses them.
//!
//! - **Background** (the default): once every owner of an object is gone
//!   (checked against the API, not only the cache), the object is deleted.
//! - **Foreground**: an owner deleted with `propagationPolicy: Foreground`
//!   carries the `foregroundDeletion` finalizer; its dependents are deleted
//!   (in foreground too, so grandchildren go first) and the finalizer is
//!   removed once no dependent with `blockOwnerDeletion` is left.
//! - **Orphan**: an owner deleted with `propagationPolicy: Orphan` carries the
//!   `orphan` finalizer; it is removed from its dependents' ownerReferences,
//!   then the finalizer is removed.
//!
//! [`plan`] decides per object (pure); [`run`] watches the kinds that own or
//! are owned by something in this cluster.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use super::CancelToken;
use crate::api::meta;
use crate::api::resources::{self, Resource};
use crate::client::runtime::{self, Cache, Change, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};

/// The kinds the collector watches: the workload owners and what they own.
pub const KINDS: &[&str] = &[
    "pods",
    "replicasets",
    "deployments",
    "statefulsets",
    "daemonsets",
    "jobs",
    "cronjobs",
    "persistentvolumeclaims",
    "configmaps",
    "secrets",
    "services",
];

/// What to do about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// All its owners are gone: delete it.
    Delete,
    /// Foreground deletion: delete these dependents (keys of not yet
    /// deleting ones); `release` says no blocking dependent remains, so the
    /// finalizer can go.
    Foreground {
        delete: Vec<usize>,
        release: bool,
    },
    /// Orphan: strip this owner from these dependents, then drop the finalizer.
    Orphan {
        strip: Vec<usize>,
    },
}

fn owner_uids(obj: &Value) -> Vec<&str> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["uid"].as_str())
        .collect()
}

fn has_finalizer(obj: &Value, f: &str) -> bool {
    meta::finalizers(obj).iter().any(|x| x == f)
}

/// Decide for `obj`, given its dependents and whether each of its owners
/// still exists.
pub fn plan(obj: &Value, dependents: &[&Value], owners_exist: &[bool]) -> Action {
    let uid = obj["metadata"]["uid"].as_str().unwrap_or("");
    if meta::is_deleting(obj) && has_finalizer(obj, "orphan") {
        return Action::Orphan {
            strip: (0..dependents.len()).collect(),
        };
    }
    if meta::is_deleting(obj) && has_finalizer(obj, "foregroundDeletion") {
        let delete: Vec<usize> = dependents
            .iter()
            .enumerate()
            .filter(|(_, d)| !meta::is_deleting(d))
            .map(|(i, _)| i)
            .collect();
        let blocking = dependents.iter().any(|d| {
            d["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|o| o["uid"] == uid && o["blockOwnerDeletion"] == true)
        });
        return Action::Foreground {
            delete,
            release: !blocking,
        };
    }
    if !owners_exist.is_empty() && owners_exist.iter().all(|e| !e) && !meta::is_deleting(obj) {
        return Action::Delete;
    }
    Action::Nothing
}

/// An object's identity across kinds: `plural|namespace/name`.
fn ident(res: &Resource, obj: &Value) -> String {
    format!("{}|{}", res.plural, runtime::key_of(obj))
}

struct Collector {
    client: Client,
    caches: Vec<(&'static Resource, Arc<Cache>)>,
    /// uid → identity of every object in the caches.
    index: Arc<std::sync::Mutex<HashMap<String, String>>>,
    queue: Arc<WorkQueue>,
}

impl Collector {
    fn find(&self, ident: &str) -> Option<(&'static Resource, Arc<Value>)> {
        let (plural, key) = ident.split_once('|')?;
        let (res, cache) = self.caches.iter().find(|(r, _)| r.plural == plural)?;
        cache.get(key).map(|o| (*res, o))
    }

    fn exists(&self, uid: &str) -> bool {
        self.index
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(uid)
    }

    fn dependents(&self, uid: &str) -> Vec<(&'static Resource, Arc<Value>)> {
        self.caches
            .iter()
            .flat_map(|(r, c)| {
                c.all()
                    .into_iter()
                    .filter(|o| owner_uids(o).contains(&uid))
                    .map(|o| (*r, o))
            })
            .collect()
    }

    /// Whether the owner `reference` of `obj` exists: the cache first, then
    /// (before concluding it is gone) the API.
    async fn owner_exists(&self, obj: &Value, reference: &Value) -> Result<bool, ClientError> {
        let uid = reference["uid"].as_str().unwrap_or("");
        if self.exists(uid) {
            return Ok(true);
        }
        let api_version = reference["apiVersion"].as_str().unwrap_or("v1");
        let (group, _version) = api_version.split_once('/').unwrap_or(("", api_version));
        let kind = reference["kind"].as_str().unwrap_or("");
        let Some(res) = resources::all()
            .into_iter()
            .find(|r| r.kind == kind && r.group == group)
        else {
            // a kind we do not serve cannot be verified: keep the dependent
            return Ok(true);
        };
        let ns = res.namespaced.then(|| meta::namespace(obj));
        match self
            .client
            .get(res, ns, reference["name"].as_str().unwrap_or(""))
            .await
        {
            Ok(o) => Ok(o["metadata"]["uid"] == uid),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn delete(&self, res: &Resource, obj: &Value, policy: &str) -> Result<(), ClientError> {
        let path = res.object_path(
            res.namespaced.then(|| meta::namespace(obj)),
            meta::name(obj),
        );
        let body = json!({"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": policy,
            "preconditions": {"uid": obj["metadata"]["uid"]}});
        match self
            .client
            .request(Method::DELETE, &path, Some(&body))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() || e.code() == Some(409) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Merge-patch `obj`'s metadata, conditioned on its resourceVersion.
    async fn patch_meta(
        &self,
        res: &Resource,
        obj: &Value,
        metadata: Value,
    ) -> Result<(), ClientError> {
        let mut metadata = metadata;
        metadata["resourceVersion"] = obj["metadata"]["resourceVersion"].clone();
        match self
            .client
            .merge_patch(
                res,
                res.namespaced.then(|| meta::namespace(obj)),
                meta::name(obj),
                &json!({ "metadata": metadata }),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn drop_finalizer(
        &self,
        res: &Resource,
        obj: &Value,
        f: &str,
    ) -> Result<(), ClientError> {
        let rest: Vec<String> = meta::finalizers(obj)
            .into_iter()
            .filter(|x| x != f)
            .collect();
        self.patch_meta(res, obj, json!({ "finalizers": rest }))
            .await
    }
}

impl Reconcile for Collector {
    async fn reconcile(&self, ident: String) -> Result<Next, ClientError> {
        // an object went: its dependents check whether they are orphans now
        if let Some(uid) = ident.strip_prefix("dependents-of|") {
            for (r, d) in self.dependents(uid) {
                self.queue.add(&self::ident(r, &d));
            }
            return Ok(Next::Done);
        }
        let Some((res, obj)) = self.find(&ident) else {
            return Ok(Next::Done);
        };
        let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
        // only a deleting owner acts on its dependents: skip the scan otherwise
        let dependents = if meta::is_deleting(&obj) {
            self.dependents(&uid)
        } else {
            Vec::new()
        };
        let dep_values: Vec<&Value> = dependents.iter().map(|(_, o)| o.as_ref()).collect();
        let mut owners_exist = Vec::new();
        if !meta::is_deleting(&obj) {
            for reference in obj["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
            {
                owners_exist.push(self.owner_exists(&obj, reference).await?);
            }
        }
        match plan(&obj, &dep_values, &owners_exist) {
            Action::Nothing => Ok(Next::Done),
            Action::Delete => {
                self.delete(res, &obj, "Background").await?;
                Ok(Next::Done)
            }
            Action::Foreground { delete, release } => {
                for i in delete {
                    let (r, d) = &dependents[i];
                    self.delete(r, d, "Foreground").await?;
                }
                if release {
                    self.drop_finalizer(res, &obj, "foregroundDeletion").await?;
                    Ok(Next::Done)
                } else {
                    Ok(Next::After(Duration::from_secs(2)))
                }
            }
            Action::Orphan { strip } => {
                for i in strip {
                    let (r, d) = &dependents[i];
                    let refs: Vec<Value> = d["metadata"]["ownerReferences"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|o| o["uid"] != uid.as_str())
                        .cloned()
                        .collect();
                    let refs = if refs.is_empty() {
                        Value::Null
                    } else {
                        json!(refs)
                    };
                    self.patch_meta(r, d, json!({ "ownerReferences": refs }))
                        .await?;
                }
                self.drop_finalizer(res, &obj, "orphan").await?;
                Ok(Next::Done)
            }
        }
    }
}

/// Run the garbage collector until `cancel`.
pub async fn run(client: Client, cancel: CancelToken) {
    let queue = WorkQueue::new();
    let mut caches = Vec::new();
    let mut watches = Vec::new();
    // uid → identity of every object seen, to requeue owners when dependents change
    let owners: Arc<std::sync::Mutex<HashMap<String, String>>> = Arc::default();
    for plural in KINDS {
        let res = resources::lookup(plural).expect("collected kinds are served");
        let cache = Cache::new();
        caches.push((res, cache.clone()));
        let (queue, owners) = (queue.clone(), owners.clone());
        let on_change = move |c: Change| {
            let obj = c.object();
            let me = ident(res, obj);
            let uid = obj["metadata"]["uid"].as_str().unwrap_or("").to_string();
            {
                let mut index = owners.lock().unwrap_or_else(|e| e.into_inner());
                match &c {
                    Change::Applied(_) => {
                        index.insert(uid.clone(), me.clone());
                    }
                    Change::Deleted(_) => {
                        index.remove(&uid);
                    }
                }
                // its owners may be waiting for it (foreground) or gone
                for o in owner_uids(obj) {
                    if let Some(owner) = index.get(o) {
                        queue.add(owner);
                    }
                }
            }
            match c {
                Change::Applied(_) => queue.add(&me),
                // its dependents may now be orphans: they look themselves up
                Change::Deleted(_) => queue.add(&format!("dependents-of|{uid}")),
            }
        };
        watches.push(Watch::new(plural, &cache, on_change));
    }
    let collector = Arc::new(Collector {
        client: client.clone(),
        caches,
        index: owners,
        queue: queue.clone(),
    });
    runtime::run_controller(
        "garbage-collector",
        &client,
        watches,
        queue,
        2,
        collector,
        cancel,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(uid: &str, owners: &[(&str, bool)]) -> Value {
        let refs: Vec<Value> = owners
            .iter()
            .map(|(u, block)| json!({"uid": u, "kind": "ReplicaSet", "apiVersion": "apps/v1", "name": "x", "blockOwnerDeletion": block}))
            .collect();
        json!({"metadata": {"uid": uid, "name": uid, "ownerReferences": refs}})
    }

    #[test]
    fn an_object_whose_owners_are_all_gone_is_deleted() {
        let o = obj("p", &[("a", true), ("b", false)]);
        assert_eq!(plan(&o, &[], &[false, false]), Action::Delete);
        assert_eq!(plan(&o, &[], &[false, true]), Action::Nothing);
        assert_eq!(plan(&obj("free", &[]), &[], &[]), Action::Nothing);
    }

    #[test]
    fn foreground_deletes_dependents_and_waits_for_the_blocking_ones() {
        let mut owner = obj("rs", &[]);
        owner["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        owner["metadata"]["finalizers"] = json!(["foregroundDeletion"]);
        let blocking = obj("p1", &[("rs", true)]);
        let mut going = obj("p2", &[("rs", false)]);
        going["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        assert_eq!(
            plan(&owner, &[&blocking, &going], &[]),
            Action::Foreground {
                delete: vec![0],
                release: false
            }
        );
        assert_eq!(
            plan(&owner, &[&going], &[]),
            Action::Foreground {
                delete: vec![],
                release: true
            }
        );
    }

    #[test]
    fn orphan_strips_the_owner_from_every_dependent() {
        let mut owner = obj("rs", &[]);
        owner["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        owner["metadata"]["finalizers"] = json!(["orphan"]);
        let d = obj("p1", &[("rs", true)]);
        assert_eq!(
            plan(&owner, &[&d, &d], &[]),
            Action::Orphan { strip: vec![0, 1] }
        );
    }
}
