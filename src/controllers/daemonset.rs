//! The DaemonSet controller: one pod per eligible node (the template's
//! `nodeSelector` and required node affinity, tolerated taints, the runtime
//! it needs), following nodes as they join and leave, and rolling template
//! changes out node by node within `maxUnavailable`.
//!
//! Pods are bound directly to their node (`spec.nodeName`). They tolerate
//! the unreachable and not-ready taints, as Kubernetes gives daemon pods,
//! so losing a node does not evict them. [`plan`] decides (pure).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::history::{self, POD_LABEL};
use super::replicaset::{create_and_delete, is_ready, owner_ref, Expectations};
use super::scheduler::{required_runtime, tolerates, NodeInfo};
use super::CancelToken;
use crate::api::{meta, resources};
use crate::client::runtime::{self, Cache, Change, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};

/// Whether a daemon pod from `template` belongs on `node`.
pub fn eligible(template: &Value, node: &Value) -> bool {
    let info = NodeInfo::from_node(node);
    let pod = json!({"spec": template["spec"]});
    let selector_ok = template["spec"]["nodeSelector"]
        .as_object()
        .into_iter()
        .flatten()
        .all(|(k, v)| info.labels.get(k).map(String::as_str) == v.as_str());
    let terms = &template["spec"]["affinity"]["nodeAffinity"]
        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    let affinity_ok = match terms.as_array() {
        Some(ts) if !ts.is_empty() => ts.iter().any(|t| {
            t["matchExpressions"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|r| {
                    let key = r["key"].as_str().unwrap_or("");
                    let values: Vec<&str> = r["values"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    let have = info.labels.get(key);
                    match r["operator"].as_str().unwrap_or("") {
                        "In" => have.is_some_and(|v| values.contains(&v.as_str())),
                        "NotIn" => have.is_none_or(|v| !values.contains(&v.as_str())),
                        "Exists" => have.is_some(),
                        "DoesNotExist" => have.is_none(),
                        _ => false,
                    }
                })
        }),
        _ => true,
    };
    let tolerations = daemon_tolerations(&template["spec"]["tolerations"]);
    let taints_ok = info.taints.iter().all(|t| {
        !matches!(t["effect"].as_str(), Some("NoSchedule" | "NoExecute"))
            || tolerations.iter().any(|tol| tolerates(tol, t))
    });
    selector_ok && affinity_ok && taints_ok && info.offers(&required_runtime(&pod))
}

/// The template's tolerations plus those every daemon pod gets.
fn daemon_tolerations(own: &Value) -> Vec<Value> {
    let mut t = own.as_array().cloned().unwrap_or_default();
    for key in [
        "node.kubernetes.io/not-ready",
        "node.kubernetes.io/unreachable",
    ] {
        t.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute"}));
    }
    t.push(json!({"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}));
    t
}

/// What to do for one DaemonSet.
#[derive(Debug, Default)]
pub struct Plan {
    /// Nodes that need a pod.
    pub create: Vec<String>,
    pub delete: Vec<Arc<Value>>,
    pub status: Value,
}

/// Decide for `ds` given the nodes and its pods.
pub fn plan(ds: &Value, nodes: &[Arc<Value>], pods: &[Arc<Value>]) -> Plan {
    let template = &ds["spec"]["template"];
    let hash = history::hash(template);
    let mut plan = Plan::default();
    let live: Vec<&Arc<Value>> = pods.iter().filter(|p| !meta::is_deleting(p)).collect();
    let mut by_node: BTreeMap<&str, Vec<&Arc<Value>>> = BTreeMap::new();
    for p in &live {
        by_node
            .entry(p["spec"]["nodeName"].as_str().unwrap_or(""))
            .or_default()
            .push(p);
    }
    let eligible_nodes: Vec<&str> = nodes
        .iter()
        .filter(|n| eligible(template, n))
        .map(|n| meta::name(n))
        .collect();
    let max_unavailable = match &ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] {
        Value::Number(n) => n.as_u64().unwrap_or(1) as usize,
        Value::String(s) => s
            .strip_suffix('%')
            .and_then(|p| p.parse::<usize>().ok())
            .map(|p| (p * eligible_nodes.len()).div_ceil(100).max(1))
            .unwrap_or(1),
        _ => 1,
    };
    let on_delete = ds["spec"]["updateStrategy"]["type"] == "OnDelete";
    let mut misscheduled = 0;
    let mut unavailable = 0;
    let mut outdated = Vec::new();
    let (mut ready, mut updated) = (0, 0);
    for (node, pods) in &by_node {
        if !eligible_nodes.contains(node) {
            misscheduled += pods.len();
            plan.delete.extend(pods.iter().map(|p| (*p).clone()));
            continue;
        }
        // one pod per node: extras go, the newest first
        let mut pods = pods.clone();
        pods.sort_by_key(|p| {
            p["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or("")
                .to_string()
        });
        plan.delete
            .extend(pods.iter().skip(1).map(|p| (*p).clone()));
        let p = pods[0];
        if is_ready(p) {
            ready += 1;
        } else {
            unavailable += 1;
        }
        if p["metadata"]["labels"][POD_LABEL] == hash.as_str() {
            updated += 1;
        } else if !on_delete {
            outdated.push(p);
        }
    }
    for n in &eligible_nodes {
        if !by_node.contains_key(n) {
            plan.create.push(n.to_string());
            unavailable += 1;
        }
    }
    // roll: replace outdated pods, unready ones first, within maxUnavailable
    outdated.sort_by_key(|p| is_ready(p));
    let mut budget = max_unavailable.saturating_sub(unavailable);
    for p in outdated {
        if !is_ready(p) {
            plan.delete.push(p.clone());
        } else if budget > 0 {
            budget -= 1;
            plan.delete.push(p.clone());
        }
    }
    let scheduled = eligible_nodes
        .iter()
        .filter(|n| by_node.contains_key(*n))
        .count();
    plan.status = json!({
        "desiredNumberScheduled": eligible_nodes.len(),
        "currentNumberScheduled": scheduled,
        "numberMisscheduled": misscheduled,
        "numberReady": ready,
        "numberAvailable": ready,
        "numberUnavailable": eligible_nodes.len().saturating_sub(ready),
        "updatedNumberScheduled": updated,
        "observedGeneration": ds["metadata"]["generation"].as_i64().unwrap_or(1),
    });
    plan
}

fn pod_for(ds: &Value, node: &str) -> Value {
    let t = &ds["spec"]["template"];
    let mut labels = t["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels[POD_LABEL] = json!(history::hash(t));
    let mut spec = t["spec"].clone();
    spec["nodeName"] = json!(node);
    spec["tolerations"] = json!(daemon_tolerations(&t["spec"]["tolerations"]));
    let mut metadata = json!({
        "name": format!("{}-{}", meta::name(ds), meta::random_suffix()),
        "namespace": meta::namespace(ds),
        "labels": labels,
        "ownerReferences": [owner_ref(ds, "apps/v1", "DaemonSet")],
    });
    if t["metadata"]["annotations"].is_object() {
        metadata["annotations"] = t["metadata"]["annotations"].clone();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

struct Controller {
    client: Client,
    sets: Arc<Cache>,
    nodes: Arc<Cache>,
    pods: Arc<Cache>,
    revisions: Arc<Cache>,
    expectations: Expectations,
}

impl Reconcile for Controller {
    async fn reconcile(&self, key: String) -> Result<Next, ClientError> {
        let Some(ds) = self.sets.get_live(&key) else {
            return Ok(Next::Done);
        };
        let ns = meta::namespace(&ds).to_string();
        let uid = ds["metadata"]["uid"].as_str().unwrap_or("");
        let pods: Vec<Arc<Value>> = self.pods.owned_by(&ns, uid);
        let revisions = self.revisions.owned_by(&ns, uid);
        let in_use: Vec<String> = pods
            .iter()
            .filter_map(|p| p["metadata"]["labels"][POD_LABEL].as_str())
            .map(|h| format!("{}-{h}", meta::name(&ds)))
            .collect();
        history::apply(
            &self.client,
            &ds,
            &history::plan(&ds, "DaemonSet", &revisions, &in_use),
        )
        .await?;
        let plan = plan(&ds, &self.nodes.all(), &pods);
        if self.expectations.satisfied(&key, &pods) {
            let new: Vec<Value> = plan.create.iter().map(|n| pod_for(&ds, n)).collect();
            let gone: Vec<String> = plan
                .delete
                .iter()
                .map(|p| meta::name(p).to_string())
                .collect();
            create_and_delete(&self.client, &self.expectations, &key, &ns, &new, &gone).await?;
        }
        let res = resources::lookup("daemonsets").expect("daemonsets are served");
        runtime::update_status(&self.client, res, &ds, &plan.status).await?;
        Ok(Next::Done)
    }
}

/// Run the DaemonSet controller until `cancel`.
pub async fn run(client: Client, cancel: CancelToken) {
    let (sets, nodes, pods, revisions) = (Cache::new(), Cache::new(), Cache::new(), Cache::new());
    let queue = WorkQueue::new();
    let on_node = {
        let (queue, sets) = (queue.clone(), sets.clone());
        move |_c: Change| {
            for ds in sets.all() {
                queue.add(&runtime::key_of(&ds));
            }
        }
    };
    let watches = vec![
        Watch::new("daemonsets", &sets, runtime::enqueue_self(&queue)),
        Watch::new("nodes", &nodes, on_node),
        Watch::new(
            "pods",
            &pods,
            runtime::enqueue_controller(&queue, "DaemonSet"),
        ),
        Watch::new(
            "controllerrevisions",
            &revisions,
            runtime::enqueue_controller(&queue, "DaemonSet"),
        ),
    ];
    let controller = Arc::new(Controller {
        client: client.clone(),
        sets,
        nodes,
        pods,
        revisions,
        expectations: Expectations::default(),
    });
    runtime::run_controller("daemonset", &client, watches, queue, 2, controller, cancel).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, labels: Value, taints: Value) -> Arc<Value> {
        let mut labels = labels;
        labels["kubernetes.io/hostname"] = json!(name);
        Arc::new(
            json!({"metadata": {"name": name, "labels": labels}, "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}),
        )
    }

    fn ds(selector: Value) -> Value {
        json!({"metadata": {"name": "agent", "namespace": "d", "uid": "ds-1", "generation": 1},
            "spec": {"selector": {"matchLabels": {"app": "agent"}},
                "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"nodeSelector": selector, "containers": [{"name": "c", "image": "i"}]}}}})
    }

    fn pod_on(d: &Value, node: &str, ready: bool) -> Arc<Value> {
        let mut p = pod_for(d, node);
        p["status"] = json!({"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]});
        Arc::new(p)
    }

    #[test]
    fn one_pod_per_eligible_node() {
        let nodes = vec![
            node("a", json!({"edge": "true"}), json!([])),
            node(
                "b",
                json!({"edge": "true"}),
                json!([{"key": "gpu", "effect": "NoSchedule"}]),
            ),
            node("c", json!({}), json!([])),
            node(
                "d",
                json!({"edge": "true"}),
                json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}]),
            ),
        ];
        let d = ds(json!({"edge": "true"}));
        let p = plan(&d, &nodes, &[]);
        assert_eq!(
            p.create,
            ["a", "d"],
            "not the tainted node, not the unlabelled one; daemons tolerate unreachable"
        );
        // a pod on a node that no longer qualifies goes
        let stray = pod_on(&d, "c", true);
        let p = plan(
            &d,
            &nodes,
            &[stray, pod_on(&d, "a", true), pod_on(&d, "d", true)],
        );
        assert!(p.create.is_empty());
        assert_eq!(p.delete.len(), 1);
        assert_eq!(p.status["numberMisscheduled"], 1);
        assert_eq!(p.status["desiredNumberScheduled"], 2);
    }

    #[test]
    fn a_template_change_rolls_within_max_unavailable() {
        let nodes: Vec<Arc<Value>> = ["a", "b", "c"]
            .iter()
            .map(|n| node(n, json!({}), json!([])))
            .collect();
        let v1 = ds(json!({}));
        let pods: Vec<Arc<Value>> = ["a", "b", "c"]
            .iter()
            .map(|n| pod_on(&v1, n, true))
            .collect();
        let mut v2 = v1.clone();
        v2["spec"]["template"]["spec"]["containers"][0]["image"] = json!("i2");
        let p = plan(&v2, &nodes, &pods);
        assert_eq!(p.delete.len(), 1, "maxUnavailable 1: one node at a time");
        assert_eq!(p.status["updatedNumberScheduled"], 0);
        v2["spec"]["updateStrategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 2}});
        assert_eq!(plan(&v2, &nodes, &pods).delete.len(), 2);
    }
}
