//! CustomResourceDefinitions (`apiextensions.k8s.io/v1`): the kinds users
//! add at run time, and the custom resources of those kinds.
//!
//! The registry holds one served resource per served version of every
//! stored CRD ([`sync`] rebuilds it from the CRDs). Their [`Resource`]s are
//! leaked once each and reused, so a custom resource is served by the same
//! code paths as a built-in one (`&'static Resource` everywhere).
//!
//! A custom resource is checked against its version's structural schema:
//! unknown fields are pruned (reported to `fieldValidation`), defaults are
//! applied, then types, `required`, `enum`, bounds, lengths and patterns
//! are validated, with errors naming the field as kube-apiserver does.
//! Versions share one stored form (conversion strategy `None`: only
//! `apiVersion` changes). No I/O.

use std::sync::{Arc, Mutex, RwLock};

use serde_json::{json, Map, Value};

use super::error::{ApiError, FieldError};
use super::resources::Resource;

/// An additional printer column.
#[derive(Debug, Clone)]
pub struct PrinterColumn {
    pub column: super::printers::Column,
    /// As a JSON pointer (from the column's simple JSONPath).
    pub pointer: String,
}

/// The paths of the scale subresource.
#[derive(Debug, Clone)]
pub struct ScalePaths {
    pub spec_replicas: String,
    pub status_replicas: String,
    pub label_selector: Option<String>,
}

/// One served version of a CRD.
#[derive(Debug)]
pub struct Custom {
    pub res: &'static Resource,
    /// The CRD's name (`PLURAL.GROUP`).
    pub crd: String,
    /// The version's `openAPIV3Schema`.
    pub schema: Value,
    /// `additionalPrinterColumns`; empty means NAME and AGE.
    pub columns: Vec<PrinterColumn>,
    pub scale: Option<ScalePaths>,
}

static REGISTRY: RwLock<Vec<Arc<Custom>>> = RwLock::new(Vec::new());
static LEAKED: Mutex<Vec<&'static Resource>> = Mutex::new(Vec::new());

/// Every served custom resource.
pub fn all() -> Vec<Arc<Custom>> {
    REGISTRY.read().expect("registry lock").clone()
}

/// The custom resource `res` is, if it is one.
pub fn of(res: &Resource) -> Option<Arc<Custom>> {
    REGISTRY
        .read()
        .expect("registry lock")
        .iter()
        .find(|c| std::ptr::eq(c.res, res))
        .cloned()
}

/// `s` as a `&'static str`, leaked once per distinct string.
pub(crate) fn leak_str(s: &str) -> &'static str {
    static INTERNED: Mutex<std::collections::BTreeSet<&'static str>> =
        Mutex::new(std::collections::BTreeSet::new());
    let mut set = INTERNED.lock().expect("intern lock");
    if let Some(x) = set.get(s) {
        return x;
    }
    let x: &'static str = Box::leak(s.to_string().into_boxed_str());
    set.insert(x);
    x
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect()
}

/// The leaked resource equal to `want`, leaking it the first time.
fn resource(want: Resource) -> &'static Resource {
    let mut leaked = LEAKED.lock().expect("leak lock");
    if let Some(r) = leaked.iter().find(|r| ***r == want) {
        return r;
    }
    let r: &'static Resource = Box::leak(Box::new(want));
    leaked.push(r);
    r
}

/// A JSON pointer from a simple JSONPath (`.spec.replicas`, `.a[0].b`).
pub fn pointer(json_path: &str) -> String {
    let mut out = String::new();
    for part in json_path.trim_start_matches('.').split('.') {
        if part.is_empty() {
            continue;
        }
        let (field, index) = match part.split_once('[') {
            Some((f, rest)) => (f, Some(rest.trim_end_matches(']'))),
            None => (part, None),
        };
        out.push('/');
        out.push_str(&field.replace('~', "~0").replace('/', "~1"));
        if let Some(i) = index {
            out.push('/');
            out.push_str(i);
        }
    }
    out
}

/// Rebuild the registry from the stored CRDs.
pub fn sync(crds: &[Arc<Value>]) {
    let mut next = Vec::new();
    for crd in crds {
        if crd.pointer("/metadata/deletionTimestamp").is_some() {
            continue;
        }
        let spec = &crd["spec"];
        let group = spec["group"].as_str().unwrap_or_default();
        let names = &spec["names"];
        let (Some(kind), Some(plural)) = (names["kind"].as_str(), names["plural"].as_str()) else {
            continue;
        };
        let singular = names["singular"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| kind.to_ascii_lowercase());
        let shorts: Vec<&'static str> = strings(&names["shortNames"])
            .iter()
            .map(|s| leak_str(s))
            .collect();
        let categories: Vec<&'static str> = strings(&names["categories"])
            .iter()
            .map(|s| leak_str(s))
            .collect();
        for v in spec["versions"].as_array().into_iter().flatten() {
            if v["served"] != true {
                continue;
            }
            let Some(version) = v["name"].as_str() else {
                continue;
            };
            let subs = &v["subresources"];
            let want = Resource {
                group: leak_str(group),
                version: leak_str(version),
                kind: leak_str(kind),
                plural: leak_str(plural),
                singular: leak_str(&singular),
                short_names: Box::leak(shorts.clone().into_boxed_slice()),
                namespaced: spec["scope"] != "Cluster",
                status: subs.get("status").is_some(),
                scale: subs.get("scale").is_some(),
                categories: Box::leak(categories.clone().into_boxed_slice()),
                review: false,
            };
            let columns = v["additionalPrinterColumns"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| {
                    Some(PrinterColumn {
                        column: super::printers::Column {
                            name: leak_str(c["name"].as_str()?),
                            ty: leak_str(c["type"].as_str().unwrap_or("string")),
                            format: leak_str(c["format"].as_str().unwrap_or_default()),
                            description: leak_str(c["description"].as_str().unwrap_or_default()),
                            priority: c["priority"].as_u64().unwrap_or(0).min(255) as u8,
                        },
                        pointer: pointer(c["jsonPath"].as_str()?),
                    })
                })
                .collect();
            let scale = subs.get("scale").map(|s| ScalePaths {
                spec_replicas: pointer(s["specReplicasPath"].as_str().unwrap_or(".spec.replicas")),
                status_replicas: pointer(
                    s["statusReplicasPath"]
                        .as_str()
                        .unwrap_or(".status.replicas"),
                ),
                label_selector: s["labelSelectorPath"].as_str().map(pointer),
            });
            next.push(Arc::new(Custom {
                res: resource(want),
                crd: crate::api::meta::name(crd).to_string(),
                schema: v["schema"]["openAPIV3Schema"].clone(),
                columns,
                scale,
            }));
        }
    }
    *REGISTRY.write().expect("registry lock") = next;
}

// ------------------------------------------------------------ the CRD kind

/// Defaults of a CRD: singular and listKind names, and the status the API
/// server keeps (names accepted, established, stored versions).
pub fn default_crd(crd: &mut Value) {
    let kind = crd["spec"]["names"]["kind"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let names = &mut crd["spec"]["names"];
    if names.is_object() {
        if names.get("singular").is_none() {
            names["singular"] = json!(kind.to_ascii_lowercase());
        }
        if names.get("listKind").is_none() {
            names["listKind"] = json!(format!("{kind}List"));
        }
    }
    if crd["spec"].get("scope").is_none() {
        crd["spec"]["scope"] = json!("Namespaced");
    }
    let storage: Vec<String> = crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["storage"] == true)
        .filter_map(|v| v["name"].as_str().map(String::from))
        .collect();
    let mut stored = strings(&crd["status"]["storedVersions"]);
    for s in storage {
        if !stored.contains(&s) {
            stored.push(s);
        }
    }
    let now = crate::api::meta::now();
    let since = |t: &str| {
        crd["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == t)
            .and_then(|c| c["lastTransitionTime"].as_str())
            .unwrap_or(&now)
            .to_string()
    };
    let conditions = json!([
        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
         "message": "no conflicts found", "lastTransitionTime": since("NamesAccepted")},
        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
         "message": "the initial names have been accepted", "lastTransitionTime": since("Established")},
    ]);
    crd["status"] = json!({
        "acceptedNames": crd["spec"]["names"].clone(),
        "conditions": conditions,
        "storedVersions": stored,
    });
}

/// Validate a CRD.
pub fn validate_crd(crd: &Value, errs: &mut Vec<FieldError>) {
    let spec = &crd["spec"];
    let group = spec["group"].as_str().unwrap_or_default();
    let plural = spec["names"]["plural"].as_str().unwrap_or_default();
    if group.is_empty() {
        errs.push(FieldError::required("spec.group"));
    } else if !group.contains('.') {
        errs.push(FieldError::invalid(
            "spec.group",
            group,
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        errs.push(FieldError::required("spec.names.plural"));
    }
    if spec["names"]["kind"]
        .as_str()
        .unwrap_or_default()
        .is_empty()
    {
        errs.push(FieldError::required("spec.names.kind"));
    }
    let name = crate::api::meta::name(crd);
    if !plural.is_empty() && !group.is_empty() && name != format!("{plural}.{group}") {
        errs.push(FieldError::invalid(
            "metadata.name",
            name,
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    match spec["scope"].as_str() {
        None | Some("Namespaced" | "Cluster") => {}
        Some(other) => errs.push(FieldError::not_supported(
            "spec.scope",
            other,
            &["Cluster", "Namespaced"],
        )),
    }
    let versions = spec["versions"].as_array().cloned().unwrap_or_default();
    if versions.is_empty() {
        errs.push(FieldError::invalid(
            "spec.versions",
            Value::Array(vec![]),
            "must have exactly one version marked as storage version",
        ));
    }
    let storage = versions.iter().filter(|v| v["storage"] == true).count();
    if !versions.is_empty() && storage != 1 {
        errs.push(FieldError::invalid(
            "spec.versions",
            json!(versions.len()),
            "must have exactly one version marked as storage version",
        ));
    }
    for (i, v) in versions.iter().enumerate() {
        if v["name"].as_str().unwrap_or_default().is_empty() {
            errs.push(FieldError::required(format!("spec.versions[{i}].name")));
        }
        let schema = &v["schema"]["openAPIV3Schema"];
        if !schema.is_object() {
            errs.push(FieldError::required(format!(
                "spec.versions[{i}].schema.openAPIV3Schema"
            )));
        } else if schema["type"] != "object" {
            errs.push(FieldError::invalid(
                format!("spec.versions[{i}].schema.openAPIV3Schema.type"),
                schema["type"].clone(),
                "must be object at the root",
            ));
        }
    }
}

// ------------------------------------------------------ custom resources

/// Whether unknown fields below `schema` are kept.
fn preserves(schema: &Value) -> bool {
    schema["x-kubernetes-preserve-unknown-fields"] == true
}

/// Remove the fields `schema` does not declare, returning their paths.
fn prune(v: &mut Value, schema: &Value, path: &str, out: &mut Vec<String>) {
    if schema["x-kubernetes-embedded-resource"] == true
        || schema["x-kubernetes-int-or-string"] == true
    {
        return;
    }
    match v {
        Value::Object(m) => {
            let props = schema["properties"].as_object();
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            let keep_all = preserves(schema);
            let keys: Vec<String> = m.keys().cloned().collect();
            for k in keys {
                let child_path = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let child_schema = props.and_then(|p| p.get(&k)).or(extra);
                match child_schema {
                    Some(s) => prune(m.get_mut(&k).expect("key listed"), s, &child_path, out),
                    None if keep_all => {}
                    None => {
                        m.remove(&k);
                        out.push(child_path);
                    }
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, e) in items.iter_mut().enumerate() {
                    prune(e, s, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Apply the `default`s of `schema` to `v`.
fn default(v: &mut Value, schema: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(props) = schema["properties"].as_object() {
                for (k, s) in props {
                    if !m.contains_key(k) {
                        if let Some(d) = s.get("default") {
                            m.insert(k.clone(), d.clone());
                        }
                    }
                    if let Some(child) = m.get_mut(k) {
                        default(child, s);
                    }
                }
            }
            if let Some(extra) = schema.get("additionalProperties").filter(|a| a.is_object()) {
                for (_, child) in m.iter_mut() {
                    default(child, extra);
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for e in items {
                    default(e, s);
                }
            }
        }
        _ => {}
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Validate `v` at `path` against `schema`.
fn check(v: &Value, schema: &Value, path: &str, errs: &mut Vec<FieldError>) {
    let field = if path.is_empty() { "<root>" } else { path };
    if v.is_null() {
        if schema["nullable"] != true && schema.get("type").is_some() {
            errs.push(FieldError::invalid(
                field,
                "null",
                format!(
                    "{field} in body must be of type {}: \"null\"",
                    schema["type"].as_str().unwrap_or("object")
                ),
            ));
        }
        return;
    }
    let int_or_string = schema["x-kubernetes-int-or-string"] == true;
    if let Some(want) = schema["type"].as_str() {
        let have = type_name(v);
        let ok = have == want
            || (want == "number" && have == "integer")
            || (int_or_string && matches!(have, "integer" | "string"));
        if !ok {
            errs.push(FieldError::invalid(
                field,
                v.clone(),
                format!("{field} in body must be of type {want}: \"{have}\""),
            ));
            return;
        }
    }
    if let Some(choices) = schema["enum"].as_array() {
        if !choices.contains(v) {
            let allowed: Vec<String> = choices.iter().map(|c| c.to_string()).collect();
            errs.push(FieldError::not_supported(
                field,
                v.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string()),
                &allowed.iter().map(String::as_str).collect::<Vec<_>>(),
            ));
        }
    }
    match v {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(min) = schema["minimum"].as_f64() {
                let exclusive = schema["exclusiveMinimum"] == true;
                if x < min || (exclusive && x == min) {
                    errs.push(FieldError::invalid(
                        field,
                        v.clone(),
                        format!("{field} in body should be greater than or equal to {min}"),
                    ));
                }
            }
            if let Some(max) = schema["maximum"].as_f64() {
                let exclusive = schema["exclusiveMaximum"] == true;
                if x > max || (exclusive && x == max) {
                    errs.push(FieldError::invalid(
                        field,
                        v.clone(),
                        format!("{field} in body should be less than or equal to {max}"),
                    ));
                }
            }
        }
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if schema["minLength"].as_u64().is_some_and(|m| len < m) {
                errs.push(FieldError::invalid(
                    field,
                    v.clone(),
                    format!(
                        "{field} in body should be at least {} chars long",
                        schema["minLength"]
                    ),
                ));
            }
            if schema["maxLength"].as_u64().is_some_and(|m| len > m) {
                errs.push(FieldError::invalid(
                    field,
                    v.clone(),
                    format!(
                        "{field} in body should be at most {} chars long",
                        schema["maxLength"]
                    ),
                ));
            }
            if let Some(p) = schema["pattern"].as_str() {
                if regex::Regex::new(p).is_ok_and(|re| !re.is_match(s)) {
                    errs.push(FieldError::invalid(
                        field,
                        v.clone(),
                        format!("{field} in body should match '{p}'"),
                    ));
                }
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if schema["minItems"].as_u64().is_some_and(|m| n < m) {
                errs.push(FieldError::invalid(
                    field,
                    json!(n),
                    format!(
                        "{field} in body should have at least {} items",
                        schema["minItems"]
                    ),
                ));
            }
            if schema["maxItems"].as_u64().is_some_and(|m| n > m) {
                errs.push(FieldError::invalid(
                    field,
                    json!(n),
                    format!(
                        "{field} in body should have at most {} items",
                        schema["maxItems"]
                    ),
                ));
            }
            if let Some(s) = schema.get("items") {
                for (i, e) in items.iter().enumerate() {
                    check(e, s, &format!("{path}[{i}]"), errs);
                }
            }
        }
        Value::Object(m) => {
            for r in schema["required"].as_array().into_iter().flatten() {
                if let Some(r) = r.as_str() {
                    if !m.contains_key(r) {
                        let p = if path.is_empty() {
                            r.to_string()
                        } else {
                            format!("{path}.{r}")
                        };
                        errs.push(FieldError::required(p));
                    }
                }
            }
            let props = schema["properties"].as_object();
            let extra = schema.get("additionalProperties").filter(|a| a.is_object());
            for (k, child) in m {
                let child_path = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                if let Some(s) = props.and_then(|p| p.get(k)).or(extra) {
                    check(child, s, &child_path, errs);
                }
            }
        }
        _ => {}
    }
}

/// The fields of `obj` its schema does not declare (what pruning drops).
pub fn unknown_fields(custom: &Custom, obj: &Value) -> Vec<String> {
    let mut copy = obj.clone();
    let mut out = Vec::new();
    prune_object(&mut copy, &custom.schema, &mut out);
    out
}

fn prune_object(obj: &mut Value, schema: &Value, out: &mut Vec<String>) {
    let Some(m) = obj.as_object_mut() else {
        return;
    };
    let keys: Vec<String> = m.keys().cloned().collect();
    for k in keys {
        if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        match schema["properties"].get(&k) {
            Some(s) => prune(m.get_mut(&k).expect("key listed"), s, &k, out),
            None if preserves(schema) => {}
            None => {
                m.remove(&k);
                out.push(k);
            }
        }
    }
}

/// Prune, default and validate a custom resource. Returns the object to
/// store.
pub fn prepare(custom: &Custom, mut obj: Value, errs: &mut Vec<FieldError>) -> Value {
    let mut pruned = Vec::new();
    prune_object(&mut obj, &custom.schema, &mut pruned);
    default(&mut obj, &custom.schema);
    check(&obj, &custom.schema, "", errs);
    obj
}

/// The error for a custom resource that fails validation.
pub fn invalid(custom: &Custom, obj: &Value, errors: Vec<FieldError>) -> ApiError {
    ApiError::Invalid {
        kind: format!("{}.{}", custom.res.kind, custom.res.group),
        name: crate::api::meta::name(obj).to_string(),
        errors,
    }
}

/// The OpenAPI v3 definition of a custom kind, named as Kubernetes names
/// it (`com.example.v1.Widget` for `example.com/v1`).
pub fn definition(custom: &Custom) -> (String, Value) {
    let mut group: Vec<&str> = custom.res.group.split('.').collect();
    group.reverse();
    let name = format!(
        "{}.{}.{}",
        group.join("."),
        custom.res.version,
        custom.res.kind
    );
    let mut schema = custom.schema.clone();
    if let Some(props) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        props.insert(
            "apiVersion".into(),
            json!({"type": "string", "description": "APIVersion defines the versioned schema of this representation of an object."}),
        );
        props.insert(
            "kind".into(),
            json!({"type": "string", "description": "Kind is a string value representing the REST resource this object represents."}),
        );
        props.insert(
            "metadata".into(),
            json!({"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}],
                "description": "Standard object's metadata."}),
        );
    } else if let Some(o) = schema.as_object_mut() {
        let mut props = Map::new();
        props.insert("metadata".into(), json!({"allOf": [{"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}]}));
        o.insert("properties".into(), Value::Object(props));
    }
    schema["x-kubernetes-group-version-kind"] = json!([{
        "group": custom.res.group, "version": custom.res.version, "kind": custom.res.kind,
    }]);
    (name, schema)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn widget_crd() -> Value {
        json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                    "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                    "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                        "spec": {"type": "object", "required": ["size"], "properties": {
                            "size": {"type": "integer", "minimum": 1, "maximum": 10},
                            "color": {"type": "string", "enum": ["red", "blue"], "default": "red"},
                            "replicas": {"type": "integer"},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}},
                        "status": {"type": "object", "properties": {"replicas": {"type": "integer"}}}}}}}]}})
    }

    fn custom() -> Custom {
        let crd = widget_crd();
        let v = &crd["spec"]["versions"][0];
        Custom {
            res: resource(Resource {
                group: "example.com",
                version: "v1",
                kind: "Widget",
                plural: "widgets",
                singular: "widget",
                short_names: &[],
                namespaced: true,
                status: true,
                scale: true,
                categories: &[],
                review: false,
            }),
            crd: "widgets.example.com".into(),
            schema: v["schema"]["openAPIV3Schema"].clone(),
            columns: vec![],
            scale: None,
        }
    }

    #[test]
    fn custom_resources_are_pruned_defaulted_and_validated() {
        let c = custom();
        let obj = json!({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
            "spec": {"size": 3, "extra": 1, "labels": {"a": "b"}, "free": {"anything": [1]}}, "top": true});
        assert_eq!(unknown_fields(&c, &obj), vec!["spec.extra", "top"]);
        let mut errs = Vec::new();
        let out = prepare(&c, obj, &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(out["spec"]["color"], "red", "defaulted");
        assert!(out["spec"].get("extra").is_none() && out.get("top").is_none());
        assert_eq!(out["spec"]["free"]["anything"], json!([1]), "preserved");

        let bad = json!({"metadata": {"name": "w"}, "spec": {"size": 11, "color": "green", "labels": {"a": 1}}});
        let mut errs = Vec::new();
        prepare(&c, bad, &mut errs);
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(
            text.iter()
                .any(|e| e.starts_with("spec.size") && e.contains("less than or equal to 10")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.starts_with("spec.color") && e.contains("Unsupported value")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|e| e.starts_with("spec.labels.a") && e.contains("must be of type string")),
            "{text:?}"
        );
        let mut errs = Vec::new();
        prepare(
            &c,
            json!({"metadata": {"name": "w"}, "spec": {}}),
            &mut errs,
        );
        assert_eq!(errs[0].to_string(), "spec.size: Required value");
    }

    #[test]
    fn crds_are_validated_and_their_status_kept() {
        let mut errs = Vec::new();
        validate_crd(&widget_crd(), &mut errs);
        assert!(errs.is_empty(), "{errs:?}");
        let mut bad = widget_crd();
        bad["metadata"]["name"] = json!("gadgets.example.com");
        bad["spec"]["versions"][0]["storage"] = json!(false);
        validate_crd(&bad, &mut errs);
        let text: Vec<String> = errs.iter().map(|e| e.to_string()).collect();
        assert!(text[0].starts_with("metadata.name"), "{text:?}");
        assert!(
            text[1].contains("exactly one version marked as storage"),
            "{text:?}"
        );
        let mut crd = widget_crd();
        default_crd(&mut crd);
        assert_eq!(crd["status"]["conditions"][1]["type"], "Established");
        assert_eq!(crd["status"]["storedVersions"], json!(["v1"]));
        assert_eq!(crd["spec"]["names"]["listKind"], "WidgetList");
    }

    #[test]
    fn json_paths_become_pointers() {
        assert_eq!(pointer(".spec.replicas"), "/spec/replicas");
        assert_eq!(
            pointer(".status.conditions[0].type"),
            "/status/conditions/0/type"
        );
    }
}
