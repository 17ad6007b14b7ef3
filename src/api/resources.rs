//! The kinds the API server serves: names, scope, subresources, categories.

/// One served resource type (a kind under a group/version).
#[derive(Debug, PartialEq, Eq)]
pub struct Resource {
    /// API group; `""` is the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub short_names: &'static [&'static str],
    pub namespaced: bool,
    /// Has a `/status` subresource (spec and status written apart).
    pub status: bool,
    /// Has a `/scale` subresource.
    pub scale: bool,
    /// Categories (`all` for `wkctl get all`).
    pub categories: &'static [&'static str],
    /// Not stored: a review answered on `create` (SubjectAccessReview and
    /// the like). Every other verb is refused.
    pub review: bool,
}

const ALL: &[&str] = &["all"];
const NONE: &[&str] = &[];

macro_rules! res {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $singular:expr, [$($short:expr),*], $ns:expr, $status:expr, $scale:expr, $cat:expr) => {
        Resource {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: $singular,
            short_names: &[$($short),*],
            namespaced: $ns,
            status: $status,
            scale: $scale,
            categories: $cat,
            review: false,
        }
    };
}

/// A create-only review kind (answered, never stored).
macro_rules! review {
    ($group:expr, $version:expr, $kind:expr, $plural:expr, $ns:expr) => {
        Resource {
            group: $group,
            version: $version,
            kind: $kind,
            plural: $plural,
            singular: "",
            short_names: &[],
            namespaced: $ns,
            status: false,
            scale: false,
            categories: NONE,
            review: true,
        }
    };
}

/// Every served resource.
pub static RESOURCES: &[Resource] = &[
    res!(
        "",
        "v1",
        "Namespace",
        "namespaces",
        "namespace",
        ["ns"],
        false,
        true,
        false,
        NONE
    ),
    res!(
        "",
        "v1",
        "Pod",
        "pods",
        "pod",
        ["po"],
        true,
        true,
        false,
        ALL
    ),
    res!(
        "",
        "v1",
        "Service",
        "services",
        "service",
        ["svc"],
        true,
        true,
        false,
        ALL
    ),
    res!(
        "",
        "v1",
        "Endpoints",
        "endpoints",
        "endpoints",
        ["ep"],
        true,
        false,
        false,
        NONE
    ),
    res!(
        "",
        "v1",
        "ConfigMap",
        "configmaps",
        "configmap",
        ["cm"],
        true,
        false,
        false,
        NONE
    ),
    res!(
        "",
        "v1",
        "Secret",
        "secrets",
        "secret",
        [],
        true,
        false,
        false,
        NONE
    ),
    res!(
        "",
        "v1",
        "Node",
        "nodes",
        "node",
        ["no"],
        false,
        true,
        false,
        NONE
    ),
    res!(
        "",
        "v1",
        "Event",
        "events",
        "event",
        ["ev"],
        true,
        false,
        false,
        NONE
    ),
    res!(
        "",
        "v1",
        "PersistentVolume",
        "persistentvolumes",
        "persistentvolume",
        ["pv"],
        false,
        true,
        false,
        NONE
    ),
    res!(
        "",
        "v1",
        "PersistentVolumeClaim",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        ["pvc"],
        true,
        true,
        false,
        NONE
    ),
    res!(
        "apps",
        "v1",
        "Deployment",
        "deployments",
        "deployment",
        ["deploy"],
        true,
        true,
        true,
        ALL
    ),
    res!(
        "apps",
        "v1",
        "ReplicaSet",
        "replicasets",
        "replicaset",
        ["rs"],
        true,
        true,
        true,
        ALL
    ),
    res!(
        "apps",
        "v1",
        "StatefulSet",
        "statefulsets",
        "statefulset",
        ["sts"],
        true,
        true,
        true,
        ALL
    ),
    res!(
        "apps",
        "v1",
        "DaemonSet",
        "daemonsets",
        "daemonset",
        ["ds"],
        true,
        true,
        false,
        ALL
    ),
    res!(
        "batch",
        "v1",
        "Job",
        "jobs",
        "job",
        [],
        true,
        true,
        false,
        ALL
    ),
    res!(
        "batch",
        "v1",
        "CronJob",
        "cronjobs",
        "cronjob",
        ["cj"],
        true,
        true,
        false,
        ALL
    ),
    res!(
        "networking.k8s.io",
        "v1",
        "Ingress",
        "ingresses",
        "ingress",
        ["ing"],
        true,
        true,
        false,
        NONE
    ),
    res!(
        "networking.k8s.io",
        "v1",
        "IngressClass",
        "ingressclasses",
        "ingressclass",
        [],
        false,
        false,
        false,
        NONE
    ),
    res!(
        "networking.k8s.io",
        "v1",
        "IPAddress",
        "ipaddresses",
        "ipaddress",
        ["ip"],
        false,
        false,
        false,
        NONE
    ),
    res!(
        "discovery.k8s.io",
        "v1",
        "EndpointSlice",
        "endpointslices",
        "endpointslice",
        [],
        true,
        false,
        false,
        NONE
    ),
    res!(
        "coordination.k8s.io",
        "v1",
        "Lease",
        "leases",
        "lease",
        [],
        true,
        false,
        false,
        NONE
    ),
    res!(
        "autoscaling",
        "v2",
        "HorizontalPodAutoscaler",
        "horizontalpodautoscalers",
        "horizontalpodautoscaler",
        ["hpa"],
        true,
        true,
        false,
        ALL
    ),
    res!(
        "apiextensions.k8s.io",
        "v1",
        "CustomResourceDefinition",
        "customresourcedefinitions",
        "customresourcedefinition",
        ["crd", "crds"],
        false,
        true,
        false,
        &["api-extensions"]
    ),
    res!(
        "policy",
        "v1",
        "PodDisruptionBudget",
        "poddisruptionbudgets",
        "poddisruptionbudget",
        ["pdb"],
        true,
        true,
        false,
        NONE
    ),
    res!(
        "apps",
        "v1",
        "ControllerRevision",
        "controllerrevisions",
        "controllerrevision",
        [],
        true,
        false,
        false,
        NONE
    ),
    res!(
        "",
        "v1",
        "ServiceAccount",
        "serviceaccounts",
        "serviceaccount",
        ["sa"],
        true,
        false,
        false,
        NONE
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "Role",
        "roles",
        "role",
        [],
        true,
        false,
        false,
        NONE
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "RoleBinding",
        "rolebindings",
        "rolebinding",
        [],
        true,
        false,
        false,
        NONE
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRole",
        "clusterroles",
        "clusterrole",
        [],
        false,
        false,
        false,
        NONE
    ),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "ClusterRoleBinding",
        "clusterrolebindings",
        "clusterrolebinding",
        [],
        false,
        false,
        false,
        NONE
    ),
    review!(
        "authentication.k8s.io",
        "v1",
        "SelfSubjectReview",
        "selfsubjectreviews",
        false
    ),
    review!(
        "authentication.k8s.io",
        "v1",
        "TokenReview",
        "tokenreviews",
        false
    ),
    review!(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectAccessReview",
        "selfsubjectaccessreviews",
        false
    ),
    review!(
        "authorization.k8s.io",
        "v1",
        "SelfSubjectRulesReview",
        "selfsubjectrulesreviews",
        false
    ),
    review!(
        "authorization.k8s.io",
        "v1",
        "SubjectAccessReview",
        "subjectaccessreviews",
        false
    ),
    review!(
        "authorization.k8s.io",
        "v1",
        "LocalSubjectAccessReview",
        "localsubjectaccessreviews",
        true
    ),
];

impl Resource {
    /// `v1` or `group/version`, as in an object's `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The name used in messages: `pods`, `deployments.apps`.
    pub fn qualified_plural(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    fn group_key(&self) -> &'static str {
        if self.group.is_empty() {
            "core"
        } else {
            self.group
        }
    }

    /// The store key of one object.
    pub fn key(&self, namespace: &str, name: &str) -> String {
        let ns = if self.namespaced { namespace } else { "" };
        format!("{}/{}/{}/{}", self.group_key(), self.plural, ns, name)
    }

    /// The store key prefix of a namespace's objects, or of all of them.
    pub fn prefix(&self, namespace: Option<&str>) -> String {
        match namespace {
            Some(ns) if self.namespaced => format!("{}/{}/{}/", self.group_key(), self.plural, ns),
            _ => format!("{}/{}/", self.group_key(), self.plural),
        }
    }

    /// The URL path of the collection (namespace ignored for cluster-scoped kinds).
    pub fn collection_path(&self, namespace: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace {
            Some(ns) if self.namespaced => format!("{base}/namespaces/{ns}/{}", self.plural),
            _ => format!("{base}/{}", self.plural),
        }
    }

    /// The URL path of one object.
    pub fn object_path(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}/{name}", self.collection_path(namespace))
    }
}

/// Every served resource: the built-in ones, then the custom resources of
/// the stored CustomResourceDefinitions.
pub fn all() -> Vec<&'static Resource> {
    RESOURCES
        .iter()
        .chain(super::crd::all().iter().map(|c| c.res))
        .collect()
}

/// The resource served at `group/version/plural`.
pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
        .or_else(|| {
            super::crd::all()
                .iter()
                .map(|c| c.res)
                .find(|r| r.group == group && r.version == version && r.plural == plural)
        })
}

/// The resource of an object's `apiVersion` and `kind`.
pub fn find_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    all()
        .into_iter()
        .find(|r| r.api_version() == api_version && r.kind == kind)
}

/// Resolve a name typed on a command line: plural, singular, short name or
/// kind, optionally qualified with a group (`deployments.apps`).
pub fn lookup(name: &str) -> Option<&'static Resource> {
    let lower = name.to_ascii_lowercase();
    let (base, group) = match lower.split_once('.') {
        Some((b, g)) => (b.to_string(), Some(g.to_string())),
        None => (lower.clone(), None),
    };
    let matches = |r: &&'static Resource| {
        !r.review
            && group.as_deref().is_none_or(|g| g == r.group)
            && (r.plural == base
                || r.singular == base
                || r.kind.eq_ignore_ascii_case(&base)
                || r.short_names.contains(&base.as_str()))
    };
    RESOURCES
        .iter()
        .find(matches)
        .or_else(|| super::crd::all().iter().map(|c| c.res).find(|r| matches(r)))
}

/// Every resource in a category (`all`).
pub fn category(name: &str) -> Vec<&'static Resource> {
    all()
        .into_iter()
        .filter(|r| r.categories.contains(&name))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_accepts_kubectl_names() {
        for (name, kind) in [
            ("po", "Pod"),
            ("pods", "Pod"),
            ("Pod", "Pod"),
            ("svc", "Service"),
            ("deploy", "Deployment"),
            ("deployments.apps", "Deployment"),
            ("rs", "ReplicaSet"),
            ("sts", "StatefulSet"),
            ("ds", "DaemonSet"),
            ("cm", "ConfigMap"),
            ("ns", "Namespace"),
            ("no", "Node"),
            ("ing", "Ingress"),
            ("ep", "Endpoints"),
            ("ev", "Event"),
            ("pvc", "PersistentVolumeClaim"),
            ("pv", "PersistentVolume"),
            ("cj", "CronJob"),
            ("hpa", "HorizontalPodAutoscaler"),
            ("lease", "Lease"),
            ("sa", "ServiceAccount"),
            ("clusterrolebindings", "ClusterRoleBinding"),
            ("role", "Role"),
        ] {
            assert_eq!(lookup(name).map(|r| r.kind), Some(kind), "{name}");
        }
        assert!(lookup("widgets").is_none());
    }

    #[test]
    fn keys_keep_scopes_apart() {
        let pods = lookup("pods").unwrap();
        assert_eq!(pods.key("default", "a"), "core/pods/default/a");
        assert!(pods
            .key("default", "a")
            .starts_with(&pods.prefix(Some("default"))));
        assert!(!pods
            .key("default2", "a")
            .starts_with(&pods.prefix(Some("default"))));
        let nodes = lookup("nodes").unwrap();
        assert_eq!(nodes.key("ignored", "n1"), "core/nodes//n1");
        assert_eq!(
            lookup("deploy").unwrap().collection_path(Some("x")),
            "/apis/apps/v1/namespaces/x/deployments"
        );
    }
}
