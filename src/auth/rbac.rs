//! RBAC (`rbac.authorization.k8s.io/v1`) as kube-apiserver evaluates it:
//! rules matched against request attributes, roles reached through
//! bindings whose subjects name the user, and the escalation check that
//! keeps a user from granting what it does not hold.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::attributes::{Attributes, Target};
use super::{Decision, UserInfo};

/// One rule of a Role or ClusterRole.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    #[serde(default)]
    pub verbs: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    #[serde(
        rename = "nonResourceURLs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub non_resource_urls: Vec<String>,
}

fn has(set: &[String], v: &str) -> bool {
    set.iter().any(|s| s == v)
}

fn has_all(set: &[String], vs: &[String]) -> bool {
    vs.iter().all(|v| has(set, v))
}

impl PolicyRule {
    /// Whether this rule allows the request (`RuleAllows`).
    pub fn allows(&self, a: &Attributes) -> bool {
        if !(has(&self.verbs, "*") || has(&self.verbs, &a.verb)) {
            return false;
        }
        match &a.target {
            Target::NonResource { path } => self.non_resource_urls.iter().any(|u| {
                u == "*"
                    || u == path
                    || (u.ends_with('*') && path.starts_with(u.trim_end_matches('*')))
            }),
            Target::Resource {
                group,
                resource,
                subresource,
                name,
                ..
            } => {
                let group_ok = has(&self.api_groups, "*") || has(&self.api_groups, group);
                let combined = if subresource.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}/{subresource}")
                };
                let resource_ok = self.resources.iter().any(|r| {
                    r == "*"
                        || *r == combined
                        || (!subresource.is_empty() && *r == format!("*/{subresource}"))
                });
                let name_ok = self.resource_names.is_empty()
                    || (!name.is_empty() && has(&self.resource_names, name));
                group_ok && resource_ok && name_ok
            }
        }
    }

    /// Kubernetes' compact form, used in escalation errors.
    pub fn compact(&self) -> String {
        let list = |v: &[String]| {
            format!(
                "[{}]",
                v.iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        let mut parts = Vec::new();
        if !self.api_groups.is_empty() {
            parts.push(format!("APIGroups:{}", list(&self.api_groups)));
        }
        if !self.resources.is_empty() {
            parts.push(format!("Resources:{}", list(&self.resources)));
        }
        if !self.non_resource_urls.is_empty() {
            parts.push(format!("NonResourceURLs:{}", list(&self.non_resource_urls)));
        }
        if !self.resource_names.is_empty() {
            parts.push(format!("ResourceNames:{}", list(&self.resource_names)));
        }
        parts.push(format!("Verbs:{}", list(&self.verbs)));
        format!("{{{}}}", parts.join(", "))
    }

    /// One rule per verb, group, resource and name (or URL).
    fn breakdown(&self) -> Vec<PolicyRule> {
        let mut out = Vec::new();
        let one = |s: &String| vec![s.clone()];
        for verb in &self.verbs {
            for group in &self.api_groups {
                for res in &self.resources {
                    if self.resource_names.is_empty() {
                        out.push(PolicyRule {
                            verbs: one(verb),
                            api_groups: one(group),
                            resources: one(res),
                            ..Default::default()
                        });
                    }
                    for n in &self.resource_names {
                        out.push(PolicyRule {
                            verbs: one(verb),
                            api_groups: one(group),
                            resources: one(res),
                            resource_names: one(n),
                            ..Default::default()
                        });
                    }
                }
            }
            for url in &self.non_resource_urls {
                out.push(PolicyRule {
                    verbs: one(verb),
                    non_resource_urls: one(url),
                    ..Default::default()
                });
            }
        }
        out
    }

    /// Whether this rule grants everything `sub` (a broken-down rule) does.
    fn covers(&self, sub: &PolicyRule) -> bool {
        let verbs = has(&self.verbs, "*") || has_all(&self.verbs, &sub.verbs);
        let groups = has(&self.api_groups, "*") || has_all(&self.api_groups, &sub.api_groups);
        let resources = has(&self.resources, "*")
            || sub.resources.iter().all(|r| {
                has(&self.resources, r)
                    || r.split_once('/')
                        .is_some_and(|(_, s)| has(&self.resources, &format!("*/{s}")))
            });
        let urls = sub.non_resource_urls.iter().all(|p| {
            self.non_resource_urls
                .iter()
                .any(|o| o == p || (o.ends_with('*') && p.starts_with(o.trim_end_matches('*'))))
        });
        let names = if sub.resource_names.is_empty() {
            self.resource_names.is_empty()
        } else {
            self.resource_names.is_empty() || has_all(&self.resource_names, &sub.resource_names)
        };
        verbs && groups && resources && urls && names
    }
}

/// The rules of a Role or ClusterRole object.
pub fn rules_of(role: &Value) -> Vec<PolicyRule> {
    serde_json::from_value(role["rules"].clone()).unwrap_or_default()
}

/// The rules of `servant` that no rule of `owner` covers (`Covers`).
pub fn uncovered(owner: &[PolicyRule], servant: &[PolicyRule]) -> Vec<PolicyRule> {
    servant
        .iter()
        .flat_map(PolicyRule::breakdown)
        .filter(|sub| !owner.iter().any(|o| o.covers(sub)))
        .collect()
}

/// Where RBAC objects come from (the API server's cache).
pub trait Source {
    fn cluster_role_bindings(&self) -> Vec<Arc<Value>>;
    fn role_bindings(&self, namespace: &str) -> Vec<Arc<Value>>;
    fn cluster_role(&self, name: &str) -> Option<Arc<Value>>;
    fn role(&self, namespace: &str, name: &str) -> Option<Arc<Value>>;
}

/// Whether one subject of a binding in `binding_ns` ("" for a
/// ClusterRoleBinding) names `user`.
pub fn subject_matches(subject: &Value, user: &UserInfo, binding_ns: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str().unwrap_or_default() {
        "User" => user.name == name,
        "Group" => user.in_group(name),
        "ServiceAccount" => {
            let ns = subject["namespace"]
                .as_str()
                .filter(|n| !n.is_empty())
                .unwrap_or(binding_ns);
            !ns.is_empty() && user.name == super::service_account_user(ns, name)
        }
        _ => false,
    }
}

fn binds(binding: &Value, user: &UserInfo, ns: &str) -> bool {
    binding["subjects"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| subject_matches(s, user, ns)))
}

/// Visit the rules that apply to `user` in `namespace` ("" for the
/// cluster scope), binding by binding, until `visit` returns false.
/// Missing roles are reported, as kube-apiserver does, in `errors`.
fn visit_rules(
    src: &dyn Source,
    user: &UserInfo,
    namespace: &str,
    errors: &mut Vec<String>,
    visit: &mut dyn FnMut(&PolicyRule) -> bool,
) {
    for b in src.cluster_role_bindings() {
        if !binds(&b, user, "") {
            continue;
        }
        let role = b["roleRef"]["name"].as_str().unwrap_or_default();
        match src.cluster_role(role) {
            Some(r) => {
                for rule in rules_of(&r) {
                    if !visit(&rule) {
                        return;
                    }
                }
            }
            None => errors.push(format!(
                "clusterrole.rbac.authorization.k8s.io {role:?} not found"
            )),
        }
    }
    if namespace.is_empty() {
        return;
    }
    for b in src.role_bindings(namespace) {
        if !binds(&b, user, namespace) {
            continue;
        }
        let role = b["roleRef"]["name"].as_str().unwrap_or_default();
        let found = match b["roleRef"]["kind"].as_str() {
            Some("ClusterRole") => src.cluster_role(role),
            _ => src.role(namespace, role),
        };
        match found {
            Some(r) => {
                for rule in rules_of(&r) {
                    if !visit(&rule) {
                        return;
                    }
                }
            }
            None => errors.push(format!(
                "{} {role:?} not found",
                if b["roleRef"]["kind"] == "ClusterRole" {
                    "clusterrole.rbac.authorization.k8s.io"
                } else {
                    "role.rbac.authorization.k8s.io"
                }
            )),
        }
    }
}

/// Every rule that applies to `user` in `namespace`.
pub fn rules_for(
    src: &dyn Source,
    user: &UserInfo,
    namespace: &str,
) -> (Vec<PolicyRule>, Vec<String>) {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    visit_rules(src, user, namespace, &mut errors, &mut |r| {
        rules.push(r.clone());
        true
    });
    (rules, errors)
}

/// The RBAC authorizer: Allow when some bound rule allows the request.
pub fn authorize(src: &dyn Source, a: &Attributes) -> Decision {
    let mut allowed = false;
    let mut errors = Vec::new();
    visit_rules(src, &a.user, a.namespace(), &mut errors, &mut |r| {
        allowed = r.allows(a);
        !allowed
    });
    if allowed {
        Decision::Allow
    } else if errors.is_empty() {
        Decision::NoOpinion
    } else {
        Decision::Deny(format!("RBAC: [{}]", errors.join(", ")))
    }
}

/// The escalation error kube-apiserver returns, or None when `user`
/// holds every rule it is trying to grant.
pub fn escalation(user: &UserInfo, held: &[PolicyRule], granted: &[PolicyRule]) -> Option<String> {
    let missing = uncovered(held, granted);
    if missing.is_empty() {
        return None;
    }
    let groups = user
        .groups
        .iter()
        .map(|g| format!("{g:?}"))
        .collect::<Vec<_>>()
        .join(" ");
    Some(format!(
        "user {:?} (groups=[{groups}]) is attempting to grant RBAC permissions not currently held:\n{}",
        user.name,
        missing
            .iter()
            .map(PolicyRule::compact)
            .collect::<Vec<_>>()
            .join("\n")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::attributes::request_target;
    use serde_json::json;
    use std::collections::HashMap;

    #[derive(Default)]
    struct Mem {
        crbs: Vec<Arc<Value>>,
        rbs: HashMap<String, Vec<Arc<Value>>>,
        croles: HashMap<String, Arc<Value>>,
        roles: HashMap<(String, String), Arc<Value>>,
    }

    impl Source for Mem {
        fn cluster_role_bindings(&self) -> Vec<Arc<Value>> {
            self.crbs.clone()
        }
        fn role_bindings(&self, ns: &str) -> Vec<Arc<Value>> {
            self.rbs.get(ns).cloned().unwrap_or_default()
        }
        fn cluster_role(&self, name: &str) -> Option<Arc<Value>> {
            self.croles.get(name).cloned()
        }
        fn role(&self, ns: &str, name: &str) -> Option<Arc<Value>> {
            self.roles.get(&(ns.into(), name.into())).cloned()
        }
    }

    fn attrs(user: &UserInfo, method: &str, path: &str) -> Attributes {
        let (verb, target) = request_target(method, path, None);
        Attributes {
            user: user.clone(),
            verb,
            target,
        }
    }

    fn world() -> Mem {
        let mut m = Mem::default();
        m.croles.insert(
            "view".into(),
            Arc::new(json!({"rules": [{"apiGroups": ["", "apps"], "resources": ["pods", "deployments", "pods/log"], "verbs": ["get", "list", "watch"]}]})),
        );
        m.croles.insert(
            "secret-reader".into(),
            Arc::new(json!({"rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["db"], "verbs": ["get"]}]})),
        );
        m.croles.insert(
            "health".into(),
            Arc::new(
                json!({"rules": [{"nonResourceURLs": ["/healthz", "/logs/*"], "verbs": ["get"]}]}),
            ),
        );
        m.crbs.push(Arc::new(
            json!({"roleRef": {"kind": "ClusterRole", "name": "health"},
            "subjects": [{"kind": "Group", "name": "system:authenticated"}]}),
        ));
        m.rbs.insert(
            "team".into(),
            vec![
                Arc::new(json!({"roleRef": {"kind": "ClusterRole", "name": "view"},
                "subjects": [{"kind": "User", "name": "jane"}, {"kind": "ServiceAccount", "name": "ci"}]})),
                Arc::new(json!({"roleRef": {"kind": "ClusterRole", "name": "secret-reader"},
                "subjects": [{"kind": "User", "name": "jane"}]})),
            ],
        );
        m
    }

    #[test]
    fn bindings_grant_what_their_roles_allow_and_nothing_more() {
        let m = world();
        let jane = UserInfo::new("jane", &[]);
        let ok = |a: &Attributes| authorize(&m, a) == Decision::Allow;
        assert!(ok(&attrs(&jane, "GET", "/api/v1/namespaces/team/pods")));
        assert!(ok(&attrs(
            &jane,
            "GET",
            "/api/v1/namespaces/team/pods/p/log"
        )));
        assert!(ok(&attrs(
            &jane,
            "GET",
            "/apis/apps/v1/namespaces/team/deployments/w"
        )));
        assert!(!ok(&attrs(
            &jane,
            "DELETE",
            "/api/v1/namespaces/team/pods/p"
        )));
        assert!(!ok(&attrs(&jane, "GET", "/api/v1/namespaces/other/pods")));
        assert!(
            !ok(&attrs(&jane, "GET", "/api/v1/pods")),
            "a RoleBinding is not cluster-wide"
        );
        // resourceNames: one secret, never the list
        assert!(ok(&attrs(
            &jane,
            "GET",
            "/api/v1/namespaces/team/secrets/db"
        )));
        assert!(!ok(&attrs(
            &jane,
            "GET",
            "/api/v1/namespaces/team/secrets/other"
        )));
        assert!(!ok(&attrs(&jane, "GET", "/api/v1/namespaces/team/secrets")));
        // non-resource URLs, with a trailing wildcard
        assert!(ok(&attrs(&jane, "GET", "/healthz")));
        assert!(ok(&attrs(&jane, "GET", "/logs/kube.log")));
        assert!(!ok(&attrs(&jane, "GET", "/metrics")));
        // a ServiceAccount subject without a namespace is the binding's
        let ci = UserInfo::new(crate::auth::service_account_user("team", "ci"), &[]);
        assert!(ok(&attrs(&ci, "GET", "/api/v1/namespaces/team/pods")));
        let other_ci = UserInfo::new(crate::auth::service_account_user("x", "ci"), &[]);
        assert!(!ok(&attrs(
            &other_ci,
            "GET",
            "/api/v1/namespaces/team/pods"
        )));
    }

    #[test]
    fn a_binding_to_a_missing_role_says_so() {
        let mut m = world();
        m.crbs.push(Arc::new(
            json!({"roleRef": {"kind": "ClusterRole", "name": "gone"},
            "subjects": [{"kind": "User", "name": "bob"}]}),
        ));
        let bob = UserInfo::new("bob", &[]);
        let d = authorize(&m, &attrs(&bob, "GET", "/api/v1/nodes"));
        assert_eq!(
            d,
            Decision::Deny(
                "RBAC: [clusterrole.rbac.authorization.k8s.io \"gone\" not found]".into()
            )
        );
    }

    #[test]
    fn covering_follows_kubernetes_rules() {
        let r = |v: Value| -> Vec<PolicyRule> { serde_json::from_value(v).unwrap() };
        let admin = r(json!([{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]));
        let view = r(
            json!([{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}]),
        );
        assert!(uncovered(&admin, &view).is_empty());
        let missing = uncovered(&view, &admin);
        assert_eq!(missing.len(), 1);
        assert_eq!(
            missing[0].compact(),
            "{APIGroups:[\"*\"], Resources:[\"*\"], Verbs:[\"*\"]}"
        );
        // subresource wildcards and resource names
        let logs = r(json!([{"apiGroups": [""], "resources": ["*/log"], "verbs": ["get"]}]));
        let pod_log = r(json!([{"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]));
        assert!(uncovered(&logs, &pod_log).is_empty());
        let one = r(
            json!([{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["a"], "verbs": ["get"]}]),
        );
        let all = r(json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]));
        assert!(uncovered(&all, &one).is_empty());
        assert_eq!(uncovered(&one, &all).len(), 1);
        // non-resource prefixes
        let urls = r(json!([{"nonResourceURLs": ["/logs/*"], "verbs": ["get"]}]));
        let sub = r(json!([{"nonResourceURLs": ["/logs/a"], "verbs": ["get"]}]));
        assert!(uncovered(&urls, &sub).is_empty());
        assert_eq!(uncovered(&sub, &urls).len(), 1);
        let msg = escalation(&UserInfo::new("bob", &[]), &view, &admin).unwrap();
        assert!(msg.starts_with("user \"bob\" (groups=[\"system:authenticated\"]) is attempting to grant RBAC permissions not currently held:"), "{msg}");
    }
}
