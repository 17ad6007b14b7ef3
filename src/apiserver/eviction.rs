//! `POST pods/{name}/eviction` (policy/v1 Eviction): a deletion that
//! respects PodDisruptionBudgets, as kube-apiserver's. A pod no budget
//! selects, or one that is not running, is deleted at once; a pod one
//! budget selects is deleted only while the budget's status allows a
//! disruption, which the eviction spends (in the same guarded write that
//! records the pod in `disruptedPods`) before deleting. Otherwise 429,
//! which `kubectl drain` retries.

use serde_json::{json, Value};

use super::handlers::{self, DeleteOptions, Part};
use super::request::Params;
use crate::api::resources::{self, Resource};
use crate::api::{meta, ApiError};
use crate::controllers::disruption::selects;
use crate::controllers::replicaset::is_ready;
use crate::store::Store;

fn pdbs() -> &'static Resource {
    resources::lookup("poddisruptionbudgets").expect("served")
}

fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201})
}

/// Evict pod `ns/name`; `eviction` is the request body.
pub async fn evict(
    store: &Store,
    pods: &Resource,
    ns: &str,
    name: &str,
    eviction: &Value,
    p: &Params,
) -> Result<Value, ApiError> {
    let body_name = meta::name(eviction);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::BadRequest(format!(
            "name in URL does not match name in Eviction object: {name} != {body_name}"
        )));
    }
    let opts = DeleteOptions::from_body(eviction.get("deleteOptions"), p)?;
    let pod = handlers::get(store, pods, ns, name)?;
    let delete = || async {
        handlers::delete(store, pods, ns, name, &opts).await?;
        Ok(success())
    };
    // a pod that is done, not yet running or already going needs no budget
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    if meta::is_deleting(&pod) || matches!(phase, "Succeeded" | "Failed" | "Pending") {
        return delete().await;
    }
    let matching: Vec<Value> = store
        .cache()
        .list(&pdbs().prefix(Some(ns)), None, None, None, &|b| {
            selects(b, &pod)
        })
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .items
        .into_iter()
        .map(|b| (*b).clone())
        .collect();
    let pdb = match matching.as_slice() {
        [] => return delete().await,
        [one] => one,
        _ => {
            return Err(ApiError::Internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.".into(),
            ))
        }
    };
    let pdb_name = meta::name(pdb).to_string();
    let status = &pdb["status"];
    let healthy = status["currentHealthy"].as_i64().unwrap_or(0);
    let desired = status["desiredHealthy"].as_i64().unwrap_or(0);
    // an unready pod may go while the budget holds without it
    // (IfHealthyBudget), or always (AlwaysAllow)
    if !is_ready(&pod) {
        let always = pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow";
        let current = status["observedGeneration"] == pdb["metadata"]["generation"];
        if always || (current && healthy >= desired) {
            return delete().await;
        }
    }
    let refuse = |message: String| ApiError::TooManyRequests {
        message: "Cannot evict pod as it would violate the pod's disruption budget.".into(),
        causes: vec![("DisruptionBudget".into(), message)],
    };
    if status["observedGeneration"].as_i64() < pdb["metadata"]["generation"].as_i64() {
        return Err(refuse(format!(
            "The disruption budget {pdb_name} is still being processed by the server."
        )));
    }
    if status["disruptionsAllowed"].as_i64().unwrap_or(0) <= 0 {
        return Err(refuse(format!(
            "The disruption budget {pdb_name} needs {desired} healthy pods and has {healthy} currently"
        )));
    }
    if !opts.dry_run {
        // spend one disruption, guarded by the revision read: a race with
        // another eviction re-reads and may then be refused
        let now = meta::now();
        let pod_name = name.to_string();
        handlers::update_with(
            store,
            pdbs(),
            ns,
            &pdb_name,
            Part::Status,
            false,
            |current| {
                let allowed = current["status"]["disruptionsAllowed"]
                    .as_i64()
                    .unwrap_or(0);
                if allowed <= 0 {
                    return Err(refuse(format!(
                    "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
                    current["status"]["desiredHealthy"].as_i64().unwrap_or(0),
                    current["status"]["currentHealthy"].as_i64().unwrap_or(0)
                )));
                }
                let mut next = current.clone();
                next["status"]["disruptionsAllowed"] = json!(allowed - 1);
                if !next["status"]["disruptedPods"].is_object() {
                    next["status"]["disruptedPods"] = json!({});
                }
                next["status"]["disruptedPods"][&pod_name] = json!(now);
                // unpinned: a lost race re-reads the budget and decides again
                meta::meta_mut(&mut next).remove("resourceVersion");
                Ok(next)
            },
        )
        .await?;
    }
    delete().await
}
