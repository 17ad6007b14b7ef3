//! Field validation, as kube-apiserver does it for `fieldValidation`:
//! the fields of a request object its kind's schema does not declare, and
//! the keys a JSON body gives twice. Both are reported as paths in
//! Kubernetes' form (`spec.template.spec.containers[0].imagee`). No I/O:
//! the caller decides whether they are errors (`Strict`), warnings
//! (`Warn`, the default) or nothing (`Ignore`); the unknown fields are
//! dropped either way when the object is decoded into its type.

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::ApiError;

/// What to do with unknown and duplicate fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and say so in `Warning` headers (the default).
    #[default]
    Warn,
    /// Refuse the request (400).
    Strict,
}

impl FieldValidation {
    /// Parse the `fieldValidation` query parameter.
    pub fn parse(v: Option<&str>) -> Result<Self, ApiError> {
        match v {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Ignore") => Ok(Self::Ignore),
            Some("Strict") => Ok(Self::Strict),
            Some(other) => Err(ApiError::BadRequest(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
            ))),
        }
    }
}

/// One problem with a request's fields.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum FieldProblem {
    Unknown(String),
    Duplicate(String),
}

impl fmt::Display for FieldProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldProblem::Unknown(p) => write!(f, "unknown field {p:?}"),
            FieldProblem::Duplicate(p) => write!(f, "duplicate field {p:?}"),
        }
    }
}

/// The error a `Strict` request with problems gets, as kube-apiserver
/// words it.
pub fn strict_error(kind: &str, version: &str, problems: &[FieldProblem]) -> ApiError {
    let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
    ApiError::BadRequest(format!(
        "{kind} in version {version:?} cannot be handled as a {kind}: strict decoding error: {}",
        list.join(", ")
    ))
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// The definition a property schema stands for: a `$ref`, or one wrapped
/// in `allOf` with a description beside it.
fn referenced<'a>(defs: &'a Map<String, Value>, v: &'a Value) -> &'a Value {
    let name = v
        .get("$ref")
        .and_then(Value::as_str)
        .or_else(|| {
            v.get("allOf")?
                .as_array()?
                .iter()
                .find_map(|x| x.get("$ref")?.as_str())
        })
        .and_then(|r| r.rsplit('/').next());
    match name.and_then(|n| defs.get(n)) {
        Some(d) => d,
        None => v,
    }
}

/// The paths of the fields in `value` that `schema` (a definition, with
/// its references resolved in `defs`) does not declare.
pub fn unknown_fields(defs: &Map<String, Value>, schema: &Value, value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(defs, schema, value, "", &mut out);
    out
}

fn walk(
    defs: &Map<String, Value>,
    schema: &Value,
    value: &Value,
    path: &str,
    out: &mut Vec<String>,
) {
    let schema = referenced(defs, schema);
    if schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
    {
        return;
    }
    match value {
        Value::Object(m) => {
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (k, v) in m {
                    match props.get(k) {
                        Some(s) => walk(defs, s, v, &join(path, k), out),
                        None => out.push(join(path, k)),
                    }
                }
            } else if let Some(items) = schema.get("additionalProperties").filter(|a| a.is_object())
            {
                for (k, v) in m {
                    walk(defs, items, v, &join(path, k), out);
                }
            }
            // an object schema with neither holds anything (RawExtension,
            // FieldsV1, JSON)
        }
        Value::Array(a) => {
            if let Some(items) = schema.get("items") {
                for (i, v) in a.iter().enumerate() {
                    walk(defs, items, v, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// The keys a JSON document gives more than once, by path. A body that is
/// not JSON (YAML) has none found here: its parser refuses duplicates.
pub fn duplicate_fields(body: &[u8]) -> Vec<String> {
    let mut found = BTreeSet::new();
    let mut de = serde_json::Deserializer::from_slice(body);
    if (Seed {
        path: String::new(),
        found: &mut found,
    })
    .deserialize(&mut de)
    .is_err()
    {
        return Vec::new();
    }
    found.into_iter().collect()
}

/// Visits a JSON value (discarding it), recording duplicate keys.
struct Seed<'a> {
    path: String,
    found: &'a mut BTreeSet<String>,
}

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = ();
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(Seed {
                path: format!("{}[{i}]", self.path),
                found: &mut *self.found,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = BTreeSet::new();
        while let Some(k) = map.next_key::<String>()? {
            let path = join(&self.path, &k);
            if !seen.insert(k) {
                self.found.insert(path.clone());
            }
            map.next_value_seed(Seed {
                path,
                found: &mut *self.found,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::resources::lookup;
    use crate::api::schema::schemas;
    use serde_json::json;

    fn unknown(plural: &str, v: Value) -> Vec<String> {
        let s = schemas();
        let root = s.root(lookup(plural).unwrap()).unwrap();
        unknown_fields(&s.definitions, &s.definitions[root], &v)
    }

    #[test]
    fn unknown_fields_are_named_by_path() {
        let d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"a": "b"}, "bogus": 1},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [
                        {"name": "a", "image": "x"},
                        {"name": "b", "imagee": "y", "resources": {"limits": {"cpu": "1"}}}]}}},
            "extra": true,
        });
        let mut got = unknown("deployments", d);
        got.sort();
        assert_eq!(
            got,
            vec![
                "extra",
                "metadata.bogus",
                "spec.template.spec.containers[1].imagee"
            ]
        );
    }

    #[test]
    fn maps_int_or_string_and_raw_fields_hold_anything() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c",
            "managedFields": [{"manager": "m", "fieldsV1": {"f:data": {"f:x": {}}}}]},
            "data": {"any-key": "v"}});
        assert!(unknown("configmaps", cm).is_empty());
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
            "spec": {"ports": [{"port": 80, "targetPort": "http"}]}});
        assert!(unknown("services", svc).is_empty());
    }

    #[test]
    fn duplicate_keys_are_found_at_any_depth() {
        let body = br#"{"a": 1, "b": {"c": [{"d": 1, "d": 2}], "e": 1}, "a": 2}"#;
        assert_eq!(duplicate_fields(body), vec!["a", "b.c[0].d"]);
        assert!(duplicate_fields(br#"{"a": 1}"#).is_empty());
        assert!(duplicate_fields(b"a: 1\na: 2").is_empty());
    }

    #[test]
    fn the_parameter_parses_and_strict_errors_read_like_kubernetes() {
        assert_eq!(FieldValidation::parse(None).unwrap(), FieldValidation::Warn);
        assert_eq!(
            FieldValidation::parse(Some("Strict")).unwrap(),
            FieldValidation::Strict
        );
        assert!(FieldValidation::parse(Some("strict")).is_err());
        let e = strict_error("ConfigMap", "v1", &[FieldProblem::Unknown("extra".into())]);
        assert_eq!(
            e.to_string(),
            "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: unknown field \"extra\""
        );
    }
}
