//! Discovery: `/version`, `/api`, `/apis`, and the resource lists kubectl and
//! client libraries read to learn what is served.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::api::resources::{self, Resource};
use crate::api::ApiError;

use super::ApiState;

/// The Kubernetes version this API is compatible with.
pub const KUBERNETES_MINOR: &str = "33";

/// `/version`.
pub async fn version() -> Json<Value> {
    Json(json!({
        "major": "1",
        "minor": KUBERNETES_MINOR,
        "gitVersion": format!("v1.{KUBERNETES_MINOR}.0+wasmkube-{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": format!("{}/{}", std::env::consts::OS, go_arch()),
    }))
}

/// The architecture as Kubernetes names it.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// `/api`.
pub async fn api_versions(State(state): State<Arc<ApiState>>) -> Json<Value> {
    Json(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": state.advertise}],
    }))
}

/// The groups and their versions, in the order served (the first
/// version of a group is its preferred one).
fn groups() -> Vec<(&'static str, Vec<&'static str>)> {
    let mut out: Vec<(&str, Vec<&str>)> = Vec::new();
    for r in resources::all().into_iter().filter(|r| !r.group.is_empty()) {
        match out.iter_mut().find(|(g, _)| *g == r.group) {
            Some((_, vs)) if !vs.contains(&r.version) => vs.push(r.version),
            Some(_) => {}
            None => out.push((r.group, vec![r.version])),
        }
    }
    out
}

fn group_json(group: &str, versions: &[&str]) -> Value {
    let gv = |v: &str| json!({"groupVersion": format!("{group}/{v}"), "version": v});
    json!({"name": group, "versions": versions.iter().map(|v| gv(v)).collect::<Vec<_>>(),
        "preferredVersion": gv(versions[0])})
}

/// `/apis`.
pub async fn api_groups() -> Json<Value> {
    Json(json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups()
            .into_iter()
            .map(|(g, v)| group_json(g, &v))
            .chain(super::metrics::groups())
            .collect::<Vec<_>>(),
    }))
}

/// `/apis/{group}`.
pub fn group(name: &str) -> Result<Value, ApiError> {
    let (g, v) = groups()
        .into_iter()
        .find(|(g, _)| *g == name)
        .ok_or_else(|| ApiError::NotFound {
            resource: "".into(),
            name: format!("/apis/{name}"),
        })?;
    let mut out = group_json(g, &v);
    out["kind"] = json!("APIGroup");
    out["apiVersion"] = json!("v1");
    Ok(out)
}

const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn entry(r: &Resource) -> Vec<Value> {
    if r.review {
        return vec![
            json!({"name": r.plural, "singularName": "", "namespaced": r.namespaced,
            "kind": r.kind, "verbs": ["create"]}),
        ];
    }
    let mut out = vec![json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": VERBS,
        "shortNames": r.short_names,
        "categories": r.categories,
    })];
    if r.status {
        out.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
    }
    if r.scale {
        out.push(json!({"name": format!("{}/scale", r.plural), "singularName": "", "namespaced": r.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get", "patch", "update"]}));
    }
    match r.kind {
        "Pod" => out.extend([
            json!({"name": "pods/attach", "singularName": "", "namespaced": true, "kind": "PodAttachOptions", "verbs": ["create", "get"]}),
            json!({"name": "pods/binding", "singularName": "", "namespaced": true, "kind": "Binding", "verbs": ["create"]}),
            json!({"name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}),
            json!({"name": "pods/exec", "singularName": "", "namespaced": true, "kind": "PodExecOptions", "verbs": ["create", "get"]}),
            json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}),
            json!({"name": "pods/portforward", "singularName": "", "namespaced": true, "kind": "PodPortForwardOptions", "verbs": ["create", "get"]}),
        ]),
        "Namespace" => out.push(json!({"name": "namespaces/finalize", "singularName": "", "namespaced": false, "kind": "Namespace", "verbs": ["update"]})),
        "ServiceAccount" => out.push(json!({"name": "serviceaccounts/token", "singularName": "", "namespaced": true, "group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest", "verbs": ["create"]})),
        _ => {}
    }
    out
}

/// `/api/v1` and `/apis/{group}/{version}`.
pub fn resource_list(group: &str, version: &str) -> Result<Value, ApiError> {
    let resources: Vec<Value> = resources::all()
        .into_iter()
        .filter(|r| r.group == group && r.version == version)
        .flat_map(entry)
        .collect();
    if resources.is_empty() {
        return Err(ApiError::NotFound {
            resource: "".into(),
            name: format!("{group}/{version}"),
        });
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
    )
}
