//! The ReplicaSet controller: keeps `spec.replicas` pods matching the
//! selector, adopting orphans and releasing pods that stop matching
//! (through `ownerReferences`), deleting the least valuable pods first
//! (unscheduled, pending, not ready, newest), and reporting status.
//!
//! [`plan`] is the decision (pure). Expectations keep a reconcile from
//! acting again while its own creations and deletions have not reached the
//! cache yet: pod names are chosen here, so the controller knows exactly
//! which pods it is waiting to see.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::CancelToken;
use crate::api::meta;
use crate::api::resources::{self, Resource};
use crate::api::selector::LabelSelector;
use crate::client::runtime::{self, Cache, Change, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};

pub use crate::client::runtime::{controller_of, owner_ref};

fn is_active(pod: &Value) -> bool {
    !meta::is_deleting(pod)
        && !matches!(
            pod["status"]["phase"].as_str(),
            Some("Succeeded" | "Failed")
        )
}

fn condition<'a>(pod: &'a Value, kind: &str) -> Option<&'a Value> {
    pod["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// Whether a pod is Ready.
pub fn is_ready(pod: &Value) -> bool {
    condition(pod, "Ready").is_some_and(|c| c["status"] == "True")
}

/// Whether a pod has been Ready for `min_ready` seconds by `now`.
pub fn is_available(pod: &Value, min_ready: i64, now: chrono::DateTime<chrono::Utc>) -> bool {
    let Some(c) = condition(pod, "Ready").filter(|c| c["status"] == "True") else {
        return false;
    };
    if min_ready <= 0 {
        return true;
    }
    c["lastTransitionTime"]
        .as_str()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .is_some_and(|t| now.signed_duration_since(t).num_seconds() >= min_ready)
}

/// The order in which surplus pods are deleted: the first are the cheapest
/// to lose (kubelet's ranking: unscheduled, then pending, then not ready,
/// then more restarts, then newest).
fn deletion_rank(pod: &Value) -> (u8, u8, u8, i64, std::cmp::Reverse<String>) {
    let scheduled = !pod["spec"]["nodeName"].as_str().unwrap_or("").is_empty();
    let phase = match pod["status"]["phase"].as_str() {
        Some("Pending") | None => 0,
        Some("Running") => 2,
        _ => 1,
    };
    let restarts: i64 = pod["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["restartCount"].as_i64())
        .sum();
    (
        scheduled as u8,
        phase,
        is_ready(pod) as u8,
        -restarts,
        std::cmp::Reverse(
            pod["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        ),
    )
}

/// What to do for one ReplicaSet.
#[derive(Debug, Default)]
pub struct Plan {
    pub adopt: Vec<Arc<Value>>,
    pub release: Vec<Arc<Value>>,
    /// How many pods to create.
    pub create: usize,
    pub delete: Vec<Arc<Value>>,
    /// The status to report.
    pub status: Value,
    /// Look again then: a ready pod becomes available after minReadySeconds.
    pub recheck: Option<Duration>,
}

/// Decide for `rs` given the pods of its namespace.
pub fn plan(rs: &Value, pods: &[Arc<Value>], now: chrono::DateTime<chrono::Utc>) -> Plan {
    let uid = rs["metadata"]["uid"].as_str().unwrap_or("");
    let selector = LabelSelector::from_object(&rs["spec"]["selector"]).ok();
    let matches = |p: &Value| {
        selector
            .as_ref()
            .is_some_and(|s| !s.is_empty() && s.matches_object(p))
    };
    let replicas = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let min_ready = rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let mut plan = Plan::default();
    let mut mine: Vec<Arc<Value>> = Vec::new();
    for p in pods {
        match controller_of(p) {
            Some((_, _, owner)) if owner == uid => {
                if matches(p) {
                    mine.push(p.clone());
                } else {
                    plan.release.push(p.clone());
                }
            }
            None if matches(p) && is_active(p) && !meta::is_deleting(rs) => {
                plan.adopt.push(p.clone());
                mine.push(p.clone());
            }
            _ => {}
        }
    }
    let mut active: Vec<Arc<Value>> = mine.iter().filter(|p| is_active(p)).cloned().collect();
    if !meta::is_deleting(rs) {
        if active.len() < replicas {
            plan.create = replicas - active.len();
        } else if active.len() > replicas {
            active.sort_by_key(|p| deletion_rank(p));
            plan.delete = active[..active.len() - replicas].to_vec();
        }
    }
    let ready = active.iter().filter(|p| is_ready(p)).count();
    let available = active
        .iter()
        .filter(|p| is_available(p, min_ready, now))
        .count();
    if ready > available {
        plan.recheck = Some(Duration::from_secs(min_ready.max(1) as u64));
    }
    let template_labels = &rs["spec"]["template"]["metadata"]["labels"];
    let fully_labeled = active
        .iter()
        .filter(|p| {
            template_labels
                .as_object()
                .into_iter()
                .flatten()
                .all(|(k, v)| p["metadata"]["labels"][k] == *v)
        })
        .count();
    plan.status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": rs["metadata"]["generation"].as_i64().unwrap_or(1),
    });
    plan
}

/// Names this controller created or deleted and has not seen take effect.
#[derive(Default)]
pub(crate) struct Expectations {
    by_key: Mutex<HashMap<String, Pending>>,
}

/// Pods created and pods deleted that the cache does not show yet, and since when.
struct Pending {
    created: HashSet<String>,
    deleted: HashSet<String>,
    since: Instant,
}

/// Create `new` pods and delete the pods named `gone` for the controller
/// `key`, recording both as expectations first.
pub(crate) async fn create_and_delete(
    client: &Client,
    expectations: &Expectations,
    key: &str,
    ns: &str,
    new: &[Value],
    gone: &[String],
) -> Result<(), ClientError> {
    let pods = resources::lookup("pods").expect("pods are served");
    let names: Vec<String> = new.iter().map(|p| meta::name(p).to_string()).collect();
    expectations.expect(key, &names, gone);
    for p in new {
        if let Err(e) = client.create(pods, Some(ns), p).await {
            expectations.forget_created(key, meta::name(p));
            return Err(e);
        }
    }
    for name in gone {
        match client.delete(pods, Some(ns), name).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// After this long, expectations are given up on (a lost event).
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(300);

impl Expectations {
    pub(crate) fn expect(&self, key: &str, created: &[String], deleted: &[String]) {
        let mut m = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(key.to_string()).or_insert_with(|| Pending {
            created: HashSet::new(),
            deleted: HashSet::new(),
            since: Instant::now(),
        });
        e.created.extend(created.iter().cloned());
        e.deleted.extend(deleted.iter().cloned());
        e.since = Instant::now();
    }

    pub(crate) fn forget_created(&self, key: &str, name: &str) {
        if let Some(e) = self
            .by_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(key)
        {
            e.created.remove(name);
        }
    }

    /// Whether every expected change is visible in `pods` (by name).
    pub(crate) fn satisfied(&self, key: &str, pods: &[Arc<Value>]) -> bool {
        let mut m = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        let Some(Pending {
            created,
            deleted,
            since,
        }) = m.get_mut(key)
        else {
            return true;
        };
        let seen: HashMap<&str, &Value> =
            pods.iter().map(|p| (meta::name(p), p.as_ref())).collect();
        created.retain(|n| !seen.contains_key(n.as_str()));
        deleted.retain(|n| seen.get(n.as_str()).is_some_and(|p| !meta::is_deleting(p)));
        let done =
            (created.is_empty() && deleted.is_empty()) || since.elapsed() > EXPECTATION_TIMEOUT;
        if done {
            m.remove(key);
        }
        done
    }
}

struct Controller {
    client: Client,
    sets: Arc<Cache>,
    pods: Arc<Cache>,
    expectations: Expectations,
    rs_res: &'static Resource,
    pod_res: &'static Resource,
}

impl Controller {
    async fn manage(&self, key: &str, rs: &Value, plan: &Plan) -> Result<(), ClientError> {
        let ns = meta::namespace(rs);
        for p in &plan.adopt {
            let mut refs = p["metadata"]["ownerReferences"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            refs.push(owner_ref(rs, "apps/v1", "ReplicaSet"));
            let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": p["metadata"]["resourceVersion"]}});
            match self
                .client
                .merge_patch(self.pod_res, Some(ns), meta::name(p), &patch)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() || e.code() == Some(409) => {}
                Err(e) => return Err(e),
            }
        }
        for p in &plan.release {
            let uid = &rs["metadata"]["uid"];
            let refs: Vec<Value> = p["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|o| o["uid"] != *uid)
                .cloned()
                .collect();
            let refs = if refs.is_empty() {
                Value::Null
            } else {
                json!(refs)
            };
            let patch = json!({"metadata": {"ownerReferences": refs, "resourceVersion": p["metadata"]["resourceVersion"]}});
            match self
                .client
                .merge_patch(self.pod_res, Some(ns), meta::name(p), &patch)
                .await
            {
                Ok(_) => {}
                Err(e) if e.is_not_found() || e.code() == Some(409) => {}
                Err(e) => return Err(e),
            }
        }
        if plan.create > 0 {
            // slow start: 1, 2, 4 ... at a time, stopping at the first failure
            let mut left = plan.create;
            let mut batch = 1;
            while left > 0 {
                let n = batch.min(left);
                let pods: Vec<Value> = (0..n).map(|_| pod_from_template(rs)).collect();
                let names: Vec<String> = pods.iter().map(|p| meta::name(p).to_string()).collect();
                self.expectations.expect(key, &names, &[]);
                let results = futures::future::join_all(
                    pods.iter()
                        .map(|p| self.client.create(self.pod_res, Some(ns), p)),
                )
                .await;
                let mut failed = None;
                for (name, r) in names.iter().zip(results) {
                    if let Err(e) = r {
                        self.expectations.forget_created(key, name);
                        failed = Some(e);
                    }
                }
                if let Some(e) = failed {
                    return Err(e);
                }
                left -= n;
                batch *= 2;
            }
        }
        if !plan.delete.is_empty() {
            let names: Vec<String> = plan
                .delete
                .iter()
                .map(|p| meta::name(p).to_string())
                .collect();
            self.expectations.expect(key, &[], &names);
            for name in &names {
                match self.client.delete(self.pod_res, Some(ns), name).await {
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

impl Reconcile for Controller {
    async fn reconcile(&self, key: String) -> Result<Next, ClientError> {
        let Some(rs) = self.sets.get(&key) else {
            self.expectations
                .by_key
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            return Ok(Next::Done);
        };
        let ns = meta::namespace(&rs).to_string();
        let pods = self.pods.in_namespace(&ns);
        let plan = plan(&rs, &pods, chrono::Utc::now());
        if self.expectations.satisfied(&key, &pods) {
            self.manage(&key, &rs, &plan).await?;
        }
        if !runtime::update_status(&self.client, self.rs_res, &rs, &plan.status).await? {
            return Ok(Next::Done);
        }
        Ok(plan.recheck.map_or(Next::Done, Next::After))
    }
}

/// A new pod from the ReplicaSet's template, named `RS-xxxxx`.
pub fn pod_from_template(rs: &Value) -> Value {
    let t = &rs["spec"]["template"];
    let mut metadata = json!({
        "name": format!("{}-{}", meta::name(rs), meta::random_suffix()),
        "namespace": meta::namespace(rs),
        "ownerReferences": [owner_ref(rs, "apps/v1", "ReplicaSet")],
    });
    for k in ["labels", "annotations"] {
        if t["metadata"][k].is_object() {
            metadata[k] = t["metadata"][k].clone();
        }
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": t["spec"]})
}

/// Run the ReplicaSet controller until `cancel`.
pub async fn run(client: Client, cancel: CancelToken) {
    let rs_res = resources::lookup("replicasets").expect("replicasets are served");
    let pod_res = resources::lookup("pods").expect("pods are served");
    let (sets, pods) = (Cache::new(), Cache::new());
    let queue = WorkQueue::new();
    let on_pod = {
        let (queue, sets) = (queue.clone(), sets.clone());
        move |c: Change| {
            let p = c.object();
            let ns = meta::namespace(p);
            match controller_of(p) {
                Some(("ReplicaSet", name, _)) => queue.add(&format!("{ns}/{name}")),
                Some(_) => {}
                None => {
                    // an orphan: any ReplicaSet that selects it may adopt it
                    for rs in sets.in_namespace(ns) {
                        if LabelSelector::from_object(&rs["spec"]["selector"])
                            .is_ok_and(|s| !s.is_empty() && s.matches_object(p))
                        {
                            queue.add(&runtime::key_of(&rs));
                        }
                    }
                }
            }
        }
    };
    let watches = vec![
        Watch::new("replicasets", &sets, runtime::enqueue_self(&queue)),
        Watch::new("pods", &pods, on_pod),
    ];
    let controller = Arc::new(Controller {
        client: client.clone(),
        sets,
        pods,
        expectations: Expectations::default(),
        rs_res,
        pod_res,
    });
    runtime::run_controller("replicaset", &client, watches, queue, 4, controller, cancel).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(replicas: i64) -> Value {
        json!({"metadata": {"name": "web", "namespace": "d", "uid": "rs-1", "generation": 2},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    }

    fn pod(name: &str, owner: Option<&str>, node: &str, ready: bool, created: &str) -> Arc<Value> {
        let mut p = json!({"metadata": {"name": name, "namespace": "d", "labels": {"app": "web"}, "creationTimestamp": created},
            "spec": {"nodeName": node}, "status": {"phase": if node.is_empty() { "Pending" } else { "Running" },
            "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        if let Some(uid) = owner {
            p["metadata"]["ownerReferences"] =
                json!([{"kind": "ReplicaSet", "name": "web", "uid": uid, "controller": true}]);
        }
        Arc::new(p)
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-01-01T00:01:00Z")
            .unwrap()
            .into()
    }

    #[test]
    fn creates_the_missing_adopts_orphans_and_ignores_others_pods() {
        let pods = vec![
            pod("a", Some("rs-1"), "n", true, "t1"),
            pod("orphan", None, "n", true, "t2"),
            pod("theirs", Some("rs-2"), "n", true, "t3"),
        ];
        let p = plan(&rs(4), &pods, now());
        assert_eq!(p.adopt.len(), 1);
        assert_eq!(p.create, 2);
        assert!(p.delete.is_empty());
        assert_eq!(p.status["replicas"], 2);
        assert_eq!(p.status["readyReplicas"], 2);
        assert_eq!(p.status["observedGeneration"], 2);
    }

    #[test]
    fn surplus_pods_go_unscheduled_then_unready_then_newest_first() {
        let pods = vec![
            pod("old-ready", Some("rs-1"), "n", true, "2026-01-01T00:00:01Z"),
            pod("new-ready", Some("rs-1"), "n", true, "2026-01-01T00:00:09Z"),
            pod("unready", Some("rs-1"), "n", false, "2026-01-01T00:00:02Z"),
            pod(
                "unscheduled",
                Some("rs-1"),
                "",
                false,
                "2026-01-01T00:00:03Z",
            ),
        ];
        let p = plan(&rs(1), &pods, now());
        let names: Vec<&str> = p.delete.iter().map(|p| meta::name(p)).collect();
        assert_eq!(names, ["unscheduled", "unready", "new-ready"]);
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let mut set = rs(1);
        set["spec"]["minReadySeconds"] = json!(120);
        let pods = vec![pod("a", Some("rs-1"), "n", true, "t")];
        let p = plan(&set, &pods, now());
        assert_eq!(
            (
                p.status["readyReplicas"].as_i64(),
                p.status["availableReplicas"].as_i64()
            ),
            (Some(1), Some(0))
        );
        assert!(p.recheck.is_some());
        let later = now() + chrono::Duration::seconds(120);
        assert_eq!(plan(&set, &pods, later).status["availableReplicas"], 1);
    }

    #[test]
    fn a_pod_that_no_longer_matches_is_released() {
        let mut p = (*pod("a", Some("rs-1"), "n", true, "t")).clone();
        p["metadata"]["labels"] = json!({"app": "debug"});
        let plan = plan(&rs(1), &[Arc::new(p)], now());
        assert_eq!(plan.release.len(), 1);
        assert_eq!(plan.create, 1);
    }

    proptest::proptest! {
        /// Whatever pods exist, carrying out the plan leaves exactly
        /// `replicas` active pods of this ReplicaSet, and it never touches
        /// another controller's pods.
        #[test]
        fn the_plan_converges_on_replicas(
            replicas in 0i64..8,
            kinds in proptest::collection::vec((0u8..3, 0u8..3, proptest::bool::ANY), 0..12),
        ) {
            let pods: Vec<Arc<Value>> = kinds.iter().enumerate().map(|(i, (owner, phase, ready))| {
                let owner = match owner { 0 => Some("rs-1"), 1 => None, _ => Some("rs-2") };
                let mut p = (*pod(&format!("p{i}"), owner, "n", *ready, &format!("2026-01-01T00:00:{i:02}Z"))).clone();
                p["status"]["phase"] = json!(["Running", "Pending", "Succeeded"][*phase as usize]);
                Arc::new(p)
            }).collect();
            let p = plan(&rs(replicas), &pods, now());
            let active_now = pods.iter().filter(|p| {
                (controller_of(p).map(|c| c.2) == Some("rs-1")) && is_active(p)
            }).count() as i64;
            let adopted = p.adopt.iter().filter(|p| is_active(p)).count() as i64;
            let after = active_now + adopted + p.create as i64 - p.delete.len() as i64;
            proptest::prop_assert_eq!(after, replicas);
            for d in p.delete.iter().chain(p.adopt.iter()) {
                proptest::prop_assert!(controller_of(d).map(|c| c.2) != Some("rs-2"));
            }
        }
    }

    #[test]
    fn expectations_wait_for_our_own_writes() {
        let e = Expectations::default();
        e.expect("d/web", &["web-a".into()], &["web-old".into()]);
        let old = pod("web-old", Some("rs-1"), "n", true, "t");
        assert!(!e.satisfied("d/web", std::slice::from_ref(&old)));
        let created = pod("web-a", Some("rs-1"), "n", false, "t");
        assert!(
            !e.satisfied("d/web", &[created.clone(), old]),
            "the deleted pod is still there"
        );
        assert!(e.satisfied("d/web", &[created]));
    }
}
