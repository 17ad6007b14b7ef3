//! The default RBAC policy, as kube-apiserver bootstraps it: the user-facing
//! ClusterRoles (`cluster-admin`, `admin`, `edit`, `view`, built by
//! aggregation), the `system:` roles every authenticated user holds, and one
//! least-privilege role per component (`system:kube-scheduler`,
//! `system:controller:NAME` for each controller's ServiceAccount).
//!
//! Roles carry `rbac.authorization.kubernetes.io/autoupdate: "true"`: the
//! server puts their rules back at start unless an administrator set it to
//! `"false"`.

use serde_json::{json, Value};

/// The annotation that lets the server reconcile a default role.
pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
/// The label of default roles.
const BOOTSTRAPPING: (&str, &str) = ("kubernetes.io/bootstrapping", "rbac-defaults");

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];
const ALL: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(paths: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": paths, "verbs": verbs})
}

fn events() -> Value {
    rule(
        &["", "events.k8s.io"],
        &["events"],
        &["create", "get", "patch", "update"],
    )
}

fn cluster_role(name: &str, labels: Value, rules: Vec<Value>) -> Value {
    let mut l = json!({BOOTSTRAPPING.0: BOOTSTRAPPING.1});
    if let Some(extra) = labels.as_object() {
        for (k, v) in extra {
            l[k] = v.clone();
        }
    }
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": name, "labels": l, "annotations": {AUTOUPDATE: "true"}},
        "rules": rules})
}

fn aggregated(name: &str, labels: Value, select: &str) -> Value {
    let mut r = cluster_role(name, labels, vec![]);
    r["aggregationRule"] = json!({"clusterRoleSelectors": [
        {"matchLabels": {format!("rbac.authorization.k8s.io/aggregate-to-{select}"): "true"}}]});
    r
}

fn binding(name: &str, role: &str, subjects: Vec<Value>) -> Value {
    json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": name, "labels": {BOOTSTRAPPING.0: BOOTSTRAPPING.1},
            "annotations": {AUTOUPDATE: "true"}},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": subjects})
}

fn group(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name})
}

fn user(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name})
}

fn service_account(name: &str) -> Value {
    json!({"kind": "ServiceAccount", "name": name, "namespace": "kube-system"})
}

/// What the controllers' shared informers may do: list and watch the
/// shared kinds, nothing else.
fn shared_informer_rules() -> Vec<Value> {
    let mut by_group: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for plural in crate::client::runtime::SHARED_KINDS {
        if let Some(res) = crate::api::resources::lookup(plural) {
            by_group.entry(res.group).or_default().push(res.plural);
        }
    }
    by_group
        .into_iter()
        .map(|(group, plurals)| rule(&[group], &plurals, &["list", "watch"]))
        .collect()
}

/// The ServiceAccounts (in `kube-system`) the controllers run as, and
/// each one's rules.
pub fn controllers() -> Vec<(&'static str, Vec<Value>)> {
    vec![
        (crate::controllers::INFORMERS, shared_informer_rules()),
        (
            "namespace-controller",
            vec![
                rule(&[""], &["namespaces"], &["delete", "get", "list", "watch"]),
                rule(
                    &[""],
                    &["namespaces/finalize", "namespaces/status"],
                    &["update"],
                ),
                rule(
                    &["*"],
                    &["*"],
                    &["delete", "deletecollection", "get", "list"],
                ),
            ],
        ),
        (
            "node-ipam-controller",
            vec![
                rule(
                    &[""],
                    &["nodes"],
                    &["get", "list", "watch", "patch", "update"],
                ),
                events(),
            ],
        ),
        (
            "generic-garbage-collector",
            vec![
                rule(
                    &["*"],
                    &["*"],
                    &["delete", "get", "list", "patch", "update", "watch"],
                ),
                events(),
            ],
        ),
        (
            "replicaset-controller",
            vec![
                rule(
                    &["apps"],
                    &["replicasets"],
                    &["get", "list", "update", "watch"],
                ),
                rule(
                    &["apps"],
                    &["replicasets/status", "replicasets/finalizers"],
                    &["update", "patch"],
                ),
                rule(
                    &[""],
                    &["pods"],
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                ),
                events(),
            ],
        ),
        (
            "deployment-controller",
            vec![
                rule(
                    &["apps"],
                    &["deployments"],
                    &["get", "list", "update", "watch", "patch"],
                ),
                rule(
                    &["apps"],
                    &["deployments/status", "deployments/finalizers"],
                    &["update", "patch"],
                ),
                rule(&["apps"], &["replicasets"], ALL),
                rule(&[""], &["pods"], &["get", "list", "update", "watch"]),
                events(),
            ],
        ),
        (
            "job-controller",
            vec![
                rule(
                    &["batch"],
                    &["jobs"],
                    &["get", "list", "patch", "update", "watch"],
                ),
                rule(
                    &["batch"],
                    &["jobs/status", "jobs/finalizers"],
                    &["update", "patch"],
                ),
                rule(
                    &[""],
                    &["pods"],
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                ),
                events(),
            ],
        ),
        (
            "cronjob-controller",
            vec![
                rule(
                    &["batch"],
                    &["cronjobs"],
                    &["get", "list", "update", "watch", "patch"],
                ),
                rule(&["batch"], &["jobs"], ALL),
                rule(
                    &["batch"],
                    &["cronjobs/status", "cronjobs/finalizers"],
                    &["update", "patch"],
                ),
                rule(&[""], &["pods"], &["delete", "get", "list", "watch"]),
                events(),
            ],
        ),
        (
            "daemon-set-controller",
            vec![
                rule(
                    &["apps"],
                    &["daemonsets"],
                    &["get", "list", "watch", "update", "patch"],
                ),
                rule(
                    &["apps"],
                    &["daemonsets/status", "daemonsets/finalizers"],
                    &["update", "patch"],
                ),
                rule(&[""], &["nodes"], READ),
                rule(
                    &[""],
                    &["pods"],
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                ),
                rule(&[""], &["pods/binding"], &["create"]),
                rule(&["apps"], &["controllerrevisions"], ALL),
                events(),
            ],
        ),
        (
            "statefulset-controller",
            vec![
                rule(
                    &[""],
                    &["pods"],
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                ),
                rule(
                    &["apps"],
                    &["statefulsets"],
                    &["get", "list", "watch", "update", "patch"],
                ),
                rule(
                    &["apps"],
                    &["statefulsets/status", "statefulsets/finalizers"],
                    &["update", "patch"],
                ),
                rule(&["apps"], &["controllerrevisions"], ALL),
                rule(
                    &[""],
                    &["persistentvolumeclaims"],
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                ),
                events(),
            ],
        ),
        (
            "disruption-controller",
            vec![
                rule(
                    &["apps"],
                    &["deployments", "replicasets", "statefulsets"],
                    READ,
                ),
                rule(&[""], &["pods"], READ),
                rule(&["policy"], &["poddisruptionbudgets"], READ),
                rule(&["policy"], &["poddisruptionbudgets/status"], &["update"]),
                events(),
            ],
        ),
        (
            "endpoint-controller",
            vec![
                rule(&[""], &["services", "pods"], READ),
                rule(
                    &[""],
                    &["endpoints"],
                    &[
                        "create", "delete", "get", "list", "update", "patch", "watch",
                    ],
                ),
                rule(&[""], &["endpoints/restricted"], &["create"]),
                rule(
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                    &[
                        "create", "delete", "get", "list", "update", "patch", "watch",
                    ],
                ),
                events(),
            ],
        ),
        (
            "service-lb-controller",
            vec![
                rule(&[""], &["services"], READ),
                rule(&[""], &["services/status"], &["get", "patch", "update"]),
                rule(&[""], &["nodes"], READ),
                events(),
            ],
        ),
        (
            "ingress-status-controller",
            vec![
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "ingressclasses"],
                    READ,
                ),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses/status"],
                    &["get", "patch", "update"],
                ),
                rule(&[""], &["services", "secrets", "nodes"], READ),
                events(),
            ],
        ),
        (
            "horizontal-pod-autoscaler",
            vec![
                rule(&["autoscaling"], &["horizontalpodautoscalers"], READ),
                rule(
                    &["autoscaling"],
                    &["horizontalpodautoscalers/status"],
                    &["get", "patch", "update"],
                ),
                rule(&["*"], &["*/scale"], &["get", "patch", "update"]),
                rule(
                    &["apps"],
                    &["deployments"],
                    &["get", "list", "watch", "patch", "update"],
                ),
                rule(
                    &[""],
                    &["services"],
                    &["get", "list", "watch", "patch", "update"],
                ),
                rule(&[""], &["pods"], READ),
                rule(&["metrics.k8s.io"], &["pods", "nodes"], READ),
                rule(&["custom.metrics.k8s.io"], &["*"], READ),
                events(),
            ],
        ),
        (
            "node-controller",
            vec![
                rule(
                    &[""],
                    &["nodes"],
                    &["delete", "get", "list", "patch", "update", "watch"],
                ),
                rule(&[""], &["nodes/status"], &["patch", "update"]),
                rule(&[""], &["pods"], &["delete", "get", "list", "watch"]),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(&["coordination.k8s.io"], &["leases"], READ),
                events(),
            ],
        ),
        (
            "serviceaccount-controller",
            vec![
                rule(
                    &[""],
                    &["serviceaccounts"],
                    &["create", "get", "list", "watch"],
                ),
                rule(&[""], &["namespaces"], READ),
                events(),
            ],
        ),
        (
            "root-ca-cert-publisher",
            vec![
                rule(
                    &[""],
                    &["configmaps"],
                    &["create", "get", "list", "update", "watch"],
                ),
                rule(&[""], &["namespaces"], READ),
                events(),
            ],
        ),
        (
            "clusterrole-aggregation-controller",
            vec![rule(
                &["rbac.authorization.k8s.io"],
                &["clusterroles"],
                &["escalate", "get", "list", "patch", "update", "watch"],
            )],
        ),
    ]
}

/// The scheduler's user (a client certificate, as kube-scheduler's).
pub const SCHEDULER_USER: &str = "system:kube-scheduler";

/// Every default ClusterRole.
pub fn cluster_roles() -> Vec<Value> {
    let agg = |to: &[&str]| {
        let mut l = json!({});
        for t in to {
            l[format!("rbac.authorization.k8s.io/aggregate-to-{t}")] = json!("true");
        }
        l
    };
    let core_view = [
        "pods",
        "pods/log",
        "pods/status",
        "configmaps",
        "endpoints",
        "persistentvolumeclaims",
        "persistentvolumeclaims/status",
        "serviceaccounts",
        "services",
        "services/status",
        "events",
        "namespaces",
        "namespaces/status",
        "limitranges",
        "resourcequotas",
        "resourcequotas/status",
        "bindings",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "replicationcontrollers/status",
    ];
    let apps = [
        "controllerrevisions",
        "daemonsets",
        "daemonsets/status",
        "deployments",
        "deployments/scale",
        "deployments/status",
        "replicasets",
        "replicasets/scale",
        "replicasets/status",
        "statefulsets",
        "statefulsets/scale",
        "statefulsets/status",
    ];
    let mut roles = vec![
        cluster_role(
            "cluster-admin",
            json!({}),
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        aggregated("admin", json!({}), "admin"),
        aggregated("edit", agg(&["admin"]), "edit"),
        aggregated("view", agg(&["edit"]), "view"),
        cluster_role(
            "system:aggregate-to-view",
            agg(&["view"]),
            vec![
                rule(&[""], &core_view, READ),
                rule(&["apps"], &apps, READ),
                rule(
                    &["autoscaling"],
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                    READ,
                ),
                rule(
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                    READ,
                ),
                rule(
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                    READ,
                ),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                    READ,
                ),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(&["metrics.k8s.io"], &["pods", "nodes"], READ),
            ],
        ),
        cluster_role(
            "system:aggregate-to-edit",
            agg(&["edit"]),
            vec![
                rule(
                    &[""],
                    &[
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "secrets",
                        "services/proxy",
                    ],
                    READ,
                ),
                rule(&[""], &["serviceaccounts"], &["impersonate"]),
                rule(
                    &[""],
                    &[
                        "pods",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                    ],
                    WRITE,
                ),
                rule(&[""], &["pods/eviction"], &["create"]),
                rule(
                    &[""],
                    &[
                        "configmaps",
                        "events",
                        "persistentvolumeclaims",
                        "replicationcontrollers",
                        "replicationcontrollers/scale",
                        "secrets",
                        "serviceaccounts",
                        "services",
                        "services/proxy",
                    ],
                    WRITE,
                ),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
                rule(
                    &["apps"],
                    &[
                        "daemonsets",
                        "deployments",
                        "deployments/rollback",
                        "deployments/scale",
                        "replicasets",
                        "replicasets/scale",
                        "statefulsets",
                        "statefulsets/scale",
                    ],
                    WRITE,
                ),
                rule(&["autoscaling"], &["horizontalpodautoscalers"], WRITE),
                rule(&["batch"], &["cronjobs", "jobs"], WRITE),
                rule(
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                    WRITE,
                ),
                rule(&["policy"], &["poddisruptionbudgets"], WRITE),
                rule(&["discovery.k8s.io"], &["endpointslices"], WRITE),
            ],
        ),
        cluster_role(
            "system:aggregate-to-admin",
            agg(&["admin"]),
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                    &["create"],
                ),
                rule(
                    &["rbac.authorization.k8s.io"],
                    &["rolebindings", "roles"],
                    ALL,
                ),
            ],
        ),
        cluster_role(
            "system:basic-user",
            json!({}),
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role(
            "system:discovery",
            json!({}),
            vec![urls(
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
                &["get"],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            json!({}),
            vec![urls(
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
                &["get"],
            )],
        ),
        cluster_role(
            "system:service-account-issuer-discovery",
            json!({}),
            vec![urls(
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
                &["get"],
            )],
        ),
        cluster_role(
            SCHEDULER_USER,
            json!({}),
            vec![
                rule(
                    &[""],
                    &[
                        "pods",
                        "nodes",
                        "persistentvolumeclaims",
                        "persistentvolumes",
                        "namespaces",
                        "services",
                    ],
                    READ,
                ),
                rule(&[""], &["pods/binding", "bindings"], &["create"]),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(&[""], &["pods"], &["delete"]),
                // the local-path provisioner's part: a claim is bound to its first pod's node
                rule(
                    &[""],
                    &["persistentvolumeclaims", "persistentvolumeclaims/status"],
                    &["patch", "update"],
                ),
                rule(&["apps"], &["replicasets", "statefulsets"], READ),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["create", "get", "update"],
                ),
                events(),
            ],
        ),
        cluster_role(
            "system:monitoring",
            json!({}),
            vec![urls(
                &[
                    "/healthz",
                    "/healthz/*",
                    "/livez",
                    "/livez/*",
                    "/metrics",
                    "/readyz",
                    "/readyz/*",
                ],
                &["get"],
            )],
        ),
    ];
    for (name, rules) in controllers() {
        roles.push(cluster_role(
            &format!("system:controller:{name}"),
            json!({}),
            rules,
        ));
    }
    roles
}

/// Every default ClusterRoleBinding.
pub fn cluster_role_bindings() -> Vec<Value> {
    let mut out = vec![
        binding(
            "cluster-admin",
            "cluster-admin",
            vec![group(super::MASTERS)],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            vec![group(super::AUTHENTICATED)],
        ),
        binding(
            "system:discovery",
            "system:discovery",
            vec![group(super::AUTHENTICATED)],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            vec![group(super::AUTHENTICATED), group("system:unauthenticated")],
        ),
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            vec![group(super::SERVICE_ACCOUNTS)],
        ),
        binding(SCHEDULER_USER, SCHEDULER_USER, vec![user(SCHEDULER_USER)]),
        binding(
            "system:monitoring",
            "system:monitoring",
            vec![group("system:monitoring")],
        ),
    ];
    for (name, _) in controllers() {
        let role = format!("system:controller:{name}");
        out.push(binding(&role, &role, vec![service_account(name)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_binding_names_a_default_role() {
        let roles: Vec<String> = cluster_roles()
            .iter()
            .map(|r| r["metadata"]["name"].as_str().unwrap().to_string())
            .collect();
        for b in cluster_role_bindings() {
            let role = b["roleRef"]["name"].as_str().unwrap();
            assert!(roles.iter().any(|r| r == role), "{role}");
        }
        // every rule parses as an RBAC rule with verbs
        for r in cluster_roles() {
            for rule in crate::auth::rbac::rules_of(&r) {
                assert!(!rule.verbs.is_empty(), "{}", r["metadata"]["name"]);
            }
        }
    }
}
