//! OpenAPI documents, as kube-apiserver serves them: `/openapi/v3` (an
//! index of group-versions) with one OpenAPI 3.0 document per
//! group-version (`/openapi/v3/apis/apps/v1`), and `/openapi/v2` (Swagger
//! 2.0, JSON or protobuf: `openapi_pb`). Paths and operations are those
//! served, with their query parameters (`fieldValidation` among them:
//! kubectl looks for it before validating on the server) and Kubernetes'
//! extensions; schemas come from the k8s-openapi types (`api::schema`).
//! The built-in documents are made once, on first use, and kept as the
//! bytes served.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use serde_json::{json, Map, Value};

use crate::api::resources::{Resource, RESOURCES};
use crate::api::schema::schemas;

/// `api/v1` or `apis/GROUP/VERSION`.
fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Every group-version served, with its resources.
fn group_versions() -> BTreeMap<String, Vec<&'static Resource>> {
    let mut out: BTreeMap<String, Vec<&'static Resource>> = BTreeMap::new();
    for r in RESOURCES.iter().filter(|r| !r.review) {
        out.entry(gv_path(r.group, r.version)).or_default().push(r);
    }
    out
}

fn query(name: &str, description: &str, ty: &str) -> Value {
    json!({"name": name, "in": "query", "description": description, "schema": {"type": ty}, "uniqueItems": true})
}

fn write_params() -> Vec<Value> {
    vec![
        query("dryRun", "When present, indicates that modifications should not be persisted. Valid values are: - All: all dry run stages will be processed", "string"),
        query("fieldManager", "fieldManager is a name associated with the actor or entity that is making these changes.", "string"),
        query("fieldValidation", "fieldValidation instructs the server on how to handle objects in the request (POST/PUT/PATCH) containing unknown or duplicate fields. Valid values are: - Ignore - Warn - Strict", "string"),
    ]
}

fn list_params() -> Vec<Value> {
    vec![
        query("labelSelector", "A selector to restrict the list of returned objects by their labels.", "string"),
        query("fieldSelector", "A selector to restrict the list of returned objects by their fields.", "string"),
        query("limit", "limit is a maximum number of responses to return for a list call.", "integer"),
        query("continue", "The continue option should be set when retrieving more results from the server.", "string"),
        query("resourceVersion", "resourceVersion sets a constraint on what resource versions a request may be served from.", "string"),
        query("watch", "Watch for changes to the described resources and return them as a stream of add, update, and remove notifications.", "boolean"),
        query("allowWatchBookmarks", "allowWatchBookmarks requests watch events with type \"BOOKMARK\".", "boolean"),
        query("timeoutSeconds", "Timeout for the list/watch call.", "integer"),
    ]
}

fn path_param(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}, "uniqueItems": true})
}

fn op(
    res: &Resource,
    action: &str,
    verb: &str,
    sub: &str,
    params: Vec<Value>,
    body: Option<&str>,
    response: &str,
) -> Value {
    let kind = if sub == "scale" { "Scale" } else { res.kind };
    let (group, version) = if sub == "scale" {
        ("autoscaling", "v1")
    } else {
        (res.group, res.version)
    };
    let mut o = json!({
        "description": format!("{action} {} {}", res.kind, if sub.is_empty() { String::new() } else { format!("{sub} of") }),
        "operationId": format!("{verb}{}{}", res.kind, if sub.is_empty() { String::new() } else { format!("{}{}", &sub[..1].to_uppercase(), &sub[1..]) }),
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": kind},
        "parameters": params,
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": response}}}},
            "401": {"description": "Unauthorized"}},
    });
    if let Some(b) = body {
        o["requestBody"] = json!({"content": {"*/*": {"schema": {"$ref": b}}}, "required": true});
    }
    o
}

/// The paths of one resource.
fn resource_paths(res: &Resource, root: &str, paths: &mut Map<String, Value>) {
    let base = if res.group.is_empty() {
        format!("/api/{}", res.version)
    } else {
        format!("/apis/{}/{}", res.group, res.version)
    };
    let scope = if res.namespaced {
        "/namespaces/{namespace}"
    } else {
        ""
    };
    let collection = format!("{base}{scope}/{}", res.plural);
    let object = format!("{collection}/{{name}}");
    let obj_ref = format!("#/components/schemas/{root}");
    let status_ref = "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Status";
    let scope_params: Vec<Value> = if res.namespaced {
        vec![path_param("namespace")]
    } else {
        vec![]
    };
    let with =
        |extra: Vec<Value>| -> Vec<Value> { scope_params.iter().cloned().chain(extra).collect() };
    let mut patch_params = write_params();
    patch_params.push(query(
        "force",
        "Force is going to \"force\" Apply requests.",
        "boolean",
    ));
    paths.insert(
        collection.clone(),
        json!({
            "get": op(res, "list", "list", "", with(list_params()), None, &obj_ref),
            "post": op(res, "post", "create", "", with(write_params()), Some(&obj_ref), &obj_ref),
            "delete": op(res, "deletecollection", "deletecollection", "", with(list_params()), None, status_ref),
        }),
    );
    let named = |extra: Vec<Value>| -> Vec<Value> {
        let mut v = vec![path_param("name")];
        v.extend(with(extra));
        v
    };
    paths.insert(
        object.clone(),
        json!({
            "get": op(res, "get", "read", "", named(vec![]), None, &obj_ref),
            "put": op(res, "put", "replace", "", named(write_params()), Some(&obj_ref), &obj_ref),
            "patch": op(res, "patch", "patch", "", named(patch_params.clone()), Some("#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"), &obj_ref),
            "delete": op(res, "delete", "delete", "", named(vec![query("gracePeriodSeconds", "The duration in seconds before the object should be deleted.", "integer"), query("propagationPolicy", "Whether and how garbage collection will be performed.", "string")]), None, status_ref),
        }),
    );
    if res.status {
        paths.insert(
            format!("{object}/status"),
            json!({
                "get": op(res, "get", "read", "status", named(vec![]), None, &obj_ref),
                "put": op(res, "put", "replace", "status", named(write_params()), Some(&obj_ref), &obj_ref),
                "patch": op(res, "patch", "patch", "status", named(patch_params.clone()), Some("#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"), &obj_ref),
            }),
        );
    }
    if res.scale {
        let scale = "#/components/schemas/io.k8s.api.autoscaling.v1.Scale";
        paths.insert(
            format!("{object}/scale"),
            json!({
                "get": op(res, "get", "read", "scale", named(vec![]), None, scale),
                "put": op(res, "put", "replace", "scale", named(write_params()), Some(scale), scale),
                "patch": op(res, "patch", "patch", "scale", named(patch_params), Some("#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"), scale),
            }),
        );
    }
}

/// The definitions `roots` refer to, transitively.
fn reachable(defs: &Map<String, Value>, roots: &[String]) -> Map<String, Value> {
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    if let Some(n) = r.rsplit('/').next() {
                        out.push(n.to_string());
                    }
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut seen = BTreeSet::new();
    let mut todo: Vec<String> = roots.to_vec();
    let mut out = Map::new();
    while let Some(n) = todo.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        if let Some(d) = defs.get(&n) {
            refs(d, &mut todo);
            out.insert(n, d.clone());
        }
    }
    out
}

/// Shared definitions every document carries (the Status of errors, the
/// Patch body, autoscaling/v1 Scale).
fn common_definitions() -> Map<String, Value> {
    let mut m = Map::new();
    m.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.Patch".into(),
        json!({"description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body.", "type": "object"}),
    );
    m.insert(
        "io.k8s.apimachinery.pkg.apis.meta.v1.Status".into(),
        json!({"description": "Status is a return value for calls that don't return other objects.", "type": "object",
            "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "code": {"type": "integer", "format": "int32"},
                "message": {"type": "string"}, "reason": {"type": "string"}, "status": {"type": "string"},
                "details": {"type": "object"}, "metadata": {"type": "object"}},
            "x-kubernetes-group-version-kind": [{"group": "", "kind": "Status", "version": "v1"}]}),
    );
    m.insert(
        "io.k8s.api.autoscaling.v1.Scale".into(),
        json!({"description": "Scale represents a scaling request for a resource.", "type": "object",
            "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                "metadata": {"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}]},
                "spec": {"type": "object", "properties": {"replicas": {"type": "integer", "format": "int32"}}},
                "status": {"type": "object", "properties": {"replicas": {"type": "integer", "format": "int32"}, "selector": {"type": "string"}}}},
            "x-kubernetes-group-version-kind": [{"group": "autoscaling", "kind": "Scale", "version": "v1"}]}),
    );
    m
}

/// A document as served: its JSON text, and the hash that the v3 index
/// puts in its URL. The built-in documents are kept so, not as `Value`s:
/// the text is a tenth of the parsed form's memory (the v2 document is
/// 0.8 MB of JSON and was 8 MB as a `Value`).
#[derive(Clone)]
pub struct Served {
    pub json: bytes::Bytes,
    pub hash: String,
}

impl Served {
    fn of(doc: &Value) -> Self {
        let json = serde_json::to_vec(doc).expect("a JSON value serializes");
        let hash = crate::tls::pki::sha256_hex(&json)[..32].to_uppercase();
        Self {
            json: json.into(),
            hash,
        }
    }
}

/// The OpenAPI 3.0 document of one group-version (`api/v1`, `apis/apps/v1`)
/// as served: the built-in ones made once, those of custom resources from
/// their CRDs at each call.
pub fn v3_served(gv: &str) -> Option<Served> {
    static BUILTIN: OnceLock<BTreeMap<String, Served>> = OnceLock::new();
    let builtin = BUILTIN.get_or_init(|| {
        builtin_documents()
            .iter()
            .map(|(gv, doc)| (gv.clone(), Served::of(doc)))
            .collect()
    });
    builtin
        .get(gv)
        .cloned()
        .or_else(|| custom_document(gv).map(|d| Served::of(&d)))
}

/// The OpenAPI 3.0 document of one group-version, made afresh.
#[cfg(test)]
fn v3_document(gv: &str) -> Option<Value> {
    builtin_documents()
        .remove(gv)
        .or_else(|| custom_document(gv))
}

fn custom_gvs() -> BTreeSet<String> {
    crate::api::crd::all()
        .iter()
        .map(|c| gv_path(c.res.group, c.res.version))
        .collect()
}

fn custom_document(gv: &str) -> Option<Value> {
    let customs: Vec<_> = crate::api::crd::all()
        .into_iter()
        .filter(|c| gv_path(c.res.group, c.res.version) == gv)
        .collect();
    if customs.is_empty() {
        return None;
    }
    let mut paths = Map::new();
    let mut components = reachable(
        &schemas().definitions,
        &["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".to_string()],
    );
    components.extend(common_definitions());
    for c in &customs {
        let (name, def) = crate::api::crd::definition(c);
        resource_paths(c.res, &name, &mut paths);
        components.insert(name, def);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
        "paths": paths,
        "components": {"schemas": components},
    }))
}

/// The built-in group-versions' OpenAPI 3.0 documents, made afresh.
fn builtin_documents() -> BTreeMap<String, Value> {
    let s = schemas();
    let mut out = BTreeMap::new();
    for (gv, resources) in group_versions() {
        let mut paths = Map::new();
        let mut roots = vec!["io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta".to_string()];
        for res in &resources {
            if let Some(root) = s.root(res) {
                resource_paths(res, root, &mut paths);
                roots.push(root.to_string());
            }
        }
        let mut components = reachable(&s.definitions, &roots);
        components.extend(common_definitions());
        out.insert(
            gv.clone(),
            json!({
                "openapi": "3.0.0",
                "info": {"title": "Kubernetes", "version": format!("v1.{}.0", super::discovery::KUBERNETES_MINOR)},
                "paths": paths,
                "components": {"schemas": components},
            }),
        );
    }
    out
}

/// `/openapi/v3`: the index of group-version documents.
pub fn v3_index() -> Value {
    let paths: Map<String, Value> = group_versions()
        .keys()
        .cloned()
        .chain(custom_gvs())
        .filter_map(|gv| {
            let doc = v3_served(&gv)?;
            let url = format!("/openapi/v3/{gv}?hash={}", doc.hash);
            Some((gv, json!({"serverRelativeURL": url})))
        })
        .collect();
    json!({"paths": paths})
}

/// An OpenAPI 3 reference (the value of a `$ref`) as a Swagger 2 one.
fn v2_ref(r: &Value) -> Value {
    match r {
        Value::String(r) => json!(r.replace("#/components/schemas/", "#/definitions/")),
        other => other.clone(),
    }
}

/// Rewrite OpenAPI 3 references into Swagger 2 ones.
fn to_v2(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| match (k.as_str(), x) {
                    ("$ref", r @ Value::String(_)) => (k.clone(), v2_ref(r)),
                    _ => (k.clone(), to_v2(x)),
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(to_v2).collect()),
        other => other.clone(),
    }
}

/// A schema of an OpenAPI 3 document as Swagger 2 has it, as kube-apiserver
/// publishes v2: a reference with siblings is a plain `$ref` again (v3 wraps
/// it in a one-item `allOf`), and what Swagger 2 cannot say (`oneOf`,
/// `anyOf`, `not`, `nullable`) is left out, so a value that may take either
/// of two forms is any value. Keys are schema keywords here; the names of
/// `properties` are not (JSONSchemaProps has fields called `oneOf`).
fn schema_to_v2(s: &Value) -> Value {
    let Value::Object(m) = s else {
        return s.clone();
    };
    let mut out = Map::new();
    for (k, x) in m {
        match k.as_str() {
            "$ref" => {
                out.insert(k.clone(), v2_ref(x));
            }
            "properties" => {
                let props = x
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, p)| (name.clone(), schema_to_v2(p)))
                    .collect();
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" => {
                out.insert(k.clone(), schema_to_v2(x));
            }
            "allOf" => match x.as_array().map(Vec::as_slice) {
                Some([only])
                    if only.as_object().is_some_and(|o| o.len() == 1)
                        && only.get("$ref").is_some() =>
                {
                    out.insert("$ref".into(), v2_ref(&only["$ref"]));
                }
                _ => {
                    let all = x
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(schema_to_v2)
                        .collect();
                    out.insert(k.clone(), Value::Array(all));
                }
            },
            "oneOf" | "anyOf" | "not" | "nullable" => {}
            _ => {
                out.insert(k.clone(), x.clone());
            }
        }
    }
    Value::Object(out)
}

/// `/openapi/v2` as served: JSON, and protobuf (`openapi_pb`).
#[derive(Clone)]
pub struct ServedV2 {
    pub json: bytes::Bytes,
    pub protobuf: bytes::Bytes,
}

/// The OpenAPI v2 document as served: the built-in kinds' made once, with
/// the custom kinds' made at each call when there are any.
pub fn v2_served() -> ServedV2 {
    static BUILTIN: OnceLock<ServedV2> = OnceLock::new();
    let serve = |doc: Value| {
        let (protobuf, skipped) = super::openapi_pb::encode(&doc);
        if !skipped.is_empty() {
            tracing::debug!(?skipped, "OpenAPI v2 keys protobuf cannot express");
        }
        ServedV2 {
            json: serde_json::to_vec(&doc)
                .expect("a JSON value serializes")
                .into(),
            protobuf: protobuf.into(),
        }
    };
    if custom_gvs().is_empty() {
        BUILTIN.get_or_init(|| serve(v2_document())).clone()
    } else {
        serve(v2_document())
    }
}

/// The OpenAPI v2 document (Swagger 2.0 with every definition and path),
/// made afresh from the v3 documents of the built-in and custom kinds.
pub fn v2_document() -> Value {
    let mut docs = builtin_documents();
    for gv in custom_gvs() {
        if let Some(doc) = custom_document(&gv) {
            docs.insert(gv, doc);
        }
    }
    v2_of(docs.into_values())
}

fn v2_of(docs: impl IntoIterator<Item = Value>) -> Value {
    {
        let mut definitions = Map::new();
        let mut paths = Map::new();
        for doc in docs {
            for (name, d) in doc["components"]["schemas"]
                .as_object()
                .into_iter()
                .flatten()
            {
                definitions.insert(name.clone(), schema_to_v2(d));
            }
            for (p, item) in doc["paths"].as_object().into_iter().flatten() {
                let mut item = to_v2(item);
                // Swagger 2 parameters carry their type directly; bodies are parameters
                for (_, o) in item.as_object_mut().into_iter().flatten() {
                    let body = o
                        .get("requestBody")
                        .map(|b| b["content"]["*/*"]["schema"].clone());
                    if let Some(params) = o.get_mut("parameters").and_then(Value::as_array_mut) {
                        for p in params.iter_mut() {
                            if let Some(t) = p.get("schema").and_then(|s| s.get("type")).cloned() {
                                p["type"] = t;
                                p.as_object_mut().map(|m| m.remove("schema"));
                            }
                        }
                        if let Some(b) = body {
                            params.push(json!({"name": "body", "in": "body", "required": true, "schema": b}));
                        }
                    }
                    if let Some(m) = o.as_object_mut() {
                        m.remove("requestBody");
                        if let Some(r) = m.get_mut("responses").and_then(|r| r.get_mut("200")) {
                            let schema = r["content"]["application/json"]["schema"].clone();
                            *r = json!({"description": "OK", "schema": schema});
                        }
                    }
                }
                paths.insert(p.clone(), item);
            }
        }
        json!({
            "swagger": "2.0",
            "info": {"title": "Kubernetes", "version": format!("v1.{}.0", super::discovery::KUBERNETES_MINOR)},
            "paths": paths,
            "definitions": definitions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_lists_every_group_version_and_documents_resolve() {
        let index = v3_index();
        for gv in [
            "api/v1",
            "apis/apps/v1",
            "apis/rbac.authorization.k8s.io/v1",
        ] {
            let url = index["paths"][gv]["serverRelativeURL"].as_str().unwrap();
            assert!(url.starts_with(&format!("/openapi/v3/{gv}?hash=")), "{url}");
        }
        let apps = v3_document("apis/apps/v1").unwrap();
        let patch =
            &apps["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(
            patch["x-kubernetes-group-version-kind"]["kind"],
            "Deployment"
        );
        assert!(patch["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "fieldValidation" && p["in"] == "query"));
        // every reference resolves inside the document
        fn check(v: &Value, schemas: &Value) {
            match v {
                Value::Object(m) => {
                    if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                        let name = r.trim_start_matches("#/components/schemas/");
                        assert!(schemas.get(name).is_some(), "dangling {r}");
                    }
                    m.values().for_each(|x| check(x, schemas));
                }
                Value::Array(a) => a.iter().for_each(|x| check(x, schemas)),
                _ => {}
            }
        }
        check(&apps, &apps["components"]["schemas"]);
        let v2 = v2_document();
        assert_eq!(v2["swagger"], "2.0");
        assert!(v2["definitions"]["io.k8s.api.apps.v1.Deployment"].is_object());
        assert!(!v2.to_string().contains("#/components/schemas/"));
    }
}
