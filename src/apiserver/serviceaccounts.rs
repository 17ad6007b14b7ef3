//! `serviceaccounts/NAME/token` (TokenRequest): a signed, expiring token
//! for a ServiceAccount, optionally bound to a pod, secret or node so it
//! stops working when that object goes.

use serde_json::{json, Value};

use crate::api::resources;
use crate::api::{ApiError, FieldError};
use crate::auth::token::Ref;

use super::ApiState;

/// TokenRequest's shortest expiry (kube-apiserver: ten minutes).
const MIN_SECONDS: i64 = 600;
/// The expiry when none is asked for.
const DEFAULT_SECONDS: i64 = 3600;
/// The longest expiry granted.
const MAX_SECONDS: i64 = 1 << 32;

fn invalid(name: &str, field: &str, value: &Value, detail: &str) -> ApiError {
    ApiError::Invalid {
        kind: "TokenRequest".into(),
        name: name.into(),
        errors: vec![FieldError::invalid(field, value, detail)],
    }
}

fn ref_of(obj: &Value) -> Ref {
    Ref {
        name: obj["metadata"]["name"].as_str().unwrap_or_default().into(),
        uid: obj["metadata"]["uid"].as_str().unwrap_or_default().into(),
    }
}

/// Issue a token for ServiceAccount `ns/name` as `body` (a TokenRequest) asks.
pub fn token_request(
    state: &ApiState,
    ns: &str,
    name: &str,
    body: &Value,
) -> Result<Value, ApiError> {
    let cache = state.store.cache();
    let get = |plural: &str, ns: &str, n: &str| {
        let res = resources::lookup(plural).expect("served kind");
        cache.get(&res.key(ns, n))
    };
    let sa = get("serviceaccounts", ns, name).ok_or_else(|| ApiError::NotFound {
        resource: "serviceaccounts".into(),
        name: name.into(),
    })?;
    let spec = &body["spec"];
    let seconds = match &spec["expirationSeconds"] {
        Value::Null => DEFAULT_SECONDS,
        v => v.as_i64().unwrap_or(0),
    };
    if seconds < MIN_SECONDS {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            &spec["expirationSeconds"],
            "may not specify a duration less than 10 minutes",
        ));
    }
    if seconds > MAX_SECONDS {
        return Err(invalid(
            name,
            "spec.expirationSeconds",
            &spec["expirationSeconds"],
            "may not specify a duration larger than 2^32 seconds",
        ));
    }
    let audiences: Vec<String> = spec["audiences"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(String::from))
        .collect();
    let mut pod = None;
    let mut node = None;
    let mut secret = None;
    let bound = &spec["boundObjectRef"];
    if bound.is_object() {
        let bname = bound["name"].as_str().unwrap_or_default();
        let kind = bound["kind"].as_str().unwrap_or_default();
        let obj = match kind {
            "Pod" => get("pods", ns, bname),
            "Secret" => get("secrets", ns, bname),
            "Node" => get("nodes", "", bname),
            other => {
                return Err(invalid(
                    name,
                    "spec.boundObjectRef.kind",
                    &json!(other),
                    "supported values: \"Pod\", \"Secret\", \"Node\"",
                ))
            }
        }
        .ok_or_else(|| ApiError::NotFound {
            resource: format!("{}s", kind.to_lowercase()),
            name: bname.into(),
        })?;
        let uid = bound["uid"].as_str().unwrap_or_default();
        if !uid.is_empty() && obj["metadata"]["uid"].as_str() != Some(uid) {
            return Err(ApiError::Conflict {
                resource: format!("{}s", kind.to_lowercase()),
                name: bname.into(),
                detail: format!("the UID in the bound object reference ({uid}) does not match the UID in record. The object might have been deleted and then recreated"),
            });
        }
        match kind {
            "Pod" => {
                let pod_sa = crate::api::podrefs::pod_refs(&obj).service_account;
                if pod_sa != name {
                    return Err(ApiError::BadRequest(format!(
                        "cannot bind token for serviceaccount {name:?} to pod running with different serviceaccount name"
                    )));
                }
                if let Some(n) = obj["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
                    node = get("nodes", "", n).map(|n| ref_of(&n));
                }
                pod = Some(ref_of(&obj));
            }
            "Secret" => secret = Some(ref_of(&obj)),
            _ => node = Some(ref_of(&obj)),
        }
    }
    let signer = &state.security.signer;
    let mut claims = signer.claims(ns, ref_of(&sa), audiences, seconds, pod, node);
    claims.kubernetes.secret = secret;
    let token = signer
        .sign(&claims)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let expires = chrono::DateTime::from_timestamp(claims.exp, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut spec_out = spec.clone();
    spec_out["audiences"] = json!(claims.aud);
    spec_out["expirationSeconds"] = json!(seconds);
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": crate::api::meta::now()},
        "spec": spec_out,
        "status": {"token": token, "expirationTimestamp": expires},
    }))
}
