//! The StatefulSet controller: pods with stable names `NAME-0 .. NAME-(n-1)`
//! and stable storage (one claim per `volumeClaimTemplates` entry and
//! ordinal, `TEMPLATE-NAME-i`, never deleted with the pod, so a recreated
//! pod gets its data back, on the node that holds it), created in order and
//! removed from the highest ordinal (`OrderedReady`) or all at once
//! (`Parallel`); template changes roll from the highest ordinal down to
//! `partition`, one pod at a time.
//!
//! [`plan`] decides (pure).

use std::sync::Arc;

use serde_json::{json, Value};

use super::history::{self, POD_LABEL};
use super::replicaset::{is_ready, owner_ref};
use super::CancelToken;
use crate::api::{meta, resources};
use crate::client::runtime::{self, Cache, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};

/// What to do for one StatefulSet.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Claims to create (names).
    pub claims: Vec<String>,
    /// Ordinals to create pods for.
    pub create: Vec<usize>,
    /// Pods to delete (names).
    pub delete: Vec<String>,
    pub status: Value,
}

fn ordinal(sts: &Value, pod: &Value) -> Option<usize> {
    meta::name(pod)
        .strip_prefix(&format!("{}-", meta::name(sts)))?
        .parse()
        .ok()
}

/// The claim names of ordinal `i`.
pub fn claim_names(sts: &Value, i: usize) -> Vec<String> {
    sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|t| format!("{}-{}-{i}", meta::name(t), meta::name(sts)))
        .collect()
}

/// Decide for `sts` given its pods and the names of existing claims.
pub fn plan(sts: &Value, pods: &[Arc<Value>], claims: &[String]) -> Plan {
    let replicas = sts["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let parallel = sts["spec"]["podManagementPolicy"] == "Parallel";
    let hash = history::hash(&sts["spec"]["template"]);
    let partition = sts["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
        .as_i64()
        .unwrap_or(0)
        .max(0) as usize;
    let on_delete = sts["spec"]["updateStrategy"]["type"] == "OnDelete";
    let revision = format!("{}-{hash}", meta::name(sts));
    let mut plan = Plan::default();
    let mut by_ordinal: Vec<Option<&Arc<Value>>> = vec![None; replicas];
    let mut extra: Vec<(usize, &Arc<Value>)> = Vec::new();
    let mut terminating = false;
    for p in pods {
        let Some(i) = ordinal(sts, p) else { continue };
        if meta::is_deleting(p) {
            terminating = true;
            continue;
        }
        if i < replicas {
            by_ordinal[i] = Some(p);
        } else {
            extra.push((i, p));
        }
    }
    let healthy = |p: &Value| is_ready(p) && p["status"]["phase"] == "Running";
    // claims first: a pod never starts without its storage
    for i in 0..replicas {
        for c in claim_names(sts, i) {
            if !claims.contains(&c) {
                plan.claims.push(c);
            }
        }
    }
    // creation: in order, each waiting for the ones before to be ready
    for (i, pod) in by_ordinal.iter().enumerate() {
        match pod {
            None => {
                plan.create.push(i);
                if !parallel {
                    break;
                }
            }
            Some(p) if !parallel && !healthy(p) => break,
            Some(_) => {}
        }
    }
    // scale down: from the highest ordinal, one at a time unless Parallel
    extra.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
    let all_healthy = by_ordinal.iter().all(|p| p.is_some_and(|p| healthy(p)));
    if parallel {
        plan.delete
            .extend(extra.iter().map(|(_, p)| meta::name(p).to_string()));
    } else if let Some((_, p)) = extra.first() {
        if !terminating && (all_healthy || !healthy(p)) {
            plan.delete.push(meta::name(p).to_string());
        }
    }
    // rolling update: the highest outdated ordinal ≥ partition, once all are
    // ready; an outdated pod that is not healthy anyway (a bad image rolled
    // back) is replaced without waiting, where Kubernetes would stall
    if !on_delete && plan.create.is_empty() && plan.delete.is_empty() && !terminating {
        let mut outdated = (partition..replicas)
            .rev()
            .filter_map(|i| by_ordinal[i])
            .filter(|p| p["metadata"]["labels"][POD_LABEL] != revision.as_str());
        let next = if all_healthy {
            outdated.next()
        } else {
            outdated.find(|p| !healthy(p))
        };
        if let Some(p) = next {
            plan.delete.push(meta::name(p).to_string());
        }
    }
    let live: Vec<&Arc<Value>> = by_ordinal.iter().flatten().copied().collect();
    let ready = live.iter().filter(|p| is_ready(p)).count();
    let updated = live
        .iter()
        .filter(|p| p["metadata"]["labels"][POD_LABEL] == revision.as_str())
        .count();
    // the revision the not yet updated pods run, until none is left
    let current = if updated == live.len() && extra.is_empty() {
        revision.clone()
    } else {
        sts["status"]["currentRevision"]
            .as_str()
            .filter(|c| !c.is_empty())
            .or_else(|| {
                live.iter()
                    .find_map(|p| p["metadata"]["labels"][POD_LABEL].as_str())
                    .filter(|r| *r != revision)
            })
            .unwrap_or(&revision)
            .to_string()
    };
    plan.status = json!({
        "replicas": live.len() + extra.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "currentReplicas": live.len() - updated,
        "updatedReplicas": updated,
        "currentRevision": current,
        "updateRevision": revision,
        "collisionCount": 0,
        "observedGeneration": sts["metadata"]["generation"].as_i64().unwrap_or(1),
    });
    plan
}

/// Pod `NAME-i`, with its claims mounted.
fn pod_for(sts: &Value, i: usize) -> Value {
    let t = &sts["spec"]["template"];
    let name = format!("{}-{i}", meta::name(sts));
    let mut labels = t["metadata"]["labels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    labels[POD_LABEL] = json!(format!("{}-{}", meta::name(sts), history::hash(t)));
    labels["statefulset.kubernetes.io/pod-name"] = json!(name);
    labels["apps.kubernetes.io/pod-index"] = json!(i.to_string());
    let mut spec = t["spec"].clone();
    spec["hostname"] = json!(name);
    if let Some(svc) = sts["spec"]["serviceName"].as_str() {
        spec["subdomain"] = json!(svc);
    }
    let mut volumes = spec["volumes"].as_array().cloned().unwrap_or_default();
    for (tpl, claim) in sts["spec"]["volumeClaimTemplates"]
        .as_array()
        .into_iter()
        .flatten()
        .zip(claim_names(sts, i))
    {
        volumes
            .push(json!({"name": meta::name(tpl), "persistentVolumeClaim": {"claimName": claim}}));
    }
    if !volumes.is_empty() {
        spec["volumes"] = json!(volumes);
    }
    let mut metadata = json!({"name": name, "namespace": meta::namespace(sts), "labels": labels,
        "ownerReferences": [owner_ref(sts, "apps/v1", "StatefulSet")]});
    if t["metadata"]["annotations"].is_object() {
        metadata["annotations"] = t["metadata"]["annotations"].clone();
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
}

fn claim_for(sts: &Value, name: &str) -> Option<Value> {
    let tpl = sts["spec"]["volumeClaimTemplates"]
        .as_array()?
        .iter()
        .find(|t| name.starts_with(&format!("{}-{}-", meta::name(t), meta::name(sts))))?;
    let mut labels = sts["spec"]["selector"]["matchLabels"].clone();
    if !labels.is_object() {
        labels = json!({});
    }
    let mut spec = tpl["spec"].clone();
    if spec["storageClassName"].is_null() {
        spec["storageClassName"] = json!("local-path");
    }
    Some(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": meta::namespace(sts), "labels": labels},
        "spec": spec}))
}

struct Controller {
    client: Client,
    sets: Arc<Cache>,
    pods: Arc<Cache>,
    claims: Arc<Cache>,
    revisions: Arc<Cache>,
}

impl Reconcile for Controller {
    async fn reconcile(&self, key: String) -> Result<Next, ClientError> {
        let Some(sts) = self.sets.get_live(&key) else {
            return Ok(Next::Done);
        };
        let ns = meta::namespace(&sts).to_string();
        let uid = sts["metadata"]["uid"].as_str().unwrap_or("");
        let pods: Vec<Arc<Value>> = self.pods.owned_by(&ns, uid);
        let claims: Vec<String> = self
            .claims
            .in_namespace(&ns)
            .iter()
            .map(|c| meta::name(c).to_string())
            .collect();
        let revisions = self.revisions.owned_by(&ns, uid);
        let in_use: Vec<String> = pods
            .iter()
            .filter_map(|p| p["metadata"]["labels"][POD_LABEL].as_str())
            .map(str::to_string)
            .collect();
        history::apply(
            &self.client,
            &sts,
            &history::plan(&sts, "StatefulSet", &revisions, &in_use),
        )
        .await?;
        let plan = plan(&sts, &pods, &claims);
        let pvcs = resources::lookup("persistentvolumeclaims").expect("claims are served");
        let pods_res = resources::lookup("pods").expect("pods are served");
        for name in &plan.claims {
            if let Some(c) = claim_for(&sts, name) {
                match self.client.create(pvcs, Some(&ns), &c).await {
                    Ok(_) => {}
                    Err(e) if e.code() == Some(409) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        for i in &plan.create {
            match self
                .client
                .create(pods_res, Some(&ns), &pod_for(&sts, *i))
                .await
            {
                Ok(_) => {}
                // the previous pod of that name is still going away
                Err(e) if e.code() == Some(409) => {}
                Err(e) => return Err(e),
            }
        }
        for name in &plan.delete {
            match self.client.delete(pods_res, Some(&ns), name).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
        if !runtime::update_status(
            &self.client,
            resources::lookup("statefulsets").expect("statefulsets are served"),
            &sts,
            &plan.status,
        )
        .await?
        {
            return Ok(Next::Done);
        }
        Ok(Next::Done)
    }
}

/// Run the StatefulSet controller until `cancel`.
pub async fn run(client: Client, cancel: CancelToken) {
    let (sets, pods, claims, revisions) = (Cache::new(), Cache::new(), Cache::new(), Cache::new());
    let queue = WorkQueue::new();
    let watches = vec![
        Watch::new("statefulsets", &sets, runtime::enqueue_self(&queue)),
        Watch::new(
            "pods",
            &pods,
            runtime::enqueue_controller(&queue, "StatefulSet"),
        ),
        Watch::new("persistentvolumeclaims", &claims, |_| {}),
        Watch::new(
            "controllerrevisions",
            &revisions,
            runtime::enqueue_controller(&queue, "StatefulSet"),
        ),
    ];
    let controller = Arc::new(Controller {
        client: client.clone(),
        sets,
        pods,
        claims,
        revisions,
    });
    runtime::run_controller(
        "statefulset",
        &client,
        watches,
        queue,
        2,
        controller,
        cancel,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sts(replicas: i64, parallel: bool) -> Value {
        json!({"metadata": {"name": "db", "namespace": "d", "uid": "s-1", "generation": 1},
            "spec": {"replicas": replicas, "serviceName": "db", "podManagementPolicy": if parallel { "Parallel" } else { "OrderedReady" },
                "selector": {"matchLabels": {"app": "db"}},
                "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
                "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}})
    }

    fn pod(s: &Value, i: usize, ready: bool) -> Arc<Value> {
        let mut p = pod_for(s, i);
        p["status"] = json!({"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]});
        Arc::new(p)
    }

    #[test]
    fn ordered_ready_creates_one_at_a_time_with_claims_first() {
        let s = sts(3, false);
        let p = plan(&s, &[], &[]);
        assert_eq!(p.claims, ["data-db-0", "data-db-1", "data-db-2"]);
        assert_eq!(p.create, [0]);
        let p = plan(&s, &[pod(&s, 0, false)], &[]);
        assert!(p.create.is_empty(), "waits for db-0 to be ready");
        let p = plan(&s, &[pod(&s, 0, true)], &[]);
        assert_eq!(p.create, [1]);
        let parallel = sts(3, true);
        assert_eq!(plan(&parallel, &[], &[]).create, [0, 1, 2]);
        let made = pod_for(&s, 1);
        assert_eq!(made["metadata"]["name"], "db-1");
        assert_eq!(made["spec"]["hostname"], "db-1");
        assert_eq!(made["spec"]["subdomain"], "db");
        assert_eq!(
            made["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
            "data-db-1"
        );
    }

    #[test]
    fn scaling_down_goes_from_the_highest_ordinal() {
        let s = sts(1, false);
        let pods = vec![pod(&s, 0, true), pod(&s, 1, true), pod(&s, 2, true)];
        assert_eq!(plan(&s, &pods, &[]).delete, ["db-2"]);
        assert_eq!(plan(&sts(1, true), &pods, &[]).delete, ["db-2", "db-1"]);
    }

    #[test]
    fn updates_roll_from_the_highest_ordinal_down_to_the_partition() {
        let v1 = sts(3, false);
        let pods: Vec<Arc<Value>> = (0..3).map(|i| pod(&v1, i, true)).collect();
        let mut v2 = v1.clone();
        v2["spec"]["template"]["spec"]["containers"][0]["image"] = json!("i2");
        let p = plan(&v2, &pods, &[]);
        assert_eq!(p.delete, ["db-2"]);
        let (r1, r2) = (
            pods[0]["metadata"]["labels"][POD_LABEL].clone(),
            p.status["updateRevision"].clone(),
        );
        assert_ne!(r1, r2);
        assert_eq!(p.status["currentRevision"], r1, "until all are updated");
        let all: Vec<Arc<Value>> = (0..3).map(|i| pod(&v2, i, true)).collect();
        assert_eq!(plan(&v2, &all, &[]).status["currentRevision"], r2);
        // rolled back from a template whose pod never became ready: that pod
        // is replaced at once, the healthy ones are left alone
        let mut stuck = pods.clone();
        stuck[2] = pod(&v2, 2, false);
        assert_eq!(plan(&v1, &stuck, &[]).delete, ["db-2"]);
        stuck[1] = pod(&v2, 1, true);
        assert_eq!(plan(&v1, &stuck, &[]).delete, ["db-2"]);
        v2["spec"]["updateStrategy"] =
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}});
        let mut rolled = pods.clone();
        rolled[2] = pod(&v2, 2, true);
        assert!(
            plan(&v2, &rolled, &[]).delete.is_empty(),
            "ordinals below the partition keep the old template"
        );
    }
}
