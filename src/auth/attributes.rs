//! A request as Kubernetes' authorizers see it (`RequestInfo` and
//! `authorizer.Attributes`): a verb on a resource, or on a non-resource path.

use serde_json::{json, Value};

use super::UserInfo;

/// What a request does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A verb on `group/resource[/subresource]`, in a namespace (empty:
    /// cluster scope, or all namespaces), on an object (empty: a collection).
    Resource {
        group: String,
        version: String,
        resource: String,
        subresource: String,
        namespace: String,
        name: String,
    },
    /// A path outside the resource tree (`/healthz`, `/api`, `/version`).
    NonResource { path: String },
}

/// Who does what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub user: UserInfo,
    pub verb: String,
    pub target: Target,
}

/// Subresources of namespaces: `/api/v1/namespaces/NAME/status`.
const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Subresources that stream over an upgraded connection; Kubernetes
/// authorizes them as `create` whatever the method.
const CONNECT_SUBRESOURCES: &[&str] = &["exec", "attach", "portforward"];

/// The verb and target of a request, as kube-apiserver's `RequestInfoFactory`
/// derives them.
pub fn request_target(method: &str, path: &str, query: Option<&str>) -> (String, Target) {
    let non_resource = || {
        (
            method.to_ascii_lowercase(),
            Target::NonResource {
                path: path.to_string(),
            },
        )
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, mut rest): (&str, &str, &[&str]) = match parts.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (g, v, rest),
        _ => return non_resource(),
    };
    let params: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or_default()).unwrap_or_default();
    let param = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    let mut verb = match method {
        "POST" => "create",
        "GET" | "HEAD" => "get",
        "PUT" => "update",
        "PATCH" => "patch",
        "DELETE" => "delete",
        _ => "",
    }
    .to_string();
    if rest.first() == Some(&"watch") {
        verb = "watch".into();
        rest = &rest[1..];
    }
    let mut namespace = String::new();
    if rest.first() == Some(&"namespaces") {
        if let Some(ns) = rest.get(1) {
            namespace = ns.to_string();
            if rest.len() > 2 && !NAMESPACE_SUBRESOURCES.contains(&rest[2]) {
                rest = &rest[2..];
            }
        }
    }
    let resource = rest.first().copied().unwrap_or_default().to_string();
    let mut name = rest.get(1).copied().unwrap_or_default().to_string();
    let subresource = rest.get(2).copied().unwrap_or_default().to_string();
    if rest.len() > 3 {
        return non_resource();
    }
    if name.is_empty() {
        match verb.as_str() {
            "get" if matches!(param("watch"), Some("true" | "1")) => verb = "watch".into(),
            "get" => verb = "list".into(),
            "delete" => verb = "deletecollection".into(),
            _ => {}
        }
        // a list or watch of one object by name is authorized as that object
        if matches!(verb.as_str(), "list" | "watch") {
            if let Some(n) = param("fieldSelector")
                .and_then(|fs| single_name(fs))
                .filter(|n| !n.is_empty())
            {
                name = n.to_string();
            }
        }
    }
    if CONNECT_SUBRESOURCES.contains(&subresource.as_str()) {
        verb = "create".into();
    }
    (
        verb,
        Target::Resource {
            group: group.to_string(),
            version: version.to_string(),
            resource,
            subresource,
            namespace,
            name,
        },
    )
}

/// `NAME` of a field selector that is exactly `metadata.name=NAME`.
fn single_name(selector: &str) -> Option<&str> {
    let s = selector.trim();
    if s.contains(',') {
        return None;
    }
    s.strip_prefix("metadata.name==")
        .or_else(|| s.strip_prefix("metadata.name="))
}

impl Attributes {
    /// `pods` or `pods/exec`.
    pub fn resource_path(&self) -> Option<String> {
        match &self.target {
            Target::Resource {
                resource,
                subresource,
                ..
            } if !subresource.is_empty() => Some(format!("{resource}/{subresource}")),
            Target::Resource { resource, .. } => Some(resource.clone()),
            Target::NonResource { .. } => None,
        }
    }

    /// The namespace of a resource request ("" for cluster scope).
    pub fn namespace(&self) -> &str {
        match &self.target {
            Target::Resource { namespace, .. } => namespace,
            Target::NonResource { .. } => "",
        }
    }

    /// The message of a denial, worded as kube-apiserver words it.
    pub fn forbidden_message(&self, reason: &str) -> (String, String, String) {
        let who = self.user.describe();
        let suffix = if reason.is_empty() {
            String::new()
        } else {
            format!(": {reason}")
        };
        match &self.target {
            Target::NonResource { path } => (
                String::new(),
                String::new(),
                format!("{who} cannot {} path {path:?}{suffix}", self.verb),
            ),
            Target::Resource {
                group,
                resource,
                namespace,
                name,
                ..
            } => {
                let scope = if namespace.is_empty() {
                    "at the cluster scope".to_string()
                } else {
                    format!("in the namespace {namespace:?}")
                };
                let qualified = if group.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}.{group}")
                };
                (
                    qualified,
                    name.clone(),
                    format!(
                        "{who} cannot {} resource {:?} in API group {group:?} {scope}{suffix}",
                        self.verb,
                        self.resource_path().unwrap_or_default()
                    ),
                )
            }
        }
    }

    /// The `spec` of a SubjectAccessReview describing these attributes.
    pub fn to_review_spec(&self) -> Value {
        let mut spec = json!({"user": self.user.name, "groups": self.user.groups});
        if !self.user.uid.is_empty() {
            spec["uid"] = json!(self.user.uid);
        }
        match &self.target {
            Target::Resource {
                group,
                version,
                resource,
                subresource,
                namespace,
                name,
            } => {
                spec["resourceAttributes"] = json!({"verb": self.verb, "group": group,
                    "version": version, "resource": resource, "subresource": subresource,
                    "namespace": namespace, "name": name});
            }
            Target::NonResource { path } => {
                spec["nonResourceAttributes"] = json!({"verb": self.verb, "path": path});
            }
        }
        spec
    }

    /// Attributes from a SubjectAccessReview `spec` (the user is given apart).
    pub fn from_review_spec(user: UserInfo, spec: &Value) -> Result<Self, String> {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
            return Ok(Self {
                user,
                verb: s(&r["verb"]),
                target: Target::Resource {
                    group: s(&r["group"]),
                    version: s(&r["version"]),
                    resource: s(&r["resource"]),
                    subresource: s(&r["subresource"]),
                    namespace: s(&r["namespace"]),
                    name: s(&r["name"]),
                },
            });
        }
        if let Some(r) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
            return Ok(Self {
                user,
                verb: s(&r["verb"]),
                target: Target::NonResource {
                    path: s(&r["path"]),
                },
            });
        }
        Err("exactly one of nonResourceAttributes or resourceAttributes must be specified".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(
        method: &str,
        path: &str,
        query: Option<&str>,
    ) -> (String, String, String, String, String) {
        match request_target(method, path, query) {
            (
                verb,
                Target::Resource {
                    resource,
                    subresource,
                    namespace,
                    name,
                    ..
                },
            ) => (verb, resource, subresource, namespace, name),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn verbs_and_scopes_follow_kube_apiserver() {
        let s = |v: &str| v.to_string();
        assert_eq!(
            res("GET", "/api/v1/namespaces/default/pods", None),
            (s("list"), s("pods"), s(""), s("default"), s(""))
        );
        assert_eq!(
            res("GET", "/api/v1/namespaces/default/pods", Some("watch=true")),
            (s("watch"), s("pods"), s(""), s("default"), s(""))
        );
        assert_eq!(
            res("GET", "/api/v1/watch/namespaces/default/pods", None).0,
            "watch"
        );
        assert_eq!(
            res(
                "GET",
                "/api/v1/namespaces/d/secrets",
                Some("fieldSelector=metadata.name%3Dtls")
            ),
            (s("list"), s("secrets"), s(""), s("d"), s("tls"))
        );
        assert_eq!(
            res("DELETE", "/apis/apps/v1/namespaces/d/deployments", None).0,
            "deletecollection"
        );
        assert_eq!(
            res(
                "GET",
                "/api/v1/namespaces/d/pods/p/exec",
                Some("command=sh")
            ),
            (s("create"), s("pods"), s("exec"), s("d"), s("p"))
        );
        assert_eq!(
            res("PATCH", "/api/v1/namespaces/d/pods/p/status", None),
            (s("patch"), s("pods"), s("status"), s("d"), s("p"))
        );
        // a namespace is in its own namespace
        assert_eq!(
            res("GET", "/api/v1/namespaces/team-a", None),
            (s("get"), s("namespaces"), s(""), s("team-a"), s("team-a"))
        );
        assert_eq!(
            res("PUT", "/api/v1/namespaces/team-a/finalize", None),
            (
                s("update"),
                s("namespaces"),
                s("finalize"),
                s("team-a"),
                s("team-a")
            )
        );
        assert_eq!(
            res("GET", "/api/v1/nodes", None),
            (s("list"), s("nodes"), s(""), s(""), s(""))
        );
        for p in [
            "/api",
            "/apis",
            "/apis/apps/v1",
            "/api/v1",
            "/healthz",
            "/version",
        ] {
            assert!(
                matches!(
                    request_target("GET", p, None),
                    (_, Target::NonResource { .. })
                ),
                "{p}"
            );
        }
    }

    #[test]
    fn denials_are_worded_as_in_kubernetes() {
        let (verb, target) = request_target("GET", "/api/v1/namespaces/default/secrets/db", None);
        let a = Attributes {
            user: UserInfo::new("jane", &[]),
            verb,
            target,
        };
        let (res, name, msg) = a.forbidden_message("");
        assert_eq!((res.as_str(), name.as_str()), ("secrets", "db"));
        assert_eq!(
            msg,
            "User \"jane\" cannot get resource \"secrets\" in API group \"\" in the namespace \"default\""
        );
        let (verb, target) = request_target("GET", "/metrics", None);
        let a = Attributes { verb, target, ..a };
        assert_eq!(
            a.forbidden_message("").2,
            "User \"jane\" cannot get path \"/metrics\""
        );
    }
}
