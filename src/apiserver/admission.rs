//! Admission: the checks and defaults a write gets after authorization and
//! before it is stored. NodeRestriction (an agent writes only its own
//! objects), RBAC escalation prevention (no one grants what they do not
//! hold), ServiceAccount admission (a pod runs as an existing
//! ServiceAccount and gets its token, CA and namespace mounted), and
//! PodSecurity (the namespace's Pod Security Standards levels).

use std::time::Duration;

use serde_json::{json, Value};

use crate::api::resources::{self, Resource};
use crate::api::ApiError;
use crate::auth::attributes::{Attributes, Target};
use crate::auth::rbac::{self, PolicyRule};
use crate::auth::{node, podsecurity, Decision};

use super::auth::{authorize, CacheView, Principal};
use super::ApiState;

/// Where pods find their ServiceAccount credentials.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap with the cluster CA, in every namespace.
pub const ROOT_CA_CONFIGMAP: &str = "kube-root-ca.crt";
/// The lifetime the kubelet asks for projected tokens.
pub const PROJECTED_TOKEN_SECONDS: i64 = 3607;

/// How long a pod create waits for its namespace's `default`
/// ServiceAccount, which the ServiceAccount controller creates just after
/// the namespace.
const DEFAULT_SA_WAIT: Duration = Duration::from_secs(5);

/// Admit a create, update or patch of `res` whose resulting object is
/// `obj` (mutated in place for pod creates).
pub async fn admit(
    state: &ApiState,
    principal: &Principal,
    res: &Resource,
    namespace: &str,
    obj: &mut Value,
) -> Result<(), ApiError> {
    let a = &principal.attributes;
    if let Some(n) = principal.user.node_name() {
        node::admit(n, a, Some(obj), &CacheView::of(state)).map_err(|detail| {
            let (resource, name, _) = a.forbidden_message("");
            ApiError::Forbidden {
                resource,
                name,
                detail,
            }
        })?;
    }
    match (res.group, res.kind) {
        ("rbac.authorization.k8s.io", "Role" | "ClusterRole") => {
            check_role(state, principal, res, obj)
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            check_binding(state, principal, res, namespace, obj)
        }
        ("", "Pod") if a.verb == "create" => {
            pod_security(state, res, namespace, obj, true)?;
            service_account(state, namespace, obj).await
        }
        (_, kind) if a.verb != "delete" && podsecurity::template_of(kind, obj).is_some() => {
            // workloads: warn and audit only, as Kubernetes does
            pod_security(state, res, namespace, obj, false)
        }
        _ => Ok(()),
    }
}

/// PodSecurity admission: check the pod (or a workload's pod template)
/// against its namespace's `enforce`, `warn` and `audit` levels. Only a
/// pod create is refused; warnings go back to the client as `Warning`
/// headers, audit findings onto the request's audit event.
fn pod_security(
    state: &ApiState,
    res: &Resource,
    namespace: &str,
    obj: &Value,
    enforce: bool,
) -> Result<(), ApiError> {
    let Some((metadata, spec)) = podsecurity::template_of(res.kind, obj) else {
        return Ok(());
    };
    let namespaces = resources::lookup("namespaces").expect("namespaces are served");
    let Some(ns) = state.store.cache().get(&namespaces.key("", namespace)) else {
        return Ok(());
    };
    let check = |mode: &str| {
        let level = podsecurity::namespace_level(&ns, mode)?;
        let found = podsecurity::violations(level, &metadata, &spec);
        (!found.is_empty()).then(|| podsecurity::describe(level, &found))
    };
    if let Some(found) = check("audit") {
        super::warnings::annotate_audit(
            "pod-security.kubernetes.io/audit-violations",
            format!("would violate {found}"),
        );
    }
    if let Some(found) = check("warn") {
        super::warnings::add(format!("would violate {found}"));
    }
    if enforce {
        if let Some(found) = check("enforce") {
            return Err(ApiError::Forbidden {
                resource: res.qualified_plural(),
                name: crate::api::meta::name(obj).to_string(),
                detail: format!("violates {found}"),
            });
        }
    }
    Ok(())
}

/// May `user` perform `verb` on RBAC `resource` `name` in `namespace`?
fn allowed(
    state: &ApiState,
    principal: &Principal,
    verb: &str,
    resource: &str,
    ns: &str,
    name: &str,
) -> bool {
    let a = Attributes {
        user: principal.user.clone(),
        verb: verb.into(),
        target: Target::Resource {
            group: "rbac.authorization.k8s.io".into(),
            version: "v1".into(),
            resource: resource.into(),
            subresource: String::new(),
            namespace: ns.into(),
            name: name.into(),
        },
    };
    authorize(&CacheView::of(state), &a) == Decision::Allow
}

fn escalation_error(
    principal: &Principal,
    res: &Resource,
    name: &str,
    granted: &[PolicyRule],
    ns: &str,
    state: &ApiState,
) -> Result<(), ApiError> {
    let (held, _) = rbac::rules_for(&CacheView::of(state), &principal.user, ns);
    match rbac::escalation(&principal.user, &held, granted) {
        None => Ok(()),
        Some(detail) => Err(ApiError::Forbidden {
            resource: res.qualified_plural(),
            name: name.to_string(),
            detail,
        }),
    }
}

fn check_role(
    state: &ApiState,
    principal: &Principal,
    res: &Resource,
    obj: &Value,
) -> Result<(), ApiError> {
    let ns = if res.namespaced {
        crate::api::meta::namespace(obj)
    } else {
        ""
    };
    let name = crate::api::meta::name(obj);
    if principal.user.is_master() || allowed(state, principal, "escalate", res.plural, ns, name) {
        return Ok(());
    }
    let mut granted = rbac::rules_of(obj);
    if obj.get("aggregationRule").is_some_and(|r| !r.is_null()) {
        // an aggregated role can come to hold anything: only those who hold everything may make one
        granted = vec![
            PolicyRule {
                verbs: vec!["*".into()],
                api_groups: vec!["*".into()],
                resources: vec!["*".into()],
                ..Default::default()
            },
            PolicyRule {
                verbs: vec!["*".into()],
                non_resource_urls: vec!["*".into()],
                ..Default::default()
            },
        ];
    }
    escalation_error(principal, res, name, &granted, ns, state)
}

fn check_binding(
    state: &ApiState,
    principal: &Principal,
    res: &Resource,
    namespace: &str,
    obj: &Value,
) -> Result<(), ApiError> {
    let ns = if res.namespaced { namespace } else { "" };
    let name = crate::api::meta::name(obj);
    let role_kind = obj["roleRef"]["kind"].as_str().unwrap_or_default();
    let role_name = obj["roleRef"]["name"].as_str().unwrap_or_default();
    let role_res = if role_kind == "ClusterRole" {
        "clusterroles"
    } else {
        "roles"
    };
    if principal.user.is_master() || allowed(state, principal, "bind", role_res, ns, role_name) {
        return Ok(());
    }
    let view = CacheView::of(state);
    let role = if role_kind == "ClusterRole" {
        rbac::Source::cluster_role(&view, role_name)
    } else {
        rbac::Source::role(&view, ns, role_name)
    };
    let Some(role) = role else {
        return Err(ApiError::Forbidden {
            resource: res.qualified_plural(),
            name: name.to_string(),
            detail: format!(
                "{} {role_name:?} not found",
                if role_kind == "ClusterRole" {
                    "clusterrole.rbac.authorization.k8s.io"
                } else {
                    "role.rbac.authorization.k8s.io"
                }
            ),
        });
    };
    escalation_error(principal, res, name, &rbac::rules_of(&role), ns, state)
}

/// The ServiceAccount admission plugin: default the ServiceAccount, check
/// it exists, and mount its token, the cluster CA and the namespace.
async fn service_account(
    state: &ApiState,
    namespace: &str,
    pod: &mut Value,
) -> Result<(), ApiError> {
    let spec = &mut pod["spec"];
    let name = spec["serviceAccountName"]
        .as_str()
        .or_else(|| spec["serviceAccount"].as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
        .to_string();
    spec["serviceAccountName"] = json!(name);
    let sas = resources::lookup("serviceaccounts").expect("serviceaccounts are served");
    let key = sas.key(namespace, &name);
    let deadline = tokio::time::Instant::now()
        + if name == "default" {
            DEFAULT_SA_WAIT
        } else {
            Duration::ZERO
        };
    let sa = loop {
        if let Some(sa) = state.store.cache().get(&key) {
            break sa;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::Forbidden {
                resource: "pods".into(),
                name: crate::api::meta::name(pod).to_string(),
                detail: format!(
                    "error looking up service account {namespace}/{name}: serviceaccount {name:?} not found"
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let spec = &mut pod["spec"];
    let automount = spec["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| sa["automountServiceAccountToken"].as_bool())
        .unwrap_or(true);
    if !automount {
        return Ok(());
    }
    let mounted = |c: &Value| {
        c["volumeMounts"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["mountPath"] == SERVICE_ACCOUNT_MOUNT))
    };
    let volume = format!("kube-api-access-{}", crate::api::meta::random_suffix());
    let mut used = false;
    for list in ["initContainers", "containers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            if mounted(c) {
                continue;
            }
            used = true;
            let m = json!({"name": volume, "readOnly": true, "mountPath": SERVICE_ACCOUNT_MOUNT});
            match c.get_mut("volumeMounts").and_then(Value::as_array_mut) {
                Some(mounts) => mounts.push(m),
                None => c["volumeMounts"] = json!([m]),
            }
        }
    }
    if used {
        let v = json!({"name": volume, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": PROJECTED_TOKEN_SECONDS, "path": "token"}},
            {"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}});
        match spec.get_mut("volumes").and_then(Value::as_array_mut) {
            Some(vols) => vols.push(v),
            None => spec["volumes"] = json!([v]),
        }
    }
    Ok(())
}
