//! The Deployment controller: one ReplicaSet per pod template (named by the
//! template's hash, labelled `pod-template-hash`), rolled from old to new
//! with `RollingUpdate` (`maxSurge`, `maxUnavailable`, counting only
//! available pods) or `Recreate`; old ReplicaSets are kept as revision
//! history (`deployment.kubernetes.io/revision`) up to
//! `revisionHistoryLimit`; `paused` stops rollouts; status and the
//! `Available` and `Progressing` conditions (with `progressDeadlineSeconds`)
//! as Kubernetes reports them.
//!
//! [`plan`] is the decision (pure), following kube-controller-manager's
//! rolling-update arithmetic; the reconcile applies it through the API.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::replicaset::owner_ref;
use super::CancelToken;
use crate::api::meta;
use crate::api::resources::{self, Resource};
use crate::client::runtime::{self, Cache, Next, Reconcile, Watch, WorkQueue};
use crate::client::{Client, ClientError};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const HASH_LABEL: &str = "pod-template-hash";

/// JSON with object keys sorted and null or empty-object members left out,
/// so equal templates hash equally: a template that went through Go's
/// encoder (kubectl's `rollout undo` sends `creationTimestamp: null` and
/// `resources: {}`) is the same template.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            Value::Object(
                keys.into_iter()
                    .map(|k| (k.clone(), canonical(&m[k])))
                    .filter(|(_, v)| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()))
                    .collect::<Map<_, _>>(),
            )
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The `pod-template-hash` of a pod template (FNV-1a, as a short string).
pub fn template_hash(template: &Value) -> String {
    let mut h: u32 = 0x811c9dc5;
    for b in canonical(template).to_string().bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    // kube's alphabet: no vowels, no look-alikes
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::new();
    let mut n = h as u64;
    for _ in 0..10 {
        out.push(ALPHABET[(n % ALPHABET.len() as u64) as usize] as char);
        n /= ALPHABET.len() as u64;
        if n == 0 {
            break;
        }
    }
    out
}

/// A template without its `pod-template-hash` label, for comparison.
fn without_hash(template: &Value) -> Value {
    let mut t = template.clone();
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    canonical(&t)
}

pub fn revision(rs: &Value) -> i64 {
    rs["metadata"]["annotations"][REVISION]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or(0)
}

/// An int-or-percent of `total`: percentages round up for surge, down for
/// unavailable.
fn int_or_percent(v: &Value, total: i64, default: &str, round_up: bool) -> i64 {
    let s = match v {
        Value::Number(n) => return n.as_i64().unwrap_or(0),
        Value::String(s) => s.as_str(),
        _ => default,
    };
    match s.strip_suffix('%').and_then(|p| p.parse::<i64>().ok()) {
        Some(p) if round_up => (p * total + 99) / 100,
        Some(p) => p * total / 100,
        None => s.parse().unwrap_or(0),
    }
}

/// `(maxSurge, maxUnavailable)` of a RollingUpdate deployment.
pub fn surge_and_unavailable(d: &Value) -> (i64, i64) {
    let replicas = int(&d["spec"]["replicas"]);
    let ru = &d["spec"]["strategy"]["rollingUpdate"];
    let surge = int_or_percent(&ru["maxSurge"], replicas, "25%", true);
    let unavailable = int_or_percent(&ru["maxUnavailable"], replicas, "25%", false);
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable)
    }
}

/// One change to make.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Create this ReplicaSet.
    Create(Value),
    /// Set a ReplicaSet's replicas (and its revision annotation).
    Scale {
        name: String,
        replicas: i64,
        revision: i64,
    },
    /// Delete an old ReplicaSet (history beyond the limit).
    Delete(String),
}

/// The decision for one deployment.
#[derive(Debug)]
pub struct Plan {
    pub steps: Vec<Step>,
    pub status: Value,
    /// The deployment's revision annotation.
    pub revision: i64,
    /// Look again then (progress deadline).
    pub recheck: Option<Duration>,
}

fn spec_replicas(rs: &Value) -> i64 {
    int(&rs["spec"]["replicas"])
}

fn status_of(rs: &Value, k: &str) -> i64 {
    int(&rs["status"][k])
}

/// Available pods of a ReplicaSet, never more than its spec asks for: its
/// status may not have caught up with a scale-down yet, and counting the
/// pods it is removing would let a rollout go below minimum availability.
fn available(rs: &Value) -> i64 {
    status_of(rs, "availableReplicas").min(spec_replicas(rs))
}

/// Decide what to do for `d`, owning `owned` ReplicaSets.
pub fn plan(d: &Value, owned: &[Arc<Value>], now: chrono::DateTime<chrono::Utc>) -> Plan {
    let replicas = int(&d["spec"]["replicas"]);
    let template = &d["spec"]["template"];
    let hash = template_hash(template);
    let target = without_hash(template);
    let new_rs = owned.iter().find(|rs| {
        rs["metadata"]["labels"][HASH_LABEL] == hash.as_str()
            || without_hash(&rs["spec"]["template"]) == target
    });
    let mut old: Vec<&Arc<Value>> = owned
        .iter()
        .filter(|rs| new_rs.is_none_or(|n| !Arc::ptr_eq(n, rs)))
        .collect();
    old.sort_by_key(|rs| {
        (
            revision(rs),
            rs["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap_or("")
                .to_string(),
        )
    });
    let max_old_revision = old.iter().map(|rs| revision(rs)).max().unwrap_or(0);
    let new_revision = match new_rs {
        Some(n) if revision(n) > max_old_revision => revision(n),
        _ => max_old_revision + 1,
    };
    let paused = d["spec"]["paused"].as_bool().unwrap_or(false);
    let recreate = d["spec"]["strategy"]["type"] == "Recreate";
    let (max_surge, max_unavailable) = if recreate {
        (0, replicas)
    } else {
        surge_and_unavailable(d)
    };
    let mut steps = Vec::new();
    // desired replicas per ReplicaSet name, as the plan leaves them
    let mut desired: Vec<(String, i64)> = owned
        .iter()
        .map(|rs| (meta::name(rs).to_string(), spec_replicas(rs)))
        .collect();
    let set = |desired: &mut Vec<(String, i64)>, name: &str, n: i64| {
        if let Some(e) = desired.iter_mut().find(|(k, _)| k == name) {
            e.1 = n;
        } else {
            desired.push((name.to_string(), n));
        }
    };
    let old_total: i64 = old.iter().map(|rs| spec_replicas(rs)).sum();
    let new_name = new_rs
        .map(|n| meta::name(n).to_string())
        .unwrap_or_else(|| format!("{}-{hash}", meta::name(d)));
    if paused {
        // no rollout; only keep the total at the requested size
        let total: i64 = desired.iter().map(|(_, n)| n).sum();
        if total != replicas {
            if let Some(n) = new_rs.or_else(|| owned.iter().max_by_key(|rs| revision(rs))) {
                let cur = spec_replicas(n);
                let next = (cur + replicas - total).max(0);
                steps.push(Step::Scale {
                    name: meta::name(n).to_string(),
                    replicas: next,
                    revision: revision(n),
                });
                set(&mut desired, meta::name(n), next);
            }
        }
    } else if recreate {
        let old_pods: i64 = old.iter().map(|rs| status_of(rs, "replicas")).sum();
        for rs in old.iter().filter(|rs| spec_replicas(rs) > 0) {
            steps.push(Step::Scale {
                name: meta::name(rs).to_string(),
                replicas: 0,
                revision: revision(rs),
            });
            set(&mut desired, meta::name(rs), 0);
        }
        if old_total == 0 && old_pods == 0 {
            match new_rs {
                None => {
                    steps.push(Step::Create(new_replicaset(
                        d,
                        &hash,
                        replicas,
                        new_revision,
                    )));
                    set(&mut desired, &new_name, replicas);
                }
                Some(n) if spec_replicas(n) != replicas || revision(n) != new_revision => {
                    steps.push(Step::Scale {
                        name: new_name.clone(),
                        replicas,
                        revision: new_revision,
                    });
                    set(&mut desired, &new_name, replicas);
                }
                _ => {}
            }
        } else if new_rs.is_none() {
            steps.push(Step::Create(new_replicaset(d, &hash, 0, new_revision)));
            set(&mut desired, &new_name, 0);
        }
    } else {
        // scale the new ReplicaSet up, within replicas + maxSurge in total
        let new_current = new_rs.map(|n| spec_replicas(n)).unwrap_or(0);
        let total = old_total + new_current;
        let new_target = if new_current > replicas {
            replicas
        } else {
            let room = replicas + max_surge - total;
            (new_current + room.max(0)).min(replicas)
        };
        match new_rs {
            None => steps.push(Step::Create(new_replicaset(
                d,
                &hash,
                new_target,
                new_revision,
            ))),
            Some(n) if new_target != new_current || revision(n) != new_revision => {
                steps.push(Step::Scale {
                    name: new_name.clone(),
                    replicas: new_target,
                    revision: new_revision,
                })
            }
            _ => {}
        }
        set(&mut desired, &new_name, new_target);
        // scale old ones down, never below replicas - maxUnavailable available
        if old_total > 0 {
            let all_total = old_total + new_target;
            let min_available = replicas - max_unavailable;
            let new_unavailable = new_target - new_rs.map(|n| available(n)).unwrap_or(0);
            let mut budget = all_total - min_available - new_unavailable.max(0);
            // first the old pods that are not available anyway
            let mut old_targets: Vec<i64> = old.iter().map(|rs| spec_replicas(rs)).collect();
            for (i, rs) in old.iter().enumerate() {
                if budget <= 0 {
                    break;
                }
                let unhealthy = (old_targets[i] - available(rs)).max(0);
                let cut = unhealthy.min(budget);
                old_targets[i] -= cut;
                budget -= cut;
            }
            // then available ones, oldest first, keeping minAvailable
            let available: i64 = owned.iter().map(|rs| available(rs)).sum();
            let mut budget = (available - min_available).max(0);
            for (i, _) in old.iter().enumerate() {
                if budget <= 0 {
                    break;
                }
                let cut = old_targets[i].min(budget);
                old_targets[i] -= cut;
                budget -= cut;
            }
            for (i, rs) in old.iter().enumerate() {
                if old_targets[i] != spec_replicas(rs) {
                    steps.push(Step::Scale {
                        name: meta::name(rs).to_string(),
                        replicas: old_targets[i],
                        revision: revision(rs),
                    });
                    set(&mut desired, meta::name(rs), old_targets[i]);
                }
            }
        }
    }
    // history beyond revisionHistoryLimit: the oldest empty ReplicaSets go
    let limit = d["spec"]["revisionHistoryLimit"]
        .as_i64()
        .unwrap_or(10)
        .max(0) as usize;
    let empty: Vec<&&Arc<Value>> = old
        .iter()
        .filter(|rs| {
            desired.iter().any(|(k, n)| k == meta::name(rs) && *n == 0)
                && status_of(rs, "replicas") == 0
        })
        .collect();
    if empty.len() > limit {
        for rs in &empty[..empty.len() - limit] {
            steps.push(Step::Delete(meta::name(rs).to_string()));
        }
    }
    let status = status(
        d,
        owned,
        new_rs.map(|n| n.as_ref()),
        &new_name,
        paused,
        max_unavailable,
        &steps,
        now,
    );
    let deadline = d["spec"]["progressDeadlineSeconds"].as_i64().unwrap_or(600);
    let complete = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Progressing" && c["reason"] == "NewReplicaSetAvailable");
    let recheck = (!complete && !paused).then(|| Duration::from_secs(deadline.clamp(1, 5) as u64));
    Plan {
        steps,
        status,
        revision: new_revision,
        recheck,
    }
}

fn new_replicaset(d: &Value, hash: &str, replicas: i64, revision: i64) -> Value {
    let mut template = d["spec"]["template"].clone();
    template["metadata"]["labels"][HASH_LABEL] = json!(hash);
    let mut selector = d["spec"]["selector"].clone();
    selector["matchLabels"][HASH_LABEL] = json!(hash);
    let mut labels = d["spec"]["template"]["metadata"]["labels"].clone();
    labels[HASH_LABEL] = json!(hash);
    let mut annotations = json!({REVISION: revision.to_string()});
    if let Some(cause) = d["metadata"]["annotations"]["kubernetes.io/change-cause"].as_str() {
        annotations["kubernetes.io/change-cause"] = json!(cause);
    }
    let mut spec = json!({"replicas": replicas, "selector": selector, "template": template});
    if let Some(m) = d["spec"]["minReadySeconds"].as_i64() {
        spec["minReadySeconds"] = json!(m);
    }
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": format!("{}-{hash}", meta::name(d)), "namespace": meta::namespace(d),
            "labels": labels, "annotations": annotations,
            "ownerReferences": [owner_ref(d, "apps/v1", "Deployment")]},
        "spec": spec})
}

fn condition(
    kind: &str,
    status: &str,
    reason: &str,
    message: String,
    previous: &Value,
    now: &str,
    progressed: bool,
) -> Value {
    let prev = previous["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind));
    let same = prev.is_some_and(|c| c["status"] == status && c["reason"] == reason);
    let transition = match prev {
        Some(c) if c["status"] == status => c["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let update = match prev {
        Some(c) if same && !progressed => c["lastUpdateTime"].clone(),
        _ => json!(now),
    };
    json!({"type": kind, "status": status, "reason": reason, "message": message,
        "lastUpdateTime": update, "lastTransitionTime": transition})
}

#[allow(clippy::too_many_arguments)]
fn status(
    d: &Value,
    owned: &[Arc<Value>],
    new_rs: Option<&Value>,
    new_name: &str,
    paused: bool,
    max_unavailable: i64,
    steps: &[Step],
    now: chrono::DateTime<chrono::Utc>,
) -> Value {
    let replicas = int(&d["spec"]["replicas"]);
    let sum = |k: &str| owned.iter().map(|rs| status_of(rs, k)).sum::<i64>();
    let total = sum("replicas");
    let updated = new_rs.map(|n| status_of(n, "replicas")).unwrap_or(0);
    let ready = sum("readyReplicas");
    let available = sum("availableReplicas");
    let spec_total: i64 = owned.iter().map(|rs| spec_replicas(rs)).sum();
    let previous = &d["status"];
    let now_s = now.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let generation = int(&d["metadata"]["generation"]);
    let complete = updated == replicas
        && available >= replicas
        && total == replicas
        && new_rs.is_some_and(|n| spec_replicas(n) == replicas)
        && int(&previous["observedGeneration"]) >= generation - 1;
    let progressed = !steps.is_empty()
        || int(&previous["updatedReplicas"]) != updated
        || int(&previous["availableReplicas"]) != available
        || int(&previous["readyReplicas"]) != ready;
    let deadline = d["spec"]["progressDeadlineSeconds"].as_i64().unwrap_or(600);
    let available_cond = if available >= replicas - max_unavailable {
        condition(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            previous,
            &now_s,
            false,
        )
    } else {
        condition(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            previous,
            &now_s,
            false,
        )
    };
    // As Kubernetes' syncRolloutStatus: a complete Deployment that is only
    // scaled (every pod is already of the new ReplicaSet) is not a rollout, so
    // its progress is not estimated and no deadline applies.
    let scaling_complete = total == updated
        && previous["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Progressing" && c["reason"] == "NewReplicaSetAvailable");
    let progressing = if paused {
        condition(
            "Progressing",
            "Unknown",
            "DeploymentPaused",
            "Deployment is paused".into(),
            previous,
            &now_s,
            false,
        )
    } else if complete || scaling_complete {
        condition(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet {new_name:?} has successfully progressed."),
            previous,
            &now_s,
            false,
        )
    } else if progressed {
        condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet {new_name:?} is progressing."),
            previous,
            &now_s,
            true,
        )
    } else {
        let prev = previous["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Progressing"));
        let last = prev
            .and_then(|c| c["lastUpdateTime"].as_str())
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        let exceeded = prev.is_some_and(|c| c["reason"] == "ProgressDeadlineExceeded")
            || last.is_some_and(|t| now.signed_duration_since(t).num_seconds() > deadline);
        if exceeded {
            // stays exceeded until the rollout makes progress again
            condition(
                "Progressing",
                "False",
                "ProgressDeadlineExceeded",
                format!("ReplicaSet {new_name:?} has timed out progressing."),
                previous,
                &now_s,
                false,
            )
        } else {
            condition(
                "Progressing",
                "True",
                "ReplicaSetUpdated",
                format!("ReplicaSet {new_name:?} is progressing."),
                previous,
                &now_s,
                false,
            )
        }
    };
    json!({
        "observedGeneration": generation,
        "replicas": total,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": (spec_total.max(replicas) - available).max(0),
        "conditions": [available_cond, progressing],
    })
}

struct Controller {
    client: Client,
    deployments: Arc<Cache>,
    sets: Arc<Cache>,
    d_res: &'static Resource,
    rs_res: &'static Resource,
}

impl Reconcile for Controller {
    async fn reconcile(&self, key: String) -> Result<Next, ClientError> {
        let Some(d) = self.deployments.get_live(&key) else {
            return Ok(Next::Done);
        };
        let ns = meta::namespace(&d).to_string();
        let uid = d["metadata"]["uid"].as_str().unwrap_or("");
        let owned: Vec<Arc<Value>> = self.sets.owned_by(&ns, uid);
        let plan = plan(&d, &owned, chrono::Utc::now());
        for step in &plan.steps {
            let result = match step {
                Step::Create(rs) => self.client.create(self.rs_res, Some(&ns), rs).await.map(drop),
                Step::Scale { name, replicas, revision } => self
                    .client
                    .merge_patch(
                        self.rs_res,
                        Some(&ns),
                        name,
                        &json!({"metadata": {"annotations": {REVISION: revision.to_string()}}, "spec": {"replicas": replicas}}),
                    )
                    .await
                    .map(drop),
                Step::Delete(name) => self.client.delete(self.rs_res, Some(&ns), name).await.map(drop),
            };
            match result {
                Ok(()) => {}
                Err(e) if e.is_not_found() || e.code() == Some(409) => {}
                Err(e) => return Err(e),
            }
        }
        let name = meta::name(&d).to_string();
        if d["metadata"]["annotations"][REVISION].as_str() != Some(&plan.revision.to_string()) {
            self.client
                .merge_patch(
                    self.d_res,
                    Some(&ns),
                    &name,
                    &json!({"metadata": {"annotations": {REVISION: plan.revision.to_string()}}}),
                )
                .await?;
        }
        if !runtime::update_status(&self.client, self.d_res, &d, &plan.status).await? {
            return Ok(Next::Done);
        }
        Ok(plan.recheck.map_or(Next::Done, Next::After))
    }
}

/// Run the Deployment controller until `cancel`.
pub async fn run(client: Client, cancel: CancelToken) {
    let d_res = resources::lookup("deployments").expect("deployments are served");
    let rs_res = resources::lookup("replicasets").expect("replicasets are served");
    let (deployments, sets) = (Cache::new(), Cache::new());
    let queue = WorkQueue::new();
    let watches = vec![
        Watch::new("deployments", &deployments, runtime::enqueue_self(&queue)),
        Watch::new(
            "replicasets",
            &sets,
            runtime::enqueue_controller(&queue, "Deployment"),
        ),
    ];
    let controller = Arc::new(Controller {
        client: client.clone(),
        deployments,
        sets,
        d_res,
        rs_res,
    });
    runtime::run_controller("deployment", &client, watches, queue, 4, controller, cancel).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_template_through_gos_encoder_hashes_the_same() {
        let t = json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}});
        let go = json!({"metadata": {"creationTimestamp": null, "labels": {"app": "web"}},
            "spec": {"containers": [{"image": "i", "name": "c", "resources": {}}]}});
        assert_eq!(template_hash(&t), template_hash(&go));
        let other = json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "j"}]}});
        assert_ne!(template_hash(&t), template_hash(&other));
    }

    fn deployment(replicas: i64, image: &str, surge: i64, unavailable: i64) -> Value {
        json!({"metadata": {"name": "web", "namespace": "d", "uid": "d-1", "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": image}]}}}})
    }

    /// The ReplicaSet the controller would create for `d`, with `spec` and
    /// `available` replicas (all of them existing and ready).
    fn rs_for(d: &Value, spec: i64, available: i64, revision: i64) -> Arc<Value> {
        let hash = template_hash(&d["spec"]["template"]);
        let mut rs = new_replicaset(d, &hash, spec, revision);
        rs["metadata"]["creationTimestamp"] = json!(format!("2026-01-01T00:00:0{revision}Z"));
        rs["status"] =
            json!({"replicas": spec, "readyReplicas": available, "availableReplicas": available});
        Arc::new(rs)
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }

    /// The Progressing condition of a planned status.
    fn progressing_of(status: &Value) -> Value {
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Progressing")
            .unwrap()
            .clone()
    }

    #[test]
    fn a_new_deployment_creates_its_replicaset_at_full_size() {
        let d = deployment(3, "v1", 1, 0);
        let p = plan(&d, &[], now());
        match &p.steps[..] {
            [Step::Create(rs)] => {
                assert_eq!(rs["spec"]["replicas"], 3);
                assert_eq!(rs["metadata"]["annotations"][REVISION], "1");
                let hash = rs["metadata"]["labels"][HASH_LABEL].as_str().unwrap();
                assert_eq!(rs["spec"]["selector"]["matchLabels"][HASH_LABEL], hash);
                assert_eq!(
                    rs["spec"]["template"]["metadata"]["labels"][HASH_LABEL],
                    hash
                );
                assert_eq!(rs["metadata"]["name"], format!("web-{hash}"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(p.revision, 1);
    }

    /// Simulate a rolling update to completion, each round applying the
    /// plan and letting every scaled-up pod become available: the
    /// invariants hold at every step.
    #[test]
    fn a_rolling_update_stays_within_surge_and_unavailability() {
        for (replicas, surge, unavailable) in [(3, 1, 0), (4, 0, 1), (5, 2, 2), (1, 1, 0)] {
            let v1 = deployment(replicas, "v1", surge, unavailable);
            let v2 = deployment(replicas, "v2", surge, unavailable);
            let mut sets = vec![rs_for(&v1, replicas, replicas, 1)];
            let mut rounds = 0;
            loop {
                rounds += 1;
                assert!(rounds < 50, "the rollout converges");
                let p = plan(&v2, &sets, now());
                if p.steps.is_empty() {
                    break;
                }
                // apply: scaling down is immediate; new pods come up available
                let mut next: Vec<Arc<Value>> = Vec::new();
                for rs in &sets {
                    let mut rs = (**rs).clone();
                    for s in &p.steps {
                        if let Step::Scale { name, replicas, .. } = s {
                            if rs["metadata"]["name"] == name.as_str() {
                                rs["spec"]["replicas"] = json!(replicas);
                            }
                        }
                    }
                    let n = int(&rs["spec"]["replicas"]);
                    let avail = int(&rs["status"]["availableReplicas"]).min(n);
                    // pods scaled down go at once; the surge's pods are not available yet
                    rs["status"] =
                        json!({"replicas": n, "readyReplicas": avail, "availableReplicas": avail});
                    next.push(Arc::new(rs));
                }
                for s in &p.steps {
                    if let Step::Create(rs) = s {
                        let mut rs = rs.clone();
                        rs["status"] =
                            json!({"replicas": rs["spec"]["replicas"], "availableReplicas": 0});
                        next.push(Arc::new(rs));
                    }
                }
                let total: i64 = next.iter().map(|rs| int(&rs["spec"]["replicas"])).sum();
                let available: i64 = next
                    .iter()
                    .map(|rs| int(&rs["status"]["availableReplicas"]))
                    .sum();
                assert!(total <= replicas + surge, "surge exceeded: {total}");
                assert!(
                    available >= replicas - unavailable,
                    "too few available: {available}"
                );
                // then the new pods become available
                sets = next
                    .into_iter()
                    .map(|rs| {
                        let mut rs = (*rs).clone();
                        rs["status"]["availableReplicas"] = rs["spec"]["replicas"].clone();
                        rs["status"]["readyReplicas"] = rs["spec"]["replicas"].clone();
                        Arc::new(rs)
                    })
                    .collect();
            }
            let by_rev: Vec<(i64, i64)> = sets
                .iter()
                .map(|rs| (revision(rs), int(&rs["spec"]["replicas"])))
                .collect();
            assert!(
                by_rev.contains(&(2, replicas)) && by_rev.contains(&(1, 0)),
                "{by_rev:?}"
            );
        }
    }

    #[test]
    fn recreate_empties_the_old_before_starting_the_new() {
        let mut v1 = deployment(2, "v1", 0, 0);
        v1["spec"]["strategy"] = json!({"type": "Recreate"});
        let mut v2 = v1.clone();
        v2["spec"]["template"]["spec"]["containers"][0]["image"] = json!("v2");
        let old = rs_for(&v1, 2, 2, 1);
        let p = plan(&v2, std::slice::from_ref(&old), now());
        assert!(p
            .steps
            .iter()
            .any(|s| matches!(s, Step::Scale { replicas: 0, .. })));
        assert!(p
            .steps
            .iter()
            .any(|s| matches!(s, Step::Create(rs) if rs["spec"]["replicas"] == 0)));
        // the old pods are gone: the new one is scaled up
        let mut drained = (*old).clone();
        drained["spec"]["replicas"] = json!(0);
        drained["status"] = json!({"replicas": 0});
        let new = rs_for(&v2, 0, 0, 2);
        let p = plan(&v2, &[Arc::new(drained), new], now());
        assert!(
            p.steps.iter().any(|s| matches!(
                s,
                Step::Scale {
                    replicas: 2,
                    revision: 2,
                    ..
                }
            )),
            "{:?}",
            p.steps
        );
    }

    #[test]
    fn a_rollback_reuses_the_old_replicaset_with_a_new_revision_and_history_is_trimmed() {
        let mut v1 = deployment(2, "v1", 1, 0);
        v1["spec"]["revisionHistoryLimit"] = json!(1);
        let mut v2 = v1.clone();
        v2["spec"]["template"]["spec"]["containers"][0]["image"] = json!("v2");
        let mut v3 = v1.clone();
        v3["spec"]["template"]["spec"]["containers"][0]["image"] = json!("v3");
        let sets = vec![
            rs_for(&v1, 0, 0, 1),
            rs_for(&v2, 0, 0, 2),
            rs_for(&v3, 2, 2, 3),
        ];
        // back to v1: its ReplicaSet becomes revision 4
        let p = plan(&v1, &sets, now());
        assert_eq!(p.revision, 4);
        assert!(
            p.steps.iter().any(|s| matches!(
                s,
                Step::Scale {
                    revision: 4,
                    replicas: 1,
                    ..
                }
            )),
            "{:?}",
            p.steps
        );
        // while v3 still runs, only v2 is an empty old ReplicaSet: within the limit of 1
        assert!(!p.steps.iter().any(|s| matches!(s, Step::Delete(_))));
        // staying on v3, v1 and v2 are both empty history: the older goes
        let p = plan(&v3, &sets, now());
        let v1_name = meta::name(&sets[0]).to_string();
        let deleted: Vec<&Step> = p
            .steps
            .iter()
            .filter(|s| matches!(s, Step::Delete(_)))
            .collect();
        assert_eq!(deleted, vec![&Step::Delete(v1_name)]);
    }

    #[test]
    fn a_stalled_rollout_exceeds_its_progress_deadline() {
        let mut v2 = deployment(1, "v2", 1, 0);
        v2["spec"]["progressDeadlineSeconds"] = json!(10);
        let v1 = deployment(1, "v1", 1, 0);
        let sets = vec![rs_for(&v1, 1, 1, 1), rs_for(&v2, 1, 0, 2)];
        let then = now() - chrono::Duration::seconds(60);
        v2["status"] = json!({"updatedReplicas": 1, "availableReplicas": 1, "readyReplicas": 1, "conditions": [
            {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
             "lastUpdateTime": then.format("%Y-%m-%dT%H:%M:%SZ").to_string(), "lastTransitionTime": "x"}]});
        let p = plan(&v2, &sets, now());
        let progressing = progressing_of(&p.status);
        assert_eq!(
            progressing["reason"], "ProgressDeadlineExceeded",
            "{progressing}"
        );
        assert_eq!(progressing["status"], "False");
    }

    #[test]
    fn scaling_a_complete_deployment_has_no_deadline() {
        // complete at 1 replica long ago, then scaled to 50: 20 pods exist,
        // 10 available, no change since the last status
        let mut d = deployment(50, "v1", 1, 0);
        d["spec"]["progressDeadlineSeconds"] = json!(5);
        let mut rs = (*rs_for(&d, 50, 10, 1)).clone();
        rs["status"]["replicas"] = json!(20);
        let then = (now() - chrono::Duration::seconds(60))
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        d["status"] = json!({"observedGeneration": 1, "replicas": 20, "updatedReplicas": 20,
            "readyReplicas": 10, "availableReplicas": 10, "conditions": [
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "lastUpdateTime": then, "lastTransitionTime": then}]});
        let p = plan(&d, &[Arc::new(rs)], now());
        let progressing = progressing_of(&p.status);
        assert_eq!(
            progressing["reason"], "NewReplicaSetAvailable",
            "{progressing}"
        );
        assert_eq!(progressing["lastUpdateTime"], then.as_str());

        // a rollout (pods of an older ReplicaSet remain) is timed again
        let v2 = {
            let mut v2 = deployment(50, "v2", 1, 0);
            v2["spec"]["progressDeadlineSeconds"] = json!(5);
            v2["status"] = d["status"].clone();
            v2["status"]["updatedReplicas"] = json!(0);
            v2
        };
        let sets = vec![rs_for(&d, 50, 50, 1), rs_for(&v2, 1, 0, 2)];
        let p = plan(&v2, &sets, now());
        assert_ne!(
            progressing_of(&p.status)["reason"],
            "NewReplicaSetAvailable"
        );
    }

    #[test]
    fn percentages_round_as_kubernetes_does() {
        let mut d = deployment(10, "v1", 0, 0);
        d["spec"]["strategy"]["rollingUpdate"] =
            json!({"maxSurge": "25%", "maxUnavailable": "25%"});
        assert_eq!(surge_and_unavailable(&d), (3, 2));
        d["spec"]["strategy"]["rollingUpdate"] = json!({});
        assert_eq!(surge_and_unavailable(&d), (3, 2));
        d["spec"]["strategy"]["rollingUpdate"] = json!({"maxSurge": 0, "maxUnavailable": 0});
        assert_eq!(surge_and_unavailable(&d), (0, 1));
    }
}
