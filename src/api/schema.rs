//! The schemas of the served kinds, generated from the k8s-openapi types
//! (their `schemars` implementations), with the Kubernetes extensions
//! OpenAPI clients and strategic merge patch need: the
//! `x-kubernetes-group-version-kind` of each kind, and each list field's
//! patch strategy, merge key and list type, as Kubernetes declares them in
//! its types (`patchStrategy`, `patchMergeKey`, `listType`). No I/O.

use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use super::resources::{Resource, RESOURCES};

/// How a field of a type merges in a strategic merge patch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strategy {
    /// Lists merge (by `key`, or as a set of primitives when there is none)
    /// rather than being replaced.
    pub merge: bool,
    /// Keys of the map not named in the patch's `$retainKeys` are cleared.
    pub retain_keys: bool,
    /// The field that identifies an element of a merged list of objects.
    pub key: Option<&'static str>,
}

const fn merge(key: &'static str) -> Strategy {
    Strategy {
        merge: true,
        retain_keys: false,
        key: Some(key),
    }
}

const MERGE_PRIMITIVES: Strategy = Strategy {
    merge: true,
    retain_keys: false,
    key: None,
};

const RETAIN_KEYS: Strategy = Strategy {
    merge: false,
    retain_keys: true,
    key: None,
};

/// Kubernetes' patch strategies of the served types: (type, field, strategy).
/// A list not named here is atomic (a patch replaces it).
const STRATEGIES: &[(&str, &str, Strategy)] = &[
    // metadata
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "finalizers",
        MERGE_PRIMITIVES,
    ),
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "ownerReferences",
        merge("uid"),
    ),
    // pods and templates
    ("io.k8s.api.core.v1.PodSpec", "containers", merge("name")),
    (
        "io.k8s.api.core.v1.PodSpec",
        "initContainers",
        merge("name"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "ephemeralContainers",
        merge("name"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "imagePullSecrets",
        merge("name"),
    ),
    ("io.k8s.api.core.v1.PodSpec", "hostAliases", merge("ip")),
    (
        "io.k8s.api.core.v1.PodSpec",
        "topologySpreadConstraints",
        merge("topologyKey"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "schedulingGates",
        merge("name"),
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "volumes",
        Strategy {
            merge: true,
            retain_keys: true,
            key: Some("name"),
        },
    ),
    (
        "io.k8s.api.core.v1.PodSpec",
        "resourceClaims",
        Strategy {
            merge: true,
            retain_keys: true,
            key: Some("name"),
        },
    ),
    (
        "io.k8s.api.core.v1.Container",
        "ports",
        merge("containerPort"),
    ),
    ("io.k8s.api.core.v1.Container", "env", merge("name")),
    (
        "io.k8s.api.core.v1.Container",
        "volumeMounts",
        merge("mountPath"),
    ),
    (
        "io.k8s.api.core.v1.Container",
        "volumeDevices",
        merge("devicePath"),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "ports",
        merge("containerPort"),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "env",
        merge("name"),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeMounts",
        merge("mountPath"),
    ),
    (
        "io.k8s.api.core.v1.EphemeralContainer",
        "volumeDevices",
        merge("devicePath"),
    ),
    ("io.k8s.api.core.v1.PodStatus", "conditions", merge("type")),
    ("io.k8s.api.core.v1.PodStatus", "podIPs", merge("ip")),
    ("io.k8s.api.core.v1.PodStatus", "hostIPs", merge("ip")),
    (
        "io.k8s.api.core.v1.PodStatus",
        "resourceClaimStatuses",
        merge("name"),
    ),
    // Services, Nodes, Namespaces, claims
    ("io.k8s.api.core.v1.ServiceSpec", "ports", merge("port")),
    (
        "io.k8s.api.core.v1.ServiceStatus",
        "conditions",
        merge("type"),
    ),
    ("io.k8s.api.core.v1.NodeSpec", "podCIDRs", MERGE_PRIMITIVES),
    ("io.k8s.api.core.v1.NodeStatus", "conditions", merge("type")),
    ("io.k8s.api.core.v1.NodeStatus", "addresses", merge("type")),
    (
        "io.k8s.api.core.v1.NamespaceStatus",
        "conditions",
        merge("type"),
    ),
    (
        "io.k8s.api.core.v1.PersistentVolumeClaimStatus",
        "conditions",
        merge("type"),
    ),
    // workloads
    ("io.k8s.api.apps.v1.DeploymentSpec", "strategy", RETAIN_KEYS),
    (
        "io.k8s.api.apps.v1.DeploymentStatus",
        "conditions",
        merge("type"),
    ),
    (
        "io.k8s.api.apps.v1.ReplicaSetStatus",
        "conditions",
        merge("type"),
    ),
    (
        "io.k8s.api.apps.v1.StatefulSetStatus",
        "conditions",
        merge("type"),
    ),
    (
        "io.k8s.api.apps.v1.DaemonSetStatus",
        "conditions",
        merge("type"),
    ),
    ("io.k8s.api.batch.v1.JobStatus", "conditions", merge("type")),
    (
        "io.k8s.api.autoscaling.v2.HorizontalPodAutoscalerStatus",
        "conditions",
        merge("type"),
    ),
];

/// The patch strategy of `field` of type `ty`, if it has one.
pub fn strategy(ty: &str, field: &str) -> Option<Strategy> {
    STRATEGIES
        .iter()
        .find(|(t, f, _)| *t == ty && *f == field)
        .map(|(_, _, s)| *s)
        .filter(|s| s.merge || s.retain_keys)
}

/// Every (type, field) with a patch strategy that matters ([`strategy`]
/// answers `Some` for exactly these).
pub fn strategies() -> impl Iterator<Item = (&'static str, &'static str, Strategy)> {
    STRATEGIES
        .iter()
        .filter(|(_, _, s)| s.merge || s.retain_keys)
        .map(|&(t, f, s)| (t, f, s))
}

/// The schemas of every served kind.
pub struct Schemas {
    /// Definition name → schema (OpenAPI 3 form; references are
    /// `#/components/schemas/NAME`).
    pub definitions: Map<String, Value>,
    /// The definition of each served kind, by `group/version/Kind`.
    roots: Vec<(&'static Resource, String)>,
}

/// The schemars output for the served kinds, generated from the
/// k8s-openapi types and checked in (`WK_UPDATE_SCHEMAS=1 cargo test
/// schema::`; a test fails when it is stale), as Kubernetes checks in its
/// OpenAPI spec. Generating them at run time linked every type's
/// `JsonSchema` implementation: 3.5 MB of the `wk` binary.
const GENERATED: &str = include_str!("schemas.json");

fn build() -> Schemas {
    // checked against its generator by a test, so only a broken build fails here
    let Ok(Value::Object(mut generated)) = serde_json::from_str(GENERATED) else {
        panic!("src/api/schemas.json is not a JSON object");
    };
    let (Some(Value::Object(named)), Some(Value::Object(mut definitions))) =
        (generated.remove("roots"), generated.remove("definitions"))
    else {
        panic!("src/api/schemas.json lacks its roots or definitions");
    };
    let mut roots = Vec::new();
    for res in RESOURCES.iter().filter(|r| !r.review) {
        if let Some(name) = named.get(res.kind).and_then(Value::as_str) {
            if let Some(def) = definitions.get_mut(name) {
                def["x-kubernetes-group-version-kind"] =
                    json!([{"group": res.group, "version": res.version, "kind": res.kind}]);
            }
            roots.push((res, name.to_string()));
        }
    }
    for (ty, field, s) in STRATEGIES {
        let Some(prop) = definitions
            .get_mut(*ty)
            .and_then(|d| d.get_mut("properties"))
            .and_then(|p| p.get_mut(*field))
        else {
            continue;
        };
        let mut strategies = Vec::new();
        if s.merge {
            strategies.push("merge");
        }
        if s.retain_keys {
            strategies.push("retainKeys");
        }
        if !strategies.is_empty() {
            prop["x-kubernetes-patch-strategy"] = json!(strategies.join(","));
        }
        match (s.merge, s.key) {
            (true, Some(key)) => {
                prop["x-kubernetes-patch-merge-key"] = json!(key);
                prop["x-kubernetes-list-type"] = json!("map");
                prop["x-kubernetes-list-map-keys"] = json!([key]);
            }
            (true, None) => prop["x-kubernetes-list-type"] = json!("set"),
            _ => {}
        }
    }
    Schemas { definitions, roots }
}

#[cfg(test)]
macro_rules! kinds {
    ($gen:expr, $( $kind:literal => $ty:ty ),* $(,)?) => {{
        let mut out = Map::new();
        $(
            let schema = $gen.subschema_for::<$ty>();
            let name = schema
                .get("$ref")
                .and_then(Value::as_str)
                .and_then(|r| r.rsplit('/').next())
                .unwrap_or_default()
                .to_string();
            out.insert($kind.to_string(), Value::String(name));
        )*
        out
    }};
}

/// What `schemas.json` holds: the definition name of each served kind
/// (`roots`) and the definitions schemars writes for them.
#[cfg(test)]
fn generate() -> Value {
    use k8s_openapi::api::{
        apps::v1 as apps, autoscaling::v2 as autoscaling, batch::v1 as batch,
        coordination::v1 as coordination, core::v1 as core, discovery::v1 as discovery,
        networking::v1 as networking, policy::v1 as policy, rbac::v1 as rbac,
    };
    let mut gen = schemars::generate::SchemaSettings::openapi3().into_generator();
    let named = kinds!(gen,
        "CustomResourceDefinition" => k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        "PodDisruptionBudget" => policy::PodDisruptionBudget,
        "ControllerRevision" => apps::ControllerRevision,
        "Namespace" => core::Namespace,
        "Pod" => core::Pod,
        "Service" => core::Service,
        "Endpoints" => core::Endpoints,
        "ConfigMap" => core::ConfigMap,
        "Secret" => core::Secret,
        "Node" => core::Node,
        "Event" => core::Event,
        "PersistentVolume" => core::PersistentVolume,
        "PersistentVolumeClaim" => core::PersistentVolumeClaim,
        "ServiceAccount" => core::ServiceAccount,
        "Deployment" => apps::Deployment,
        "ReplicaSet" => apps::ReplicaSet,
        "StatefulSet" => apps::StatefulSet,
        "DaemonSet" => apps::DaemonSet,
        "Job" => batch::Job,
        "CronJob" => batch::CronJob,
        "Ingress" => networking::Ingress,
        "IngressClass" => networking::IngressClass,
        "IPAddress" => networking::IPAddress,
        "EndpointSlice" => discovery::EndpointSlice,
        "Lease" => coordination::Lease,
        "HorizontalPodAutoscaler" => autoscaling::HorizontalPodAutoscaler,
        "Role" => rbac::Role,
        "ClusterRole" => rbac::ClusterRole,
        "RoleBinding" => rbac::RoleBinding,
        "ClusterRoleBinding" => rbac::ClusterRoleBinding,
    );
    json!({"roots": named, "definitions": gen.take_definitions(true)})
}

/// Schemas of types the API takes or returns besides the served kinds
/// (options, statuses, subresources, reviews), for the protobuf table.
#[cfg(test)]
pub fn extra_definitions() -> Map<String, Value> {
    use k8s_openapi::api::{
        authentication::v1 as authn, authorization::v1 as authz, autoscaling::v1 as autoscaling,
        core::v1 as core, policy::v1 as policy,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1 as meta;
    let mut gen = schemars::generate::SchemaSettings::openapi3().into_generator();
    gen.subschema_for::<meta::DeleteOptions>();
    gen.subschema_for::<meta::Status>();
    gen.subschema_for::<policy::Eviction>();
    gen.subschema_for::<autoscaling::Scale>();
    gen.subschema_for::<core::Binding>();
    gen.subschema_for::<authn::TokenRequest>();
    gen.subschema_for::<authn::TokenReview>();
    gen.subschema_for::<authn::SelfSubjectReview>();
    gen.subschema_for::<authz::SubjectAccessReview>();
    gen.subschema_for::<authz::SelfSubjectAccessReview>();
    gen.subschema_for::<authz::LocalSubjectAccessReview>();
    gen.subschema_for::<authz::SelfSubjectRulesReview>();
    gen.take_definitions(true)
}

/// The schemas (built once).
pub fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(build)
}

/// What a field holds, as far as merging goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldType {
    /// An object of a named type.
    Object(String),
    /// A list; its elements' type when they are named objects.
    List(Option<String>),
    /// A map; its values' type when they are named objects.
    Map(Option<String>),
    /// Anything else (a scalar, or a type we know nothing of).
    Other,
}

fn ref_name(v: &Value) -> Option<String> {
    v.get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .map(String::from)
        .or_else(|| {
            // schemars may wrap a reference with siblings in allOf
            v.get("allOf")?.as_array()?.iter().find_map(ref_name)
        })
}

impl Schemas {
    /// The definition name of a served kind.
    pub fn root(&self, res: &Resource) -> Option<&str> {
        self.roots
            .iter()
            .find(|(r, _)| std::ptr::eq(*r, res))
            .map(|(_, n)| n.as_str())
    }

    /// The type of `field` of type `ty`.
    pub fn field(&self, ty: &str, field: &str) -> FieldType {
        let Some(prop) = self
            .definitions
            .get(ty)
            .and_then(|d| d.get("properties"))
            .and_then(|p| p.get(field))
        else {
            return FieldType::Other;
        };
        if let Some(name) = ref_name(prop) {
            return FieldType::Object(name);
        }
        match prop.get("type").and_then(Value::as_str) {
            Some("array") => FieldType::List(prop.get("items").and_then(ref_name)),
            Some("object") => FieldType::Map(prop.get("additionalProperties").and_then(ref_name)),
            _ => FieldType::Other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::lookup;

    #[test]
    fn the_checked_in_schemas_are_the_generated_ones() {
        let generated = generate();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/api/schemas.json");
        let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
        if std::env::var_os("WK_UPDATE_SCHEMAS").is_some() {
            std::fs::write(path, &text).unwrap();
        }
        let checked_in: Value = serde_json::from_str(GENERATED).unwrap();
        // compared as text too: the definitions' order is the order served
        assert!(
            checked_in == generated && GENERATED == text,
            "src/api/schemas.json is stale: WK_UPDATE_SCHEMAS=1 cargo test schema::"
        );
    }

    #[test]
    fn every_served_kind_has_a_schema_with_its_gvk() {
        let s = schemas();
        for res in RESOURCES.iter().filter(|r| !r.review) {
            let root = s.root(res).unwrap_or_else(|| panic!("{}", res.kind));
            let def = &s.definitions[root];
            assert_eq!(def["x-kubernetes-group-version-kind"][0]["kind"], res.kind);
        }
    }

    #[test]
    fn fields_lead_to_their_types_and_strategies() {
        let s = schemas();
        let root = s.root(lookup("deployments").unwrap()).unwrap();
        assert_eq!(root, "io.k8s.api.apps.v1.Deployment");
        assert_eq!(
            s.field(root, "spec"),
            FieldType::Object("io.k8s.api.apps.v1.DeploymentSpec".into())
        );
        assert_eq!(
            s.field("io.k8s.api.core.v1.PodSpec", "containers"),
            FieldType::List(Some("io.k8s.api.core.v1.Container".into()))
        );
        assert_eq!(
            s.field("io.k8s.api.core.v1.ConfigMap", "data"),
            FieldType::Map(None)
        );
        assert_eq!(
            strategy("io.k8s.api.core.v1.Container", "env"),
            Some(merge("name"))
        );
        assert_eq!(strategy("io.k8s.api.core.v1.PodSpec", "tolerations"), None);
        let containers = &s.definitions["io.k8s.api.core.v1.PodSpec"]["properties"]["containers"];
        assert_eq!(containers["x-kubernetes-patch-merge-key"], "name");
        assert_eq!(containers["x-kubernetes-patch-strategy"], "merge");
        assert!(
            s.definitions["io.k8s.api.core.v1.PodSpec"]["properties"]["volumes"]
                ["x-kubernetes-patch-strategy"]
                .as_str()
                .unwrap()
                .contains("retainKeys")
        );
    }
}
