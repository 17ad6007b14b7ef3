//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`):
//! the `k8s\0` magic, a `runtime.Unknown` envelope naming the type, and the
//! message, decoded with the generated types of the `k8s-pb` crate and
//! turned into the JSON the handlers take. kubectl sends protobuf for
//! typed calls (`auth whoami`, `auth can-i`, `create token`).
//!
//! Only the kinds listed in [`decode`] are understood; any other protobuf
//! body gets 415 naming what to send instead, never a JSON parse error.

use prost::Message;
use serde_json::{json, Map, Value};

use k8s_pb::api::authentication::v1 as authn;
use k8s_pb::api::authorization::v1 as authz;
use k8s_pb::api::core::v1 as core;
use k8s_pb::api::rbac::v1 as rbac;
use k8s_pb::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_pb::apimachinery::pkg::runtime::Unknown;

use crate::api::ApiError;

/// The protobuf media type.
pub const CONTENT_TYPE: &str = "application/vnd.kubernetes.protobuf";

const MAGIC: &[u8] = b"k8s\x00";

/// Whether a content type is Kubernetes protobuf.
pub fn is_protobuf(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|t| t.trim() == CONTENT_TYPE)
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError::BadRequest(format!("error decoding protobuf: {e}"))
}

fn meta(m: Option<ObjectMeta>) -> Value {
    let mut out = Map::new();
    if let Some(m) = m {
        if let Some(n) = m.name.filter(|n| !n.is_empty()) {
            out.insert("name".into(), json!(n));
        }
        if let Some(n) = m.namespace.filter(|n| !n.is_empty()) {
            out.insert("namespace".into(), json!(n));
        }
        if let Some(n) = m.generate_name.filter(|n| !n.is_empty()) {
            out.insert("generateName".into(), json!(n));
        }
        if let Some(rv) = m.resource_version.filter(|n| !n.is_empty()) {
            out.insert("resourceVersion".into(), json!(rv));
        }
        if !m.labels.is_empty() {
            out.insert("labels".into(), json!(m.labels));
        }
        if !m.annotations.is_empty() {
            out.insert("annotations".into(), json!(m.annotations));
        }
    }
    Value::Object(out)
}

fn rules(rules: Vec<rbac::PolicyRule>) -> Value {
    json!(rules
        .into_iter()
        .map(|r| {
            let mut v = Map::new();
            v.insert("verbs".into(), json!(r.verbs));
            for (k, list) in [
                ("apiGroups", r.api_groups),
                ("resources", r.resources),
                ("resourceNames", r.resource_names),
                ("nonResourceURLs", r.non_resource_ur_ls),
            ] {
                if !list.is_empty() {
                    v.insert(k.into(), json!(list));
                }
            }
            Value::Object(v)
        })
        .collect::<Vec<_>>())
}

fn selector(s: LabelSelector) -> Value {
    let mut v = Map::new();
    if !s.match_labels.is_empty() {
        v.insert("matchLabels".into(), json!(s.match_labels));
    }
    if !s.match_expressions.is_empty() {
        v.insert(
            "matchExpressions".into(),
            json!(s
                .match_expressions
                .into_iter()
                .map(|e| json!({"key": e.key.unwrap_or_default(), "operator": e.operator.unwrap_or_default(), "values": e.values}))
                .collect::<Vec<_>>()),
        );
    }
    Value::Object(v)
}

fn binding(subjects: Vec<rbac::Subject>, role_ref: Option<rbac::RoleRef>) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert(
        "subjects".into(),
        json!(subjects
            .into_iter()
            .map(|s| {
                let mut v =
                    json!({"kind": s.kind.unwrap_or_default(), "name": s.name.unwrap_or_default()});
                if let Some(g) = s.api_group.filter(|g| !g.is_empty()) {
                    v["apiGroup"] = json!(g);
                }
                if let Some(n) = s.namespace.filter(|n| !n.is_empty()) {
                    v["namespace"] = json!(n);
                }
                v
            })
            .collect::<Vec<_>>()),
    );
    let r = role_ref.unwrap_or_default();
    out.insert(
        "roleRef".into(),
        json!({"apiGroup": r.api_group.unwrap_or_default(), "kind": r.kind.unwrap_or_default(), "name": r.name.unwrap_or_default()}),
    );
    out
}

fn resource_attributes(r: authz::ResourceAttributes) -> Value {
    json!({
        "namespace": r.namespace.unwrap_or_default(),
        "verb": r.verb.unwrap_or_default(),
        "group": r.group.unwrap_or_default(),
        "version": r.version.unwrap_or_default(),
        "resource": r.resource.unwrap_or_default(),
        "subresource": r.subresource.unwrap_or_default(),
        "name": r.name.unwrap_or_default(),
    })
}

fn access_spec(
    resource: Option<authz::ResourceAttributes>,
    non_resource: Option<authz::NonResourceAttributes>,
) -> Map<String, Value> {
    let mut spec = Map::new();
    if let Some(r) = resource {
        spec.insert("resourceAttributes".into(), resource_attributes(r));
    }
    if let Some(n) = non_resource {
        spec.insert(
            "nonResourceAttributes".into(),
            json!({"path": n.path.unwrap_or_default(), "verb": n.verb.unwrap_or_default()}),
        );
    }
    spec
}

fn subject_spec(s: authz::SubjectAccessReviewSpec) -> Value {
    let mut spec = access_spec(s.resource_attributes, s.non_resource_attributes);
    spec.insert("user".into(), json!(s.user.unwrap_or_default()));
    spec.insert("groups".into(), json!(s.groups));
    spec.insert("uid".into(), json!(s.uid.unwrap_or_default()));
    let extra: Map<String, Value> = s
        .extra
        .into_iter()
        .map(|(k, v)| (k, json!(v.items)))
        .collect();
    spec.insert("extra".into(), Value::Object(extra));
    Value::Object(spec)
}

/// Decode a protobuf body into its JSON object.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let raw = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("the body does not start with the k8s protobuf magic"))?;
    let unknown = Unknown::decode(raw).map_err(bad)?;
    let tm = unknown.type_meta.unwrap_or_default();
    let api_version = tm.api_version.unwrap_or_default();
    let kind = tm.kind.unwrap_or_default();
    let bytes = unknown.raw.unwrap_or_default();
    let typed = |spec: Value, m: Option<ObjectMeta>| json!({"apiVersion": api_version, "kind": kind, "metadata": meta(m), "spec": spec});
    // a kind whose fields sit beside metadata
    let flat = |fields: Map<String, Value>, m: Option<ObjectMeta>| {
        let mut v = json!({"apiVersion": api_version, "kind": kind, "metadata": meta(m)});
        for (k, f) in fields {
            v[k] = f;
        }
        v
    };
    Ok(match (api_version.as_str(), kind.as_str()) {
        ("rbac.authorization.k8s.io/v1", "Role") => {
            let m = rbac::Role::decode(bytes.as_slice()).map_err(bad)?;
            flat(Map::from_iter([("rules".to_string(), rules(m.rules))]), m.metadata)
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            let m = rbac::ClusterRole::decode(bytes.as_slice()).map_err(bad)?;
            let mut f = Map::from_iter([("rules".to_string(), rules(m.rules))]);
            if let Some(a) = m.aggregation_rule {
                f.insert(
                    "aggregationRule".into(),
                    json!({"clusterRoleSelectors": a.cluster_role_selectors.into_iter().map(selector).collect::<Vec<_>>()}),
                );
            }
            flat(f, m.metadata)
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            let m = rbac::RoleBinding::decode(bytes.as_slice()).map_err(bad)?;
            flat(binding(m.subjects, m.role_ref), m.metadata)
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            let m = rbac::ClusterRoleBinding::decode(bytes.as_slice()).map_err(bad)?;
            flat(binding(m.subjects, m.role_ref), m.metadata)
        }
        ("v1", "Namespace") => {
            let m = core::Namespace::decode(bytes.as_slice()).map_err(bad)?;
            let mut f = Map::new();
            if let Some(spec) = m.spec.filter(|s| !s.finalizers.is_empty()) {
                f.insert("spec".into(), json!({"finalizers": spec.finalizers}));
            }
            flat(f, m.metadata)
        }
        ("v1", "ServiceAccount") => {
            let m = core::ServiceAccount::decode(bytes.as_slice()).map_err(bad)?;
            let mut f = Map::new();
            if let Some(a) = m.automount_service_account_token {
                f.insert("automountServiceAccountToken".into(), json!(a));
            }
            if !m.image_pull_secrets.is_empty() {
                f.insert(
                    "imagePullSecrets".into(),
                    json!(m.image_pull_secrets.into_iter().map(|r| json!({"name": r.name.unwrap_or_default()})).collect::<Vec<_>>()),
                );
            }
            flat(f, m.metadata)
        }
        ("authentication.k8s.io/v1", "SelfSubjectReview") => {
            let m = authn::SelfSubjectReview::decode(bytes.as_slice()).map_err(bad)?;
            typed(json!({}), m.metadata)
        }
        ("authentication.k8s.io/v1", "TokenReview") => {
            let m = authn::TokenReview::decode(bytes.as_slice()).map_err(bad)?;
            let s = m.spec.unwrap_or_default();
            typed(
                json!({"token": s.token.unwrap_or_default(), "audiences": s.audiences}),
                m.metadata,
            )
        }
        ("authentication.k8s.io/v1", "TokenRequest") => {
            let m = authn::TokenRequest::decode(bytes.as_slice()).map_err(bad)?;
            let s = m.spec.unwrap_or_default();
            let mut spec = json!({"audiences": s.audiences});
            if let Some(e) = s.expiration_seconds {
                spec["expirationSeconds"] = json!(e);
            }
            if let Some(b) = s.bound_object_ref {
                spec["boundObjectRef"] = json!({"kind": b.kind.unwrap_or_default(),
                    "apiVersion": b.api_version.unwrap_or_default(),
                    "name": b.name.unwrap_or_default(), "uid": b.u_id.unwrap_or_default()});
            }
            typed(spec, m.metadata)
        }
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {
            let m = authz::SelfSubjectAccessReview::decode(bytes.as_slice()).map_err(bad)?;
            let s = m.spec.unwrap_or_default();
            typed(
                Value::Object(access_spec(s.resource_attributes, s.non_resource_attributes)),
                m.metadata,
            )
        }
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => {
            let m = authz::SelfSubjectRulesReview::decode(bytes.as_slice()).map_err(bad)?;
            let s = m.spec.unwrap_or_default();
            typed(json!({"namespace": s.namespace.unwrap_or_default()}), m.metadata)
        }
        ("authorization.k8s.io/v1", "SubjectAccessReview") => {
            let m = authz::SubjectAccessReview::decode(bytes.as_slice()).map_err(bad)?;
            typed(subject_spec(m.spec.unwrap_or_default()), m.metadata)
        }
        ("authorization.k8s.io/v1", "LocalSubjectAccessReview") => {
            let m = authz::LocalSubjectAccessReview::decode(bytes.as_slice()).map_err(bad)?;
            typed(subject_spec(m.spec.unwrap_or_default()), m.metadata)
        }
        _ => {
            return Err(ApiError::UnsupportedMediaType(format!(
                "application/json, application/yaml ({CONTENT_TYPE} is accepted only for the authentication.k8s.io and authorization.k8s.io reviews, TokenRequest, Namespace, ServiceAccount and the RBAC kinds; {api_version} {kind} was sent)"
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::apimachinery::pkg::runtime::TypeMeta;

    fn wrap(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let u = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut out = MAGIC.to_vec();
        out.extend(u.encode_to_vec());
        out
    }

    #[test]
    fn an_access_review_decodes_to_its_json() {
        let review = authz::SelfSubjectAccessReview {
            metadata: Some(ObjectMeta::default()),
            spec: Some(authz::SelfSubjectAccessReviewSpec {
                resource_attributes: Some(authz::ResourceAttributes {
                    namespace: Some("team".into()),
                    verb: Some("list".into()),
                    resource: Some("pods".into()),
                    ..Default::default()
                }),
                non_resource_attributes: None,
            }),
            status: None,
        };
        let body = wrap(
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            review.encode_to_vec(),
        );
        let v = decode(&body).unwrap();
        assert_eq!(v["kind"], "SelfSubjectAccessReview");
        assert_eq!(v["spec"]["resourceAttributes"]["verb"], "list");
        assert_eq!(v["spec"]["resourceAttributes"]["namespace"], "team");
    }

    #[test]
    fn other_kinds_and_garbage_are_refused_clearly() {
        let e = decode(&wrap("v1", "ConfigMap", vec![])).unwrap_err();
        assert_eq!(e.code(), 415);
        assert!(e.to_string().contains("v1 ConfigMap"), "{e}");
        assert_eq!(decode(b"{\"json\": true}").unwrap_err().code(), 400);
    }
}
