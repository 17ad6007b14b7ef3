//! The disruption controller: keeps each PodDisruptionBudget's status (how
//! many of its pods are healthy, how many must be, how many may be
//! disrupted now), which the `pods/eviction` subresource consults before it
//! deletes a pod. As kube-controller-manager's: an integer `minAvailable`
//! counts the matching pods; a percentage or `maxUnavailable` is scaled
//! against the replicas of the pods' controllers (Deployment, ReplicaSet,
//! StatefulSet). Evictions the API server has granted (`disruptedPods`)
//! count as gone until their pods are, or for two minutes.
//!
//! [`status`] decides (pure).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::replicaset::is_ready;
use super::CancelToken;
use crate::api::selector::LabelSelector;
use crate::api::{meta, resources};
use crate::client::runtime::{self, Cache, Change, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};

/// How long a granted eviction counts against the budget while its pod
/// is not yet seen going (kube's `DeletionTimeout`).
pub const DISRUPTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Whether `pdb` selects `pod` (policy/v1: an empty selector selects every
/// pod of the namespace, a missing one none).
pub fn selects(pdb: &Value, pod: &Value) -> bool {
    if meta::namespace(pdb) != meta::namespace(pod) {
        return false;
    }
    match pdb.pointer("/spec/selector") {
        None | Some(Value::Null) => false,
        Some(sel) => LabelSelector::from_object(sel).is_ok_and(|s| s.matches_object(pod)),
    }
}

/// `value` of an int-or-percent against `total`, rounding up as kube does.
pub fn scaled(value: &Value, total: i64) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => {
            let pct: i64 = s.strip_suffix('%')?.parse().ok()?;
            Some((pct * total + 99) / 100)
        }
        _ => None,
    }
}

/// The replicas the controllers of `pods` want: what a percentage or
/// `maxUnavailable` is taken of. `scale_of(kind, namespace, name)` reads
/// a controller's `spec.replicas` and, for a ReplicaSet a Deployment
/// owns, returns the Deployment's instead.
pub fn expected_scale(
    pods: &[&Value],
    scale_of: &dyn Fn(&str, &str, &str) -> Option<i64>,
) -> Result<i64, String> {
    let mut controllers: BTreeMap<(String, String), i64> = BTreeMap::new();
    for p in pods {
        let owner = p["metadata"]["ownerReferences"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["controller"] == true))
            .ok_or_else(|| format!("found no controller ref for pod {:?}", meta::name(p)))?;
        let kind = owner["kind"].as_str().unwrap_or_default();
        let name = owner["name"].as_str().unwrap_or_default();
        let replicas = scale_of(kind, meta::namespace(p), name)
            .ok_or_else(|| format!("found no controllers for pod {:?}", meta::name(p)))?;
        controllers.insert((kind.to_string(), name.to_string()), replicas);
    }
    Ok(controllers.values().sum())
}

/// The status of `pdb` given the pods it selects, the scale of their
/// controllers (when the budget needs it), and the time now (RFC 3339).
pub fn status(
    pdb: &Value,
    pods: &[&Value],
    scale: &dyn Fn(&[&Value]) -> Result<i64, String>,
    now: chrono::DateTime<chrono::Utc>,
) -> Value {
    let spec = &pdb["spec"];
    let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(1);
    let (expected, desired) = if let Some(max) = spec.get("maxUnavailable").filter(|v| !v.is_null())
    {
        match scale(pods) {
            Ok(expected) => {
                let max = scaled(max, expected).unwrap_or(0);
                (Ok(expected), (expected - max).max(0))
            }
            Err(e) => (Err(e), 0),
        }
    } else {
        match spec.get("minAvailable") {
            Some(Value::Number(n)) => (Ok(pods.len() as i64), n.as_i64().unwrap_or(0)),
            Some(v @ Value::String(_)) => match scale(pods) {
                Ok(expected) => (Ok(expected), scaled(v, expected).unwrap_or(0)),
                Err(e) => (Err(e), 0),
            },
            _ => (Ok(0), 0),
        }
    };
    // granted evictions still pending count as disrupted
    let mut disrupted = Map::new();
    for (name, at) in pdb["status"]["disruptedPods"]
        .as_object()
        .into_iter()
        .flatten()
    {
        let Some(t) = at
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        else {
            continue;
        };
        let expired =
            now.signed_duration_since(t).to_std().unwrap_or_default() > DISRUPTION_TIMEOUT;
        let pod = pods.iter().find(|p| meta::name(p) == name);
        if !expired && pod.is_some_and(|p| !meta::is_deleting(p)) {
            disrupted.insert(name.clone(), at.clone());
        }
    }
    let healthy = pods
        .iter()
        .filter(|p| !meta::is_deleting(p) && !disrupted.contains_key(meta::name(p)) && is_ready(p))
        .count() as i64;
    let (allowed, condition) = match &expected {
        Ok(_) => {
            let allowed = (healthy - desired).max(0);
            let (st, reason) = if allowed > 0 {
                ("True", "SufficientPods")
            } else {
                ("False", "InsufficientPods")
            };
            (
                allowed,
                json!({"type": "DisruptionAllowed", "status": st, "reason": reason, "message": ""}),
            )
        }
        Err(e) => (
            0,
            json!({"type": "DisruptionAllowed", "status": "False", "reason": "SyncFailed", "message": e}),
        ),
    };
    let mut condition = condition;
    // the transition time moves only when the status does
    let previous = pdb["status"]["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "DisruptionAllowed"));
    condition["lastTransitionTime"] = match previous {
        Some(p) if p["status"] == condition["status"] && p["reason"] == condition["reason"] => {
            p["lastTransitionTime"].clone()
        }
        _ => json!(now.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
    };
    condition["observedGeneration"] = json!(generation);
    let mut out = json!({
        "observedGeneration": generation,
        "disruptionsAllowed": allowed,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected.as_ref().copied().unwrap_or(0),
        "conditions": [condition],
    });
    if !disrupted.is_empty() {
        out["disruptedPods"] = Value::Object(disrupted);
    }
    out
}

struct Controller {
    client: Client,
    pdbs: Arc<Cache>,
    pods: Arc<Cache>,
    replicasets: Arc<Cache>,
    deployments: Arc<Cache>,
    statefulsets: Arc<Cache>,
}

impl Controller {
    fn scale_of(&self, kind: &str, ns: &str, name: &str) -> Option<i64> {
        let key = format!("{ns}/{name}");
        let replicas = |o: &Value| o["spec"]["replicas"].as_i64().or(Some(1));
        match kind {
            "ReplicaSet" => {
                let rs = self.replicasets.get(&key)?;
                let deployment = rs["metadata"]["ownerReferences"]
                    .as_array()
                    .and_then(|r| {
                        r.iter()
                            .find(|r| r["controller"] == true && r["kind"] == "Deployment")
                    })
                    .and_then(|r| r["name"].as_str())
                    .and_then(|d| self.deployments.get(&format!("{ns}/{d}")));
                match deployment {
                    Some(d) => replicas(&d),
                    None => replicas(&rs),
                }
            }
            "Deployment" => replicas(&*self.deployments.get(&key)?),
            "StatefulSet" => replicas(&*self.statefulsets.get(&key)?),
            _ => None,
        }
    }
}

impl Reconcile for Controller {
    async fn reconcile(&self, key: String) -> Result<Next, ClientError> {
        let Some(pdb) = self.pdbs.get_live(&key) else {
            return Ok(Next::Done);
        };
        let pods = self.pods.in_namespace(meta::namespace(&pdb));
        let selected: Vec<&Value> = pods
            .iter()
            .map(|p| &**p)
            .filter(|p| selects(&pdb, p))
            .collect();
        let now = chrono::Utc::now();
        let next = status(
            &pdb,
            &selected,
            &|pods| expected_scale(pods, &|k, ns, n| self.scale_of(k, ns, n)),
            now,
        );
        // look again when a granted eviction expires
        let again = if next.get("disruptedPods").is_some() {
            Next::After(DISRUPTION_TIMEOUT)
        } else {
            Next::Done
        };
        if pdb["status"] == next {
            return Ok(again);
        }
        let res = resources::lookup("poddisruptionbudgets").expect("served");
        let mut obj = (*pdb).clone();
        obj["status"] = next;
        let path = format!(
            "{}/status",
            res.object_path(Some(meta::namespace(&pdb)), meta::name(&pdb))
        );
        match self
            .client
            .request(reqwest::Method::PUT, &path, Some(&obj))
            .await
        {
            Ok(_) => Ok(again),
            // changed meanwhile (an eviction): the watch brings it back
            Err(e) if matches!(e.code(), Some(404 | 409)) => Ok(Next::Done),
            Err(e) => Err(e),
        }
    }
}

/// Run until `cancel`.
pub async fn run(client: Client, cancel: CancelToken) {
    let pdbs = Cache::new();
    let pods = Cache::new();
    let replicasets = Cache::new();
    let deployments = Cache::new();
    let statefulsets = Cache::new();
    let queue = WorkQueue::new();
    // any change in a namespace with budgets may move them
    let by_namespace = |queue: &Arc<WorkQueue>, pdbs: &Arc<Cache>| {
        let (queue, pdbs) = (queue.clone(), pdbs.clone());
        move |c: Change| {
            let obj = match &c {
                Change::Applied(o) | Change::Deleted(o) => o,
            };
            for pdb in pdbs.in_namespace(meta::namespace(obj)) {
                queue.add(&runtime::key_of(&pdb));
            }
        }
    };
    let watches = vec![
        Watch::new("poddisruptionbudgets", &pdbs, runtime::enqueue_self(&queue)),
        Watch::new("pods", &pods, by_namespace(&queue, &pdbs)),
        Watch::new("replicasets", &replicasets, by_namespace(&queue, &pdbs)),
        Watch::new("deployments", &deployments, by_namespace(&queue, &pdbs)),
        Watch::new("statefulsets", &statefulsets, by_namespace(&queue, &pdbs)),
    ];
    let controller = Arc::new(Controller {
        client: client.clone(),
        pdbs,
        pods,
        replicasets,
        deployments,
        statefulsets,
    });
    runtime::run_controller(
        "disruption-controller",
        &client,
        watches,
        queue,
        1,
        controller,
        cancel,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ready: bool, owner: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"},
                "ownerReferences": [{"kind": "ReplicaSet", "name": owner, "controller": true}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}})
    }

    fn pdb(spec: Value) -> Value {
        let mut spec = spec;
        spec["selector"] = json!({"matchLabels": {"app": "web"}});
        json!({"metadata": {"name": "b", "namespace": "default", "generation": 2}, "spec": spec})
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339("2026-12-01T06:00:00Z")
            .unwrap()
            .to_utc()
    }

    fn run(pdb: &Value, pods: &[Value], replicas: i64) -> Value {
        let refs: Vec<&Value> = pods.iter().collect();
        status(pdb, &refs, &|_| Ok(replicas), now())
    }

    #[test]
    fn min_available_counts_the_selected_pods() {
        let pods = [
            pod("a", true, "rs"),
            pod("b", true, "rs"),
            pod("c", false, "rs"),
        ];
        let s = run(&pdb(json!({"minAvailable": 1})), &pods, 3);
        assert_eq!(s["currentHealthy"], 2);
        assert_eq!(s["desiredHealthy"], 1);
        assert_eq!(s["expectedPods"], 3);
        assert_eq!(s["disruptionsAllowed"], 1);
        assert_eq!(s["observedGeneration"], 2);
        assert_eq!(s["conditions"][0]["reason"], "SufficientPods");
        let s = run(&pdb(json!({"minAvailable": 2})), &pods, 3);
        assert_eq!(s["disruptionsAllowed"], 0);
        assert_eq!(s["conditions"][0]["status"], "False");
    }

    #[test]
    fn percentages_and_max_unavailable_scale_with_the_controllers() {
        let pods = [
            pod("a", true, "rs"),
            pod("b", true, "rs"),
            pod("c", true, "rs"),
        ];
        // 50% of 4 wanted replicas, rounded up: 2 must stay
        let s = run(&pdb(json!({"minAvailable": "50%"})), &pods, 4);
        assert_eq!(
            (s["expectedPods"].as_i64(), s["desiredHealthy"].as_i64()),
            (Some(4), Some(2))
        );
        assert_eq!(s["disruptionsAllowed"], 1);
        let s = run(&pdb(json!({"maxUnavailable": 1})), &pods, 3);
        assert_eq!(s["desiredHealthy"], 2);
        assert_eq!(s["disruptionsAllowed"], 1);
        let s = run(&pdb(json!({"maxUnavailable": "0%"})), &pods, 3);
        assert_eq!(s["disruptionsAllowed"], 0);
        let refs: Vec<&Value> = pods.iter().collect();
        let s = status(
            &pdb(json!({"maxUnavailable": 1})),
            &refs,
            &|_| Err("found no controllers for pod \"a\"".into()),
            now(),
        );
        assert_eq!(s["disruptionsAllowed"], 0);
        assert_eq!(s["conditions"][0]["reason"], "SyncFailed");
    }

    #[test]
    fn granted_evictions_count_until_their_pods_go_or_they_expire() {
        let pods = [pod("a", true, "rs"), pod("b", true, "rs")];
        let mut b = pdb(json!({"minAvailable": 1}));
        b["status"] = json!({"disruptedPods": {"a": "2026-12-01T05:59:30Z", "gone": "2026-12-01T05:59:30Z", "b": "2026-12-01T05:50:00Z"}});
        let s = run(&b, &pods, 2);
        assert_eq!(s["disruptedPods"], json!({"a": "2026-12-01T05:59:30Z"}));
        assert_eq!(s["currentHealthy"], 1);
        assert_eq!(s["disruptionsAllowed"], 0);
    }

    #[test]
    fn selectors_and_controller_scale() {
        let p = pod("a", true, "rs");
        assert!(selects(&pdb(json!({})), &p));
        let mut all = pdb(json!({}));
        all["spec"]["selector"] = json!({});
        assert!(selects(&all, &p));
        all["spec"].as_object_mut().unwrap().remove("selector");
        assert!(!selects(&all, &p));
        let pods = [
            pod("a", true, "rs1"),
            pod("b", true, "rs1"),
            pod("c", true, "rs2"),
        ];
        let refs: Vec<&Value> = pods.iter().collect();
        let total = expected_scale(&refs, &|_, _, n| Some(if n == "rs1" { 2 } else { 5 }));
        assert_eq!(total, Ok(7));
        let mut orphan = pod("d", true, "x");
        orphan["metadata"]["ownerReferences"] = json!([]);
        assert!(expected_scale(&[&orphan], &|_, _, _| Some(1)).is_err());
    }
}
