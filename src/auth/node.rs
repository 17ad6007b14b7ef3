//! The Node authorizer and NodeRestriction admission: an agent, as
//! `system:node:NAME`, may read what its work needs (the cluster's nodes,
//! pods, Services and Ingresses, and exactly the Secrets, ConfigMaps and
//! claims of the pods bound to it) and write only its own Node, its own
//! Lease, the status of its own pods and events.

use std::sync::Arc;

use serde_json::Value;

use super::attributes::{Attributes, Target};
use super::Decision;
use crate::api::podrefs::pod_refs;

/// The Lease namespace of node heartbeats.
pub const LEASE_NAMESPACE: &str = "kube-node-lease";

/// The annotation an agent may set on a Service: a request to scale its
/// Deployment up from zero (see `controllers::hpa`).
pub const ACTIVATION_ANNOTATION: &str = crate::controllers::hpa::ACTIVATION_REQUESTED;

/// What a pod refers to by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefKind {
    Secret,
    ConfigMap,
    Claim,
    ServiceAccount,
}

/// What the Node authorizer needs to know about the cluster.
pub trait Graph {
    /// Whether a pod in `namespace` bound to `node` uses `kind` `name`.
    fn node_uses(&self, node: &str, namespace: &str, kind: RefKind, name: &str) -> bool;
    /// One pod.
    fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Value>>;
    /// Whether an Ingress in `namespace` serves TLS with Secret `name` (every
    /// agent's gateway serves every Ingress).
    fn ingress_tls_secret(&self, namespace: &str, name: &str) -> bool;
}

const READ: &[&str] = &["get", "list", "watch"];

fn is(v: &str, set: &[&str]) -> bool {
    set.contains(&v)
}

/// The bound node of a pod.
fn node_of(pod: &Value) -> &str {
    pod["spec"]["nodeName"].as_str().unwrap_or_default()
}

fn deny(reason: impl Into<String>) -> Decision {
    Decision::Deny(reason.into())
}

/// Decide a request of agent `node`.
pub fn authorize(node: &str, a: &Attributes, graph: &dyn Graph) -> Decision {
    let Target::Resource {
        group,
        resource,
        subresource,
        namespace,
        name,
        ..
    } = &a.target
    else {
        return Decision::NoOpinion;
    };
    let verb = a.verb.as_str();
    let no_relationship = || {
        deny(format!(
            "no relationship found between node '{node}' and this object"
        ))
    };
    match (group.as_str(), resource.as_str(), subresource.as_str()) {
        // what every agent watches: its proxy, DNS and gateway
        ("", "nodes" | "services" | "endpoints" | "pods", "")
        | ("discovery.k8s.io", "endpointslices", "")
        | ("networking.k8s.io", "ingresses" | "ingressclasses", "")
            if is(verb, READ) =>
        {
            Decision::Allow
        }
        ("", "nodes", "" | "status") => match verb {
            // the name of a created Node is checked by admission
            "create" => Decision::Allow,
            "update" | "patch" | "delete" | "get" if name == node => Decision::Allow,
            _ => deny(format!("node '{node}' can only modify its own Node object")),
        },
        ("coordination.k8s.io", "leases", "") if namespace == LEASE_NAMESPACE => match verb {
            "create" => Decision::Allow,
            "get" | "update" | "patch" | "delete" if name == node => Decision::Allow,
            "list" | "watch" if name == node => Decision::Allow,
            _ => deny(format!("node '{node}' can only access its own Lease")),
        },
        ("" | "events.k8s.io", "events", "") if is(verb, &["get", "create", "update", "patch"]) => {
            Decision::Allow
        }
        // the agent marks a Service it holds requests for (admission checks
        // that nothing else changes)
        ("", "services", "") if is(verb, &["patch"]) => Decision::Allow,
        ("", "pods", "status") if is(verb, &["get", "update", "patch"]) => {
            match graph.pod(namespace, name) {
                Some(p) if node_of(&p) == node => Decision::Allow,
                _ => no_relationship(),
            }
        }
        ("", "pods", "") if verb == "delete" => match graph.pod(namespace, name) {
            Some(p) if node_of(&p) == node => Decision::Allow,
            _ => no_relationship(),
        },
        ("", "secrets" | "configmaps" | "persistentvolumeclaims", "")
            if is(verb, READ) && !name.is_empty() =>
        {
            let kind = match resource.as_str() {
                "secrets" => RefKind::Secret,
                "configmaps" => RefKind::ConfigMap,
                _ => RefKind::Claim,
            };
            if graph.node_uses(node, namespace, kind, name)
                || (resource == "secrets"
                    && verb == "get"
                    && graph.ingress_tls_secret(namespace, name))
            {
                Decision::Allow
            } else {
                no_relationship()
            }
        }
        ("", "serviceaccounts", "token") if verb == "create" => {
            if graph.node_uses(node, namespace, RefKind::ServiceAccount, name) {
                Decision::Allow
            } else {
                no_relationship()
            }
        }
        _ => Decision::NoOpinion,
    }
}

/// Whether any of `pods` uses `kind` `name` (the slow, authoritative check).
pub fn pods_use<'a>(
    pods: impl IntoIterator<Item = &'a Arc<Value>>,
    kind: RefKind,
    name: &str,
) -> bool {
    pods.into_iter().any(|p| {
        let r = pod_refs(p);
        match kind {
            RefKind::Secret => r.secrets.contains(name),
            RefKind::ConfigMap => r.configmaps.contains(name),
            RefKind::Claim => r.claims.contains(name),
            RefKind::ServiceAccount => r.service_account == name,
        }
    })
}

/// NodeRestriction: what an agent's write may contain. `object` is the
/// request body (create, update, patch), `target` its target.
pub fn admit(
    node: &str,
    a: &Attributes,
    object: Option<&Value>,
    graph: &dyn Graph,
) -> Result<(), String> {
    let Target::Resource {
        group,
        resource,
        subresource,
        namespace,
        ..
    } = &a.target
    else {
        return Ok(());
    };
    let body_name = |o: Option<&Value>| {
        o.and_then(|o| o.pointer("/metadata/name"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    match (
        group.as_str(),
        resource.as_str(),
        subresource.as_str(),
        a.verb.as_str(),
    ) {
        ("", "nodes", "", "create") if body_name(object) != node => Err(format!(
            "node {node:?} is not allowed to modify node {:?}",
            body_name(object)
        )),
        ("coordination.k8s.io", "leases", "", "create") if body_name(object) != node => {
            Err("can only access node lease with the same name as the requesting node".to_string())
        }
        ("", "services", "", "patch") => {
            let only_mark = object.is_some_and(|o| {
                let Some(top) = o.as_object() else {
                    return false;
                };
                let meta = o["metadata"].as_object();
                let ann = o["metadata"]["annotations"].as_object();
                top.keys().all(|k| k == "metadata")
                    && meta.is_some_and(|m| m.keys().all(|k| k == "annotations"))
                    && ann.is_some_and(|m| {
                        !m.is_empty() && m.keys().all(|k| k == ACTIVATION_ANNOTATION)
                    })
            });
            if only_mark {
                Ok(())
            } else {
                Err(format!(
                    "node {node:?} may only set the {ACTIVATION_ANNOTATION} annotation of a Service"
                ))
            }
        }
        ("", "serviceaccounts", "token", "create") => {
            let bound = object.map(|o| &o["spec"]["boundObjectRef"]);
            let pod_name = bound
                .filter(|b| b["kind"] == "Pod")
                .and_then(|b| b["name"].as_str())
                .ok_or_else(|| "node requested token not bound to a pod".to_string())?;
            let pod = graph
                .pod(namespace, pod_name)
                .ok_or_else(|| format!("pod {namespace}/{pod_name} does not exist"))?;
            if node_of(&pod) != node {
                return Err(
                    "node requested token bound to a pod scheduled on a different node".to_string(),
                );
            }
            let uid = bound.and_then(|b| b["uid"].as_str()).unwrap_or_default();
            if !uid.is_empty() && pod["metadata"]["uid"].as_str() != Some(uid) {
                return Err("the token's pod uid does not match the pod".into());
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::attributes::request_target;
    use crate::auth::UserInfo;
    use serde_json::json;

    struct Pods(Vec<Arc<Value>>);

    impl Graph for Pods {
        fn node_uses(&self, node: &str, ns: &str, kind: RefKind, name: &str) -> bool {
            pods_use(
                self.0
                    .iter()
                    .filter(|p| p["metadata"]["namespace"] == ns && p["spec"]["nodeName"] == node),
                kind,
                name,
            )
        }
        fn pod(&self, ns: &str, name: &str) -> Option<Arc<Value>> {
            self.0
                .iter()
                .find(|p| p["metadata"]["namespace"] == ns && p["metadata"]["name"] == name)
                .cloned()
        }
        fn ingress_tls_secret(&self, ns: &str, name: &str) -> bool {
            ns == "web" && name == "site-tls"
        }
    }

    fn graph() -> Pods {
        Pods(vec![
            Arc::new(
                json!({"metadata": {"name": "a", "namespace": "d", "uid": "u-a"},
                "spec": {"nodeName": "n1", "volumes": [{"name": "v", "secret": {"secretName": "mine"}}]}}),
            ),
            Arc::new(
                json!({"metadata": {"name": "b", "namespace": "d", "uid": "u-b"},
                "spec": {"nodeName": "n2", "serviceAccountName": "robot",
                    "volumes": [{"name": "v", "secret": {"secretName": "theirs"}}]}}),
            ),
        ])
    }

    fn decide(method: &str, path: &str) -> Decision {
        let (verb, target) = request_target(method, path, None);
        let a = Attributes {
            user: UserInfo::new("system:node:n1", &["system:nodes"]),
            verb,
            target,
        };
        authorize("n1", &a, &graph())
    }

    #[test]
    fn an_agent_reads_only_what_its_pods_use() {
        assert_eq!(
            decide("GET", "/api/v1/namespaces/d/secrets/mine"),
            Decision::Allow
        );
        assert!(matches!(
            decide("GET", "/api/v1/namespaces/d/secrets/theirs"),
            Decision::Deny(_)
        ));
        assert!(matches!(
            decide("GET", "/api/v1/namespaces/d/secrets"),
            Decision::NoOpinion
        ));
        assert_eq!(
            decide("GET", "/api/v1/namespaces/web/secrets/site-tls"),
            Decision::Allow
        );
        assert_eq!(decide("GET", "/api/v1/namespaces/d/pods"), Decision::Allow);
        assert_eq!(
            decide("GET", "/apis/discovery.k8s.io/v1/endpointslices"),
            Decision::Allow
        );
        assert!(matches!(
            decide("GET", "/apis/apps/v1/deployments"),
            Decision::NoOpinion
        ));
    }

    #[test]
    fn an_agent_writes_only_its_own_node_lease_and_pods() {
        assert_eq!(decide("PATCH", "/api/v1/nodes/n1/status"), Decision::Allow);
        assert!(matches!(
            decide("PATCH", "/api/v1/nodes/n2/status"),
            Decision::Deny(_)
        ));
        assert!(matches!(
            decide("PUT", "/api/v1/nodes/n2"),
            Decision::Deny(_)
        ));
        assert_eq!(
            decide(
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n1"
            ),
            Decision::Allow
        );
        assert!(matches!(
            decide(
                "PUT",
                "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/n2"
            ),
            Decision::Deny(_)
        ));
        assert_eq!(
            decide("PATCH", "/api/v1/namespaces/d/pods/a/status"),
            Decision::Allow
        );
        assert!(matches!(
            decide("PATCH", "/api/v1/namespaces/d/pods/b/status"),
            Decision::Deny(_)
        ));
        assert_eq!(
            decide("DELETE", "/api/v1/namespaces/d/pods/a"),
            Decision::Allow
        );
        assert!(matches!(
            decide("DELETE", "/api/v1/namespaces/d/pods/b"),
            Decision::Deny(_)
        ));
        assert!(matches!(
            decide("POST", "/api/v1/namespaces/d/pods"),
            Decision::NoOpinion
        ));
    }

    #[test]
    fn admission_holds_an_agent_to_its_own_name() {
        let g = graph();
        let attrs = |method: &str, path: &str| {
            let (verb, target) = request_target(method, path, None);
            Attributes {
                user: UserInfo::new("system:node:n1", &["system:nodes"]),
                verb,
                target,
            }
        };
        let create_node = attrs("POST", "/api/v1/nodes");
        assert!(admit(
            "n1",
            &create_node,
            Some(&json!({"metadata": {"name": "n1"}})),
            &g
        )
        .is_ok());
        assert!(admit(
            "n1",
            &create_node,
            Some(&json!({"metadata": {"name": "n2"}})),
            &g
        )
        .is_err());
        let patch_svc = attrs("PATCH", "/api/v1/namespaces/d/services/web");
        let mark = json!({"metadata": {"annotations": {ACTIVATION_ANNOTATION: "now"}}});
        assert!(admit("n1", &patch_svc, Some(&mark), &g).is_ok());
        let sneaky = json!({"metadata": {"annotations": {ACTIVATION_ANNOTATION: "now"}}, "spec": {"selector": {"app": "evil"}}});
        assert!(admit("n1", &patch_svc, Some(&sneaky), &g).is_err());
        let token = attrs("POST", "/api/v1/namespaces/d/serviceaccounts/robot/token");
        let for_b = json!({"spec": {"boundObjectRef": {"kind": "Pod", "name": "b", "uid": "u-b"}}});
        assert!(
            admit("n1", &token, Some(&for_b), &g).is_err(),
            "b runs on n2"
        );
        assert!(admit("n2", &token, Some(&for_b), &g).is_ok());
        assert!(admit("n2", &token, Some(&json!({"spec": {}})), &g).is_err());
    }
}
