//! The review kinds: answered on create, never stored.
//! `SelfSubjectReview` (`kubectl auth whoami`), `TokenReview`, and
//! `SelfSubjectAccessReview`, `SubjectAccessReview`,
//! `LocalSubjectAccessReview` and `SelfSubjectRulesReview`
//! (`kubectl auth can-i`, with `--list` and `--as`).

use serde_json::{json, Value};

use crate::api::resources::Resource;
use crate::api::ApiError;
use crate::auth::attributes::{Attributes, Target};
use crate::auth::{rbac, Decision, UserInfo};

use super::auth::{authenticate_token, authorize, CacheView, Principal};
use super::ApiState;

fn answer(res: &Resource, body: &Value, status: Value) -> Value {
    let mut out = json!({
        "apiVersion": res.api_version(),
        "kind": res.kind,
        "metadata": {"creationTimestamp": null},
        "status": status,
    });
    if let Some(spec) = body.get("spec") {
        out["spec"] = spec.clone();
    }
    if let Some(ns) = body.pointer("/metadata/namespace") {
        out["metadata"]["namespace"] = ns.clone();
    }
    out
}

fn access_status(state: &ApiState, a: &Attributes) -> Value {
    match authorize(&CacheView::of(state), a) {
        Decision::Allow => json!({"allowed": true}),
        Decision::Deny(reason) => json!({"allowed": false, "denied": true, "reason": reason}),
        Decision::NoOpinion => json!({"allowed": false}),
    }
}

fn user_from_spec(spec: &Value) -> UserInfo {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    UserInfo {
        name: spec["user"].as_str().unwrap_or_default().to_string(),
        uid: spec["uid"].as_str().unwrap_or_default().to_string(),
        groups: strings(&spec["groups"]),
        extra: spec["extra"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), strings(v)))
            .collect(),
    }
}

/// Answer a review `body` of kind `res` sent by `principal`.
pub fn create(
    state: &ApiState,
    principal: &Principal,
    res: &Resource,
    ns: Option<&str>,
    body: &Value,
) -> Result<Value, ApiError> {
    let spec = &body["spec"];
    match res.kind {
        "SelfSubjectReview" => Ok(answer(
            res,
            body,
            json!({"userInfo": serde_json::to_value(&principal.user).unwrap_or(Value::Null)}),
        )),
        "TokenReview" => {
            let token = spec["token"].as_str().unwrap_or_default();
            let status = match authenticate_token(&state.security, state.store.cache(), token) {
                Ok(u) => json!({"authenticated": true,
                    "user": serde_json::to_value(&u).unwrap_or(Value::Null),
                    "audiences": state.security.signer.api_audiences}),
                Err(e) => json!({"authenticated": false, "error": e}),
            };
            Ok(answer(res, body, status))
        }
        "SelfSubjectAccessReview" => {
            let a = Attributes::from_review_spec(principal.user.clone(), spec)
                .map_err(|e| invalid(res, "spec", &e))?;
            Ok(answer(res, body, access_status(state, &a)))
        }
        "SubjectAccessReview" | "LocalSubjectAccessReview" => {
            let user = user_from_spec(spec);
            if user.name.is_empty() && user.groups.is_empty() {
                return Err(invalid(
                    res,
                    "spec.user",
                    "at least one of user or group must be specified",
                ));
            }
            let mut a =
                Attributes::from_review_spec(user, spec).map_err(|e| invalid(res, "spec", &e))?;
            if res.kind == "LocalSubjectAccessReview" {
                let ns = ns.unwrap_or("default");
                match &mut a.target {
                    Target::Resource { namespace, .. }
                        if namespace.is_empty() || namespace == ns =>
                    {
                        *namespace = ns.to_string()
                    }
                    Target::Resource { .. } => {
                        return Err(invalid(
                            res,
                            "spec.resourceAttributes.namespace",
                            "must match metadata.namespace",
                        ))
                    }
                    Target::NonResource { .. } => {
                        return Err(invalid(
                            res,
                            "spec.nonResourceAttributes",
                            "disallowed on this kind of request",
                        ))
                    }
                }
            }
            Ok(answer(res, body, access_status(state, &a)))
        }
        "SelfSubjectRulesReview" => {
            let namespace = spec["namespace"].as_str().unwrap_or_default();
            Ok(answer(
                res,
                body,
                rules_review(state, &principal.user, namespace),
            ))
        }
        other => Err(ApiError::Internal(format!("no review handler for {other}"))),
    }
}

fn invalid(res: &Resource, field: &str, detail: &str) -> ApiError {
    ApiError::Invalid {
        kind: res.kind.to_string(),
        name: String::new(),
        errors: vec![crate::api::FieldError::invalid(field, "", detail)],
    }
}

/// The rules `user` holds in `namespace`, as SelfSubjectRulesReview lists them.
fn rules_review(state: &ApiState, user: &UserInfo, namespace: &str) -> Value {
    let (rules, errors) = rbac::rules_for(&CacheView::of(state), user, namespace);
    let mut resource_rules = Vec::new();
    let mut non_resource_rules = Vec::new();
    for r in rules {
        if r.non_resource_urls.is_empty() {
            let mut v =
                json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if !r.resource_names.is_empty() {
                v["resourceNames"] = json!(r.resource_names);
            }
            resource_rules.push(v);
        } else {
            non_resource_rules
                .push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        }
    }
    // the Node authorizer's grants are decided per object: not listable
    let incomplete = user.node_name().is_some();
    let mut status = json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": incomplete,
    });
    if !errors.is_empty() {
        status["evaluationError"] = json!(errors.join(", "));
    }
    status
}
